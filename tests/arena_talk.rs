//! Talking to an arena agent through the message the talk box writes, [`PlayerSaid`]: the agent
//! replies once, word by word, remembers the exchange, and acts on the plan that answers what
//! was said.
//!
//! The arena runs headless on a lockstep clock with a scripted "model" fast enough to answer
//! everything in time. It plays the arena's scripted model (GOAP plans, canned lines) except
//! where a model reads the player's words: a reply says it heard them, and a plan that answers
//! them picks the offered intent the words name, as a model obeying an order would.

#![expect(
    clippy::expect_used,
    reason = "a test stops at the first thing that is not as it should be"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "Bevy systems take their parameters by value"
)]

use std::sync::Arc;
use std::time::Duration;

use bevy::diagnostic::FrameCount;
use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use hivemind::bevy::prelude::*;
use hivemind::bevy::{Exchange, RequestId};
use hivemind::core::backend::{
    BackendFactory, BatchAgent, FnFactory, InferenceBackend, Script, ScriptedBackend,
};
use hivemind::core::config::{ClockMode, HivemindConfig, PlanFormat, Throughput};
use hivemind::core::plan::{BackendId, OutputFormat, Plan};
use hivemind::core::prompt::AgentTask;
use hivemind_arena::{ArenaAssets, ArenaConfig, fallback_plan};
use hivemind_examples::arena_app::{
    Arena, ArenaAgent, ArenaAppPlugin, ArenaSystems, MAX_SAID_CHARS, PlayerSaid,
};

const TICK: Duration = Duration::from_millis(100);

/// What the scripted model answers when spoken to.
const REPLY: &str = "Copy that, heading for cover.";
/// What it says while acting on an order.
const ORDER_SAY: &str = "Moving out.";

fn assets() -> Arc<ArenaAssets> {
    Arc::new(
        ArenaAssets::load(concat!(env!("CARGO_MANIFEST_DIR"), "/assets").as_ref())
            .expect("the arena's assets load"),
    )
}

/// The scripted "model" that listens: a reply for dialogue; for a plan answering the player,
/// the first offered intent whose label's first word the player used; otherwise the arena's
/// scripted answers.
fn listening_model(assets: Arc<ArenaAssets>) -> Arc<dyn BackendFactory> {
    let canned = ScriptedBackend::canned(&assets.registry.idle);
    let script: Script = Arc::new(move |agent: &BatchAgent, format: OutputFormat| {
        let id = agent.agent;
        match (&agent.task, format) {
            (AgentTask::Dialogue { .. }, _) => format!("{{\"agent\":{id},\"say\":\"{REPLY}\"}}"),
            (task, OutputFormat::Guided) if task.order().is_some() => {
                let said = task.order().unwrap_or_default().to_lowercase();
                let named = task.options().iter().position(|option| {
                    let verb = option.label.split_whitespace().next().unwrap_or_default();
                    !verb.is_empty() && said.contains(&verb.to_lowercase())
                });
                let intent = named.map_or(1, |i| i + 1);
                format!("{{\"agent\":{id},\"intent\":{intent},\"say\":\"{ORDER_SAY}\"}}")
            }
            (_, OutputFormat::FreePlan) => {
                let steps = fallback_plan(&assets.domain, &assets.registry, &agent.snapshot);
                Plan::new(id, steps, PlanSource::Goap).to_json()
            }
            _ => canned(agent, format),
        }
    });
    FnFactory::new(BackendId::SCRIPTED, move || {
        Ok(Box::new(ScriptedBackend::new(Arc::clone(&script))) as Box<dyn InferenceBackend>)
    })
}

/// A message hivemind sent, or the player's words, in the order they happened.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Talk,
    Words {
        agent: Entity,
        request: RequestId,
        text: String,
    },
    Line(LineReady),
    Plan(PlanReady),
}

/// What was seen, with the frame it was seen in.
#[derive(Resource, Default)]
struct Log(Vec<(u32, Seen)>);

