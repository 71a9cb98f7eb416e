//! Situations in which the player has just spoken to the agent, and the intents that follow
//! what was said. See the [suite's rules](super#player-orders).

use hivemind_core::action::ActionRegistry;
use hivemind_core::goap::Domain;
use hivemind_core::snapshot::WorldSnapshot;

use crate::intents::order_intents;
use crate::planning::{expand_intent, goal};
use crate::scenarios::{Spec, is_sensible};

/// What the player's line asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrderKind {
    /// Fall back to base: `retreat`.
    FallBack,
    /// Give covering fire: `kill_enemy`.
    CoverMe,
    /// Take the objective: `hold_objective`.
    TakePoint,
    /// Heal before anything else: `heal`.
    HealFirst,
    /// Shoot the weakest enemy: `kill_enemy` (its steps bind the weakest).
    FocusWeak,
    /// Reload: `reload`.
    Reload,
    /// Get into cover: `take_cover`.
    TakeCover,
    /// No order at all: whatever the scenario rules accept.
    Chatter,
}

impl OrderKind {
    /// The intents that follow an order of this kind; empty for chatter, which follows the
    /// rules instead.
    pub fn goals(self) -> &'static [&'static str] {
        match self {
            OrderKind::FallBack => &[goal::RETREAT],
            OrderKind::CoverMe | OrderKind::FocusWeak => &[goal::KILL_ENEMY],
            OrderKind::TakePoint => &[goal::HOLD_OBJECTIVE],
            OrderKind::HealFirst => &[goal::HEAL],
            OrderKind::Reload => &[goal::RELOAD],
            OrderKind::TakeCover => &[goal::TAKE_COVER],
            OrderKind::Chatter => &[],
        }
    }

    /// A short name for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderKind::FallBack => "fall back",
            OrderKind::CoverMe => "cover me",
            OrderKind::TakePoint => "take the point",
            OrderKind::HealFirst => "heal first",
            OrderKind::FocusWeak => "focus the weak",
            OrderKind::Reload => "reload",
            OrderKind::TakeCover => "take cover",
            OrderKind::Chatter => "chatter",
        }
    }
}

/// A situation, what the player just said, and what kind of order it is.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderCase {
    /// A name for reports.
    pub name: &'static str,
    /// The agent's persona.
    pub persona: &'static str,
    /// What the agent knows.
    pub snapshot: WorldSnapshot,
    /// The player's words.
    pub said: &'static str,
    /// What they ask for.
    pub kind: OrderKind,
}

impl OrderCase {
    /// The intents GOAP can carry out here: what an agent given an order is offered, in the
    /// utility's order, best first.
    pub fn feasible(&self, domain: &Domain, registry: &ActionRegistry) -> Vec<String> {
        order_intents(domain, registry, &self.snapshot)
            .into_iter()
            .map(|o| o.goal)
            .collect()
    }

    /// The intents that follow what the player said: the order's own, or for chatter those
    /// whose first step the scenario rules accept; only feasible ones.
    pub fn matching(&self, domain: &Domain, registry: &ActionRegistry) -> Vec<String> {
        self.feasible(domain, registry)
            .into_iter()
            .filter(|g| match self.kind {
                OrderKind::Chatter => expand_intent(domain, registry, &self.snapshot, g)
                    .first()
                    .is_some_and(|step| is_sensible(&self.snapshot, step)),
                kind => kind.goals().contains(&g.as_str()),
            })
            .collect()
    }
}

/// Every order case, in a fixed order.
pub fn order_cases() -> Vec<OrderCase> {
    CASES
        .iter()
        .enumerate()
        .map(|(i, (kind, said, spec))| OrderCase {
            name: spec.name,
            persona: super::persona_at(i),
            snapshot: spec.snapshot(),
            said,
            kind: *kind,
        })
        .collect()
}

macro_rules! spec {
    ($name:literal, $id:literal, $at:expr, hp $hp:literal, ammo $ammo:literal, kits $kits:literal,
     enemies $enemies:expr, cover $cover:expr $(, $obj:ident)?) => {
        Spec {
            name: $name,
            id: $id,
            at: $at,
            hp: $hp,
            ammo: $ammo,
            medkits: $kits,
            enemies: $enemies,
            cover: $cover,
            at_objective: spec!(@obj $($obj)?),
        }
    };
    (@obj) => { false };
    (@obj at_objective) => { true };
}

