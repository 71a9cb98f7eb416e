//! GOAP for the arena: symbolic facts from a snapshot, actions bound to concrete steps, and the
//! fallback plan that answers whenever a model does not.
//!
//! The domain is `assets/goap/arena.goap.ron`. Its facts are read from a [`WorldSnapshot`] by
//! name ([`GoapFacts::read`]), never from the arena's internals, so the same code plans for a
//! snapshot that came from a test, a recording or another game with the same fact names.
//!
//! # Choosing a goal
//!
//! [`fallback_goal`] applies these rules, first match wins:
//!
//! 1. health below [`HP_LOW_PERCENT`] and a medkit held → `heal`;
//! 2. no ammo → `reload`;
//! 3. health low (and no medkit, or rule 1 would have matched) with an enemy in sight →
//!    `retreat`;
//! 4. an enemy in sight → `kill_enemy`;
//! 5. otherwise → `hold_objective`.
//!
//! # Binding
//!
//! GOAP plans in symbols (`attack`, `take_cover`); [`bind_action`] turns a symbol into a step of
//! the registry verb whose `goap` name it is, choosing arguments from the snapshot with the same
//! roles the answer cache uses ([`ArgRole`]): an enemy target is the weakest visible enemy, a
//! cover point the nearest, a cell the objective's centre. Every bound step is validated against
//! the registry before it is returned.

use std::cell::RefCell;

use hivemind_core::action::{ActionRegistry, ArgKind};
use hivemind_core::cache::ArgRole;
use hivemind_core::goap::{Domain, Planner, State, verify};
use hivemind_core::plan::{ArgValue, PlanStep};
use hivemind_core::prompt::IntentOption;
use hivemind_core::snapshot::{Fact, WorldSnapshot};

use crate::snapshot::{COVER, ENEMY, OBJECTIVE, fact};

/// Health below this percentage of the maximum counts as low.
pub const HP_LOW_PERCENT: u32 = 40;

/// The goals of the arena's GOAP domain.
pub mod goal {
    /// Hurt an enemy (`enemy_hurt`).
    pub const KILL_ENEMY: &str = "kill_enemy";
    /// Stand on a cover point (`in_cover`).
    pub const TAKE_COVER: &str = "take_cover";
    /// Fill the magazine.
    pub const RELOAD: &str = "reload";
    /// Get out of low health.
    pub const HEAL: &str = "heal";
    /// Stand in the objective zone (`at_objective`).
    pub const HOLD_OBJECTIVE: &str = "hold_objective";
    /// Get out of sight of every enemy (`safe`).
    pub const RETREAT: &str = "retreat";
    /// Nothing: met by the empty plan.
    pub const IDLE: &str = "idle";
}

/// The names of the arena domain's facts.
pub mod goap_fact {
    /// Shots in the magazine.
    pub const AMMO: &str = "ammo";
    /// 1 if an enemy is in sight.
    pub const ENEMY_VISIBLE: &str = "enemy_visible";
    /// 1 if standing on a cover point.
    pub const IN_COVER: &str = "in_cover";
    /// 1 if health is below [`HP_LOW_PERCENT`](super::HP_LOW_PERCENT).
    pub const HP_LOW: &str = "hp_low";
    /// 1 if at least one medkit is held.
    pub const HAS_MEDKIT: &str = "has_medkit";
    /// 1 once an enemy has been hurt: the effect attacking aims at, so it always starts at 0.
    pub const ENEMY_HURT: &str = "enemy_hurt";
    /// 1 if standing in the objective zone.
    pub const AT_OBJECTIVE: &str = "at_objective";
    /// 1 if no enemy is in sight.
    pub const SAFE: &str = "safe";
}

/// The symbolic facts GOAP plans over, read from a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GoapFacts {
    /// Shots in the magazine (the `ammo` fact; 0 if absent).
    pub ammo: i32,
    /// Whether the snapshot lists an entity in the `enemy` set.
    pub enemy_visible: bool,
    /// The `in_cover` fact, or else whether the agent stands on a listed cover point.
    pub in_cover: bool,
    /// Whether health is below [`HP_LOW_PERCENT`].
    pub hp_low: bool,
    /// Whether the `medkits` fact is above zero.
    pub has_medkit: bool,
    /// The `at_objective` fact, or else whether the agent stands on an `objective` point.
    pub at_objective: bool,
}

