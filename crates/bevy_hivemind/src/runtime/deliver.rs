//! The second half of [`Hivemind`]: what the workers produced becomes the game's messages
//! (Drain), and requests past their deadline get their prepared fallback (Fallback).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bevy::prelude::warn;
use hivemind_core::cache::CachedAnswer;
use hivemind_core::clock::{ClockKind, Deadline, Timestamp};
use hivemind_core::metrics::Metrics;
use hivemind_core::plan::{BackendId, FallbackReason, PlanSource, PlanStep, RequestKind};
use hivemind_core::prompt::IntentOption;
use hivemind_core::snapshot::WorldSnapshot;
use hivemind_core::worker::{JobOutcome, WorkerEvent, WorkerEventKind};

use super::{Answer, Hivemind, LOCKSTEP_PATIENCE, Outgoing, Progress};
use crate::hooks::{FallbackPlanner, LineFilter, LineVerdict};
use crate::messages::{LineDelta, LineReady, PlanReady, PlanStepReady, RequestId};

impl Hivemind {
    // ----- drain --------------------------------------------------------------------------------

    /// Reads worker events: on a real-time clock for at most `budget` of wall time, never
    /// waiting; on a lockstep clock, every event due by now, waiting for the workers where they
    /// have not reported that far.
    pub(crate) fn drain(&mut self, budget: Duration, metrics: &mut Metrics) {
        match self.clock.kind() {
            ClockKind::RealTime => self.drain_real_time(budget, metrics),
            _ => self.drain_virtual(metrics),
        }
    }

    fn drain_real_time(&mut self, budget: Duration, metrics: &mut Metrics) {
        let start = Instant::now();
        self.drained_all = false;
        let mut read = 0u32;
        loop {
            // Reading the watch costs about as much as handling an event, so look every few.
            if read % 8 == 7 && start.elapsed() >= budget {
                return;
            }
            let Some(event) = self.pool.try_recv() else {
                self.drained_all = true;
                return;
            };
            read += 1;
            self.handle(event, metrics);
        }
    }

