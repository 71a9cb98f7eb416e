//! The transcript reader on arbitrary bytes, and playback of what it reads.
//!
//! Checked: no panic; a transcript that reads comes back equal when its streams are written
//! as JSON lines again (what `Transcript::save` writes); a recorded stream's text, fed to the
//! stream parser in the chunks it was recorded in, parses as it does whole.
#![no_main]

use hivemind_core::backend::Transcript;
use hivemind_core::plan::OutputFormat;
use hivemind_core::stream::StreamParser;
use libfuzzer_sys::fuzz_target;

fn parse<'a>(
    format: OutputFormat,
    pieces: impl IntoIterator<Item = &'a str>,
) -> (
    Vec<hivemind_core::stream::StreamEvent>,
    Result<(), hivemind_core::stream::StreamError>,
) {
    let mut parser = StreamParser::new(format);
    let mut events = Vec::new();
    for piece in pieces {
        if let Err(e) = parser.feed(piece.as_bytes(), &mut events) {
            return (events, Err(e));
        }
    }
    let result = parser.finish(&mut events);
    (events, result)
}

fuzz_target!(|data: &[u8]| {
    let Ok(transcript) = Transcript::read(data, "fuzz.jsonl") else {
        return;
    };
    let mut lines = Vec::new();
    for stream in transcript.streams() {
        let line = serde_json::to_string(stream)
            .unwrap_or_else(|e| panic!("{stream:?} does not serialize: {e}"));
        assert!(!line.contains('\n'), "a stream is one line");
        lines.extend_from_slice(line.as_bytes());
        lines.push(b'\n');
    }
    let again = Transcript::read(lines.as_slice(), "again.jsonl")
        .unwrap_or_else(|e| panic!("written back, it does not read: {e}"));
    assert_eq!(again, transcript);

    for stream in transcript.streams().iter().take(4) {
        let whole: String = stream
            .chunks
            .iter()
            .map(|(text, _)| text.as_str())
            .collect();
        for format in [
            OutputFormat::FreePlan,
            OutputFormat::Guided,
            OutputFormat::Line,
        ] {
            let chunked = parse(format, stream.chunks.iter().map(|(text, _)| text.as_str()));
            assert_eq!(chunked, parse(format, [whole.as_str()]));
        }
    }
});
