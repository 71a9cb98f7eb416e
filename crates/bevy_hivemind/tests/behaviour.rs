//! The plugin's delivery rules, driven headless: `MinimalPlugins`, `app.update()`, and time on a
//! lockstep clock that moves a fixed step per update, so deadlines never depend on the machine.

#![expect(
    clippy::unwrap_used,
    reason = "a test stops at the first thing that is not as it should be"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "Bevy systems take their parameters by value"
)]

use std::sync::Arc;
use std::time::Duration;

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_hivemind::prelude::*;
use bevy_hivemind::{FrameCost, RequestId};
use hivemind_core::action::ActionRegistry;
use hivemind_core::backend::{
    BatchAgent, FnFactory, InferenceBackend, Latency, Script, ScriptedBackend,
};
use hivemind_core::config::{ClockMode, HivemindConfig, Throughput};
use hivemind_core::plan::{ArgValue, BackendId, OutputFormat, Plan};
use hivemind_core::prompt::AgentTask;
use hivemind_core::snapshot::{EntityId, EntityInfo, Health, Point};
use hivemind_core::templates::TemplateBook;

/// One update of the app moves the clock this far.
const TICK: Duration = Duration::from_millis(100);

const REGISTRY: &str = r#"(
    idle: "Wait",
    verbs: [
        (name: "Attack", args: [(name: "target", kind: Entity(set: "enemy"))]),
        (name: "Reload"),
        (name: "Wait"),
    ],
)"#;

const TEMPLATES: &str = r#"(
    situations: {
        "idle": ["Quiet out here."],
        "greeting": ["State your business, {player}."],
    },
)"#;

fn registry() -> ActionRegistry {
    ActionRegistry::from_ron(REGISTRY, "test registry").unwrap()
}

/// The fallback planner: reload when empty, else wait.
fn planner(snapshot: &WorldSnapshot) -> Vec<PlanStep> {
    match snapshot.int_fact("ammo") {
        Some(0) => vec![PlanStep::new("Reload"), PlanStep::new("Wait")],
        _ => vec![PlanStep::new("Wait")],
    }
}

/// The "model": attacks the weakest enemy three times, or says a fixed line.
fn script() -> Script {
    Arc::new(|agent: &BatchAgent, format: OutputFormat| match format {
        OutputFormat::Line => {
            let say = match &agent.task {
                AgentTask::Dialogue { .. } => "Move along, traveller.",
                _ => "Nice and quiet.",
            };
            format!("{{\"agent\":{},\"say\":\"{say}\"}}", agent.agent)
        }
        _ => {
            let weakest = agent
                .snapshot
                .entities_in("enemy")
                .min_by_key(|e| (e.health.map_or(u32::MAX, |h| h.current), e.id))
                .map(|e| e.id);
            let steps = match weakest {
                Some(target) => {
                    vec![
                        PlanStep::new("Attack")
                            .with_arg("target", ArgValue::Int(i64::from(target.0)));
                        3
                    ]
                }
                None => vec![PlanStep::new("Wait")],
            };
            Plan::new(agent.agent, steps, PlanSource::Goap).to_json()
        }
    })
}

/// Virtual throughput: `fast` streams a plan over a few ticks, well inside every deadline;
/// slow misses every deadline.
fn throughput(fast: bool) -> Throughput {
    if fast {
        Throughput {
            prompt_tokens_per_sec: 5_000.0,
            generated_tokens_per_sec: 60.0,
        }
    } else {
        Throughput {
            prompt_tokens_per_sec: 50.0,
            generated_tokens_per_sec: 2.0,
        }
    }
}

fn plugin(fast: bool) -> HivemindPlugin {
    let mut config = HivemindConfig::default();
    config.clock.mode = ClockMode::Lockstep;
    config.clock.throughput = throughput(fast);
    // No bridges: a late reply is answered by its template at the dialogue deadline. Bridges
    // are the lifecycle's own tests.
    config.deadlines.reply_ms = config.deadlines.dialogue_ms;
    let script = script();
    HivemindPlugin::default()
        .with_config(config)
        .with_registry(registry())
        .with_templates(TemplateBook::from_ron(TEMPLATES, "test templates").unwrap())
        .with_planner(planner)
        .with_backend(FnFactory::new(BackendId::SCRIPTED, move || {
            Ok(Box::new(ScriptedBackend::new(Arc::clone(&script))) as Box<dyn InferenceBackend>)
        }))
}

