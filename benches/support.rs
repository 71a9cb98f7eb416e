//! What the benchmarks share: the arena's assets and varied situations from a played game.

use hivemind::core::snapshot::WorldSnapshot;
use hivemind_arena::{ArenaAssets, ArenaConfig};

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
    hivemind_arena::play::played_snapshots(assets, ArenaConfig::default(), ticks)
}
