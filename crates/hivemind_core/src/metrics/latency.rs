//! What a latency is keyed and split by, the three histograms of one key, and the recent series
//! behind a live plot.
//!
//! Split out of [`metrics`](super) because these are the latency half of its vocabulary;
//! [`Metrics`](super::Metrics) keeps a table of [`LatencyStats`] per [`LatencySource`] and one
//! `RecentLatencies` ring per kind.

use std::fmt;
use std::time::Duration;

use super::Histogram;
use crate::plan::{BackendId, PlanSource};

/// How many full-answer latencies per kind [`Metrics::recent_full`](super::Metrics::recent_full)
/// keeps for a live plot.
pub const RECENT_LATENCY_SAMPLES: usize = 256;

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

    pub(super) fn clear(&mut self) {
        self.queue_wait.clear();
        self.first.clear();
        self.full.clear();
    }
}

/// One full-answer latency in the series behind a live plot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencySample {
    /// The sample's position in its kind's series: 0, 1, 2, …, never reused, even across
    /// [`Metrics::reset`](super::Metrics::reset), so a plot's x axis only moves forward.
    pub index: u64,
    /// The full-answer latency.
    pub latency: Duration,
    /// Where the answer came from.
    pub source: LatencySource,
}

/// A ring of the last [`RECENT_LATENCY_SAMPLES`] samples of one kind.
#[derive(Clone, Default)]
pub(super) struct RecentLatencies {
    /// Grows to `RECENT_LATENCY_SAMPLES` once, then is overwritten in place.
    samples: Vec<LatencySample>,
    /// Once full, the position of the oldest sample.
    head: usize,
    next_index: u64,
}

impl RecentLatencies {
    pub(super) fn push(&mut self, latency: Duration, source: LatencySource) {
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

    pub(super) fn iter(&self) -> impl DoubleEndedIterator<Item = LatencySample> + '_ {
        let (newer, older) = self.samples.split_at(self.head);
        older.iter().chain(newer).cloned()
    }

    pub(super) fn clear(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::plan::RequestKind;

    fn micros(us: u64) -> Duration {
        Duration::from_micros(us)
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
            BackendId::new("local"),
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
}