    fn drain_virtual(&mut self, metrics: &mut Metrics) {
        let now = self.clock.now();
        let waits = matches!(self.clock.kind(), ClockKind::Lockstep(_));
        loop {
            while let Some(event) = self.pool.try_recv() {
                self.hold(event);
            }
            if !waits || self.known.values().all(|&k| k > now) {
                break;
            }
            match self.pool.recv_timeout(LOCKSTEP_PATIENCE) {
                Some(event) => self.hold(event),
                None => {
                    warn!("hivemind: a worker reported nothing for {LOCKSTEP_PATIENCE:?}");
                    break;
                }
            }
        }
        while let Some(entry) = self.held.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let event = entry.remove();
            self.handle(event, metrics);
        }
        self.drained_all = true;
    }

    fn hold(&mut self, mut event: WorkerEvent) {
        if !self.by_job.contains_key(&event.job) {
            self.known.remove(&event.job);
            return;
        }
        let finished = matches!(event.kind, WorkerEventKind::Finished(_));
        if let Some(known) = self.known.get_mut(&event.job) {
            // A job's own events are never due before its earlier ones.
            event.at = event.at.max(*known);
            *known = event.at;
        }
        if finished {
            self.known.remove(&event.job);
        }
        self.arrivals += 1;
        self.held
            .insert((event.at, event.job, self.arrivals), event);
    }

    fn handle(&mut self, event: WorkerEvent, metrics: &mut Metrics) {
        let Some(&id) = self.by_job.get(&event.job) else {
            return;
        };
        let at = event.at;
        match event.kind {
            WorkerEventKind::Started {
                backend,
                batch,
                batch_size,
                queue_wait,
            } => {
                if let Some(r) = self.requests.get_mut(&id) {
                    r.progress.backend = Some(backend);
                    metrics.record_queue_wait(r.kind, backend, queue_wait);
                }
                if self.last_batch != Some(batch) {
                    self.last_batch = Some(batch);
                    metrics.record_batch(batch_size);
                }
            }
            WorkerEventKind::Step { step, .. } => self.on_step(id, at, step, metrics),
            WorkerEventKind::Intent { intent } => self.on_intent(id, at, intent, metrics),
            WorkerEventKind::Words { text } => self.on_words(id, at, &text, metrics),
            WorkerEventKind::DeadlineCrossed => {}
            WorkerEventKind::Finished(outcome) => {
                self.by_job.remove(&event.job);
                self.on_finished(id, at, outcome, metrics);
            }
        }
    }

    /// A model's step arrives. With `model.repair` on, the planner checks it after the steps
    /// before it; the first step that fails is replaced, with everything after it, by the
    /// planner's completion from the state the steps before it reach, and the model's later
    /// steps are ignored.
    fn on_step(&mut self, id: RequestId, at: Timestamp, step: PlanStep, metrics: &mut Metrics) {
        let repair = self.config.model.repair;
        let planner = Arc::clone(&self.planner);
        let idle = self.registry.idle_step();
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        if r.progress.repaired || r.progress.intent.is_some() {
            return;
        }
        r.progress.steps.push(step);
        if repair && let Some(bad) = planner.first_invalid(&r.snapshot, &r.progress.steps) {
            let keep = bad.max(r.progress.delivered);
            complete_after(&*planner, &r.snapshot, &mut r.progress.steps, keep, idle);
            r.progress.repaired = true;
        }
        self.deliver_steps(id, at, metrics);
    }

    /// A guided answer's intent arrives: the planner expands it into the plan's steps. An intent
    /// the prompt did not offer, or one the planner cannot carry out, is answered with the
    /// prepared fallback plan, as a repair.
    fn on_intent(&mut self, id: RequestId, at: Timestamp, intent: u32, metrics: &mut Metrics) {
        let planner = Arc::clone(&self.planner);
        let idle = self.registry.idle_step();
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        if r.progress.intent.is_some() || !r.progress.steps.is_empty() {
            return;
        }
        let option = IntentOption::numbered(&r.options, intent);
        let expanded = option.map(|o| (o.goal.clone(), planner.expand(&r.snapshot, &o.goal)));
        match expanded.filter(|(_, steps)| !steps.is_empty()) {
            Some((goal, steps)) => {
                r.progress.intent = Some(goal);
                r.progress.steps = steps;
            }
            None => {
                let mut steps = match r.fallback.take() {
                    Answer::Plan(steps) => steps,
                    Answer::Line(_) => Vec::new(),
                };
                if steps.is_empty() {
                    steps.push(idle);
                }
                r.progress.intent = Some(String::new());
                r.progress.steps = steps;
                r.progress.repaired = true;
            }
        }
        self.deliver_steps(id, at, metrics);
    }

    /// Gives the game the steps of a request it does not have yet, if they may go now: while
    /// streaming, and in time (or after a first step that was).
    fn deliver_steps(&mut self, id: RequestId, at: Timestamp, metrics: &mut Metrics) {
        let streaming = self.streaming;
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        let in_time = r.progress.delivered > 0 || r.deadline.is_met_by(at);
        if r.answered || !streaming || !in_time {
            return;
        }
        let Some(entity) = r.entity else { return };
        while r.progress.delivered < r.progress.steps.len() {
            let index = r.progress.delivered;
            r.progress.delivered += 1;
            if index == 0 {
                r.first_delivered(at, metrics);
                self.deadlines.remove(&(r.deadline, id));
            }
            self.outbox.push(Outgoing::Step(PlanStepReady {
                agent: entity,
                request: id,
                index,
                step: r.progress.steps[index].clone(),
            }));
        }
    }

    fn on_words(&mut self, id: RequestId, at: Timestamp, words: &str, metrics: &mut Metrics) {
        let streaming = self.streaming;
        let filter = Arc::clone(&self.filter);
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        if r.progress.closed {
            return;
        }
        r.progress.text.push_str(words);
        let in_time = r.progress.delivered > 0 || r.deadline.is_met_by(at);
        let agent = match r.entity {
            Some(agent) if !r.answered && r.kind != RequestKind::Plan => agent,
            // The banter pool takes the whole line later, and a plan says its line with its
            // completion; check it as it comes.
            _ => {
                close_if_filtered(&*filter, &mut r.progress);
                return;
            }
        };
        if !streaming || !in_time {
            return;
        }
        let end = match filter.check(&r.progress.text) {
            LineVerdict::Pass => r.progress.text.len(),
            LineVerdict::Cut(n) => {
                r.progress.closed = true;
                n.min(r.progress.text.len())
            }
            LineVerdict::Reject => {
                r.progress.closed = true;
                r.progress.rejected = r.progress.delivered == 0;
                r.progress.text.truncate(r.progress.delivered);
                return;
            }
        };
        r.progress.text.truncate(end);
        if end <= r.progress.delivered {
            return;
        }
        let text = r.progress.text[r.progress.delivered..end].to_owned();
        if r.progress.delivered == 0 {
            r.first_delivered(at, metrics);
            self.deadlines.remove(&(r.deadline, id));
        }
        r.progress.delivered = end;
        self.outbox.push(Outgoing::Words(LineDelta {
            agent,
            request: id,
            text,
        }));
    }

    fn on_finished(
        &mut self,
        id: RequestId,
        at: Timestamp,
        outcome: JobOutcome,
        metrics: &mut Metrics,
    ) {
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        r.progress.finished = true;
        let backend = r.progress.backend.unwrap_or(BackendId::Scripted);
        match outcome {
            JobOutcome::Cancelled => {
                self.drop_request(id);
            }
            JobOutcome::Completed { usage } => {
                metrics.record_tokens(
                    usage.generated_tokens,
                    usage.prompt_tokens,
                    at.since(r.submitted),
                );
                self.fill_caches(id, at);
                let Some(r) = self.requests.get_mut(&id) else {
                    return;
                };
                if r.answered {
                    self.drop_request(id);
                    return;
                }
                let whole_in_time = r.deadline.is_met_by(at);
                let has_output = match r.kind {
                    RequestKind::Plan => !r.progress.steps.is_empty(),
                    _ => !r.progress.text.trim().is_empty() && !r.progress.rejected,
                };
                if r.progress.delivered == 0 && !(whole_in_time && has_output) {
                    // Late, or nothing to say: the fallback answers at the deadline, or now if
                    // the deadline has passed already.
                    let reason = if has_output {
                        FallbackReason::Deadline
                    } else {
                        FallbackReason::Parse
                    };
                    if !has_output || r.deadline.has_passed(self.clock.now()) {
                        self.answer_with_fallback(id, reason, metrics);
                        self.drop_request(id);
                    }
                    return;
                }
                self.complete_from_model(id, at, backend, None, metrics);
                self.drop_request(id);
            }
            JobOutcome::Failed(failure) => {
                let reason = failure.fallback_reason();
                if reason == FallbackReason::NoModel {
                    self.no_model = Some(failure.to_string());
                }
                if r.answered {
                    self.drop_request(id);
                    return;
                }
                if r.progress.delivered > 0 {
                    self.complete_from_model(id, at, backend, Some(reason), metrics);
                } else {
                    self.answer_with_fallback(id, reason, metrics);
                }
                self.drop_request(id);
            }
        }
    }

    /// Stores a finished model answer: a plan in the answer cache, an idle-time line in the
    /// banter pool.
    fn fill_caches(&mut self, id: RequestId, now: Timestamp) {
        let Some(r) = self.requests.get(&id) else {
            return;
        };
        match r.kind {
            RequestKind::Plan => {
                let answer = match &r.progress.intent {
                    Some(goal) if !r.progress.repaired => Some(CachedAnswer::Intent {
                        intent: goal.clone(),
                        say: plan_line(&*self.filter, &r.progress),
                    }),
                    _ => CachedAnswer::from_steps(&r.progress.steps, &r.snapshot, &self.registry),
                };
                if let (Some(key), Some(answer)) = (r.cache_key.clone(), answer) {
                    self.cache.insert(key, answer, now);
                }
            }
            RequestKind::Banter if r.entity.is_none() => {
                let line = r.progress.text.trim();
                if !line.is_empty() && !r.progress.rejected {
                    let line = line.to_owned();
                    let (persona, situation) = (r.persona.clone(), r.situation.clone());
                    self.banter.add(&persona, &situation, line, now);
                }
            }
            _ => {}
        }
    }

    /// Completes a request the model has been answering: the remaining steps (all of them when
    /// not streaming), then the completion. After a failure (`reason`), the fallback planner
    /// completes the plan from the steps that stand.
    fn complete_from_model(
        &mut self,
        id: RequestId,
        at: Timestamp,
        backend: BackendId,
        reason: Option<FallbackReason>,
        metrics: &mut Metrics,
    ) {
        let planner = Arc::clone(&self.planner);
        let idle = self.registry.idle_step();
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        let Some(entity) = r.entity else { return };
        r.answered = true;
        self.deadlines.remove(&(r.deadline, id));
        if r.progress.first_at.is_none() {
            r.first_delivered(at, metrics);
        }
        let latency = at.since(r.submitted);
        let first_after = r.progress.first_at.unwrap_or(at).since(r.submitted);
        match r.kind {
            RequestKind::Plan => {
                let mut steps = std::mem::take(&mut r.progress.steps);
                if reason.is_some() {
                    let keep = r.progress.delivered;
                    complete_after(&*planner, &r.snapshot, &mut steps, keep, idle);
                }
                let repaired = reason.is_some() || r.progress.repaired;
                let source = PlanSource::Llm { backend, repaired };
                let say = plan_line(&*self.filter, &r.progress);
                for (index, step) in steps.iter().enumerate().skip(r.progress.delivered) {
                    self.outbox.push(Outgoing::Step(PlanStepReady {
                        agent: entity,
                        request: id,
                        index,
                        step: step.clone(),
                    }));
                }
                if repaired {
                    metrics.record_repair();
                }
                metrics.record_answer(RequestKind::Plan, source, reason);
                metrics.record_full(RequestKind::Plan, source, latency);
                self.outbox.push(Outgoing::Plan(PlanReady {
                    agent: entity,
                    request: id,
                    steps,
                    say,
                    source,
                    fallback: reason,
                    first_after,
                    latency,
                }));
            }
            kind => {
                let text = if r.progress.closed {
                    r.progress.text[..r.progress.delivered.min(r.progress.text.len())].to_owned()
                } else {
                    filtered(&*self.filter, std::mem::take(&mut r.progress.text))
                };
                if text.len() > r.progress.delivered {
                    self.outbox.push(Outgoing::Words(LineDelta {
                        agent: entity,
                        request: id,
                        text: text[r.progress.delivered..].to_owned(),
                    }));
                }
                let source = PlanSource::Llm {
                    backend,
                    repaired: false,
                };
                let said = r.player_said.clone();
                let line = LineReady {
                    agent: entity,
                    request: id,
                    kind,
                    text,
                    source,
                    fallback: reason,
                    latency,
                };
                self.finish_line(line, said, metrics);
            }
        }
    }

    /// Answers a request with its prepared fallback.
    pub(super) fn answer_with_fallback(
        &mut self,
        id: RequestId,
        reason: FallbackReason,
        metrics: &mut Metrics,
    ) {
        let now = self.clock.now();
        let idle = self.registry.idle_step();
        let filter = Arc::clone(&self.filter);
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        let Some(entity) = r.entity else { return };
        r.answered = true;
        self.deadlines.remove(&(r.deadline, id));
        let latency = now.since(r.submitted);
        match r.fallback.take() {
            Answer::Plan(mut steps) => {
                if steps.is_empty() {
                    steps.push(idle);
                }
                metrics.record_answer(r.kind, PlanSource::Goap, Some(reason));
                metrics.record_full(r.kind, PlanSource::Goap, latency);
                self.deliver_plan(PlanReady {
                    agent: entity,
                    request: id,
                    steps,
                    say: None,
                    source: PlanSource::Goap,
                    fallback: Some(reason),
                    first_after: latency,
                    latency,
                });
            }
            Answer::Line(text) => {
                let kind = r.kind;
                let said = r.player_said.clone();
                let text = filtered(&*filter, text);
                let line = LineReady {
                    agent: entity,
                    request: id,
                    kind,
                    text,
                    source: PlanSource::Template,
                    fallback: Some(reason),
                    latency,
                };
                self.finish_line(line, said, metrics);
            }
        }
    }

    /// Sends a whole plan at once: its steps, then its completion.
    pub(super) fn deliver_plan(&mut self, plan: PlanReady) {
        for (index, step) in plan.steps.iter().enumerate() {
            self.outbox.push(Outgoing::Step(PlanStepReady {
                agent: plan.agent,
                request: plan.request,
                index,
                step: step.clone(),
            }));
        }
        self.outbox.push(Outgoing::Plan(plan));
    }

    /// Sends a line's completion, after its words unless they streamed from the model, and
    /// records it.
    pub(super) fn finish_line(
        &mut self,
        line: LineReady,
        player_said: Option<String>,
        metrics: &mut Metrics,
    ) {
        let streamed = matches!(line.source, PlanSource::Llm { .. });
        if !streamed && !line.text.is_empty() {
            self.outbox.push(Outgoing::Words(LineDelta {
                agent: line.agent,
                request: line.request,
                text: line.text.clone(),
            }));
        }
        metrics.record_answer(line.kind, line.source, line.fallback);
        metrics.record_full(line.kind, line.source, line.latency);
        self.outbox.push(Outgoing::Line { line, player_said });
    }

    // ----- fallback -----------------------------------------------------------------------------

    /// Answers every request whose deadline passed with nothing in time from the model.
    ///
    /// On a real-time clock, a frame whose drain ran out of budget may have left an in-time
    /// step unread, so such a request gets one more frame before its fallback answers.
    pub(crate) fn answer_late(&mut self, metrics: &mut Metrics) {
        let now = self.clock.now();
        let due: Vec<(Deadline, RequestId)> = self
            .deadlines
            .iter()
            .take_while(|(d, _)| d.has_passed(now))
            .copied()
            .collect();
        let congested = self.pool.queue_depth() > 0;
        for (deadline, id) in due {
            let Some(r) = self.requests.get_mut(&id) else {
                self.deadlines.remove(&(deadline, id));
                continue;
            };
            if !self.drained_all && !r.deferred {
                r.deferred = true;
                continue;
            }
            self.deadlines.remove(&(deadline, id));
            if r.answered || r.progress.delivered > 0 {
                continue;
            }
            self.answer_with_fallback(id, FallbackReason::Deadline, metrics);
            let Some(r) = self.requests.get(&id) else {
                continue;
            };
            let done = r.progress.finished;
            // The model's answer can only fill the cache now; under congestion that is not worth
            // a worker's time.
            if done || (congested && !self.clock.is_virtual()) {
                self.drop_request(id);
            } else if let Some(entity) = r.entity
                && let Some(slot) = r.slot()
            {
                self.by_agent.remove(&(entity, slot));
            }
        }
    }
}

