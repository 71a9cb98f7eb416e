//! The range of every numeric setting, and the check that holds a config to them.
//!
//! A value outside its range is an error naming the field, whether it came from a file or from
//! an edit of the live settings (the Bevy plugin checks those before applying them). The ranges
//! are wide: they keep out what cannot work (zero workers, NaN, a deadline that overflows the
//! clock, a grammar of a million steps), not what is merely unusual. Threads beyond the
//! machine's cores are not an error here: the local backend clamps them with a warning, since a
//! player's machine is not the author's.

use std::fmt::Display;

use super::{HivemindConfig, RemoteConfig, RouterConfig, Sampling, Throughput};

/// The longest deadline or timeout, in milliseconds: an hour. Longer ones overflow nothing,
/// but mean a typo.
pub const MAX_MILLIS: u64 = 3_600_000;
/// The most agents in one batch, and the most in flight to one server.
pub const MAX_BATCH: usize = 1024;
/// The most jobs waiting for a worker, and the most cache entries.
pub const MAX_CAPACITY: usize = 1 << 24;
/// The most worker threads.
pub const MAX_WORKERS: usize = 64;
/// The most inference threads a config may ask for; more than the machine has are clamped.
pub const MAX_THREADS: u32 = 1024;
/// The largest context, in tokens.
pub const MAX_CONTEXT_TOKENS: u32 = 1 << 20;
/// The most steps in a model-written plan: the grammar grows with it.
pub const MAX_PLAN_STEPS: usize = 32;
/// The most characters in a model-written line: the grammar grows with it.
pub const MAX_SAY_CHARS: usize = 2048;
/// The most tokens of snapshot or conversation in one prompt.
pub const MAX_PROMPT_TOKENS: usize = 1 << 16;
/// The longest an answer stays cached, in seconds: a day.
pub const MAX_TTL_SECS: f32 = 86_400.0;
/// The most time the drain system may take per frame, in milliseconds.
pub const MAX_DRAIN_MS: f32 = 1000.0;
/// The fastest throughput lockstep may assume, in tokens per second.
pub const MAX_TOKENS_PER_SEC: f64 = 1e9;

/// `Ok` if `lo <= value <= hi`; NaN lies in no range.
fn within<T: PartialOrd + Display + Copy>(
    field: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), String> {
    if lo <= value && value <= hi {
        Ok(())
    } else {
        Err(format!("{field} must lie in {lo}..={hi}, not {value}"))
    }
}

/// `Ok` if `lo < value <= hi`; NaN lies in no range.
fn above<T: PartialOrd + Display + Copy>(
    field: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), String> {
    if lo < value && value <= hi {
        Ok(())
    } else {
        Err(format!(
            "{field} must be above {lo} and at most {hi}, not {value}"
        ))
    }
}

impl HivemindConfig {
    /// Checks every numeric setting against its range (see the [module docs](self)), and the
    /// values that parse but make no sense together, such as `hp_low` above `hp_high`. The
    /// error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let d = &self.deadlines;
        for (field, ms) in [
            ("deadlines.banter_ms", d.banter_ms),
            ("deadlines.dialogue_ms", d.dialogue_ms),
            ("deadlines.reply_ms", d.reply_ms),
            ("deadlines.plan_ms", d.plan_ms),
        ] {
            within(field, ms, 0, MAX_MILLIS)?;
        }

        let b = &self.batching;
        within("batching.max_batch", b.max_batch, 1, MAX_BATCH)?;
        within("batching.queue_capacity", b.queue_capacity, 1, MAX_CAPACITY)?;
        within("batching.workers", b.workers, 1, MAX_WORKERS)?;

        let c = &self.cache;
        within("cache.capacity", c.capacity, 0, MAX_CAPACITY)?;
        within("cache.ttl_secs", c.ttl_secs, 0.0, MAX_TTL_SECS)?;
        within("cache.position_quantum", c.position_quantum, 1, 1 << 16)?;
        within("cache.hp_low", c.hp_low, 0.0, 1.0)?;
        within("cache.hp_high", c.hp_high, 0.0, 1.0)?;
        if c.hp_low > c.hp_high {
            return Err("cache.hp_low must not exceed cache.hp_high".into());
        }

