//! A model's plan through the plugin with the arena's planner: a step the rules forbid is
//! repaired by GOAP, a guided intent is expanded into steps and its line said with the plan, and
//! the answer cache remembers the intent. The "model" is a scripted backend that writes exactly
//! the text each test needs, on the lockstep clock.
#![expect(
    clippy::unwrap_used,
    reason = "a test stops at the first thing that is not as it should be"
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_hivemind::HivemindMetrics;
use bevy_hivemind::prelude::*;
use hivemind::core::backend::{
    BackendFactory, BatchAgent, FnFactory, InferenceBackend, Script, ScriptedBackend,
};
use hivemind::core::config::{ClockMode, HivemindConfig, PlanFormat};
use hivemind::core::plan::{ArgValue, BackendId, OutputFormat, PlanSource};
use hivemind::core::prompt::AgentTask;
use hivemind::core::snapshot::{Bounds, EntityId, EntityInfo, Health, Point};
use hivemind_arena::snapshot::{COVER, ENEMY, OBJECTIVE};
use hivemind_arena::{ArenaAssets, ArenaPlanner};

fn assets() -> Arc<ArenaAssets> {
    Arc::new(
        ArenaAssets::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets"
        )))
        .unwrap(),
    )
}

/// An agent with an empty magazine, an enemy at 30% in sight and cover nearby.
fn empty_magazine() -> WorldSnapshot {
    WorldSnapshot::new(AgentId(2), Point::new(6, 5))
        .with_health(Health::new(80, 100))
        .with_bounds(Bounds::grid(20, 14))
        .with_fact("ammo", 0)
        .with_fact("medkits", 0)
        .with_entity(
            EntityInfo::new(EntityId(9), ENEMY, Point::new(11, 5))
                .with_health(Health::new(30, 100)),
        )
        .with_point(COVER, Point::new(7, 4))
        .with_point(OBJECTIVE, Point::new(10, 7))
}

/// What the scripted model saw last, per format.
#[derive(Default)]
struct Seen {
    tasks: Vec<AgentTask>,
}

fn backend(answer: &'static str, seen: Arc<Mutex<Seen>>) -> Arc<dyn BackendFactory> {
    let script: Script = Arc::new(move |agent: &BatchAgent, _format: OutputFormat| {
        if let Ok(mut seen) = seen.lock() {
            seen.tasks.push(agent.task.clone());
        }
        answer.replace("ID", &agent.agent.to_string())
    });
    FnFactory::new(BackendId::SCRIPTED, move || {
        Ok(Box::new(ScriptedBackend::new(Arc::clone(&script))) as Box<dyn InferenceBackend>)
    })
}

#[derive(Resource, Default)]
struct Plans(Vec<PlanReady>);

fn collect(mut plans: MessageReader<PlanReady>, mut done: ResMut<Plans>) {
    done.0.extend(plans.read().cloned());
}

fn app(config: HivemindConfig, factory: Arc<dyn BackendFactory>) -> App {
    let assets = assets();
    let mut config = config;
    config.clock.mode = ClockMode::Lockstep;
    // What is tested is what becomes of the answer, not whether it is in time.
    config.deadlines.plan_ms = 10_000;
    let plugin = HivemindPlugin::new(Update)
        .with_config(config)
        .with_registry(assets.registry.clone())
        .with_templates(assets.templates.clone())
        .with_prompt(assets.prompt.clone())
        .with_planner(ArenaPlanner::new(assets))
        .with_backend(factory);
    let mut app = App::new();
    app.add_plugins((MinimalPlugins, plugin))
        .insert_resource(TimeUpdateStrategy::ManualDuration(Duration::from_millis(
            20,
        )))
        .init_resource::<Plans>()
        .add_systems(Update, collect.after(HivemindSystems::Apply));
    app.finish();
    app.cleanup();
    app.update();
    app
}

/// Asks one plan for `snapshot` and runs until it completes.
fn plan(app: &mut App, snapshot: WorldSnapshot) -> PlanReady {
    let agent = app
        .world_mut()
        .spawn((NpcAgent::new("veteran"), AgentSnapshot(snapshot)))
        .id();
    app.world_mut().write_message(RequestPlan::new(agent));
    for _ in 0..200 {
        app.update();
        if let Some(done) = app
            .world()
            .resource::<Plans>()
            .0
            .iter()
            .find(|p| p.agent == agent)
        {
            return done.clone();
        }
    }
    panic!("no plan");
}

