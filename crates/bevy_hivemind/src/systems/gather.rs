//! Gather: the game's messages in, requests queued or answered at once, reloaded assets and
//! edited settings applied.

use std::time::Instant;

use bevy::prelude::*;
use hivemind_core::lifecycle::{Ask, NewRequest};

use super::Outbox;
use crate::HivemindSettings;
use crate::assets::{
    ActionsAsset, ConfigAsset, HivemindAssetHandles, PromptFileAsset, TemplatesAsset, Watch,
};
use crate::components::{ActivePlan, AgentSnapshot, Conversation, NpcAgent, PlanStatus, Thinking};
use crate::messages::{CancelRequest, RequestLine, RequestPlan, StepFinished};
use crate::metrics::{FrameCost, HivemindMetrics};
use crate::runtime::Hivemind;

/// Gather, first: applies edited settings and moves the clock on. An edit with a value out of
/// its range is refused with an error naming the field, and the settings go back to those in
/// effect, so a console or inspector edit is held to the same ranges as a file.
pub(crate) fn begin_frame(
    mut hm: ResMut<Hivemind>,
    mut settings: ResMut<HivemindSettings>,
    time: Res<Time>,
    virtual_time: Option<Res<Time<Virtual>>>,
    mut cost: ResMut<FrameCost>,
) {
    cost.start = Some(Instant::now());
    if settings.is_changed()
        && settings.0 != *hm.config()
        && let Err(message) = hm.apply_config(settings.0.clone())
    {
        error!("hivemind: settings edit refused: {message}");
        settings.0 = hm.config().clone();
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
    let asked: Vec<RequestPlan> = plans.read().cloned().collect();
    // A failed step asks for a new plan, unless one is asked for this frame or one answering the
    // player is on its way: replacing that would lose what the player said.
    replans
        .retain(|r| !asked.iter().any(|a| a.agent == r.agent) && !hm.is_answering_player(r.agent));
    let asks = asked
        .into_iter()
        .chain(replans)
        .map(|p| (p.agent, p.spotlight, Err(p.order)))
        .collect::<Vec<_>>()
        .into_iter()
        .chain(lines.read().map(|l| (l.agent, l.spotlight, Ok(l))));
    for (entity, spotlight, line) in asks {
        let Ok((agent, snapshot, conversation, _)) = agents.get(entity) else {
            warn!("hivemind: {entity} asked for something but is not an NpcAgent");
            continue;
        };
        let ask = match line {
            Err(order) => Ask::Plan { order },
            Ok(line) => Ask::Line {
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
        let request = NewRequest {
            agent: entity,
            persona: agent.persona.clone(),
            spotlight,
            snapshot: snapshot.0.clone(),
            ask,
        };
        let id = hm.request(request, &mut metrics);
        if let Some(kind) = hm.waiting_kind(id) {
            commands
                .entity(entity)
                .try_insert(Thinking { request: id, kind });
        }
    }
    out.flush(&mut hm);
}

/// Applies reloaded files: `hivemind.ron` (the settings), the prompt file, the action
/// registry and the templates. A file is applied when its content differs from what was last
/// applied from it, so the several events of one reload apply it once and an edit made since is
/// kept until the file really changes.
pub(crate) fn reload_assets(
    mut configs: Watch<ConfigAsset>,
    mut prompts: Watch<PromptFileAsset>,
    mut actions: Watch<ActionsAsset>,
    mut templates: Watch<TemplatesAsset>,
    mut handles: ResMut<HivemindAssetHandles>,
    mut settings: ResMut<HivemindSettings>,
    mut hm: ResMut<Hivemind>,
) {
    let handles = &mut *handles;
    if let Some(config) = configs.fresh(handles.config.as_ref(), &mut handles.applied_config) {
        info!("hivemind: configuration loaded");
        settings.0 = config.0;
    }
    if let Some(prompt) = prompts.fresh(handles.prompt.as_ref(), &mut handles.applied_prompt) {
        info!("hivemind: prompt and personas loaded");
        hm.set_prompt(prompt.0);
    }
    if let Some(registry) = actions.fresh(handles.actions.as_ref(), &mut handles.applied_actions) {
        info!("hivemind: action registry loaded");
        hm.set_registry(registry.0);
    }
    if let Some(book) = templates.fresh(handles.templates.as_ref(), &mut handles.applied_templates)
    {
        info!("hivemind: dialogue templates loaded");
        hm.set_templates(book.0);
    }
}
