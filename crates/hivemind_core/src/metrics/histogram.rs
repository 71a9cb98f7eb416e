//! A fixed-memory latency histogram, and the duration formatting its reports use.
//!
//! Split out of [`metrics`](super) because it is one self-contained concept: the bucket layout,
//! its error bound and the quantile arithmetic. [`Metrics`](super::Metrics) only keeps tables of
//! these.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

/// Sub-buckets per power of two, as a power of two: 16 sub-buckets.
const SUB_BUCKET_BITS: u32 = 4;
/// Sub-buckets per power of two.
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
/// The exponent of the largest tracked power of two: values below 2^32 µs (about 71.6 minutes).
const MAX_EXPONENT: u32 = 31;
/// Values below 16 µs get one bucket each; then 16 buckets for each power of two up to 2^31.
const BUCKETS: usize = SUB_BUCKETS * (MAX_EXPONENT - SUB_BUCKET_BITS + 2) as usize;

/// A fixed-memory histogram of durations with log-linear buckets.
///
/// Values are bucketed in whole microseconds: below 16 µs every microsecond has its own bucket,
/// and above that every power of two is split into 16 equal sub-buckets, up to
/// [`Histogram::MAX_TRACKED`] (2^32 µs, about 71.6 minutes). That is 464 counters, allocated on
/// the first record. Recording is O(1) and never allocates after the first record.
///
/// # Error bound
///
/// [`quantile`](Histogram::quantile) uses the nearest-rank definition: for `n` values it returns
/// the value of rank `ceil(q * n)` (at least 1) in sorted order. The histogram finds the bucket
/// that holds that value exactly and answers with the bucket's midpoint, clamped to the exact
/// [`min`](Histogram::min) and [`max`](Histogram::max) (which are the answers for the first and
/// last ranks). A bucket starting at `L` µs is at most
/// `L / 16` µs wide (or 1 µs below 16 µs), so the answer differs from the exact quantile `v` by at
/// most `max(v / 32, 0.5 µs)`: a relative error of at most [`Histogram::MAX_RELATIVE_ERROR`]
/// (3.125%) from 16 µs up. Values above [`Histogram::MAX_TRACKED`] are counted in the last bucket,
/// where this bound does not hold; `count`, `min`, `max` and `mean` are always exact.
#[derive(Clone)]
pub struct Histogram {
    /// Empty until the first record, then `BUCKETS` long.
    counts: Vec<u64>,
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Histogram {
    /// The largest relative error of a quantile, for values from 16 µs to [`Self::MAX_TRACKED`].
    pub const MAX_RELATIVE_ERROR: f64 = 1.0 / 32.0;

    /// The largest value whose quantiles keep the error bound: 2^32 µs − 1 ns (about 71.6 min).
    pub const MAX_TRACKED: Duration =
        Duration::from_nanos((1u64 << (MAX_EXPONENT + 1)) * 1_000 - 1);

    /// An empty histogram. Does not allocate.
    pub const fn new() -> Self {
        Histogram {
            counts: Vec::new(),
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    /// Records one duration.
    #[inline]
    pub fn record(&mut self, value: Duration) {
        let ns = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        if let Some(slot) = self.counts.get_mut(bucket_index(ns / 1_000)) {
            *slot += 1;
        }
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The smallest recorded duration, exactly.
    pub fn min(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.min_ns))
    }

    /// The largest recorded duration, exactly.
    pub fn max(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.max_ns))
    }

    /// The mean of the recorded durations, exactly (to the nanosecond).
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| {
            let mean = self.sum_ns / u128::from(self.count);
            Duration::from_nanos(u64::try_from(mean).unwrap_or(u64::MAX))
        })
    }

    /// The nearest-rank `q`-quantile, within the [error bound](Histogram#error-bound); `None`
    /// when empty. `q` is clamped to `0.0..=1.0`, and NaN reads as 0.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = nearest_rank(q, self.count);
        if rank == 1 {
            return self.min();
        }
        if rank == self.count {
            return self.max();
        }
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (lower_us, width_us) = bucket_bounds(index);
                let mid_ns = lower_us * 1_000 + width_us * 500;
                return Some(Duration::from_nanos(mid_ns.clamp(self.min_ns, self.max_ns)));
            }
        }
        self.max()
    }

    /// The median.
    pub fn p50(&self) -> Option<Duration> {
        self.quantile(0.50)
    }

    /// The 95th percentile.
    pub fn p95(&self) -> Option<Duration> {
        self.quantile(0.95)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Option<Duration> {
        self.quantile(0.99)
    }

    /// Adds every value recorded in `other`, as if it had been recorded here.
    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// Forgets every value, keeping the buckets' memory.
    pub fn clear(&mut self) {
        self.counts.fill(0);
        self.count = 0;
        self.sum_ns = 0;
        self.min_ns = u64::MAX;
        self.max_ns = 0;
    }

    /// The buckets that hold at least one value, in increasing order: each bucket's range and
    /// count. For drawing a distribution.
    pub fn nonempty_buckets(&self) -> impl Iterator<Item = (Range<Duration>, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(index, &count)| {
                let (lower_us, width_us) = bucket_bounds(index);
                (
                    Duration::from_micros(lower_us)..Duration::from_micros(lower_us + width_us),
                    count,
                )
            })
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl PartialEq for Histogram {
    fn eq(&self, other: &Self) -> bool {
        // An empty histogram may or may not have allocated its buckets; either way they are zero.
        self.count == other.count
            && self.sum_ns == other.sum_ns
            && self.min_ns == other.min_ns
            && self.max_ns == other.max_ns
            && (self.count == 0 || self.counts == other.counts)
    }
}

impl Eq for Histogram {}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count)
            .field("min", &self.min())
            .field("p50", &self.p50())
            .field("p99", &self.p99())
            .field("max", &self.max())
            .finish()
    }
}

