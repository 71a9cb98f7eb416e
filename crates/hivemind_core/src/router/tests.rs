use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::backend::{BatchSink, JobId, ScriptedBackend, TokenUsage};
use crate::clock::{Clock, Deadline, Timestamp};
use crate::config::{PromptLayout, Route};
use crate::worker::tests::{attacker, batching, context, drain, outcome, plan_request};
use crate::worker::{JobFailure, JobOutcome, WorkerEvent, WorkerEventKind, WorkerPool};

/// What a test link does with every stream.
#[derive(Clone, Copy)]
enum Mode {
    /// Answers with the attacker script.
    Answer,
    /// Fails every stream before writing anything, as a refused connection does.
    Refuse,
    /// Ends every stream without a word, as a server that sends `[DONE]` at once does.
    Empty,
}

/// A backend the router can hold, with a rate the test can change.
struct Link {
    id: &'static str,
    mode: Mode,
    rate: Mutex<Option<Throughput>>,
}

impl Link {
    fn new(id: &'static str, mode: Mode, prompt_rate: f64) -> Arc<Self> {
        Arc::new(Link {
            id,
            mode,
            rate: Mutex::new(Some(rate(prompt_rate))),
        })
    }

    fn set_rate(&self, prompt_rate: f64) {
        *self.rate.lock().unwrap() = Some(rate(prompt_rate));
    }
}

/// A rate whose prompt cost dominates: the test's latencies are set by `prompt_rate`.
fn rate(prompt_rate: f64) -> Throughput {
    Throughput {
        prompt_tokens_per_sec: prompt_rate,
        generated_tokens_per_sec: 10_000.0,
    }
}

struct Refuser {
    empty: bool,
}

impl InferenceBackend for Refuser {
    fn run(&mut self, batch: &Batch, sink: &mut dyn BatchSink) -> Result<(), BackendError> {
        for s in 0..batch.streams() {
            if self.empty {
                sink.done(s, TokenUsage::default());
            } else {
                sink.error(s, BackendError::Failed("connection refused".into()));
            }
        }
        Ok(())
    }
}

impl BackendFactory for Link {
    fn id(&self) -> BackendId {
        BackendId::new(self.id)
    }

    fn build(&self) -> Result<Box<dyn InferenceBackend>, BackendError> {
        Ok(match self.mode {
            Mode::Answer => Box::new(ScriptedBackend::new(attacker())),
            Mode::Refuse => Box::new(Refuser { empty: false }),
            Mode::Empty => Box::new(Refuser { empty: true }),
        })
    }

    fn throughput(&self) -> Option<Throughput> {
        *self.rate.lock().unwrap()
    }
}

fn router(links: &[&Arc<Link>], routes: Vec<Route>) -> Arc<RouterFactory> {
    let router = RouterFactory::new(
        links
            .iter()
            .map(|l| Arc::clone(*l) as Arc<dyn BackendFactory>),
    );
    let mut config = HivemindConfig::default();
    config.router.routes = routes;
    config.router.probe_ms = 1000;
    router.configure(&config);
    router
}

fn pool(router: &Arc<RouterFactory>, clock: &Clock) -> WorkerPool {
    WorkerPool::new(
        batching(1, 16, 64),
        Arc::clone(router) as Arc<dyn BackendFactory>,
        context(PromptLayout::ParallelSequences),
        clock.clone(),
    )
}

/// Runs one plan for agent `id` with `budget` to its first step, from the clock's now.
fn plan(pool: &mut WorkerPool, id: u32, budget: Duration) -> (JobId, Vec<WorkerEvent>) {
    let deadline = Deadline::after(pool.clock().now(), budget);
    let job = pool.submit(plan_request(id, deadline), 0);
    pool.dispatch();
    let events = drain(pool, &BTreeSet::from([job]));
    (job, events)
}

/// The backends a job was handed to, in order.
fn routed(events: &[WorkerEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            WorkerEventKind::Routed { backend } => Some(backend.to_string()),
            _ => None,
        })
        .collect()
}

fn completed(events: &[WorkerEvent], job: JobId) -> bool {
    matches!(outcome(events, job), JobOutcome::Completed { .. })
}

fn row(router: &RouterFactory, id: &str) -> LinkStatus {
    router
        .status()
        .into_iter()
        .find(|r| r.backend.as_str() == id && r.kind == RequestKind::Plan)
        .unwrap()
}

