//! Lines by situation, with slots, picked by a seeded RNG and loaded from RON.
//!
//! A [`TemplateBook`] is the banter path (banter never waits for a model) and the speech fallback
//! for dialogue whose first words miss their deadline. Each situation (a string such as
//! [`situation::ALLY_DOWN`]) has a list of lines; a line may name slots such as `{enemy}` that the
//! game fills from a [`SlotSource`], usually [`Slots`]:
//!
//! ```
//! use hivemind_core::templates::{Slots, TemplateBook, situation};
//!
//! let book = TemplateBook::from_ron(
//!     r#"(
//!         situations: {
//!             "idle": ["Checking corners."],
//!             "ally_down": ["{ally} is down! Watch the flanks!"],
//!         },
//!         personas: {
//!             "veteran": { "ally_down": ["{ally}'s down. Hold position."] },
//!         },
//!     )"#,
//!     "example",
//! )?;
//! let slots = Slots::new().with("ally", "Vex");
//! let seed = 7; // derived by the caller from the agent id and the tick
//! assert_eq!(
//!     book.line(None, situation::ALLY_DOWN, &slots, seed)?,
//!     "Vex is down! Watch the flanks!",
//! );
//! assert_eq!(
//!     book.line(Some("veteran"), situation::ALLY_DOWN, &slots, seed)?,
//!     "Vex's down. Hold position.",
//! );
//! // A situation with no lines falls back to `idle`.
//! assert_eq!(book.line(None, situation::WIN_STREAK, &slots, seed)?, "Checking corners.");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The RON file
//!
//! ```ron
//! (
//!     max_chars: 80,                // optional: cut longer lines at a word boundary
//!     situations: {                 // shared by every persona; `idle` is required
//!         "idle": ["Checking corners.", "Stay sharp out there."],
//!         "win_streak": ["{enemy}, you might want to try a different loadout."],
//!     },
//!     personas: {                   // optional: a persona's own lines come first
//!         "veteran": { "win_streak": ["Steady. Don't get cocky, soldier."] },
//!     },
//! )
//! ```
//!
//! A slot is `{name}`, the name made of ASCII letters, digits and `_`; `{{` and `}}` stand for
//! literal braces. Loading rejects a `{` without its `}`, a `}` that closes nothing, an empty or
//! ill-named slot, an empty line and a book without `idle` lines, naming the persona, situation
//! and line at fault.
//!
//! # Choosing a line
//!
//! [`TemplateBook::line`] tries, in order and stopping at the first line whose slots all have
//! values:
//!
//! 1. the persona's own lines for the situation,
//! 2. the shared lines for the situation,
//! 3. the persona's own `idle` lines,
//! 4. the shared `idle` lines,
//!
//! and otherwise answers [`TemplateError::NoLine`]. Within each list the line is drawn at random,
//! uniformly among the lines whose slots can be filled.
//!
//! # Design
//!
//! Banter must answer within its 20 ms deadline on the main thread, and a dialogue fallback is
//! prepared for every queued job, so picking a line has to cost microseconds, not a parse. Lines
//! are therefore split into literal text and slot names once, at load time, and every syntax
//! error surfaces then, with the line named, rather than as a broken speech bubble in play.
//! Rendering is one pass that appends to a `String`; a line that meets a slot with no value is
//! rolled back by truncating the buffer, so a slot provider is asked only about lines actually
//! tried.
//!
//! Lines are drawn without replacement: the first draw usually fits, and if it does not, the
//! next draw comes from the lines not yet tried. The first line that fits in a random order is
//! uniformly distributed among the lines that fit, so lines needing an `{ally}` the agent does
//! not have do not skew which of the other lines is heard. The generator is rand's
//! [`Xoshiro256PlusPlus`], one of the generators rand documents as *portable* (unlike `StdRng`
//! and `SmallRng`, whose algorithms may change between releases), seeded per call with
//! `seed_from_u64`, and an index is reduced from its raw `u64` output with a fixed
//! multiply-shift rather than through rand's range sampling, whose algorithm is not promised to
//! stay put either. The same seed and inputs give the same line on every platform and run; a
//! pinned test guards that.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::config::{LoadError, load_with, parse_ron};

