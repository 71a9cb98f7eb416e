//! Sight, range, shots, damage and deaths.
//!
//! - An agent **sees** another within `sight_range` cells with a clear line of sight
//!   ([`Grid::line_of_sight`](crate::grid::Grid::line_of_sight)); cover blocks it, agents do not.
//! - An agent **shoots** at one it sees within `attack_range`. The shot costs one round and hits
//!   with `hit_percent` chance for `damage`, or `cover_hit_percent` for `cover_damage` if the
//!   target stands on a cover point.
//! - Shots fired in one tick are resolved together, in the attacker's id order, after everyone
//!   has acted: two agents who shoot each other both fire. Each shot draws exactly one number
//!   from the world's generator, hit or miss, so the sequence of draws depends only on the
//!   orders given.
//! - The shot that takes a target's health to zero kills it: the killer's team scores
//!   `kill_points`, the victim's step ends with `Died`, and it respawns after `respawn_ticks`.

use hivemind_core::snapshot::AgentId;
use rand::Rng;
use rand::rngs::Xoshiro256PlusPlus;

use crate::orders::StepFailure;
use crate::tick::{Kill, ScoreReason, Shot, StepOutcome, TickReport};
use crate::world::{Agent, ArenaWorld};

/// A shot fired this tick, waiting to be resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PendingShot {
    pub(crate) attacker: AgentId,
    pub(crate) target: AgentId,
}

impl ArenaWorld {
    /// Whether `viewer` sees `target`: both alive, within sight range, with a clear line.
    /// Unknown ids see and are seen by no one.
    pub fn can_see(&self, viewer: AgentId, target: AgentId) -> bool {
        match (self.agent(viewer), self.agent(target)) {
            (Some(v), Some(t)) => v.alive && t.alive && self.sees(v, t),
            _ => false,
        }
    }

    /// Whether `target` stands on a cover point, which makes it harder to hit.
    pub fn in_cover(&self, agent: AgentId) -> bool {
        self.agent(agent)
            .is_some_and(|a| a.alive && self.grid.is_cover_point(a.position))
    }

    pub(crate) fn sees(&self, viewer: &Agent, target: &Agent) -> bool {
        let range = i64::from(self.config.sight_range);
        viewer.id != target.id
            && viewer.position.distance_squared(target.position) <= range * range
            && self.grid.line_of_sight(viewer.position, target.position)
    }

    pub(crate) fn in_range(&self, attacker: &Agent, target: &Agent) -> bool {
        let range = i64::from(self.config.attack_range);
        attacker.position.distance_squared(target.position) <= range * range
    }

    pub(crate) fn resolve_shots(&mut self, shots: Vec<PendingShot>, report: &mut TickReport) {
        for shot in shots {
            let roll = percent(&mut self.rng);
            let t = shot.target.0 as usize;
            let Some(target) = self.agents.get(t) else {
                continue;
            };
            let covered = self.grid.is_cover_point(target.position);
            let (chance, damage) = if covered {
                (self.config.cover_hit_percent, self.config.cover_damage)
            } else {
                (self.config.hit_percent, self.config.damage)
            };
            let hit = target.alive && roll < chance;
            let damage = if hit { damage.min(target.hp) } else { 0 };
            report.shots.push(Shot {
                attacker: shot.attacker,
                target: shot.target,
                hit,
                damage,
            });
            if hit {
                self.agents[t].hp -= damage;
                if self.agents[t].hp == 0 {
                    self.kill(shot.attacker, shot.target, report);
                }
            }
        }
    }

    fn kill(&mut self, killer: AgentId, victim: AgentId, report: &mut TickReport) {
        let now = self.now;
        let respawn = self.config.respawn_ticks;
        let Some(v) = self.agents.get_mut(victim.0 as usize) else {
            return;
        };
        v.alive = false;
        v.hp = 0;
        v.respawn_in = respawn;
        v.deaths += 1;
        v.streak = v.streak.min(0) - 1;
        v.died_at = Some(now);
        v.last_killer = Some(killer);
        if v.order.take().is_some() {
            report.finished.push(StepOutcome {
                agent: victim,
                ok: false,
                failure: Some(StepFailure::Died),
            });
        }
        let Some(k) = self.agents.get_mut(killer.0 as usize) else {
            return;
        };
        k.kills += 1;
        k.streak = k.streak.max(0) + 1;
        let team = k.team;
        report.kills.push(Kill { killer, victim });
        let points = self.config.kill_points;
        if points > 0 {
            self.add_score(team, points, ScoreReason::Kill, report);
        }
    }
}

