//! The model and its context on one thread, behind checks that keep every llama.cpp assertion
//! out of reach.
//!
//! Each abort path PERF.md lists has one guard here:
//! - a batch larger than `n_batch`: the one [`LlamaBatch`] is allocated with exactly `n_batch`
//!   slots and `add` refuses a token past them, so [`Engine::decode`] can never be handed more;
//! - a sequence id outside `0..n_seq_max` in `seq_cp` or `seq_rm`: ids are [`SeqId`]s, which only
//!   [`Engine::seq`] makes, after the range check;
//! - more sequence ids per token than the batch was made for: [`Engine::push`] adds exactly one
//!   id per token to a batch made for one;
//! - end of generation on an unfinished grammar: [`crate::sample`] never feeds one to a grammar;
//! - a missing model path, or a vocabulary llama.cpp would stop on: [`crate::ModelFile::check`]
//!   runs before any load;
//! - a recurrent or hybrid model, whose state cannot be copied as a prefix: [`Engine::new`]
//!   refuses it.

use std::num::NonZeroU32;
use std::sync::Arc;

use hivemind_core::prompt::PromptText;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::LlamaError;

/// llama.cpp's hard limit on sequence ids (`LLAMA_MAX_SEQ`).
pub(crate) const MAX_SEQUENCES: u32 = 256;

/// A sequence id known to be in range for its engine's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SeqId(i32);

impl SeqId {
    pub(crate) fn raw(self) -> i32 {
        self.0
    }
}

/// Tokenizes a prompt, reading special tokens only where the chat template wrote them
/// ([`PromptText`]); the model's start-of-text token is added when `first` is set.
///
/// llama.cpp, parsing special tokens, cuts the text at each one and tokenizes the pieces
/// between as plain text. This does the same with the cuts limited to the template's ranges,
/// so a prompt whose data holds no special token's name tokenizes exactly as before, and one
/// whose data does gets no turn from it.
///
/// A tag of the template (`<|im_start|>` …) that is not one of the model's special tokens is
/// an error: the model was trained on another chat format, and its turns would be text.
pub fn tokenize_prompt(
    model: &LlamaModel,
    text: &PromptText,
    first: bool,
) -> Result<Vec<LlamaToken>, LlamaError> {
    let vocab = model.vocab();
    let mut out = Vec::new();
    if first && vocab.should_add_bos() {
        out.push(vocab.bos());
    }
    let mut plain = String::new();
    let flush = |plain: &mut String, out: &mut Vec<LlamaToken>| {
        if !plain.is_empty() {
            out.extend(vocab.tokenize(plain.as_bytes(), false, false));
            plain.clear();
        }
    };
    for (piece, template) in text.pieces() {
        if !template {
            plain.push_str(piece);
            continue;
        }
        let mut rest = piece;
        for token in vocab.tokenize(piece.as_bytes(), false, true) {
            if !vocab.is_control(token) {
                continue;
            }
            let Some(name) = vocab.text(token).and_then(|n| n.to_str().ok()) else {
                continue;
            };
            let Some(at) = rest.find(name).filter(|_| !name.is_empty()) else {
                continue;
            };
            unknown_tag(&rest[..at])?;
            plain.push_str(&rest[..at]);
            flush(&mut plain, &mut out);
            out.push(token);
            rest = &rest[at + name.len()..];
        }
        unknown_tag(rest)?;
        plain.push_str(rest);
    }
    flush(&mut plain, &mut out);
    Ok(out)
}

/// An error if `template_text` (template text left once its special tokens are taken out)
/// still holds a tag: `<`, up to 40 characters without spaces, `>`.
fn unknown_tag(template_text: &str) -> Result<(), LlamaError> {
    let mut rest = template_text;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        if let Some(close) = after.find('>')
            && close > 0
            && close <= 40
            && !after[..close].contains(char::is_whitespace)
        {
            return Err(LlamaError::ChatTemplate(format!(
                "the chat template's {} is not one of the model's special tokens",
                &rest[open..open + close + 2]
            )));
        }
        rest = after;
    }
    Ok(())
}

/// Sizes of an engine's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EngineShape {
    /// Context size in tokens (key/value cells).
    pub(crate) n_ctx: u32,
    /// The most tokens one `decode` call takes.
    pub(crate) n_batch: u32,
    /// Sequence ids available.
    pub(crate) n_seq_max: u32,
    /// Threads for generation and for prompt processing.
    pub(crate) threads: i32,
}

