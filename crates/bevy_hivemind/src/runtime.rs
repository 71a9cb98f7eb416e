//! The plugin's engine room: requests in flight, their prepared fallbacks, and the worker pool.
//!
//! [`Hivemind`] is a resource. The plugin's systems feed it the game's requests and the
//! workers' events, and it answers with [`Outgoing`] messages that the systems write. Everything
//! here is plain Rust over `hivemind_core`, so the delivery rules (one completion per request, a
//! fallback at the deadline, a late answer only for the cache) live in one place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy::tasks::{AsyncComputeTaskPool, Task, TaskPool, block_on, futures::check_ready};
use hivemind_core::action::ActionRegistry;
use hivemind_core::backend::{BackendFactory, JobId};
use hivemind_core::cache::{AnswerCache, CacheKey, CachedAnswer, CachedHit};
use hivemind_core::clock::{Clock, Deadline, Timestamp};
use hivemind_core::config::{HivemindConfig, PromptLayout};
use hivemind_core::metrics::Metrics;
use hivemind_core::plan::{BackendId, FallbackReason, PlanSource, PlanStep, RequestKind};
use hivemind_core::prompt::{AgentTask, ChatTemplate, PromptAsset};
use hivemind_core::snapshot::WorldSnapshot;
use hivemind_core::templates::{Slots, TemplateBook};
use hivemind_core::worker::{
    JobOutcome, JobRequest, PromptContext, WorkerEvent, WorkerEventKind, WorkerPool,
};

use crate::banter::BanterLines;
use crate::hooks::{FallbackPlanner, LineFilter, LineVerdict};
use crate::messages::{LineKind, RequestId, RequestSlot};

/// How long a lockstep frame waits for a silent worker before it gives up on it for the frame.
const LOCKSTEP_PATIENCE: Duration = Duration::from_secs(120);

/// A message for the game, written by the plugin's systems.
#[derive(Clone, Debug, PartialEq)]
pub enum Outgoing {
    /// A step of a plan.
    Step {
        /// The agent.
        agent: Entity,
        /// The request.
        request: RequestId,
        /// Its index.
        index: usize,
        /// The step.
        step: PlanStep,
    },
    /// Words of a line.
    Words {
        /// The agent.
        agent: Entity,
        /// The request.
        request: RequestId,
        /// The words.
        text: String,
    },
    /// A plan is complete.
    Plan {
        /// The agent.
        agent: Entity,
        /// The request.
        request: RequestId,
        /// Every step.
        steps: Vec<PlanStep>,
        /// Its line, if any.
        say: Option<String>,
        /// Where it came from.
        source: PlanSource,
        /// Why it stands in, if it does.
        fallback: Option<FallbackReason>,
        /// To the first step.
        first_after: Duration,
        /// To the whole plan.
        latency: Duration,
    },
    /// A line is complete.
    Line {
        /// The agent.
        agent: Entity,
        /// The request.
        request: RequestId,
        /// Banter or dialogue.
        kind: RequestKind,
        /// The line.
        text: String,
        /// Where it came from.
        source: PlanSource,
        /// Why it stands in, if it does.
        fallback: Option<FallbackReason>,
        /// To the whole line.
        latency: Duration,
        /// What the player said, for the conversation memory.
        player_said: Option<String>,
    },
}

impl Outgoing {
    /// The agent the message names.
    pub fn agent(&self) -> Entity {
        match self {
            Outgoing::Step { agent, .. }
            | Outgoing::Words { agent, .. }
            | Outgoing::Plan { agent, .. }
            | Outgoing::Line { agent, .. } => *agent,
        }
    }
}

/// What the game asks for, as the plugin's systems read it.
#[derive(Clone, Debug)]
pub struct NewRequest {
    /// The agent's entity.
    pub entity: Entity,
    /// Its persona.
    pub persona: String,
    /// What it knows.
    pub snapshot: WorldSnapshot,
    /// Plan, or which line.
    pub ask: Ask,
}