        let m = &self.model;
        within(
            "model.context_tokens",
            m.context_tokens,
            64,
            MAX_CONTEXT_TOKENS,
        )?;
        within("model.batch_tokens", m.batch_tokens, 1, m.context_tokens)?;
        if let Some(threads) = m.threads {
            within("model.threads", threads, 1, MAX_THREADS)?;
        }

        for (field, s) in [
            ("sampling.banter", &self.sampling.banter),
            ("sampling.dialogue", &self.sampling.dialogue),
            ("sampling.plan", &self.sampling.plan),
            ("sampling.say", &self.sampling.say),
        ] {
            check_sampling(s).map_err(|message| format!("{field}.{message}"))?;
        }

        let u = &self.budgets;
        within(
            "budgets.snapshot_tokens",
            u.snapshot_tokens,
            1,
            MAX_PROMPT_TOKENS,
        )?;
        within(
            "budgets.conversation_tokens",
            u.conversation_tokens,
            0,
            MAX_PROMPT_TOKENS,
        )?;
        within(
            "budgets.max_plan_steps",
            u.max_plan_steps,
            1,
            MAX_PLAN_STEPS,
        )?;
        within("budgets.max_say_chars", u.max_say_chars, 1, MAX_SAY_CHARS)?;
        above("budgets.drain_ms", u.drain_ms, 0.0, MAX_DRAIN_MS)?;

        check_throughput(&self.clock.throughput)
            .map_err(|message| format!("clock.throughput.{message}"))?;
        for (id, remote) in &self.remotes {
            check_remote(remote).map_err(|message| format!("remotes.{id}.{message}"))?;
        }
        check_router(&self.router).map_err(|message| format!("router.{message}"))?;
        Ok(())
    }
}

fn check_sampling(s: &Sampling) -> Result<(), String> {
    let Sampling::Random {
        temperature,
        top_k,
        top_p,
        min_p,
        repeat_penalty,
    } = *s
    else {
        return Ok(());
    };
    above("temperature", temperature, 0.0, 100.0)?;
    within("top_k", top_k, 0, 1 << 20)?;
    above("top_p", top_p, 0.0, 1.0)?;
    within("min_p", min_p, 0.0, 0.99)?;
    within("repeat_penalty", repeat_penalty, 1.0, 10.0)
}

fn check_throughput(t: &Throughput) -> Result<(), String> {
    above(
        "prompt_tokens_per_sec",
        t.prompt_tokens_per_sec,
        0.0,
        MAX_TOKENS_PER_SEC,
    )?;
    above(
        "generated_tokens_per_sec",
        t.generated_tokens_per_sec,
        0.0,
        MAX_TOKENS_PER_SEC,
    )
}

fn check_remote(remote: &RemoteConfig) -> Result<(), String> {
    if !(remote.url.starts_with("http://") || remote.url.starts_with("https://")) {
        return Err(format!(
            "url must start with http:// or https://, not {:?}",
            remote.url
        ));
    }
    within("max_concurrent", remote.max_concurrent, 1, MAX_BATCH)?;
    within(
        "connect_timeout_ms",
        remote.connect_timeout_ms,
        1,
        MAX_MILLIS,
    )?;
    within("read_timeout_ms", remote.read_timeout_ms, 1, MAX_MILLIS)?;
    check_throughput(&remote.throughput).map_err(|message| format!("throughput.{message}"))
}

