//! Recording a backend's output and playing it back.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// The file may not be read or written as a transcript.
    #[error("transcript {path}: refused, {reason}")]
    Refused {
        /// The file.
        path: String,
        /// Why.
        reason: String,
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

    /// Writes the transcript as JSON lines, whole or not at all: see [`TranscriptWriter`].
    pub fn save(&self, path: &Path) -> Result<(), TranscriptError> {
        TranscriptWriter::create(path)?.finish(self)
    }

    /// Reads a transcript written by [`Transcript::save`]. Only a regular file is read (a FIFO
    /// or a device such as `/dev/zero` would never end), and no line may be longer than
    /// [`MAX_LINE_BYTES`].
    pub fn load(path: &Path) -> Result<Self, TranscriptError> {
        let name = path.display().to_string();
        let io = |source| TranscriptError::Io {
            path: name.clone(),
            source,
        };
        if !std::fs::metadata(path).map_err(io)?.is_file() {
            return Err(refused(path, "it is not a regular file"));
        }
        let file = File::open(path).map_err(io)?;
        Self::read(std::io::BufReader::new(file), &name)
    }

    /// Reads JSON lines of recorded streams from `reader`; `origin` names it in errors.
    pub fn read(mut reader: impl BufRead, origin: &str) -> Result<Self, TranscriptError> {
        let mut streams = Vec::new();
        let mut buf = Vec::new();
        for number in 1.. {
            buf.clear();
            let limit = MAX_LINE_BYTES as u64 + 1;
            let read = reader
                .by_ref()
                .take(limit)
                .read_until(b'\n', &mut buf)
                .map_err(|source| TranscriptError::Io {
                    path: origin.to_owned(),
                    source,
                })?;
            if read == 0 {
                break;
            }
            let parse = |message: String| TranscriptError::Parse {
                path: origin.to_owned(),
                line: number,
                message,
            };
            if buf.len() > MAX_LINE_BYTES {
                return Err(parse(format!(
                    "the line is longer than {MAX_LINE_BYTES} bytes"
                )));
            }
            let line = std::str::from_utf8(&buf).map_err(|e| parse(e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            streams.push(serde_json::from_str(line).map_err(|e| parse(e.to_string()))?);
        }
        Ok(Transcript { streams })
    }
}

/// The longest line [`Transcript::load`] reads: one recorded stream, 16 MiB.
pub const MAX_LINE_BYTES: usize = 16 << 20;

fn refused(path: &Path, reason: &str) -> TranscriptError {
    TranscriptError::Refused {
        path: path.display().to_string(),
        reason: reason.to_owned(),
    }
}

/// Where a transcript will be saved, checked and opened when recording starts, so that a bad
/// path is reported then and not when the session's recording is done.
///
/// The transcript is written to a temporary file beside `path` (a unique name, created new) and
/// renamed onto it, so a save that fails leaves what was there before. A symbolic link, a path
/// that is not a regular file, and a file that holds something other than a transcript are
/// refused. Dropped unfinished, it removes its temporary file.
#[derive(Debug)]
pub struct TranscriptWriter {
    path: PathBuf,
    temp: PathBuf,
    file: Option<File>,
}

impl TranscriptWriter {
    /// Checks `path` and opens a temporary file beside it.
    pub fn create(path: &Path) -> Result<Self, TranscriptError> {
        static UNIQUE: AtomicU64 = AtomicU64::new(0);
        let io = |source| TranscriptError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(refused(path, "it is a symbolic link"));
            }
            Ok(meta) if !meta.is_file() => return Err(refused(path, "it is not a regular file")),
            Ok(meta) if meta.len() > 0 && !holds_a_transcript(path) => {
                return Err(refused(path, "it holds something other than a transcript"));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let name = path
            .file_name()
            .ok_or_else(|| refused(path, "it names no file"))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(
            ".{}-{}.tmp",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        ));
        let temp = path.with_file_name(temp_name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io)?;
        Ok(TranscriptWriter {
            path: path.to_owned(),
            temp,
            file: Some(file),
        })
    }

    /// The file the transcript will be saved as.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `transcript` and puts it in place.
    pub fn finish(mut self, transcript: &Transcript) -> Result<(), TranscriptError> {
        let io = |source| TranscriptError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let Some(file) = self.file.take() else {
            return Err(refused(&self.path, "it was already saved"));
        };
        let mut out = std::io::BufWriter::new(file);
        for stream in &transcript.streams {
            let line = serde_json::to_string(stream).map_err(|e| io(e.into()))?;
            writeln!(out, "{line}").map_err(io)?;
        }
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&self.temp, &self.path).map_err(io)
    }
}

