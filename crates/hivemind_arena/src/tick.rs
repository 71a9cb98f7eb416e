//! One tick of play, and what it reports.
//!
//! [`ArenaWorld::tick`] runs these phases, each in agent-id order:
//!
//! 1. **Respawn**: a dead agent's countdown runs down; at zero it reappears on the first free
//!    cell of its base with full health, a full magazine and its starting medkits.
//! 2. **Act**: every living agent with a step advances it by one tick (see
//!    [`crate::orders`]). Moves happen at once, so a lower id moves into a free cell first.
//!    Shots are only *fired* here.
//! 3. **Resolve**: every shot fired this tick hits or misses (see [`crate::combat`]), so two
//!    agents who fire at each other in the same tick both get their shot off.
//! 4. **Pick up**: an agent standing on a medkit pickup takes it, if it has room.
//! 5. **Score**: a team with living agents in the objective zone, where the other has none,
//!    scores `objective_points`.

use std::mem;

use hivemind_core::snapshot::{AgentId, Point};

use crate::combat::PendingShot;
use crate::grid::{Team, steps};
use crate::orders::{Command, StepFailure};
use crate::world::{Agent, ArenaWorld};

/// How a step that ended this tick went: carried out, or failed and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StepOutcome {
    /// The agent whose step ended; it is idle now (or dead).
    pub agent: AgentId,
    /// Whether the step did what it was for. Always `failure.is_none()`.
    pub ok: bool,
    /// Why it did not.
    pub failure: Option<StepFailure>,
}

/// A shot fired this tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shot {
    /// Who fired.
    pub attacker: AgentId,
    /// At whom.
    pub target: AgentId,
    /// Whether it hit; a shot at a target already killed this tick misses.
    pub hit: bool,
    /// Health taken.
    pub damage: u32,
}

/// An agent killed this tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kill {
    /// Whose shot killed.
    pub killer: AgentId,
    /// Who died.
    pub victim: AgentId,
}

/// What a score change was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScoreReason {
    /// A kill.
    Kill,
    /// A tick holding the objective alone.
    Objective,
}

/// Points a team scored this tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScoreChange {
    /// The team.
    pub team: Team,
    /// Points gained.
    pub points: u32,
    /// What for.
    pub reason: ScoreReason,
    /// The team's score afterwards.
    pub total: u32,
}

/// A line an agent said with a `Say` step.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Said {
    /// The speaker.
    pub agent: AgentId,
    /// The line.
    pub text: String,
}

/// Everything that happened in one tick, each list in the order it happened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// The tick's number, counting from 1.
    pub tick: u64,
    /// Steps that ended.
    pub finished: Vec<StepOutcome>,
    /// Shots fired.
    pub shots: Vec<Shot>,
    /// Agents killed.
    pub kills: Vec<Kill>,
    /// Points scored.
    pub score: Vec<ScoreChange>,
    /// Lines said.
    pub said: Vec<Said>,
    /// Agents that came back at their base.
    pub respawned: Vec<AgentId>,
    /// Agents that picked up a medkit.
    pub picked_up: Vec<AgentId>,
}

impl TickReport {
    /// Whether `agent`'s step ended this tick, and how: `Some(ok)`.
    pub fn finished(&self, agent: AgentId) -> Option<bool> {
        self.finished
            .iter()
            .find(|f| f.agent == agent)
            .map(|f| f.ok)
    }

    /// Why `agent`'s step failed this tick, if it did.
    pub fn failure(&self, agent: AgentId) -> Option<StepFailure> {
        self.finished
            .iter()
            .find(|f| f.agent == agent)
            .and_then(|f| f.failure)
    }
}

/// How a step went this tick.
enum Outcome {
    Continue,
    Done,
    Failed(StepFailure),
}

/// How one move toward a goal went.
enum Progress {
    /// Already at a goal; nothing moved.
    There,
    /// Moved one cell nearer.
    Moved,
    /// Every nearer cell is taken by another agent.
    Blocked,
    /// Cover walls every goal off.
    Unreachable,
}

