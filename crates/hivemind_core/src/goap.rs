//! Goal-oriented action planning: A* over symbolic facts.
//!
//! A [`Domain`] names integer facts (booleans are `0`/`1`), actions with preconditions, effects
//! and costs, and goals. [`Planner::plan`] finds the cheapest sequence of actions that takes a
//! [`State`] to a [`Goal`]; [`verify`] replays a plan written by someone else (a model, say) and
//! names the first step whose preconditions do not hold; [`Planner::repair`] keeps the part of
//! such a plan that verifies and plans the rest. The planner is purely symbolic: it knows nothing
//! of targets or coordinates, which are bound to steps elsewhere.
//!
//! # Domain files
//!
//! Domains are RON files (conventionally under `assets/goap/`):
//!
//! ```ron
//! (
//!     // Optional: facts the game sets that no action or goal mentions yet.
//!     facts: ["enemy_visible"],
//!     actions: [
//!         (name: "reload", cost: 1.0, pre: [("ammo", Eq, 0)], effects: [("ammo", Set, 3)]),
//!         (
//!             name: "attack",
//!             cost: 1.0,
//!             pre: [("ammo", Gt, 0), ("enemy_visible", Eq, 1)],
//!             effects: [("ammo", Add, -1), ("enemy_hurt", Set, 1)],
//!         ),
//!     ],
//!     goals: [(name: "hurt_enemy", conditions: [("enemy_hurt", Eq, 1)])],
//! )
//! ```
//!
//! - A condition is `(fact, op, value)` with `op` one of `Eq`, `Ne`, `Lt`, `Le`, `Gt`, `Ge`.
//! - An effect is `(fact, Set, value)` or `(fact, Add, delta)`; `Add` saturates at the bounds
//!   of `i32`. Effects apply in the order written.
//! - `cost` defaults to `1.0` and must be positive and finite; `pre`, `effects`, `facts` and
//!   `goals` default to empty. Action names and goal names must be unique and not empty.
//! - Facts are interned in order of first mention (`facts`, then actions, then goals). A state
//!   gives every fact it does not mention the value `0`.
//!
//! ```
//! use hivemind_core::goap::{Domain, Planner};
//!
//! let domain = Domain::from_ron(
//!     r#"(
//!         actions: [
//!             (name: "reload", cost: 1.0, pre: [("ammo", Eq, 0)], effects: [("ammo", Set, 3)]),
//!             (name: "attack", cost: 1.0, pre: [("ammo", Gt, 0), ("enemy_visible", Eq, 1)],
//!              effects: [("ammo", Add, -1), ("enemy_hurt", Set, 1)]),
//!         ],
//!         goals: [(name: "hurt_enemy", conditions: [("enemy_hurt", Eq, 1)])],
//!     )"#,
//!     "guard.ron",
//! )?;
//! let start = domain.state_from(&[("enemy_visible", 1)])?;
//! let goal = domain.goal("hurt_enemy").ok_or("no such goal")?;
//! let plan = Planner::default().plan(&domain, &start, goal)?;
//! let names: Vec<_> = plan.actions.iter().filter_map(|&a| domain.action_name(a)).collect();
//! assert_eq!(names, ["reload", "attack"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Design
//!
//! GOAP runs on the fallback path, where a plan must be ready in tens of microseconds, so the
//! search allocates nothing per node once its buffers have grown: every node's state lives in one
//! flat arena of `i32`s, the open list is a binary heap of small `Copy` entries pointing into it,
//! and visited states are found through an open-addressing table that hashes the arena slices
//! in place. A [`Planner`] keeps those buffers between calls; the free functions build a fresh
//! one each time.
//!
//! The heuristic is the larger of two lower bounds on the remaining cost: the cheapest action
//! that touches the costliest unmet goal fact, and the number of unmet goal facts divided by the
//! most facts one action touches, times the domain's cheapest cost. Both are consistent, so A*
//! returns a cheapest plan; a goal fact that no action touches and that does not already hold
//! makes a state a dead end at once instead of after an exhaustive search. Ties in the open
//! list are broken by a fixed rule (closer to the goal first, then generation order, which
//! follows the domain's action order), never by hashing, so the same domain, start and goal
//! always give the same plan.

mod domain;
mod search;

pub use domain::{
    Action, ActionId, Compare, Condition, Domain, Effect, EffectOp, FactId, Goal, GoapError, State,
};
pub use search::{
    GoapPlan, NoPlanReason, PlanError, Planner, PlannerLimits, Repair, UnmetCondition, VerifyError,
    plan, repair, verify, verify_names,
};

#[cfg(test)]
mod fixtures;
