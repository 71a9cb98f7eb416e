//! Load: a thousand agents make ten thousand requests over a simulated minute on a lockstep
//! clock, through the real worker pool (two threads, batching, streaming) and a router whose
//! first backend refuses streams, loses streams mid-answer and panics mid-batch, while the game
//! despawns agents, cancels and replaces requests, sends bursts far larger than the queue and
//! hot-reloads the configuration.
//!
//! What must hold, checked message by message:
//!
//! - **exactly once:** every request the game did not end gets exactly one completion, and
//!   nothing follows it; a request the game cancels, replaces or whose agent despawns gets no
//!   message at all from then on (the design's "no completion message");
//! - **streams add up:** a plan's steps are the `StepReady` messages in order, a line's text is
//!   its `WordsReady` messages joined;
//! - **the queue is bounded:** it never holds more than `batching.queue_capacity` jobs;
//! - **overflow is answered:** a request that arrives at a full queue gets its completion, a
//!   fallback with reason `Overflow`, in the frame it was made;
//! - **no leak:** the heap hivemind holds when everything has settled after the second half of
//!   the run is within 5 % of what it held when everything had settled after the first half.
//!
//! The heap is measured by a counting global allocator, so this file holds one test: a second
//! one running alongside would be counted too. The test's own books are allocated before the
//! first reading, and both readings are taken with nothing in flight and the workers idle,
//! after the same configuration, with the answer cache full and every path warm. What remains
//! between them is a hash table that happened to grow one step (its growth depends on the
//! process's random hash keys): about 280 KB at the midpoint, +0.2 % to +3.9 % at the end over
//! twenty runs. Five per cent of the midpoint is under 3 bytes a request of the second half, so
//! a leak of one small allocation per request cannot hide in it; the test checks that too.
//! Running the same load for 80,000 requests, the heap levels off at the size its tables reach
//! under the worst burst and stays there.

use std::alloc::{GlobalAlloc, Layout, System};
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hivemind_core::action::ActionRegistry;
use hivemind_core::backend::{
    BackendError, BackendFactory, Batch, BatchAgent, BatchSink, FnFactory, Handoff,
    InferenceBackend, Script, ScriptedBackend, TokenUsage,
};
use hivemind_core::clock::Clock;
use hivemind_core::config::{
    BatchingConfig, ClockMode, HivemindConfig, OverflowPolicy, PlanFormat, PromptLayout,
};
use hivemind_core::hooks::{FallbackPlanner, LineRules};
use hivemind_core::lifecycle::{
    Ask, InlineExecutor, Lifecycle, LifecycleParts, LineKind, NewRequest, Outgoing, RequestId,
    RequestSlot,
};
use hivemind_core::metrics::Metrics;
use hivemind_core::plan::{
    ArgValue, BackendId, FallbackReason, OutputFormat, PlanSource, PlanStep, RequestKind,
};
use hivemind_core::prompt::{ChatTemplate, IntentOption, Persona, PromptAsset};
use hivemind_core::snapshot::{AgentId, EntityId, EntityInfo, Point, WorldSnapshot};
use hivemind_core::templates::TemplateBook;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

// ----- the counting allocator ---------------------------------------------------------------

/// Bytes allocated and not yet freed, by every thread of the test binary.
static LIVE: AtomicI64 = AtomicI64::new(0);

/// The system allocator, counting live bytes.
struct Counting;

// SAFETY: every call goes to `System` with the caller's arguments unchanged; the counter is
// only arithmetic on the sizes and never touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, that is by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller upholds the rest.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> i64 {
    LIVE.load(Ordering::SeqCst)
}

// ----- the run's shape ----------------------------------------------------------------------

const SEED: u64 = 0x4849_5645_4d49_4e44;
const AGENTS: usize = 1_000;
/// Requests in each half of the run.
const HALF_REQUESTS: usize = 5_000;
/// A lockstep frame.
const FRAME: Duration = Duration::from_millis(50);
/// Frames in each half: 600 frames of 50 ms are half a minute.
const HALF_FRAMES: usize = 600;
/// Bursts in each half, each of this many requests in one frame, far above the queue.
const BURSTS: usize = 6;
const BURST: usize = 300;
const QUEUE: usize = 128;
/// Frames with no requests after each half, so that every answer (a reply may take 1.5 s, a
/// late model answer a little longer) has ended before the heap is read.
const SETTLE_FRAMES: usize = 80;
/// Frames with no dispatch at the end of each half.
const QUIET_FRAMES: usize = 40;
/// A hot reload every 5 simulated seconds, cycling through three configurations: six in each
/// half, so both halves end on the configuration they began with.
const RELOAD_EVERY: usize = 100;
const PERSONAS: [&str; 2] = ["veteran", "rookie"];
const SITUATIONS: [&str; 3] = ["idle", "ally_down", "low_health"];

