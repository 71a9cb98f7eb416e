//! An incremental parser of server-sent events (the `text/event-stream` format).
//!
//! Bytes go in as they arrive, in chunks of any size; complete events come out. Lines end in
//! `\n`, `\r\n` or `\r`, even when a chunk splits the pair; `data:` lines of one event are
//! joined with `\n`; comments (`:`) and the fields this client has no use for (`id:`,
//! `retry:`) are skipped. A line or an event's data longer than the parser's limit is an error
//! rather than a buffer that grows without end, and no input makes it panic.

/// One event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; empty for the default (`message`).
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// What a malformed stream did.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line, or an event's data, ran past the limit.
    #[error("an event-stream line or event is longer than {limit} bytes")]
    LineTooLong {
        /// The limit.
        limit: usize,
    },
    /// A line is not UTF-8.
    #[error("an event-stream line is not UTF-8")]
    NotUtf8,
}

/// The incremental parser. See the [module docs](self).
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    event: SseEvent,
    has_data: bool,
    limit: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new(1 << 20)
    }
}

impl SseParser {
    /// A parser that refuses lines longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        SseParser {
            line: Vec::new(),
            after_cr: false,
            event: SseEvent::default(),
            has_data: false,
            limit,
        }
    }

    /// Feeds `bytes`, pushing every event they complete onto `out`. After an error the parser
    /// is in a clean state, but the stream it read should be abandoned.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        for &b in bytes {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.end_line(&line, out)?;
                }
                _ => {
                    if self.line.len() >= self.limit {
                        self.line.clear();
                        return Err(SseError::LineTooLong { limit: self.limit });
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(())
    }

    /// The end of the stream: an event whose blank line never came is dropped, as the format
    /// says.
    pub fn finish(&mut self) {
        self.line.clear();
        self.event = SseEvent::default();
        self.has_data = false;
    }

    fn end_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if line.is_empty() {
            if std::mem::take(&mut self.has_data) {
                out.push(std::mem::take(&mut self.event));
            } else {
                self.event = SseEvent::default();
            }
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.event.data.len() + value.len() >= self.limit {
                    self.event = SseEvent::default();
                    self.has_data = false;
                    return Err(SseError::LineTooLong { limit: self.limit });
                }
                if self.has_data {
                    self.event.data.push('\n');
                }
                self.event.data.push_str(value);
                self.has_data = true;
            }
            "event" => value.clone_into(&mut self.event.event),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, SseError> {
        let mut parser = SseParser::new(256);
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out)?;
        }
        Ok(out)
    }

    fn data(text: &str) -> SseEvent {
        SseEvent {
            event: String::new(),
            data: text.into(),
        }
    }

    #[test]
    fn events_end_at_a_blank_line_whatever_the_line_endings() {
        let events =
            parse(&[b"data: {\"a\":1}\n\ndata: x\r\ndata: y\r\n\r\n: comment\rdata:z\r\r"])
                .unwrap();
        assert_eq!(events, [data("{\"a\":1}"), data("x\ny"), data("z")]);
        let events = parse(&[b"event: error\nid: 3\ndata: boom\n\n"]).unwrap();
        assert_eq!(events[0].event, "error");
        assert_eq!(events[0].data, "boom");
    }

    #[test]
    fn a_crlf_split_across_chunks_is_one_line_end() {
        let events = parse(&[b"data: a\r", b"\n", b"\r", b"\ndata: b\n\n"]).unwrap();
        assert_eq!(events, [data("a"), data("b")]);
    }

    #[test]
    fn an_endless_event_is_an_error_not_a_growing_buffer() {
        let lines = "data: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n".repeat(20);
        assert_eq!(
            parse(&[lines.as_bytes()]),
            Err(SseError::LineTooLong { limit: 256 })
        );
    }

    #[test]
    fn an_endless_line_is_an_error_not_a_growing_buffer() {
        let long = vec![b'x'; 300];
        assert_eq!(
            parse(&[b"data: ", &long]),
            Err(SseError::LineTooLong { limit: 256 })
        );
        assert_eq!(parse(&[b"data: \xff\xfe\n\n"]), Err(SseError::NotUtf8));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_in_arbitrary_chunks_never_panic_and_chunking_does_not_matter(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = parse(&[&bytes]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut start = 0;
            for cut in cuts {
                chunks.push(&bytes[start..cut]);
                start = cut;
            }
            chunks.push(&bytes[start..]);
            prop_assert_eq!(whole, parse(&chunks));
        }

        #[test]
        fn well_formed_events_come_back_whole(
            payloads in proptest::collection::vec("[a-z{}\":,0-9 ]{0,40}", 1..6),
            split in 1usize..7,
        ) {
            let text: String = payloads.iter().map(|p| format!("data: {p}\n\n")).collect();
            let chunks: Vec<&[u8]> = text.as_bytes().chunks(split).collect();
            let events = parse(&chunks).unwrap();
            let got: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
            prop_assert_eq!(got, payloads.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
}
