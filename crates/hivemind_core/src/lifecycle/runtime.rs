//! [`Lifecycle`]: the requests in flight, their indexes, the worker pool, the caches, and the
//! first half of a request's life (queued, cancelled, dispatched).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::action::ActionRegistry;
use crate::backend::{BackendFactory, BackendInfo, JobId, RecordingFactory, Transcript};
use crate::banter::BanterLines;
use crate::cache::{AnswerCache, CachedHit};
use crate::clock::{Clock, ClockKind, Deadline, Timestamp};
use crate::config::{HivemindConfig, PlanFormat, PromptLayout};
use crate::hooks::{CopyCheck, FallbackPlanner, LineFilter};
use crate::metrics::Metrics;
use crate::plan::{BackendId, FallbackReason, PlanSource, RequestKind};
use crate::prompt::{AgentTask, ChatTemplate, PromptAsset};
use crate::templates::TemplateBook;
use crate::worker::{JobRequest, PromptContext, WorkerEvent, WorkerPool};

use super::request::{
    Answer, Batch, FallbackExecutor, FallbackWork, Gate, Phase, PlanState, Prepared, Request,
    filtered, shown_check, template_line,
};
use super::{
    AgentKey, Ask, DuplicateBackend, FallbackOnly, LineDone, LineKind, NewRequest, Outgoing,
    PlanDone, RequestId, RequestSlot, StepReady, UnknownBackend, WordsReady,
};

/// Banter lines asked of the model at once in idle time, in one batch.
pub const IDLE_LINES: usize = 4;

/// Templates tried for a banter line not said lately before one is said again.
const TEMPLATE_TRIES: u64 = 8;

/// Everything [`Lifecycle::new`] needs.
pub struct LifecycleParts {
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
    /// Fallback plans, plan checks and guided intents.
    pub planner: Arc<dyn FallbackPlanner>,
    /// The line filter.
    pub filter: Arc<dyn LineFilter>,
    /// Where fallbacks are prepared.
    pub executor: Arc<dyn FallbackExecutor>,
    /// The backends, each under its own id.
    pub backends: Vec<Arc<dyn BackendFactory>>,
    /// The one to start with; `None` starts with none: every answer is a fallback until
    /// [`Lifecycle::set_backend`].
    pub backend: Option<BackendId>,
    /// The clock.
    pub clock: Clock,
}

/// The state of hivemind in a running game, generic over the game's agent key `K`. See the
/// [module docs](super).
pub struct Lifecycle<K> {
    /// `None` until a backend is registered: every answer is then a fallback.
    pub(super) pool: Option<WorkerPool>,
    pub(super) context: Arc<PromptContext>,
    pub(super) recording: Option<Arc<Mutex<Transcript>>>,
    pub(super) clock: Clock,
    pub(super) cache: AnswerCache,
    pub(super) banter: BanterLines,
    pub(super) registry: Arc<ActionRegistry>,
    pub(super) templates: Arc<TemplateBook>,
    pub(super) prompt: PromptAsset,
    pub(super) chat: ChatTemplate,
    pub(super) planner: Arc<dyn FallbackPlanner>,
    pub(super) filter: Arc<dyn LineFilter>,
    /// The copy check over the prompt's fixed texts; rebuilt with the prompt.
    pub(super) copies: Arc<CopyCheck>,
    pub(super) executor: Arc<dyn FallbackExecutor>,
    pub(super) backends: BTreeMap<BackendId, Arc<dyn BackendFactory>>,
    pub(super) config: HivemindConfig,
    /// Boxed, so the map's nodes stay small: a frame's requests then never ask the allocator
    /// for the large blocks that make glibc consolidate its free lists mid-frame.
    pub(super) requests: BTreeMap<RequestId, Box<Request<K>>>,
    pub(super) by_job: HashMap<JobId, RequestId>,
    pub(super) by_agent: HashMap<(K, RequestSlot), RequestId>,
    pub(super) deadlines: BTreeSet<(Deadline, RequestId)>,
    /// Lockstep: for each job still running, the latest stamp heard from it.
    pub(super) known: HashMap<JobId, Timestamp>,
    /// Lockstep: events heard but not yet due, by (stamp, job, arrival).
    pub(super) held: BTreeMap<(Timestamp, JobId, u64), WorkerEvent>,
    pub(super) arrivals: u64,
    pub(super) next_request: u64,
    pub(super) tick: u64,
    /// The length of the last frame: how far ahead a deadline is "before the next frame".
    pub(super) frame: Duration,
    pub(super) last_batch: Option<u64>,
    pub(super) drained_all: bool,
    pub(super) streaming: bool,
    pub(super) force_fallback: bool,
    pub(super) no_model: Option<String>,
    /// Banter lines being written in idle time.
    pub(super) idle_jobs: Vec<RequestId>,
    /// Requests whose fallback goes to the executor at the next dispatch.
    pub(super) unsent: Vec<RequestId>,
    pub(super) outbox: Vec<Outgoing<K>>,
}

