//! What an NPC entity carries.

use std::collections::VecDeque;

use bevy::prelude::*;
use hivemind_core::plan::{FallbackReason, PlanSource, PlanStep, RequestKind};
use hivemind_core::snapshot::{WorldSnapshot, estimate_tokens};

use crate::messages::RequestId;

/// Marks an entity as an agent hivemind plans and speaks for.
///
/// Requires an [`AgentSnapshot`], which the game keeps up to date, and brings an [`ActivePlan`]
/// and a [`Conversation`] with it.
#[derive(Component, Clone, Debug, PartialEq, Eq, Reflect)]
#[reflect(Component)]
#[require(AgentSnapshot, ActivePlan, Conversation)]
pub struct NpcAgent {
    /// The persona it speaks and plans as: a persona's name in the prompt asset.
    pub persona: String,
    /// Which kinds of request it may make.
    pub kinds: RequestKinds,
}

impl NpcAgent {
    /// An agent speaking as `persona`, allowed every kind of request.
    pub fn new(persona: impl Into<String>) -> Self {
        NpcAgent {
            persona: persona.into(),
            kinds: RequestKinds::ALL,
        }
    }

    /// Sets the kinds of request it may make, for chaining.
    pub fn with_kinds(mut self, kinds: RequestKinds) -> Self {
        self.kinds = kinds;
        self
    }
}

/// The kinds of request an agent may make; others are ignored with a warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Reflect)]
pub struct RequestKinds {
    /// Plans.
    pub plan: bool,
    /// Replies to the player.
    pub dialogue: bool,
    /// Remarks.
    pub banter: bool,
}

impl RequestKinds {
    /// Every kind.
    pub const ALL: RequestKinds = RequestKinds {
        plan: true,
        dialogue: true,
        banter: true,
    };

    /// Whether `kind` is allowed.
    pub fn allows(self, kind: RequestKind) -> bool {
        match kind {
            RequestKind::Plan => self.plan,
            RequestKind::Dialogue => self.dialogue,
            RequestKind::Banter => self.banter,
        }
    }
}

impl Default for RequestKinds {
    fn default() -> Self {
        RequestKinds::ALL
    }
}

/// What the agent knows, in hivemind's terms. The game fills it (every frame, or only before it
/// asks for something); a request takes a copy when it is read.
#[derive(Component, Clone, Debug, Default, PartialEq, Reflect, Deref, DerefMut)]
#[reflect(Component)]
pub struct AgentSnapshot(pub WorldSnapshot);

/// Present while the agent waits for a plan or a reply.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Reflect)]
#[reflect(Component)]
pub struct Thinking {
    /// The request being answered.
    pub request: RequestId,
    /// Its kind.
    pub kind: RequestKind,
}

/// Where the agent's current plan stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Reflect)]
pub enum PlanStatus {
    /// No plan yet, or the last one was used up.
    #[default]
    Idle,
    /// Steps are still arriving.
    Streaming,
    /// Every step has arrived.
    Complete,
    /// A step failed; a new plan has been asked for.
    Failed,
}

/// The plan the agent acts on: its steps so far, which one is current, and where it came from.
///
/// hivemind fills it from [`PlanStepReady`](crate::PlanStepReady) and
/// [`PlanReady`](crate::PlanReady), and moves [`current`](Self::current) on when the game sends
/// [`StepFinished`](crate::StepFinished).
#[derive(Component, Clone, Debug, Default, PartialEq, Reflect)]
#[reflect(Component)]
pub struct ActivePlan {
    /// The request that made it.
    pub request: Option<RequestId>,
    /// Its steps so far.
    pub steps: Vec<PlanStep>,
    /// The step being carried out.
    pub current: usize,
    /// Where it stands.
    pub status: PlanStatus,
    /// Where it came from, once complete.
    pub source: Option<PlanSource>,
    /// Why it stands in for a model's plan, once complete, if it does.
    pub fallback: Option<FallbackReason>,
    /// The step whose verb handler last ran, so that each step starts once.
    #[reflect(ignore)]
    pub(crate) started: Option<(RequestId, usize)>,
}

impl ActivePlan {
    /// The step being carried out, if any.
    pub fn current_step(&self) -> Option<&PlanStep> {
        self.steps.get(self.current)
    }

    /// Whether every step is done and no more will come.
    pub fn is_finished(&self) -> bool {
        self.status != PlanStatus::Streaming && self.current >= self.steps.len()
    }
}

/// One exchange between the player and the agent.
#[derive(Clone, Debug, PartialEq, Eq, Reflect)]
pub struct Exchange {
    /// What the player said.
    pub player: String,
    /// What the agent answered.
    pub reply: String,
}

/// The agent's last exchanges with the player, oldest first, trimmed to a token budget
/// (`budgets.conversation_tokens`). Dialogue prompts show them.
#[derive(Component, Clone, Debug, Default, PartialEq, Eq, Reflect)]
#[reflect(Component)]
pub struct Conversation {
    /// The exchanges kept.
    pub exchanges: VecDeque<Exchange>,
}

impl Conversation {
    /// Adds an exchange, then forgets the oldest ones until the rest fit `budget_tokens`.
    pub fn push(&mut self, player: String, reply: String, budget_tokens: usize) {
        self.exchanges.push_back(Exchange { player, reply });
        let cost = |e: &Exchange| estimate_tokens(&e.player) + estimate_tokens(&e.reply) + 4;
        let mut total: usize = self.exchanges.iter().map(cost).sum();
        while total > budget_tokens {
            let Some(oldest) = self.exchanges.pop_front() else {
                break;
            };
            total -= cost(&oldest);
        }
    }

    /// The exchanges as prompts show them: (who spoke, what was said), oldest first.
    pub fn history(&self) -> Vec<(String, String)> {
        self.exchanges
            .iter()
            .flat_map(|e| {
                [
                    ("player".to_owned(), e.player.clone()),
                    ("you".to_owned(), e.reply.clone()),
                ]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_forgets_its_oldest_exchanges_past_the_budget() {
        let mut talk = Conversation::default();
        for i in 0..20 {
            talk.push(
                format!("where is the medkit number {i}"),
                format!("behind the east wall, {i}"),
                64,
            );
        }
        assert!(talk.exchanges.len() < 20);
        assert_eq!(
            talk.exchanges.back().map(|e| e.reply.as_str()),
            Some("behind the east wall, 19")
        );
        let kept: usize = talk
            .exchanges
            .iter()
            .map(|e| estimate_tokens(&e.player) + estimate_tokens(&e.reply) + 4)
            .sum();
        assert!(kept <= 64, "{kept}");
        assert_eq!(talk.history().len(), talk.exchanges.len() * 2);
    }
}