impl Drop for TranscriptWriter {
    fn drop(&mut self) {
        // Unfinished, or finished with an error before the rename.
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// Whether the regular file at `path` begins with a recorded stream.
fn holds_a_transcript(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let mut first = Vec::new();
    let mut reader = std::io::BufReader::new(file).take(MAX_LINE_BYTES as u64);
    if reader.read_until(b'\n', &mut first).is_err() {
        return false;
    }
    std::str::from_utf8(&first)
        .ok()
        .and_then(|line| serde_json::from_str::<RecordedStream>(line).ok())
        .is_some()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(n: usize) -> Transcript {
        let mut t = Transcript::new();
        for i in 0..n {
            t.push(RecordedStream {
                key: i as u64,
                chunks: vec![("{\"agent\":1}".into(), TokenUsage::default())],
                ..RecordedStream::default()
            });
        }
        t
    }

    fn temp_files(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn a_save_replaces_the_file_whole_and_an_unfinished_one_leaves_it_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        transcript(2).save(&path).unwrap();
        assert_eq!(Transcript::load(&path).unwrap(), transcript(2));

        // A recording that never finishes (the game crashed, the save failed) loses nothing
        // that was saved before: the file is only ever replaced by a rename.
        let writer = TranscriptWriter::create(&path).unwrap();
        assert_eq!(temp_files(dir.path()).len(), 1);
        drop(writer);
        assert_eq!(Transcript::load(&path).unwrap(), transcript(2));
        assert!(temp_files(dir.path()).is_empty());

        let writer = TranscriptWriter::create(&path).unwrap();
        writer.finish(&transcript(5)).unwrap();
        assert_eq!(Transcript::load(&path).unwrap(), transcript(5));
        assert!(temp_files(dir.path()).is_empty());
    }

    #[test]
    fn a_bad_place_to_save_is_refused_when_recording_starts() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("run.jsonl");
        assert!(matches!(
            TranscriptWriter::create(&missing),
            Err(TranscriptError::Io { .. })
        ));
        // A directory, a symbolic link (saving once followed it and overwrote its target) and a
        // file that is not a transcript are refused and left alone.
        assert!(matches!(
            TranscriptWriter::create(dir.path()),
            Err(TranscriptError::Refused { .. })
        ));
        let precious = dir.path().join("notes.txt");
        std::fs::write(&precious, "not a transcript\n").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&precious, &link).unwrap();
        for path in [&precious, &link] {
            let err = TranscriptWriter::create(path).unwrap_err();
            assert!(matches!(err, TranscriptError::Refused { .. }), "{err}");
        }
        assert_eq!(
            std::fs::read_to_string(&precious).unwrap(),
            "not a transcript\n"
        );
        assert!(temp_files(dir.path()).is_empty());
    }

    #[test]
    fn only_regular_files_are_read_and_lines_are_bounded() {
        // A device or a FIFO never ends; reading one once hung the game's main thread.
        let err = Transcript::load(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(err, TranscriptError::Refused { .. }), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        if made {
            let err = Transcript::load(&fifo).unwrap_err();
            assert!(matches!(err, TranscriptError::Refused { .. }), "{err}");
        }

        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let err = Transcript::read(&long[..], "long").unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        let err = Transcript::read(&b"\xff\xfe{}\n"[..], "bytes").unwrap_err();
        assert!(
            matches!(err, TranscriptError::Parse { line: 1, .. }),
            "{err}"
        );
    }
}
