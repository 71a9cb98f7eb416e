//! The lifecycle driven with plain values: `u32` agents, a manual clock, and the test playing
//! the worker. Requests are submitted to a pool that is never dispatched, and the test feeds
//! [`Lifecycle::handle`] the events a worker would send, at the stamps it chooses, so every
//! row of the deadline rules is checked without threads, wall time or an engine.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::action::ActionRegistry;
use crate::backend::{BackendError, BackendFactoryExt, FnFactory, TokenUsage};
use crate::clock::{Clock, Timestamp};
use crate::config::{HivemindConfig, PlanFormat};
use crate::hooks::{FallbackPlanner, LineRules};
use crate::metrics::Metrics;
use crate::plan::{ArgValue, BackendId, FallbackReason, PlanSource, PlanStep};
use crate::prompt::{ChatTemplate, IntentOption, PromptAsset};
use crate::snapshot::{AgentId, EntityId, EntityInfo, Point, WorldSnapshot};
use crate::templates::TemplateBook;
use crate::worker::{JobFailure, JobOutcome, WorkerEvent, WorkerEventKind};

const REGISTRY: &str = r#"(
    idle: "Wait",
    verbs: [
        (name: "Attack", args: [(name: "target", kind: Entity(set: "enemy"))]),
        (name: "Reload"),
        (name: "Wait"),
        (name: "Say", args: [(name: "text", kind: Text(max_chars: 80))]),
    ],
)"#;

const TEMPLATES: &str = r#"(
    situations: {
        "idle": ["Quiet out here."],
        "greeting": ["State your business."],
    },
)"#;

/// Plans "Reload, Wait"; a model step "Attack" with no ammo fails its check; the guided
/// intents are "reload" and "hold".
struct TestPlanner;

impl FallbackPlanner for TestPlanner {
    fn plan(&self, _snapshot: &WorldSnapshot) -> Vec<PlanStep> {
        vec![PlanStep::new("Reload"), PlanStep::new("Wait")]
    }

    fn complete(&self, _snapshot: &WorldSnapshot, _done: &[PlanStep]) -> Vec<PlanStep> {
        vec![PlanStep::new("Wait")]
    }

    fn first_invalid(&self, snapshot: &WorldSnapshot, steps: &[PlanStep]) -> Option<usize> {
        let empty = snapshot.int_fact("ammo") == Some(0);
        steps.iter().position(|s| empty && s.verb == "Attack")
    }

    fn intents(&self, _snapshot: &WorldSnapshot) -> Vec<IntentOption> {
        ["reload", "hold"]
            .map(|goal| IntentOption {
                goal: goal.into(),
                label: goal.into(),
                reason: "test".into(),
            })
            .into()
    }

    fn expand(&self, _snapshot: &WorldSnapshot, goal: &str) -> Vec<PlanStep> {
        match goal {
            "reload" => vec![PlanStep::new("Reload")],
            _ => Vec::new(),
        }
    }
}

const AGENT: u32 = 1;
const PLAN_MS: u64 = 500;

fn snapshot(ammo: i64) -> WorldSnapshot {
    WorldSnapshot::new(AgentId(1), Point::new(0, 0))
        .with_fact("ammo", ammo)
        .with_entity(EntityInfo::new(EntityId(7), "enemy", Point::new(5, 0)))
}

fn lifecycle_with(config: HivemindConfig, backend: bool) -> Lifecycle<u32> {
    let factory = FnFactory::new("test", || {
        Err(BackendError::NoModel(
            "never built: the test plays the worker".into(),
        ))
    });
    Lifecycle::new(LifecycleParts {
        config,
        registry: ActionRegistry::from_ron(REGISTRY, "test").unwrap(),
        templates: TemplateBook::from_ron(TEMPLATES, "test").unwrap(),
        prompt: PromptAsset::default(),
        chat: ChatTemplate::chatml(),
        planner: Arc::new(TestPlanner),
        filter: Arc::new(LineRules::default().with_banned("darn")),
        executor: Arc::new(InlineExecutor),
        backends: vec![factory],
        backend: backend.then(|| BackendId::new("test")),
        clock: Clock::manual(),
    })
    .unwrap()
}

fn free_config() -> HivemindConfig {
    let mut config = HivemindConfig::default();
    config.model.plan_format = PlanFormat::Free;
    config.deadlines.plan_ms = PLAN_MS;
    config
}

fn lifecycle() -> Lifecycle<u32> {
    lifecycle_with(free_config(), true)
}

fn ask_plan(hm: &mut Lifecycle<u32>, ammo: i64, metrics: &mut Metrics) -> RequestId {
    hm.request(
        NewRequest {
            agent: AGENT,
            persona: "veteran".into(),
            spotlight: false,
            snapshot: snapshot(ammo),
            ask: Ask::Plan { order: None },
        },
        metrics,
    )
}

