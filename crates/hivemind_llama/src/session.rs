//! The decode loop: continuous batching over many streams that branch from the prefix tree.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hivemind_core::backend::{BackendError, BatchSink, TokenUsage};
use hivemind_core::clock::Deadline;
use hivemind_core::config::Sampling;
use hivemind_core::prompt::{PromptLevel, PromptText};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::engine::{Engine, EngineShape, SeqId};
use crate::prefix::{PrefixStats, PrefixStore, WarmLevels};
use crate::sample::{GrammarStats, TokenChooser, Utf8Pieces};
use crate::{LlamaError, LlamaOptions, ModelFile};

/// One stream to write: a prompt that branches from a cached prefix, and how to end it.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    /// The root level, shared by every stream.
    pub root: Arc<PromptLevel>,
    /// The branch under the root this stream continues (a persona, or the ensemble).
    pub branch: Arc<PromptLevel>,
    /// The stream's own prompt text, after the branch.
    pub block: PromptText,
    /// The GBNF grammar the output must match (start rule `root`); `None` writes freely.
    pub grammar: Option<String>,
    /// Text the grammar forces at the start of the answer
    /// ([`answer_prefix`](hivemind_core::grammar::answer_prefix)). It is decoded with the prompt
    /// in one batched pass rather than one token per step, and reported as the stream's first
    /// text. Empty for none.
    pub forced: String,
    /// Earlier deadlines are prefilled first.
    pub deadline: Deadline,
    /// The most tokens to write.
    pub max_tokens: u32,
    /// How tokens are chosen.
    pub sampling: Sampling,
    /// How the words of a `say` string are chosen, once the answer has opened one; `None`
    /// chooses them by `sampling` too.
    pub say_sampling: Option<Sampling>,
    /// The seed of random sampling.
    pub seed: u64,
    /// Keep writing through end-of-generation tokens until `max_tokens` (for fixed-shape
    /// throughput measurements only).
    pub ignore_eog: bool,
    /// The stream's line (the text of its `say`) comes after its answer and is worth less than
    /// any other stream's answer: a plan's intent or steps. It waits while another stream of
    /// the run has not reached its line, and the sink may end the stream before it
    /// ([`BatchSink::skip_line`]) when other work is waiting.
    pub line_last: bool,
    /// How long the stream had until its deadline when the run began, on a real-time clock. A
    /// stream whose prompt, at the rate this session has been reading prompts, could not be in
    /// by then is not started: it ends at once with [`BackendError::Late`], and its time goes
    /// to the streams that can still make theirs. `None` (virtual clocks) never sheds.
    pub time_left: Option<Duration>,
}

/// Where the time of one [`LlamaSession::run`] went, for the benchmark's breakdown. Times are
/// from the start of the run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunTrace {
    /// Making sure the prefix levels are decoded and copying them into place.
    pub restore: Duration,
    /// The whole run.
    pub total: Duration,
    /// Each stream, by index in the run's specs.
    pub streams: Vec<StreamTrace>,
}

/// One stream of a [`RunTrace`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamTrace {
    /// Its prompt tokens after the branch, with the forced start of the answer.
    pub prompt_tokens: u32,
    /// When its first token was chosen: its prompt is in and the first answer token written.
    pub first_token: Option<Duration>,
    /// When it reached its line (a `say` string opened); `None` if it never did.
    pub line: Option<Duration>,
    /// When it ended.
    pub ended: Option<Duration>,
    /// Tokens written.
    pub generated: u32,
    /// Tokens of those written inside its line.
    pub line_tokens: u32,
    /// Its line was skipped because other work was waiting.
    pub line_skipped: bool,
}

/// What a session has done, for metrics, tests and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Prompt tokens decoded for streams (prefix levels are counted in `prefix`).
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// `decode` calls.
    pub decodes: u64,
    /// The prefix tree's work.
    pub prefix: PrefixStats,
    /// The grammar fast path's hit rate.
    pub grammar: GrammarStats,
}