/// `n=42 p50=12.3ms p95=40.1ms p99=52.0ms max=60.0ms`, or `n=0`.
impl fmt::Display for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n={}", self.count)?;
        if let (Some(p50), Some(p95), Some(p99), Some(max)) =
            (self.p50(), self.p95(), self.p99(), self.max())
        {
            write!(
                f,
                " p50={} p95={} p99={} max={}",
                HumanDuration(p50),
                HumanDuration(p95),
                HumanDuration(p99),
                HumanDuration(max)
            )?;
        }
        Ok(())
    }
}

/// The bucket of a value in whole microseconds.
#[inline]
fn bucket_index(us: u64) -> usize {
    if us < SUB_BUCKETS as u64 {
        return us as usize;
    }
    let exponent = 63 - us.leading_zeros();
    if exponent > MAX_EXPONENT {
        return BUCKETS - 1;
    }
    let shift = exponent - SUB_BUCKET_BITS;
    let sub = (us >> shift) as usize & (SUB_BUCKETS - 1);
    (exponent - SUB_BUCKET_BITS + 1) as usize * SUB_BUCKETS + sub
}

/// The lower bound and width of a bucket, in microseconds.
fn bucket_bounds(index: usize) -> (u64, u64) {
    if index < SUB_BUCKETS {
        return (index as u64, 1);
    }
    let shift = index / SUB_BUCKETS - 1;
    let sub = index % SUB_BUCKETS;
    (((SUB_BUCKETS + sub) as u64) << shift, 1 << shift)
}

/// The 1-based nearest rank of quantile `q` among `n > 0` values.
pub(super) fn nearest_rank(q: f64, n: u64) -> u64 {
    let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
    ((q * n as f64).ceil() as u64).clamp(1, n)
}

/// A duration with three significant digits and a unit: `850ns`, `412µs`, `12.3ms`, `1.20s`.
///
/// Honours width and alignment, so it can sit in a fixed-width table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        let text = if ns < 1_000 {
            format!("{ns}ns")
        } else if ns < 999_500 {
            format!("{}µs", (ns + 500) / 1_000)
        } else {
            let ms = ns as f64 / 1_000_000.0;
            if ms < 999.5 {
                three_digits(ms, "ms")
            } else {
                three_digits(ms / 1_000.0, "s")
            }
        };
        f.pad(&text)
    }
}

