//! The remote backend against a real llama-server on loopback serving the default model, built
//! from llama.cpp's source by `scripts/setup --server`: guided plans, free plans and lines
//! stream through the same parser as the local model's, the grammar is honoured, and a cancelled
//! job's request is aborted at the server.
//!
//! Skipped without the model or the server binary unless `HIVEMIND_REQUIRE_MODEL` is set (CI
//! sets it).
#![cfg(all(feature = "remote", feature = "llama"))]
#![expect(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "a test stops at the first thing that is not as it should be"
)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use hivemind::core::backend::{BackendFactory, JobId};
use hivemind::core::clock::{Clock, Deadline, Timestamp};
use hivemind::core::config::{
    BatchingConfig, Dialect, HivemindConfig, PromptLayout, RemoteConfig, Sampling,
};
use hivemind::core::prompt::AgentTask;
use hivemind::core::snapshot::AgentId;
use hivemind::core::worker::{JobOutcome, JobRequest, WorkerEvent, WorkerEventKind, WorkerPool};
use hivemind::remote::RemoteFactory;
use hivemind_arena::ArenaAssets;
use hivemind_arena::intents::intents;
use hivemind_arena::scenarios::{Scenario, suite};
use hivemind_examples::llama_server::{LlamaServer, server_binary};

fn assets() -> ArenaAssets {
    ArenaAssets::load(concat!(env!("CARGO_MANIFEST_DIR"), "/assets").as_ref())
        .unwrap_or_else(|e| panic!("the arena's assets load: {e}"))
}

