//! Where a game plugs its own rules into hivemind, whatever engine runs it: the planner that
//! makes, checks and repairs plans, and the filter every line passes before a player sees it.
//!
//! Both are plain traits over core types, so the request lifecycle that calls them is tested
//! without an engine, and a game's rules (its GOAP domain, say) live with the game, not with
//! the plugin.

use crate::plan::PlanStep;
use crate::prompt::IntentOption;
use crate::snapshot::WorldSnapshot;

/// The game's rules for plans.
///
/// They give the plan whenever a model's would be late or wrong, check a model's plan, and offer
/// the intents of a guided prompt. Fallback plans are made off the main thread, as soon as a
/// request is queued.
///
/// Any `Fn(&WorldSnapshot) -> Vec<PlanStep>` that is `Send + Sync` is one, such as a GOAP planner
/// over the game's domain; it makes fallback plans and nothing else. An empty plan is answered
/// with the registry's idle verb. A game that implements the other methods gets model plans
/// checked and repaired ([`FallbackPlanner::first_invalid`], [`FallbackPlanner::complete`]) and
/// the guided format ([`FallbackPlanner::intents`], [`FallbackPlanner::expand`]).
pub trait FallbackPlanner: Send + Sync + 'static {
    /// A plan for the agent in `snapshot`.
    fn plan(&self, snapshot: &WorldSnapshot) -> Vec<PlanStep>;

    /// The rest of a plan whose first steps, `done`, came from a model: what to append so the
    /// plan still reaches a goal. Called when the model failed mid-plan and when one of its steps
    /// failed [`FallbackPlanner::first_invalid`]. By default nothing is appended and the model's
    /// steps stand alone.
    fn complete(&self, snapshot: &WorldSnapshot, done: &[PlanStep]) -> Vec<PlanStep> {
        let _ = (snapshot, done);
        Vec::new()
    }

    /// The index of the first of a model's `steps` that cannot run in `snapshot` after the
    /// steps before it (attacking with an empty magazine, say), or `None` if all can. Called
    /// each time a step arrives, with every step so far, when the config's `model.repair` is
    /// on. By default every step can run.
    fn first_invalid(&self, snapshot: &WorldSnapshot, steps: &[PlanStep]) -> Option<usize> {
        let _ = (snapshot, steps);
        None
    }

    /// The intents a guided prompt offers the agent in `snapshot`, best first, each one that
    /// [`FallbackPlanner::expand`] can carry out. Empty (the default) means the agent is asked
    /// in the free format even when the config says guided.
    fn intents(&self, snapshot: &WorldSnapshot) -> Vec<IntentOption> {
        let _ = snapshot;
        Vec::new()
    }

    /// The intents offered when the player has just spoken to the agent, which may be an order:
    /// every intent [`FallbackPlanner::expand`] can carry out, since the player may ask for what
    /// the scores rank low. The model reads what was said and chooses. By default the same as
    /// [`FallbackPlanner::intents`].
    fn order_intents(&self, snapshot: &WorldSnapshot) -> Vec<IntentOption> {
        self.intents(snapshot)
    }

    /// The steps that carry out the intent named `goal` (an [`IntentOption::goal`]) in
    /// `snapshot`. Empty if it cannot be carried out; the fallback plan is used instead.
    fn expand(&self, snapshot: &WorldSnapshot, goal: &str) -> Vec<PlanStep> {
        let _ = (snapshot, goal);
        Vec::new()
    }
}

impl<F> FallbackPlanner for F
where
    F: Fn(&WorldSnapshot) -> Vec<PlanStep> + Send + Sync + 'static,
{
    fn plan(&self, snapshot: &WorldSnapshot) -> Vec<PlanStep> {
        self(snapshot)
    }
}

/// The planner of a game that gave none: every fallback plan is the idle verb.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdlePlanner;

impl FallbackPlanner for IdlePlanner {
    fn plan(&self, _snapshot: &WorldSnapshot) -> Vec<PlanStep> {
        Vec::new()
    }
}

/// What a [`LineFilter`] decides about a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineVerdict {
    /// The line may reach the player.
    Pass,
    /// Only its first this-many bytes may (a char boundary); the rest is dropped and the line
    /// ends there.
    Cut(usize),
    /// None of it may. A model's line is replaced by the template, or ends where it was.
    Reject,
}

