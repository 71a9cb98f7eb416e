//! The second half of a request's life: what the workers produced becomes the game's messages
//! (Drain), and requests past their deadline get their prepared fallback (Fallback).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::CachedAnswer;
use crate::clock::{ClockKind, Deadline, Timestamp};
use crate::hooks::{CopyCheck, LineFilter, LineVerdict};
use crate::metrics::Metrics;
use crate::plan::{ArgValue, BackendId, FallbackReason, PlanSource, PlanStep, RequestKind};
use crate::prompt::IntentOption;
use crate::worker::{JobFailure, JobOutcome, WorkerEvent, WorkerEventKind, WorkerPool};

use super::request::{
    Answer, DEFAULT_BRIDGE, Gate, Phase, Request, bridge_line, complete_after, cut_at, filtered,
    is_speech,
};
use super::{AgentKey, Lifecycle, LineDone, Outgoing, PlanDone, RequestId, StepReady, WordsReady};

/// How long a lockstep frame waits for a silent worker before it gives up on it for the frame.
const LOCKSTEP_PATIENCE: Duration = Duration::from_secs(120);

impl<K: AgentKey> Lifecycle<K> {
    // ----- drain --------------------------------------------------------------------------------

    /// Reads worker events: on a real-time clock for at most `budget` of wall time, never
    /// waiting; on a lockstep clock, every event due by now, waiting for the workers where they
    /// have not reported that far.
    pub fn drain(&mut self, budget: Duration, metrics: &mut Metrics) {
        if self.pool.is_none() {
            self.drained_all = true;
            return;
        }
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
            let Some(event) = self.pool.as_mut().and_then(WorkerPool::try_recv) else {
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
            while let Some(event) = self.pool.as_mut().and_then(WorkerPool::try_recv) {
                self.hold(event);
            }
            if !waits || self.known.values().all(|&k| k > now) {
                break;
            }
            match self
                .pool
                .as_mut()
                .and_then(|p| p.recv_timeout(LOCKSTEP_PATIENCE))
            {
                Some(event) => self.hold(event),
                None => {
                    tracing::warn!("hivemind: a worker reported nothing for {LOCKSTEP_PATIENCE:?}");
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

    /// Takes one worker event, as Drain reads it (a lockstep clock's when it is due).
    pub fn handle(&mut self, event: WorkerEvent, metrics: &mut Metrics) {
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
                    metrics.record_queue_wait(r.kind, &backend, queue_wait);
                    r.backend = Some(backend);
                }
                if self.last_batch != Some(batch) {
                    self.last_batch = Some(batch);
                    metrics.record_batch(batch_size);
                }
            }
            WorkerEventKind::Routed { backend } => {
                if let Some(r) = self.requests.get_mut(&id) {
                    r.backend = Some(backend);
                }
            }
            WorkerEventKind::Step { step, .. } => self.on_step(id, at, step, metrics),
            WorkerEventKind::Intent { intent } => self.on_intent(id, at, intent, metrics),
            WorkerEventKind::Words { text } => self.on_words(id, at, &text, metrics),
            WorkerEventKind::LineSkipped => {
                if let Some(r) = self.requests.get_mut(&id) {
                    r.line_skipped = true;
                    r.text.clear();
                    metrics.record_line_skipped();
                }
            }
            WorkerEventKind::DeadlineCrossed => {}
            WorkerEventKind::Finished(outcome) => {
                self.by_job.remove(&event.job);
                // Nothing more comes from it, so a lockstep frame need not wait for it.
                self.known.remove(&event.job);
                if let Some(r) = self.requests.get_mut(&id) {
                    r.job = None;
                }
                self.on_finished(id, at, outcome, metrics);
            }
        }
    }

    /// **Step, and repair.** A model's step arrives. With `model.repair` on, the planner checks
    /// it after the steps before it; the first step that fails is replaced, with everything
    /// after it, by the planner's completion from the state the steps before it reach, and the
    /// model's later steps are ignored.
    ///
    /// Text a step carries (a `Say` line) is a line a player hears: it goes through the line
    /// filter and the copy check like any line, and a step whose text they reject becomes the
    /// idle step.
    fn on_step(&mut self, id: RequestId, at: Timestamp, step: PlanStep, metrics: &mut Metrics) {
        let repair = self.config.model.repair;
        let planner = Arc::clone(&self.planner);
        let idle = self.registry.idle_step();
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        let step = match checked_step(r, &*self.filter, &self.copies, step) {
            Some(step) => step,
            None => idle.clone(),
        };
        let delivered = r.delivered;
        let snapshot = Arc::clone(&r.snapshot);
        let Some(plan) = r.plan.as_mut() else { return };
        if plan.repaired || plan.intent.is_some() {
            return;
        }
        plan.steps.push(step);
        if repair && let Some(bad) = planner.first_invalid(&snapshot, &plan.steps) {
            let keep = bad.max(delivered);
            complete_after(&*planner, &snapshot, &mut plan.steps, keep, idle);
            plan.repaired = true;
        }
        self.deliver_steps(id, at, metrics);
    }

    /// **Intent.** A guided answer's intent arrives: the planner expands it into the plan's
    /// steps. An intent the prompt did not offer, or one the planner cannot carry out, is
    /// answered with the prepared fallback plan, as a repair.
    fn on_intent(&mut self, id: RequestId, at: Timestamp, intent: u32, metrics: &mut Metrics) {
        let planner = Arc::clone(&self.planner);
        let idle = self.registry.idle_step();
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        let Some(plan) = r.plan.as_mut() else { return };
        if plan.intent.is_some() || !plan.steps.is_empty() {
            return;
        }
        let option = IntentOption::numbered(&plan.options, intent);
        plan.chosen = option.map(|o| o.goal.clone());
        let expanded = option.map(|o| (o.goal.clone(), planner.expand(&r.snapshot, &o.goal)));
        match expanded.filter(|(_, steps)| !steps.is_empty()) {
            Some((goal, steps)) => {
                plan.intent = Some(goal);
                plan.steps = steps;
            }
            None => {
                let mut steps = match r.fallback.take() {
                    Answer::Plan(steps) => steps,
                    Answer::Line(_) => Vec::new(),
                };
                if steps.is_empty() {
                    steps.push(idle);
                }
                plan.intent = Some(String::new());
                plan.steps = steps;
                plan.repaired = true;
            }
        }
        self.deliver_steps(id, at, metrics);
    }

    /// **First step.** Gives the game the steps of a request it does not have yet, if they may
    /// go now: while streaming, and in time (or after a first step that was).
    fn deliver_steps(&mut self, id: RequestId, at: Timestamp, metrics: &mut Metrics) {
        let streaming = self.streaming;
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        if r.is_answered() || !streaming || !r.in_time(at) {
            return;
        }
        let Some(agent) = r.agent else { return };
        let total = r.plan.as_ref().map_or(0, |p| p.steps.len());
        while r.delivered < total {
            let index = r.delivered;
            r.delivered += 1;
            if index == 0 {
                r.first_delivered(at, metrics);
                self.deadlines.remove(&(r.deadline, id));
            }
            let Some(step) = r.plan.as_ref().and_then(|p| p.steps.get(index)) else {
                break;
            };
            self.outbox.push(Outgoing::Step(StepReady {
                agent,
                request: id,
                index,
                step: step.clone(),
            }));
        }
    }

    /// **First words.** A line's words arrive: in time (or after first words that were), the
    /// line filter and the copy check pass them and they go to the game; a cut ends the line
    /// there, a rejection before any word was said leaves the line to its template. A bridged
    /// reply's words follow its bridge while the reply deadline allows.
    fn on_words(&mut self, id: RequestId, at: Timestamp, words: &str, metrics: &mut Metrics) {
        let streaming = self.streaming;
        let filter = Arc::clone(&self.filter);
        let copies = Arc::clone(&self.copies);
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        if r.gate != Gate::Open {
            return;
        }
        r.text.push_str(words);
        let in_time = r.in_time(at);
        let agent = match r.agent {
            Some(agent) if !r.is_answered() && r.kind != RequestKind::Plan => agent,
            // The banter pool takes the whole line later, and a plan says its line with its
            // completion; check it as it comes.
            _ => {
                if r.close_if_filtered(&*filter, &copies) {
                    metrics.record_copy();
                }
                return;
            }
        };
        if !streaming || !in_time {
            return;
        }
        let checked = r.check(&*filter, &copies, &r.text);
        if checked.copy && !r.copied {
            r.copied = true;
            metrics.record_copy();
        }
        let end = match checked.verdict {
            LineVerdict::Pass => r.text.len(),
            LineVerdict::Cut(n) => {
                r.gate = Gate::Cut;
                // Words already spoken stand: a copy found on its last word began in them.
                n.clamp(r.delivered, r.text.len())
            }
            LineVerdict::Reject => {
                r.gate = if r.delivered == 0 {
                    Gate::Rejected
                } else {
                    Gate::Cut
                };
                cut_at(&mut r.text, r.delivered);
                return;
            }
        };
        cut_at(&mut r.text, end);
        let end = r.text.len();
        if end <= r.delivered {
            return;
        }
        let mut text = r.text[r.delivered..end].to_owned();
        if r.delivered == 0 {
            if r.bridge.is_some() {
                // The bridge and the model's words are one line.
                text.insert(0, ' ');
            } else {
                r.first_delivered(at, metrics);
                self.deadlines.remove(&(r.deadline, id));
            }
        }
        r.delivered = end;
        self.outbox.push(Outgoing::Words(WordsReady {
            agent,
            request: id,
            text,
        }));
    }

    /// **Job over.** Cancelled: the request ends quietly. Completed: the answer fills the cache
    /// (or the banter pool), and then, if the game has its completion already (**late answer**),
    /// that is all; if nothing reached the game and the whole answer is not in time, the
    /// fallback answers at the deadline (now, if it passed or the answer is empty: `Parse`);
    /// otherwise the model's answer completes. Failed (**backend error**, **overflow**): after
    /// some output the planner completes the plan (`Llm { repaired: true }`), else the fallback
    /// answers with the failure's reason.
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
        let backend = r.backend();
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
                if r.is_answered() {
                    self.drop_request(id);
                    return;
                }
                let whole_in_time = r.deadline.is_met_by(at);
                let has_output = match &r.plan {
                    Some(plan) => !plan.steps.is_empty(),
                    None => !r.text.trim().is_empty() && r.gate != Gate::Rejected,
                };
                if r.delivered == 0 && !(whole_in_time && has_output) {
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
                // A bridged reply's words past its reply deadline are not said.
                let late = match self.requests.get_mut(&id) {
                    Some(r) if r.phase == Phase::Bridged && !whole_in_time => {
                        r.gate = Gate::Cut;
                        Some(FallbackReason::Deadline)
                    }
                    _ => None,
                };
                self.complete_from_model(id, at, backend, late, metrics);
                self.drop_request(id);
            }
            JobOutcome::Failed(failure) => {
                let reason = failure.fallback_reason();
                if matches!(failure, JobFailure::Expired) {
                    metrics.record_shed();
                }
                if reason == FallbackReason::NoModel {
                    self.no_model = Some(failure.to_string());
                }
                if r.is_answered() {
                    self.drop_request(id);
                    return;
                }
                if r.delivered > 0 {
                    self.complete_from_model(id, at, backend, Some(reason), metrics);
                } else {
                    self.answer_with_fallback(id, reason, metrics);
                }
                self.drop_request(id);
            }
        }
    }

    /// **Cache fill.** Stores a finished model answer: a plan in the answer cache (a guided
    /// intent as the intent, so a hit re-expands it), an idle-time line in the banter pool.
    fn fill_caches(&mut self, id: RequestId, now: Timestamp) {
        let Some(r) = self.requests.get(&id) else {
            return;
        };
        match (&r.plan, r.agent) {
            (Some(plan), _) => {
                let answer = match &plan.intent {
                    Some(goal) if !plan.repaired => Some(CachedAnswer::Intent {
                        intent: goal.clone(),
                        say: r.plan_line(&*self.filter, &self.copies),
                    }),
                    _ => CachedAnswer::from_steps(&plan.steps, &r.snapshot, &self.registry),
                };
                if let (Some(key), Some(answer)) = (plan.cache_key.clone(), answer) {
                    self.cache.insert(key, answer, now);
                }
            }
            (None, None) => {
                let line = r.text.trim();
                if is_speech(line) && r.gate != Gate::Rejected {
                    let line = line.to_owned();
                    let (persona, situation) = (r.persona.clone(), r.situation.clone());
                    self.banter.add(&persona, &situation, line, now);
                }
            }
            (None, Some(_)) => {}
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
        let filter = Arc::clone(&self.filter);
        let copies = Arc::clone(&self.copies);
        let templates = Arc::clone(&self.templates);
        let seed = self.bridge_seed(id);
        let idle = self.registry.idle_step();
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        let Some(agent) = r.agent else { return };
        if r.first_at.is_none() {
            r.first_delivered(at, metrics);
        }
        r.phase = Phase::CacheOnly;
        self.deadlines.remove(&(r.deadline, id));
        let latency = at.since(r.submitted);
        let first_after = r.first_at.unwrap_or(at).since(r.submitted);
        let delivered = r.delivered;
        if r.plan.is_some() {
            let say = if r.line_skipped {
                // The model's time went to waiting work: a short acknowledgement in its place.
                Some(filtered(
                    &*filter,
                    bridge_line(&templates, &r.persona, seed),
                ))
                .filter(|line| !line.is_empty())
            } else {
                r.plan_line(&*filter, &copies)
            };
            let Some(plan) = r.plan.as_mut() else { return };
            let mut steps = std::mem::take(&mut plan.steps);
            if reason.is_some() {
                complete_after(&*planner, &r.snapshot, &mut steps, delivered, idle);
            }
            let repaired = reason.is_some() || plan.repaired;
            let source = PlanSource::Llm { backend, repaired };
            for (index, step) in steps.iter().enumerate().skip(delivered) {
                self.outbox.push(Outgoing::Step(StepReady {
                    agent,
                    request: id,
                    index,
                    step: step.clone(),
                }));
            }
            if repaired {
                metrics.record_repair();
            }
            metrics.record_answer(RequestKind::Plan, &source, reason);
            metrics.record_full(RequestKind::Plan, &source, latency);
            let intent = plan.chosen.clone();
            self.outbox.push(Outgoing::Plan(PlanDone {
                agent,
                request: id,
                steps,
                say,
                intent,
                source,
                fallback: reason,
                first_after,
                latency,
            }));
            return;
        }
        let mut text = std::mem::take(&mut r.text);
        if r.gate == Gate::Open {
            // Words already spoken stand whatever the verdict on the whole line.
            let end = match r.check(&*filter, &copies, &text).verdict {
                LineVerdict::Pass => text.len(),
                LineVerdict::Cut(n) => n.max(delivered),
                LineVerdict::Reject => delivered,
            };
            cut_at(&mut text, end);
        } else {
            cut_at(&mut text, delivered);
        }
        if text.len() > delivered {
            let mut words = text[delivered..].to_owned();
            if delivered == 0 && r.bridge.is_some() {
                words.insert(0, ' ');
            }
            self.outbox.push(Outgoing::Words(WordsReady {
                agent,
                request: id,
                text: words,
            }));
        }
        let bridged = r.bridge.is_some();
        if let Some(bridge) = &r.bridge {
            text = if text.is_empty() {
                bridge.clone()
            } else {
                format!("{bridge} {text}")
            };
        }
        let line = LineDone {
            agent,
            request: id,
            kind: r.kind,
            text,
            source: PlanSource::Llm {
                backend,
                repaired: false,
            },
            fallback: reason,
            first_after,
            latency,
            bridged,
            player_said: r.player_said.clone(),
        };
        self.finish_line(line, 0, metrics);
    }

    /// **Fallback.** Answers a request with its prepared fallback, for `reason`: the plan (the
    /// idle verb if the planner found none, `Goap`) or the template line (`Template`). The
    /// request moves to [`Phase::CacheOnly`].
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
        let Some(agent) = r.agent else { return };
        r.phase = Phase::CacheOnly;
        self.deadlines.remove(&(r.deadline, id));
        let latency = now.since(r.submitted);
        // A plan is answered with a plan and a line with a line, whatever an executor returned.
        let answer = match (r.plan.is_some(), r.fallback.take()) {
            (true, Answer::Line(_)) => Answer::Plan(Vec::new()),
            (false, Answer::Plan(_)) => Answer::Line(String::new()),
            (_, answer) => answer,
        };
        match answer {
            Answer::Plan(mut steps) => {
                if steps.is_empty() {
                    steps.push(idle);
                }
                let source = PlanSource::Goap;
                metrics.record_answer(r.kind, &source, Some(reason));
                metrics.record_full(r.kind, &source, latency);
                self.deliver_plan(PlanDone {
                    agent,
                    request: id,
                    steps,
                    say: None,
                    intent: None,
                    source,
                    fallback: Some(reason),
                    first_after: latency,
                    latency,
                });
            }
            Answer::Line(text) => {
                let text = filtered(&*filter, text);
                // After a bridge, the template finishes the line the bridge began.
                let (text, spoken) = match &r.bridge {
                    Some(bridge) if text.is_empty() => (bridge.clone(), bridge.len()),
                    Some(bridge) => (format!("{bridge} {text}"), bridge.len()),
                    None => (text, 0),
                };
                let first_after = r.first_at.map_or(latency, |t| t.since(r.submitted));
                let line = LineDone {
                    agent,
                    request: id,
                    kind: r.kind,
                    text,
                    source: PlanSource::Template,
                    fallback: Some(reason),
                    first_after,
                    latency,
                    bridged: r.bridge.is_some(),
                    player_said: r.player_said.clone(),
                };
                self.finish_line(line, spoken, metrics);
            }
        }
    }

    // ----- fallback -----------------------------------------------------------------------------

    /// **Deadline.** Answers every request whose deadline passed with nothing in time from the
    /// model with its prepared fallback (`fallback: Some(Deadline)`).
    ///
    /// On a real-time clock, a frame whose drain ran out of budget may have left an in-time
    /// step unread, so such a request first moves to [`Phase::Overdue`] and gets one more frame.
    /// A request whose model is still writing stays, in [`Phase::CacheOnly`], so its answer fills
    /// the cache; under congestion on a real-time clock its job is cancelled instead.
    pub fn answer_late(&mut self, metrics: &mut Metrics) {
        let now = self.clock.now();
        self.bridge_before_deadline(now, metrics);
        let due: Vec<(Deadline, RequestId)> = self
            .deadlines
            .iter()
            .take_while(|(d, _)| d.has_passed(now))
            .copied()
            .collect();
        let congested = self.queue_depth() > 0;
        for (deadline, id) in due {
            let Some(r) = self.requests.get_mut(&id) else {
                self.deadlines.remove(&(deadline, id));
                continue;
            };
            if !self.drained_all && r.phase == Phase::Waiting {
                r.phase = Phase::Overdue;
                continue;
            }
            self.deadlines.remove(&(deadline, id));
            if r.is_answered() || (r.delivered > 0 && r.phase != Phase::Bridged) {
                continue;
            }
            if r.phase == Phase::Bridged && r.delivered > 0 {
                // The reply's budget is spent: the line ends with what the model said.
                r.gate = Gate::Cut;
                let backend = r.backend();
                self.complete_from_model(id, now, backend, Some(FallbackReason::Deadline), metrics);
                self.end_answered(id, congested);
                continue;
            }
            if self.may_bridge(id) {
                self.bridge(id, now, metrics);
                continue;
            }
            self.answer_with_fallback(id, FallbackReason::Deadline, metrics);
            self.end_answered(id, congested);
        }
    }

    /// Bridges every reply whose dialogue deadline falls before the next frame (one frame
    /// length from `now`) with nothing said yet, so that its first words are spoken by the
    /// deadline, not a frame after it.
    fn bridge_before_deadline(&mut self, now: Timestamp, metrics: &mut Metrics) {
        let horizon = now.after(self.frame);
        let soon: Vec<RequestId> = self
            .deadlines
            .iter()
            .take_while(|(d, _)| d.due < horizon)
            .filter(|(d, _)| !d.has_passed(now))
            .map(|&(_, id)| id)
            .filter(|id| {
                self.requests
                    .get(id)
                    .is_some_and(|r| r.phase == Phase::Waiting)
            })
            .collect();
        for id in soon {
            if self.may_bridge(id) {
                if let Some(r) = self.requests.get(&id) {
                    let deadline = r.deadline;
                    self.deadlines.remove(&(deadline, id));
                }
                self.bridge(id, now, metrics);
            }
        }
    }

    /// After a completion at a deadline: the model's answer can only fill the cache now, which
    /// under congestion is not worth a worker's time; otherwise the request stays for that, and
    /// no longer holds its agent's slot.
    fn end_answered(&mut self, id: RequestId, congested: bool) {
        let Some(r) = self.requests.get(&id) else {
            return;
        };
        if r.job_over() || (congested && !self.clock.is_virtual()) {
            self.drop_request(id);
        } else if let Some(agent) = r.agent
            && let Some(slot) = r.slot()
        {
            self.by_agent.remove(&(agent, slot));
        }
    }

    /// Whether reply `id`, at its dialogue deadline with nothing said, may begin with a bridge:
    /// the model is still writing, streaming is on, and the reply budget outlasts the dialogue
    /// deadline.
    fn may_bridge(&self, id: RequestId) -> bool {
        let deadlines = &self.config.deadlines;
        self.streaming
            && deadlines.reply_ms > deadlines.dialogue_ms
            && self.requests.get(&id).is_some_and(|r| {
                r.kind == RequestKind::Dialogue
                    && r.player_said.is_some()
                    && r.phase != Phase::Bridged
                    && r.delivered == 0
                    && r.gate == Gate::Open
                    && !r.job_over()
            })
    }

    /// The seed a request's bridge template is drawn with.
    fn bridge_seed(&self, id: RequestId) -> u64 {
        self.config.sampling.seed ^ id.0.rotate_left(17)
    }

    /// **Bridge.** A reply to the player whose model words have not begun by the dialogue
    /// deadline begins with a short acknowledgement from the persona's templates (situation
    /// [`BRIDGE_SITUATION`](super::BRIDGE_SITUATION)), spoken now; the request moves to [`Phase::Bridged`] and its
    /// deadline to the reply deadline (`deadlines.reply_ms` after the request). The model's
    /// words that come by then continue the same line; past it the line ends with what the
    /// model said, or with the template after the bridge if it said nothing.
    fn bridge(&mut self, id: RequestId, now: Timestamp, metrics: &mut Metrics) {
        let reply = Duration::from_millis(self.config.deadlines.reply_ms);
        let seed = self.bridge_seed(id);
        let templates = Arc::clone(&self.templates);
        let filter = Arc::clone(&self.filter);
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        let Some(agent) = r.agent else { return };
        let mut text = filtered(&*filter, bridge_line(&templates, &r.persona, seed));
        if text.is_empty() {
            text = DEFAULT_BRIDGE.to_owned();
        }
        r.first_delivered(now, metrics);
        r.phase = Phase::Bridged;
        r.deadline = Deadline::after(r.submitted, reply);
        self.deadlines.insert((r.deadline, id));
        r.bridge = Some(text.clone());
        metrics.record_bridge();
        self.outbox.push(Outgoing::Words(WordsReady {
            agent,
            request: id,
            text,
        }));
    }
}

/// `step` with each text argument through the request's line checks ([`Request::checked_line`]),
/// or `None` if they reject one.
fn checked_step<K>(
    r: &Request<K>,
    filter: &dyn LineFilter,
    copies: &CopyCheck,
    mut step: PlanStep,
) -> Option<PlanStep> {
    for (_, value) in &mut step.args {
        if let ArgValue::Text(text) = value {
            *text = r.checked_line(filter, copies, text)?;
        }
    }
    Some(step)
}
