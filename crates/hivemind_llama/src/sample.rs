//! Choosing the next token: greedy or seeded random sampling, constrained by a GBNF grammar on
//! llama.cpp's rejection fast path.
//!
//! The grammar sampler stays out of the sampling chain. The chain picks a token from the raw
//! logits; only that one token is tested against the grammar. The whole vocabulary is masked
//! only when the grammar rejects it, and the final token is accepted by the grammar exactly
//! once. This is the scheme of llama.cpp's own `common/sampling.cpp`, and it matters because
//! grammar checks are single-threaded and a full mask costs a pass over 49,152 candidates.

use hivemind_core::config::Sampling;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};

/// How often the grammar accepted the first choice, for the benchmark's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrammarStats {
    /// Tokens chosen.
    pub tokens: u64,
    /// Tokens for which the first choice was rejected and the vocabulary was masked.
    pub masked: u64,
}

/// One stream's token chooser: its grammar (if any), its random generator and scratch buffers.
pub(crate) struct TokenChooser {
    grammar: Option<LlamaSampler>,
    sampling: Sampling,
    /// The sampling outside `say` strings.
    base: Sampling,
    /// The sampling of a `say` string's words, switched to by [`TokenChooser::enter_say`].
    say_sampling: Option<Sampling>,
    in_say: bool,
    /// Tokens chosen inside the `say` string, for the repetition penalty.
    said: Vec<i32>,
    /// Never choose an end-of-generation token (fixed-length throughput runs).
    never_end: bool,
    rng: Xoshiro256PlusPlus,
    one: LlamaTokenDataArray,
    all: LlamaTokenDataArray,
    ranked: Vec<(f32, i32)>,
    pub(crate) stats: GrammarStats,
}

impl TokenChooser {
    /// A chooser by `sampling`, constrained by `grammar` (GBNF, start rule `root`) if given.
    pub(crate) fn new(
        model: &LlamaModel,
        grammar: Option<&str>,
        sampling: Sampling,
        seed: u64,
        never_end: bool,
    ) -> Result<Self, String> {
        let grammar = grammar
            .map(|g| {
                LlamaSampler::grammar(model, g, "root")
                    .map_err(|e| format!("llama.cpp rejected the grammar: {e}"))
            })
            .transpose()?;
        Ok(TokenChooser {
            grammar,
            sampling,
            base: sampling,
            say_sampling: None,
            in_say: false,
            said: Vec::new(),
            never_end,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            one: LlamaTokenDataArray::new(Vec::with_capacity(1), false),
            all: LlamaTokenDataArray::new(Vec::new(), false),
            ranked: Vec::new(),
            stats: GrammarStats::default(),
        })
    }

    /// Sets how a `say` string's words are chosen, for chaining.
    pub(crate) fn with_say_sampling(mut self, say: Option<Sampling>) -> Self {
        self.say_sampling = say;
        self
    }

    /// Whether the answer is inside its `say` string.
    pub(crate) fn in_say(&self) -> bool {
        self.in_say
    }

    /// The answer has opened its `say` string: its words are chosen by the say sampling.
    pub(crate) fn enter_say(&mut self) {
        self.in_say = true;
        if let Some(say) = self.say_sampling {
            self.sampling = say;
        }
    }

    /// The `say` string has closed: back to the base sampling, with a fresh repetition memory
    /// for the next agent's line (a shared prompt answers for several).
    pub(crate) fn leave_say(&mut self) {
        self.in_say = false;
        self.sampling = self.base;
        self.said.clear();
    }

