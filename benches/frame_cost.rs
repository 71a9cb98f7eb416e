//! The main-thread cost of hivemind per frame: every system of its five sets, from the start of
//! Gather to the end of Apply, with 1,000 agents, a worker that is always busy and a steady
//! stream of deadline fallbacks. Prints p50 / p95 / p99 / max per frame.
//!
//! ```text
//! cargo bench --no-default-features --bench frame_cost [-- --agents 1000 --frames 3000]
//! ```
//!
//! Each agent asks for a plan about once every `--every` frames (staggered by id), so the
//! plugin gathers, queues and prepares fallbacks for about `agents / every` requests a frame.
//! The "model" is the scripted backend with real latency, far slower than the deadlines, so the
//! queue stays full: most requests are answered by their GOAP fallback at the deadline, the
//! rest by the overflow rule, and the late model answers fill the cache. Frames are paced at
//! `--frame-ms` so that deadlines pass in real time as they would in a game.
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark that prints its table"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use hivemind::bevy::prelude::*;
use hivemind::bevy::{AgentSnapshot, FrameCost};
use hivemind::core::backend::{FnFactory, InferenceBackend, Latency, ScriptedBackend};
use hivemind::core::config::HivemindConfig;
use hivemind::core::plan::BackendId;
use hivemind_arena::fallback_plan;

#[path = "support.rs"]
mod support;

struct Args {
    agents: usize,
    frames: u32,
    every: u32,
    frame_ms: u64,
}

fn args() -> Args {
    let mut a = Args {
        agents: 1000,
        frames: 3000,
        every: 120,
        frame_ms: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--agents", Some(v)) => a.agents = v as usize,
            ("--frames", Some(v)) => a.frames = v as u32,
            ("--every", Some(v)) => a.every = v.max(1) as u32,
            ("--frame-ms", Some(v)) => a.frame_ms = v,
            // `cargo bench` passes `--bench`; anything else unknown is ignored too.
            _ => {}
        }
    }
    a
}

#[derive(Resource)]
struct Pace {
    every: u32,
    frame: u32,
}

/// Staggered re-plans, and every step reported done so plans move on.
fn game(
    mut pace: ResMut<Pace>,
    agents: Query<(Entity, &NpcAgent, &ActivePlan)>,
    mut plans: MessageWriter<RequestPlan>,
    mut finished: MessageWriter<StepFinished>,
) {
    pace.frame += 1;
    for (i, (entity, _, plan)) in agents.iter().enumerate() {
        if (pace.frame + i as u32).is_multiple_of(pace.every) {
            plans.write(RequestPlan::new(entity));
        } else if plan.current_step().is_some() && (pace.frame + i as u32).is_multiple_of(7) {
            finished.write(StepFinished {
                agent: entity,
                ok: true,
            });
        }
    }
}

fn main() {
    let args = args();
    let assets = Arc::new(support::assets());
    let snapshots = support::played_snapshots(&assets, 40);

    let mut config = HivemindConfig::default();
    config.deadlines.plan_ms = 50;
    config.batching.workers = 1;
    let script = ScriptedBackend::canned(&assets.registry.idle);
    let backend = FnFactory::new(BackendId::SCRIPTED, move || {
        Ok(Box::new(
            ScriptedBackend::new(Arc::clone(&script)).with_latency(Latency::Real {
                prompt: Duration::from_millis(40),
                per_token: Duration::from_millis(15),
            }),
        ) as Box<dyn InferenceBackend>)
    });
    let planner_assets = Arc::clone(&assets);
    let plugin = HivemindPlugin::default()
        .with_config(config)
        .with_registry(assets.registry.clone())
        .with_templates(assets.templates.clone())
        .with_prompt(assets.prompt.clone())
        .with_planner(move |s: &WorldSnapshot| {
            fallback_plan(&planner_assets.domain, &planner_assets.registry, s)
        })
        .with_backend(backend);

    let mut app = App::new();
    app.add_plugins((MinimalPlugins, plugin))
        .insert_resource(Pace {
            every: args.every,
            frame: 0,
        })
        .add_systems(Update, game.before(HivemindSystems::Gather));
    for i in 0..args.agents {
        let mut snapshot = snapshots[i % snapshots.len()].clone();
        snapshot.agent = AgentId(i as u32);
        let persona = if i % 2 == 0 { "veteran" } else { "rookie" };
        app.world_mut()
            .spawn((NpcAgent::new(persona), AgentSnapshot(snapshot)));
    }
    // Warm up: the worker starts, the task pool spins up, buffers grow.
    let pace = Duration::from_millis(args.frame_ms);
    for _ in 0..200 {
        let start = Instant::now();
        app.update();
        std::thread::sleep(pace.saturating_sub(start.elapsed()));
    }
    app.world_mut().resource_mut::<FrameCost>().clear();
    app.world_mut().resource_mut::<HivemindMetrics>().reset();
    let started = Instant::now();
    for _ in 0..args.frames {
        let start = Instant::now();
        app.update();
        std::thread::sleep(pace.saturating_sub(start.elapsed()));
    }
    let wall = started.elapsed();

    let cost = app.world().resource::<FrameCost>().histogram().clone();
    let metrics = app.world().resource::<HivemindMetrics>();
    let ms =
        |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3));
    let plans = metrics.total_answers(RequestKind::Plan);
    println!(
        "hivemind frame cost: {} agents, {} frames in {:.1} s, a re-plan per agent every {} frames",
        args.agents,
        args.frames,
        wall.as_secs_f64(),
        args.every
    );
    println!();
    println!("| frames | p50 | p95 | p99 | max | plans | deadline | overflow | model |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let model = plans
        - metrics.answers(
            RequestKind::Plan,
            hivemind::core::metrics::SourceLabel::Goap,
        )
        - metrics.answers(
            RequestKind::Plan,
            hivemind::core::metrics::SourceLabel::Cache,
        );
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        cost.count(),
        ms(cost.p50()),
        ms(cost.p95()),
        ms(cost.p99()),
        ms(cost.max()),
        plans,
        metrics.fallbacks(RequestKind::Plan, FallbackReason::Deadline),
        metrics.fallbacks(RequestKind::Plan, FallbackReason::Overflow),
        model,
    );
    let p99 = cost.p99().unwrap_or_default();
    if p99 > Duration::from_micros(500) {
        eprintln!("p99 {} is over the 0.5 ms target", ms(Some(p99)));
    }
}
