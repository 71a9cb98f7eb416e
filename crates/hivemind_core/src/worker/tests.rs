use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::action::tests::{arena_registry, flanking_guard};
use crate::backend::{
    Batch, BatchAgent, BatchSink, FnFactory, InferenceBackend, Latency, Recorder, ReplayBackend,
    Script, ScriptedBackend, Transcript,
};
use crate::config::{HivemindConfig, PromptLayout, Throughput};
use crate::plan::OutputFormat;
use crate::prompt::{ChatTemplate, Persona, PromptRules};
use crate::snapshot::Point;

pub(crate) fn context(layout: PromptLayout) -> Arc<PromptContext> {
    let mut config = HivemindConfig::default();
    config.model.layout = layout;
    Arc::new(PromptContext::new(
        &ChatTemplate::chatml(),
        &PromptRules {
            preamble: "You plan for NPCs.".into(),
            ..Default::default()
        },
        Arc::new(arena_registry()),
        &[Persona {
            name: "veteran".into(),
            voice: "Gruff.".into(),
        }],
        &config,
    ))
}

pub(crate) fn scripted(script: Script, latency: Latency) -> Arc<dyn BackendFactory> {
    FnFactory::new(BackendId::SCRIPTED, move || {
        Ok(
            Box::new(ScriptedBackend::new(Arc::clone(&script)).with_latency(latency))
                as Box<dyn InferenceBackend>,
        )
    })
}

/// A script that attacks the first enemy in sight, then says something.
pub(crate) fn attacker() -> Script {
    Arc::new(|a: &BatchAgent, format: OutputFormat| match format {
        OutputFormat::FreePlan => {
            let target = a
                .snapshot
                .entities_in("enemy")
                .map(|e| e.id.0)
                .min()
                .unwrap_or(0);
            format!(
                "{{\"agent\":{},\"steps\":[{{\"act\":\"Attack\",\"target\":{target}}},{{\"act\":\"Say\",\"text\":\"Got you\"}}]}}",
                a.agent
            )
        }
        _ => format!("{{\"agent\":{},\"say\":\"Hold the line\"}}", a.agent),
    })
}

pub(crate) fn guard(id: u32) -> WorldSnapshot {
    let mut s = flanking_guard();
    s.agent = AgentId(id);
    s.position = Point::new(id as i32 % 20, 5);
    s
}

pub(crate) fn plan_request(id: u32, deadline: Deadline) -> JobRequest {
    JobRequest {
        agent: AgentId(id),
        persona: "veteran".into(),
        task: AgentTask::Plan { order: None },
        snapshot: Arc::new(guard(id)),
        deadline,
        spotlight: false,
    }
}

pub(crate) fn batching(workers: usize, max_batch: usize, capacity: usize) -> BatchingConfig {
    BatchingConfig {
        workers,
        max_batch,
        queue_capacity: capacity,
        overflow: OverflowPolicy::RejectNew,
    }
}

pub(crate) fn far() -> Deadline {
    Deadline::after(Timestamp::ZERO, Duration::from_secs(3600))
}

/// Drains until every job in `jobs` has finished (or a generous timeout passes).
pub(crate) fn drain(pool: &mut WorkerPool, jobs: &BTreeSet<JobId>) -> Vec<WorkerEvent> {
    let mut events = Vec::new();
    let mut open = jobs.clone();
    for _ in 0..2_000 {
        if open.is_empty() {
            break;
        }
        if let Some(e) = pool.recv_timeout(Duration::from_millis(50)) {
            if matches!(e.kind, WorkerEventKind::Finished(_)) {
                open.remove(&e.job);
            }
            events.push(e);
        }
    }
    assert!(open.is_empty(), "jobs never finished: {open:?}");
    events
}