/// The situations hivemind itself knows. Games may name any others.
pub mod situation {
    /// The agent has won several exchanges in a row.
    pub const WIN_STREAK: &str = "win_streak";
    /// The agent has lost several exchanges in a row.
    pub const LOSS_STREAK: &str = "loss_streak";
    /// The agent is badly hurt.
    pub const LOW_HEALTH: &str = "low_health";
    /// A teammate has just been taken out.
    pub const ALLY_DOWN: &str = "ally_down";
    /// The score is tight.
    pub const CLOSE_FIGHT: &str = "close_fight";
    /// Nothing in particular: the catch-all every book must have, used for situations with no
    /// lines and when no line of a situation can be filled.
    pub const IDLE: &str = "idle";
    /// Meeting someone.
    pub const GREETING: &str = "greeting";
    /// The player spoke to the agent and the model did not answer in time.
    pub const PLAYER_TALK: &str = "player_talk";

    /// Every well-known situation.
    pub const ALL: [&str; 8] = [
        WIN_STREAK,
        LOSS_STREAK,
        LOW_HEALTH,
        ALLY_DOWN,
        CLOSE_FIGHT,
        IDLE,
        GREETING,
        PLAYER_TALK,
    ];
}

/// The slot names hivemind's examples use. Games may name any others.
pub mod slot {
    /// The enemy the line is about.
    pub const ENEMY: &str = "enemy";
    /// The teammate the line is about.
    pub const ALLY: &str = "ally";
    /// The speaker's own name.
    pub const SELF: &str = "self";
    /// The score, as the game wants it said.
    pub const SCORE: &str = "score";
}

/// Why [`TemplateBook::line`] found nothing to say.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Every line of the situation, and every `idle` line, needs a slot that has no value.
    #[error(
        "no template line for situation {situation:?}: every candidate, idle lines included, \
         needs a slot with no value"
    )]
    NoLine {
        /// The situation asked for.
        situation: String,
    },
}

/// Where slot values come from.
///
/// Implemented by [`Slots`] and by any `Fn(&str) -> Option<String>`, so a closure over game
/// state works too: `book.line(None, situation::IDLE, &|name: &str| ..., seed)`.
pub trait SlotSource {
    /// The value of slot `name`, or `None` if there is none, in which case the line is skipped.
    fn slot(&self, name: &str) -> Option<Cow<'_, str>>;
}

impl<F> SlotSource for F
where
    F: Fn(&str) -> Option<String> + ?Sized,
{
    fn slot(&self, name: &str) -> Option<Cow<'_, str>> {
        self(name).map(Cow::Owned)
    }
}

/// A small map from slot names to values: `Slots::new().with("enemy", "Vex")`.
///
/// A slot set to the empty string has a value (the empty one); only a slot that is absent makes
/// a line be skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slots {
    // A handful of entries: a linear scan beats hashing and keeps insertion order.
    entries: Vec<(String, String)>,
}

impl Slots {
    /// No slots.
    pub fn new() -> Self {
        Slots::default()
    }

    /// Sets slot `name` to `value`, replacing any earlier value, and returns the slots.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(name, value);
        self
    }

    /// Sets slot `name` to `value`, replacing any earlier value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        let (name, value) = (name.into(), value.into());
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((name, value)),
        }
        self
    }

    /// The value of slot `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every slot and its value, in the order they were first set.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The slots as owned pairs, the form a request message carries.
    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.entries
    }
}

impl SlotSource for Slots {
    fn slot(&self, name: &str) -> Option<Cow<'_, str>> {
        self.get(name).map(Cow::Borrowed)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Slots {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut slots = Slots::new();
        for (name, value) in iter {
            slots.insert(name, value);
        }
        slots
    }
}

/// Lines by situation, shared and per persona, ready to be picked from. See the
/// [module docs](self).
///
/// The default book is empty: every [`line`](TemplateBook::line) is a
/// [`TemplateError::NoLine`], and a game that relies on it says nothing when a model does not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateBook {
    /// Shared lines by situation. Never holds an empty list; holds `idle` unless the book is
    /// the empty default.
    shared: BTreeMap<String, Box<[Line]>>,
    /// Each persona's own lines by situation. Never holds an empty list.
    personas: BTreeMap<String, BTreeMap<String, Box<[Line]>>>,
    max_chars: Option<usize>,
}

/// The file as written, before its lines are parsed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BookFile {
    #[serde(default)]
    max_chars: Option<usize>,
    situations: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    personas: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