/// Every message hivemind sent, with the update it was read in.
#[derive(Resource, Default)]
struct Log(Vec<(u32, Entry)>);

#[derive(Clone, Debug, PartialEq)]
enum Entry {
    Step(PlanStepReady),
    Words(LineDelta),
    Plan(PlanReady),
    Line(LineReady),
}

impl Entry {
    fn agent(&self) -> Entity {
        match self {
            Entry::Step(m) => m.agent,
            Entry::Words(m) => m.agent,
            Entry::Plan(m) => m.agent,
            Entry::Line(m) => m.agent,
        }
    }

    fn request(&self) -> RequestId {
        match self {
            Entry::Step(m) => m.request,
            Entry::Words(m) => m.request,
            Entry::Plan(m) => m.request,
            Entry::Line(m) => m.request,
        }
    }
}

/// The update count, and the hivemind clock's reading at each update.
#[derive(Resource, Default)]
struct Frame(u32, Vec<hivemind_core::clock::Timestamp>);

fn record(
    mut frame: ResMut<Frame>,
    mut log: ResMut<Log>,
    mut steps: MessageReader<PlanStepReady>,
    mut words: MessageReader<LineDelta>,
    mut plans: MessageReader<PlanReady>,
    mut lines: MessageReader<LineReady>,
    hm: Res<Hivemind>,
) {
    frame.0 += 1;
    frame.1.push(hm.clock().now());
    let f = frame.0;
    log.0
        .extend(steps.read().map(|m| (f, Entry::Step(m.clone()))));
    log.0
        .extend(words.read().map(|m| (f, Entry::Words(m.clone()))));
    log.0
        .extend(plans.read().map(|m| (f, Entry::Plan(m.clone()))));
    log.0
        .extend(lines.read().map(|m| (f, Entry::Line(m.clone()))));
}

fn app(plugin: HivemindPlugin) -> App {
    let mut app = App::new();
    app.add_plugins((MinimalPlugins, plugin))
        .insert_resource(TimeUpdateStrategy::ManualDuration(TICK))
        .init_resource::<Log>()
        .init_resource::<Frame>()
        .add_systems(Update, record.after(HivemindSystems::Apply));
    app.finish();
    app.cleanup();
    app.update();
    app
}

fn enemy(id: u32, hp: u32) -> EntityInfo {
    EntityInfo::new(EntityId(id), "enemy", Point::new(6, 4)).with_health(Health::new(hp, 100))
}

fn spawn_agent(app: &mut App, id: u32, enemies: Vec<EntityInfo>) -> Entity {
    let mut snapshot = WorldSnapshot::new(AgentId(id), Point::new(2, 2));
    snapshot.entities = enemies;
    snapshot.insert_fact("ammo", 3);
    app.world_mut()
        .spawn((NpcAgent::new("veteran"), AgentSnapshot(snapshot)))
        .id()
}

fn send<M: Message>(app: &mut App, message: M) {
    app.world_mut().write_message(message);
}

fn run(app: &mut App, updates: u32) {
    for _ in 0..updates {
        app.update();
    }
}

fn log(app: &App) -> &[(u32, Entry)] {
    &app.world().resource::<Log>().0
}

fn completions(app: &App, agent: Entity) -> Vec<(u32, Entry)> {
    log(app)
        .iter()
        .filter(|(_, e)| e.agent() == agent && matches!(e, Entry::Plan(_) | Entry::Line(_)))
        .cloned()
        .collect()
}

