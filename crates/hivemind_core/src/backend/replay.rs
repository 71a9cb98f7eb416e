//! Recording a backend's output and playing it back.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::{
    BackendError, BackendFactory, BackendInfo, Batch, BatchSink, InferenceBackend, TokenUsage,
    stream_prompt,
};
use crate::plan::BackendId;
use crate::prompt::Fnv64;

/// One stream as a backend wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedStream {
    /// The hash of the stream's full prompt text ([`Transcript::key`]).
    pub key: u64,
    /// The text as it arrived, each piece with the stream's cumulative usage at that point.
    pub chunks: Vec<(String, TokenUsage)>,
    /// The stream's usage when it ended.
    pub end: TokenUsage,
    /// Set if the stream ended in an error rather than finishing.
    pub error: Option<String>,
    /// The id of the backend that wrote it; `None` in transcripts made before ids were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendId>,
}

/// Recorded streams, looked up by prompt. Saved as JSON lines, one stream per line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transcript {
    streams: Vec<RecordedStream>,
}

/// Why a transcript could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TranscriptError {
    /// The file could not be read or written.
    #[error("transcript {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line is not a recorded stream.
    #[error("transcript {path}:{line}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl Transcript {
    /// An empty transcript.
    pub fn new() -> Self {
        Transcript::default()
    }

    /// The key a stream's prompt is recorded under.
    pub fn key(prompt: &str) -> u64 {
        let mut h = Fnv64::new();
        h.write(prompt.as_bytes());
        h.finish()
    }

    /// The recorded streams, in recording order.
    pub fn streams(&self) -> &[RecordedStream] {
        &self.streams
    }

    /// Adds a stream.
    pub fn push(&mut self, stream: RecordedStream) {
        self.streams.push(stream);
    }

    /// Writes the transcript as JSON lines.
    pub fn save(&self, path: &Path) -> Result<(), TranscriptError> {
        let io = |source| TranscriptError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        for stream in &self.streams {
            let line = serde_json::to_string(stream).map_err(|e| io(e.into()))?;
            writeln!(file, "{line}").map_err(io)?;
        }
        file.flush().map_err(io)
    }

    /// Reads a transcript written by [`Transcript::save`].
    pub fn load(path: &Path) -> Result<Self, TranscriptError> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| TranscriptError::Io {
            path: name.clone(),
            source,
        })?;
        let mut streams = Vec::new();
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|source| TranscriptError::Io {
                path: name.clone(),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let stream = serde_json::from_str(&line).map_err(|e| TranscriptError::Parse {
                path: name.clone(),
                line: i + 1,
                message: e.to_string(),
            })?;
            streams.push(stream);
        }
        Ok(Transcript { streams })
    }
}

/// Plays back a [`Transcript`].
///
/// Each stream gets the next recording made for the same prompt text, chunk by chunk and with
/// the recorded token usage, so lockstep timing replays exactly. A prompt with no recording left
/// fails its stream with [`BackendError::NoRecording`].
pub struct ReplayBackend {
    by_key: HashMap<u64, Vec<usize>>,
    cursor: HashMap<u64, usize>,
    transcript: Arc<Transcript>,
}

impl ReplayBackend {
    /// A backend that replays `transcript`.
    pub fn new(transcript: Arc<Transcript>) -> Self {
        let mut by_key: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, s) in transcript.streams.iter().enumerate() {
            by_key.entry(s.key).or_default().push(i);
        }
        ReplayBackend {
            by_key,
            cursor: HashMap::new(),
            transcript,
        }
    }
}

impl InferenceBackend for ReplayBackend {
    fn run(&mut self, batch: &Batch, sink: &mut dyn BatchSink) -> Result<(), BackendError> {
        for stream in 0..batch.streams() {
            let key = Transcript::key(&stream_prompt(batch, stream).unwrap_or_default());
            let cursor = self.cursor.entry(key).or_insert(0);
            let Some(&index) = self.by_key.get(&key).and_then(|list| list.get(*cursor)) else {
                sink.error(stream, BackendError::NoRecording { key });
                continue;
            };
            *cursor += 1;
            let recorded = &self.transcript.streams[index];
            let mut cancelled = false;
            for (text, usage) in &recorded.chunks {
                if sink.is_cancelled(stream) {
                    cancelled = true;
                    break;
                }
                sink.text(stream, text, *usage);
            }
            if cancelled {
                continue;
            }
            match &recorded.error {
                Some(message) => sink.error(stream, BackendError::Failed(message.clone())),
                None => sink.done(stream, recorded.end),
            }
        }
        Ok(())
    }
}

/// Wraps a backend and records every stream it writes into a shared [`Transcript`].
pub struct Recorder {
    inner: Box<dyn InferenceBackend>,
    backend: BackendId,
    transcript: Arc<Mutex<Transcript>>,
}

impl Recorder {
    /// Records what `inner`, the backend named `backend`, writes into `transcript`.
    pub fn new(
        inner: Box<dyn InferenceBackend>,
        backend: BackendId,
        transcript: Arc<Mutex<Transcript>>,
    ) -> Self {
        Recorder {
            inner,
            backend,
            transcript,
        }
    }
}

