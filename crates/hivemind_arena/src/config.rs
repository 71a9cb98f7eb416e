//! The numbers that make up the arena's rules, all in one [`ArenaConfig`].

use serde::{Deserialize, Serialize};

/// The smallest arena [`ArenaConfig::sanitized`] allows: room for two bases, the cover layout
/// and an objective zone between them.
pub const MIN_SIZE: (i32, i32) = (10, 8);

/// The largest arena side [`ArenaConfig::sanitized`] allows; keeps paths and prompts small.
pub const MAX_SIDE: i32 = 128;

/// The arena's rules as numbers. Every field has a default, so a scenario file names only what
/// it changes.
///
/// Durations are in ticks, distances in cells (Euclidean, compared squared), chances in whole
/// percent. [`ArenaWorld::new`](crate::ArenaWorld::new) applies [`ArenaConfig::sanitized`]
/// first, so any value is safe to pass; [`ArenaWorld::config`](crate::ArenaWorld::config) returns
/// what is in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArenaConfig {
    /// Cells across; each team's base is the two outermost columns of its side.
    pub width: i32,
    /// Cells down.
    pub height: i32,
    /// Agents per team.
    pub team_size: u32,
    /// Seeds the one random generator (hit rolls). Same seed, same orders: same game.
    pub seed: u64,
    /// Health of a fresh agent.
    pub max_health: u32,
    /// Shots per magazine; agents (re)spawn with a full one.
    pub magazine: u32,
    /// Ticks a `Reload` takes.
    pub reload_ticks: u32,
    /// Medkits an agent (re)spawns with.
    pub start_medkits: u32,
    /// The most medkits an agent can carry.
    pub max_medkits: u32,
    /// Health one medkit restores.
    pub heal_amount: u32,
    /// Ticks a `Heal` takes.
    pub heal_ticks: u32,
    /// How far an agent sees, given a clear line.
    pub sight_range: i32,
    /// How far an agent shoots, given a clear line.
    pub attack_range: i32,
    /// Chance that a shot hits a target in the open.
    pub hit_percent: u32,
    /// Chance that a shot hits a target standing on a cover point.
    pub cover_hit_percent: u32,
    /// Damage of a hit on a target in the open.
    pub damage: u32,
    /// Damage of a hit on a target standing on a cover point.
    pub cover_damage: u32,
    /// Ticks a dead agent waits before it respawns at its base.
    pub respawn_ticks: u32,
    /// Points a team scores per kill.
    pub kill_points: u32,
    /// Points a team scores per tick in which it alone has agents in the objective zone.
    pub objective_points: u32,
    /// Ticks an `Attack` may spend closing in on a visible target that is out of range; with 0
    /// it fails at once.
    pub chase_ticks: u32,
    /// Ticks a move may make no progress (other agents in the way) before its step fails.
    pub stuck_ticks: u32,
    /// The longest a `Retreat` lasts, in ticks; it ends earlier on reaching the base.
    pub retreat_ticks: u32,
    /// Ticks a `Wait` lasts.
    pub wait_ticks: u32,
    /// Whether medkit pickups lie on the map (one on each side, respawning).
    pub medkit_pickups: bool,
    /// Ticks a taken medkit pickup needs to reappear.
    pub pickup_respawn_ticks: u32,
    /// The longest line a `Say` may carry, in characters (as in `assets/actions.ron`).
    pub max_say_chars: usize,
    /// How many cover points, nearest first, a snapshot lists.
    pub snapshot_cover_points: usize,
}

impl Default for ArenaConfig {
    fn default() -> Self {
        ArenaConfig {
            width: 20,
            height: 14,
            team_size: 6,
            seed: 1,
            max_health: 100,
            magazine: 3,
            reload_ticks: 2,
            start_medkits: 1,
            max_medkits: 2,
            heal_amount: 50,
            heal_ticks: 2,
            sight_range: 10,
            attack_range: 7,
            hit_percent: 60,
            cover_hit_percent: 35,
            damage: 20,
            cover_damage: 12,
            respawn_ticks: 8,
            kill_points: 5,
            objective_points: 1,
            chase_ticks: 4,
            stuck_ticks: 3,
            retreat_ticks: 5,
            wait_ticks: 2,
            medkit_pickups: true,
            pickup_respawn_ticks: 30,
            max_say_chars: 60,
            snapshot_cover_points: 3,
        }
    }
}

impl ArenaConfig {
    /// The default rules with another seed, for chaining.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The default rules with another team size, for chaining.
    pub fn with_team_size(mut self, team_size: u32) -> Self {
        self.team_size = team_size;
        self
    }

    /// The config with every value moved into the range the rules need:
    ///
    /// - `width` and `height` at least [`MIN_SIZE`] and at most [`MAX_SIDE`];
    /// - `team_size` at least 1 and at most what a base holds (two columns of `height` cells);
    /// - `max_health`, `magazine`, `max_medkits` and every duration but `chase_ticks` at least 1,
    ///   `start_medkits` at most `max_medkits`;
    /// - chances at most 100, ranges at least 1, cover damage at most the open damage.
    pub fn sanitized(mut self) -> Self {
        self.width = self.width.clamp(MIN_SIZE.0, MAX_SIDE);
        self.height = self.height.clamp(MIN_SIZE.1, MAX_SIDE);
        let base_cells = u32::try_from(2 * self.height).unwrap_or(u32::MAX);
        self.team_size = self.team_size.clamp(1, base_cells);
        for value in [
            &mut self.max_health,
            &mut self.magazine,
            &mut self.reload_ticks,
            &mut self.max_medkits,
            &mut self.heal_ticks,
            &mut self.respawn_ticks,
            &mut self.stuck_ticks,
            &mut self.retreat_ticks,
            &mut self.wait_ticks,
            &mut self.pickup_respawn_ticks,
        ] {
            *value = (*value).max(1);
        }
        self.start_medkits = self.start_medkits.min(self.max_medkits);
        self.hit_percent = self.hit_percent.min(100);
        self.cover_hit_percent = self.cover_hit_percent.min(100);
        self.cover_damage = self.cover_damage.min(self.damage);
        self.sight_range = self.sight_range.clamp(1, 2 * MAX_SIDE);
        self.attack_range = self.attack_range.clamp(1, 2 * MAX_SIDE);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_already_sane() {
        assert_eq!(ArenaConfig::default().sanitized(), ArenaConfig::default());
    }

    #[test]
    fn nonsense_is_clamped_into_playable_rules() {
        let wild = ArenaConfig {
            width: -4,
            height: 10_000,
            team_size: 0,
            magazine: 0,
            hit_percent: 250,
            cover_damage: 90,
            start_medkits: 9,
            ..ArenaConfig::default()
        }
        .sanitized();
        assert_eq!((wild.width, wild.height), (MIN_SIZE.0, MAX_SIDE));
        assert_eq!(wild.team_size, 1);
        assert_eq!(wild.magazine, 1);
        assert_eq!(wild.hit_percent, 100);
        assert_eq!(wild.cover_damage, wild.damage);
        assert_eq!(wild.start_medkits, wild.max_medkits);

        let crowd = ArenaConfig::default().with_team_size(1_000).sanitized();
        assert_eq!(crowd.team_size, 28);
    }
}