#[test]
fn the_chain_falls_through_in_order_and_names_who_answered() {
    let a = Link::new("a", Mode::Refuse, 1000.0);
    let b = Link::new("b", Mode::Refuse, 1000.0);
    let c = Link::new("c", Mode::Answer, 1000.0);
    let router = router(&[&a, &b, &c], Vec::new());
    let mut pool = pool(&router, &Clock::manual());
    let (job, events) = plan(&mut pool, 1, Duration::from_secs(5));
    assert_eq!(routed(&events), ["a", "b", "c"]);
    assert!(completed(&events, job), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e.kind, WorkerEventKind::Step { .. }))
    );
    assert_eq!(row(&router, "a").fell_through, 1);
    assert_eq!(row(&router, "c").answered, 1);

    // An empty answer falls through too.
    let empty = Link::new("empty", Mode::Empty, 1000.0);
    let router = self::router(&[&empty, &c], Vec::new());
    let mut pool = self::pool(&router, &Clock::manual());
    let (job, events) = plan(&mut pool, 1, Duration::from_secs(5));
    assert_eq!(routed(&events), ["empty", "c"]);
    assert!(completed(&events, job), "{events:?}");

    // A chain whose every link fails ends the job once, with the last link's error.
    let router = self::router(&[&a, &b], Vec::new());
    let mut pool = self::pool(&router, &Clock::manual());
    let (job, events) = plan(&mut pool, 1, Duration::from_secs(5));
    let finished = events
        .iter()
        .filter(|e| matches!(e.kind, WorkerEventKind::Finished(_)))
        .count();
    assert_eq!(finished, 1);
    assert_eq!(
        outcome(&events, job),
        &JobOutcome::Failed(JobFailure::Backend(BackendError::Failed(
            "connection refused".into()
        )))
    );
}

#[test]
fn a_link_down_the_chain_is_tried_only_with_time_for_its_p95() {
    let a = Link::new("a", Mode::Refuse, 1000.0);
    // The guard's prompt costs about 90 tokens: at 300 tok/s its first text is ~0.3 s away,
    // within the plan budget.
    let slow = Link::new("slow", Mode::Answer, 300.0);
    let warm = router(
        &[&a, &slow],
        vec![Route {
            chain: vec!["slow".into()],
            ..Route::default()
        }],
    );
    let clock = Clock::manual();
    let mut pool = pool(&warm, &clock);
    let (job, events) = plan(&mut pool, 1, Duration::from_secs(5));
    assert!(completed(&events, job));
    let p95 = row(&warm, "slow").p95.unwrap();
    assert!(p95 > Duration::from_millis(200), "{p95:?}");

    // Now the route is a → slow: a fails at once, and a 200 ms deadline leaves no time for slow.
    let mut config = HivemindConfig::default();
    config.router.routes = vec![Route {
        chain: vec!["a".into(), "slow".into()],
        ..Route::default()
    }];
    warm.configure(&config);
    let (job, events) = plan(&mut pool, 2, Duration::from_millis(200));
    assert_eq!(routed(&events), ["a"]);
    assert!(matches!(
        outcome(&events, job),
        JobOutcome::Failed(JobFailure::Backend(_))
    ));
    assert_eq!(row(&warm, "slow").passed_over, 1);
    // With time enough it is tried.
    let (job, events) = plan(&mut pool, 3, Duration::from_secs(5));
    assert_eq!(routed(&events), ["a", "slow"]);
    assert!(completed(&events, job));
}

#[test]
fn a_slow_backend_is_skipped_then_probed_back() {
    let clock = Clock::manual();
    let remote = Link::new("remote", Mode::Answer, 100.0);
    let local = Link::new("local", Mode::Answer, 5000.0);
    let router = router(&[&remote, &local], Vec::new());
    let mut pool = pool(&router, &clock);

    // Its first plan's first text takes over the 500 ms budget: it answers, then is skipped.
    let (_, events) = plan(&mut pool, 1, Duration::from_secs(5));
    assert_eq!(routed(&events), ["remote"]);
    assert!(row(&router, "remote").skipped);
    let (job, events) = plan(&mut pool, 2, Duration::from_secs(5));
    assert_eq!(routed(&events), ["local"]);
    assert!(completed(&events, job));
    assert_eq!(row(&router, "remote").passed_over, 1);

    // It recovers, but is not tried until the probe interval has passed.
    remote.set_rate(5000.0);
    clock.advance(Duration::from_millis(500));
    let (_, events) = plan(&mut pool, 3, Duration::from_secs(5));
    assert_eq!(routed(&events), ["local"]);
    clock.advance(Duration::from_millis(600));
    let (_, events) = plan(&mut pool, 4, Duration::from_secs(5));
    assert_eq!(routed(&events), ["remote"], "the probe");
    let status = row(&router, "remote");
    assert!(!status.skipped, "{status:?}");
    assert_eq!((status.probes, status.samples), (1, 1));
    let (_, events) = plan(&mut pool, 5, Duration::from_secs(5));
    assert_eq!(routed(&events), ["remote"]);
}