pub(crate) fn outcome(events: &[WorkerEvent], job: JobId) -> &JobOutcome {
    events
        .iter()
        .find_map(|e| match &e.kind {
            WorkerEventKind::Finished(o) if e.job == job => Some(o),
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_plan_streams_validated_steps_then_finishes() {
    let mut pool = WorkerPool::new(
        batching(1, 16, 64),
        scripted(attacker(), Latency::Virtual),
        context(PromptLayout::ParallelSequences),
        Clock::manual(),
    );
    let job = pool.submit(plan_request(3, far()), 0);
    pool.dispatch();
    let events = drain(&mut pool, &BTreeSet::from([job]));
    let kinds: Vec<&WorkerEventKind> = events.iter().map(|e| &e.kind).collect();
    assert!(matches!(
        kinds[0],
        WorkerEventKind::Started {
            backend,
            batch_size: 1,
            ..
        } if *backend == BackendId::SCRIPTED
    ));
    let WorkerEventKind::Step { index: 0, step } = kinds[1] else {
        panic!("{kinds:?}")
    };
    assert_eq!(step.to_string(), "Attack(target=7)");
    assert!(matches!(kinds[2], WorkerEventKind::Step { index: 1, .. }));
    assert!(matches!(
        kinds[3],
        WorkerEventKind::Finished(JobOutcome::Completed { .. })
    ));
    assert_eq!(kinds.len(), 4);
    // Stamps come from token counts and only grow.
    assert!(events.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(events[1].at > Timestamp::ZERO);
}

#[test]
fn batches_are_the_same_whatever_the_number_of_workers() {
    let run = |workers: usize| {
        let mut pool = WorkerPool::new(
            batching(workers, 4, 256),
            scripted(attacker(), Latency::Virtual),
            context(PromptLayout::ParallelSequences),
            Clock::lockstep(Throughput::default()),
        );
        let mut jobs = BTreeSet::new();
        // Submitted out of order, over two ticks.
        for (tick, ids) in [(0u64, [9u32, 2, 7, 4, 11, 1]), (1, [5, 3, 8, 6, 10, 12])] {
            for id in ids {
                jobs.insert(pool.submit(plan_request(id, far()), tick));
            }
            pool.dispatch();
        }
        let events = drain(&mut pool, &jobs);
        let mut batches: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
        let mut per_job: BTreeMap<u32, Vec<(Timestamp, String)>> = BTreeMap::new();
        for e in &events {
            match &e.kind {
                WorkerEventKind::Started { batch, .. } => {
                    batches.entry(*batch).or_default().insert(e.agent.0);
                }
                other => per_job
                    .entry(e.agent.0)
                    .or_default()
                    .push((e.at, format!("{other:?}"))),
            }
        }
        (batches, per_job)
    };
    let one = run(1);
    assert_eq!(one.0.len(), 4, "two ticks of six jobs in batches of four");
    assert_eq!(one.0[&0], BTreeSet::from([1, 2, 4, 7]));
    assert_eq!(one, run(3));
}

#[test]
fn a_full_queue_answers_the_newcomer_with_overflow() {
    let mut pool = WorkerPool::new(
        batching(1, 16, 2),
        scripted(attacker(), Latency::Virtual),
        context(PromptLayout::ParallelSequences),
        Clock::manual(),
    );
    let jobs: BTreeSet<JobId> = (1..=5)
        .map(|id| pool.submit(plan_request(id, far()), 0))
        .collect();
    pool.dispatch();
    let events = drain(&mut pool, &jobs);
    let overflowed: Vec<u32> = events
        .iter()
        .filter(|e| e.kind == WorkerEventKind::Finished(JobOutcome::Failed(JobFailure::Overflow)))
        .map(|e| e.agent.0)
        .collect();
    assert_eq!(overflowed, vec![3, 4, 5]);
    assert_eq!(
        JobFailure::Overflow.fallback_reason(),
        FallbackReason::Overflow
    );
}

#[test]
fn shedding_ends_the_job_with_the_latest_deadline() {
    let mut config = batching(1, 16, 2);
    config.overflow = OverflowPolicy::ShedLatestDeadline;
    let mut pool = WorkerPool::new(
        config,
        scripted(attacker(), Latency::Virtual),
        context(PromptLayout::ParallelSequences),
        Clock::manual(),
    );
    let at = |ms| Deadline::after(Timestamp::ZERO, Duration::from_millis(ms));
    let relaxed = pool.submit(plan_request(1, at(900)), 0);
    let urgent = pool.submit(plan_request(2, at(100)), 0);
    let newcomer = pool.submit(plan_request(3, at(200)), 0);
    let too_late = pool.submit(plan_request(4, at(5000)), 0);
    pool.dispatch();
    let events = drain(
        &mut pool,
        &BTreeSet::from([relaxed, urgent, newcomer, too_late]),
    );
    let overflow = JobOutcome::Failed(JobFailure::Overflow);
    assert_eq!(outcome(&events, relaxed), &overflow);
    assert_eq!(outcome(&events, too_late), &overflow);
    assert!(matches!(
        outcome(&events, urgent),
        JobOutcome::Completed { .. }
    ));
    assert!(matches!(
        outcome(&events, newcomer),
        JobOutcome::Completed { .. }
    ));
}

/// Holds the worker in its first batch until `go`, then answers as the attacker does.
struct HeldOpen {
    go: Arc<AtomicBool>,
}

impl InferenceBackend for HeldOpen {
    fn run(&mut self, batch: &Batch, sink: &mut dyn BatchSink) -> Result<(), BackendError> {
        while !self.go.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        ScriptedBackend::new(attacker()).run(batch, sink)
    }
}

/// A job shed while it waits for a worker leaves the queue at once: the queue once counted it
/// until a worker took its batch, so each urgent newcomer that shed one made the queue a job
/// longer than its capacity, up to twice it.
#[test]
fn shedding_a_job_that_waits_for_a_worker_keeps_the_queue_within_capacity() {
    let go = Arc::new(AtomicBool::new(false));
    let gate = Arc::clone(&go);
    let factory = FnFactory::new(BackendId::SCRIPTED, move || {
        Ok(Box::new(HeldOpen {
            go: Arc::clone(&gate),
        }) as Box<dyn InferenceBackend>)
    });
    let mut config = batching(1, 1, 2);
    config.overflow = OverflowPolicy::ShedLatestDeadline;
    let mut pool = WorkerPool::new(
        config,
        factory,
        context(PromptLayout::ParallelSequences),
        Clock::manual(),
    );
    let at = |ms| Deadline::after(Timestamp::ZERO, Duration::from_millis(ms));
    // The worker takes the first job and is held in it.
    let running = pool.submit(plan_request(1, at(5_000)), 0);
    pool.dispatch();
    while !matches!(
        pool.recv_timeout(Duration::from_secs(5)).map(|e| e.kind),
        Some(WorkerEventKind::Started { .. })
    ) {}
    // Two jobs wait for it, in two batches: the queue is full.
    let mut jobs = BTreeSet::from([running]);
    for (agent, ms) in [(2, 4_000), (3, 3_000)] {
        jobs.insert(pool.submit(plan_request(agent, at(ms)), 1));
    }
    pool.dispatch();
    let mut depths = vec![pool.queue_depth()];
    // Urgent newcomers shed the waiting jobs one by one.
    for (agent, ms) in [(4, 100), (5, 200)] {
        jobs.insert(pool.submit(plan_request(agent, at(ms)), 2));
        depths.push(pool.queue_depth());
    }
    pool.dispatch();
    // Released before any assertion, so a failing one does not leave the worker held.
    go.store(true, Ordering::Release);
    assert_eq!(depths, [2, 2, 2], "the queue's depth after each submit");
    let events = drain(&mut pool, &jobs);
    let overflow = JobOutcome::Failed(JobFailure::Overflow);
    let shed: Vec<u32> = events
        .iter()
        .filter(|e| e.kind == WorkerEventKind::Finished(overflow.clone()))
        .map(|e| e.agent.0)
        .collect();
    assert_eq!(shed, [2, 3]);
    assert_eq!(pool.queue_depth(), 0);
}

#[test]
fn cancelling_ends_a_job_once_whether_pending_or_running() {
    let mut pool = WorkerPool::new(
        batching(1, 16, 64),
        scripted(
            attacker(),
            Latency::Real {
                prompt: Duration::ZERO,
                per_token: Duration::from_millis(5),
            },
        ),
        context(PromptLayout::ParallelSequences),
        Clock::real_time(),
    );
    let pending = pool.submit(plan_request(1, far()), 0);
    pool.cancel(pending);
    let running = pool.submit(plan_request(2, far()), 0);
    let bystander = pool.submit(plan_request(3, far()), 0);
    pool.dispatch();
    // Wait until the batch has started, then cancel one of its jobs mid-stream.
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e: &WorkerEvent| matches!(e.kind, WorkerEventKind::Started { .. }))
    {
        events.extend(pool.recv_timeout(Duration::from_millis(100)));
    }
    pool.cancel(running);
    events.extend(drain(&mut pool, &BTreeSet::from([running, bystander])));
    assert_eq!(outcome(&events, pending), &JobOutcome::Cancelled);
    assert_eq!(outcome(&events, running), &JobOutcome::Cancelled);
    assert!(matches!(
        outcome(&events, bystander),
        JobOutcome::Completed { .. }
    ));
    for job in [pending, running, bystander] {
        let finished = events
            .iter()
            .filter(|e| e.job == job && matches!(e.kind, WorkerEventKind::Finished(_)))
            .count();
        assert_eq!(finished, 1);
    }
}

#[test]
fn a_panicking_backend_fails_its_batch_and_the_worker_recovers() {
    let script: Script = Arc::new(|a: &BatchAgent, f: OutputFormat| {
        assert!(a.agent != AgentId(13), "the model fell over");
        attacker()(a, f)
    });
    let mut pool = WorkerPool::new(
        batching(1, 2, 64),
        scripted(script, Latency::Virtual),
        context(PromptLayout::ParallelSequences),
        Clock::manual(),
    );
    let doomed = pool.submit(plan_request(13, far()), 0);
    let neighbour = pool.submit(plan_request(12, far()), 0);
    pool.dispatch();
    let later = pool.submit(plan_request(5, far()), 1);
    pool.dispatch();
    let events = drain(&mut pool, &BTreeSet::from([doomed, neighbour, later]));
    for job in [doomed, neighbour] {
        let JobOutcome::Failed(failure @ JobFailure::Panicked(message)) = outcome(&events, job)
        else {
            panic!("{:?}", outcome(&events, job))
        };
        assert!(message.contains("the model fell over"));
        assert_eq!(failure.fallback_reason(), FallbackReason::BackendError);
    }
    assert!(matches!(
        outcome(&events, later),
        JobOutcome::Completed { .. }
    ));
}

#[test]
fn the_backend_can_be_swapped_while_running() {
    let mut pool = WorkerPool::new(
        batching(2, 16, 64),
        scripted(attacker(), Latency::Virtual),
        context(PromptLayout::ParallelSequences),
        Clock::manual(),
    );
    let first = pool.submit(plan_request(1, far()), 0);
    pool.dispatch();
    drain(&mut pool, &BTreeSet::from([first]));
    let transcript = Arc::new(Transcript::new());
    pool.set_backend(FnFactory::new(BackendId::REPLAY, move || {
        Ok(Box::new(ReplayBackend::new(Arc::clone(&transcript))) as Box<dyn InferenceBackend>)
    }));
    assert_eq!(pool.backend_id(), BackendId::REPLAY);
    let second = pool.submit(plan_request(1, far()), 1);
    pool.dispatch();
    let events = drain(&mut pool, &BTreeSet::from([second]));
    assert!(events.iter().any(|e| matches!(
        &e.kind,
        WorkerEventKind::Started { backend, .. } if *backend == BackendId::REPLAY
    )));
    // The empty transcript has nothing for this prompt.
    assert!(matches!(
        outcome(&events, second),
        JobOutcome::Failed(JobFailure::Backend(BackendError::NoRecording { .. }))
    ));
}

#[test]
fn a_recorded_session_replays_identically() {
    let transcript = Arc::new(Mutex::new(Transcript::new()));
    let recorded = Arc::clone(&transcript);
    let recording = FnFactory::new(BackendId::SCRIPTED, move || {
        let inner = Box::new(ScriptedBackend::new(attacker()));
        let id = BackendId::new(BackendId::SCRIPTED);
        Ok(Box::new(Recorder::new(inner, id, Arc::clone(&recorded))) as Box<dyn InferenceBackend>)
    });
    let session = |factory: Arc<dyn BackendFactory>| {
        let mut pool = WorkerPool::new(
            batching(1, 4, 64),
            factory,
            context(PromptLayout::ParallelSequences),
            Clock::manual(),
        );
        let jobs: BTreeSet<JobId> = (1..=6)
            .map(|id| pool.submit(plan_request(id, far()), 0))
            .collect();
        pool.dispatch();
        drain(&mut pool, &jobs)
            .into_iter()
            .filter(|e| !matches!(e.kind, WorkerEventKind::Started { .. }))
            .map(|e| (e.job, e.at, e.kind))
            .collect::<Vec<_>>()
    };
    let live = session(recording);
    let path =
        std::env::temp_dir().join(format!("hivemind-transcript-{}.jsonl", std::process::id()));
    transcript.lock().unwrap().save(&path).unwrap();
    let loaded = Arc::new(Transcript::load(&path).unwrap());
    std::fs::remove_file(&path).unwrap();
    assert_eq!(loaded.streams().len(), 6);
    assert!(
        loaded.streams().iter().all(|s| s
            .backend
            .as_ref()
            .is_some_and(|b| *b == BackendId::SCRIPTED)),
        "each stream names the backend that wrote it"
    );
    let replayed = session(FnFactory::new(BackendId::REPLAY, move || {
        Ok(Box::new(ReplayBackend::new(Arc::clone(&loaded))) as Box<dyn InferenceBackend>)
    }));
    let sorted = |mut v: Vec<(JobId, Timestamp, WorkerEventKind)>| {
        v.sort_by_key(|(job, at, _)| (*job, *at));
        v
    };
    assert_eq!(sorted(live), sorted(replayed));
}

#[test]
fn an_invalid_step_keeps_the_earlier_ones_and_fails_the_job() {
    let script: Script = Arc::new(|a: &BatchAgent, _| {
        format!(
            "{{\"agent\":{},\"steps\":[{{\"act\":\"Reload\"}},{{\"act\":\"Attack\",\"target\":999}}]}}",
            a.agent
        )
    });
    let mut pool = WorkerPool::new(
        batching(1, 16, 64),
        scripted(script, Latency::Virtual),
        context(PromptLayout::ParallelSequences),
        Clock::manual(),
    );
    let job = pool.submit(plan_request(3, far()), 0);
    pool.dispatch();
    let events = drain(&mut pool, &BTreeSet::from([job]));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e.kind, WorkerEventKind::Step { .. }))
            .count(),
        1
    );
    let JobOutcome::Failed(JobFailure::Invalid(why)) = outcome(&events, job) else {
        panic!()
    };
    assert!(why.contains("999"), "{why}");
}