fn ask_reply(hm: &mut Lifecycle<u32>, metrics: &mut Metrics) -> RequestId {
    hm.request(
        NewRequest {
            agent: AGENT,
            persona: "veteran".into(),
            spotlight: false,
            snapshot: snapshot(3),
            ask: Ask::Line {
                kind: LineKind::Dialogue {
                    player_said: "Who goes there?".into(),
                },
                situation: "greeting".into(),
                slots: Vec::new(),
                history: Vec::new(),
            },
        },
        metrics,
    )
}

fn ms(n: u64) -> Timestamp {
    Timestamp::from_duration(Duration::from_millis(n))
}

/// Feeds the event a worker would send for request `id`'s job, produced at `at`.
fn worker(hm: &mut Lifecycle<u32>, id: RequestId, at: Timestamp, kind: WorkerEventKind) {
    let job = hm.job(id).unwrap();
    let mut metrics = Metrics::new();
    hm.handle(
        WorkerEvent {
            job,
            agent: AgentId(AGENT),
            at,
            kind,
        },
        &mut metrics,
    );
}

fn started(hm: &mut Lifecycle<u32>, id: RequestId) {
    let kind = WorkerEventKind::Started {
        backend: BackendId::new("test"),
        batch: 0,
        batch_size: 1,
        queue_wait: Duration::ZERO,
    };
    worker(hm, id, ms(0), kind);
}

fn step(hm: &mut Lifecycle<u32>, id: RequestId, at: Timestamp, index: usize, verb: &str) {
    let step = match verb {
        "Attack" => PlanStep::new("Attack").with_arg("target", ArgValue::Int(7)),
        _ => PlanStep::new(verb),
    };
    worker(hm, id, at, WorkerEventKind::Step { index, step });
}

fn finished(hm: &mut Lifecycle<u32>, id: RequestId, at: Timestamp, outcome: JobOutcome) {
    worker(hm, id, at, WorkerEventKind::Finished(outcome));
}

fn completed() -> JobOutcome {
    JobOutcome::Completed {
        usage: TokenUsage {
            prompt_tokens: 10,
            generated_tokens: 10,
        },
    }
}

fn out(hm: &mut Lifecycle<u32>) -> Vec<Outgoing<u32>> {
    hm.drain_outbox().collect()
}

fn verbs(out: &[Outgoing<u32>]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Outgoing::Step(s) => Some(s.step.verb.clone()),
            _ => None,
        })
        .collect()
}

