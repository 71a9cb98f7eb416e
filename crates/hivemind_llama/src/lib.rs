//! The in-process llama.cpp inference backend for hivemind.
//!
//! ```no_run
//! use hivemind_core::config::HivemindConfig;
//! use hivemind_llama::LlamaFactory;
//!
//! let config = HivemindConfig::default();
//! // Checks the model file now; loads it on the first worker that needs it.
//! let factory = LlamaFactory::from_config(&config)?;
//! # Ok::<(), hivemind_llama::LlamaError>(())
//! ```
//!
//! Hand the factory to a [`WorkerPool`](hivemind_core::worker::WorkerPool) (or to the Bevy
//! plugin); each worker builds its own [`LlamaBackend`] from it on its own thread.
//!
//! # Design
//!
//! llama-cpp-2 states that its API is unstable, so this is the only crate of the workspace that
//! names it: everything else speaks `hivemind_core`'s backend trait.
//!
//! - **One thread, one context.** A llama context borrows its model, so a worker's
//!   [`LlamaSession`] owns both (the model behind an `Arc`, shared by every worker of a
//!   factory, loaded once). llama.cpp's process-wide backend is initialised once, in a
//!   `OnceLock`, and its logs go to `tracing`.
//! - **The prefix tree is decoded once.** The root level (rules, actions, examples) and each
//!   branch under it (a persona, or the shared layout's ensemble) are decoded the first time a
//!   batch needs them, and their key/value state is kept in memory and saved to disk, keyed
//!   by the model file and the level's hash, so the next start loads it instead. Editing a
//!   persona changes only that branch's key. Before every batch the cache is emptied and the
//!   batch's levels restored in a fixed order: a batch's output depends on the batch alone,
//!   never on what ran before it or on how many workers there are.
//! - **Continuous batching.** One sequence per stream, branching from its level's cells
//!   (a unified key/value cache shares them; nothing is copied). Prompts are prefilled in
//!   deadline order, in chunks, while streams already writing get one token per step; a
//!   stream joins the decode batch as soon as its prompt is in and leaves it when it ends or
//!   is cancelled, and the next waiting stream takes its cells.
//! - **Both layouts.** Parallel sequences (a stream per agent) and the shared prompt (one
//!   stream answers for the whole batch, in batch order); the batch says which.
//! - **Grammar on the fast path.** The grammar sampler stays out of the chain: the chain picks
//!   a token, only that token is checked, and the vocabulary is masked only on a rejection.
//! - **Nothing aborts.** Every size and id is checked before llama.cpp sees it: the one batch
//!   is allocated with exactly `n_batch` slots and refuses a token past them, sequence ids are
//!   made only through a range check, each token carries exactly one sequence id, an end of
//!   generation is never fed to an unfinished grammar, and the model path is checked before
//!   any load. A missing, truncated or foreign model file is a typed [`LlamaError`].

mod engine;
mod model;
mod prefix;
mod sample;
mod session;
pub mod testing;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hivemind_core::backend::{
    BackendError, BackendFactory, BackendInfo, Batch, BatchSink, InferenceBackend,
};
use hivemind_core::clock::Deadline;
use hivemind_core::config::{HivemindConfig, Sampling};
use hivemind_core::grammar::answer_prefix;
use hivemind_core::plan::{BackendId, RequestKind};
use hivemind_core::prompt::Fnv64;
use llama_cpp_2::model::LlamaModel;

pub use engine::tokenize_prompt;
pub use model::{ModelFile, Quantization, llama_backend, quantize};
pub use prefix::{PrefixStats, WarmLevels};
pub use sample::GrammarStats;
pub use session::{LlamaSession, RunTrace, SessionStats, StreamSpec, StreamTrace};

