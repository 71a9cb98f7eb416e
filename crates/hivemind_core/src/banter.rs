//! Banter lines the model wrote in idle time, kept per persona and situation.
//!
//! Banter must be answered in the frame it is asked for, which no model can do, so the worker
//! writes lines ahead: whenever nothing else is in flight, the plugin asks for a line for the
//! persona and situation with the fewest fresh ones, using the snapshot of the agent that last
//! bantered there. A banter request takes a fresh line from here ([`PlanSource::Cache`]) or
//! else a template ([`PlanSource::Template`]).
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

type Key = (String, String);

/// The pool of model-written banter. See the [module docs](self).
#[derive(Debug, Default)]
pub struct BanterLines {
    lines: BTreeMap<Key, Vec<(String, Timestamp)>>,
    samples: BTreeMap<Key, Arc<WorldSnapshot>>,
    tried: BTreeMap<Key, Timestamp>,
}

fn key(persona: &str, situation: &str) -> Key {
    (persona.to_owned(), situation.to_owned())
}

impl BanterLines {
    /// A line for `persona` in `situation` younger than `ttl`, chosen by `seed`.
    pub fn pick(
        &self,
        persona: &str,
        situation: &str,
        seed: u64,
        now: Timestamp,
        ttl: Duration,
    ) -> Option<String> {
        let lines = self.lines.get(&key(persona, situation))?;
        let fresh: Vec<&String> = lines
            .iter()
            .filter(|(_, at)| now.since(*at) <= ttl)
            .map(|(line, _)| line)
            .collect();
        let len = fresh.len() as u64;
        (len > 0).then(|| fresh[(seed % len) as usize].clone())
    }

    /// Notes that an agent bantered here: its snapshot is what idle-time lines are written for.
    pub fn remember(&mut self, persona: &str, situation: &str, snapshot: &Arc<WorldSnapshot>) {
        self.samples
            .insert(key(persona, situation), Arc::clone(snapshot));
    }

    /// The persona and situation to write a line for now, if any: the one with the fewest
    /// fresh lines, below [`WANT`], not tried in the last [`RETRY`]. Marks it as tried.
    pub fn wanted(
        &mut self,
        now: Timestamp,
        ttl: Duration,
    ) -> Option<(String, String, Arc<WorldSnapshot>)> {
        let (k, snapshot) = self
            .samples
            .iter()
            .filter(|(k, _)| self.tried.get(*k).is_none_or(|&at| now.since(at) >= RETRY))
            .map(|(k, s)| (self.fresh(k, now, ttl), k, s))
            .filter(|(fresh, _, _)| *fresh < WANT)
            .min_by_key(|(fresh, k, _)| (*fresh, (*k).clone()))
            .map(|(_, k, s)| (k.clone(), Arc::clone(s)))?;
        self.tried.insert(k.clone(), now);
        Some((k.0, k.1, snapshot))
    }

    fn fresh(&self, k: &Key, now: Timestamp, ttl: Duration) -> usize {
        self.lines.get(k).map_or(0, |v| {
            v.iter().filter(|(_, at)| now.since(*at) <= ttl).count()
        })
    }

    /// Adds a line the model wrote.
    pub fn add(&mut self, persona: &str, situation: &str, line: String, now: Timestamp) {
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
    fn idle_time_writes_for_the_thinnest_situation_and_lines_expire() {
        let mut pool = BanterLines::default();
        let ttl = Duration::from_secs(30);
        let t0 = Timestamp::ZERO;
        let snap = Arc::new(WorldSnapshot::new(AgentId(3), Point::new(1, 1)));
        pool.remember("veteran", "low_health", &snap);
        pool.remember("rookie", "idle", &snap);
        pool.add("veteran", "low_health", "Patch me up.".into(), t0);
        let (persona, situation, _) = pool.wanted(t0, ttl).expect("something is thin");
        assert_eq!((persona.as_str(), situation.as_str()), ("rookie", "idle"));
        // Just tried: the other one comes next.
        let (persona, _, _) = pool.wanted(t0, ttl).expect("the veteran is thin too");
        assert_eq!(persona, "veteran");
        assert_eq!(pool.wanted(t0, ttl), None, "both were tried a moment ago");
        assert_eq!(
            pool.pick("veteran", "low_health", 7, t0, ttl).as_deref(),
            Some("Patch me up.")
        );
        let later = t0.after(ttl + Duration::from_secs(1));
        assert_eq!(pool.pick("veteran", "low_health", 7, later, ttl), None);
    }
}