fn plan_done(out: &[Outgoing<u32>]) -> Vec<&PlanDone<u32>> {
    out.iter()
        .filter_map(|o| match o {
            Outgoing::Plan(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn line_done(out: &[Outgoing<u32>]) -> Vec<&LineDone<u32>> {
    out.iter()
        .filter_map(|o| match o {
            Outgoing::Line(l) => Some(l),
            _ => None,
        })
        .collect()
}

fn llm(repaired: bool) -> PlanSource {
    PlanSource::Llm {
        backend: BackendId::new("test"),
        repaired,
    }
}

#[test]
fn a_first_step_in_time_is_acted_on_and_the_rest_streams() {
    let mut hm = lifecycle();
    let mut metrics = Metrics::new();
    let id = ask_plan(&mut hm, 3, &mut metrics);
    assert_eq!(hm.phase(id), Some(Phase::Waiting));
    started(&mut hm, id);
    step(&mut hm, id, ms(200), 0, "Attack");
    assert_eq!(hm.phase(id), Some(Phase::Streaming));
    assert_eq!(verbs(&out(&mut hm)), ["Attack"]);
    // The deadline passes: nothing happens to a streaming plan.
    hm.clock().advance(Duration::from_millis(600));
    hm.answer_late(&mut metrics);
    assert!(out(&mut hm).is_empty());
    // A later step still streams, then exactly one completion.
    step(&mut hm, id, ms(700), 1, "Reload");
    finished(&mut hm, id, ms(800), completed());
    let out = out(&mut hm);
    assert_eq!(verbs(&out), ["Reload"]);
    let done = plan_done(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].source, llm(false));
    assert_eq!(done[0].fallback, None);
    assert_eq!(done[0].steps.len(), 2);
    assert_eq!(done[0].first_after, Duration::from_millis(200));
    assert_eq!(hm.phase(id), None, "the request is over");
}

/// A free plan's `Say` line is heard like any line: it once skipped the line filter that every
/// other line of the model's goes through.
#[test]
fn a_free_plans_say_text_goes_through_the_line_filter() {
    let mut hm = lifecycle();
    let mut metrics = Metrics::new();
    let id = ask_plan(&mut hm, 3, &mut metrics);
    started(&mut hm, id);
    let say = |text: &str| PlanStep::new("Say").with_arg("text", ArgValue::Text(text.into()));
    for (index, text) in ["Move, darn it!", "  Cover me!  "].into_iter().enumerate() {
        let step = say(text);
        worker(&mut hm, id, ms(100), WorkerEventKind::Step { index, step });
    }
    finished(&mut hm, id, ms(200), completed());
    let out = out(&mut hm);
    assert_eq!(
        verbs(&out),
        ["Wait", "Say"],
        "the banned line became the idle step"
    );
    let done = plan_done(&out);
    assert_eq!(done[0].steps[1], say("Cover me!"));
    assert!(
        done[0]
            .steps
            .iter()
            .all(|s| !format!("{s:?}").contains("darn")),
        "{:?}",
        done[0].steps
    );
}

#[test]
fn a_plan_a_router_handed_on_names_the_backend_that_answered() {
    let mut hm = lifecycle();
    let mut metrics = Metrics::new();
    let id = ask_plan(&mut hm, 3, &mut metrics);
    started(&mut hm, id);
    let routed = |name: &str| WorkerEventKind::Routed {
        backend: BackendId::new(name),
    };
    worker(&mut hm, id, ms(0), routed("remote"));
    worker(&mut hm, id, ms(50), routed("local"));
    step(&mut hm, id, ms(200), 0, "Attack");
    finished(&mut hm, id, ms(300), completed());
    let out = out(&mut hm);
    let done = plan_done(&out);
    assert_eq!(
        done[0].source,
        PlanSource::Llm {
            backend: BackendId::new("local"),
            repaired: false
        }
    );
}

#[test]
fn nothing_in_time_gets_the_prepared_fallback_and_the_late_answer_only_fills_the_cache() {
    let mut hm = lifecycle();
    let mut metrics = Metrics::new();
    let id = ask_plan(&mut hm, 3, &mut metrics);
    // The frame's dispatch hands the fallback work to the executor.
    hm.dispatch();
    started(&mut hm, id);
    // A step produced after the deadline is not delivered, even before the deadline is read.
    step(&mut hm, id, ms(PLAN_MS + 1), 0, "Attack");
    assert!(out(&mut hm).is_empty());
    hm.clock().advance(Duration::from_millis(PLAN_MS + 1));
    hm.answer_late(&mut metrics);
    let answered = out(&mut hm);
    assert_eq!(verbs(&answered), ["Reload", "Wait"]);
    let done = plan_done(&answered);
    assert_eq!(done[0].source, PlanSource::Goap);
    assert_eq!(done[0].fallback, Some(FallbackReason::Deadline));
    assert_eq!(hm.phase(id), Some(Phase::CacheOnly));

    // The model finishes: nothing more for the agent, but the cache has its answer.
    finished(&mut hm, id, ms(900), completed());
    assert!(out(&mut hm).is_empty());
    assert_eq!(hm.phase(id), None);
    let again = ask_plan(&mut hm, 3, &mut metrics);
    let hit = out(&mut hm);
    let done = plan_done(&hit);
    assert_eq!(done.len(), 1, "answered at once");
    assert_eq!(done[0].request, again);
    assert_eq!(done[0].source, PlanSource::Cache);
    assert_eq!(verbs(&hit), ["Attack"]);
}

/// A request answered at once from the cache and ended in the same frame, before the game took
/// its messages: the game hears nothing of it, as for any request it ends.
#[test]
fn a_request_answered_at_once_and_ended_before_it_was_heard_sends_nothing() {
    let mut hm = lifecycle();
    let mut metrics = Metrics::new();
    let id = ask_plan(&mut hm, 3, &mut metrics);
    started(&mut hm, id);
    step(&mut hm, id, ms(100), 0, "Attack");
    finished(&mut hm, id, ms(200), completed());
    assert_eq!(plan_done(&out(&mut hm)).len(), 1);

    // Replaced: the cached answer to the first ask is not heard, only the second's.
    let first = ask_plan(&mut hm, 3, &mut metrics);
    let second = ask_plan(&mut hm, 3, &mut metrics);
    let heard = out(&mut hm);
    assert!(heard.iter().all(|m| m.request() != first), "{heard:?}");
    assert_eq!(plan_done(&heard)[0].request, second);

    // Cancelled, or despawned, in the frame it was answered.
    let third = ask_plan(&mut hm, 3, &mut metrics);
    hm.cancel_slot(AGENT, RequestSlot::Plan);
    assert!(out(&mut hm).is_empty(), "r{} was heard", third.0);
    ask_plan(&mut hm, 3, &mut metrics);
    hm.forget_agent(AGENT);
    assert!(out(&mut hm).is_empty());
}

#[test]
fn a_model_that_fails_mid_plan_keeps_its_steps_and_the_planner_completes_them() {
    let mut hm = lifecycle();
    let mut metrics = Metrics::new();
    let id = ask_plan(&mut hm, 3, &mut metrics);
    started(&mut hm, id);
    step(&mut hm, id, ms(100), 0, "Attack");
    let failure = JobFailure::Backend(BackendError::Failed("lost".into()));
    finished(&mut hm, id, ms(200), JobOutcome::Failed(failure));
    let out = out(&mut hm);
    assert_eq!(verbs(&out), ["Attack", "Wait"]);
    let done = plan_done(&out);
    assert_eq!(done[0].source, llm(true));
    assert_eq!(done[0].fallback, Some(FallbackReason::BackendError));
}

#[test]
fn a_step_that_fails_the_planners_check_is_repaired_from_there() {
    let mut hm = lifecycle();
    let mut metrics = Metrics::new();
    let id = ask_plan(&mut hm, 0, &mut metrics);
    started(&mut hm, id);
    step(&mut hm, id, ms(100), 0, "Reload");
    step(&mut hm, id, ms(120), 1, "Attack");
    // The model's later steps are ignored once repaired.
    step(&mut hm, id, ms(140), 2, "Reload");
    finished(&mut hm, id, ms(200), completed());
    let out = out(&mut hm);
    assert_eq!(verbs(&out), ["Reload", "Wait"]);
    assert_eq!(plan_done(&out)[0].source, llm(true));
    assert_eq!(plan_done(&out)[0].fallback, None);
}

#[test]
fn failures_before_any_output_answer_at_once_with_their_reason() {
    for (failure, reason) in [
        (JobFailure::Overflow, FallbackReason::Overflow),
        (
            JobFailure::Backend(BackendError::Failed("boom".into())),
            FallbackReason::BackendError,
        ),
        (
            JobFailure::Panicked("boom".into()),
            FallbackReason::BackendError,
        ),
        (JobFailure::Parse("{".into()), FallbackReason::Parse),
    ] {
        let mut hm = lifecycle();
        let mut metrics = Metrics::new();
        let id = ask_plan(&mut hm, 3, &mut metrics);
        finished(&mut hm, id, ms(10), JobOutcome::Failed(failure));
        let out = out(&mut hm);
        let done = plan_done(&out);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].source, PlanSource::Goap);
        assert_eq!(done[0].fallback, Some(reason));
        assert_eq!(hm.phase(id), None);
    }
}

#[test]
fn an_empty_answer_in_time_is_a_parse_fallback() {
    let mut hm = lifecycle();
    let mut metrics = Metrics::new();
    let id = ask_plan(&mut hm, 3, &mut metrics);
    started(&mut hm, id);
    finished(&mut hm, id, ms(50), completed());
    let out = out(&mut hm);
    assert_eq!(
        plan_done(&out)[0].fallback,
        Some(FallbackReason::Parse),
        "a model that wrote no step"
    );
}

#[test]
fn a_whole_answer_in_time_completes_even_when_not_streaming() {
    let mut hm = lifecycle();
    hm.set_streaming(false);
    let mut metrics = Metrics::new();
    let id = ask_plan(&mut hm, 3, &mut metrics);
    started(&mut hm, id);
    step(&mut hm, id, ms(100), 0, "Attack");
    assert!(out(&mut hm).is_empty(), "not streamed");
    finished(&mut hm, id, ms(300), completed());
    let out = out(&mut hm);
    assert_eq!(verbs(&out), ["Attack"]);
    assert_eq!(plan_done(&out)[0].source, llm(false));
}

#[test]
fn cancelled_replaced_and_despawned_requests_get_no_message() {
    let mut hm = lifecycle();
    let mut metrics = Metrics::new();
    let first = ask_plan(&mut hm, 3, &mut metrics);
    let job = hm.job(first).unwrap();
    // Replaced: the new plan request takes the slot.
    let second = ask_plan(&mut hm, 3, &mut metrics);
    assert_eq!(hm.phase(first), None);
    let mut m = Metrics::new();
    hm.handle(
        WorkerEvent {
            job,
            agent: AgentId(AGENT),
            at: ms(10),
            kind: WorkerEventKind::Finished(completed()),
        },
        &mut m,
    );
    // Cancelled.
    hm.cancel_slot(AGENT, RequestSlot::Plan);
    assert_eq!(hm.phase(second), None);
    // Despawned, with a reply in flight.
    let reply = ask_reply(&mut hm, &mut metrics);
    hm.forget_agent(AGENT);
    assert_eq!(hm.phase(reply), None);
    hm.clock().advance(Duration::from_secs(5));
    hm.answer_late(&mut metrics);
    assert!(out(&mut hm).is_empty());
    assert_eq!(hm.in_flight(), 0);
}

#[test]
fn a_reply_streams_its_first_words_in_time_and_the_filter_ends_a_bad_line() {
    let mut hm = lifecycle();
    let mut metrics = Metrics::new();
    let id = ask_reply(&mut hm, &mut metrics);
    started(&mut hm, id);
    let words = |text: &str| WorkerEventKind::Words { text: text.into() };
    worker(&mut hm, id, ms(50), words("Halt, "));
    assert_eq!(hm.phase(id), Some(Phase::Streaming));
    worker(&mut hm, id, ms(60), words("stranger. "));
    finished(&mut hm, id, ms(90), completed());
    let out = out(&mut hm);
    let streamed: String = out
        .iter()
        .filter_map(|o| match o {
            Outgoing::Words(w) => Some(w.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(streamed, "Halt, stranger. ");
    let done = line_done(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].text, "Halt, stranger. ");
    assert_eq!(done[0].player_said.as_deref(), Some("Who goes there?"));
    assert_eq!(done[0].source, llm(false));

    // A banned word before anything was said: the template answers, with reason Parse.
    let id = ask_reply(&mut hm, &mut metrics);
    started(&mut hm, id);
    worker(&mut hm, id, ms(50), words("Oh darn "));
    finished(&mut hm, id, ms(90), completed());
    let out = hm.drain_outbox().collect::<Vec<_>>();
    let done = line_done(&out);
    assert_eq!(done[0].text, "State your business.");
    assert_eq!(done[0].source, PlanSource::Template);
    assert_eq!(done[0].fallback, Some(FallbackReason::Parse));
}

#[test]
fn banter_never_waits_and_idle_time_fills_its_pool() {
    let mut hm = lifecycle();
    let mut metrics = Metrics::new();
    let banter = |hm: &mut Lifecycle<u32>, metrics: &mut Metrics| {
        hm.request(
            NewRequest {
                agent: AGENT,
                persona: "veteran".into(),
                spotlight: false,
                snapshot: snapshot(3),
                ask: Ask::Line {
                    kind: LineKind::Banter,
                    situation: "idle".into(),
                    slots: Vec::new(),
                    history: Vec::new(),
                },
            },
            metrics,
        )
    };
    let first = banter(&mut hm, &mut metrics);
    let out1 = out(&mut hm);
    let done = line_done(&out1);
    assert_eq!(done.len(), 1, "in the same call");
    assert_eq!(done[0].source, PlanSource::Template);
    assert_eq!(hm.phase(first), None);

    // Nothing in flight: dispatch asks the model for a line for the pool.
    hm.dispatch();
    assert_eq!(hm.in_flight(), 0, "idle work waits for nobody");
    let idle = RequestId(first.0 + 1);
    assert_eq!(hm.phase(idle), Some(Phase::CacheOnly));
    started(&mut hm, idle);
    let words = WorkerEventKind::Words {
        text: "Eyes open, people. ".into(),
    };
    worker(&mut hm, idle, ms(5_000), words);
    finished(&mut hm, idle, ms(5_001), completed());
    assert!(out(&mut hm).is_empty(), "no agent hears idle-time work");
    assert_eq!(hm.banter().len(), 1);
    banter(&mut hm, &mut metrics);
    let out2 = out(&mut hm);
    assert_eq!(line_done(&out2)[0].source, PlanSource::Cache);
    assert_eq!(line_done(&out2)[0].text, "Eyes open, people.");
}

#[test]
fn guided_intents_expand_and_an_intent_not_offered_is_a_repair() {
    let mut config = free_config();
    config.model.plan_format = PlanFormat::Guided;
    let mut hm = lifecycle_with(config, true);
    let mut metrics = Metrics::new();
    let id = ask_plan(&mut hm, 3, &mut metrics);
    started(&mut hm, id);
    worker(&mut hm, id, ms(100), WorkerEventKind::Intent { intent: 1 });
    finished(&mut hm, id, ms(150), completed());
    let out1 = out(&mut hm);
    assert_eq!(verbs(&out1), ["Reload"]);
    assert_eq!(plan_done(&out1)[0].source, llm(false));

    hm.clear_cache();
    let id = ask_plan(&mut hm, 3, &mut metrics);
    started(&mut hm, id);
    // Option 2 cannot be carried out, option 9 was never offered.
    for intent in [2, 9] {
        hm.clear_cache();
        let id2 = ask_plan(&mut hm, 3, &mut metrics);
        assert_eq!(hm.phase(id), None, "replaced");
        started(&mut hm, id2);
        worker(&mut hm, id2, ms(100), WorkerEventKind::Intent { intent });
        finished(&mut hm, id2, ms(150), completed());
        let out2 = out(&mut hm);
        assert_eq!(
            verbs(&out2),
            ["Reload", "Wait"],
            "the prepared fallback plan"
        );
        assert_eq!(plan_done(&out2)[0].source, llm(true));
    }
}

#[test]
fn forced_fallbacks_and_a_missing_backend_answer_at_once() {
    let mut hm = lifecycle();
    let mut metrics = Metrics::new();
    hm.set_force_fallback(true);
    assert_eq!(hm.fallback_only(), Some(FallbackOnly::Forced));
    ask_plan(&mut hm, 3, &mut metrics);
    assert_eq!(
        plan_done(&out(&mut hm))[0].fallback,
        Some(FallbackReason::Forced)
    );

    let mut none = lifecycle_with(free_config(), false);
    assert_eq!(none.backend(), None);
    assert_eq!(none.fallback_only(), Some(FallbackOnly::NoBackend));
    assert_eq!(none.backends().count(), 1, "registered, not in use");
    ask_plan(&mut none, 3, &mut metrics);
    let out = out(&mut none);
    assert_eq!(plan_done(&out)[0].fallback, Some(FallbackReason::NoModel));
    assert_eq!(plan_done(&out)[0].source, PlanSource::Goap);
    // Switching to the registered backend starts the workers: requests wait for the model.
    none.set_backend(&BackendId::new("test")).unwrap();
    assert_eq!(none.fallback_only(), None);
    let id = ask_plan(&mut none, 3, &mut metrics);
    assert_eq!(none.phase(id), Some(Phase::Waiting));
}

#[test]
fn backend_ids_are_open_and_unique() {
    let mut hm = lifecycle();
    assert_eq!(hm.backend(), Some(BackendId::new("test")));
    let same = FnFactory::new("test", || Err(BackendError::NoModel("x".into())));
    assert_eq!(
        hm.insert_backend(same),
        Err(DuplicateBackend(BackendId::new("test")))
    );
    let big = FnFactory::new("test", || Err(BackendError::NoModel("x".into()))).with_id("big");
    hm.insert_backend(big).unwrap();
    hm.set_backend(&BackendId::new("big")).unwrap();
    assert_eq!(hm.backend(), Some(BackendId::new("big")));
    assert_eq!(
        hm.set_backend(&BackendId::new("remote")),
        Err(UnknownBackend(BackendId::new("remote")))
    );
}

/// Cuts every line after its first byte, inside a two-byte character.
struct CutInsideAChar;

impl crate::hooks::LineFilter for CutInsideAChar {
    fn check(&self, line: &str) -> crate::hooks::LineVerdict {
        if line.len() > 1 {
            crate::hooks::LineVerdict::Cut(1)
        } else {
            crate::hooks::LineVerdict::Pass
        }
    }
}

#[test]
fn a_filter_cut_inside_a_character_ends_the_line_before_that_character() {
    let mut hm = lifecycle();
    hm.filter = Arc::new(CutInsideAChar);
    let mut metrics = Metrics::new();
    let id = ask_reply(&mut hm, &mut metrics);
    started(&mut hm, id);
    let words = WorkerEventKind::Words {
        text: "éh bien ".into(),
    };
    worker(&mut hm, id, ms(50), words);
    finished(&mut hm, id, ms(90), completed());
    let out = out(&mut hm);
    let done = line_done(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].fallback,
        Some(FallbackReason::Parse),
        "nothing of the model's line was left to say"
    );
    assert_eq!(done[0].text, "S", "the template, cut by the same filter");
}

fn words(text: &str) -> WorkerEventKind {
    WorkerEventKind::Words { text: text.into() }
}

fn spoken(out: &[Outgoing<u32>]) -> Vec<&str> {
    out.iter()
        .filter_map(|o| match o {
            Outgoing::Words(w) => Some(w.text.as_str()),
            _ => None,
        })
        .collect()
}

/// The default deadlines (dialogue 100 ms, reply 1500 ms), and a bridge line for every persona.
fn bridging() -> Lifecycle<u32> {
    let mut hm = lifecycle();
    let templates = TemplateBook::from_ron(
        r#"(situations: {
            "idle": ["Quiet out here."],
            "greeting": ["State your business."],
            "bridge": ["Hm."],
        })"#,
        "test",
    )
    .unwrap();
    hm.set_templates(templates);
    hm
}

