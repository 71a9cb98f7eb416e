//! A lockstep run of the arena through the Bevy plugin writes a log of every message hivemind
//! sends. The log must be byte-identical from run to run and whatever the size of the worker
//! pool: with the scripted backend over 300 ticks and 16 agents, and with the real model over a
//! shorter run.

#![expect(
    clippy::expect_used,
    reason = "a test stops at the first thing that is not as it should be"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "Bevy systems take their parameters by value"
)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use hivemind::bevy::prelude::*;
use hivemind::core::backend::{BackendFactory, Latency};
use hivemind::core::config::{ClockMode, HivemindConfig, PlanFormat, Throughput};
use hivemind_arena::{ArenaAssets, ArenaConfig};
use hivemind_examples::arena_app::{
    Arena, ArenaAgent, ArenaAppPlugin, ArenaSystems, name, scripted_backend,
};

const TICK: Duration = Duration::from_millis(100);

fn assets() -> Arc<ArenaAssets> {
    Arc::new(
        ArenaAssets::load(concat!(env!("CARGO_MANIFEST_DIR"), "/assets").as_ref())
            .expect("the arena's assets load"),
    )
}

/// The scripted "model": the GOAP plan for the snapshot it is shown, and a canned line.
fn goap_script(assets: Arc<ArenaAssets>) -> Arc<dyn BackendFactory> {
    scripted_backend(assets, Latency::Virtual)
}

#[derive(Resource, Default)]
struct Log(String);

fn record(
    arena: Res<Arena>,
    agents: Query<&ArenaAgent>,
    mut log: ResMut<Log>,
    mut steps: MessageReader<PlanStepReady>,
    mut words: MessageReader<LineDelta>,
    mut plans: MessageReader<PlanReady>,
    mut lines: MessageReader<LineReady>,
) {
    let tick = arena.world.now();
    let who = |e: Entity| {
        agents
            .get(e)
            .map_or_else(|_| format!("{e}"), |a| name(a.id))
    };
    let out = &mut log.0;
    for m in steps.read() {
        let _ = writeln!(
            out,
            "{tick} {} step {} {}: {}",
            who(m.agent),
            m.request,
            m.index,
            m.step.to_json()
        );
    }
    for m in words.read() {
        let _ = writeln!(
            out,
            "{tick} {} words {}: {:?}",
            who(m.agent),
            m.request,
            m.text
        );
    }
    for m in plans.read() {
        let _ = writeln!(
            out,
            "{tick} {} plan {} {:?} {:?} first {:?} full {:?}: {} steps",
            who(m.agent),
            m.request,
            m.source,
            m.fallback,
            m.first_after,
            m.latency,
            m.steps.len()
        );
    }
    for m in lines.read() {
        let _ = writeln!(
            out,
            "{tick} {} line {} {:?} {:?} {:?}: {:?}",
            who(m.agent),
            m.request,
            m.kind,
            m.source,
            m.fallback,
            m.text
        );
    }
}

struct Outcome {
    log: String,
    state_hash: u64,
}

fn run(
    format: PlanFormat,
    workers: usize,
    ticks: u32,
    team_size: u32,
    throughput: Throughput,
    backend: Arc<dyn BackendFactory>,
) -> Outcome {
    let assets = assets();
    let mut config = HivemindConfig::default();
    config.clock.mode = ClockMode::Lockstep;
    config.clock.throughput = throughput;
    config.batching.workers = workers;
    config.model.plan_format = format;
    let arena = ArenaAppPlugin::new(
        ArenaConfig::default()
            .with_seed(7)
            .with_team_size(team_size),
        assets,
    );
    let hivemind = arena.hivemind(
        HivemindPlugin::new(Update)
            .with_config(config)
            .with_backend(backend),
    );
    let mut app = App::new();
    app.add_plugins((MinimalPlugins, hivemind, arena))
        .insert_resource(TimeUpdateStrategy::ManualDuration(TICK))
        .init_resource::<Log>()
        .add_systems(
            Update,
            record
                .after(HivemindSystems::Apply)
                .before(ArenaSystems::Act),
        );
    app.finish();
    app.cleanup();
    for _ in 0..ticks {
        app.update();
    }
    app.world_mut().write_message(AppExit::Success);
    app.update();
    Outcome {
        log: std::mem::take(&mut app.world_mut().resource_mut::<Log>().0),
        state_hash: app.world().resource::<Arena>().world.state_hash(),
    }
}

fn assert_same(a: &Outcome, b: &Outcome, what: &str) {
    if a.log != b.log {
        let first = a
            .log
            .lines()
            .zip(b.log.lines())
            .position(|(x, y)| x != y)
            .unwrap_or(a.log.lines().count().min(b.log.lines().count()));
        panic!(
            "{what}: logs differ from line {first}:\n  {:?}\n  {:?}",
            a.log.lines().nth(first),
            b.log.lines().nth(first)
        );
    }
    assert_eq!(
        a.state_hash, b.state_hash,
        "{what}: the games ended differently"
    );
}

#[test]
fn a_scripted_lockstep_arena_repeats_byte_for_byte_with_1_2_and_4_workers() {
    // About 25 generated tokens a second: some first steps make the 500 ms plan deadline and
    // some do not, and which ones depends only on token counts.
    let throughput = Throughput {
        prompt_tokens_per_sec: 2_000.0,
        generated_tokens_per_sec: 25.0,
    };
    let script = goap_script(assets());
    // The script writes whole plans, as a model does in the free format.
    let free = PlanFormat::Free;
    let first = run(free, 1, 300, 8, throughput, Arc::clone(&script));
    let plans = first.log.matches(" plan ").count();
    assert!(plans > 50, "agents re-planned all game: {plans} plans");
    assert!(first.log.contains("Llm"), "some plans came from the model");
    assert!(
        first.log.contains("Some(Deadline)"),
        "and some missed their deadline"
    );
    assert!(first.log.contains(" line "), "agents bantered");
    for (workers, what) in [
        (1, "a second run"),
        (1, "a third run"),
        (2, "2 workers"),
        (4, "4 workers"),
    ] {
        let again = run(free, workers, 300, 8, throughput, Arc::clone(&script));
        assert_same(&first, &again, what);
    }
}

#[cfg(feature = "llama")]
#[test]
fn a_lockstep_arena_on_the_real_model_repeats_with_1_2_and_4_workers() {
    use hivemind::llama::LlamaFactory;

    let test = "a_lockstep_arena_on_the_real_model_repeats_with_1_2_and_4_workers";
    if hivemind::llama::testing::model_for_test(test).is_none() {
        return;
    }
    let config = HivemindConfig::default();
    let factory = || -> Arc<dyn BackendFactory> {
        LlamaFactory::from_config(&config).expect("the model fetched by scripts/setup loads")
    };
    let throughput = config.clock.throughput;
    let format = config.model.plan_format;
    let first = run(format, 1, 20, 4, throughput, factory());
    assert!(
        first.log.contains("Llm"),
        "the model answered some plans in time:\n{}",
        first.log
    );
    for workers in [2, 4] {
        let again = run(format, workers, 20, 4, throughput, factory());
        assert_same(&first, &again, &format!("{workers} workers"));
    }
}