/// The body of a [`NewRequest`].
#[derive(Clone, Debug)]
pub enum Ask {
    /// A plan.
    Plan,
    /// A line.
    Line {
        /// Banter or a reply.
        kind: LineKind,
        /// The template situation.
        situation: String,
        /// The template's slot values.
        slots: Vec<(String, String)>,
        /// The conversation so far, for a reply.
        history: Vec<(String, String)>,
    },
}

/// A fallback answer: prepared on the task pool when the request is queued.
#[derive(Clone, Debug)]
enum Answer {
    Plan(Vec<PlanStep>),
    Line(String),
}

enum Prepared {
    Pending(Task<Answer>),
    Ready(Answer),
}

impl Prepared {
    /// The answer; waits for the task only if it has not finished, which a planner that takes
    /// microseconds practically never makes happen.
    fn take(&mut self) -> Answer {
        match self {
            Prepared::Ready(a) => a.clone(),
            Prepared::Pending(task) => {
                let answer = check_ready(task).unwrap_or_else(|| block_on(&mut *task));
                *self = Prepared::Ready(answer.clone());
                answer
            }
        }
    }
}

/// What the model has produced for a request so far.
#[derive(Default)]
struct Progress {
    backend: Option<BackendId>,
    steps: Vec<PlanStep>,
    text: String,
    /// Steps (or bytes of text) already given to the game.
    delivered: usize,
    first_at: Option<Timestamp>,
    /// The line filter ended the line: later words are dropped.
    closed: bool,
    /// The model's line was rejected before any of it was said.
    rejected: bool,
    finished: bool,
}

struct Request {
    /// `None` for a line the worker writes in idle time for the banter pool.
    entity: Option<Entity>,
    kind: RequestKind,
    persona: String,
    snapshot: Arc<WorldSnapshot>,
    situation: String,
    player_said: Option<String>,
    submitted: Timestamp,
    deadline: Deadline,
    job: Option<JobId>,
    fallback: Prepared,
    /// The game has its completion message; anything more from the model only fills caches.
    answered: bool,
    deferred: bool,
    cache_key: Option<CacheKey>,
    progress: Progress,
}

impl Request {
    fn slot(&self) -> Option<RequestSlot> {
        RequestSlot::of(self.kind)
    }
}

/// Why the plugin answers everything from fallbacks, if it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FallbackOnly {
    /// `hm force-fallback on`, or [`Hivemind::set_force_fallback`].
    Forced,
    /// The backend could not load its model.
    NoModel(String),
}

/// The state of hivemind in a running game: a resource.
///
/// Systems and the console use its methods; games rarely need it except to switch backends
/// ([`Hivemind::set_backend`]) or read its status.
#[derive(Resource)]
pub struct Hivemind {
    pool: WorkerPool,
    clock: Clock,
    cache: AnswerCache,
    banter: BanterLines,
    registry: Arc<ActionRegistry>,
    templates: Arc<TemplateBook>,
    prompt: PromptAsset,
    chat: ChatTemplate,
    planner: Arc<dyn FallbackPlanner>,
    filter: Arc<dyn LineFilter>,
    backends: BTreeMap<BackendId, Arc<dyn BackendFactory>>,
    config: HivemindConfig,
    requests: BTreeMap<RequestId, Request>,
    by_job: HashMap<JobId, RequestId>,
    by_agent: HashMap<(Entity, RequestSlot), RequestId>,
    deadlines: BTreeSet<(Deadline, RequestId)>,
    /// Lockstep: for each job still running, the latest stamp heard from it.
    known: HashMap<JobId, Timestamp>,
    /// Lockstep: events heard but not yet due, by (stamp, job, arrival).
    held: BTreeMap<(Timestamp, JobId, u64), WorkerEvent>,
    arrivals: u64,
    next_request: u64,
    tick: u64,
    last_batch: Option<u64>,
    drained_all: bool,
    streaming: bool,
    force_fallback: bool,
    no_model: Option<String>,
    idle_job: Option<RequestId>,
    pub(crate) outbox: Vec<Outgoing>,
}

