//! `hivemind.ron`: deadlines, batching, cache, model, sampling, budgets, the clock, remote
//! servers and routes.
//!
//! Every field has a default, so a config file only names what it changes. All RON the crate
//! reads (this file, action registries, GOAP domains, templates) goes through [`parse_ron`],
//! whose [`RonError`] names the file and the line and column where parsing failed.
//!
//! Precedence, applied by the Bevy plugin: plugin fields give the defaults, the RON asset
//! overrides them when it loads or reloads, and console edits override both until the next
//! reload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::plan::{OutputFormat, RequestKind};

pub mod ranges;

/// The environment variable that overrides [`ModelConfig::path`].
pub const MODEL_ENV: &str = "HIVEMIND_MODEL";

/// RON that failed to parse, with where it failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct RonError {
    /// The file (or other origin) the text came from.
    pub origin: String,
    /// The 1-based line where the error starts.
    pub line: usize,
    /// The 1-based column where the error starts.
    pub column: usize,
    /// What went wrong.
    pub message: String,
}

/// Parses RON text into `T`. `origin` names where the text came from in errors.
///
/// `Option` fields may be written without `Some(..)`.
pub fn parse_ron<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, RonError> {
    ron::Options::default()
        .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
        .from_str(text)
        .map_err(|e| RonError {
            origin: origin.to_owned(),
            line: e.span.start.line,
            column: e.span.start.col,
            message: e.code.to_string(),
        })
}

/// Why a RON file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid RON for what it should hold.
    #[error(transparent)]
    Ron(#[from] RonError),
    /// The file parsed, but what it says is inconsistent.
    #[error("{origin}: {message}")]
    Invalid {
        /// The file (or other origin).
        origin: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads a file and hands its text, and its path as the origin for errors, to `parse`: the one
/// way every RON asset of the crate is loaded (`load_with(path, ActionRegistry::from_ron)`).
pub fn load_with<T>(
    path: &Path,
    parse: impl FnOnce(&str, &str) -> Result<T, LoadError>,
) -> Result<T, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Reads and parses a RON file.
pub fn load_ron_file<T: DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    load_with(path, |text, origin| Ok(parse_ron(text, origin)?))
}

/// The whole configuration. See the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct HivemindConfig {
    /// How long each request kind may take.
    pub deadlines: Deadlines,
    /// How jobs are queued and batched.
    pub batching: BatchingConfig,
    /// The answer cache.
    pub cache: CacheConfig,
    /// The local model.
    pub model: ModelConfig,
    /// How tokens are chosen, per request kind.
    pub sampling: SamplingConfig,
    /// Size limits for prompts, plans and lines, and the per-frame budget.
    pub budgets: Budgets,
    /// How time is measured.
    pub clock: ClockConfig,
    /// Inference servers, by the backend id each is registered under (`"remote"` for the one
    /// `hivemind_remote::RemoteFactory::new()` makes). Read by each remote backend at every
    /// batch, so a reload takes effect at once.
    pub remotes: BTreeMap<String, RemoteConfig>,
    /// Which backends the `router` backend tries, per request.
    pub router: RouterConfig,
}

impl HivemindConfig {
    /// Parses a config from RON text and checks it. `origin` names the text in errors.
    pub fn from_ron(text: &str, origin: &str) -> Result<Self, LoadError> {
        let config: HivemindConfig = parse_ron(text, origin)?;
        config.validate().map_err(|message| LoadError::Invalid {
            origin: origin.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Reads, parses and checks a config file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        load_with(path, Self::from_ron)
    }
}

/// How long each request kind may take before its fallback answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct Deadlines {
    /// Banter: the whole line, in milliseconds.
    pub banter_ms: u64,
    /// Dialogue: the first words, in milliseconds. A reply to the player whose model words
    /// cannot begin by then begins with a bridge (a short acknowledgement from the persona's
    /// templates) and the model's words follow it.
    pub dialogue_ms: u64,
    /// A reply to the player, whole: once bridged, the model's words may follow until this many
    /// milliseconds after the request; past it the line ends with what was said, or with the
    /// template if the model had said nothing. At most `dialogue_ms` turns bridges off.
    pub reply_ms: u64,
    /// Plan: the first step, in milliseconds.
    pub plan_ms: u64,
}

impl Deadlines {
    /// The deadline of `kind`.
    pub fn for_kind(&self, kind: RequestKind) -> Duration {
        Duration::from_millis(match kind {
            RequestKind::Banter => self.banter_ms,
            RequestKind::Dialogue => self.dialogue_ms,
            RequestKind::Plan => self.plan_ms,
        })
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            banter_ms: 20,
            dialogue_ms: 100,
            // The suite's replies take 483 ms at p95 on the lockstep clock, alone on the worker
            // (`./scripts/run voices`); three times that leaves room for a reply queued behind a
            // batch of plans.
            reply_ms: 1500,
            plan_ms: 500,
        }
    }
}