/// A model, a context over it and the prefix tree, owned by one thread.
pub struct LlamaSession {
    engine: Engine,
    prefix: PrefixStore,
    options: LlamaOptions,
    stats: SessionStats,
    trace: RunTrace,
    /// Prompt tokens a second, as recent decode steps read them; `None` until measured.
    prompt_rate: Option<f64>,
}

enum Phase {
    Prefill { fed: usize },
    Generate { last: LlamaToken },
}

struct Slot {
    stream: usize,
    /// Place in deadline order.
    rank: usize,
    seq: SeqId,
    prompt: Vec<LlamaToken>,
    phase: Phase,
    pos: i32,
    logits_at: Option<i32>,
    chooser: TokenChooser,
    text: Utf8Pieces,
    /// The end of the text written so far, to see a `say` string open.
    tail: String,
    /// Forced answer text, reported with the first token.
    forced: String,
    generated: u32,
    max_tokens: u32,
    cells: u32,
    /// See [`StreamSpec::line_last`].
    line_last: bool,
    /// It has written up to its line.
    reached_line: bool,
}

/// A stream waiting for a sequence and cells: its tokens, tokenized once.
struct Waiting {
    stream: usize,
    prompt: Vec<LlamaToken>,
    forced: Vec<LlamaToken>,
    cells: u32,
}

/// What opens the text of a line in every output format.
const SAY_OPENS: &str = "\"say\":\"";

impl Slot {
    /// Follows the text written so far and switches the chooser to the say sampling as soon as
    /// a `say` string opens; from then on every token is part of the line (the grammar closes
    /// it and the object in one go).
    fn watch_for_say(&mut self, text: &str) {
        let mut text = text;
        if self.chooser.in_say() {
            // The grammar allows no quote inside a line: the first one closes it.
            let Some(at) = text.find('"') else {
                return;
            };
            self.chooser.leave_say();
            text = &text[at + 1..];
        }
        self.tail.push_str(text);
        if self.tail.contains(SAY_OPENS) {
            self.chooser.enter_say();
            self.tail.clear();
        } else if self.tail.len() > 2 * SAY_OPENS.len() {
            let keep = self.tail.len() - SAY_OPENS.len();
            let keep = self.tail.ceil_char_boundary(keep);
            self.tail.drain(..keep);
        }
    }

    fn usage(&self) -> TokenUsage {
        TokenUsage {
            prompt_tokens: self.prompt.len() as u64,
            generated_tokens: u64::from(self.generated),
        }
    }
}

impl LlamaSession {
    /// A session over `model` (loaded from `file`) with a context sized by `options`.
    pub fn new(
        file: &ModelFile,
        model: Arc<LlamaModel>,
        options: LlamaOptions,
    ) -> Result<Self, LlamaError> {
        let threads = inference_threads(options.threads);
        let per_batch = options.max_sequences.max(1);
        let shape = EngineShape {
            n_ctx: options.context_tokens,
            n_batch: options.batch_tokens,
            // The root, a branch per stream at most, and a sequence per stream.
            n_seq_max: (1 + 2 * per_batch).min(crate::engine::MAX_SEQUENCES),
            threads,
        };
        let engine = Engine::new(model, shape)?;
        // Saved states are filed under the whole model file's hash, read only if they are kept.
        let (key, dir) = match options.state_dir.clone() {
            Some(dir) => match crate::prefix::state_key(file, shape) {
                Ok(key) => (key, Some(dir)),
                Err(e) => {
                    tracing::warn!("prefix states are not saved: {e}");
                    (0, None)
                }
            },
            None => (0, None),
        };
        Ok(LlamaSession {
            prefix: PrefixStore::new(key, dir),
            engine,
            options,
            stats: SessionStats::default(),
            trace: RunTrace::default(),
            prompt_rate: None,
        })
    }

    /// Reports the prefix levels this session holds into `warm` (shared with other sessions of
    /// the same model) from now on.
    pub fn share_warm_levels(&mut self, warm: WarmLevels) {
        self.prefix.share_warm_levels(warm);
    }

