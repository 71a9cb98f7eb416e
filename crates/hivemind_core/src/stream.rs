//! The incremental parser for model output.
//!
//! A backend feeds a [`StreamParser`] the bytes of each token as the model writes them, and the
//! parser reports a [`StreamEvent`] the moment something is complete: a free-plan step when its
//! closing brace arrives, a guided intent when its number ends, the words of a `say` string as
//! each space is written, and the end of an agent's answer. One sequence may hold the answers of
//! several agents, back to back or inside a top-level array.
//!
//! ```
//! use hivemind_core::plan::OutputFormat;
//! use hivemind_core::snapshot::AgentId;
//! use hivemind_core::stream::{StreamEvent, StreamParser};
//!
//! let mut parser = StreamParser::new(OutputFormat::Line);
//! let mut events = Vec::new();
//! parser.feed(br#"{"agent":3,"say":"Cover me"#, &mut events)?;
//! assert_eq!(events, [StreamEvent::Words { agent: AgentId(3), text: "Cover ".into() }]);
//! parser.feed(br#" now"}"#, &mut events)?;
//! parser.finish(&mut events)?;
//! assert_eq!(events.len(), 4); // "Cover ", "me ", "now", done
//! # Ok::<(), hivemind_core::stream::StreamError>(())
//! ```
//!
//! # Design
//!
//! The parser is two byte-at-a-time state machines. The first is a JSON lexer that knows only
//! syntax: its container stack is a bit set (nesting is capped at [`MAX_DEPTH`]), strings are
//! decoded as they arrive, escapes included, and numbers are accumulated into an integer with
//! an overflow flag. The second knows the shape of an answer: which container is the agent's
//! object, the steps array, a step or a point, and what the current key means. It turns the
//! lexer's tokens into events. Neither ever looks at a byte twice, and neither keeps state that
//! depends on where a chunk ended, so any split of the same text gives the same events, the same
//! error and the same error offset. That is the property the tests check most.
//!
//! Steps are built by the parser itself rather than handed to `serde_json` once they close:
//! arguments must keep the order the model wrote them in (a JSON map would sort them), text must
//! be decoded the same way as a `say` string (invalid UTF-8 and lone surrogates become U+FFFD
//! rather than an error), and a bad argument is reported at the byte that makes it bad.
//!
//! Model output is untrusted, so every buffer has a cap: the keys and text of one step, a `say`
//! string, a key, and the steps held back while an answer has not yet named its agent. Text the
//! parser does not need (the values of unknown keys) is checked for syntax and dropped, so an
//! arbitrarily long answer costs constant memory.

mod lexer;
mod shape;

use crate::plan::{OutputFormat, PlanStep};
use crate::snapshot::AgentId;

use lexer::{Lexer, State};
use shape::Shape;

/// The deepest nesting of arrays and objects accepted, counting a top-level array.
pub const MAX_DEPTH: usize = 32;

/// The longest `say` string accepted, in decoded bytes.
pub const MAX_SAY_BYTES: usize = 4096;

/// The most bytes of keys and text one step may hold.
pub const MAX_STEP_BYTES: usize = 4096;

/// The longest key accepted where the key matters (in an agent's object or a step), in bytes.
/// Longer keys in an agent's object are unknown keys and are skipped.
pub const MAX_KEY_BYTES: usize = 64;

/// The most steps held back while an answer has not yet named its agent.
pub const MAX_HELD_STEPS: usize = 64;

/// How many of the most recent bytes an error quotes.
const EXCERPT_BYTES: usize = 40;

/// The size of the ring of recent bytes that excerpts are cut from.
const RECENT_BYTES: usize = 64;

/// Something complete in the model's output, reported as soon as its last byte is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// A free-plan step is complete: its closing brace has been read.
    Step {
        /// The agent whose plan it belongs to.
        agent: AgentId,
        /// Its position in the agent's `steps`, from 0.
        index: usize,
        /// The step, arguments in the order the model wrote them.
        step: PlanStep,
    },
    /// A guided answer's intent number is complete.
    Intent {
        /// The agent that chose it.
        agent: AgentId,
        /// The intent, as numbered in the prompt.
        intent: u32,
    },
    /// Complete words of a `say` string: everything decoded since the previous `Words`, up to and
    /// including the white space that ended the last word. The last event of a string carries
    /// whatever follows the last white space. Concatenated, they are the decoded string.
    Words {
        /// The agent that says them.
        agent: AgentId,
        /// The words, with their trailing white space.
        text: String,
    },
    /// An agent's object closed and has every key its format requires.
    Done {
        /// The agent whose answer is complete.
        agent: AgentId,
    },
}