/// What happens when a job arrives at a full queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub enum OverflowPolicy {
    /// The arriving job is answered at once with its fallback (reason `Overflow`).
    #[default]
    RejectNew,
    /// The queued job with the latest deadline is answered with its fallback (reason
    /// `Overflow`) and the arriving job takes its place, if the arriving job's deadline is
    /// earlier; otherwise the arriving job is answered with its fallback.
    ShedLatestDeadline,
}

/// How jobs are queued and batched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct BatchingConfig {
    /// The most agents in one inference job.
    pub max_batch: usize,
    /// The most jobs waiting for a worker.
    pub queue_capacity: usize,
    /// What to do when the queue is full.
    pub overflow: OverflowPolicy,
    /// Worker threads. Each holds its own backend (for the local backend, its own context).
    pub workers: usize,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_batch: 16,
            queue_capacity: 256,
            overflow: OverflowPolicy::RejectNew,
            workers: 1,
        }
    }
}

/// The answer cache and how it buckets situations.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct CacheConfig {
    /// The most entries kept.
    pub capacity: usize,
    /// How long an entry stays valid, in seconds.
    pub ttl_secs: f32,
    /// Positions are divided by this before they become part of a key.
    pub position_quantum: u32,
    /// Health fractions below this are "low".
    pub hp_low: f32,
    /// Health fractions at or above this are "high"; between the two is "mid".
    pub hp_high: f32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: 1024,
            ttl_secs: 30.0,
            position_quantum: 4,
            hp_low: 0.34,
            hp_high: 0.67,
        }
    }
}

/// How the prompt for a batch of agents is laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub enum PromptLayout {
    /// One sequence per agent, each branching from its persona's prefix.
    #[default]
    ParallelSequences,
    /// One prompt for the whole batch; one sequence answers for every agent, in batch order.
    SharedPrompt,
}

/// What a model writes for a plan request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub enum PlanFormat {
    /// The model writes the steps: `{"agent":ID,"steps":[...]}`. For a model big enough to plan
    /// well by itself.
    Free,
    /// The model picks one of a few scored intents and says a line; the game's planner writes
    /// the steps: `{"agent":ID,"intent":K,"say":"…"}`. The default: a small model's plans make
    /// sense this way (see the README's table of modes). A game whose planner offers no intents
    /// gets free plans.
    #[default]
    Guided,
}

/// How a guided answer names the option it picks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub enum IntentStyle {
    /// By its label, as the prompt lists it: `"intent":"heal"`. The choice is made over the
    /// options' words, so a small model's bias toward a place in the list (the first, or the
    /// worked example's) does not decide it.
    #[default]
    Name,
    /// By its number in the prompt's list: `"intent":2`.
    Number,
}

/// The local model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct ModelConfig {
    /// The GGUF file. [`MODEL_ENV`] overrides it; see [`ModelConfig::resolved_path`].
    pub path: Option<String>,
    /// Context size in tokens, shared by every sequence of a batch.
    pub context_tokens: u32,
    /// The most tokens handed to one `decode` call.
    pub batch_tokens: u32,
    /// Inference threads; `None` lets the backend choose.
    pub threads: Option<u32>,
    /// The prompt layout.
    pub layout: PromptLayout,
    /// What the model writes for plans.
    pub plan_format: PlanFormat,
    /// How a guided answer names its choice.
    pub intents: IntentStyle,
    /// Whether a model's plan is checked step by step against the game's rules (its planner's
    /// preconditions), and replaced from the first step that fails by the planner's own steps.
    pub repair: bool,
}

impl ModelConfig {
    /// Where the default model lives, relative to the working directory.
    pub const DEFAULT_PATH: &'static str = "models/SmolLM2-135M-Instruct.Q4_0.gguf";

