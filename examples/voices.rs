//! The model-value table: what the model adds on top of the rules (choices among sound options,
//! obeying the player, lines in each persona's voice, replies), by the suite of
//! `hivemind_arena::value`, on each model file.
//!
//! ```text
//! ./scripts/run voices [--model models/SmolLM2-135M-Instruct.Q8_0.gguf ...] [--details]
//! ```
//!
//! Runs on the lockstep clock at the configured throughput, so the table repeats exactly for a
//! model file.
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example that prints its results"
)]

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use hivemind::core::config::HivemindConfig;
use hivemind_arena::ArenaAssets;
use hivemind_examples::value_run::{ValueOptions, run_value_suite};

/// Runs the model-value suite and prints its table.
#[derive(Parser, Debug)]
struct Args {
    /// A GGUF file to run; repeat for several. Default: the configured model.
    #[arg(long)]
    model: Vec<PathBuf>,
    /// Print every answer too.
    #[arg(long, short)]
    details: bool,
    /// A prompt file to run instead of `assets/prompt.ron` (to compare prompts).
    #[arg(long)]
    prompt: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let assets = match ArenaAssets::load(&root.join("assets")) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("voices: {e}");
            std::process::exit(2);
        }
    };
    let models: Vec<Option<PathBuf>> = if args.model.is_empty() {
        vec![None]
    } else {
        args.model.into_iter().map(Some).collect()
    };
    for model in models {
        let mut config = HivemindConfig::default();
        if let Some(path) = &model {
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
                eprintln!("voices: {name}: {e}");
                std::process::exit(2);
            }
        };
        let mut options = ValueOptions::new(&assets, config);
        if let Some(path) = &args.prompt {
            match hivemind::core::prompt::PromptAsset::load(path) {
                Ok(prompt) => options.prompt = prompt,
                Err(e) => {
                    eprintln!("voices: {e}");
                    std::process::exit(2);
                }
            }
        }
        let report = run_value_suite(&assets, factory, &name, &options);
        println!("{}", report.table());
        if args.details {
            println!("{}", report.details());
        }
    }
}
