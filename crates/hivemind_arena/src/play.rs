//! Situations from a played game, for tests, benchmarks and the scenario suite.

use hivemind_core::snapshot::WorldSnapshot;

use crate::{ArenaAssets, ArenaConfig, ArenaWorld, fallback_plan};

/// Every agent's snapshot at every tick of a `ticks`-tick game of `config`.
///
/// Idle agents follow the first step of their GOAP plan, so the situations vary as in real
/// play (moving, in cover, under fire, out of ammo, dead), and are the same for the same config.
pub fn played_snapshots(
    assets: &ArenaAssets,
    config: ArenaConfig,
    ticks: usize,
) -> Vec<WorldSnapshot> {
    let mut world = ArenaWorld::new(config);
    let mut snapshots = Vec::new();
    for _ in 0..ticks {
        for agent in world.agent_ids() {
            let snapshot = world.snapshot(agent);
            let first = fallback_plan(&assets.domain, &assets.registry, &snapshot)
                .into_iter()
                .next();
            if let Some(step) = first.filter(|_| world.is_idle(agent)) {
                // A rejected step leaves the agent idle; the next tick plans again.
                let _ = world.begin_step(agent, &step);
            }
            snapshots.push(snapshot);
        }
        world.tick();
    }
    snapshots
}

/// `n` situations of live agents from a played game, each of 16 agents (eight a side) once
/// before any repeats: the benchmarks' workload, so a batch of 16 holds 16 different agents.
pub fn distinct_situations(assets: &ArenaAssets, n: usize) -> Vec<WorldSnapshot> {
    let config = ArenaConfig {
        team_size: 8,
        ..ArenaConfig::default()
    };
    let mut by_agent = std::collections::BTreeMap::new();
    for s in played_snapshots(assets, config, 60)
        .into_iter()
        .skip(16 * 30)
        .filter(|s| s.health.current > 0)
    {
        by_agent.entry(s.agent).or_insert(s);
    }
    let distinct: Vec<WorldSnapshot> = by_agent.into_values().collect();
    distinct.iter().cycle().take(n).cloned().collect()
}
