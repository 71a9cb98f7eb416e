//! The inference backend for OpenAI-compatible servers: llama.cpp's `llama-server`, vLLM,
//! SGLang, Ollama and OpenAI.
//!
//! ```
//! use hivemind_core::backend::BackendFactory;
//! use hivemind_core::config::{Dialect, HivemindConfig};
//! use hivemind_remote::RemoteFactory;
//!
//! // The game registers it (`HivemindPlugin::with_backend(RemoteFactory::new())`), and
//! // hivemind.ron says where the server is:
//! let config: HivemindConfig = hivemind_core::config::parse_ron(
//!     r#"(remotes: { "remote": (url: "http://10.0.0.5:8000", dialect: Vllm, model: "smol") })"#,
//!     "hivemind.ron",
//! )
//! .unwrap();
//! let remote = RemoteFactory::new();
//! remote.configure(&config);
//! assert_eq!(remote.remote().dialect, Dialect::Vllm);
//! ```
//!
//! A server's settings ([`RemoteConfig`]) live in `hivemind.ron` under `remotes`, keyed by the
//! backend's id, so a game can run two (`RemoteFactory::named("big")`); they are read at every
//! batch, so a reload takes effect at once. The API key is read from the environment variable
//! the settings name, never from a file.
//!
//! # Design
//!
//! A batch's agents each get one HTTP request (or, with the shared prompt, the batch one),
//! earliest deadline first, up to `max_concurrent` in flight: the server's continuous batching
//! and prompt cache do the work, and llama-server is asked to keep each persona in one slot.
//! Every request streams on a thread of its own with a timeout on each read of the socket, and
//! the worker's thread only moves what they report to the batch's sink, so one slow or silent
//! server never holds up the other agents. A cancelled agent's request is dropped at its next
//! read, which closes the connection and stops the server's work on it.
//!
//! What a server is sent depends on its [`Dialect`] (see [`dialect`]): the batch's GBNF where it
//! takes one, a JSON schema of the answer where it takes only that. Either way the text goes
//! through the core stream parser and the registry's checks, exactly as the local model's does,
//! so steps, intents and words stream the same way. Each failure is a [`RemoteError`] and ends
//! its stream once: the pool answers with the planner or the templates, keeping any steps that
//! arrived before it.
//!
//! On a lockstep clock a server's tokens are charged at the `throughput` its settings give
//! ([`BackendFactory::throughput`]); the token counts are the server's own where it reports them.

mod client;
pub mod dialect;
pub mod sse;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use hivemind_core::backend::{
    BackendError, BackendFactory, BackendInfo, Batch, BatchSink, InferenceBackend,
};
use hivemind_core::config::{Budgets, HivemindConfig, IntentStyle, Throughput};
pub use hivemind_core::config::{Dialect, RemoteConfig};
use hivemind_core::plan::{BackendId, OutputFormat};
use hivemind_core::prompt::ChatTemplate;

pub use client::RemoteError;
use client::{Call, Report, exchange};
use dialect::{RequestShape, request, takes_shared_prompt};

/// What a remote backend uses now: its server's settings.
#[derive(Clone, Debug, PartialEq)]
struct Settings {
    remote: RemoteConfig,
    intents: IntentStyle,
}

impl Settings {
    fn new(remote: RemoteConfig, config: &HivemindConfig) -> Self {
        Settings {
            remote,
            intents: config.model.intents,
        }
    }
}

/// The most tokens one agent's answer in `format` may take from a server, under the budgets
/// its batch was built with.
fn answer_tokens(budgets: &Budgets, format: OutputFormat) -> u32 {
    // The local backend decodes an answer's fixed start (`{"agent":7,"intent":`) with the
    // prompt, and samples its line apart (`sampling.say`); a server writes the start itself,
    // and greedily, so a line may run a character a token up to the grammar's limit.
    let say = u32::try_from(budgets.max_say_chars).unwrap_or(u32::MAX);
    budgets
        .answer_tokens(format)
        .saturating_add(say)
        .saturating_add(24)
}

/// The factory of a remote backend. See the [crate docs](crate).
pub struct RemoteFactory {
    id: BackendId,
    defaults: RemoteConfig,
    chat: ChatTemplate,
    slots: usize,
    settings: Arc<RwLock<Settings>>,
}

impl RemoteFactory {
    /// The backend `remote`, on the server `hivemind.ron` names under `remotes: { "remote": … }`
    /// (until it does, one at `http://127.0.0.1:8080` speaking llama-server's dialect).
    pub fn new() -> Arc<Self> {
        Self::named(BackendId::REMOTE, RemoteConfig::default())
    }