#[test]
fn a_reply_whose_words_are_late_begins_with_a_bridge_and_the_model_finishes_it() {
    let mut hm = bridging();
    let mut metrics = Metrics::new();
    let id = ask_reply(&mut hm, &mut metrics);
    started(&mut hm, id);
    // Nothing by the dialogue deadline: the bridge is spoken then, and nothing else.
    hm.clock().advance(Duration::from_millis(101));
    hm.answer_late(&mut metrics);
    assert_eq!(hm.phase(id), Some(Phase::Bridged));
    assert_eq!(spoken(&out(&mut hm)), ["Hm."]);
    assert_eq!(metrics.bridges(), 1);
    // The model's words continue the same line while the reply budget lasts.
    worker(&mut hm, id, ms(600), words("Friend, "));
    worker(&mut hm, id, ms(700), words("not foe."));
    finished(&mut hm, id, ms(800), completed());
    let out = out(&mut hm);
    assert_eq!(spoken(&out), [" Friend, ", "not foe."]);
    let done = line_done(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].text, "Hm. Friend, not foe.");
    assert_eq!(done[0].source, llm(false));
    assert_eq!(done[0].fallback, None);
    assert!(done[0].bridged);
    assert_eq!(done[0].first_after, Duration::from_millis(101));
    assert_eq!(done[0].latency, Duration::from_millis(800));
}