impl<K: AgentKey> Lifecycle<K> {
    /// Starts the worker pool on the chosen backend, if one is chosen.
    ///
    /// # Errors
    ///
    /// Two backends with one id, or a chosen backend that is not among them.
    pub fn new(parts: LifecycleParts) -> Result<Self, LifecycleError> {
        let mut backends = BTreeMap::new();
        for factory in &parts.backends {
            if backends.insert(factory.id(), Arc::clone(factory)).is_some() {
                return Err(DuplicateBackend(factory.id()).into());
            }
            factory.configure(&parts.config);
        }
        let chosen = match parts.backend {
            Some(id) => Some(
                backends
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| UnknownBackend(id.clone()))?,
            ),
            None => None,
        };
        let registry = Arc::new(parts.registry);
        let context = Arc::new(PromptContext::new(
            &parts.chat,
            &parts.prompt.rules,
            Arc::clone(&registry),
            &parts.prompt.personas,
            &parts.config,
        ));
        let pool = chosen.map(|factory| {
            WorkerPool::new(
                parts.config.batching,
                factory,
                Arc::clone(&context),
                parts.clock.clone(),
            )
        });
        Ok(Lifecycle {
            pool,
            context,
            recording: None,
            clock: parts.clock,
            cache: AnswerCache::new(&parts.config.cache),
            banter: BanterLines::default(),
            registry,
            templates: Arc::new(parts.templates),
            copies: Arc::new(CopyCheck::from_prompt(&parts.prompt)),
            prompt: parts.prompt,
            chat: parts.chat,
            planner: parts.planner,
            filter: parts.filter,
            executor: parts.executor,
            backends,
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
            frame: Duration::ZERO,
            last_batch: None,
            drained_all: true,
            streaming: true,
            force_fallback: false,
            no_model: None,
            idle_jobs: Vec::new(),
            unsent: Vec::new(),
            outbox: Vec::new(),
        })
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

    /// Whether `agent` has a plan on its way that answers what the player said.
    pub fn is_answering_player(&self, agent: K) -> bool {
        self.by_agent
            .get(&(agent, RequestSlot::Plan))
            .and_then(|id| self.requests.get(id))
            .is_some_and(|r| r.player_said.is_some() && !r.is_answered())
    }

    /// The backend the workers use; `None` when no backend is registered.
    pub fn backend(&self) -> Option<BackendId> {
        self.pool.as_ref().map(WorkerPool::backend_id)
    }

    /// The name of the backend in use, or `none`, for HUDs and logs.
    pub fn backend_name(&self) -> String {
        self.backend()
            .map_or_else(|| "none".to_owned(), |id| id.to_string())
    }