struct RecordingSink<'a> {
    inner: &'a mut dyn BatchSink,
    streams: Vec<RecordedStream>,
    ended: Vec<bool>,
}

impl BatchSink for RecordingSink<'_> {
    fn text(&mut self, stream: usize, text: &str, usage: TokenUsage) {
        if let Some(s) = self.streams.get_mut(stream) {
            s.chunks.push((text.to_owned(), usage));
        }
        self.inner.text(stream, text, usage);
    }

    fn done(&mut self, stream: usize, usage: TokenUsage) {
        if let Some(s) = self.streams.get_mut(stream) {
            s.end = usage;
            self.ended[stream] = true;
        }
        self.inner.done(stream, usage);
    }

    fn error(&mut self, stream: usize, error: BackendError) {
        if let Some(s) = self.streams.get_mut(stream) {
            s.error = Some(error.to_string());
            self.ended[stream] = true;
        }
        self.inner.error(stream, error);
    }

    fn is_cancelled(&self, stream: usize) -> bool {
        self.inner.is_cancelled(stream)
    }

    fn hand_off(&mut self, stream: usize, handoff: &super::Handoff) {
        self.inner.hand_off(stream, handoff);
    }
}

impl InferenceBackend for Recorder {
    fn run(&mut self, batch: &Batch, sink: &mut dyn BatchSink) -> Result<(), BackendError> {
        let streams: Vec<RecordedStream> = (0..batch.streams())
            .map(|s| RecordedStream {
                key: Transcript::key(&stream_prompt(batch, s).unwrap_or_default()),
                backend: Some(self.backend.clone()),
                ..RecordedStream::default()
            })
            .collect();
        let ended = vec![false; streams.len()];
        let mut recording = RecordingSink {
            inner: sink,
            streams,
            ended,
        };
        let result = self.inner.run(batch, &mut recording);
        // A stream the pool stopped asking for (its answer complete, or cancelled) ends where
        // it was cut, and replays that way.
        let mut transcript = self
            .transcript
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (mut stream, ended) in recording.streams.into_iter().zip(recording.ended) {
            if !ended {
                stream.end = stream
                    .chunks
                    .last()
                    .map(|(_, usage)| *usage)
                    .unwrap_or_default();
            }
            transcript.push(stream);
        }
        result
    }
}

/// Builds a [`ReplayBackend`] per worker over one shared [`Transcript`]; backend id `replay`.
pub struct ReplayFactory {
    transcript: Arc<Transcript>,
    origin: String,
}

impl ReplayFactory {
    /// A factory replaying `transcript`, which came from `origin` (a file name, for
    /// [`BackendFactory::info`]).
    pub fn new(transcript: Transcript, origin: impl Into<String>) -> Arc<Self> {
        Arc::new(ReplayFactory {
            transcript: Arc::new(transcript),
            origin: origin.into(),
        })
    }

    /// A factory replaying the transcript saved at `path`.
    pub fn load(path: &Path) -> Result<Arc<Self>, TranscriptError> {
        Ok(Self::new(
            Transcript::load(path)?,
            path.display().to_string(),
        ))
    }
}

impl BackendFactory for ReplayFactory {
    fn id(&self) -> BackendId {
        BackendId::new(BackendId::REPLAY)
    }

    fn build(&self) -> Result<Box<dyn InferenceBackend>, BackendError> {
        Ok(Box::new(ReplayBackend::new(Arc::clone(&self.transcript))))
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            source: Some(format!(
                "{} ({} streams)",
                self.origin,
                self.transcript.streams.len()
            )),
            ..BackendInfo::default()
        }
    }
}

/// Wraps another factory so that every backend it builds is a [`Recorder`] writing into one
/// shared transcript. It keeps the inner backend's id and info.
pub struct RecordingFactory {
    inner: Arc<dyn BackendFactory>,
    transcript: Arc<Mutex<Transcript>>,
}

impl RecordingFactory {
    /// Records what `inner`'s backends write into `transcript`.
    pub fn new(inner: Arc<dyn BackendFactory>, transcript: Arc<Mutex<Transcript>>) -> Arc<Self> {
        Arc::new(RecordingFactory { inner, transcript })
    }

    /// The factory whose backends are recorded.
    pub fn inner(&self) -> &Arc<dyn BackendFactory> {
        &self.inner
    }

    /// The transcript recorded so far.
    pub fn transcript(&self) -> &Arc<Mutex<Transcript>> {
        &self.transcript
    }
}

impl BackendFactory for RecordingFactory {
    fn id(&self) -> BackendId {
        self.inner.id()
    }

    fn build(&self) -> Result<Box<dyn InferenceBackend>, BackendError> {
        Ok(Box::new(Recorder::new(
            self.inner.build()?,
            self.inner.id(),
            Arc::clone(&self.transcript),
        )))
    }

    fn info(&self) -> BackendInfo {
        self.inner.info()
    }
}
