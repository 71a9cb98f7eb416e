//! The scenario suite: arena situations, and the rules that say which first actions make sense
//! in them.
//!
//! A plan that parses and validates can still be senseless: walking to cover with an empty
//! magazine, ignoring an enemy at 8% health. The suite measures how often a planner's first
//! step is one a competent player would take. Its rules come first and are plain statements;
//! each situation's accepted actions follow from them alone ([`accepted`]), never from what a
//! model wrote. The same rules judge situations outside the suite, such as those of a played
//! game ([`played_situations`]).
//!
//! # Acceptable first actions
//!
//! Health is *low* below [`HP_LOW_PERCENT`](crate::planning::HP_LOW_PERCENT)% of the maximum. An enemy is *in sight* if the
//! snapshot lists it. The *weakest* enemies are those in sight with the least health.
//!
//! 1. **Heal** when health is low and a medkit is held.
//! 2. **Reload** when the magazine is empty, or when it is not full and no enemy is in sight.
//! 3. **Attack** one of the weakest enemies when the magazine is not empty and health is not low.
//! 4. **Take cover** when not in cover and either an enemy is in sight or health is low.
//! 5. **Retreat** when health is low and an enemy is in sight.
//! 6. **Move** to a cell nearer the objective when no enemy is in sight, health is not low and
//!    the agent is not at the objective.
//! 7. **Wait** when no enemy is in sight and either the agent holds the objective, or health is
//!    low and no medkit is held. Speaking (`Say`) as the first step counts as waiting.
//!
//! Nothing else is acceptable. Every situation of the suite accepts at least one action.
//!
//! # Personas
//!
//! The suite's agents take the arena's two personas in turn, and each has words of its own
//! ([`VOCABULARY`]), so a line in the wrong voice shows: see [`voice`].

use hivemind_core::plan::{ArgValue, PlanStep};
use hivemind_core::snapshot::{
    AgentId, Bounds, EntityId, EntityInfo, Health, Point, WorldSnapshot,
};

use crate::planning::GoapFacts;
use crate::play::played_snapshots;
use crate::snapshot::{COVER, ENEMY, OBJECTIVE, fact};
use crate::{ArenaAssets, ArenaConfig};

/// Shots in a full magazine.
pub const MAGAZINE: i64 = 3;

/// Each persona's own words: a line in that voice is expected to use one of them.
pub const VOCABULARY: [(&str, &[&str]); 2] = [
    ("veteran", &["copy", "contact"]),
    ("rookie", &["whoa", "let's go"]),
];

/// A first action the rules accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// `Heal` (rule 1).
    Heal,
    /// `Reload` (rule 2).
    Reload,
    /// `Attack` one of these targets (rule 3).
    Attack(Vec<EntityId>),
    /// `TakeCover` at any listed point (rule 4).
    TakeCover,
    /// `Retreat` (rule 5).
    Retreat,
    /// `MoveTo` a cell nearer `objective` than the agent's position (rule 6).
    MoveCloser {
        /// The objective's point.
        objective: Point,
    },
    /// `Wait`, or `Say` (rule 7).
    Wait,
}

impl Accepted {
    /// Whether `step` is this action.
    pub fn matches(&self, step: &PlanStep, at: Point) -> bool {
        match self {
            Accepted::Heal => step.verb == "Heal",
            Accepted::Reload => step.verb == "Reload",
            Accepted::Attack(targets) => {
                step.verb == "Attack"
                    && step
                        .arg("target")
                        .and_then(ArgValue::as_entity)
                        .is_some_and(|id| targets.contains(&id))
            }
            Accepted::TakeCover => step.verb == "TakeCover",
            Accepted::Retreat => step.verb == "Retreat",
            Accepted::MoveCloser { objective } => {
                step.verb == "MoveTo"
                    && step
                        .arg("to")
                        .and_then(ArgValue::as_point)
                        .is_some_and(|to| to.manhattan(*objective) < at.manhattan(*objective))
            }
            Accepted::Wait => step.verb == "Wait" || step.verb == "Say",
        }
    }
}