#[test]
fn a_bridged_reply_with_no_words_by_its_budget_ends_with_its_template() {
    let mut hm = bridging();
    let mut metrics = Metrics::new();
    let id = ask_reply(&mut hm, &mut metrics);
    started(&mut hm, id);
    hm.clock().advance(Duration::from_millis(101));
    hm.answer_late(&mut metrics);
    assert_eq!(spoken(&out(&mut hm)), ["Hm."]);
    hm.clock().advance(Duration::from_millis(1500));
    hm.answer_late(&mut metrics);
    let out = out(&mut hm);
    // Only the template's part is spoken now; the line holds both.
    assert_eq!(spoken(&out), [" State your business."]);
    let done = line_done(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].text, "Hm. State your business.");
    assert_eq!(done[0].source, PlanSource::Template);
    assert_eq!(done[0].fallback, Some(FallbackReason::Deadline));
    assert!(done[0].bridged);
    // Words the model writes afterwards reach nobody.
    worker(&mut hm, id, ms(1700), words("Too late."));
    assert!(spoken(&hm.drain_outbox().collect::<Vec<_>>()).is_empty());
}

#[test]
fn a_reply_cut_at_its_budget_keeps_the_words_said_and_a_bridge_is_off_when_it_cannot_help() {
    let mut hm = bridging();
    let mut metrics = Metrics::new();
    let id = ask_reply(&mut hm, &mut metrics);
    started(&mut hm, id);
    hm.clock().advance(Duration::from_millis(101));
    hm.answer_late(&mut metrics);
    worker(&mut hm, id, ms(1000), words("Who "));
    hm.clock().advance(Duration::from_millis(1500));
    hm.answer_late(&mut metrics);
    let out_now = out(&mut hm);
    let done = line_done(&out_now);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].text, "Hm. Who ");
    assert_eq!(done[0].fallback, Some(FallbackReason::Deadline));
    assert!(matches!(done[0].source, PlanSource::Llm { .. }));

    // A reply budget no longer than the dialogue deadline turns bridges off: the template
    // answers at the deadline, as it does for a failed model.
    let mut config = free_config();
    config.deadlines.reply_ms = config.deadlines.dialogue_ms;
    hm.apply_config(config).unwrap();
    let id = ask_reply(&mut hm, &mut metrics);
    started(&mut hm, id);
    hm.clock().advance(Duration::from_millis(101));
    hm.answer_late(&mut metrics);
    let done = out(&mut hm);
    let done = line_done(&done);
    assert_eq!(done[0].text, "State your business.");
    assert!(!done[0].bridged);
    assert_eq!(metrics.bridges(), 1);
}