/// The default configuration with the model writing the steps.
fn free() -> HivemindConfig {
    let mut config = HivemindConfig::default();
    config.model.plan_format = PlanFormat::Free;
    config
}

const ATTACK_WHILE_EMPTY: &str =
    r#"{"agent":ID,"steps":[{"act":"Attack","target":9},{"act":"Wait"}]}"#;

#[test]
fn a_step_the_rules_forbid_is_repaired_from_there_by_goap() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut app = app(free(), backend(ATTACK_WHILE_EMPTY, seen));
    let done = plan(&mut app, empty_magazine());
    // Attacking with an empty magazine cannot run: GOAP plans from the start instead.
    assert_eq!(done.steps[0], PlanStep::new("Reload"));
    assert!(matches!(
        done.source,
        PlanSource::Llm { repaired: true, .. }
    ));
    assert_eq!(done.fallback, None);
    let metrics = app.world().resource::<HivemindMetrics>();
    assert_eq!(metrics.0.repairs(), 1);
}

#[test]
fn with_repair_off_the_model_steps_stand() {
    let mut config = free();
    config.model.repair = false;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut app = app(config, backend(ATTACK_WHILE_EMPTY, seen));
    let done = plan(&mut app, empty_magazine());
    assert_eq!(
        done.steps[0],
        PlanStep::new("Attack").with_arg("target", ArgValue::Int(9))
    );
    assert!(matches!(
        done.source,
        PlanSource::Llm {
            repaired: false,
            ..
        }
    ));
}

#[test]
fn a_guided_intent_becomes_goap_steps_with_the_line_and_the_cache_keeps_the_intent() {
    let mut config = HivemindConfig::default();
    config.model.plan_format = PlanFormat::Guided;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let answer = r#"{"agent":ID,"intent":2,"say":"Copy, moving to cover."}"#;
    let mut app = app(config, backend(answer, Arc::clone(&seen)));
    let done = plan(&mut app, empty_magazine());

    // The prompt offered the arena's scored intents, best first: reload, then cover.
    let tasks = std::mem::take(&mut seen.lock().unwrap().tasks);
    let AgentTask::Guided { options, .. } = &tasks[0] else {
        panic!("a guided task: {tasks:?}");
    };
    let goals: Vec<&str> = options.iter().map(|o| o.goal.as_str()).collect();
    assert_eq!(goals[..2], ["reload", "take_cover"]);
    // The model picked the second: GOAP writes its steps, and the plan carries the line.
    assert_eq!(
        done.steps,
        [PlanStep::new("TakeCover").with_arg("at", ArgValue::Point(Point::new(7, 4)))]
    );
    assert_eq!(done.say.as_deref(), Some("Copy, moving to cover."));
    assert!(matches!(
        done.source,
        PlanSource::Llm {
            repaired: false,
            ..
        }
    ));

    // The same situation again comes from the cache, as the intent re-expanded.
    let again = plan(&mut app, empty_magazine());
    assert_eq!(again.source, PlanSource::Cache);
    assert_eq!(again.steps, done.steps);
    assert_eq!(again.say, done.say);
    assert!(
        seen.lock().unwrap().tasks.is_empty(),
        "the model was not asked again"
    );
}

#[test]
fn an_intent_the_prompt_did_not_offer_is_answered_by_the_fallback_plan_as_a_repair() {
    let mut config = HivemindConfig::default();
    config.model.plan_format = PlanFormat::Guided;
    let seen = Arc::new(Mutex::new(Seen::default()));
    // A backend without the grammar (a remote one, say) may name any number.
    let answer = r#"{"agent":ID,"intent":7,"say":"Whatever."}"#;
    let mut app = app(config, backend(answer, seen));
    let done = plan(&mut app, empty_magazine());
    assert_eq!(done.steps, [PlanStep::new("Reload")]);
    assert!(matches!(
        done.source,
        PlanSource::Llm { repaired: true, .. }
    ));
}