impl StreamEvent {
    /// The agent the event belongs to.
    pub fn agent(&self) -> AgentId {
        match self {
            StreamEvent::Step { agent, .. }
            | StreamEvent::Intent { agent, .. }
            | StreamEvent::Words { agent, .. }
            | StreamEvent::Done { agent } => *agent,
        }
    }
}

/// Why model output could not be parsed.
///
/// Every variant carries `offset`, the position in the whole stream of the byte at which the
/// problem was found (counting from 0 across all chunks), and `excerpt`, the text that led up
/// to it (at most about 40 bytes, starting with `…` when cut).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The bytes are not JSON, or not JSON where an answer is expected.
    #[error("syntax error at byte {offset} after {excerpt:?}: expected {expected}")]
    Syntax {
        /// Where the unexpected byte is.
        offset: usize,
        /// The text up to and including it.
        excerpt: String,
        /// What would have been valid there.
        expected: &'static str,
    },
    /// The output ended inside an answer (see [`StreamParser::finish`]).
    #[error("the output ended inside an answer at byte {offset}, after {excerpt:?}")]
    Truncated {
        /// The length of the whole output.
        offset: usize,
        /// Its last bytes.
        excerpt: String,
    },
    /// Arrays and objects are nested deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {limit} at byte {offset}, after {excerpt:?}")]
    TooDeep {
        /// Where the container that is one too deep opens.
        offset: usize,
        /// The text up to and including it.
        excerpt: String,
        /// The limit, [`MAX_DEPTH`].
        limit: usize,
    },
    /// A string, a step or a backlog of held steps grew past its cap.
    #[error("{what} exceeds its limit of {limit} at byte {offset}, after {excerpt:?}")]
    TooLong {
        /// Where the cap was passed.
        offset: usize,
        /// The text up to and including that byte.
        excerpt: String,
        /// What grew too long, with its unit.
        what: &'static str,
        /// The cap ([`MAX_SAY_BYTES`], [`MAX_STEP_BYTES`], [`MAX_KEY_BYTES`] or
        /// [`MAX_HELD_STEPS`]).
        limit: usize,
    },
    /// A key of an agent's object has a value of the wrong type or range, such as a negative
    /// agent id or a `say` that is not a string.
    #[error("`{key}` at byte {offset} is not {expected}: {excerpt:?}")]
    BadValue {
        /// Where the value (or the byte that shows it is wrong) is.
        offset: usize,
        /// The text up to and including that byte.
        excerpt: String,
        /// The key.
        key: &'static str,
        /// What its value must be.
        expected: &'static str,
    },
    /// A step cannot become a [`PlanStep`]: `act` is missing or not a string, or an argument is
    /// not an integer, a point `[x,y]` or a string.
    #[error("bad step at byte {offset} in {excerpt:?}: {reason}")]
    BadStep {
        /// Where the problem was found.
        offset: usize,
        /// The step so far, from its opening brace when it fits.
        excerpt: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key of an agent's object appears twice.
    #[error("`{key}` appears twice in one answer, the second time at byte {offset}: {excerpt:?}")]
    DuplicateKey {
        /// Where the second occurrence ends.
        offset: usize,
        /// The text up to and including it.
        excerpt: String,
        /// The key.
        key: String,
    },
    /// An agent's object closed without a key its format requires: `agent` (unless the parser
    /// was given one with [`StreamParser::with_agent`]), `steps` for a free plan, `intent` and
    /// `say` for a guided answer, `say` for a line.
    #[error("the answer{} closing at byte {offset} has no `{key}`: {excerpt:?}", agent_label(*.agent))]
    MissingKey {
        /// Where the object closes.
        offset: usize,
        /// The object, from its opening brace when it fits.
        excerpt: String,
        /// The agent the object is for, if it is known.
        agent: Option<AgentId>,
        /// The missing key.
        key: &'static str,
    },
    /// The output names a different agent than the one the parser was given with
    /// [`StreamParser::with_agent`].
    #[error(
        "expected an answer for agent {expected} but byte {offset} names agent {found}: {excerpt:?}"
    )]
    AgentMismatch {
        /// Where the agent id ends.
        offset: usize,
        /// The text up to and including that byte.
        excerpt: String,
        /// The agent the parser was given.
        expected: AgentId,
        /// The agent the output names.
        found: AgentId,
    },
}

fn agent_label(agent: Option<AgentId>) -> String {
    agent.map(|a| format!(" of agent {a}")).unwrap_or_default()
}