const REGISTRY: &str = r#"(
    idle: "Wait",
    verbs: [
        (name: "Attack", args: [(name: "target", kind: Entity(set: "enemy"))]),
        (name: "Reload"),
        (name: "Wait"),
        (name: "Say", args: [(name: "text", kind: Text(max_chars: 80))]),
    ],
)"#;

const TEMPLATES: &str = r#"(
    situations: {
        "idle": ["Quiet out here.", "Checking corners.", "Stay sharp."],
        "ally_down": ["{ally} is down!", "Man down, cover me!"],
        "low_health": ["I need a medic.", "Hurting here."],
        "greeting": ["State your business."],
        "bridge": ["Hm.", "Right, so.", "Let me think."],
    },
    personas: {
        "veteran": { "bridge": ["Listen."] },
    },
)"#;

// ----- the game's planner and the scripted model ------------------------------------------

/// Plans "Reload, Wait"; an attack without ammo fails its check (so the model's plans get
/// repaired); of the guided intents, `flee` expands to nothing (so the prepared plan stands in).
struct SquadPlanner;

impl FallbackPlanner for SquadPlanner {
    fn plan(&self, _snapshot: &WorldSnapshot) -> Vec<PlanStep> {
        vec![PlanStep::new("Reload"), PlanStep::new("Wait")]
    }

    fn complete(&self, _snapshot: &WorldSnapshot, _done: &[PlanStep]) -> Vec<PlanStep> {
        vec![PlanStep::new("Wait")]
    }

    fn first_invalid(&self, snapshot: &WorldSnapshot, steps: &[PlanStep]) -> Option<usize> {
        let empty = snapshot.int_fact("ammo") == Some(0);
        steps.iter().position(|s| empty && s.verb == "Attack")
    }

    fn intents(&self, _snapshot: &WorldSnapshot) -> Vec<IntentOption> {
        ["push", "hold", "flee"]
            .map(|goal| IntentOption {
                goal: goal.into(),
                label: goal.into(),
                reason: "the squad needs it".into(),
            })
            .into()
    }

    fn expand(&self, snapshot: &WorldSnapshot, goal: &str) -> Vec<PlanStep> {
        let enemy = snapshot.entities_in("enemy").map(|e| e.id.0).min();
        match (goal, enemy) {
            ("push", Some(target)) => {
                vec![PlanStep::new("Attack").with_arg("target", ArgValue::Int(target.into()))]
            }
            ("hold", _) => vec![PlanStep::new("Wait")],
            _ => Vec::new(),
        }
    }
}

/// A 64-bit mix, for choices that must follow from ids alone.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

const WORDS: [&str; 12] = [
    "hold", "the", "line", "watch", "east", "door", "moving", "up", "darn", "cover", "me", "now",
];