/// A number in `0..100` from one draw: a fixed multiply-shift rather than rand's range sampling,
/// whose algorithm is not promised to stay put between releases.
fn percent(rng: &mut Xoshiro256PlusPlus) -> u32 {
    ((u128::from(rng.next_u64()) * 100) >> 64) as u32
}

#[cfg(test)]
mod tests {
    use hivemind_core::plan::{ArgValue, PlanStep};
    use hivemind_core::snapshot::Point;

    use super::*;
    use crate::ArenaConfig;
    use crate::grid::Team;
    use crate::orders::StepFailure;
    use crate::tick::ScoreReason;

    fn attack(target: AgentId) -> PlanStep {
        PlanStep::new("Attack").with_arg("target", ArgValue::Int(i64::from(target.0)))
    }

    /// Every shot hits: outcomes do not depend on the seed.
    fn sure_shots() -> ArenaWorld {
        ArenaWorld::new(ArenaConfig {
            hit_percent: 100,
            cover_hit_percent: 100,
            ..ArenaConfig::default()
        })
    }

    const RED_SCOUT: AgentId = AgentId(0);
    const BLUE_SNIPER: AgentId = AgentId(6);

    #[test]
    fn an_attack_costs_one_round_and_needs_sight_and_ammo() {
        let mut world = sure_shots();
        world.place(RED_SCOUT, Point::new(6, 6)).unwrap();
        world.place(BLUE_SNIPER, Point::new(9, 4)).unwrap();

        world.begin_step(RED_SCOUT, &attack(BLUE_SNIPER)).unwrap();
        let report = world.tick();
        assert_eq!(report.finished(RED_SCOUT), Some(true));
        assert_eq!(
            report.shots,
            [Shot {
                attacker: RED_SCOUT,
                target: BLUE_SNIPER,
                hit: true,
                damage: 20
            }]
        );
        assert_eq!(world.agent(RED_SCOUT).unwrap().ammo(), 2);
        assert_eq!(world.agent(BLUE_SNIPER).unwrap().health().current, 80);

        // Behind the pillar at (7,6): out of sight, no shot, no round spent.
        world.place(BLUE_SNIPER, Point::new(9, 6)).unwrap();
        world.begin_step(RED_SCOUT, &attack(BLUE_SNIPER)).unwrap();
        let report = world.tick();
        assert_eq!(report.failure(RED_SCOUT), Some(StepFailure::OutOfSight));
        assert_eq!(report.finished(RED_SCOUT), Some(false));
        assert!(report.shots.is_empty());
        assert_eq!(world.agent(RED_SCOUT).unwrap().ammo(), 2);

        // In sight with an empty magazine.
        world.place(BLUE_SNIPER, Point::new(9, 4)).unwrap();
        world.set_ammo(RED_SCOUT, 0).unwrap();
        world.begin_step(RED_SCOUT, &attack(BLUE_SNIPER)).unwrap();
        let report = world.tick();
        assert_eq!(report.failure(RED_SCOUT), Some(StepFailure::NoAmmo));
        assert!(report.shots.is_empty());
    }

    #[test]
    fn a_target_out_of_range_is_chased_then_given_up() {
        let mut world = sure_shots();
        // Nine cells apart on open row 12: in sight (10) but out of range (7).
        world.place(RED_SCOUT, Point::new(4, 12)).unwrap();
        world.place(BLUE_SNIPER, Point::new(13, 12)).unwrap();
        world.begin_step(RED_SCOUT, &attack(BLUE_SNIPER)).unwrap();
        let first = world.tick();
        assert!(first.shots.is_empty());
        assert_eq!(
            world.agent(RED_SCOUT).unwrap().position(),
            Point::new(5, 12)
        );
        let second = world.tick();
        assert!(second.shots.is_empty());
        let third = world.tick();
        assert_eq!(third.finished(RED_SCOUT), Some(true));
        assert_eq!(third.shots.len(), 1);

        // A target that keeps its distance is given up after `chase_ticks`.
        let mut world = ArenaWorld::new(ArenaConfig {
            chase_ticks: 0,
            ..ArenaConfig::default()
        });
        world.place(RED_SCOUT, Point::new(4, 12)).unwrap();
        world.place(BLUE_SNIPER, Point::new(13, 12)).unwrap();
        world.begin_step(RED_SCOUT, &attack(BLUE_SNIPER)).unwrap();
        assert_eq!(
            world.tick().failure(RED_SCOUT),
            Some(StepFailure::OutOfRange)
        );
    }

