//! Situation-relative answers, remembered per persona, request kind and bucketed situation.
//!
//! An [`AnswerCache`] maps a [`CacheKey`] (persona + [`RequestKind`] + a coarse summary of the
//! [`WorldSnapshot`]) to a [`CachedAnswer`]. Answers are stored *relative to the situation*: a
//! cached plan does not say "attack entity 7" but "attack the weakest enemy in sight"
//! ([`ArgRole::WeakestIn`]), "take the nearest cover" ([`ArgRole::NearestPoint`]) or "move two
//! cells east" ([`ArgRole::Offset`]). On a hit, [`AnswerCache::get`] binds those roles in the
//! *current* snapshot and validates every step with
//! [`ActionRegistry::validate_step`]; an answer that no longer binds or validates is a miss.
//!
//! ```text
//! model answer ──RelativeStep::from_step──▶ CachedAnswer ──insert──▶ AnswerCache
//!                   (in the answer's own snapshot)                         │
//! current snapshot ──CacheKey::new──▶ get ──bind + validate_step──▶ CachedHit or miss
//! ```
//!
//! # Design
//!
//! **The key is deliberately coarse.** Two situations share a key when the agent's persona and
//! request kind match, its health is in the same band (low / mid / high), it stands in the same
//! cell of a grid `position_quantum` wide, every entity set has the same members in the same
//! quantised cells (kept as a sorted list, so the count is its length and snapshot order does not
//! matter), every point set likewise, and its facts agree in kind: integers only as
//! negative / zero / positive ("ammo empty or some"), booleans exactly, text by a stable hash. The
//! entities' health, names and own facts and the snapshot's bounds are left out on purpose:
//! roles like "weakest enemy" absorb them, and binding plus validation catches whatever they
//! break. A key is a handful of small vectors built in one pass; together with a hit it costs
//! well under 10 µs.
//!
//! **Values are roles, not ids,** so that an answer written for one situation is still right in
//! the next one that shares its key. A step whose concrete values no role reproduces (the model
//! shot the second-nearest of three enemies, say) is not cached at all rather than cached wrong:
//! [`RelativeStep::from_step`] returns `None`.
//!
//! **Thread-safe.** The cache wraps [`quick_cache::sync::Cache`] rather than the `unsync`
//! variant because it has two writers on two threads: the game reads and fills it during
//! `Gather`/`Apply`, and answers that arrive after their fallback fill it from the worker side
//! (see "Deadlines and late answers" in the design). Every method takes `&self`, so an
//! `Arc<AnswerCache>` needs no outer lock, and the sharded locks keep the two sides from
//! contending. Entries are kept behind an [`Arc`] because `quick_cache` clones a value on every
//! read.
//!
//! **Deterministic.** Time is passed in as a [`Timestamp`] (the cache never reads a clock), the
//! hasher has fixed keys, and the shard count is a function of the capacity alone, so which
//! entries are evicted, and therefore which lookups hit, depends only on the sequence of calls.
//! Lockstep runs repeat exactly.
//!
//! A failed re-bind counts as a miss but does not evict the entry: the key matched, so other
//! snapshots in the same bucket may still bind it, and the model's next answer for this key
//! replaces it anyway. An expired entry is removed when a lookup finds it.

use std::cmp::Reverse;
use std::fmt;
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{OptionsBuilder, UnitWeighter};
use serde::{Deserialize, Serialize};

use crate::action::{ActionRegistry, ArgKind};
use crate::clock::Timestamp;
use crate::config::CacheConfig;
use crate::plan::{ArgValue, PlanStep, RequestKind};
use crate::prompt::Fnv64;
use crate::snapshot::{EntityId, Fact, Point, WorldSnapshot};

/// The agent's health band, as it enters a [`CacheKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HpBucket {
    /// Below [`CacheConfig::hp_low`].
    Low,
    /// From [`CacheConfig::hp_low`] up to, not including, [`CacheConfig::hp_high`].
    Mid,
    /// At or above [`CacheConfig::hp_high`].
    High,
}

impl HpBucket {
    /// The band of a health `fraction` under `config`.
    pub fn of(fraction: f32, config: &CacheConfig) -> Self {
        if fraction < config.hp_low {
            HpBucket::Low
        } else if fraction >= config.hp_high {
            HpBucket::High
        } else {
            HpBucket::Mid
        }
    }
}

/// A position divided by the quantum, rounding toward negative infinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Cell {
    x: i64,
    y: i64,
}

impl Cell {
    fn of(p: Point, quantum: i64) -> Self {
        Cell {
            x: i64::from(p.x).div_euclid(quantum),
            y: i64::from(p.y).div_euclid(quantum),
        }
    }
}

