//! A deterministic backend that answers from a function of each request.

use std::sync::Arc;
use std::time::Duration;

use super::{BackendError, Batch, BatchAgent, BatchSink, InferenceBackend, TokenUsage};
use crate::plan::OutputFormat;
use crate::prompt::AgentTask;
use crate::snapshot::estimate_tokens;

/// The answer a [`ScriptedBackend`] writes for one agent, in the batch's format.
pub type Script = Arc<dyn Fn(&BatchAgent, OutputFormat) -> String + Send + Sync>;

/// How long a [`ScriptedBackend`] takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Latency {
    /// No real delay. On a lockstep clock the reported token counts still cost virtual time at
    /// the configured throughput, so a test sets the per-token latency through the throughput.
    #[default]
    Virtual,
    /// Real delays: `prompt` once before the first token, then `per_token` for each decode
    /// step (one token of every live stream).
    Real {
        /// The delay before the first token.
        prompt: Duration,
        /// The delay of each decode step.
        per_token: Duration,
    },
}

/// A backend that writes what a [`Script`] returns, a few bytes per "token", advancing every
/// stream of the batch together as a real batched decode does. Same batch, same output.
pub struct ScriptedBackend {
    script: Script,
    latency: Latency,
}

/// Bytes per scripted token: about what a BPE token holds in JSON.
const TOKEN_BYTES: usize = 4;

impl ScriptedBackend {
    /// A backend that answers with `script`.
    pub fn new(script: Script) -> Self {
        ScriptedBackend {
            script,
            latency: Latency::Virtual,
        }
    }

    /// Sets the latency, for chaining.
    pub fn with_latency(mut self, latency: Latency) -> Self {
        self.latency = latency;
        self
    }

    /// A script that always gives the simplest valid answer: the idle verb for plans, the first
    /// option for guided plans, and a short line naming the situation for lines.
    pub fn canned(idle_verb: &str) -> Script {
        let idle = idle_verb.to_owned();
        Arc::new(move |agent: &BatchAgent, format: OutputFormat| {
            let id = agent.agent;
            match format {
                OutputFormat::FreePlan => {
                    format!("{{\"agent\":{id},\"steps\":[{{\"act\":\"{idle}\"}}]}}")
                }
                OutputFormat::Guided => {
                    format!("{{\"agent\":{id},\"intent\":1,\"say\":\"On it.\"}}")
                }
                OutputFormat::Line => {
                    let say = match &agent.task {
                        AgentTask::Banter { situation } => {
                            format!("Well, {}.", situation.replace('_', " "))
                        }
                        _ => "Understood.".to_owned(),
                    };
                    format!("{{\"agent\":{id},\"say\":\"{say}\"}}")
                }
            }
        })
    }
}

impl InferenceBackend for ScriptedBackend {
    fn run(&mut self, batch: &Batch, sink: &mut dyn BatchSink) -> Result<(), BackendError> {
        let outputs: Vec<(String, u64)> = match &batch.shared {
            Some(shared) => {
                let text: Vec<String> = batch
                    .agents
                    .iter()
                    .map(|a| (self.script)(a, batch.format))
                    .collect();
                vec![(
                    text.join("\n"),
                    estimate_tokens(&shared.prompt.batch.text) as u64,
                )]
            }
            None => batch
                .agents
                .iter()
                .map(|a| {
                    (
                        (self.script)(a, batch.format),
                        estimate_tokens(&a.prompt.agent.text) as u64,
                    )
                })
                .collect(),
        };
        let mut tokens: Vec<Vec<&str>> =
            outputs.iter().map(|(text, _)| split_tokens(text)).collect();
        let mut sent = vec![0usize; outputs.len()];
        let mut live: Vec<bool> = vec![true; outputs.len()];

        if let Latency::Real { prompt, .. } = self.latency {
            std::thread::sleep(prompt);
        }
        while live.iter().any(|l| *l) {
            for stream in 0..outputs.len() {
                if !live[stream] {
                    continue;
                }
                let usage = |generated: usize| TokenUsage {
                    prompt_tokens: outputs[stream].1,
                    generated_tokens: generated as u64,
                };
                if sink.is_cancelled(stream) {
                    live[stream] = false;
                    continue;
                }
                match tokens[stream].get(sent[stream]) {
                    Some(piece) => {
                        sent[stream] += 1;
                        sink.text(stream, piece, usage(sent[stream]));
                    }
                    None => {
                        live[stream] = false;
                        sink.done(stream, usage(sent[stream]));
                        tokens[stream].clear();
                    }
                }
            }
            if let Latency::Real { per_token, .. } = self.latency {
                std::thread::sleep(per_token);
            }
        }
        Ok(())
    }
}

/// Splits text into pieces of at most [`TOKEN_BYTES`] bytes, on character boundaries.
fn split_tokens(text: &str) -> Vec<&str> {
    let mut pieces = Vec::with_capacity(text.len() / TOKEN_BYTES + 1);
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + TOKEN_BYTES).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        pieces.push(&text[start..end]);
        start = end;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_cover_the_text_on_char_boundaries() {
        let text = "{\"say\":\"héllo wörld\"}";
        let pieces = split_tokens(text);
        assert_eq!(pieces.concat(), text);
        assert!(
            pieces
                .iter()
                .all(|p| !p.is_empty() && p.len() <= TOKEN_BYTES + 3)
        );
        assert!(split_tokens("").is_empty());
    }
}