fn three_digits(value: f64, unit: &str) -> String {
    if value < 9.995 {
        format!("{value:.2}{unit}")
    } else if value < 99.95 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.0}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn micros(us: u64) -> Duration {
        Duration::from_micros(us)
    }

    /// The nearest-rank quantile of `values`, which must be sorted and non-empty.
    fn exact_quantile(sorted: &[Duration], q: f64) -> Duration {
        let rank = nearest_rank(q, sorted.len() as u64);
        sorted[rank as usize - 1]
    }

    /// Durations spread evenly over orders of magnitude, from 0 to about 36 minutes.
    fn durations() -> impl Strategy<Value = Vec<Duration>> {
        let one = (0u32..42, any::<u64>())
            .prop_map(|(bits, raw)| Duration::from_nanos(raw & ((1u64 << bits) - 1)));
        prop::collection::vec(one, 1..300)
    }

    proptest! {
        #[test]
        fn quantiles_stay_within_the_documented_error(
            mut values in durations(),
            q in 0.0f64..=1.0,
        ) {
            let mut histogram = Histogram::new();
            for &value in &values {
                histogram.record(value);
            }
            values.sort_unstable();
            for q in [0.0, 0.5, 0.95, 0.99, 1.0, q] {
                let exact = exact_quantile(&values, q);
                let Some(estimate) = histogram.quantile(q) else {
                    return Err(TestCaseError::fail("a non-empty histogram has quantiles"));
                };
                let error = estimate.abs_diff(exact);
                let bound = exact.mul_f64(Histogram::MAX_RELATIVE_ERROR).max(Duration::from_nanos(500));
                prop_assert!(
                    error <= bound,
                    "q={q}: estimate {estimate:?}, exact {exact:?}, error {error:?} > {bound:?}"
                );
            }
            prop_assert_eq!(histogram.min(), values.first().copied());
            prop_assert_eq!(histogram.max(), values.last().copied());
            prop_assert_eq!(histogram.count(), values.len() as u64);
        }

        #[test]
        fn merging_equals_recording_everything(values in durations(), split in 0usize..300) {
            let split = split.min(values.len());
            let (mut first_half, mut second_half, mut everything) =
                (Histogram::new(), Histogram::new(), Histogram::new());
            for (i, &value) in values.iter().enumerate() {
                if i < split { first_half.record(value) } else { second_half.record(value) }
                everything.record(value);
            }
            first_half.merge(&second_half);
            prop_assert_eq!(&first_half, &everything);
            prop_assert_eq!(first_half.p99(), everything.p99());
            prop_assert_eq!(first_half.mean(), everything.mean());
        }
    }

    #[test]
    fn buckets_cover_the_range_without_gaps() {
        let mut expected_lower = 0;
        for index in 0..BUCKETS {
            let (lower, width) = bucket_bounds(index);
            assert_eq!(lower, expected_lower, "bucket {index}");
            assert_eq!(bucket_index(lower), index);
            assert_eq!(bucket_index(lower + width - 1), index);
            assert!(
                width == 1 || lower >= 16 * width,
                "bucket {index} is too wide"
            );
            expected_lower = lower + width;
        }
        assert_eq!(
            Duration::from_micros(expected_lower) - Duration::from_nanos(1),
            Histogram::MAX_TRACKED
        );
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn an_empty_histogram_has_no_statistics() {
        let histogram = Histogram::new();
        assert!(histogram.is_empty());
        assert_eq!(histogram.quantile(0.5), None);
        assert_eq!(histogram.p99(), None);
        assert_eq!(
            (histogram.min(), histogram.max(), histogram.mean()),
            (None, None, None)
        );
        assert_eq!(histogram.to_string(), "n=0");
    }

    #[test]
    fn small_values_are_within_half_a_microsecond_and_the_ends_are_exact() {
        let mut histogram = Histogram::new();
        for us in 1..=15 {
            histogram.record(micros(us));
        }
        // The median, 8 µs, lies in the bucket [8 µs, 9 µs), answered by its midpoint.
        assert_eq!(histogram.p50(), Some(Duration::from_nanos(8_500)));
        assert_eq!(histogram.quantile(0.0), Some(micros(1)));
        assert_eq!(histogram.quantile(1.0), Some(micros(15)));
        assert_eq!(histogram.quantile(f64::NAN), Some(micros(1)));
        assert_eq!(histogram.mean(), Some(micros(8)));
    }

    #[test]
    fn clearing_forgets_values_and_keeps_memory() {
        let mut histogram = Histogram::new();
        histogram.record(Duration::from_millis(40));
        histogram.clear();
        assert_eq!(histogram, Histogram::new());
        assert_eq!(histogram.p50(), None);
        histogram.record(Duration::from_millis(3));
        assert_eq!(histogram.min(), Some(Duration::from_millis(3)));
        assert_eq!(histogram.nonempty_buckets().count(), 1);
    }

    #[test]
    fn values_beyond_the_range_saturate_but_max_stays_exact() {
        let mut histogram = Histogram::new();
        let stuck_worker = Duration::from_secs(5 * 3600);
        histogram.record(stuck_worker);
        histogram.record(Duration::MAX);
        assert_eq!(histogram.count(), 2);
        assert_eq!(histogram.max(), Some(Duration::from_nanos(u64::MAX)));
        assert_eq!(histogram.min(), Some(stuck_worker));
        assert!(histogram.p50().is_some_and(|p50| p50 >= stuck_worker));
    }

    #[test]
    fn durations_read_like_a_person_would_write_them() {
        let cases = [
            (Duration::from_nanos(850), "850ns"),
            (micros(412), "412µs"),
            (micros(999_400), "999ms"),
            (micros(4_560), "4.56ms"),
            (micros(12_300), "12.3ms"),
            (Duration::from_millis(1_200), "1.20s"),
            (Duration::from_secs(75), "75.0s"),
        ];
        for (duration, text) in cases {
            assert_eq!(HumanDuration(duration).to_string(), text);
        }
        assert_eq!(format!("[{:>7}]", HumanDuration(micros(412))), "[  412µs]");
    }
}
