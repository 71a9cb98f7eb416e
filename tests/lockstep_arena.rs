//! A headless arena in which every plan goes through the worker pool on a lockstep clock: the
//! run must repeat exactly for a seed, whatever the number of workers.
//!
//! The "model" is the scripted backend answering with the GOAP plan for the snapshot it is
//! shown, so every step is produced, parsed, validated and stamped the way a model's would be.

#![expect(
    clippy::expect_used,
    reason = "a test stops at the first thing that is not as it should be"
)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hivemind::core::backend::{BatchAgent, FnFactory, InferenceBackend, Script, ScriptedBackend};
use hivemind::core::clock::{Clock, Deadline};
use hivemind::core::config::{BatchingConfig, HivemindConfig, OverflowPolicy, Throughput};
use hivemind::core::prompt::{AgentTask, ChatTemplate, Persona, PromptRules};
use hivemind::core::worker::{JobOutcome, JobRequest, PromptContext, WorkerEventKind, WorkerPool};
use hivemind::prelude::*;
use hivemind_arena::{ArenaAssets, ArenaConfig, ArenaWorld, fallback_plan};

const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, PartialEq, Eq)]
struct Run {
    state_hash: u64,
    plans: usize,
    steps: usize,
    failures: usize,
    deadline_misses: usize,
}

fn run(workers: usize, seed: u64, ticks: usize) -> Run {
    let assets = Arc::new(
        ArenaAssets::load(concat!(env!("CARGO_MANIFEST_DIR"), "/assets").as_ref())
            .expect("the arena's assets load"),
    );
    let config = HivemindConfig::default();
    let registry = Arc::new(assets.registry.clone());
    let context = Arc::new(PromptContext::new(
        &ChatTemplate::chatml(),
        &PromptRules {
            preamble: "You plan for NPCs in an arena shooter.".into(),
            ..Default::default()
        },
        Arc::clone(&registry),
        &[Persona {
            name: "veteran".into(),
            voice: "Gruff and terse.".into(),
        }],
        &config,
    ));
    let script_assets = Arc::clone(&assets);
    let script: Script = Arc::new(move |agent: &BatchAgent, _| {
        let steps = fallback_plan(
            &script_assets.domain,
            &script_assets.registry,
            &agent.snapshot,
        );
        Plan::new(agent.agent, steps, PlanSource::Goap).to_json()
    });
    let factory = FnFactory::new(BackendId::SCRIPTED, move || {
        Ok(Box::new(ScriptedBackend::new(Arc::clone(&script))) as Box<dyn InferenceBackend>)
    });
    // A first step costs about 400 ms of virtual time at this rate, and agents' deadlines range
    // from 100 to 400 ms (below), so some are late and some in time: which ones depends on token
    // counts, the part a wall clock would make irreproducible.
    let throughput = Throughput {
        prompt_tokens_per_sec: 2_000.0,
        generated_tokens_per_sec: 40.0,
    };
    let mut pool = WorkerPool::new(
        BatchingConfig {
            workers,
            max_batch: 4,
            queue_capacity: 256,
            overflow: OverflowPolicy::RejectNew,
        },
        factory,
        context,
        Clock::lockstep(throughput),
    );

    let mut world = ArenaWorld::new(ArenaConfig::default().with_seed(seed));
    let mut result = Run {
        state_hash: 0,
        plans: 0,
        steps: 0,
        failures: 0,
        deadline_misses: 0,
    };
    for tick in 0..ticks {
        let now = pool.clock().now();
        let mut open = BTreeSet::new();
        for agent in world.agent_ids() {
            if world.is_idle(agent) {
                open.insert(pool.submit(
                    JobRequest {
                        agent,
                        persona: "veteran".into(),
                        task: AgentTask::Plan { order: None },
                        snapshot: Arc::new(world.snapshot(agent)),
                        deadline: Deadline::after(
                            now,
                            Duration::from_millis(100 + 60 * u64::from(agent.0 % 6)),
                        ),
                        spotlight: false,
                    },
                    tick as u64,
                ));
            }
        }
        pool.dispatch();
        // Lockstep: the tick waits for its jobs, so what happens depends only on the inputs.
        let mut first_steps = Vec::new();
        let mut late = BTreeSet::new();
        while !open.is_empty() {
            let event = pool
                .recv_timeout(Duration::from_secs(30))
                .expect("the worker answers");
            match event.kind {
                // In time: the agent acts on the model's first step. Late: the fallback answers
                // (here the idle verb), and the model's answer is not the agent's any more.
                WorkerEventKind::Step { index: 0, step } if !late.contains(&event.agent) => {
                    first_steps.push((event.agent, step));
                }
                WorkerEventKind::Step { index: 0, .. } => {
                    first_steps.push((event.agent, registry.idle_step()));
                }
                WorkerEventKind::Step { .. } => result.steps += 1,
                WorkerEventKind::DeadlineCrossed => {
                    result.deadline_misses += 1;
                    late.insert(event.agent);
                }
                WorkerEventKind::Finished(outcome) => {
                    open.remove(&event.job);
                    match outcome {
                        JobOutcome::Completed { .. } => result.plans += 1,
                        _ => result.failures += 1,
                    }
                }
                WorkerEventKind::Started { .. }
                | WorkerEventKind::Routed { .. }
                | WorkerEventKind::Intent { .. }
                | WorkerEventKind::Words { .. }
                | WorkerEventKind::LineSkipped => {}
            }
        }
        first_steps.sort_by_key(|(agent, _)| *agent);
        for (agent, step) in first_steps {
            result.steps += 1;
            world
                .begin_step(agent, &step)
                .expect("validated steps are accepted");
        }
        world.tick();
        pool.clock().advance(TICK);
    }
    result.state_hash = world.state_hash();
    result
}

#[test]
fn a_lockstep_run_repeats_exactly_whatever_the_number_of_workers() {
    let one = run(1, 7, 60);
    assert!(one.plans > 12, "agents re-planned during the run: {one:?}");
    assert_eq!(one.failures, 0, "every scripted answer validates: {one:?}");
    assert!(
        one.deadline_misses > 0 && one.deadline_misses < one.plans,
        "the slow throughput makes some first steps late and leaves others in time: {one:?}"
    );
    assert_eq!(one, run(1, 7, 60), "the same seed repeats");
    assert_eq!(one, run(3, 7, 60), "the number of workers changes nothing");
    assert_ne!(
        one.state_hash,
        run(1, 8, 60).state_hash,
        "another seed plays another game"
    );
}
