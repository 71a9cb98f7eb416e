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

use std::mem;

use crate::plan::{ArgValue, OutputFormat, PlanStep};
use crate::snapshot::{AgentId, Point};

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

const AGENT_EXPECTED: &str = "an agent id (an integer from 0 to 4294967295)";
const INTENT_EXPECTED: &str = "an intent number (an integer from 0 to 4294967295)";
const ESCAPES: &str = r#"an escape (\" \\ \/ \b \f \n \r \t or \uXXXX)"#;
const ARG_SHAPES: &str = "an integer, a point [x,y] or a string";

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

/// What the lexer expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between top-level values: white space, `{` or `[`.
    Top,
    /// A value, after `:` or after `,` in an array.
    Value,
    /// A value or `]`, after `[`.
    ValueOrClose,
    /// A key or `}`, after `{`.
    KeyOrClose,
    /// A key, after `,` in an object.
    Key,
    /// The `:` after a key.
    Colon,
    /// `,` or the end of the container, after a value in it.
    CommaOrClose,
    /// Inside a string (a key if [`Lexer::key`]).
    Str,
    /// Inside a number.
    Num,
    /// Inside `true`, `false` or `null`.
    Lit,
}

/// Where the lexer is inside a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Escape {
    /// Plain text.
    None,
    /// Just after a backslash.
    Backslash,
    /// In the hex digits of `\uXXXX`: how many have been read, and their value so far.
    Hex { digits: u8, unit: u16 },
}

/// The kind of a value as it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Object,
    Array,
    String,
    Number,
    Literal,
}

/// A complete number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Number {
    /// An integer that fits an `i64`.
    Int(i64),
    /// An integer that does not.
    TooBig,
    /// A number with a fraction or an exponent.
    Fraction,
}

/// Where the lexer is inside a number, following the JSON grammar
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumState {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

#[derive(Clone, Copy, Debug)]
struct NumLexer {
    state: NumState,
    negative: bool,
    magnitude: u64,
    overflow: bool,
}

impl NumLexer {
    fn start(byte: u8) -> Self {
        let mut num = NumLexer {
            state: NumState::Minus,
            negative: byte == b'-',
            magnitude: 0,
            overflow: false,
        };
        if byte != b'-' {
            num.digit(byte);
        }
        num
    }

    fn digit(&mut self, byte: u8) {
        if self.state == NumState::Minus && byte == b'0' {
            self.state = NumState::Zero;
            return;
        }
        self.state = NumState::Int;
        match self
            .magnitude
            .checked_mul(10)
            .and_then(|m| m.checked_add(u64::from(byte - b'0')))
        {
            Some(m) => self.magnitude = m,
            None => self.overflow = true,
        }
    }

    /// Takes `byte` if it continues the number; `Ok(false)` if the number ended before it.
    fn accept(&mut self, byte: u8) -> Result<bool, Fault> {
        let digit = byte.is_ascii_digit();
        let exponent = byte == b'e' || byte == b'E';
        self.state = match self.state {
            NumState::Minus | NumState::Int if digit => {
                self.digit(byte);
                return Ok(true);
            }
            NumState::Minus => return Err(Fault::Syntax("a digit after `-`")),
            NumState::Zero if digit => {
                return Err(Fault::Syntax(
                    "`.`, an exponent or the end of the number after 0",
                ));
            }
            NumState::Zero | NumState::Int if byte == b'.' => NumState::Dot,
            NumState::Zero | NumState::Int | NumState::Frac if exponent => NumState::E,
            NumState::Dot | NumState::Frac if digit => NumState::Frac,
            NumState::Dot => return Err(Fault::Syntax("a digit after `.`")),
            NumState::E if byte == b'+' || byte == b'-' => NumState::ESign,
            NumState::E | NumState::ESign | NumState::Exp if digit => NumState::Exp,
            NumState::E | NumState::ESign => return Err(Fault::Syntax("a digit in the exponent")),
            NumState::Zero | NumState::Int | NumState::Frac | NumState::Exp => return Ok(false),
        };
        Ok(true)
    }

    fn value(&self) -> Number {
        if !matches!(self.state, NumState::Zero | NumState::Int) {
            return Number::Fraction;
        }
        if self.overflow {
            return Number::TooBig;
        }
        let magnitude = i128::from(self.magnitude);
        let signed = if self.negative { -magnitude } else { magnitude };
        i64::try_from(signed).map_or(Number::TooBig, Number::Int)
    }
}

/// The syntax layer: reads JSON a byte at a time and tells the [`Shape`] about each token.
#[derive(Clone, Debug)]
struct Lexer {
    state: State,
    /// One bit per open container, innermost at `depth - 1`: set for an object.
    containers: u64,
    depth: usize,
    /// Whether the current string is a key.
    key: bool,
    escape: Escape,
    /// A `\uD800`–`\uDBFF` escape waiting for its low half.
    high_surrogate: Option<u16>,
    num: NumLexer,
    literal: &'static [u8],
    literal_len: usize,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer {
            state: State::Top,
            containers: 0,
            depth: 0,
            key: false,
            escape: Escape::None,
            high_surrogate: None,
            num: NumLexer::start(b'0'),
            literal: b"",
            literal_len: 0,
        }
    }
}

fn is_json_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

impl Lexer {
    fn byte(
        &mut self,
        byte: u8,
        at: usize,
        shape: &mut Shape,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Fault> {
        match self.state {
            State::Str => return self.string_byte(byte, shape, out),
            State::Lit => return self.literal_byte(byte, shape),
            State::Num => {
                if self.num.accept(byte)? {
                    return Ok(());
                }
                // The byte after a number ends it and is then read as what follows the value.
                self.state = self.after_value();
                shape.number(self.num.value(), out)?;
            }
            _ => {}
        }
        if is_json_space(byte) {
            return Ok(());
        }
        match self.state {
            State::Top => match byte {
                b'{' | b'[' => self.start_value(byte, at, shape),
                _ => Err(Fault::Syntax(
                    "`{` to start an answer (or `[` around answers)",
                )),
            },
            State::ValueOrClose if byte == b']' => self.close(shape, out),
            State::Value | State::ValueOrClose => self.start_value(byte, at, shape),
            State::KeyOrClose | State::Key if byte == b'"' => {
                self.start_string(true);
                shape.key_start();
                Ok(())
            }
            State::KeyOrClose if byte == b'}' => self.close(shape, out),
            State::KeyOrClose => Err(Fault::Syntax("a key in double quotes or `}`")),
            State::Key => Err(Fault::Syntax("a key in double quotes")),
            State::Colon if byte == b':' => {
                self.state = State::Value;
                Ok(())
            }
            State::Colon => Err(Fault::Syntax("`:` after the key")),
            State::CommaOrClose => {
                let object = self.in_object();
                match byte {
                    b',' => {
                        self.state = if object { State::Key } else { State::Value };
                        Ok(())
                    }
                    b'}' if object => self.close(shape, out),
                    b']' if !object => self.close(shape, out),
                    _ if object => Err(Fault::Syntax("`,` or `}`")),
                    _ => Err(Fault::Syntax("`,` or `]`")),
                }
            }
            // Tokens were read above; a number that just ended has moved on to CommaOrClose.
            State::Str | State::Num | State::Lit => Ok(()),
        }
    }

    fn in_object(&self) -> bool {
        self.depth > 0 && (self.containers >> (self.depth - 1)) & 1 == 1
    }

    fn after_value(&self) -> State {
        if self.depth == 0 {
            State::Top
        } else {
            State::CommaOrClose
        }
    }

    fn start_value(&mut self, byte: u8, at: usize, shape: &mut Shape) -> Result<(), Fault> {
        match byte {
            b'{' | b'[' => {
                if self.depth >= MAX_DEPTH {
                    return Err(Fault::TooDeep);
                }
                let object = byte == b'{';
                shape.start(if object { Kind::Object } else { Kind::Array }, at)?;
                let bit = 1u64 << self.depth;
                if object {
                    self.containers |= bit;
                    self.state = State::KeyOrClose;
                } else {
                    self.containers &= !bit;
                    self.state = State::ValueOrClose;
                }
                self.depth += 1;
                Ok(())
            }
            b'"' => {
                shape.start(Kind::String, at)?;
                self.start_string(false);
                Ok(())
            }
            b'-' | b'0'..=b'9' => {
                shape.start(Kind::Number, at)?;
                self.num = NumLexer::start(byte);
                self.state = State::Num;
                Ok(())
            }
            b't' | b'f' | b'n' => {
                shape.start(Kind::Literal, at)?;
                self.literal = match byte {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                self.literal_len = 1;
                self.state = State::Lit;
                Ok(())
            }
            _ => Err(Fault::Syntax("a value")),
        }
    }

    fn close(&mut self, shape: &mut Shape, out: &mut Vec<StreamEvent>) -> Result<(), Fault> {
        self.depth -= 1;
        self.state = self.after_value();
        shape.end_container(out)
    }

    fn literal_byte(&mut self, byte: u8, shape: &mut Shape) -> Result<(), Fault> {
        if self.literal.get(self.literal_len) != Some(&byte) {
            return Err(Fault::Syntax("`true`, `false` or `null`"));
        }
        self.literal_len += 1;
        if self.literal_len == self.literal.len() {
            self.state = self.after_value();
            shape.literal_end();
        }
        Ok(())
    }

    fn start_string(&mut self, key: bool) {
        self.state = State::Str;
        self.key = key;
        self.escape = Escape::None;
        self.high_surrogate = None;
    }

    fn string_byte(
        &mut self,
        byte: u8,
        shape: &mut Shape,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Fault> {
        match self.escape {
            Escape::None => match byte {
                b'"' => {
                    self.flush_surrogate(shape, out)?;
                    if self.key {
                        self.state = State::Colon;
                        shape.key_end()
                    } else {
                        self.state = self.after_value();
                        shape.string_end(out)
                    }
                }
                b'\\' => {
                    self.escape = Escape::Backslash;
                    Ok(())
                }
                0x00..=0x1F => Err(Fault::Syntax("an escape instead of a control character")),
                _ => {
                    self.flush_surrogate(shape, out)?;
                    shape.string_byte(byte, out)
                }
            },
            Escape::Backslash => {
                let decoded = match byte {
                    b'"' | b'\\' | b'/' => byte,
                    b'b' => 0x08,
                    b'f' => 0x0C,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        self.escape = Escape::Hex { digits: 0, unit: 0 };
                        return Ok(());
                    }
                    _ => return Err(Fault::Syntax(ESCAPES)),
                };
                self.escape = Escape::None;
                self.flush_surrogate(shape, out)?;
                shape.string_byte(decoded, out)
            }
            Escape::Hex { digits, unit } => {
                let value = match byte {
                    b'0'..=b'9' => byte - b'0',
                    b'a'..=b'f' => byte - b'a' + 10,
                    b'A'..=b'F' => byte - b'A' + 10,
                    _ => return Err(Fault::Syntax("four hex digits after `\\u`")),
                };
                let unit = unit << 4 | u16::from(value);
                if digits < 3 {
                    self.escape = Escape::Hex {
                        digits: digits + 1,
                        unit,
                    };
                    return Ok(());
                }
                self.escape = Escape::None;
                self.utf16_unit(unit, shape, out)
            }
        }
    }

    /// Decodes one `\uXXXX`, pairing surrogates; a surrogate without its partner is U+FFFD.
    fn utf16_unit(
        &mut self,
        unit: u16,
        shape: &mut Shape,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Fault> {
        if let Some(high) = self.high_surrogate.take() {
            if (0xDC00..=0xDFFF).contains(&unit) {
                let code =
                    0x1_0000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(unit) - 0xDC00);
                return string_char(
                    char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER),
                    shape,
                    out,
                );
            }
            string_char(char::REPLACEMENT_CHARACTER, shape, out)?;
        }
        if (0xD800..=0xDBFF).contains(&unit) {
            self.high_surrogate = Some(unit);
            return Ok(());
        }
        let c = char::from_u32(u32::from(unit)).unwrap_or(char::REPLACEMENT_CHARACTER);
        string_char(c, shape, out)
    }

    /// A high surrogate followed by anything but a low one stands alone: U+FFFD.
    fn flush_surrogate(
        &mut self,
        shape: &mut Shape,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Fault> {
        if self.high_surrogate.take().is_some() {
            string_char(char::REPLACEMENT_CHARACTER, shape, out)?;
        }
        Ok(())
    }
}

fn string_char(c: char, shape: &mut Shape, out: &mut Vec<StreamEvent>) -> Result<(), Fault> {
    let mut buf = [0; 4];
    for &byte in c.encode_utf8(&mut buf).as_bytes() {
        shape.string_byte(byte, out)?;
    }
    Ok(())
}

/// Which container the shape layer is in. Each level's parent is fixed, so no stack is needed:
/// a point is in a step, a step in the steps array, that array in an agent's object, and the
/// object at the top level or in the top-level array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Top,
    Wrapper,
    Answer,
    Steps,
    Step,
    Point,
}

/// What the current key of an agent's object means in this format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AnswerKey {
    Agent,
    Steps,
    Intent,
    Say,
    Other,
}

