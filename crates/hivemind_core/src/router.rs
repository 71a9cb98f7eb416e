//! The `router` backend: a chain of other backends per request, skipping those too slow.
//!
//! It picks the chain by request kind, spotlight flag and prompt size, and stops using a
//! backend for a kind while it is too slow for that kind's budget.
//!
//! - **Routes** ([`RouterConfig::routes`]): the first route that takes a batch gives its chain of
//!   backend ids. A batch no route takes tries every backend the router holds, in order.
//! - **Fallback chain:** a stream the first backend fails before writing anything goes to the
//!   next, but only if the time left before its deadline is at least that backend's p95; after
//!   the last one the planner or the templates answer, as for any failed stream. A stream that
//!   fails after writing keeps what it wrote (the planner completes a plan). Completions name
//!   the backend that answered ([`BatchSink::hand_off`]), never the router.
//! - **Adaptive deadlines:** the router keeps each backend's latest latencies per request kind
//!   (to the first text of a plan, to the end of a line) and their p95. A backend whose p95 no
//!   longer fits the kind's budget (`deadlines.plan_ms` for plans, `deadlines.reply_ms` for
//!   replies; banter is never waited for and never skipped) is skipped for that kind, and tried
//!   again every `probe_ms`; a probe that fits makes it fit again.
//!
//! # Design
//!
//! The router does no networking and knows no model: it composes [`BackendFactory`]s through
//! the trait, builds each of its backends lazily on the worker's thread, and hands them
//! sub-batches of the streams it routes to them. Latencies are on the batch's clock: on a
//! virtual clock they come from token counts at each backend's rate
//! ([`BackendFactory::throughput`]), so a lockstep run with one worker routes the same way every
//! time. The latency windows are shared by every worker's router, behind one mutex taken once
//! per batch and stream.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::backend::{
    BackendError, BackendFactory, BackendInfo, Batch, BatchSink, Handoff, InferenceBackend,
    TokenUsage,
};
use crate::clock::Timestamp;
use crate::config::{Deadlines, HivemindConfig, RouterConfig, Throughput};
use crate::plan::{BackendId, RequestKind};

/// How one backend stands with the router for one request kind, for `hm route` and HUDs.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkStatus {
    /// The backend.
    pub backend: BackendId,
    /// The request kind.
    pub kind: RequestKind,
    /// Its p95 latency over the latest answers; `None` before the first.
    pub p95: Option<Duration>,
    /// How many latencies the p95 is over.
    pub samples: usize,
    /// The kind's budget; `None` for banter, which is never skipped.
    pub budget: Option<Duration>,
    /// Whether it is skipped for this kind (its p95 does not fit the budget), apart from probes.
    pub skipped: bool,
    /// Streams it answered (it wrote at least their first text).
    pub answered: u64,
    /// Streams it failed before writing anything, which went on down the chain.
    pub fell_through: u64,
    /// Streams it was passed over for: too slow, or too little time left.
    pub passed_over: u64,
    /// Probes sent while it was skipped.
    pub probes: u64,
}

#[derive(Default)]
struct LinkStats {
    window: VecDeque<Duration>,
    skipped: bool,
    last_try: Option<Timestamp>,
    answered: u64,
    fell_through: u64,
    passed_over: u64,
    probes: u64,
}

impl LinkStats {
    fn p95(&self) -> Option<Duration> {
        let mut sorted: Vec<Duration> = self.window.iter().copied().collect();
        sorted.sort_unstable();
        let n = sorted.len();
        // The nearest-rank p95: the smallest latency at least 95 % of the window is within.
        (n > 0).then(|| sorted[(n * 95).div_ceil(100).max(1) - 1])
    }
}

struct Settings {
    router: RouterConfig,
    deadlines: Deadlines,
}

impl Settings {
    fn budget(&self, kind: RequestKind) -> Option<Duration> {
        let d = &self.deadlines;
        match kind {
            RequestKind::Banter => None,
            RequestKind::Plan => Some(Duration::from_millis(d.plan_ms)),
            RequestKind::Dialogue => Some(Duration::from_millis(d.reply_ms.max(d.dialogue_ms))),
        }
    }
}

struct Shared {
    settings: RwLock<Settings>,
    stats: Mutex<BTreeMap<(BackendId, RequestKind), LinkStats>>,
}

