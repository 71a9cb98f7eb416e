//! The stream parser on arbitrary model output, in every format, cut at arbitrary places.
//!
//! Input: a configuration byte (bit 0: the parser is given an agent, bits 1-2 which; bit 3: an
//! intent bound, bits 4-5 which; bit 6: intents by label), a chunking seed, then the output.
//!
//! Checked, as the module docs and the proptests of `stream/tests.rs` promise: no panic; the
//! whole text, the seeded chunks and single bytes give the same events and the same error; the
//! first error sticks; errors lie inside the text and quote at most about 40 bytes; an agent
//! given to the parser is the agent of every event; an intent bound changes only when an
//! intent is reported.
#![no_main]

use std::collections::HashMap;

use hivemind_core::plan::OutputFormat;
use hivemind_core::snapshot::AgentId;
use hivemind_core::stream::{StreamError, StreamEvent, StreamParser};
use hivemind_fuzz::{chunks, split_header};
use libfuzzer_sys::fuzz_target;

const FORMATS: [OutputFormat; 3] = [
    OutputFormat::FreePlan,
    OutputFormat::Guided,
    OutputFormat::Line,
];
const BOUNDS: [u32; 4] = [1, 3, 9, 12];
const LABELS: [&str; 3] = ["heal", "hold here", "attack enemy 9"];
/// `EXCERPT_BYTES` plus the `…` that marks a cut excerpt.
const MAX_EXCERPT_CHARS: usize = 41;

#[derive(Clone, Copy)]
struct Setup {
    format: OutputFormat,
    agent: Option<AgentId>,
    bound: Option<u32>,
    labels: bool,
}

impl Setup {
    fn parser(&self) -> StreamParser {
        let mut parser = StreamParser::new(self.format);
        if let Some(agent) = self.agent {
            parser.insert_agent(agent);
        }
        if let Some(bound) = self.bound {
            parser = parser.with_intent_bound(bound);
        }
        if self.labels {
            let labels = (0..4)
                .map(|id| {
                    (
                        AgentId(id),
                        LABELS.iter().map(|l| (*l).to_owned()).collect(),
                    )
                })
                .collect::<HashMap<_, _>>();
            parser = parser.with_intent_labels(labels);
        }
        parser
    }
}

struct Run {
    events: Vec<StreamEvent>,
    result: Result<(), StreamError>,
    answers_done: usize,
}

/// Feeds `pieces` and finishes, checking on the way that the first error sticks.
fn run<'a>(setup: &Setup, pieces: impl IntoIterator<Item = &'a [u8]>, len: usize) -> Run {
    let mut parser = setup.parser();
    let mut events = Vec::new();
    let mut failed: Option<StreamError> = None;
    for piece in pieces {
        let before = events.len();
        let result = parser.feed(piece, &mut events);
        match (&failed, result) {
            (Some(error), result) => {
                assert_eq!(result.as_ref(), Err(error), "a later feed forgot the error");
                assert_eq!(events.len(), before, "events reported after an error");
            }
            (None, Err(error)) => {
                assert!(
                    error.offset() < len,
                    "{error:?} lies past the text ({len} bytes)"
                );
                failed = Some(error);
            }
            (None, Ok(())) => {}
        }
        assert!(parser.bytes_seen() <= len);
    }
    let before = events.len();
    let result = parser.finish(&mut events);
    assert_eq!(events.len(), before, "finish reported events");
    if let Some(error) = &failed {
        assert_eq!(result.as_ref(), Err(error), "finish forgot the error");
    }
    if let Err(error) = &result {
        assert!(
            error.excerpt().chars().count() <= MAX_EXCERPT_CHARS,
            "excerpt too long: {error:?}"
        );
        if let StreamError::Truncated { offset, .. } = error {
            assert_eq!(*offset, len, "a truncation is reported at the end");
        }
        assert!(!parser.is_between_answers());
    }
    Run {
        events,
        result,
        answers_done: parser.answers_done(),
    }
}

fn check(setup: &Setup, text: &[u8], seed: u8) {
    let whole = run(setup, [text], text.len());
    let chunked = run(setup, chunks(text, seed), text.len());
    let bytewise = run(setup, text.chunks(1), text.len());
    for other in [&chunked, &bytewise] {
        assert_eq!(other.events, whole.events, "chunking changed the events");
        assert_eq!(other.result, whole.result, "chunking changed the outcome");
        assert_eq!(other.answers_done, whole.answers_done);
    }

    let done = whole
        .events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Done { .. }))
        .count();
    assert_eq!(
        done, whole.answers_done,
        "answers_done counts the Done events"
    );
    for event in &whole.events {
        if let Some(agent) = setup.agent {
            assert_eq!(
                event.agent(),
                agent,
                "an event for another agent than the one given"
            );
        }
    }
    // An intent bound changes when an intent is reported, never what: output that parses with
    // one parses the same without.
    if setup.bound.is_some() && whole.result.is_ok() {
        let unbounded = Setup {
            bound: None,
            ..*setup
        };
        let free = run(&unbounded, [text], text.len());
        assert_eq!(free.result, Ok(()), "only the bounded parser accepted it");
        assert_eq!(free.events, whole.events, "the bound changed the events");
    }
}

fuzz_target!(|data: &[u8]| {
    let (config, seed, text) = split_header(data);
    for format in FORMATS {
        let setup = Setup {
            format,
            agent: (config & 1 != 0).then(|| AgentId(u32::from((config >> 1) & 3))),
            // The bound is the most options any agent has, so never fewer than the labels.
            bound: (config & 8 != 0).then(|| {
                let bound = BOUNDS[usize::from((config >> 4) & 3)];
                if config & 0x40 != 0 {
                    bound.max(LABELS.len() as u32)
                } else {
                    bound
                }
            }),
            labels: config & 0x40 != 0,
        };
        check(&setup, text, seed);
    }
});
