//! The worker pool: jobs in, batches to backends on their own threads, events out.
//!
//! The game's side of the pool ([`WorkerPool`]) never blocks:
//!
//! 1. [`WorkerPool::submit`] takes one agent's request and returns its [`JobId`] at once.
//! 2. [`WorkerPool::dispatch`] (once per tick) groups the tick's jobs into batches and hands
//!    them to the workers through a crossbeam channel.
//! 3. [`WorkerPool::try_recv`] returns [`WorkerEvent`]s: a job started, a step or words were
//!    produced (stamped on the [`Clock`]), a job crossed its deadline with nothing to show, and
//!    finally exactly one [`JobOutcome`] per job.
//!
//! # Batching
//!
//! Batches are formed on the game's thread, deterministically: the jobs submitted since the last
//! dispatch are ordered by tick, request kind, format and agent id, and cut into batches of at
//! most `max_batch`. Which worker runs a batch never changes what is in it, so a lockstep run
//! gives the same answers with one worker or four.
//!
//! # Overflow
//!
//! The queue holds at most `queue_capacity` jobs that have not started. A job that arrives at a
//! full queue is never dropped silently: under [`OverflowPolicy::RejectNew`] it ends at once with
//! [`JobFailure::Overflow`]; under [`OverflowPolicy::ShedLatestDeadline`] the waiting job with the
//! latest deadline ends that way instead, if the new job's deadline is earlier. Either way the
//! game answers the overflowing job with its prepared fallback. A job shed or cancelled while
//! its batch waits for a worker leaves the queue at once, so the newcomer that shed it never
//! makes the queue longer than its capacity.
//!
//! # Failure
//!
//! A backend that panics is caught on its worker: every unfinished job of the batch ends with
//! [`JobFailure::Panicked`], the backend is dropped and built again from its factory before the
//! next batch. A worker thread that dies anyway is replaced. On a real-time clock a job whose
//! deadline passed while it waited is skipped ([`JobFailure::Expired`]) when other work is
//! queued: its fallback has already answered, and its model answer could only fill the cache.

mod context;
mod run;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

pub use context::PromptContext;

use crate::backend::{BackendError, BackendFactory, JobId, TokenUsage};
use crate::clock::{Clock, Deadline, Timestamp};
use crate::config::{BatchingConfig, OverflowPolicy};
use crate::plan::{BackendId, FallbackReason, PlanStep, RequestKind};
use crate::prompt::AgentTask;
use crate::snapshot::{AgentId, WorldSnapshot};

/// One agent's request.
#[derive(Clone, Debug)]
pub struct JobRequest {
    /// The agent.
    pub agent: AgentId,
    /// Its persona's key.
    pub persona: String,
    /// What it asks; the task decides the request kind and the output format.
    pub task: AgentTask,
    /// What it knows, shared with the request that holds it. The pool fits it to the snapshot
    /// budget.
    pub snapshot: Arc<WorldSnapshot>,
    /// When its first step, first words or whole line is due.
    pub deadline: Deadline,
    /// A scene the player is watching: a router may send it to another backend.
    pub spotlight: bool,
}

/// Something that happened to a job.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerEvent {
    /// The job.
    pub job: JobId,
    /// Its agent.
    pub agent: AgentId,
    /// When it happened on the pool's clock: for output, when the worker produced it.
    pub at: Timestamp,
    /// What happened.
    pub kind: WorkerEventKind,
}

/// What happened to a job.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerEventKind {
    /// Another backend answers the job from here on: one a router handed it to.
    Routed {
        /// That backend.
        backend: BackendId,
    },
    /// A backend began the job.
    Started {
        /// The backend.
        backend: BackendId,
        /// The batch it is part of.
        batch: u64,
        /// How many jobs the batch holds.
        batch_size: usize,
        /// How long the job waited for a worker.
        queue_wait: Duration,
    },
    /// A step of a free plan, already validated against the registry and the agent's snapshot.
    Step {
        /// Its position in the plan, from zero.
        index: usize,
        /// The step.
        step: PlanStep,
    },
    /// The intent a guided answer chose (numbered from 1, as the prompt lists them).
    Intent {
        /// The chosen option.
        intent: u32,
    },
    /// Complete words of a line.
    Words {
        /// The words, with their trailing space.
        text: String,
    },
    /// The job's answer is complete but its line was left unwritten, because other work was
    /// waiting ([`BatchSink::skip_line`](crate::backend::BatchSink::skip_line)); a `Finished`
    /// follows at once.
    LineSkipped,
    /// The job produced nothing by its deadline. Sent on virtual clocks, where the game waits
    /// for the worker to decide a deadline; a real-time game reads its own clock instead.
    DeadlineCrossed,
    /// The job is over. Exactly one per job, and nothing follows it.
    Finished(JobOutcome),
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// The backend finished the answer.
    Completed {
        /// What it cost.
        usage: TokenUsage,
    },
    /// The game cancelled the job.
    Cancelled,
    /// The job failed.
    Failed(JobFailure),
}

