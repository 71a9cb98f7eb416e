//! The lockstep clock's throughput for a model file: how fast one sequence decodes a prompt
//! block after a warm prefix, and how fast it then generates, on this machine.
//!
//! ```text
//! cargo run --features llama --example throughput [-- --model FILE --runs 7]
//! ```
//!
//! It prints the median rates of `--runs` runs and the `clock.throughput` line for
//! `hivemind.ron`. The figures the configuration ships with came from this command.
#![expect(clippy::print_stdout, reason = "an example that prints its results")]

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hivemind::core::backend::{BackendError, BatchSink, TokenUsage};
use hivemind::core::clock::Deadline;
use hivemind::core::config::{HivemindConfig, Sampling};
use hivemind::core::prompt::{PromptLevel, PromptText};
use hivemind::llama::{LlamaFactory, StreamSpec};

/// Measures one sequence's prompt and generation rates.
#[derive(Parser, Debug)]
struct Args {
    /// The GGUF file. Default: the configured model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Runs; the median is reported.
    #[arg(long, default_value_t = 7)]
    runs: usize,
}

/// A prefix like the arena's, decoded once before timing.
const ROOT: &str = "<|im_start|>system\nYou plan for NPCs in an arena shooter. The arena spans (0,0)-(19,13); two teams fight to hold the center.\nPick the best option by name and say a short line.<|im_end|>\n<|im_start|>user\n";

/// An agent block of about the size a guided request has.
const BLOCK: &str = "self hp=60% ammo=2 in_cover=no medkits=1\nenemy: 9 hp=40% at (12,6); 4 hp=90% at (14,3)\ncover: (9,7) (11,4)\nobjective: (10,7)\nOptions:\n- attack enemy 9: it is at 40% hp, the weakest of 2\n- take cover at (9,7): 2 enemies in sight, cover 1 cells away\n- heal: hp 60%, 1 medkit left\n- retreat to base: 2 enemies in sight\nThe player says to you: \"Hold the line until we regroup!\"<|im_end|>\n<|im_start|>assistant\n";

/// Tokens generated per run.
const GENERATED: u32 = 40;

#[derive(Default)]
struct Timing {
    start: Option<Instant>,
    first: Option<Duration>,
    end: Option<Duration>,
    usage: TokenUsage,
}

impl BatchSink for Timing {
    fn text(&mut self, _stream: usize, _text: &str, usage: TokenUsage) {
        let at = self.start.map(|s| s.elapsed()).unwrap_or_default();
        self.first.get_or_insert(at);
        self.usage = usage;
    }
    fn done(&mut self, _stream: usize, usage: TokenUsage) {
        self.end = self.start.map(|s| s.elapsed());
        self.usage = usage;
    }
    fn error(&mut self, _stream: usize, error: BackendError) {
        println!("throughput: the run failed: {error}");
    }
    fn is_cancelled(&self, _stream: usize) -> bool {
        false
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let mut config = HivemindConfig::default();
    if let Some(path) = &args.model {
        config.model.path = Some(path.display().to_string());
    }
    let factory = LlamaFactory::from_config(&config)?;
    let mut session = factory.session()?;
    let root = Arc::new(PromptLevel::new(None, PromptText::trusted(ROOT)));
    let branch = Arc::new(PromptLevel::new(Some(root.key), "You are veteran. "));
    session.warm(&root, &[&branch])?;
    let (mut prompt_rates, mut gen_rates) = (Vec::new(), Vec::new());
    for _ in 0..args.runs.max(1) {
        let spec = StreamSpec {
            root: Arc::clone(&root),
            branch: Arc::clone(&branch),
            block: PromptText::trusted(BLOCK),
            grammar: None,
            forced: String::new(),
            deadline: Deadline::default(),
            max_tokens: GENERATED,
            sampling: Sampling::Greedy,
            say_sampling: None,
            seed: 0,
            ignore_eog: true,
            line_last: false,
            time_left: None,
        };
        let mut timing = Timing {
            start: Some(Instant::now()),
            ..Timing::default()
        };
        session.run(&[spec], &mut timing)?;
        let (Some(first), Some(end)) = (timing.first, timing.end) else {
            continue;
        };
        // The first token comes with the prompt's logits; the rest are generation.
        prompt_rates.push(timing.usage.prompt_tokens as f64 / first.as_secs_f64());
        let generated = timing.usage.generated_tokens.saturating_sub(1) as f64;
        gen_rates.push(generated / (end - first).as_secs_f64());
    }
    let (prompt, generated) = (median(prompt_rates), median(gen_rates));
    println!(
        "{}: one sequence, {} runs: prompt {prompt:.0} tok/s, generation {generated:.0} tok/s",
        config.model.resolved_path().display(),
        args.runs
    );
    println!(
        "throughput: (prompt_tokens_per_sec: {prompt:.1}, generated_tokens_per_sec: {generated:.1}),"
    );
    Ok(())
}
