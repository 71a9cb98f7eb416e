//! Domains and helpers shared by the tests of [`domain`](super::domain) and
//! [`search`](super::search).

use super::{ActionId, Domain, Goal};
use crate::config::LoadError;

const GUARD: &str = r#"(
    actions: [
        (name: "reload", cost: 1.0, pre: [("ammo", Eq, 0)], effects: [("ammo", Set, 3)]),
        (name: "attack", cost: 1.0, pre: [("ammo", Gt, 0), ("enemy_visible", Eq, 1)],
         effects: [("ammo", Add, -1), ("enemy_hurt", Set, 1)]),
        (name: "scout", cost: 2.0, effects: [("enemy_visible", Set, 1)]),
        (name: "bandage", cost: 1.5, pre: [("medkits", Gt, 0)],
         effects: [("medkits", Add, -1), ("hp", Add, 1)]),
    ],
    goals: [
        (name: "hurt_enemy", conditions: [("enemy_hurt", Eq, 1)]),
        (name: "heal", conditions: [("hp", Ge, 2)]),
    ],
)"#;

pub(super) fn guard() -> Result<Domain, LoadError> {
    Domain::from_ron(GUARD, "guard.ron")
}

pub(super) fn goal<'a>(domain: &'a Domain, name: &str) -> Result<&'a Goal, String> {
    domain.goal(name).ok_or_else(|| format!("no goal `{name}`"))
}

pub(super) fn names<'a>(domain: &'a Domain, actions: &[ActionId]) -> Vec<&'a str> {
    actions
        .iter()
        .map(|&a| domain.action_name(a).unwrap_or("?"))
        .collect()
}

pub(super) fn ids(domain: &Domain, names: &[&str]) -> Result<Vec<ActionId>, String> {
    names
        .iter()
        .map(|n| domain.action(n).ok_or_else(|| format!("no action `{n}`")))
        .collect()
}
