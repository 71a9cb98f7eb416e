//! Latency histograms and counters for `hm perf`, the console and Bevy diagnostics.
//!
//! [`Metrics`] holds everything the runtime measures about its answers: how long a job waited in
//! the queue, how long the first step (plans) or first words (lines) took, and how long the whole
//! answer took, each as a [`Histogram`] per [`RequestKind`] and [`LatencySource`]; tokens per
//! second; batch sizes; the cache hit rate; answers by [`SourceLabel`]; fallbacks by
//! [`FallbackReason`]; and repairs. Its [`Display`](std::fmt::Display) is the table `hm perf`
//! prints.
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

use std::time::Duration;

use crate::plan::{FallbackReason, PlanSource, RequestKind};

mod answers;
mod batches;
mod histogram;
mod latency;
mod table;
mod tokens;

pub use answers::{CacheStats, SourceLabel};
pub use batches::{BATCH_SIZES_TRACKED, BatchStats};
pub use histogram::{Histogram, HumanDuration};
use latency::RecentLatencies;
pub use latency::{
    LatencySample, LatencySource, LatencyStage, LatencyStats, RECENT_LATENCY_SAMPLES,
};
pub use tokens::{RECENT_TOKEN_RECORDS, TokenRates, TokenStats};

const KINDS: usize = RequestKind::ALL.len();
const REASONS: usize = FallbackReason::ALL.len();

/// Everything the runtime measures about its answers.
///
/// Recording takes `&mut self`, costs a few additions and does not allocate once each key has
/// been seen; reading is through the accessors, and [`Display`](std::fmt::Display) prints the whole
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
    bridges: u64,
    copies: u64,
    lines_skipped: u64,
    shed: u64,
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
        self.cache.record(hit);
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

    /// Records one reply that began with a bridge while the model's words were on their way.
    #[inline]
    pub fn record_bridge(&mut self) {
        self.bridges += 1;
    }

    /// Records one model line the copy check kept from a player (it copied the prompt or
    /// echoed the player).
    #[inline]
    pub fn record_copy(&mut self) {
        self.copies += 1;
    }

    /// Records one plan whose line the worker skipped for waiting work (a template said it).
    #[inline]
    pub fn record_line_skipped(&mut self) {
        self.lines_skipped += 1;
    }

    /// Records one job the worker shed because it could no longer meet its deadline (the
    /// fallback answered at once).
    #[inline]
    pub fn record_shed(&mut self) {
        self.shed += 1;
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
        self.bridges = 0;
        self.copies = 0;
        self.lines_skipped = 0;
        self.shed = 0;
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

    /// Replies that began with a bridge.
    pub fn bridges(&self) -> u64 {
        self.bridges
    }

    /// Model lines the copy check kept from a player.
    pub fn copies(&self) -> u64 {
        self.copies
    }

    /// Plans whose line the worker skipped because other work was waiting.
    pub fn lines_skipped(&self) -> u64 {
        self.lines_skipped
    }

    /// Jobs shed because they could no longer meet their deadline.
    pub fn shed(&self) -> u64 {
        self.shed
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::BackendId;

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
            BackendId::new("local"),
            Duration::from_millis(120),
        );
        metrics.record_full(
            RequestKind::Plan,
            BackendId::new("remote"),
            Duration::from_millis(900),
        );
        metrics.record_full(
            RequestKind::Dialogue,
            BackendId::new("local"),
            Duration::from_millis(40),
        );
        metrics.record_first(RequestKind::Plan, LatencySource::Goap, micros(300));
        metrics.record_queue_wait(RequestKind::Plan, BackendId::new("local"), micros(50));
        let repaired = PlanSource::Llm {
            backend: BackendId::new("local"),
            repaired: true,
        };
        metrics.record_full(RequestKind::Plan, &repaired, Duration::from_millis(130));

        let local_plans = metrics.latency(RequestKind::Plan, BackendId::new("local"));
        assert_eq!(local_plans.full.count(), 2);
        assert_eq!(local_plans.full.min(), Some(Duration::from_millis(120)));
        assert_eq!(local_plans.queue_wait.count(), 1);
        assert!(local_plans.first.is_empty());
        assert_eq!(
            metrics
                .latency(RequestKind::Plan, BackendId::new("remote"))
                .full
                .count(),
            1
        );
        assert_eq!(
            metrics
                .latency(RequestKind::Dialogue, BackendId::new("local"))
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
                .latency(RequestKind::Banter, BackendId::new("local"))
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
                .latency_by_source(BackendId::new("local"), LatencyStage::Full)
                .count(),
            3
        );
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
    fn reset_forgets_everything() {
        let mut metrics = Metrics::new();
        metrics.record_full(
            RequestKind::Plan,
            BackendId::new("local"),
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
}