impl TemplateBook {
    /// Parses a book from RON text and checks every line. `origin` names the text in errors.
    pub fn from_ron(text: &str, origin: &str) -> Result<Self, LoadError> {
        let file: BookFile = parse_ron(text, origin)?;
        let invalid = |message: String| LoadError::Invalid {
            origin: origin.to_owned(),
            message,
        };

        let shared = parse_situations(file.situations, None).map_err(invalid)?;
        if !shared.contains_key(situation::IDLE) {
            return Err(invalid(format!(
                "situations has no {:?} lines; every book needs them as the catch-all",
                situation::IDLE
            )));
        }
        let mut personas = BTreeMap::new();
        for (persona, situations) in file.personas {
            if persona.trim().is_empty() {
                return Err(invalid("a persona has an empty name".to_owned()));
            }
            let situations = parse_situations(situations, Some(&persona)).map_err(invalid)?;
            personas.insert(persona, situations);
        }
        Ok(TemplateBook {
            shared,
            personas,
            max_chars: file.max_chars,
        })
    }

    /// Reads, parses and checks a book file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        load_with(path, Self::from_ron)
    }

    /// A line for `situation`, spoken by `persona`, with its slots filled from `slots`, chosen
    /// by `seed`. The same arguments always give the same line.
    ///
    /// See [Choosing a line](self#choosing-a-line) for the order in which lines are tried. The
    /// line is trimmed of surrounding whitespace and cut to [`max_chars`](Self::max_chars), if
    /// set, at a word boundary.
    pub fn line<S: SlotSource + ?Sized>(
        &self,
        persona: Option<&str>,
        situation: &str,
        slots: &S,
        seed: u64,
    ) -> Result<String, TemplateError> {
        let mut out = String::new();
        self.line_into(persona, situation, slots, seed, &mut out)?;
        Ok(out)
    }

    /// Like [`line`](Self::line), but appends the line to `out`, which is left as it was on
    /// error. Lets a caller reuse one buffer for many lines.
    pub fn line_into<S: SlotSource + ?Sized>(
        &self,
        persona: Option<&str>,
        situation: &str,
        slots: &S,
        seed: u64,
        out: &mut String,
    ) -> Result<(), TemplateError> {
        let own = persona.and_then(|p| self.personas.get(p));
        // Asked for idle itself, the idle tiers would only retry the same lists.
        let fall_back = situation != situation::IDLE;
        let tiers = [
            own.and_then(|o| o.get(situation)),
            self.shared.get(situation),
            own.and_then(|o| o.get(situation::IDLE))
                .filter(|_| fall_back),
            self.shared.get(situation::IDLE).filter(|_| fall_back),
        ];
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let start = out.len();
        for lines in tiers.into_iter().flatten() {
            if render_any(lines, slots, &mut rng, out) {
                finish(out, start, self.max_chars);
                return Ok(());
            }
        }
        Err(TemplateError::NoLine {
            situation: situation.to_owned(),
        })
    }

    /// The situations with shared lines, in sorted order. `idle` is always among them.
    pub fn situations(&self) -> impl Iterator<Item = &str> + '_ {
        self.shared.keys().map(String::as_str)
    }

    /// The personas with lines of their own, in sorted order.
    pub fn personas(&self) -> impl Iterator<Item = &str> + '_ {
        self.personas.keys().map(String::as_str)
    }

    /// The situations `persona` has lines of its own for, in sorted order; none for a persona
    /// the book does not know.
    pub fn persona_situations(&self, persona: &str) -> impl Iterator<Item = &str> + '_ {
        self.personas
            .get(persona)
            .into_iter()
            .flat_map(|s| s.keys().map(String::as_str))
    }

    /// The most characters a line may have, if limited.
    pub fn max_chars(&self) -> Option<usize> {
        self.max_chars
    }

    /// Limits lines to `max_chars` characters (or lifts the limit with `None`) and returns the
    /// book.
    pub fn with_max_chars(mut self, max_chars: Option<usize>) -> Self {
        self.max_chars = max_chars;
        self
    }

    /// Limits lines to `max_chars` characters, or lifts the limit with `None`.
    pub fn insert_max_chars(&mut self, max_chars: Option<usize>) -> &mut Self {
        self.max_chars = max_chars;
        self
    }
}

/// Cuts `text` to at most `max_chars` characters, at a word boundary where there is one.
///
/// The result is a prefix of `text` without trailing whitespace. When a cut was needed, it is
/// made after the last whole word that fits (a word ends at whitespace or at `,` `.` `!` `?`
/// `;` `:`), and a dangling `,` `;` `:` or dash is dropped; a single word longer than the limit
/// is cut mid-word. Counts `char`s, not bytes.
pub fn trim_to_chars(text: &str, max_chars: usize) -> &str {
    let Some((cut, _)) = text.char_indices().nth(max_chars) else {
        return text.trim_end();
    };
    let (head, tail) = text.split_at(cut);
    // Cutting before a space or a closing mark keeps the last word whole.
    let kept = if tail
        .starts_with(|c: char| c.is_whitespace() || matches!(c, ',' | '.' | '!' | '?' | ';' | ':'))
    {
        head
    } else {
        match head.rfind(char::is_whitespace) {
            Some(space) => &head[..space],
            None => return head,
        }
    };
    kept.trim_end_matches(|c: char| {
        c.is_whitespace() || matches!(c, ',' | ';' | ':' | '-' | '–' | '—')
    })
}

