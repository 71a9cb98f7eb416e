//! The remote backend against a fault-injecting HTTP server on loopback: every fault ends its
//! job exactly once with a typed error, nothing hangs, and each dialect's request body is the
//! golden one.

#![expect(
    clippy::unwrap_used,
    reason = "a test stops at the first thing that is not as it should be"
)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hivemind_core::action::{ActionRegistry, VerbSpec};
use hivemind_core::backend::{BackendError, BackendFactory, JobId};
use hivemind_core::clock::{Clock, Deadline, Timestamp};
use hivemind_core::config::{BatchingConfig, Dialect, HivemindConfig, RemoteConfig};
use hivemind_core::prompt::{AgentTask, ChatTemplate, IntentOption, Persona, PromptRules};
use hivemind_core::snapshot::{AgentId, Point, WorldSnapshot};
use hivemind_core::worker::{
    JobFailure, JobOutcome, JobRequest, PromptContext, WorkerEvent, WorkerEventKind, WorkerPool,
};
use hivemind_remote::RemoteFactory;
use serde_json::Value;

/// What the fake server does with every request.
#[derive(Clone)]
enum Fault {
    /// Streams the answer a token (four bytes) an event, in llama-server's format.
    Answer {
        first_byte: Duration,
        per_token: Duration,
    },
    /// Streams this many events of the answer, then closes the connection.
    CutAfter(usize),
    /// Answers with an HTTP error.
    Status(u16),
    /// Answers the first request with 429 and `Retry-After`, the next ones properly.
    RateLimited { retry_after_secs: u32 },
    /// Streams event lines that are not JSON.
    Garbage,
    /// Reads the request and never answers.
    Silent,
    /// Closes the connection as soon as it is accepted.
    CloseAtOnce,
}

struct FakeServer {
    url: String,
    /// Every request's path and body, in arrival order.
    requests: Arc<Mutex<Vec<(String, Value)>>>,
    /// Events written, over all connections.
    events_sent: Arc<AtomicUsize>,
    /// A write failed: the client closed the connection mid-answer.
    aborted: Arc<AtomicBool>,
}

fn serve(fault: Fault) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let events_sent = Arc::new(AtomicUsize::new(0));
    let aborted = Arc::new(AtomicBool::new(false));
    let (r, e, a) = (
        Arc::clone(&requests),
        Arc::clone(&events_sent),
        Arc::clone(&aborted),
    );
    std::thread::spawn(move || {
        let served = AtomicUsize::new(0);
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let n = served.fetch_add(1, Ordering::SeqCst);
            let (fault, r, e, a) = (
                fault.clone(),
                Arc::clone(&r),
                Arc::clone(&e),
                Arc::clone(&a),
            );
            std::thread::spawn(move || handle(conn, &fault, n, &r, &e, &a));
        }
    });
    FakeServer {
        url,
        requests,
        events_sent,
        aborted,
    }
}