#[test]
fn a_spotlight_request_takes_its_route() {
    let big = Link::new("big", Mode::Answer, 5000.0);
    let small = Link::new("small", Mode::Answer, 5000.0);
    let router = router(
        &[&small, &big],
        vec![
            Route {
                spotlight: Some(true),
                chain: vec!["big".into(), "small".into()],
                ..Route::default()
            },
            Route {
                kind: Some(RequestKind::Plan),
                chain: vec!["small".into()],
                ..Route::default()
            },
        ],
    );
    let mut pool = pool(&router, &Clock::manual());
    let deadline = Deadline::after(Timestamp::ZERO, Duration::from_secs(5));
    let mut watched = plan_request(1, deadline);
    watched.spotlight = true;
    let jobs = [
        pool.submit(watched, 0),
        pool.submit(plan_request(2, deadline), 0),
    ];
    pool.dispatch();
    let events = drain(&mut pool, &BTreeSet::from(jobs));
    let by_job = |job: JobId| {
        let mine: Vec<WorkerEvent> = events.iter().filter(|e| e.job == job).cloned().collect();
        routed(&mine)
    };
    assert_eq!(by_job(jobs[0]), ["big"]);
    assert_eq!(by_job(jobs[1]), ["small"]);
}

#[test]
fn a_lockstep_run_routes_the_same_way_every_time() {
    let run = || {
        let clock = Clock::lockstep(Throughput::default());
        let refusing = Link::new("refusing", Mode::Refuse, 1000.0);
        let remote = Link::new("remote", Mode::Answer, 120.0);
        let local = Link::new("local", Mode::Answer, 2000.0);
        let router = router(&[&refusing, &remote, &local], Vec::new());
        let mut pool = pool(&router, &clock);
        let mut log = Vec::new();
        for round in 0..6u32 {
            let deadline = Deadline::after(clock.now(), Duration::from_millis(700));
            let jobs: BTreeSet<JobId> = (0..4)
                .map(|i| pool.submit(plan_request(round * 4 + i, deadline), u64::from(round)))
                .collect();
            pool.dispatch();
            let mut events = drain(&mut pool, &jobs);
            events.sort_by_key(|e| (e.job, e.at));
            log.extend(events.into_iter().map(|e| (e.job, e.at, e.kind)));
            clock.advance(Duration::from_millis(400));
        }
        (log, router.status())
    };
    let (first, status) = run();
    assert_eq!(first, run().0);
    // The remote was used, found too slow, skipped, and probed.
    let remote = status
        .iter()
        .find(|r| r.backend.as_str() == "remote")
        .unwrap();
    assert!(
        remote.answered >= 1 && remote.passed_over >= 1,
        "{status:?}"
    );
}

#[test]
fn a_skipped_backend_down_the_chain_is_probed_even_when_short_of_time() {
    let clock = Clock::manual();
    let a = Link::new("a", Mode::Refuse, 1000.0);
    let slow = Link::new("slow", Mode::Answer, 100.0);
    let router = router(&[&a, &slow], Vec::new());
    let mut pool = pool(&router, &clock);
    // Its first answer takes ~0.9 s: it is skipped for plans from then on.
    let (_, events) = plan(&mut pool, 1, Duration::from_secs(5));
    assert_eq!(routed(&events), ["a", "slow"]);
    assert!(row(&router, "slow").skipped);
    let (_, events) = plan(&mut pool, 2, Duration::from_millis(300));
    assert_eq!(routed(&events), ["a"]);
    // Past the probe interval it is tried again, though 300 ms is less than its p95.
    slow.set_rate(5000.0);
    clock.advance(Duration::from_millis(1100));
    let (job, events) = plan(&mut pool, 3, Duration::from_millis(300));
    assert_eq!(routed(&events), ["a", "slow"], "the probe");
    assert!(completed(&events, job));
    let status = row(&router, "slow");
    assert_eq!(status.probes, 1);
    assert!(!status.skipped, "{status:?}");
}