/// A piece of a parsed line.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// Text said as written (escaped braces already unescaped).
    Text(Box<str>),
    /// A slot, by name.
    Slot(Box<str>),
}

/// A line split into text and slots at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Line {
    segments: Box<[Segment]>,
    /// The bytes of text, to size the output buffer once.
    text_len: usize,
}

impl Line {
    /// Splits `text` into segments, or says what is wrong with it.
    fn parse(text: &str) -> Result<Line, String> {
        if text.trim().is_empty() {
            return Err("the line is empty".to_owned());
        }
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.next_if(|&(_, c)| c == '{').is_some() => literal.push('{'),
                '}' if chars.next_if(|&(_, c)| c == '}').is_some() => literal.push('}'),
                '}' => {
                    return Err(format!(
                        "`}}` at character {} closes no slot (write `}}}}` for a literal brace)",
                        char_position(text, at)
                    ));
                }
                '{' => {
                    let rest = &text[at + 1..];
                    let name = match rest.find(['{', '}']) {
                        Some(end) if rest[end..].starts_with('}') => &rest[..end],
                        _ => {
                            return Err(format!(
                                "`{{` at character {} has no closing `}}` (write `{{{{` for a \
                                 literal brace)",
                                char_position(text, at)
                            ));
                        }
                    };
                    if name.is_empty() {
                        return Err(format!(
                            "empty slot `{{}}` at character {}",
                            char_position(text, at)
                        ));
                    }
                    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!(
                            "slot `{{{name}}}` at character {}: slot names are ASCII letters, \
                             digits and `_`",
                            char_position(text, at)
                        ));
                    }
                    if !literal.is_empty() {
                        segments.push(Segment::Text(std::mem::take(&mut literal).into()));
                    }
                    segments.push(Segment::Slot(name.into()));
                    let closing = at + 1 + name.len();
                    while chars.next_if(|&(i, _)| i <= closing).is_some() {}
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Text(literal.into()));
        }
        let text_len = segments
            .iter()
            .map(|s| match s {
                Segment::Text(t) => t.len(),
                Segment::Slot(_) => 0,
            })
            .sum();
        Ok(Line {
            segments: segments.into(),
            text_len,
        })
    }

    /// Appends the line with its slots filled to `out` and returns true, or leaves `out` as it
    /// was and returns false if a slot has no value.
    fn render<S: SlotSource + ?Sized>(&self, slots: &S, out: &mut String) -> bool {
        let start = out.len();
        out.reserve(self.text_len + 16);
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => out.push_str(text),
                Segment::Slot(name) => match slots.slot(name) {
                    Some(value) => out.push_str(&value),
                    None => {
                        out.truncate(start);
                        return false;
                    }
                },
            }
        }
        true
    }
}

/// The 1-based character position of byte offset `at` in `text`, for error messages.
fn char_position(text: &str, at: usize) -> usize {
    text[..at].chars().count() + 1
}

/// Parses one `situation -> lines` map, dropping empty lists. Errors name the persona (if any),
/// the situation, the line's 1-based number and its text.
fn parse_situations(
    situations: BTreeMap<String, Vec<String>>,
    persona: Option<&str>,
) -> Result<BTreeMap<String, Box<[Line]>>, String> {
    let owner = persona
        .map(|p| format!("persona {p:?}, "))
        .unwrap_or_default();
    let mut parsed = BTreeMap::new();
    for (situation, texts) in situations {
        if situation.trim().is_empty() {
            return Err(format!("{owner}a situation has an empty name"));
        }
        let lines = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                Line::parse(text).map_err(|why| {
                    format!(
                        "{owner}situation {situation:?}, line {} {text:?}: {why}",
                        i + 1
                    )
                })
            })
            .collect::<Result<Box<[Line]>, String>>()?;
        if !lines.is_empty() {
            parsed.insert(situation, lines);
        }
    }
    Ok(parsed)
}