    /// The options it was made with.
    pub fn options(&self) -> &LlamaOptions {
        &self.options
    }

    /// What this session has done so far.
    pub fn stats(&self) -> SessionStats {
        SessionStats {
            prefix: self.prefix.stats,
            ..self.stats
        }
    }

    /// Where the time of the last [`run`](Self::run) went.
    pub fn last_run(&self) -> &RunTrace {
        &self.trace
    }

    /// Whether prefix level `key` is decoded and ready.
    pub fn is_warm(&self, key: u64) -> bool {
        self.prefix.contains(key)
    }

    /// Decodes (or loads) the root and `branches` ahead of any request.
    pub fn warm(
        &mut self,
        root: &PromptLevel,
        branches: &[&PromptLevel],
    ) -> Result<(), LlamaError> {
        self.prefix.ensure(&mut self.engine, root, branches)
    }

    /// Whether llama.cpp's grammar sampler accepts `gbnf` (start rule `root`) for this model.
    pub fn check_grammar(&self, gbnf: &str) -> Result<(), LlamaError> {
        TokenChooser::new(self.engine.model(), Some(gbnf), Sampling::Greedy, 0, false)
            .map(drop)
            .map_err(LlamaError::Context)
    }

    /// How many tokens `text` is, as a block after a prefix.
    pub fn count_tokens(&self, text: &PromptText) -> Result<usize, LlamaError> {
        self.engine.tokenize_prompt(text, false).map(|t| t.len())
    }