/// Everything [`Hivemind::new`] needs.
pub struct HivemindParts {
    /// The configuration.
    pub config: HivemindConfig,
    /// The verbs plans may use.
    pub registry: ActionRegistry,
    /// Template lines.
    pub templates: TemplateBook,
    /// Prompt rules and personas.
    pub prompt: PromptAsset,
    /// The model's chat format.
    pub chat: ChatTemplate,
    /// Fallback plans.
    pub planner: Arc<dyn FallbackPlanner>,
    /// The line filter.
    pub filter: Arc<dyn LineFilter>,
    /// Backends by id, and the one to start with.
    pub backends: BTreeMap<BackendId, Arc<dyn BackendFactory>>,
    /// The backend to start with.
    pub backend: Arc<dyn BackendFactory>,
    /// The clock.
    pub clock: Clock,
}

impl Hivemind {
    /// Starts the worker pool.
    pub fn new(parts: HivemindParts) -> Self {
        let registry = Arc::new(parts.registry);
        let context = Arc::new(PromptContext::new(
            &parts.chat,
            &parts.prompt.rules,
            Arc::clone(&registry),
            &parts.prompt.personas,
            &parts.config,
        ));
        let pool = WorkerPool::new(
            parts.config.batching,
            parts.backend,
            context,
            parts.clock.clone(),
        );
        Hivemind {
            pool,
            clock: parts.clock,
            cache: AnswerCache::new(&parts.config.cache),
            banter: BanterLines::default(),
            registry,
            templates: Arc::new(parts.templates),
            prompt: parts.prompt,
            chat: parts.chat,
            planner: parts.planner,
            filter: parts.filter,
            backends: parts.backends,
            config: parts.config,
            requests: BTreeMap::new(),
            by_job: HashMap::new(),
            by_agent: HashMap::new(),
            deadlines: BTreeSet::new(),
            known: HashMap::new(),
            held: BTreeMap::new(),
            arrivals: 0,
            next_request: 0,
            tick: 0,
            last_batch: None,
            drained_all: true,
            streaming: true,
            force_fallback: false,
            no_model: None,
            idle_job: None,
            outbox: Vec::new(),
        }
    }

    // ----- status and switches ------------------------------------------------------------------

    /// The clock deadlines and stamps are measured on.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The configuration in effect.
    pub fn config(&self) -> &HivemindConfig {
        &self.config
    }

    /// The backend the workers use.
    pub fn backend(&self) -> BackendId {
        self.pool.backend_id()
    }