#[test]
fn a_model_slower_than_every_deadline_is_answered_by_fallbacks_at_the_deadline_tick() {
    let mut app = app(plugin(false));
    let planners: Vec<Entity> = (0..3).map(|i| spawn_agent(&mut app, i, vec![])).collect();
    let empty = spawn_agent(&mut app, 7, vec![]);
    app.world_mut()
        .get_mut::<AgentSnapshot>(empty)
        .unwrap()
        .insert_fact("ammo", 0);
    let talker = spawn_agent(&mut app, 9, vec![]);
    for &agent in planners.iter().chain([&empty]) {
        send(&mut app, RequestPlan::new(agent));
    }
    send(
        &mut app,
        RequestLine::reply(talker, "greeting", "Who goes there?").with_slot("player", "Mara"),
    );
    app.update();
    let asked = *app.world().resource::<Frame>().1.last().unwrap();
    assert!(
        app.world().get::<Thinking>(empty).is_some(),
        "a queued plan marks its agent as thinking"
    );
    run(&mut app, 12);

    let plan_due = asked.after(Duration::from_millis(500));
    let line_due = asked.after(Duration::from_millis(100));
    for &agent in planners.iter().chain([&empty]) {
        let done = completions(&app, agent);
        assert_eq!(done.len(), 1, "exactly one completion: {done:?}");
        let (frame, Entry::Plan(plan)) = &done[0] else {
            panic!("{done:?}")
        };
        assert_eq!(plan.source, PlanSource::Goap);
        assert_eq!(plan.fallback, Some(FallbackReason::Deadline));
        let clock = &app.world().resource::<Frame>().1;
        let at = |f: u32| clock[f as usize - 1];
        assert!(
            at(*frame) > plan_due && at(*frame - 1) <= plan_due,
            "answered in the first update past the deadline"
        );
        let steps: Vec<&PlanStep> = log(&app)
            .iter()
            .filter_map(|(_, e)| match e {
                Entry::Step(s) if s.agent == agent => Some(&s.step),
                _ => None,
            })
            .collect();
        assert_eq!(steps, plan.steps.iter().collect::<Vec<_>>());
        assert!(app.world().get::<Thinking>(agent).is_none());
    }
    let (_, Entry::Plan(reload)) = &completions(&app, empty)[0] else {
        unreachable!()
    };
    assert_eq!(reload.steps[0].verb, "Reload", "the game's planner made it");

    let done = completions(&app, talker);
    assert_eq!(done.len(), 1, "{done:?}");
    let (frame, Entry::Line(line)) = &done[0] else {
        panic!("{done:?}")
    };
    assert_eq!(line.source, PlanSource::Template);
    assert_eq!(line.fallback, Some(FallbackReason::Deadline));
    assert_eq!(line.text, "State your business, Mara.");
    assert!(line_due.since(asked) < plan_due.since(asked));
    assert!(
        *frame < completions(&app, empty)[0].0,
        "a reply is due before a plan"
    );
    let talk = app.world().get::<Conversation>(talker).unwrap();
    assert_eq!(talk.exchanges.len(), 1);
    assert_eq!(talk.exchanges[0].player, "Who goes there?");
}

#[test]
fn banter_is_answered_in_the_frame_it_is_asked() {
    let mut app = app(plugin(false));
    let agent = spawn_agent(&mut app, 1, vec![]);
    send(&mut app, RequestLine::banter(agent, "idle"));
    app.update();
    let done = completions(&app, agent);
    assert_eq!(done.len(), 1, "{done:?}");
    let (frame, Entry::Line(line)) = &done[0] else {
        panic!("{done:?}")
    };
    assert_eq!(*frame, 2, "the same update");
    assert_eq!(line.source, PlanSource::Template);
    assert_eq!(line.fallback, None);
    assert_eq!(line.text, "Quiet out here.");
    assert!(matches!(&log(&app)[0].1, Entry::Words(w) if w.text == line.text));
}

#[test]
fn idle_time_fills_the_banter_pool_and_later_banter_comes_from_it() {
    let mut app = app(plugin(true));
    let agent = spawn_agent(&mut app, 1, vec![]);
    send(&mut app, RequestLine::banter(agent, "idle"));
    run(&mut app, 30);
    assert!(
        !app.world().resource::<Hivemind>().banter().is_empty(),
        "the worker wrote banter while nothing else was in flight"
    );
    send(&mut app, RequestLine::banter(agent, "idle"));
    app.update();
    let done = completions(&app, agent);
    let (_, Entry::Line(line)) = done.last().unwrap() else {
        panic!("{done:?}")
    };
    assert_eq!(line.source, PlanSource::Cache);
    assert_eq!(line.text, "Nice and quiet.");
}