/// Checks every line before any of it reaches a player: the model's as it streams (the whole
/// text so far, each time words arrive), and the templates'.
pub trait LineFilter: Send + Sync + 'static {
    /// The verdict on `line`.
    fn check(&self, line: &str) -> LineVerdict;
}

/// The default [`LineFilter`]: a length cap at a word boundary, a list of words that must never
/// be said (matched whole, ignoring case), and a stop to lines that loop.
///
/// A small model sometimes repeats itself ("I'm going to take the ball. I'm going to take the
/// ball. …"). With `no_loops` on, a line that repeats a run of three words ends before the repeat
/// starts, or is rejected if that leaves nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineRules {
    /// The most characters a line may have.
    pub max_chars: usize,
    /// Words that reject a line.
    pub banned: Vec<String>,
    /// Whether a line is cut where it starts repeating a run of three words.
    pub no_loops: bool,
}

impl Default for LineRules {
    fn default() -> Self {
        LineRules {
            max_chars: 160,
            banned: Vec::new(),
            no_loops: true,
        }
    }
}

/// The byte offset where `line` first repeats a run of three words it said before, if it does.
/// Words are compared ignoring case and the punctuation around them.
fn loop_start(line: &str) -> Option<usize> {
    let words: Vec<(usize, String)> = line
        .split_whitespace()
        .map(|w| {
            let at = w.as_ptr() as usize - line.as_ptr() as usize;
            let bare: String = w
                .trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase();
            (at, bare)
        })
        .filter(|(_, w)| !w.is_empty())
        .collect();
    let mut seen = std::collections::HashSet::new();
    for (i, run) in words.windows(3).enumerate() {
        let key = (&run[0].1, &run[1].1, &run[2].1);
        if !seen.insert(key) {
            return Some(words[i].0);
        }
    }
    None
}

impl LineRules {
    /// Adds a banned word, for chaining.
    pub fn with_banned(mut self, word: impl Into<String>) -> Self {
        self.banned.push(word.into().to_lowercase());
        self
    }
}

impl LineFilter for LineRules {
    fn check(&self, line: &str) -> LineVerdict {
        let banned = line
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .any(|w| !w.is_empty() && self.banned.iter().any(|b| b.eq_ignore_ascii_case(w)));
        if banned {
            return LineVerdict::Reject;
        }
        let looped = self.no_loops.then(|| loop_start(line)).flatten();
        let long = line.char_indices().nth(self.max_chars).map(|(end, _)| {
            let head = &line[..end];
            head.rfind(' ').filter(|&i| i > 0).unwrap_or(end)
        });
        match (looped, long) {
            (None, None) => LineVerdict::Pass,
            (Some(at), long) => {
                let end = line[..at.min(long.unwrap_or(at))].trim_end().len();
                if end == 0 {
                    LineVerdict::Reject
                } else {
                    LineVerdict::Cut(end)
                }
            }
            (None, Some(cut)) => LineVerdict::Cut(cut),
        }
    }
}

/// The words of `text` as [`CopyCheck`] compares them: lowercase runs of letters and digits,
/// with apostrophes dropped (`Let's` is `lets`) and every other character a separator.
pub fn normalised_words(text: &str) -> Vec<String> {
    word_spans(text).into_iter().map(|(_, w)| w).collect()
}

/// [`normalised_words`] with the byte offset where each word starts in `text`.
fn word_spans(text: &str) -> Vec<(usize, String)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() {
            if word.is_empty() {
                start = i;
            }
            word.extend(c.to_lowercase());
        } else if c != '\'' && c != '\u{2019}' && !word.is_empty() {
            words.push((start, std::mem::take(&mut word)));
        }
    }
    if !word.is_empty() {
        words.push((start, word));
    }
    words
}

/// Tells a line that copies text it was shown from one written for the moment.
///
/// A small model asked for a line in a voice often returns the prompt instead: the worked
/// example's answer, the persona's sample line, a rule, or the player's own words. A line
/// *copies* a source when it shares a run of [`CopyCheck::min_run`] or more consecutive
/// [normalised words](normalised_words) with it: four by default, so a shared phrase like "on
/// my way" is not a copy but "on it, cover me" is. Fixed sources (a prompt's texts) are added
/// once; what the player said is checked per line ([`CopyCheck::is_copy_with`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyCheck {
    min_run: usize,
    runs: std::collections::HashSet<u64>,
}

impl Default for CopyCheck {
    fn default() -> Self {
        CopyCheck::new(CopyCheck::DEFAULT_RUN)
    }
}

