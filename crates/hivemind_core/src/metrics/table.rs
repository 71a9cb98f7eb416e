//! The table `hm perf` prints: the [`Display`](fmt::Display) of [`Metrics`].
//!
//! Split out of [`metrics`](super) because layout is a concern of its own: column widths, section
//! order and how a missing value reads change without touching what is recorded.

use std::fmt;

use super::{HumanDuration, LatencyStage, Metrics, RECENT_TOKEN_RECORDS, SourceLabel};
use crate::plan::{FallbackReason, RequestKind};

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

        writeln!(f, "{:<12} {}", "repairs", self.repairs)?;
        writeln!(f, "{:<12} {}", "bridges", self.bridges)?;
        writeln!(f, "{:<12} {}", "copies", self.copies)?;
        writeln!(f, "{:<12} {}", "line skips", self.lines_skipped)?;
        writeln!(f, "{:<12} {}", "shed", self.shed)
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
    use std::time::Duration;

    use super::*;
    use crate::metrics::LatencySource;
    use crate::plan::{BackendId, PlanSource};

    fn micros(us: u64) -> Duration {
        Duration::from_micros(us)
    }

    #[test]
    fn the_report_shows_every_section() {
        let mut metrics = Metrics::new();
        for ms in [10, 12, 14, 200] {
            metrics.record_first(
                RequestKind::Plan,
                BackendId::new("local"),
                Duration::from_millis(ms),
            );
            metrics.record_full(
                RequestKind::Plan,
                BackendId::new("local"),
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