impl StreamError {
    /// The position in the stream at which the problem was found.
    pub fn offset(&self) -> usize {
        match self {
            StreamError::Syntax { offset, .. }
            | StreamError::Truncated { offset, .. }
            | StreamError::TooDeep { offset, .. }
            | StreamError::TooLong { offset, .. }
            | StreamError::BadValue { offset, .. }
            | StreamError::BadStep { offset, .. }
            | StreamError::DuplicateKey { offset, .. }
            | StreamError::MissingKey { offset, .. }
            | StreamError::AgentMismatch { offset, .. } => *offset,
        }
    }

    /// The text around the problem.
    pub fn excerpt(&self) -> &str {
        match self {
            StreamError::Syntax { excerpt, .. }
            | StreamError::Truncated { excerpt, .. }
            | StreamError::TooDeep { excerpt, .. }
            | StreamError::TooLong { excerpt, .. }
            | StreamError::BadValue { excerpt, .. }
            | StreamError::BadStep { excerpt, .. }
            | StreamError::DuplicateKey { excerpt, .. }
            | StreamError::MissingKey { excerpt, .. }
            | StreamError::AgentMismatch { excerpt, .. } => excerpt,
        }
    }
}

/// Reads model output incrementally and reports [`StreamEvent`]s as they complete.
///
/// Feed it chunks of any size, split anywhere (inside a number, an escape or a UTF-8 character):
/// the events and any error are the same as for the whole text at once. Each answer is a JSON
/// object in the parser's [`OutputFormat`]; answers may follow each other separated by white
/// space, or sit in one top-level array. Keys may come in any order, and keys the format does
/// not use are skipped. Events that need an agent id before the object has named one are held
/// back and reported, in order, the moment the id arrives.
///
/// The first error stops the parser: events reported before it stand, and every later call
/// returns the same error and reports nothing.
#[derive(Clone, Debug)]
pub struct StreamParser {
    lexer: Lexer,
    shape: Shape,
    recent: Recent,
    seen: usize,
    error: Option<StreamError>,
}

impl StreamParser {
    /// A parser for answers in `format`, each naming its own agent.
    pub fn new(format: OutputFormat) -> Self {
        StreamParser {
            lexer: Lexer::default(),
            shape: Shape::new(format),
            recent: Recent::default(),
            seen: 0,
            error: None,
        }
    }

    /// Sets the agent the output belongs to, for chaining; for a layout in which a sequence
    /// answers for one agent. Events are reported for `agent` without waiting for the `agent`
    /// key, an answer without the key counts as `agent`'s, and an answer naming another agent
    /// is a [`StreamError::AgentMismatch`].
    pub fn with_agent(mut self, agent: AgentId) -> Self {
        self.insert_agent(agent);
        self
    }

    /// Sets the highest intent a guided answer may name (its number of options; in an answer
    /// for several agents, the most any of them has), for chaining. An intent is then reported
    /// as soon as no further digit could keep it in range, a byte earlier than its end: with up
    /// to nine options, on its one digit. Digits that still follow are a fault.
    pub fn with_intent_bound(mut self, max: u32) -> Self {
        self.shape.intent_bound = Some(max);
        self
    }

    /// Lets a guided answer name its intent by label (`"intent":"heal"`): `labels` are each
    /// agent's options, in the prompt's order. A named intent is reported as its number there,
    /// from 1; a name that is not one of the agent's labels is a bad value. For chaining.
    pub fn with_intent_labels(
        mut self,
        labels: std::collections::HashMap<AgentId, Vec<String>>,
    ) -> Self {
        self.shape.intent_labels = Some(labels);
        self
    }

    /// Sets the agent the output belongs to, in place. See [`StreamParser::with_agent`].
    pub fn insert_agent(&mut self, agent: AgentId) -> &mut Self {
        self.shape.expected = Some(agent);
        self
    }

    /// The format the parser reads.
    pub fn format(&self) -> OutputFormat {
        self.shape.format
    }

    /// The agent given with [`StreamParser::with_agent`], if any.
    pub fn expected_agent(&self) -> Option<AgentId> {
        self.shape.expected
    }

