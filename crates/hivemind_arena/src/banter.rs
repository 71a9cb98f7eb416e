//! What an agent would remark on now: the banter situation, and the slots to fill its line.
//!
//! [`situation`] names one of the template book's well-known situations
//! ([`hivemind_core::templates::situation`]), checking in this order:
//!
//! 1. `low_health`: alive with health below [`HP_LOW_PERCENT`];
//! 2. `ally_down`: a teammate died in the last [`ALLY_DOWN_TICKS`] ticks;
//! 3. `win_streak`: [`STREAK`] or more kills since its last death;
//! 4. `loss_streak`: [`STREAK`] or more deaths since its last kill;
//! 5. `close_fight`: both teams have scored at least [`CLOSE_FIGHT_MIN`] and are within
//!    one kill's points of each other;
//! 6. `idle`: nothing in particular.

use hivemind_core::snapshot::AgentId;
use hivemind_core::templates::{Slots, situation as known, slot};

use crate::planning::HP_LOW_PERCENT;
use crate::world::{Agent, ArenaWorld};

/// How long, in ticks, a teammate's death is worth remarking on.
pub const ALLY_DOWN_TICKS: u64 = 10;

/// Kills (or deaths) in a row that make a streak.
pub const STREAK: i32 = 2;

/// The score both teams need before a tight score counts as a close fight.
pub const CLOSE_FIGHT_MIN: u32 = 10;

/// The situations [`situation`] may answer, in the order it checks them.
pub const SITUATIONS: [&str; 6] = [
    known::LOW_HEALTH,
    known::ALLY_DOWN,
    known::WIN_STREAK,
    known::LOSS_STREAK,
    known::CLOSE_FIGHT,
    known::IDLE,
];

/// The banter situation of `agent` now. See the [module docs](self); an unknown id is `idle`.
pub fn situation(world: &ArenaWorld, agent: AgentId) -> &'static str {
    let Some(me) = world.agent(agent) else {
        return known::IDLE;
    };
    if me.is_alive() && me.is_below(HP_LOW_PERCENT) {
        return known::LOW_HEALTH;
    }
    if recently_downed_ally(world, agent).is_some() {
        return known::ALLY_DOWN;
    }
    if me.streak() >= STREAK {
        return known::WIN_STREAK;
    }
    if me.streak() <= -STREAK {
        return known::LOSS_STREAK;
    }
    let (ours, theirs) = (world.score(me.team()), world.score(me.team().opponent()));
    if ours.min(theirs) >= CLOSE_FIGHT_MIN && ours.abs_diff(theirs) <= world.config().kill_points {
        return known::CLOSE_FIGHT;
    }
    known::IDLE
}

/// Slot values for `agent`'s line, with names from `name_of`:
///
/// - `self`: the agent;
/// - `ally`: the teammate downed most recently (within [`ALLY_DOWN_TICKS`]), else the nearest
///   living teammate;
/// - `enemy`: the nearest enemy in sight, else whoever killed the agent last.
///
/// A slot with no one to name is left out, so lines that need it are skipped.
pub fn banter_slots(
    world: &ArenaWorld,
    agent: AgentId,
    mut name_of: impl FnMut(AgentId) -> String,
) -> Slots {
    let mut slots = Slots::new().with(slot::SELF, name_of(agent));
    let Some(me) = world.agent(agent) else {
        return slots;
    };
    let nearest = |enemy: bool| {
        world
            .agents()
            .filter(|a| a.is_alive() && a.id() != agent && (a.team() != me.team()) == enemy)
            .filter(|a| !enemy || world.can_see(agent, a.id()))
            .min_by_key(|a| (me.position().distance_squared(a.position()), a.id()))
            .map(Agent::id)
    };
    if let Some(ally) = recently_downed_ally(world, agent).or_else(|| nearest(false)) {
        slots.insert(slot::ALLY, name_of(ally));
    }
    if let Some(enemy) = nearest(true).or(me.last_killer()) {
        slots.insert(slot::ENEMY, name_of(enemy));
    }
    slots
}