impl Shared {
    fn settings(&self) -> std::sync::RwLockReadGuard<'_, Settings> {
        // Plain values that no panic leaves half-written.
        self.settings.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn with_stats<R>(
        &self,
        backend: &BackendId,
        kind: RequestKind,
        f: impl FnOnce(&mut LinkStats) -> R,
    ) -> R {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        f(stats.entry((backend.clone(), kind)).or_default())
    }

    /// Records a latency of `backend` for `kind`, and whether it fits the budget now.
    fn observe(&self, backend: &BackendId, kind: RequestKind, latency: Duration) {
        let (window, budget) = {
            let s = self.settings();
            (s.router.window.max(1), s.budget(kind))
        };
        self.with_stats(backend, kind, |stats| {
            stats.answered += 1;
            let fits = budget.is_none_or(|b| latency <= b);
            if stats.skipped && fits {
                // A probe that fits: the backend has recovered, and its old latencies are news
                // no more.
                stats.window.clear();
            }
            stats.window.push_back(latency);
            while stats.window.len() > window {
                stats.window.pop_front();
            }
            stats.skipped = match (stats.p95(), budget) {
                (Some(p95), Some(budget)) => p95 > budget,
                _ => false,
            };
        });
    }
}

/// The factory of the `router` backend. See the [module docs](self).
pub struct RouterFactory {
    id: BackendId,
    links: Vec<Arc<dyn BackendFactory>>,
    shared: Arc<Shared>,
}