impl AnswerKey {
    fn name(self) -> &'static str {
        match self {
            AnswerKey::Agent => "agent",
            AnswerKey::Steps => "steps",
            AnswerKey::Intent => "intent",
            AnswerKey::Say => "say",
            AnswerKey::Other => "",
        }
    }

    fn bit(self) -> u8 {
        match self {
            AnswerKey::Agent => 1,
            AnswerKey::Steps => 2,
            AnswerKey::Intent => 4,
            AnswerKey::Say => 8,
            AnswerKey::Other => 0,
        }
    }
}

/// What the current key of a step names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StepKey {
    Act,
    Arg(String),
}

/// Where the bytes of the current string go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    Discard,
    Key,
    Say,
    StepText,
}

/// An event waiting for its agent id.
#[derive(Clone, Debug)]
enum Held {
    Step { index: usize, step: PlanStep },
    Intent(u32),
    Words(String),
}

impl Held {
    fn into_event(self, agent: AgentId) -> StreamEvent {
        match self {
            Held::Step { index, step } => StreamEvent::Step { agent, index, step },
            Held::Intent(intent) => StreamEvent::Intent { agent, intent },
            Held::Words(text) => StreamEvent::Words { agent, text },
        }
    }
}

/// The decoded bytes of a `say` string that are not yet reported as words.
#[derive(Clone, Debug, Default)]
struct Words {
    pending: Vec<u8>,
    len: usize,
    /// Whether `pending` holds anything but white space.
    content: bool,
    /// Continuation bytes still due for the UTF-8 character that starts at `lead_at`.
    need: u8,
    lead_at: usize,
    content_before_lead: bool,
}

impl Words {
    fn start(&mut self) {
        self.pending.clear();
        self.len = 0;
        self.content = false;
        self.need = 0;
    }

    /// Adds one decoded byte; returns the words it completes, if it completes a white space
    /// character that follows a word.
    fn push(&mut self, byte: u8) -> Result<Option<String>, Fault> {
        self.len += 1;
        if self.len > MAX_SAY_BYTES {
            return Err(Fault::TooLong {
                what: "the `say` string, in bytes,",
                limit: MAX_SAY_BYTES,
            });
        }
        self.pending.push(byte);
        let space = match byte {
            0x00..=0x7F => {
                self.need = 0;
                char::from(byte).is_whitespace()
            }
            0x80..=0xBF if self.need > 0 => {
                self.need -= 1;
                if self.need > 0 {
                    return Ok(None);
                }
                let space = self
                    .pending
                    .get(self.lead_at..)
                    .and_then(|seq| std::str::from_utf8(seq).ok())
                    .and_then(|s| s.chars().next())
                    .is_some_and(char::is_whitespace);
                if space {
                    self.content = self.content_before_lead;
                }
                space
            }
            0x80..=0xBF => false,
            _ => {
                // A lead byte counts as content until its character turns out to be a space;
                // if the character never completes, it decodes to U+FFFD, which is content.
                self.need = match byte {
                    0xC2..=0xDF => 1,
                    0xE0..=0xEF => 2,
                    0xF0..=0xF4 => 3,
                    _ => 0,
                };
                self.lead_at = self.pending.len() - 1;
                self.content_before_lead = self.content;
                false
            }
        };
        if !space {
            self.content = true;
            return Ok(None);
        }
        if !self.content {
            return Ok(None);
        }
        self.content = false;
        Ok(Some(self.take()))
    }

