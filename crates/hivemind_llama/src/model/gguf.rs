//! What llama.cpp asserts on in a GGUF file's vocabulary, checked before it reads the file.
//!
//! llama.cpp validates a file's header and tensors with errors it returns, but its vocabulary
//! loader and tokenizer assume a sane vocabulary and stop the process (`GGML_ASSERT`,
//! `GGML_ABORT`) when it is not: two tokens with the same text, a tokenizer of type `none`, no
//! newline token. This reads the metadata itself, with every length checked against the file,
//! and refuses such a file with a reason.

use std::collections::HashSet;
use std::io::{BufReader, Read};

/// Metadata keys this check reads.
const TOKENIZER: &str = "tokenizer.ggml.model";
const TOKENS: &str = "tokenizer.ggml.tokens";
const TOKEN_TYPES: &str = "tokenizer.ggml.token_type";
const SCORES: &str = "tokenizer.ggml.scores";
const END_TOKENS: [&str; 2] = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"];
const SPECIAL_IDS: [&str; 7] = [
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.seperator_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.mask_token_id",
];

/// The tokenizers llama.cpp knows and this crate can prompt: each tokenizes text.
const TOKENIZERS: [&str; 6] = ["llama", "gpt2", "bert", "t5", "rwkv", "plamo2"];

/// More metadata entries than any real model has; a count above it is corruption.
const MAX_ENTRIES: u64 = 1 << 20;

/// Metadata value types (`gguf_type`).
mod ty {
    pub(super) const U8: u32 = 0;
    pub(super) const I8: u32 = 1;
    pub(super) const U16: u32 = 2;
    pub(super) const I16: u32 = 3;
    pub(super) const U32: u32 = 4;
    pub(super) const I32: u32 = 5;
    pub(super) const F32: u32 = 6;
    pub(super) const BOOL: u32 = 7;
    pub(super) const STRING: u32 = 8;
    pub(super) const ARRAY: u32 = 9;
    pub(super) const U64: u32 = 10;
    pub(super) const I64: u32 = 11;
    pub(super) const F64: u32 = 12;
}

/// The parts of a file's metadata the vocabulary check needs.
#[derive(Debug, Default)]
struct Vocabulary {
    tokenizer: Option<String>,
    tokens: Option<Vec<Vec<u8>>>,
    /// Lengths of the per-token arrays that must match `tokens`: (key, length).
    per_token: Vec<(&'static str, u64)>,
    /// Special token ids the file declares: (key, id).
    ids: Vec<(&'static str, u64)>,
}

/// What is wrong with a file.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Problem {
    /// Its metadata cannot be read: not a GGUF file, or a damaged one.
    Malformed(String),
    /// Its metadata reads, but its vocabulary is one llama.cpp would stop on.
    Vocabulary(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Malformed(reason) | Problem::Vocabulary(reason) => f.write_str(reason),
        }
    }
}

/// Reads a GGUF file's metadata from `file` (`len` bytes long) and checks its vocabulary.
pub(super) fn check_vocabulary(file: impl Read, len: u64) -> Result<(), Problem> {
    let mut reader = Reader {
        inner: BufReader::with_capacity(1 << 16, file),
        left: len,
    };
    let vocab = read_vocabulary(&mut reader).map_err(Problem::Malformed)?;
    check(vocab).map_err(Problem::Vocabulary)
}

fn check(vocab: Vocabulary) -> Result<(), String> {
    let tokenizer = vocab
        .tokenizer
        .ok_or_else(|| format!("it has no `{TOKENIZER}`"))?;
    if !TOKENIZERS.contains(&tokenizer.as_str()) {
        return Err(format!(
            "its tokenizer is `{tokenizer}`, not one that tokenizes text ({})",
            TOKENIZERS.join(", ")
        ));
    }
    let tokens = vocab
        .tokens
        .ok_or_else(|| format!("it has no `{TOKENS}`"))?;
    if tokens.is_empty() {
        return Err("its vocabulary is empty".into());
    }
    let mut seen = HashSet::with_capacity(tokens.len());
    for (id, text) in tokens.iter().enumerate() {
        if !seen.insert(text.as_slice()) {
            return Err(format!(
                "token {id} repeats the text of an earlier token ({:?})",
                String::from_utf8_lossy(text)
            ));
        }
    }
    let n = tokens.len() as u64;
    for (key, len) in vocab.per_token {
        if len != n {
            return Err(format!("`{key}` has {len} entries for {n} tokens"));
        }
    }
    for (key, id) in &vocab.ids {
        if *id >= n {
            return Err(format!("`{key}` is {id}, past its {n} tokens"));
        }
    }
    if !vocab.ids.iter().any(|(key, _)| END_TOKENS.contains(key)) {
        return Err("it names no end-of-text token".into());
    }
    // llama.cpp looks the newline up by its text when it loads the vocabulary.
    let newline: [&[u8]; 3] = [b"\n", "\u{010a}".as_bytes(), b"<0x0A>"];
    if !newline.iter().any(|n| seen.contains(n)) {
        return Err("its vocabulary has no newline token".into());
    }
    Ok(())
}

