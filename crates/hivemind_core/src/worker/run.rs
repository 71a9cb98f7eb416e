//! A worker thread: builds its backend, runs batches, parses and stamps what they write.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, PoisonError};

use crossbeam_channel::Receiver;

use super::{
    CANCELLED, JobFailure, JobOutcome, JobRequest, PendingJob, RUNNING, SHED, Shared, WorkItem,
    WorkerEvent, WorkerEventKind,
};
use crate::action::ActionRegistry;
use crate::backend::{
    BackendError, Batch, BatchAgent, BatchSink, Handoff, InferenceBackend, JobId, TokenUsage,
};
use crate::clock::{Clock, Deadline, Timestamp};
use crate::config::Throughput;
use crate::plan::OutputFormat;
use crate::snapshot::{AgentId, WorldSnapshot};
use crate::stream::{StreamEvent, StreamParser};

struct Built {
    generation: u64,
    backend: Box<dyn InferenceBackend>,
}

pub(super) fn worker_loop(shared: &Shared, work: &Receiver<WorkItem>) {
    let mut built: Option<Built> = None;
    while let Ok(item) = work.recv() {
        let mut run = Run::new(shared, item);
        if shared.stopping.load(Ordering::Acquire) {
            for slot in &run.slots {
                let _ = shared.leave_queue(&slot.state, RUNNING);
            }
            run.fail_unfinished(&JobFailure::Shutdown);
            continue;
        }
        // Everything that touches the backend or model output runs under `catch_unwind`, so a
        // panic costs this batch's jobs (answered below) and the backend, never the thread.
        let result = catch_unwind(AssertUnwindSafe(|| run.execute(&mut built)));
        if let Err(panic) = result {
            built = None;
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            run.fail_unfinished(&JobFailure::Panicked(message));
        }
        let leftover = if shared.stopping.load(Ordering::Acquire) {
            JobFailure::Shutdown
        } else {
            JobFailure::Backend(BackendError::Failed(
                "the stream ended without an answer".into(),
            ))
        };
        run.fail_unfinished(&leftover);
    }
}

/// One job as the worker tracks it.
struct Slot {
    id: JobId,
    agent: AgentId,
    deadline: Deadline,
    submitted: Timestamp,
    state: Arc<AtomicU8>,
    snapshot: Option<Arc<WorldSnapshot>>,
    finished: bool,
    produced: bool,
    crossed: bool,
    steps: usize,
    usage: TokenUsage,
    /// The stamp of its latest event: on a virtual clock a failure is stamped with it, so that
    /// every stamp follows from token counts and none from when the worker ran.
    last: Timestamp,
}

struct Run<'s> {
    shared: &'s Shared,
    clock: Clock,
    item_jobs: Vec<PendingJob>,
    slots: Vec<Slot>,
    batch_id: u64,
    tick: u64,
    kind: crate::plan::RequestKind,
}

impl<'s> Run<'s> {
    fn new(shared: &'s Shared, item: WorkItem) -> Self {
        let slots = item
            .jobs
            .iter()
            .map(|j| Slot {
                id: j.id,
                agent: j.request.agent,
                deadline: j.request.deadline,
                submitted: j.submitted,
                state: Arc::clone(&j.state),
                snapshot: None,
                finished: false,
                produced: false,
                crossed: false,
                steps: 0,
                usage: TokenUsage::default(),
                last: j.submitted,
            })
            .collect();
        Run {
            shared,
            clock: shared.clock.clone(),
            batch_id: item.batch_id,
            tick: item.tick,
            kind: item.kind,
            item_jobs: item.jobs,
            slots,
        }
    }

    fn emit(&mut self, slot: usize, at: Timestamp, kind: WorkerEventKind) {
        let s = &mut self.slots[slot];
        s.last = s.last.max(at);
        let _ = self.shared.events.send(WorkerEvent {
            job: s.id,
            agent: s.agent,
            at,
            kind,
        });
    }

    fn finish(&mut self, slot: usize, at: Timestamp, outcome: JobOutcome) {
        if self.slots[slot].finished {
            return;
        }
        self.slots[slot].finished = true;
        self.emit(slot, at, WorkerEventKind::Finished(outcome));
    }

    /// When a failure of `slot` happens: now, or on a virtual clock the job's latest stamp.
    fn failure_time(&self, slot: usize) -> Timestamp {
        if self.clock.is_virtual() {
            self.slots[slot].last
        } else {
            self.clock.now()
        }
    }

