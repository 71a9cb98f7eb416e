//! Orders: how a [`PlanStep`] becomes what an agent does, and the two ways that can go wrong.
//!
//! [`ArenaWorld::begin_step`] checks a step's *shape* at once: the verb is one of [`verb::ALL`],
//! the arguments are the ones it takes with the right types, an attack target is an agent of the
//! other team, a cell is on the map and walkable, a cover point is one. A step that fails is
//! refused with a [`StepRejected`] and the agent keeps what it was doing.
//!
//! Whether a well-formed step *works out* is found while it runs: the target may die or slip out
//! of sight, the magazine may be empty, the way may be blocked. Such a step ends with
//! [`StepOutcome`](crate::tick::StepOutcome) `ok: false` and a [`StepFailure`].
//!
//! | verb | lasts | ends `ok` | fails with |
//! |---|---|---|---|
//! | `MoveTo{to}` | until there (one cell a tick) | there, or next to `to` while someone stands on it | `Unreachable`, `Blocked` |
//! | `Attack{target}` | one tick, plus up to `chase_ticks` closing in | a shot is fired (hit or miss) | `TargetDown`, `OutOfSight`, `NoAmmo`, `OutOfRange`, `Blocked` |
//! | `TakeCover{at}` | until there | there | `CellTaken`, `Unreachable`, `Blocked` |
//! | `Reload` | `reload_ticks` (one if already full) | magazine full | — |
//! | `Heal` | `heal_ticks` (one at full health, no medkit used) | health restored | `NoMedkit` |
//! | `Retreat` | until in the base, or `retreat_ticks` | either | `Unreachable`, `Blocked` |
//! | `Wait` | `wait_ticks` | always | — |
//! | `Say{text}` | one tick | always; the line is in the tick's report | — |
//!
//! Any step also fails with `Died` when its agent is killed.

use std::fmt;

use hivemind_core::plan::{ArgValue, PlanStep};
use hivemind_core::snapshot::{AgentId, Point};

use crate::world::{ArenaWorld, Order};

/// The verbs the arena understands; the same names as in `assets/actions.ron`.
pub mod verb {
    /// `MoveTo{to: cell}`: walk to a cell.
    pub const MOVE_TO: &str = "MoveTo";
    /// `Attack{target: enemy id}`: shoot a visible enemy.
    pub const ATTACK: &str = "Attack";
    /// `TakeCover{at: cover point}`: walk to a cover point.
    pub const TAKE_COVER: &str = "TakeCover";
    /// `Reload`: refill the magazine.
    pub const RELOAD: &str = "Reload";
    /// `Heal`: use a medkit.
    pub const HEAL: &str = "Heal";
    /// `Retreat`: fall back toward the own base.
    pub const RETREAT: &str = "Retreat";
    /// `Wait`: hold position; the idle verb.
    pub const WAIT: &str = "Wait";
    /// `Say{text}`: say a short line.
    pub const SAY: &str = "Say";

    /// Every verb, in the order of `assets/actions.ron`.
    pub const ALL: [&str; 8] = [
        MOVE_TO, ATTACK, TAKE_COVER, RELOAD, HEAL, RETREAT, WAIT, SAY,
    ];
}

/// A step checked and resolved against the world.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Command {
    MoveTo(Point),
    Attack(AgentId),
    TakeCover(Point),
    Reload,
    Heal,
    Retreat,
    Wait,
    Say(String),
}

