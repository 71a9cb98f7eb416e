//! The player talks to an arena agent: what was said becomes a reply and a plan that answers it.
//!
//! A game's talk box (or a test) writes [`PlayerSaid`]. Before hivemind's Gather, the agent is
//! sent both:
//!
//! - [`RequestLine::reply`] in the `player_talk` situation, whose words stream into the agent's
//!   speech as [`LineDelta`]s and end with one [`LineReady`]; hivemind keeps the exchange in
//!   the agent's [`Conversation`];
//! - [`RequestPlan::answering`] with the same words, which replaces the plan on its way, if any.
//!   Its `PlanReady` is acted on as any plan is.
//!
//! # Design
//!
//! The game never judges what the player said: "fall back", "nice shot" and "heal up, then
//! push mid" all go to the model as they are, and the model decides whether they are an order
//! and which of the offered intents obeys it. So every line asks for a new plan, and the words
//! are only trimmed, stripped of control characters and cut to [`MAX_SAID_CHARS`].
//!
//! Until the answering plan's first step arrives, the agent is *answering*: it asks for no plan
//! of its own in the planning rounds, and a step of its old plan that fails asks for nothing
//! (either would replace the answer on its way). It keeps carrying out its old plan meanwhile;
//! the answer's first step replaces the step it is on.

use bevy::prelude::*;
use bevy_hivemind::RequestId;
use bevy_hivemind::prelude::*;
use hivemind_arena::banter_slots;
use hivemind_core::templates::situation;

use super::{Arena, ArenaAgent, name};

/// The most characters of one thing the player says; the rest is cut.
pub const MAX_SAID_CHARS: usize = 200;

/// The player said `text` to `agent`, an arena agent's entity.
///
/// The talk box writes it when the player presses Enter; tests write it the same way. Empty text
/// (after trimming) and agents that are down are ignored.
#[derive(Message, Clone, Debug, PartialEq, Eq)]
pub struct PlayerSaid {
    /// The agent spoken to.
    pub agent: Entity,
    /// What the player said, as typed.
    pub text: String,
}

impl PlayerSaid {
    /// The words as they are sent: trimmed, without control characters, at most
    /// [`MAX_SAID_CHARS`] characters.
    pub fn words(&self) -> String {
        let kept: String = self
            .text
            .trim()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_SAID_CHARS)
            .collect();
        kept.trim_end().to_owned()
    }
}

/// An agent spoken to, until the first step of the plan that answers arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Answering {
    /// The request of the plan the agent had when spoken to; a step from any other request
    /// belongs to the answer.
    pub(super) replaces: Option<RequestId>,
}

impl Arena {
    /// The agent the number key `number` selects, counting from 1: every agent in id order (Red's,
    /// then Blue's), as the HUD lists them. `None` past the last agent.
    pub fn numbered(&self, number: usize) -> Option<Entity> {
        let index = number.checked_sub(1)?;
        self.entities.values().nth(index).copied()
    }
}

/// Turns each [`PlayerSaid`] into a reply and an answering plan. Runs in
/// [`ArenaSystems::Ask`](super::ArenaSystems::Ask) after the planning rounds, so the answer is
/// the last plan asked for this frame and nothing asked in the same frame replaces it.
#[expect(
    clippy::needless_pass_by_value,
    reason = "Bevy systems take their parameters by value"
)]
pub(super) fn answer_player(
    arena: Res<Arena>,
    mut said: MessageReader<PlayerSaid>,
    mut agents: Query<(&mut ArenaAgent, &ActivePlan)>,
    mut lines: MessageWriter<RequestLine>,
    mut plans: MessageWriter<RequestPlan>,
) {
    for said in said.read() {
        let words = said.words();
        if words.is_empty() {
            continue;
        }
        let Ok((mut agent, plan)) = agents.get_mut(said.agent) else {
            warn!("arena: {} is not an arena agent to talk to", said.agent);
            continue;
        };
        let world = &arena.world;
        if !world
            .agent(agent.id)
            .is_some_and(hivemind_arena::Agent::is_alive)
        {
            info!("arena: {} is down and hears nothing", name(agent.id));
            continue;
        }
        let mut reply = RequestLine::reply(said.agent, situation::PLAYER_TALK, words.clone());
        reply.slots = banter_slots(world, agent.id, name).into_pairs();
        lines.write(reply);
        plans.write(RequestPlan::answering(said.agent, words));
        agent.waiting_since = None;
        agent.answering = Some(Answering {
            replaces: plan.request,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_player_said_is_trimmed_cleaned_and_capped() {
        let said = |text: &str| PlayerSaid {
            agent: Entity::PLACEHOLDER,
            text: text.to_owned(),
        };
        assert_eq!(said("  fall back to base \n").words(), "fall back to base");
        assert_eq!(said("hold\nthe\tline").words(), "hold the line");
        assert_eq!(said(" \t\n ").words(), "");
        let rant = "cover me ".repeat(60);
        let words = said(&rant).words();
        assert!(words.chars().count() <= MAX_SAID_CHARS, "{}", words.len());
        assert!(rant.starts_with(&words));
        let accents = "é".repeat(300);
        assert_eq!(said(&accents).words().chars().count(), MAX_SAID_CHARS);
    }
}
