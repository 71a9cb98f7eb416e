//! Latency histograms and counters for `hm perf`, the console and Bevy diagnostics.
//!
//! [`Metrics`] holds everything the runtime measures about its answers: how long a job waited in
//! the queue, how long the first step (plans) or first words (lines) took, and how long the whole
//! answer took, each as a [`Histogram`] per [`RequestKind`] and [`LatencySource`]; tokens per
//! second; batch sizes; the cache hit rate; answers by [`SourceLabel`]; fallbacks by
//! [`FallbackReason`]; and repairs. Its [`Display`](fmt::Display) is the table `hm perf` prints.
//!
//! # Design
//!
//! Recording happens on the game's main thread, once per event, so it must cost about as much as
//! a few additions. A [`Histogram`] therefore has a fixed set of log-linear buckets (the layout
//! of HDR histograms: every power of two of microseconds split into 16 equal sub-buckets), so a
//! record is a `leading_zeros`, a shift and an increment, memory is fixed, and two histograms
//! merge by adding counts. The price is a bounded relative error, documented on [`Histogram`].
//! Every key is an enum, so every table is a fixed array indexed by it rather than a map; a
//! histogram allocates its buckets on its first record and never again, so steady-state
//! recording does not allocate at all.
//!
//! Latency is keyed by ([`RequestKind`], [`LatencySource`]). The source is the backend for a
//! model's answer and `cache`, `goap` or `template` for the others, because the fallback paths
//! have latencies too and `hm perf` should show that they are as instant as they are meant to be.
//! Whether a model's answer was repaired does not split its latency (the repair is a GOAP pass
//! after decoding); it is counted by [`Metrics::record_answer`] under [`SourceLabel`] instead.

use std::fmt;
use std::time::Duration;

use crate::plan::{BackendId, FallbackReason, PlanSource, RequestKind};

mod histogram;

use histogram::nearest_rank;
pub use histogram::{Histogram, HumanDuration};

const KINDS: usize = RequestKind::ALL.len();
const REASONS: usize = FallbackReason::ALL.len();

/// How many of the most recent [`Metrics::record_tokens`] calls the recent token rate covers.
pub const RECENT_TOKEN_RECORDS: usize = 64;

/// How many full-answer latencies per kind [`Metrics::recent_full`] keeps for a live plot.
pub const RECENT_LATENCY_SAMPLES: usize = 256;

/// Batch sizes below this are counted exactly by [`BatchStats`]; larger ones share one bucket.
pub const BATCH_SIZES_TRACKED: usize = 64;

/// Where an answer's latency was measured: a backend, or one of the fallback paths.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LatencySource {
    /// A model's answer from this backend, repaired or not.
    Backend(BackendId),
    /// A cached answer re-bound to the current snapshot.
    Cache,
    /// The GOAP planner.
    Goap,
    /// A dialogue template.
    Template,
}

impl LatencySource {
    /// The fallback paths, in the order tables list them after the backends.
    pub const FALLBACKS: [LatencySource; 3] = [
        LatencySource::Cache,
        LatencySource::Goap,
        LatencySource::Template,
    ];

    /// The backend's name, or `cache`, `goap` or `template`.
    pub fn label(&self) -> &str {
        match self {
            LatencySource::Backend(backend) => backend.as_str(),
            LatencySource::Cache => "cache",
            LatencySource::Goap => "goap",
            LatencySource::Template => "template",
        }
    }
}

impl From<BackendId> for LatencySource {
    fn from(backend: BackendId) -> Self {
        LatencySource::Backend(backend)
    }
}

impl From<&BackendId> for LatencySource {
    fn from(backend: &BackendId) -> Self {
        LatencySource::Backend(backend.clone())
    }
}

impl From<&PlanSource> for LatencySource {
    fn from(source: &PlanSource) -> Self {
        match source {
            PlanSource::Llm { backend, .. } => LatencySource::Backend(backend.clone()),
            PlanSource::Cache => LatencySource::Cache,
            PlanSource::Goap => LatencySource::Goap,
            PlanSource::Template => LatencySource::Template,
        }
    }
}

impl fmt::Display for LatencySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.label())
    }
}

/// Where an answer came from, at the grain of [`PlanSource::label`]: answers are counted by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceLabel {
    /// A model wrote it, unrepaired.
    Llm,
    /// A model wrote it and GOAP repaired it.
    LlmRepaired,
    /// A cached answer.
    Cache,
    /// The GOAP planner.
    Goap,
    /// A dialogue template.
    Template,
}

impl SourceLabel {
    /// How many labels there are.
    pub const COUNT: usize = 5;

    /// Every label, in declaration order.
    pub const ALL: [SourceLabel; Self::COUNT] = [
        SourceLabel::Llm,
        SourceLabel::LlmRepaired,
        SourceLabel::Cache,
        SourceLabel::Goap,
        SourceLabel::Template,
    ];

    /// The same label as [`PlanSource::label`]: `llm`, `llm+repair`, `cache`, `goap`, `template`.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceLabel::Llm => "llm",
            SourceLabel::LlmRepaired => "llm+repair",
            SourceLabel::Cache => "cache",
            SourceLabel::Goap => "goap",
            SourceLabel::Template => "template",
        }
    }
}