impl RouterFactory {
    /// A router over `links`, in the order a batch no route takes tries them. Their ids are what
    /// routes name. It uses the default [`RouterConfig`] until it is configured.
    pub fn new(links: impl IntoIterator<Item = Arc<dyn BackendFactory>>) -> Arc<Self> {
        Arc::new(RouterFactory {
            id: BackendId::new(BackendId::ROUTER),
            links: links.into_iter().collect(),
            shared: Arc::new(Shared {
                settings: RwLock::new(Settings {
                    router: RouterConfig::default(),
                    deadlines: Deadlines::default(),
                }),
                stats: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// Each backend's state per request kind it has seen, in link order.
    pub fn status(&self) -> Vec<LinkStatus> {
        let settings = self.shared.settings();
        let stats = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut rows = Vec::new();
        for link in &self.links {
            let id = link.id();
            for ((backend, kind), s) in stats.range((id.clone(), RequestKind::Banter)..) {
                if *backend != id {
                    break;
                }
                rows.push(LinkStatus {
                    backend: backend.clone(),
                    kind: *kind,
                    p95: s.p95(),
                    samples: s.window.len(),
                    budget: settings.budget(*kind),
                    skipped: s.skipped,
                    answered: s.answered,
                    fell_through: s.fell_through,
                    passed_over: s.passed_over,
                    probes: s.probes,
                });
            }
        }
        rows
    }
}

impl BackendFactory for RouterFactory {
    fn id(&self) -> BackendId {
        self.id.clone()
    }

    fn build(&self) -> Result<Box<dyn InferenceBackend>, BackendError> {
        Ok(Box::new(Router {
            links: self.links.clone(),
            built: self.links.iter().map(|_| None).collect(),
            failed: self.links.iter().map(|_| None).collect(),
            shared: Arc::clone(&self.shared),
        }))
    }

    fn info(&self) -> BackendInfo {
        let names: Vec<String> = self.links.iter().map(|l| l.id().to_string()).collect();
        BackendInfo {
            source: Some(names.join(" → ")),
            routes: Some(self.status()),
            ..BackendInfo::default()
        }
    }

    fn configure(&self, config: &HivemindConfig) {
        {
            let mut s = self
                .shared
                .settings
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            s.router = config.router.clone();
            s.deadlines = config.deadlines;
        }
        for link in &self.links {
            link.configure(config);
        }
    }
}

/// The router on one worker: its links' backends, built when first used.
struct Router {
    links: Vec<Arc<dyn BackendFactory>>,
    built: Vec<Option<Box<dyn InferenceBackend>>>,
    /// When each link's build last failed, and why.
    failed: Vec<Option<(Instant, BackendError)>>,
    shared: Arc<Shared>,
}

/// What became of one stream on one link.
#[derive(Default)]
struct Attempt {
    wrote: bool,
    ended: bool,
    error: Option<BackendError>,
    usage: TokenUsage,
}

impl Router {
    /// The links `streams` of a batch try, by index, in order.
    fn chain(&self, batch: &Batch, streams: &[usize], spotlight: bool) -> Vec<usize> {
        let settings = self.shared.settings();
        let sized = settings
            .router
            .routes
            .iter()
            .any(|r| r.min_prompt_bytes.is_some() || r.max_prompt_bytes.is_some());
        let prompt_bytes = match &batch.shared {
            _ if !sized => 0,
            Some(shared) => shared.prompt.text().len(),
            None => streams
                .iter()
                .filter_map(|&s| batch.agents.get(s))
                .map(|a| a.prompt.text().len())
                .max()
                .unwrap_or(0),
        };
        let route = settings
            .router
            .routes
            .iter()
            .find(|r| r.takes(batch.kind, spotlight, prompt_bytes));
        match route {
            Some(route) => route
                .chain
                .iter()
                .filter_map(|name| {
                    let found = self.links.iter().position(|l| l.id().as_str() == name);
                    if found.is_none() {
                        tracing::warn!("hivemind: the router holds no backend {name:?}");
                    }
                    found
                })
                .collect(),
            None => (0..self.links.len()).collect(),
        }
    }

    /// The backend of `link`, built on first use. A build that failed is tried again only
    /// after `retry`.
    fn backend(
        &mut self,
        link: usize,
        retry: Duration,
    ) -> Result<&mut Box<dyn InferenceBackend>, BackendError> {
        let slot = &mut self.built[link];
        if slot.is_none() {
            if let Some((at, error)) = &self.failed[link]
                && at.elapsed() < retry
            {
                return Err(error.clone());
            }
            match self.links[link].build() {
                Ok(backend) => {
                    *slot = Some(backend);
                    self.failed[link] = None;
                }
                Err(error) => {
                    self.failed[link] = Some((Instant::now(), error.clone()));
                    return Err(error);
                }
            }
        }
        slot.as_mut()
            .ok_or_else(|| BackendError::Failed("the backend was not built".into()))
    }
}

impl InferenceBackend for Router {
    /// The batch's streams go their routes in two groups: the spotlight ones, then the others
    /// (with the shared prompt, the one stream is a spotlight one if any of its agents is).
    fn run(&mut self, batch: &Batch, sink: &mut dyn BatchSink) -> Result<(), BackendError> {
        let watched = |s: usize| match &batch.shared {
            Some(_) => batch.agents.iter().any(|a| a.spotlight),
            None => batch.agents.get(s).is_some_and(|a| a.spotlight),
        };
        let groups: Vec<(Vec<usize>, bool)> = [true, false]
            .into_iter()
            .map(|spotlight| {
                let group: Vec<usize> = (0..batch.streams())
                    .filter(|&s| watched(s) == spotlight)
                    .collect();
                (group, spotlight)
            })
            .filter(|(group, _)| !group.is_empty())
            .collect();
        let chains: Vec<Vec<usize>> = groups
            .iter()
            .map(|(group, spotlight)| self.chain(batch, group, *spotlight))
            .collect();
        // Both groups on one chain go together, as one batch.
        if chains.len() == 2 && chains[0] == chains[1] {
            let all: Vec<usize> = (0..batch.streams()).collect();
            self.run_group(batch, sink, &all, &chains[0]);
            return Ok(());
        }
        for ((group, _), chain) in groups.iter().zip(&chains) {
            self.run_group(batch, sink, group, chain);
        }
        Ok(())
    }
}

impl Router {
    /// Sends `group`'s streams down their chain; every one of them ends in `sink`.
    fn run_group(
        &mut self,
        batch: &Batch,
        sink: &mut dyn BatchSink,
        group: &[usize],
        chain: &[usize],
    ) {
        let shared = Arc::clone(&self.shared);
        let streams = batch.streams();
        let kind = batch.kind;
        let mut open: Vec<bool> = (0..streams).map(|s| group.contains(&s)).collect();
        let mut spent = vec![Duration::ZERO; streams];
        let mut last_error: Vec<Option<BackendError>> = vec![None; streams];
        let (probe, after_deadline) = {
            let settings = shared.settings();
            let d = &settings.deadlines;
            // A reply's deadline is for its first words; a bridge covers them and its words may
            // come until `reply_ms`, which is what a reply's p95 (to its end) is measured against.
            let after = match kind {
                RequestKind::Dialogue => d.reply_ms.saturating_sub(d.dialogue_ms),
                _ => 0,
            };
            (
                Duration::from_millis(settings.router.probe_ms),
                Duration::from_millis(after),
            )
        };
        for (position, &link) in chain.iter().enumerate() {
            let pending: Vec<usize> = (0..streams)
                .filter(|&s| open[s] && !sink.is_cancelled(s))
                .collect();
            if pending.is_empty() {
                break;
            }
            let factory = Arc::clone(&self.links[link]);
            let id = factory.id();
            let own_rate = factory.throughput();
            let rate = own_rate.or_else(|| batch.clock.throughput());

            // Skipped for being too slow, unless a probe is due.
            let now = batch.now(pending.iter().map(|&s| spent[s]).min().unwrap_or_default());
            let pending_n = pending.len();
            let (p95, skipped, due) = shared.with_stats(&id, kind, |stats| {
                let due = stats
                    .last_try
                    .is_none_or(|t| now.since(t) >= probe || now < t);
                (stats.p95(), stats.skipped, due)
            });
            let chosen: Vec<usize> = if skipped && due {
                // A probe: one stream, whatever its time, to learn whether the backend is back.
                pending.into_iter().take(1).collect()
            } else if skipped {
                Vec::new()
            } else {
                // Down the chain, only streams with time for this backend's p95 try it.
                pending
                    .iter()
                    .copied()
                    .filter(|&s| {
                        position == 0
                            || p95.is_none_or(|p95| {
                                batch.deadline(s).is_none_or(|d| {
                                    d.remaining(batch.now(spent[s])) + after_deadline >= p95
                                })
                            })
                    })
                    .collect()
            };
            let passed_over = (pending_n - chosen.len()) as u64;
            shared.with_stats(&id, kind, |stats| {
                stats.passed_over += passed_over;
                if !chosen.is_empty() {
                    stats.last_try = Some(now);
                    if skipped {
                        stats.probes += 1;
                    }
                }
            });
            if chosen.is_empty() {
                continue;
            }
            let backend = match self.backend(link, probe) {
                Ok(backend) => backend,
                Err(e) => {
                    for &s in &chosen {
                        last_error[s] = Some(e.clone());
                    }
                    let n = chosen.len() as u64;
                    shared.with_stats(&id, kind, |stats| stats.fell_through += n);
                    continue;
                }
            };
            for &s in &chosen {
                let handoff = Handoff {
                    backend: id.clone(),
                    throughput: own_rate,
                    after: spent[s],
                };
                sink.hand_off(s, &handoff);
            }
            let sub = sub_batch(batch, &chosen, &spent);
            let spent_before: Vec<Duration> = chosen.iter().map(|&s| spent[s]).collect();
            let mut link_sink = LinkSink {
                outer: sink,
                map: &chosen,
                spent: &spent_before,
                sub: &sub,
                attempts: chosen.iter().map(|_| Attempt::default()).collect(),
                shared: &shared,
                backend: &id,
                kind,
                rate,
                began: Instant::now(),
                is_virtual: batch.clock.is_virtual(),
            };
            let result = backend.run(&sub, &mut link_sink);
            let attempts = std::mem::take(&mut link_sink.attempts);
            for (attempt, &s) in attempts.into_iter().zip(&chosen) {
                if attempt.ended && attempt.error.is_none() {
                    open[s] = false;
                    continue;
                }
                let error = attempt
                    .error
                    .or_else(|| result.clone().err())
                    .unwrap_or_else(|| {
                        BackendError::Failed("the stream ended without an answer".into())
                    });
                if attempt.wrote {
                    // What it wrote stands; the planner completes the rest.
                    if !attempt.ended {
                        sink.error(s, error);
                    }
                    open[s] = false;
                    continue;
                }
                if batch.clock.is_virtual() {
                    let usage = attempt.usage;
                    spent[s] += rate.map_or(Duration::ZERO, |r| {
                        r.duration(usage.prompt_tokens, usage.generated_tokens)
                    });
                }
                last_error[s] = Some(error);
                shared.with_stats(&id, kind, |stats| stats.fell_through += 1);
            }
        }
        for s in (0..streams).filter(|&s| open[s]) {
            let error = last_error[s].take().unwrap_or_else(|| {
                BackendError::Failed("no backend of its route could answer in time".into())
            });
            sink.error(s, error);
        }
    }
}

/// The part of `batch` that goes to one link: the chosen agents' streams (or, with the shared
/// prompt, the one stream), starting after the time already spent on them.
fn sub_batch(batch: &Batch, chosen: &[usize], spent: &[Duration]) -> Batch {
    let mut sub = batch.clone();
    if batch.shared.is_none() {
        sub.agents = chosen
            .iter()
            .filter_map(|&s| batch.agents.get(s).cloned())
            .collect();
    }
    if batch.clock.is_virtual() {
        let after = chosen.iter().map(|&s| spent[s]).min().unwrap_or_default();
        sub.start = batch.start.after(after);
    }
    sub
}

/// Passes one link's output on to the router's sink, holding back a failure of a stream that
/// wrote nothing: the next link may still answer it.
struct LinkSink<'a> {
    outer: &'a mut dyn BatchSink,
    map: &'a [usize],
    /// Per stream, the time spent on it before this link.
    spent: &'a [Duration],
    /// What this link was given.
    sub: &'a Batch,
    attempts: Vec<Attempt>,
    shared: &'a Shared,
    backend: &'a BackendId,
    kind: RequestKind,
    rate: Option<Throughput>,
    began: Instant,
    is_virtual: bool,
}

impl LinkSink<'_> {
    fn latency(&self, usage: TokenUsage) -> Duration {
        match (self.is_virtual, self.rate) {
            (true, Some(rate)) => rate.duration(usage.prompt_tokens, usage.generated_tokens),
            _ => self.began.elapsed(),
        }
    }
}

impl LinkSink<'_> {
    /// `stream`'s place in the router's sink and its attempt, unless it has ended.
    fn open(&mut self, stream: usize) -> Option<(usize, &mut Attempt)> {
        let outer = *self.map.get(stream)?;
        let attempt = self.attempts.get_mut(stream).filter(|a| !a.ended)?;
        Some((outer, attempt))
    }
}

impl BatchSink for LinkSink<'_> {
    fn text(&mut self, stream: usize, text: &str, usage: TokenUsage) {
        let Some((outer, attempt)) = self.open(stream) else {
            return;
        };
        let first = !attempt.wrote;
        attempt.wrote = true;
        attempt.usage = usage;
        if first && self.kind == RequestKind::Plan {
            let latency = self.latency(usage);
            self.shared.observe(self.backend, self.kind, latency);
        }
        self.outer.text(outer, text, usage);
    }

    fn done(&mut self, stream: usize, usage: TokenUsage) {
        let Some((outer, attempt)) = self.open(stream) else {
            return;
        };
        attempt.ended = true;
        attempt.usage = usage;
        if !attempt.wrote {
            // An empty answer: the next link may still write one.
            attempt.error = Some(BackendError::Failed("the answer was empty".into()));
            return;
        }
        if attempt.wrote && self.kind != RequestKind::Plan {
            let latency = self.latency(usage);
            self.shared.observe(self.backend, self.kind, latency);
        }
        self.outer.done(outer, usage);
    }

    fn error(&mut self, stream: usize, error: BackendError) {
        let sub = self.sub;
        let Some((outer, attempt)) = self.open(stream) else {
            return;
        };
        attempt.ended = true;
        if attempt.wrote {
            self.outer.error(outer, error);
        } else {
            // Its prompt, at least, was read: on a virtual clock that time is spent.
            if attempt.usage.prompt_tokens == 0 {
                let prompt = crate::backend::stream_prompt(sub, stream).unwrap_or_default();
                attempt.usage.prompt_tokens = crate::snapshot::estimate_tokens(&prompt) as u64;
            }
            attempt.error = Some(error);
        }
    }

    fn skip_line(&mut self, stream: usize, usage: TokenUsage) -> bool {
        let Some((outer, _)) = self.open(stream) else {
            return false;
        };
        if !self.outer.skip_line(outer, usage) {
            return false;
        }
        if let Some((_, attempt)) = self.open(stream) {
            attempt.ended = true;
            attempt.usage = usage;
        }
        true
    }

    fn is_cancelled(&self, stream: usize) -> bool {
        self.map
            .get(stream)
            .is_none_or(|&outer| self.outer.is_cancelled(outer))
    }

    fn hand_off(&mut self, stream: usize, handoff: &Handoff) {
        if let Some(&outer) = self.map.get(stream) {
            let mut handoff = handoff.clone();
            handoff.after += self.spent.get(stream).copied().unwrap_or_default();
            self.outer.hand_off(outer, &handoff);
        }
    }
}

#[cfg(test)]
mod tests;
