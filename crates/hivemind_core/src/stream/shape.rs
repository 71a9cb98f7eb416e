//! The shape layer of the stream parser: what an answer looks like (the agent's object, its
//! steps and their points, and what each key means) and how the lexer's tokens become
//! [`StreamEvent`]s.

use std::collections::HashMap;
use std::mem;

use crate::plan::{ArgValue, OutputFormat, PlanStep};
use crate::snapshot::{AgentId, Point};

use super::lexer::{Kind, Number};
use super::{Fault, MAX_HELD_STEPS, MAX_KEY_BYTES, MAX_SAY_BYTES, MAX_STEP_BYTES, StreamEvent};

const AGENT_EXPECTED: &str = "an agent id (an integer from 0 to 4294967295)";
const INTENT_EXPECTED: &str = "an intent number (an integer from 0 to 4294967295)";
const INTENT_NAME_EXPECTED: &str = "the label of one of the agent's options";
/// The longest intent name read; a longer one is no option's label.
const MAX_INTENT_NAME_BYTES: usize = 512;
pub(super) const ARG_SHAPES: &str = "an integer, a point [x,y] or a string";

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
    IntentName,
}

/// An event waiting for its agent id.
#[derive(Clone, Debug)]
pub(super) enum Held {
    Step { index: usize, step: PlanStep },
    Intent(u32),
    Words(String),
}