#[test]
fn lockstep_reports_a_crossed_deadline_before_late_output() {
    // 10 generated tokens per second: the first step needs several, far past a 100 ms deadline.
    let slow = Throughput {
        prompt_tokens_per_sec: 1e9,
        generated_tokens_per_sec: 10.0,
    };
    let mut pool = WorkerPool::new(
        batching(1, 16, 64),
        scripted(attacker(), Latency::Virtual),
        context(PromptLayout::ParallelSequences),
        Clock::lockstep(slow),
    );
    let tight = pool.submit(
        plan_request(
            3,
            Deadline::after(Timestamp::ZERO, Duration::from_millis(100)),
        ),
        0,
    );
    let loose = pool.submit(plan_request(4, far()), 0);
    pool.dispatch();
    let events = drain(&mut pool, &BTreeSet::from([tight, loose]));
    let tight_kinds: Vec<&WorkerEventKind> = events
        .iter()
        .filter(|e| e.job == tight)
        .map(|e| &e.kind)
        .collect();
    assert!(
        matches!(tight_kinds[1], WorkerEventKind::DeadlineCrossed),
        "{tight_kinds:?}"
    );
    assert_eq!(
        tight_kinds
            .iter()
            .filter(|k| matches!(k, WorkerEventKind::DeadlineCrossed))
            .count(),
        1
    );
    assert!(
        !events
            .iter()
            .any(|e| e.job == loose && e.kind == WorkerEventKind::DeadlineCrossed)
    );
}

