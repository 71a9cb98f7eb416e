//! Banter lines the model wrote in idle time, kept per persona and situation.
//!
//! Banter must be answered in the frame it is asked for, which no model can do, so the worker
//! writes lines ahead: whenever nothing else is in flight, the plugin asks for lines for the
//! personas and situations with the fewest fresh ones, using the snapshot of the agent that last
//! bantered in that situation (for every persona, not only the one that bantered). A banter
//! request takes a fresh line from here ([`PlanSource::Cache`]), which is then used up, or else
//! a template ([`PlanSource::Template`]). No line is said twice while it is remembered
//! ([`SAID_MEMORY`] lines): the pool skips them, and the lifecycle tries other templates.
//!
//! [`PlanSource::Cache`]: crate::plan::PlanSource::Cache
//! [`PlanSource::Template`]: crate::plan::PlanSource::Template

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::snapshot::WorldSnapshot;

/// Lines kept per persona and situation; the oldest goes first.
pub const KEEP: usize = 6;

/// Fewer fresh lines than this make a persona and situation worth writing for.
pub const WANT: usize = 3;

/// How long a persona and situation for which the model wrote nothing waits before it is tried
/// again.
pub const RETRY: Duration = Duration::from_secs(5);

/// How many banter lines said are remembered, so none is said twice.
pub const SAID_MEMORY: usize = 512;

type Key = (String, String);

/// The pool of model-written banter. See the [module docs](self).
#[derive(Debug, Default)]
pub struct BanterLines {
    lines: BTreeMap<Key, Vec<(String, Timestamp)>>,
    /// The latest snapshot that bantered in each situation, and its persona.
    samples: BTreeMap<String, (String, Arc<WorldSnapshot>)>,
    tried: BTreeMap<Key, Timestamp>,
    said: std::collections::VecDeque<String>,
}

fn key(persona: &str, situation: &str) -> Key {
    (persona.to_owned(), situation.to_owned())
}

impl BanterLines {
    /// Takes a line for `persona` in `situation` younger than `ttl` and never said, chosen by
    /// `seed`; it leaves the pool and counts as said.
    pub fn take(
        &mut self,
        persona: &str,
        situation: &str,
        seed: u64,
        now: Timestamp,
        ttl: Duration,
    ) -> Option<String> {
        let lines = self.lines.get_mut(&key(persona, situation))?;
        let said = &self.said;
        let fresh: Vec<usize> = (0..lines.len())
            .filter(|&i| now.since(lines[i].1) <= ttl && !said.contains(&lines[i].0))
            .collect();
        let len = fresh.len() as u64;
        if len == 0 {
            return None;
        }
        let (line, _) = lines.remove(fresh[(seed % len) as usize]);
        self.note_said(&line);
        Some(line)
    }

    /// Whether `line` was said lately.
    pub fn was_said(&self, line: &str) -> bool {
        self.said.iter().any(|l| l == line)
    }

    /// Remembers that `line` was said.
    pub fn note_said(&mut self, line: &str) {
        if self.said.len() == SAID_MEMORY {
            self.said.pop_front();
        }
        self.said.push_back(line.to_owned());
    }

    /// Notes that an agent of `persona` bantered in `situation`: its snapshot is what idle-time
    /// lines for that situation are written for.
    pub fn remember(&mut self, persona: &str, situation: &str, snapshot: &Arc<WorldSnapshot>) {
        self.samples.insert(
            situation.to_owned(),
            (persona.to_owned(), Arc::clone(snapshot)),
        );
    }