fn read_vocabulary(r: &mut Reader<impl Read>) -> Result<Vocabulary, String> {
    if r.bytes(4)? != b"GGUF" {
        return Err("it does not start with the GGUF magic".into());
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported"));
    }
    let _tensors = r.u64()?;
    let entries = r.u64()?;
    if entries > MAX_ENTRIES {
        return Err(format!("it claims {entries} metadata entries"));
    }
    let mut vocab = Vocabulary::default();
    for _ in 0..entries {
        let key = r.string()?;
        let kind = r.u32()?;
        match (key.as_slice(), kind) {
            (k, ty::STRING) if k == TOKENIZER.as_bytes() => {
                vocab.tokenizer = Some(String::from_utf8_lossy(&r.string()?).into_owned());
            }
            (k, ty::ARRAY) if k == TOKENS.as_bytes() => {
                let (item, count) = r.array_header()?;
                if item != ty::STRING {
                    return Err(format!("`{TOKENS}` is not an array of strings"));
                }
                // Each string is at least its 8-byte length.
                let count = r.fits(count, 8)?;
                let mut tokens = Vec::with_capacity(count);
                for _ in 0..count {
                    tokens.push(r.string()?);
                }
                vocab.tokens = Some(tokens);
            }
            (k, ty::ARRAY) if k == TOKEN_TYPES.as_bytes() || k == SCORES.as_bytes() => {
                let (item, count) = r.array_header()?;
                let name = if k == TOKEN_TYPES.as_bytes() {
                    TOKEN_TYPES
                } else {
                    SCORES
                };
                vocab.per_token.push((name, count));
                r.skip_items(item, count)?;
            }
            (k, kind) => match SPECIAL_IDS.iter().find(|s| s.as_bytes() == k) {
                Some(&name) => {
                    if let Some(id) = r.integer(kind)? {
                        vocab.ids.push((name, id));
                    }
                }
                None => r.skip_value(kind)?,
            },
        }
    }
    Ok(vocab)
}