#[test]
fn the_shared_layout_routes_each_object_to_its_job() {
    let mut pool = WorkerPool::new(
        batching(1, 16, 64),
        scripted(attacker(), Latency::Virtual),
        context(PromptLayout::SharedPrompt),
        Clock::manual(),
    );
    let jobs: BTreeSet<JobId> = [4, 2, 9]
        .map(|id| pool.submit(plan_request(id, far()), 0))
        .into();
    pool.dispatch();
    let events = drain(&mut pool, &jobs);
    for e in &events {
        if let WorkerEventKind::Step { step, .. } = &e.kind {
            assert!(step.verb == "Attack" || step.verb == "Say");
        }
    }
    for job in jobs {
        assert!(matches!(
            outcome(&events, job),
            JobOutcome::Completed { .. }
        ));
        assert_eq!(
            events
                .iter()
                .filter(|e| e.job == job && matches!(e.kind, WorkerEventKind::Step { .. }))
                .count(),
            2
        );
    }
}

#[test]
fn a_backend_that_cannot_be_built_fails_jobs_with_its_reason() {
    let factory = FnFactory::new(BackendId::LOCAL, || {
        Err(BackendError::NoModel("models/x.gguf is missing".into()))
    });
    let mut pool = WorkerPool::new(
        batching(1, 16, 64),
        factory,
        context(PromptLayout::ParallelSequences),
        Clock::manual(),
    );
    let job = pool.submit(plan_request(3, far()), 0);
    pool.dispatch();
    let events = drain(&mut pool, &BTreeSet::from([job]));
    let JobOutcome::Failed(failure) = outcome(&events, job) else {
        panic!()
    };
    assert_eq!(failure.fallback_reason(), FallbackReason::NoModel);
}