/// The first actions the [rules](self#acceptable-first-actions) accept in `snapshot`.
pub fn accepted(snapshot: &WorldSnapshot) -> Vec<Accepted> {
    // What the snapshot says, read as the planner reads it; the rules below are the suite's own.
    let facts = GoapFacts::read(snapshot);
    let (low, ammo, medkit) = (facts.hp_low, i64::from(facts.ammo), facts.has_medkit);
    let (in_cover, at_objective) = (facts.in_cover, facts.at_objective);
    let least = snapshot
        .entities_in(ENEMY)
        .map(|e| e.health.map_or(u32::MAX, |h| h.current))
        .min();
    let in_sight = least.is_some();

    let mut out = Vec::new();
    if low && medkit {
        out.push(Accepted::Heal);
    }
    if ammo <= 0 || (ammo < MAGAZINE && !in_sight) {
        out.push(Accepted::Reload);
    }
    if let Some(least) = least.filter(|_| ammo > 0 && !low) {
        let weakest = snapshot
            .entities_in(ENEMY)
            .filter(|e| e.health.map_or(u32::MAX, |h| h.current) == least)
            .map(|e| e.id)
            .collect();
        out.push(Accepted::Attack(weakest));
    }
    if !in_cover && (in_sight || low) && snapshot.points_in(COVER).next().is_some() {
        out.push(Accepted::TakeCover);
    }
    if low && in_sight {
        out.push(Accepted::Retreat);
    }
    if !in_sight
        && !low
        && !at_objective
        && let Some(objective) = snapshot.points_in(OBJECTIVE).next()
    {
        out.push(Accepted::MoveCloser { objective });
    }
    if !in_sight && (at_objective || (low && !medkit)) {
        out.push(Accepted::Wait);
    }
    out
}

/// Whether the rules accept `step` as the first action in `snapshot`.
pub fn is_sensible(snapshot: &WorldSnapshot, step: &PlanStep) -> bool {
    accepted(snapshot)
        .iter()
        .any(|a| a.matches(step, snapshot.position))
}

/// Whose voice a line is in, judged by [`VOCABULARY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Voice {
    /// It uses the persona's own words and no other persona's.
    Own,
    /// It uses another persona's words.
    Bleed,
    /// It uses no persona's words.
    Plain,
}

/// The voice of `line`, said by an agent of `persona`.
pub fn voice(persona: &str, line: &str) -> Voice {
    voice_by(&VOCABULARY, persona, line)
}

/// The voice of `line`, said by an agent of `persona`, by the words `vocabulary` gives each
/// persona.
pub(crate) fn voice_by(vocabulary: &[(&str, &[&str])], persona: &str, line: &str) -> Voice {
    let line = line.to_lowercase();
    let says = |words: &[&str]| words.iter().any(|w| contains_word(&line, w));
    let other = vocabulary
        .iter()
        .any(|(name, words)| *name != persona && says(words));
    let own = vocabulary
        .iter()
        .any(|(name, words)| *name == persona && says(words));
    match (own, other) {
        (_, true) => Voice::Bleed,
        (true, false) => Voice::Own,
        (false, false) => Voice::Plain,
    }
}

pub(crate) fn contains_word(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + word.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// One situation of the suite.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// A short name that says what the situation tests.
    pub name: &'static str,
    /// The agent's persona.
    pub persona: &'static str,
    /// What the agent knows.
    pub snapshot: WorldSnapshot,
}

impl Scenario {
    /// The first actions the rules accept here.
    pub fn accepted(&self) -> Vec<Accepted> {
        accepted(&self.snapshot)
    }
}

/// The objective zone's centre on the Red side, as the arena's snapshots list it.
const OBJECTIVE_AT: (i32, i32) = (10, 7);

/// A situation, written compactly: who, where, health, ammo, medkits, enemies
/// `(id, x, y, hp)`, cover points, and whether the agent stands in the objective zone.
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    pub(crate) id: u32,
    pub(crate) at: (i32, i32),
    pub(crate) hp: u32,
    pub(crate) ammo: i64,
    pub(crate) medkits: i64,
    pub(crate) enemies: &'static [(u32, i32, i32, u32)],
    pub(crate) cover: &'static [(i32, i32)],
    pub(crate) at_objective: bool,
}