    /// The model file to load: [`MODEL_ENV`] if set and not empty, else `path`, else
    /// [`ModelConfig::DEFAULT_PATH`].
    pub fn resolved_path(&self) -> PathBuf {
        match std::env::var(MODEL_ENV) {
            Ok(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(self.path.as_deref().unwrap_or(Self::DEFAULT_PATH)),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: None,
            context_tokens: 8192,
            batch_tokens: 512,
            threads: None,
            layout: PromptLayout::default(),
            plan_format: PlanFormat::default(),
            intents: IntentStyle::default(),
            repair: true,
        }
    }
}

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub enum Sampling {
    /// Always the most likely token allowed by the grammar.
    Greedy,
    /// Seeded random sampling.
    Random {
        /// Softmax temperature; higher is more varied.
        temperature: f32,
        /// Keep only the `top_k` most likely tokens (0 keeps all).
        top_k: u32,
        /// Keep the smallest set of tokens whose probability reaches `top_p`.
        top_p: f32,
        /// Drop tokens less likely than `min_p` times the most likely one (0 keeps all).
        #[serde(default)]
        min_p: f32,
        /// Divide the logit of a token the line already used by this (1 repeats freely): a
        /// small model's lines otherwise loop on their own words.
        #[serde(default = "no_penalty")]
        repeat_penalty: f32,
    },
}

fn no_penalty() -> f32 {
    1.0
}

/// Sampling per request kind, and the seed that makes random sampling repeatable.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct SamplingConfig {
    /// Banter written in idle time.
    pub banter: Sampling,
    /// Dialogue.
    pub dialogue: Sampling,
    /// Plans: the steps, or a guided answer's choice.
    pub plan: Sampling,
    /// A plan's line (its `say` text): the choice is made by `plan`, the words by this, so a
    /// greedy choice still gets varied lines. Seeded like the rest, so lockstep runs repeat.
    pub say: Sampling,
    /// The seed; a job's sampler is seeded from it and the job's agents, so runs repeat.
    pub seed: u64,
}

impl SamplingConfig {
    /// The sampling of `kind`.
    pub fn for_kind(&self, kind: RequestKind) -> Sampling {
        match kind {
            RequestKind::Banter => self.banter,
            RequestKind::Dialogue => self.dialogue,
            RequestKind::Plan => self.plan,
        }
    }
}

impl Default for SamplingConfig {
    fn default() -> Self {
        let lively = Sampling::Random {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.0,
            repeat_penalty: 1.0,
        };
        SamplingConfig {
            banter: lively,
            dialogue: lively,
            plan: Sampling::Greedy,
            say: Sampling::Random {
                temperature: 0.6,
                top_k: 40,
                top_p: 0.95,
                min_p: 0.1,
                repeat_penalty: 1.3,
            },
            seed: 0x5eed,
        }
    }
}

/// Size limits and the per-frame budget.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct Budgets {
    /// The most tokens an agent's snapshot may take in a prompt.
    pub snapshot_tokens: usize,
    /// The most tokens of conversation history in a dialogue prompt.
    pub conversation_tokens: usize,
    /// The most steps in a model-written plan.
    pub max_plan_steps: usize,
    /// The most characters in a model-written line.
    pub max_say_chars: usize,
    /// How long the plugin's drain system may read worker events per frame, in milliseconds.
    pub drain_ms: f32,
}

impl Budgets {
    /// The most tokens one agent's answer in `format` may take: its JSON, and its words at about
    /// two characters a token.
    pub fn answer_tokens(&self, format: OutputFormat) -> u32 {
        let say = u32::try_from(self.max_say_chars / 2).unwrap_or(u32::MAX);
        let steps = u32::try_from(self.max_plan_steps).unwrap_or(u32::MAX);
        match format {
            OutputFormat::FreePlan => steps.saturating_mul(12 + say / 2).saturating_add(24),
            OutputFormat::Guided | OutputFormat::Line => say.saturating_add(16),
        }
    }
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            snapshot_tokens: 80,
            conversation_tokens: 128,
            max_plan_steps: 3,
            max_say_chars: 80,
            drain_ms: 0.25,
        }
    }
}

/// Which clock measures deadlines. See [`Clock`](crate::clock::Clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub enum ClockMode {
    /// Wall time while the game runs.
    #[default]
    RealTime,
    /// Virtual time computed from token counts; runs repeat exactly.
    Lockstep,
}

/// The clock's mode and the throughput lockstep mode assumes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct ClockConfig {
    /// Real-time or lockstep.
    pub mode: ClockMode,
    /// The throughput lockstep mode charges jobs at.
    pub throughput: Throughput,
}

/// Tokens per second, for turning a job's token counts into virtual time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct Throughput {
    /// Prompt tokens processed per second.
    pub prompt_tokens_per_sec: f64,
    /// Tokens generated per second, per sequence.
    pub generated_tokens_per_sec: f64,
}