#[test]
fn a_reply_that_copies_the_prompt_never_reaches_the_player() {
    let mut hm = bridging();
    let mut prompt = PromptAsset::default();
    prompt.rules.examples.push((
        crate::plan::OutputFormat::Line,
        crate::prompt::WorkedExample {
            situation: "Situation: win_streak.".into(),
            answer: r#"{"agent":4,"say":"Three down. Who's next?"}"#.into(),
        },
    ));
    hm.set_prompt(prompt);
    let mut metrics = Metrics::new();
    // The worked example's answer, word for word: the template answers instead.
    let id = ask_reply(&mut hm, &mut metrics);
    started(&mut hm, id);
    worker(&mut hm, id, ms(40), words("Three down. Who's next?"));
    finished(&mut hm, id, ms(60), completed());
    let out_now = out(&mut hm);
    assert_eq!(spoken(&out_now), ["State your business."]);
    assert_eq!(line_done(&out_now)[0].fallback, Some(FallbackReason::Parse));
    // A copy after words of its own, all in one piece: the line ends before the copy.
    let id = ask_reply(&mut hm, &mut metrics);
    started(&mut hm, id);
    worker(&mut hm, id, ms(40), words("Me? Three down, who's next?"));
    finished(&mut hm, id, ms(60), completed());
    let out_now = out(&mut hm);
    assert_eq!(line_done(&out_now)[0].text, "Me?");
    assert_eq!(spoken(&out_now), ["Me?"]);
    // Found on its fourth word, after three were spoken: those stand, the rest is not said, and
    // the line holds exactly what the player heard.
    let id = ask_reply(&mut hm, &mut metrics);
    started(&mut hm, id);
    worker(&mut hm, id, ms(40), words("Me? Three down, "));
    worker(&mut hm, id, ms(50), words("who's next?"));
    finished(&mut hm, id, ms(60), completed());
    let out_now = out(&mut hm);
    assert_eq!(spoken(&out_now), ["Me? Three down, "]);
    assert_eq!(line_done(&out_now)[0].text, "Me? Three down, ");
}