impl From<&PlanSource> for SourceLabel {
    fn from(source: &PlanSource) -> Self {
        match source {
            PlanSource::Llm {
                repaired: false, ..
            } => SourceLabel::Llm,
            PlanSource::Llm { repaired: true, .. } => SourceLabel::LlmRepaired,
            PlanSource::Cache => SourceLabel::Cache,
            PlanSource::Goap => SourceLabel::Goap,
            PlanSource::Template => SourceLabel::Template,
        }
    }
}

impl fmt::Display for SourceLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Which moment of a job a latency measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LatencyStage {
    /// From submission until a worker picked the job up.
    QueueWait,
    /// From submission until the first step of a plan or the first words of a line.
    First,
    /// From submission until the whole answer.
    Full,
}

impl LatencyStage {
    /// Every stage, in the order a job passes them.
    pub const ALL: [LatencyStage; 3] = [
        LatencyStage::QueueWait,
        LatencyStage::First,
        LatencyStage::Full,
    ];

    /// `queue`, `first` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            LatencyStage::QueueWait => "queue",
            LatencyStage::First => "first",
            LatencyStage::Full => "full",
        }
    }
}

/// The three latency histograms of one (kind, source) key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyStats {
    /// Time spent in the queue before a worker picked the job up.
    pub queue_wait: Histogram,
    /// Time to the first step of a plan or the first words of a line.
    pub first: Histogram,
    /// Time to the whole answer.
    pub full: Histogram,
}

impl LatencyStats {
    /// The histogram of `stage`.
    pub fn get(&self, stage: LatencyStage) -> &Histogram {
        match stage {
            LatencyStage::QueueWait => &self.queue_wait,
            LatencyStage::First => &self.first,
            LatencyStage::Full => &self.full,
        }
    }

    /// Whether no stage has a value.
    pub fn is_empty(&self) -> bool {
        self.queue_wait.is_empty() && self.first.is_empty() && self.full.is_empty()
    }

    fn clear(&mut self) {
        self.queue_wait.clear();
        self.first.clear();
        self.full.clear();
    }
}

/// One full-answer latency in the series behind a live plot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencySample {
    /// The sample's position in its kind's series: 0, 1, 2, …, never reused, even across
    /// [`Metrics::reset`], so a plot's x axis only moves forward.
    pub index: u64,
    /// The full-answer latency.
    pub latency: Duration,
    /// Where the answer came from.
    pub source: LatencySource,
}

/// A ring of the last [`RECENT_LATENCY_SAMPLES`] samples of one kind.
#[derive(Clone, Default)]
struct RecentLatencies {
    /// Grows to `RECENT_LATENCY_SAMPLES` once, then is overwritten in place.
    samples: Vec<LatencySample>,
    /// Once full, the position of the oldest sample.
    head: usize,
    next_index: u64,
}

impl RecentLatencies {
    fn push(&mut self, latency: Duration, source: LatencySource) {
        let sample = LatencySample {
            index: self.next_index,
            latency,
            source,
        };
        self.next_index += 1;
        if self.samples.len() < RECENT_LATENCY_SAMPLES {
            if self.samples.capacity() == 0 {
                self.samples.reserve_exact(RECENT_LATENCY_SAMPLES);
            }
            self.samples.push(sample);
        } else if let Some(slot) = self.samples.get_mut(self.head) {
            *slot = sample;
            self.head = (self.head + 1) % RECENT_LATENCY_SAMPLES;
        }
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = LatencySample> + '_ {
        let (newer, older) = self.samples.split_at(self.head);
        older.iter().chain(newer).cloned()
    }

    fn clear(&mut self) {
        self.samples.clear();
        self.head = 0;
    }
}

impl fmt::Debug for RecentLatencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecentLatencies")
            .field("len", &self.samples.len())
            .field("next_index", &self.next_index)
            .finish()
    }
}

/// Tokens per second, generated and prompt, over some span of records.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenRates {
    /// Generated tokens per second of elapsed time; `None` if no time elapsed.
    pub generated_per_sec: Option<f64>,
    /// Prompt tokens per second of elapsed time; `None` if no time elapsed.
    pub prompt_per_sec: Option<f64>,
}

impl TokenRates {
    fn of(generated: u64, prompt: u64, elapsed_ns: u128) -> Self {
        let per_sec = |tokens: u64| {
            (elapsed_ns > 0).then(|| tokens as f64 / (elapsed_ns as f64 / 1_000_000_000.0))
        };
        TokenRates {
            generated_per_sec: per_sec(generated),
            prompt_per_sec: per_sec(prompt),
        }
    }
}

#[derive(Clone, Copy, Default)]
struct TokenRecord {
    generated: u64,
    prompt: u64,
    elapsed_ns: u64,
}

/// Token throughput, over every record and over the last [`RECENT_TOKEN_RECORDS`].
///
/// Each record is one job: the tokens it generated, the prompt tokens it processed, and the
/// wall time it took for both. Each rate is a token count over the whole elapsed time, so it is
/// throughput, not the speed of one phase.
#[derive(Clone)]
pub struct TokenStats {
    generated: u64,
    prompt: u64,
    elapsed_ns: u128,
    records: u64,
    window: [TokenRecord; RECENT_TOKEN_RECORDS],
    /// Where the next record goes.
    head: usize,
    len: usize,
}