    /// The backends the game registered, by id.
    pub fn backends(&self) -> impl Iterator<Item = &BackendId> + '_ {
        self.backends.keys()
    }

    /// Switches the workers to a registered backend; batches already running finish on the old
    /// one.
    ///
    /// # Errors
    ///
    /// No backend is registered under `id`.
    pub fn set_backend(&mut self, id: &BackendId) -> Result<(), UnknownBackend> {
        let factory = self
            .backends
            .get(id)
            .cloned()
            .ok_or_else(|| UnknownBackend(id.clone()))?;
        self.use_factory(factory);
        self.no_model = None;
        self.recording = None;
        Ok(())
    }

    fn use_factory(&mut self, factory: Arc<dyn BackendFactory>) {
        match &self.pool {
            Some(pool) => pool.set_backend(factory),
            None => {
                self.pool = Some(WorkerPool::new(
                    self.config.batching,
                    factory,
                    Arc::clone(&self.context),
                    self.clock.clone(),
                ));
            }
        }
    }

    /// What the backend in use says of itself: its model file, quantization and warm prompt
    /// levels.
    pub fn backend_info(&self) -> BackendInfo {
        self.backend()
            .and_then(|id| self.backends.get(&id))
            .map(|f| f.info())
            .unwrap_or_default()
    }

    /// Registers a backend without switching to it.
    ///
    /// # Errors
    ///
    /// A backend with its id is registered already.
    pub fn insert_backend(
        &mut self,
        factory: Arc<dyn BackendFactory>,
    ) -> Result<(), DuplicateBackend> {
        let id = factory.id();
        if self.backends.contains_key(&id) {
            return Err(DuplicateBackend(id));
        }
        factory.configure(&self.config);
        self.backends.insert(id, factory);
        Ok(())
    }

    /// Registers a backend, replacing one with its id (a new transcript for `replay`, say). The
    /// workers use the new one from their next batch if the old one was in use.
    pub fn replace_backend(&mut self, factory: Arc<dyn BackendFactory>) {
        let id = factory.id();
        let in_use = self.backend().as_ref() == Some(&id);
        factory.configure(&self.config);
        self.backends.insert(id, Arc::clone(&factory));
        if in_use {
            // A recording wrapped the old one; it ends here.
            self.recording = None;
            self.use_factory(factory);
        }
    }

    /// Starts recording everything the backend in use writes, from its next batch on, and
    /// returns the transcript being written. A recording already running goes on.
    pub fn start_recording(&mut self) -> Arc<Mutex<Transcript>> {
        if let Some(transcript) = &self.recording {
            return Arc::clone(transcript);
        }
        let transcript = Arc::new(Mutex::new(Transcript::new()));
        if let (Some(pool), Some(inner)) = (
            &self.pool,
            self.backend().and_then(|id| self.backends.get(&id)),
        ) {
            let recording = RecordingFactory::new(Arc::clone(inner), Arc::clone(&transcript));
            pool.set_backend(recording);
        }
        self.recording = Some(Arc::clone(&transcript));
        transcript
    }

    /// Stops recording and returns what was recorded, if a recording was running.
    pub fn stop_recording(&mut self) -> Option<Arc<Mutex<Transcript>>> {
        let transcript = self.recording.take()?;
        if let (Some(pool), Some(inner)) = (
            &self.pool,
            self.backend().and_then(|id| self.backends.get(&id)),
        ) {
            pool.set_backend(Arc::clone(inner));
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

    /// The prompt layout in effect.
    pub fn layout(&self) -> PromptLayout {
        self.config.model.layout
    }

    /// Applies a new configuration: deadlines, budgets and sampling at once, the prompt layout
    /// and sizes from the next batch, the cache's bucketing by starting a fresh cache. Pool
    /// size, queue and clock stay as the pool was made.
    ///
    /// A config with a value out of its range ([`HivemindConfig::validate`]) is refused whole:
    /// the error names the field and the config in effect stays.
    pub fn apply_config(&mut self, config: HivemindConfig) -> Result<(), String> {
        config.validate()?;
        if config.cache != self.config.cache {
            self.cache = AnswerCache::new(&config.cache);
        }
        let prompt_changed = config.model != self.config.model
            || config.budgets != self.config.budgets
            || config.sampling != self.config.sampling;
        if config.batching != self.config.batching || config.clock != self.config.clock {
            tracing::warn!(
                "hivemind: batching and clock settings take effect when the app restarts"
            );
        }
        self.config = config;
        for factory in self.backends.values() {
            factory.configure(&self.config);
        }
        if prompt_changed {
            self.rebuild_context();
        }
        Ok(())
    }

    /// Replaces the prompt's rules and personas. Only the changed personas' prefix levels are
    /// decoded again.
    pub fn set_prompt(&mut self, prompt: PromptAsset) {
        self.copies = Arc::new(CopyCheck::from_prompt(&prompt));
        self.prompt = prompt;
        self.rebuild_context();
    }

    /// The prompt's rules and personas.
    pub fn prompt(&self) -> &PromptAsset {
        &self.prompt
    }

    /// Replaces the verbs plans may use (after `actions.ron` changed): prompts and grammars
    /// from the next batch.
    pub fn set_registry(&mut self, registry: ActionRegistry) {
        self.registry = Arc::new(registry);
        self.rebuild_context();
    }

    /// Replaces the template lines (after a templates file changed).
    pub fn set_templates(&mut self, templates: TemplateBook) {
        self.templates = Arc::new(templates);
    }

    /// The template lines.
    pub fn templates(&self) -> &TemplateBook {
        &self.templates
    }

    fn rebuild_context(&mut self) {
        self.context = Arc::new(PromptContext::new(
            &self.chat,
            &self.prompt.rules,
            Arc::clone(&self.registry),
            &self.prompt.personas,
            &self.config,
        ));
        if let Some(pool) = &self.pool {
            pool.set_context(Arc::clone(&self.context));
        }
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
        } else if self.pool.is_none() {
            Some(FallbackOnly::NoBackend)
        } else {
            self.no_model.clone().map(FallbackOnly::NoModel)
        }
    }

    /// Requests queued and not yet taken by a worker.
    pub fn queue_depth(&self) -> usize {
        self.pool.as_ref().map_or(0, WorkerPool::queue_depth)
    }

    /// The kind of request `id`, if it still waits for its answer.
    pub fn waiting_kind(&self, id: RequestId) -> Option<RequestKind> {
        self.requests
            .get(&id)
            .filter(|r| !r.is_answered() && r.agent.is_some())
            .map(|r| r.kind)
    }

    /// The phase of request `id`, while it is in flight.
    pub fn phase(&self, id: RequestId) -> Option<Phase> {
        self.requests.get(&id).map(|r| r.phase)
    }

    /// The worker job of request `id`, while the model is writing it.
    pub fn job(&self, id: RequestId) -> Option<JobId> {
        self.requests.get(&id).and_then(|r| r.job)
    }

    /// Requests waiting for their answer.
    pub fn in_flight(&self) -> usize {
        self.requests.values().filter(|r| !r.is_answered()).count()
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.pool
            .as_ref()
            .map_or(self.config.batching.workers, |pool| pool.batching().workers)
            .max(1)
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

    /// How many frames have begun.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Takes the messages for the game produced since the last call, in order.
    pub fn drain_outbox(&mut self) -> std::vec::Drain<'_, Outgoing<K>> {
        self.outbox.drain(..)
    }

    // ----- gather -------------------------------------------------------------------------------

    /// Starts a frame: moves a lockstep clock on by `dt` and follows a real-time clock's pause.
    pub fn begin_frame(&mut self, dt: Duration, paused: bool) {
        self.tick += 1;
        self.frame = dt;
        match self.clock.kind() {
            ClockKind::RealTime => self.clock.set_paused(paused),
            ClockKind::Lockstep(_) => self.clock.advance(dt),
            ClockKind::Manual(_) => {}
        }
    }

    /// **Queued.** Takes one request. A request replaces the agent's request in the same slot
    /// (which ends without a message). Banter is answered at once (an idle-time model line, or
    /// a template); a plan in the cache is answered at once from it; with fallbacks forced, or
    /// no backend, the fallback answers at once. Anything else is submitted to the workers with
    /// its fallback being prepared by the executor, and waits in [`Phase::Waiting`].
    pub fn request(&mut self, new: NewRequest<K>, metrics: &mut Metrics) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let now = self.clock.now();
        let kind = new.ask.kind();
        if let Some(slot) = RequestSlot::of(kind) {
            self.cancel_slot(new.agent, slot);
        }
        let deadline = Deadline::after(now, self.config.deadlines.for_kind(kind));
        let seed = self.config.sampling.seed ^ id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let snapshot = Arc::new(new.snapshot);
        let (situation, slots, history, player_said) = match new.ask {
            Ask::Plan { order } => (String::new(), Vec::new(), Vec::new(), order),
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

        if kind == RequestKind::Banter {
            self.answer_banter(
                id,
                new.agent,
                &new.persona,
                &situation,
                &slots,
                &snapshot,
                seed,
                metrics,
            );
            return id;
        }

        // A plan that answers the player is about what was said, not only the situation.
        let order = player_said.clone().filter(|_| kind == RequestKind::Plan);
        let cache_key = (kind == RequestKind::Plan && order.is_none())
            .then(|| self.cache.key(&new.persona, kind, &snapshot));
        if let Some(key) = cache_key.as_ref().filter(|_| !self.force_fallback) {
            let hit = self.cache.get(key, &snapshot, &self.registry, now);
            metrics.record_cache(hit.is_some());
            let answer = match hit {
                Some(CachedHit::Steps(steps)) => Some((steps, None, None)),
                Some(CachedHit::Intent { intent, say }) => {
                    Some((self.planner.expand(&snapshot, &intent), say, Some(intent)))
                }
                _ => None,
            };
            if let Some((steps, say, intent)) = answer.filter(|(steps, ..)| !steps.is_empty()) {
                let source = PlanSource::Cache;
                metrics.record_answer(kind, &source, None);
                metrics.record_full(kind, &source, Duration::ZERO);
                self.deliver_plan(PlanDone {
                    agent: new.agent,
                    request: id,
                    steps,
                    say: say.map(|line| filtered(&*self.filter, line)),
                    intent,
                    source,
                    fallback: None,
                    first_after: Duration::ZERO,
                    latency: Duration::ZERO,
                });
                return id;
            }
        }

        let at_once = self.force_fallback || self.pool.is_none();
        let work = FallbackWork {
            kind,
            planner: Arc::clone(&self.planner),
            templates: Arc::clone(&self.templates),
            snapshot: Arc::clone(&snapshot),
            persona: new.persona.clone(),
            situation: situation.clone(),
            slots,
            seed,
        };
        let fallback = if at_once {
            Prepared::Ready(work.run())
        } else {
            self.unsent.push(id);
            Prepared::Unsent(Box::new(work))
        };
        let options = match kind {
            RequestKind::Plan
                if self.config.model.plan_format == PlanFormat::Guided && !at_once =>
            {
                let mut options = match order {
                    Some(_) => self.planner.order_intents(&snapshot),
                    None => self.planner.intents(&snapshot),
                };
                // An answer may name its choice by label, so a label is offered once.
                let mut seen = std::collections::HashSet::new();
                options.retain(|o| seen.insert(o.label.clone()));
                options
            }
            _ => Vec::new(),
        };
        let plan = (kind == RequestKind::Plan).then(|| PlanState {
            options: options.clone(),
            cache_key,
            ..PlanState::default()
        });
        let mut request = Request {
            agent: Some(new.agent),
            kind,
            phase: Phase::Waiting,
            persona: new.persona.clone(),
            snapshot: Arc::clone(&snapshot),
            situation,
            player_said: player_said.clone(),
            submitted: now,
            deadline,
            job: None,
            fallback,
            backend: None,
            text: String::new(),
            gate: Gate::Open,
            delivered: 0,
            first_at: None,
            plan,
            bridge: None,
            copied: false,
            line_skipped: false,
            shown: shown_check(&self.copies, player_said.as_deref(), &options),
        };
        let Some(pool) = self.pool.as_mut().filter(|_| !self.force_fallback) else {
            let reason = if self.force_fallback {
                FallbackReason::Forced
            } else {
                FallbackReason::NoModel
            };
            self.requests.insert(id, Box::new(request));
            self.answer_with_fallback(id, reason, metrics);
            self.requests.remove(&id);
            return id;
        };
        let task = match kind {
            RequestKind::Plan if options.is_empty() => AgentTask::Plan { order },
            RequestKind::Plan => AgentTask::Guided { options, order },
            _ => AgentTask::Dialogue {
                history,
                player_said: player_said.unwrap_or_default(),
            },
        };
        let job = pool.submit(
            JobRequest {
                agent: snapshot.agent,
                persona: new.persona,
                task,
                snapshot: Arc::clone(&snapshot),
                deadline,
                spotlight: new.spotlight,
            },
            self.tick,
        );
        request.job = Some(job);
        self.track(job, now);
        self.by_job.insert(job, id);
        if let Some(slot) = request.slot() {
            self.by_agent.insert((new.agent, slot), id);
        }
        self.deadlines.insert((deadline, id));
        self.requests.insert(id, Box::new(request));
        id
    }

    /// **Banter.** Never waits for a model: a fresh line the worker wrote in idle time for the
    /// persona and situation (`Cache`), else a template (`Template`), in the same call. The
    /// agent's snapshot is remembered, so idle time writes lines for where agents banter.
    #[expect(clippy::too_many_arguments, reason = "the parts of one banter request")]
    fn answer_banter(
        &mut self,
        id: RequestId,
        agent: K,
        persona: &str,
        situation: &str,
        slots: &[(String, String)],
        snapshot: &Arc<crate::snapshot::WorldSnapshot>,
        seed: u64,
        metrics: &mut Metrics,
    ) {
        let now = self.clock.now();
        let forced = self.force_fallback.then_some(FallbackReason::Forced);
        let ttl = self.cache.ttl();
        let pooled = match forced {
            None => self.banter.take(persona, situation, seed, now, ttl),
            Some(_) => None,
        };
        let (text, source) = match pooled {
            Some(line) => (line, PlanSource::Cache),
            None => {
                // Another of the situation's templates if this one was said lately.
                let fresh = (0..TEMPLATE_TRIES)
                    .map(|i| {
                        let seed = seed.wrapping_add(i);
                        template_line(&self.templates, persona, situation, slots, seed)
                    })
                    .find(|line| !self.banter.was_said(line));
                let line = fresh.unwrap_or_else(|| {
                    template_line(&self.templates, persona, situation, slots, seed)
                });
                self.banter.note_said(&line);
                (line, PlanSource::Template)
            }
        };
        self.banter.remember(persona, situation, snapshot);
        let text = filtered(&*self.filter, text);
        self.finish_line(
            LineDone {
                agent,
                request: id,
                kind: RequestKind::Banter,
                text,
                source,
                fallback: forced,
                first_after: Duration::ZERO,
                latency: Duration::ZERO,
                bridged: false,
                player_said: None,
            },
            0,
            metrics,
        );
    }

    /// **Cancel.** Ends an agent's request in `slot`, if it has one: no further message, no
    /// completion, and its job is cancelled.
    ///
    /// A request answered at once (from the cache, say) but not yet taken from the outbox is
    /// ended too: the game has not heard of it, and must not hear of it after ending it.
    pub fn cancel_slot(&mut self, agent: K, slot: RequestSlot) {
        let mut ended: Vec<RequestId> = self
            .outbox
            .iter()
            .filter(|m| m.agent() == agent && m.completes_slot() == Some(slot))
            .map(Outgoing::request)
            .collect();
        if let Some(id) = self.by_agent.remove(&(agent, slot)) {
            self.drop_request(id);
            ended.push(id);
        }
        if !ended.is_empty() {
            self.outbox.retain(|m| !ended.contains(&m.request()));
        }
    }

    /// **Despawn.** Ends everything an agent has in flight, as [`Lifecycle::cancel_slot`] does.
    pub fn forget_agent(&mut self, agent: K) {
        for slot in RequestSlot::ALL {
            self.cancel_slot(agent, slot);
        }
    }

    pub(super) fn drop_request(&mut self, id: RequestId) {
        let Some(request) = self.requests.remove(&id) else {
            return;
        };
        self.deadlines.remove(&(request.deadline, id));
        if let (Some(agent), Some(slot)) = (request.agent, request.slot())
            && self.by_agent.get(&(agent, slot)) == Some(&id)
        {
            self.by_agent.remove(&(agent, slot));
        }
        if let Some(job) = request.job {
            if let Some(pool) = &mut self.pool {
                pool.cancel(job);
            }
            self.by_job.remove(&job);
            // Nothing of it will be delivered, so a lockstep frame need not wait for it.
            self.known.remove(&job);
        }
        if let Some(i) = self.idle_jobs.iter().position(|&j| j == id) {
            self.idle_jobs.swap_remove(i);
        }
    }

    // ----- dispatch -----------------------------------------------------------------------------

    /// **Prepared fallback.** Hands the frame's fallback work to the executor in one batch and
    /// the frame's jobs to the workers, and in idle time asks for banter lines.
    pub fn dispatch(&mut self) {
        self.send_fallback_work();
        if self.requests.is_empty() && self.idle_jobs.is_empty() && !self.force_fallback {
            self.write_banter_in_idle_time();
        }
        if let Some(pool) = &mut self.pool {
            pool.dispatch();
        }
    }

    fn send_fallback_work(&mut self) {
        if self.unsent.is_empty() {
            return;
        }
        let batch = Arc::new(Mutex::new(Batch::default()));
        let mut work = Vec::new();
        for id in self.unsent.drain(..) {
            let Some(r) = self.requests.get_mut(&id) else {
                continue;
            };
            let slot = Prepared::Batched(Arc::clone(&batch), work.len());
            match std::mem::replace(&mut r.fallback, slot) {
                Prepared::Unsent(w) => work.push(*w),
                // Made already (taken before this dispatch): keep it.
                other => r.fallback = other,
            }
        }
        if !work.is_empty() {
            batch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pending = Some(self.executor.spawn(work));
        }
    }

    /// **Idle time.** With nothing in flight, asks the model for banter lines (up to
    /// [`IDLE_LINES`], one batch) for the personas and situations with the fewest fresh ones.
    /// Each request has no agent and starts in [`Phase::CacheOnly`]: its line goes to the
    /// banter pool only.
    fn write_banter_in_idle_time(&mut self) {
        let personas: Vec<String> = self
            .prompt
            .personas
            .iter()
            .map(|p| p.name.clone())
            .collect();
        for _ in 0..IDLE_LINES {
            if !self.write_one_banter_line(&personas) {
                break;
            }
        }
    }

    fn write_one_banter_line(&mut self, personas: &[String]) -> bool {
        let now = self.clock.now();
        let Some(pool) = &mut self.pool else {
            return false;
        };
        let Some((persona, situation, snapshot)) =
            self.banter.wanted(now, self.cache.ttl(), personas)
        else {
            return false;
        };
        let id = RequestId(self.next_request);
        self.next_request += 1;
        // Far off: idle work must never look late.
        let deadline = Deadline::after(now, Duration::from_secs(3600));
        let job = pool.submit(
            JobRequest {
                agent: snapshot.agent,
                persona: persona.clone(),
                task: AgentTask::Banter {
                    situation: situation.clone(),
                },
                snapshot: Arc::clone(&snapshot),
                deadline,
                spotlight: false,
            },
            self.tick,
        );
        self.track(job, now);
        self.by_job.insert(job, id);
        self.idle_jobs.push(id);
        self.requests.insert(
            id,
            Box::new(Request {
                agent: None,
                kind: RequestKind::Banter,
                phase: Phase::CacheOnly,
                persona,
                snapshot,
                situation,
                player_said: None,
                submitted: now,
                deadline,
                job: Some(job),
                fallback: Prepared::Ready(Answer::Line(String::new())),
                backend: None,
                text: String::new(),
                gate: Gate::Open,
                delivered: 0,
                first_at: None,
                plan: None,
                bridge: None,
                copied: false,
                line_skipped: false,
                shown: CopyCheck::new(self.copies.min_run()),
            }),
        );
        true
    }

    fn track(&mut self, job: JobId, submitted: Timestamp) {
        if self.clock.is_virtual() {
            self.known.insert(job, submitted);
        }
    }

    // ----- delivery helpers ---------------------------------------------------------------------

    /// Sends a whole plan at once: its steps, then its completion.
    pub(super) fn deliver_plan(&mut self, plan: PlanDone<K>) {
        for (index, step) in plan.steps.iter().enumerate() {
            self.outbox.push(Outgoing::Step(StepReady {
                agent: plan.agent,
                request: plan.request,
                index,
                step: step.clone(),
            }));
        }
        self.outbox.push(Outgoing::Plan(plan));
    }

    /// Sends a line's completion, after its words unless they streamed from the model, and
    /// records it. The first `spoken` bytes of its text (a bridge) reached the game already.
    pub(super) fn finish_line(&mut self, line: LineDone<K>, spoken: usize, metrics: &mut Metrics) {
        let streamed = matches!(line.source, PlanSource::Llm { .. });
        if !streamed && line.text.len() > spoken {
            self.outbox.push(Outgoing::Words(WordsReady {
                agent: line.agent,
                request: line.request,
                text: line.text[spoken..].to_owned(),
            }));
        }
        metrics.record_answer(line.kind, &line.source, line.fallback);
        metrics.record_full(line.kind, &line.source, line.latency);
        self.outbox.push(Outgoing::Line(line));
    }

    // ----- shutdown -----------------------------------------------------------------------------

    /// Stops the workers, cutting running decodes at their next step. Requests still waiting
    /// get nothing more.
    pub fn shutdown(&mut self) {
        if let Some(pool) = &mut self.pool {
            pool.shutdown();
            while pool.try_recv().is_some() {}
        }
        self.requests.clear();
        self.by_job.clear();
        self.by_agent.clear();
        self.deadlines.clear();
        self.known.clear();
        self.held.clear();
    }
}

/// Why a [`Lifecycle`] could not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// Two backends share an id.
    #[error(transparent)]
    Duplicate(#[from] DuplicateBackend),
    /// The chosen backend is not registered.
    #[error(transparent)]
    Unknown(#[from] UnknownBackend),
}