/// The server on the default model with four slots, or `None` (said on stderr) where the model
/// or the binary is missing and CI's variable is not set.
fn server(test: &str) -> Option<LlamaServer> {
    let model = hivemind::llama::testing::model_for_test(test)?;
    let binary = server_binary();
    if !binary.is_file() {
        let required = std::env::var(hivemind::llama::testing::REQUIRE_MODEL_ENV)
            .is_ok_and(|v| !v.is_empty() && v != "0");
        assert!(
            !required,
            "{test}: no llama-server at {} (run scripts/setup --server)",
            binary.display()
        );
        // Straight to the process's stderr: the harness captures a passing test's output.
        let _ = writeln!(
            std::io::stderr(),
            "{test}: skipped, no llama-server at {}",
            binary.display()
        );
        return None;
    }
    let args = ["-np", "4", "-c", "8192", "-t", "2", "--metrics"];
    Some(
        LlamaServer::start(&binary, &model, &args, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{test}: {e}")),
    )
}

fn config(server: &LlamaServer, layout: PromptLayout) -> HivemindConfig {
    let mut config = HivemindConfig::default();
    config.model.layout = layout;
    config.sampling.dialogue = Sampling::Greedy;
    config.remotes.insert(
        "remote".into(),
        RemoteConfig {
            dialect: Dialect::LlamaServer,
            read_timeout_ms: 30_000,
            ..RemoteConfig::at(server.url())
        },
    );
    config
}

fn pool(config: &HivemindConfig, assets: &ArenaAssets) -> WorkerPool {
    let factory = RemoteFactory::new();
    factory.configure(config);
    let batching = BatchingConfig {
        workers: 1,
        ..BatchingConfig::default()
    };
    WorkerPool::new(
        batching,
        factory,
        Arc::new(assets.prompt_context(config)),
        Clock::manual(),
    )
}

/// A guided plan for `scenario`'s agent, offered the arena's intents.
fn guided(assets: &ArenaAssets, scenario: &Scenario) -> JobRequest {
    JobRequest {
        agent: scenario.snapshot.agent,
        persona: scenario.persona.into(),
        task: AgentTask::Guided {
            options: intents(&assets.domain, &assets.registry, &scenario.snapshot),
            order: None,
        },
        snapshot: Arc::new(scenario.snapshot.clone()),
        deadline: far(),
        spotlight: false,
    }
}

fn far() -> Deadline {
    Deadline::after(Timestamp::ZERO, Duration::from_secs(3600))
}

/// Submits `requests` as one batch and returns every event once each job has finished.
fn run(
    pool: &mut WorkerPool,
    requests: Vec<JobRequest>,
    cancel_on_words: bool,
) -> (Vec<JobId>, Vec<WorkerEvent>) {
    let jobs: Vec<JobId> = requests.into_iter().map(|r| pool.submit(r, 0)).collect();
    pool.dispatch();
    let mut open: BTreeSet<JobId> = jobs.iter().copied().collect();
    let mut events = Vec::new();
    while !open.is_empty() {
        let event = pool
            .recv_timeout(Duration::from_secs(60))
            .expect("the server answers within a minute");
        if cancel_on_words && matches!(event.kind, WorkerEventKind::Words { .. }) {
            pool.cancel(event.job);
        }
        if matches!(event.kind, WorkerEventKind::Finished(_)) {
            open.remove(&event.job);
        }
        events.push(event);
    }
    (jobs, events)
}

fn of(events: &[WorkerEvent], job: JobId) -> Vec<&WorkerEventKind> {
    events
        .iter()
        .filter(|e| e.job == job)
        .map(|e| &e.kind)
        .collect()
}

fn completed(events: &[WorkerEvent], job: JobId) -> bool {
    of(events, job)
        .iter()
        .any(|k| matches!(k, WorkerEventKind::Finished(JobOutcome::Completed { .. })))
}

#[test]
fn guided_plans_free_plans_and_lines_stream_from_a_real_server() {
    let Some(server) = server("remote_server") else {
        return;
    };
    let assets = assets();
    let config = config(&server, PromptLayout::ParallelSequences);
    let mut pool = pool(&config, &assets);

    // Four guided plans at once: four concurrent requests on the server's four slots.
    let scenarios: Vec<Scenario> = suite().into_iter().take(4).collect();
    let requests: Vec<JobRequest> = scenarios.iter().map(|s| guided(&assets, s)).collect();
    let offered: Vec<usize> = requests.iter().map(|r| r.task.options().len()).collect();
    let (jobs, events) = run(&mut pool, requests, false);
    for (job, offered) in jobs.iter().zip(offered) {
        assert!(completed(&events, *job), "{:?}", of(&events, *job));
        let intent = of(&events, *job).into_iter().find_map(|k| match k {
            WorkerEventKind::Intent { intent } => Some(*intent),
            _ => None,
        });
        let intent = intent.expect("the grammar makes the model pick an intent");
        assert!(
            (1..=offered as u32).contains(&intent),
            "{intent} of {offered}"
        );
    }

    // A free plan: steps validated against the registry and the snapshot as they stream (the
    // plan may still end badly: a tiny model can run a `Say` to the token limit, and then the
    // planner completes it).
    let scenario = &scenarios[0];
    let free = JobRequest {
        agent: scenario.snapshot.agent,
        persona: scenario.persona.into(),
        task: AgentTask::Plan { order: None },
        snapshot: Arc::new(scenario.snapshot.clone()),
        deadline: far(),
        spotlight: false,
    };
    let (jobs, events) = run(&mut pool, vec![free], false);
    let steps = of(&events, jobs[0])
        .into_iter()
        .filter(|k| matches!(k, WorkerEventKind::Step { .. }))
        .count();
    assert!(steps >= 1, "{:?}", of(&events, jobs[0]));

    // A reply: words stream, then the line completes.
    let (jobs, events) = run(&mut pool, vec![reply(scenario.snapshot.agent)], false);
    assert!(completed(&events, jobs[0]));
    let said: String = of(&events, jobs[0])
        .into_iter()
        .filter_map(|k| match k {
            WorkerEventKind::Words { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert!(!said.trim().is_empty());
}

/// A reply from the first scenario's agent (`agent` is its id).
fn reply(agent: AgentId) -> JobRequest {
    let scenario = suite().into_iter().next().unwrap();
    assert_eq!(
        agent, scenario.snapshot.agent,
        "the snapshot is the agent's own"
    );
    JobRequest {
        agent,
        persona: scenario.persona.into(),
        task: AgentTask::Dialogue {
            history: Vec::new(),
            player_said: "Tell me everything about the fight so far, and take your time.".into(),
        },
        snapshot: Arc::new(scenario.snapshot),
        deadline: far(),
        spotlight: true,
    }
}

#[test]
fn a_shared_prompt_batch_is_one_request_with_its_joint_grammar() {
    let Some(server) = server("remote_server_shared") else {
        return;
    };
    let assets = assets();
    let config = config(&server, PromptLayout::SharedPrompt);
    let mut pool = pool(&config, &assets);
    let requests = suite().iter().take(3).map(|s| guided(&assets, s)).collect();
    let (jobs, events) = run(&mut pool, requests, false);
    for job in &jobs {
        assert!(completed(&events, *job), "{:?}", of(&events, *job));
    }
}

/// How many decode steps the server has run, once no request is being processed (the server
/// has noticed every closed connection): `llamacpp:n_decode_total` of its `/metrics`.
fn decodes(server: &LlamaServer) -> u64 {
    let metric = |body: &str, name: &str| {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
    };
    for _ in 0..200 {
        let (_, body) = server.get("/metrics").expect("GET /metrics");
        if metric(&body, "llamacpp:requests_processing") == Some(0.0) {
            return metric(&body, "llamacpp:n_decode_total").expect("n_decode_total") as u64;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("a request is still being processed");
}

#[test]
fn cancelling_a_job_aborts_its_request_at_the_server() {
    let Some(server) = server("remote_server_cancel") else {
        return;
    };
    let assets = assets();
    let mut config = config(&server, PromptLayout::ParallelSequences);
    // A long line, so that the answer is far from over when the first words arrive.
    config.budgets.max_say_chars = 400;
    let mut pool = pool(&config, &assets);
    let agent = suite()[0].snapshot.agent;

    // However it ends (a tiny model may talk to the token limit), it is decoded in full.
    let before = decodes(&server);
    run(&mut pool, vec![reply(agent)], false);
    let whole = decodes(&server) - before;

    let before = decodes(&server);
    let (jobs, events) = run(&mut pool, vec![reply(agent)], true);
    assert!(
        of(&events, jobs[0])
            .iter()
            .any(|k| matches!(k, WorkerEventKind::Finished(JobOutcome::Cancelled))),
        "{:?}",
        of(&events, jobs[0])
    );
    let cut = decodes(&server) - before;
    eprintln!("decode steps: whole answer {whole}, cancelled after its first words {cut}");
    assert!(
        cut < whole,
        "the cancelled request took {cut} decode steps, the whole answer {whole}"
    );
}