impl Spec {
    fn build(&self) -> Scenario {
        Scenario {
            name: self.name,
            persona: VOCABULARY[(self.id as usize / 2) % VOCABULARY.len()].0,
            snapshot: self.snapshot(),
        }
    }

    /// The situation's snapshot, as the arena would give it.
    pub(crate) fn snapshot(&self) -> WorldSnapshot {
        let at = Point::new(self.at.0, self.at.1);
        let mut s = WorldSnapshot::new(AgentId(self.id), at)
            .with_health(Health::new(self.hp, 100))
            .with_bounds(Bounds::grid(20, 14))
            .with_fact(fact::AMMO, self.ammo)
            .with_fact(fact::AT_OBJECTIVE, self.at_objective)
            .with_fact(
                fact::IN_COVER,
                self.cover.iter().any(|&(x, y)| Point::new(x, y) == at),
            )
            .with_fact(fact::MEDKITS, self.medkits);
        for &(id, x, y, hp) in self.enemies {
            s = s.with_entity(
                EntityInfo::new(EntityId(id), ENEMY, Point::new(x, y))
                    .with_health(Health::new(hp, 100)),
            );
        }
        for &(x, y) in self.cover {
            s = s.with_point(COVER, Point::new(x, y));
        }
        s.with_point(OBJECTIVE, Point::new(OBJECTIVE_AT.0, OBJECTIVE_AT.1))
    }
}