impl TokenStats {
    fn record(&mut self, generated: u64, prompt: u64, elapsed: Duration) {
        let elapsed_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.generated = self.generated.saturating_add(generated);
        self.prompt = self.prompt.saturating_add(prompt);
        self.elapsed_ns += u128::from(elapsed_ns);
        self.records += 1;
        if let Some(slot) = self.window.get_mut(self.head) {
            *slot = TokenRecord {
                generated,
                prompt,
                elapsed_ns,
            };
        }
        self.head = (self.head + 1) % RECENT_TOKEN_RECORDS;
        self.len = (self.len + 1).min(RECENT_TOKEN_RECORDS);
    }

    /// How many jobs were recorded.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Generated tokens, in total.
    pub fn generated(&self) -> u64 {
        self.generated
    }

    /// Prompt tokens, in total.
    pub fn prompt(&self) -> u64 {
        self.prompt
    }

    /// Elapsed time, in total.
    pub fn elapsed(&self) -> Duration {
        let secs = u64::try_from(self.elapsed_ns / 1_000_000_000).unwrap_or(u64::MAX);
        Duration::new(secs, (self.elapsed_ns % 1_000_000_000) as u32)
    }

    /// Rates over every record.
    pub fn cumulative(&self) -> TokenRates {
        TokenRates::of(self.generated, self.prompt, self.elapsed_ns)
    }

    /// Rates over the last [`RECENT_TOKEN_RECORDS`] records (or fewer, if fewer were made).
    pub fn recent(&self) -> TokenRates {
        let (mut generated, mut prompt, mut elapsed_ns) = (0u64, 0u64, 0u128);
        for record in self.window.iter().take(self.len) {
            generated = generated.saturating_add(record.generated);
            prompt = prompt.saturating_add(record.prompt);
            elapsed_ns += u128::from(record.elapsed_ns);
        }
        TokenRates::of(generated, prompt, elapsed_ns)
    }

    /// How many records [`recent`](TokenStats::recent) covers.
    pub fn recent_records(&self) -> usize {
        self.len
    }
}

impl Default for TokenStats {
    fn default() -> Self {
        TokenStats {
            generated: 0,
            prompt: 0,
            elapsed_ns: 0,
            records: 0,
            window: [TokenRecord::default(); RECENT_TOKEN_RECORDS],
            head: 0,
            len: 0,
        }
    }
}

impl fmt::Debug for TokenStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStats")
            .field("records", &self.records)
            .field("generated", &self.generated)
            .field("prompt", &self.prompt)
            .field("elapsed", &self.elapsed())
            .field("cumulative", &self.cumulative())
            .field("recent", &self.recent())
            .finish()
    }
}

/// The sizes of the batches workers decoded.
///
/// Sizes below [`BATCH_SIZES_TRACKED`] are counted exactly; larger ones share the last bucket.
/// `count`, `mean`, `min` and `max` are always exact.
#[derive(Clone)]
pub struct BatchStats {
    counts: [u64; BATCH_SIZES_TRACKED + 1],
    count: u64,
    sum: u64,
    min: usize,
    max: usize,
}

impl BatchStats {
    fn record(&mut self, size: usize) {
        if let Some(slot) = self.counts.get_mut(size.min(BATCH_SIZES_TRACKED)) {
            *slot += 1;
        }
        self.min = if self.count == 0 {
            size
        } else {
            self.min.min(size)
        };
        self.max = self.max.max(size);
        self.count += 1;
        self.sum = self.sum.saturating_add(size as u64);
    }

    /// How many batches were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The mean batch size.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The smallest batch.
    pub fn min(&self) -> Option<usize> {
        (self.count > 0).then_some(self.min)
    }

    /// The largest batch.
    pub fn max(&self) -> Option<usize> {
        (self.count > 0).then_some(self.max)
    }

    /// The nearest-rank `q`-quantile of batch sizes; `None` when empty. Exact when it is below
    /// [`BATCH_SIZES_TRACKED`]; a quantile among larger sizes reads as the largest size.
    pub fn quantile(&self, q: f64) -> Option<usize> {
        if self.count == 0 {
            return None;
        }
        let rank = nearest_rank(q, self.count);
        let mut seen = 0;
        for (size, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(if size < BATCH_SIZES_TRACKED {
                    size
                } else {
                    self.max
                });
            }
        }
        Some(self.max)
    }

    /// The median batch size.
    pub fn p50(&self) -> Option<usize> {
        self.quantile(0.50)
    }

    /// The 95th percentile of batch sizes.
    pub fn p95(&self) -> Option<usize> {
        self.quantile(0.95)
    }

    /// Batches by size: entry `i` counts batches of `i` jobs, and the last entry those of
    /// [`BATCH_SIZES_TRACKED`] jobs or more.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
}

impl Default for BatchStats {
    fn default() -> Self {
        BatchStats {
            counts: [0; BATCH_SIZES_TRACKED + 1],
            count: 0,
            sum: 0,
            min: 0,
            max: 0,
        }
    }
}

impl fmt::Debug for BatchStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchStats")
            .field("count", &self.count)
            .field("mean", &self.mean())
            .field("max", &self.max())
            .finish()
    }
}

