//! The request lifecycle: from a game's request to exactly one completion, whatever answers it.
//!
//! [`Lifecycle`] is the engine room of hivemind, in plain Rust and generic over the game's key
//! for an agent (a Bevy `Entity`, a `u32`, …). The game (or the Bevy plugin) feeds it requests
//! and lets it read the workers' events; it answers with [`Outgoing`] messages. Everything that
//! decides an NPC's answer lives here: deadlines, the prepared fallback, repair, the cache and
//! exactly-once delivery. The plugin's systems only move messages in and out.
//!
//! # Phases
//!
//! Each request is in one [`Phase`]:
//!
//! ```text
//!            first step / words in time                    job ends
//!   Waiting ───────────────────────────────▶ Streaming ─────────────▶ (completion, gone)
//!      │  deadline passed, drain cut short ─▶ Overdue ─┐
//!      │  deadline passed                              ▼
//!      └──────────────────────────────────────▶ CacheOnly ──job ends──▶ (cache filled, gone)
//! ```
//!
//! | rule | transition |
//! |---|---|
//! | a plan's first step (a line's first words) is produced in time | [`Lifecycle::handle`]: `Waiting → Streaming`; the rest streams |
//! | nothing in time | [`Lifecycle::answer_late`]: the prepared fallback answers, `fallback: Some(Deadline)`; `→ CacheOnly` |
//! | the model fails after some steps | the steps stand, the planner completes the plan: `Llm { repaired: true }` |
//! | a model step fails the planner's check | it and the rest are replaced by the planner's completion: `Llm { repaired: true }` |
//! | the model finishes after its fallback | its answer fills the cache, never the agent |
//! | the queue overflows, the backend fails, the output does not parse | the fallback answers at once with that reason |
//! | the game cancels or replaces a request, or its agent despawns | no further message, no completion |
//! | banter | never waits: an idle-time model line (`Cache`) or a template, at once |
//! | the game's clock pauses | deadlines pause too ([`Clock`](crate::clock::Clock)) |
//!
//! A request's fallback is prepared when it is queued, off the caller's thread where a
//! [`FallbackExecutor`] says so, so meeting a deadline costs only a message.

mod deliver;
mod request;
mod runtime;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

pub use request::{
    Answer, BRIDGE_SITUATION, FallbackExecutor, FallbackWork, InlineExecutor, PendingAnswer, Phase,
    run_all,
};
pub use runtime::{Lifecycle, LifecycleParts};

use crate::plan::{BackendId, FallbackReason, PlanSource, PlanStep, RequestKind};
use crate::snapshot::WorldSnapshot;

/// The key a game gives its agents: a Bevy `Entity`, an index, an id.
pub trait AgentKey: Copy + Eq + Ord + std::hash::Hash + fmt::Debug + Send + Sync + 'static {}

impl<K> AgentKey for K where
    K: Copy + Eq + Ord + std::hash::Hash + fmt::Debug + Send + Sync + 'static
{
}

/// Names one request, from the moment hivemind reads it until its completion message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// Which of an agent's requests a cancel ends: an agent has at most one of each in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub enum RequestSlot {
    /// Its plan.
    Plan,
    /// Its line of dialogue.
    Dialogue,
}

impl RequestSlot {
    /// Both slots.
    pub const ALL: [RequestSlot; 2] = [RequestSlot::Plan, RequestSlot::Dialogue];

    /// The slot a request of `kind` occupies; banter is answered at once and occupies none.
    pub fn of(kind: RequestKind) -> Option<Self> {
        match kind {
            RequestKind::Plan => Some(RequestSlot::Plan),
            RequestKind::Dialogue => Some(RequestSlot::Dialogue),
            RequestKind::Banter => None,
        }
    }
}

/// Which kind of line to say.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub enum LineKind {
    /// A remark about the situation. Answered at once, never by waiting for a model: from lines
    /// the model wrote in idle time, or from the templates.
    Banter,
    /// A reply to the player.
    Dialogue {
        /// What the player said. Escaped before it reaches a prompt.
        player_said: String,
    },
}

/// What a game asks for.
#[derive(Clone, Debug)]
pub struct NewRequest<K> {
    /// The agent.
    pub agent: K,
    /// Its persona.
    pub persona: String,
    /// A scene the player is watching: a router may send it to another backend.
    pub spotlight: bool,
    /// What it knows.
    pub snapshot: WorldSnapshot,
    /// Plan, or which line.
    pub ask: Ask,
}

/// The body of a [`NewRequest`].
#[derive(Clone, Debug)]
pub enum Ask {
    /// A plan.
    Plan {
        /// What the player just said to the agent, if the plan should answer it. The model reads
        /// it (the planner never does) and decides whether it is an order; a plan that answers
        /// one bypasses the cache, both ways.
        order: Option<String>,
    },
    /// A line.
    Line {
        /// Banter or a reply.
        kind: LineKind,
        /// The template situation.
        situation: String,
        /// The template's slot values.
        slots: Vec<(String, String)>,
        /// The conversation so far, for a reply: (player, agent) pairs.
        history: Vec<(String, String)>,
    },
}

