//! Loading a GGUF file safely, the process-wide llama.cpp backend, and requantization.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;

use crate::LlamaError;

mod gguf;

/// The llama.cpp these bindings build (the workspace pins `llama-cpp-sys-2` to it). Saved
/// key/value states are only read back by the build that wrote them.
pub(crate) const LLAMA_CPP_BUILD: &str = "llama-cpp-sys-2 0.1.161";

/// The first bytes of every GGUF file.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// The smallest file that can hold a GGUF header (magic, version, two counts).
const GGUF_HEADER_BYTES: u64 = 24;

/// llama.cpp's backend. `LlamaBackend::init` succeeds once per process, and tests and games
/// may build many backends, so the one instance lives here.
static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// The process's llama.cpp backend, initialised on first use with its logs sent to `tracing`.
///
/// llama.cpp can be initialised only once per process; code that calls llama-cpp-2 directly
/// next to this crate must take the backend from here.
pub fn llama_backend() -> Result<&'static LlamaBackend, LlamaError> {
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LlamaError::Backend(e.clone()))
}

/// A model file that passed the checks llama.cpp itself does not make gracefully.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFile {
    path: PathBuf,
    bytes: u64,
    fingerprint: u64,
}

impl ModelFile {
    /// Checks that `path` is a readable file that starts like a GGUF file. llama.cpp asserts on
    /// a missing path in debug builds, so nothing reaches it before this passes.
    pub fn check(path: impl AsRef<Path>) -> Result<Self, LlamaError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| LlamaError::ModelMissing {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if !meta.is_file() {
            return Err(LlamaError::ModelMissing {
                path: path.to_owned(),
                reason: "not a file".into(),
            });
        }
        let not_gguf = |reason: String| LlamaError::NotGguf {
            path: path.to_owned(),
            reason,
        };
        if meta.len() < GGUF_HEADER_BYTES {
            return Err(not_gguf(format!("only {} bytes long", meta.len())));
        }
        let file = std::fs::File::open(path).map_err(|e| LlamaError::ModelMissing {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let mut head = Vec::with_capacity(64 * 1024);
        file.take(64 * 1024)
            .read_to_end(&mut head)
            .map_err(|e| not_gguf(e.to_string()))?;
        if !head.starts_with(GGUF_MAGIC) {
            return Err(not_gguf("it does not start with the GGUF magic".into()));
        }
        // llama.cpp stops the process on a broken vocabulary rather than returning an error.
        let metadata = std::fs::File::open(path).map_err(|e| not_gguf(e.to_string()))?;
        gguf::check_vocabulary(metadata, meta.len()).map_err(|problem| match problem {
            gguf::Problem::Malformed(reason) => not_gguf(reason),
            gguf::Problem::Vocabulary(reason) => LlamaError::BadVocabulary {
                path: path.to_owned(),
                reason,
            },
        })?;
        let mut hash = hivemind_core::prompt::Fnv64::new();
        hash.write(&meta.len().to_le_bytes());
        hash.write(&head);
        Ok(ModelFile {
            path: path.to_owned(),
            bytes: meta.len(),
            fingerprint: hash.finish(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A hash of its size and first 64 KiB (the header and metadata, which name the weights'
    /// quantization and shape): cheap, and enough to tell files apart in a report. Two files
    /// with the same header and different weights share it; saved states are keyed by
    /// [`ModelFile::content_hash`].
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// A hash of the whole file, read once per process for each size and modification time the
    /// file has (a requantized or fine-tuned model of the same size gets its own).
    pub fn content_hash(&self) -> Result<u64, LlamaError> {
        /// A file as its path, size and modification time.
        type Version = (PathBuf, u64, SystemTime);
        static HASHES: Mutex<Option<HashMap<Version, u64>>> = Mutex::new(None);
        let state =
            |e: std::io::Error| LlamaError::State(format!("reading {}: {e}", self.path.display()));
        let meta = std::fs::metadata(&self.path).map_err(state)?;
        let modified = meta.modified().map_err(state)?;
        let key = (self.path.clone(), meta.len(), modified);
        if let Some(&hash) = HASHES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_default()
            .get(&key)
        {
            return Ok(hash);
        }
        let hash = hash_file(std::fs::File::open(&self.path).map_err(state)?).map_err(state)?;
        HASHES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_default()
            .insert(key, hash);
        Ok(hash)
    }

    /// The quantization the file's name is tagged with, if any ([`Quantization::of_file`]).
    pub fn quantization(&self) -> Option<Quantization> {
        Quantization::of_file(&self.path)
    }

    /// Loads the weights. A truncated or corrupt file gives [`LlamaError::LoadFailed`].
    pub fn load(&self) -> Result<Arc<LlamaModel>, LlamaError> {
        let backend = llama_backend()?;
        let model = LlamaModel::load_from_file(backend, &self.path, &LlamaModelParams::default())
            .map_err(|e| LlamaError::LoadFailed {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Arc::new(model))
    }
}

/// What llama.cpp says of the CPU features it was built with and uses.
pub(crate) fn system_info() -> &'static str {
    // llama.cpp rebuilds the string in one static buffer on every call: read it once.
    static INFO: OnceLock<String> = OnceLock::new();
    INFO.get_or_init(|| {
        // SAFETY: llama.cpp returns a pointer to a NUL-terminated string in a static buffer,
        // valid until the next call, and this is the process's only call.
        let info = unsafe { std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) };
        info.to_string_lossy().into_owned()
    })
}

/// Hashes everything `file` holds, eight bytes at a step: each step is a bijection of the
/// running hash, so a file differing from another in one word always hashes differently.
fn hash_file(mut file: impl Read) -> std::io::Result<u64> {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let step = |h: u64, word: u64| (h ^ word).wrapping_mul(PRIME).rotate_left(29);
    let mut buf = vec![0u8; 1 << 20];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut len: u64 = 0;
    loop {
        // Fill the whole buffer (short reads happen), so words never straddle two reads.
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut words = buf[..filled].chunks_exact(8);
        for w in &mut words {
            let mut word = [0; 8];
            word.copy_from_slice(w);
            h = step(h, u64::from_le_bytes(word));
        }
        for &b in words.remainder() {
            h = step(h, u64::from(b));
        }
        len += filled as u64;
        if filled < buf.len() {
            return Ok(h ^ len);
        }
    }
}

/// A weight format [`quantize`] can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quantization {
    /// 4-bit blocks with a scale (llama.cpp's fastest x86 path for small models).
    Q4_0,
    /// 4-bit blocks with a scale and a minimum (what the default model ships as).
    Q4_1,
    /// 8-bit blocks with a scale; almost lossless.
    Q8_0,
    /// 4-bit k-quants, medium.
    Q4KM,
}

impl Quantization {
    /// Every format, in the order tables list them.
    pub const ALL: [Quantization; 4] = [
        Quantization::Q4_1,
        Quantization::Q8_0,
        Quantization::Q4_0,
        Quantization::Q4KM,
    ];

    /// The usual file-name tag, such as `Q8_0`.
    pub fn tag(self) -> &'static str {
        match self {
            Quantization::Q4_0 => "Q4_0",
            Quantization::Q4_1 => "Q4_1",
            Quantization::Q8_0 => "Q8_0",
            Quantization::Q4KM => "Q4_K_M",
        }
    }

    /// Parses a tag, ignoring case.
    pub fn from_tag(tag: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|q| q.tag().eq_ignore_ascii_case(tag))
    }

    fn ftype(self) -> llama_cpp_sys_2::llama_ftype {
        match self {
            Quantization::Q4_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_0,
            Quantization::Q4_1 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_1,
            Quantization::Q8_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0,
            Quantization::Q4KM => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_M,
        }
    }

    /// Where the requantized copy of `source` lives: next to it, with this tag in place of the
    /// source's own (`X.Q4_1.gguf` → `X.Q8_0.gguf`), or appended when it has none.
    pub fn path_beside(self, source: &Path) -> PathBuf {
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = name.strip_suffix(".gguf").unwrap_or(&name);
        let base = Self::of_file(source)
            .and_then(|q| stem.strip_suffix(&format!(".{}", q.tag())))
            .unwrap_or(stem);
        source.with_file_name(format!("{base}.{}.gguf", self.tag()))
    }

    /// The format a file's name is tagged with (`X.Q4_1.gguf`), if it carries a known tag.
    pub fn of_file(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_string_lossy();
        let stem = name.strip_suffix(".gguf").unwrap_or(&name);
        Self::ALL
            .into_iter()
            .find(|q| stem.ends_with(&format!(".{}", q.tag())))
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.tag())
    }
}

/// Writes `source` requantized to `format` at [`Quantization::path_beside`], once.
///
/// Returns the path; a copy that already exists is kept. The conversion is done once, at set-up, with llama.cpp's
/// own `llama_model_quantize`; the copy is written under a temporary name and renamed, so an
/// interrupted run leaves no half file behind.
pub fn quantize(source: &Path, format: Quantization) -> Result<PathBuf, LlamaError> {
    let target = format.path_beside(source);
    if target.is_file() && ModelFile::check(&target).is_ok() {
        return Ok(target);
    }
    ModelFile::check(source)?;
    llama_backend()?;
    let partial = target.with_extension("gguf.part");
    let c_path = |p: &Path| {
        CString::new(p.to_string_lossy().as_bytes()).map_err(|_| LlamaError::Quantize {
            path: p.to_owned(),
            reason: "the path holds a NUL byte".into(),
        })
    };
    let (src, dst) = (c_path(source)?, c_path(&partial)?);
    // SAFETY: plain data, filled in by llama.cpp's own defaults.
    let mut params = unsafe { llama_cpp_sys_2::llama_model_quantize_default_params() };
    params.ftype = format.ftype();
    params.nthread = std::thread::available_parallelism().map_or(1, |n| n.get() as i32);
    // Requantizing from a quantized file needs this; the shipped model is Q4_1.
    params.allow_requantize = true;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call, and `params`
    // is a fully initialised value of the type llama.cpp expects.
    let status =
        unsafe { llama_cpp_sys_2::llama_model_quantize(src.as_ptr(), dst.as_ptr(), &params) };
    if status != 0 {
        let _ = std::fs::remove_file(&partial);
        return Err(LlamaError::Quantize {
            path: source.to_owned(),
            reason: format!("llama_model_quantize returned {status}"),
        });
    }
    std::fs::rename(&partial, &target).map_err(|e| LlamaError::Quantize {
        path: target.clone(),
        reason: e.to_string(),
    })?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Saved states are filed under this name: it must change when the pin does.
    #[test]
    fn the_build_name_is_the_pinned_bindings() {
        let manifest = include_str!("../../../Cargo.toml");
        let pin = manifest
            .lines()
            .find(|l| l.starts_with("llama-cpp-sys-2 "))
            .unwrap();
        let version = LLAMA_CPP_BUILD.strip_prefix("llama-cpp-sys-2 ").unwrap();
        assert!(pin.contains(&format!("\"={version}\"")), "{pin}");
    }

    #[test]
    fn the_content_hash_sees_every_word_and_the_length() {
        let base = vec![7u8; (1 << 20) + 13];
        let hash = |bytes: &[u8]| hash_file(bytes).unwrap();
        let h = hash(&base);
        for at in [0, 8, 1 << 19, (1 << 20) - 1, 1 << 20, base.len() - 1] {
            let mut other = base.clone();
            other[at] ^= 1;
            assert_ne!(hash(&other), h, "a change at {at}");
        }
        assert_ne!(hash(&base[..base.len() - 1]), h);
        // Short reads do not change it.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(3);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        assert_eq!(hash_file(Trickle(&base)).unwrap(), h);
    }

    #[test]
    fn requantized_copies_sit_beside_the_source_with_their_tag() {
        let source = Path::new("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(
            Quantization::Q8_0.path_beside(source),
            Path::new("models/SmolLM2-135M-Instruct.Q8_0.gguf")
        );
        assert_eq!(
            Quantization::Q4_0.path_beside(Path::new("m/tiny.gguf")),
            Path::new("m/tiny.Q4_0.gguf")
        );
        assert_eq!(Quantization::from_tag("q4_k_m"), Some(Quantization::Q4KM));
        assert_eq!(Quantization::from_tag("f16"), None);
    }

    #[test]
    fn a_missing_path_and_a_file_that_is_not_gguf_are_told_apart() {
        let dir = std::env::temp_dir().join(format!("hivemind-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("nothing.gguf");
        assert!(matches!(
            ModelFile::check(&missing),
            Err(LlamaError::ModelMissing { .. })
        ));
        assert!(matches!(
            ModelFile::check(&dir),
            Err(LlamaError::ModelMissing { .. })
        ));
        let text = dir.join("notes.gguf");
        std::fs::write(&text, "these are not weights, only some words in a file").unwrap();
        assert!(matches!(
            ModelFile::check(&text),
            Err(LlamaError::NotGguf { .. })
        ));
        let tiny = dir.join("tiny.gguf");
        std::fs::write(&tiny, b"GGUF").unwrap();
        assert!(matches!(
            ModelFile::check(&tiny),
            Err(LlamaError::NotGguf { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