impl Throughput {
    /// The virtual time to process `prompt_tokens` and then generate `generated_tokens`.
    pub fn duration(&self, prompt_tokens: u64, generated_tokens: u64) -> Duration {
        let secs = prompt_tokens as f64 / self.prompt_tokens_per_sec
            + generated_tokens as f64 / self.generated_tokens_per_sec;
        // Rounded to whole microseconds so that float noise cannot reorder events.
        Duration::from_micros((secs * 1e6).round() as u64)
    }
}

impl Default for Throughput {
    fn default() -> Self {
        // The default model's single-sequence rates on two cores, as the workspace builds it
        // (llama.cpp optimised, our sampler not): `cargo run --features llama --example
        // throughput`, medians of 7 runs, 600–605 and 90–92 tok/s over two invocations.
        Throughput {
            prompt_tokens_per_sec: 600.0,
            generated_tokens_per_sec: 90.0,
        }
    }
}

/// How a server takes constrained output, and which of its endpoints is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub enum Dialect {
    /// llama.cpp's `llama-server`: the native `/completion` endpoint with the prompt's exact
    /// text, the batch's GBNF in `grammar`, `cache_prompt` and a slot per persona.
    #[default]
    LlamaServer,
    /// vLLM: `/v1/completions` with the GBNF in `structured_outputs.grammar`.
    Vllm,
    /// SGLang: `/v1/completions` with the GBNF in `ebnf`.
    Sglang,
    /// Ollama: `/v1/chat/completions` with a JSON schema of the answer in `response_format`.
    Ollama,
    /// OpenAI and servers that take only its fields: `/v1/chat/completions` with a strict JSON
    /// schema of the answer in `response_format`.
    OpenAi,
}

/// One inference server speaking the OpenAI-compatible API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct RemoteConfig {
    /// The server's base URL, such as `http://127.0.0.1:8080`; the dialect adds the path.
    pub url: String,
    /// The model name sent with each request; empty sends none (llama-server serves one model).
    pub model: String,
    /// The environment variable holding the API key, sent as `Authorization: Bearer …`. The key
    /// itself never appears in a config file.
    pub api_key_env: Option<String>,
    /// Which fields the server takes.
    pub dialect: Dialect,
    /// The most HTTP requests in flight at once from one worker; a batch's agents beyond it wait
    /// for a free one, earliest deadline first.
    pub max_concurrent: usize,
    /// How long connecting may take, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long the server may stay silent (before its first byte, or between two events), in
    /// milliseconds.
    pub read_timeout_ms: u64,
    /// What the lockstep clock charges for this server's tokens.
    pub throughput: Throughput,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            url: "http://127.0.0.1:8080".into(),
            model: String::new(),
            api_key_env: None,
            dialect: Dialect::LlamaServer,
            max_concurrent: 16,
            connect_timeout_ms: 1000,
            read_timeout_ms: 5000,
            throughput: Throughput::default(),
        }
    }
}

impl RemoteConfig {
    /// A server at `url`, otherwise the defaults.
    pub fn at(url: impl Into<String>) -> Self {
        RemoteConfig {
            url: url.into(),
            ..RemoteConfig::default()
        }
    }
}

/// Which backends the `router` backend tries, and when it stops trying one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct RouterConfig {
    /// The routes, first match wins. A request no route matches tries every backend the router
    /// holds, in the order it was given them.
    pub routes: Vec<Route>,
    /// How often a backend skipped for being too slow is tried again, in milliseconds (on the
    /// pool's clock).
    pub probe_ms: u64,
    /// How many of a backend's latest answers per request kind its p95 is taken over.
    pub window: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            routes: Vec::new(),
            probe_ms: 5000,
            window: 20,
        }
    }
}

/// A route: which requests it takes, and the backends they try, in order. The planner or the
/// templates answer after the last one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct Route {
    /// The request kind it takes; `None` takes every kind.
    pub kind: Option<RequestKind>,
    /// `Some(true)` takes only spotlight requests, `Some(false)` only the others.
    pub spotlight: Option<bool>,
    /// Takes only prompts of at least this many bytes (the largest of the batch's).
    pub min_prompt_bytes: Option<usize>,
    /// Takes only prompts of at most this many bytes.
    pub max_prompt_bytes: Option<usize>,
    /// Backend ids, tried in this order while the deadline allows.
    pub chain: Vec<String>,
}