impl GoapFacts {
    /// Reads the facts from any snapshot that uses the arena's names (see
    /// [`crate::snapshot`]); missing facts read as zero or false.
    pub fn read(snapshot: &WorldSnapshot) -> GoapFacts {
        let at = snapshot.position;
        let health = snapshot.health;
        GoapFacts {
            ammo: snapshot
                .int_fact(fact::AMMO)
                .map_or(0, |n| n.clamp(0, i64::from(i32::MAX)) as i32),
            enemy_visible: snapshot.entities_in(ENEMY).next().is_some(),
            in_cover: bool_fact(snapshot, fact::IN_COVER)
                .unwrap_or_else(|| snapshot.points_in(COVER).any(|p| p == at)),
            hp_low: u64::from(health.current.min(health.max)) * 100
                < u64::from(health.max.max(1)) * u64::from(HP_LOW_PERCENT),
            has_medkit: snapshot.int_fact(fact::MEDKITS).is_some_and(|n| n > 0),
            at_objective: bool_fact(snapshot, fact::AT_OBJECTIVE)
                .unwrap_or_else(|| snapshot.points_in(OBJECTIVE).any(|p| p == at)),
        }
    }
}

impl GoapFacts {
    /// The facts a GOAP state holds, such as the state a plan's first steps reach. Facts the
    /// domain does not declare read as zero or false.
    pub fn from_state(domain: &Domain, state: &State) -> GoapFacts {
        let value = |name| state.value(domain, name).unwrap_or(0);
        GoapFacts {
            ammo: value(goap_fact::AMMO),
            enemy_visible: value(goap_fact::ENEMY_VISIBLE) != 0,
            in_cover: value(goap_fact::IN_COVER) != 0,
            hp_low: value(goap_fact::HP_LOW) != 0,
            has_medkit: value(goap_fact::HAS_MEDKIT) != 0,
            at_objective: value(goap_fact::AT_OBJECTIVE) != 0,
        }
    }
}

fn bool_fact(snapshot: &WorldSnapshot, key: &str) -> Option<bool> {
    match snapshot.fact(key)? {
        Fact::Bool(b) => Some(*b),
        Fact::Int(n) => Some(*n != 0),
        Fact::Text(_) => None,
    }
}

/// The GOAP state of `snapshot` in `domain`.
///
/// Each of the [`goap_fact`] names the domain knows is set from [`GoapFacts::read`]. Facts the
/// domain does not declare are skipped, and facts it declares beyond these start at zero.
pub fn goap_state(domain: &Domain, snapshot: &WorldSnapshot) -> State {
    state_of(domain, &GoapFacts::read(snapshot))
}

fn state_of(domain: &Domain, facts: &GoapFacts) -> State {
    let mut state = domain.empty_state();
    for (name, value) in [
        (goap_fact::AMMO, facts.ammo),
        (goap_fact::ENEMY_VISIBLE, i32::from(facts.enemy_visible)),
        (goap_fact::IN_COVER, i32::from(facts.in_cover)),
        (goap_fact::HP_LOW, i32::from(facts.hp_low)),
        (goap_fact::HAS_MEDKIT, i32::from(facts.has_medkit)),
        (goap_fact::ENEMY_HURT, 0),
        (goap_fact::AT_OBJECTIVE, i32::from(facts.at_objective)),
        (goap_fact::SAFE, i32::from(!facts.enemy_visible)),
    ] {
        if let Some(id) = domain.fact_id(name) {
            state.set_fact(id, value);
        }
    }
    state
}

/// The goal the fallback plan pursues in `snapshot`. See [Choosing a goal](self#choosing-a-goal).
pub fn fallback_goal(snapshot: &WorldSnapshot) -> &'static str {
    goal_for(&GoapFacts::read(snapshot))
}

fn goal_for(facts: &GoapFacts) -> &'static str {
    if facts.hp_low && facts.has_medkit {
        goal::HEAL
    } else if facts.ammo <= 0 {
        goal::RELOAD
    } else if facts.hp_low && facts.enemy_visible {
        goal::RETREAT
    } else if facts.enemy_visible {
        goal::KILL_ENEMY
    } else {
        goal::HOLD_OBJECTIVE
    }
}