impl ArenaWorld {
    /// Advances the game by one tick. See the [module docs](self) for the phases.
    pub fn tick(&mut self) -> TickReport {
        self.now += 1;
        let mut report = TickReport {
            tick: self.now,
            ..TickReport::default()
        };
        self.respawn(&mut report);

        let mut shots = Vec::new();
        for i in 0..self.agents.len() {
            if !self.agents[i].alive {
                continue;
            }
            let Some(mut order) = self.agents[i].order.take() else {
                continue;
            };
            let outcome = self.advance(
                i,
                &order.command,
                &mut order.stuck,
                order.elapsed,
                &mut shots,
                &mut report,
            );
            let agent = self.agents[i].id;
            match outcome {
                Outcome::Continue => {
                    order.elapsed = order.elapsed.saturating_add(1);
                    self.agents[i].order = Some(order);
                }
                Outcome::Done => report.finished.push(StepOutcome {
                    agent,
                    ok: true,
                    failure: None,
                }),
                Outcome::Failed(why) => report.finished.push(StepOutcome {
                    agent,
                    ok: false,
                    failure: Some(why),
                }),
            }
        }

        self.resolve_shots(shots, &mut report);
        self.pick_up(&mut report);
        self.score_objective(&mut report);
        report
    }

    fn respawn(&mut self, report: &mut TickReport) {
        for i in 0..self.agents.len() {
            let a = &mut self.agents[i];
            if a.alive {
                continue;
            }
            a.respawn_in = a.respawn_in.saturating_sub(1);
            if a.respawn_in > 0 {
                continue;
            }
            let team = a.team;
            // With every base cell taken (enemies camping it), the agent tries again next tick.
            let Some(spawn) = self
                .grid
                .spawns(team)
                .iter()
                .copied()
                .find(|&p| self.occupant(p).is_none())
            else {
                continue;
            };
            let config = &self.config;
            let a = &mut self.agents[i];
            a.alive = true;
            a.position = spawn;
            a.hp = a.max_hp;
            a.ammo = config.magazine;
            a.medkits = config.start_medkits;
            report.respawned.push(a.id);
        }
    }

    /// Carries agent `i`'s step on by one tick.
    fn advance(
        &mut self,
        i: usize,
        command: &Command,
        stuck: &mut u32,
        elapsed: u32,
        shots: &mut Vec<PendingShot>,
        report: &mut TickReport,
    ) -> Outcome {
        let config = &self.config;
        let (stuck_ticks, magazine) = (config.stuck_ticks, config.magazine);
        let me = &self.agents[i];
        match command {
            Command::MoveTo(to) => {
                let to = *to;
                match self.step_toward(i, &[to]) {
                    Progress::There => Outcome::Done,
                    Progress::Moved if self.agents[i].position == to => Outcome::Done,
                    Progress::Moved => {
                        *stuck = 0;
                        Outcome::Continue
                    }
                    Progress::Blocked => {
                        let here = self.agents[i].position;
                        let next_to = (here.x - to.x).abs() <= 1 && (here.y - to.y).abs() <= 1;
                        if next_to && self.occupant(to).is_some() {
                            Outcome::Done
                        } else {
                            stuck_or_wait(stuck, stuck_ticks)
                        }
                    }
                    Progress::Unreachable => Outcome::Failed(StepFailure::Unreachable),
                }
            }
            Command::TakeCover(at) => {
                let at = *at;
                if me.position != at
                    && me.position.manhattan(at) <= 1
                    && self.occupant(at).is_some()
                {
                    return Outcome::Failed(StepFailure::CellTaken);
                }
                match self.step_toward(i, &[at]) {
                    Progress::There => Outcome::Done,
                    Progress::Moved if self.agents[i].position == at => Outcome::Done,
                    Progress::Moved => {
                        *stuck = 0;
                        Outcome::Continue
                    }
                    Progress::Blocked => stuck_or_wait(stuck, stuck_ticks),
                    Progress::Unreachable => Outcome::Failed(StepFailure::Unreachable),
                }
            }
            Command::Attack(target) => {
                let Some(them) = self.agents.get(target.0 as usize) else {
                    return Outcome::Failed(StepFailure::TargetDown);
                };
                if !them.alive {
                    return Outcome::Failed(StepFailure::TargetDown);
                }
                if me.ammo == 0 {
                    return Outcome::Failed(StepFailure::NoAmmo);
                }
                if !self.sees(me, them) {
                    return Outcome::Failed(StepFailure::OutOfSight);
                }
                if self.in_range(me, them) {
                    shots.push(PendingShot {
                        attacker: me.id,
                        target: them.id,
                    });
                    self.agents[i].ammo -= 1;
                    return Outcome::Done;
                }
                if elapsed >= self.config.chase_ticks {
                    return Outcome::Failed(StepFailure::OutOfRange);
                }
                let there = them.position;
                match self.step_toward(i, &[there]) {
                    Progress::Moved => {
                        *stuck = 0;
                        Outcome::Continue
                    }
                    Progress::There | Progress::Blocked => stuck_or_wait(stuck, stuck_ticks),
                    Progress::Unreachable => Outcome::Failed(StepFailure::Unreachable),
                }
            }
            Command::Reload => {
                if me.ammo >= magazine || elapsed + 1 >= self.config.reload_ticks {
                    self.agents[i].ammo = magazine;
                    Outcome::Done
                } else {
                    Outcome::Continue
                }
            }
            Command::Heal => {
                if me.hp >= me.max_hp {
                    Outcome::Done
                } else if me.medkits == 0 {
                    Outcome::Failed(StepFailure::NoMedkit)
                } else if elapsed + 1 >= self.config.heal_ticks {
                    let heal = self.config.heal_amount;
                    let a = &mut self.agents[i];
                    a.medkits -= 1;
                    a.hp = a.hp.saturating_add(heal).min(a.max_hp);
                    Outcome::Done
                } else {
                    Outcome::Continue
                }
            }
            Command::Retreat => {
                let base = self.grid.base(me.team);
                if base.contains(me.position) {
                    return Outcome::Done;
                }
                let cells: Vec<Point> = self.grid.spawns(me.team).to_vec();
                let last_tick = elapsed + 1 >= self.config.retreat_ticks;
                match self.step_toward(i, &cells) {
                    Progress::There => Outcome::Done,
                    Progress::Moved if last_tick || base.contains(self.agents[i].position) => {
                        Outcome::Done
                    }
                    Progress::Moved => {
                        *stuck = 0;
                        Outcome::Continue
                    }
                    Progress::Blocked if last_tick => Outcome::Done,
                    Progress::Blocked => stuck_or_wait(stuck, stuck_ticks),
                    Progress::Unreachable => Outcome::Failed(StepFailure::Unreachable),
                }
            }
            Command::Wait => {
                if elapsed + 1 >= self.config.wait_ticks {
                    Outcome::Done
                } else {
                    Outcome::Continue
                }
            }
            Command::Say(text) => {
                report.said.push(Said {
                    agent: me.id,
                    text: text.clone(),
                });
                Outcome::Done
            }
        }
    }