/// Two to twelve words; one line in about twelve says the word the line filter bans.
fn words(h: u64) -> String {
    let n = 2 + (h % 11) as usize;
    (0..n)
        .map(|i| WORDS[(mix(h.wrapping_add(i as u64)) % WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The scripted model: free plans of one to three steps (an attack the planner may reject, a
/// reload, a line), a guided choice among the offered intents, lines of varying length.
fn squad_script() -> Script {
    Arc::new(|a: &BatchAgent, format: OutputFormat| {
        let id = a.agent.0;
        let h = mix(u64::from(id) ^ a.job.0.rotate_left(20));
        match format {
            OutputFormat::FreePlan => {
                let mut steps = Vec::new();
                if let Some(target) = a.snapshot.entities_in("enemy").map(|e| e.id.0).min() {
                    steps.push(format!("{{\"act\":\"Attack\",\"target\":{target}}}"));
                }
                if !h.is_multiple_of(3) {
                    steps.push("{\"act\":\"Reload\"}".to_owned());
                }
                if h.is_multiple_of(4) {
                    steps.push(format!("{{\"act\":\"Say\",\"text\":\"{}\"}}", words(h)));
                }
                if steps.is_empty() {
                    steps.push("{\"act\":\"Wait\"}".to_owned());
                }
                format!("{{\"agent\":{id},\"steps\":[{}]}}", steps.join(","))
            }
            OutputFormat::Guided => {
                let options = a.task.options().len().max(1) as u64;
                let intent = 1 + h % options;
                format!(
                    "{{\"agent\":{id},\"intent\":{intent},\"say\":\"{}\"}}",
                    words(h >> 8)
                )
            }
            OutputFormat::Line => format!("{{\"agent\":{id},\"say\":\"{}\"}}", words(h)),
        }
    })
}

// ----- the faulty first backend -------------------------------------------------------------

/// The payload of an injected panic; the test's panic hook keeps it off the output.
const INJECTED: &str = "injected fault: the backend panicked mid-batch";

static REFUSED: AtomicU64 = AtomicU64::new(0);
static LOST_MID_STREAM: AtomicU64 = AtomicU64::new(0);
static PANICKED: AtomicU64 = AtomicU64::new(0);

/// What the faulty backend does to one stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Fails it before writing anything: the router hands it to the next backend.
    Refuse,
    /// Fails it after this many tokens: what it wrote stands.
    LoseAfter(u32),
}

/// One stream's fault, from its first job's id: the same run faults the same streams.
fn fault_of(batch: &Batch, stream: usize) -> Fault {
    let agent = if batch.shared.is_some() {
        batch.agents.first()
    } else {
        batch.agents.get(stream)
    };
    let h = mix(agent.map_or(0, |a| a.job.0) ^ 0x00fa_0175);
    match h % 100 {
        0..6 => Fault::Refuse,
        6..12 => Fault::LoseAfter(1 + (h >> 8) as u32 % 14),
        _ => Fault::None,
    }
}

/// Whether the batch panics, and after how many of its tokens: about one batch in 25.
fn panic_after(batch: &Batch) -> Option<u64> {
    let h = mix(batch.agents.first().map_or(0, |a| a.job.0) ^ 0x0bad_ba7c);
    h.is_multiple_of(25).then_some(1 + (h >> 8) % 40)
}

/// The scripted model behind faults: refused streams, streams lost mid-answer, panics.
struct Faulty {
    inner: ScriptedBackend,
}

impl InferenceBackend for Faulty {
    fn run(&mut self, batch: &Batch, sink: &mut dyn BatchSink) -> Result<(), BackendError> {
        let streams = batch.streams();
        let mut faulty = FaultSink {
            inner: sink,
            faults: (0..streams).map(|s| fault_of(batch, s)).collect(),
            written: vec![0; streams],
            dead: vec![false; streams],
            tokens: 0,
            panic_after: panic_after(batch),
        };
        for s in 0..streams {
            if faulty.faults[s] == Fault::Refuse && !faulty.inner.is_cancelled(s) {
                REFUSED.fetch_add(1, Ordering::Relaxed);
                faulty.dead[s] = true;
                faulty.inner.error(
                    s,
                    BackendError::Failed("injected: connection refused".into()),
                );
            }
        }
        self.inner.run(batch, &mut faulty)
    }
}

struct FaultSink<'a> {
    inner: &'a mut dyn BatchSink,
    faults: Vec<Fault>,
    written: Vec<u32>,
    dead: Vec<bool>,
    tokens: u64,
    panic_after: Option<u64>,
}

impl BatchSink for FaultSink<'_> {
    fn text(&mut self, stream: usize, text: &str, usage: TokenUsage) {
        if self.dead[stream] {
            return;
        }
        self.tokens += 1;
        if self.panic_after.is_some_and(|n| self.tokens >= n) {
            PANICKED.fetch_add(1, Ordering::Relaxed);
            std::panic::panic_any(INJECTED);
        }
        self.written[stream] += 1;
        self.inner.text(stream, text, usage);
        if self.faults[stream] == Fault::LoseAfter(self.written[stream]) {
            LOST_MID_STREAM.fetch_add(1, Ordering::Relaxed);
            self.dead[stream] = true;
            self.inner.error(
                stream,
                BackendError::Failed("injected: connection lost".into()),
            );
        }
    }

    fn done(&mut self, stream: usize, usage: TokenUsage) {
        if !self.dead[stream] {
            self.inner.done(stream, usage);
        }
    }

    fn error(&mut self, stream: usize, error: BackendError) {
        if !self.dead[stream] {
            self.inner.error(stream, error);
        }
    }

    fn is_cancelled(&self, stream: usize) -> bool {
        self.dead[stream] || self.inner.is_cancelled(stream)
    }

    fn hand_off(&mut self, stream: usize, handoff: &Handoff) {
        self.inner.hand_off(stream, handoff);
    }

    fn skip_line(&mut self, stream: usize, usage: TokenUsage) -> bool {
        !self.dead[stream] && self.inner.skip_line(stream, usage)
    }
}

/// The router: `primary` (the faulty model) first, then `backup` (the same model, sound).
fn router() -> Arc<dyn BackendFactory> {
    let primary: Arc<dyn BackendFactory> = FnFactory::new("primary", || {
        Ok(Box::new(Faulty {
            inner: ScriptedBackend::new(squad_script()),
        }) as Box<dyn InferenceBackend>)
    });
    let backup: Arc<dyn BackendFactory> = FnFactory::new("backup", || {
        Ok(Box::new(ScriptedBackend::new(squad_script())) as Box<dyn InferenceBackend>)
    });
    hivemind_core::router::RouterFactory::new([primary, backup])
}

// ----- configurations -----------------------------------------------------------------------

fn base_config() -> HivemindConfig {
    let mut config = HivemindConfig {
        batching: BatchingConfig {
            max_batch: 16,
            queue_capacity: QUEUE,
            overflow: OverflowPolicy::RejectNew,
            // One worker, so that every run is the same: with two, the router's shared latency
            // windows fill in the order the workers finish, which moves a few streams from one
            // backend to the other from run to run.
            workers: 1,
        },
        ..HivemindConfig::default()
    };
    config.clock.mode = ClockMode::Lockstep;
    // Small and short-lived, so the cache is full and turning over well before the midpoint.
    config.cache.capacity = 64;
    config.cache.ttl_secs = 5.0;
    config
}

/// The configurations hot reloads cycle through: deadlines, budgets, limits, layout and plan
/// format all change. Batching, cache and clock stay, as they take effect only on a restart.
fn reloaded(n: usize) -> HivemindConfig {
    let mut config = base_config();
    match n % 3 {
        0 => {}
        1 => {
            config.deadlines.plan_ms = 300;
            config.deadlines.dialogue_ms = 60;
            config.deadlines.reply_ms = 900;
            config.budgets.snapshot_tokens = 48;
            config.budgets.max_plan_steps = 2;
            config.budgets.max_say_chars = 48;
            config.model.layout = PromptLayout::SharedPrompt;
            config.model.plan_format = PlanFormat::Free;
        }
        _ => {
            config.deadlines.plan_ms = 200;
            config.deadlines.dialogue_ms = 150;
            config.deadlines.reply_ms = 1200;
            config.budgets.snapshot_tokens = 120;
            config.budgets.max_plan_steps = 4;
            config.budgets.max_say_chars = 120;
            config.model.plan_format = PlanFormat::Free;
        }
    }
    config
}

fn lifecycle() -> Result<Lifecycle<u32>, Box<dyn Error>> {
    let prompt = PromptAsset {
        personas: PERSONAS
            .iter()
            .map(|name| Persona {
                name: (*name).into(),
                voice: format!("Speaks like a {name}."),
            })
            .collect(),
        ..PromptAsset::default()
    };
    Ok(Lifecycle::new(LifecycleParts {
        config: base_config(),
        registry: ActionRegistry::from_ron(REGISTRY, "load")?,
        templates: TemplateBook::from_ron(TEMPLATES, "load")?,
        prompt,
        chat: ChatTemplate::chatml(),
        planner: Arc::new(SquadPlanner),
        filter: Arc::new(LineRules::default().with_banned("darn")),
        executor: Arc::new(InlineExecutor),
        backends: vec![router()],
        backend: Some(BackendId::new(BackendId::ROUTER)),
        clock: Clock::lockstep(base_config().clock.throughput),
    })?)
}

// ----- the game's side ----------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Waiting for its completion.
    Open,
    /// Completed.
    Done,
    /// Cancelled, replaced or despawned before its completion.
    Ended,
}

/// One request the game made, and what it has heard of it so far. Kept small and allocated
/// once for the whole run, so the test's own books do not move the heap between the halves.
#[derive(Clone, Copy)]
struct Track {
    id: u64,
    /// FNV-1a over the steps (or words) delivered so far.
    hash: u64,
    agent: u32,
    pieces: u32,
    /// The frame in which its job joined the queue, if it did.
    queued: Option<u32>,
    kind: RequestKind,
    state: State,
    reason: Option<FallbackReason>,
}

const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn step_hash(hash: u64, step: &PlanStep) -> u64 {
    fnv(fnv(hash, step.to_string().as_bytes()), b"\n")
}

/// Completions by request kind, by source (model `primary`, model `backup`, cache, planner,
/// template) and by fallback reason (none, then [`FallbackReason::ALL`] in order).
type Tally = [[[u64; 7]; 5]; 3];

fn kind_index(kind: RequestKind) -> usize {
    match kind {
        RequestKind::Banter => 0,
        RequestKind::Dialogue => 1,
        RequestKind::Plan => 2,
    }
}

fn source_index(source: &PlanSource) -> usize {
    match source {
        PlanSource::Llm { backend, .. } if backend.as_str() == "primary" => 0,
        PlanSource::Llm { backend, .. } => {
            assert_eq!(backend.as_str(), "backup", "a completion names the router");
            1
        }
        PlanSource::Cache => 2,
        PlanSource::Goap => 3,
        PlanSource::Template => 4,
    }
}

fn reason_index(reason: Option<FallbackReason>) -> usize {
    reason.map_or(0, |r| {
        1 + FallbackReason::ALL
            .iter()
            .position(|&x| x == r)
            .unwrap_or(FallbackReason::ALL.len())
    })
}

/// The game: its agents, what it asked for, and everything it heard.
struct Game {
    hm: Lifecycle<u32>,
    metrics: Metrics,
    rng: Xoshiro256PlusPlus,
    /// The current key of each agent; a despawned agent comes back under a new key.
    keys: Vec<u32>,
    /// Each agent's open plan and dialogue request, by id.
    open: Vec<[Option<u64>; 2]>,
    /// Every request made, in id order.
    tracks: Vec<Track>,
    /// The frame's requests that met a full queue.
    overflowing: Vec<u64>,
    frame: u32,
    reloads: usize,
    requests: u64,
    completions: u64,
    ended: u64,
    cancels: u64,
    despawns: u64,
    replaced: u64,
    overflowed: u64,
    repaired: u64,
    bridged: u64,
    max_depth: usize,
    tally: Tally,
}

impl Game {
    fn new(hm: Lifecycle<u32>) -> Self {
        Game {
            hm,
            metrics: Metrics::new(),
            rng: Xoshiro256PlusPlus::seed_from_u64(SEED),
            keys: (1..=AGENTS as u32).collect(),
            open: vec![[None; 2]; AGENTS],
            tracks: Vec::with_capacity(2 * HALF_REQUESTS),
            overflowing: Vec::with_capacity(2 * BURST),
            frame: 0,
            reloads: 0,
            requests: 0,
            completions: 0,
            ended: 0,
            cancels: 0,
            despawns: 0,
            replaced: 0,
            overflowed: 0,
            repaired: 0,
            bridged: 0,
            max_depth: 0,
            tally: [[[0; 7]; 5]; 3],
        }
    }

    fn track(&mut self, id: u64) -> &mut Track {
        let Ok(i) = self.tracks.binary_search_by_key(&id, |t| t.id) else {
            panic!("a message for r{id}, which the game never asked for");
        };
        &mut self.tracks[i]
    }

    fn slot_index(slot: RequestSlot) -> usize {
        match slot {
            RequestSlot::Plan => 0,
            RequestSlot::Dialogue => 1,
        }
    }

    /// The game ends request `id` (if it is still waiting): from now on it must hear nothing
    /// of it.
    fn end(&mut self, id: u64) {
        let t = self.track(id);
        assert_eq!(t.state, State::Open, "r{id} ended twice");
        t.state = State::Ended;
        self.ended += 1;
    }

    fn snapshot(&mut self, index: usize) -> WorldSnapshot {
        let key = self.keys[index];
        let cell = index % 16;
        let mut s = WorldSnapshot::new(
            AgentId(key),
            Point::new((cell % 4) as i32 * 4, (cell / 4) as i32 * 4),
        )
        .with_fact("ammo", self.rng.random_range(0..3i64));
        for e in 0..self.rng.random_range(0..4u32) {
            let at = Point::new(20 + 4 * e as i32, self.rng.random_range(0..3) * 4);
            s = s.with_entity(EntityInfo::new(EntityId(9_000 + e), "enemy", at));
        }
        s
    }

    /// One request from the agent at `index`: a plan (some answering the player), a reply to
    /// the player, or banter.
    fn ask(&mut self, index: usize) {
        let roll = self.rng.random_range(0..100u32);
        let persona = PERSONAS[index % PERSONAS.len()];
        let snapshot = self.snapshot(index);
        let situation = SITUATIONS[self.rng.random_range(0..SITUATIONS.len())];
        let ask = match roll {
            0..36 => Ask::Plan { order: None },
            36..45 => Ask::Plan {
                order: Some("Push up the left side!".into()),
            },
            45..75 => Ask::Line {
                kind: LineKind::Dialogue {
                    player_said: "What do you see out there?".into(),
                },
                situation: "greeting".into(),
                slots: Vec::new(),
                history: Vec::new(),
            },
            _ => Ask::Line {
                kind: LineKind::Banter,
                situation: situation.into(),
                slots: vec![("ally".into(), "Vex".into())],
                history: Vec::new(),
            },
        };
        let kind = ask.kind();
        let agent = self.keys[index];
        let mut depth = self.hm.queue_depth();
        if let Some(slot) = RequestSlot::of(kind)
            && let Some(old) = self.open[index][Self::slot_index(slot)].take()
        {
            // The new request replaces it; a job of this frame's leaves the queue with it.
            self.end(old);
            self.replaced += 1;
            let frame = self.frame;
            if self.track(old).queued == Some(frame) {
                depth -= 1;
            }
        }
        let full = depth >= QUEUE;
        let request = NewRequest {
            agent,
            persona: persona.into(),
            spotlight: roll % 7 == 0,
            snapshot,
            ask,
        };
        let id = self.hm.request(request, &mut self.metrics).0;
        self.requests += 1;
        assert!(
            self.tracks.last().is_none_or(|t| t.id < id),
            "request ids only grow"
        );
        self.tracks.push(Track {
            id,
            hash: FNV_BASIS,
            agent,
            pieces: 0,
            queued: None,
            kind,
            state: State::Open,
            reason: None,
        });
        if let Some(slot) = RequestSlot::of(kind) {
            self.open[index][Self::slot_index(slot)] = Some(id);
        }
        // Answered at once (banter, a cache hit), or queued: a request that met a full queue
        // is in flight until the frame's drain answers it.
        if self.hm.phase(RequestId(id)).is_some() {
            if full {
                self.overflowing.push(id);
            } else {
                let frame = self.frame;
                self.track(id).queued = Some(frame);
            }
        }
        self.note_depth();
        self.hear();
    }

    fn note_depth(&mut self) {
        let depth = self.hm.queue_depth();
        assert!(
            depth <= QUEUE,
            "the queue holds {depth} jobs, more than its {QUEUE}"
        );
        self.max_depth = self.max_depth.max(depth);
    }

    /// Reads the messages hivemind has for the game and checks each against what was asked.
    fn hear(&mut self) {
        let messages: Vec<Outgoing<u32>> = self.hm.drain_outbox().collect();
        for message in messages {
            self.check(message);
        }
    }

    fn check(&mut self, message: Outgoing<u32>) {
        let (id, agent) = (message.request().0, message.agent());
        let t = *self.track(id);
        assert_eq!(t.agent, agent, "r{id} names another agent");
        assert_eq!(
            t.state,
            State::Open,
            "r{id} ({:?}) heard after it was {:?}: {message:?}",
            t.kind,
            t.state
        );
        let (done, reason, source) = match message {
            Outgoing::Step(m) => {
                assert_eq!(t.kind, RequestKind::Plan);
                assert_eq!(m.index, t.pieces as usize, "r{id}'s steps come in order");
                let t = self.track(id);
                t.hash = step_hash(t.hash, &m.step);
                t.pieces += 1;
                return;
            }
            Outgoing::Words(m) => {
                assert_ne!(t.kind, RequestKind::Plan);
                let t = self.track(id);
                t.hash = fnv(t.hash, m.text.as_bytes());
                t.pieces += 1;
                return;
            }
            Outgoing::Plan(m) => {
                assert_eq!(t.kind, RequestKind::Plan);
                assert!(!m.steps.is_empty(), "r{id}: a plan always has a step");
                assert_eq!(m.steps.len(), t.pieces as usize, "r{id}: {m:?}");
                let hash = m.steps.iter().fold(FNV_BASIS, step_hash);
                assert_eq!(hash, t.hash, "r{id}'s plan is not the steps it streamed");
                if matches!(m.source, PlanSource::Llm { repaired: true, .. }) {
                    self.repaired += 1;
                }
                (Some(0), m.fallback, m.source)
            }
            Outgoing::Line(m) => {
                assert_eq!(m.kind, t.kind, "r{id}");
                let hash = fnv(FNV_BASIS, m.text.as_bytes());
                assert_eq!(
                    hash, t.hash,
                    "r{id}'s line is not the words it streamed: {m:?}"
                );
                if m.bridged {
                    self.bridged += 1;
                }
                (
                    RequestSlot::of(m.kind).map(Self::slot_index),
                    m.fallback,
                    m.source,
                )
            }
        };
        let t = self.track(id);
        t.state = State::Done;
        t.reason = reason;
        let kind = t.kind;
        self.completions += 1;
        self.tally[kind_index(kind)][source_index(&source)][reason_index(reason)] += 1;
        if let Some(slot) = done {
            let index = (agent as usize - 1) % AGENTS;
            if self.open[index][slot] == Some(id) {
                self.open[index][slot] = None;
            }
        }
    }

    /// A hot reload: the next configuration, and a broken one that must be refused whole.
    fn reload(&mut self) -> Result<(), Box<dyn Error>> {
        self.reloads += 1;
        let config = reloaded(self.reloads);
        self.hm.apply_config(config.clone())?;
        assert_eq!(*self.hm.config(), config);
        let mut broken = reloaded(self.reloads + 1);
        broken.deadlines.plan_ms = u64::MAX;
        assert!(self.hm.apply_config(broken).is_err());
        assert_eq!(
            *self.hm.config(),
            config,
            "a refused config changes nothing"
        );
        Ok(())
    }

    /// Agents despawn; each comes back under a new key, as a respawned entity does.
    fn despawn(&mut self, n: usize) {
        for _ in 0..n {
            let index = self.someone();
            self.hm.forget_agent(self.keys[index]);
            for slot in 0..2 {
                if let Some(id) = self.open[index][slot].take() {
                    self.end(id);
                }
            }
            self.keys[index] += AGENTS as u32;
            self.despawns += 1;
        }
    }

    /// An agent that asked for something lately, or any agent.
    fn someone(&mut self) -> usize {
        let recent = self.tracks.len().min(64);
        if recent > 0 && self.rng.random_bool(0.5) {
            let track = self.tracks[self.tracks.len() - 1 - self.rng.random_range(0..recent)];
            (track.agent as usize - 1) % AGENTS
        } else {
            self.rng.random_range(0..AGENTS)
        }
    }

    /// The game cancels a slot of a few agents, whether or not a request is in it.
    fn cancel(&mut self, n: usize) {
        for _ in 0..n {
            let index = self.someone();
            let slot = RequestSlot::ALL[self.rng.random_range(0..2)];
            self.hm.cancel_slot(self.keys[index], slot);
            if let Some(id) = self.open[index][Self::slot_index(slot)].take() {
                self.end(id);
                self.cancels += 1;
            }
        }
    }

    /// One frame, as the plugin runs it: clock, reloads, despawns and cancels, requests,
    /// dispatch, drain, fallbacks, and the messages to the game.
    fn frame(&mut self, requests: usize, reload: bool) -> Result<(), Box<dyn Error>> {
        self.frame += 1;
        self.hm.begin_frame(FRAME, false);
        if reload {
            self.reload()?;
        }
        if requests > 0 {
            if self.rng.random_bool(0.05) {
                let n = self.rng.random_range(1..=20);
                self.despawn(n);
            }
            let n = self.rng.random_range(0..=4);
            self.cancel(n);
        }
        for _ in 0..requests {
            let index = self.rng.random_range(0..AGENTS);
            self.ask(index);
        }
        self.hm.dispatch();
        self.note_depth();
        self.hm.drain(Duration::from_millis(1), &mut self.metrics);
        self.hm.answer_late(&mut self.metrics);
        self.hear();
        // Every request that met a full queue has its answer, and it says so.
        let overflowing = std::mem::take(&mut self.overflowing);
        for &id in &overflowing {
            let t = *self.track(id);
            match t.state {
                State::Ended => {}
                State::Done => {
                    assert_eq!(t.reason, Some(FallbackReason::Overflow), "r{id}");
                    self.overflowed += 1;
                }
                State::Open => panic!("r{id} met a full queue and was not answered"),
            }
        }
        self.overflowing = overflowing;
        self.overflowing.clear();
        Ok(())
    }

    /// Half of the run: `HALF_REQUESTS` requests over `HALF_FRAMES` frames, with bursts,
    /// then frames with no requests until everything has ended.
    fn half(&mut self, per_frame: &[u16]) -> Result<(), Box<dyn Error>> {
        for (i, &n) in per_frame.iter().enumerate() {
            self.frame(usize::from(n), i % RELOAD_EVERY == RELOAD_EVERY / 2)?;
        }
        for _ in 0..SETTLE_FRAMES {
            self.frame(0, false)?;
        }
        // Frames with no dispatch, so no new idle-time banter: the lines being written finish,
        // and the workers are idle when the heap is read.
        for _ in 0..QUIET_FRAMES {
            self.hm.begin_frame(FRAME, false);
            self.hm.drain(Duration::from_millis(1), &mut self.metrics);
            self.hm.answer_late(&mut self.metrics);
            self.hear();
        }
        assert_eq!(self.hm.in_flight(), 0, "every request has its answer");
        assert_eq!(self.hm.queue_depth(), 0);
        let open = self
            .tracks
            .iter()
            .filter(|t| t.state == State::Open)
            .count();
        assert_eq!(open, 0, "requests without a completion");
        Ok(())
    }

    /// How many requests each frame of a half makes: `HALF_REQUESTS` in all, `BURSTS` frames
    /// with a burst of `BURST`, the rest spread at random.
    fn schedule(&mut self) -> Vec<u16> {
        let mut per_frame = vec![0u16; HALF_FRAMES];
        for _ in 0..BURSTS {
            // Bursts stay clear of the half's last seconds, which settle with the rest.
            let frame = self.rng.random_range(20..HALF_FRAMES - 40);
            per_frame[frame] += BURST as u16;
        }
        for _ in 0..HALF_REQUESTS - BURSTS * BURST {
            per_frame[self.rng.random_range(0..HALF_FRAMES)] += 1;
        }
        per_frame
    }
}

/// Keeps the injected panics off the test's output; any other panic is reported as usual.
fn quiet_injected_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&INJECTED) {
            previous(info);
        }
    }));
}