/// The members of one entity or point set, as sorted cells.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SetSummary {
    set: Box<str>,
    cells: Vec<Cell>,
}

/// A fact reduced to what changes an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum FactBucket {
    /// The sign of an integer: -1, 0 or 1.
    Int(i8),
    Bool(bool),
    /// A stable hash of the text.
    Text(u64),
}

impl FactBucket {
    fn of(fact: &Fact) -> Self {
        match fact {
            Fact::Int(n) => FactBucket::Int(n.signum() as i8),
            Fact::Bool(b) => FactBucket::Bool(*b),
            Fact::Text(t) => FactBucket::Text(fnv1a(t.as_bytes())),
        }
    }
}

/// A hash stable across platforms and Rust releases, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = Fnv64::new();
    h.write(bytes);
    h.finish()
}

/// Which answers a situation may share. See the [module docs](self) for what is bucketed and
/// why.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    persona: Box<str>,
    kind: RequestKind,
    hp: HpBucket,
    cell: Cell,
    entities: Vec<SetSummary>,
    points: Vec<SetSummary>,
    facts: Vec<(Box<str>, FactBucket)>,
}

impl CacheKey {
    /// The key of `snapshot` for `persona` asking for `kind`, bucketed as `config` says.
    pub fn new(
        persona: &str,
        kind: RequestKind,
        snapshot: &WorldSnapshot,
        config: &CacheConfig,
    ) -> Self {
        let quantum = i64::from(config.position_quantum.max(1));
        let entities = summarize(
            snapshot
                .entities
                .iter()
                .map(|e| (e.set.as_str(), e.position)),
            quantum,
        );
        let points = summarize(
            snapshot.points.iter().map(|p| (p.set.as_str(), p.at)),
            quantum,
        );
        let facts = snapshot
            .facts
            .iter()
            .map(|(name, fact)| (Box::from(name.as_str()), FactBucket::of(fact)))
            .collect();
        CacheKey {
            persona: Box::from(persona),
            kind,
            hp: HpBucket::of(snapshot.health.fraction(), config),
            cell: Cell::of(snapshot.position, quantum),
            entities,
            points,
            facts,
        }
    }

    /// The persona the key belongs to.
    pub fn persona(&self) -> &str {
        &self.persona
    }

    /// The request kind the key belongs to.
    pub fn kind(&self) -> RequestKind {
        self.kind
    }

    /// The agent's health band.
    pub fn hp(&self) -> HpBucket {
        self.hp
    }
}

/// Groups `(set, position)` pairs into per-set sorted cells, sets in name order.
fn summarize<'a>(members: impl Iterator<Item = (&'a str, Point)>, quantum: i64) -> Vec<SetSummary> {
    let mut cells: Vec<(&str, Cell)> = members
        .map(|(set, p)| (set, Cell::of(p, quantum)))
        .collect();
    cells.sort_unstable();
    let mut out: Vec<SetSummary> = Vec::new();
    for (set, cell) in cells {
        match out.last_mut() {
            Some(last) if *last.set == *set => last.cells.push(cell),
            _ => out.push(SetSummary {
                set: Box::from(set),
                cells: vec![cell],
            }),
        }
    }
    out
}

/// How a cached step finds an argument's value in a new snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ArgRole {
    /// The nearest entity of the set (ties by lower id).
    NearestIn(String),
    /// The entity of the set with the lowest current health (ties by nearest, then lower id).
    /// Entities without health are never the weakest.
    WeakestIn(String),
    /// The nearest point of the set (ties by the smaller point, x then y).
    NearestPoint(String),
    /// The farthest point of the set (ties by the smaller point, x then y).
    FarthestPoint(String),
    /// The agent's own position moved by `(dx, dy)`.
    Offset {
        /// The horizontal offset.
        dx: i32,
        /// The vertical offset.
        dy: i32,
    },
    /// This exact value, for integer and text arguments.
    Literal(ArgValue),
}

impl ArgRole {
    /// The value this role stands for in `snapshot`, if it has one.
    pub fn resolve(&self, snapshot: &WorldSnapshot) -> Option<ArgValue> {
        match self {
            ArgRole::NearestIn(set) => nearest_in(snapshot, set).map(entity_value),
            ArgRole::WeakestIn(set) => weakest_in(snapshot, set).map(entity_value),
            ArgRole::NearestPoint(set) => nearest_point(snapshot, set).map(ArgValue::Point),
            ArgRole::FarthestPoint(set) => farthest_point(snapshot, set).map(ArgValue::Point),
            ArgRole::Offset { dx, dy } => {
                let at = snapshot.position;
                Some(ArgValue::Point(Point::new(
                    at.x.checked_add(*dx)?,
                    at.y.checked_add(*dy)?,
                )))
            }
            ArgRole::Literal(value) => Some(value.clone()),
        }
    }
}

