//! The inference backend trait, the batch a backend runs, and the two backends core ships.
//!
//! A backend turns a [`Batch`] into text, stream by stream, and reports it to a [`BatchSink`]
//! as it is written. The worker pool ([`crate::worker`]) does everything else: it builds the
//! batch's prompts and grammars, parses the text into steps and words, stamps them on the
//! [`Clock`], and answers every job exactly once.
//!
//! - [`ScriptedBackend`] answers from a function of each agent's request, deterministically, with
//!   a latency per token in virtual or real time. Tests, demos and the fallback-only mode use it.
//! - [`ReplayBackend`] plays back a [`Transcript`] that a [`Recorder`] wrote while another backend
//!   ran, so a session with a real model can be replayed exactly without one.
//!
//! # Design
//!
//! A backend is built on its worker's own thread by a [`BackendFactory`], which is the only part
//! that must be `Send + Sync`: a llama.cpp context borrows its model and both must stay on the
//! thread that made them. The trait is push-based (the backend calls the sink) so a backend can
//! interleave many sequences in one decode loop and report each token the moment it exists, and
//! so cancellation is a question the backend asks between decode steps rather than a signal it
//! must select on.

mod replay;
mod scripted;

use std::sync::Arc;
use std::time::Duration;

pub use replay::{
    MAX_LINE_BYTES, RecordedStream, Recorder, RecordingFactory, ReplayBackend, ReplayFactory,
    Transcript, TranscriptError, TranscriptWriter,
};
pub use scripted::{Latency, Script, ScriptedBackend};

use crate::action::ActionRegistry;
use crate::clock::{Clock, Deadline, Timestamp};
use crate::config::{Budgets, HivemindConfig, PromptLayout, Sampling, Throughput};
use crate::plan::{BackendId, OutputFormat, RequestKind};
use crate::prompt::{AgentTask, SequencePrompt, SharedPrompt};
use crate::snapshot::{AgentId, WorldSnapshot};

/// The id of one job: one agent's request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job#{}", self.0)
    }
}

/// Tokens a stream has cost so far. On a lockstep clock they decide when its output existed.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TokenUsage {
    /// Prompt tokens processed for this stream (those not served from a cached prefix).
    pub prompt_tokens: u64,
    /// Tokens generated for this stream so far.
    pub generated_tokens: u64,
}

/// One agent of a batch.
#[derive(Clone, Debug)]
pub struct BatchAgent {
    /// Its job.
    pub job: JobId,
    /// The agent.
    pub agent: AgentId,
    /// Its persona's key.
    pub persona: String,
    /// What it asks.
    pub task: AgentTask,
    /// Its snapshot, fitted to the budget: exactly what its prompt shows.
    pub snapshot: Arc<WorldSnapshot>,
    /// Its prompt in the parallel-sequences layout.
    pub prompt: SequencePrompt,
    /// Its grammar in the parallel-sequences layout (GBNF, start rule `root`).
    pub grammar: String,
    /// When its first step or words are due; a backend serves earlier deadlines first.
    pub deadline: Deadline,
    /// A scene the player is watching: a router may send it to another backend.
    pub spotlight: bool,
}

/// The prompt and grammar of a batch in the shared-prompt layout.
#[derive(Clone, Debug)]
pub struct SharedStream {
    /// The multi-agent prompt.
    pub prompt: SharedPrompt,
    /// The grammar: every agent's object once, in batch order.
    pub grammar: String,
}

/// What a backend runs: the requests of up to `max_batch` agents of one kind.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Unique per pool, increasing in dispatch order.
    pub id: u64,
    /// The tick its jobs were submitted in.
    pub tick: u64,
    /// The request kind of every job in it.
    pub kind: RequestKind,
    /// The output format of every job in it.
    pub format: OutputFormat,
    /// How the prompt is laid out.
    pub layout: PromptLayout,
    /// How tokens are chosen.
    pub sampling: Sampling,
    /// How the words of a plan's `say` text are chosen; `sampling` chooses the rest.
    pub say_sampling: Sampling,
    /// The seed for random sampling, derived from the config's seed and the batch's content.
    pub seed: u64,
    /// The agents, in batch order (ascending agent id).
    pub agents: Vec<BatchAgent>,
    /// With the shared-prompt layout: the one prompt and grammar for all agents.
    pub shared: Option<SharedStream>,
    /// The verbs plans may use, for a backend that describes the answer's shape itself (a JSON
    /// schema for a server that takes no grammar).
    pub registry: Arc<ActionRegistry>,
    /// The size limits the batch's grammars were built with: an answer's token budget is
    /// [`Budgets::answer_tokens`] of these, never of older settings.
    pub budgets: Budgets,
    /// The pool's clock, which the agents' deadlines are on.
    pub clock: Clock,
    /// When the batch started on `clock`. On a virtual clock a stream's time is this plus what
    /// its tokens cost, not what the machine took.
    pub start: Timestamp,
}