/// `text` after the filter: cut, or empty if rejected.
pub(super) fn filtered(filter: &dyn LineFilter, mut text: String) -> String {
    match filter.check(&text) {
        LineVerdict::Pass => text,
        LineVerdict::Cut(n) => {
            text.truncate(n.min(text.len()));
            text
        }
        LineVerdict::Reject => String::new(),
    }
}

/// Keeps the first `keep` of a model's `steps` and appends the planner's completion from there;
/// the idle step if that leaves no step at all.
fn complete_after(
    planner: &dyn FallbackPlanner,
    snapshot: &WorldSnapshot,
    steps: &mut Vec<PlanStep>,
    keep: usize,
    idle: PlanStep,
) {
    steps.truncate(keep);
    let rest = planner.complete(snapshot, steps);
    steps.extend(rest);
    if steps.is_empty() {
        steps.push(idle);
    }
}

/// The line a guided plan's answer says, after the filter: `None` if it wrote none or the filter
/// rejected it.
fn plan_line(filter: &dyn LineFilter, progress: &Progress) -> Option<String> {
    if progress.rejected {
        return None;
    }
    let line = filtered(filter, progress.text.trim().to_owned());
    (!line.is_empty()).then_some(line)
}

fn close_if_filtered(filter: &dyn LineFilter, progress: &mut Progress) {
    match filter.check(&progress.text) {
        LineVerdict::Pass => {}
        LineVerdict::Cut(n) => {
            progress.text.truncate(n.min(progress.text.len()));
            progress.closed = true;
        }
        LineVerdict::Reject => {
            progress.rejected = true;
            progress.closed = true;
        }
    }
}
