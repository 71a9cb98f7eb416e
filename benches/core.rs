//! Criterion micro-benchmarks of the core's hot paths.
//!
//! ```text
//! cargo bench --no-default-features --bench core
//! ```

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hivemind::core::cache::{AnswerCache, CachedAnswer};
use hivemind::core::clock::Timestamp;
use hivemind::core::config::{CacheConfig, HivemindConfig};
use hivemind::core::grammar::{Grammar, GrammarAgent, GrammarLimits};
use hivemind::core::prompt::{
    AgentRequest, AgentTask, ChatTemplate, Persona, PrefixTree, PromptRules,
};
use hivemind::core::stream::StreamParser;
use hivemind::core::templates::Slots;
use hivemind::prelude::*;
use hivemind_arena::fallback_plan;

#[path = "support.rs"]
mod support;

use support::{assets, played_snapshots};

/// Every agent's snapshot after some play, so the situations are varied.
fn snapshots(ticks: usize) -> Vec<WorldSnapshot> {
    played_snapshots(&assets(), ticks)
}

fn fallbacks(c: &mut Criterion) {
    let assets = assets();
    let snapshots = snapshots(40);
    let mut group = c.benchmark_group("fallback");
    group.bench_function("goap_plan_arena", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % snapshots.len();
            black_box(fallback_plan(
                &assets.domain,
                &assets.registry,
                &snapshots[i],
            ))
        });
    });
    let slots = Slots::new()
        .with("enemy", "Vex")
        .with("ally", "Rook")
        .with("self", "Ash");
    group.bench_function("template_line", |b| {
        let mut seed = 0u64;
        b.iter(|| {
            seed += 1;
            black_box(
                assets
                    .templates
                    .line(Some("veteran"), "low_health", &slots, seed),
            )
        });
    });
    group.finish();
}

fn cache(c: &mut Criterion) {
    let assets = assets();
    let snapshots = snapshots(40);
    let cache = AnswerCache::new(&CacheConfig {
        capacity: 4096,
        ..CacheConfig::default()
    });
    let now = Timestamp::ZERO;
    let mut cached = Vec::new();
    for s in &snapshots {
        let steps = fallback_plan(&assets.domain, &assets.registry, s);
        if let Some(answer) = CachedAnswer::from_steps(&steps, s, &assets.registry) {
            let key = cache.key("veteran", RequestKind::Plan, s);
            cache.insert(key, answer, now);
            cached.push(s.clone());
        }
    }
    assert!(!cached.is_empty(), "some arena plans are cacheable");
    let mut group = c.benchmark_group("cache");
    group.bench_function("hit", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % cached.len();
            let key = cache.key("veteran", RequestKind::Plan, &cached[i]);
            black_box(cache.get(&key, &cached[i], &assets.registry, now))
        });
    });
    group.bench_function("miss", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % snapshots.len();
            let key = cache.key("rookie", RequestKind::Plan, &snapshots[i]);
            black_box(cache.get(&key, &snapshots[i], &assets.registry, now))
        });
    });
    group.finish();
}

fn stream(c: &mut Criterion) {
    let assets = assets();
    let snapshots = snapshots(40);
    // What one shared-prompt sequence writes for sixteen agents.
    let text: String = snapshots
        .iter()
        .take(16)
        .map(|s| {
            let mut plan = Plan::new(
                s.agent,
                fallback_plan(&assets.domain, &assets.registry, s),
                PlanSource::Goap,
            );
            plan.steps.push(PlanStep::new("Say").with_arg(
                "text",
                ArgValue::Text("Hold the line, they are coming".into()),
            ));
            plan.to_json()
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut group = c.benchmark_group("stream");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("parse_16_plans_in_4_byte_tokens", |b| {
        b.iter_batched_ref(
            || {
                (
                    StreamParser::new(OutputFormat::FreePlan),
                    Vec::with_capacity(128),
                )
            },
            |(parser, events)| {
                for chunk in text.as_bytes().chunks(4) {
                    let _ = parser.feed(chunk, events);
                }
                black_box(parser.finish(events))
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn prompts(c: &mut Criterion) {
    let assets = assets();
    let snapshots = snapshots(40);
    let rules = PromptRules {
        preamble: "You plan for NPCs in an arena shooter.".into(),
        ..PromptRules::default()
    };
    let tree = PrefixTree::new(
        ChatTemplate::chatml(),
        OutputFormat::FreePlan,
        &rules,
        &assets.registry,
    )
    .with_persona(&Persona {
        name: "veteran".into(),
        voice: "Gruff and terse.".into(),
    });
    let budget = HivemindConfig::default().budgets.snapshot_tokens;
    let mut group = c.benchmark_group("prompt");
    group.bench_function("agent_block", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % snapshots.len();
            let fitted = snapshots[i].fit_to_budget(budget);
            let request = AgentRequest {
                agent: fitted.agent,
                persona: "veteran",
                snapshot: &fitted,
                task: AgentTask::Plan { order: None },
            };
            black_box(tree.sequence(&request))
        });
    });
    let batch: Vec<WorldSnapshot> = snapshots
        .iter()
        .take(16)
        .map(|s| s.fit_to_budget(budget))
        .collect();
    group.bench_function("shared_prompt_16", |b| {
        b.iter(|| {
            let requests: Vec<AgentRequest<'_>> = batch
                .iter()
                .map(|s| AgentRequest {
                    agent: s.agent,
                    persona: "veteran",
                    snapshot: s,
                    task: AgentTask::Plan { order: None },
                })
                .collect();
            black_box(tree.shared(&requests))
        });
    });
    group.bench_function("grammar_16", |b| {
        let agents: Vec<GrammarAgent<'_>> = batch.iter().map(GrammarAgent::new).collect();
        b.iter(|| {
            black_box(Grammar::build(
                OutputFormat::FreePlan,
                &assets.registry,
                &agents,
                GrammarLimits::default(),
            ))
        });
    });
    group.finish();
}

criterion_group!(benches, fallbacks, cache, stream, prompts);
criterion_main!(benches);