    fn fail_unfinished(&mut self, failure: &JobFailure) {
        for i in 0..self.slots.len() {
            if self.slots[i].finished {
                continue;
            }
            let now = self.failure_time(i);
            let outcome = if self.slots[i].state.load(Ordering::Acquire) == CANCELLED {
                JobOutcome::Cancelled
            } else {
                JobOutcome::Failed(failure.clone())
            };
            self.finish(i, now, outcome);
        }
    }

    fn execute(&mut self, built: &mut Option<Built>) {
        // On a virtual clock a batch starts when it was submitted, as if a worker were always
        // free: when this worker got to it must not change any stamp.
        let now = if self.clock.is_virtual() {
            self.slots
                .iter()
                .map(|s| s.submitted)
                .max()
                .unwrap_or_else(|| self.clock.now())
        } else {
            self.clock.now()
        };
        // Claim every job; those cancelled or shed while they waited end here.
        let mut claimed = Vec::with_capacity(self.slots.len());
        for i in 0..self.slots.len() {
            match self.shared.leave_queue(&self.slots[i].state, RUNNING) {
                Ok(()) => claimed.push(i),
                Err(SHED) => self.finish(i, now, JobOutcome::Failed(JobFailure::Overflow)),
                Err(_) => self.finish(i, now, JobOutcome::Cancelled),
            }
        }
        // Other work waiting, this batch's jobs counted out: a late job gives way to it.
        if !self.clock.is_virtual() && self.shared.congested() {
            for i in claimed {
                if self.slots[i].deadline.has_passed(now) {
                    self.finish(i, now, JobOutcome::Failed(JobFailure::Expired));
                }
            }
        }
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|i| !self.slots[*i].finished)
            .collect();
        if live.is_empty() {
            return;
        }

        let (generation, factory) = {
            let f = self
                .shared
                .factory
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            (f.0, Arc::clone(&f.1))
        };
        if built.as_ref().is_none_or(|b| b.generation != generation) {
            *built = None;
            match factory.build() {
                Ok(backend) => {
                    *built = Some(Built {
                        generation,
                        backend,
                    });
                }
                Err(e) => {
                    self.fail_unfinished(&JobFailure::Backend(e));
                    return;
                }
            }
        }
        let Some(Built { backend, .. }) = built.as_mut() else {
            return;
        };
        let backend_id = factory.id();

        let context = Arc::clone(
            &self
                .shared
                .context
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let jobs: Vec<(JobId, &JobRequest)> = live
            .iter()
            .map(|i| (self.item_jobs[*i].id, &self.item_jobs[*i].request))
            .collect();
        let (mut batch, failed) = context.build_batch(self.batch_id, self.tick, self.kind, &jobs);
        batch.clock = self.clock.clone();
        batch.start = now;
        for (j, error) in failed {
            self.finish(
                live[j],
                now,
                JobOutcome::Failed(JobFailure::Invalid(error.to_string())),
            );
        }
        // Map batch agents back to slots.
        let slot_of: Vec<usize> = batch
            .agents
            .iter()
            .map(|a| {
                self.slots
                    .iter()
                    .position(|s| s.id == a.job)
                    .unwrap_or(usize::MAX)
            })
            .collect();
        for (a, &slot) in batch.agents.iter().zip(&slot_of) {
            if let Some(s) = self.slots.get_mut(slot) {
                s.snapshot = Some(Arc::clone(&a.snapshot));
            }
        }
        let size = batch.agents.len();
        for &slot in &slot_of {
            if slot < self.slots.len() {
                let queue_wait = now.since(self.slots[slot].submitted);
                let started = WorkerEventKind::Started {
                    backend: backend_id.clone(),
                    batch: batch.id,
                    batch_size: size,
                    queue_wait,
                };
                self.emit(slot, now, started);
            }
        }
        if batch.agents.is_empty() {
            return;
        }

        let rate = factory.throughput();
        let mut sink = Sink::new(self, &batch, slot_of, &context.registry, now, rate);
        let result = backend.run(&batch, &mut sink);
        let outcome_of_run = result.err();
        drop(sink);
        if let Some(error) = outcome_of_run {
            self.fail_unfinished(&JobFailure::Backend(error));
        }
    }
}

/// Receives a backend's text for one batch: parses it per stream, validates steps, stamps
/// events and finishes jobs.
struct Sink<'r, 's> {
    run: &'r mut Run<'s>,
    registry: &'r ActionRegistry,
    start: Timestamp,
    /// For each stream: its parser, and the slots it answers for.
    streams: Vec<(StreamParser, Vec<usize>)>,
    /// For each stream, on a virtual clock: the time spent before its backend took it, and the
    /// rate its backend's tokens are charged at (`None`: the clock's).
    charges: Vec<(std::time::Duration, Option<Throughput>)>,
    /// Shared layout: agent id → slot.
    by_agent: HashMap<AgentId, usize>,
    events: Vec<StreamEvent>,
}

