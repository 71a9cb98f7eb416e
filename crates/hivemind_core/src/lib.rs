//! The engine-free core of hivemind.
//!
//! Everything here builds and tests without Bevy, llama.cpp or a network: the data the product
//! speaks ([`snapshot`], [`action`], [`plan`]), how prompts and grammars are built from it
//! ([`prompt`], [`grammar`]), how model output is read back ([`stream`]), the configuration
//! and clock every other crate shares ([`config`], [`clock`]), the hooks a game plugs its rules
//! in with ([`hooks`]), and the request lifecycle that decides every answer ([`lifecycle`]).
//!
//! # Design
//!
//! A small model writes valid plans only when it cannot write anything else, so the core makes
//! validity a property of construction rather than of luck. The [`grammar`] for each batch is
//! generated from the [`action::ActionRegistry`] *and* each agent's own snapshot: a model can only
//! name an enemy the agent sees and a cover point the snapshot lists, and a verb with nothing to
//! act on is absent. The [`stream`] parser then reads exactly that shape, incrementally, so a step
//! can be acted on the moment its closing brace is decoded rather than when the whole answer is.
//!
//! Prompts are a tree of byte-stable levels (rules, then persona, then agent), because the cost
//! of a small local model is dominated by prompt tokens: a backend that keeps the key/value state
//! of each level decodes the shared parts once. Time is one [`clock::Clock`] with a real-time mode
//! for play and a lockstep mode in which a job's duration is a function of its token counts, so a
//! whole run, deadlines and fallbacks included, repeats exactly for a seed.
//!
//! What an NPC is answered with (the deadline, the prepared fallback, repair, the cache, exactly
//! one completion) is decided by [`lifecycle::Lifecycle`], a state machine generic over the
//! game's agent key, so its rules are unit-tested with plain values and a manual clock; an
//! engine plugin only moves messages in and out of it.
//!
//! Nothing in this crate panics on input it did not create: model output, RON files and player
//! text all come back as typed errors.

pub mod action;
pub mod backend;
pub mod banter;
pub mod cache;
pub mod clock;
pub mod config;
pub mod goap;
pub mod grammar;
pub mod hooks;
pub mod lifecycle;
pub mod metrics;
pub mod plan;
pub mod prompt;
pub mod router;
pub mod snapshot;
pub mod stream;
pub mod templates;
pub mod worker;

/// The types most users need.
pub mod prelude {
    pub use crate::action::{ActionRegistry, ArgKind};
    pub use crate::clock::{Clock, Timestamp};
    pub use crate::config::HivemindConfig;
    pub use crate::hooks::{CopyCheck, FallbackPlanner, LineFilter, LineRules, LineVerdict};
    pub use crate::plan::{
        ArgValue, BackendId, FallbackReason, OutputFormat, Plan, PlanSource, PlanStep, RequestKind,
    };
    pub use crate::snapshot::{AgentId, EntityId, EntityInfo, Fact, Health, Point, WorldSnapshot};
}