    /// Moves agent `i` one cell nearer the nearest of `goals`, around cover and other agents.
    ///
    /// The agent follows the shortest way around everyone else if there is one, and otherwise
    /// the shortest way around cover alone, as far as it is free. Of the free neighbouring cells
    /// strictly nearer, the nearest wins, ties broken in the fixed order of [`steps`].
    fn step_toward(&mut self, i: usize, goals: &[Point]) -> Progress {
        let me = &self.agents[i];
        let (here, team) = (me.position, me.team);
        let plain = self.grid.distances_to(goals.iter().copied());
        let Some(distance) = plain.get(here) else {
            return Progress::Unreachable;
        };
        if distance == 0 {
            return Progress::There;
        }
        let others: Vec<Point> = self
            .agents
            .iter()
            .filter(|a| a.alive && a.id != me.id)
            .map(|a| a.position)
            .collect();
        let detour = self
            .grid
            .distances_avoiding(goals.iter().copied(), |p| others.contains(&p));
        let (field, now) = match detour.get(here) {
            Some(now) => (&detour, now),
            None => (&plain, distance),
        };
        let best = steps(team)
            .iter()
            .map(|&(dx, dy)| Point::new(here.x + dx, here.y + dy))
            .filter_map(|p| field.get(p).map(|d| (d, p)))
            .filter(|&(d, p)| d < now && !others.contains(&p))
            .min_by_key(|&(d, _)| d);
        match best {
            Some((_, p)) => {
                self.agents[i].position = p;
                Progress::Moved
            }
            None => Progress::Blocked,
        }
    }

    fn pick_up(&mut self, report: &mut TickReport) {
        let most = self.config.max_medkits;
        let respawn = self.config.pickup_respawn_ticks;
        let mut pickups = mem::take(&mut self.pickups);
        for pickup in &mut pickups {
            if pickup.respawn_in > 0 {
                pickup.respawn_in -= 1;
                continue;
            }
            let taker = self
                .agents
                .iter_mut()
                .find(|a| a.alive && a.position == pickup.at && a.medkits < most);
            if let Some(a) = taker {
                a.medkits += 1;
                pickup.respawn_in = respawn;
                report.picked_up.push(a.id);
            }
        }
        self.pickups = pickups;
    }