impl<'r, 's> Sink<'r, 's> {
    fn new(
        run: &'r mut Run<'s>,
        batch: &Batch,
        slot_of: Vec<usize>,
        registry: &'r ActionRegistry,
        start: Timestamp,
        rate: Option<Throughput>,
    ) -> Self {
        // A guided answer's intent is reported on its last possible digit.
        // A named intent is reported when its string ends.
        let parser = |agents: &[&BatchAgent]| {
            let most = agents.iter().map(|a| a.task.options().len()).max();
            let labels = agents
                .iter()
                .map(|a| {
                    let labels = a.task.options().iter().map(|o| o.label.clone());
                    (a.agent, labels.collect())
                })
                .collect();
            let parser = StreamParser::new(batch.format).with_intent_labels(labels);
            match u32::try_from(most.unwrap_or(0)) {
                Ok(max) if batch.format == OutputFormat::Guided => parser.with_intent_bound(max),
                _ => parser,
            }
        };
        let (streams, by_agent) = if batch.shared.is_some() {
            let by_agent = batch
                .agents
                .iter()
                .zip(&slot_of)
                .map(|(a, s)| (a.agent, *s))
                .collect();
            let all: Vec<&BatchAgent> = batch.agents.iter().collect();
            (vec![(parser(&all), slot_of)], by_agent)
        } else {
            let streams = batch
                .agents
                .iter()
                .zip(slot_of)
                .map(|(a, s)| (parser(&[a]).with_agent(a.agent), vec![s]))
                .collect();
            (streams, HashMap::new())
        };
        Sink {
            run,
            registry,
            start,
            charges: vec![(std::time::Duration::ZERO, rate); streams.len()],
            streams,
            by_agent,
            events: Vec::new(),
        }
    }

    /// When `stream` wrote what cost `usage`.
    fn stamp(&self, stream: usize, usage: TokenUsage) -> Timestamp {
        let (after, rate) = self.charges.get(stream).copied().unwrap_or_default();
        self.run.clock.stamp_at(
            self.start.after(after),
            usage.prompt_tokens,
            usage.generated_tokens,
            rate,
        )
    }

    fn slot_for(&self, stream: usize, agent: AgentId) -> Option<usize> {
        if self.by_agent.is_empty() {
            self.streams
                .get(stream)
                .and_then(|(_, slots)| slots.first().copied())
        } else {
            self.by_agent.get(&agent).copied()
        }
    }

    fn is_live(&self, slot: usize) -> bool {
        self.run.slots.get(slot).is_some_and(|s| !s.finished)
    }

    /// Ends jobs the game cancelled since the last look.
    fn reap_cancelled(&mut self, stream: usize, at: Timestamp) {
        let Some((_, slots)) = self.streams.get(stream) else {
            return;
        };
        for slot in slots.clone() {
            if self.is_live(slot) && self.run.slots[slot].state.load(Ordering::Acquire) == CANCELLED
            {
                self.run.finish(slot, at, JobOutcome::Cancelled);
            }
        }
    }

    fn fail_stream(&mut self, stream: usize, failure: &JobFailure, at: Timestamp) {
        let Some((_, slots)) = self.streams.get(stream) else {
            return;
        };
        for slot in slots.clone() {
            if self.is_live(slot) {
                self.run
                    .finish(slot, at, JobOutcome::Failed(failure.clone()));
            }
        }
    }
}

