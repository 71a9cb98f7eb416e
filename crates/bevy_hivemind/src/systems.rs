//! The plugin's systems, one per [`HivemindSystems`](crate::HivemindSystems) set, and the
//! writer that turns [`Outgoing`] answers into messages.

use std::time::{Duration, Instant};

use bevy::diagnostic::Diagnostics;
use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use crate::HivemindSettings;
use crate::assets::{ConfigAsset, HivemindAssetHandles, PromptFileAsset};
use crate::components::{ActivePlan, AgentSnapshot, Conversation, NpcAgent, PlanStatus, Thinking};
use crate::hooks::{VerbCall, VerbHandlers};
use crate::messages::{
    CancelRequest, LineDelta, LineReady, PlanReady, PlanStepReady, RequestLine, RequestPlan,
    StepFinished,
};
use crate::metrics::{FrameCost, HivemindMetrics, diagnostic};
use crate::runtime::{Ask, Hivemind, NewRequest, Outgoing};

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
pub(crate) struct PendingExchanges(Vec<(Entity, String, String)>);

impl Outbox<'_, '_> {
    fn flush(&mut self, hm: &mut Hivemind) {
        for out in hm.outbox.drain(..) {
            if !self.alive.contains(out.agent()) {
                continue;
            }
            match out {
                Outgoing::Step(m) => {
                    self.steps.write(m);
                }
                Outgoing::Words(m) => {
                    self.words.write(m);
                }
                Outgoing::Plan(m) => {
                    self.plans.write(m);
                }
                Outgoing::Line { line, player_said } => {
                    if let Some(said) = player_said {
                        self.exchanges.0.push((line.agent, said, line.text.clone()));
                    }
                    self.lines.write(line);
                }
            }
        }
    }
}

/// Gather, first: applies edited settings and moves the clock on.
pub(crate) fn begin_frame(
    mut hm: ResMut<Hivemind>,
    settings: Res<HivemindSettings>,
    time: Res<Time>,
    virtual_time: Option<Res<Time<Virtual>>>,
    mut cost: ResMut<FrameCost>,
) {
    cost.start = Some(Instant::now());
    if settings.is_changed() && settings.0 != *hm.config() {
        hm.apply_config(settings.0.clone());
    }
    let paused = virtual_time.is_some_and(|t| t.is_paused());
    hm.begin_frame(time.delta(), paused);
}

/// Gather: reads the game's messages. Despawned agents' requests end, cancels and replacements
/// take effect, finished steps move plans on (a failed one asks for a new plan), and new
/// requests are answered at once or queued.
#[expect(
    clippy::too_many_arguments,
    reason = "a system reading every input message"
)]
pub(crate) fn gather(
    mut hm: ResMut<Hivemind>,
    mut metrics: ResMut<HivemindMetrics>,
    mut plans: MessageReader<RequestPlan>,
    mut lines: MessageReader<RequestLine>,
    mut cancels: MessageReader<CancelRequest>,
    mut finished: MessageReader<StepFinished>,
    mut removed: RemovedComponents<NpcAgent>,
    mut agents: Query<(&NpcAgent, &AgentSnapshot, &Conversation, &mut ActivePlan)>,
    mut commands: Commands,
    mut out: Outbox,
) {
    for entity in removed.read() {
        hm.forget_agent(entity);
    }
    for cancel in cancels.read() {
        match cancel.slot {
            Some(slot) => hm.cancel_slot(cancel.agent, slot),
            None => hm.forget_agent(cancel.agent),
        }
    }
    let mut replans = Vec::new();
    for done in finished.read() {
        let Ok((.., mut plan)) = agents.get_mut(done.agent) else {
            continue;
        };
        if done.ok {
            plan.current = (plan.current + 1).min(plan.steps.len());
        } else {
            plan.status = PlanStatus::Failed;
            replans.push(RequestPlan::new(done.agent));
        }
    }
    let asks = plans
        .read()
        .cloned()
        .chain(replans)
        .map(|p| (p.agent, None))
        .collect::<Vec<_>>()
        .into_iter()
        .chain(lines.read().map(|l| (l.agent, Some(l))));
    let mut new = Vec::new();
    for (entity, line) in asks {
        let Ok((agent, snapshot, conversation, _)) = agents.get(entity) else {
            warn!("hivemind: {entity} asked for something but is not an NpcAgent");
            continue;
        };
        let ask = match line {
            None => Ask::Plan,
            Some(line) => Ask::Line {
                kind: line.kind.clone(),
                situation: line.situation.clone(),
                slots: line.slots.clone(),
                history: conversation.history(),
            },
        };
        if !agent.kinds.allows(ask.kind()) {
            warn!(
                "hivemind: {entity} may not make {} requests",
                ask.kind().as_str()
            );
            continue;
        }
        new.push(NewRequest {
            entity,
            persona: agent.persona.clone(),
            snapshot: snapshot.0.clone(),
            ask,
        });
    }
    for request in new {
        let entity = request.entity;
        let id = hm.request(request, &mut metrics);
        if let Some(kind) = hm.waiting_kind(id) {
            commands
                .entity(entity)
                .try_insert(Thinking { request: id, kind });
        }
    }
    out.flush(&mut hm);
}

/// Dispatch: hands the frame's jobs to the workers. Never blocks.
pub(crate) fn dispatch(mut hm: ResMut<Hivemind>) {
    hm.dispatch();
}

/// Drain: reads what the workers produced, within the frame budget on a real-time clock.
pub(crate) fn drain(
    mut hm: ResMut<Hivemind>,
    mut metrics: ResMut<HivemindMetrics>,
    mut out: Outbox,
) {
    let budget = Duration::from_secs_f64(f64::from(hm.config().budgets.drain_ms.max(0.0)) / 1000.0);
    hm.drain(budget, &mut metrics);
    out.flush(&mut hm);
}

/// Fallback: answers requests whose deadline passed with their prepared fallback.
pub(crate) fn fallback(
    mut hm: ResMut<Hivemind>,
    mut metrics: ResMut<HivemindMetrics>,
    mut out: Outbox,
) {
    hm.answer_late(&mut metrics);
    out.flush(&mut hm);
}

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
        plan.source = Some(ready.source);
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

/// Applies reloaded `hivemind.ron` and prompt files. A file is applied when its content differs
/// from what was last applied from it, so the several events of one reload apply it once and
/// an edit made since is kept until the file really changes.
pub(crate) fn reload_assets(
    mut config_events: MessageReader<AssetEvent<ConfigAsset>>,
    mut prompt_events: MessageReader<AssetEvent<PromptFileAsset>>,
    configs: Res<Assets<ConfigAsset>>,
    prompts: Res<Assets<PromptFileAsset>>,
    mut handles: ResMut<HivemindAssetHandles>,
    mut settings: ResMut<HivemindSettings>,
    mut hm: ResMut<Hivemind>,
) {
    let touched = config_events.read().count() > 0;
    if touched
        && let Some(config) = handles.config.as_ref().and_then(|h| configs.get(h))
        && handles.applied_config.as_ref() != Some(&config.0)
    {
        info!("hivemind: configuration loaded");
        handles.applied_config = Some(config.0.clone());
        settings.0 = config.0.clone();
    }
    let touched = prompt_events.read().count() > 0;
    if touched
        && let Some(prompt) = handles.prompt.as_ref().and_then(|h| prompts.get(h))
        && handles.applied_prompt.as_ref() != Some(&prompt.0)
    {
        info!("hivemind: prompt and personas loaded");
        handles.applied_prompt = Some(prompt.0.clone());
        hm.set_prompt(prompt.0.clone());
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
