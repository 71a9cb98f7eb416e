//! Player lines across the personas, each with a rubric. See the [suite's rules](super#replies).

use hivemind_core::hooks::CopyCheck;
use hivemind_core::snapshot::WorldSnapshot;

use super::judge_line;
use crate::scenarios::suite;

/// A player's line to an agent in a situation, and what an answer to it must and must not say.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplyCase {
    /// The situation's name in the scenario suite.
    pub name: &'static str,
    /// The agent's persona.
    pub persona: &'static str,
    /// What the agent knows.
    pub snapshot: WorldSnapshot,
    /// What the player said.
    pub said: &'static str,
    /// The reply must contain at least one of these (whole words, any case).
    pub must: &'static [&'static str],
    /// The reply must contain none of these.
    pub must_not: &'static [&'static str],
}

impl ReplyCase {
    /// Whether `reply` meets the rubric, ignoring copies.
    pub fn meets_rubric(&self, reply: &str) -> bool {
        self.must.iter().any(|w| super::says_word(reply, w))
            && !self.must_not.iter().any(|w| super::says_word(reply, w))
    }

    /// Whether `reply` is on topic: it meets the rubric and copies neither the prompt (`check`)
    /// nor the player.
    pub fn on_topic(&self, check: &CopyCheck, reply: &str) -> bool {
        self.meets_rubric(reply)
            && judge_line(check, self.persona, reply, &[], Some(self.said)).is_own()
    }
}

/// Every reply case, in a fixed order; personas take turns.
pub fn reply_cases() -> Vec<ReplyCase> {
    let scenarios = suite();
    CASES
        .iter()
        .enumerate()
        .map(|(i, &(name, said, must, must_not))| ReplyCase {
            name,
            persona: super::persona_at(i),
            snapshot: scenarios
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.snapshot.clone())
                .unwrap_or_else(|| panic!("no scenario {name}")),
            said,
            must,
            must_not,
        })
        .collect()
}

type Case = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

#[rustfmt::skip]
const CASES: &[Case] = &[
    ("duel", "Are you scared?", &["scared", "afraid", "fear", "fearless", "nervous", "brave", "worried", "no", "not", "never", "yes"], &[]),
    ("hurt_with_medkit_under_fire", "How's your health?", &["hp", "health", "hurt", "hurting", "wounded", "bleeding", "25", "low", "bad", "badly", "injured"], &["full", "100"]),
    ("empty_under_fire", "How much ammo do you have?", &["ammo", "empty", "out", "reload", "reloading", "bullets", "rounds", "magazine", "mag", "shots", "zero", "0", "none"], &["full", "plenty"]),
    ("three_targets", "Where are the enemies?", &["enemy", "enemies", "there", "over", "ahead", "east", "west", "north", "south", "left", "right", "front", "behind", "near", "close"], &["nobody"]),
    ("push_objective", "Can you see anyone?", &["no", "nobody", "nothing", "clear", "none", "quiet", "not", "nope"], &["yes"]),
    ("push_objective_from_cover", "What's the plan?", &["plan", "move", "push", "objective", "center", "point", "hold", "attack", "go", "going", "advance"], &[]),
    ("hurt_no_medkit_under_fire", "Do you need a medkit?", &["yes", "need", "please", "medkit", "heal", "hurt", "badly"], &["not hurt"]),
    ("finish_the_weak_one", "Nice shot!", &["thanks", "thank", "shot", "yeah", "got", "easy", "hit", "down"], &[]),
    ("push_objective_half_ammo", "Stay close to me.", &["stay", "close", "with you", "behind you", "stick", "sticking", "okay", "ok", "sure", "yes", "will"], &[]),
    ("hurt_no_medkit_in_cover", "Why did you retreat?", &["because", "hurt", "hp", "health", "wounded", "outnumbered", "ammo", "low", "dying", "bleeding"], &[]),
    ("outnumbered_healthy", "Who's winning?", &["we", "they", "us", "them", "winning", "losing", "score", "team", "ahead", "behind"], &[]),
    ("hold_objective", "Where should I go?", &["go", "move", "cover", "objective", "center", "point", "left", "right", "base", "stay", "here", "flank"], &[]),
    ("from_cover", "Are you hurt?", &["hurt", "fine", "ok", "okay", "yes", "no", "hp", "wound", "scratch", "good", "75"], &["dying"]),
    ("hold_objective_in_cover", "Hold this position.", &["hold", "holding", "position", "stay", "staying", "here", "okay", "ok", "yes", "will", "sure"], &[]),
    ("healthy_medkit_not_needed", "Do you have a medkit?", &["medkit", "medkits", "yes", "two", "2", "got", "have"], &["no medkit", "none"]),
    ("equal_enemies", "Watch the left flank.", &["left", "flank", "watch", "watching", "eyes", "on it", "yes", "will", "okay", "ok"], &[]),
    ("three_targets", "How many enemies are there?", &["three", "3", "enemies"], &["one", "two", "four", "1", "2", "4"]),
    ("hurt_no_medkit_under_fire", "Is it safe to move?", &["safe", "yes", "no", "clear", "move", "wait", "careful", "not", "dangerous", "risky"], &[]),
    ("hold_objective_topped_up", "Thanks for the help.", &["welcome", "thanks", "anytime", "problem", "sure", "pleasure", "glad"], &[]),
    ("empty_in_cover", "Can you reload?", &["reload", "reloading", "ammo", "yes", "sure", "shots", "magazine", "okay", "ok"], &[]),
    ("blue_push_objective", "Let's take the objective.", &["objective", "center", "point", "go", "yes", "move", "take", "okay", "ok", "push"], &[]),
    ("empty_alone", "Good morning!", &["morning", "hello", "hi", "hey", "good"], &[]),
    ("blue_duel", "What do you think of the enemy team?", &["they", "them", "enemy", "enemies", "team", "weak", "strong", "tough", "good", "bad"], &[]),
    ("last_shot_weak_enemy", "Should we attack now?", &["attack", "yes", "no", "wait", "now", "go", "not", "shoot"], &[]),
    ("hurt_no_medkit_empty", "Are you out of ammo?", &["yes", "out", "empty", "ammo", "reload", "reloading", "none"], &["full", "plenty"]),
    ("empty_two_enemies", "Where is the nearest cover?", &["cover", "there", "behind", "left", "right", "wall", "near", "close"], &[]),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assets;
    use crate::value::{PERSONA_WORDS, copy_check};

    #[test]
    fn the_rubrics_span_every_persona_and_reject_a_template_and_an_echo() {
        let cases = reply_cases();
        assert!(cases.len() >= 24);
        for (persona, _) in PERSONA_WORDS {
            assert!(cases.iter().filter(|c| c.persona == persona).count() >= 4);
        }
        let check = copy_check(&assets().prompt);
        let scared = &cases[0];
        assert!(scared.on_topic(&check, "Scared? Never. Stay sharp."));
        // A template that ignores the question, and an echo of it.
        assert!(!scared.on_topic(&check, "I'm gonna practice my strafing."));
        let ammo = &cases[2];
        assert!(!ammo.on_topic(&check, "How much ammo do you have? Plenty."));
        assert!(!ammo.on_topic(&check, "Full magazine, plenty to spare."));
        assert!(ammo.on_topic(&check, "I'm empty, reloading now."));
    }
}
