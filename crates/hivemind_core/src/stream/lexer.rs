//! The syntax layer of the stream parser: a byte-at-a-time JSON lexer that knows nothing of
//! what an answer looks like and hands each token to the [`Shape`].

use super::shape::Shape;
use super::{Fault, MAX_DEPTH, StreamEvent};

pub(super) const ESCAPES: &str = r#"an escape (\" \\ \/ \b \f \n \r \t or \uXXXX)"#;

/// What the lexer expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
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
pub(super) enum Kind {
    Object,
    Array,
    String,
    Number,
    Literal,
}

/// A complete number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Number {
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

    /// The value so far, if it is a whole number that more digits could only make larger.
    fn partial(&self) -> Option<u64> {
        (self.state == NumState::Int && !self.negative && !self.overflow).then_some(self.magnitude)
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
pub(super) struct Lexer {
    pub(super) state: State,
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
    pub(super) fn byte(
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
                    return shape.number_so_far(self.num.partial(), out);
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
            State::Value | State::ValueOrClose => {
                self.start_value(byte, at, shape)?;
                if self.state == State::Num {
                    shape.number_so_far(self.num.partial(), out)?;
                }
                Ok(())
            }
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
