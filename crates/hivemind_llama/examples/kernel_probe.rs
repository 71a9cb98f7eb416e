//! Measures prompt and generation throughput of a GGUF model on this machine, for choosing how
//! llama.cpp's CPU kernels are built.
//!
//! ```text
//! cargo run --release -p hivemind_llama --example kernel_probe -- [MODEL] [RUNS]
//! RUSTFLAGS="-C target-cpu=native" cargo run --release -p hivemind_llama --example kernel_probe
//! ```
//!
//! The workload is PERF.md's baseline: a 124-token system prefix and one ~65-token agent block,
//! decoded as one prompt, then 40 greedily generated tokens. It prints the median of `RUNS`.
#![expect(
    clippy::print_stdout,
    reason = "a command-line tool that reports measurements"
)]

use std::error::Error;
use std::num::NonZeroU32;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;

const PROMPT: &str = "<|im_start|>system\nYou are the tactical planner for NPCs in an arena game. For each agent, reply with a JSON plan: {\"agent\":ID,\"steps\":[{\"act\":NAME,...}]} using only these actions: MoveTo(x,y), Attack(target), TakeCover(x,y), Reload, Heal, Retreat, Wait, Say(text). Keep plans to at most 3 steps. Prefer cover when health is low, attack the nearest visible enemy when ammo allows, reload when ammo is zero. Say a short taunt when attacking.<|im_end|>\n<|im_start|>user\nAgent 1: pos=(4,5) hp=40 ammo=2 enemies=[{id:7,pos:(10,2),hp:50}] cover=[(3,4),(10,2)] obj=hold the center.<|im_end|>\n<|im_start|>assistant\n{\"agent\":1,\"steps\":[";
const GENERATED: usize = 40;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .or_else(|| std::env::var("HIVEMIND_MODEL").ok())
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".to_owned());
    let runs: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(5);
    if !std::path::Path::new(&path).is_file() {
        return Err(format!("no model file at {path}").into());
    }

    let mut backend = LlamaBackend::init()?;
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, &path, &LlamaModelParams::default())?;
    let tokens = model.vocab().tokenize(PROMPT.as_bytes(), true, true);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as i32);

    let mut prompt_rates = Vec::new();
    let mut gen_rates = Vec::new();
    for _ in 0..runs {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(1024))
            .with_n_batch(512)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let mut ctx = model.new_context(&backend, params)?;
        let mut batch = LlamaBatch::new(512, 1);
        let last = tokens.len() - 1;
        for (i, t) in tokens.iter().enumerate() {
            batch.add(*t, i as i32, &[0], i == last)?;
        }
        let start = Instant::now();
        ctx.decode(&mut batch)?;
        prompt_rates.push(tokens.len() as f64 / start.elapsed().as_secs_f64());

        let start = Instant::now();
        let mut logits_at = batch.n_tokens() - 1;
        for pos in (tokens.len() as i32..).take(GENERATED) {
            let logits = ctx.get_logits_ith(logits_at);
            let next = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as i32);
            batch.clear();
            batch.add(llama_cpp_2::token::LlamaToken(next), pos, &[0], true)?;
            ctx.decode(&mut batch)?;
            logits_at = 0;
        }
        gen_rates.push(GENERATED as f64 / start.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "prompt {} tokens: {:.0} tok/s; generation: {:.0} tok/s (median of {runs}, {threads} threads)",
        tokens.len(),
        median(&mut prompt_rates),
        median(&mut gen_rates)
    );
    Ok(())
}
