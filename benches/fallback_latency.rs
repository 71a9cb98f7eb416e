//! Per-call latency of the answers that stand in for the model: a GOAP plan, a template line and
//! a cache hit, each called many times on varied arena situations. Prints p50 / p95 / p99 next to
//! the targets, which criterion's means do not show.
//!
//! ```text
//! cargo bench --no-default-features --bench fallback_latency
//! ```
#![expect(clippy::print_stdout, reason = "a benchmark that prints its table")]

use std::hint::black_box;
use std::time::{Duration, Instant};

use hivemind::core::cache::{AnswerCache, CachedAnswer};
use hivemind::core::clock::Timestamp;
use hivemind::core::config::CacheConfig;
use hivemind::core::templates::Slots;
use hivemind::prelude::*;
use hivemind_arena::fallback_plan;

#[path = "support.rs"]
mod support;

use support::{assets, played_snapshots};

const CALLS: usize = 20_000;

/// Exact quantiles of per-call times (a histogram's buckets would blur sub-microsecond calls).
struct Latencies(Vec<Duration>);

impl Latencies {
    fn quantile(&self, q: f64) -> Duration {
        self.0[((self.0.len() - 1) as f64 * q).round() as usize]
    }
}

fn micros(d: Duration) -> String {
    format!("{:.2}µs", d.as_secs_f64() * 1e6)
}

fn measure(mut call: impl FnMut(usize)) -> Latencies {
    for i in 0..CALLS / 10 {
        call(i); // warm-up
    }
    let mut times: Vec<Duration> = (0..CALLS)
        .map(|i| {
            let start = Instant::now();
            call(i);
            start.elapsed()
        })
        .collect();
    times.sort_unstable();
    Latencies(times)
}

fn main() {
    let assets = assets();
    let snapshots = played_snapshots(&assets, 200);

    let goap = measure(|i| {
        black_box(fallback_plan(
            &assets.domain,
            &assets.registry,
            &snapshots[i % snapshots.len()],
        ));
    });
    let slots = Slots::new()
        .with("enemy", "Vex")
        .with("ally", "Rook")
        .with("self", "Ash");
    let situations = [
        "low_health",
        "ally_down",
        "close_fight",
        "win_streak",
        "idle",
    ];
    let template = measure(|i| {
        black_box(assets.templates.line(
            Some("veteran"),
            situations[i % situations.len()],
            &slots,
            i as u64,
        ))
        .ok();
    });
    let cache = AnswerCache::new(&CacheConfig {
        capacity: 1 << 16,
        ..CacheConfig::default()
    });
    let mut cached = Vec::new();
    for s in &snapshots {
        let steps = fallback_plan(&assets.domain, &assets.registry, s);
        if let Some(answer) = CachedAnswer::from_steps(&steps, s, &assets.registry) {
            cache.insert(
                cache.key("veteran", RequestKind::Plan, s),
                answer,
                Timestamp::ZERO,
            );
            cached.push(s.clone());
        }
    }
    let hit = measure(|i| {
        let s = &cached[i % cached.len()];
        let key = cache.key("veteran", RequestKind::Plan, s);
        black_box(cache.get(&key, s, &assets.registry, Timestamp::ZERO));
    });
    let hits = cached
        .iter()
        .filter(|s| {
            let key = cache.key("veteran", RequestKind::Plan, s);
            cache
                .get(&key, s, &assets.registry, Timestamp::ZERO)
                .is_some()
        })
        .count();

    println!(
        "{} situations, {} of them cached, {}% of those hit; {CALLS} calls per path",
        snapshots.len(),
        cached.len(),
        100 * hits / cached.len().max(1)
    );
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>10}",
        "path", "p50", "p95", "p99", "target p99"
    );
    for (name, h, target) in [
        ("goap plan", &goap, Duration::from_micros(50)),
        ("template line", &template, Duration::from_micros(20)),
        ("cache hit", &hit, Duration::from_micros(10)),
    ] {
        let show = |q: f64| micros(h.quantile(q));
        println!(
            "{:<16} {:>10} {:>10} {:>10} {:>10}",
            name,
            show(0.50),
            show(0.95),
            show(0.99),
            micros(target)
        );
    }
}