/// The step for GOAP action `action` in `snapshot`, or `None` if there is none.
///
/// The step's verb is the registry verb whose `goap` name is `action`, with arguments bound by
/// role (see [Binding](self#binding)). `None` if no verb has that `goap` name, an argument has
/// no value here (no enemy in sight, no cover listed), or the step does not validate.
pub fn bind_action(
    action: &str,
    snapshot: &WorldSnapshot,
    registry: &ActionRegistry,
) -> Option<PlanStep> {
    let verb = registry
        .verbs
        .iter()
        .find(|v| v.goap.as_deref() == Some(action))?;
    let mut step = PlanStep::new(verb.name.clone());
    for arg in &verb.args {
        let value = match &arg.kind {
            ArgKind::Entity { set } => ArgRole::WeakestIn(set.clone())
                .resolve(snapshot)
                .or_else(|| ArgRole::NearestIn(set.clone()).resolve(snapshot)),
            ArgKind::Point { set } => ArgRole::NearestPoint(set.clone()).resolve(snapshot),
            ArgKind::Cell => ArgRole::NearestPoint(OBJECTIVE.to_owned()).resolve(snapshot),
            ArgKind::Int { min, .. } => Some(ArgValue::Int(*min)),
            // Nothing to say: GOAP does not write lines.
            ArgKind::Text { .. } => None,
        }?;
        step.args.push((arg.name.clone(), value));
    }
    registry.validate_step(&step, snapshot).ok()?;
    Some(step)
}

thread_local! {
    /// The planner's buffers, kept between calls so that planning allocates little.
    static PLANNER: RefCell<Planner> = RefCell::new(Planner::default());
}

/// The GOAP answer for `snapshot`: pick a goal ([`fallback_goal`]), plan it with core's A*
/// planner, and bind each action to a step ([`bind_action`]).
///
/// Binding stops at the first action that cannot be bound, keeping the steps before it. If GOAP
/// finds no plan, the goal already holds, or nothing could be bound, the answer is the
/// registry's idle step. Every step returned validates against `registry` and `snapshot`.
pub fn fallback_plan(
    domain: &Domain,
    registry: &ActionRegistry,
    snapshot: &WorldSnapshot,
) -> Vec<PlanStep> {
    let facts = GoapFacts::read(snapshot);
    let start = state_of(domain, &facts);
    let mut steps = plan_goal(domain, registry, snapshot, &start, goal_for(&facts));
    if steps.is_empty() {
        steps.push(registry.idle_step());
    }
    steps
}

/// Plans `goal` from `start` and binds the actions to steps in `snapshot`, stopping at the first
/// that cannot be bound. Empty if the goal is unknown, unreachable or already met.
fn plan_goal(
    domain: &Domain,
    registry: &ActionRegistry,
    snapshot: &WorldSnapshot,
    start: &State,
    goal: &str,
) -> Vec<PlanStep> {
    let Some(goal) = domain.goal(goal) else {
        return Vec::new();
    };
    let planned = PLANNER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut planner) => planner.plan(domain, start, goal),
        Err(_) => Planner::default().plan(domain, start, goal),
    });
    let Ok(plan) = planned else {
        return Vec::new();
    };
    plan.actions
        .iter()
        .map_while(|&action| {
            domain
                .action_name(action)
                .and_then(|name| bind_action(name, snapshot, registry))
        })
        .collect()
}

/// The steps that carry out the intent `goal` (a goal of `domain`, as a guided prompt offers
/// it) in `snapshot`.
///
/// A goal that already holds, such as holding the objective while standing in it, is carried out
/// by the registry's idle step. Empty if the goal is unknown or GOAP finds no bound plan for it.
pub fn expand_intent(
    domain: &Domain,
    registry: &ActionRegistry,
    snapshot: &WorldSnapshot,
    goal: &str,
) -> Vec<PlanStep> {
    let Some(target) = domain.goal(goal) else {
        return Vec::new();
    };
    let start = goap_state(domain, snapshot);
    if target.is_met(&start) {
        return vec![registry.idle_step()];
    }
    plan_goal(domain, registry, snapshot, &start, goal)
}

