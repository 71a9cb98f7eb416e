//! The messages a game sends to hivemind, and the ones it gets back.
//!
//! # Delivery
//!
//! Every answer, whatever produced it, arrives the same way: [`PlanStepReady`] messages (for a
//! plan) or [`LineDelta`] messages (for a line), then **exactly one** completion message,
//! [`PlanReady`] or [`LineReady`]. The completion says where the answer came from
//! ([`PlanSource`]) and, if it stands in for the model's answer, why ([`FallbackReason`]). A
//! request the game cancels or replaces, or whose agent despawns, gets no completion.

use std::time::Duration;

use bevy::prelude::*;
use hivemind_core::lifecycle::{LineDone, PlanDone, StepReady, WordsReady};
pub use hivemind_core::lifecycle::{LineKind, RequestId, RequestSlot};
use hivemind_core::plan::{FallbackReason, PlanSource, PlanStep, RequestKind};

/// Asks for a plan for `agent`, which needs [`NpcAgent`](crate::NpcAgent) and an
/// [`AgentSnapshot`](crate::AgentSnapshot). A plan already on its way for the agent is replaced.
#[derive(Message, Clone, Debug, PartialEq, Eq, Reflect)]
pub struct RequestPlan {
    /// The agent.
    pub agent: Entity,
    /// A scene the player is watching: a router may send it to a bigger model.
    pub spotlight: bool,
    /// What the player just said to the agent, if the plan should answer it. Only the model
    /// reads it, and decides whether it is an order: a game sends every line the player says to
    /// an agent, without judging it. Such a plan bypasses the cache, and in the guided format
    /// the agent is offered every intent the planner can carry out
    /// ([`FallbackPlanner::order_intents`](crate::FallbackPlanner::order_intents)).
    pub order: Option<String>,
}

impl RequestPlan {
    /// A plan for `agent`.
    pub fn new(agent: Entity) -> Self {
        RequestPlan {
            agent,
            spotlight: false,
            order: None,
        }
    }

    /// A plan for `agent` that answers what the player just said to it.
    pub fn answering(agent: Entity, player_said: impl Into<String>) -> Self {
        RequestPlan {
            agent,
            spotlight: true,
            order: Some(player_said.into()),
        }
    }

    /// Marks the request as a spotlight scene, for chaining.
    pub fn spotlight(mut self) -> Self {
        self.spotlight = true;
        self
    }
}

/// Asks `agent` to say something. A line of the same kind already on its way is replaced.
#[derive(Message, Clone, Debug, PartialEq, Eq, Reflect)]
pub struct RequestLine {
    /// The agent.
    pub agent: Entity,
    /// Banter or a reply.
    pub kind: LineKind,
    /// The template situation, such as `low_health`: what the line is about, and which
    /// template answers if the model does not.
    pub situation: String,
    /// Values for the template's slots, such as `("enemy", "Kite")`.
    pub slots: Vec<(String, String)>,
    /// A scene the player is watching.
    pub spotlight: bool,
}

impl RequestLine {
    /// Banter about `situation`.
    pub fn banter(agent: Entity, situation: impl Into<String>) -> Self {
        RequestLine {
            agent,
            kind: LineKind::Banter,
            situation: situation.into(),
            slots: Vec::new(),
            spotlight: false,
        }
    }

    /// A reply to what the player said, in `situation`.
    pub fn reply(
        agent: Entity,
        situation: impl Into<String>,
        player_said: impl Into<String>,
    ) -> Self {
        RequestLine {
            agent,
            kind: LineKind::Dialogue {
                player_said: player_said.into(),
            },
            situation: situation.into(),
            slots: Vec::new(),
            spotlight: true,
        }
    }

    /// Adds a slot value, for chaining.
    pub fn with_slot(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.slots.push((name.into(), value.into()));
        self
    }

    /// The request kind.
    pub fn request_kind(&self) -> RequestKind {
        match self.kind {
            LineKind::Banter => RequestKind::Banter,
            LineKind::Dialogue { .. } => RequestKind::Dialogue,
        }
    }
}

/// Cancels an agent's request on its way: it gets no further message, and no completion.
#[derive(Message, Clone, Copy, Debug, PartialEq, Eq, Reflect)]
pub struct CancelRequest {
    /// The agent.
    pub agent: Entity,
    /// Which request; `None` cancels both.
    pub slot: Option<RequestSlot>,
}

impl CancelRequest {
    /// Cancels the agent's plan and line.
    pub fn all(agent: Entity) -> Self {
        CancelRequest { agent, slot: None }
    }

