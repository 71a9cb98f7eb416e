//! The prefix key/value tree: the decoded state of every shared prompt level, kept between
//! batches and saved to disk.
//!
//! A level is the root (rules, actions, examples) or a branch under it (a persona, or the
//! ensemble of the shared layout). Each node holds only its own level's cells; a branch's state
//! starts where its root ends. Before every batch [`PrefixStore::restore`] empties the cache
//! and puts back the root and the batch's branches in a fixed order. A batch therefore always
//! starts from the same cells in the same places, whatever ran before it and on whichever
//! worker, which is what makes a lockstep run repeat exactly. Restoring copies memory; it
//! decodes nothing. When the last batch ended cleanly on the same levels, the cache already
//! holds exactly that state (a batch only adds its agents' cells and removes them all), so the
//! copy is skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use hivemind_core::prompt::{Fnv64, PromptLevel};
use llama_cpp_2::context::session::SeqState;
use llama_cpp_2::token::LlamaToken;

use crate::engine::{Engine, EngineShape, SeqId};
use crate::{LlamaError, ModelFile};

/// Nodes kept in memory before the least recently used are dropped (they stay on disk).
const MAX_NODES: usize = 64;

/// Saved states unused this long are deleted when a store opens their directory.
const STALE_STATE: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// A temporary file this old is a writer's that never finished.
const STALE_TEMPORARY: Duration = Duration::from_secs(60 * 60);

/// The key saved states are filed under: the whole model file, the llama.cpp build and the
/// CPU features it runs with, and the context's shape. States written under any other key are
/// never read.
pub(crate) fn state_key(file: &ModelFile, shape: EngineShape) -> Result<u64, LlamaError> {
    let mut h = Fnv64::new();
    h.write(&file.content_hash()?.to_le_bytes());
    h.write(crate::model::LLAMA_CPP_BUILD.as_bytes());
    h.write(crate::model::system_info().as_bytes());
    for n in [shape.n_ctx, shape.n_batch, shape.n_seq_max] {
        h.write(&n.to_le_bytes());
    }
    Ok(h.finish())
}

/// How the store has served levels, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Levels decoded by the model.
    pub decoded_levels: u64,
    /// Prompt tokens those decodes cost.
    pub decoded_tokens: u64,
    /// Levels loaded from a saved state file instead.
    pub loaded_levels: u64,
    /// Batches started from restored prefix state.
    pub restores: u64,
    /// Of those, batches that found the state already in place and copied nothing.
    pub reused: u64,
}

/// The levels every session of one factory holds in memory, counted per session, so the
/// console can tell whether a prefix or a persona branch is warm without asking a worker.
#[derive(Clone, Debug, Default)]
pub struct WarmLevels(Arc<Mutex<HashMap<u64, u32>>>);

impl WarmLevels {
    /// The keys held by at least one session, in ascending order.
    pub fn keys(&self) -> Vec<u64> {
        let held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys: Vec<u64> = held.keys().copied().collect();
        keys.sort_unstable();
        keys
    }

    /// Whether some session holds level `key`.
    pub fn contains(&self, key: u64) -> bool {
        let held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        held.contains_key(&key)
    }

    fn add(&self, key: u64) {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *held.entry(key).or_insert(0) += 1;
    }

    fn remove(&self, key: u64) {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&key);
            }
        }
    }
}

struct Node {
    /// Position of the first cell (the parent's end).
    start: u32,
    /// Position after the last cell.
    end: u32,
    state: SeqState,
    last_used: u64,
}

/// The decoded prefix levels of one model.
pub(crate) struct PrefixStore {
    nodes: HashMap<u64, Node>,
    dir: Option<PathBuf>,
    model: u64,
    clock: u64,
    pub(crate) stats: PrefixStats,
    warm: WarmLevels,
    /// The levels the cache holds exactly, and nothing else, since the last clean batch.
    resident: Option<Resident>,
    /// The levels of the batch under way, resident again once it ends cleanly.
    in_use: Option<Resident>,
}