    /// Chooses the next token from `logits` and advances the grammar past it. An
    /// end-of-generation token is returned only when the grammar allows the output to end,
    /// and it is never fed to the grammar. `None` means the grammar allows no token at all.
    pub(crate) fn choose(
        &mut self,
        logits: &[f32],
        is_eog: impl Fn(LlamaToken) -> bool,
    ) -> Option<LlamaToken> {
        let never_end = self.never_end;
        let open = |i: usize| !never_end || !is_eog(LlamaToken(i as i32));
        let first = self.pick(logits.iter().copied().enumerate().filter(|&(i, _)| open(i)))?;
        if self.grammar.is_none() {
            return Some(first);
        }
        self.stats.tokens += 1;
        let token = if self.allows(first, logits) {
            first
        } else {
            self.stats.masked += 1;
            self.all.data.clear();
            self.all.data.extend(
                logits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)),
            );
            self.all.selected = None;
            self.all.sorted = false;
            if let Some(grammar) = &mut self.grammar {
                grammar.apply(&mut self.all);
            }
            let allowed: Vec<(usize, f32)> = self
                .all
                .data
                .iter()
                .filter(|d| d.logit().is_finite())
                .map(|d| (d.id().0 as usize, d.logit()))
                .filter(|&(i, _)| open(i))
                .collect();
            self.pick(allowed.into_iter())?
        };
        if !is_eog(token)
            && let Some(grammar) = &mut self.grammar
        {
            // The grammar accepted this exact token above, so `accept` cannot fail.
            grammar.accept(token);
        }
        if self.in_say {
            self.said.push(token.0);
        }
        Some(token)
    }

    /// Advances the grammar past `tokens` (text the grammar forces, decoded with the prompt).
    /// Returns false, having accepted nothing, if there is no grammar or it refuses any of
    /// them.
    pub(crate) fn force(&mut self, tokens: &[LlamaToken]) -> bool {
        if self.grammar.is_none() {
            return false;
        }
        for &t in tokens {
            if !self.allows(t, &[]) {
                // Back to the grammar's start, as if nothing had been forced.
                if let Some(grammar) = &mut self.grammar {
                    grammar.reset();
                }
                return false;
            }
            if let Some(grammar) = &mut self.grammar {
                grammar.accept(t);
            }
        }
        true
    }

    /// Whether the grammar (if any) allows `token` next.
    fn allows(&mut self, token: LlamaToken, logits: &[f32]) -> bool {
        let Some(grammar) = &mut self.grammar else {
            return true;
        };
        let logit = logits.get(token.0 as usize).copied().unwrap_or(0.0);
        self.one.data.clear();
        self.one.data.push(LlamaTokenData::new(token, logit, 0.0));
        self.one.selected = None;
        self.one.sorted = false;
        grammar.apply(&mut self.one);
        self.one.data.first().is_some_and(|d| d.logit().is_finite())
    }

    /// Picks a token from `(id, logit)` candidates by this stream's sampling.
    fn pick(&mut self, candidates: impl Iterator<Item = (usize, f32)>) -> Option<LlamaToken> {
        match self.sampling {
            Sampling::Greedy => candidates
                .filter(|(_, l)| l.is_finite())
                // Ties go to the lower id, as in llama.cpp's greedy sampler.
                .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
                .map(|(i, _)| LlamaToken(i as i32)),
            Sampling::Random {
                temperature,
                top_k,
                top_p,
                min_p,
                repeat_penalty,
            } => {
                let said = &self.said;
                self.ranked.clear();
                self.ranked.extend(
                    candidates
                        .filter(|(_, l)| l.is_finite())
                        .map(|(i, l)| (penalized(l, i as i32, said, repeat_penalty), i as i32)),
                );
                let cut = Cut {
                    top_k,
                    top_p,
                    min_p,
                };
                pick_random(&mut self.ranked, temperature, cut, &mut self.rng).map(LlamaToken)
            }
        }
    }
}

/// `logit` after the repetition penalty for a token already `said` (llama.cpp's rule: a
/// positive logit is divided by the penalty, a negative one multiplied).
fn penalized(logit: f32, id: i32, said: &[i32], penalty: f32) -> f32 {
    if penalty == 1.0 || !said.contains(&id) {
        logit
    } else if logit > 0.0 {
        logit / penalty
    } else {
        logit * penalty
    }
}

/// Which candidates random sampling keeps.
#[derive(Clone, Copy)]
struct Cut {
    top_k: u32,
    top_p: f32,
    min_p: f32,
}

