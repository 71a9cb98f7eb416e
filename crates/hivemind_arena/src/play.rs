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