impl Route {
    /// Whether the route takes a batch of `kind`, with the spotlight flag `spotlight`, whose
    /// largest prompt is `prompt_bytes` long.
    pub fn takes(&self, kind: RequestKind, spotlight: bool, prompt_bytes: usize) -> bool {
        self.kind.is_none_or(|k| k == kind)
            && self.spotlight.is_none_or(|s| s == spotlight)
            && self.min_prompt_bytes.is_none_or(|m| prompt_bytes >= m)
            && self.max_prompt_bytes.is_none_or(|m| prompt_bytes <= m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_hold_the_documented_deadlines() {
        let d = HivemindConfig::default().deadlines;
        assert_eq!(d.for_kind(RequestKind::Banter), Duration::from_millis(20));
        assert_eq!(
            d.for_kind(RequestKind::Dialogue),
            Duration::from_millis(100)
        );
        assert_eq!(d.for_kind(RequestKind::Plan), Duration::from_millis(500));
        assert_eq!(HivemindConfig::default().validate(), Ok(()));
    }

    #[test]
    fn shipped_config_parses_and_round_trips() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/hivemind.ron");
        let config = HivemindConfig::load(Path::new(path)).unwrap();
        let again: HivemindConfig = parse_ron(
            &ron::ser::to_string_pretty(&config, ron::ser::PrettyConfig::default()).unwrap(),
            "round trip",
        )
        .unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn a_partial_file_overrides_only_what_it_names() {
        let config = HivemindConfig::from_ron(
            "(deadlines: (plan_ms: 250), model: (path: \"m.gguf\"))",
            "t",
        )
        .unwrap();
        assert_eq!(config.deadlines.plan_ms, 250);
        assert_eq!(config.deadlines.dialogue_ms, 100);
        assert_eq!(config.model.path.as_deref(), Some("m.gguf"));
        assert_eq!(config.batching, BatchingConfig::default());
    }

    #[test]
    fn errors_name_the_file_line_and_column() {
        let err =
            HivemindConfig::from_ron("(\n  deadlines: (plan_ms: \"soon\"),\n)", "hivemind.ron")
                .unwrap_err();
        let LoadError::Ron(ron) = &err else {
            panic!("expected a RON error, got {err}")
        };
        assert_eq!((ron.origin.as_str(), ron.line), ("hivemind.ron", 2));
        assert!(err.to_string().starts_with("hivemind.ron:2:"), "{err}");

        let err = HivemindConfig::from_ron("(deadlnes: ())", "typo.ron").unwrap_err();
        assert!(err.to_string().contains("deadlnes"), "{err}");
    }

    #[test]
    fn nonsense_values_are_rejected_with_the_field_named() {
        let err = HivemindConfig::from_ron("(batching: (max_batch: 0))", "h.ron").unwrap_err();
        assert!(matches!(err, LoadError::Invalid { .. }));
        assert!(err.to_string().contains("max_batch"), "{err}");
        let err = HivemindConfig::from_ron(
            "(sampling: (plan: Random(temperature: 0.0, top_k: 1, top_p: 1.0)))",
            "h.ron",
        )
        .unwrap_err();
        assert!(err.to_string().contains("sampling.plan"), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_it() {
        let err = HivemindConfig::load(Path::new("/no/such/hivemind.ron")).unwrap_err();
        assert!(matches!(err, LoadError::Io { .. }));
        assert!(err.to_string().contains("/no/such/hivemind.ron"));
    }

    #[test]
    fn remotes_and_routes_parse_and_are_checked() {
        let config = HivemindConfig::from_ron(
            r#"(
                remotes: { "big": (url: "http://10.0.0.2:8000", dialect: Vllm, model: "m") },
                router: (routes: [(kind: Dialogue, spotlight: true, chain: ["big", "local"])]),
            )"#,
            "h.ron",
        )
        .unwrap();
        assert_eq!(config.remotes["big"].dialect, Dialect::Vllm);
        assert_eq!(config.remotes["big"].max_concurrent, 16);
        let route = &config.router.routes[0];
        assert!(route.takes(RequestKind::Dialogue, true, 100));
        assert!(!route.takes(RequestKind::Dialogue, false, 100));
        assert!(!route.takes(RequestKind::Plan, true, 100));

        let err = HivemindConfig::from_ron(r#"(remotes: { "r": (url: "10.0.0.2") })"#, "h.ron")
            .unwrap_err();
        assert!(err.to_string().contains("remotes.r.url"), "{err}");
        let err =
            HivemindConfig::from_ron("(router: (routes: [(chain: [])]))", "h.ron").unwrap_err();
        assert!(err.to_string().contains("router.routes[0].chain"), "{err}");
    }

    #[test]
    fn throughput_turns_tokens_into_time() {
        let t = Throughput {
            prompt_tokens_per_sec: 100.0,
            generated_tokens_per_sec: 50.0,
        };
        assert_eq!(t.duration(100, 0), Duration::from_secs(1));
        assert_eq!(t.duration(10, 5), Duration::from_millis(200));
    }
}