/// Whether a guided answer's `intent` (numbered from 1 among `options`) is a valid plan here.
///
/// It is if GOAP carries it out in `snapshot` and every step validates against the registry:
/// what the benchmarks count as a valid plan from the model.
pub fn intent_is_valid(
    domain: &Domain,
    registry: &ActionRegistry,
    snapshot: &WorldSnapshot,
    options: &[IntentOption],
    intent: u32,
) -> bool {
    let Some(option) = IntentOption::numbered(options, intent) else {
        return false;
    };
    let steps = expand_intent(domain, registry, snapshot, &option.goal);
    !steps.is_empty()
        && steps
            .iter()
            .all(|step| registry.validate_step(step, snapshot).is_ok())
}

/// The index of the first step of a model's plan that cannot run in `snapshot` after the steps
/// before it, or `None` if all of them can.
///
/// A step fails if it does not validate against the registry and the snapshot, if its verb's
/// GOAP action is not in `domain`, or if that action's preconditions do not hold in the state
/// the earlier steps reach: an attack with an empty magazine or nothing in sight, a heal with
/// no medkit. A verb with no GOAP action (`Say`) changes no fact and always runs.
pub fn first_invalid(
    domain: &Domain,
    registry: &ActionRegistry,
    snapshot: &WorldSnapshot,
    steps: &[PlanStep],
) -> Option<usize> {
    run_steps(domain, registry, snapshot, steps).1
}

/// The rest of a plan whose first steps, `done`, came from a model.
///
/// It is GOAP's plan from the state those steps reach, toward the goal [`fallback_goal`]'s rules
/// choose in that state. Steps of `done` that cannot run (see [`first_invalid`]) and those after
/// them are ignored.
pub fn complete_plan(
    domain: &Domain,
    registry: &ActionRegistry,
    snapshot: &WorldSnapshot,
    done: &[PlanStep],
) -> Vec<PlanStep> {
    let (state, _) = run_steps(domain, registry, snapshot, done);
    let goal = goal_for(&GoapFacts::from_state(domain, &state));
    plan_goal(domain, registry, snapshot, &state, goal)
}

/// Runs `steps` from `snapshot`'s GOAP state: the state reached before the first step that
/// cannot run (or at the end), and that step's index.
fn run_steps(
    domain: &Domain,
    registry: &ActionRegistry,
    snapshot: &WorldSnapshot,
    steps: &[PlanStep],
) -> (State, Option<usize>) {
    let mut state = goap_state(domain, snapshot);
    for (index, step) in steps.iter().enumerate() {
        if registry.validate_step(step, snapshot).is_err() {
            return (state, Some(index));
        }
        let Some(verb) = registry.verb(&step.verb) else {
            return (state, Some(index));
        };
        let Some(name) = verb.goap.as_deref() else {
            continue;
        };
        let next = domain
            .action(name)
            .and_then(|action| verify(domain, &state, &[action]).ok());
        match next {
            Some(next) => state = next,
            None => return (state, Some(index)),
        }
    }
    (state, None)
}

#[cfg(test)]
mod tests {
    use hivemind_core::snapshot::{AgentId, Health, Point};

    use super::*;
    use crate::ArenaWorld;
    use crate::testing::{assets, flanking_guard, play_goap};

    #[test]
    fn facts_come_from_any_snapshot_by_name() {
        let assets = assets();
        let domain = &assets.domain;
        let state = goap_state(domain, &flanking_guard());
        let value = |name| state.value(domain, name).unwrap();
        assert_eq!(value("ammo"), 2);
        assert_eq!(value("enemy_visible"), 1);
        assert_eq!(value("safe"), 0);
        assert_eq!(value("in_cover"), 0);
        assert_eq!(value("hp_low"), 0);
        assert_eq!(value("has_medkit"), 0);
        assert_eq!(value("enemy_hurt"), 0);
        assert_eq!(value("at_objective"), 0);

        // Without the facts, cover and objective are inferred from the points.
        let mut on_the_spot = WorldSnapshot::new(AgentId(1), Point::new(3, 4))
            .with_health(Health::new(30, 100))
            .with_point(COVER, Point::new(3, 4));
        let facts = GoapFacts::read(&on_the_spot);
        assert!(facts.in_cover && facts.hp_low && !facts.at_objective && !facts.enemy_visible);
        on_the_spot.insert_fact(fact::IN_COVER, false);
        assert!(!GoapFacts::read(&on_the_spot).in_cover);
    }