    fn take(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// The shape layer: knows what an answer looks like and turns tokens into events.
#[derive(Clone, Debug)]
struct Shape {
    format: OutputFormat,
    expected: Option<AgentId>,
    level: Level,
    in_wrapper: bool,
    /// How deep the lexer is inside a value that is being skipped.
    skip: usize,
    sink: Sink,
    key: Vec<u8>,
    key_overflow: bool,
    answers_done: usize,

    // The current agent's object.
    object_start: usize,
    agent: Option<AgentId>,
    keys_seen: u8,
    answer_key: AnswerKey,
    steps_done: usize,
    held: Vec<Held>,
    held_steps: usize,
    words: Words,

    // The current step.
    step_start: usize,
    step_bytes: usize,
    verb: Option<String>,
    args: Vec<(String, ArgValue)>,
    step_key: StepKey,
    text: Vec<u8>,
    point: [i32; 2],
    point_len: usize,
}

impl Shape {
    fn new(format: OutputFormat) -> Self {
        Shape {
            format,
            expected: None,
            level: Level::Top,
            in_wrapper: false,
            skip: 0,
            sink: Sink::Discard,
            key: Vec::new(),
            key_overflow: false,
            answers_done: 0,
            object_start: 0,
            agent: None,
            keys_seen: 0,
            answer_key: AnswerKey::Other,
            steps_done: 0,
            held: Vec::new(),
            held_steps: 0,
            words: Words::default(),
            step_start: 0,
            step_bytes: 0,
            verb: None,
            args: Vec::new(),
            step_key: StepKey::Act,
            text: Vec::new(),
            point: [0; 2],
            point_len: 0,
        }
    }

    /// A value of `kind` starts at offset `at`.
    fn start(&mut self, kind: Kind, at: usize) -> Result<(), Fault> {
        self.sink = Sink::Discard;
        let container = matches!(kind, Kind::Object | Kind::Array);
        if self.skip > 0 {
            self.skip += usize::from(container);
            return Ok(());
        }
        match self.level {
            Level::Top | Level::Wrapper => match kind {
                Kind::Object => self.start_answer(at),
                Kind::Array if self.level == Level::Top => {
                    self.level = Level::Wrapper;
                    self.in_wrapper = true;
                }
                _ => return Err(Fault::Syntax("`{` to start an answer")),
            },
            Level::Answer => match (self.answer_key, kind) {
                (AnswerKey::Agent | AnswerKey::Intent, Kind::Number) => {}
                (AnswerKey::Agent, _) => {
                    return Err(Fault::BadValue {
                        key: "agent",
                        expected: AGENT_EXPECTED,
                    });
                }
                (AnswerKey::Intent, _) => {
                    return Err(Fault::BadValue {
                        key: "intent",
                        expected: INTENT_EXPECTED,
                    });
                }
                (AnswerKey::Say, Kind::String) => {
                    self.sink = Sink::Say;
                    self.words.start();
                }
                (AnswerKey::Say, _) => {
                    return Err(Fault::BadValue {
                        key: "say",
                        expected: "a string",
                    });
                }
                (AnswerKey::Steps, Kind::Array) => self.level = Level::Steps,
                (AnswerKey::Steps, _) => {
                    return Err(Fault::BadValue {
                        key: "steps",
                        expected: "an array of steps",
                    });
                }
                (AnswerKey::Other, _) => self.skip = usize::from(container),
            },
            Level::Steps if kind == Kind::Object => {
                self.level = Level::Step;
                self.step_start = at;
                self.step_bytes = 0;
                self.verb = None;
                self.args.clear();
            }
            Level::Steps => {
                self.step_start = at;
                return Err(Fault::BadStep(
                    "a step must be an object: {\"act\":...}".into(),
                ));
            }
            Level::Step => match (&self.step_key, kind) {
                (_, Kind::String) => {
                    self.sink = Sink::StepText;
                    self.text.clear();
                }
                (StepKey::Act, _) => return Err(Fault::BadStep("`act` must be a string".into())),
                (StepKey::Arg(_), Kind::Number) => {}
                (StepKey::Arg(_), Kind::Array) => {
                    self.level = Level::Point;
                    self.point_len = 0;
                }
                (StepKey::Arg(name), _) => {
                    return Err(Fault::BadStep(format!("`{name}` must be {ARG_SHAPES}")));
                }
            },
            Level::Point if kind == Kind::Number => {}
            Level::Point => return Err(point_fault()),
        }
        Ok(())
    }

    fn start_answer(&mut self, at: usize) {
        self.level = Level::Answer;
        self.object_start = at;
        self.agent = None;
        self.keys_seen = 0;
        self.answer_key = AnswerKey::Other;
        self.steps_done = 0;
        self.held.clear();
        self.held_steps = 0;
    }

    fn end_container(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), Fault> {
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(());
        }
        match self.level {
            Level::Point => {
                if self.point_len != 2 {
                    return Err(point_fault());
                }
                let point = Point::new(self.point[0], self.point[1]);
                self.push_arg(ArgValue::Point(point));
                self.level = Level::Step;
            }
            Level::Step => {
                let Some(verb) = self.verb.take() else {
                    return Err(Fault::BadStep("the step has no `act`".into()));
                };
                let step = PlanStep {
                    verb,
                    args: mem::take(&mut self.args),
                };
                let index = self.steps_done;
                self.steps_done += 1;
                self.level = Level::Steps;
                self.emit(Held::Step { index, step }, out)?;
            }
            Level::Steps => self.level = Level::Answer,
            Level::Answer => {
                self.level = if self.in_wrapper {
                    Level::Wrapper
                } else {
                    Level::Top
                };
                self.end_answer(out)?;
            }
            Level::Wrapper => {
                self.level = Level::Top;
                self.in_wrapper = false;
            }
            // The lexer never closes more containers than it opened.
            Level::Top => {}
        }
        Ok(())
    }

    fn end_answer(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), Fault> {
        let Some(agent) = self.agent.or(self.expected) else {
            return Err(Fault::MissingKey {
                agent: None,
                key: "agent",
            });
        };
        let required: &[AnswerKey] = match self.format {
            OutputFormat::FreePlan => &[AnswerKey::Steps],
            OutputFormat::Guided => &[AnswerKey::Intent, AnswerKey::Say],
            OutputFormat::Line => &[AnswerKey::Say],
        };
        if let Some(missing) = required.iter().find(|k| self.keys_seen & k.bit() == 0) {
            return Err(Fault::MissingKey {
                agent: Some(agent),
                key: missing.name(),
            });
        }
        self.answers_done += 1;
        out.push(StreamEvent::Done { agent });
        Ok(())
    }

    fn key_start(&mut self) {
        let wanted = self.skip == 0 && matches!(self.level, Level::Answer | Level::Step);
        self.sink = if wanted { Sink::Key } else { Sink::Discard };
        self.key.clear();
        self.key_overflow = false;
    }

    fn key_end(&mut self) -> Result<(), Fault> {
        if self.sink != Sink::Key {
            return Ok(());
        }
        self.sink = Sink::Discard;
        if self.level == Level::Step {
            return self.step_key_end();
        }
        let key = match (self.key.as_slice(), self.format) {
            _ if self.key_overflow => AnswerKey::Other,
            (b"agent", _) => AnswerKey::Agent,
            (b"steps", OutputFormat::FreePlan) => AnswerKey::Steps,
            (b"intent", OutputFormat::Guided) => AnswerKey::Intent,
            (b"say", OutputFormat::Guided | OutputFormat::Line) => AnswerKey::Say,
            _ => AnswerKey::Other,
        };
        if self.keys_seen & key.bit() != 0 {
            return Err(Fault::DuplicateKey(key.name().to_owned()));
        }
        self.keys_seen |= key.bit();
        self.answer_key = key;
        Ok(())
    }

    fn step_key_end(&mut self) -> Result<(), Fault> {
        if self.key_overflow {
            return Err(Fault::TooLong {
                what: "a key, in bytes,",
                limit: MAX_KEY_BYTES,
            });
        }
        if self.key == b"act" {
            if self.verb.is_some() {
                return Err(Fault::BadStep("`act` appears twice".into()));
            }
            self.step_key = StepKey::Act;
            return Ok(());
        }
        let name = String::from_utf8_lossy(&self.key).into_owned();
        if name.is_empty() {
            return Err(Fault::BadStep("an argument has an empty name".into()));
        }
        if self.args.iter().any(|(n, _)| *n == name) {
            return Err(Fault::BadStep(format!("argument `{name}` appears twice")));
        }
        // Each argument costs its name and a little bookkeeping against the step's cap.
        self.grow_step(name.len() + 16)?;
        self.step_key = StepKey::Arg(name);
        Ok(())
    }

    fn grow_step(&mut self, bytes: usize) -> Result<(), Fault> {
        self.step_bytes += bytes;
        if self.step_bytes > MAX_STEP_BYTES {
            return Err(Fault::TooLong {
                what: "a step's keys and text, in bytes,",
                limit: MAX_STEP_BYTES,
            });
        }
        Ok(())
    }

    fn string_byte(&mut self, byte: u8, out: &mut Vec<StreamEvent>) -> Result<(), Fault> {
        match self.sink {
            Sink::Discard => Ok(()),
            Sink::Key => {
                if self.key.len() < MAX_KEY_BYTES {
                    self.key.push(byte);
                } else {
                    self.key_overflow = true;
                }
                Ok(())
            }
            Sink::Say => match self.words.push(byte)? {
                Some(text) => self.emit(Held::Words(text), out),
                None => Ok(()),
            },
            Sink::StepText => {
                self.grow_step(1)?;
                self.text.push(byte);
                Ok(())
            }
        }
    }

    fn string_end(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), Fault> {
        let sink = mem::replace(&mut self.sink, Sink::Discard);
        match sink {
            Sink::Say if !self.words.pending.is_empty() => {
                let text = self.words.take();
                self.emit(Held::Words(text), out)
            }
            Sink::StepText => {
                let text = String::from_utf8_lossy(&self.text).into_owned();
                if self.step_key == StepKey::Act {
                    self.verb = Some(text);
                } else {
                    self.push_arg(ArgValue::Text(text));
                }
                Ok(())
            }
            Sink::Say | Sink::Discard | Sink::Key => Ok(()),
        }
    }

    fn number(&mut self, number: Number, out: &mut Vec<StreamEvent>) -> Result<(), Fault> {
        if self.skip > 0 {
            return Ok(());
        }
        match self.level {
            Level::Answer => match self.answer_key {
                AnswerKey::Agent => self.agent_id(number, out),
                AnswerKey::Intent => match number {
                    Number::Int(n) => match u32::try_from(n) {
                        Ok(intent) => self.emit(Held::Intent(intent), out),
                        Err(_) => Err(Fault::BadValue {
                            key: "intent",
                            expected: INTENT_EXPECTED,
                        }),
                    },
                    Number::TooBig | Number::Fraction => Err(Fault::BadValue {
                        key: "intent",
                        expected: INTENT_EXPECTED,
                    }),
                },
                AnswerKey::Steps | AnswerKey::Say | AnswerKey::Other => Ok(()),
            },
            Level::Step => {
                let name = match &self.step_key {
                    StepKey::Arg(name) => name,
                    StepKey::Act => return Err(Fault::BadStep("`act` must be a string".into())),
                };
                match number {
                    Number::Int(n) => {
                        self.push_arg(ArgValue::Int(n));
                        Ok(())
                    }
                    Number::TooBig => Err(Fault::BadStep(format!("`{name}` is out of range"))),
                    Number::Fraction => Err(Fault::BadStep(format!(
                        "`{name}` must be {ARG_SHAPES}, not a fraction"
                    ))),
                }
            }
            Level::Point => {
                let coordinate = match number {
                    Number::Int(n) => i32::try_from(n).ok(),
                    Number::TooBig | Number::Fraction => None,
                };
                match (coordinate, self.point.get_mut(self.point_len)) {
                    (Some(c), Some(slot)) => {
                        *slot = c;
                        self.point_len += 1;
                        Ok(())
                    }
                    _ => Err(point_fault()),
                }
            }
            // Numbers elsewhere were rejected when they started.
            Level::Top | Level::Wrapper | Level::Steps => Ok(()),
        }
    }

    /// `true`, `false` or `null` ended; they were rejected when they started unless skipped.
    fn literal_end(&mut self) {
        self.sink = Sink::Discard;
    }

    fn agent_id(&mut self, number: Number, out: &mut Vec<StreamEvent>) -> Result<(), Fault> {
        let id = match number {
            Number::Int(n) => u32::try_from(n).ok(),
            Number::TooBig | Number::Fraction => None,
        };
        let Some(id) = id else {
            return Err(Fault::BadValue {
                key: "agent",
                expected: AGENT_EXPECTED,
            });
        };
        let found = AgentId(id);
        if let Some(expected) = self.expected
            && expected != found
        {
            return Err(Fault::AgentMismatch { expected, found });
        }
        self.agent = Some(found);
        out.extend(self.held.drain(..).map(|held| held.into_event(found)));
        Ok(())
    }

    fn push_arg(&mut self, value: ArgValue) {
        if let StepKey::Arg(name) = mem::replace(&mut self.step_key, StepKey::Act) {
            self.args.push((name, value));
        }
    }

    fn emit(&mut self, held: Held, out: &mut Vec<StreamEvent>) -> Result<(), Fault> {
        if let Some(agent) = self.agent.or(self.expected) {
            out.push(held.into_event(agent));
            return Ok(());
        }
        if matches!(held, Held::Step { .. }) {
            self.held_steps += 1;
            if self.held_steps > MAX_HELD_STEPS {
                return Err(Fault::TooLong {
                    what: "the steps held until the agent id arrives",
                    limit: MAX_HELD_STEPS,
                });
            }
        }
        self.held.push(held);
        Ok(())
    }
}

fn point_fault() -> Fault {
    Fault::BadStep("a point must be two integers that fit 32 bits: [x,y]".into())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::sample::{Index, select, subsequence};

    use super::*;
    use crate::plan::{Plan, PlanSource};

    /// Feeds `chunks` in order, then finishes; stops at the first error.
    fn run<'a>(
        format: OutputFormat,
        agent: Option<AgentId>,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> (Vec<StreamEvent>, Result<(), StreamError>) {
        let mut parser = StreamParser::new(format);
        if let Some(agent) = agent {
            parser.insert_agent(agent);
        }
        let mut events = Vec::new();
        for chunk in chunks {
            if let Err(error) = parser.feed(chunk, &mut events) {
                return (events, Err(error));
            }
        }
        let result = parser.finish(&mut events);
        (events, result)
    }

    fn parse(format: OutputFormat, text: &str) -> (Vec<StreamEvent>, Result<(), StreamError>) {
        run(format, None, [text.as_bytes()])
    }

    /// Feeds one byte at a time.
    fn parse_bytewise(
        format: OutputFormat,
        text: &[u8],
    ) -> (Vec<StreamEvent>, Result<(), StreamError>) {
        run(format, None, text.chunks(1))
    }

    fn step(agent: u32, index: usize, step: PlanStep) -> StreamEvent {
        StreamEvent::Step {
            agent: AgentId(agent),
            index,
            step,
        }
    }

    fn words(agent: u32, text: &str) -> StreamEvent {
        StreamEvent::Words {
            agent: AgentId(agent),
            text: text.to_owned(),
        }
    }

    fn intent(agent: u32, intent: u32) -> StreamEvent {
        StreamEvent::Intent {
            agent: AgentId(agent),
            intent,
        }
    }

    fn done(agent: u32) -> StreamEvent {
        StreamEvent::Done {
            agent: AgentId(agent),
        }
    }

    fn move_to(x: i32, y: i32) -> PlanStep {
        PlanStep::new("MoveTo").with_arg("to", ArgValue::Point(Point::new(x, y)))
    }

    fn attack(target: i64) -> PlanStep {
        PlanStep::new("Attack").with_arg("target", ArgValue::Int(target))
    }

    fn say(text: &str) -> PlanStep {
        PlanStep::new("Say").with_arg("text", ArgValue::Text(text.to_owned()))
    }

    /// The error, or a panic naming what came back instead.
    fn error_of(result: (Vec<StreamEvent>, Result<(), StreamError>)) -> StreamError {
        match result.1 {
            Err(error) => error,
            Ok(()) => panic!("expected an error, got events {:?}", result.0),
        }
    }

    const FLANKING_PLAN: &str = r#"{"agent":3,"steps":[{"act":"MoveTo","to":[4,5]},{"act":"Attack","target":7},{"act":"Say","text":"hi"}]}"#;

    #[test]
    fn a_free_plan_reports_each_step_the_moment_its_brace_arrives() {
        let mut parser = StreamParser::new(OutputFormat::FreePlan);
        let mut events = Vec::new();
        let first_step_end = FLANKING_PLAN.find("]}").map(|i| i + 2).unwrap_or_default();
        let (head, tail) = FLANKING_PLAN.as_bytes().split_at(first_step_end - 1);
        assert_eq!(parser.feed(head, &mut events), Ok(()));
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(parser.feed(&tail[..1], &mut events), Ok(()));
        assert_eq!(events, [step(3, 0, move_to(4, 5))]);
        assert_eq!(parser.feed(&tail[1..], &mut events), Ok(()));
        assert_eq!(parser.finish(&mut events), Ok(()));
        assert_eq!(
            events,
            [
                step(3, 0, move_to(4, 5)),
                step(3, 1, attack(7)),
                step(3, 2, say("hi")),
                done(3)
            ]
        );
        assert_eq!(parser.bytes_seen(), FLANKING_PLAN.len());
        assert_eq!(parser.answers_done(), 1);
        assert!(parser.is_between_answers());
    }

    #[test]
    fn plan_to_json_parses_back_into_its_steps() {
        let steps = vec![move_to(-2, 9), PlanStep::new("Reload"), say("say \"hi\"\n")];
        let plan = Plan::new(AgentId(11), steps.clone(), PlanSource::Goap);
        let (events, result) = parse(OutputFormat::FreePlan, &plan.to_json());
        assert_eq!(result, Ok(()));
        let mut expected: Vec<_> = steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| step(11, i, s))
            .collect();
        expected.push(done(11));
        assert_eq!(events, expected);
    }