    #[test]
    fn cover_takes_the_edge_off_hits() {
        let mut world = sure_shots();
        world.place(RED_SCOUT, Point::new(12, 4)).unwrap();
        // (8,6) is a cover point beside the pillar at (7,6).
        world.place(BLUE_SNIPER, Point::new(8, 6)).unwrap();
        assert!(world.in_cover(BLUE_SNIPER));
        world.begin_step(RED_SCOUT, &attack(BLUE_SNIPER)).unwrap();
        let report = world.tick();
        assert_eq!(report.shots[0].damage, 12);

        // With no chance to hit a covered target, every shot misses.
        let mut world = ArenaWorld::new(ArenaConfig {
            cover_hit_percent: 0,
            ..ArenaConfig::default()
        });
        world.place(RED_SCOUT, Point::new(12, 4)).unwrap();
        world.place(BLUE_SNIPER, Point::new(8, 6)).unwrap();
        for _ in 0..3 {
            world.begin_step(RED_SCOUT, &attack(BLUE_SNIPER)).unwrap();
            let report = world.tick();
            assert!(!report.shots[0].hit);
        }
        assert_eq!(world.agent(BLUE_SNIPER).unwrap().health().current, 100);
    }

    #[test]
    fn a_kill_scores_ends_the_victims_step_and_it_respawns_at_base() {
        let mut world = sure_shots();
        world.place(RED_SCOUT, Point::new(6, 6)).unwrap();
        world.place(BLUE_SNIPER, Point::new(9, 4)).unwrap();
        world.set_health(BLUE_SNIPER, 10).unwrap();
        world
            .begin_step(BLUE_SNIPER, &PlanStep::new("Wait"))
            .unwrap();
        world.begin_step(RED_SCOUT, &attack(BLUE_SNIPER)).unwrap();

        let report = world.tick();
        assert_eq!(
            report.kills,
            [Kill {
                killer: RED_SCOUT,
                victim: BLUE_SNIPER
            }]
        );
        assert_eq!(report.shots[0].damage, 10);
        assert_eq!(report.failure(BLUE_SNIPER), Some(StepFailure::Died));
        assert_eq!(report.score.len(), 1);
        assert_eq!(
            (
                report.score[0].team,
                report.score[0].reason,
                report.score[0].points
            ),
            (Team::Red, ScoreReason::Kill, 5)
        );
        assert_eq!(world.score(Team::Red), 5);
        let victim = world.agent(BLUE_SNIPER).unwrap();
        assert!(!victim.is_alive());
        assert_eq!(
            (victim.deaths(), victim.streak(), victim.respawn_in()),
            (1, -1, Some(8))
        );
        assert_eq!(victim.last_killer(), Some(RED_SCOUT));
        assert_eq!(world.agent(RED_SCOUT).unwrap().kills(), 1);
        assert_eq!(world.team_kills(Team::Red), 1);
        assert_eq!(world.team_deaths(Team::Blue), 1);
        assert_eq!(world.occupant(Point::new(9, 4)), None);

        // Dead agents take no orders and cannot be seen.
        assert_eq!(
            world.begin_step(BLUE_SNIPER, &PlanStep::new("Wait")),
            Err(crate::StepRejected::AgentDown { agent: BLUE_SNIPER })
        );
        assert!(!world.can_see(RED_SCOUT, BLUE_SNIPER));
        world.begin_step(RED_SCOUT, &attack(BLUE_SNIPER)).unwrap();
        assert_eq!(
            world.tick().failure(RED_SCOUT),
            Some(StepFailure::TargetDown)
        );

        let mut back = None;
        for _ in 0..12 {
            let report = world.tick();
            if report.respawned.contains(&BLUE_SNIPER) {
                back = Some(report.tick);
            }
        }
        assert_eq!(back, Some(9));
        let victim = world.agent(BLUE_SNIPER).unwrap();
        assert!(victim.is_alive());
        assert!(world.grid().base(Team::Blue).contains(victim.position()));
        assert_eq!(
            (victim.health().current, victim.ammo(), victim.medkits()),
            (100, 3, 1)
        );
    }

    #[test]
    fn shots_in_one_tick_land_together() {
        let mut world = sure_shots();
        world.place(RED_SCOUT, Point::new(6, 6)).unwrap();
        world.place(BLUE_SNIPER, Point::new(9, 4)).unwrap();
        world.set_health(RED_SCOUT, 5).unwrap();
        world.set_health(BLUE_SNIPER, 5).unwrap();
        world.begin_step(RED_SCOUT, &attack(BLUE_SNIPER)).unwrap();
        world.begin_step(BLUE_SNIPER, &attack(RED_SCOUT)).unwrap();
        let report = world.tick();
        assert_eq!(report.kills.len(), 2);
        assert_eq!(world.score(Team::Red), world.score(Team::Blue));
        // Both fired, so neither step failed, even though both died.
        assert_eq!(report.finished(RED_SCOUT), Some(true));
        assert_eq!(report.finished(BLUE_SNIPER), Some(true));
    }
}