impl Batch {
    /// How many streams a backend writes: one per agent, or one for the shared prompt.
    pub fn streams(&self) -> usize {
        if self.shared.is_some() {
            1
        } else {
            self.agents.len()
        }
    }

    /// The time on the batch's clock for a stream that has used `spent` of virtual time: on a
    /// real-time clock simply now.
    pub fn now(&self, spent: Duration) -> Timestamp {
        if self.clock.is_virtual() {
            self.start.after(spent)
        } else {
            self.clock.now()
        }
    }

    /// The deadline of `stream`: its agent's, or with the shared prompt the earliest of all.
    pub fn deadline(&self, stream: usize) -> Option<Deadline> {
        match &self.shared {
            Some(_) => self.agents.iter().map(|a| a.deadline).min(),
            None => self.agents.get(stream).map(|a| a.deadline),
        }
    }
}

/// Why a backend could not answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The model file is missing or could not be loaded.
    #[error("no model: {0}")]
    NoModel(String),
    /// The request does not fit (prompt longer than the context, too many sequences …).
    #[error("request does not fit: {0}")]
    TooLarge(String),
    /// A transcript has no recording for this prompt.
    #[error("no recording for this prompt (key {key:016x})")]
    NoRecording {
        /// The prompt's key.
        key: u64,
    },
    /// The stream could not have begun its answer by its deadline, so the backend did not
    /// start it: its time went to streams that could. The pool answers it with the fallback at
    /// once, as a job shed for its deadline.
    #[error("its deadline could not be met: {0}")]
    Late(String),
    /// Anything else the backend reports.
    #[error("{0}")]
    Failed(String),
}

/// A backend that composes others (the router) hands a stream to one of them: see
/// [`BatchSink::hand_off`].
#[derive(Clone, Debug, PartialEq)]
pub struct Handoff {
    /// The backend that answers the stream from now on: completions name it.
    pub backend: BackendId,
    /// What a virtual clock charges for its tokens; `None` keeps the clock's rate.
    pub throughput: Option<Throughput>,
    /// The stream's virtual time already spent by the backends that failed it before; its
    /// stamps come after it.
    pub after: Duration,
}

/// Where a backend reports what it writes. Streams are numbered from zero; see
/// [`Batch::streams`].
pub trait BatchSink {
    /// `text` was written on `stream`; `usage` is the stream's cumulative cost so far.
    fn text(&mut self, stream: usize, text: &str, usage: TokenUsage);
    /// `stream` is finished.
    fn done(&mut self, stream: usize, usage: TokenUsage);
    /// `stream` failed; the backend writes nothing more on it.
    fn error(&mut self, stream: usize, error: BackendError);
    /// Whether nobody wants `stream` any more; a backend should stop it at the next decode
    /// step and free what it holds.
    fn is_cancelled(&self, stream: usize) -> bool;
    /// `stream` is answered by another backend from now on, and its token counts start again
    /// from zero. Only a backend that composes others calls it; a sink that does not care which
    /// backend answers ignores it.
    fn hand_off(&mut self, stream: usize, handoff: &Handoff) {
        let _ = (stream, handoff);
    }
    /// `stream` has written its answer and is writing (or about to write) its line, the `say`
    /// text of a plan. Returns whether the pool would rather have the time for waiting work: if
    /// so, the stream is over as it stands (its answer complete, its line left to a template)
    /// and the backend writes nothing more on it. A backend asks at every step of such a line;
    /// a sink that never skips lines returns `false`.
    fn skip_line(&mut self, stream: usize, usage: TokenUsage) -> bool {
        let _ = (stream, usage);
        false
    }
}

/// Something that writes answers. Its name is its factory's ([`BackendFactory::id`]).
pub trait InferenceBackend {
    /// Runs a batch, reporting every stream's text, end or error to `sink`. Every stream should
    /// end in `done` or `error`; the pool fails any stream that does neither.
    ///
    /// An `Err` fails every stream that has not ended.
    fn run(&mut self, batch: &Batch, sink: &mut dyn BatchSink) -> Result<(), BackendError>;
}

/// Builds a backend on a worker's thread.
pub trait BackendFactory: Send + Sync {
    /// The backend's name: each factory declares a default (`local`, `scripted`, …), and
    /// [`BackendFactoryExt::with_id`] gives it another. Metrics, [`PlanSource`] and transcripts
    /// carry it; two backends registered under one name are an error.
    ///
    /// [`PlanSource`]: crate::plan::PlanSource
    fn id(&self) -> BackendId;