    fn score_objective(&mut self, report: &mut TickReport) {
        let zone = self.grid.objective();
        let holds = |team: Team, agents: &[Agent]| {
            agents
                .iter()
                .any(|a| a.alive && a.team == team && zone.contains(a.position))
        };
        let points = self.config.objective_points;
        for team in Team::ALL {
            if points > 0 && holds(team, &self.agents) && !holds(team.opponent(), &self.agents) {
                self.add_score(team, points, ScoreReason::Objective, report);
            }
        }
    }

    pub(crate) fn add_score(
        &mut self,
        team: Team,
        points: u32,
        reason: ScoreReason,
        report: &mut TickReport,
    ) {
        let total = &mut self.scores[team.index()];
        *total = total.saturating_add(points);
        report.score.push(ScoreChange {
            team,
            points,
            reason,
            total: *total,
        });
    }
}

/// One more tick without progress; the step fails once that has gone on for `limit` ticks.
fn stuck_or_wait(stuck: &mut u32, limit: u32) -> Outcome {
    *stuck += 1;
    if *stuck >= limit {
        Outcome::Failed(StepFailure::Blocked)
    } else {
        Outcome::Continue
    }
}

#[cfg(test)]
mod tests {
    use hivemind_core::plan::{ArgValue, PlanStep};

    use super::*;
    use crate::ArenaConfig;
    use crate::testing::{assets, play_goap};

    fn move_to(x: i32, y: i32) -> PlanStep {
        PlanStep::new("MoveTo").with_arg("to", ArgValue::Point(Point::new(x, y)))
    }

    /// Ticks until `agent`'s step ends; panics after `limit`.
    fn run(world: &mut ArenaWorld, agent: AgentId, limit: usize) -> (usize, StepOutcome) {
        for ticks in 1..=limit {
            let report = world.tick();
            if let Some(done) = report.finished.iter().find(|f| f.agent == agent) {
                return (ticks, *done);
            }
        }
        panic!("{agent}'s step did not end in {limit} ticks");
    }

    #[test]
    fn moves_go_one_cell_a_tick_around_cover_and_stay_on_the_map() {
        let mut world = ArenaWorld::new(ArenaConfig::default());
        let runner = AgentId(0);
        world.place(runner, Point::new(6, 6)).unwrap();
        // (7,6) and (7,7) are a pillar: the way to (8,6) goes around it.
        world.begin_step(runner, &move_to(8, 6)).unwrap();
        let mut trail = vec![Point::new(6, 6)];
        loop {
            let report = world.tick();
            let here = world.agent(runner).unwrap().position();
            assert_eq!(
                trail.last().unwrap().manhattan(here),
                1,
                "{trail:?} then {here}"
            );
            assert!(world.grid().is_walkable(here));
            trail.push(here);
            if let Some(ok) = report.finished(runner) {
                assert!(ok);
                break;
            }
        }
        assert_eq!(trail.len(), 5, "{trail:?}");
        assert_eq!(*trail.last().unwrap(), Point::new(8, 6));

        // Into a corner: it ends up there and no further.
        world.begin_step(runner, &move_to(0, 0)).unwrap();
        let (_, done) = run(&mut world, runner, 40);
        assert!(done.ok);
        assert_eq!(world.agent(runner).unwrap().position(), Point::new(0, 0));
    }