/// Lookups in the answer cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    hits: u64,
    misses: u64,
}

impl CacheStats {
    /// Lookups that found an answer.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that did not.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// All lookups.
    pub fn lookups(&self) -> u64 {
        self.hits + self.misses
    }

    /// The fraction of lookups that hit, in `0.0..=1.0`; `None` before the first lookup.
    pub fn hit_rate(&self) -> Option<f64> {
        let lookups = self.lookups();
        (lookups > 0).then(|| self.hits as f64 / lookups as f64)
    }
}

/// Everything the runtime measures about its answers.
///
/// Recording takes `&mut self`, costs a few additions and does not allocate once each key has
/// been seen; reading is through the accessors, and [`Display`](fmt::Display) prints the whole
/// table. See the [module docs](self) for how latency is keyed.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Latency by source (in the order first seen), then kind.
    latency: Vec<(LatencySource, [LatencyStats; KINDS])>,
    /// What [`Metrics::latency`] answers for a source never seen.
    empty: LatencyStats,
    recent: [RecentLatencies; KINDS],
    tokens: TokenStats,
    batches: BatchStats,
    cache: CacheStats,
    answers: [[u64; SourceLabel::COUNT]; KINDS],
    fallbacks: [[u64; REASONS]; KINDS],
    repairs: u64,
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Records how long a job of `kind` waited in the queue before a worker picked it up.
    #[inline]
    pub fn record_queue_wait(
        &mut self,
        kind: RequestKind,
        source: impl Into<LatencySource>,
        wait: Duration,
    ) {
        self.stats_mut(kind, source.into()).queue_wait.record(wait);
    }

    /// Records the time to the first step of a plan or the first words of a line.
    #[inline]
    pub fn record_first(
        &mut self,
        kind: RequestKind,
        source: impl Into<LatencySource>,
        latency: Duration,
    ) {
        self.stats_mut(kind, source.into()).first.record(latency);
    }

    /// Records the time to a whole answer, and adds it to the kind's [recent
    /// series](Metrics::recent_full).
    #[inline]
    pub fn record_full(
        &mut self,
        kind: RequestKind,
        source: impl Into<LatencySource>,
        latency: Duration,
    ) {
        let source = source.into();
        if let Some(recent) = self.recent.get_mut(kind as usize) {
            recent.push(latency, source.clone());
        }
        self.stats_mut(kind, source).full.record(latency);
    }

    /// Records one job's token counts and the wall time it took (see [`TokenStats`]).
    #[inline]
    pub fn record_tokens(&mut self, generated: u64, prompt: u64, elapsed: Duration) {
        self.tokens.record(generated, prompt, elapsed);
    }

    /// Records the size of one decoded batch.
    #[inline]
    pub fn record_batch(&mut self, size: usize) {
        self.batches.record(size);
    }

    /// Records one lookup in the answer cache.
    #[inline]
    pub fn record_cache(&mut self, hit: bool) {
        if hit {
            self.cache.hits += 1;
        } else {
            self.cache.misses += 1;
        }
    }

    /// Records one answer delivered to the game: its source and, if it stands in for a model's
    /// answer, why.
    #[inline]
    pub fn record_answer(
        &mut self,
        kind: RequestKind,
        source: &PlanSource,
        fallback: Option<FallbackReason>,
    ) {
        let kind = kind as usize;
        if let Some(count) = self
            .answers
            .get_mut(kind)
            .and_then(|row| row.get_mut(SourceLabel::from(source) as usize))
        {
            *count += 1;
        }
        if let Some(reason) = fallback
            && let Some(count) = self
                .fallbacks
                .get_mut(kind)
                .and_then(|row| row.get_mut(reason as usize))
        {
            *count += 1;
        }
    }

    /// Records one GOAP repair of a model's plan.
    #[inline]
    pub fn record_repair(&mut self) {
        self.repairs += 1;
    }

    /// Forgets everything, keeping allocated memory. The [recent series](Metrics::recent_full)
    /// are emptied but their sample indices keep counting up.
    pub fn reset(&mut self) {
        self.latency
            .iter_mut()
            .flat_map(|(_, by_kind)| by_kind)
            .for_each(LatencyStats::clear);
        self.recent.iter_mut().for_each(RecentLatencies::clear);
        self.tokens = TokenStats::default();
        self.batches = BatchStats::default();
        self.cache = CacheStats::default();
        self.answers = Default::default();
        self.fallbacks = Default::default();
        self.repairs = 0;
    }

    /// The latency histograms of one key.
    pub fn latency(&self, kind: RequestKind, source: impl Into<LatencySource>) -> &LatencyStats {
        let source = source.into();
        self.latency
            .iter()
            .find(|(s, _)| *s == source)
            .map_or(&self.empty, |(_, by_kind)| &by_kind[kind as usize])
    }

    /// Every key with at least one latency, by kind, then backends by name, then cache, GOAP
    /// and template.
    pub fn latencies(
        &self,
    ) -> impl Iterator<Item = (RequestKind, &LatencySource, &LatencyStats)> + '_ {
        let mut sources: Vec<&(LatencySource, [LatencyStats; KINDS])> =
            self.latency.iter().collect();
        sources.sort_by(|(a, _), (b, _)| a.cmp(b));
        RequestKind::ALL.into_iter().flat_map(move |kind| {
            sources
                .clone()
                .into_iter()
                .map(move |(source, by_kind)| (kind, source, &by_kind[kind as usize]))
                .filter(|(_, _, stats)| !stats.is_empty())
        })
    }

    /// One stage's latency of `kind` over every source, merged.
    pub fn latency_by_kind(&self, kind: RequestKind, stage: LatencyStage) -> Histogram {
        let mut merged = Histogram::new();
        for (_, by_kind) in &self.latency {
            merged.merge(by_kind[kind as usize].get(stage));
        }
        merged
    }

    /// One stage's latency of `source` over every kind, merged.
    pub fn latency_by_source(
        &self,
        source: impl Into<LatencySource>,
        stage: LatencyStage,
    ) -> Histogram {
        let source = source.into();
        let mut merged = Histogram::new();
        for kind in RequestKind::ALL {
            merged.merge(self.latency(kind, source.clone()).get(stage));
        }
        merged
    }

    /// The last [`RECENT_LATENCY_SAMPLES`] full-answer latencies of `kind`, oldest first, with
    /// increasing [`index`](LatencySample::index).
    pub fn recent_full(
        &self,
        kind: RequestKind,
    ) -> impl DoubleEndedIterator<Item = LatencySample> + '_ {
        self.recent[kind as usize].iter()
    }

    /// Token throughput.
    pub fn tokens(&self) -> &TokenStats {
        &self.tokens
    }

    /// Batch sizes.
    pub fn batches(&self) -> &BatchStats {
        &self.batches
    }

    /// Answer-cache lookups.
    pub fn cache(&self) -> &CacheStats {
        &self.cache
    }

    /// Answers of `kind` from `label`.
    pub fn answers(&self, kind: RequestKind, label: SourceLabel) -> u64 {
        self.answers[kind as usize][label as usize]
    }

    /// Answers of `kind`, from every source.
    pub fn total_answers(&self, kind: RequestKind) -> u64 {
        self.answers[kind as usize].iter().sum()
    }

    /// Answers of `kind` that fell back for `reason`.
    pub fn fallbacks(&self, kind: RequestKind, reason: FallbackReason) -> u64 {
        self.fallbacks[kind as usize][reason as usize]
    }

    /// Answers of every kind that fell back for `reason`.
    pub fn total_fallbacks(&self, reason: FallbackReason) -> u64 {
        self.fallbacks.iter().map(|row| row[reason as usize]).sum()
    }

    /// The fraction of answers of `kind` that carried a fallback reason; `None` before the first.
    pub fn fallback_rate(&self, kind: RequestKind) -> Option<f64> {
        let total = self.total_answers(kind);
        let fallbacks: u64 = self.fallbacks[kind as usize].iter().sum();
        (total > 0).then(|| fallbacks as f64 / total as f64)
    }

    /// GOAP repairs of models' plans.
    pub fn repairs(&self) -> u64 {
        self.repairs
    }

    fn stats_mut(&mut self, kind: RequestKind, source: LatencySource) -> &mut LatencyStats {
        let at = match self.latency.iter().position(|(s, _)| *s == source) {
            Some(at) => at,
            None => {
                self.latency.push((source, Default::default()));
                self.latency.len() - 1
            }
        };
        &mut self.latency[at].1[kind as usize]
    }
}