#[rustfmt::skip]
const CASES: &[(OrderKind, &str, Spec)] = &[
    (OrderKind::FallBack, "Fall back to base, now!", spec!("fall_back_healthy", 40, (9, 6), hp 85, ammo 3, kits 1, enemies &[(8, 12, 6, 60)], cover &[(9, 7)])),
    (OrderKind::FallBack, "Retreat! Get out of there.", spec!("retreat_from_objective", 41, (10, 7), hp 70, ammo 2, kits 0, enemies &[(9, 13, 7, 40), (10, 14, 9, 80)], cover &[(10, 8)], at_objective)),
    (OrderKind::FallBack, "Pull back, you're too exposed.", spec!("pull_back_hurt", 42, (8, 5), hp 30, ammo 1, kits 0, enemies &[(11, 12, 5, 90)], cover &[])),
    (OrderKind::FallBack, "Get back to the base.", spec!("back_to_base_blue", 43, (13, 6), hp 95, ammo 3, kits 1, enemies &[(2, 9, 6, 50)], cover &[(14, 6)])),
    (OrderKind::CoverMe, "Cover me while I move!", spec!("cover_me_hurt", 44, (7, 6), hp 30, ammo 3, kits 1, enemies &[(8, 11, 6, 70)], cover &[(7, 5)])),
    (OrderKind::CoverMe, "Give me covering fire!", spec!("covering_fire", 45, (9, 8), hp 90, ammo 2, kits 0, enemies &[(10, 13, 8, 60)], cover &[(9, 9)])),
    (OrderKind::CoverMe, "Lay down fire on them, cover me!", spec!("lay_down_fire", 46, (12, 7), hp 80, ammo 1, kits 1, enemies &[(3, 8, 7, 75), (4, 7, 9, 90)], cover &[(12, 8)])),
    (OrderKind::CoverMe, "Suppress them, I'm going in.", spec!("suppress_hurt", 47, (6, 4), hp 30, ammo 3, kits 2, enemies &[(9, 10, 4, 85)], cover &[(6, 5)])),
    (OrderKind::TakePoint, "Take the point!", spec!("take_the_point", 48, (5, 7), hp 90, ammo 3, kits 1, enemies &[(9, 9, 3, 70)], cover &[(5, 6)])),
    (OrderKind::TakePoint, "Go grab the objective.", spec!("grab_objective", 49, (4, 9), hp 60, ammo 2, kits 0, enemies &[(10, 8, 12, 50)], cover &[(4, 8)])),
    (OrderKind::TakePoint, "Move up and hold the center.", spec!("hold_the_center", 50, (15, 6), hp 100, ammo 3, kits 1, enemies &[], cover &[(15, 5)])),
    (OrderKind::TakePoint, "Push to the objective now.", spec!("push_empty", 51, (3, 5), hp 80, ammo 0, kits 1, enemies &[(11, 6, 5, 60)], cover &[(3, 6)])),
    (OrderKind::HealFirst, "Heal up first.", spec!("heal_up_first", 52, (8, 7), hp 60, ammo 3, kits 1, enemies &[(9, 12, 7, 50)], cover &[(8, 8)])),
    (OrderKind::HealFirst, "Use your medkit before you fight.", spec!("medkit_before_fight", 53, (11, 5), hp 50, ammo 2, kits 2, enemies &[], cover &[(11, 6)])),
    (OrderKind::HealFirst, "You're hurt, fix yourself up.", spec!("fix_yourself_up", 54, (6, 9), hp 25, ammo 3, kits 1, enemies &[(4, 10, 9, 90)], cover &[(6, 10)])),
    (OrderKind::HealFirst, "Heal before anything else.", spec!("heal_before_reload", 55, (10, 6), hp 70, ammo 0, kits 1, enemies &[(5, 13, 6, 30)], cover &[(10, 5)], at_objective)),
    (OrderKind::FocusWeak, "Focus the weak one!", spec!("focus_weak_hurt", 56, (9, 5), hp 30, ammo 3, kits 1, enemies &[(6, 12, 5, 90), (7, 12, 8, 10)], cover &[(9, 4)])),
    (OrderKind::FocusWeak, "Shoot the one that's almost dead.", spec!("almost_dead", 57, (8, 8), hp 85, ammo 2, kits 0, enemies &[(8, 13, 6, 15), (9, 12, 10, 95)], cover &[(8, 9)])),
    (OrderKind::FocusWeak, "Finish off the wounded enemy.", spec!("finish_wounded", 58, (12, 6), hp 75, ammo 1, kits 1, enemies &[(0, 7, 6, 20), (1, 8, 4, 100), (2, 6, 8, 60)], cover &[(12, 7)])),
    (OrderKind::FocusWeak, "Take out the weakest target.", spec!("weakest_target_hurt", 59, (7, 7), hp 20, ammo 2, kits 0, enemies &[(9, 11, 7, 5)], cover &[(7, 8)])),
    (OrderKind::Reload, "Reload your weapon.", spec!("reload_order", 60, (9, 6), hp 90, ammo 2, kits 1, enemies &[(9, 13, 6, 70)], cover &[(9, 7)])),
    (OrderKind::Reload, "Reload before they come back.", spec!("reload_before", 61, (14, 8), hp 80, ammo 1, kits 0, enemies &[(3, 9, 8, 60)], cover &[(14, 9)])),
    (OrderKind::TakeCover, "Get into cover!", spec!("get_into_cover", 62, (8, 4), hp 90, ammo 3, kits 1, enemies &[(10, 12, 4, 60)], cover &[(8, 3)])),
    (OrderKind::TakeCover, "Hide behind that wall.", spec!("hide_behind_wall", 63, (13, 9), hp 70, ammo 2, kits 0, enemies &[(5, 8, 9, 80)], cover &[(12, 9)])),
    (OrderKind::Chatter, "Nice weather today, huh?", spec!("chatter_weather", 64, (6, 6), hp 90, ammo 3, kits 1, enemies &[(8, 11, 6, 50)], cover &[(6, 5)])),
    (OrderKind::Chatter, "What did you have for breakfast?", spec!("chatter_breakfast", 65, (5, 8), hp 100, ammo 3, kits 0, enemies &[], cover &[(5, 9)])),
    (OrderKind::Chatter, "You're doing great.", spec!("chatter_praise", 66, (11, 7), hp 25, ammo 2, kits 1, enemies &[(2, 7, 7, 80)], cover &[(11, 8)])),
    (OrderKind::Chatter, "Tell me a joke.", spec!("chatter_joke", 67, (10, 7), hp 80, ammo 0, kits 0, enemies &[(4, 13, 7, 60)], cover &[(10, 8)], at_objective)),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::testing::assets;

    #[test]
    fn every_order_is_feasible_and_the_utility_alone_rarely_follows_it() {
        let assets = assets();
        let cases = order_cases();
        assert!(cases.len() >= 24);
        let names: BTreeSet<_> = cases.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), cases.len());
        let mut utility_follows = 0;
        for case in &cases {
            let feasible = case.feasible(&assets.domain, &assets.registry);
            let matching = case.matching(&assets.domain, &assets.registry);
            assert!(!matching.is_empty(), "{}: {feasible:?}", case.name);
            assert!(feasible.len() >= 2, "{}: {feasible:?}", case.name);
            for g in case.kind.goals() {
                assert!(
                    feasible.iter().any(|f| f == g),
                    "{}: {feasible:?}",
                    case.name
                );
            }
            if case.kind != OrderKind::Chatter && matching.contains(&feasible[0]) {
                utility_follows += 1;
            }
        }
        // An order mostly asks for what the scores do not rank first.
        assert!(utility_follows <= cases.len() / 3, "{utility_follows}");
        // Every kind the issue names is there, at least twice.
        for kind in [
            OrderKind::FallBack,
            OrderKind::CoverMe,
            OrderKind::TakePoint,
            OrderKind::HealFirst,
            OrderKind::FocusWeak,
            OrderKind::Chatter,
        ] {
            assert!(cases.iter().filter(|c| c.kind == kind).count() >= 2);
        }
    }
}
