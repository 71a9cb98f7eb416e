//! Batch sizes: exact counts for small batches, exact mean and extremes, and quantiles.
//!
//! Split out of [`metrics`](super) because it is a histogram of its own, over job counts rather
//! than durations; [`Metrics`](super::Metrics) only holds one [`BatchStats`] and forwards records
//! to it.

use std::fmt;

use super::histogram::nearest_rank;

/// Batch sizes below this are counted exactly by [`BatchStats`]; larger ones share one bucket.
pub const BATCH_SIZES_TRACKED: usize = 64;

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
    pub(super) fn record(&mut self, size: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

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
}
