//! The rules of hivemind's example arena as a library: world, movement, damage, scoring and
//! snapshots, shared by the example, the tests, the benchmarks and the scenario suite.
//!
//! Two teams of agents, Red and Blue, start at their bases on opposite sides of a grid with
//! mirrored cover ([`grid`]). Each agent carries out one [`PlanStep`] at a time, in the verbs of
//! `assets/actions.ron` ([`orders`]); [`ArenaWorld::tick`] moves everyone one tick on and
//! reports what happened ([`tick`]): steps finished or failed, shots, kills ([`combat`]), points
//! for kills and for holding the objective zone alone, and lines said. [`ArenaWorld::snapshot`]
//! tells an agent what it knows in hivemind's [`WorldSnapshot`] ([`snapshot`]), from which
//! [`fallback_plan`] makes a GOAP plan ([`planning`]) and [`situation`] picks something to banter
//! about ([`banter`]). [`ArenaPlanner`] hands those rules to hivemind as its fallback planner.
//!
//! ```
//! use hivemind_arena::{ArenaConfig, ArenaWorld};
//! use hivemind_core::plan::{ArgValue, PlanStep};
//! use hivemind_core::snapshot::{AgentId, Point};
//!
//! let mut world = ArenaWorld::new(ArenaConfig::default().with_seed(7));
//! let red_scout = AgentId(0);
//! let to_center = PlanStep::new("MoveTo").with_arg("to", ArgValue::Point(Point::new(10, 7)));
//! world.begin_step(red_scout, &to_center)?;
//! let mut ticks = 0;
//! while world.tick().finished(red_scout).is_none() {
//!     ticks += 1;
//! }
//! assert_eq!(world.agent(red_scout).map(|a| a.position()), Some(Point::new(10, 7)));
//! assert!(world.snapshot(red_scout).render().contains("at_objective=yes"));
//! # assert!(ticks < 20);
//! # Ok::<(), hivemind_arena::StepRejected>(())
//! ```
//!
//! # Design
//!
//! The rules live outside the example so that headless tests, benchmarks and the scenario suite
//! run exactly the game a developer watches, and they know nothing of Bevy: a game loop is
//! `begin_step` for every idle agent, then `tick`, which is as easy to drive from a Bevy system
//! as from a `for` loop. The arena is one [`WorldSnapshot`] schema among many rather than
//! something the core knows about, and the GOAP side reads only snapshots, never the world, so
//! the fallback planner works the same on a live agent, a recorded one, or a hand-written test.
//! Its names (`ArenaWorld`, `StepOutcome`) keep clear of Bevy's and hivemind's, since the Bevy
//! app that runs the arena imports all three.
//!
//! A run must repeat exactly for a seed, because determinism tests, replays and lockstep
//! benchmarks compare runs by [`ArenaWorld::state_hash`]. So every random draw comes from one
//! generator, rand's portable `Xoshiro256PlusPlus`, sampled with fixed arithmetic; every phase
//! of a tick iterates agents in id order; and shots are resolved after everyone has acted, so the
//! order in which agents are processed never decides who fires first. Inputs from outside (a
//! model's steps) are checked by [`ArenaWorld::begin_step`] and refused with a typed
//! [`StepRejected`]: nothing here panics on a step it did not make.

pub mod assets;
pub mod banter;
pub mod combat;
pub mod config;
pub mod grid;
pub mod intents;
pub mod orders;
pub mod planner;
pub mod planning;
pub mod play;
pub mod scenarios;
pub mod snapshot;
pub mod tick;
pub mod value;
pub mod world;

#[cfg(test)]
mod testing;

pub use assets::{ArenaAssets, LoadError, PromptAsset};
pub use banter::{banter_slots, situation};
pub use config::ArenaConfig;
pub use grid::{Grid, Team};
pub use intents::intents;
pub use orders::{StepFailure, StepRejected};
pub use planner::ArenaPlanner;
pub use planning::{
    bind_action, complete_plan, expand_intent, fallback_goal, fallback_plan, first_invalid,
    goap_state, intent_is_valid,
};
pub use tick::{StepOutcome, TickReport};
pub use world::{Agent, ArenaWorld, SetupError};

#[doc(no_inline)]
pub use hivemind_core::plan::PlanStep;
#[doc(no_inline)]
pub use hivemind_core::snapshot::WorldSnapshot;