    /// Builds one backend; called once per worker, and again after a worker's backend panicked
    /// or the pool's backend was swapped.
    fn build(&self) -> Result<Box<dyn InferenceBackend>, BackendError>;

    /// What the backend answers with, for the console and HUDs. Cheap: it reads what the
    /// factory already knows and never loads or asks anything.
    fn info(&self) -> BackendInfo {
        BackendInfo::default()
    }

    /// What a virtual clock charges for the backend's tokens, where it is not the clock's own
    /// rate (a remote server's, from its config); `None` keeps the clock's. Asked once per batch
    /// on the worker, so it only reads what the factory holds.
    fn throughput(&self) -> Option<Throughput> {
        None
    }

    /// Takes the configuration in force: called when the pool starts and after every reload or
    /// edit. A backend that reads settings from `hivemind.ron` (a remote server's address, the
    /// router's routes) keeps what concerns it; the others ignore it.
    fn configure(&self, config: &HivemindConfig) {
        let _ = config;
    }
}

/// What a [`BackendFactory`] says of itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendInfo {
    /// What writes the answers: a model file, a server, a transcript.
    pub source: Option<String>,
    /// The model's quantization, such as `Q4_1`, where it is known.
    pub quantization: Option<String>,
    /// Keys ([`PromptLevel::key`](crate::prompt::PromptLevel::key)) of the prompt levels whose
    /// decoded state the backend holds now, for a backend that keeps any; `None` for one that
    /// sends text.
    pub warm_levels: Option<Vec<u64>>,
    /// For a backend that routes to others: each one's state per request kind.
    pub routes: Option<Vec<crate::router::LinkStatus>>,
}

/// A [`BackendFactory`] from a closure.
pub struct FnFactory<F> {
    id: BackendId,
    build: F,
}

impl<F> FnFactory<F>
where
    F: Fn() -> Result<Box<dyn InferenceBackend>, BackendError> + Send + Sync,
{
    /// A factory for backend `id` that calls `build`.
    pub fn new(id: impl Into<BackendId>, build: F) -> Arc<Self> {
        Arc::new(FnFactory {
            id: id.into(),
            build,
        })
    }
}

impl<F> BackendFactory for FnFactory<F>
where
    F: Fn() -> Result<Box<dyn InferenceBackend>, BackendError> + Send + Sync,
{
    fn id(&self) -> BackendId {
        self.id.clone()
    }

    fn build(&self) -> Result<Box<dyn InferenceBackend>, BackendError> {
        (self.build)()
    }
}

/// Renames any [`BackendFactory`].
pub trait BackendFactoryExt {
    /// The same backend under the name `id`, to register two of one kind (a small and a big
    /// local model, say) or to match the game's own names.
    fn with_id(self, id: impl Into<BackendId>) -> Arc<dyn BackendFactory>;
}

impl<F: BackendFactory + ?Sized + 'static> BackendFactoryExt for Arc<F> {
    fn with_id(self, id: impl Into<BackendId>) -> Arc<dyn BackendFactory> {
        Arc::new(Renamed {
            id: id.into(),
            inner: self,
        })
    }
}

/// A factory under another name.
struct Renamed<F: ?Sized> {
    id: BackendId,
    inner: Arc<F>,
}

impl<F: BackendFactory + ?Sized> BackendFactory for Renamed<F> {
    fn id(&self) -> BackendId {
        self.id.clone()
    }

    fn build(&self) -> Result<Box<dyn InferenceBackend>, BackendError> {
        self.inner.build()
    }

    fn info(&self) -> BackendInfo {
        self.inner.info()
    }

    fn throughput(&self) -> Option<Throughput> {
        self.inner.throughput()
    }

    fn configure(&self, config: &HivemindConfig) {
        self.inner.configure(config);
    }
}

/// The text a stream is prompted with, for backends that send text rather than keep state.
pub fn stream_prompt(batch: &Batch, stream: usize) -> Option<String> {
    stream_prompt_text(batch, stream).map(crate::prompt::PromptText::into_string)
}

/// [`stream_prompt`] with the ranges the chat template wrote: the only ones a backend may read
/// special tokens in ([`PromptText`](crate::prompt::PromptText)).
pub fn stream_prompt_text(batch: &Batch, stream: usize) -> Option<crate::prompt::PromptText> {
    match &batch.shared {
        Some(shared) => (stream == 0).then(|| shared.prompt.prompt_text()),
        None => batch.agents.get(stream).map(|a| a.prompt.prompt_text()),
    }
}
