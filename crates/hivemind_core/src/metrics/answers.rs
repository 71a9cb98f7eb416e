//! How answers are counted: by where they came from, and by whether the answer cache had one.
//!
//! Split out of [`metrics`](super) to keep the answer counters' vocabulary apart from latency;
//! [`Metrics`](super::Metrics) keeps a table of answers per [`SourceLabel`] and one [`CacheStats`].

use std::fmt;

use crate::plan::PlanSource;

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

    pub(super) fn record(&mut self, hit: bool) {
        if hit {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
    }

    /// The fraction of lookups that hit, in `0.0..=1.0`; `None` before the first lookup.
    pub fn hit_rate(&self) -> Option<f64> {
        let lookups = self.lookups();
        (lookups > 0).then(|| self.hits as f64 / lookups as f64)
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::Metrics;

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
}
