//! What one agent knows, as a [`WorldSnapshot`] for hivemind's core.
//!
//! | part | contents |
//! |---|---|
//! | `position`, `health`, `bounds` | the agent's cell, its health, the whole grid |
//! | entities `enemy` | enemies it [sees](ArenaWorld::can_see), with their health |
//! | points `cover` | the nearest free cover points, at most `snapshot_cover_points` |
//! | points `objective` | the centre of the objective zone (on the agent's side), where `MoveTo` holds it |
//! | points `medkit` | medkit pickups lying on the map in sight |
//! | facts | `ammo`, `medkits`, `in_cover`, `at_objective` |
//!
//! A snapshot renders to a few short lines, since it goes into prompts:
//!
//! ```text
//! self id=0 at=(7,5) hp=65% ammo=2 at_objective=no in_cover=yes medkits=1
//! enemy: 8@(12,5) hp=30%
//! cover: (7,5) (8,6) (6,4)
//! objective: (9,7)
//! ```
//!
//! Everything every agent shares (the objective, the arena's size, the score) belongs in the
//! prompt's root level, decoded once, not in each agent's block.
//!
//! The fact names are the ones [`crate::planning`] reads, so GOAP works from any snapshot with
//! these names, not only from the arena's own.

use hivemind_core::snapshot::{EntityId, EntityInfo, Health, Point, WorldSnapshot};

use crate::world::ArenaWorld;

/// The entity set of visible enemies.
pub const ENEMY: &str = "enemy";
/// The point set of cover points.
pub const COVER: &str = "cover";
/// The point set holding the objective zone's centre.
pub const OBJECTIVE: &str = "objective";
/// The point set of medkit pickups in sight.
pub const MEDKIT: &str = "medkit";

/// The names of the facts a snapshot carries.
pub mod fact {
    /// Shots left in the magazine (int).
    pub const AMMO: &str = "ammo";
    /// Medkits carried (int).
    pub const MEDKITS: &str = "medkits";
    /// Whether the agent stands on a cover point (bool).
    pub const IN_COVER: &str = "in_cover";
    /// Whether the agent stands in the objective zone (bool).
    pub const AT_OBJECTIVE: &str = "at_objective";
}

impl ArenaWorld {
    /// What `agent` knows now. See the [module docs](self).
    ///
    /// A dead agent's snapshot has zero health and lists no one; an unknown id gives a bare
    /// snapshot at `(0,0)` with no bounds, so nothing can be planned for it but the idle verb.
    pub fn snapshot(&self, agent: hivemind_core::snapshot::AgentId) -> WorldSnapshot {
        let Some(me) = self.agent(agent) else {
            return WorldSnapshot::new(agent, Point::new(0, 0)).with_health(Health::new(0, 1));
        };
        let mut snapshot = WorldSnapshot::new(agent, me.position)
            .with_health(me.health())
            .with_bounds(self.grid.bounds());

        if me.alive {
            for other in self.agents() {
                if !other.alive || other.id == me.id {
                    continue;
                }
                let id = EntityId(other.id.0);
                // Teammates are left out: no verb acts on them, and every token of an agent's
                // block is paid for on every request.
                if other.team != me.team && self.sees(me, other) {
                    snapshot.entities.push(
                        EntityInfo::new(id, ENEMY, other.position).with_health(other.health()),
                    );
                }
            }

            // Cover points a teammate or a visible enemy already holds are no use to it.
            let taken = |p: Point| {
                snapshot.entities.iter().any(|e| e.position == p)
                    || self
                        .agents()
                        .any(|a| a.alive && a.team == me.team && a.id != me.id && a.position == p)
            };
            let mut cover: Vec<Point> = self
                .grid
                .cover_points()
                .iter()
                .copied()
                .filter(|&p| !taken(p))
                .collect();
            cover.sort_by_key(|&p| (me.position.distance_squared(p), p));
            cover.truncate(self.config.snapshot_cover_points);
            for p in cover {
                snapshot = snapshot.with_point(COVER, p);
            }
            let range = i64::from(self.config.sight_range);
            let medkits: Vec<Point> = self
                .medkits_on_map()
                .filter(|&p| {
                    me.position.distance_squared(p) <= range * range
                        && self.grid.line_of_sight(me.position, p)
                })
                .collect();
            for p in medkits {
                snapshot = snapshot.with_point(MEDKIT, p);
            }
        }
        snapshot = snapshot.with_point(OBJECTIVE, self.grid.objective_center(me.team));

        let in_cover = me.alive && self.grid.is_cover_point(me.position);
        let at_objective = me.alive && self.grid.objective().contains(me.position);
        snapshot
            .with_fact(fact::AMMO, me.ammo)
            .with_fact(fact::MEDKITS, me.medkits)
            .with_fact(fact::IN_COVER, in_cover)
            .with_fact(fact::AT_OBJECTIVE, at_objective)
    }
}