fn check_router(router: &RouterConfig) -> Result<(), String> {
    within("window", router.window, 1, 10_000)?;
    within("probe_ms", router.probe_ms, 1, MAX_MILLIS)?;
    if let Some(i) = router.routes.iter().position(|r| r.chain.is_empty()) {
        return Err(format!("routes[{i}].chain must name at least one backend"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadError;

    fn load_error(ron: &str) -> String {
        match HivemindConfig::from_ron(ron, "h.ron") {
            Err(err @ LoadError::Invalid { .. }) => err.to_string(),
            other => panic!("{ron}: expected a range error, got {other:?}"),
        }
    }

    #[test]
    fn the_shipped_and_default_configs_lie_in_range() {
        assert_eq!(HivemindConfig::default().validate(), Ok(()));
    }

    #[test]
    fn nan_inf_negative_and_absurd_values_are_errors_naming_the_field() {
        for (ron, field) in [
            // An infinite drain budget once passed and then panicked in the drain system.
            ("(budgets: (drain_ms: inf))", "budgets.drain_ms"),
            ("(budgets: (drain_ms: NaN))", "budgets.drain_ms"),
            ("(budgets: (drain_ms: -1.0))", "budgets.drain_ms"),
            ("(budgets: (drain_ms: 1e30))", "budgets.drain_ms"),
            (
                "(budgets: (max_plan_steps: 5000000))",
                "budgets.max_plan_steps",
            ),
            (
                "(budgets: (max_say_chars: 5000000))",
                "budgets.max_say_chars",
            ),
            ("(budgets: (snapshot_tokens: 0))", "budgets.snapshot_tokens"),
            (
                "(deadlines: (plan_ms: 18446744073709551615))",
                "deadlines.plan_ms",
            ),
            ("(batching: (workers: 100000))", "batching.workers"),
            ("(batching: (max_batch: 0))", "batching.max_batch"),
            ("(batching: (queue_capacity: 0))", "batching.queue_capacity"),
            ("(cache: (ttl_secs: inf))", "cache.ttl_secs"),
            ("(cache: (ttl_secs: -3.0))", "cache.ttl_secs"),
            ("(cache: (hp_low: NaN))", "cache.hp_low"),
            (
                "(cache: (capacity: 18446744073709551615))",
                "cache.capacity",
            ),
            ("(model: (threads: 100000))", "model.threads"),
            ("(model: (threads: 0))", "model.threads"),
            ("(model: (context_tokens: 0))", "model.context_tokens"),
            ("(model: (batch_tokens: 0))", "model.batch_tokens"),
            (
                "(model: (context_tokens: 512, batch_tokens: 4096))",
                "model.batch_tokens",
            ),
            (
                "(clock: (throughput: (prompt_tokens_per_sec: inf)))",
                "clock.throughput.prompt_tokens_per_sec",
            ),
            (
                "(clock: (throughput: (generated_tokens_per_sec: NaN)))",
                "clock.throughput.generated_tokens_per_sec",
            ),
            (
                "(sampling: (say: Random(temperature: inf, top_k: 1, top_p: 1.0)))",
                "sampling.say.temperature",
            ),
            (
                "(sampling: (plan: Random(temperature: 0.5, top_k: 1, top_p: NaN)))",
                "sampling.plan.top_p",
            ),
            (
                "(sampling: (banter: Random(temperature: 0.5, top_k: 1, top_p: 1.0, min_p: -0.5)))",
                "sampling.banter.min_p",
            ),
            (
                "(remotes: { \"big\": (read_timeout_ms: 0) })",
                "remotes.big.read_timeout_ms",
            ),
            (
                "(remotes: { \"big\": (throughput: (prompt_tokens_per_sec: -5.0)) })",
                "remotes.big.throughput.prompt_tokens_per_sec",
            ),
            ("(router: (probe_ms: 0))", "router.probe_ms"),
        ] {
            let err = load_error(ron);
            assert!(err.contains(field), "{ron}: {err} does not name {field}");
        }
    }

    #[test]
    fn the_edges_of_each_range_are_accepted() {
        for ron in [
            "(budgets: (drain_ms: 1000.0, max_plan_steps: 32, max_say_chars: 2048))",
            "(deadlines: (banter_ms: 0, plan_ms: 3600000))",
            "(model: (threads: 1024, context_tokens: 64, batch_tokens: 64))",
            "(cache: (capacity: 0, ttl_secs: 0.0, hp_low: 0.0, hp_high: 1.0))",
        ] {
            HivemindConfig::from_ron(ron, "h.ron").unwrap_or_else(|e| panic!("{ron}: {e}"));
        }
    }
}