#[test]
fn only_lines_with_words_are_speech() {
    use super::request::is_speech;
    assert!(is_speech("Go!"));
    assert!(is_speech("3 down, moving"));
    assert!(!is_speech("12,6"));
    assert!(!is_speech("2.5m 1:30 m"));
    assert!(!is_speech(""));
}

#[test]
fn a_plan_answering_the_player_is_known_until_it_is_answered() {
    let mut hm = lifecycle();
    let mut metrics = Metrics::new();
    assert!(!hm.is_answering_player(AGENT));
    let id = hm.request(
        NewRequest {
            agent: AGENT,
            persona: "veteran".into(),
            spotlight: false,
            snapshot: snapshot(3),
            ask: Ask::Plan {
                order: Some("Fall back!".into()),
            },
        },
        &mut metrics,
    );
    assert!(hm.is_answering_player(AGENT));
    started(&mut hm, id);
    step(&mut hm, id, ms(100), 0, "Reload");
    finished(&mut hm, id, ms(120), completed());
    assert!(!hm.is_answering_player(AGENT));
    // A plan of its own answers nobody.
    ask_plan(&mut hm, 3, &mut metrics);
    assert!(!hm.is_answering_player(AGENT));
}

#[test]
fn a_bridged_reply_finishing_past_its_budget_keeps_only_the_words_in_time() {
    let mut hm = bridging();
    let mut metrics = Metrics::new();
    let id = ask_reply(&mut hm, &mut metrics);
    started(&mut hm, id);
    hm.clock().advance(Duration::from_millis(101));
    hm.answer_late(&mut metrics);
    worker(&mut hm, id, ms(1000), words("Who "));
    worker(&mut hm, id, ms(1600), words("goes there?"));
    finished(&mut hm, id, ms(1700), completed());
    let out_now = out(&mut hm);
    assert_eq!(spoken(&out_now), ["Hm.", " Who "]);
    let done = line_done(&out_now);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].text, "Hm. Who ");
    assert_eq!(done[0].fallback, Some(FallbackReason::Deadline));
}