#[test]
fn shutdown_answers_everything_still_open() {
    let mut pool = WorkerPool::new(
        batching(1, 1, 64),
        scripted(
            attacker(),
            Latency::Real {
                prompt: Duration::ZERO,
                per_token: Duration::from_millis(20),
            },
        ),
        context(PromptLayout::ParallelSequences),
        Clock::real_time(),
    );
    let dispatched: Vec<JobId> = (1..=3)
        .map(|id| pool.submit(plan_request(id, far()), 0))
        .collect();
    pool.dispatch();
    let held = pool.submit(plan_request(9, far()), 1);
    pool.shutdown();
    let mut finished = BTreeMap::new();
    while let Some(e) = pool.try_recv() {
        if let WorkerEventKind::Finished(o) = e.kind {
            assert!(
                finished.insert(e.job, o).is_none(),
                "two outcomes for {}",
                e.job
            );
        }
    }
    for job in dispatched.into_iter().chain([held]) {
        assert!(finished.contains_key(&job), "{job} got no outcome");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Every job ends exactly once, and nothing follows its end, under random cancels,
    /// panicking agents, overflow and worker counts.
    #[test]
    fn every_job_gets_exactly_one_outcome(
        workers in 1usize..4,
        max_batch in 1usize..6,
        capacity in 4usize..40,
        ticks in proptest::collection::vec(
            proptest::collection::vec((0u32..40, any::<bool>(), any::<bool>()), 0..12),
            1..5,
        ),
    ) {
        let panicky = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&panicky);
        let script: Script = Arc::new(move |a: &BatchAgent, f: OutputFormat| {
            if flag.load(Ordering::Relaxed) && a.agent.0 % 7 == 3 {
                panic!("agent {} tripped", a.agent);
            }
            attacker()(a, f)
        });
        let mut pool = WorkerPool::new(
            BatchingConfig { workers, max_batch, queue_capacity: capacity, overflow: OverflowPolicy::ShedLatestDeadline },
            scripted(script, Latency::Real { prompt: Duration::ZERO, per_token: Duration::from_micros(200) }),
            context(PromptLayout::ParallelSequences),
            Clock::real_time(),
        );
        let mut jobs = BTreeSet::new();
        let mut events = Vec::new();
        for (tick, requests) in ticks.iter().enumerate() {
            let mut submitted = Vec::new();
            for (agent, _, _) in requests {
                let deadline = Deadline::after(pool.clock().now(), Duration::from_millis(u64::from(*agent) * 10));
                submitted.push(pool.submit(plan_request(*agent, deadline), tick as u64));
            }
            for (job, (_, cancel_before, _)) in submitted.iter().zip(requests) {
                if *cancel_before { pool.cancel(*job); }
            }
            pool.dispatch();
            for (job, (_, _, cancel_after)) in submitted.iter().zip(requests) {
                if *cancel_after { pool.cancel(*job); }
            }
            jobs.extend(submitted);
            while let Some(e) = pool.try_recv() { events.push(e); }
        }
        panicky.store(false, Ordering::Relaxed);
        let seen: BTreeSet<JobId> = events
            .iter()
            .filter(|e| matches!(e.kind, WorkerEventKind::Finished(_)))
            .map(|e| e.job)
            .collect();
        events.extend(drain(&mut pool, &jobs.difference(&seen).copied().collect()));
        let mut finished = BTreeSet::new();
        for e in &events {
            prop_assert!(!finished.contains(&e.job), "{:?} after {} finished", e.kind, e.job);
            if matches!(e.kind, WorkerEventKind::Finished(_)) {
                finished.insert(e.job);
            }
        }
        prop_assert_eq!(finished, jobs);
    }
}