impl Held {
    pub(super) fn into_event(self, agent: AgentId) -> StreamEvent {
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
pub(super) struct Shape {
    pub(super) format: OutputFormat,
    pub(super) expected: Option<AgentId>,
    /// The highest intent any answer may name, if known: an intent is then reported as soon as
    /// no further digit could keep it in range, not when the byte after it arrives.
    pub(super) intent_bound: Option<u32>,
    /// Each agent's option labels, when a guided answer names its intent.
    pub(super) intent_labels: Option<HashMap<AgentId, Vec<String>>>,
    level: Level,
    in_wrapper: bool,
    /// How deep the lexer is inside a value that is being skipped.
    skip: usize,
    sink: Sink,
    key: Vec<u8>,
    key_overflow: bool,
    pub(super) answers_done: usize,

    // The current agent's object.
    pub(super) object_start: usize,
    agent: Option<AgentId>,
    keys_seen: u8,
    answer_key: AnswerKey,
    /// The intent already reported from its digits, before the number ended.
    intent_early: Option<u32>,
    steps_done: usize,
    held: Vec<Held>,
    held_steps: usize,
    words: Words,

    // The current step.
    pub(super) step_start: usize,
    step_bytes: usize,
    verb: Option<String>,
    args: Vec<(String, ArgValue)>,
    step_key: StepKey,
    text: Vec<u8>,
    point: [i32; 2],
    point_len: usize,
}

impl Shape {
    pub(super) fn new(format: OutputFormat) -> Self {
        Shape {
            format,
            expected: None,
            intent_bound: None,
            intent_labels: None,
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
            intent_early: None,
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
    pub(super) fn start(&mut self, kind: Kind, at: usize) -> Result<(), Fault> {
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
                (AnswerKey::Intent, Kind::String) if self.intent_labels.is_some() => {
                    self.text.clear();
                    self.sink = Sink::IntentName;
                }
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
        self.intent_early = None;
        self.steps_done = 0;
        self.held.clear();
        self.held_steps = 0;
    }

    pub(super) fn end_container(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), Fault> {
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

    pub(super) fn key_start(&mut self) {
        let wanted = self.skip == 0 && matches!(self.level, Level::Answer | Level::Step);
        self.sink = if wanted { Sink::Key } else { Sink::Discard };
        self.key.clear();
        self.key_overflow = false;
    }

    pub(super) fn key_end(&mut self) -> Result<(), Fault> {
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

    pub(super) fn string_byte(
        &mut self,
        byte: u8,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Fault> {
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
            Sink::IntentName if self.text.len() < MAX_INTENT_NAME_BYTES => {
                self.text.push(byte);
                self.intent_name_so_far(out)
            }
            Sink::IntentName => Err(Fault::BadValue {
                key: "intent",
                expected: INTENT_NAME_EXPECTED,
            }),
        }
    }

    pub(super) fn string_end(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), Fault> {
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
            Sink::IntentName => {
                let name = String::from_utf8_lossy(&self.text);
                let index = self
                    .agent_labels()
                    .and_then(|l| l.iter().position(|label| *label == name));
                match (
                    index.and_then(|i| u32::try_from(i + 1).ok()),
                    self.intent_early,
                ) {
                    // Reported from its first letters; it must have ended as that label.
                    (Some(intent), Some(early)) if intent == early => Ok(()),
                    (Some(intent), None) => self.emit(Held::Intent(intent), out),
                    _ => Err(Fault::BadValue {
                        key: "intent",
                        expected: INTENT_NAME_EXPECTED,
                    }),
                }
            }
            Sink::Say | Sink::Discard | Sink::Key => Ok(()),
        }
    }

    /// The option labels of the agent answering now.
    fn agent_labels(&self) -> Option<&Vec<String>> {
        self.intent_labels
            .as_ref()
            .and_then(|all| match self.agent {
                Some(agent) => all.get(&agent),
                None if all.len() == 1 => all.values().next(),
                None => None,
            })
    }

    /// An intent's name grew by a byte: once exactly one of the agent's labels begins with what
    /// is written, that is the intent, reported now. The grammar binds the name to the labels,
    /// so the rest of it decides nothing, and a first step need not wait for the model to spell
    /// it out; the name must still end as that label.
    fn intent_name_so_far(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), Fault> {
        if self.intent_early.is_some() || self.skip > 0 {
            return Ok(());
        }
        let Some(labels) = self.agent_labels() else {
            return Ok(());
        };
        let mut matching = labels
            .iter()
            .enumerate()
            .filter(|(_, label)| label.as_bytes().starts_with(&self.text));
        let (Some((index, _)), None) = (matching.next(), matching.next()) else {
            return Ok(());
        };
        let Ok(intent) = u32::try_from(index + 1) else {
            return Ok(());
        };
        self.intent_early = Some(intent);
        self.emit(Held::Intent(intent), out)
    }

    /// A number grew by a digit; `so_far` is its value if it is a whole number that more digits
    /// could only make larger. An intent that no further digit could keep within
    /// [`Shape::intent_bound`] is complete already, and reported now.
    pub(super) fn number_so_far(
        &mut self,
        so_far: Option<u64>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Fault> {
        let (Some(bound), Some(n)) = (self.intent_bound, so_far) else {
            return Ok(());
        };
        let complete = n >= 1 && n.saturating_mul(10) > u64::from(bound);
        if self.skip > 0
            || self.level != Level::Answer
            || self.answer_key != AnswerKey::Intent
            || self.intent_early.is_some()
            || !complete
        {
            return Ok(());
        }
        let Ok(intent) = u32::try_from(n) else {
            return Ok(());
        };
        self.intent_early = Some(intent);
        self.emit(Held::Intent(intent), out)
    }

    pub(super) fn number(
        &mut self,
        number: Number,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Fault> {
        if self.skip > 0 {
            return Ok(());
        }
        match self.level {
            Level::Answer => match self.answer_key {
                AnswerKey::Agent => self.agent_id(number, out),
                AnswerKey::Intent => {
                    let whole = match number {
                        Number::Int(n) => u32::try_from(n).ok(),
                        Number::TooBig | Number::Fraction => None,
                    };
                    match (whole, self.intent_early) {
                        // Reported from its digits; it must have ended as it was.
                        (Some(intent), Some(early)) if intent == early => Ok(()),
                        (Some(intent), None) => self.emit(Held::Intent(intent), out),
                        _ => Err(Fault::BadValue {
                            key: "intent",
                            expected: INTENT_EXPECTED,
                        }),
                    }
                }
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
    pub(super) fn literal_end(&mut self) {
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