/// Reads the metadata, never past the end of the file and never allocating more than the file
/// could hold.
struct Reader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Reader<R> {
    fn take(&mut self, n: u64) -> Result<(), String> {
        if n > self.left {
            return Err("its metadata runs past the end of the file".into());
        }
        self.left -= n;
        Ok(())
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, String> {
        self.take(n)?;
        let mut buf = vec![0; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("reading its metadata: {e}"))?;
        Ok(buf)
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        self.take(n)?;
        let skipped = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(|e| format!("reading its metadata: {e}"))?;
        if skipped == n {
            Ok(())
        } else {
            Err("its metadata runs past the end of the file".into())
        }
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.bytes(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self) -> Result<Vec<u8>, String> {
        let len = self.u64()?;
        self.bytes(len)
    }

    fn array_header(&mut self) -> Result<(u32, u64), String> {
        Ok((self.u32()?, self.u64()?))
    }

    /// `count` items of at least `min` bytes each, if the rest of the file can hold them.
    fn fits(&self, count: u64, min: u64) -> Result<usize, String> {
        if count.saturating_mul(min) > self.left {
            return Err(format!("an array of {count} items is longer than the file"));
        }
        usize::try_from(count).map_err(|_| format!("an array of {count} items"))
    }

    /// An integer value of type `kind`; `None` for a value of another type (skipped).
    fn integer(&mut self, kind: u32) -> Result<Option<u64>, String> {
        let value = match kind {
            ty::U8 | ty::I8 => u64::from(self.bytes(1)?[0]),
            ty::U16 | ty::I16 => {
                let b = self.bytes(2)?;
                u64::from(u16::from_le_bytes([b[0], b[1]]))
            }
            ty::U32 => u64::from(self.u32()?),
            // A negative id means none (llama.cpp's -1).
            ty::I32 => match i32::from_le_bytes(self.u32()?.to_le_bytes()) {
                id if id < 0 => return Ok(None),
                id => id as u64,
            },
            ty::U64 => self.u64()?,
            ty::I64 => match i64::from_le_bytes(self.u64()?.to_le_bytes()) {
                id if id < 0 => return Ok(None),
                id => id as u64,
            },
            other => {
                self.skip_value(other)?;
                return Ok(None);
            }
        };
        Ok(Some(value))
    }

    fn skip_value(&mut self, kind: u32) -> Result<(), String> {
        match kind {
            ty::STRING => {
                let len = self.u64()?;
                self.skip(len)
            }
            ty::ARRAY => {
                let (item, count) = self.array_header()?;
                self.skip_items(item, count)
            }
            other => self.skip(scalar_size(other)?),
        }
    }

    fn skip_items(&mut self, item: u32, count: u64) -> Result<(), String> {
        match item {
            ty::STRING => {
                let count = self.fits(count, 8)?;
                for _ in 0..count {
                    let len = self.u64()?;
                    self.skip(len)?;
                }
                Ok(())
            }
            // llama.cpp refuses nested arrays too.
            ty::ARRAY => Err("it has an array of arrays".into()),
            other => {
                let size = scalar_size(other)?;
                self.skip(
                    count
                        .checked_mul(size)
                        .ok_or("an array longer than the file")?,
                )
            }
        }
    }
}

fn scalar_size(kind: u32) -> Result<u64, String> {
    Ok(match kind {
        ty::U8 | ty::I8 | ty::BOOL => 1,
        ty::U16 | ty::I16 => 2,
        ty::U32 | ty::I32 | ty::F32 => 4,
        ty::U64 | ty::I64 | ty::F64 => 8,
        other => return Err(format!("a metadata value of unknown type {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF file holding only metadata.
    #[derive(Default)]
    struct Gguf {
        entries: Vec<u8>,
        count: u64,
    }

    impl Gguf {
        fn string(out: &mut Vec<u8>, s: &[u8]) {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s);
        }
        fn key(&mut self, key: &str, kind: u32) -> &mut Self {
            Self::string(&mut self.entries, key.as_bytes());
            self.entries.extend_from_slice(&kind.to_le_bytes());
            self.count += 1;
            self
        }
        fn str(&mut self, key: &str, value: &str) -> &mut Self {
            self.key(key, ty::STRING);
            Self::string(&mut self.entries, value.as_bytes());
            self
        }
        fn u32(&mut self, key: &str, value: u32) -> &mut Self {
            self.key(key, ty::U32);
            self.entries.extend_from_slice(&value.to_le_bytes());
            self
        }
        fn tokens(&mut self, tokens: &[&str]) -> &mut Self {
            self.key(TOKENS, ty::ARRAY);
            self.entries.extend_from_slice(&ty::STRING.to_le_bytes());
            self.entries
                .extend_from_slice(&(tokens.len() as u64).to_le_bytes());
            for t in tokens {
                Self::string(&mut self.entries, t.as_bytes());
            }
            self
        }
        fn bytes(&self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend_from_slice(&3u32.to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes());
            out.extend_from_slice(&self.count.to_le_bytes());
            out.extend_from_slice(&self.entries);
            out
        }
        fn check(&self) -> Result<(), String> {
            let bytes = self.bytes();
            check_vocabulary(bytes.as_slice(), bytes.len() as u64).map_err(|e| e.to_string())
        }
    }

    fn good() -> Gguf {
        let mut g = Gguf::default();
        g.str("general.architecture", "llama")
            .str(TOKENIZER, "gpt2")
            .tokens(&["<|endoftext|>", "a", "b", "\u{010a}"])
            .u32("tokenizer.ggml.eos_token_id", 0);
        g
    }

    #[test]
    fn a_sane_vocabulary_passes() {
        assert_eq!(good().check(), Ok(()));
    }

    #[test]
    fn what_llama_cpp_asserts_on_is_refused_with_a_reason() {
        let mut duplicate = Gguf::default();
        duplicate
            .str(TOKENIZER, "gpt2")
            .tokens(&["<|endoftext|>", "a", "a", "\u{010a}"])
            .u32("tokenizer.ggml.eos_token_id", 0);
        assert!(duplicate.check().unwrap_err().contains("token 2 repeats"));

        let mut none = good();
        none.str(TOKENIZER, "none");
        // The later entry wins, as in llama.cpp.
        assert!(none.check().unwrap_err().contains("tokenizer is `none`"));

        let mut no_end = Gguf::default();
        no_end
            .str(TOKENIZER, "gpt2")
            .tokens(&["<|endoftext|>", "\u{010a}"]);
        assert!(no_end.check().unwrap_err().contains("no end-of-text"));

        let mut past = good();
        past.u32("tokenizer.ggml.bos_token_id", 99);
        assert!(past.check().unwrap_err().contains("past its 4 tokens"));

        let mut no_newline = Gguf::default();
        no_newline
            .str(TOKENIZER, "gpt2")
            .tokens(&["<|endoftext|>", "a"])
            .u32("tokenizer.ggml.eos_token_id", 0);
        assert!(no_newline.check().unwrap_err().contains("no newline"));

        let mut no_tokens = Gguf::default();
        no_tokens.str(TOKENIZER, "llama");
        assert!(
            no_tokens
                .check()
                .unwrap_err()
                .contains("no `tokenizer.ggml.tokens`")
        );
    }

    #[test]
    fn lengths_past_the_end_of_the_file_are_errors_not_allocations() {
        let mut huge = good().bytes();
        // The entry count, then a key whose length claims most of the address space.
        huge.truncate(24);
        huge.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        let err = check_vocabulary(huge.as_slice(), huge.len() as u64).unwrap_err();
        assert!(
            matches!(&err, Problem::Malformed(e) if e.contains("past the end")),
            "{err}"
        );

        let whole = good().bytes();
        for cut in 0..whole.len() {
            assert!(
                check_vocabulary(&whole[..cut], cut as u64).is_err(),
                "cut at {cut}"
            );
        }
        let mut many = good();
        many.count = u64::MAX;
        assert!(many.check().unwrap_err().contains("metadata entries"));
    }
}
