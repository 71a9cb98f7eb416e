//! The plugin's systems, a file per [`HivemindSystems`](crate::HivemindSystems) set in the
//! order they run — [`gather`], [`dispatch`], [`drain`], [`fallback`], [`apply`] — and the
//! writer that turns the lifecycle's [`Outgoing`] answers into messages.

pub(crate) mod apply;
pub(crate) mod dispatch;
pub(crate) mod drain;
pub(crate) mod fallback;
pub(crate) mod gather;

use bevy::app::AppExit;
use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use hivemind_core::lifecycle::Outgoing;

use crate::components::NpcAgent;
use crate::messages::{LineDelta, LineReady, PlanReady, PlanStepReady};
use crate::runtime::Hivemind;

/// Writes the runtime's answers as messages, skipping any that name an entity that is no
/// longer an agent.
#[derive(SystemParam)]
pub(crate) struct Outbox<'w, 's> {
    steps: MessageWriter<'w, PlanStepReady>,
    words: MessageWriter<'w, LineDelta>,
    plans: MessageWriter<'w, PlanReady>,
    lines: MessageWriter<'w, LineReady>,
    alive: Query<'w, 's, (), With<NpcAgent>>,
    exchanges: ResMut<'w, PendingExchanges>,
}

/// Replies to the player waiting to enter their agents' [`Conversation`]s in Apply.
#[derive(Resource, Default)]
pub(crate) struct PendingExchanges(pub(crate) Vec<(Entity, String, String)>);

impl Outbox<'_, '_> {
    pub(crate) fn flush(&mut self, hm: &mut Hivemind) {
        for out in hm.drain_outbox() {
            if !self.alive.contains(out.agent()) {
                continue;
            }
            match out {
                Outgoing::Step(m) => {
                    self.steps.write(m.into());
                }
                Outgoing::Words(m) => {
                    self.words.write(m.into());
                }
                Outgoing::Plan(m) => {
                    self.plans.write(m.into());
                }
                Outgoing::Line(mut line) => {
                    if let Some(said) = line.player_said.take() {
                        self.exchanges.0.push((line.agent, said, line.text.clone()));
                    }
                    self.lines.write(line.into());
                }
            }
        }
    }
}

/// Stops the workers when the app exits, even in the middle of a decode.
pub(crate) fn shut_down_on_exit(mut exits: MessageReader<AppExit>, hm: Option<ResMut<Hivemind>>) {
    if exits.read().next().is_some()
        && let Some(mut hm) = hm
    {
        hm.shutdown();
    }
}