impl Ask {
    /// The request kind it makes.
    pub fn kind(&self) -> RequestKind {
        match self {
            Ask::Plan { .. } => RequestKind::Plan,
            Ask::Line {
                kind: LineKind::Banter,
                ..
            } => RequestKind::Banter,
            Ask::Line { .. } => RequestKind::Dialogue,
        }
    }
}

/// A step of a plan, as soon as it is known.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReady<K> {
    /// The agent.
    pub agent: K,
    /// The request it answers.
    pub request: RequestId,
    /// Its position in the plan, from zero.
    pub index: usize,
    /// The step, valid in the agent's snapshot.
    pub step: PlanStep,
}

/// Words of a line, as soon as they are complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WordsReady<K> {
    /// The agent.
    pub agent: K,
    /// The request it answers.
    pub request: RequestId,
    /// The words, each with its trailing space.
    pub text: String,
}

/// A complete plan: the last message for its request.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanDone<K> {
    /// The agent.
    pub agent: K,
    /// The request it answers.
    pub request: RequestId,
    /// Every step, as the [`StepReady`] messages gave them.
    pub steps: Vec<PlanStep>,
    /// What the agent says while acting on it, if the answer carried a line.
    pub say: Option<String>,
    /// The guided intent the plan carries out, as the model chose it (an
    /// [`IntentOption::goal`](crate::prompt::IntentOption::goal)), or as the cache remembered it;
    /// `None` for a free plan and a fallback.
    pub intent: Option<String>,
    /// Where it came from.
    pub source: PlanSource,
    /// Why it stands in for the model's answer, if it does.
    pub fallback: Option<FallbackReason>,
    /// From the request to the first step.
    pub first_after: Duration,
    /// From the request to the plan being complete.
    pub latency: Duration,
}

/// A complete line: the last message for its request.
#[derive(Clone, Debug, PartialEq)]
pub struct LineDone<K> {
    /// The agent.
    pub agent: K,
    /// The request it answers.
    pub request: RequestId,
    /// Banter or dialogue.
    pub kind: RequestKind,
    /// The whole line, as the [`WordsReady`] messages gave it, after the line filter.
    pub text: String,
    /// Where it came from.
    pub source: PlanSource,
    /// Why it stands in for the model's answer, if it does.
    pub fallback: Option<FallbackReason>,
    /// From the request to the first words (a bridge's, for a bridged reply).
    pub first_after: Duration,
    /// From the request to the line being complete.
    pub latency: Duration,
    /// Whether the line began with a bridge while the model's words were on their way.
    pub bridged: bool,
    /// What the player said, for a reply: the conversation memory keeps the pair.
    pub player_said: Option<String>,
}

/// A message for the game.
#[derive(Clone, Debug, PartialEq)]
pub enum Outgoing<K> {
    /// A step of a plan.
    Step(StepReady<K>),
    /// Words of a line.
    Words(WordsReady<K>),
    /// A plan is complete.
    Plan(PlanDone<K>),
    /// A line is complete.
    Line(LineDone<K>),
}

impl<K: Copy> Outgoing<K> {
    /// The agent the message names.
    pub fn agent(&self) -> K {
        match self {
            Outgoing::Step(m) => m.agent,
            Outgoing::Words(m) => m.agent,
            Outgoing::Plan(m) => m.agent,
            Outgoing::Line(m) => m.agent,
        }
    }

    /// The request the message answers.
    pub fn request(&self) -> RequestId {
        match self {
            Outgoing::Step(m) => m.request,
            Outgoing::Words(m) => m.request,
            Outgoing::Plan(m) => m.request,
            Outgoing::Line(m) => m.request,
        }
    }

    /// The slot of the request, if the message completes one that has a slot.
    fn completes_slot(&self) -> Option<RequestSlot> {
        match self {
            Outgoing::Plan(_) => Some(RequestSlot::Plan),
            Outgoing::Line(m) => RequestSlot::of(m.kind),
            Outgoing::Step(_) | Outgoing::Words(_) => None,
        }
    }
}

/// Why every answer comes from fallbacks, if it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FallbackOnly {
    /// [`Lifecycle::set_force_fallback`] (the console's `hm force-fallback on`).
    Forced,
    /// No backend is registered.
    NoBackend,
    /// The backend could not load its model.
    NoModel(String),
}

impl fmt::Display for FallbackOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackOnly::Forced => f.write_str("forced"),
            FallbackOnly::NoBackend => f.write_str("no backend"),
            FallbackOnly::NoModel(why) => write!(f, "no model ({why})"),
        }
    }
}

/// Asked for a backend the game did not register.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no backend `{0}` is registered")]
pub struct UnknownBackend(pub BackendId);

/// Two backends registered under one id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("two backends are named `{0}`: rename one with `BackendFactoryExt::with_id`")]
pub struct DuplicateBackend(pub BackendId);