    /// Cancels the agent's plan.
    pub fn plan(agent: Entity) -> Self {
        CancelRequest {
            agent,
            slot: Some(RequestSlot::Plan),
        }
    }
}

/// The game finished (or failed) the agent's current step of its
/// [`ActivePlan`](crate::ActivePlan). The plan moves to its next step; a failed step asks for
/// a new plan.
#[derive(Message, Clone, Copy, Debug, PartialEq, Eq, Reflect)]
pub struct StepFinished {
    /// The agent.
    pub agent: Entity,
    /// Whether the step did what it should.
    pub ok: bool,
}

/// A step of a plan, as soon as it is known: while the model is still writing the rest, or as
/// part of a cached or fallback plan.
#[derive(Message, Clone, Debug, PartialEq, Reflect)]
pub struct PlanStepReady {
    /// The agent.
    pub agent: Entity,
    /// The request it answers.
    pub request: RequestId,
    /// Its position in the plan, from zero.
    pub index: usize,
    /// The step, valid in the agent's snapshot.
    pub step: PlanStep,
}

/// Words of a line, as soon as they are complete.
#[derive(Message, Clone, Debug, PartialEq, Eq, Reflect)]
pub struct LineDelta {
    /// The agent.
    pub agent: Entity,
    /// The request it answers.
    pub request: RequestId,
    /// The words, each with its trailing space.
    pub text: String,
}

/// A plan is complete: the last message for its request.
#[derive(Message, Clone, Debug, PartialEq, Reflect)]
pub struct PlanReady {
    /// The agent.
    pub agent: Entity,
    /// The request it answers.
    pub request: RequestId,
    /// Every step, as the [`PlanStepReady`] messages gave them.
    pub steps: Vec<PlanStep>,
    /// What the agent says while acting on it, if the answer carried a line.
    pub say: Option<String>,
    /// The guided intent the model chose (its goal, such as `heal`), or the cache remembered;
    /// `None` for a free plan and a fallback.
    pub intent: Option<String>,
    /// Where it came from.
    pub source: PlanSource,
    /// Why it stands in for the model's answer, if it does.
    pub fallback: Option<FallbackReason>,
    /// From the request to the first step, on hivemind's clock.
    pub first_after: Duration,
    /// From the request to this message's content being complete, on hivemind's clock.
    pub latency: Duration,
}

/// A line is complete: the last message for its request.
#[derive(Message, Clone, Debug, PartialEq, Reflect)]
pub struct LineReady {
    /// The agent.
    pub agent: Entity,
    /// The request it answers.
    pub request: RequestId,
    /// Banter or dialogue.
    pub kind: RequestKind,
    /// The whole line, as the [`LineDelta`] messages gave it, after the line filter.
    pub text: String,
    /// Where it came from.
    pub source: PlanSource,
    /// Why it stands in for the model's answer, if it does.
    pub fallback: Option<FallbackReason>,
    /// From the request to the first words, on hivemind's clock: for a bridged reply, the
    /// bridge's.
    pub first_after: Duration,
    /// From the request to the line being complete, on hivemind's clock.
    pub latency: Duration,
    /// Whether a reply began with a bridge ("Hm.", "Copy that,") from the persona's templates
    /// while the model's words were on their way; they follow it in the same line.
    pub bridged: bool,
}

impl From<StepReady<Entity>> for PlanStepReady {
    fn from(m: StepReady<Entity>) -> Self {
        PlanStepReady {
            agent: m.agent,
            request: m.request,
            index: m.index,
            step: m.step,
        }
    }
}

impl From<WordsReady<Entity>> for LineDelta {
    fn from(m: WordsReady<Entity>) -> Self {
        LineDelta {
            agent: m.agent,
            request: m.request,
            text: m.text,
        }
    }
}

impl From<PlanDone<Entity>> for PlanReady {
    fn from(m: PlanDone<Entity>) -> Self {
        PlanReady {
            agent: m.agent,
            request: m.request,
            steps: m.steps,
            say: m.say,
            intent: m.intent,
            source: m.source,
            fallback: m.fallback,
            first_after: m.first_after,
            latency: m.latency,
        }
    }
}

impl From<LineDone<Entity>> for LineReady {
    fn from(m: LineDone<Entity>) -> Self {
        LineReady {
            agent: m.agent,
            request: m.request,
            kind: m.kind,
            text: m.text,
            source: m.source,
            fallback: m.fallback,
            first_after: m.first_after,
            latency: m.latency,
            bridged: m.bridged,
        }
    }
}