    /// A remote backend named `id`, on `remote` until `hivemind.ron` gives settings for `id`.
    pub fn named(id: impl Into<BackendId>, remote: RemoteConfig) -> Arc<Self> {
        Arc::new(Self::build_factory(
            id.into(),
            remote,
            ChatTemplate::chatml(),
            0,
        ))
    }

    /// The same backend writing its prompts in `chat`'s format (chat dialects split prompts
    /// into messages by it) and spreading personas over `slots` llama-server slots (0 lets the
    /// server choose).
    pub fn with_prompt_format(&self, chat: ChatTemplate, slots: usize) -> Arc<Self> {
        Arc::new(Self::build_factory(
            self.id.clone(),
            self.defaults.clone(),
            chat,
            slots,
        ))
    }

    fn build_factory(
        id: BackendId,
        remote: RemoteConfig,
        chat: ChatTemplate,
        slots: usize,
    ) -> Self {
        let settings = Settings::new(remote.clone(), &HivemindConfig::default());
        RemoteFactory {
            id,
            defaults: remote,
            chat,
            slots,
            settings: Arc::new(RwLock::new(settings)),
        }
    }

    /// The server settings in use.
    pub fn remote(&self) -> RemoteConfig {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .remote
            .clone()
    }
}

impl BackendFactory for RemoteFactory {
    fn id(&self) -> BackendId {
        self.id.clone()
    }

    fn build(&self) -> Result<Box<dyn InferenceBackend>, BackendError> {
        Ok(Box::new(RemoteBackend {
            settings: Arc::clone(&self.settings),
            chat: self.chat.clone(),
            slots: self.slots,
            agent: None,
            live: Arc::new(AtomicUsize::new(0)),
        }))
    }

    fn info(&self) -> BackendInfo {
        let remote = self.remote();
        BackendInfo {
            source: Some(format!("{} ({:?})", remote.url, remote.dialect)),
            ..BackendInfo::default()
        }
    }

    fn throughput(&self) -> Option<Throughput> {
        Some(
            self.settings
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .remote
                .throughput,
        )
    }

    fn configure(&self, config: &HivemindConfig) {
        let remote = config
            .remotes
            .get(self.id.as_str())
            .cloned()
            .unwrap_or_else(|| self.defaults.clone());
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Settings::new(remote, config);
    }
}

/// A remote backend on one worker. See the [crate docs](crate).
pub struct RemoteBackend {
    settings: Arc<RwLock<Settings>>,
    chat: ChatTemplate,
    slots: usize,
    /// The HTTP agent (its connection pool) and the settings it was made for.
    agent: Option<(RemoteConfig, ureq::Agent)>,
    /// Request threads still running, including those of requests dropped but not yet closed:
    /// with them, never more than `max_concurrent` connections are open.
    live: Arc<AtomicUsize>,
}

impl RemoteBackend {
    fn agent(&mut self, remote: &RemoteConfig) -> ureq::Agent {
        if let Some((made_for, agent)) = &self.agent
            && made_for == remote
        {
            return agent.clone();
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_millis(remote.connect_timeout_ms))
            .timeout_read(Duration::from_millis(remote.read_timeout_ms))
            .timeout_write(Duration::from_millis(remote.read_timeout_ms))
            .max_idle_connections_per_host(remote.max_concurrent)
            .build();
        self.agent = Some((remote.clone(), agent.clone()));
        agent
    }
}

/// A stream's state in [`RemoteBackend::run`].
struct Flight {
    cancel: Arc<AtomicBool>,
    /// When the server was last heard from (or the request sent).
    heard: Instant,
    /// Whether it has answered at all; until then connecting counts too.
    answered: bool,
    wrote: bool,
}

