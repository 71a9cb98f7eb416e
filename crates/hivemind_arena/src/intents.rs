//! The guided prompt's candidates: what an agent could set out to do, scored by a small utility
//! function over its snapshot.
//!
//! Each intent is a goal of the arena's GOAP domain. [`score_intents`] scores those that make
//! sense at all in the snapshot (no `heal` without a medkit, no attack without ammo and a
//! target); [`intents`] keeps the best few that GOAP can carry out, each with a one-line reason,
//! for the model to choose from. Whichever it picks, [`expand_intent`] turns it into steps, so
//! the model chooses and speaks while the rules guarantee the steps.
//!
//! # Scores
//!
//! Scores are in `0.0..=1.2`; `h` is health as a fraction, "low" is below
//! [`HP_LOW_PERCENT`](crate::planning::HP_LOW_PERCENT).
//!
//! | intent | when | score |
//! |---|---|---|
//! | `heal` | a medkit held, health not full | `1 − h`, + 0.3 when low |
//! | `reload` | magazine not full | empty: 0.9; else 0.3 with nobody in sight, 0.1 with |
//! | `kill_enemy` | ammo and an enemy in sight | 0.6 + 0.3 × (1 − the weakest's `h`); when low only 0.2 × (1 − its `h`), so a hurt agent is not sent to duel |
//! | `take_cover` | cover listed, not in cover | enemy in sight: 0.45, + 0.35 when low, + 0.1 when empty; else 0.5 when low, 0.05 otherwise |
//! | `retreat` | an enemy in sight | low: 0.85 (0.4 with a medkit); empty: 0.35; else 0.1 |
//! | `hold_objective` | always | not there: 0.7 alone, 0.2 when low, 0.15 with an enemy in sight; there and alone: 0.6 |
//!
//! Intents scoring below [`MIN_SCORE`] are not offered; at most [`MAX_INTENTS`] are, and at least
//! the best one.

use hivemind_core::action::ActionRegistry;
use hivemind_core::cache::ArgRole;
use hivemind_core::goap::Domain;
use hivemind_core::prompt::IntentOption;
use hivemind_core::snapshot::{EntityInfo, Health, Point, WorldSnapshot};

use crate::planning::{GoapFacts, expand_intent, goal};
use crate::snapshot::{COVER, ENEMY, OBJECTIVE, fact};

/// The most intents a guided prompt offers.
pub const MAX_INTENTS: usize = 4;

/// Intents scoring below this are not offered (unless none scores higher).
pub const MIN_SCORE: f32 = 0.25;

/// A candidate intent and its utility.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredIntent {
    /// The option as the prompt shows it.
    pub option: IntentOption,
    /// Its utility; higher is better.
    pub score: f32,
}