/// A model and one context over it, owned by one thread.
pub(crate) struct Engine {
    // Field order matters: the batch and the context borrow the model and are dropped first.
    batch: LlamaBatch<'static>,
    ctx: LlamaContext<'static>,
    model: Arc<LlamaModel>,
    shape: EngineShape,
    /// The tokens that end generation, found once.
    eog: Vec<LlamaToken>,
}

impl Engine {
    /// A context of `shape` over `model`, with a unified key/value cache, so one cell can belong
    /// to many sequences and a prefix is stored once however many agents branch from it.
    pub(crate) fn new(model: Arc<LlamaModel>, shape: EngineShape) -> Result<Self, LlamaError> {
        let backend = crate::model::llama_backend()?;
        if shape.n_batch == 0 || shape.n_ctx < shape.n_batch {
            return Err(LlamaError::Context(format!(
                "batch size {} must be between 1 and the context size {}",
                shape.n_batch, shape.n_ctx
            )));
        }
        if model.is_recurrent() || model.is_hybrid() {
            // A recurrent state is one summary per sequence, not cells by position: a prefix
            // cannot be copied to a branch and continued there.
            return Err(LlamaError::Context(
                "the model keeps a recurrent state, which prefix copies do not support".into(),
            ));
        }
        if shape.n_seq_max == 0 || shape.n_seq_max > MAX_SEQUENCES {
            return Err(LlamaError::Context(format!(
                "{} sequences asked for; llama.cpp allows 1 to {MAX_SEQUENCES}",
                shape.n_seq_max
            )));
        }
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(shape.n_ctx))
            .with_n_batch(shape.n_batch)
            .with_n_ubatch(shape.n_batch)
            .with_n_seq_max(shape.n_seq_max)
            .with_kv_unified(true)
            .with_n_threads(shape.threads)
            .with_n_threads_batch(shape.threads);
        // SAFETY: the context borrows the model for as long as it lives. The model sits behind an
        // `Arc` this struct owns, so it neither moves nor drops while the context exists, and the
        // context (and the batch) are declared before the `Arc` so they are dropped before it.
        let model_ref: &'static LlamaModel = unsafe { &*Arc::as_ptr(&model) };
        let ctx = model_ref
            .new_context(backend, params)
            .map_err(|e| LlamaError::Context(e.to_string()))?;
        let shape = EngineShape {
            n_ctx: ctx.n_ctx(),
            n_batch: ctx.n_batch(),
            ..shape
        };
        let vocab = model_ref.vocab();
        let eog = (0..model_ref.n_vocab())
            .map(LlamaToken)
            .filter(|&t| vocab.is_eog(t))
            .collect();
        Ok(Engine {
            eog,
            // One sequence id per token: `push` never adds more.
            batch: LlamaBatch::new(shape.n_batch as usize, 1),
            ctx,
            model,
            shape,
        })
    }

    pub(crate) fn model(&self) -> &LlamaModel {
        &self.model
    }

    pub(crate) fn shape(&self) -> EngineShape {
        self.shape
    }

    /// Sequence id `i`, if the context has it.
    pub(crate) fn seq(&self, i: u32) -> Result<SeqId, LlamaError> {
        if i < self.shape.n_seq_max {
            Ok(SeqId(i as i32))
        } else {
            Err(LlamaError::Context(format!(
                "sequence {i} is out of range (the context has {})",
                self.shape.n_seq_max
            )))
        }
    }

    /// Tokenizes plain text: a special token's name in it is only characters.
    pub(crate) fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        self.model.vocab().tokenize(text.as_bytes(), false, false)
    }

    /// Tokenizes a prompt: see [`tokenize_prompt`].
    pub(crate) fn tokenize_prompt(
        &self,
        text: &PromptText,
        first: bool,
    ) -> Result<Vec<LlamaToken>, LlamaError> {
        tokenize_prompt(&self.model, text, first)
    }

    /// The bytes a generated token stands for.
    pub(crate) fn piece(&self, token: LlamaToken) -> Vec<u8> {
        self.model.vocab().token_to_piece(token, false, None)
    }

    pub(crate) fn is_eog(&self, token: LlamaToken) -> bool {
        self.eog.contains(&token)
    }

    /// Empties the pending batch.
    pub(crate) fn clear_batch(&mut self) {
        self.batch.clear();
    }

    /// Tokens in the pending batch.
    pub(crate) fn batch_len(&self) -> usize {
        self.batch.n_tokens().max(0) as usize
    }

    /// Room left in the pending batch.
    pub(crate) fn batch_room(&self) -> usize {
        (self.shape.n_batch as usize).saturating_sub(self.batch_len())
    }

    /// Adds one token of `seq` at `pos` to the pending batch; returns its index there, where
    /// its logits will be if `logits` is set.
    pub(crate) fn push(
        &mut self,
        token: LlamaToken,
        pos: i32,
        seq: SeqId,
        logits: bool,
    ) -> Result<i32, LlamaError> {
        let index = self.batch.n_tokens();
        self.batch
            .add(token, pos, &[seq.0], logits)
            .map_err(|e| LlamaError::Context(format!("batch full: {e}")))?;
        Ok(index)
    }

    /// Decodes the pending batch.
    pub(crate) fn decode(&mut self) -> Result<(), LlamaError> {
        if self.batch_len() == 0 {
            return Ok(());
        }
        self.ctx
            .decode(&mut self.batch)
            .map_err(|e| LlamaError::Decode(e.to_string()))
    }

    /// Decodes `tokens` onto `seq` from position `start`, in chunks that fit the batch.
    pub(crate) fn decode_run(
        &mut self,
        tokens: &[LlamaToken],
        seq: SeqId,
        start: i32,
    ) -> Result<(), LlamaError> {
        for (c, chunk) in tokens.chunks(self.shape.n_batch as usize).enumerate() {
            self.clear_batch();
            let base = start + (c * self.shape.n_batch as usize) as i32;
            for (i, &t) in chunk.iter().enumerate() {
                self.push(t, base + i as i32, seq, false)?;
            }
            self.decode()?;
        }
        self.clear_batch();
        Ok(())
    }

    /// The logits of the pending batch's token at `index`, which must have asked for them in
    /// the last `decode`.
    pub(crate) fn logits(&self, index: i32) -> &[f32] {
        self.ctx.get_logits_ith(index)
    }

    /// Empties the key/value cache.
    pub(crate) fn clear_cache(&mut self) {
        self.ctx.clear_kv_cache();
    }

    /// Removes positions `from..to` (`None` = open) of `seq` from the cache.
    pub(crate) fn seq_rm(&mut self, seq: SeqId, from: Option<u32>, to: Option<u32>) {
        // Only recurrent models refuse a partial removal; this crate loads transformers.
        let _ = self.ctx.clear_kv_cache_seq(Some(seq.0 as u32), from, to);
    }

    /// Makes the cells of `src` at positions `from..to` belong to `dst` as well.
    pub(crate) fn seq_cp(&mut self, src: SeqId, dst: SeqId, from: Option<u32>, to: Option<u32>) {
        // Positions come from token counts, far below `i32::MAX`.
        let _ = self.ctx.copy_kv_cache_seq(src.0, dst.0, from, to);
    }

    /// The cached state of `seq`.
    pub(crate) fn save_seq(
        &self,
        seq: SeqId,
    ) -> Result<llama_cpp_2::context::session::SeqState, LlamaError> {
        self.ctx
            .state_seq_get(
                seq.0,
                llama_cpp_2::context::session::LlamaStateSeqFlags::empty(),
            )
            .map_err(|e| LlamaError::State(e.to_string()))
    }

    /// Restores a state saved by [`Engine::save_seq`] into `seq`.
    pub(crate) fn restore_seq(
        &mut self,
        state: &llama_cpp_2::context::session::SeqState,
        seq: SeqId,
    ) -> Result<(), LlamaError> {
        self.ctx
            .state_seq_set(state, seq.0)
            .map_err(|e| LlamaError::State(e.to_string()))
    }

    /// Writes `seq`'s state and the tokens it holds to `path`.
    pub(crate) fn save_seq_file(
        &self,
        path: &std::path::Path,
        seq: SeqId,
        tokens: &[LlamaToken],
    ) -> Result<(), LlamaError> {
        self.ctx
            .state_seq_save_file(path, seq.0, tokens)
            .map(drop)
            .map_err(|e| LlamaError::State(e.to_string()))
    }

    /// The first and last positions `seq` holds in the cache; `None` if it holds none.
    pub(crate) fn seq_positions(&self, seq: SeqId) -> Option<(i32, i32)> {
        let (min, max) = (
            self.ctx.kv_cache_seq_pos_min(seq.0),
            self.ctx.kv_cache_seq_pos_max(seq.0),
        );
        (min >= 0 && max >= min).then_some((min, max))
    }

    /// Loads a state file written by [`Engine::save_seq_file`] into `seq`; returns its tokens.
    pub(crate) fn load_seq_file(
        &mut self,
        path: &std::path::Path,
        seq: SeqId,
        max_tokens: usize,
    ) -> Result<Vec<LlamaToken>, LlamaError> {
        self.ctx
            .state_seq_load_file(path, seq.0, max_tokens)
            .map(|(tokens, _)| tokens)
            .map_err(|e| LlamaError::State(e.to_string()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ModelFile;

    /// The real model, as `scripts/setup` fetches it, or `None` (the test named `test` is
    /// skipped) where it is absent.
    pub(crate) fn model(test: &str) -> Option<Arc<LlamaModel>> {
        let path = match std::env::var(hivemind_core::config::MODEL_ENV) {
            Ok(p) if !p.is_empty() => std::path::PathBuf::from(p),
            _ => std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
                .join(hivemind_core::config::ModelConfig::DEFAULT_PATH),
        };
        let path = crate::testing::model_at(test, &path)?;
        Some(ModelFile::check(path).unwrap().load().unwrap())
    }

    fn engine(model: &Arc<LlamaModel>, n_batch: u32, n_seq_max: u32) -> Engine {
        let shape = EngineShape {
            n_ctx: 512,
            n_batch,
            n_seq_max,
            threads: 2,
        };
        Engine::new(Arc::clone(model), shape).unwrap()
    }

    #[test]
    fn sequence_ids_outside_the_context_are_refused_before_llama_cpp_sees_them() {
        let Some(model) = model("sequence_ids_outside_the_context_are_refused") else {
            return;
        };
        let engine = engine(&model, 32, 3);
        assert!(engine.seq(2).is_ok());
        assert!(matches!(engine.seq(3), Err(LlamaError::Context(_))));
        assert!(matches!(engine.seq(u32::MAX), Err(LlamaError::Context(_))));
        let shape = EngineShape {
            n_ctx: 512,
            n_batch: 32,
            n_seq_max: MAX_SEQUENCES + 1,
            threads: 1,
        };
        assert!(matches!(
            Engine::new(Arc::clone(&model), shape),
            Err(LlamaError::Context(_))
        ));
    }

    #[test]
    fn tags_left_in_template_text_are_named() {
        assert!(unknown_tag("system\n").is_ok());
        assert!(unknown_tag("a < b > c").is_ok());
        let err = unknown_tag("x<start_of_turn>user\n").unwrap_err();
        assert!(err.to_string().contains("<start_of_turn>"), "{err}");
        assert!(unknown_tag("<|eot_id|>").is_err());
    }

    #[test]
    fn a_batch_never_takes_more_than_n_batch_tokens() {
        let Some(model) = model("a_batch_never_takes_more_than_n_batch_tokens") else {
            return;
        };
        let mut engine = engine(&model, 8, 2);
        let seq = engine.seq(0).unwrap();
        let tokens = engine.tokenize("one two three four five six seven eight nine ten");
        assert!(tokens.len() > 8);
        for (i, &t) in tokens.iter().take(8).enumerate() {
            engine.push(t, i as i32, seq, false).unwrap();
        }
        assert_eq!(engine.batch_room(), 0);
        // The ninth token is refused, not written past the batch.
        assert!(engine.push(tokens[8], 8, seq, false).is_err());
        engine.decode().unwrap();
        // A longer run is split into chunks that fit.
        engine.clear_cache();
        engine.decode_run(&tokens, seq, 0).unwrap();
        let bigger = EngineShape {
            n_ctx: 64,
            n_batch: 128,
            n_seq_max: 1,
            threads: 1,
        };
        assert!(matches!(
            Engine::new(model, bigger),
            Err(LlamaError::Context(_))
        ));
    }
}