/// Temperature, top-k, top-p and min-p sampling over `(logit, id)` pairs, seeded and portable:
/// the same candidates and generator state give the same token on every platform.
fn pick_random(
    ranked: &mut Vec<(f32, i32)>,
    temperature: f32,
    cut: Cut,
    rng: &mut Xoshiro256PlusPlus,
) -> Option<i32> {
    let Cut {
        top_k,
        top_p,
        min_p,
    } = cut;
    if ranked.is_empty() {
        return None;
    }
    let by_logit = |a: &(f32, i32), b: &(f32, i32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let k = match top_k {
        0 => ranked.len(),
        k => (k as usize).min(ranked.len()),
    };
    if k < ranked.len() {
        ranked.select_nth_unstable_by(k - 1, by_logit);
        ranked.truncate(k);
    }
    ranked.sort_unstable_by(by_logit);
    if temperature <= 0.0 {
        return ranked.first().map(|&(_, id)| id);
    }
    let max = ranked[0].0;
    let mut weights: Vec<f32> = ranked
        .iter()
        .map(|&(l, _)| ((l - max) / temperature).exp())
        .collect();
    let total: f32 = weights.iter().sum();
    let mut kept = weights.len();
    if top_p < 1.0 {
        let mut mass = 0.0;
        for (i, w) in weights.iter().enumerate() {
            mass += w / total;
            if mass >= top_p {
                kept = i + 1;
                break;
            }
        }
    }
    // The most likely token has weight 1 (its logit is the maximum).
    if min_p > 0.0 {
        kept = kept.min(weights.iter().take_while(|&&w| w >= min_p).count().max(1));
    }
    weights.truncate(kept);
    let total: f32 = weights.iter().sum();
    // 24 random bits make a uniform float in [0, 1), the same on every platform.
    let unit = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
    let mut target = unit * total;
    for (i, w) in weights.iter().enumerate() {
        if target < *w {
            return Some(ranked[i].1);
        }
        target -= w;
    }
    ranked.get(kept - 1).map(|&(_, id)| id)
}

/// Turns token pieces into text without splitting a UTF-8 character: bytes of an incomplete
/// character wait for the next piece.
#[derive(Default)]
pub(crate) struct Utf8Pieces {
    pending: Vec<u8>,
}

impl Utf8Pieces {
    /// Adds a piece and returns the text that is complete so far.
    pub(crate) fn push(&mut self, piece: &[u8]) -> String {
        self.pending.extend_from_slice(piece);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Bytes that can never become valid: pass them on replaced.
            Err(_) => {
                let text = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return text;
            }
        };
        let text = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_never_split_a_character() {
        let mut pieces = Utf8Pieces::default();
        let bytes = "né→x".as_bytes();
        let mut out = String::new();
        for b in bytes {
            out.push_str(&pieces.push(&[*b]));
        }
        assert_eq!(out, "né→x");
        assert_eq!(pieces.push(&[0xff, b'a']), "\u{fffd}a");
    }

    fn cut(top_k: u32, top_p: f32, min_p: f32) -> Cut {
        Cut {
            top_k,
            top_p,
            min_p,
        }
    }

    #[test]
    fn random_sampling_repeats_with_its_seed_and_respects_top_k() {
        let logits: Vec<(f32, i32)> = (0..100).map(|i| ((i % 17) as f32, i)).collect();
        let draw = |seed| {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            (0..50)
                .map(|_| {
                    pick_random(&mut logits.clone(), 0.8, cut(3, 0.95, 0.0), &mut rng).unwrap()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        // The three largest logits are 16 (ids 16, 33, 50, …): top-k keeps the lowest ids.
        assert!(draw(7).iter().all(|id| [16, 33, 50].contains(id)));
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        assert_eq!(
            pick_random(&mut Vec::new(), 0.8, cut(3, 0.9, 0.0), &mut rng),
            None
        );
        assert_eq!(
            pick_random(&mut logits.clone(), 0.0, cut(0, 1.0, 0.0), &mut rng),
            Some(16)
        );
    }

    #[test]
    fn min_p_keeps_only_tokens_near_the_best_and_the_penalty_lowers_said_tokens() {
        // Logit 5 against 0: the second is e^-5 / 1 ≈ 0.007 as likely, under a min-p of 0.05.
        let logits = vec![(5.0, 1), (0.0, 2), (0.0, 3)];
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        for _ in 0..50 {
            let id = pick_random(&mut logits.clone(), 1.0, cut(0, 1.0, 0.05), &mut rng);
            assert_eq!(id, Some(1));
        }
        assert_eq!(penalized(4.0, 7, &[7], 2.0), 2.0);
        assert_eq!(penalized(-4.0, 7, &[7], 2.0), -8.0);
        assert_eq!(penalized(4.0, 8, &[7], 2.0), 4.0);
    }
}

#[cfg(test)]
mod grammar_tests {
    use super::*;
    use crate::engine::tests::model;

    #[test]
    fn end_of_generation_waits_for_the_grammar_to_finish() {
        let Some(model) = model("end_of_generation_waits_for_the_grammar_to_finish") else {
            return;
        };
        let eog = model.vocab().eos();
        assert!(model.vocab().is_eog(eog));
        let mut chooser =
            TokenChooser::new(&model, Some("root ::= \"ok\""), Sampling::Greedy, 0, false).unwrap();
        let n_vocab = model.n_vocab() as usize;
        // The model "wants" to stop at once: end of generation has by far the largest logit.
        let mut logits = vec![0.0f32; n_vocab];
        logits[eog.0 as usize] = 100.0;
        let mut text = Vec::new();
        for _ in 0..8 {
            let token = chooser
                .choose(&logits, |t| model.vocab().is_eog(t))
                .unwrap();
            if model.vocab().is_eog(token) {
                break;
            }
            text.extend(model.vocab().token_to_piece(token, false, None));
        }
        // It could end only once the grammar was complete, and never fed the grammar an end.
        assert_eq!(String::from_utf8(text).unwrap(), "ok");
        assert!(chooser.stats.masked >= 1);
    }
}