    #[test]
    fn actions_bind_to_the_weakest_enemy_the_nearest_cover_and_the_objective() {
        let assets = assets();
        let registry = &assets.registry;
        let guard = flanking_guard();
        let bind = |action| bind_action(action, &guard, registry);
        assert_eq!(
            bind("attack"),
            Some(PlanStep::new("Attack").with_arg("target", ArgValue::Int(9)))
        );
        assert_eq!(
            bind("take_cover"),
            Some(PlanStep::new("TakeCover").with_arg("at", ArgValue::Point(Point::new(3, 4))))
        );
        assert_eq!(
            bind("move_to"),
            Some(PlanStep::new("MoveTo").with_arg("to", ArgValue::Point(Point::new(10, 7))))
        );
        for (action, verb) in [
            ("reload", "Reload"),
            ("heal", "Heal"),
            ("retreat", "Retreat"),
            ("wait", "Wait"),
        ] {
            assert_eq!(bind(action), Some(PlanStep::new(verb)));
        }
        assert_eq!(bind("dance"), None);

        let alone = WorldSnapshot::new(AgentId(1), Point::new(0, 0));
        assert_eq!(bind_action("attack", &alone, registry), None);
        assert_eq!(bind_action("take_cover", &alone, registry), None);
        assert_eq!(bind_action("move_to", &alone, registry), None);
    }

    #[test]
    fn goals_follow_the_documented_rules() {
        let guard = flanking_guard();
        assert_eq!(fallback_goal(&guard), goal::KILL_ENEMY);
        let hurt = guard.clone().with_health(Health::new(30, 100));
        assert_eq!(fallback_goal(&hurt), goal::RETREAT);
        let patched = hurt.clone().with_fact("medkits", 1);
        assert_eq!(fallback_goal(&patched), goal::HEAL);
        let empty = guard.clone().with_fact("ammo", 0);
        assert_eq!(fallback_goal(&empty), goal::RELOAD);
        let mut quiet = guard.clone();
        quiet.entities.clear();
        assert_eq!(fallback_goal(&quiet), goal::HOLD_OBJECTIVE);
    }

    #[test]
    fn fallback_plans_bind_and_validate() {
        let assets = assets();
        let (domain, registry) = (&assets.domain, &assets.registry);
        let plan = |s: &WorldSnapshot| fallback_plan(domain, registry, s);
        let guard = flanking_guard();
        assert_eq!(
            plan(&guard),
            [PlanStep::new("Attack").with_arg("target", ArgValue::Int(9))]
        );
        assert_eq!(
            plan(&guard.clone().with_fact("ammo", 0)),
            [PlanStep::new("Reload")]
        );
        let mut quiet = guard.clone();
        quiet.entities.clear();
        assert_eq!(
            plan(&quiet),
            [PlanStep::new("MoveTo").with_arg("to", ArgValue::Point(Point::new(10, 7)))]
        );
        // Holding the objective already: the goal holds, so the agent waits.
        let holding = quiet.with_fact("at_objective", true);
        assert_eq!(plan(&holding), [registry.idle_step()]);
        // Nothing to bind `move_to` to: the idle step.
        let lost = WorldSnapshot::new(AgentId(1), Point::new(0, 0)).with_fact("ammo", 3);
        assert_eq!(plan(&lost), [registry.idle_step()]);
        for s in [&guard, &lost] {
            assert_eq!(registry.validate_plan(&plan(s), s), Ok(()));
        }
    }

    #[test]
    fn a_model_plan_fails_at_the_first_step_the_rules_forbid_and_goap_completes_it() {
        let assets = assets();
        let (domain, registry) = (&assets.domain, &assets.registry);
        let empty = flanking_guard().with_fact("ammo", 0);
        let attack = PlanStep::new("Attack").with_arg("target", ArgValue::Int(9));
        let say = PlanStep::new("Say").with_arg("text", ArgValue::Text("Reloading".into()));
        let reload = PlanStep::new("Reload");

        // Attacking with an empty magazine fails; after a reload it runs.
        assert_eq!(
            first_invalid(domain, registry, &empty, std::slice::from_ref(&attack)),
            Some(0)
        );
        assert_eq!(
            first_invalid(
                domain,
                registry,
                &empty,
                &[say.clone(), reload.clone(), attack.clone()]
            ),
            None
        );
        // Healing with no medkit fails, as does a target the agent cannot see.
        let heal = PlanStep::new("Heal");
        assert_eq!(
            first_invalid(domain, registry, &flanking_guard(), &[reload.clone(), heal]),
            Some(1)
        );
        let unseen = PlanStep::new("Attack").with_arg("target", ArgValue::Int(4));
        assert_eq!(
            first_invalid(domain, registry, &flanking_guard(), &[unseen]),
            Some(0)
        );

        // GOAP plans on from the state the kept steps reach.
        assert_eq!(
            complete_plan(domain, registry, &empty, &[]),
            std::slice::from_ref(&reload)
        );
        assert_eq!(
            complete_plan(domain, registry, &empty, &[reload]),
            std::slice::from_ref(&attack)
        );
        // Invalid steps of `done` are ignored: the state is the one before them.
        assert_eq!(
            complete_plan(domain, registry, &empty, &[attack]),
            [PlanStep::new("Reload")]
        );
    }