fn entity_value(id: EntityId) -> ArgValue {
    ArgValue::Int(i64::from(id.0))
}

fn nearest_in(snapshot: &WorldSnapshot, set: &str) -> Option<EntityId> {
    let at = snapshot.position;
    snapshot
        .entities_in(set)
        .map(|e| (at.distance_squared(e.position), e.id))
        .min()
        .map(|(_, id)| id)
}

fn weakest_in(snapshot: &WorldSnapshot, set: &str) -> Option<EntityId> {
    let at = snapshot.position;
    snapshot
        .entities_in(set)
        .filter_map(|e| Some((e.health?.current, at.distance_squared(e.position), e.id)))
        .min()
        .map(|(_, _, id)| id)
}

fn nearest_point(snapshot: &WorldSnapshot, set: &str) -> Option<Point> {
    let at = snapshot.position;
    snapshot
        .points_in(set)
        .min_by_key(|p| (at.distance_squared(*p), *p))
}

fn farthest_point(snapshot: &WorldSnapshot, set: &str) -> Option<Point> {
    let at = snapshot.position;
    snapshot
        .points_in(set)
        .max_by_key(|p| (at.distance_squared(*p), Reverse(*p)))
}

/// A plan step whose arguments are [`ArgRole`]s rather than concrete values.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RelativeStep {
    /// The verb, as named in the [`ActionRegistry`].
    pub verb: String,
    /// The arguments by name, in the original step's order.
    pub args: Vec<(String, ArgRole)>,
}

impl RelativeStep {
    /// The roles that reproduce `step` in `snapshot`, the situation it was written for.
    ///
    /// Entity arguments become [`ArgRole::WeakestIn`] if the target is the weakest of its set,
    /// else [`ArgRole::NearestIn`] if it is the nearest; point arguments
    /// [`ArgRole::NearestPoint`], else [`ArgRole::FarthestPoint`]; cells an [`ArgRole::Offset`]
    /// from the agent; integers and text stay [`ArgRole::Literal`]. `None` if the step does not
    /// validate in `snapshot` or some value is none of these, so that it is not cached.
    pub fn from_step(
        step: &PlanStep,
        snapshot: &WorldSnapshot,
        registry: &ActionRegistry,
    ) -> Option<Self> {
        registry.validate_step(step, snapshot).ok()?;
        let verb = registry.verb(&step.verb)?;
        let args = step
            .args
            .iter()
            .map(|(name, value)| {
                let spec = verb.args.iter().find(|a| a.name == *name)?;
                Some((name.clone(), role_for(&spec.kind, value, snapshot)?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(RelativeStep {
            verb: step.verb.clone(),
            args,
        })
    }

    /// The step in `snapshot`: every role resolved, and the result validated against
    /// `registry`. `None` if a role has nothing to point at or the bound step is not valid.
    pub fn bind(&self, snapshot: &WorldSnapshot, registry: &ActionRegistry) -> Option<PlanStep> {
        let args = self
            .args
            .iter()
            .map(|(name, role)| Some((name.clone(), role.resolve(snapshot)?)))
            .collect::<Option<Vec<_>>>()?;
        let step = PlanStep {
            verb: self.verb.clone(),
            args,
        };
        registry.validate_step(&step, snapshot).ok()?;
        Some(step)
    }
}

fn role_for(kind: &ArgKind, value: &ArgValue, snapshot: &WorldSnapshot) -> Option<ArgRole> {
    match kind {
        ArgKind::Entity { set } => {
            let target = value.as_entity()?;
            if weakest_in(snapshot, set) == Some(target) {
                Some(ArgRole::WeakestIn(set.clone()))
            } else if nearest_in(snapshot, set) == Some(target) {
                Some(ArgRole::NearestIn(set.clone()))
            } else {
                None
            }
        }
        ArgKind::Point { set } => {
            let target = value.as_point()?;
            if nearest_point(snapshot, set) == Some(target) {
                Some(ArgRole::NearestPoint(set.clone()))
            } else if farthest_point(snapshot, set) == Some(target) {
                Some(ArgRole::FarthestPoint(set.clone()))
            } else {
                None
            }
        }
        ArgKind::Cell => {
            let target = value.as_point()?;
            let at = snapshot.position;
            Some(ArgRole::Offset {
                dx: target.x.checked_sub(at.x)?,
                dy: target.y.checked_sub(at.y)?,
            })
        }
        ArgKind::Int { .. } | ArgKind::Text { .. } => Some(ArgRole::Literal(value.clone())),
    }
}

/// What the cache remembers for a key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CachedAnswer {
    /// A guided answer: the intent (a GOAP goal name) the model picked, and its line.
    Intent {
        /// The intent, expanded into steps by GOAP on a hit.
        intent: String,
        /// What the agent says with it.
        say: Option<String>,
    },
    /// A free plan, relative to the situation.
    Steps(Vec<RelativeStep>),
    /// A line of dialogue or banter.
    Line(String),
}

impl CachedAnswer {
    /// A free plan made relative to `snapshot`, the situation it was written for. `None` if it
    /// is empty or any step is not representable (see [`RelativeStep::from_step`]).
    pub fn from_steps(
        steps: &[PlanStep],
        snapshot: &WorldSnapshot,
        registry: &ActionRegistry,
    ) -> Option<Self> {
        if steps.is_empty() {
            return None;
        }
        steps
            .iter()
            .map(|step| RelativeStep::from_step(step, snapshot, registry))
            .collect::<Option<Vec<_>>>()
            .map(CachedAnswer::Steps)
    }

    /// The answer in `snapshot`. Steps are bound and validated one by one, and any failure
    /// fails the whole answer; intents (checked by GOAP when it expands them) and lines bind as
    /// they are.
    pub fn bind(&self, snapshot: &WorldSnapshot, registry: &ActionRegistry) -> Option<CachedHit> {
        match self {
            CachedAnswer::Intent { intent, say } => Some(CachedHit::Intent {
                intent: intent.clone(),
                say: say.clone(),
            }),
            CachedAnswer::Steps(steps) => steps
                .iter()
                .map(|step| step.bind(snapshot, registry))
                .collect::<Option<Vec<_>>>()
                .map(CachedHit::Steps),
            CachedAnswer::Line(line) => Some(CachedHit::Line(line.clone())),
        }
    }
}

/// A cached answer bound to the current snapshot; delivered with
/// [`PlanSource::Cache`](crate::plan::PlanSource::Cache).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CachedHit {
    /// A guided answer, for GOAP to expand into steps.
    Intent {
        /// The intent (a GOAP goal name).
        intent: String,
        /// What the agent says with it.
        say: Option<String>,
    },
    /// Concrete steps, each valid in the snapshot the lookup was made with.
    Steps(Vec<PlanStep>),
    /// A line of dialogue or banter.
    Line(String),
}

/// How many lookups hit and missed since the cache was made or its counters reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CacheCounters {
    /// Lookups that returned an answer.
    pub hits: u64,
    /// Lookups that found nothing, an expired entry, or an answer that did not re-bind.
    pub misses: u64,
}

impl CacheCounters {
    /// Hits plus misses.
    pub fn lookups(self) -> u64 {
        self.hits + self.misses
    }