/// Why the local backend cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LlamaError {
    /// There is no model file at the path.
    #[error("no model file at {path}: {reason}")]
    ModelMissing {
        /// The path.
        path: PathBuf,
        /// What the file system said.
        reason: String,
    },
    /// The file is not a GGUF model.
    #[error("{path} is not a GGUF model: {reason}")]
    NotGguf {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// llama.cpp could not load the file (truncated, corrupt, or an unknown architecture).
    #[error("could not load the model {path}: {reason}")]
    LoadFailed {
        /// The path.
        path: PathBuf,
        /// What llama.cpp said.
        reason: String,
    },
    /// The file's vocabulary is one llama.cpp would stop the process on (two tokens with the
    /// same text, no tokenizer, no end-of-text token …).
    #[error("the model {path} has a broken vocabulary: {reason}")]
    BadVocabulary {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The model's vocabulary does not have the chat template's delimiters as special tokens:
    /// it was trained on another chat format.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// llama.cpp's backend did not start.
    #[error("llama.cpp did not start: {0}")]
    Backend(String),
    /// The context could not be made or used as asked.
    #[error("llama context: {0}")]
    Context(String),
    /// A decode step failed.
    #[error("decode failed: {0}")]
    Decode(String),
    /// Saving or restoring key/value state failed.
    #[error("key/value state: {0}")]
    State(String),
    /// The work does not fit the context.
    #[error("does not fit: {0}")]
    TooLarge(String),
    /// Requantizing a model failed.
    #[error("could not quantize {path}: {reason}")]
    Quantize {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl From<LlamaError> for BackendError {
    fn from(e: LlamaError) -> Self {
        match e {
            LlamaError::ModelMissing { .. }
            | LlamaError::NotGguf { .. }
            | LlamaError::BadVocabulary { .. }
            | LlamaError::ChatTemplate(_)
            | LlamaError::LoadFailed { .. } => BackendError::NoModel(e.to_string()),
            LlamaError::TooLarge(_) => BackendError::TooLarge(e.to_string()),
            _ => BackendError::Failed(e.to_string()),
        }
    }
}

/// How the local backend sizes its context and its answers.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaOptions {
    /// The GGUF file.
    pub model: PathBuf,
    /// Context size in tokens: the prefix levels plus every stream's prompt and answer.
    pub context_tokens: u32,
    /// The most tokens one `decode` call takes.
    pub batch_tokens: u32,
    /// Inference threads; `None` uses every core.
    pub threads: Option<u32>,
    /// Streams decoded together at most; more wait for a free one.
    pub max_sequences: u32,
    /// Prompt tokens added to a step while other streams are writing. Smaller keeps their
    /// tokens coming steadily; larger fills the batch faster.
    pub prefill_chunk: u32,
    /// Where decoded prefix states are saved; `None` keeps them in memory only.
    pub state_dir: Option<PathBuf>,
}

impl LlamaOptions {
    /// Options from the game's configuration: the model path (with `HIVEMIND_MODEL`
    /// honoured), context and batch sizes, threads, and one stream per batch slot. Prefix
    /// states are saved in a `prefix-state` directory beside the model. Answer lengths are not
    /// options: each batch carries the budgets its grammars were built with.
    pub fn from_config(config: &HivemindConfig) -> Self {
        let model = config.model.resolved_path();
        let state_dir = model.parent().map(|d| d.join("prefix-state"));
        LlamaOptions {
            context_tokens: config.model.context_tokens,
            batch_tokens: config.model.batch_tokens,
            threads: config.model.threads,
            max_sequences: config.batching.max_batch.clamp(1, 64) as u32,
            prefill_chunk: config.model.batch_tokens,
            state_dir,
            model,
        }
    }
}

/// Builds a [`LlamaBackend`] on each worker's thread, all sharing one loaded model.
pub struct LlamaFactory {
    file: ModelFile,
    options: LlamaOptions,
    model: Mutex<Option<Arc<LlamaModel>>>,
    warm: WarmLevels,
}

impl LlamaFactory {
    /// A factory for `options`. The model file is checked now (so a missing file is reported
    /// at start) and loaded by the first worker.
    pub fn new(options: LlamaOptions) -> Result<Arc<Self>, LlamaError> {
        let file = ModelFile::check(&options.model)?;
        Ok(Arc::new(LlamaFactory {
            file,
            options,
            model: Mutex::new(None),
            warm: WarmLevels::default(),
        }))
    }

    /// [`LlamaFactory::new`] with [`LlamaOptions::from_config`].
    pub fn from_config(config: &HivemindConfig) -> Result<Arc<Self>, LlamaError> {
        Self::new(LlamaOptions::from_config(config))
    }

    /// The checked model file.
    pub fn file(&self) -> &ModelFile {
        &self.file
    }

    /// The options.
    pub fn options(&self) -> &LlamaOptions {
        &self.options
    }

    /// The loaded model, loading it on first use.
    pub fn model(&self) -> Result<Arc<LlamaModel>, LlamaError> {
        let mut slot = self
            .model
            .lock()
            .map_err(|_| LlamaError::Backend("a thread panicked while loading the model".into()))?;
        if let Some(model) = &*slot {
            return Ok(Arc::clone(model));
        }
        let model = self.file.load()?;
        *slot = Some(Arc::clone(&model));
        Ok(model)
    }

    /// A session on the calling thread, reporting its prefix levels into
    /// [`LlamaFactory::warm_levels`].
    pub fn session(&self) -> Result<LlamaSession, LlamaError> {
        let mut session = LlamaSession::new(&self.file, self.model()?, self.options.clone())?;
        session.share_warm_levels(self.warm.clone());
        Ok(session)
    }

    /// The prefix levels the sessions of this factory hold now.
    pub fn warm_levels(&self) -> &WarmLevels {
        &self.warm
    }
}

impl BackendFactory for LlamaFactory {
    fn id(&self) -> BackendId {
        BackendId::new(BackendId::LOCAL)
    }

    fn build(&self) -> Result<Box<dyn InferenceBackend>, BackendError> {
        Ok(Box::new(LlamaBackend {
            session: self.session()?,
        }))
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            source: Some(self.file.path().display().to_string()),
            quantization: self.file.quantization().map(|q| q.tag().to_owned()),
            warm_levels: Some(self.warm.keys()),
            ..BackendInfo::default()
        }
    }
}

/// The `local` backend: a [`LlamaSession`] behind hivemind's backend trait.
pub struct LlamaBackend {
    session: LlamaSession,
}

impl LlamaBackend {
    /// The session, for its statistics.
    pub fn session(&self) -> &LlamaSession {
        &self.session
    }
}

impl InferenceBackend for LlamaBackend {
    fn run(&mut self, batch: &Batch, sink: &mut dyn BatchSink) -> Result<(), BackendError> {
        let specs = stream_specs(batch);
        self.session.run(&specs, sink).map_err(BackendError::from)
    }
}

/// The streams of `batch`: one per agent, or one for the shared prompt.
pub fn stream_specs(batch: &Batch) -> Vec<StreamSpec> {
    let per_agent = batch.budgets.answer_tokens(batch.format);
    let seed = |stream: usize| {
        let mut h = Fnv64::new();
        h.write(&batch.seed.to_le_bytes());
        h.write(&(stream as u64).to_le_bytes());
        h.finish()
    };
    // Wall-clock shedding would make a virtual clock's run depend on the machine.
    let now = batch.clock.now();
    let time_left =
        |deadline: Deadline| (!batch.clock.is_virtual()).then(|| deadline.remaining(now));
    let sampling: Sampling = batch.sampling;
    // A plan's line is sampled on its own terms; a line's whole answer is its line already.
    let say_sampling = (batch.kind == RequestKind::Plan).then_some(batch.say_sampling);
    match &batch.shared {
        Some(shared) => vec![StreamSpec {
            root: Arc::clone(&shared.prompt.root),
            branch: Arc::clone(&shared.prompt.ensemble),
            block: shared.prompt.batch.prompt_text(),
            grammar: Some(shared.grammar.clone()),
            forced: shared
                .prompt
                .order
                .first()
                .map(|&a| answer_prefix(batch.format, a))
                .unwrap_or_default(),
            deadline: batch
                .agents
                .iter()
                .map(|a| a.deadline)
                .min()
                .unwrap_or_default(),
            max_tokens: per_agent.saturating_mul(batch.agents.len().max(1) as u32),
            sampling,
            say_sampling,
            seed: seed(0),
            ignore_eog: false,
            // One stream answers for every agent: no agent's line can be left out.
            line_last: false,
            time_left: batch
                .agents
                .iter()
                .map(|a| a.deadline)
                .max()
                .and_then(time_left),
        }],
        None => batch
            .agents
            .iter()
            .enumerate()
            .map(|(i, a)| StreamSpec {
                root: Arc::clone(&a.prompt.root),
                branch: Arc::clone(&a.prompt.persona),
                block: a.prompt.agent.prompt_text(),
                grammar: Some(a.grammar.clone()),
                forced: answer_prefix(batch.format, a.agent),
                deadline: a.deadline,
                max_tokens: per_agent,
                sampling,
                say_sampling,
                seed: seed(i),
                ignore_eog: false,
                // A plan's first step is its intent (or steps); its line comes after.
                line_last: batch.kind == RequestKind::Plan,
                time_left: time_left(a.deadline),
            })
            .collect(),
    }
}