impl InferenceBackend for RemoteBackend {
    fn run(&mut self, batch: &Batch, sink: &mut dyn BatchSink) -> Result<(), BackendError> {
        let settings = self
            .settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let remote = &settings.remote;
        if batch.shared.is_some() && !takes_shared_prompt(remote.dialect) {
            return Err(BackendError::Failed(format!(
                "the shared prompt needs a server that takes a grammar; {:?} takes a JSON schema \
                 of one agent's answer (use the parallel-sequences layout)",
                remote.dialect
            )));
        }
        let api_key = match &remote.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                BackendError::Failed(format!("the API key variable {var} is not set"))
            })?),
            None => None,
        };
        let agent = self.agent(remote);
        let shape = RequestShape {
            remote,
            max_tokens: answer_tokens(&batch.budgets, batch.format),
            intents: settings.intents,
            chat: &self.chat,
            slots: self.slots,
        };
        let read_timeout = Duration::from_millis(remote.read_timeout_ms);
        let connect_timeout = Duration::from_millis(remote.connect_timeout_ms);
        let max = remote.max_concurrent.max(1);
        // A 429's wait is honoured only while the stream's deadline, counted from now in wall
        // time, allows it, and at most twice.
        let started = Instant::now();
        let due: Vec<Option<Instant>> = (0..batch.streams())
            .map(|s| {
                let left = batch.deadline(s)?.remaining(batch.now(Duration::ZERO));
                started.checked_add(left)
            })
            .collect();
        let mut retries = vec![0u8; batch.streams()];

        // Earliest deadline first; a stream waiting out a 429 goes back in with its time.
        let mut order: Vec<usize> = (0..batch.streams()).collect();
        order.sort_by_key(|&s| batch.deadline(s));
        let mut waiting: VecDeque<(usize, Option<Instant>)> =
            order.into_iter().map(|s| (s, None)).collect();
        let mut flights: Vec<Option<Flight>> = (0..batch.streams()).map(|_| None).collect();
        let (tx, rx) = crossbeam_channel::unbounded::<Report>();
        loop {
            waiting.retain(|(s, _)| !sink.is_cancelled(*s));
            let in_flight = flights.iter().flatten().count();
            let now = Instant::now();
            let ready = waiting
                .iter()
                .position(|(_, not_before)| not_before.is_none_or(|t| t <= now));
            let room = in_flight < max && self.live.load(Ordering::Acquire) < max;
            if let Some(i) = ready.filter(|_| room) {
                let Some((stream, _)) = waiting.remove(i) else {
                    continue;
                };
                if sink.is_cancelled(stream) {
                    continue;
                }
                let Some(request) = request(&shape, batch, stream) else {
                    sink.error(stream, BackendError::Failed("no such stream".into()));
                    continue;
                };
                let call = Call {
                    stream,
                    url: remote.url.clone(),
                    api_key: api_key.clone(),
                    dialect: remote.dialect,
                    request,
                    read_timeout,
                };
                let cancel = Arc::new(AtomicBool::new(false));
                flights[stream] = Some(Flight {
                    cancel: Arc::clone(&cancel),
                    heard: now,
                    answered: false,
                    wrote: false,
                });
                let (agent, tx, live) = (agent.clone(), tx.clone(), Arc::clone(&self.live));
                live.fetch_add(1, Ordering::AcqRel);
                let spawned = std::thread::Builder::new()
                    .name("hivemind-remote".into())
                    .spawn(move || exchange(&agent, &call, &cancel, &tx, &live));
                if let Err(e) = spawned {
                    self.live.fetch_sub(1, Ordering::AcqRel);
                    flights[stream] = None;
                    sink.error(stream, BackendError::Failed(format!("no thread: {e}")));
                }
                continue;
            }
            if in_flight == 0 && waiting.is_empty() {
                return Ok(());
            }
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(Report::Alive(stream)) => {
                    if let Some(f) = flights.get_mut(stream).and_then(Option::as_mut) {
                        f.heard = Instant::now();
                        f.answered = true;
                    }
                }
                Ok(Report::Text(stream, text, usage)) => {
                    if let Some(f) = flights.get_mut(stream).and_then(Option::as_mut) {
                        f.heard = Instant::now();
                        f.wrote = true;
                        sink.text(stream, &text, usage);
                    }
                }
                Ok(Report::Done(stream, usage)) => {
                    if flights.get_mut(stream).and_then(Option::take).is_some() {
                        sink.done(stream, usage);
                    }
                }
                Ok(Report::Failed(stream, error)) => {
                    let Some(flight) = flights.get_mut(stream).and_then(Option::take) else {
                        continue;
                    };
                    if let RemoteError::RateLimited {
                        retry_after: Some(wait),
                        ..
                    } = &error
                        && !flight.wrote
                        && retries[stream] < 2
                    {
                        let at = Instant::now() + (*wait).max(Duration::from_millis(50));
                        if due
                            .get(stream)
                            .copied()
                            .flatten()
                            .is_some_and(|due| at < due)
                        {
                            retries[stream] += 1;
                            waiting.push_back((stream, Some(at)));
                            continue;
                        }
                    }
                    sink.error(stream, error.into());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(BackendError::Failed("the request threads are gone".into()));
                }
            }
            // Drop what nobody wants any more, and what the server stopped answering.
            for (stream, slot) in flights.iter_mut().enumerate() {
                let Some(flight) = slot else { continue };
                let cancelled = sink.is_cancelled(stream);
                let patience = if flight.answered {
                    read_timeout
                } else {
                    connect_timeout + read_timeout
                };
                let silent = flight.heard.elapsed() > patience + Duration::from_millis(250);
                if cancelled || silent {
                    flight.cancel.store(true, Ordering::Release);
                    *slot = None;
                    if silent && !cancelled {
                        sink.error(stream, RemoteError::Silent(read_timeout).into());
                    }
                }
            }
        }
    }
}