fn handle(
    mut conn: TcpStream,
    fault: &Fault,
    nth: usize,
    requests: &Mutex<Vec<(String, Value)>>,
    events_sent: &AtomicUsize,
    aborted: &AtomicBool,
) {
    if matches!(fault, Fault::CloseAtOnce) {
        return;
    }
    let Some((path, body)) = read_request(&conn) else {
        return;
    };
    let answer = answer_for(&body);
    let events = events_for(&path, &answer);
    requests.lock().unwrap().push((path, body));
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
    let mut send = |text: &str| -> bool {
        let ok = conn
            .write_all(text.as_bytes())
            .and_then(|()| conn.flush())
            .is_ok();
        if !ok {
            aborted.store(true, Ordering::SeqCst);
        }
        ok
    };
    match fault {
        Fault::Answer {
            first_byte,
            per_token,
        } => {
            std::thread::sleep(*first_byte);
            if !send(head) {
                return;
            }
            for event in &events {
                std::thread::sleep(*per_token);
                if !send(event) {
                    return;
                }
                events_sent.fetch_add(1, Ordering::SeqCst);
            }
        }
        Fault::CutAfter(n) => {
            send(head);
            for event in events.iter().take(*n) {
                send(event);
                events_sent.fetch_add(1, Ordering::SeqCst);
            }
        }
        Fault::Status(code) => {
            let body = "{\"error\":{\"message\":\"the model is on fire\"}}";
            send(&format!(
                "HTTP/1.1 {code} Oops\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ));
        }
        Fault::RateLimited { retry_after_secs } if nth == 0 => {
            send(&format!(
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {retry_after_secs}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ));
        }
        Fault::RateLimited { .. } => {
            send(head);
            for event in &events {
                send(event);
            }
        }
        Fault::Garbage => {
            send(head);
            send("data: {\"content\":\"{\\\"ag\",\"stop\":false}\n\ndata: ~~~ not json ~~~\n\n");
        }
        Fault::Silent => std::thread::sleep(Duration::from_secs(30)),
        Fault::CloseAtOnce => {}
    }
}

/// The answer as the endpoint at `path` streams it: a piece of four bytes an event, then the
/// end.
fn events_for(path: &str, answer: &str) -> Vec<String> {
    let event = |v: Value| format!("data: {v}\n\n");
    let pieces = answer
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned());
    let mut events: Vec<String> = match path {
        "/completion" => pieces
            .map(|piece| event(serde_json::json!({"content": piece, "stop": false})))
            .collect(),
        "/v1/completions" => pieces
            .map(|piece| {
                event(serde_json::json!({"choices": [{"text": piece, "finish_reason": null}]}))
            })
            .collect(),
        _ => pieces
            .map(|piece| {
                let delta = serde_json::json!({"content": piece});
                event(serde_json::json!({"choices": [{"delta": delta, "finish_reason": null}]}))
            })
            .collect(),
    };
    if path == "/completion" {
        events.push(event(
            serde_json::json!({"content": "", "stop": true, "tokens_predicted": 9}),
        ));
    } else {
        events.push(event(
            serde_json::json!({"choices": [{"delta": {}, "text": "", "finish_reason": "stop"}]}),
        ));
        events.push(event(serde_json::json!({"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 9}})));
        events.push("data: [DONE]\n\n".to_owned());
    }
    events
}

/// Reads one HTTP request: its path and JSON body.
fn read_request(conn: &TcpStream) -> Option<(String, Value)> {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((path, serde_json::from_slice(&body).ok()?))
}

/// A valid answer for the request's agent, whose id the grammar or schema carries.
fn answer_for(body: &Value) -> String {
    let agent = agent_in(body).unwrap_or(0);
    if body.to_string().contains("intent") {
        format!("{{\"agent\":{agent},\"intent\":\"hold here\",\"say\":\"Holding.\"}}")
    } else {
        format!("{{\"agent\":{agent},\"say\":\"Hold the line, friend.\"}}")
    }
}

fn agent_in(body: &Value) -> Option<u32> {
    if let Some(id) = body
        .pointer("/response_format/json_schema/schema/properties/agent/enum/0")
        .and_then(Value::as_u64)
    {
        return u32::try_from(id).ok();
    }
    let grammar = body
        .get("grammar")
        .or_else(|| body.get("ebnf"))
        .or_else(|| body.pointer("/structured_outputs/grammar"))?
        .as_str()?;
    let at = grammar.find("agent\\\":")? + "agent\\\":".len();
    let digits: String = grammar[at..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn registry() -> ActionRegistry {
    ActionRegistry {
        idle: "Wait".into(),
        verbs: vec![VerbSpec {
            name: "Wait".into(),
            args: Vec::new(),
            goap: None,
            describe: "hold position".into(),
        }],
    }
}

fn context(config: &HivemindConfig) -> Arc<PromptContext> {
    Arc::new(PromptContext::new(
        &ChatTemplate::chatml(),
        &PromptRules {
            preamble: "You speak for NPCs.".into(),
            ..PromptRules::default()
        },
        Arc::new(registry()),
        &[Persona {
            name: "veteran".into(),
            voice: "Gruff.".into(),
        }],
        config,
    ))
}

fn remote(
    server: &FakeServer,
    dialect: Dialect,
    config: &mut HivemindConfig,
) -> Arc<RemoteFactory> {
    let settings = RemoteConfig {
        dialect,
        model: if dialect == Dialect::LlamaServer {
            String::new()
        } else {
            "smollm2".into()
        },
        read_timeout_ms: 400,
        connect_timeout_ms: 400,
        max_concurrent: 2,
        ..RemoteConfig::at(&server.url)
    };
    config.remotes.insert("remote".into(), settings);
    let factory = RemoteFactory::new();
    factory.configure(config);
    factory
}

fn line_request(id: u32, deadline: Deadline) -> JobRequest {
    JobRequest {
        agent: AgentId(id),
        persona: "veteran".into(),
        task: AgentTask::Dialogue {
            history: Vec::new(),
            player_said: "Who goes there?".into(),
        },
        snapshot: Arc::new(WorldSnapshot::new(AgentId(id), Point::new(3, 4))),
        deadline,
        spotlight: true,
    }
}

fn guided_request(id: u32) -> JobRequest {
    let option = |label: &str, reason: &str| IntentOption {
        goal: label.replace(' ', "_"),
        label: label.into(),
        reason: reason.into(),
    };
    JobRequest {
        agent: AgentId(id),
        persona: "veteran".into(),
        task: AgentTask::Guided {
            options: vec![
                option("attack enemy 9", "it has 20 hp"),
                option("hold here", "the point is held"),
            ],
            order: None,
        },
        snapshot: Arc::new(WorldSnapshot::new(AgentId(id), Point::new(3, 4))),
        deadline: far(),
        spotlight: false,
    }
}

fn far() -> Deadline {
    Deadline::after(Timestamp::ZERO, Duration::from_secs(3600))
}

/// Runs `requests` on a pool over `factory`, and returns every event once all jobs finished.
fn run(
    factory: Arc<RemoteFactory>,
    config: &HivemindConfig,
    requests: Vec<JobRequest>,
    cancel_after_first_words: bool,
) -> (Vec<JobId>, Vec<WorkerEvent>) {
    let batching = BatchingConfig {
        workers: 1,
        ..BatchingConfig::default()
    };
    let mut pool = WorkerPool::new(batching, factory, context(config), Clock::manual());
    let jobs: Vec<JobId> = requests.into_iter().map(|r| pool.submit(r, 0)).collect();
    pool.dispatch();
    let mut open: BTreeSet<JobId> = jobs.iter().copied().collect();
    let mut events = Vec::new();
    for _ in 0..400 {
        if open.is_empty() {
            break;
        }
        let Some(event) = pool.recv_timeout(Duration::from_millis(50)) else {
            continue;
        };
        if cancel_after_first_words && matches!(event.kind, WorkerEventKind::Words { .. }) {
            pool.cancel(event.job);
        }
        if matches!(event.kind, WorkerEventKind::Finished(_)) {
            open.remove(&event.job);
        }
        events.push(event);
    }
    assert!(open.is_empty(), "jobs never finished: {open:?}");
    // Exactly one completion per job.
    for job in &jobs {
        let ends = events
            .iter()
            .filter(|e| e.job == *job && matches!(e.kind, WorkerEventKind::Finished(_)))
            .count();
        assert_eq!(ends, 1, "{job} ended {ends} times");
    }
    (jobs, events)
}

fn outcome(events: &[WorkerEvent], job: JobId) -> JobOutcome {
    events
        .iter()
        .find_map(|e| match &e.kind {
            WorkerEventKind::Finished(o) if e.job == job => Some(o.clone()),
            _ => None,
        })
        .unwrap()
}

fn words(events: &[WorkerEvent], job: JobId) -> String {
    events
        .iter()
        .filter(|e| e.job == job)
        .filter_map(|e| match &e.kind {
            WorkerEventKind::Words { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// The job failed with a backend error whose message contains `needle`.
fn failed_with(events: &[WorkerEvent], job: JobId, needle: &str) {
    match outcome(events, job) {
        JobOutcome::Failed(JobFailure::Backend(BackendError::Failed(message))) => {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
        other => panic!("expected a backend failure with {needle:?}, got {other:?}"),
    }
}

/// One reply asked of a server with `fault`, in llama-server's dialect.
fn ask_once(fault: Fault) -> (FakeServer, JobId, Vec<WorkerEvent>) {
    let server = serve(fault);
    let mut config = HivemindConfig::default();
    let factory = remote(&server, Dialect::LlamaServer, &mut config);
    let (jobs, events) = run(factory, &config, vec![line_request(1, far())], false);
    (server, jobs[0], events)
}

fn quick() -> Fault {
    Fault::Answer {
        first_byte: Duration::ZERO,
        per_token: Duration::ZERO,
    }
}

#[test]
fn a_streamed_answer_arrives_as_words_and_completes() {
    let server = serve(quick());
    let mut config = HivemindConfig::default();
    let factory = remote(&server, Dialect::LlamaServer, &mut config);
    let requests = (1..=3).map(|id| line_request(id, far())).collect();
    let (jobs, events) = run(factory, &config, requests, false);
    for job in jobs {
        assert!(matches!(
            outcome(&events, job),
            JobOutcome::Completed { .. }
        ));
        assert_eq!(words(&events, job), "Hold the line, friend.");
    }
    assert_eq!(
        server.requests.lock().unwrap().len(),
        3,
        "one request per agent"
    );
}

#[test]
fn a_slow_first_byte_within_the_read_timeout_still_answers() {
    let (_server, job, events) = ask_once(Fault::Answer {
        first_byte: Duration::from_millis(150),
        per_token: Duration::ZERO,
    });
    assert!(matches!(
        outcome(&events, job),
        JobOutcome::Completed { .. }
    ));
}

#[test]
fn a_stream_cut_mid_json_keeps_what_came_and_fails_once() {
    let (_server, job, events) = ask_once(Fault::CutAfter(6));
    failed_with(&events, job, "cut");
    assert!(
        !words(&events, job).is_empty(),
        "the words before the cut stand"
    );
}

#[test]
fn http_errors_are_typed_with_the_status_and_the_servers_reason() {
    let (_server, job, events) = ask_once(Fault::Status(500));
    failed_with(&events, job, "HTTP 500");
    failed_with(&events, job, "on fire");
}

#[test]
fn a_429_is_retried_after_its_wait_only_while_the_deadline_allows() {
    let server = serve(Fault::RateLimited {
        retry_after_secs: 1,
    });
    let mut config = HivemindConfig::default();
    let factory = remote(&server, Dialect::LlamaServer, &mut config);
    let (jobs, events) = run(
        Arc::clone(&factory),
        &config,
        vec![line_request(1, far())],
        false,
    );
    assert!(matches!(
        outcome(&events, jobs[0]),
        JobOutcome::Completed { .. }
    ));
    assert_eq!(
        server.requests.lock().unwrap().len(),
        2,
        "asked again after the wait"
    );

    // A deadline closer than the wait: the 429 is the answer.
    let server = serve(Fault::RateLimited {
        retry_after_secs: 1,
    });
    let factory = remote(&server, Dialect::LlamaServer, &mut config);
    let soon = Deadline::after(Timestamp::ZERO, Duration::from_millis(300));
    let (jobs, events) = run(factory, &config, vec![line_request(1, soon)], false);
    failed_with(&events, jobs[0], "429");
    assert_eq!(server.requests.lock().unwrap().len(), 1);
}

#[test]
fn garbage_event_lines_are_a_malformed_stream() {
    let (_server, job, events) = ask_once(Fault::Garbage);
    failed_with(&events, job, "malformed event stream");
}

#[test]
fn a_server_that_never_answers_times_out() {
    let (_server, job, events) = ask_once(Fault::Silent);
    failed_with(&events, job, "said nothing");
}

#[test]
fn a_server_that_closes_at_once_or_is_not_there_fails_each_job_once() {
    let server = serve(Fault::CloseAtOnce);
    let mut config = HivemindConfig::default();
    let factory = remote(&server, Dialect::LlamaServer, &mut config);
    let requests = (1..=3).map(|id| line_request(id, far())).collect();
    let (jobs, events) = run(factory, &config, requests, false);
    for job in jobs {
        assert!(matches!(
            outcome(&events, job),
            JobOutcome::Failed(JobFailure::Backend(_))
        ));
    }

    // Nobody listens on the port at all.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nobody = FakeServer {
        url: format!("http://127.0.0.1:{port}"),
        requests: Arc::default(),
        events_sent: Arc::default(),
        aborted: Arc::default(),
    };
    let factory = remote(&nobody, Dialect::Vllm, &mut config);
    let (jobs, events) = run(factory, &config, vec![line_request(1, far())], false);
    failed_with(&events, jobs[0], "cannot reach");
}

#[test]
fn cancelling_a_job_closes_its_connection() {
    let server = serve(Fault::Answer {
        first_byte: Duration::ZERO,
        per_token: Duration::from_millis(40),
    });
    let mut config = HivemindConfig::default();
    let factory = remote(&server, Dialect::LlamaServer, &mut config);
    let (jobs, events) = run(factory, &config, vec![line_request(1, far())], true);
    assert_eq!(outcome(&events, jobs[0]), JobOutcome::Cancelled);
    // The server finds the connection closed before it has written the whole answer.
    for _ in 0..100 {
        if server.aborted.load(Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        server.aborted.load(Ordering::SeqCst),
        "the server never saw the close"
    );
    let sent = server.events_sent.load(Ordering::SeqCst);
    let whole = "{\"agent\":1,\"say\":\"Hold the line, friend.\"}"
        .len()
        .div_ceil(4)
        + 1;
    assert!(sent < whole, "{sent} of {whole} events were written");
}

/// Each dialect's request for one guided plan and one reply, against the golden file
/// `tests/golden/<dialect>.json` (`HIVEMIND_BLESS=1` writes them).
#[test]
fn each_dialect_sends_its_golden_request_bodies() {
    for dialect in [
        Dialect::LlamaServer,
        Dialect::Vllm,
        Dialect::Sglang,
        Dialect::Ollama,
        Dialect::OpenAi,
    ] {
        let server = serve(quick());
        let mut config = HivemindConfig::default();
        let factory = remote(&server, dialect, &mut config);
        let (jobs, events) = run(
            factory,
            &config,
            vec![guided_request(4), line_request(5, far())],
            false,
        );
        for job in &jobs {
            assert!(
                matches!(outcome(&events, *job), JobOutcome::Completed { .. }),
                "{dialect:?}: {:?}",
                outcome(&events, *job)
            );
        }
        let intent = events.iter().find_map(|e| match e.kind {
            WorkerEventKind::Intent { intent } => Some(intent),
            _ => None,
        });
        assert_eq!(
            intent,
            Some(2),
            "{dialect:?}: the guided intent is read back"
        );
        let mut bodies: Vec<Value> = server
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(path, body)| serde_json::json!({"path": path, "body": body}))
            .collect();
        bodies.sort_by_key(Value::to_string);
        let got = serde_json::to_string_pretty(&bodies).unwrap() + "\n";
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(format!("{dialect:?}.json").to_lowercase());
        if std::env::var_os("HIVEMIND_BLESS").is_some() {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &got).unwrap();
        }
        let want = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (HIVEMIND_BLESS=1 writes it)", file.display()));
        assert_eq!(got, want, "{dialect:?}: the request bodies changed");
    }
}