impl BatchSink for Sink<'_, '_> {
    fn text(&mut self, stream: usize, text: &str, usage: TokenUsage) {
        let at = self.stamp(stream, usage);
        self.reap_cancelled(stream, at);
        let Some((parser, slots)) = self.streams.get_mut(stream) else {
            return;
        };
        if parser.error().is_some() {
            return;
        }
        for &slot in slots.iter() {
            if let Some(s) = self.run.slots.get_mut(slot) {
                s.usage = usage;
            }
        }
        let fed = parser.feed(text.as_bytes(), &mut self.events);
        let slots = slots.clone();
        let events = std::mem::take(&mut self.events);
        for event in events {
            let Some(slot) = self.slot_for(stream, event.agent()) else {
                continue;
            };
            if !self.is_live(slot) {
                continue;
            }
            let kind = match event {
                StreamEvent::Step { step, .. } => {
                    let s = &self.run.slots[slot];
                    let check = s
                        .snapshot
                        .as_deref()
                        .map(|snap| self.registry.validate_step(&step, snap));
                    if let Some(Err(e)) = check {
                        self.run.finish(
                            slot,
                            at,
                            JobOutcome::Failed(JobFailure::Invalid(format!(
                                "step {}: {e}",
                                s.steps
                            ))),
                        );
                        continue;
                    }
                    let index = s.steps;
                    self.run.slots[slot].steps += 1;
                    WorkerEventKind::Step { index, step }
                }
                StreamEvent::Intent { intent, .. } => WorkerEventKind::Intent { intent },
                StreamEvent::Words { text, .. } => WorkerEventKind::Words { text },
                StreamEvent::Done { .. } => {
                    let usage = self.run.slots[slot].usage;
                    self.run.finish(slot, at, JobOutcome::Completed { usage });
                    continue;
                }
            };
            let s = &mut self.run.slots[slot];
            if !s.produced && !s.deadline.is_met_by(at) && self.run.clock.is_virtual() && !s.crossed
            {
                s.crossed = true;
                self.run.emit(slot, at, WorkerEventKind::DeadlineCrossed);
            }
            self.run.slots[slot].produced = true;
            self.run.emit(slot, at, kind);
        }
        // A virtual clock also learns of a crossed deadline when nothing was produced.
        if self.run.clock.is_virtual() {
            for &slot in &slots {
                let s = &mut self.run.slots[slot];
                if !s.finished && !s.produced && !s.crossed && !s.deadline.is_met_by(at) {
                    s.crossed = true;
                    self.run.emit(slot, at, WorkerEventKind::DeadlineCrossed);
                }
            }
        }
        if let Err(e) = fed {
            self.fail_stream(stream, &JobFailure::Parse(e.to_string()), at);
        }
    }

    fn done(&mut self, stream: usize, usage: TokenUsage) {
        let at = self.stamp(stream, usage);
        self.reap_cancelled(stream, at);
        let Some((parser, _)) = self.streams.get_mut(stream) else {
            return;
        };
        let mut rest = Vec::new();
        let failure = match parser.finish(&mut rest) {
            Ok(()) => JobFailure::Parse("the output ended before this agent's answer".into()),
            Err(e) => JobFailure::Parse(e.to_string()),
        };
        self.fail_stream(stream, &failure, at);
    }

    fn error(&mut self, stream: usize, error: BackendError) {
        let at = match self
            .streams
            .get(stream)
            .and_then(|(_, slots)| slots.first())
        {
            Some(&slot) if slot < self.run.slots.len() => self.run.failure_time(slot),
            _ => self.run.clock.now(),
        };
        self.reap_cancelled(stream, at);
        let failure = match error {
            BackendError::Late(_) => JobFailure::Expired,
            error => JobFailure::Backend(error),
        };
        self.fail_stream(stream, &failure, at);
    }

    fn hand_off(&mut self, stream: usize, handoff: &Handoff) {
        let Some(charge) = self.charges.get_mut(stream) else {
            return;
        };
        *charge = (handoff.after, handoff.throughput);
        let Some((_, slots)) = self.streams.get(stream) else {
            return;
        };
        let at = self.start.after(handoff.after);
        for slot in slots.clone() {
            if self.is_live(slot) {
                let at = if self.run.clock.is_virtual() {
                    at
                } else {
                    self.run.clock.now()
                };
                let backend = handoff.backend.clone();
                self.run.emit(slot, at, WorkerEventKind::Routed { backend });
            }
        }
    }

    fn skip_line(&mut self, stream: usize, usage: TokenUsage) -> bool {
        // A virtual clock's run must not depend on what else was queued when it ran.
        if self.run.clock.is_virtual() || !self.run.shared.congested() {
            return false;
        }
        let Some((_, slots)) = self.streams.get(stream) else {
            return false;
        };
        let live: Vec<usize> = slots.iter().copied().filter(|&s| self.is_live(s)).collect();
        // Only an answer that is there already can do without its line.
        if live.is_empty() || live.iter().any(|&s| !self.run.slots[s].produced) {
            return false;
        }
        let at = self.stamp(stream, usage);
        for slot in live {
            self.run.slots[slot].usage = usage;
            self.run.emit(slot, at, WorkerEventKind::LineSkipped);
            self.run.finish(slot, at, JobOutcome::Completed { usage });
        }
        true
    }

    fn is_cancelled(&self, stream: usize) -> bool {
        if self.run.shared.stopping.load(Ordering::Acquire) {
            return true;
        }
        self.streams.get(stream).is_none_or(|(_, slots)| {
            slots.iter().all(|&s| {
                self.run
                    .slots
                    .get(s)
                    .is_none_or(|s| s.finished || s.state.load(Ordering::Acquire) == CANCELLED)
            })
        })
    }
}