/// Writes one step, waits for `go`, then asks to skip the rest as a line (recording the
/// answer); a stream the sink keeps writing finishes its plan.
struct SkipAfterOneStep {
    go: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<bool>>>,
}

impl InferenceBackend for SkipAfterOneStep {
    fn run(&mut self, batch: &Batch, sink: &mut dyn BatchSink) -> Result<(), BackendError> {
        for (stream, a) in batch.agents.iter().enumerate() {
            let head = format!("{{\"agent\":{},\"steps\":[{{\"act\":\"Reload\"}}", a.agent);
            let usage = TokenUsage {
                prompt_tokens: 10,
                generated_tokens: 8,
            };
            sink.text(stream, &head, usage);
            for _ in 0..2_000 {
                if self.go.load(Ordering::Acquire) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let skipped = sink.skip_line(stream, usage);
            self.answers.lock().unwrap().push(skipped);
            if !skipped {
                sink.text(stream, "]}", usage);
                sink.done(stream, usage);
            }
        }
        Ok(())
    }
}

#[test]
fn a_line_is_skipped_only_for_waiting_work_on_a_real_clock_after_the_answer() {
    for (clock, waiting_work, skipped) in [
        (Clock::real_time(), true, true),
        (Clock::real_time(), false, false),
        (Clock::manual(), true, false),
    ] {
        let go = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (g, a) = (Arc::clone(&go), Arc::clone(&answers));
        let factory = FnFactory::new("skipper", move || {
            Ok(Box::new(SkipAfterOneStep {
                go: Arc::clone(&g),
                answers: Arc::clone(&a),
            }) as Box<dyn InferenceBackend>)
        });
        let mut pool = WorkerPool::new(
            batching(1, 1, 64),
            factory,
            context(PromptLayout::ParallelSequences),
            clock.clone(),
        );
        let deadline = Deadline::after(clock.now(), Duration::from_secs(3600));
        let first = pool.submit(plan_request(1, deadline), 0);
        pool.dispatch();
        let mut jobs = BTreeSet::from([first]);
        let mut events = Vec::new();
        // Wait until the first batch runs, so the second can only wait behind it.
        while !events
            .iter()
            .any(|e: &WorkerEvent| matches!(e.kind, WorkerEventKind::Step { .. }))
        {
            events.extend(pool.recv_timeout(Duration::from_millis(50)));
        }
        if waiting_work {
            jobs.insert(pool.submit(plan_request(2, deadline), 1));
            pool.dispatch();
        }
        go.store(true, Ordering::Release);
        events.extend(drain(&mut pool, &jobs));
        assert_eq!(
            answers.lock().unwrap()[0],
            skipped,
            "virtual {} waiting {waiting_work}",
            clock.is_virtual()
        );
        assert!(matches!(
            outcome(&events, first),
            JobOutcome::Completed { .. }
        ));
        let skip_events = events
            .iter()
            .filter(|e| e.job == first && e.kind == WorkerEventKind::LineSkipped)
            .count();
        assert_eq!(skip_events, usize::from(skipped));
    }
}
