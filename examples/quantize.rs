//! Converts a GGUF model to another quantization once, next to the original, with llama.cpp's
//! own `llama_model_quantize`. `scripts/setup` runs it for the default model.
//!
//! ```text
//! cargo run --example quantize -- SOURCE.gguf Q8_0 [Q4_0 …]
//! ```
//!
//! Each copy is named after the source with the tag replaced (`X.Q4_1.gguf` → `X.Q8_0.gguf`);
//! a copy that already exists is kept.
#![expect(
    clippy::print_stdout,
    reason = "a command-line tool that reports what it wrote"
)]

use std::error::Error;
use std::path::PathBuf;

use hivemind::llama::{Quantization, quantize};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let source = PathBuf::from(
        args.next()
            .ok_or("usage: quantize SOURCE.gguf TAG [TAG …]")?,
    );
    let tags: Vec<String> = args.collect();
    if tags.is_empty() {
        return Err("name at least one quantization: Q8_0, Q4_0, Q4_1 or Q4_K_M".into());
    }
    for tag in tags {
        let format = Quantization::from_tag(&tag).ok_or(format!("unknown quantization {tag}"))?;
        let existed = format.path_beside(&source).is_file();
        let path = quantize(&source, format)?;
        let verb = if existed { "kept" } else { "wrote" };
        println!("quantize: {verb} {}", path.display());
    }
    Ok(())
}