/// A restored set of levels: the root, the sorted branch keys and where they are.
#[derive(Clone, Debug)]
struct Resident {
    root: u64,
    keys: Vec<u64>,
    restored: Restored,
}

impl Drop for PrefixStore {
    fn drop(&mut self) {
        for key in self.nodes.keys() {
            self.warm.remove(*key);
        }
    }
}

/// Where a restored batch's prefixes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Restored {
    /// Sequence of each branch key.
    pub(crate) branches: Vec<(u64, SeqId, u32)>,
    /// Cells the prefixes occupy.
    pub(crate) cells: u32,
    /// The first sequence id free for agents.
    pub(crate) first_free: u32,
}

impl Restored {
    /// The sequence and end position of branch `key`.
    pub(crate) fn branch(&self, key: u64) -> Option<(SeqId, u32)> {
        self.branches
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|&(_, s, e)| (s, e))
    }
}

impl PrefixStore {
    /// A store saving states under `dir` if given, filed under `model` ([`state_key`]). Opening
    /// a directory prunes it: other keys' states unused for [`STALE_STATE`] and temporaries a
    /// writer left behind.
    pub(crate) fn new(model: u64, dir: Option<PathBuf>) -> Self {
        if let Some(dir) = &dir {
            prune(dir, model, SystemTime::now());
        }
        PrefixStore {
            nodes: HashMap::new(),
            dir,
            model,
            clock: 0,
            stats: PrefixStats::default(),
            warm: WarmLevels::default(),
            resident: None,
            in_use: None,
        }
    }

    /// Reports the levels this store holds into `warm` from now on.
    pub(crate) fn share_warm_levels(&mut self, warm: WarmLevels) {
        for key in self.nodes.keys() {
            self.warm.remove(*key);
            warm.add(*key);
        }
        self.warm = warm;
    }

    /// Whether level `key` is decoded and in memory.
    pub(crate) fn contains(&self, key: u64) -> bool {
        self.nodes.contains_key(&key)
    }

    /// Makes sure `root` and each of `branches` (children of `root`) is decoded, loading saved
    /// states where they exist and saving new ones. Leaves the cache in no particular state.
    pub(crate) fn ensure(
        &mut self,
        engine: &mut Engine,
        root: &PromptLevel,
        branches: &[&PromptLevel],
    ) -> Result<(), LlamaError> {
        self.clock += 1;
        self.ensure_level(engine, root, None)?;
        for branch in branches {
            self.ensure_level(engine, branch, Some(root.key))?;
        }
        self.evict();
        Ok(())
    }

    fn ensure_level(
        &mut self,
        engine: &mut Engine,
        level: &PromptLevel,
        parent: Option<u64>,
    ) -> Result<(), LlamaError> {
        let clock = self.clock;
        if let Some(node) = self.nodes.get_mut(&level.key) {
            node.last_used = clock;
            return Ok(());
        }
        let start = match parent {
            Some(p) => self.nodes.get(&p).map_or(0, |n| n.end),
            None => 0,
        };
        let tokens = engine.tokenize_prompt(&level.prompt_text(), parent.is_none())?;
        let end = start + tokens.len() as u32;
        let shape = engine.shape();
        if end + shape.n_batch > shape.n_ctx {
            return Err(LlamaError::TooLarge(format!(
                "a prompt prefix of {end} tokens leaves no room in a {}-token context",
                shape.n_ctx
            )));
        }
        // Loading or decoding a level empties the cache.
        self.resident = None;
        let state = match self.load(engine, level.key, &tokens, start)? {
            Some(state) => {
                self.stats.loaded_levels += 1;
                state
            }
            None => {
                let (state, seq) = self.decode(engine, parent, &tokens, start)?;
                self.stats.decoded_levels += 1;
                self.stats.decoded_tokens += tokens.len() as u64;
                self.save(engine, level.key, &tokens, seq);
                state
            }
        };
        self.warm.add(level.key);
        self.nodes.insert(
            level.key,
            Node {
                start,
                end,
                state,
                last_used: clock,
            },
        );
        Ok(())
    }

