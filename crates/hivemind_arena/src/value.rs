//! The model-value suite: what the model adds on top of the rules, judged by rules written before
//! any model ran.
//!
//! The planner guarantees that a plan makes sense; the model is asked for what the rules cannot
//! give: a choice among sound options that reads the situation, a line in the agent's own voice,
//! obedience to what the player just said, and replies to the player. A tiny model games such
//! questions in known ways: it picks the first option, copies the worked example's answer,
//! repeats its prompt or echoes the player. Every measure below is built so that none of those
//! scores.
//!
//! # Choice ([`choice`])
//!
//! Each of the scenario suite's situations ([`crate::scenarios`]) gets a fixed set of options
//! drawn from one catalogue (heal, reload, attack each enemy in sight, take the nearest cover,
//! retreat, move to the objective, hold position), each labelled as the product labels its
//! intents, with the facts that decide it in its reason. An option is *sensible* when its first
//! action is one the scenario rules accept ([`crate::scenarios::accepted`]); each set has one or
//! two sensible options and at least one the rules reject, four in all where the catalogue
//! allows. Every set is shown twice, in a seeded random order and in that order reversed, so a
//! picker that prefers a position cannot be right in both. Baselines: the always-first picker
//! and the uniform random picker (its exact expectation).
//!
//! # Player orders ([`orders`])
//!
//! Situations in which the player has just spoken to the agent: fall back, cover me (covering
//! fire is an attack), take the point, heal first, focus the weak one, reload, get into cover,
//! and chatter that is no order. Each lists the intents that follow it, fixed here; for chatter
//! they are the intents the scenario rules accept. The agent is offered every intent GOAP can
//! carry out in the situation, so an order is always feasible; following it is correct.
//! Baselines: the always-first picker, and the utility planner's best intent, which cannot read
//! the player's words.
//!
//! # Lines ([`lines`])
//!
//! A line *copies* when it shares four or more consecutive normalised words with the prompt
//! (the preamble, rules, worked examples, any persona's voice, the options shown) or with the
//! player's line ([`hivemind_core::hooks::CopyCheck`]); a copy of the player's words is also
//! off topic. A line is in its persona's voice when it uses one of that persona's words
//! ([`PERSONA_WORDS`]) and no other persona's; the lists are disjoint, and no grammar or forced
//! prefix writes them. Distinct lines are counted among those that pass the copy and topic
//! checks only.
//!
//! # Replies ([`replies`])
//!
//! Player lines across the personas, each with a rubric: the reply must contain at least one of
//! its `must` words and none of its `must_not` words (whole words, any case), and must not copy.
//! A template that ignores what was said does not pass them.

pub mod choice;
pub mod lines;
pub mod orders;
pub mod replies;

pub use choice::{ChoiceOption, ChoiceSet, choice_sets};
pub use lines::{LineJudgement, copy_check, judge_line};
pub use orders::{OrderCase, OrderKind, order_cases};
pub use replies::{ReplyCase, reply_cases};

use crate::scenarios::{Voice, contains_word, voice_by};

/// The personas the suite speaks as, and the words that are each one's own. No word belongs to
/// two personas.
pub const PERSONA_WORDS: [(&str, &[&str]); 6] = [
    (
        "veteran",
        &[
            "copy",
            "contact",
            "roger",
            "negative",
            "steady",
            "affirmative",
        ],
    ),
    (
        "rookie",
        &["whoa", "let's go", "awesome", "wow", "omg", "so cool"],
    ),
    (
        "medic",
        &["patch", "bandage", "pulse", "stitch", "triage", "doc"],
    ),
    (
        "sniper",
        &[
            "scope",
            "crosshairs",
            "one shot",
            "windage",
            "glass",
            "sightline",
        ],
    ),
    (
        "joker",
        &[
            "haha",
            "buddy",
            "party",
            "piece of cake",
            "punchline",
            "hilarious",
        ],
    ),
    (
        "preacher",
        &["glory", "faith", "blessed", "amen", "pray", "heaven"],
    ),
];

/// The suite's persona for its `i`-th case: they take turns.
pub fn persona_at(i: usize) -> &'static str {
    PERSONA_WORDS[i % PERSONA_WORDS.len()].0
}

/// Whose voice `line` is in, said by an agent of `persona`, by [`PERSONA_WORDS`].
pub fn persona_voice(persona: &str, line: &str) -> Voice {
    voice_by(&PERSONA_WORDS, persona, line)
}

/// Whether `line` contains `word` (a word or phrase) as whole words, ignoring case.
pub fn says_word(line: &str, word: &str) -> bool {
    contains_word(&line.to_lowercase(), &word.to_lowercase())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn persona_words_are_disjoint_and_judge_whole_words() {
        let mut seen = BTreeSet::new();
        for (_, words) in PERSONA_WORDS {
            for w in words {
                assert!(seen.insert(*w), "{w} belongs to two personas");
                assert_eq!(*w, w.to_lowercase());
            }
        }
        // No persona's word contains another's as a whole word.
        for (a, wa) in PERSONA_WORDS {
            for (b, wb) in PERSONA_WORDS {
                if a != b {
                    for x in wa {
                        assert!(!wb.iter().any(|y| contains_word(y, x)), "{x} in {b}");
                    }
                }
            }
        }
        assert_eq!(persona_voice("rookie", "Whoa, LET'S GO!"), Voice::Own);
        assert_eq!(
            persona_voice("veteran", "Copy that. Let's go."),
            Voice::Bleed
        );
        assert_eq!(persona_voice("veteran", "Copycat moves."), Voice::Plain);
        assert_eq!(persona_voice("medic", "Hold still."), Voice::Plain);
    }
}