/// Every intent that makes sense in `snapshot`, best first. See [Scores](self#scores).
pub fn score_intents(snapshot: &WorldSnapshot) -> Vec<ScoredIntent> {
    let facts = GoapFacts::read(snapshot);
    let h = snapshot.health.fraction();
    let hp = (h * 100.0).round();
    let low = facts.hp_low;
    let empty = facts.ammo <= 0;
    let enemies: Vec<&EntityInfo> = snapshot.entities_in(ENEMY).collect();
    let seen = !enemies.is_empty();
    let mut out = Vec::new();
    let mut offer = |goal: &str, label: String, reason: String, score: f32| {
        out.push(ScoredIntent {
            option: IntentOption::new(goal, label, reason),
            score,
        });
    };

    let medkits = snapshot.int_fact(fact::MEDKITS).unwrap_or(0);
    if facts.has_medkit && h < 1.0 {
        let kits = if medkits == 1 { "medkit" } else { "medkits" };
        offer(
            goal::HEAL,
            "heal".into(),
            format!("hp {hp}%, {medkits} {kits} left"),
            (1.0 - h) + if low { 0.3 } else { 0.0 },
        );
    }
    if facts.ammo < MAGAZINE {
        let (reason, score) = match (empty, seen) {
            (true, _) => ("the magazine is empty".to_owned(), 0.9),
            (false, false) => (format!("{} of {MAGAZINE} shots left", facts.ammo), 0.3),
            (false, true) => (format!("{} of {MAGAZINE} shots left", facts.ammo), 0.1),
        };
        offer(goal::RELOAD, "reload".into(), reason, score);
    }
    // The target GOAP's `attack` binds to, so the label names the enemy the steps shoot.
    let weakest = ArgRole::WeakestIn(ENEMY.to_owned())
        .resolve(snapshot)
        .and_then(|target| target.as_entity())
        .and_then(|id| enemies.iter().find(|e| e.id == id).copied());
    if let Some(target) = weakest.filter(|_| !empty) {
        let th = target.health.map_or(1.0, Health::fraction);
        let mut reason = format!("it is at {}% hp", (th * 100.0).round());
        if enemies.len() > 1 {
            reason.push_str(&format!(", the weakest of {}", enemies.len()));
        }
        offer(
            goal::KILL_ENEMY,
            format!("attack enemy {}", target.id),
            reason,
            if low {
                0.2 * (1.0 - th)
            } else {
                0.6 + 0.3 * (1.0 - th)
            },
        );
    }
    let cover = nearest(snapshot, COVER);
    if let Some((at, distance)) = cover.filter(|_| !facts.in_cover) {
        let label = format!("take cover at ({},{})", at.x, at.y);
        let (reason, score) = if seen {
            let mut score = 0.45;
            if low {
                score += 0.35;
            }
            if empty {
                score += 0.1;
            }
            (
                format!(
                    "{} in sight, cover {distance} cells away",
                    count(enemies.len())
                ),
                score,
            )
        } else if low {
            (format!("hp {hp}%, cover {distance} cells away"), 0.5)
        } else {
            (format!("cover {distance} cells away"), 0.05)
        };
        offer(goal::TAKE_COVER, label, reason, score);
    }
    if seen {
        let (reason, score) = if low && facts.has_medkit {
            (format!("hp {hp}%"), 0.4)
        } else if low {
            (format!("hp {hp}% and no medkit"), 0.85)
        } else if empty {
            ("the magazine is empty".to_owned(), 0.35)
        } else {
            (format!("{} in sight", count(enemies.len())), 0.1)
        };
        offer(goal::RETREAT, "retreat to base".into(), reason, score);
    }
    match nearest(snapshot, OBJECTIVE) {
        Some((_, distance)) if !facts.at_objective => {
            let score = if seen {
                0.15
            } else if low {
                0.2
            } else {
                0.7
            };
            offer(
                goal::HOLD_OBJECTIVE,
                "move to the objective".into(),
                format!("it is {distance} cells away"),
                score,
            );
        }
        _ if facts.at_objective && !seen => offer(
            goal::HOLD_OBJECTIVE,
            "hold the objective".into(),
            "you stand in it and nobody is in sight".into(),
            0.6,
        ),
        _ => {}
    }

    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

/// The intents a guided prompt offers in `snapshot`, best first.
///
/// They are those of [`score_intents`] that score at least [`MIN_SCORE`] and that GOAP can carry
/// out here ([`expand_intent`] gives steps), at most [`MAX_INTENTS`]. The best one is offered
/// whatever its score; empty only if GOAP can carry out none, in which case the free format is
/// the only way to ask.
pub fn intents(
    domain: &Domain,
    registry: &ActionRegistry,
    snapshot: &WorldSnapshot,
) -> Vec<IntentOption> {
    let mut offered = Vec::new();
    for scored in score_intents(snapshot) {
        if offered.len() == MAX_INTENTS || (!offered.is_empty() && scored.score < MIN_SCORE) {
            break;
        }
        if !expand_intent(domain, registry, snapshot, &scored.option.goal).is_empty() {
            offered.push(scored.option);
        }
    }
    offered
}

/// The intents offered when the player has just spoken to the agent.
///
/// They are every one of [`score_intents`] that GOAP can carry out here, best first, whatever its
/// score, since the player may order what the scores rank low.
pub fn order_intents(
    domain: &Domain,
    registry: &ActionRegistry,
    snapshot: &WorldSnapshot,
) -> Vec<IntentOption> {
    score_intents(snapshot)
        .into_iter()
        .map(|scored| scored.option)
        .filter(|option| !expand_intent(domain, registry, snapshot, &option.goal).is_empty())
        .collect()
}

/// Shots in a full magazine: what the domain's `reload` sets `ammo` to.
const MAGAZINE: i32 = 3;

fn nearest(snapshot: &WorldSnapshot, set: &str) -> Option<(Point, i64)> {
    let at = snapshot.position;
    snapshot
        .points_in(set)
        .map(|p| (p, at.manhattan(p)))
        .min_by_key(|&(p, d)| (d, p))
}

fn count(n: usize) -> String {
    match n {
        1 => "1 enemy".to_owned(),
        n => format!("{n} enemies"),
    }
}

#[cfg(test)]
mod tests {
    use hivemind_core::snapshot::Health;

    use super::*;
    use crate::testing::{assets, flanking_guard};

    /// The shared fixture, with a medkit.
    fn guard() -> WorldSnapshot {
        flanking_guard().with_fact("medkits", 1)
    }

    fn goals(options: &[IntentOption]) -> Vec<&str> {
        options.iter().map(|o| o.goal.as_str()).collect()
    }

    #[test]
    fn a_healthy_armed_agent_is_offered_the_weakest_enemy_first() {
        let assets = assets();
        let options = intents(&assets.domain, &assets.registry, &guard());
        assert_eq!(goals(&options), ["kill_enemy", "take_cover"]);
        assert_eq!(options[0].label, "attack enemy 9");
        assert_eq!(options[0].reason, "it is at 20% hp, the weakest of 2");
    }

    #[test]
    fn low_health_puts_healing_first_and_an_empty_magazine_puts_reloading_first() {
        let assets = assets();
        let hurt = guard().with_health(Health::new(25, 100));
        let options = intents(&assets.domain, &assets.registry, &hurt);
        assert_eq!(goals(&options)[0], "heal");
        assert!(!goals(&options).contains(&"kill_enemy"), "{options:?}");

        let empty = guard().with_fact("ammo", 0);
        let options = intents(&assets.domain, &assets.registry, &empty);
        assert_eq!(goals(&options)[0], "reload");
        assert!(!goals(&options).contains(&"kill_enemy"));

        let cornered = guard()
            .with_health(Health::new(25, 100))
            .with_fact("medkits", 0);
        let options = intents(&assets.domain, &assets.registry, &cornered);
        assert_eq!(goals(&options)[..2], ["retreat", "take_cover"]);
    }

    #[test]
    fn alone_the_agent_pushes_the_objective_or_holds_it() {
        let assets = assets();
        let mut alone = guard().with_fact("ammo", 3);
        alone.entities.clear();
        let options = intents(&assets.domain, &assets.registry, &alone);
        assert_eq!(goals(&options), ["hold_objective"]);
        assert_eq!(options[0].label, "move to the objective");
        let holding = alone.with_fact("at_objective", true);
        let options = intents(&assets.domain, &assets.registry, &holding);
        assert_eq!(options[0].label, "hold the objective");
        assert_eq!(
            expand_intent(&assets.domain, &assets.registry, &holding, "hold_objective"),
            [assets.registry.idle_step()]
        );
    }

    #[test]
    fn every_offered_intent_expands_to_steps_that_validate() {
        let assets = assets();
        let mut world = crate::ArenaWorld::new(crate::ArenaConfig::default().with_seed(5));
        let mut offered = 0;
        crate::testing::play_goap(&mut world, &assets, 150, |_, snapshot, _| {
            let options = intents(&assets.domain, &assets.registry, snapshot);
            assert!(!options.is_empty() && options.len() <= MAX_INTENTS);
            for option in &options {
                let steps = expand_intent(&assets.domain, &assets.registry, snapshot, &option.goal);
                assert!(!steps.is_empty(), "{option:?}");
                assert_eq!(assets.registry.validate_plan(&steps, snapshot), Ok(()));
                offered += 1;
            }
        });
        assert!(offered > 100, "{offered}");
    }
}