/// Why a job failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobFailure {
    /// The queue was full.
    #[error("the queue was full")]
    Overflow,
    /// Its deadline passed while it waited, and other work was queued.
    #[error("its deadline passed while it waited")]
    Expired,
    /// The backend reported an error, or could not be built.
    #[error("backend: {0}")]
    Backend(BackendError),
    /// The model's output did not parse.
    #[error("unparsable output: {0}")]
    Parse(String),
    /// The model's output parsed but is not valid in the agent's situation.
    #[error("invalid output: {0}")]
    Invalid(String),
    /// The backend panicked.
    #[error("the backend panicked: {0}")]
    Panicked(String),
    /// The pool shut down first.
    #[error("the pool shut down")]
    Shutdown,
}

impl JobFailure {
    /// The fallback reason the game's answer carries.
    pub fn fallback_reason(&self) -> FallbackReason {
        match self {
            JobFailure::Overflow => FallbackReason::Overflow,
            JobFailure::Expired => FallbackReason::Deadline,
            JobFailure::Backend(BackendError::NoModel(_)) => FallbackReason::NoModel,
            JobFailure::Parse(_) | JobFailure::Invalid(_) => FallbackReason::Parse,
            JobFailure::Backend(_) | JobFailure::Panicked(_) | JobFailure::Shutdown => {
                FallbackReason::BackendError
            }
        }
    }
}

/// A job's state, shared by the game's thread and the worker that runs it.
const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const CANCELLED: u8 = 2;
const SHED: u8 = 3;

#[derive(Debug)]
pub(crate) struct PendingJob {
    pub(crate) id: JobId,
    pub(crate) tick: u64,
    pub(crate) submitted: Timestamp,
    pub(crate) request: JobRequest,
    pub(crate) state: Arc<AtomicU8>,
}

/// What the workers share with the pool.
pub(crate) struct Shared {
    pub(crate) factory: RwLock<(u64, Arc<dyn BackendFactory>)>,
    pub(crate) context: RwLock<Arc<PromptContext>>,
    /// Jobs dispatched but not yet taken by a worker.
    pub(crate) waiting: AtomicUsize,
    pub(crate) stopping: AtomicBool,
    pub(crate) clock: Clock,
    pub(crate) events: Sender<WorkerEvent>,
}

impl Shared {
    /// Whether jobs are waiting behind the batches already taken.
    pub(crate) fn congested(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Moves a dispatched job out of `QUEUED` into `to`, if it is still there, and out of the
    /// queue's count with it. Whoever moves it (the worker that claims it, the game that
    /// cancels or sheds it) counts it out, so each job leaves the count exactly once, and a job
    /// shed or cancelled while it waits frees its place at once rather than when a worker gets
    /// to its batch.
    pub(crate) fn leave_queue(&self, state: &AtomicU8, to: u8) -> Result<(), u8> {
        state.compare_exchange(QUEUED, to, Ordering::AcqRel, Ordering::Acquire)?;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        Ok(())
    }
}

pub(crate) struct WorkItem {
    pub(crate) batch_id: u64,
    pub(crate) tick: u64,
    pub(crate) kind: RequestKind,
    pub(crate) jobs: Vec<PendingJob>,
}

/// The pool. See the [module docs](self).
pub struct WorkerPool {
    batching: BatchingConfig,
    shared: Arc<Shared>,
    work: Option<Sender<WorkItem>>,
    work_rx: Receiver<WorkItem>,
    events: Receiver<WorkerEvent>,
    pending: Vec<PendingJob>,
    /// Dispatched jobs that have not finished, as the game's thread last heard.
    in_flight: BTreeMap<JobId, (Deadline, Arc<AtomicU8>)>,
    next_job: u64,
    next_batch: AtomicU64,
    workers: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `batching.workers` workers, each building its backend from `factory` on its own
    /// thread.
    pub fn new(
        batching: BatchingConfig,
        factory: Arc<dyn BackendFactory>,
        context: Arc<PromptContext>,
        clock: Clock,
    ) -> Self {
        let (events_tx, events) = crossbeam_channel::unbounded();
        let (work, work_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            factory: RwLock::new((0, factory)),
            context: RwLock::new(context),
            waiting: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            clock,
            events: events_tx,
        });
        let mut pool = WorkerPool {
            batching,
            shared,
            work: Some(work),
            work_rx,
            events,
            pending: Vec::new(),
            in_flight: BTreeMap::new(),
            next_job: 0,
            next_batch: AtomicU64::new(0),
            workers: Vec::new(),
        };
        for _ in 0..batching.workers.max(1) {
            pool.spawn_worker();
        }
        pool
    }

