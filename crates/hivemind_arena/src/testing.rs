//! Helpers shared by the unit tests: the workspace's assets and a GOAP-only game.

use std::collections::VecDeque;
use std::path::Path;

use hivemind_core::plan::PlanStep;
use hivemind_core::snapshot::{
    AgentId, Bounds, EntityId, EntityInfo, Health, Point, WorldSnapshot,
};

use crate::snapshot::{COVER, ENEMY, OBJECTIVE};
use crate::{ArenaAssets, ArenaWorld, TickReport, fallback_plan};

/// The workspace's `assets/` directory.
pub(crate) const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets");

pub(crate) fn assets() -> ArenaAssets {
    ArenaAssets::load(Path::new(ASSETS)).unwrap()
}

/// Plays `ticks` ticks in which every agent follows GOAP fallback plans, re-planning when its
/// plan is used up or a step fails. `on_plan` sees every plan with the snapshot it was made from.
pub(crate) fn play_goap(
    world: &mut ArenaWorld,
    assets: &ArenaAssets,
    ticks: usize,
    mut on_plan: impl FnMut(&ArenaWorld, &WorldSnapshot, &[PlanStep]),
) -> Vec<TickReport> {
    let mut plans: Vec<VecDeque<PlanStep>> = vec![VecDeque::new(); world.agents().len()];
    let mut reports = Vec::with_capacity(ticks);
    for _ in 0..ticks {
        for agent in world.agent_ids() {
            if !world.is_idle(agent) {
                continue;
            }
            let plan = &mut plans[agent.0 as usize];
            if plan.is_empty() {
                let snapshot = world.snapshot(agent);
                let steps = fallback_plan(&assets.domain, &assets.registry, &snapshot);
                on_plan(world, &snapshot, &steps);
                plan.extend(steps);
            }
            if let Some(step) = plan.pop_front() {
                world.begin_step(agent, &step).unwrap();
            }
        }
        let report = world.tick();
        for finished in &report.finished {
            if !finished.ok {
                plans[finished.agent.0 as usize].clear();
            }
        }
        reports.push(report);
    }
    reports
}

/// A snapshot written by hand, as a game other than the arena might send it.
pub(crate) fn flanking_guard() -> WorldSnapshot {
    WorldSnapshot::new(AgentId(3), Point::new(4, 5))
        .with_health(Health::new(90, 100))
        .with_bounds(Bounds::grid(20, 14))
        .with_fact("ammo", 2)
        .with_fact("medkits", 0)
        .with_entity(
            EntityInfo::new(EntityId(7), ENEMY, Point::new(10, 2))
                .with_health(Health::new(80, 100)),
        )
        .with_entity(
            EntityInfo::new(EntityId(9), ENEMY, Point::new(12, 8))
                .with_health(Health::new(20, 100)),
        )
        .with_point(COVER, Point::new(10, 2))
        .with_point(COVER, Point::new(3, 4))
        .with_point(OBJECTIVE, Point::new(10, 7))
}