    /// Hits over lookups; `None` before the first lookup.
    pub fn hit_rate(self) -> Option<f64> {
        let lookups = self.lookups();
        (lookups > 0).then(|| self.hits as f64 / lookups as f64)
    }
}

/// One cached answer and when it was stored.
#[derive(Debug)]
struct Entry {
    answer: CachedAnswer,
    stored: Timestamp,
}

/// Fixed keys, so that shard placement and eviction do not vary between runs.
type FixedHasher = BuildHasherDefault<DefaultHasher>;

type Entries =
    Cache<CacheKey, Arc<Entry>, UnitWeighter, FixedHasher, DefaultLifecycle<CacheKey, Arc<Entry>>>;

/// Shards give each thread its own lock most of the time; more than this buys nothing with one
/// game thread and a few workers.
const MAX_SHARDS: usize = 16;

/// A shard holds at least this many entries, so that eviction within it stays meaningful.
const MIN_SHARD_ENTRIES: usize = 64;

/// The answer cache: bounded, expiring, shared between threads. See the [module docs](self).
pub struct AnswerCache {
    entries: Entries,
    config: CacheConfig,
    capacity: usize,
    ttl: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl AnswerCache {
    /// An empty cache holding at most `config.capacity` answers for `config.ttl_secs` seconds
    /// each. A TTL that is negative or NaN keeps nothing valid; an infinite one never expires.
    pub fn new(config: &CacheConfig) -> Self {
        let shards = shard_count(config.capacity);
        // Whole entries per shard, so that the shards together never exceed the configured
        // capacity (quick_cache would round each shard up).
        let capacity = config.capacity / shards * shards;
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(capacity)
            .weight_capacity(capacity as u64)
            .build();
        let entries = match options {
            Ok(options) => Cache::with_options(
                options,
                UnitWeighter,
                FixedHasher::default(),
                DefaultLifecycle::default(),
            ),
            // Unreachable: both required options are set above. Still a working cache.
            Err(_) => Cache::with(
                capacity,
                capacity as u64,
                UnitWeighter,
                FixedHasher::default(),
                DefaultLifecycle::default(),
            ),
        };
        AnswerCache {
            entries,
            config: *config,
            capacity,
            ttl: ttl_of(config.ttl_secs),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The key of `snapshot` for `persona` asking for `kind`, bucketed by this cache's config.
    pub fn key(&self, persona: &str, kind: RequestKind, snapshot: &WorldSnapshot) -> CacheKey {
        CacheKey::new(persona, kind, snapshot, &self.config)
    }

    /// The answer stored for `key`, bound to `snapshot`, if it is younger than the TTL at `now`
    /// and every step binds and validates in `snapshot` (see [`CachedAnswer::bind`]). Anything
    /// else counts as a miss.
    pub fn get(
        &self,
        key: &CacheKey,
        snapshot: &WorldSnapshot,
        registry: &ActionRegistry,
        now: Timestamp,
    ) -> Option<CachedHit> {
        let hit = self.lookup(key, snapshot, registry, now);
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    fn lookup(
        &self,
        key: &CacheKey,
        snapshot: &WorldSnapshot,
        registry: &ActionRegistry,
        now: Timestamp,
    ) -> Option<CachedHit> {
        let entry = self.entries.get(key)?;
        if now.since(entry.stored) > self.ttl {
            // Only this entry: another thread may have stored a fresh one meanwhile.
            self.entries
                .remove_if(key, |current| Arc::ptr_eq(current, &entry));
            return None;
        }
        entry.answer.bind(snapshot, registry)
    }

    /// Stores `answer` for `key` as of `now`, replacing any earlier answer. May evict another
    /// entry to stay within capacity.
    pub fn insert(&self, key: CacheKey, answer: CachedAnswer, now: Timestamp) {
        self.entries.insert(
            key,
            Arc::new(Entry {
                answer,
                stored: now,
            }),
        );
    }

    /// Forgets the answer for `key`; whether there was one.
    pub fn remove(&self, key: &CacheKey) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Forgets every answer. The hit and miss counters are kept.
    pub fn clear(&self) {
        self.entries.clear();
    }

    /// How many answers are stored, expired ones included until a lookup finds them.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no answer is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most answers kept: the configured capacity, rounded down to a multiple of the
    /// internal shard count (by less than 16, and only from 128 up).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How long an answer stays valid after it is stored.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The bucketing and limits this cache was made with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Hits and misses so far.
    pub fn stats(&self) -> CacheCounters {
        CacheCounters {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Sets the hit and miss counters back to zero.
    pub fn reset_stats(&self) {
        self.hits.store(0, Ordering::Relaxed);
        self.misses.store(0, Ordering::Relaxed);
    }
}

impl fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerCache")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The largest power of two up to [`MAX_SHARDS`] that leaves every shard
/// [`MIN_SHARD_ENTRIES`].
fn shard_count(capacity: usize) -> usize {
    let mut shards = 1;
    while shards < MAX_SHARDS && capacity / (shards * 2) >= MIN_SHARD_ENTRIES {
        shards *= 2;
    }
    shards
}

fn ttl_of(secs: f32) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f32(secs).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::tests::{arena_registry, flanking_guard};
    use crate::snapshot::{AgentId, Bounds, EntityInfo, Health};

    const GUARD: &str = "grizzled_guard";

    fn config() -> CacheConfig {
        CacheConfig {
            capacity: 64,
            ttl_secs: 30.0,
            ..CacheConfig::default()
        }
    }

    fn key(snapshot: &WorldSnapshot) -> CacheKey {
        CacheKey::new(GUARD, RequestKind::Plan, snapshot, &config())
    }

    fn secs(s: u64) -> Timestamp {
        Timestamp::from_duration(Duration::from_secs(s))
    }

    /// The flanking guard with health on its enemies: 7 is nearer, 9 is weaker.
    fn wounded_enemies() -> WorldSnapshot {
        let mut snapshot = flanking_guard();
        for e in &mut snapshot.entities {
            match e.id.0 {
                7 => e.health = Some(Health::new(80, 100)),
                9 => e.health = Some(Health::new(20, 100)),
                _ => {}
            }
        }
        snapshot
    }

    fn attack(id: i64) -> PlanStep {
        PlanStep::new("Attack").with_arg("target", ArgValue::Int(id))
    }

    #[test]
    fn jitter_inside_a_bucket_keeps_the_key() {
        let original = flanking_guard();
        let mut jittered = original.clone();
        // Quantum 4: (4,5) and (5,6) share cell (1,1); (10,2) and (11,3) share (2,0).
        jittered.position = Point::new(5, 6);
        jittered.entities[0].position = Point::new(11, 3);
        jittered.entities.reverse();
        jittered.insert_fact("ammo", 5);
        jittered.health = Health::new(45, 100);
        assert_eq!(key(&original), key(&jittered));

        let mut moved = original.clone();
        moved.position = Point::new(8, 5);
        assert_ne!(
            key(&original),
            key(&moved),
            "a different cell is a different situation"
        );
    }

    #[test]
    fn negative_positions_floor_into_their_own_cell() {
        let at = |x, y| WorldSnapshot::new(AgentId(1), Point::new(x, y));
        assert_eq!(key(&at(-1, 0)), key(&at(-4, 3)));
        assert_ne!(
            key(&at(-1, 0)),
            key(&at(0, 0)),
            "-1 / 4 floors to -1, not 0"
        );
    }

    #[test]
    fn health_band_ammo_persona_and_kind_each_change_the_key() {
        let base = flanking_guard();
        let config = config();
        let with_hp = |current| base.clone().with_health(Health::new(current, 100));
        assert_eq!(key(&with_hp(40)).hp(), HpBucket::Mid);
        assert_eq!(key(&with_hp(10)).hp(), HpBucket::Low);
        assert_eq!(
            key(&with_hp(67)).hp(),
            HpBucket::High,
            "hp_high is inclusive"
        );
        assert_ne!(key(&with_hp(40)), key(&with_hp(10)));
        assert_ne!(key(&with_hp(40)), key(&with_hp(90)));

        let empty = base.clone().with_fact("ammo", 0);
        let owing = base.clone().with_fact("ammo", -3);
        assert_ne!(key(&base), key(&empty), "ammo empty vs some");
        assert_ne!(key(&empty), key(&owing));
        assert_ne!(
            key(&base),
            key(&base.clone().with_fact("objective", "hold the gate"))
        );

        let other_persona = CacheKey::new("nervous_recruit", RequestKind::Plan, &base, &config);
        let other_kind = CacheKey::new(GUARD, RequestKind::Banter, &base, &config);
        assert_ne!(key(&base), other_persona);
        assert_ne!(key(&base), other_kind);
        assert_eq!(other_kind.kind(), RequestKind::Banter);
        assert_eq!(other_persona.persona(), "nervous_recruit");
    }

    #[test]
    fn sets_differ_by_count_and_text_facts_by_content() {
        let base = flanking_guard();
        let reinforced =
            base.clone()
                .with_entity(EntityInfo::new(EntityId(11), "enemy", Point::new(10, 3)));
        assert_ne!(key(&base), key(&reinforced));
        let no_cover = WorldSnapshot {
            points: Vec::new(),
            ..base.clone()
        };
        assert_ne!(key(&base), key(&no_cover));
        let gate = base.clone().with_fact("objective", "hold the gate");
        assert_eq!(
            key(&gate),
            key(&base.clone().with_fact("objective", "hold the gate"))
        );
    }

    #[test]
    fn roles_prefer_weakest_then_nearest_and_refuse_the_rest() {
        let registry = arena_registry();
        let snapshot = wounded_enemies();
        let role = |id| RelativeStep::from_step(&attack(id), &snapshot, &registry);
        assert_eq!(
            role(9).map(|s| s.args),
            Some(vec![("target".into(), ArgRole::WeakestIn("enemy".into()))])
        );
        assert_eq!(
            role(7).map(|s| s.args),
            Some(vec![("target".into(), ArgRole::NearestIn("enemy".into()))])
        );

        // A third enemy, neither weakest nor nearest, cannot be cached.
        let crowded = snapshot.clone().with_entity(
            EntityInfo::new(EntityId(12), "enemy", Point::new(15, 12))
                .with_health(Health::new(90, 100)),
        );
        assert_eq!(
            RelativeStep::from_step(&attack(12), &crowded, &registry),
            None
        );
        // Nor can a step that is not valid in its own snapshot.
        assert_eq!(
            RelativeStep::from_step(&attack(4), &snapshot, &registry),
            None
        );
        assert_eq!(
            CachedAnswer::from_steps(&[attack(9), attack(12)], &crowded, &registry),
            None
        );
        assert_eq!(CachedAnswer::from_steps(&[], &crowded, &registry), None);
    }

    #[test]
    fn points_cells_and_literals_become_roles() {
        let registry = arena_registry();
        let snapshot = flanking_guard();
        let steps = [
            PlanStep::new("TakeCover").with_arg("at", ArgValue::Point(Point::new(3, 4))),
            PlanStep::new("TakeCover").with_arg("at", ArgValue::Point(Point::new(10, 2))),
            PlanStep::new("MoveTo").with_arg("to", ArgValue::Point(Point::new(6, 4))),
            PlanStep::new("Say").with_arg("text", ArgValue::Text("Flank left!".into())),
            PlanStep::new("Reload"),
        ];
        let roles: Vec<ArgRole> = steps
            .iter()
            .filter_map(|s| RelativeStep::from_step(s, &snapshot, &registry))
            .flat_map(|s| s.args.into_iter().map(|(_, role)| role))
            .collect();
        assert_eq!(
            roles,
            vec![
                ArgRole::NearestPoint("cover".into()),
                ArgRole::FarthestPoint("cover".into()),
                ArgRole::Offset { dx: 2, dy: -1 },
                ArgRole::Literal(ArgValue::Text("Flank left!".into())),
            ]
        );

        // Re-bound one cell over, the same answer follows the agent.
        let answer = CachedAnswer::from_steps(&steps, &snapshot, &registry);
        let mut shifted = snapshot.clone();
        shifted.position = Point::new(5, 5);
        let Some(CachedHit::Steps(bound)) = answer.and_then(|a| a.bind(&shifted, &registry)) else {
            panic!("the plan should re-bind");
        };
        assert_eq!(bound[2].arg("to"), Some(&ArgValue::Point(Point::new(7, 4))));
        assert_eq!(bound[4], PlanStep::new("Reload"));
    }

    #[test]
    fn a_cached_attack_on_the_weakest_rebinds_to_the_new_weakest() {
        let registry = arena_registry();
        let cache = AnswerCache::new(&config());
        let snapshot = wounded_enemies();
        let answer = CachedAnswer::from_steps(&[attack(9)], &snapshot, &registry);
        let Some(answer) = answer else {
            panic!("attacking the weakest is representable")
        };
        cache.insert(key(&snapshot), answer, secs(0));

        // A moment later the enemies have traded places within their cells and 7 took a hit.
        let mut shifted = snapshot.clone();
        shifted.position = Point::new(5, 5);
        for e in &mut shifted.entities {
            match e.id.0 {
                7 => e.health = Some(Health::new(10, 100)),
                9 => e.position = Point::new(13, 9),
                _ => {}
            }
        }
        let shifted_key = key(&shifted);
        assert_eq!(shifted_key, key(&snapshot));
        assert_eq!(
            cache.get(&shifted_key, &shifted, &registry, secs(1)),
            Some(CachedHit::Steps(vec![attack(7)]))
        );
        assert_eq!(cache.stats(), CacheCounters { hits: 1, misses: 0 });
    }

    #[test]
    fn an_answer_whose_targets_are_gone_is_a_miss() {
        let registry = arena_registry();
        let cache = AnswerCache::new(&config());
        let snapshot = wounded_enemies();
        let k = key(&snapshot);
        let answer = CachedAnswer::from_steps(&[attack(9)], &snapshot, &registry);
        let Some(answer) = answer else {
            panic!("attacking the weakest is representable")
        };
        cache.insert(k.clone(), answer, secs(0));

        // Same key (say, the enemies left the trimmed snapshot), but no enemy to bind to.
        let mut alone = snapshot.clone();
        alone.entities.retain(|e| e.set != "enemy");
        assert_eq!(cache.get(&k, &alone, &registry, secs(1)), None);
        assert_eq!(cache.stats(), CacheCounters { hits: 0, misses: 1 });

        // The entry stays for snapshots where it does bind.
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&k, &snapshot, &registry, secs(1)).is_some());
        assert_eq!(cache.stats(), CacheCounters { hits: 1, misses: 1 });
    }

    #[test]
    fn a_cell_offset_outside_the_new_bounds_is_a_miss() {
        let registry = arena_registry();
        let cache = AnswerCache::new(&config());
        let snapshot = flanking_guard();
        let k = key(&snapshot);
        let step = PlanStep::new("MoveTo").with_arg("to", ArgValue::Point(Point::new(19, 13)));
        let answer = CachedAnswer::from_steps(&[step], &snapshot, &registry);
        let Some(answer) = answer else {
            panic!("a cell is representable")
        };
        cache.insert(k.clone(), answer, secs(0));
        let cramped = snapshot.clone().with_bounds(Bounds::grid(10, 10));
        assert_eq!(cache.get(&k, &cramped, &registry, secs(0)), None);
        assert_eq!(cache.stats().misses, 1);
    }

    #[test]
    fn entries_expire_after_the_ttl_in_virtual_time() {
        let registry = arena_registry();
        let cache = AnswerCache::new(&CacheConfig {
            ttl_secs: 10.0,
            ..config()
        });
        assert_eq!(cache.ttl(), Duration::from_secs(10));
        let snapshot = flanking_guard();
        let k = key(&snapshot);
        cache.insert(
            k.clone(),
            CachedAnswer::Line("Quiet night.".into()),
            secs(100),
        );

        let line = Some(CachedHit::Line("Quiet night.".into()));
        assert_eq!(cache.get(&k, &snapshot, &registry, secs(100)), line);
        assert_eq!(
            cache.get(&k, &snapshot, &registry, secs(110)),
            line,
            "exactly the TTL is fine"
        );
        let just_after = secs(110).after(Duration::from_micros(1));
        assert_eq!(cache.get(&k, &snapshot, &registry, just_after), None);
        assert!(cache.is_empty(), "an expired entry is dropped when found");
        assert_eq!(cache.stats(), CacheCounters { hits: 2, misses: 1 });

        // Storing again restarts the TTL.
        cache.insert(
            k.clone(),
            CachedAnswer::Line("Still quiet.".into()),
            secs(200),
        );
        assert!(cache.get(&k, &snapshot, &registry, secs(205)).is_some());
    }

    #[test]
    fn odd_ttls_do_not_panic() {
        assert_eq!(ttl_of(f32::NAN), Duration::ZERO);
        assert_eq!(ttl_of(-1.0), Duration::ZERO);
        assert_eq!(ttl_of(f32::INFINITY), Duration::MAX);
        assert_eq!(ttl_of(0.5), Duration::from_millis(500));
    }

    #[test]
    fn the_capacity_bounds_the_number_of_entries() {
        for capacity in [0, 1, 10, 64, 200, 1000] {
            let cache = AnswerCache::new(&CacheConfig {
                capacity,
                ..config()
            });
            assert!(cache.capacity() <= capacity);
            assert!(cache.capacity() + MAX_SHARDS > capacity);
            for i in 0..capacity * 4 + 4 {
                let x = i32::try_from(i).unwrap_or(i32::MAX);
                let snapshot = WorldSnapshot::new(AgentId(1), Point::new(x * 4, 0));
                cache.insert(
                    key(&snapshot),
                    CachedAnswer::Line(format!("line {i}")),
                    secs(0),
                );
                assert!(
                    cache.len() <= capacity,
                    "capacity {capacity}: {} entries",
                    cache.len()
                );
            }
            assert!(
                capacity < 4 || cache.len() > capacity / 2,
                "capacity {capacity}: {cache:?}"
            );
        }
    }

    #[test]
    fn counters_count_hits_and_misses() {
        let registry = arena_registry();
        let cache = AnswerCache::new(&config());
        let snapshot = flanking_guard();
        let k = cache.key(GUARD, RequestKind::Banter, &snapshot);
        assert_eq!(cache.stats().hit_rate(), None);
        assert_eq!(cache.get(&k, &snapshot, &registry, secs(0)), None);
        let answer = CachedAnswer::Intent {
            intent: "hold_position".into(),
            say: None,
        };
        cache.insert(k.clone(), answer, secs(0));
        for _ in 0..3 {
            assert!(matches!(
                cache.get(&k, &snapshot, &registry, secs(1)),
                Some(CachedHit::Intent { .. })
            ));
        }
        let stats = cache.stats();
        assert_eq!(stats, CacheCounters { hits: 3, misses: 1 });
        assert_eq!(stats.lookups(), 4);
        assert_eq!(stats.hit_rate(), Some(0.75));

        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(cache.stats(), stats, "clearing keeps the counters");
        cache.reset_stats();
        assert_eq!(cache.stats(), CacheCounters::default());
        assert!(!cache.remove(&k));
    }

    #[test]
    fn a_worker_can_fill_the_cache_while_the_game_reads_it() {
        let registry = arena_registry();
        let cache = Arc::new(AnswerCache::new(&config()));
        let snapshot = flanking_guard();
        let k = key(&snapshot);
        let worker = {
            let (cache, k) = (Arc::clone(&cache), k.clone());
            std::thread::spawn(move || {
                cache.insert(k, CachedAnswer::Line("Contact!".into()), secs(0));
            })
        };
        let _ = cache.get(&k, &snapshot, &registry, secs(0));
        worker.join().unwrap();
        assert_eq!(
            cache.get(&k, &snapshot, &registry, secs(0)),
            Some(CachedHit::Line("Contact!".into()))
        );
        assert_eq!(cache.stats().lookups(), 2);
    }
}