/// The table `hm perf` prints: latency by stage, kind and source, then tokens/s, batch sizes,
/// the cache, answers by source, fallbacks by reason and repairs.
impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sections = [
            (LatencyStage::First, "first step / first words"),
            (LatencyStage::Full, "full answer"),
            (LatencyStage::QueueWait, "queue wait"),
        ];
        for (stage, title) in sections {
            writeln!(f, "latency: {title}")?;
            writeln!(
                f,
                "  {:<9} {:<9} {:>8} {:>9} {:>9} {:>9} {:>9}",
                "kind", "source", "n", "p50", "p95", "p99", "max"
            )?;
            let mut rows = 0;
            for (kind, source, stats) in self.latencies() {
                let histogram = stats.get(stage);
                if histogram.is_empty() {
                    continue;
                }
                rows += 1;
                writeln!(
                    f,
                    "  {:<9} {:<9} {:>8} {:>9} {:>9} {:>9} {:>9}",
                    kind.as_str(),
                    source.label(),
                    histogram.count(),
                    OrDash(histogram.p50().map(HumanDuration)),
                    OrDash(histogram.p95().map(HumanDuration)),
                    OrDash(histogram.p99().map(HumanDuration)),
                    OrDash(histogram.max().map(HumanDuration)),
                )?;
            }
            if rows == 0 {
                writeln!(f, "  (none)")?;
            }
            writeln!(f)?;
        }

        let tokens = &self.tokens;
        writeln!(
            f,
            "{:<12} {:>10} {:>10} {:>10}",
            "tokens/s", "generated", "prompt", "jobs"
        )?;
        let rate = |r: Option<f64>| OrDash(r.map(|r| format!("{r:.1}")));
        let all = tokens.cumulative();
        writeln!(
            f,
            "  {:<10} {:>10} {:>10} {:>10}",
            "all",
            rate(all.generated_per_sec),
            rate(all.prompt_per_sec),
            tokens.records()
        )?;
        let recent = tokens.recent();
        writeln!(
            f,
            "  {:<10} {:>10} {:>10} {:>10}",
            format!("last {RECENT_TOKEN_RECORDS}"),
            rate(recent.generated_per_sec),
            rate(recent.prompt_per_sec),
            tokens.recent_records()
        )?;
        writeln!(f)?;

        let batches = &self.batches;
        writeln!(
            f,
            "{:<12} n={}  mean={}  p50={}  p95={}  max={}",
            "batch size",
            batches.count(),
            OrDash(batches.mean().map(|m| format!("{m:.2}"))),
            OrDash(batches.p50()),
            OrDash(batches.p95()),
            OrDash(batches.max()),
        )?;
        writeln!(
            f,
            "{:<12} hits={}  misses={}  hit rate={}",
            "cache",
            self.cache.hits(),
            self.cache.misses(),
            OrDash(self.cache.hit_rate().map(Percent)),
        )?;
        writeln!(f)?;

        write!(f, "{:<12}", "answers")?;
        for label in SourceLabel::ALL {
            write!(f, " {:>10}", label.as_str())?;
        }
        writeln!(f, " {:>10}", "fallback")?;
        for kind in RequestKind::ALL {
            write!(f, "  {:<10}", kind.as_str())?;
            for label in SourceLabel::ALL {
                write!(f, " {:>10}", self.answers(kind, label))?;
            }
            writeln!(f, " {:>10}", OrDash(self.fallback_rate(kind).map(Percent)))?;
        }
        writeln!(f)?;

        write!(f, "{:<12}", "fallbacks")?;
        for reason in FallbackReason::ALL {
            write!(f, " {:>13}", reason.as_str())?;
        }
        writeln!(f)?;
        for kind in RequestKind::ALL {
            write!(f, "  {:<10}", kind.as_str())?;
            for reason in FallbackReason::ALL {
                write!(f, " {:>13}", self.fallbacks(kind, reason))?;
            }
            writeln!(f)?;
        }
        writeln!(f)?;

        writeln!(f, "{:<12} {}", "repairs", self.repairs)
    }
}

