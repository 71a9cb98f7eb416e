//! The plugin's engine room: requests in flight, their prepared fallbacks, and the worker pool.
//!
//! [`Hivemind`] is a resource. The plugin's systems feed it the game's requests and the
//! workers' events, and it answers with [`Outgoing`] messages that the systems write. Everything
//! here is plain Rust over `hivemind_core`, so the delivery rules (one completion per request, a
//! fallback at the deadline, a late answer only for the cache) live in one place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bevy::prelude::*;
use bevy::tasks::{AsyncComputeTaskPool, Task, TaskPool, block_on, futures::check_ready};
use hivemind_core::action::ActionRegistry;
use hivemind_core::backend::{BackendFactory, BackendInfo, JobId, RecordingFactory, Transcript};
use hivemind_core::cache::{AnswerCache, CacheKey, CachedHit};
use hivemind_core::clock::{Clock, ClockKind, Deadline, Timestamp};
use hivemind_core::config::PlanFormat;
use hivemind_core::config::{HivemindConfig, PromptLayout};
use hivemind_core::metrics::Metrics;
use hivemind_core::plan::{BackendId, FallbackReason, PlanSource, PlanStep, RequestKind};
use hivemind_core::prompt::{AgentTask, ChatTemplate, IntentOption, PromptAsset};
use hivemind_core::snapshot::WorldSnapshot;
use hivemind_core::templates::{Slots, TemplateBook};
use hivemind_core::worker::{JobRequest, PromptContext, WorkerEvent, WorkerPool};

mod deliver;

use deliver::filtered;

use crate::banter::BanterLines;
use crate::hooks::{FallbackPlanner, LineFilter};
use crate::messages::{
    LineDelta, LineKind, LineReady, PlanReady, PlanStepReady, RequestId, RequestSlot,
};

/// How long a lockstep frame waits for a silent worker before it gives up on it for the frame.
const LOCKSTEP_PATIENCE: Duration = Duration::from_secs(120);

/// A message for the game, written by the plugin's systems.
#[derive(Clone, Debug, PartialEq)]
pub enum Outgoing {
    /// A step of a plan.
    Step(PlanStepReady),
    /// Words of a line.
    Words(LineDelta),
    /// A plan is complete.
    Plan(PlanReady),
    /// A line is complete.
    Line {
        /// The message.
        line: LineReady,
        /// What the player said, for the conversation memory.
        player_said: Option<String>,
    },
}