/// Why [`ArenaWorld::begin_step`] refused a step. The agent keeps its current step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepRejected {
    /// No agent has this id.
    UnknownAgent {
        /// The id given.
        agent: AgentId,
    },
    /// The agent is dead; it takes orders again once it respawns.
    AgentDown {
        /// The id given.
        agent: AgentId,
    },
    /// The verb is not one of [`verb::ALL`].
    UnknownVerb {
        /// The verb as written.
        verb: String,
    },
    /// The verb needs an argument the step lacks.
    MissingArg {
        /// The verb.
        verb: &'static str,
        /// The missing argument.
        arg: &'static str,
    },
    /// The step has an argument the verb does not take.
    UnexpectedArg {
        /// The verb.
        verb: &'static str,
        /// The argument as written.
        arg: String,
    },
    /// An argument has the wrong type.
    WrongType {
        /// The verb.
        verb: &'static str,
        /// The argument.
        arg: &'static str,
        /// What it should be.
        expected: &'static str,
        /// What it was.
        found: ArgValue,
    },
    /// An attack target that is not an agent of the other team (an ally, oneself, or no agent).
    NotAnEnemy {
        /// The target as written.
        target: i64,
    },
    /// A cell off the map.
    OutOfBounds {
        /// The verb.
        verb: &'static str,
        /// The cell.
        point: Point,
    },
    /// A cell that is cover, where no one can stand.
    Blocked {
        /// The verb.
        verb: &'static str,
        /// The cell.
        point: Point,
    },
    /// A `TakeCover` cell that is not a cover point.
    NotCoverPoint {
        /// The cell.
        point: Point,
    },
    /// A `Say` line longer than [`ArenaConfig::max_say_chars`](crate::ArenaConfig::max_say_chars).
    TextTooLong {
        /// Its length in characters.
        chars: usize,
        /// The most allowed.
        max_chars: usize,
    },
}

impl fmt::Display for StepRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepRejected::UnknownAgent { agent } => write!(f, "no agent {agent}"),
            StepRejected::AgentDown { agent } => write!(f, "agent {agent} is dead"),
            StepRejected::UnknownVerb { verb } => write!(f, "unknown verb `{verb}`"),
            StepRejected::MissingArg { verb, arg } => write!(f, "`{verb}` needs `{arg}`"),
            StepRejected::UnexpectedArg { verb, arg } => {
                write!(f, "`{verb}` takes no argument `{arg}`")
            }
            StepRejected::WrongType {
                verb,
                arg,
                expected,
                found,
            } => write!(f, "`{verb}`: `{arg}` should be {expected}, found {found}"),
            StepRejected::NotAnEnemy { target } => write!(f, "`Attack`: {target} is not an enemy"),
            StepRejected::OutOfBounds { verb, point } => {
                write!(f, "`{verb}`: {point} is off the map")
            }
            StepRejected::Blocked { verb, point } => write!(f, "`{verb}`: {point} is cover"),
            StepRejected::NotCoverPoint { point } => {
                write!(f, "`TakeCover`: {point} is not a cover point")
            }
            StepRejected::TextTooLong { chars, max_chars } => {
                write!(f, "`Say`: {chars} characters, at most {max_chars} allowed")
            }
        }
    }
}

impl std::error::Error for StepRejected {}

/// Why a well-formed step ended with `ok: false`. See the [module docs](self) for which verb
/// fails how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepFailure {
    /// The attack target is dead.
    TargetDown,
    /// The attack target is not in sight (too far, or behind cover).
    OutOfSight,
    /// The target stayed out of range for `chase_ticks`.
    OutOfRange,
    /// The magazine is empty.
    NoAmmo,
    /// No medkit to heal with.
    NoMedkit,
    /// Other agents stood in the way for `stuck_ticks`.
    Blocked,
    /// Cover walls the destination off.
    Unreachable,
    /// Another agent holds the cover point.
    CellTaken,
    /// The agent was killed.
    Died,
}

impl StepFailure {
    /// A short snake-case name for logs and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            StepFailure::TargetDown => "target_down",
            StepFailure::OutOfSight => "out_of_sight",
            StepFailure::OutOfRange => "out_of_range",
            StepFailure::NoAmmo => "no_ammo",
            StepFailure::NoMedkit => "no_medkit",
            StepFailure::Blocked => "blocked",
            StepFailure::Unreachable => "unreachable",
            StepFailure::CellTaken => "cell_taken",
            StepFailure::Died => "died",
        }
    }
}

impl fmt::Display for StepFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ArenaWorld {
    /// Gives `agent` its next step, replacing the current one (which then reports nothing).
    ///
    /// The step's shape is checked now (see the [module docs](crate::orders)); whether it works
    /// out is reported by [`ArenaWorld::tick`]. A refused step leaves the agent as it was.
    pub fn begin_step(&mut self, agent: AgentId, step: &PlanStep) -> Result<(), StepRejected> {
        let command = self.check_step(agent, step)?;
        if let Some(a) = self.agents.get_mut(agent.0 as usize) {
            a.order = Some(Order {
                step: step.clone(),
                command,
                elapsed: 0,
                stuck: 0,
            });
        }
        Ok(())
    }