    /// Decodes a level's tokens after its parent. Returns the state of its own cells and the
    /// sequence that still holds exactly those cells.
    fn decode(
        &mut self,
        engine: &mut Engine,
        parent: Option<u64>,
        tokens: &[LlamaToken],
        start: u32,
    ) -> Result<(SeqState, SeqId), LlamaError> {
        let (s0, s1) = (engine.seq(0)?, engine.seq(1)?);
        engine.clear_cache();
        let Some(parent) = parent.and_then(|p| self.nodes.get(&p)) else {
            engine.decode_run(tokens, s0, 0)?;
            return Ok((engine.save_seq(s0)?, s0));
        };
        engine.restore_seq(&parent.state, s0)?;
        engine.seq_cp(s0, s1, None, None);
        engine.decode_run(tokens, s1, start as i32)?;
        // Keep only this level's own cells in the saved state.
        engine.seq_rm(s1, Some(0), Some(start));
        Ok((engine.save_seq(s1)?, s1))
    }

    /// Empties the cache and restores `root` into sequence 0 and each branch into a sequence of
    /// its own (in key order), sharing the root's cells. If the last batch restored the same
    /// levels and ended cleanly ([`PrefixStore::batch_ended`]), the cache already holds exactly
    /// that and is left as it is.
    pub(crate) fn restore(
        &mut self,
        engine: &mut Engine,
        root: u64,
        branches: &[u64],
    ) -> Result<Restored, LlamaError> {
        let mut keys: Vec<u64> = branches.to_vec();
        keys.sort_unstable();
        keys.dedup();
        self.stats.restores += 1;
        let resident = match self.resident.take() {
            Some(r) if r.root == root && r.keys == keys => {
                self.stats.reused += 1;
                r
            }
            _ => Resident {
                restored: self.copy_in(engine, root, &keys)?,
                root,
                keys,
            },
        };
        let restored = resident.restored.clone();
        self.in_use = Some(resident);
        Ok(restored)
    }

    /// Marks the batch begun by the last [`PrefixStore::restore`] as ended with every agent's
    /// cells removed, so the cache holds only its prefix levels again.
    pub(crate) fn batch_ended(&mut self) {
        self.resident = self.in_use.take();
    }

    fn copy_in(
        &mut self,
        engine: &mut Engine,
        root: u64,
        keys: &[u64],
    ) -> Result<Restored, LlamaError> {
        let missing = || LlamaError::State("a prefix level was not decoded".into());
        engine.clear_cache();
        let root_node = self.nodes.get(&root).ok_or_else(missing)?;
        let s0 = engine.seq(0)?;
        engine.restore_seq(&root_node.state, s0)?;
        let root_end = root_node.end;
        let mut cells = root_end;
        let mut restored = Vec::with_capacity(keys.len());
        for (i, &key) in keys.iter().enumerate() {
            let node = self.nodes.get(&key).ok_or_else(missing)?;
            let seq = engine.seq(1 + i as u32)?;
            engine.restore_seq(&node.state, seq)?;
            engine.seq_cp(s0, seq, Some(0), Some(node.start.min(root_end)));
            cells += node.end - node.start;
            restored.push((key, seq, node.end));
        }
        Ok(Restored {
            first_free: 1 + restored.len() as u32,
            branches: restored,
            cells,
        })
    }

    fn evict(&mut self) {
        while self.nodes.len() > MAX_NODES {
            let Some(oldest) = self
                .nodes
                .iter()
                .min_by_key(|(k, n)| (n.last_used, **k))
                .map(|(k, _)| *k)
            else {
                return;
            };
            self.nodes.remove(&oldest);
            self.warm.remove(oldest);
        }
    }