    /// Reads the next chunk of output and appends the events it completes to `out`.
    ///
    /// # Errors
    ///
    /// The first problem in the output, with its offset in the whole stream. After an error,
    /// every call returns the same error and appends nothing.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        for &byte in chunk {
            let at = self.seen;
            self.seen += 1;
            self.recent.push(byte);
            if let Err(fault) = self.lexer.byte(byte, at, &mut self.shape, out) {
                let error = self.describe(fault, at);
                self.error = Some(error.clone());
                return Err(error);
            }
        }
        Ok(())
    }

    /// Ends the output. Nothing is left to report once the last answer has closed, so this
    /// appends nothing to `_out` today; it takes the list so that callers need not change if
    /// a format ever completes something only at the end.
    ///
    /// # Errors
    ///
    /// [`StreamError::Truncated`] if the output ended inside an answer or inside a top-level
    /// array; the error of an earlier call, if there was one. Ending with no output, or between
    /// answers, is fine.
    pub fn finish(&mut self, _out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        if self.lexer.state == State::Top {
            return Ok(());
        }
        let error = StreamError::Truncated {
            offset: self.seen,
            excerpt: self.recent.tail(),
        };
        self.error = Some(error.clone());
        Err(error)
    }

    /// How many bytes the parser has read, including the one that caused an error.
    pub fn bytes_seen(&self) -> usize {
        self.seen
    }

    /// The error that stopped the parser, if one did.
    pub fn error(&self) -> Option<&StreamError> {
        self.error.as_ref()
    }

    /// Whether the output so far ends between answers, so that ending it here is not a
    /// truncation. True before any output.
    pub fn is_between_answers(&self) -> bool {
        self.error.is_none() && self.lexer.state == State::Top
    }

    /// How many answers have closed and been reported with [`StreamEvent::Done`].
    pub fn answers_done(&self) -> usize {
        self.shape.answers_done
    }

    fn describe(&self, fault: Fault, offset: usize) -> StreamError {
        let excerpt = self.recent.tail();
        match fault {
            Fault::Syntax(expected) => StreamError::Syntax {
                offset,
                excerpt,
                expected,
            },
            Fault::TooDeep => StreamError::TooDeep {
                offset,
                excerpt,
                limit: MAX_DEPTH,
            },
            Fault::TooLong { what, limit } => StreamError::TooLong {
                offset,
                excerpt,
                what,
                limit,
            },
            Fault::BadValue { key, expected } => StreamError::BadValue {
                offset,
                excerpt,
                key,
                expected,
            },
            Fault::BadStep(reason) => StreamError::BadStep {
                offset,
                excerpt: self.recent.since(self.shape.step_start),
                reason,
            },
            Fault::DuplicateKey(key) => StreamError::DuplicateKey {
                offset,
                excerpt,
                key,
            },
            Fault::MissingKey { agent, key } => StreamError::MissingKey {
                offset,
                excerpt: self.recent.since(self.shape.object_start),
                agent,
                key,
            },
            Fault::AgentMismatch { expected, found } => StreamError::AgentMismatch {
                offset,
                excerpt,
                expected,
                found,
            },
        }
    }
}

/// A problem found while reading one byte; [`StreamParser::describe`] adds where and what text.
#[derive(Debug)]
enum Fault {
    Syntax(&'static str),
    TooDeep,
    TooLong {
        what: &'static str,
        limit: usize,
    },
    BadValue {
        key: &'static str,
        expected: &'static str,
    },
    BadStep(String),
    DuplicateKey(String),
    MissingKey {
        agent: Option<AgentId>,
        key: &'static str,
    },
    AgentMismatch {
        expected: AgentId,
        found: AgentId,
    },
}

/// The last [`RECENT_BYTES`] bytes of the stream, for error excerpts.
#[derive(Clone, Debug)]
struct Recent {
    bytes: [u8; RECENT_BYTES],
    end: usize,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            bytes: [0; RECENT_BYTES],
            end: 0,
        }
    }
}

impl Recent {
    fn push(&mut self, byte: u8) {
        self.bytes[self.end % RECENT_BYTES] = byte;
        self.end += 1;
    }

    /// The last bytes, at most [`EXCERPT_BYTES`] of them.
    fn tail(&self) -> String {
        self.since(0)
    }

    /// The bytes from offset `start` on, or the last [`EXCERPT_BYTES`] if that is fewer.
    fn since(&self, start: usize) -> String {
        let from = start.max(self.end.saturating_sub(EXCERPT_BYTES));
        let bytes: Vec<u8> = (from..self.end)
            .map(|i| self.bytes[i % RECENT_BYTES])
            .collect();
        if from == start {
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        // Cut at a character boundary, not in the middle of one.
        let skip = bytes.iter().take_while(|b| **b & 0xC0 == 0x80).count();
        let text = bytes.get(skip..).unwrap_or_default();
        format!("…{}", String::from_utf8_lossy(text))
    }
}

#[cfg(test)]
mod tests;