    /// Drops `agent`'s current step, if any, and returns it. The step reports nothing.
    pub fn cancel_step(&mut self, agent: AgentId) -> Option<PlanStep> {
        let order = self.agents.get_mut(agent.0 as usize)?.order.take()?;
        Some(order.step)
    }

    /// Whether [`ArenaWorld::begin_step`] would accept `step` for `agent`, without giving it.
    pub fn validate_step(&self, agent: AgentId, step: &PlanStep) -> Result<(), StepRejected> {
        self.check_step(agent, step).map(|_| ())
    }

    fn check_step(&self, agent: AgentId, step: &PlanStep) -> Result<Command, StepRejected> {
        let me = self
            .agent(agent)
            .ok_or(StepRejected::UnknownAgent { agent })?;
        if !me.is_alive() {
            return Err(StepRejected::AgentDown { agent });
        }
        let (verb, takes): (&'static str, Option<&'static str>) = match step.verb.as_str() {
            verb::MOVE_TO => (verb::MOVE_TO, Some("to")),
            verb::ATTACK => (verb::ATTACK, Some("target")),
            verb::TAKE_COVER => (verb::TAKE_COVER, Some("at")),
            verb::RELOAD => (verb::RELOAD, None),
            verb::HEAL => (verb::HEAL, None),
            verb::RETREAT => (verb::RETREAT, None),
            verb::WAIT => (verb::WAIT, None),
            verb::SAY => (verb::SAY, Some("text")),
            _ => {
                return Err(StepRejected::UnknownVerb {
                    verb: step.verb.clone(),
                });
            }
        };
        if let Some((name, _)) = step
            .args
            .iter()
            .find(|(name, _)| Some(name.as_str()) != takes)
        {
            return Err(StepRejected::UnexpectedArg {
                verb,
                arg: name.clone(),
            });
        }
        let Some(arg) = takes else {
            return Ok(match verb {
                verb::RELOAD => Command::Reload,
                verb::HEAL => Command::Heal,
                verb::RETREAT => Command::Retreat,
                _ => Command::Wait,
            });
        };
        let value = step
            .arg(arg)
            .ok_or(StepRejected::MissingArg { verb, arg })?;
        let wrong_type = |expected| StepRejected::WrongType {
            verb,
            arg,
            expected,
            found: value.clone(),
        };
        match verb {
            verb::ATTACK => {
                let ArgValue::Int(n) = value else {
                    return Err(wrong_type("an enemy id"));
                };
                let target = value
                    .as_entity()
                    .map(|e| AgentId(e.0))
                    .and_then(|id| self.agent(id))
                    .filter(|t| t.team() != me.team())
                    .ok_or(StepRejected::NotAnEnemy { target: *n })?;
                Ok(Command::Attack(target.id()))
            }
            verb::SAY => {
                let text = value.as_text().ok_or_else(|| wrong_type("text"))?;
                let chars = text.chars().count();
                let max_chars = self.config.max_say_chars;
                if chars > max_chars {
                    return Err(StepRejected::TextTooLong { chars, max_chars });
                }
                Ok(Command::Say(text.to_owned()))
            }
            _ => {
                let point = value.as_point().ok_or_else(|| wrong_type("a cell [x,y]"))?;
                if !self.grid.contains(point) {
                    return Err(StepRejected::OutOfBounds { verb, point });
                }
                if self.grid.is_cover(point) {
                    return Err(StepRejected::Blocked { verb, point });
                }
                if verb == verb::MOVE_TO {
                    Ok(Command::MoveTo(point))
                } else if self.grid.is_cover_point(point) {
                    Ok(Command::TakeCover(point))
                } else {
                    Err(StepRejected::NotCoverPoint { point })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ArenaConfig;

    fn world() -> ArenaWorld {
        ArenaWorld::new(ArenaConfig::default())
    }

    fn cell(x: i32, y: i32) -> ArgValue {
        ArgValue::Point(Point::new(x, y))
    }

    #[test]
    fn well_formed_steps_are_accepted_and_replace_the_current_one() {
        let mut world = world();
        let red_scout = AgentId(0);
        let steps = [
            PlanStep::new("MoveTo").with_arg("to", cell(10, 7)),
            PlanStep::new("Attack").with_arg("target", ArgValue::Int(6)),
            PlanStep::new("TakeCover").with_arg("at", cell(8, 6)),
            PlanStep::new("Reload"),
            PlanStep::new("Heal"),
            PlanStep::new("Retreat"),
            PlanStep::new("Wait"),
            PlanStep::new("Say").with_arg("text", ArgValue::Text("Hold the center!".into())),
        ];
        for step in &steps {
            assert_eq!(world.begin_step(red_scout, step), Ok(()), "{step}");
            assert_eq!(world.agent(red_scout).unwrap().step(), Some(step));
        }
        assert_eq!(world.cancel_step(red_scout), Some(steps[7].clone()));
        assert!(world.is_idle(red_scout));
    }

    #[test]
    fn malformed_steps_are_rejected_with_typed_errors() {
        let mut world = world();
        let red_scout = AgentId(0);
        world.begin_step(red_scout, &PlanStep::new("Wait")).unwrap();
        let reject = |world: &mut ArenaWorld, step: PlanStep| {
            world.begin_step(red_scout, &step).unwrap_err()
        };

        assert_eq!(
            reject(&mut world, PlanStep::new("Dance")),
            StepRejected::UnknownVerb {
                verb: "Dance".into()
            }
        );
        // An ally, oneself, and nobody are not enemies.
        for target in [1, 0, 12, -3] {
            assert_eq!(
                reject(
                    &mut world,
                    PlanStep::new("Attack").with_arg("target", ArgValue::Int(target))
                ),
                StepRejected::NotAnEnemy { target }
            );
        }
        assert_eq!(
            reject(
                &mut world,
                PlanStep::new("MoveTo").with_arg("to", cell(20, 3))
            ),
            StepRejected::OutOfBounds {
                verb: "MoveTo",
                point: Point::new(20, 3)
            }
        );
        assert_eq!(
            reject(
                &mut world,
                PlanStep::new("MoveTo").with_arg("to", cell(7, 6))
            ),
            StepRejected::Blocked {
                verb: "MoveTo",
                point: Point::new(7, 6)
            }
        );
        assert_eq!(
            reject(
                &mut world,
                PlanStep::new("TakeCover").with_arg("at", cell(10, 7))
            ),
            StepRejected::NotCoverPoint {
                point: Point::new(10, 7)
            }
        );
        assert_eq!(
            reject(&mut world, PlanStep::new("Attack")),
            StepRejected::MissingArg {
                verb: "Attack",
                arg: "target"
            }
        );
        assert_eq!(
            reject(
                &mut world,
                PlanStep::new("Reload").with_arg("fast", ArgValue::Int(1))
            ),
            StepRejected::UnexpectedArg {
                verb: "Reload",
                arg: "fast".into()
            }
        );
        assert!(matches!(
            reject(
                &mut world,
                PlanStep::new("MoveTo").with_arg("to", ArgValue::Int(3))
            ),
            StepRejected::WrongType {
                verb: "MoveTo",
                arg: "to",
                ..
            }
        ));
        let speech = "x".repeat(61);
        assert_eq!(
            reject(
                &mut world,
                PlanStep::new("Say").with_arg("text", ArgValue::Text(speech))
            ),
            StepRejected::TextTooLong {
                chars: 61,
                max_chars: 60
            }
        );
        assert_eq!(
            world.begin_step(AgentId(77), &PlanStep::new("Wait")),
            Err(StepRejected::UnknownAgent { agent: AgentId(77) })
        );
        // The agent kept its step through all of that.
        assert_eq!(
            world.agent(red_scout).unwrap().step(),
            Some(&PlanStep::new("Wait"))
        );
        let message = StepRejected::NotAnEnemy { target: 1 }.to_string();
        assert_eq!(message, "`Attack`: 1 is not an enemy");
    }
}