#[test]
fn plan_steps_stream_over_several_frames_before_the_completion() {
    let mut app = app(plugin(true));
    let agent = spawn_agent(&mut app, 1, vec![enemy(5, 80), enemy(6, 30)]);
    send(&mut app, RequestPlan::new(agent));
    run(&mut app, 20);
    let mine: Vec<&(u32, Entry)> = log(&app)
        .iter()
        .filter(|(_, e)| e.agent() == agent)
        .collect();
    let step_frames: Vec<u32> = mine
        .iter()
        .filter_map(|(f, e)| matches!(e, Entry::Step(_)).then_some(*f))
        .collect();
    assert_eq!(step_frames.len(), 3, "{mine:?}");
    assert!(
        step_frames.first() < step_frames.last(),
        "the steps arrived over several frames: {step_frames:?}"
    );
    let (done_frame, Entry::Plan(plan)) = mine.last().unwrap() else {
        panic!("{mine:?}")
    };
    assert!(*done_frame >= *step_frames.last().unwrap());
    assert_eq!(
        plan.source,
        PlanSource::Llm {
            backend: BackendId::new(BackendId::SCRIPTED),
            repaired: false
        }
    );
    assert_eq!(plan.fallback, None);
    assert_eq!(plan.steps[0].arg("target"), Some(&ArgValue::Int(6)));
    let active = app.world().get::<ActivePlan>(agent).unwrap();
    assert_eq!(active.steps, plan.steps);
    assert_eq!(active.status, PlanStatus::Complete);
    assert_eq!(active.source, Some(plan.source.clone()));
}

#[test]
fn a_repeated_situation_is_answered_from_the_cache_rebound_to_the_new_ids() {
    let mut app = app(plugin(true));
    let first = spawn_agent(&mut app, 1, vec![enemy(5, 80), enemy(6, 30)]);
    send(&mut app, RequestPlan::new(first));
    run(&mut app, 20);
    assert_eq!(completions(&app, first).len(), 1);

    // Another agent, the same persona and situation, other enemy ids.
    let second = spawn_agent(&mut app, 2, vec![enemy(8, 85), enemy(9, 25)]);
    app.update();
    let before = app.world().resource::<Frame>().0;
    send(&mut app, RequestPlan::new(second));
    app.update();
    let done = completions(&app, second);
    assert_eq!(done.len(), 1, "{done:?}");
    let (frame, Entry::Plan(plan)) = &done[0] else {
        panic!("{done:?}")
    };
    assert_eq!(*frame, before + 1, "a hit answers in the same frame");
    assert_eq!(plan.source, PlanSource::Cache);
    assert_eq!(plan.steps[0].arg("target"), Some(&ArgValue::Int(9)));
    assert!(app.world().resource::<HivemindMetrics>().cache().hits() >= 1);
}

#[test]
fn a_despawned_agent_gets_no_message_and_the_others_are_unaffected() {
    let mut app = app(plugin(false));
    let doomed = spawn_agent(&mut app, 1, vec![]);
    let survivor = spawn_agent(&mut app, 2, vec![]);
    send(&mut app, RequestPlan::new(doomed));
    send(&mut app, RequestPlan::new(survivor));
    app.update();
    app.world_mut().despawn(doomed);
    run(&mut app, 12);
    assert!(log(&app).iter().all(|(_, e)| e.agent() != doomed));
    assert_eq!(completions(&app, survivor).len(), 1);
    assert_eq!(app.world().resource::<Hivemind>().in_flight(), 0);
}

#[test]
fn a_cancelled_request_ends_silently_and_a_replaced_one_gives_way() {
    let mut app = app(plugin(false));
    let cancelled = spawn_agent(&mut app, 1, vec![]);
    let replaced = spawn_agent(&mut app, 2, vec![]);
    send(&mut app, RequestPlan::new(cancelled));
    send(&mut app, RequestPlan::new(replaced));
    app.update();
    let first = app.world().get::<Thinking>(replaced).unwrap().request;
    send(&mut app, CancelRequest::plan(cancelled));
    send(&mut app, RequestPlan::new(replaced));
    run(&mut app, 12);
    assert!(log(&app).iter().all(|(_, e)| e.agent() != cancelled));
    let done = completions(&app, replaced);
    assert_eq!(done.len(), 1, "{done:?}");
    assert_ne!(done[0].1.request(), first);
    assert!(log(&app).iter().all(|(_, e)| e.request() != first));
}