    #[test]
    fn intents_expand_to_their_goal_or_to_nothing() {
        let assets = assets();
        let (domain, registry) = (&assets.domain, &assets.registry);
        let guard = flanking_guard();
        assert_eq!(
            expand_intent(domain, registry, &guard, goal::TAKE_COVER),
            [PlanStep::new("TakeCover").with_arg("at", ArgValue::Point(Point::new(3, 4)))]
        );
        // Healing without a medkit cannot be planned; when health is not low it already holds.
        let hurt = guard.clone().with_health(Health::new(30, 100));
        assert_eq!(expand_intent(domain, registry, &hurt, goal::HEAL), []);
        assert_eq!(
            expand_intent(domain, registry, &guard, goal::HEAL),
            [registry.idle_step()]
        );
        assert_eq!(expand_intent(domain, registry, &guard, "dance"), []);
    }

    #[test]
    fn an_intent_is_valid_only_if_offered_and_carried_out() {
        let assets = assets();
        let (domain, registry) = (&assets.domain, &assets.registry);
        let hurt = flanking_guard().with_health(Health::new(30, 100));
        let option = |goal: &str| IntentOption {
            goal: goal.into(),
            label: goal.replace('_', " "),
            reason: String::new(),
        };
        let options = [option(goal::TAKE_COVER), option(goal::HEAL)];
        assert!(intent_is_valid(domain, registry, &hurt, &options, 1));
        // Healing without a medkit cannot be carried out; a third option was never offered.
        assert!(!intent_is_valid(domain, registry, &hurt, &options, 2));
        assert!(!intent_is_valid(domain, registry, &hurt, &options, 3));
        assert!(!intent_is_valid(domain, registry, &hurt, &options, 0));
    }

    #[test]
    fn a_domain_without_the_goal_falls_back_to_idle() {
        let assets = assets();
        let bare = Domain::from_ron("(actions: [(name: \"wait\")])", "bare.ron").unwrap();
        assert_eq!(
            fallback_plan(&bare, &assets.registry, &flanking_guard()),
            [assets.registry.idle_step()]
        );
    }

    /// Plays a GOAP-only game and checks every plan: each step validates against the registry
    /// and the snapshot it was made from, and the world accepts it (`play_goap` unwraps
    /// `begin_step`). Returns how many plans were made and how many goals of each kind.
    fn every_plan_validates(seed: u64, ticks: usize) -> (usize, usize) {
        let assets = assets();
        let mut world = ArenaWorld::new(crate::ArenaConfig::default().with_seed(seed));
        let (mut plans, mut attacks) = (0, 0);
        play_goap(&mut world, &assets, ticks, |world, snapshot, steps| {
            plans += 1;
            assert!(!steps.is_empty());
            assert_eq!(
                assets.registry.validate_plan(steps, snapshot),
                Ok(()),
                "{steps:?} for\n{}",
                snapshot.render()
            );
            for step in steps {
                assert_eq!(world.validate_step(snapshot.agent, step), Ok(()), "{step}");
            }
            attacks += usize::from(steps[0].verb == "Attack");
        });
        (plans, attacks)
    }

    #[test]
    fn every_fallback_step_validates_for_every_agent_over_a_game() {
        let (plans, attacks) = every_plan_validates(1, 300);
        assert!(plans >= 12 * 300 / 4, "{plans} plans");
        assert!(attacks > 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]

        #[test]
        fn fallback_steps_validate_whatever_the_seed(seed in proptest::prelude::any::<u64>()) {
            every_plan_validates(seed, 300);
        }
    }
}
