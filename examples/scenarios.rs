//! The plan-quality table: the scenario suite run in each mode, on each model file.
//!
//! ```text
//! cargo run --features llama --example scenarios -- \
//!     --model models/SmolLM2-135M-Instruct.Q4_0.gguf --model models/SmolLM2-135M-Instruct.Q8_0.gguf
//! ```
//!
//! For every model and mode it prints the share of sensible first steps (by the rules of
//! `hivemind_arena::scenarios`) on the suite and on situations from a played game, the share of
//! valid plans, of plans from the model and of repaired ones, and the median times to the first
//! step and to the whole plan. `--layout shared` runs the single multi-agent prompt, where the
//! voices column shows whether each agent's line kept its own persona's words.
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example that prints its results"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use hivemind::core::config::{ClockMode, HivemindConfig, PromptLayout};
use hivemind::core::metrics::Histogram;
use hivemind_arena::ArenaAssets;
use hivemind_examples::scenario_run::{Mode, Situation, SuiteOptions, SuiteReport, run_suite};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Goap,
    Free,
    Repair,
    Guided,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Goap => Mode::Goap,
            ModeArg::Free => Mode::Free,
            ModeArg::Repair => Mode::FreeRepair,
            ModeArg::Guided => Mode::Guided,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LayoutArg {
    Parallel,
    Shared,
}

/// Runs the scenario suite in each mode and prints the table.
#[derive(Parser, Debug)]
struct Args {
    /// A GGUF file to run; repeat for several. Default: the configured model.
    #[arg(long)]
    model: Vec<PathBuf>,
    /// The modes to run, in order.
    #[arg(long, value_delimiter = ',', default_values = ["goap", "free", "repair", "guided"])]
    modes: Vec<ModeArg>,
    /// The prompt layout.
    #[arg(long, value_enum, default_value = "parallel")]
    layout: LayoutArg,
    /// Worked examples kept per output format (default: all of the prompt asset's).
    #[arg(long)]
    examples: Option<usize>,
    /// Situations from a played game of this seed are judged too (0: none).
    #[arg(long, default_value_t = 3)]
    played_seed: u64,
    /// Run on the lockstep clock (answers repeat exactly; times are virtual).
    #[arg(long)]
    lockstep: bool,
    /// Also time this many suite situations asked one at a time (a lone agent, warm prefix).
    #[arg(long, default_value_t = 0)]
    lone: usize,
    /// Print every situation's first step and line.
    #[arg(long, short)]
    verbose: bool,
}

fn main() {
    let args = Args::parse();
    let assets = match ArenaAssets::load(std::path::Path::new("assets")) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("scenarios: {e}");
            std::process::exit(2);
        }
    };
    let suite = Situation::suite();
    let played = match args.played_seed {
        0 => Vec::new(),
        seed => Situation::played(&assets, seed, 200, 23),
    };
    let models: Vec<Option<PathBuf>> = if args.model.is_empty() {
        vec![None]
    } else {
        args.model.iter().cloned().map(Some).collect()
    };
    let layout = match args.layout {
        LayoutArg::Parallel => PromptLayout::ParallelSequences,
        LayoutArg::Shared => PromptLayout::SharedPrompt,
    };
    println!(
        "suite: {} situations; played: {} (seed {}); layout {:?}; examples {}",
        suite.len(),
        played.len(),
        args.played_seed,
        layout,
        args.examples
            .map_or_else(|| "as in assets/prompt.ron".to_owned(), |n| n.to_string())
    );
    println!(
        "{:<40} {:<12} {:>8} {:>8} {:>6} {:>6} {:>8} {:>9} {:>9} {:>8}  voices own/bleed/plain/silent",
        "model",
        "mode",
        "sensible",
        "played",
        "valid",
        "model",
        "repaired",
        "first p50",
        "full p50",
        "wall"
    );
    for model in &models {
        let mut config = HivemindConfig::default();
        if let Some(path) = model {
            config.model.path = Some(path.display().to_string());
        }
        let name = config
            .model
            .resolved_path()
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let factory = match hivemind::llama::LlamaFactory::from_config(&config) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("scenarios: {name}: {e}");
                std::process::exit(2);
            }
        };
        for &mode in &args.modes {
            let mut options = SuiteOptions::new(mode.into());
            options.layout = layout;
            options.examples = args.examples;
            options.config = config.clone();
            if args.lockstep {
                options.clock = ClockMode::Lockstep;
            }
            // Warm the prefix levels first, so the figures are a warm game's.
            run_suite(&suite[..1], &assets, factory.clone(), &options);
            let report = run_suite(&suite, &assets, factory.clone(), &options);
            let played_report = (!played.is_empty())
                .then(|| run_suite(&played, &assets, factory.clone(), &options));
            print_row(&name, &report, played_report.as_ref(), &assets);
            if args.lone > 0 {
                let (mut firsts, mut fulls) = (Histogram::new(), Histogram::new());
                for situation in suite.iter().take(args.lone) {
                    let one = run_suite(
                        std::slice::from_ref(situation),
                        &assets,
                        factory.clone(),
                        &options,
                    );
                    if let Some(plan) = one.answers.first().and_then(|a| a.plan.as_ref()) {
                        firsts.record(plan.first_after);
                        fulls.record(plan.latency);
                    }
                }
                let ms =
                    |h: &Histogram, q| h.quantile(q).unwrap_or_default().as_secs_f64() * 1000.0;
                println!(
                    "  lone agent, {} situations: first step p50 {:.0}ms p95 {:.0}ms, full plan p50 {:.0}ms p95 {:.0}ms",
                    firsts.count(),
                    ms(&firsts, 0.5),
                    ms(&firsts, 0.95),
                    ms(&fulls, 0.5),
                    ms(&fulls, 0.95),
                );
            }
            if args.verbose {
                for a in report
                    .answers
                    .iter()
                    .chain(played_report.iter().flat_map(|r| &r.answers))
                {
                    let plan = a.plan.as_ref();
                    println!(
                        "  {:<30} {:<8} {} {:<28} {:<18} {}",
                        a.situation.name,
                        a.situation.persona,
                        if a.is_sensible() { "ok " } else { "BAD" },
                        a.first_step()
                            .map_or_else(|| "-".to_owned(), ToString::to_string),
                        plan.map_or_else(String::new, |p| p.source.to_string()),
                        plan.and_then(|p| p.say.as_deref()).unwrap_or("")
                    );
                }
            }
        }
    }
}

fn print_row(
    model: &str,
    report: &SuiteReport,
    played: Option<&SuiteReport>,
    assets: &ArenaAssets,
) {
    let pct = |x: f64| format!("{:.0}%", x * 100.0);
    let ms = |d: Duration| format!("{:.0}ms", d.as_secs_f64() * 1000.0);
    let v = report.voices();
    println!(
        "{:<40} {:<12} {:>8} {:>8} {:>6} {:>6} {:>8} {:>9} {:>9} {:>7.1}s  {}/{}/{}/{}",
        model,
        report.mode.as_str(),
        pct(report.sensible()),
        played.map_or_else(|| "-".to_owned(), |p| pct(p.sensible())),
        pct(report.valid(&assets.registry)),
        pct(report.from_model()),
        pct(report.repaired()),
        ms(report.first_p50()),
        ms(report.full_p50()),
        report.wall.as_secs_f64(),
        v.own,
        v.bleed,
        v.plain,
        v.silent
    );
}