#[cfg(test)]
mod tests {
    use hivemind_core::snapshot::{AgentId, Fact};

    use super::*;
    use crate::ArenaConfig;

    #[test]
    fn snapshots_show_only_visible_enemies_with_their_health() {
        let mut world = ArenaWorld::new(ArenaConfig::default());
        let (red_scout, blue_sniper, blue_flanker) = (AgentId(0), AgentId(6), AgentId(7));
        world.place(red_scout, Point::new(6, 6)).unwrap();
        // In the open, up and to the east: visible.
        world.place(blue_flanker, Point::new(9, 4)).unwrap();
        // Straight east behind the pillar at (7,6): hidden.
        world.place(blue_sniper, Point::new(9, 6)).unwrap();
        world.set_health(blue_flanker, 40).unwrap();

        let snapshot = world.snapshot(red_scout);
        let enemies: Vec<_> = snapshot.entities_in(ENEMY).collect();
        assert_eq!(enemies.len(), 1, "{}", snapshot.render());
        assert_eq!(enemies[0].id, EntityId(7));
        assert_eq!(enemies[0].health, Some(Health::new(40, 100)));
        assert!(snapshot.entities.iter().all(|e| e.set == ENEMY));
        assert!(snapshot.entity(EntityId(6)).is_none());
        assert!(!world.can_see(red_scout, blue_sniper));
        assert!(world.can_see(red_scout, blue_flanker));
        assert!(world.can_see(blue_flanker, red_scout));
    }

    #[test]
    fn snapshots_list_the_nearest_free_cover_and_the_facts() {
        let mut world = ArenaWorld::new(ArenaConfig::default());
        let red_scout = AgentId(0);
        world.place(red_scout, Point::new(8, 6)).unwrap();
        world.place(AgentId(1), Point::new(8, 7)).unwrap();
        let snapshot = world.snapshot(red_scout);
        let cover: Vec<Point> = snapshot.points_in(COVER).collect();
        assert_eq!(cover.len(), 3);
        // Its own cell comes first; the ally's cell is left out.
        assert_eq!(cover[0], Point::new(8, 6));
        assert!(!cover.contains(&Point::new(8, 7)));
        assert!(cover.iter().all(|&p| world.grid().is_cover_point(p)));
        let d = |p: Point| p.distance_squared(Point::new(8, 6));
        assert!(cover.windows(2).all(|w| d(w[0]) <= d(w[1])));
        assert_eq!(
            snapshot.points_in(OBJECTIVE).collect::<Vec<_>>(),
            [Point::new(9, 7)]
        );

        assert_eq!(snapshot.int_fact(fact::AMMO), Some(3));
        assert_eq!(snapshot.int_fact(fact::MEDKITS), Some(1));
        assert_eq!(snapshot.fact(fact::IN_COVER), Some(&Fact::Bool(true)));
        assert_eq!(snapshot.fact(fact::AT_OBJECTIVE), Some(&Fact::Bool(true)));
        assert_eq!(
            snapshot.facts.len(),
            4,
            "shared facts stay out of the block"
        );
        assert_eq!(snapshot.bounds, Some(world.grid().bounds()));
        let text = snapshot.render();
        assert!(text.lines().count() <= 5, "{text}");
        assert!(text.len() < 400, "{} bytes: {text}", text.len());
    }

    #[test]
    fn an_unknown_agent_gets_a_bare_snapshot() {
        let world = ArenaWorld::new(ArenaConfig::default());
        let snapshot = world.snapshot(AgentId(500));
        assert!(snapshot.entities.is_empty() && snapshot.bounds.is_none());
    }
}