    /// Writes every stream of `specs`, reporting to `sink` by index in `specs`. Streams share
    /// one root. Prompts are prefilled in deadline order, in chunks, while streams already
    /// writing keep getting one token per step; a stream joins the decode batch when its prompt
    /// is in and leaves it when done or cancelled, freeing its cells for the next.
    ///
    /// A stream that cannot fit the context fails alone with [`BackendError::TooLarge`]. An
    /// `Err` means the context failed and every stream that had not ended is lost.
    pub fn run(
        &mut self,
        specs: &[StreamSpec],
        sink: &mut dyn BatchSink,
    ) -> Result<(), LlamaError> {
        let started = Instant::now();
        self.trace = RunTrace {
            streams: vec![StreamTrace::default(); specs.len()],
            ..RunTrace::default()
        };
        let Some(root) = specs.first().map(|s| Arc::clone(&s.root)) else {
            return Ok(());
        };
        if let Some(other) = specs.iter().find(|s| s.root.key != root.key) {
            return Err(LlamaError::Context(format!(
                "streams of one run share a root ({:016x} ≠ {:016x})",
                root.key, other.root.key
            )));
        }
        let mut branches: Vec<&PromptLevel> = Vec::new();
        for s in specs {
            if !branches.iter().any(|b| b.key == s.branch.key) {
                branches.push(&s.branch);
            }
        }
        self.prefix.ensure(&mut self.engine, &root, &branches)?;
        let keys: Vec<u64> = branches.iter().map(|b| b.key).collect();
        let restored = self.prefix.restore(&mut self.engine, root.key, &keys)?;
        self.trace.restore = started.elapsed();
        let shape = self.engine.shape();
        let mut free_cells = shape.n_ctx.saturating_sub(restored.cells);
        let mut free_seqs: Vec<u32> = (restored.first_free..shape.n_seq_max).rev().collect();

        // Streams wait in deadline order; ties keep the batch order.
        let mut order: Vec<usize> = (0..specs.len()).collect();
        order.sort_by_key(|&i| (specs[i].deadline, i));
        let mut waiting: VecDeque<Waiting> = VecDeque::new();
        for i in order {
            let spec = &specs[i];
            let prompt = match self.engine.tokenize_prompt(&spec.block, false) {
                Ok(prompt) => prompt,
                Err(e) => {
                    sink.error(i, e.into());
                    continue;
                }
            };
            // The forced start names an agent: plain text, as any data.
            let forced = self.engine.tokenize(&spec.forced);
            let start = restored.branch(spec.branch.key).map_or(0, |(_, end)| end);
            // Forced answer text joins the prompt: reserve its cells too.
            let prompt_tokens = (prompt.len() + forced.len()) as u32;
            let cells = prompt_tokens + spec.max_tokens;
            self.trace.streams[i].prompt_tokens = prompt_tokens;
            if prompt.is_empty() || cells > free_cells || start + cells > shape.n_ctx {
                sink.error(
                    i,
                    BackendError::TooLarge(format!(
                        "a prompt of {} tokens and {} to write do not fit the {} free cells of the context",
                        prompt.len(),
                        spec.max_tokens,
                        free_cells
                    )),
                );
                continue;
            }
            waiting.push_back(Waiting {
                stream: i,
                prompt,
                forced,
                cells,
            });
        }

        self.shed_late(specs, &mut waiting, started, sink);

        let mut active: Vec<Slot> = Vec::new();
        let mut admitted = 0;
        loop {
            // Admit waiting streams while a sequence and their cells are free.
            while let Some(next) = waiting.front() {
                if next.cells > free_cells {
                    break;
                }
                let Some(seq_index) = free_seqs.pop() else {
                    break;
                };
                let Some(Waiting {
                    stream: i,
                    mut prompt,
                    forced: forced_tokens,
                    cells,
                }) = waiting.pop_front()
                else {
                    break;
                };
                let spec = &specs[i];
                let seq = self.engine.seq(seq_index)?;
                let Some((branch_seq, start)) = restored.branch(spec.branch.key) else {
                    free_seqs.push(seq_index);
                    sink.error(i, BackendError::Failed("its prompt prefix was lost".into()));
                    continue;
                };
                let mut chooser = match TokenChooser::new(
                    self.engine.model(),
                    spec.grammar.as_deref(),
                    spec.sampling,
                    spec.seed,
                    spec.ignore_eog,
                ) {
                    Ok(c) => c.with_say_sampling(spec.say_sampling),
                    Err(e) => {
                        free_seqs.push(seq_index);
                        sink.error(i, BackendError::Failed(e));
                        continue;
                    }
                };
                let mut forced = String::new();
                if !forced_tokens.is_empty() && chooser.force(&forced_tokens) {
                    prompt.extend(forced_tokens);
                    forced.clone_from(&spec.forced);
                }
                self.engine.seq_cp(branch_seq, seq, None, None);
                free_cells -= cells;
                admitted += 1;
                active.push(Slot {
                    stream: i,
                    rank: admitted,
                    seq,
                    prompt,
                    phase: Phase::Prefill { fed: 0 },
                    pos: start as i32,
                    logits_at: None,
                    chooser,
                    text: Utf8Pieces::default(),
                    tail: String::new(),
                    forced,
                    generated: 0,
                    max_tokens: spec.max_tokens,
                    cells,
                    line_last: spec.line_last,
                    reached_line: false,
                });
            }
            if active.is_empty() {
                for w in waiting.drain(..) {
                    sink.error(
                        w.stream,
                        BackendError::TooLarge("no room in the context".into()),
                    );
                }
                break;
            }

            // Streams nobody wants any more leave before the next step, and so do lines the
            // sink would rather skip for waiting work.
            let mut k = 0;
            while k < active.len() {
                let slot = &active[k];
                if sink.is_cancelled(slot.stream) {
                    let slot = active.swap_remove(k);
                    sink.done(slot.stream, slot.usage());
                    self.release(&slot, &mut free_cells, &mut free_seqs, started);
                } else if slot.line_last
                    && slot.reached_line
                    && sink.skip_line(slot.stream, slot.usage())
                {
                    let slot = active.swap_remove(k);
                    self.trace.streams[slot.stream].line_skipped = true;
                    self.release(&slot, &mut free_cells, &mut free_seqs, started);
                } else {
                    k += 1;
                }
            }
            if active.is_empty() {
                continue;
            }
            // Swap-removal scrambles the order; keep deadline order, so every step's batch is
            // laid out the same way on every run.
            active.sort_by_key(|s| s.rank);

            let fed = self.fill_step(&mut active)?;
            let step = Instant::now();
            self.engine.decode().inspect_err(|e| {
                for slot in &active {
                    sink.error(slot.stream, BackendError::Failed(e.to_string()));
                }
            })?;
            self.stats.decodes += 1;
            self.measure_prompt_rate(fed, step.elapsed());
            self.sample_step(&mut active, sink, &mut free_cells, &mut free_seqs, started);
        }
        // Agents' cells are gone; only the prefix remains, as the next run expects. (A run that
        // failed above may have left cells, and the next one copies its prefix in again.)
        self.prefix.batch_ended();
        self.trace.total = started.elapsed();
        Ok(())
    }