#[test]
fn a_plan_whose_line_was_skipped_says_a_template_and_is_counted() {
    let mut config = free_config();
    config.model.plan_format = PlanFormat::Guided;
    let mut hm = lifecycle_with(config, true);
    hm.set_templates(
        TemplateBook::from_ron(
            r#"(situations: {"idle": ["Quiet."], "bridge": ["On it."]})"#,
            "test",
        )
        .unwrap(),
    );
    let mut metrics = Metrics::new();
    let id = ask_plan(&mut hm, 3, &mut metrics);
    started(&mut hm, id);
    worker(&mut hm, id, ms(100), WorkerEventKind::Intent { intent: 1 });
    // Words already written are dropped with the line.
    worker(&mut hm, id, ms(110), words("Reloading "));
    let job = hm.job(id).unwrap();
    for kind in [
        WorkerEventKind::LineSkipped,
        WorkerEventKind::Finished(completed()),
    ] {
        let agent = AgentId(AGENT);
        hm.handle(
            WorkerEvent {
                job,
                agent,
                at: ms(120),
                kind,
            },
            &mut metrics,
        );
    }
    let first = out(&mut hm);
    let done = plan_done(&first);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].source, llm(false), "the plan is still the model's");
    assert_eq!(done[0].fallback, None);
    assert_eq!(done[0].say.as_deref(), Some("On it."));
    assert_eq!(metrics.lines_skipped(), 1);

    // The cache keeps the intent, not the template.
    let id = ask_plan(&mut hm, 3, &mut metrics);
    let second = out(&mut hm);
    let done = plan_done(&second);
    assert_eq!(done[0].source, PlanSource::Cache, "{:?}", hm.phase(id));
    assert_eq!(done[0].say, None);
}

#[test]
fn a_job_the_backend_sheds_as_late_gets_its_fallback_at_once_and_is_counted() {
    let mut hm = lifecycle();
    let mut metrics = Metrics::new();
    let id = ask_plan(&mut hm, 3, &mut metrics);
    started(&mut hm, id);
    // What the pool makes of a backend's `BackendError::Late`.
    let kind = WorkerEventKind::Finished(JobOutcome::Failed(JobFailure::Expired));
    let (job, agent) = (hm.job(id).unwrap(), AgentId(AGENT));
    hm.handle(
        WorkerEvent {
            job,
            agent,
            at: ms(20),
            kind,
        },
        &mut metrics,
    );
    let out = out(&mut hm);
    let done = plan_done(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].source, PlanSource::Goap);
    assert_eq!(done[0].fallback, Some(FallbackReason::Deadline));
    assert_eq!(metrics.shed(), 1);
}