impl CopyCheck {
    /// The run length that makes a copy unless a game chooses another.
    pub const DEFAULT_RUN: usize = 4;

    /// A check with no sources yet, judging runs of `min_run` words (at least 1).
    pub fn new(min_run: usize) -> Self {
        CopyCheck {
            min_run: min_run.max(1),
            runs: std::collections::HashSet::new(),
        }
    }

    /// The number of shared consecutive words that makes a copy.
    pub fn min_run(&self) -> usize {
        self.min_run
    }

    /// Adds a text lines must not copy.
    pub fn add_source(&mut self, text: &str) {
        let words = normalised_words(text);
        for run in words.windows(self.min_run) {
            self.runs.insert(run_key(run));
        }
    }

    /// Adds a source, for chaining.
    pub fn with_source(mut self, text: &str) -> Self {
        self.add_source(text);
        self
    }

    /// Whether no source is long enough to be copied.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The first run of `line` shared with a source, as normalised words joined by spaces;
    /// `None` if the line copies nothing.
    pub fn copied(&self, line: &str) -> Option<String> {
        normalised_words(line)
            .windows(self.min_run)
            .find(|run| self.runs.contains(&run_key(run)))
            .map(|run| run.join(" "))
    }

    /// Whether `line` copies a source.
    pub fn is_copy(&self, line: &str) -> bool {
        self.copied(line).is_some()
    }

    /// Whether `line` copies a source or shares a run with `also` (what the player just said),
    /// without keeping `also` as a source.
    pub fn is_copy_with(&self, line: &str, also: &str) -> bool {
        self.copy_at(line, &[also]).is_some()
    }

    /// The byte offset in `line` where its first run copied from a source or from one of `also`
    /// (texts for this line only: what the player said, the options shown) begins.
    pub fn copy_at(&self, line: &str, also: &[&str]) -> Option<usize> {
        self.copy_at_with(line, &self.for_line(also))
    }

    /// A check with this one's run length over `texts` alone: texts for one line (what the
    /// player said, the options shown), built once and used with [`CopyCheck::copy_at_with`].
    pub fn for_line(&self, texts: &[&str]) -> CopyCheck {
        let mut check = CopyCheck::new(self.min_run);
        for text in texts {
            check.add_source(text);
        }
        check
    }

    /// Like [`CopyCheck::copy_at`], with the line's own texts in `also` (a check of the same
    /// run length).
    pub fn copy_at_with(&self, line: &str, also: &CopyCheck) -> Option<usize> {
        let spans = word_spans(line);
        let words: Vec<String> = spans.iter().map(|(_, w)| w.clone()).collect();
        words
            .windows(self.min_run)
            .position(|run| {
                let key = run_key(run);
                self.runs.contains(&key) || also.runs.contains(&key)
            })
            .map(|i| spans[i].0)
    }

    /// The check as a [`LineVerdict`] on the text of a line so far: the line ends before its
    /// first copied run, or is rejected if that leaves nothing.
    pub fn verdict(&self, line: &str, also: &[&str]) -> LineVerdict {
        self.verdict_with(line, &self.for_line(also))
    }

    /// Like [`CopyCheck::verdict`], with the line's own texts already in a check
    /// ([`CopyCheck::for_line`]).
    pub fn verdict_with(&self, line: &str, also: &CopyCheck) -> LineVerdict {
        match self.copy_at_with(line, also) {
            None => LineVerdict::Pass,
            Some(at) => match line[..at].trim_end().len() {
                0 => LineVerdict::Reject,
                end => LineVerdict::Cut(end),
            },
        }
    }

    /// The check over every fixed text of `prompt`: the preamble, the rules, each worked
    /// example's situation and answer, and every persona's voice.
    pub fn from_prompt(prompt: &crate::prompt::PromptAsset) -> Self {
        let mut check = CopyCheck::default().with_source(&prompt.rules.preamble);
        for rule in &prompt.rules.rules {
            check.add_source(rule);
        }
        for (_, example) in &prompt.rules.examples {
            check.add_source(&example.situation);
            check.add_source(&example.answer);
        }
        for persona in &prompt.personas {
            check.add_source(&persona.voice);
        }
        check
    }
}