fn record(
    frame: Res<FrameCount>,
    mut seen: ResMut<Log>,
    mut said: MessageReader<PlayerSaid>,
    mut words: MessageReader<LineDelta>,
    mut lines: MessageReader<LineReady>,
    mut plans: MessageReader<PlanReady>,
) {
    let at = frame.0;
    let seen = &mut seen.0;
    seen.extend(said.read().map(|_| (at, Seen::Talk)));
    seen.extend(words.read().map(|w| {
        let words = Seen::Words {
            agent: w.agent,
            request: w.request,
            text: w.text.clone(),
        };
        (at, words)
    }));
    seen.extend(lines.read().map(|l| (at, Seen::Line(l.clone()))));
    seen.extend(plans.read().map(|p| (at, Seen::Plan(p.clone()))));
}

fn app() -> App {
    let assets = assets();
    let mut config = HivemindConfig::default();
    config.clock.mode = ClockMode::Lockstep;
    config.model.plan_format = PlanFormat::Guided;
    // A reply's words take several frames to write, and every answer is still in time: the
    // test is about where the answers go, not about deadlines.
    config.clock.throughput = Throughput {
        prompt_tokens_per_sec: 100_000.0,
        generated_tokens_per_sec: 40.0,
    };
    config.deadlines.dialogue_ms = 2_000;
    config.deadlines.plan_ms = 2_000;
    let mut arena = ArenaAppPlugin::new(
        ArenaConfig::default().with_seed(3).with_team_size(2),
        Arc::clone(&assets),
    );
    arena.banter_every = 0;
    let hivemind = arena.hivemind(
        HivemindPlugin::new(Update)
            .with_config(config)
            .with_backend(listening_model(assets)),
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
    app
}

fn run(app: &mut App, frames: usize) {
    for _ in 0..frames {
        app.update();
    }
}

/// Says `text` to `agent` the way the talk box does.
fn say(app: &mut App, agent: Entity, text: &str) {
    app.world_mut().write_message(PlayerSaid {
        agent,
        text: text.to_owned(),
    });
}

fn seen(app: &App) -> &[(u32, Seen)] {
    &app.world().resource::<Log>().0
}

#[test]
fn a_spoken_to_agent_replies_once_word_by_word_remembers_it_and_acts_on_the_answer() {
    let mut app = app();
    // Agents leave their base, walking to the objective on plans of their own.
    run(&mut app, 6);
    let vex = app
        .world()
        .resource::<Arena>()
        .numbered(1)
        .expect("agent 1");
    let id = app
        .world()
        .get::<ArenaAgent>(vex)
        .expect("an arena agent")
        .id;
    let busy = |app: &App| {
        let arena = app.world().resource::<Arena>();
        arena.world.agent(id).and_then(|a| a.step().cloned())
    };
    let walking = busy(&app).expect("the agent is busy when spoken to");
    let said = "Take cover, now!";
    say(&mut app, vex, said);
    // Until the plan that answers arrives; the agent begins its first step in the same frame.
    let answered = |app: &App| {
        seen(app)
            .iter()
            .skip_while(|(_, s)| *s != Seen::Talk)
            .find_map(|(_, s)| match s {
                Seen::Plan(plan) if plan.agent == vex => Some(plan.clone()),
                _ => None,
            })
    };
    let mut frames = 0;
    while answered(&app).is_none() && frames < 60 {
        app.update();
        frames += 1;
    }
    let answer = answered(&app).expect("a plan answered the talk");
    let arena = app.world().resource::<Arena>();
    assert!(
        arena
            .world
            .agent(id)
            .is_some_and(hivemind_arena::Agent::is_alive),
        "the agent is alive to act"
    );
    let agent = app.world().get::<ArenaAgent>(vex).expect("an arena agent");
    assert!(!agent.is_answering(), "the answer has arrived");
    assert_eq!(
        app.world().get::<ActivePlan>(vex).expect("a plan").request,
        Some(answer.request),
        "the answer is its plan"
    );
    assert_eq!(
        agent.begun().map(|(request, _)| request),
        Some(answer.request),
        "it began the answer's first step at once"
    );
    assert_eq!(
        busy(&app).as_ref(),
        answer.steps.first(),
        "it dropped what it was doing ({walking}) for the answer"
    );
    // The model chose the intent the player named, and says so while acting.
    assert_eq!(answer.intent.as_deref(), Some("take_cover"), "{answer:?}");
    assert_eq!(answer.say.as_deref(), Some(ORDER_SAY));
    assert!(
        matches!(answer.source, PlanSource::Llm { .. }) && answer.fallback.is_none(),
        "{answer:?}"
    );
    // More frames, in which nothing else answers the talk.
    run(&mut app, 20);
    let seen = seen(&app);
    let talk = seen
        .iter()
        .find_map(|(at, s)| (*s == Seen::Talk).then_some(*at))
        .expect("the player's words were read");

    // Exactly one reply, from the model, streamed over frames before it was complete.
    let replies: Vec<(u32, &LineReady)> = seen
        .iter()
        .filter_map(|(at, s)| match s {
            Seen::Line(line) if line.kind == RequestKind::Dialogue => Some((*at, line)),
            _ => None,
        })
        .collect();
    assert_eq!(replies.len(), 1, "one reply: {replies:?}");
    let (at, reply) = replies[0];
    assert_eq!(reply.agent, vex, "the agent spoken to replies");
    assert!(at > talk, "the reply comes after the talk");
    assert!(
        matches!(reply.source, PlanSource::Llm { .. }) && reply.fallback.is_none(),
        "the model replied in time: {reply:?}"
    );
    assert_eq!(reply.text.trim(), REPLY);
    let words: Vec<(u32, &str)> = seen
        .iter()
        .filter_map(|(at, s)| match s {
            Seen::Words {
                agent,
                request,
                text,
            } if *agent == vex && *request == reply.request => Some((*at, text.as_str())),
            _ => None,
        })
        .collect();
    assert!(
        words.iter().all(|(frame, _)| (talk..=at).contains(frame)),
        "every word came between the talk and the completion: {words:?}, complete at {at}"
    );
    assert!(
        words.iter().any(|(frame, _)| *frame < at),
        "some words came frames before the completion: {words:?}, complete at {at}"
    );
    let streamed: String = words.iter().map(|(_, text)| *text).collect();
    assert_eq!(streamed.trim(), reply.text.trim());

    // The exchange is remembered for the next dialogue prompt.
    let conversation = app
        .world()
        .get::<Conversation>(vex)
        .expect("an agent has a conversation");
    assert_eq!(
        conversation.exchanges.iter().cloned().collect::<Vec<_>>(),
        vec![Exchange {
            player: said.to_owned(),
            reply: reply.text.clone(),
        }]
    );
}

#[test]
fn what_the_player_says_is_capped_and_blank_lines_ask_for_nothing() {
    let mut app = app();
    run(&mut app, 6);
    let arena = app.world().resource::<Arena>();
    let (rook, ash) = (
        arena.numbered(2).expect("agent 2"),
        arena.numbered(3).expect("agent 3"),
    );
    assert_eq!(arena.numbered(0), None);
    assert_eq!(arena.numbered(5), None, "four agents");
    say(&mut app, rook, " \n\t ");
    let rant = "hold the objective and watch the left ramp ".repeat(12);
    say(&mut app, ash, &rant);
    run(&mut app, 20);
    let seen = seen(&app);
    let replies: Vec<&LineReady> = seen
        .iter()
        .filter_map(|(_, s)| match s {
            Seen::Line(line) if line.kind == RequestKind::Dialogue => Some(line),
            _ => None,
        })
        .collect();
    assert_eq!(
        replies.iter().map(|l| l.agent).collect::<Vec<_>>(),
        vec![ash],
        "only the agent told something replies"
    );
    let conversation = app
        .world()
        .get::<Conversation>(ash)
        .expect("a conversation");
    let player = &conversation.exchanges.back().expect("an exchange").player;
    assert!(player.chars().count() <= MAX_SAID_CHARS, "{player}");
    assert!(rant.starts_with(player.as_str()), "{player}");
    assert!(
        app.world()
            .get::<Conversation>(rook)
            .expect("a conversation")
            .exchanges
            .is_empty()
    );
}