#[test]
fn a_minute_of_load_answers_every_request_once_within_bounds_and_without_leaking()
-> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    quiet_injected_panics();
    let mut game = Game::new(lifecycle()?);
    let first = game.schedule();
    let second = game.schedule();
    let before = live_bytes();

    game.half(&first)?;
    let mid = live_bytes() - before;
    let mid_requests = game.requests;
    let mid_frame = game.frame;

    game.half(&second)?;
    let end = live_bytes() - before;

    let requests = game.requests;
    assert_eq!(requests, 2 * HALF_REQUESTS as u64);
    assert_eq!(
        game.completions + game.ended,
        requests,
        "every request completed or was ended by the game"
    );
    assert!(game.tracks.iter().all(|t| t.state != State::Open));

    // Every path was taken, so the exactly-once checks above covered it.
    let t = &game.tally;
    let by_reason = |r: Option<FallbackReason>| -> u64 {
        t.iter()
            .flat_map(|sources| sources.iter().map(|reasons| reasons[reason_index(r)]))
            .sum()
    };
    let by_source =
        |s: usize| -> u64 { t.iter().map(|sources| sources[s].iter().sum::<u64>()).sum() };
    let refused = REFUSED.load(Ordering::Relaxed);
    let lost = LOST_MID_STREAM.load(Ordering::Relaxed);
    let panicked = PANICKED.load(Ordering::Relaxed);
    assert!(game.cancels > 0 && game.despawns > 0 && game.replaced > 0);
    assert!(game.overflowed > 0, "the bursts overflowed the queue");
    assert_eq!(by_reason(Some(FallbackReason::Overflow)), game.overflowed);
    assert!(by_reason(Some(FallbackReason::Deadline)) > 0);
    assert!(by_reason(Some(FallbackReason::BackendError)) > 0);
    assert!(
        refused > 0 && lost > 0 && panicked > 0,
        "faults were injected"
    );
    assert!(by_source(0) > 0, "the first backend answered");
    assert!(by_source(1) > 0, "streams it refused went on to the second");
    assert!(by_source(2) > 0 && by_source(3) > 0 && by_source(4) > 0);
    assert!(game.repaired > 0 && game.bridged > 0);
    assert_eq!(game.reloads, 2 * HALF_FRAMES / RELOAD_EVERY);

    // The heap: both readings are taken with nothing in flight, after the same configuration,
    // the cache full and turning over, every path warm. A leak of even 16 bytes a request over
    // the second half would be more than the 5 % allowed.
    let allowed = mid / 20;
    let second_half = (requests - mid_requests) as i64;
    assert!(
        allowed < 16 * second_half,
        "the 5 % bound ({allowed} B) must be able to see a leak of 16 B per request"
    );
    let elapsed = started.elapsed();
    println!(
        "load: {requests} requests ({mid_requests} by the midpoint, frame {mid_frame} of {}), \
         {} completions, {} ended by the game ({} cancelled, {} replaced, {} agents despawned), \
         {} overflowed, {} repaired, {} bridged; faults: {refused} refused, {lost} lost \
         mid-stream, {panicked} panics; queue max {} of {QUEUE}; heap {mid} B at the midpoint, \
         {end} B at the end ({:+.2} %); {} reloads; {:.1} s",
        game.frame,
        game.completions,
        game.ended,
        game.cancels,
        game.replaced,
        game.despawns,
        game.overflowed,
        game.repaired,
        game.bridged,
        game.max_depth,
        (end - mid) as f64 * 100.0 / mid as f64,
        game.reloads,
        elapsed.as_secs_f64(),
    );
    let names = ["primary", "backup", "cache", "planner", "template"];
    for (k, kind) in ["banter", "dialogue", "plan"].iter().enumerate() {
        for (s, source) in names.iter().enumerate() {
            let row = t[k][s];
            if row.iter().any(|&n| n > 0) {
                println!("  {kind:<8} {source:<8} {row:?}");
            }
        }
    }
    assert!(
        (end - mid).abs() <= allowed,
        "the heap went from {mid} B at the midpoint to {end} B at the end"
    );
    Ok(())
}
