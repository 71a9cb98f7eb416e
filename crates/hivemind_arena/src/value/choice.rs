//! The choice sets: fixed options, some the rules reject, in seeded random positions. See the
//! [suite's rules](super#choice).

use hivemind_core::prompt::IntentOption;
use hivemind_core::snapshot::{AgentId, EntityId, Health, WorldSnapshot};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};

use crate::planning::{GoapFacts, goal};
use crate::scenarios::{Accepted, SPECS, accepted};
use crate::snapshot::{COVER, ENEMY, OBJECTIVE, fact};

/// The seed the sets' draws and orders come from.
pub const SEED: u64 = 0x5e75_0f0c_4010;

/// Options a set shows at most.
pub const SET_SIZE: usize = 4;

/// Sensible options a set shows at most.
pub const MAX_SENSIBLE: usize = 2;

/// The goal of an attack option on enemy `id`: `attack:ID`.
pub fn attack_goal(id: EntityId) -> String {
    format!("attack:{}", id.0)
}

/// The enemy an `attack:ID` goal names.
pub fn attack_target(goal: &str) -> Option<EntityId> {
    goal.strip_prefix("attack:")?.parse().ok().map(EntityId)
}

/// The goal of the hold-position option: the idle verb.
pub const HOLD: &str = "hold";

/// One option of a set and the rules' verdict on it.
#[derive(Clone, Debug, PartialEq)]
pub struct ChoiceOption {
    /// The option as the prompt shows it. Its goal is one of [`goal`]'s, [`HOLD`], or an
    /// [`attack_goal`].
    pub option: IntentOption,
    /// Whether the rules accept its first action.
    pub sensible: bool,
}

/// A situation and the options it is shown, in the order shown.
#[derive(Clone, Debug, PartialEq)]
pub struct ChoiceSet {
    /// The scenario's name and which of the two orders (`/a`, `/b`).
    pub name: String,
    /// The agent's persona.
    pub persona: &'static str,
    /// What the agent knows. Its agent id is unique in the suite, so a planner can tell the sets
    /// apart by it.
    pub snapshot: WorldSnapshot,
    /// The options, numbered from 1 in this order.
    pub options: Vec<ChoiceOption>,
}

impl ChoiceSet {
    /// The options as a guided prompt takes them.
    pub fn intents(&self) -> Vec<IntentOption> {
        self.options.iter().map(|o| o.option.clone()).collect()
    }

    /// The 1-based position of the option whose goal is `goal`.
    pub fn position(&self, goal: &str) -> Option<usize> {
        self.options
            .iter()
            .position(|o| o.option.goal == goal)
            .map(|i| i + 1)
    }

    /// Whether the option whose goal is `goal` is sensible (false for a goal not shown).
    pub fn is_sensible(&self, goal: &str) -> bool {
        self.options
            .iter()
            .any(|o| o.option.goal == goal && o.sensible)
    }

    /// Whether the always-first picker is right here.
    pub fn first_is_sensible(&self) -> bool {
        self.options.first().is_some_and(|o| o.sensible)
    }

    /// The uniform random picker's chance of being right here.
    pub fn random_sensible(&self) -> f64 {
        let ok = self.options.iter().filter(|o| o.sensible).count();
        ok as f64 / self.options.len().max(1) as f64
    }
}

/// Every choice set: each scenario whose catalogue has both a sensible and a rejected option,
/// in two orders, the second the first reversed. Agent ids are `100 + i` for the `i`-th set.
pub fn choice_sets() -> Vec<ChoiceSet> {
    let mut out = Vec::new();
    for (i, spec) in SPECS.iter().enumerate() {
        let snapshot = spec.snapshot();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(SEED ^ i as u64);
        let (mut ok, mut rejected): (Vec<_>, Vec<_>) =
            catalogue(&snapshot).into_iter().partition(|o| o.sensible);
        if ok.is_empty() || rejected.is_empty() {
            continue;
        }
        shuffle(&mut ok, &mut rng);
        shuffle(&mut rejected, &mut rng);
        ok.truncate(MAX_SENSIBLE);
        rejected.truncate(SET_SIZE - ok.len());
        let mut shown: Vec<ChoiceOption> = ok.into_iter().chain(rejected).collect();
        shuffle(&mut shown, &mut rng);
        let persona = super::persona_at(i);
        for (suffix, options) in [("a", shown.clone()), ("b", reversed(shown.clone()))] {
            let mut snapshot = snapshot.clone();
            snapshot.agent = AgentId(100 + out.len() as u32);
            out.push(ChoiceSet {
                name: format!("{}/{suffix}", spec.name),
                persona,
                snapshot,
                options,
            });
        }
    }
    out
}

fn reversed(mut v: Vec<ChoiceOption>) -> Vec<ChoiceOption> {
    v.reverse();
    v
}