impl Outgoing {
    /// The agent the message names.
    pub fn agent(&self) -> Entity {
        match self {
            Outgoing::Step(m) => m.agent,
            Outgoing::Words(m) => m.agent,
            Outgoing::Plan(m) => m.agent,
            Outgoing::Line { line, .. } => line.agent,
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

impl Ask {
    /// The request kind it makes.
    pub fn kind(&self) -> RequestKind {
        match self {
            Ask::Plan => RequestKind::Plan,
            Ask::Line {
                kind: LineKind::Banter,
                ..
            } => RequestKind::Banter,
            Ask::Line { .. } => RequestKind::Dialogue,
        }
    }
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
    /// A step failed the planner's check and the planner's steps replaced it and the rest.
    repaired: bool,
    /// The intent a guided answer chose (its goal), once it has.
    intent: Option<String>,
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
    /// The intents a guided prompt offered, in the prompt's order; empty for a free plan.
    options: Vec<IntentOption>,
    progress: Progress,
}

impl Request {
    fn slot(&self) -> Option<RequestSlot> {
        RequestSlot::of(self.kind)
    }

    /// Its first step or words reach the game at `at`: records the time to first output.
    fn first_delivered(&mut self, at: Timestamp, metrics: &mut Metrics) {
        self.progress.first_at = Some(at);
        let backend = self.progress.backend.unwrap_or(BackendId::Scripted);
        metrics.record_first(self.kind, backend, at.since(self.submitted));
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
    context: Arc<PromptContext>,
    recording: Option<Arc<Mutex<Transcript>>>,
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
            Arc::clone(&context),
            parts.clock.clone(),
        );
        Hivemind {
            pool,
            context,
            recording: None,
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
        self.recording = None;
        Ok(())
    }

    /// What the backend in use says of itself: its model file, quantization and warm prompt
    /// levels.
    pub fn backend_info(&self) -> BackendInfo {
        self.backends
            .get(&self.backend())
            .map(|f| f.info())
            .unwrap_or_default()
    }

    /// Starts recording everything the backend in use writes, from its next batch on, and
    /// returns the transcript being written. A recording already running goes on.
    pub fn start_recording(&mut self) -> Arc<Mutex<Transcript>> {
        if let Some(transcript) = &self.recording {
            return Arc::clone(transcript);
        }
        let transcript = Arc::new(Mutex::new(Transcript::new()));
        if let Some(inner) = self.backends.get(&self.backend()) {
            let recording = RecordingFactory::new(Arc::clone(inner), Arc::clone(&transcript));
            self.pool.set_backend(recording);
        }
        self.recording = Some(Arc::clone(&transcript));
        transcript
    }

    /// Stops recording and returns what was recorded, if a recording was running.
    pub fn stop_recording(&mut self) -> Option<Arc<Mutex<Transcript>>> {
        let transcript = self.recording.take()?;
        if let Some(inner) = self.backends.get(&self.backend()) {
            self.pool.set_backend(Arc::clone(inner));
        }
        Some(transcript)
    }

    /// The transcript being recorded, if any.
    pub fn recording(&self) -> Option<&Arc<Mutex<Transcript>>> {
        self.recording.as_ref()
    }

    /// The prompts' prefix trees, as the workers use them now.
    pub fn prompt_context(&self) -> &PromptContext {
        &self.context
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
        self.context = Arc::new(PromptContext::new(
            &self.chat,
            &self.prompt.rules,
            Arc::clone(&self.registry),
            &self.prompt.personas,
            &self.config,
        ));
        self.pool.set_context(Arc::clone(&self.context));
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
            ClockKind::RealTime => self.clock.set_paused(paused),
            ClockKind::Lockstep(_) => self.clock.advance(dt),
            ClockKind::Manual(_) => {}
        }
    }

    /// Takes one request: answers it at once from the cache, the banter pool or a forced
    /// fallback, or queues it and prepares its fallback off the main thread.
    pub(crate) fn request(&mut self, new: NewRequest, metrics: &mut Metrics) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let now = self.clock.now();
        let kind = new.ask.kind();
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
            let line = LineReady {
                agent: new.entity,
                request: id,
                kind,
                text,
                source,
                fallback: forced,
                latency: Duration::ZERO,
            };
            self.finish_line(line, None, metrics);
            return id;
        }

        let cache_key =
            (kind == RequestKind::Plan).then(|| self.cache.key(&new.persona, kind, &snapshot));
        if let Some(key) = cache_key.as_ref().filter(|_| !self.force_fallback) {
            let hit = self.cache.get(key, &snapshot, &self.registry, now);
            metrics.record_cache(hit.is_some());
            let answer = match hit {
                Some(CachedHit::Steps(steps)) => Some((steps, None)),
                Some(CachedHit::Intent { intent, say }) => {
                    Some((self.planner.expand(&snapshot, &intent), say))
                }
                _ => None,
            };
            if let Some((steps, say)) = answer.filter(|(steps, _)| !steps.is_empty()) {
                self.deliver_plan(PlanReady {
                    agent: new.entity,
                    request: id,
                    steps,
                    say: say.map(|line| filtered(&*self.filter, line)),
                    source: PlanSource::Cache,
                    fallback: None,
                    first_after: Duration::ZERO,
                    latency: Duration::ZERO,
                });
                metrics.record_answer(kind, PlanSource::Cache, None);
                metrics.record_full(kind, PlanSource::Cache, Duration::ZERO);
                return id;
            }
        }

        let fallback =
            self.prepare_fallback(kind, &new.persona, &snapshot, &situation, &slots, seed);
        let options = match kind {
            RequestKind::Plan if self.config.model.plan_format == PlanFormat::Guided => {
                self.planner.intents(&snapshot)
            }
            _ => Vec::new(),
        };
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
            cache_key,
            options: options.clone(),
            progress: Progress::default(),
        };
        if self.force_fallback {
            self.requests.insert(id, request);
            self.answer_with_fallback(id, FallbackReason::Forced, metrics);
            self.requests.remove(&id);
            return id;
        }
        let task = match kind {
            RequestKind::Plan if options.is_empty() => AgentTask::Plan,
            RequestKind::Plan => AgentTask::Guided { options },
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

    /// The request's fallback answer: computed on the task pool, or at once when it is about
    /// to be sent anyway (forced fallback).
    fn prepare_fallback(
        &self,
        kind: RequestKind,
        persona: &str,
        snapshot: &Arc<WorldSnapshot>,
        situation: &str,
        slots: &[(String, String)],
        seed: u64,
    ) -> Prepared {
        let planner = Arc::clone(&self.planner);
        let templates = Arc::clone(&self.templates);
        let snapshot = Arc::clone(snapshot);
        let (persona, situation, slots) =
            (persona.to_owned(), situation.to_owned(), slots.to_vec());
        let answer = move || match kind {
            RequestKind::Plan => Answer::Plan(planner.plan(&snapshot)),
            RequestKind::Dialogue | RequestKind::Banter => Answer::Line(template_line(
                &templates, &persona, &situation, &slots, seed,
            )),
        };
        if self.force_fallback {
            return Prepared::Ready(answer());
        }
        let pool = AsyncComputeTaskPool::get_or_init(TaskPool::default);
        Prepared::Pending(pool.spawn(async move { answer() }))
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
                options: Vec::new(),
                progress: Progress::default(),
            },
        );
    }

    fn track(&mut self, job: JobId, submitted: Timestamp) {
        if self.clock.is_virtual() {
            self.known.insert(job, submitted);
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
