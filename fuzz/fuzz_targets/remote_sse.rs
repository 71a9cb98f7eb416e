//! The remote backend's reading of a server's stream: the event-stream parser, each dialect's
//! `decode`, and the stream parser behind them, on arbitrary bytes cut at arbitrary places.
//!
//! Input: a configuration byte (bits 0-2 the dialect, bit 3 a small line limit, bits 4-5 the
//! output format), a chunking seed, then what the server sent.
//!
//! Checked: no panic; the whole stream, the seeded chunks and single bytes give the same events
//! and the same error; `[DONE]` decodes as the end; the decoded text parses the same whether it
//! is fed as the events arrive or at once.
#![no_main]

use hivemind_core::plan::OutputFormat;
use hivemind_core::stream::{StreamError, StreamEvent, StreamParser};
use hivemind_fuzz::{chunks, split_header};
use hivemind_remote::Dialect;
use hivemind_remote::dialect::decode;
use hivemind_remote::sse::{SseError, SseEvent, SseParser};
use libfuzzer_sys::fuzz_target;

const DIALECTS: [Dialect; 5] = [
    Dialect::LlamaServer,
    Dialect::Vllm,
    Dialect::Sglang,
    Dialect::Ollama,
    Dialect::OpenAi,
];
const FORMATS: [OutputFormat; 3] = [
    OutputFormat::FreePlan,
    OutputFormat::Guided,
    OutputFormat::Line,
];

fn events<'a>(
    limit: usize,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<SseEvent>, SseError> {
    let mut parser = SseParser::new(limit);
    let mut out = Vec::new();
    for piece in pieces {
        parser.feed(piece, &mut out)?;
    }
    parser.finish();
    Ok(out)
}

fn parse<'a>(
    format: OutputFormat,
    pieces: impl IntoIterator<Item = &'a str>,
) -> (Vec<StreamEvent>, Result<(), StreamError>) {
    let mut parser = StreamParser::new(format);
    let mut events = Vec::new();
    let mut result = Ok(());
    for piece in pieces {
        result = parser.feed(piece.as_bytes(), &mut events);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = parser.finish(&mut events);
    }
    (events, result)
}

fuzz_target!(|data: &[u8]| {
    let (config, seed, bytes) = split_header(data);
    let dialect = DIALECTS[usize::from(config & 7) % DIALECTS.len()];
    let limit = if config & 8 != 0 { 64 } else { 1 << 20 };
    let format = FORMATS[usize::from((config >> 4) & 3) % FORMATS.len()];

    let whole = events(limit, [bytes]);
    assert_eq!(
        events(limit, chunks(bytes, seed)),
        whole,
        "chunking changed the events"
    );
    assert_eq!(
        events(limit, bytes.chunks(1)),
        whole,
        "single bytes changed the events"
    );
    let Ok(list) = whole else {
        return;
    };

    let mut texts = Vec::new();
    for event in &list {
        assert!(event.data.len() <= limit, "an event longer than the limit");
        match decode(dialect, &event.data) {
            Ok(decoded) => {
                if event.data.trim() == "[DONE]" {
                    assert!(decoded.done && decoded.text.is_empty());
                }
                texts.push(decoded.text);
            }
            Err(_) => break,
        }
    }
    let joined: String = texts.concat();
    assert_eq!(
        parse(format, texts.iter().map(String::as_str)),
        parse(format, [joined.as_str()]),
        "the decoded text parsed differently in pieces"
    );
});
