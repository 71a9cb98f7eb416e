//! Verb handlers: the game's systems for each verb. The planner and line filter hooks are
//! engine-free and live in `hivemind_core::hooks`.

use std::collections::HashMap;

use bevy::ecs::system::SystemId;
use bevy::prelude::*;
use hivemind_core::plan::PlanStep;

use crate::messages::RequestId;

/// What a verb handler is told when an agent starts a step.
#[derive(Clone, Debug, PartialEq)]
pub struct VerbCall {
    /// The agent.
    pub agent: Entity,
    /// The plan's request.
    pub request: RequestId,
    /// The step's position in the plan.
    pub index: usize,
    /// The step.
    pub step: PlanStep,
}

/// The game's systems for each verb, run (through `Commands`) when an agent's
/// [`ActivePlan`](crate::ActivePlan) moves to a step of that verb. Register them with
/// [`HivemindAppExt::add_verb_handler`].
#[derive(Resource, Default, Debug)]
pub struct VerbHandlers {
    handlers: HashMap<String, SystemId<In<VerbCall>>>,
}

impl VerbHandlers {
    /// The handler of `verb`.
    pub fn get(&self, verb: &str) -> Option<SystemId<In<VerbCall>>> {
        self.handlers.get(verb).copied()
    }

    /// Sets the handler of `verb`, returning the one it replaces.
    pub fn insert(
        &mut self,
        verb: impl Into<String>,
        system: SystemId<In<VerbCall>>,
    ) -> Option<SystemId<In<VerbCall>>> {
        self.handlers.insert(verb.into(), system)
    }

    /// The verbs with a handler.
    pub fn verbs(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
}

/// Registers verb handlers on an [`App`].
pub trait HivemindAppExt {
    /// Runs `system` whenever an agent starts a step of `verb`.
    ///
    /// ```
    /// # use bevy::prelude::*;
    /// # use bevy_hivemind::prelude::*;
    /// fn take_cover(In(call): In<VerbCall>, mut commands: Commands) {
    ///     // Move call.agent to the point in call.step.arg("at"), then send StepFinished.
    ///     commands.write_message(StepFinished { agent: call.agent, ok: true });
    /// }
    /// App::new().add_verb_handler("TakeCover", take_cover);
    /// ```
    fn add_verb_handler<M>(
        &mut self,
        verb: impl Into<String>,
        system: impl IntoSystem<In<VerbCall>, (), M> + 'static,
    ) -> &mut Self;
}

impl HivemindAppExt for App {
    fn add_verb_handler<M>(
        &mut self,
        verb: impl Into<String>,
        system: impl IntoSystem<In<VerbCall>, (), M> + 'static,
    ) -> &mut Self {
        let id = self.world_mut().register_system(system);
        self.world_mut()
            .get_resource_or_init::<VerbHandlers>()
            .insert(verb, id);
        self
    }
}