    #[test]
    fn agents_never_share_a_cell() {
        let mut world = ArenaWorld::new(ArenaConfig::default());
        let (runner, sentry) = (AgentId(0), AgentId(1));
        world.place(sentry, Point::new(10, 7)).unwrap();
        world.place(runner, Point::new(5, 7)).unwrap();
        world.begin_step(runner, &move_to(10, 7)).unwrap();
        // The runner stops next to the sentry on its target and calls it done.
        let (_, done) = run(&mut world, runner, 20);
        assert!(done.ok);
        let at = world.agent(runner).unwrap().position();
        assert_ne!(at, Point::new(10, 7));
        assert!((at.x - 10).abs() <= 1 && (at.y - 7).abs() <= 1, "{at}");

        // Boxed into a corner by two teammates, it gives up after `stuck_ticks`.
        world.place(runner, Point::new(0, 0)).unwrap();
        world.place(sentry, Point::new(1, 0)).unwrap();
        world.place(AgentId(2), Point::new(0, 1)).unwrap();
        world.begin_step(runner, &move_to(5, 5)).unwrap();
        let (ticks, done) = run(&mut world, runner, 10);
        assert_eq!((ticks, done.failure), (3, Some(StepFailure::Blocked)));
        assert_eq!(world.agent(runner).unwrap().position(), Point::new(0, 0));

        // Many agents walking to one cell: never two on one cell, never onto cover.
        let mut world = ArenaWorld::new(ArenaConfig::default());
        for agent in world.agent_ids().collect::<Vec<_>>() {
            world.begin_step(agent, &move_to(10, 7)).unwrap();
        }
        for _ in 0..30 {
            world.tick();
            let mut cells: Vec<Point> = world.agents().map(Agent::position).collect();
            assert!(cells.iter().all(|&p| world.grid().is_walkable(p)));
            cells.sort();
            cells.dedup();
            assert_eq!(cells.len(), 12);
        }
    }

    #[test]
    fn reload_heal_wait_say_and_retreat_run_their_course() {
        let mut world = ArenaWorld::new(ArenaConfig::default());
        let medic = AgentId(2);
        world.place(medic, Point::new(8, 8)).unwrap();

        world.set_ammo(medic, 0).unwrap();
        world.begin_step(medic, &PlanStep::new("Reload")).unwrap();
        let (ticks, done) = run(&mut world, medic, 5);
        assert_eq!((ticks, done.ok), (2, true));
        assert_eq!(world.agent(medic).unwrap().ammo(), 3);

        world.set_health(medic, 30).unwrap();
        world.begin_step(medic, &PlanStep::new("Heal")).unwrap();
        let (ticks, done) = run(&mut world, medic, 5);
        assert_eq!((ticks, done.ok), (2, true));
        let a = world.agent(medic).unwrap();
        assert_eq!((a.health().current, a.medkits()), (80, 0));

        world.begin_step(medic, &PlanStep::new("Heal")).unwrap();
        let (_, done) = run(&mut world, medic, 5);
        assert_eq!(done.failure, Some(StepFailure::NoMedkit));
        assert!(!done.ok);

        world.begin_step(medic, &PlanStep::new("Wait")).unwrap();
        assert_eq!(run(&mut world, medic, 5).0, 2);

        let line = PlanStep::new("Say").with_arg("text", ArgValue::Text("Moving up!".into()));
        world.begin_step(medic, &line).unwrap();
        let report = world.tick();
        assert_eq!(report.finished(medic), Some(true));
        assert_eq!(
            report.said,
            [Said {
                agent: medic,
                text: "Moving up!".into()
            }]
        );

        // Retreat lasts `retreat_ticks` and heads west, toward the Red base.
        world.begin_step(medic, &PlanStep::new("Retreat")).unwrap();
        let (ticks, done) = run(&mut world, medic, 10);
        assert_eq!((ticks, done.ok), (5, true));
        assert!(world.agent(medic).unwrap().position().x < 8);
    }

    #[test]
    fn the_objective_scores_for_a_team_holding_it_alone() {
        let mut world = ArenaWorld::new(ArenaConfig::default());
        world.place(AgentId(0), Point::new(9, 6)).unwrap();
        let report = world.tick();
        assert_eq!(world.score(Team::Red), 1);
        assert_eq!(report.score[0].reason, ScoreReason::Objective);
        world.place(AgentId(6), Point::new(11, 6)).unwrap();
        let report = world.tick();
        assert!(report.score.is_empty(), "contested: {:?}", report.score);
        assert_eq!(world.score(Team::Red), 1);
    }

    #[test]
    fn the_same_seed_plays_the_same_game() {
        let assets = assets();
        let play = |seed| {
            let mut world = ArenaWorld::new(ArenaConfig::default().with_seed(seed));
            let reports = play_goap(&mut world, &assets, 300, |_, _, _| {});
            (world.state_hash(), reports)
        };
        let (first, reports) = play(11);
        let (again, replayed) = play(11);
        assert_eq!(first, again);
        assert_eq!(reports, replayed);
        // The game went somewhere: shots, kills and points.
        assert!(reports.iter().any(|r| !r.kills.is_empty()));
        let (other, _) = play(12);
        assert_ne!(first, other);
        let (third, _) = play(13);
        assert_ne!(third, first);
        assert_ne!(third, other);
    }
}
