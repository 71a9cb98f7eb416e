//! What the benchmarks share: the arena's assets and varied situations from a played game.

use hivemind::arena::{ArenaAssets, ArenaConfig, World, fallback_plan};
use hivemind::core::snapshot::WorldSnapshot;

/// The shipped arena assets.
#[expect(
    clippy::expect_used,
    reason = "a benchmark stops at once when its assets are missing"
)]
pub fn assets() -> ArenaAssets {
    ArenaAssets::load(concat!(env!("CARGO_MANIFEST_DIR"), "/assets").as_ref())
        .expect("the arena's assets load")
}

/// Every agent's snapshot at every tick of a GOAP-played game of `ticks` ticks.
pub fn played_snapshots(assets: &ArenaAssets, ticks: usize) -> Vec<WorldSnapshot> {
    let mut world = World::new(ArenaConfig::default());
    let mut snapshots = Vec::new();
    for _ in 0..ticks {
        for agent in world.agent_ids() {
            let snapshot = world.snapshot(agent);
            let first = fallback_plan(&assets.domain, &assets.registry, &snapshot)
                .into_iter()
                .next();
            if let Some(step) = first.filter(|_| world.is_idle(agent)) {
                let _ = world.begin_step(agent, &step);
            }
            snapshots.push(snapshot);
        }
        world.tick();
    }
    snapshots
}
