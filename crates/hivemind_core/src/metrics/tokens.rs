//! Token throughput: totals and rates over every job and over a window of the most recent ones.
//!
//! Split out of [`metrics`](super) because the window is its own small ring buffer with its own
//! arithmetic; [`Metrics`](super::Metrics) only holds one [`TokenStats`] and forwards records to
//! it.

use std::fmt;
use std::time::Duration;

/// How many of the most recent [`Metrics::record_tokens`](super::Metrics::record_tokens) calls
/// the recent token rate covers.
pub const RECENT_TOKEN_RECORDS: usize = 64;

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
    pub(super) fn record(&mut self, generated: u64, prompt: u64, elapsed: Duration) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

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
}