    /// Ends, before they start, the waiting streams whose prompts could not be in by their
    /// deadlines at the measured prompt rate, counting the prompts ahead of each in deadline
    /// order; those ahead of a shed stream do not wait for it.
    fn shed_late(
        &mut self,
        specs: &[StreamSpec],
        waiting: &mut VecDeque<Waiting>,
        started: Instant,
        sink: &mut dyn BatchSink,
    ) {
        let Some(rate) = self.prompt_rate else {
            return;
        };
        let mut ahead = 0usize;
        waiting.retain(|w| {
            let tokens = w.prompt.len() + w.forced.len();
            let reading = Duration::try_from_secs_f64((ahead + tokens) as f64 / rate)
                .unwrap_or(Duration::MAX);
            let first = started.elapsed().saturating_add(reading);
            match specs[w.stream].time_left {
                Some(left) if first > left => {
                    sink.error(
                        w.stream,
                        BackendError::Late(format!(
                            "its prompt would be read in {} ms, {} ms left",
                            first.as_millis(),
                            left.as_millis()
                        )),
                    );
                    false
                }
                _ => {
                    ahead += tokens;
                    true
                }
            }
        });
    }

    /// Learns the prompt rate from a decode step that read `fed` prompt tokens in `took`.
    fn measure_prompt_rate(&mut self, fed: usize, took: Duration) {
        // Steps with few prompt tokens say more about generation than about reading.
        if fed < 16 || took.is_zero() {
            return;
        }
        let sample = fed as f64 / took.as_secs_f64();
        self.prompt_rate = Some(match self.prompt_rate {
            Some(rate) => 0.8 * rate + 0.2 * sample,
            None => sample,
        });
    }

    /// Fills the batch for one step: a token for every writing stream, then prompt chunks in
    /// deadline order. Lines that come last wait while any stream has not reached its line.
    /// Returns the prompt tokens it took.
    fn fill_step(&mut self, active: &mut [Slot]) -> Result<usize, LlamaError> {
        self.engine.clear_batch();
        let answering = active.iter().any(|s| !s.reached_line);
        let mut writing = 0;
        for slot in active.iter_mut() {
            slot.logits_at = None;
            if answering && slot.line_last && slot.reached_line {
                continue;
            }
            if let Phase::Generate { last } = slot.phase {
                slot.logits_at = Some(self.engine.push(last, slot.pos, slot.seq, true)?);
                slot.pos += 1;
                writing += 1;
            }
        }
        let mut budget = self.engine.batch_room();
        if writing > 0 {
            budget = budget.min(self.options.prefill_chunk.max(1) as usize);
        }
        let room = budget;
        // `active` is in admission order, which is deadline order.
        for slot in active.iter_mut() {
            if budget == 0 {
                break;
            }
            let Phase::Prefill { fed } = slot.phase else {
                continue;
            };
            let take = (slot.prompt.len() - fed).min(budget);
            for j in fed..fed + take {
                let last = j + 1 == slot.prompt.len();
                let at = self.engine.push(slot.prompt[j], slot.pos, slot.seq, last)?;
                slot.pos += 1;
                if last {
                    slot.logits_at = Some(at);
                }
            }
            self.stats.prompt_tokens += take as u64;
            slot.phase = Phase::Prefill { fed: fed + take };
            budget -= take;
        }
        Ok(room - budget)
    }