/// Fisher–Yates with the suite's own generator, so the order never depends on a library's.
fn shuffle<T>(items: &mut [T], rng: &mut Xoshiro256PlusPlus) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Every catalogue option that can be worded in `snapshot`, with the rules' verdict.
fn catalogue(snapshot: &WorldSnapshot) -> Vec<ChoiceOption> {
    let rules = accepted(snapshot);
    let facts = GoapFacts::read(snapshot);
    let hp = percent(snapshot.health);
    let medkits = snapshot.int_fact(fact::MEDKITS).unwrap_or(0);
    let ammo = snapshot.int_fact(fact::AMMO).unwrap_or(0);
    let mut out = Vec::new();
    let mut add = |goal: String, label: String, reason: String, sensible: bool| {
        out.push(ChoiceOption {
            option: IntentOption::new(goal, label, reason),
            sensible,
        });
    };
    let kits = if medkits == 1 { "medkit" } else { "medkits" };
    add(
        goal::HEAL.into(),
        "heal".into(),
        format!("hp {hp}%, {medkits} {kits} left"),
        rules.contains(&Accepted::Heal),
    );
    add(
        goal::RELOAD.into(),
        "reload".into(),
        format!("{ammo} of 3 shots left"),
        rules.contains(&Accepted::Reload),
    );
    for enemy in snapshot.entities_in(ENEMY) {
        let sensible = rules
            .iter()
            .any(|a| matches!(a, Accepted::Attack(ids) if ids.contains(&enemy.id)));
        add(
            attack_goal(enemy.id),
            format!("attack enemy {}", enemy.id),
            format!("it is at {}% hp", enemy.health.map_or(100, percent)),
            sensible,
        );
    }
    let at = snapshot.position;
    let cover = snapshot
        .points_in(COVER)
        .map(|p| (at.manhattan(p), p))
        .min();
    if let Some((distance, p)) = cover.filter(|_| !facts.in_cover) {
        add(
            goal::TAKE_COVER.into(),
            format!("take cover at ({},{})", p.x, p.y),
            format!("cover {distance} cells away"),
            rules.contains(&Accepted::TakeCover),
        );
    }
    add(
        goal::RETREAT.into(),
        "retreat to base".into(),
        format!("hp {hp}%"),
        rules.contains(&Accepted::Retreat),
    );
    if let Some(objective) = snapshot.points_in(OBJECTIVE).next()
        && !facts.at_objective
    {
        add(
            goal::HOLD_OBJECTIVE.into(),
            "move to the objective".into(),
            format!("it is {} cells away", at.manhattan(objective)),
            rules
                .iter()
                .any(|a| matches!(a, Accepted::MoveCloser { .. })),
        );
    }
    add(
        HOLD.into(),
        "hold position".into(),
        "stay where you are".into(),
        rules.contains(&Accepted::Wait),
    );
    out
}

fn percent(h: Health) -> u32 {
    (h.fraction() * 100.0).round() as u32
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_set_mixes_sensible_and_rejected_options_and_comes_in_two_orders() {
        let sets = choice_sets();
        assert!(sets.len() >= 60, "{}", sets.len());
        let ids: BTreeSet<_> = sets.iter().map(|s| s.snapshot.agent).collect();
        assert_eq!(ids.len(), sets.len());
        for pair in sets.chunks(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert_eq!(a.name.trim_end_matches("/a"), b.name.trim_end_matches("/b"));
            let mut back = b.options.clone();
            back.reverse();
            assert_eq!(a.options, back);
        }
        for set in &sets {
            let ok = set.options.iter().filter(|o| o.sensible).count();
            assert!((1..=MAX_SENSIBLE).contains(&ok), "{}", set.name);
            assert!(ok < set.options.len(), "{}", set.name);
            assert!(set.options.len() <= SET_SIZE);
            let goals: BTreeSet<_> = set.options.iter().map(|o| &o.option.goal).collect();
            assert_eq!(goals.len(), set.options.len(), "{}", set.name);
        }
        // Sensible options are not parked in one position: each position holds some.
        for position in 0..3 {
            let ok = sets
                .iter()
                .filter(|s| s.options.get(position).is_some_and(|o| o.sensible))
                .count();
            assert!(ok >= sets.len() / 8, "position {}: {ok}", position + 1);
        }
        // The baselines are well below a reader of the situation.
        let first = sets.iter().filter(|s| s.first_is_sensible()).count() as f64;
        let random: f64 = sets.iter().map(ChoiceSet::random_sensible).sum();
        let n = sets.len() as f64;
        assert!(
            first / n < 0.6 && random / n < 0.6,
            "{first} {random} of {n}"
        );
    }

    #[test]
    fn the_verdicts_follow_the_scenario_rules() {
        let sets = choice_sets();
        let duel = sets.iter().find(|s| s.name == "duel/a").expect("duel");
        // Healthy and armed with one enemy in sight: attack it or take cover; not heal, not
        // retreat, not hold.
        for o in &duel.options {
            let expect = o.option.goal == "attack:8" || o.option.goal == goal::TAKE_COVER;
            assert_eq!(o.sensible, expect, "{o:?}");
        }
        assert_eq!(attack_target("attack:12"), Some(EntityId(12)));
        assert_eq!(attack_target("heal"), None);
    }
}