    fn file(&self, key: u64) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{:016x}-{key:016x}.kv", self.model)))
    }

    /// Saves a freshly decoded level from `seq`, which holds exactly its cells. Failing to
    /// save costs only a later decode, so errors are logged, not returned.
    fn save(&self, engine: &Engine, key: u64, tokens: &[LlamaToken], seq: SeqId) {
        let Some(path) = self.file(key) else { return };
        let result = (|| -> Result<(), LlamaError> {
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| LlamaError::State(e.to_string()))?;
            // Unique names: two games sharing the directory never write into one file.
            let partial = temporary(&path);
            let sum = temporary(&checksum_path(&path));
            let written = (|| {
                engine.save_seq_file(&partial, seq, tokens)?;
                let bytes =
                    std::fs::read(&partial).map_err(|e| LlamaError::State(e.to_string()))?;
                std::fs::write(&sum, format!("{:016x}\n", checksum(&bytes)))
                    .map_err(|e| LlamaError::State(e.to_string()))?;
                // The checksum first: a state without its sum is ignored, never trusted.
                std::fs::rename(&sum, checksum_path(&path))
                    .and_then(|()| std::fs::rename(&partial, &path))
                    .map_err(|e| LlamaError::State(e.to_string()))
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(&partial);
                let _ = std::fs::remove_file(&sum);
            }
            written
        })();
        if let Err(e) = result {
            tracing::warn!("could not save prefix state to {}: {e}", path.display());
        }
    }

    /// Loads a saved level if its file is whole and holds exactly `tokens`. A missing,
    /// truncated or altered file is ignored (and the level decoded again).
    fn load(
        &self,
        engine: &mut Engine,
        key: u64,
        tokens: &[LlamaToken],
        start: u32,
    ) -> Result<Option<SeqState>, LlamaError> {
        let Some(path) = self.file(key) else {
            return Ok(None);
        };
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(None);
        };
        let expected = std::fs::read_to_string(checksum_path(&path)).unwrap_or_default();
        if expected.trim() != format!("{:016x}", checksum(&bytes)) {
            tracing::warn!(
                "ignoring prefix state {}: checksum mismatch",
                path.display()
            );
            return Ok(None);
        }
        let seq = engine.seq(0)?;
        engine.clear_cache();
        match engine.load_seq_file(&path, seq, tokens.len()) {
            Ok(saved) if saved == tokens => {
                // The cells must sit where this level's tokens go, after its parent.
                let end = start as i32 + tokens.len() as i32 - 1;
                if engine.seq_positions(seq) != Some((start as i32, end)) {
                    tracing::warn!(
                        "ignoring prefix state {}: its cells are not at positions {start}..={end}",
                        path.display()
                    );
                    engine.clear_cache();
                    return Ok(None);
                }
                // Used: pruning goes by modification time.
                if let Ok(file) = std::fs::File::options().append(true).open(&path) {
                    let _ = file.set_modified(SystemTime::now());
                }
                engine.save_seq(seq).map(Some)
            }
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!("ignoring prefix state {}: {e}", path.display());
                Ok(None)
            }
        }
    }
}

/// A fresh temporary name next to `path`, hidden and unique to this process and call.
fn temporary(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    path.with_file_name(format!(
        ".{name}.{}-{}.part",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Deletes from `dir` the states of keys other than `model` unused for [`STALE_STATE`], and
/// temporaries older than [`STALE_TEMPORARY`]. Only files this store names are touched.
fn prune(dir: &Path, model: u64, now: SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let ours = format!("{model:016x}-");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        let state = name.ends_with(".kv") || name.ends_with(".kv.sum");
        let stale = if name.starts_with('.') && name.ends_with(".part") {
            age > STALE_TEMPORARY
        } else {
            state && !name.starts_with(&ours) && age > STALE_STATE
        };
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn checksum_path(path: &Path) -> PathBuf {
    path.with_extension("kv.sum")
}

fn checksum(bytes: &[u8]) -> u64 {
    let mut h = Fnv64::new();
    h.write(bytes);
    h.finish()
}