    /// Samples a token for every stream that has logits, reports its text, and retires the
    /// streams that ended.
    fn sample_step(
        &mut self,
        active: &mut Vec<Slot>,
        sink: &mut dyn BatchSink,
        free_cells: &mut u32,
        free_seqs: &mut Vec<u32>,
        started: Instant,
    ) {
        let mut k = 0;
        while k < active.len() {
            let slot = &mut active[k];
            let Some(at) = slot.logits_at else {
                k += 1;
                continue;
            };
            let trace = &mut self.trace.streams[slot.stream];
            if trace.first_token.is_none() {
                trace.first_token = Some(started.elapsed());
            }
            if !slot.forced.is_empty() {
                let forced = std::mem::take(&mut slot.forced);
                sink.text(slot.stream, &forced, slot.usage());
                slot.watch_for_say(&forced);
            }
            let logits = self.engine.logits(at);
            let engine = &self.engine;
            let token = slot.chooser.choose(logits, |t| engine.is_eog(t));
            let ended = match token {
                None => {
                    sink.error(
                        slot.stream,
                        BackendError::Failed("the grammar allows no further token".into()),
                    );
                    true
                }
                // A stream that writes through ends never gets one from its chooser.
                Some(t) if engine.is_eog(t) => {
                    sink.done(slot.stream, slot.usage());
                    true
                }
                Some(t) => {
                    slot.generated += 1;
                    self.stats.generated_tokens += 1;
                    let trace = &mut self.trace.streams[slot.stream];
                    trace.generated = slot.generated;
                    if slot.reached_line {
                        trace.line_tokens += 1;
                    }
                    let text = slot.text.push(&engine.piece(t));
                    if !text.is_empty() {
                        sink.text(slot.stream, &text, slot.usage());
                        slot.watch_for_say(&text);
                    }
                    if !slot.reached_line && slot.chooser.in_say() {
                        slot.reached_line = true;
                        trace.line = Some(started.elapsed());
                    }
                    slot.phase = Phase::Generate { last: t };
                    if slot.generated >= slot.max_tokens {
                        sink.done(slot.stream, slot.usage());
                        true
                    } else {
                        false
                    }
                }
            };
            if ended {
                let slot = active.swap_remove(k);
                self.release(&slot, free_cells, free_seqs, started);
            } else {
                k += 1;
            }
        }
    }

    fn release(
        &mut self,
        slot: &Slot,
        free_cells: &mut u32,
        free_seqs: &mut Vec<u32>,
        started: Instant,
    ) {
        self.trace.streams[slot.stream].ended = Some(started.elapsed());
        self.stats.grammar.tokens += slot.chooser.stats.tokens;
        self.stats.grammar.masked += slot.chooser.stats.masked;
        self.engine.seq_rm(slot.seq, None, None);
        *free_cells += slot.cells;
        free_seqs.push(slot.seq.raw() as u32);
        // Lowest ids first, so admission is the same whatever order streams ended in.
        free_seqs.sort_unstable_by(|a, b| b.cmp(a));
    }
}

/// The threads to infer on: `asked`, or every core for `None`. More than the machine has are
/// clamped to its cores with a warning: a config written on the author's machine runs on a
/// player's, and oversubscribed threads only wait on each other.
fn inference_threads(asked: Option<u32>) -> i32 {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let cores = i32::try_from(cores).unwrap_or(i32::MAX);
    match asked.map(|t| i32::try_from(t.max(1)).unwrap_or(i32::MAX)) {
        None => cores,
        Some(t) if t > cores => {
            tracing::warn!(
                "model.threads is {t} but this machine has {cores} cores: using {cores}"
            );
            cores
        }
        Some(t) => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_beyond_the_cores_are_clamped_to_them() {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get) as i32;
        assert_eq!(inference_threads(None), cores);
        assert_eq!(inference_threads(Some(100_000)), cores);
        assert_eq!(inference_threads(Some(u32::MAX)), cores);
        assert_eq!(inference_threads(Some(1)), 1);
        assert_eq!(inference_threads(Some(0)), 1);
    }
}