    /// The persona and situation to write a line for now, if any: among every situation an
    /// agent bantered in, for each of `personas` (and the persona that bantered there), the one
    /// with the fewest fresh lines, below [`WANT`], not tried in the last [`RETRY`]. Marks it as
    /// tried.
    pub fn wanted(
        &mut self,
        now: Timestamp,
        ttl: Duration,
        personas: &[String],
    ) -> Option<(String, String, Arc<WorldSnapshot>)> {
        let mut best: Option<(usize, Key, &Arc<WorldSnapshot>)> = None;
        for (situation, (who, snapshot)) in &self.samples {
            for persona in personas.iter().chain([who]) {
                let k = key(persona, situation);
                if self.tried.get(&k).is_some_and(|&at| now.since(at) < RETRY) {
                    continue;
                }
                let fresh = self.fresh(&k, now, ttl);
                if fresh >= WANT {
                    continue;
                }
                if best
                    .as_ref()
                    .is_none_or(|(f, bk, _)| (fresh, &k) < (*f, bk))
                {
                    best = Some((fresh, k, snapshot));
                }
            }
        }
        let (_, k, snapshot) = best?;
        let snapshot = Arc::clone(snapshot);
        self.tried.insert(k.clone(), now);
        Some((k.0, k.1, snapshot))
    }

    fn fresh(&self, k: &Key, now: Timestamp, ttl: Duration) -> usize {
        self.lines.get(k).map_or(0, |v| {
            v.iter().filter(|(_, at)| now.since(*at) <= ttl).count()
        })
    }

    /// Adds a line the model wrote, unless it is in the pool or was said already.
    pub fn add(&mut self, persona: &str, situation: &str, line: String, now: Timestamp) {
        if self.was_said(&line) {
            return;
        }
        let lines = self.lines.entry(key(persona, situation)).or_default();
        if lines.iter().any(|(l, _)| *l == line) {
            return;
        }
        lines.push((line, now));
        if lines.len() > KEEP {
            lines.remove(0);
        }
    }

    /// How many lines are kept, fresh or not.
    pub fn len(&self) -> usize {
        self.lines.values().map(Vec::len).sum()
    }

    /// Whether no line is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every line.
    pub fn clear(&mut self) {
        self.lines.clear();
        self.tried.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{AgentId, Point};

    #[test]
    fn idle_time_writes_for_the_thinnest_situation_for_every_persona_and_lines_expire() {
        let mut pool = BanterLines::default();
        let ttl = Duration::from_secs(30);
        let t0 = Timestamp::ZERO;
        let snap = Arc::new(WorldSnapshot::new(AgentId(3), Point::new(1, 1)));
        let personas = ["rookie".to_owned(), "veteran".to_owned()];
        pool.remember("veteran", "low_health", &snap);
        pool.add("veteran", "low_health", "Patch me up.".into(), t0);
        // The rookie never bantered about low health, but lines are written for it too.
        let (persona, situation, _) = pool.wanted(t0, ttl, &personas).expect("thin");
        assert_eq!(
            (persona.as_str(), situation.as_str()),
            ("rookie", "low_health")
        );
        let (persona, _, _) = pool
            .wanted(t0, ttl, &personas)
            .expect("the veteran is thin too");
        assert_eq!(persona, "veteran");
        assert_eq!(
            pool.wanted(t0, ttl, &personas),
            None,
            "both were tried a moment ago"
        );
        let later = t0.after(ttl + Duration::from_secs(1));
        assert_eq!(pool.take("veteran", "low_health", 7, later, ttl), None);
        assert_eq!(
            pool.take("veteran", "low_health", 7, t0, ttl).as_deref(),
            Some("Patch me up.")
        );
    }

    #[test]
    fn a_line_is_used_once_and_never_comes_back() {
        let mut pool = BanterLines::default();
        let ttl = Duration::from_secs(30);
        let t0 = Timestamp::ZERO;
        pool.add("rookie", "idle", "Whoa.".into(), t0);
        assert_eq!(
            pool.take("rookie", "idle", 1, t0, ttl).as_deref(),
            Some("Whoa.")
        );
        assert_eq!(pool.take("rookie", "idle", 1, t0, ttl), None);
        assert!(pool.was_said("Whoa."));
        pool.add("rookie", "idle", "Whoa.".into(), t0);
        pool.add("veteran", "idle", "Whoa.".into(), t0);
        assert!(pool.is_empty(), "a line said is not written again");
    }
}