/// A fraction as a percentage with one decimal.
struct Percent(f64);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{:.1}%", self.0 * 100.0))
    }
}

/// A value, or `-` when there is none, padded either way.
struct OrDash<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => f.pad(&value.to_string()),
            None => f.pad("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(us: u64) -> Duration {
        Duration::from_micros(us)
    }

    #[test]
    fn source_indices_follow_their_all_orders() {
        for (i, kind) in RequestKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i);
        }
        for (i, label) in SourceLabel::ALL.into_iter().enumerate() {
            assert_eq!(label as usize, i);
        }
        for (i, reason) in FallbackReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i);
        }
        for source in [
            PlanSource::Llm {
                backend: BackendId::new("remote"),
                repaired: true,
            },
            PlanSource::Cache,
            PlanSource::Goap,
            PlanSource::Template,
        ] {
            assert_eq!(SourceLabel::from(&source).as_str(), source.label());
        }
    }

    #[test]
    fn kinds_and_sources_are_kept_apart() {
        let mut metrics = Metrics::new();
        metrics.record_full(
            RequestKind::Plan,
            &BackendId::new("local"),
            Duration::from_millis(120),
        );
        metrics.record_full(
            RequestKind::Plan,
            &BackendId::new("remote"),
            Duration::from_millis(900),
        );
        metrics.record_full(
            RequestKind::Dialogue,
            &BackendId::new("local"),
            Duration::from_millis(40),
        );
        metrics.record_first(RequestKind::Plan, LatencySource::Goap, micros(300));
        metrics.record_queue_wait(RequestKind::Plan, &BackendId::new("local"), micros(50));
        let repaired = PlanSource::Llm {
            backend: BackendId::new("local"),
            repaired: true,
        };
        metrics.record_full(RequestKind::Plan, &repaired, Duration::from_millis(130));

        let local_plans = metrics.latency(RequestKind::Plan, &BackendId::new("local"));
        assert_eq!(local_plans.full.count(), 2);
        assert_eq!(local_plans.full.min(), Some(Duration::from_millis(120)));
        assert_eq!(local_plans.queue_wait.count(), 1);
        assert!(local_plans.first.is_empty());
        assert_eq!(
            metrics
                .latency(RequestKind::Plan, &BackendId::new("remote"))
                .full
                .count(),
            1
        );
        assert_eq!(
            metrics
                .latency(RequestKind::Dialogue, &BackendId::new("local"))
                .full
                .max(),
            Some(Duration::from_millis(40))
        );
        assert_eq!(
            metrics
                .latency(RequestKind::Plan, LatencySource::Goap)
                .first
                .count(),
            1
        );
        assert!(
            metrics
                .latency(RequestKind::Banter, &BackendId::new("local"))
                .is_empty()
        );

        let keys: Vec<_> = metrics
            .latencies()
            .map(|(kind, source, _)| (kind, source.clone()))
            .collect();
        assert_eq!(
            keys,
            [
                (
                    RequestKind::Dialogue,
                    LatencySource::Backend(BackendId::new("local"))
                ),
                (
                    RequestKind::Plan,
                    LatencySource::Backend(BackendId::new("local"))
                ),
                (
                    RequestKind::Plan,
                    LatencySource::Backend(BackendId::new("remote"))
                ),
                (RequestKind::Plan, LatencySource::Goap),
            ]
        );
        assert_eq!(
            metrics
                .latency_by_kind(RequestKind::Plan, LatencyStage::Full)
                .count(),
            3
        );
        assert_eq!(
            metrics
                .latency_by_source(&BackendId::new("local"), LatencyStage::Full)
                .count(),
            3
        );
    }

    #[test]
    fn cache_hit_rate_is_hits_over_lookups() {
        let mut metrics = Metrics::new();
        assert_eq!(metrics.cache().hit_rate(), None);
        for hit in [true, false, false, true, false] {
            metrics.record_cache(hit);
        }
        assert_eq!(metrics.cache().hits(), 2);
        assert_eq!(metrics.cache().lookups(), 5);
        assert_eq!(metrics.cache().hit_rate(), Some(0.4));
    }

    #[test]
    fn answers_are_counted_by_source_and_fallbacks_by_reason() {
        let mut metrics = Metrics::new();
        let local = PlanSource::Llm {
            backend: BackendId::new("local"),
            repaired: false,
        };
        let repaired = PlanSource::Llm {
            backend: BackendId::new("local"),
            repaired: true,
        };
        metrics.record_answer(RequestKind::Plan, &local, None);
        metrics.record_answer(RequestKind::Plan, &repaired, None);
        metrics.record_repair();
        metrics.record_answer(
            RequestKind::Plan,
            &PlanSource::Goap,
            Some(FallbackReason::Deadline),
        );
        metrics.record_answer(
            RequestKind::Plan,
            &PlanSource::Goap,
            Some(FallbackReason::Deadline),
        );
        metrics.record_answer(
            RequestKind::Dialogue,
            &PlanSource::Template,
            Some(FallbackReason::Parse),
        );

        assert_eq!(metrics.answers(RequestKind::Plan, SourceLabel::Llm), 1);
        assert_eq!(
            metrics.answers(RequestKind::Plan, SourceLabel::LlmRepaired),
            1
        );
        assert_eq!(metrics.answers(RequestKind::Plan, SourceLabel::Goap), 2);
        assert_eq!(metrics.answers(RequestKind::Dialogue, SourceLabel::Goap), 0);
        assert_eq!(metrics.total_answers(RequestKind::Plan), 4);
        assert_eq!(
            metrics.fallbacks(RequestKind::Plan, FallbackReason::Deadline),
            2
        );
        assert_eq!(
            metrics.fallbacks(RequestKind::Plan, FallbackReason::Parse),
            0
        );
        assert_eq!(metrics.total_fallbacks(FallbackReason::Parse), 1);
        assert_eq!(metrics.fallback_rate(RequestKind::Plan), Some(0.5));
        assert_eq!(metrics.fallback_rate(RequestKind::Banter), None);
        assert_eq!(metrics.repairs(), 1);
    }

    #[test]
    fn token_rates_are_cumulative_and_over_the_recent_window() {
        let mut metrics = Metrics::new();
        assert_eq!(metrics.tokens().cumulative(), TokenRates::default());
        // A slow start, then RECENT_TOKEN_RECORDS fast jobs that push it out of the window.
        metrics.record_tokens(10, 100, Duration::from_secs(1));
        for _ in 0..RECENT_TOKEN_RECORDS {
            metrics.record_tokens(40, 400, Duration::from_millis(500));
        }
        let tokens = metrics.tokens();
        assert_eq!(tokens.records(), RECENT_TOKEN_RECORDS as u64 + 1);
        assert_eq!(tokens.generated(), 10 + 40 * RECENT_TOKEN_RECORDS as u64);
        assert_eq!(
            tokens.elapsed(),
            Duration::from_secs(1 + RECENT_TOKEN_RECORDS as u64 / 2)
        );
        let all = tokens.cumulative();
        let expected = (10.0 + 40.0 * 64.0) / 33.0;
        assert!(
            all.generated_per_sec
                .is_some_and(|rate| (rate - expected).abs() < 1e-9)
        );
        assert!(
            all.prompt_per_sec
                .is_some_and(|rate| (rate - 10.0 * expected).abs() < 1e-9)
        );
        assert_eq!(tokens.recent_records(), RECENT_TOKEN_RECORDS);
        assert_eq!(
            tokens.recent(),
            TokenRates {
                generated_per_sec: Some(80.0),
                prompt_per_sec: Some(800.0)
            }
        );
    }

    #[test]
    fn batch_sizes_have_mean_max_and_quantiles() {
        let mut metrics = Metrics::new();
        assert_eq!(metrics.batches().mean(), None);
        for size in [1, 4, 4, 8, 3, 100] {
            metrics.record_batch(size);
        }
        let batches = metrics.batches();
        assert_eq!(batches.count(), 6);
        assert_eq!(batches.mean(), Some(20.0));
        assert_eq!((batches.min(), batches.max()), (Some(1), Some(100)));
        assert_eq!(batches.p50(), Some(4));
        assert_eq!(batches.quantile(1.0), Some(100));
        assert_eq!(batches.counts()[4], 2);
        assert_eq!(batches.counts()[BATCH_SIZES_TRACKED], 1);
    }

    #[test]
    fn the_recent_series_keeps_the_last_samples_in_order() {
        let mut metrics = Metrics::new();
        let total = RECENT_LATENCY_SAMPLES as u64 + 10;
        for i in 0..total {
            metrics.record_full(RequestKind::Banter, LatencySource::Template, micros(i));
        }
        metrics.record_full(
            RequestKind::Plan,
            &BackendId::new("local"),
            Duration::from_millis(80),
        );
        let banter: Vec<_> = metrics.recent_full(RequestKind::Banter).collect();
        assert_eq!(banter.len(), RECENT_LATENCY_SAMPLES);
        assert_eq!(banter.first().map(|s| s.index), Some(10));
        assert_eq!(
            banter.last().map(|s| (s.index, s.latency)),
            Some((total - 1, micros(total - 1)))
        );
        assert!(
            banter
                .windows(2)
                .all(|pair| pair[1].index == pair[0].index + 1)
        );
        assert!(
            banter
                .iter()
                .all(|s| s.index == s.latency.as_micros() as u64)
        );
        assert_eq!(metrics.recent_full(RequestKind::Plan).count(), 1);

        metrics.reset();
        assert_eq!(metrics.recent_full(RequestKind::Banter).count(), 0);
        metrics.record_full(RequestKind::Banter, LatencySource::Template, micros(5));
        assert_eq!(
            metrics
                .recent_full(RequestKind::Banter)
                .map(|s| s.index)
                .next(),
            Some(total)
        );
    }

    #[test]
    fn reset_forgets_everything() {
        let mut metrics = Metrics::new();
        metrics.record_full(
            RequestKind::Plan,
            &BackendId::new("local"),
            Duration::from_millis(80),
        );
        metrics.record_tokens(5, 50, Duration::from_millis(10));
        metrics.record_batch(3);
        metrics.record_cache(true);
        metrics.record_answer(
            RequestKind::Plan,
            &PlanSource::Goap,
            Some(FallbackReason::Overflow),
        );
        metrics.record_repair();
        metrics.reset();
        assert_eq!(metrics.latencies().count(), 0);
        assert_eq!(metrics.tokens().records(), 0);
        assert_eq!(metrics.tokens().recent_records(), 0);
        assert_eq!(metrics.batches().count(), 0);
        assert_eq!(metrics.cache().lookups(), 0);
        assert_eq!(metrics.total_answers(RequestKind::Plan), 0);
        assert_eq!(metrics.total_fallbacks(FallbackReason::Overflow), 0);
        assert_eq!(metrics.repairs(), 0);
    }

    #[test]
    fn the_report_shows_every_section() {
        let mut metrics = Metrics::new();
        for ms in [10, 12, 14, 200] {
            metrics.record_first(
                RequestKind::Plan,
                &BackendId::new("local"),
                Duration::from_millis(ms),
            );
            metrics.record_full(
                RequestKind::Plan,
                &BackendId::new("local"),
                Duration::from_millis(ms * 3),
            );
        }
        metrics.record_full(RequestKind::Banter, LatencySource::Template, micros(412));
        metrics.record_tokens(32, 512, Duration::from_secs(2));
        metrics.record_batch(4);
        metrics.record_cache(true);
        metrics.record_cache(false);
        metrics.record_answer(
            RequestKind::Plan,
            &PlanSource::Goap,
            Some(FallbackReason::BackendError),
        );
        metrics.record_repair();

        let report = metrics.to_string();
        let lines: Vec<&str> = report.lines().collect();
        let row = |needle: &[&str]| {
            lines.iter().any(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                words.starts_with(needle)
            })
        };
        assert!(
            report.contains("latency: first step / first words"),
            "{report}"
        );
        assert!(report.contains("latency: full answer"), "{report}");
        assert!(
            row(&["kind", "source", "n", "p50", "p95", "p99", "max"]),
            "{report}"
        );
        assert!(row(&["plan", "local", "4"]), "{report}");
        assert!(
            row(&[
                "banter", "template", "1", "412µs", "412µs", "412µs", "412µs"
            ]),
            "{report}"
        );
        assert!(row(&["all", "16.0", "256.0", "1"]), "{report}");
        assert!(row(&["batch", "size", "n=1", "mean=4.00"]), "{report}");
        assert!(report.contains("hit rate=50.0%"), "{report}");
        assert!(
            row(&["answers", "llm", "llm+repair", "cache", "goap", "template"]),
            "{report}"
        );
        assert!(
            row(&["plan", "0", "0", "0", "1", "0", "100.0%"]),
            "{report}"
        );
        assert!(
            row(&["fallbacks", "deadline", "parse", "backend_error"]),
            "{report}"
        );
        assert!(row(&["plan", "0", "0", "1", "0", "0", "0"]), "{report}");
        assert!(row(&["repairs", "1"]), "{report}");
        assert!(
            row(&["queue", "wait"]) || report.contains("latency: queue wait"),
            "{report}"
        );
        assert!(report.contains("(none)"), "{report}");
    }
}