    #[test]
    fn a_guided_answer_reports_its_intent_then_its_words() {
        let (events, result) = parse_bytewise(
            OutputFormat::Guided,
            br#"{"agent":3,"intent":2,"say":"Cover me!"}"#,
        );
        assert_eq!(result, Ok(()));
        assert_eq!(
            events,
            [intent(3, 2), words(3, "Cover "), words(3, "me!"), done(3)]
        );
    }

    #[test]
    fn a_line_is_reported_word_by_word_however_it_is_chunked() {
        let text = br#"{"agent":3,"say":"Cover me now"}"#;
        let expected = [
            words(3, "Cover "),
            words(3, "me "),
            words(3, "now"),
            done(3),
        ];
        assert_eq!(
            parse_bytewise(OutputFormat::Line, text),
            (expected.to_vec(), Ok(()))
        );
        let (events, result) = run(OutputFormat::Line, None, [&text[..]]);
        assert_eq!((events, result), (expected.to_vec(), Ok(())));
    }

    #[test]
    fn words_carry_their_trailing_white_space_and_rejoin_to_the_line() {
        let cases: &[(&str, &[&str])] = &[
            ("Nice shot.", &["Nice ", "shot."]),
            ("  two  spaces ", &["  two ", " spaces ", ""]),
            (
                "tab\\there\\nnew line",
                &["tab\t", "here\n", "new ", "line"],
            ),
            (" ", &[" "]),
            ("", &[]),
            (
                "wide\u{3000}space and\u{a0}nbsp",
                &["wide\u{3000}", "space ", "and\u{a0}", "nbsp"],
            ),
        ];
        for (say, expected) in cases {
            let text = format!(r#"{{"agent":1,"say":"{say}"}}"#);
            let (events, result) = parse_bytewise(OutputFormat::Line, text.as_bytes());
            assert_eq!(result, Ok(()), "{text}");
            let mut want: Vec<_> = expected
                .iter()
                .filter(|w| !w.is_empty())
                .map(|w| words(1, w))
                .collect();
            want.push(done(1));
            assert_eq!(events, want, "{text}");
        }
    }

    #[test]
    fn answers_back_to_back_are_reported_in_order() {
        let text = "{\"agent\":1,\"say\":\"Go left.\"}\n{\"agent\":2,\"say\":\"Right.\"}\n\n";
        let (events, result) = parse(OutputFormat::Line, text);
        assert_eq!(result, Ok(()));
        assert_eq!(
            events,
            [
                words(1, "Go "),
                words(1, "left."),
                done(1),
                words(2, "Right."),
                done(2)
            ]
        );
        // Without any separator, too.
        let (events, result) = parse(OutputFormat::Line, &text.replace('\n', ""));
        assert_eq!(result, Ok(()));
        assert_eq!(events.len(), 5);
    }

    #[test]
    fn answers_inside_a_top_level_array_are_reported_in_order() {
        let text =
            r#"[{"agent":1,"intent":4,"say":"On it."} , {"agent":2,"intent":1,"say":"Covering."}]"#;
        let (events, result) = parse(OutputFormat::Guided, text);
        assert_eq!(result, Ok(()));
        assert_eq!(
            events,
            [
                intent(1, 4),
                words(1, "On "),
                words(1, "it."),
                done(1),
                intent(2, 1),
                words(2, "Covering."),
                done(2)
            ]
        );
        // An unclosed array is a truncated answer even between objects.
        let (_, result) = parse(OutputFormat::Guided, &text[..text.len() - 1]);
        assert!(
            matches!(result, Err(StreamError::Truncated { .. })),
            "{result:?}"
        );
        // A missing comma is a syntax error.
        let (_, result) = parse(OutputFormat::Guided, &text.replace(" , ", " "));
        assert!(
            matches!(result, Err(StreamError::Syntax { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn pretty_printed_answers_parse_like_compact_ones() {
        let pretty = "\r\n {\n  \"agent\" : 3 ,\n  \"steps\" : [\n    { \"act\" : \"MoveTo\" , \
                      \"to\" : [ 4 , 5 ] } ,\n\t{\"act\":\"Attack\",\"target\":7 },\
                      {\"act\":\"Say\",\"text\":\"hi\"}\n  ]\n}\n";
        assert_eq!(
            parse(OutputFormat::FreePlan, pretty),
            parse(OutputFormat::FreePlan, FLANKING_PLAN)
        );
    }

    #[test]
    fn escapes_are_decoded_even_when_split_across_chunks() {
        let text = r#"{"agent":5,"say":"\"Hold\" \\ \/ \n\t\u00e9\u00E9 \ud83d\ude00 \ud83d! \ude00? \ud83d\u0041"}"#;
        let decoded = "\"Hold\" \\ / \n\té\u{e9} \u{1f600} \u{fffd}! \u{fffd}? \u{fffd}A";
        let (events, result) = parse_bytewise(OutputFormat::Line, text.as_bytes());
        assert_eq!(result, Ok(()));
        let line: String = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Words { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(line, decoded);
        assert_eq!(events.first(), Some(&words(5, "\"Hold\" ")));
        assert_eq!(parse(OutputFormat::Line, text), (events, Ok(())));
    }

    #[test]
    fn escaped_keys_are_decoded_too() {
        let (events, result) = parse(OutputFormat::Line, r#"{"\u0061gent":4,"s\u0061y":"ok"}"#);
        assert_eq!(result, Ok(()));
        assert_eq!(events, [words(4, "ok"), done(4)]);
    }

    #[test]
    fn invalid_utf8_in_a_string_is_replaced_not_rejected() {
        let mut text = br#"{"agent":1,"steps":[{"act":"Say","text":"caf"#.to_vec();
        text.extend_from_slice(b"\xc3 \xff\"}]}");
        let (events, result) = parse_bytewise(OutputFormat::FreePlan, &text);
        assert_eq!(result, Ok(()));
        assert_eq!(events, [step(1, 0, say("caf\u{fffd} \u{fffd}")), done(1)]);

        let mut line = br#"{"agent":1,"say":"bad"#.to_vec();
        line.extend_from_slice(b"\xe2\x80 byte\xf0\x9f\x98\x80 \"}");
        let (events, result) = parse_bytewise(OutputFormat::Line, &line);
        assert_eq!(result, Ok(()));
        assert_eq!(
            events,
            [
                words(1, "bad\u{fffd} "),
                words(1, "byte\u{1f600} "),
                done(1)
            ]
        );
    }

    #[test]
    fn events_wait_for_an_agent_id_that_comes_last() {
        let text = r#"{"steps":[{"act":"Attack","target":7},{"act":"Reload"}],"agent":9}"#;
        let mut parser = StreamParser::new(OutputFormat::FreePlan);
        let mut events = Vec::new();
        let before_id = text.len() - 2;
        assert_eq!(
            parser.feed(&text.as_bytes()[..before_id], &mut events),
            Ok(())
        );
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(
            parser.feed(&text.as_bytes()[before_id..], &mut events),
            Ok(())
        );
        assert_eq!(
            events,
            [
                step(9, 0, attack(7)),
                step(9, 1, PlanStep::new("Reload")),
                done(9)
            ]
        );

        let (events, result) = parse(
            OutputFormat::Guided,
            r#"{"say":"Now!","intent":3,"agent":2}"#,
        );
        assert_eq!(result, Ok(()));
        assert_eq!(events, [words(2, "Now!"), intent(2, 3), done(2)]);
    }

    #[test]
    fn with_agent_reports_at_once_and_rejects_another_agent() {
        let text = br#"{"say":"Moving up.","agent":4}"#;
        let mut parser = StreamParser::new(OutputFormat::Line).with_agent(AgentId(4));
        let mut events = Vec::new();
        assert_eq!(parser.feed(&text[..15], &mut events), Ok(()));
        assert_eq!(events, [words(4, "Moving ")]);
        assert_eq!(parser.expected_agent(), Some(AgentId(4)));

        let (events, result) = run(OutputFormat::Line, Some(AgentId(5)), [&text[..]]);
        assert_eq!(events, [words(5, "Moving "), words(5, "up.")]);
        let Err(error) = result else {
            panic!("a mismatched agent must fail");
        };
        assert_eq!(
            error,
            StreamError::AgentMismatch {
                offset: text.len() - 1,
                excerpt: r#"{"say":"Moving up.","agent":4}"#.into(),
                expected: AgentId(5),
                found: AgentId(4),
            }
        );

        // The key may be left out when the parser knows the agent.
        let (events, result) = run(
            OutputFormat::Line,
            Some(AgentId(6)),
            [&br#"{"say":"Hm."}"#[..]],
        );
        assert_eq!((events, result), (vec![words(6, "Hm."), done(6)], Ok(())));
    }

    #[test]
    fn each_format_requires_its_keys() {
        let cases = [
            (OutputFormat::FreePlan, r#"{"agent":1}"#, Some(1), "steps"),
            (OutputFormat::FreePlan, r#"{"steps":[]}"#, None, "agent"),
            (
                OutputFormat::Guided,
                r#"{"agent":2,"say":"x"}"#,
                Some(2),
                "intent",
            ),
            (
                OutputFormat::Guided,
                r#"{"agent":2,"intent":1}"#,
                Some(2),
                "say",
            ),
            (
                OutputFormat::Line,
                r#"{"agent":3,"text":"x"}"#,
                Some(3),
                "say",
            ),
            (OutputFormat::Line, r#"{"say":"x"}"#, None, "agent"),
            // A key of another format is just an unknown key.
            (
                OutputFormat::Line,
                r#"{"agent":3,"steps":[]}"#,
                Some(3),
                "say",
            ),
        ];
        for (format, text, agent, key) in cases {
            match error_of(parse(format, text)) {
                StreamError::MissingKey {
                    offset,
                    agent: a,
                    key: k,
                    excerpt,
                } => {
                    assert_eq!((a, k), (agent.map(AgentId), key), "{text}");
                    assert_eq!(offset, text.len() - 1, "{text}");
                    assert_eq!(excerpt, text, "{text}");
                }
                other => panic!("{text}: expected a missing key, got {other:?}"),
            }
        }
        // Events before the missing key stand; held ones without an agent never appear.
        let (events, _) = parse(OutputFormat::Guided, r#"{"agent":2,"say":"x y"}"#);
        assert_eq!(events, [words(2, "x "), words(2, "y")]);
        let (events, _) = parse(OutputFormat::Guided, r#"{"say":"x y","intent":1}"#);
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn steps_of_an_unsupported_shape_are_bad_steps() {
        let cases = [
            (r#"{"act":"Attack","target":7.5}"#, "fraction"),
            (r#"{"act":"Attack","target":1e3}"#, "fraction"),
            (r#"{"act":"Hide","quietly":true}"#, "`quietly` must be"),
            (r#"{"act":"Hide","where":null}"#, "`where` must be"),
            (r#"{"act":"Hide","where":{"x":1}}"#, "`where` must be"),
            (r#"{"act":"MoveTo","to":[1,2,3]}"#, "two integers"),
            (r#"{"act":"MoveTo","to":[1]}"#, "two integers"),
            (r#"{"act":"MoveTo","to":[1,"2"]}"#, "two integers"),
            (r#"{"act":"MoveTo","to":[1,2147483648]}"#, "two integers"),
            (
                r#"{"act":"Attack","target":9223372036854775808}"#,
                "out of range",
            ),
            (r#"{"target":7}"#, "no `act`"),
            (r#"{"act":7}"#, "`act` must be a string"),
            (r#"{"act":"Attack","act":"Reload"}"#, "`act` appears twice"),
            (
                r#"{"act":"Attack","target":1,"target":2}"#,
                "`target` appears twice",
            ),
            (r#"{"act":"Attack","":2}"#, "empty name"),
            (r#""Reload""#, "must be an object"),
        ];
        for (step_text, reason_part) in cases {
            let text = format!(r#"{{"agent":1,"steps":[{{"act":"Reload"}},{step_text}]}}"#);
            match error_of(parse(OutputFormat::FreePlan, &text)) {
                StreamError::BadStep {
                    reason,
                    excerpt,
                    offset,
                } => {
                    assert!(reason.contains(reason_part), "{text}: {reason}");
                    assert!(excerpt.starts_with(['{', '"', '…']), "{text}: {excerpt}");
                    assert!(
                        offset >= text.find(step_text).unwrap_or(0) + 2,
                        "{text}: {offset}"
                    );
                }
                other => panic!("{text}: expected a bad step, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_extremes_of_each_argument_type_are_accepted() {
        let text = r#"{"agent":4294967295,"steps":[{"act":"Go","at":[-2147483648,2147483647],"n":-9223372036854775808,"m":-0,"t":""}]}"#;
        let expected = PlanStep::new("Go")
            .with_arg("at", ArgValue::Point(Point::new(i32::MIN, i32::MAX)))
            .with_arg("n", ArgValue::Int(i64::MIN))
            .with_arg("m", ArgValue::Int(0))
            .with_arg("t", ArgValue::Text(String::new()));
        let (events, result) = parse(OutputFormat::FreePlan, text);
        assert_eq!(result, Ok(()));
        assert_eq!(events, [step(u32::MAX, 0, expected), done(u32::MAX)]);
    }

    #[test]
    fn values_of_the_wrong_type_or_range_are_bad_values() {
        let cases = [
            (OutputFormat::Line, r#"{"agent":-1,"say":"x"}"#, "agent"),
            (
                OutputFormat::Line,
                r#"{"agent":4294967296,"say":"x"}"#,
                "agent",
            ),
            (OutputFormat::Line, r#"{"agent":"3","say":"x"}"#, "agent"),
            (OutputFormat::Line, r#"{"agent":3.0,"say":"x"}"#, "agent"),
            (OutputFormat::Line, r#"{"agent":3,"say":["x"]}"#, "say"),
            (
                OutputFormat::Guided,
                r#"{"agent":3,"intent":"2","say":"x"}"#,
                "intent",
            ),
            (
                OutputFormat::Guided,
                r#"{"agent":3,"intent":99999999999999999999999}"#,
                "intent",
            ),
            (OutputFormat::FreePlan, r#"{"agent":3,"steps":{}}"#, "steps"),
        ];
        for (format, text, key) in cases {
            match error_of(parse(format, text)) {
                StreamError::BadValue { key: k, .. } => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: expected a bad value, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_keys_are_skipped_whatever_their_value() {
        let text = r#"{"mood":{"a":[1,-2.5e-3,true,false,null,{"b":"c\"}"}]},"agent":3,"note":"x","say":"Hi","n":0}"#;
        let (events, result) = parse_bytewise(OutputFormat::Line, text.as_bytes());
        assert_eq!(result, Ok(()));
        assert_eq!(events, [words(3, "Hi"), done(3)]);
    }

    #[test]
    fn a_repeated_key_is_an_error() {
        let text = r#"{"agent":3,"say":"a","agent":3}"#;
        match error_of(parse(OutputFormat::Line, text)) {
            StreamError::DuplicateKey { key, offset, .. } => {
                assert_eq!(key, "agent");
                assert_eq!(offset, text.len() - 4);
            }
            other => panic!("expected a duplicate key, got {other:?}"),
        }
    }

    #[test]
    fn syntax_errors_carry_the_offset_and_the_text_before_it() {
        let text = r#"{"agent":3,"say":"Go"]"#;
        let error = error_of(parse(OutputFormat::Line, text));
        assert_eq!(
            error,
            StreamError::Syntax {
                offset: text.len() - 1,
                excerpt: text.to_owned(),
                expected: "`,` or `}`",
            }
        );
        assert_eq!(error.offset(), text.len() - 1);
        let message = error.to_string();
        assert!(
            message.contains("byte 21") && message.contains("`,` or `}`"),
            "{message}"
        );

        // A long prefix is cut to its last bytes, at a character boundary.
        let long = format!("{{\"agent\":3,\"say\":\"{}\"x", "é".repeat(40));
        let error = error_of(parse(OutputFormat::Line, &long));
        assert_eq!(error.offset(), long.len() - 1);
        let excerpt = error.excerpt();
        assert!(
            excerpt.starts_with('…') && excerpt.ends_with("éé\"x"),
            "{excerpt}"
        );
        assert!(!excerpt.contains('\u{fffd}'), "{excerpt}");

        for (text, expected) in [
            ("x", "`{` to start an answer (or `[` around answers)"),
            (r#"{"agent" 3}"#, "`:` after the key"),
            (r#"{agent:3}"#, "a key in double quotes or `}`"),
            (r#"{"agent":3,}"#, "a key in double quotes"),
            (
                r#"{"agent":03}"#,
                "`.`, an exponent or the end of the number after 0",
            ),
            (r#"{"agent":3,"say":"\q"}"#, ESCAPES),
            (
                r#"{"agent":3,"say":"\u12G4"}"#,
                "four hex digits after `\\u`",
            ),
            (
                "{\"agent\":3,\"say\":\"a\nb\"}",
                "an escape instead of a control character",
            ),
            (r#"{"agent":3,"x":tru}"#, "`true`, `false` or `null`"),
            (r#"{"agent":3,"x":[1,]}"#, "a value"),
            (r#"["x"]"#, "`{` to start an answer"),
            (r#"[[{}]]"#, "`{` to start an answer"),
        ] {
            match error_of(parse(OutputFormat::Line, text)) {
                StreamError::Syntax { expected: e, .. } => assert_eq!(e, expected, "{text}"),
                other => panic!("{text}: expected a syntax error, got {other:?}"),
            }
        }
    }

    #[test]
    fn errors_are_sticky() {
        let mut parser = StreamParser::new(OutputFormat::Line);
        let mut events = Vec::new();
        let first = parser.feed(br#"{"agent":1,"say":"Hold the line""#, &mut events);
        assert_eq!(first, Ok(()));
        let error = parser.feed(br#"]{"agent":2,"say":"x"}"#, &mut events);
        assert!(
            matches!(error, Err(StreamError::Syntax { offset: 32, .. })),
            "{error:?}"
        );
        let emitted = events.clone();
        assert_eq!(
            emitted,
            [words(1, "Hold "), words(1, "the "), words(1, "line")]
        );
        assert_eq!(parser.feed(b"}", &mut events), error);
        assert_eq!(parser.finish(&mut events), error);
        assert_eq!(events, emitted);
        assert_eq!(parser.error(), error.as_ref().err());
        assert!(!parser.is_between_answers());
        assert_eq!(parser.bytes_seen(), 33);
    }

    #[test]
    fn finishing_inside_an_answer_is_a_truncation() {
        for text in [
            "{",
            r#"{"agent":1,"say":"Cov"#,
            r#"{"agent":1,"say":"x"}  {"#,
            "[",
            "{\"a\":1",
        ] {
            match error_of(parse(OutputFormat::Line, text)) {
                StreamError::Truncated { offset, excerpt } => {
                    assert_eq!(offset, text.len(), "{text}");
                    assert_eq!(excerpt, text, "{text}");
                }
                other => panic!("{text}: expected a truncation, got {other:?}"),
            }
        }
        for text in [
            "",
            " \n\t\r ",
            "{\"agent\":1,\"say\":\"x\"}\n",
            "[]",
            "[ ]\n",
        ] {
            assert_eq!(parse(OutputFormat::Line, text).1, Ok(()), "{text:?}");
        }
        // A truncated line keeps the words that were complete.
        let (events, _) = parse(OutputFormat::Line, r#"{"agent":1,"say":"Cover me no"#);
        assert_eq!(events, [words(1, "Cover "), words(1, "me ")]);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let text = format!(r#"{{"agent":1,"x":{}"#, "[".repeat(100_000));
        match error_of(parse(OutputFormat::Line, &text)) {
            StreamError::TooDeep { offset, limit, .. } => {
                assert_eq!(limit, MAX_DEPTH);
                assert_eq!(offset, "{\"agent\":1,\"x\":".len() + MAX_DEPTH - 1);
            }
            other => panic!("expected too deep, got {other:?}"),
        }
        let nested = format!(
            r#"{{"agent":1,"x":{}{},"say":"ok"}}"#,
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert_eq!(parse(OutputFormat::Line, &nested).1, Ok(()));
    }

    #[test]
    fn oversized_strings_steps_and_backlogs_are_rejected() {
        let long_say = format!(r#"{{"agent":1,"say":"{}"}}"#, "a".repeat(MAX_SAY_BYTES + 1));
        let error = error_of(parse(OutputFormat::Line, &long_say));
        assert!(
            matches!(error, StreamError::TooLong { limit: MAX_SAY_BYTES, offset, .. } if offset == 18 + MAX_SAY_BYTES),
            "{error:?}"
        );
        let fits = format!(r#"{{"agent":1,"say":"{}"}}"#, "a".repeat(MAX_SAY_BYTES));
        assert_eq!(parse(OutputFormat::Line, &fits).1, Ok(()));

        let long_step = format!(
            r#"{{"agent":1,"steps":[{{"act":"Say","text":"{}"}}]}}"#,
            "a".repeat(MAX_STEP_BYTES)
        );
        let error = error_of(parse(OutputFormat::FreePlan, &long_step));
        assert!(
            matches!(
                error,
                StreamError::TooLong {
                    limit: MAX_STEP_BYTES,
                    ..
                }
            ),
            "{error:?}"
        );

        let long_key = format!(
            r#"{{"agent":1,"steps":[{{"act":"Say","{}":1}}]}}"#,
            "k".repeat(MAX_KEY_BYTES + 1)
        );
        let error = error_of(parse(OutputFormat::FreePlan, &long_key));
        assert!(
            matches!(
                error,
                StreamError::TooLong {
                    limit: MAX_KEY_BYTES,
                    ..
                }
            ),
            "{error:?}"
        );

        let backlog = format!(
            r#"{{"steps":[{}]}}"#,
            vec![r#"{"act":"Reload"}"#; MAX_HELD_STEPS + 1].join(",")
        );
        let (events, result) = parse(OutputFormat::FreePlan, &backlog);
        assert!(events.is_empty());
        assert!(
            matches!(
                result,
                Err(StreamError::TooLong {
                    limit: MAX_HELD_STEPS,
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn long_output_costs_no_memory_where_it_is_not_needed() {
        // A megabyte of an unknown key's text, and many steps streamed with a known agent.
        let filler = "x".repeat(1 << 20);
        let text = format!(r#"{{"agent":1,"notes":"{filler}","say":"ok"}}"#);
        let (events, result) = run(OutputFormat::Line, None, text.as_bytes().chunks(4096));
        assert_eq!((events, result), (vec![words(1, "ok"), done(1)], Ok(())));

        let steps = vec![r#"{"act":"Reload"}"#; 10_000].join(",");
        let text = format!(r#"{{"agent":1,"steps":[{steps}]}}"#);
        let (events, result) = parse(OutputFormat::FreePlan, &text);
        assert_eq!(result, Ok(()));
        assert_eq!(events.len(), 10_001);
    }

    #[test]
    fn excerpts_of_bad_steps_start_at_the_step() {
        let text = r#"{"agent":1,"steps":[{"act":"Reload"},{"act":"Hide","fast":true}]}"#;
        let error = error_of(parse(OutputFormat::FreePlan, text));
        assert_eq!(
            error,
            StreamError::BadStep {
                offset: text.find("true").unwrap_or(0),
                excerpt: r#"{"act":"Hide","fast":t"#.into(),
                reason: format!("`fast` must be {ARG_SHAPES}"),
            }
        );
    }

    // ---- Properties -------------------------------------------------------------------------

    /// One agent's answer, before it is written out.
    #[derive(Clone, Debug)]
    enum Answer {
        Free {
            agent: u32,
            steps: Vec<PlanStep>,
        },
        Guided {
            agent: u32,
            intent: u32,
            say: String,
        },
        Line {
            agent: u32,
            say: String,
        },
    }

    /// A whole sequence of answers and the seed for how it is spelled.
    #[derive(Clone, Debug)]
    struct Case {
        format: OutputFormat,
        answers: Vec<Answer>,
        wrapped: bool,
        seed: u64,
    }

    /// A deterministic stream of choices: white space, key order and escapes.
    struct Dice(u64);

    impl Dice {
        fn below(&mut self, n: usize) -> usize {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            usize::try_from(z % n as u64).unwrap_or(0)
        }
    }

    /// Text that is written out, with the events it must produce and where.
    struct Rendered {
        bytes: Vec<u8>,
        /// Each event with the length of the shortest prefix of `bytes` that completes it.
        events: Vec<(StreamEvent, usize)>,
        /// For each prefix length, whether the prefix ends between answers.
        boundary: Vec<bool>,
    }

    struct Writer {
        bytes: Vec<u8>,
        dice: Dice,
    }

    impl Writer {
        fn push(&mut self, s: &str) {
            self.bytes.extend_from_slice(s.as_bytes());
        }

        fn space(&mut self) {
            let s = match self.dice.below(10) {
                0 => " ",
                1 => "\n",
                2 => "\t",
                3 => "\r\n  ",
                _ => "",
            };
            self.push(s);
        }

        /// Writes `c` inside a string, escaped in one of the ways JSON allows.
        fn string_char(&mut self, c: char) {
            let short = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '/' => Some("\\/"),
                '\u{8}' => Some("\\b"),
                '\u{c}' => Some("\\f"),
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                _ => None,
            };
            let must_escape = matches!(c, '"' | '\\') || c < ' ';
            match self.dice.below(4) {
                0 | 1 if !must_escape => {
                    let mut buf = [0; 4];
                    self.push(c.encode_utf8(&mut buf));
                }
                0 | 1 => {
                    let quoted = serde_json::Value::from(c.to_string()).to_string();
                    self.push(&quoted[1..quoted.len() - 1]);
                }
                2 if short.is_some() => self.push(short.unwrap_or_default()),
                _ => {
                    let mut units = [0; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let hex = if self.dice.below(2) == 0 {
                            format!("\\u{unit:04x}")
                        } else {
                            format!("\\u{unit:04X}")
                        };
                        self.push(&hex);
                    }
                }
            }
        }

        /// Writes a `say` string and returns its words with where each completes.
        fn say(&mut self, say: &str) -> Vec<(Held, usize)> {
            let mut words = Vec::new();
            let mut pending = String::new();
            let mut content = false;
            self.push("\"");
            for c in say.chars() {
                self.string_char(c);
                pending.push(c);
                if !c.is_whitespace() {
                    content = true;
                } else if content {
                    words.push((Held::Words(mem::take(&mut pending)), self.bytes.len()));
                    content = false;
                }
            }
            self.push("\"");
            if !pending.is_empty() {
                words.push((Held::Words(pending), self.bytes.len()));
            }
            words
        }

        /// Writes a step, compact as `PlanStep::to_json` or spaced out.
        fn step(&mut self, step: &PlanStep) {
            if self.dice.below(2) == 0 {
                self.push(&step.to_json());
                return;
            }
            self.push("{");
            self.space();
            self.push("\"act\"");
            self.space();
            self.push(":");
            self.space();
            self.push(&serde_json::Value::from(step.verb.as_str()).to_string());
            for (name, value) in &step.args {
                self.space();
                self.push(",");
                self.space();
                self.push(&format!("\"{name}\""));
                self.space();
                self.push(":");
                self.space();
                match value {
                    ArgValue::Point(p) => {
                        self.push("[");
                        self.space();
                        self.push(&p.x.to_string());
                        self.space();
                        self.push(",");
                        self.space();
                        self.push(&p.y.to_string());
                        self.space();
                        self.push("]");
                    }
                    ArgValue::Text(t) => {
                        self.say(t);
                    }
                    ArgValue::Int(_) => {
                        let mut json = String::new();
                        value.write_json(&mut json);
                        self.push(&json);
                    }
                }
            }
            self.space();
            self.push("}");
        }

        /// Writes an unknown key's value, which the parser must skip.
        fn noise(&mut self) {
            let value = match self.dice.below(4) {
                0 => r#"{"a":[1,-2.5e+3,true,null,{}],"b":"x\"y"}"#,
                1 => "\"agent 7\"",
                2 => "-0.0E1",
                _ => "[[],[false]]",
            };
            self.push(value);
        }

        /// Writes one answer and returns its events with where each completes.
        fn answer(&mut self, answer: &Answer) -> Vec<(StreamEvent, usize)> {
            let (agent, mut keys): (u32, Vec<&str>) = match answer {
                Answer::Free { agent, .. } => (*agent, vec!["agent", "steps"]),
                Answer::Guided { agent, .. } => (*agent, vec!["agent", "intent", "say"]),
                Answer::Line { agent, .. } => (*agent, vec!["agent", "say"]),
            };
            if self.dice.below(4) == 0 {
                keys.push("mood");
            }
            for i in (1..keys.len()).rev() {
                keys.swap(i, self.dice.below(i + 1));
            }
            let mut held: Vec<(Held, usize)> = Vec::new();
            let mut agent_known = 0;
            self.push("{");
            self.space();
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    self.push(",");
                    self.space();
                }
                self.push(&format!("\"{key}\""));
                self.space();
                self.push(":");
                self.space();
                match (*key, answer) {
                    ("agent", _) => {
                        self.push(&agent.to_string());
                        // The byte after the digits ends the number.
                        agent_known = self.bytes.len() + 1;
                    }
                    ("intent", Answer::Guided { intent, .. }) => {
                        self.push(&intent.to_string());
                        held.push((Held::Intent(*intent), self.bytes.len() + 1));
                    }
                    ("say", Answer::Guided { say, .. } | Answer::Line { say, .. }) => {
                        held.extend(self.say(say));
                    }
                    ("steps", Answer::Free { steps, .. }) => {
                        self.push("[");
                        self.space();
                        for (index, step) in steps.iter().enumerate() {
                            if index > 0 {
                                self.push(",");
                                self.space();
                            }
                            self.step(step);
                            let end = self.bytes.len();
                            held.push((
                                Held::Step {
                                    index,
                                    step: step.clone(),
                                },
                                end,
                            ));
                            self.space();
                        }
                        self.push("]");
                    }
                    _ => self.noise(),
                }
                self.space();
            }
            self.push("}");
            let mut events: Vec<_> = held
                .into_iter()
                .map(|(h, at)| (h.into_event(AgentId(agent)), at.max(agent_known)))
                .collect();
            events.push((done(agent), self.bytes.len()));
            events
        }
    }

    fn render(case: &Case) -> Rendered {
        let mut w = Writer {
            bytes: Vec::new(),
            dice: Dice(case.seed),
        };
        let mut events = Vec::new();
        let mut boundary_ranges = Vec::new();
        let mut start = 0;
        w.space();
        if case.wrapped {
            boundary_ranges.push((start, w.bytes.len()));
            w.push("[");
            w.space();
        }
        for (i, answer) in case.answers.iter().enumerate() {
            if case.wrapped && i > 0 {
                w.push(",");
                w.space();
            }
            if !case.wrapped {
                boundary_ranges.push((start, w.bytes.len()));
            }
            events.extend(w.answer(answer));
            start = w.bytes.len();
            w.space();
        }
        if case.wrapped {
            w.push("]");
            start = w.bytes.len();
            w.space();
        }
        boundary_ranges.push((start, w.bytes.len()));
        let mut boundary = vec![false; w.bytes.len() + 1];
        for (from, to) in boundary_ranges {
            for b in &mut boundary[from..=to] {
                *b = true;
            }
        }
        Rendered {
            bytes: w.bytes,
            events,
            boundary,
        }
    }

    const CHARS: &[char] = &[
        'a', 'b', 'Z', '0', '.', '!', '\'', ' ', ' ', ' ', '\t', '\n', '\r', '\u{b}', '\u{c}',
        '\u{8}', '\u{1}', '\u{1f}', '"', '\\', '/', 'é', 'ß', '漢', '\u{85}', '\u{a0}', '\u{2028}',
        '\u{3000}', '\u{7f}', '\u{fffd}', '\u{ffff}', '🙂', '𝄞',
    ];

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(select(CHARS), 0..24).prop_map(String::from_iter)
    }

    fn arg_value() -> impl Strategy<Value = ArgValue> {
        prop_oneof![
            any::<i64>().prop_map(ArgValue::Int),
            (any::<i32>(), any::<i32>()).prop_map(|(x, y)| ArgValue::Point(Point::new(x, y))),
            (-3..30i32, -3..30i32).prop_map(|(x, y)| ArgValue::Point(Point::new(x, y))),
            text().prop_map(ArgValue::Text),
        ]
    }

    fn plan_step() -> impl Strategy<Value = PlanStep> {
        let verbs = vec!["MoveTo", "Attack", "Say", "TakeCover", "Reload", "Heal"];
        let names = vec!["to", "target", "text", "at", "amount"];
        (select(verbs), subsequence(names, 0..=3))
            .prop_flat_map(|(verb, names)| {
                let n = names.len();
                (
                    Just(verb),
                    Just(names),
                    prop::collection::vec(arg_value(), n),
                )
            })
            .prop_map(|(verb, names, values)| {
                names
                    .into_iter()
                    .zip(values)
                    .fold(PlanStep::new(verb), |step, (name, value)| {
                        step.with_arg(name, value)
                    })
            })
    }

    fn answer(format: OutputFormat) -> BoxedStrategy<Answer> {
        let agent = prop_oneof![0..20u32, any::<u32>()];
        match format {
            OutputFormat::FreePlan => (agent, prop::collection::vec(plan_step(), 0..5))
                .prop_map(|(agent, steps)| Answer::Free { agent, steps })
                .boxed(),
            OutputFormat::Guided => (agent, any::<u32>(), text())
                .prop_map(|(agent, intent, say)| Answer::Guided { agent, intent, say })
                .boxed(),
            OutputFormat::Line => (agent, text())
                .prop_map(|(agent, say)| Answer::Line { agent, say })
                .boxed(),
        }
    }

    fn case() -> impl Strategy<Value = Case> {
        prop_oneof![
            Just(OutputFormat::FreePlan),
            Just(OutputFormat::Guided),
            Just(OutputFormat::Line)
        ]
        .prop_flat_map(|format| {
            (
                Just(format),
                prop::collection::vec(answer(format), 1..4),
                any::<bool>(),
                any::<u64>(),
            )
        })
        .prop_map(|(format, answers, wrapped, seed)| Case {
            format,
            answers,
            wrapped,
            seed,
        })
    }

    /// Valid output, or valid output with a few bytes replaced, inserted or removed.
    fn output() -> impl Strategy<Value = (OutputFormat, Vec<u8>)> {
        let edits = prop::collection::vec((any::<Index>(), any::<u8>(), 0..3u8), 1..4);
        prop_oneof![
            case().prop_map(|case| (case.format, render(&case).bytes)),
            (case(), edits).prop_map(|(case, edits)| {
                let mut bytes = render(&case).bytes;
                for (at, byte, op) in edits {
                    let i = at.index(bytes.len() + 1);
                    match op {
                        0 if i < bytes.len() => bytes[i] = byte,
                        1 => bytes.insert(i, byte),
                        _ if i < bytes.len() => {
                            bytes.remove(i);
                        }
                        _ => {}
                    }
                }
                (case.format, bytes)
            }),
        ]
    }

    /// Bytes that reach deep into the parser's states more often than random bytes do.
    fn token_soup() -> impl Strategy<Value = Vec<u8>> {
        let tokens: Vec<&[u8]> = vec![
            b"{",
            b"}",
            b"[",
            b"]",
            b":",
            b",",
            b" ",
            b"\"",
            b"\"agent\"",
            b"\"steps\"",
            b"\"intent\"",
            b"\"say\"",
            b"\"act\"",
            b"\"to\"",
            b"1",
            b"-",
            b"0",
            b"4294967296",
            b"99999999999999999999",
            b"1.5",
            b"e",
            b"true",
            b"null",
            b"\\",
            b"\\u",
            b"d83d",
            b"dc00",
            b"\xff",
            b"\xc3",
            b"\xe3\x80",
            b"\n",
            b"\"a b\"",
            b"{\"act\":\"Go\"}",
        ];
        prop::collection::vec(select(tokens), 0..64).prop_map(|t| t.concat())
    }

    /// Splits `bytes` at the given points.
    fn split<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
    }

    proptest! {
        #[test]
        fn any_chunking_parses_like_the_whole_text(
            (format, bytes) in output(),
            cuts in prop::collection::vec(any::<Index>(), 0..16),
            agent in prop::option::of(0..3u32),
        ) {
            let agent = agent.map(AgentId);
            let whole = run(format, agent, [bytes.as_slice()]);
            let chunked = run(format, agent, split(&bytes, &cuts));
            prop_assert_eq!(&chunked, &whole);
            let bytewise = run(format, agent, bytes.chunks(1));
            prop_assert_eq!(&bytewise, &whole);
        }

        #[test]
        fn valid_output_gives_exactly_its_events_and_truncation_keeps_the_complete_ones(
            case in case(),
            cut in any::<Index>(),
        ) {
            let rendered = render(&case);
            let len = rendered.bytes.len();
            let mut parser = StreamParser::new(case.format);
            let mut events = Vec::new();
            for k in 0..=len {
                let expected: Vec<StreamEvent> = rendered
                    .events
                    .iter()
                    .filter(|(_, at)| *at <= k)
                    .map(|(e, _)| e.clone())
                    .collect();
                prop_assert_eq!(&events, &expected, "after {} bytes of {:?}",
                    k, String::from_utf8_lossy(&rendered.bytes));
                let mut more = Vec::new();
                let finished = parser.clone().finish(&mut more);
                prop_assert!(more.is_empty());
                match finished {
                    Ok(()) => prop_assert!(rendered.boundary[k], "ended inside an answer at {}", k),
                    Err(StreamError::Truncated { offset, .. }) => {
                        prop_assert!(!rendered.boundary[k], "ended between answers at {}", k);
                        prop_assert_eq!(offset, k);
                    }
                    Err(other) => prop_assert!(false, "unexpected {:?}", other),
                }
                if k < len {
                    prop_assert_eq!(parser.feed(&rendered.bytes[k..=k], &mut events), Ok(()));
                }
            }
            let all: Vec<StreamEvent> = rendered.events.iter().map(|(e, _)| e.clone()).collect();
            prop_assert_eq!(&events, &all);
            prop_assert_eq!(parser.answers_done(), case.answers.len());

            // A prefix fed at once keeps exactly the events complete within it.
            let k = cut.index(len + 1);
            let (kept, result) = run(case.format, None, [&rendered.bytes[..k]]);
            let complete = rendered.events.iter().filter(|(_, at)| *at <= k).count();
            prop_assert_eq!(&kept[..], &all[..complete]);
            prop_assert_eq!(result.is_ok(), rendered.boundary[k]);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_errors_stick(
            bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..512), token_soup()],
            cuts in prop::collection::vec(any::<Index>(), 0..16),
            format in prop_oneof![
                Just(OutputFormat::FreePlan),
                Just(OutputFormat::Guided),
                Just(OutputFormat::Line)
            ],
        ) {
            let mut parser = StreamParser::new(format);
            let mut events = Vec::new();
            let mut failed: Option<StreamError> = None;
            for chunk in split(&bytes, &cuts) {
                let before = events.len();
                let result = parser.feed(chunk, &mut events);
                if let Some(error) = &failed {
                    prop_assert_eq!(&result, &Err(error.clone()));
                    prop_assert_eq!(events.len(), before);
                } else if let Err(error) = result {
                    prop_assert!(error.offset() < bytes.len());
                    prop_assert!(error.excerpt().chars().count() <= EXCERPT_BYTES + 1);
                    failed = Some(error);
                }
            }
            let finished = parser.finish(&mut events);
            if let Some(error) = failed {
                prop_assert_eq!(finished, Err(error));
            }
            prop_assert!(parser.bytes_seen() <= bytes.len());
        }
    }
}