/// The teammate of `agent` who died most recently, within [`ALLY_DOWN_TICKS`].
fn recently_downed_ally(world: &ArenaWorld, agent: AgentId) -> Option<AgentId> {
    let me = world.agent(agent)?;
    world
        .agents()
        .filter(|a| a.team() == me.team() && a.id() != agent && !a.is_alive())
        .filter_map(|a| Some((a.died_at()?, a.id())))
        .filter(|&(at, _)| world.now().saturating_sub(at) < ALLY_DOWN_TICKS)
        .max_by_key(|&(at, id)| (at, std::cmp::Reverse(id)))
        .map(|(_, id)| id)
}

#[cfg(test)]
mod tests {
    use hivemind_core::plan::{ArgValue, PlanStep};
    use hivemind_core::snapshot::Point;

    use super::*;
    use crate::ArenaConfig;
    use crate::testing::assets;

    const NAMES: [&str; 12] = [
        "Vex", "Rook", "Ash", "Moss", "Flint", "Wren", "Kite", "Bolt", "Sable", "Jinx", "Hale",
        "Pike",
    ];

    fn name(agent: AgentId) -> String {
        NAMES[agent.0 as usize].to_owned()
    }

    fn sure_shots() -> ArenaWorld {
        ArenaWorld::new(ArenaConfig {
            hit_percent: 100,
            ..ArenaConfig::default()
        })
    }

    /// Red 0 shoots Blue `victim` dead from (6,6); the victim stands at (9,4) with 1 hp.
    fn kill(world: &mut ArenaWorld, victim: AgentId) {
        let killer = AgentId(0);
        world.place(victim, Point::new(9, 4)).unwrap();
        world.set_health(victim, 1).unwrap();
        let step = PlanStep::new("Attack").with_arg("target", ArgValue::Int(i64::from(victim.0)));
        world.begin_step(killer, &step).unwrap();
        assert_eq!(world.tick().kills.len(), 1);
    }

    #[test]
    fn situations_follow_the_documented_order() {
        let mut world = sure_shots();
        let (red_scout, blue_sniper, blue_medic) = (AgentId(0), AgentId(6), AgentId(7));
        world.place(red_scout, Point::new(6, 6)).unwrap();
        assert_eq!(situation(&world, red_scout), known::IDLE);
        assert_eq!(situation(&world, AgentId(99)), known::IDLE);

        kill(&mut world, blue_sniper);
        // Blue lost one: the rest of Blue talks about it; one death is not yet a streak.
        assert_eq!(situation(&world, blue_medic), known::ALLY_DOWN);
        assert_eq!(situation(&world, blue_sniper), known::IDLE);
        assert_eq!(situation(&world, red_scout), known::IDLE);

        kill(&mut world, blue_medic);
        assert_eq!(situation(&world, red_scout), known::WIN_STREAK);
        let slots = banter_slots(&world, AgentId(8), name);
        // The teammate downed last.
        assert_eq!(slots.get("ally"), Some("Bolt"));
        assert_eq!(slots.get("self"), Some("Sable"));

        for _ in 0..ALLY_DOWN_TICKS {
            world.tick();
        }
        assert_eq!(situation(&world, AgentId(8)), known::IDLE);

        world.set_health(red_scout, 20).unwrap();
        assert_eq!(situation(&world, red_scout), known::LOW_HEALTH);
        let blue_medic_slots = banter_slots(&world, blue_medic, name);
        assert_eq!(
            blue_medic_slots.get("enemy"),
            Some("Vex"),
            "its last killer"
        );
    }

    #[test]
    fn a_tight_score_is_a_close_fight() {
        let mut world = sure_shots();
        world.scores = [12, 15];
        assert_eq!(situation(&world, AgentId(3)), known::CLOSE_FIGHT);
        world.scores = [12, 30];
        assert_eq!(situation(&world, AgentId(3)), known::IDLE);
        world.scores = [2, 4];
        assert_eq!(situation(&world, AgentId(3)), known::IDLE);
    }

    #[test]
    fn every_situation_has_lines_with_the_slots_filled() {
        let assets = assets();
        let mut world = sure_shots();
        world.place(AgentId(0), Point::new(6, 6)).unwrap();
        kill(&mut world, AgentId(6));
        for agent in world.agent_ids() {
            let slots = banter_slots(&world, agent, name);
            let line = assets
                .templates
                .line(Some("veteran"), situation(&world, agent), &slots, 7)
                .unwrap();
            assert!(!line.is_empty() && !line.contains('{'), "{line}");
        }
    }
}
