use std::mem;

use proptest::prelude::*;
use proptest::sample::{Index, select, subsequence};

use super::lexer::ESCAPES;
use super::shape::{ARG_SHAPES, Held};
use super::*;
use crate::plan::{ArgValue, Plan, PlanSource};
use crate::snapshot::Point;

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
    'a', 'b', 'Z', '0', '.', '!', '\'', ' ', ' ', ' ', '\t', '\n', '\r', '\u{b}', '\u{c}', '\u{8}',
    '\u{1}', '\u{1f}', '"', '\\', '/', 'é', 'ß', '漢', '\u{85}', '\u{a0}', '\u{2028}', '\u{3000}',
    '\u{7f}', '\u{fffd}', '\u{ffff}', '🙂', '𝄞',
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

#[test]
fn a_bounded_intent_is_reported_on_its_last_possible_digit() {
    let feed = |bound: u32, text: &str| {
        let mut parser = StreamParser::new(OutputFormat::Guided)
            .with_agent(AgentId(3))
            .with_intent_bound(bound);
        let mut events = Vec::new();
        parser.feed(text.as_bytes(), &mut events).map(|()| events)
    };
    // With four options, the one digit is the whole intent: no need to wait for the comma.
    assert_eq!(feed(4, r#"{"agent":3,"intent":2"#), Ok(vec![intent(3, 2)]));
    // Without a bound (or with one it might still grow into) it waits for the number's end.
    let unbounded = {
        let mut parser = StreamParser::new(OutputFormat::Guided).with_agent(AgentId(3));
        let mut events = Vec::new();
        parser
            .feed(br#"{"agent":3,"intent":2"#, &mut events)
            .map(|()| events)
    };
    assert_eq!(unbounded, Ok(vec![]));
    assert_eq!(feed(12, r#"{"agent":3,"intent":1"#), Ok(vec![]));
    assert_eq!(
        feed(12, r#"{"agent":3,"intent":11"#),
        Ok(vec![intent(3, 11)])
    );
    assert_eq!(
        feed(12, r#"{"agent":3,"intent":1,"#),
        Ok(vec![intent(3, 1)])
    );
    // The end of the number reports nothing twice, and the answer goes on as before.
    let whole = feed(4, r#"{"agent":3,"intent":2,"say":"Go."}"#).unwrap();
    assert_eq!(whole, [intent(3, 2), words(3, "Go."), done(3)]);
    // Digits or a fraction after an intent that was already complete are a fault.
    assert!(matches!(
        feed(4, r#"{"agent":3,"intent":23,"#),
        Err(StreamError::BadValue { .. })
    ));
    assert!(matches!(
        feed(4, r#"{"agent":3,"intent":2.5,"#),
        Err(StreamError::BadValue { .. })
    ));
}

/// Feeds `text` byte by byte to a guided parser that knows agent 3's labels; returns the
/// events and how many bytes had been fed when the intent came.
fn guided_by_name(
    labels: &[&str],
    text: &str,
) -> (Vec<StreamEvent>, Option<usize>, Result<(), StreamError>) {
    let labels = std::collections::HashMap::from([(
        AgentId(3),
        labels.iter().map(|l| (*l).to_owned()).collect(),
    )]);
    let mut parser = StreamParser::new(OutputFormat::Guided).with_intent_labels(labels);
    let mut events = Vec::new();
    let mut intent_at = None;
    for (i, byte) in text.as_bytes().iter().enumerate() {
        if let Err(e) = parser.feed(&[*byte], &mut events) {
            return (events, intent_at, Err(e));
        }
        if intent_at.is_none()
            && events
                .iter()
                .any(|e| matches!(e, StreamEvent::Intent { .. }))
        {
            intent_at = Some(i + 1);
        }
    }
    let result = parser.finish(&mut events);
    (events, intent_at, result)
}

#[test]
fn an_intent_named_is_reported_once_its_first_letters_match_one_label() {
    let labels = ["heal", "hold here", "attack enemy 9"];
    let text = r#"{"agent":3,"intent":"attack enemy 9","say":"Go."}"#;
    let (events, at, result) = guided_by_name(&labels, text);
    assert!(result.is_ok(), "{result:?}");
    // `a` alone names one label: the intent comes with it, not with the closing quote.
    assert_eq!(at, Some(text.find("attack").unwrap() + 1));
    assert_eq!(events[0], intent(3, 3));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, StreamEvent::Intent { .. }))
            .count(),
        1
    );

    // "h" could be either of two labels; "he" is one.
    let text = r#"{"agent":3,"intent":"heal","say":"Ok."}"#;
    let (events, at, _) = guided_by_name(&labels, text);
    assert_eq!(at, Some(text.find("heal").unwrap() + 2));
    assert_eq!(events[0], intent(3, 1));

    // A name that starts as one label and ends as none is still an error.
    let text = r#"{"agent":3,"intent":"attack the base","say":"Go."}"#;
    let (events, _, result) = guided_by_name(&labels, text);
    assert_eq!(events[0], intent(3, 3));
    assert!(result.is_err());
}