/// A uniform index below `n` from one draw: Lemire's multiply-shift, fixed here so that picks
/// do not depend on how a rand release samples ranges. Its bias, under `n / 2^64`, is nil for
/// lists of lines.
fn pick(rng: &mut Xoshiro256PlusPlus, n: usize) -> usize {
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

/// Renders a random line of `lines` whose slots all have values into `out`; false if none has.
fn render_any<S: SlotSource + ?Sized>(
    lines: &[Line],
    slots: &S,
    rng: &mut Xoshiro256PlusPlus,
    out: &mut String,
) -> bool {
    if lines.is_empty() {
        return false;
    }
    let first = pick(rng, lines.len());
    if lines[first].render(slots, out) {
        return true;
    }
    // The rare path: draw without replacement from the lines not yet tried.
    let mut untried: Vec<usize> = (0..lines.len()).filter(|&i| i != first).collect();
    while !untried.is_empty() {
        let i = untried.swap_remove(pick(rng, untried.len()));
        if lines[i].render(slots, out) {
            return true;
        }
    }
    false
}

/// Trims the line rendered at `out[start..]` of surrounding whitespace and cuts it to
/// `max_chars`, leaving `out[..start]` alone.
fn finish(out: &mut String, start: usize, max_chars: Option<usize>) {
    let body = &out[start..];
    let lead = body.len() - body.trim_start().len();
    let rest = &body[lead..];
    let kept = match max_chars {
        Some(max) => trim_to_chars(rest, max).len(),
        None => rest.trim_end().len(),
    };
    out.truncate(start + lead + kept);
    out.drain(start..start + lead);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::error::Error;

    use proptest::prelude::*;

    use super::*;

    /// Tests use `?` rather than `unwrap`, which the workspace lints forbid.
    type TestResult = Result<(), Box<dyn Error>>;

    const BOOK: &str = r#"(
        situations: {
            "idle": ["Checking corners.", "Quiet round so far."],
            "ally_down": ["{ally} is down!", "Lost {ally} to {enemy}.", "Regroup on me!"],
            "win_streak": ["On a roll.", "Keep 'em coming.", "Three in a row.",
                           "Somebody stop me.", "Scoreboard looks good.", "Too easy."],
            "taunt": ["Nice aim, {enemy}."],
        },
        personas: {
            "veteran": {
                "ally_down": ["{ally}'s down. Hold position."],
                "idle": ["Holding."],
            },
        },
    )"#;

    fn book() -> Result<TemplateBook, LoadError> {
        TemplateBook::from_ron(BOOK, "test.ron")
    }

    /// A valid book whose `taunt` situation's second line is `line`.
    fn book_with_taunt(line: &str) -> Result<TemplateBook, LoadError> {
        let text = format!(
            "(situations: {{ \"idle\": [\"Holding.\"], \"taunt\": [\"Nice aim.\", {line:?}] }})"
        );
        TemplateBook::from_ron(&text, "taunts.ron")
    }

    /// The error a load must fail with.
    fn load_error(loaded: Result<TemplateBook, LoadError>) -> LoadError {
        match loaded {
            Ok(book) => panic!("expected a load error, got {book:?}"),
            Err(err) => err,
        }
    }

    /// Every distinct line `seeds` give.
    fn lines_for(
        book: &TemplateBook,
        persona: Option<&str>,
        situation: &str,
        slots: &Slots,
        seeds: std::ops::Range<u64>,
    ) -> Result<BTreeSet<String>, TemplateError> {
        seeds
            .map(|seed| book.line(persona, situation, slots, seed))
            .collect()
    }

    fn set(lines: &[&str]) -> BTreeSet<String> {
        lines.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_line_and_seeds_reach_every_line() -> TestResult {
        let (book, slots) = (book()?, Slots::new());
        let mut seen = BTreeSet::new();
        for seed in 0..200 {
            let line = book.line(None, situation::WIN_STREAK, &slots, seed)?;
            assert_eq!(book.line(None, situation::WIN_STREAK, &slots, seed)?, line);
            seen.insert(line);
        }
        assert_eq!(seen.len(), 6, "{seen:?}");
        Ok(())
    }

    #[test]
    fn picks_are_pinned_so_every_platform_and_release_agrees() -> TestResult {
        let (book, slots) = (book()?, Slots::new());
        let picks = (0..8)
            .map(|seed| book.line(None, situation::WIN_STREAK, &slots, seed))
            .collect::<Result<Vec<_>, _>>()?;
        assert_eq!(
            picks,
            [
                "Keep 'em coming.",
                "Scoreboard looks good.",
                "Scoreboard looks good.",
                "On a roll.",
                "Scoreboard looks good.",
                "Keep 'em coming.",
                "Scoreboard looks good.",
                "On a roll.",
            ],
            "change the pins only when changing the generator on purpose"
        );
        Ok(())
    }

    #[test]
    fn slots_are_filled_from_slots_or_a_closure() -> TestResult {
        let book = book()?;
        let slots = Slots::new().with("ally", "Vex").with("enemy", "Kade");
        assert_eq!(
            lines_for(&book, None, situation::ALLY_DOWN, &slots, 0..100)?,
            set(&["Lost Vex to Kade.", "Regroup on me!", "Vex is down!"])
        );

        let by_closure = |name: &str| (name == "enemy").then(|| "Kade".to_owned());
        assert_eq!(book.line(None, "taunt", &by_closure, 3)?, "Nice aim, Kade.");
        let as_dyn: &dyn Fn(&str) -> Option<String> = &by_closure;
        assert_eq!(book.line(None, "taunt", as_dyn, 3)?, "Nice aim, Kade.");
        Ok(())
    }

    #[test]
    fn a_later_value_replaces_an_earlier_one() {
        let mut slots = Slots::new().with("enemy", "Vex");
        slots.insert("enemy", "Kade");
        assert_eq!(slots.get("enemy"), Some("Kade"));
        let collected: Slots = [("enemy", "Vex"), ("ally", "Rho")].into_iter().collect();
        assert_eq!(collected.get("ally"), Some("Rho"));
        assert_eq!(collected.get("self"), None);
    }

    #[test]
    fn a_line_with_a_missing_slot_is_skipped() -> TestResult {
        let book = book()?;
        let slots = Slots::new().with("ally", "Vex");
        assert_eq!(
            lines_for(&book, None, situation::ALLY_DOWN, &slots, 0..100)?,
            set(&["Regroup on me!", "Vex is down!"])
        );
        Ok(())
    }

    #[test]
    fn when_no_line_fits_idle_answers_and_then_nothing_does() -> TestResult {
        let book = book()?;
        assert_eq!(
            lines_for(&book, None, "taunt", &Slots::new(), 0..50)?,
            set(&["Checking corners.", "Quiet round so far."])
        );

        let picky = TemplateBook::from_ron(
            r#"(situations: { "idle": ["{self} is holding."], "taunt": ["Nice aim, {enemy}."] })"#,
            "picky.ron",
        )?;
        let err = picky.line(None, "taunt", &Slots::new(), 1);
        assert_eq!(
            err,
            Err(TemplateError::NoLine {
                situation: "taunt".into()
            })
        );
        if let Err(err) = err {
            assert!(err.to_string().contains("\"taunt\""), "{err}");
        }
        let slots = Slots::new().with("self", "Rho");
        assert_eq!(picky.line(None, "taunt", &slots, 1)?, "Rho is holding.");
        Ok(())
    }

    #[test]
    fn an_unknown_situation_falls_back_to_idle() -> TestResult {
        assert_eq!(
            lines_for(&book()?, None, "juggling", &Slots::new(), 0..50)?,
            set(&["Checking corners.", "Quiet round so far."])
        );
        Ok(())
    }

    #[test]
    fn a_personas_own_lines_come_first() -> TestResult {
        let book = book()?;
        let (ally, none) = (Slots::new().with("ally", "Vex"), Slots::new());
        let veteran = Some("veteran");
        let own = set(&["Vex's down. Hold position."]);
        assert_eq!(
            lines_for(&book, veteran, situation::ALLY_DOWN, &ally, 0..20)?,
            own
        );
        // Its only line needs an ally: the shared lines that fit answer instead.
        assert_eq!(
            lines_for(&book, veteran, situation::ALLY_DOWN, &none, 0..20)?,
            set(&["Regroup on me!"])
        );
        // Shared lines of the situation beat the persona's idle lines.
        let streak = lines_for(&book, veteran, situation::WIN_STREAK, &ally, 0..20)?;
        assert!(!streak.contains("Holding."), "{streak:?}");
        let holding = set(&["Holding."]);
        assert_eq!(
            lines_for(&book, veteran, "juggling", &ally, 0..20)?,
            holding
        );
        assert_eq!(
            lines_for(&book, veteran, situation::IDLE, &ally, 0..20)?,
            holding
        );
        // A persona without lines of its own speaks the shared ones.
        assert_eq!(
            lines_for(&book, Some("rookie"), situation::ALLY_DOWN, &ally, 0..50)?,
            set(&["Regroup on me!", "Vex is down!"])
        );

        assert_eq!(book.personas().collect::<Vec<_>>(), ["veteran"]);
        assert_eq!(
            book.persona_situations("veteran").collect::<Vec<_>>(),
            ["ally_down", "idle"]
        );
        assert_eq!(book.persona_situations("rookie").count(), 0);
        assert_eq!(
            book.situations().collect::<Vec<_>>(),
            ["ally_down", "idle", "taunt", "win_streak"]
        );
        Ok(())
    }

    #[test]
    fn malformed_lines_are_rejected_naming_the_situation_and_line() {
        let cases = [
            ("Nice aim, {enemy", "no closing `}`"),
            ("Nice aim, {ally{enemy}", "no closing `}`"),
            ("Nice aim, {}", "empty slot"),
            ("Nice } aim", "closes no slot"),
            ("Nice aim, {enemy name}", "slot names are"),
            ("Nice aim, {énemy}", "slot names are"),
            ("", "empty"),
            ("   ", "empty"),
        ];
        for (line, why) in cases {
            let err = load_error(book_with_taunt(line));
            assert!(matches!(err, LoadError::Invalid { .. }), "{line:?}: {err}");
            let message = err.to_string();
            let quoted = format!("{line:?}");
            for part in ["taunts.ron", "situation \"taunt\"", "line 2", &quoted, why] {
                assert!(
                    message.contains(part),
                    "{line:?}: {message:?} lacks {part:?}"
                );
            }
        }
        let err = load_error(book_with_taunt("Nice aim, {enemy")).to_string();
        assert!(err.contains("character 11"), "{err}");

        let err = load_error(TemplateBook::from_ron(
            r#"(situations: { "idle": ["Holding."] }, personas: { "rookie": { "greeting": ["Hi {"] } })"#,
            "p.ron",
        ))
        .to_string();
        assert!(
            err.contains("persona \"rookie\", situation \"greeting\", line 1"),
            "{err}"
        );
    }

    #[test]
    fn braces_can_be_written_by_doubling_them() -> TestResult {
        let book = book_with_taunt("{{{enemy}}} is {{it}}")?;
        let slots = Slots::new().with("enemy", "Vex");
        assert_eq!(
            lines_for(&book, None, "taunt", &slots, 0..30)?,
            set(&["Nice aim.", "{Vex} is {it}"])
        );
        Ok(())
    }

    #[test]
    fn a_book_without_idle_lines_is_rejected() {
        for text in [
            r#"(situations: { "taunt": ["Nice aim."] })"#,
            r#"(situations: { "idle": [], "taunt": ["Nice aim."] })"#,
            r#"(situations: {}, personas: { "veteran": { "idle": ["Holding."] } })"#,
        ] {
            let err = load_error(TemplateBook::from_ron(text, "t.ron"));
            assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
            assert!(err.to_string().contains("\"idle\""), "{err}");
        }
    }

    #[test]
    fn ron_errors_carry_the_line_and_unknown_fields_are_named() {
        let text = "(\n  situations: {\n    \"idle\": [\"Holding.\" \"Checking.\"],\n  },\n)";
        let err = load_error(TemplateBook::from_ron(text, "broken.ron"));
        let LoadError::Ron(ron) = &err else {
            panic!("expected a RON error, got {err}")
        };
        assert_eq!((ron.origin.as_str(), ron.line), ("broken.ron", 3));
        assert!(err.to_string().starts_with("broken.ron:3:"), "{err}");

        let err = load_error(TemplateBook::from_ron("(situatons: {})", "typo.ron"));
        assert!(err.to_string().contains("situatons"), "{err}");

        let err = load_error(TemplateBook::load(Path::new(
            "/no/such/arena.templates.ron",
        )));
        assert!(matches!(err, LoadError::Io { .. }), "{err}");
        assert!(
            err.to_string().contains("/no/such/arena.templates.ron"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_arena_book_answers_every_situation() -> TestResult {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../assets/dialogue/arena.templates.ron"
        );
        let book = TemplateBook::load(Path::new(path))?;
        let slots = Slots::new()
            .with(slot::ENEMY, "Vex")
            .with(slot::ALLY, "Rho")
            .with(slot::SELF, "Kade");
        let personas = [None, Some("veteran"), Some("rookie")];
        assert_eq!(
            book.personas().collect::<Vec<_>>(),
            ["joker", "medic", "preacher", "rookie", "sniper", "veteran"]
        );
        for situation in situation::ALL {
            assert!(book.shared[situation].len() >= 5, "{situation}");
            for persona in personas.iter().flatten() {
                assert!(
                    !book.personas[*persona][situation].is_empty(),
                    "{persona} {situation}"
                );
            }
            for persona in personas {
                let lines = lines_for(&book, persona, situation, &slots, 0..64)?;
                assert!(lines.len() >= 3, "{persona:?} {situation}: {lines:?}");
                for line in &lines {
                    assert!(!line.is_empty() && !line.contains(['{', '}']), "{line:?}");
                    assert!(line.chars().count() <= 80, "{line:?}");
                }
                // With no slots at all, lines without slots (idle ones at worst) still answer.
                lines_for(&book, persona, situation, &Slots::new(), 0..64)?;
            }
        }
        // Every slot the file uses is one the arena fills.
        let arena_slots = [slot::ENEMY, slot::ALLY, slot::SELF];
        let every_list = book
            .shared
            .values()
            .chain(book.personas.values().flat_map(|p| p.values()));
        for line in every_list.flat_map(|lines| lines.iter()) {
            for segment in &line.segments {
                if let Segment::Slot(name) = segment {
                    assert!(arena_slots.contains(&&**name), "unknown slot {name}");
                }
            }
        }
        let veteran = lines_for(&book, Some("veteran"), situation::IDLE, &slots, 0..20)?;
        assert!(
            veteran
                .iter()
                .any(|l| l.contains("soldier") || l.contains("Steady")),
            "{veteran:?}"
        );
        let rookie = lines_for(&book, Some("rookie"), situation::IDLE, &slots, 0..20)?;
        assert!(
            rookie
                .iter()
                .any(|l| l.contains("gonna") || l.contains("uh")),
            "{rookie:?}"
        );
        Ok(())
    }

    #[test]
    fn lines_are_cut_at_a_word_boundary() -> TestResult {
        let order = "Hold the line, soldier.";
        assert_eq!(trim_to_chars(order, 100), order);
        assert_eq!(trim_to_chars(order, 23), order);
        assert_eq!(trim_to_chars(order, 22), "Hold the line, soldier");
        assert_eq!(trim_to_chars(order, 21), "Hold the line");
        assert_eq!(trim_to_chars(order, 13), "Hold the line");
        assert_eq!(trim_to_chars(order, 12), "Hold the");
        assert_eq!(trim_to_chars("Unbelievable!", 6), "Unbeli");
        assert_eq!(trim_to_chars("Wow — wow", 5), "Wow");
        assert_eq!(trim_to_chars("Héé héé", 5), "Héé");
        assert_eq!(trim_to_chars("Holding.", 0), "");

        let book = book_with_taunt("Nice aim, {enemy}, really nice.")?.with_max_chars(Some(18));
        let slots = Slots::new().with("enemy", "Vex");
        assert_eq!(
            lines_for(&book, None, "taunt", &slots, 0..30)?,
            set(&["Nice aim.", "Nice aim, Vex"])
        );

        let mut book = TemplateBook::from_ron(
            r#"(max_chars: 12, situations: { "idle": ["Checking every corner twice."] })"#,
            "t.ron",
        )?;
        assert_eq!(book.max_chars(), Some(12));
        assert_eq!(book.line(None, situation::IDLE, &slots, 0)?, "Checking");
        book.insert_max_chars(None);
        assert_eq!(
            book.line(None, situation::IDLE, &slots, 0)?,
            "Checking every corner twice."
        );
        Ok(())
    }

    #[test]
    fn line_into_appends_and_trims_surrounding_whitespace() -> TestResult {
        let book = TemplateBook::from_ron(
            r#"(situations: { "idle": ["  Nice aim, {enemy}.  "] })"#,
            "t.ron",
        )?;
        let slots = Slots::new().with("enemy", "Vex");
        let mut out = String::from("Rho: ");
        book.line_into(None, situation::IDLE, &slots, 9, &mut out)?;
        assert_eq!(out, "Rho: Nice aim, Vex.");

        let mut out = String::from("Rho: ");
        assert!(
            book.line_into(None, "taunt", &Slots::new(), 0, &mut out)
                .is_err()
        );
        assert_eq!(out, "Rho: ");
        Ok(())
    }

    proptest! {
        #[test]
        fn any_text_and_limit_cut_to_a_prefix_within_the_limit(text in ".{0,60}", max in 0usize..70) {
            let cut = trim_to_chars(&text, max);
            prop_assert!(text.starts_with(cut));
            prop_assert!(cut.chars().count() <= max);
        }

        #[test]
        fn any_line_parses_or_errs_without_panicking(text in "[a-z {}_]{0,40}") {
            if let Ok(line) = Line::parse(&text) {
                let mut out = String::new();
                let everything = |name: &str| Some(name.to_uppercase());
                prop_assert!(line.render(&everything, &mut out));
                let escaped = text.contains("{{") || text.contains("}}");
                prop_assert!(escaped || !out.contains(['{', '}']), "{:?} gave {:?}", text, out);
            }
        }
    }
}
