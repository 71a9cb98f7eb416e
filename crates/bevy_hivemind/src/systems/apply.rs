//! Apply: answers into `ActivePlan` and `Conversation`, verb handlers for started steps, and
//! metrics as diagnostics.

use bevy::diagnostic::Diagnostics;
use bevy::prelude::*;

use super::PendingExchanges;
use crate::components::{ActivePlan, Conversation, PlanStatus, Thinking};
use crate::hooks::{VerbCall, VerbHandlers};
use crate::messages::{LineReady, PlanReady, PlanStepReady};
use crate::metrics::{FrameCost, HivemindMetrics, diagnostic};
use crate::runtime::Hivemind;

/// Apply: the frame's answers enter the agents' [`ActivePlan`]s and [`Conversation`]s, and
/// completed requests end [`Thinking`].
pub(crate) fn apply(
    mut steps: MessageReader<PlanStepReady>,
    mut plans: MessageReader<PlanReady>,
    mut lines: MessageReader<LineReady>,
    mut agents: Query<(&mut ActivePlan, &mut Conversation, Option<&Thinking>)>,
    mut exchanges: ResMut<PendingExchanges>,
    hm: Res<Hivemind>,
    mut commands: Commands,
) {
    for ready in steps.read() {
        let Ok((mut plan, ..)) = agents.get_mut(ready.agent) else {
            continue;
        };
        if plan.request != Some(ready.request) {
            *plan = ActivePlan {
                request: Some(ready.request),
                status: PlanStatus::Streaming,
                ..default()
            };
        }
        if ready.index == plan.steps.len() {
            plan.steps.push(ready.step.clone());
        }
    }
    for ready in plans.read() {
        let Ok((mut plan, _, thinking)) = agents.get_mut(ready.agent) else {
            continue;
        };
        if plan.request != Some(ready.request) {
            *plan = ActivePlan {
                request: Some(ready.request),
                ..default()
            };
        }
        plan.steps.clone_from(&ready.steps);
        plan.status = PlanStatus::Complete;
        plan.source = Some(ready.source.clone());
        plan.fallback = ready.fallback;
        if thinking.is_some_and(|t| t.request == ready.request) {
            commands.entity(ready.agent).try_remove::<Thinking>();
        }
    }
    for ready in lines.read() {
        if let Ok((_, _, Some(thinking))) = agents.get(ready.agent)
            && thinking.request == ready.request
        {
            commands.entity(ready.agent).try_remove::<Thinking>();
        }
    }
    let budget = hm.config().budgets.conversation_tokens;
    for (agent, player, reply) in exchanges.0.drain(..) {
        if let Ok((_, mut talk, _)) = agents.get_mut(agent) {
            talk.push(player, reply, budget);
        }
    }
}

/// Apply: runs the verb handler of each step an agent has just moved to.
pub(crate) fn start_steps(
    mut plans: Query<(Entity, &mut ActivePlan), Changed<ActivePlan>>,
    handlers: Option<Res<VerbHandlers>>,
    mut commands: Commands,
) {
    let Some(handlers) = handlers else { return };
    for (agent, mut plan) in &mut plans {
        let (Some(request), Some(step)) = (plan.request, plan.current_step()) else {
            continue;
        };
        let key = (request, plan.current);
        if plan.started == Some(key) {
            continue;
        }
        let call = VerbCall {
            agent,
            request,
            index: plan.current,
            step: step.clone(),
        };
        plan.bypass_change_detection().started = Some(key);
        if let Some(system) = handlers.get(&call.step.verb) {
            commands.run_system_with(system, call);
        }
    }
}

/// Apply, last: publishes the metrics as diagnostics and records this frame's cost.
pub(crate) fn publish(
    hm: Res<Hivemind>,
    metrics: Res<HivemindMetrics>,
    mut diagnostics: Diagnostics,
    mut cost: ResMut<FrameCost>,
) {
    diagnostic::publish(&hm, &metrics, &mut diagnostics);
    if let Some(start) = cost.start.take() {
        let elapsed = start.elapsed();
        cost.record(elapsed);
        diagnostic::publish_cost(&mut diagnostics, elapsed);
    }
}