#[rustfmt::skip]
pub(crate) const SPECS: &[Spec] = &[
    // Healthy, armed, enemies in sight: attack the weakest.
    Spec { name: "duel", id: 0, at: (6, 5), hp: 90, ammo: 3, medkits: 1, enemies: &[(8, 11, 5, 70)], cover: &[(7, 4), (5, 7)], at_objective: false },
    Spec { name: "finish_the_weak_one", id: 1, at: (8, 6), hp: 80, ammo: 2, medkits: 0, enemies: &[(6, 12, 4, 90), (9, 13, 8, 8)], cover: &[(8, 7)], at_objective: false },
    Spec { name: "three_targets", id: 2, at: (9, 7), hp: 100, ammo: 3, medkits: 1, enemies: &[(7, 14, 6, 60), (10, 15, 9, 35), (11, 13, 3, 100)], cover: &[(9, 8), (8, 6)], at_objective: true },
    Spec { name: "from_cover", id: 3, at: (7, 4), hp: 75, ammo: 1, medkits: 0, enemies: &[(8, 12, 4, 45)], cover: &[(7, 4), (6, 9)], at_objective: false },
    Spec { name: "last_shot_weak_enemy", id: 4, at: (10, 7), hp: 60, ammo: 1, medkits: 1, enemies: &[(11, 13, 7, 20), (6, 16, 5, 90)], cover: &[(10, 8)], at_objective: true },
    Spec { name: "blue_duel", id: 7, at: (13, 6), hp: 85, ammo: 3, medkits: 0, enemies: &[(2, 8, 6, 55)], cover: &[(12, 6), (14, 9)], at_objective: false },
    Spec { name: "blue_picks_weakest", id: 9, at: (12, 8), hp: 95, ammo: 2, medkits: 1, enemies: &[(0, 7, 8, 100), (3, 8, 5, 15)], cover: &[(12, 9)], at_objective: false },
    // Empty magazine.
    Spec { name: "empty_under_fire", id: 5, at: (8, 5), hp: 80, ammo: 0, medkits: 1, enemies: &[(10, 12, 5, 50)], cover: &[(8, 4), (6, 6)], at_objective: false },
    Spec { name: "empty_in_cover", id: 6, at: (12, 4), hp: 70, ammo: 0, medkits: 0, enemies: &[(1, 8, 4, 40)], cover: &[(12, 4)], at_objective: false },
    Spec { name: "empty_alone", id: 0, at: (4, 6), hp: 100, ammo: 0, medkits: 1, enemies: &[], cover: &[(5, 6)], at_objective: false },
    Spec { name: "empty_weak_enemy_close", id: 8, at: (11, 7), hp: 65, ammo: 0, medkits: 0, enemies: &[(4, 9, 7, 5)], cover: &[(12, 7)], at_objective: false },
    Spec { name: "empty_two_enemies", id: 2, at: (7, 8), hp: 90, ammo: 0, medkits: 2, enemies: &[(7, 12, 8, 80), (8, 11, 10, 70)], cover: &[(6, 8), (7, 10)], at_objective: false },
    // Low health with a medkit.
    Spec { name: "hurt_with_medkit_under_fire", id: 1, at: (8, 5), hp: 25, ammo: 3, medkits: 1, enemies: &[(9, 12, 6, 80)], cover: &[(8, 4)], at_objective: false },
    Spec { name: "hurt_with_medkit_alone", id: 3, at: (5, 9), hp: 30, ammo: 2, medkits: 2, enemies: &[], cover: &[(4, 9)], at_objective: false },
    Spec { name: "hurt_with_medkit_in_cover", id: 10, at: (14, 5), hp: 15, ammo: 1, medkits: 1, enemies: &[(2, 9, 5, 60), (4, 10, 8, 50)], cover: &[(14, 5), (15, 8)], at_objective: false },
    Spec { name: "hurt_medkit_weak_enemy", id: 5, at: (9, 6), hp: 20, ammo: 3, medkits: 1, enemies: &[(11, 13, 6, 10)], cover: &[(9, 5)], at_objective: true },
    Spec { name: "hurt_medkit_empty", id: 7, at: (13, 9), hp: 35, ammo: 0, medkits: 1, enemies: &[(0, 8, 9, 70)], cover: &[(13, 10)], at_objective: false },
    // Low health, no medkit.
    Spec { name: "hurt_no_medkit_under_fire", id: 4, at: (10, 6), hp: 18, ammo: 2, medkits: 0, enemies: &[(8, 14, 6, 90)], cover: &[(9, 6), (11, 4)], at_objective: true },
    Spec { name: "hurt_no_medkit_in_cover", id: 9, at: (13, 5), hp: 10, ammo: 3, medkits: 0, enemies: &[(1, 9, 5, 70)], cover: &[(13, 5)], at_objective: false },
    Spec { name: "hurt_no_medkit_alone", id: 2, at: (6, 8), hp: 25, ammo: 3, medkits: 0, enemies: &[], cover: &[(5, 8), (6, 10)], at_objective: false },
    Spec { name: "hurt_no_medkit_alone_in_cover", id: 11, at: (15, 6), hp: 30, ammo: 1, medkits: 0, enemies: &[], cover: &[(15, 6)], at_objective: false },
    Spec { name: "five_hp_weak_enemy", id: 6, at: (11, 8), hp: 5, ammo: 3, medkits: 0, enemies: &[(3, 8, 8, 8)], cover: &[(12, 9)], at_objective: false },
    Spec { name: "hurt_no_medkit_empty", id: 0, at: (7, 6), hp: 22, ammo: 0, medkits: 0, enemies: &[(8, 11, 6, 60)], cover: &[(6, 6)], at_objective: false },
    // Nobody in sight, healthy.
    Spec { name: "push_objective", id: 1, at: (3, 7), hp: 100, ammo: 3, medkits: 1, enemies: &[], cover: &[(4, 6)], at_objective: false },
    Spec { name: "push_objective_from_cover", id: 3, at: (5, 4), hp: 80, ammo: 3, medkits: 0, enemies: &[], cover: &[(5, 4), (7, 6)], at_objective: false },
    Spec { name: "push_objective_half_ammo", id: 4, at: (2, 10), hp: 70, ammo: 1, medkits: 1, enemies: &[], cover: &[(3, 9)], at_objective: false },
    Spec { name: "blue_push_objective", id: 8, at: (17, 6), hp: 95, ammo: 3, medkits: 1, enemies: &[], cover: &[(15, 6)], at_objective: false },
    Spec { name: "hold_objective", id: 5, at: (10, 7), hp: 90, ammo: 3, medkits: 1, enemies: &[], cover: &[(10, 8)], at_objective: true },
    Spec { name: "hold_objective_topped_up", id: 10, at: (9, 8), hp: 60, ammo: 2, medkits: 0, enemies: &[], cover: &[(9, 9)], at_objective: true },
    Spec { name: "hold_objective_in_cover", id: 11, at: (10, 8), hp: 100, ammo: 3, medkits: 2, enemies: &[], cover: &[(10, 8)], at_objective: true },
    Spec { name: "healthy_medkit_not_needed", id: 6, at: (16, 4), hp: 55, ammo: 3, medkits: 2, enemies: &[], cover: &[(15, 4)], at_objective: false },
    // Mixed pressure.
    Spec { name: "outnumbered_healthy", id: 2, at: (8, 7), hp: 70, ammo: 3, medkits: 0, enemies: &[(6, 12, 6, 90), (7, 12, 8, 90), (8, 13, 7, 85)], cover: &[(8, 6)], at_objective: false },
    Spec { name: "no_cover_listed_under_fire", id: 3, at: (9, 3), hp: 85, ammo: 2, medkits: 0, enemies: &[(10, 14, 3, 40)], cover: &[], at_objective: false },
    Spec { name: "hurt_no_cover_no_medkit", id: 8, at: (12, 10), hp: 12, ammo: 2, medkits: 0, enemies: &[(5, 7, 10, 50)], cover: &[], at_objective: false },
    Spec { name: "equal_enemies", id: 9, at: (12, 6), hp: 90, ammo: 3, medkits: 1, enemies: &[(1, 7, 5, 40), (2, 8, 8, 40)], cover: &[(13, 6)], at_objective: false },
    Spec { name: "just_above_low", id: 7, at: (12, 5), hp: 41, ammo: 2, medkits: 1, enemies: &[(0, 8, 5, 75)], cover: &[(12, 4)], at_objective: false },
];