impl LineVerdict {
    /// The stricter of two verdicts: a rejection, else the shorter cut, else a pass.
    pub fn and(self, other: LineVerdict) -> LineVerdict {
        match (self, other) {
            (LineVerdict::Reject, _) | (_, LineVerdict::Reject) => LineVerdict::Reject,
            (LineVerdict::Cut(a), LineVerdict::Cut(b)) => LineVerdict::Cut(a.min(b)),
            (LineVerdict::Cut(n), LineVerdict::Pass) | (LineVerdict::Pass, LineVerdict::Cut(n)) => {
                LineVerdict::Cut(n)
            }
            (LineVerdict::Pass, LineVerdict::Pass) => LineVerdict::Pass,
        }
    }
}

fn run_key(run: &[String]) -> u64 {
    let mut h = crate::prompt::Fnv64::new();
    for word in run {
        h.write(word.as_bytes());
        h.write(&[0]);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_rules_cut_long_lines_at_a_word_and_reject_banned_words() {
        let rules = LineRules {
            max_chars: 12,
            banned: Vec::new(),
            no_loops: true,
        }
        .with_banned("Darn");
        assert_eq!(rules.check("hold the line"), LineVerdict::Cut(8));
        assert_eq!(rules.check("short one"), LineVerdict::Pass);
        assert_eq!(rules.check("oh darn it"), LineVerdict::Reject);
        assert_eq!(rules.check("darned if"), LineVerdict::Pass);
        let cut = LineRules {
            max_chars: 3,
            banned: Vec::new(),
            no_loops: false,
        };
        assert_eq!(cut.check("éééé"), LineVerdict::Cut("ééé".len()));
    }

    #[test]
    fn a_line_that_loops_ends_before_the_repeat() {
        let rules = LineRules::default();
        let line = "I'm going to take the ball. I'm going to take the ball.";
        assert_eq!(
            rules.check(line),
            LineVerdict::Cut("I'm going to take the ball.".len())
        );
        assert_eq!(rules.check("Let's go, let's go!"), LineVerdict::Pass);
        assert_eq!(
            rules.check("Copy. Contact front, moving."),
            LineVerdict::Pass
        );
        // The run "1 1 1" starts again at the second word.
        assert_eq!(rules.check("1. 1. 1. 1. 1."), LineVerdict::Cut("1.".len()));
        let off = LineRules {
            no_loops: false,
            ..LineRules::default()
        };
        assert_eq!(off.check(line), LineVerdict::Pass);
    }

    #[test]
    fn words_are_compared_without_case_punctuation_or_apostrophes() {
        assert_eq!(
            normalised_words("Let's GO, let\u{2019}s go! (5,5)"),
            ["lets", "go", "lets", "go", "5", "5"]
        );
        assert!(normalised_words(" ,.! ").is_empty());
    }

    #[test]
    fn a_line_copies_a_source_when_it_shares_four_words_in_a_row() {
        let check = CopyCheck::default()
            .with_source(r#"{"agent":3,"intent":1,"say":"On it. Cover me!"}"#)
            .with_source("You are rookie. Excited, talks fast. Your lines sound like:");
        assert_eq!(
            check.copied("on it -- COVER me, now"),
            Some("on it cover me".into())
        );
        assert!(check.is_copy("Excited, talks fast. Your lines"));
        // Three shared words are a phrase, not a copy; so are the same words out of order.
        assert!(!check.is_copy("On it, moving."));
        assert!(!check.is_copy("Cover me, on it!"));
        assert!(!check.is_copy(""));
        // The player's words count for one line without becoming a source.
        assert!(check.is_copy_with("Are you scared of them", "are you scared of them?"));
        assert!(!check.is_copy("Are you scared of them"));
        assert_eq!(CopyCheck::new(0).min_run(), 1);
    }

    #[test]
    fn the_verdict_ends_a_line_before_its_copied_run() {
        let check = CopyCheck::default().with_source("Copy. Contact front, moving.");
        assert_eq!(check.verdict("Roger that.", &[]), LineVerdict::Pass);
        assert_eq!(
            check.verdict("Roger. copy, contact front moving", &[]),
            LineVerdict::Cut("Roger.".len())
        );
        assert_eq!(
            check.verdict("Copy contact front, moving out", &[]),
            LineVerdict::Reject
        );
        let said = ["Are you scared of them?"];
        assert_eq!(
            check.verdict("Me? Are you scared of them", &said),
            LineVerdict::Cut("Me?".len())
        );
        assert_eq!(
            LineVerdict::Cut(3).and(LineVerdict::Cut(2)),
            LineVerdict::Cut(2)
        );
        assert_eq!(
            LineVerdict::Pass.and(LineVerdict::Reject),
            LineVerdict::Reject
        );
    }
}