    fn spawn_worker(&mut self) {
        let shared = Arc::clone(&self.shared);
        let work = self.work_rx.clone();
        let index = self.workers.len();
        let handle = std::thread::Builder::new()
            .name(format!("hivemind-worker-{index}"))
            .spawn(move || run::worker_loop(&shared, &work));
        // Without a thread the jobs wait for a replacement spawned on the next `try_recv`.
        if let Ok(h) = handle {
            self.workers.push(h);
        }
    }

    /// The pool's clock.
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// The backend the workers use (or will use from their next batch).
    pub fn backend_id(&self) -> BackendId {
        self.shared
            .factory
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .id()
    }

    /// Swaps the backend: each worker builds the new one before its next batch. Batches already
    /// running finish on the old one.
    pub fn set_backend(&self, factory: Arc<dyn BackendFactory>) {
        if let Ok(mut f) = self.shared.factory.write() {
            *f = (f.0 + 1, factory);
        }
    }

    /// Swaps the prompt context (after the game reloaded registry, personas or config).
    pub fn set_context(&self, context: Arc<PromptContext>) {
        if let Ok(mut c) = self.shared.context.write() {
            *c = context;
        }
    }

    /// The batching configuration.
    pub fn batching(&self) -> &BatchingConfig {
        &self.batching
    }