/// The suite: every situation, in a fixed order.
pub fn suite() -> Vec<Scenario> {
    SPECS.iter().map(Spec::build).collect()
}

/// Situations from a played game of `seed`, outside the suite: every `every`-th snapshot of a
/// living agent over `ticks` ticks of GOAP play, with the persona the arena gives that agent.
pub fn played_situations(
    assets: &ArenaAssets,
    seed: u64,
    ticks: usize,
    every: usize,
) -> Vec<(String, WorldSnapshot)> {
    played_snapshots(assets, ArenaConfig::default().with_seed(seed), ticks)
        .into_iter()
        .filter(|s| s.health.current > 0)
        .step_by(every.max(1))
        .map(|s| (assets.persona_of(s.agent), s))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::testing::assets;
    use crate::{expand_intent, fallback_plan, intents};

    #[test]
    fn the_suite_has_thirty_distinct_situations_each_with_an_accepted_action() {
        let suite = suite();
        assert!(suite.len() >= 30);
        let names: BTreeSet<_> = suite.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), suite.len());
        let registry = assets().registry;
        for s in &suite {
            assert!(!s.accepted().is_empty(), "{}", s.name);
            assert_eq!(registry.validate_plan(&[], &s.snapshot), Ok(()));
        }
        // Every rule is exercised somewhere.
        let all: Vec<Accepted> = suite.iter().flat_map(Scenario::accepted).collect();
        for rule in [
            |a: &Accepted| matches!(a, Accepted::Heal),
            |a: &Accepted| matches!(a, Accepted::Reload),
            |a: &Accepted| matches!(a, Accepted::Attack(_)),
            |a: &Accepted| matches!(a, Accepted::TakeCover),
            |a: &Accepted| matches!(a, Accepted::Retreat),
            |a: &Accepted| matches!(a, Accepted::MoveCloser { .. }),
            |a: &Accepted| matches!(a, Accepted::Wait),
        ] {
            assert!(all.iter().any(rule));
        }
    }

    #[test]
    fn the_rules_read_as_written() {
        let by_name = |name| suite().into_iter().find(|s| s.name == name).unwrap();
        let s = by_name("finish_the_weak_one");
        assert!(is_sensible(
            &s.snapshot,
            &PlanStep::new("Attack").with_arg("target", ArgValue::Int(9))
        ));
        assert!(!is_sensible(
            &s.snapshot,
            &PlanStep::new("Attack").with_arg("target", ArgValue::Int(6))
        ));
        assert!(is_sensible(
            &s.snapshot,
            &PlanStep::new("TakeCover").with_arg("at", ArgValue::Point(Point::new(8, 7)))
        ));
        assert!(!is_sensible(&s.snapshot, &PlanStep::new("Wait")));

        let s = by_name("empty_under_fire");
        assert!(is_sensible(&s.snapshot, &PlanStep::new("Reload")));
        assert!(!is_sensible(&s.snapshot, &PlanStep::new("Retreat")));

        let s = by_name("five_hp_weak_enemy");
        assert!(!is_sensible(
            &s.snapshot,
            &PlanStep::new("Attack").with_arg("target", ArgValue::Int(3))
        ));
        assert!(is_sensible(&s.snapshot, &PlanStep::new("Retreat")));

        let s = by_name("push_objective");
        let to = |x, y| PlanStep::new("MoveTo").with_arg("to", ArgValue::Point(Point::new(x, y)));
        assert!(is_sensible(&s.snapshot, &to(6, 7)));
        assert!(!is_sensible(&s.snapshot, &to(1, 7)));
        assert!(!is_sensible(
            &s.snapshot,
            &PlanStep::new("Say").with_arg("text", ArgValue::Text("hi".into()))
        ));

        let s = by_name("hold_objective");
        assert!(is_sensible(
            &s.snapshot,
            &PlanStep::new("Say").with_arg("text", ArgValue::Text("hi".into()))
        ));
    }

    #[test]
    fn voices_are_told_apart_by_whole_words() {
        assert_eq!(voice("veteran", "Copy that. Moving."), Voice::Own);
        assert_eq!(voice("veteran", "Whoa, let's go!"), Voice::Bleed);
        assert_eq!(voice("rookie", "Let's go, let's go!"), Voice::Own);
        assert_eq!(voice("rookie", "Contact left, whoa"), Voice::Bleed);
        assert_eq!(voice("rookie", "Photocopy the map"), Voice::Plain);
    }

    /// The rules judge GOAP's own plans too: the baseline a model has to beat. Not every fallback
    /// plan is accepted (it walks to the objective with low health and no medkit, say), and the
    /// guided options' best expansion is accepted at least as often.
    #[test]
    fn goap_and_the_best_intent_are_judged_by_the_same_rules() {
        let assets = assets();
        let suite = suite();
        let judge = |steps: &[PlanStep], s: &WorldSnapshot| {
            steps.first().is_some_and(|f| is_sensible(s, f))
        };
        let goap = suite
            .iter()
            .filter(|s| {
                judge(
                    &fallback_plan(&assets.domain, &assets.registry, &s.snapshot),
                    &s.snapshot,
                )
            })
            .count();
        let best = suite
            .iter()
            .filter(|s| {
                let options = intents(&assets.domain, &assets.registry, &s.snapshot);
                let steps = expand_intent(
                    &assets.domain,
                    &assets.registry,
                    &s.snapshot,
                    &options[0].goal,
                );
                judge(&steps, &s.snapshot)
            })
            .count();
        assert!(goap >= suite.len() * 3 / 4, "{goap} of {}", suite.len());
        assert!(best >= goap, "{best} < {goap}");
    }

    #[test]
    fn played_situations_come_from_living_agents_with_their_personas() {
        let assets = assets();
        let played = played_situations(&assets, 3, 120, 37);
        assert!(played.len() >= 20, "{}", played.len());
        for (persona, s) in &played {
            assert!(s.health.current > 0);
            assert!(assets.prompt.personas.iter().any(|p| &p.name == persona));
        }
    }
}