#[test]
fn a_failed_step_asks_for_a_new_plan() {
    let mut app = app(plugin(true));
    let agent = spawn_agent(&mut app, 1, vec![enemy(5, 40)]);
    send(&mut app, RequestPlan::new(agent));
    run(&mut app, 20);
    let first = app.world().get::<ActivePlan>(agent).unwrap().request;
    send(&mut app, StepFinished { agent, ok: true });
    app.update();
    assert_eq!(app.world().get::<ActivePlan>(agent).unwrap().current, 1);
    send(&mut app, StepFinished { agent, ok: false });
    app.update();
    assert!(
        app.world().get::<Thinking>(agent).is_some() || completions(&app, agent).len() == 2,
        "a new plan was asked for"
    );
    run(&mut app, 20);
    let done = completions(&app, agent);
    assert_eq!(done.len(), 2, "{done:?}");
    let plan = app.world().get::<ActivePlan>(agent).unwrap();
    assert_ne!(plan.request, first);
    assert_eq!(plan.current, 0);
}

#[test]
fn paused_virtual_time_holds_deadlines() {
    let mut app = app(plugin(false));
    let agent = spawn_agent(&mut app, 1, vec![]);
    send(&mut app, RequestPlan::new(agent));
    app.update();
    app.world_mut().resource_mut::<Time<Virtual>>().pause();
    run(&mut app, 20);
    assert!(
        completions(&app, agent).is_empty(),
        "no deadline passes while paused"
    );
    app.world_mut().resource_mut::<Time<Virtual>>().unpause();
    run(&mut app, 7);
    let done = completions(&app, agent);
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(matches!(&done[0].1, Entry::Plan(p) if p.fallback == Some(FallbackReason::Deadline)));
}

