//! One HTTP exchange: a request sent, its event stream read on a thread of its own.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::Sender;
use hivemind_core::backend::TokenUsage;
use hivemind_core::config::Dialect;

use crate::dialect::{DecodeError, RemoteRequest, decode};
use crate::sse::{SseEvent, SseParser};

/// Why a request to a server failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// No connection: refused, unreachable, or closed before any answer.
    #[error("cannot reach {url}: {reason}")]
    Connect {
        /// Where.
        url: String,
        /// What the network said.
        reason: String,
    },
    /// The server answered with an HTTP error.
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        /// Where.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the body, which usually says why.
        body: String,
    },
    /// HTTP 429: the server asks to be called again later.
    #[error("{url} is limiting requests (HTTP 429){}", retry_after.map(|d| format!(", retry after {d:?}")).unwrap_or_default())]
    RateLimited {
        /// Where.
        url: String,
        /// How long it asks to wait, from `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The server reported an error inside the stream.
    #[error("the server failed mid-answer: {0}")]
    Server(String),
    /// The stream is not the event stream the dialect sends.
    #[error("malformed event stream: {0}")]
    Malformed(String),
    /// The stream ended before the answer did.
    #[error("the stream was cut before the answer ended")]
    Cut,
    /// Nothing came for longer than the read timeout.
    #[error("the server said nothing for {0:?}")]
    Silent(Duration),
}

impl From<RemoteError> for hivemind_core::backend::BackendError {
    fn from(e: RemoteError) -> Self {
        hivemind_core::backend::BackendError::Failed(e.to_string())
    }
}

/// What an exchange reports to the backend.
#[derive(Debug)]
pub(crate) enum Report {
    /// The server answered or sent bytes: it is not silent.
    Alive(usize),
    /// Answer text, and what the stream has cost so far.
    Text(usize, String, TokenUsage),
    /// The answer is complete.
    Done(usize, TokenUsage),
    /// The exchange failed; nothing more comes from it.
    Failed(usize, RemoteError),
}

/// One request to send.
pub(crate) struct Call {
    pub stream: usize,
    pub url: String,
    pub api_key: Option<String>,
    pub dialect: Dialect,
    pub request: RemoteRequest,
    pub read_timeout: Duration,
}

/// Sends `call` and streams its answer to `out` until it ends, fails, or `cancel` is set; then
/// drops the connection, which tells the server to stop. `live` counts the exchanges whose
/// thread is still running: this one leaves it when it returns.
pub(crate) fn exchange(
    agent: &ureq::Agent,
    call: &Call,
    cancel: &Arc<AtomicBool>,
    out: &Sender<Report>,
    live: &Arc<AtomicUsize>,
) {
    /// Leaves `live` however the exchange ends.
    struct Leave<'a>(&'a AtomicUsize);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let _leave = Leave(live);
    let stream = call.stream;
    let result = stream_answer(agent, call, cancel, &mut |report| {
        let _ = out.send(report);
    });
    if let Err(error) = result {
        let _ = out.send(Report::Failed(stream, error));
    }
}

fn stream_answer(
    agent: &ureq::Agent,
    call: &Call,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(Report),
) -> Result<(), RemoteError> {
    let url = format!("{}{}", call.url.trim_end_matches('/'), call.request.path);
    let mut request = agent
        .post(&url)
        .set("Content-Type", "application/json")
        .set("Accept", "text/event-stream");
    if let Some(key) = &call.api_key {
        request = request.set("Authorization", &format!("Bearer {key}"));
    }
    let body = call.request.body.to_string();
    let response = match request.send_string(&body) {
        Ok(response) => response,
        Err(ureq::Error::Status(429, response)) => {
            let retry_after = response
                .header("Retry-After")
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(3600.0)));
            return Err(RemoteError::RateLimited { url, retry_after });
        }
        Err(ureq::Error::Status(status, response)) => {
            let mut body = String::new();
            let _ = response.into_reader().take(512).read_to_string(&mut body);
            return Err(RemoteError::Status { url, status, body });
        }
        Err(ureq::Error::Transport(t)) => return Err(transport(&url, &t, call.read_timeout)),
    };
    report(Report::Alive(call.stream));
    let mut reader = response.into_reader();
    let mut parser = SseParser::default();
    let mut events: Vec<SseEvent> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut usage = TokenUsage {
        prompt_tokens: call.request.prompt_tokens,
        generated_tokens: 0,
    };
    let mut finished = false;
    loop {
        if cancel.load(Ordering::Acquire) {
            return Ok(());
        }
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if is_timeout(&e) => return Err(RemoteError::Silent(call.read_timeout)),
            Err(_) if finished => {
                report(Report::Done(call.stream, usage));
                return Ok(());
            }
            Err(_) => return Err(RemoteError::Cut),
        };
        if n > 0 {
            report(Report::Alive(call.stream));
        }
        if n == 0 {
            if finished {
                report(Report::Done(call.stream, usage));
                return Ok(());
            }
            return Err(RemoteError::Cut);
        }
        parser
            .feed(&buf[..n], &mut events)
            .map_err(|e| RemoteError::Malformed(e.to_string()))?;
        for event in events.drain(..) {
            if event.event == "error" {
                return Err(RemoteError::Server(event.data));
            }
            let decoded = decode(call.dialect, &event.data).map_err(|e| match e {
                DecodeError::Server(message) => RemoteError::Server(message),
                DecodeError::Malformed(message) => RemoteError::Malformed(message),
            })?;
            if let Some(p) = decoded.prompt_tokens {
                usage.prompt_tokens = p;
            }
            if !decoded.text.is_empty() {
                usage.generated_tokens += 1;
            }
            if let Some(g) = decoded.generated_tokens {
                usage.generated_tokens = g;
            }
            if !decoded.text.is_empty() {
                report(Report::Text(call.stream, decoded.text, usage));
            }
            finished |= decoded.finished;
            if decoded.done {
                report(Report::Done(call.stream, usage));
                return Ok(());
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

fn transport(url: &str, t: &ureq::Transport, read_timeout: Duration) -> RemoteError {
    let timed_out = std::error::Error::source(t)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(is_timeout);
    if timed_out && t.kind() != ureq::ErrorKind::ConnectionFailed {
        return RemoteError::Silent(read_timeout);
    }
    RemoteError::Connect {
        url: url.to_owned(),
        reason: t.to_string(),
    }
}