    /// Jobs that have not started: submitted, or dispatched and waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.pending.len() + self.shared.waiting.load(Ordering::Acquire)
    }

    /// Jobs dispatched and not yet finished, as of the last [`WorkerPool::try_recv`].
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Submits one agent's request in `tick`. Never blocks; a full queue is answered through
    /// an event (see the [module docs](self#overflow)).
    pub fn submit(&mut self, request: JobRequest, tick: u64) -> JobId {
        let id = JobId(self.next_job);
        self.next_job += 1;
        let now = self.shared.clock.now();
        if self.queue_depth() >= self.batching.queue_capacity {
            let shed = match self.batching.overflow {
                OverflowPolicy::RejectNew => false,
                OverflowPolicy::ShedLatestDeadline => self.shed_later_than(request.deadline),
            };
            if !shed {
                self.emit(
                    id,
                    request.agent,
                    now,
                    WorkerEventKind::Finished(JobOutcome::Failed(JobFailure::Overflow)),
                );
                return id;
            }
        }
        self.pending.push(PendingJob {
            id,
            tick,
            submitted: now,
            request,
            state: Arc::new(AtomicU8::new(QUEUED)),
        });
        id
    }

    /// Ends the waiting job with the latest deadline, if it is later than `deadline`.
    fn shed_later_than(&mut self, deadline: Deadline) -> bool {
        let pending = self
            .pending
            .iter()
            .enumerate()
            .map(|(i, j)| (j.request.deadline, j.id, Some(i)))
            .max();
        let queued = self
            .in_flight
            .iter()
            .filter(|(_, (_, state))| state.load(Ordering::Acquire) == QUEUED)
            .map(|(id, (d, _))| (*d, *id, None))
            .max();
        let Some((latest, id, index)) = pending.max(queued) else {
            return false;
        };
        if latest <= deadline {
            return false;
        }
        let now = self.shared.clock.now();
        match index {
            Some(i) => {
                let job = self.pending.remove(i);
                self.emit(
                    job.id,
                    job.request.agent,
                    now,
                    WorkerEventKind::Finished(JobOutcome::Failed(JobFailure::Overflow)),
                );
                true
            }
            // A worker that takes it now sees SHED and ends it with `Overflow`.
            None => self
                .in_flight
                .get(&id)
                .is_some_and(|(_, state)| self.shared.leave_queue(state, SHED).is_ok()),
        }
    }

    /// Cancels a job. It gets `Finished(Cancelled)` unless it finishes otherwise first; a job
    /// that already finished is left alone.
    pub fn cancel(&mut self, job: JobId) {
        if let Some(i) = self.pending.iter().position(|p| p.id == job) {
            let p = self.pending.remove(i);
            let now = self.shared.clock.now();
            self.emit(
                p.id,
                p.request.agent,
                now,
                WorkerEventKind::Finished(JobOutcome::Cancelled),
            );
            return;
        }
        if let Some((_, state)) = self.in_flight.get(&job) {
            let _ = self.shared.leave_queue(state, CANCELLED);
            let _ = state.compare_exchange(RUNNING, CANCELLED, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Groups the jobs submitted since the last dispatch into batches and hands them to the
    /// workers. See the [module docs](self#batching).
    pub fn dispatch(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut jobs = std::mem::take(&mut self.pending);
        jobs.sort_by_key(|j| {
            (
                j.tick,
                j.request.task.kind(),
                j.request.task.format() as u8,
                j.request.agent,
                j.id,
            )
        });
        let max = self.batching.max_batch.max(1);
        let mut batch: Vec<PendingJob> = Vec::with_capacity(max);
        for job in jobs {
            let key = |j: &PendingJob| (j.tick, j.request.task.kind(), j.request.task.format());
            if batch.len() == max || batch.first().is_some_and(|first| key(first) != key(&job)) {
                self.send(std::mem::take(&mut batch));
            }
            batch.push(job);
        }
        self.send(batch);
    }

    fn send(&mut self, jobs: Vec<PendingJob>) {
        let Some(first) = jobs.first() else { return };
        let item = WorkItem {
            batch_id: self.next_batch.fetch_add(1, Ordering::Relaxed),
            tick: first.tick,
            kind: first.request.task.kind(),
            jobs,
        };
        for j in &item.jobs {
            self.in_flight
                .insert(j.id, (j.request.deadline, Arc::clone(&j.state)));
        }
        self.shared
            .waiting
            .fetch_add(item.jobs.len(), Ordering::AcqRel);
        if let Some(work) = &self.work {
            // The receiver lives in `self`, so sending cannot fail while the pool exists.
            let _ = work.send(item);
        }
    }

    /// The next event, if one is ready. Never blocks.
    pub fn try_recv(&mut self) -> Option<WorkerEvent> {
        self.supervise();
        let event = self.events.try_recv().ok()?;
        self.observe(&event);
        Some(event)
    }

    /// The next event, waiting at most `timeout` for one. A game on a virtual clock uses this
    /// at a deadline to learn whether the job made it; a real-time game never waits.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<WorkerEvent> {
        self.supervise();
        let event = match self.events.recv_timeout(timeout) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
        };
        self.observe(&event);
        Some(event)
    }

    fn observe(&mut self, event: &WorkerEvent) {
        if let WorkerEventKind::Finished(_) = event.kind {
            self.in_flight.remove(&event.job);
        }
    }

    /// Replaces worker threads that died.
    fn supervise(&mut self) {
        if self.shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let before = self.workers.len();
        self.workers.retain(|h| !h.is_finished());
        for _ in self.workers.len()..before {
            self.spawn_worker();
        }
        if self.workers.is_empty() {
            self.spawn_worker();
        }
    }

    fn emit(&self, job: JobId, agent: AgentId, at: Timestamp, kind: WorkerEventKind) {
        let _ = self.shared.events.send(WorkerEvent {
            job,
            agent,
            at,
            kind,
        });
    }

    /// Stops the workers: running streams are cut at their next decode step and every job that
    /// has not finished ends with [`JobFailure::Shutdown`]. Blocks until the threads exit.
    pub fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        let now = self.shared.clock.now();
        for p in std::mem::take(&mut self.pending) {
            self.emit(
                p.id,
                p.request.agent,
                now,
                WorkerEventKind::Finished(JobOutcome::Failed(JobFailure::Shutdown)),
            );
        }
        self.work = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        // Batches no worker took.
        while let Ok(item) = self.work_rx.try_recv() {
            for j in item.jobs {
                let _ = self.shared.leave_queue(&j.state, RUNNING);
                self.emit(
                    j.id,
                    j.request.agent,
                    now,
                    WorkerEventKind::Finished(JobOutcome::Failed(JobFailure::Shutdown)),
                );
            }
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
pub(crate) mod tests;