#[test]
fn a_full_queue_answers_the_overflow_with_fallbacks() {
    let mut plugin = plugin(false);
    plugin.config.batching.queue_capacity = 2;
    let mut app = app(plugin);
    let agents: Vec<Entity> = (0..5).map(|i| spawn_agent(&mut app, i, vec![])).collect();
    for &agent in &agents {
        send(&mut app, RequestPlan::new(agent));
    }
    run(&mut app, 12);
    let reasons: Vec<Option<FallbackReason>> = agents
        .iter()
        .map(|&a| {
            let done = completions(&app, a);
            assert_eq!(done.len(), 1, "{done:?}");
            match &done[0].1 {
                Entry::Plan(p) => p.fallback,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    let overflow = reasons
        .iter()
        .filter(|r| **r == Some(FallbackReason::Overflow))
        .count();
    assert_eq!(overflow, 3, "{reasons:?}");
}

#[test]
fn forced_fallback_answers_at_once_with_its_reason() {
    let mut app = app(plugin(true));
    app.world_mut()
        .resource_mut::<Hivemind>()
        .set_force_fallback(true);
    let agent = spawn_agent(&mut app, 1, vec![enemy(5, 40)]);
    send(&mut app, RequestPlan::new(agent));
    app.update();
    let done = completions(&app, agent);
    assert_eq!(done.len(), 1);
    assert!(matches!(&done[0].1, Entry::Plan(p) if p.fallback == Some(FallbackReason::Forced)));
}

#[test]
fn the_line_filter_cuts_and_rejects_before_a_player_sees_a_word() {
    let mut app = app(plugin(true).with_line_filter(
        LineRules {
            max_chars: 12,
            banned: Vec::new(),
            no_loops: true,
        }
        .with_banned("traveller"),
    ));
    let agent = spawn_agent(&mut app, 1, vec![]);
    send(&mut app, RequestLine::reply(agent, "greeting", "hello"));
    run(&mut app, 20);
    let done = completions(&app, agent);
    assert_eq!(done.len(), 1, "{done:?}");
    let Entry::Line(line) = &done[0].1 else {
        panic!()
    };
    assert!(!line.text.to_lowercase().contains("traveller"), "{line:?}");
    let said: String = log(&app)
        .iter()
        .filter_map(|(_, e)| match e {
            Entry::Words(w) if w.agent == agent => Some(w.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(said, line.text, "the words are the line");
}

#[test]
fn a_missing_backend_runs_on_fallbacks_and_says_why() {
    let mut config = HivemindConfig::default();
    config.clock.mode = ClockMode::Lockstep;
    let mut app = app(HivemindPlugin::default()
        .with_config(config)
        .with_registry(registry())
        .with_planner(planner));
    let agent = spawn_agent(&mut app, 1, vec![]);
    send(&mut app, RequestPlan::new(agent));
    run(&mut app, 3);
    let done = completions(&app, agent);
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(matches!(&done[0].1, Entry::Plan(p) if p.fallback == Some(FallbackReason::NoModel)));
    assert!(matches!(
        app.world().resource::<Hivemind>().fallback_only(),
        Some(bevy_hivemind::FallbackOnly::NoBackend)
    ));
    assert_eq!(app.world().resource::<Hivemind>().backend(), None);
}

#[test]
fn app_exit_stops_the_workers_in_the_middle_of_a_decode() {
    let slow = script();
    let mut real_time = plugin(true).with_backend(FnFactory::new("slow", move || {
        Ok(Box::new(
            ScriptedBackend::new(Arc::clone(&slow)).with_latency(Latency::Real {
                prompt: Duration::from_millis(1),
                per_token: Duration::from_millis(200),
            }),
        ) as Box<dyn InferenceBackend>)
    }));
    real_time.config.clock.mode = ClockMode::RealTime;
    let mut app = app(real_time);
    let agent = spawn_agent(&mut app, 1, vec![enemy(5, 40)]);
    send(&mut app, RequestPlan::new(agent));
    app.update();
    std::thread::sleep(Duration::from_millis(50));
    send(&mut app, AppExit::Success);
    app.update();
    let hm = app.world().resource::<Hivemind>();
    assert_eq!(hm.in_flight(), 0, "shut down, nothing left waiting");
    assert!(app.world().resource::<FrameCost>().histogram().count() > 0);
}

/// Updates until `done` holds, giving the asset server's IO threads time to work. Not a timing
/// assertion: it only bounds how long a broken load can hang the test.
fn update_until(app: &mut App, mut done: impl FnMut(&App) -> bool) -> bool {
    for _ in 0..1000 {
        app.update();
        if done(app) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// An app with `plugin` and an asset server reading files from `dir`, finished and ready to
/// update.
fn asset_app(dir: &std::path::Path, plugin: HivemindPlugin) -> App {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin {
            file_path: dir.display().to_string(),
            ..default()
        },
        plugin,
    ))
    .insert_resource(TimeUpdateStrategy::ManualDuration(TICK));
    app.finish();
    app.cleanup();
    app
}

/// Updates until the asset server reports the plugin's file chosen by `id` as a failed load.
fn load_fails(
    app: &mut App,
    id: impl Fn(&bevy_hivemind::HivemindAssetHandles) -> bevy::asset::UntypedAssetId,
) -> bool {
    update_until(app, |a| {
        let id = id(a.world().resource::<bevy_hivemind::HivemindAssetHandles>());
        matches!(
            a.world().resource::<AssetServer>().get_load_state(id),
            Some(bevy::asset::LoadState::Failed(_))
        )
    })
}

#[test]
fn config_and_personas_reload_through_the_asset_server_and_bad_files_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("hivemind.ron", "(deadlines: (plan_ms: 250))");
    write(
        "prompt.ron",
        r#"(rules: (preamble: "You plan for guards."), personas: [(name: "veteran", voice: "Gruff.")])"#,
    );
    let mut app = asset_app(
        dir.path(),
        plugin(true)
            .with_config_asset("hivemind.ron")
            .with_prompt_asset("prompt.ron"),
    );
    let plan_ms = |app: &App| {
        app.world()
            .resource::<Hivemind>()
            .config()
            .deadlines
            .plan_ms
    };
    let voice = |app: &App| {
        app.world()
            .resource::<Hivemind>()
            .prompt()
            .persona("veteran")
            .map(|p| p.voice.clone())
    };
    let loaded = update_until(&mut app, |a| plan_ms(a) == 250 && voice(a).is_some());
    {
        let handles = app
            .world()
            .resource::<bevy_hivemind::HivemindAssetHandles>();
        let server = app.world().resource::<AssetServer>();
        assert!(
            loaded,
            "both files loaded: {:?} {:?}",
            handles
                .config
                .as_ref()
                .map(|h| server.get_load_state(h.id())),
            handles
                .prompt
                .as_ref()
                .map(|h| server.get_load_state(h.id())),
        );
    }
    assert_eq!(
        app.world().resource::<HivemindSettings>().deadlines.plan_ms,
        250
    );
    assert_eq!(voice(&app).as_deref(), Some("Gruff."));

    write("hivemind.ron", "(deadlines: (plan_ms: 320))");
    write(
        "prompt.ron",
        r#"(rules: (preamble: "You plan for guards."), personas: [(name: "veteran", voice: "Weary.")])"#,
    );
    let server = app.world().resource::<AssetServer>().clone();
    server.reload("hivemind.ron");
    server.reload("prompt.ron");
    assert!(
        update_until(&mut app, |a| plan_ms(a) == 320
            && voice(a).as_deref() == Some("Weary.")),
        "both files reloaded"
    );

    // A console edit holds until the next reload.
    app.world_mut()
        .resource_mut::<HivemindSettings>()
        .deadlines
        .plan_ms = 400;
    app.update();
    assert_eq!(plan_ms(&app), 400);

    write("hivemind.ron", "(deadlines: (plan_ms: oops))");
    server.reload("hivemind.ron");
    assert!(
        load_fails(&mut app, |h| h.config.as_ref().unwrap().id().untyped()),
        "the bad file is reported as a failed load"
    );
    run(&mut app, 3);
    assert_eq!(plan_ms(&app), 400, "a bad file changes nothing");

    // A value out of its range is refused, from a file and from an edit alike: an infinite drain
    // budget once reached the runtime and every frame's drain.
    write(
        "hivemind.ron",
        "(deadlines: (plan_ms: 450), budgets: (drain_ms: inf))",
    );
    server.reload("hivemind.ron");
    assert!(
        load_fails(&mut app, |h| h.config.as_ref().unwrap().id().untyped()),
        "an out-of-range file is reported as a failed load"
    );
    run(&mut app, 3);
    assert_eq!(plan_ms(&app), 400, "an out-of-range file changes nothing");

    let mut edit = app.world().resource::<HivemindSettings>().0.clone();
    edit.deadlines.plan_ms = 450;
    edit.budgets.drain_ms = f32::INFINITY;
    app.world_mut().resource_mut::<HivemindSettings>().0 = edit;
    app.update();
    let hm = app.world().resource::<Hivemind>();
    assert_eq!(
        hm.config().budgets.drain_ms,
        0.25,
        "the edit is not applied"
    );
    assert_eq!(hm.config().deadlines.plan_ms, 400);
    let settings = app.world().resource::<HivemindSettings>();
    assert_eq!(
        settings.0,
        *hm.config(),
        "the settings go back to those in effect"
    );
}

#[test]
fn actions_and_templates_reload_through_the_asset_server() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("actions.ron", REGISTRY);
    write("lines.ron", r#"(situations: {"idle": ["First words."]})"#);
    let mut app = asset_app(
        dir.path(),
        plugin(true)
            .with_registry_asset("actions.ron")
            .with_templates_asset("lines.ron"),
    );
    let verbs = |app: &App| app.world().resource::<Hivemind>().registry().verbs.len();
    let idle_line = |app: &App| {
        let slots = hivemind_core::templates::Slots::new();
        app.world()
            .resource::<Hivemind>()
            .templates()
            .line(None, "idle", &slots, 0)
            .ok()
    };
    assert!(
        update_until(&mut app, |a| idle_line(a).as_deref()
            == Some("First words.")),
        "the templates file loaded"
    );
    assert_eq!(verbs(&app), 3);

    write(
        "actions.ron",
        r#"(idle: "Wait", verbs: [(name: "Reload"), (name: "Wait")])"#,
    );
    write("lines.ron", r#"(situations: {"idle": ["Second words."]})"#);
    let server = app.world().resource::<AssetServer>().clone();
    server.reload("actions.ron");
    server.reload("lines.ron");
    assert!(
        update_until(&mut app, |a| verbs(a) == 2
            && idle_line(a).as_deref() == Some("Second words.")),
        "both files reloaded"
    );

    write("actions.ron", "(idle: oops)");
    server.reload("actions.ron");
    assert!(
        load_fails(&mut app, |h| h.actions.as_ref().unwrap().id().untyped()),
        "the bad file is reported as a failed load"
    );
    run(&mut app, 3);
    assert_eq!(verbs(&app), 2, "a bad file changes nothing");
}

#[test]
fn the_layout_and_the_backend_switch_at_run_time() {
    let mut app = app(
        plugin(true).with_standby_backend(FnFactory::new(BackendId::REPLAY, || {
            Ok(
                Box::new(ScriptedBackend::new(ScriptedBackend::canned("Wait")))
                    as Box<dyn InferenceBackend>,
            )
        })),
    );
    let agent = spawn_agent(&mut app, 1, vec![enemy(5, 40)]);
    app.world_mut()
        .resource_mut::<HivemindSettings>()
        .model
        .layout = hivemind_core::config::PromptLayout::SharedPrompt;
    app.update();
    assert_eq!(
        app.world().resource::<Hivemind>().layout(),
        hivemind_core::config::PromptLayout::SharedPrompt
    );
    let mut hm = app.world_mut().resource_mut::<Hivemind>();
    assert!(
        hm.set_backend(&BackendId::new("remote")).is_err(),
        "not registered"
    );
    hm.set_backend(&BackendId::new(BackendId::REPLAY)).unwrap();
    assert_eq!(hm.backend(), Some(BackendId::new(BackendId::REPLAY)));
    send(&mut app, RequestPlan::new(agent));
    run(&mut app, 20);
    let done = completions(&app, agent);
    let (_, Entry::Plan(plan)) = &done[0] else {
        panic!("{done:?}")
    };
    // The standby "backend" reports itself as scripted; the switch took effect because its
    // canned plan is a single Wait, where the first backend attacks.
    assert_eq!(plan.steps, vec![PlanStep::new("Wait")]);
}

#[test]
fn a_drain_budget_spreads_events_over_frames_and_loses_none() {
    let mut real_time = plugin(true);
    real_time.config.clock.mode = ClockMode::RealTime;
    real_time.config.budgets.drain_ms = 0.0;
    // Generous deadlines: the point is the budget, not the race.
    real_time.config.deadlines.plan_ms = 60_000;
    let mut app = app(real_time);
    let agents: Vec<Entity> = (0..40)
        .map(|i| spawn_agent(&mut app, i, vec![enemy(5, 40)]))
        .collect();
    for &agent in &agents {
        send(&mut app, RequestPlan::new(agent));
    }
    assert!(update_until(&mut app, |a| {
        agents.iter().all(|&agent| completions(a, agent).len() == 1)
    }));
    let frames: std::collections::BTreeSet<u32> = log(&app).iter().map(|(f, _)| *f).collect();
    assert!(
        frames.len() > 1,
        "a zero budget reads a few events a frame: {frames:?}"
    );
    for &agent in &agents {
        let steps = log(&app)
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Step(s) if s.agent == agent))
            .count();
        assert_eq!(steps, 3, "every step arrived");
    }
}

#[derive(Resource, Default)]
struct Started(Vec<(Entity, usize, String)>);

fn on_attack(In(call): In<VerbCall>, mut started: ResMut<Started>) {
    started.0.push((call.agent, call.index, call.step.verb));
}

#[test]
fn verb_handlers_run_once_for_each_step_an_agent_starts() {
    let mut app = app(plugin(true));
    app.init_resource::<Started>()
        .add_verb_handler("Attack", on_attack);
    let agent = spawn_agent(&mut app, 1, vec![enemy(5, 40)]);
    send(&mut app, RequestPlan::new(agent));
    run(&mut app, 20);
    assert_eq!(
        app.world().resource::<Started>().0,
        vec![(agent, 0, "Attack".to_owned())],
        "the first step started once, however many steps streamed in after it"
    );
    send(&mut app, StepFinished { agent, ok: true });
    run(&mut app, 2);
    assert_eq!(
        app.world().resource::<Started>().0.last(),
        Some(&(agent, 1, "Attack".to_owned()))
    );
    assert_eq!(app.world().resource::<Started>().0.len(), 2);
}