    /// The backends the game registered.
    pub fn backends(&self) -> impl Iterator<Item = BackendId> + '_ {
        self.backends.keys().copied()
    }

    /// Switches the workers to a registered backend; batches already running finish on the old
    /// one.
    pub fn set_backend(&mut self, id: BackendId) -> Result<(), UnknownBackend> {
        let factory = self.backends.get(&id).ok_or(UnknownBackend(id))?;
        self.pool.set_backend(Arc::clone(factory));
        self.no_model = None;
        Ok(())
    }

    /// Registers (or replaces) a backend without switching to it.
    pub fn insert_backend(&mut self, factory: Arc<dyn BackendFactory>) -> &mut Self {
        self.backends.insert(factory.id(), factory);
        self
    }

    /// The prompt layout in effect.
    pub fn layout(&self) -> PromptLayout {
        self.config.model.layout
    }

    /// Applies a new configuration: deadlines, budgets and sampling at once, the prompt layout
    /// and sizes from the next batch, the cache's bucketing by starting a fresh cache. Pool
    /// size, queue and clock stay as the pool was made.
    pub fn apply_config(&mut self, config: HivemindConfig) {
        if config.cache != self.config.cache {
            self.cache = AnswerCache::new(&config.cache);
        }
        let prompt_changed = config.model != self.config.model
            || config.budgets != self.config.budgets
            || config.sampling != self.config.sampling;
        if config.batching != self.config.batching || config.clock != self.config.clock {
            warn!("hivemind: batching and clock settings take effect when the app restarts");
        }
        self.config = config;
        if prompt_changed {
            self.rebuild_context();
        }
    }

    /// Replaces the prompt's rules and personas (after the prompt asset changed). Only the
    /// changed personas' prefix levels are decoded again.
    pub fn set_prompt(&mut self, prompt: PromptAsset) {
        self.prompt = prompt;
        self.rebuild_context();
    }

    /// The prompt's rules and personas.
    pub fn prompt(&self) -> &PromptAsset {
        &self.prompt
    }

    fn rebuild_context(&mut self) {
        self.pool.set_context(Arc::new(PromptContext::new(
            &self.chat,
            &self.prompt.rules,
            Arc::clone(&self.registry),
            &self.prompt.personas,
            &self.config,
        )));
    }

    /// Whether model answers stream step by step (or only arrive whole).
    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    /// Turns streaming on or off. Off, a model's answer is given to the game only once it is
    /// complete, so it must be complete by the deadline.
    pub fn set_streaming(&mut self, on: bool) {
        self.streaming = on;
    }

    /// Whether every request is answered by its fallback at once.
    pub fn is_forcing_fallback(&self) -> bool {
        self.force_fallback
    }

    /// Answers every new request from its fallback (reason `Forced`), or stops doing so.
    pub fn set_force_fallback(&mut self, on: bool) {
        self.force_fallback = on;
    }

    /// Why every answer comes from fallbacks, if it does.
    pub fn fallback_only(&self) -> Option<FallbackOnly> {
        if self.force_fallback {
            Some(FallbackOnly::Forced)
        } else {
            self.no_model.clone().map(FallbackOnly::NoModel)
        }
    }

    /// Requests queued and not yet taken by a worker.
    pub fn queue_depth(&self) -> usize {
        self.pool.queue_depth()
    }

    /// The kind of request `id`, if it still waits for its answer.
    pub fn waiting_kind(&self, id: RequestId) -> Option<RequestKind> {
        self.requests
            .get(&id)
            .filter(|r| !r.answered && r.entity.is_some())
            .map(|r| r.kind)
    }

    /// Requests waiting for their answer.
    pub fn in_flight(&self) -> usize {
        self.requests.values().filter(|r| !r.answered).count()
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.pool.batching().workers.max(1)
    }

    /// The answer cache.
    pub fn cache(&self) -> &AnswerCache {
        &self.cache
    }

    /// Banter lines the model wrote in idle time.
    pub fn banter(&self) -> &BanterLines {
        &self.banter
    }

    /// Forgets every cached plan and banter line.
    pub fn clear_cache(&mut self) {
        self.cache.clear();
        self.banter.clear();
    }

    /// The verbs plans may use.
    pub fn registry(&self) -> &ActionRegistry {
        &self.registry
    }

    /// How many frames the plugin has run.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    // ----- gather -------------------------------------------------------------------------------

    /// Starts a frame: moves a lockstep clock on by `dt` and follows a real-time clock's pause.
    pub(crate) fn begin_frame(&mut self, dt: Duration, paused: bool) {
        self.tick += 1;
        match self.clock.kind() {
            hivemind_core::clock::ClockKind::RealTime => self.clock.set_paused(paused),
            hivemind_core::clock::ClockKind::Lockstep(_) => self.clock.advance(dt),
            hivemind_core::clock::ClockKind::Manual(_) => {}
        }
    }

    /// Takes one request: answers it at once from the cache, the banter pool or a forced
    /// fallback, or queues it and prepares its fallback off the main thread.
    pub(crate) fn request(&mut self, new: NewRequest, metrics: &mut Metrics) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let now = self.clock.now();
        let kind = match &new.ask {
            Ask::Plan => RequestKind::Plan,
            Ask::Line {
                kind: LineKind::Banter,
                ..
            } => RequestKind::Banter,
            Ask::Line { .. } => RequestKind::Dialogue,
        };
        if let Some(slot) = RequestSlot::of(kind) {
            self.cancel_slot(new.entity, slot);
        }
        let deadline = Deadline::after(now, self.config.deadlines.for_kind(kind));
        let seed = self.config.sampling.seed ^ id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let snapshot = Arc::new(new.snapshot);
        let (situation, slots, history, player_said) = match new.ask {
            Ask::Plan => (String::new(), Vec::new(), Vec::new(), None),
            Ask::Line {
                kind,
                situation,
                slots,
                history,
            } => {
                let said = match kind {
                    LineKind::Dialogue { player_said } => Some(player_said),
                    LineKind::Banter => None,
                };
                (situation, slots, history, said)
            }
        };

        // Banter never waits for a model.
        if kind == RequestKind::Banter {
            let forced = self.force_fallback.then_some(FallbackReason::Forced);
            let (text, source) = match self
                .banter
                .pick(&new.persona, &situation, seed, now, self.cache.ttl())
                .filter(|_| forced.is_none())
            {
                Some(line) => (line, PlanSource::Cache),
                None => (
                    template_line(&self.templates, &new.persona, &situation, &slots, seed),
                    PlanSource::Template,
                ),
            };
            self.banter.remember(&new.persona, &situation, &snapshot);
            let text = filtered(&*self.filter, text);
            self.finish_line(
                new.entity,
                id,
                kind,
                text,
                source,
                forced,
                Duration::ZERO,
                None,
                metrics,
            );
            return id;
        }

        if kind == RequestKind::Plan && !self.force_fallback {
            let key = self.cache.key(&new.persona, kind, &snapshot);
            let hit = self.cache.get(&key, &snapshot, &self.registry, now);
            metrics.record_cache(hit.is_some());
            if let Some(CachedHit::Steps(steps)) = hit {
                self.deliver_plan(
                    new.entity,
                    id,
                    steps,
                    PlanSource::Cache,
                    None,
                    Duration::ZERO,
                );
                metrics.record_answer(kind, PlanSource::Cache, None);
                metrics.record_full(kind, PlanSource::Cache, Duration::ZERO);
                return id;
            }
        }

        let fallback =
            self.prepare_fallback(kind, &new.persona, &snapshot, &situation, &slots, seed);
        let mut request = Request {
            entity: Some(new.entity),
            kind,
            persona: new.persona.clone(),
            snapshot: Arc::clone(&snapshot),
            situation: situation.clone(),
            player_said: player_said.clone(),
            submitted: now,
            deadline,
            job: None,
            fallback,
            answered: false,
            deferred: false,
            cache_key: (kind == RequestKind::Plan)
                .then(|| self.cache.key(&new.persona, kind, &snapshot)),
            progress: Progress::default(),
        };
        if self.force_fallback {
            self.requests.insert(id, request);
            self.answer_with_fallback(id, FallbackReason::Forced, metrics);
            self.requests.remove(&id);
            return id;
        }
        let task = match kind {
            RequestKind::Plan => AgentTask::Plan,
            _ => AgentTask::Dialogue {
                history,
                player_said: player_said.unwrap_or_default(),
            },
        };
        let job = self.pool.submit(
            JobRequest {
                agent: snapshot.agent,
                persona: new.persona,
                task,
                snapshot: (*snapshot).clone(),
                deadline,
            },
            self.tick,
        );
        request.job = Some(job);
        self.track(job, now);
        self.by_job.insert(job, id);
        if let Some(slot) = request.slot() {
            self.by_agent.insert((new.entity, slot), id);
        }
        self.deadlines.insert((deadline, id));
        self.requests.insert(id, request);
        id
    }

    fn prepare_fallback(
        &self,
        kind: RequestKind,
        persona: &str,
        snapshot: &Arc<WorldSnapshot>,
        situation: &str,
        slots: &[(String, String)],
        seed: u64,
    ) -> Prepared {
        let pool = AsyncComputeTaskPool::get_or_init(TaskPool::default);
        let task = match kind {
            RequestKind::Plan => {
                let planner = Arc::clone(&self.planner);
                let snapshot = Arc::clone(snapshot);
                pool.spawn(async move { Answer::Plan(planner.plan(&snapshot)) })
            }
            RequestKind::Dialogue | RequestKind::Banter => {
                let templates = Arc::clone(&self.templates);
                let (persona, situation, slots) =
                    (persona.to_owned(), situation.to_owned(), slots.to_vec());
                pool.spawn(async move {
                    Answer::Line(template_line(
                        &templates, &persona, &situation, &slots, seed,
                    ))
                })
            }
        };
        Prepared::Pending(task)
    }

    /// Cancels an agent's request in `slot`, if it has one: no message follows.
    pub(crate) fn cancel_slot(&mut self, entity: Entity, slot: RequestSlot) {
        if let Some(id) = self.by_agent.remove(&(entity, slot)) {
            self.drop_request(id);
        }
    }

    /// Cancels everything an agent has in flight (it despawned).
    pub(crate) fn forget_agent(&mut self, entity: Entity) {
        for slot in [RequestSlot::Plan, RequestSlot::Dialogue] {
            self.cancel_slot(entity, slot);
        }
    }

    fn drop_request(&mut self, id: RequestId) {
        let Some(request) = self.requests.remove(&id) else {
            return;
        };
        self.deadlines.remove(&(request.deadline, id));
        if let (Some(entity), Some(slot)) = (request.entity, request.slot())
            && self.by_agent.get(&(entity, slot)) == Some(&id)
        {
            self.by_agent.remove(&(entity, slot));
        }
        if let Some(job) = request.job {
            self.pool.cancel(job);
            self.by_job.remove(&job);
            // Nothing of it will be delivered, so a lockstep frame need not wait for it.
            self.known.remove(&job);
        }
        if self.idle_job == Some(id) {
            self.idle_job = None;
        }
    }

    // ----- dispatch -----------------------------------------------------------------------------

    /// Hands the frame's jobs to the workers, and in idle time asks for banter lines.
    pub(crate) fn dispatch(&mut self) {
        if self.requests.is_empty() && self.idle_job.is_none() && !self.force_fallback {
            self.write_banter_in_idle_time();
        }
        self.pool.dispatch();
    }

    fn write_banter_in_idle_time(&mut self) {
        let now = self.clock.now();
        let Some((persona, situation, snapshot)) = self.banter.wanted(now, self.cache.ttl()) else {
            return;
        };
        let id = RequestId(self.next_request);
        self.next_request += 1;
        // Far off: idle work must never look late.
        let deadline = Deadline::after(now, Duration::from_secs(3600));
        let job = self.pool.submit(
            JobRequest {
                agent: snapshot.agent,
                persona: persona.clone(),
                task: AgentTask::Banter {
                    situation: situation.clone(),
                },
                snapshot: (*snapshot).clone(),
                deadline,
            },
            self.tick,
        );
        self.track(job, now);
        self.by_job.insert(job, id);
        self.idle_job = Some(id);
        self.requests.insert(
            id,
            Request {
                entity: None,
                kind: RequestKind::Banter,
                persona,
                snapshot,
                situation,
                player_said: None,
                submitted: now,
                deadline,
                job: Some(job),
                fallback: Prepared::Ready(Answer::Line(String::new())),
                answered: true,
                deferred: false,
                cache_key: None,
                progress: Progress::default(),
            },
        );
    }

    fn track(&mut self, job: JobId, submitted: Timestamp) {
        if self.clock.is_virtual() {
            self.known.insert(job, submitted);
        }
    }

    // ----- drain --------------------------------------------------------------------------------

    /// Reads worker events: on a real-time clock for at most `budget` of wall time, never
    /// waiting; on a lockstep clock, every event due by now, waiting for the workers where they
    /// have not reported that far.
    pub(crate) fn drain(&mut self, budget: Duration, metrics: &mut Metrics) {
        match self.clock.kind() {
            hivemind_core::clock::ClockKind::RealTime => self.drain_real_time(budget, metrics),
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
        let waits = matches!(
            self.clock.kind(),
            hivemind_core::clock::ClockKind::Lockstep(_)
        );
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
            WorkerEventKind::Words { text } => self.on_words(id, at, &text, metrics),
            WorkerEventKind::Intent { .. } | WorkerEventKind::DeadlineCrossed => {}
            WorkerEventKind::Finished(outcome) => {
                self.by_job.remove(&event.job);
                self.on_finished(id, at, outcome, metrics);
            }
        }
    }

    fn on_step(&mut self, id: RequestId, at: Timestamp, step: PlanStep, metrics: &mut Metrics) {
        let streaming = self.streaming;
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        r.progress.steps.push(step.clone());
        let in_time = r.progress.delivered > 0 || r.deadline.is_met_by(at);
        if r.answered || !streaming || !in_time {
            return;
        }
        let Some(entity) = r.entity else { return };
        let index = r.progress.delivered;
        r.progress.delivered += 1;
        if index == 0 {
            r.progress.first_at = Some(at);
            let backend = r.progress.backend.unwrap_or(BackendId::Scripted);
            metrics.record_first(r.kind, backend, at.since(r.submitted));
            let key = (r.deadline, id);
            self.deadlines.remove(&key);
        }
        self.outbox.push(Outgoing::Step {
            agent: entity,
            request: id,
            index,
            step,
        });
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
            Some(agent) if !r.answered => agent,
            // The banter pool takes the whole line later; check it as it comes.
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
            r.progress.first_at = Some(at);
            let backend = r.progress.backend.unwrap_or(BackendId::Scripted);
            metrics.record_first(r.kind, backend, at.since(r.submitted));
            let key = (r.deadline, id);
            self.deadlines.remove(&key);
        }
        r.progress.delivered = end;
        self.outbox.push(Outgoing::Words {
            agent,
            request: id,
            text,
        });
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
                if let (Some(key), Some(answer)) = (
                    r.cache_key.clone(),
                    CachedAnswer::from_steps(&r.progress.steps, &r.snapshot, &self.registry),
                ) {
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
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        let Some(entity) = r.entity else { return };
        r.answered = true;
        self.deadlines.remove(&(r.deadline, id));
        let first_at = *r.progress.first_at.get_or_insert(at);
        let latency = at.since(r.submitted);
        let first_after = first_at.since(r.submitted);
        if r.progress.delivered == 0 {
            metrics.record_first(r.kind, backend, latency);
        }
        match r.kind {
            RequestKind::Plan => {
                let mut steps = std::mem::take(&mut r.progress.steps);
                if reason.is_some() {
                    steps.truncate(r.progress.delivered);
                    let rest = planner.complete(&r.snapshot, &steps);
                    steps.extend(rest);
                }
                let repaired = reason.is_some();
                let source = PlanSource::Llm { backend, repaired };
                for (index, step) in steps.iter().enumerate().skip(r.progress.delivered) {
                    self.outbox.push(Outgoing::Step {
                        agent: entity,
                        request: id,
                        index,
                        step: step.clone(),
                    });
                }
                if repaired {
                    metrics.record_repair();
                }
                metrics.record_answer(RequestKind::Plan, source, reason);
                metrics.record_full(RequestKind::Plan, source, latency);
                self.outbox.push(Outgoing::Plan {
                    agent: entity,
                    request: id,
                    steps,
                    say: None,
                    source,
                    fallback: reason,
                    first_after,
                    latency,
                });
            }
            kind => {
                let text = if r.progress.closed {
                    r.progress.text[..r.progress.delivered.min(r.progress.text.len())].to_owned()
                } else {
                    filtered(&*self.filter, std::mem::take(&mut r.progress.text))
                };
                if text.len() > r.progress.delivered {
                    self.outbox.push(Outgoing::Words {
                        agent: entity,
                        request: id,
                        text: text[r.progress.delivered..].to_owned(),
                    });
                }
                let source = PlanSource::Llm {
                    backend,
                    repaired: false,
                };
                let said = r.player_said.clone();
                self.finish_line(
                    entity, id, kind, text, source, reason, latency, said, metrics,
                );
            }
        }
    }

    /// Answers a request with its prepared fallback.
    fn answer_with_fallback(
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
                self.deliver_plan(entity, id, steps, PlanSource::Goap, Some(reason), latency);
            }
            Answer::Line(text) => {
                let kind = r.kind;
                let said = r.player_said.clone();
                let text = filtered(&*filter, text);
                self.finish_line(
                    entity,
                    id,
                    kind,
                    text,
                    PlanSource::Template,
                    Some(reason),
                    latency,
                    said,
                    metrics,
                );
            }
        }
    }

    fn deliver_plan(
        &mut self,
        agent: Entity,
        request: RequestId,
        steps: Vec<PlanStep>,
        source: PlanSource,
        fallback: Option<FallbackReason>,
        latency: Duration,
    ) {
        for (index, step) in steps.iter().enumerate() {
            self.outbox.push(Outgoing::Step {
                agent,
                request,
                index,
                step: step.clone(),
            });
        }
        self.outbox.push(Outgoing::Plan {
            agent,
            request,
            steps,
            say: None,
            source,
            fallback,
            first_after: latency,
            latency,
        });
    }

    /// Sends a whole line (its words, then its completion) and records it. Used for lines that
    /// did not stream: banter, templates.
    #[expect(clippy::too_many_arguments, reason = "one completion's fields")]
    fn finish_line(
        &mut self,
        agent: Entity,
        request: RequestId,
        kind: RequestKind,
        text: String,
        source: PlanSource,
        fallback: Option<FallbackReason>,
        latency: Duration,
        player_said: Option<String>,
        metrics: &mut Metrics,
    ) {
        let streamed = matches!(source, PlanSource::Llm { .. });
        if !streamed && !text.is_empty() {
            self.outbox.push(Outgoing::Words {
                agent,
                request,
                text: text.clone(),
            });
        }
        metrics.record_answer(kind, source, fallback);
        metrics.record_full(kind, source, latency);
        self.outbox.push(Outgoing::Line {
            agent,
            request,
            kind,
            text,
            source,
            fallback,
            latency,
            player_said,
        });
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

    // ----- shutdown -----------------------------------------------------------------------------

    /// Stops the workers, cutting running decodes at their next step. Requests still waiting
    /// get nothing more.
    pub fn shutdown(&mut self) {
        self.pool.shutdown();
        while self.pool.try_recv().is_some() {}
        self.requests.clear();
        self.by_job.clear();
        self.by_agent.clear();
        self.deadlines.clear();
        self.known.clear();
        self.held.clear();
    }
}

/// Asked for a backend the game did not register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no backend `{0}` is registered")]
pub struct UnknownBackend(pub BackendId);

fn template_line(
    templates: &TemplateBook,
    persona: &str,
    situation: &str,
    slots: &[(String, String)],
    seed: u64,
) -> String {
    let slots: Slots = slots.iter().cloned().collect();
    templates
        .line(Some(persona), situation, &slots, seed)
        .or_else(|_| templates.line(Some(persona), "idle", &slots, seed))
        .unwrap_or_default()
}

/// `text` after the filter: cut, or empty if rejected.
fn filtered(filter: &dyn LineFilter, mut text: String) -> String {
    match filter.check(&text) {
        LineVerdict::Pass => text,
        LineVerdict::Cut(n) => {
            text.truncate(n.min(text.len()));
            text
        }
        LineVerdict::Reject => String::new(),
    }
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
