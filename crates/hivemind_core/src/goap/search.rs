//! Planning over a [`Domain`]: the A* [`Planner`], [`verify`] for plans written elsewhere, and
//! [`Planner::repair`].

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;

use super::domain::{ActionId, Compare, Condition, Domain, Goal, State};

/// A plan found by the [`Planner`].
#[derive(Clone, Debug, PartialEq)]
pub struct GoapPlan {
    /// The actions, in order. Empty when the goal already holds.
    pub actions: Vec<ActionId>,
    /// The sum of the actions' costs.
    pub cost: f32,
}

/// A plan repaired by [`Planner::repair`].
#[derive(Clone, Debug, PartialEq)]
pub struct Repair {
    /// How many steps of the original plan were kept: the index of the first step that failed
    /// verification, or the plan's length if every step verified.
    pub kept: usize,
    /// The whole repaired plan: the kept steps, then the planned ones.
    pub actions: Vec<ActionId>,
    /// The sum of the costs of every action in `actions`.
    pub cost: f32,
    /// Why the original plan was cut, if a step failed verification.
    pub failure: Option<VerifyError>,
}

/// Bounds on one search, so a plan request never takes long however the domain is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannerLimits {
    /// The most states expanded before the search gives up.
    pub max_expansions: usize,
    /// The most actions in a plan.
    pub max_depth: usize,
}

impl Default for PlannerLimits {
    fn default() -> Self {
        PlannerLimits {
            max_expansions: 4096,
            max_depth: 8,
        }
    }
}

/// Why a search found no plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoPlanReason {
    /// Every reachable state was searched: the goal cannot be reached from the start.
    Exhausted,
    /// The search hit [`PlannerLimits`]; a longer search might find a plan.
    LimitReached,
}

impl fmt::Display for NoPlanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoPlanReason::Exhausted => "it is unreachable from the start state",
            NoPlanReason::LimitReached => "the search limits were reached",
        })
    }
}

/// Why planning (or repairing) failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No plan reaches the goal.
    #[error("no plan reaches goal `{goal}`: {reason}")]
    NoPlan {
        /// The goal's name.
        goal: String,
        /// Whether the search was exhausted or stopped by its limits.
        reason: NoPlanReason,
    },
}

/// A precondition that does not hold, with the fact's actual value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmetCondition {
    /// The fact's name.
    pub fact: String,
    /// How the condition compares it.
    pub op: Compare,
    /// The value it is compared with.
    pub value: i32,
    /// The fact's value when the step would run.
    pub actual: i32,
}

impl fmt::Display for UnmetCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} (is {})",
            self.fact, self.op, self.value, self.actual
        )
    }
}

/// The first step of a plan that cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Some of the step's preconditions do not hold in the state the steps before it reach.
    #[error("step {index} (`{action}`): unmet {}", list(.unmet))]
    Unmet {
        /// The index of the step, from zero.
        index: usize,
        /// The action's name.
        action: String,
        /// The preconditions that do not hold, in the order the action lists them.
        unmet: Vec<UnmetCondition>,
    },
    /// The step names no action of the domain.
    #[error("step {index}: unknown action `{action}`")]
    UnknownAction {
        /// The index of the step, from zero.
        index: usize,
        /// The name as written (or `#N` for an id from another domain).
        action: String,
    },
}

impl VerifyError {
    /// The index of the failing step, from zero.
    pub fn index(&self) -> usize {
        match self {
            VerifyError::Unmet { index, .. } | VerifyError::UnknownAction { index, .. } => *index,
        }
    }

    /// The failing step's action name, as written.
    pub fn action(&self) -> &str {
        match self {
            VerifyError::Unmet { action, .. } | VerifyError::UnknownAction { action, .. } => action,
        }
    }

    /// The preconditions that do not hold (empty for an unknown action).
    pub fn unmet(&self) -> &[UnmetCondition] {
        match self {
            VerifyError::Unmet { unmet, .. } => unmet,
            VerifyError::UnknownAction { .. } => &[],
        }
    }
}

fn list(unmet: &[UnmetCondition]) -> String {
    unmet
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Domain {
    fn unmet(&self, values: &[i32], conditions: &[Condition]) -> Vec<UnmetCondition> {
        conditions
            .iter()
            .filter(|c| !c.holds_in(values))
            .map(|c| UnmetCondition {
                fact: self.fact_name(c.fact).unwrap_or("?").to_owned(),
                op: c.op,
                value: c.value,
                actual: values.get(c.fact.index()).copied().unwrap_or(0),
            })
            .collect()
    }
}

/// Runs `steps` from `start`: the state reached before the first failing step (or at the end),
/// the cost of the steps that ran, and the failure if any.
fn run<'a>(
    domain: &Domain,
    start: &State,
    steps: impl Iterator<Item = Result<ActionId, &'a str>>,
) -> (State, f32, Option<VerifyError>) {
    let mut state = domain.normalized(start);
    let mut cost = 0.0;
    for (index, step) in steps.enumerate() {
        let action = match step {
            Ok(id) => domain.get_action(id).ok_or_else(|| format!("#{}", id.0)),
            Err(name) => Err(name.to_owned()),
        };
        let action = match action {
            Ok(action) => action,
            Err(action) => {
                return (
                    state,
                    cost,
                    Some(VerifyError::UnknownAction { index, action }),
                );
            }
        };
        if !action.applicable(&state.values) {
            let unmet = domain.unmet(&state.values, &action.pre);
            let action = action.name.clone();
            return (
                state,
                cost,
                Some(VerifyError::Unmet {
                    index,
                    action,
                    unmet,
                }),
            );
        }
        action.apply(&mut state.values);
        cost += action.cost;
    }
    (state, cost, None)
}

/// Runs `actions` step by step from `start` and returns the state they reach, or the first step
/// whose preconditions do not hold.
pub fn verify(domain: &Domain, start: &State, actions: &[ActionId]) -> Result<State, VerifyError> {
    match run(domain, start, actions.iter().map(|&a| Ok(a))) {
        (state, _, None) => Ok(state),
        (_, _, Some(error)) => Err(error),
    }
}

/// [`verify`] for a plan given by action names; an unknown name fails at its index.
pub fn verify_names(domain: &Domain, start: &State, names: &[&str]) -> Result<State, VerifyError> {
    match run(domain, start, resolve(domain, names)) {
        (state, _, None) => Ok(state),
        (_, _, Some(error)) => Err(error),
    }
}

fn resolve<'a>(
    domain: &'a Domain,
    names: &'a [&'a str],
) -> impl Iterator<Item = Result<ActionId, &'a str>> + 'a {
    names.iter().map(|&n| domain.action(n).ok_or(n))
}

/// Finds the cheapest plan with a fresh [`Planner`] and default limits. See [`Planner::plan`].
pub fn plan(domain: &Domain, start: &State, goal: &Goal) -> Result<GoapPlan, PlanError> {
    Planner::default().plan(domain, start, goal)
}

/// Repairs a plan with a fresh [`Planner`] and default limits. See [`Planner::repair`].
pub fn repair(
    domain: &Domain,
    start: &State,
    actions: &[ActionId],
    goal: &Goal,
) -> Result<Repair, PlanError> {
    Planner::default().repair(domain, start, actions, goal)
}

const NONE: u32 = u32::MAX;

/// A searched state; its values live in `Planner::states` at `index * width`.
#[derive(Clone, Copy, Debug)]
struct Node {
    parent: u32,
    action: u32,
    depth: u32,
    g: f32,
    /// A cheaper (or equally cheap and shorter) path to the same state was found later.
    superseded: bool,
}

/// An open-list entry, ordered so that `BinaryHeap` pops the lowest `f`, then the lowest `h`,
/// then the earliest generated node.
#[derive(Clone, Copy, Debug)]
struct Open {
    f: f32,
    h: f32,
    node: u32,
}

impl Ord for Open {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .f
            .total_cmp(&self.f)
            .then_with(|| other.h.total_cmp(&self.h))
            .then_with(|| other.node.cmp(&self.node))
    }
}

impl PartialOrd for Open {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Open {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Open {}

#[derive(Clone, Copy, Debug)]
struct Slot {
    node: u32,
    hash: u32,
}

const EMPTY_SLOT: Slot = Slot {
    node: NONE,
    hash: 0,
};

/// Open addressing from a state (a slice of the arena) to the best node that reached it.
#[derive(Debug)]
struct StateTable {
    slots: Vec<Slot>,
    len: usize,
}

impl StateTable {
    const INITIAL: usize = 256;
    /// A table grown past this by one large search is not kept for the next.
    const KEEP: usize = 1 << 12;

    fn clear(&mut self) {
        if self.slots.len() > Self::KEEP || self.slots.is_empty() {
            self.slots = vec![EMPTY_SLOT; Self::INITIAL];
        } else {
            self.slots.fill(EMPTY_SLOT);
        }
        self.len = 0;
    }

    /// The slot holding `key`'s node, or the empty slot where it belongs.
    fn find(&self, hash: u32, key: &[i32], states: &[i32]) -> usize {
        let width = key.len();
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot.node == NONE {
                return i;
            }
            let at = slot.node as usize * width;
            if slot.hash == hash && &states[at..at + width] == key {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    fn insert_at(&mut self, i: usize, slot: Slot) {
        self.slots[i] = slot;
        self.len += 1;
        if self.len * 2 > self.slots.len() {
            let doubled = vec![EMPTY_SLOT; self.slots.len() * 2];
            let old = std::mem::replace(&mut self.slots, doubled);
            let mask = self.slots.len() - 1;
            for slot in old.into_iter().filter(|s| s.node != NONE) {
                let mut i = slot.hash as usize & mask;
                while self.slots[i].node != NONE {
                    i = (i + 1) & mask;
                }
                self.slots[i] = slot;
            }
        }
    }
}

fn hash_values(values: &[i32]) -> u32 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for &v in values {
        h = (h.rotate_left(5) ^ u64::from(v as u32)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (h ^ (h >> 32)) as u32
}

/// An A* planner that keeps its buffers between searches.
///
/// Hold one per worker thread to plan without allocating once the buffers have grown.
#[derive(Debug)]
pub struct Planner {
    limits: PlannerLimits,
    nodes: Vec<Node>,
    /// Every node's state, `width` values each, in node order.
    states: Vec<i32>,
    table: StateTable,
    open: BinaryHeap<Open>,
    /// The goal's conditions sorted by fact, for the heuristic.
    goal: Vec<Condition>,
}

impl Default for Planner {
    fn default() -> Self {
        Planner::new(PlannerLimits::default())
    }
}

impl Planner {
    /// A planner with the given limits.
    pub fn new(limits: PlannerLimits) -> Self {
        Planner {
            limits,
            nodes: Vec::new(),
            states: Vec::new(),
            table: StateTable {
                slots: Vec::new(),
                len: 0,
            },
            open: BinaryHeap::new(),
            goal: Vec::new(),
        }
    }

    /// The limits every search of this planner obeys.
    pub fn limits(&self) -> PlannerLimits {
        self.limits
    }

    /// Changes the limits of later searches.
    pub fn set_limits(&mut self, limits: PlannerLimits) {
        self.limits = limits;
    }

    /// Finds the cheapest plan that takes `start` to a state where `goal` holds.
    ///
    /// A goal that already holds gives an empty plan. Among equally cheap plans the choice is
    /// fixed by the domain's action order, so the same inputs always give the same plan.
    pub fn plan(
        &mut self,
        domain: &Domain,
        start: &State,
        goal: &Goal,
    ) -> Result<GoapPlan, PlanError> {
        let no_plan = |reason| PlanError::NoPlan {
            goal: goal.name.clone(),
            reason,
        };
        let width = domain.fact_count();
        self.nodes.clear();
        self.states.clear();
        self.open.clear();
        self.table.clear();
        self.goal.clear();
        self.goal.extend_from_slice(&goal.conditions);
        self.goal.sort_by_key(|c| c.fact);

        let given = &start.values[..start.values.len().min(width)];
        self.states.extend_from_slice(given);
        self.states.resize(width, 0);
        let h = domain.heuristic(&self.goal, &self.states);
        if h.is_infinite() {
            return Err(no_plan(NoPlanReason::Exhausted));
        }
        let hash = hash_values(&self.states);
        let slot = self.table.find(hash, &self.states[..width], &self.states);
        self.table.insert_at(slot, Slot { node: 0, hash });
        self.nodes.push(Node {
            parent: NONE,
            action: NONE,
            depth: 0,
            g: 0.0,
            superseded: false,
        });
        self.open.push(Open { f: h, h, node: 0 });

        let max_depth = u32::try_from(self.limits.max_depth).unwrap_or(u32::MAX);
        let mut expansions = 0;
        let mut limited = false;
        while let Some(Open { h, node: id, .. }) = self.open.pop() {
            let node = self.nodes[id as usize];
            if node.superseded {
                continue;
            }
            // The heuristic is zero exactly when every goal condition holds.
            if h == 0.0 {
                return Ok(self.path(id));
            }
            if node.depth >= max_depth {
                limited = true;
                continue;
            }
            if expansions >= self.limits.max_expansions || self.nodes.len() >= (NONE - 1) as usize {
                return Err(no_plan(NoPlanReason::LimitReached));
            }
            expansions += 1;
            let at = id as usize * width;
            for (a, action) in domain.actions.iter().enumerate() {
                if !action.applicable(&self.states[at..at + width]) {
                    continue;
                }
                let child = self.nodes.len() as u32;
                let child_at = self.states.len();
                self.states.extend_from_within(at..at + width);
                let values = &mut self.states[child_at..];
                action.apply(values);
                let h = domain.heuristic(&self.goal, values);
                if h.is_infinite() {
                    self.states.truncate(child_at);
                    continue;
                }
                let g = node.g + action.cost;
                let depth = node.depth + 1;
                let hash = hash_values(&self.states[child_at..]);
                let slot = self
                    .table
                    .find(hash, &self.states[child_at..], &self.states);
                let seen = self.table.slots[slot].node;
                if seen == NONE {
                    self.table.insert_at(slot, Slot { node: child, hash });
                } else {
                    let best = &mut self.nodes[seen as usize];
                    if g < best.g || (g == best.g && depth < best.depth) {
                        best.superseded = true;
                        self.table.slots[slot].node = child;
                    } else {
                        self.states.truncate(child_at);
                        continue;
                    }
                }
                self.nodes.push(Node {
                    parent: id,
                    action: a as u32,
                    depth,
                    g,
                    superseded: false,
                });
                self.open.push(Open {
                    f: g + h,
                    h,
                    node: child,
                });
            }
        }
        Err(no_plan(if limited {
            NoPlanReason::LimitReached
        } else {
            NoPlanReason::Exhausted
        }))
    }

    fn path(&self, mut id: u32) -> GoapPlan {
        let cost = self.nodes[id as usize].g;
        let mut actions = Vec::with_capacity(self.nodes[id as usize].depth as usize);
        while id != NONE {
            let node = self.nodes[id as usize];
            if node.action != NONE {
                actions.push(ActionId(node.action));
            }
            id = node.parent;
        }
        actions.reverse();
        GoapPlan { actions, cost }
    }

    /// Keeps the steps of `actions` before the first one that fails [`verify`], and plans from
    /// the state they reach to `goal`.
    ///
    /// If every step verifies and the goal holds at the end, the plan is returned unchanged
    /// (`kept == actions.len()`); if every step verifies but the goal does not hold, the rest is
    /// planned after the last step. The kept steps are never replaced: when no plan reaches the
    /// goal from where they lead, the error is returned and the caller may plan afresh.
    pub fn repair(
        &mut self,
        domain: &Domain,
        start: &State,
        actions: &[ActionId],
        goal: &Goal,
    ) -> Result<Repair, PlanError> {
        let run = run(domain, start, actions.iter().map(|&a| Ok(a)));
        self.finish_repair(domain, run, actions.iter().copied(), goal)
    }

    /// [`Planner::repair`] for a plan given by action names; an unknown name fails verification
    /// at its index.
    pub fn repair_names(
        &mut self,
        domain: &Domain,
        start: &State,
        names: &[&str],
        goal: &Goal,
    ) -> Result<Repair, PlanError> {
        let run = run(domain, start, resolve(domain, names));
        let ids = names.iter().filter_map(|&n| domain.action(n));
        self.finish_repair(domain, run, ids, goal)
    }

    fn finish_repair(
        &mut self,
        domain: &Domain,
        (state, kept_cost, failure): (State, f32, Option<VerifyError>),
        ids: impl Iterator<Item = ActionId>,
        goal: &Goal,
    ) -> Result<Repair, PlanError> {
        let tail = self.plan(domain, &state, goal)?;
        // Every kept step resolved to an action, so the first `kept` ids are the kept steps.
        let kept = failure.as_ref().map_or(usize::MAX, VerifyError::index);
        let mut actions: Vec<ActionId> = ids.take(kept).collect();
        let kept = actions.len();
        actions.extend_from_slice(&tail.actions);
        Ok(Repair {
            kept,
            actions,
            cost: kept_cost + tail.cost,
            failure,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadError;
    use crate::goap::domain::{Action, ActionFile, DomainFile, EffectOp, GoapError};
    use crate::goap::fixtures::{goal, guard, ids, names};
    use proptest::prelude::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn strike_domain(snipe_cost: f32) -> Result<Domain, LoadError> {
        Domain::from_ron(
            &format!(
                r#"(
                    actions: [
                        (name: "snipe", cost: {snipe_cost}, effects: [("enemy_hurt", Set, 1)]),
                        (name: "approach", cost: 1.0, effects: [("in_range", Set, 1)]),
                        (name: "stab", cost: 1.0, pre: [("in_range", Eq, 1)],
                         effects: [("enemy_hurt", Set, 1)]),
                    ],
                    goals: [(name: "hurt_enemy", conditions: [("enemy_hurt", Eq, 1)])],
                )"#
            ),
            "flanking_squad.ron",
        )
    }

    #[test]
    fn a_cheaper_multi_step_route_beats_an_expensive_single_action() -> TestResult {
        let domain = strike_domain(10.0)?;
        let plan = plan(&domain, &domain.empty_state(), goal(&domain, "hurt_enemy")?)?;
        assert_eq!(names(&domain, &plan.actions), ["approach", "stab"]);
        assert_eq!(plan.cost, 2.0);
        Ok(())
    }

    #[test]
    fn a_cheap_single_action_beats_a_longer_route() -> TestResult {
        let domain = strike_domain(1.5)?;
        let plan = plan(&domain, &domain.empty_state(), goal(&domain, "hurt_enemy")?)?;
        assert_eq!(names(&domain, &plan.actions), ["snipe"]);
        assert_eq!(plan.cost, 1.5);
        Ok(())
    }

    #[test]
    fn plans_chain_preconditions_and_use_the_start_state() -> TestResult {
        let domain = guard()?;
        let hurt_enemy = goal(&domain, "hurt_enemy")?;
        let start = domain.state_from(&[("ammo", 0)])?;
        let plan = plan(&domain, &start, hurt_enemy)?;
        assert_eq!(names(&domain, &plan.actions), ["reload", "scout", "attack"]);
        assert_eq!(plan.cost, 4.0);

        let start = domain.state_from(&[("ammo", 2), ("enemy_visible", 1)])?;
        let plan = Planner::default().plan(&domain, &start, hurt_enemy)?;
        assert_eq!(names(&domain, &plan.actions), ["attack"]);
        Ok(())
    }

    #[test]
    fn an_already_satisfied_goal_gives_an_empty_plan() -> TestResult {
        let domain = guard()?;
        let start = domain.state_from(&[("enemy_hurt", 1)])?;
        let plan = plan(&domain, &start, goal(&domain, "hurt_enemy")?)?;
        assert_eq!(
            plan,
            GoapPlan {
                actions: vec![],
                cost: 0.0
            }
        );
        Ok(())
    }

    #[test]
    fn an_unreachable_goal_is_reported_as_exhausted() -> TestResult {
        let domain = guard()?;
        // Nothing sets `medkits`, so `hp` can never rise.
        let result = plan(&domain, &domain.empty_state(), goal(&domain, "heal")?);
        let Err(err) = result else {
            panic!("expected no plan, got {result:?}")
        };
        assert_eq!(
            err,
            PlanError::NoPlan {
                goal: "heal".into(),
                reason: NoPlanReason::Exhausted
            }
        );
        assert_eq!(
            err.to_string(),
            "no plan reaches goal `heal`: it is unreachable from the start state"
        );

        // A goal fact that no action touches is a dead end before any search.
        let flee = domain.goal_from(
            "flee",
            &[
                ("enemy_visible", Compare::Eq, 0),
                ("medkits", Compare::Eq, 5),
            ],
        )?;
        let result = plan(&domain, &domain.empty_state(), &flee);
        assert!(matches!(
            result,
            Err(PlanError::NoPlan {
                reason: NoPlanReason::Exhausted,
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn the_limits_stop_the_search_and_say_so() -> TestResult {
        let domain = guard()?;
        let start = domain.state_from(&[("medkits", 9)])?;
        let heal_lots = domain.goal_from("heal_lots", &[("hp", Compare::Ge, 5)])?;
        let shallow = PlannerLimits {
            max_depth: 4,
            ..PlannerLimits::default()
        };
        let result = Planner::new(shallow).plan(&domain, &start, &heal_lots);
        let limit = NoPlanReason::LimitReached;
        assert_eq!(
            result,
            Err(PlanError::NoPlan {
                goal: "heal_lots".into(),
                reason: limit
            })
        );
        let hasty = PlannerLimits {
            max_expansions: 2,
            ..PlannerLimits::default()
        };
        let result = Planner::new(hasty).plan(&domain, &start, &heal_lots);
        assert_eq!(
            result,
            Err(PlanError::NoPlan {
                goal: "heal_lots".into(),
                reason: limit
            })
        );
        let plan = Planner::default().plan(&domain, &start, &heal_lots)?;
        assert_eq!(names(&domain, &plan.actions), ["bandage"; 5]);
        Ok(())
    }

    #[test]
    fn ties_are_broken_by_action_order_not_by_hashing() -> TestResult {
        let text = |first: &str, second: &str| {
            format!(
                r#"(actions: [
                    (name: "{first}", cost: 2.0, effects: [("in_cover", Set, 1)]),
                    (name: "{second}", cost: 2.0, effects: [("in_cover", Set, 1)]),
                    (name: "crouch", cost: 1.0, effects: [("low", Set, 1)]),
                    (name: "crawl", cost: 1.0, pre: [("low", Eq, 1)],
                     effects: [("in_cover", Set, 1)]),
                ])"#
            )
        };
        let mut planner = Planner::default();
        for (first, second) in [("flank_left", "flank_right"), ("flank_right", "flank_left")] {
            let domain = Domain::from_ron(&text(first, second), "t")?;
            let take_cover = domain.goal_from("take_cover", &[("in_cover", Compare::Eq, 1)])?;
            let start = domain.empty_state();
            let first_plan = planner.plan(&domain, &start, &take_cover)?;
            // Three plans cost 2.0; the shortest wins, and of the two shortest the first listed.
            assert_eq!(names(&domain, &first_plan.actions), [first]);
            for _ in 0..20 {
                // A fresh domain has fresh hash seeds; a reused planner has dirty buffers.
                let again = Domain::from_ron(&text(first, second), "t")?;
                assert_eq!(plan(&again, &start, &take_cover)?, first_plan);
                assert_eq!(planner.plan(&domain, &start, &take_cover)?, first_plan);
            }
        }
        Ok(())
    }

    #[test]
    fn verify_names_the_first_failing_step_and_its_unmet_conditions() -> TestResult {
        let domain = guard()?;
        let start = domain.state_from(&[("ammo", 1)])?;
        let steps = ids(&domain, &["scout", "attack", "attack"])?;
        let result = verify(&domain, &start, &steps);
        let Err(err) = result else {
            panic!("expected a failing step, got {result:?}")
        };
        assert_eq!(err.index(), 2);
        assert_eq!(err.action(), "attack");
        assert_eq!(
            err.unmet(),
            [UnmetCondition {
                fact: "ammo".into(),
                op: Compare::Gt,
                value: 0,
                actual: 0
            }]
        );
        assert_eq!(err.to_string(), "step 2 (`attack`): unmet ammo > 0 (is 0)");

        let result = verify_names(&domain, &start, &["scout", "throw_grenade"]);
        let unknown = VerifyError::UnknownAction {
            index: 1,
            action: "throw_grenade".into(),
        };
        assert_eq!(result, Err(unknown));
        Ok(())
    }

    #[test]
    fn verify_returns_the_end_state_of_a_valid_plan() -> TestResult {
        let domain = guard()?;
        let start = domain.empty_state();
        let end = verify_names(&domain, &start, &["reload", "scout", "attack"])?;
        let expected =
            domain.state_from(&[("ammo", 2), ("enemy_visible", 1), ("enemy_hurt", 1)])?;
        assert_eq!(end, expected);
        assert_eq!(end.value(&domain, "ammo"), Ok(2));
        assert_eq!(verify(&domain, &start, &[]), Ok(start));
        Ok(())
    }

    #[test]
    fn repair_keeps_the_valid_prefix_and_completes_the_goal() -> TestResult {
        let domain = guard()?;
        let hurt_enemy = goal(&domain, "hurt_enemy")?;
        let start = domain.empty_state();
        // The model forgot to reload: `attack` fails at index 1.
        let written = ids(&domain, &["scout", "attack", "scout"])?;
        let repaired = repair(&domain, &start, &written, hurt_enemy)?;
        assert_eq!(repaired.kept, 1);
        assert_eq!(
            names(&domain, &repaired.actions),
            ["scout", "reload", "attack"]
        );
        assert_eq!(repaired.cost, 4.0);
        assert_eq!(repaired.failure.as_ref().map(VerifyError::index), Some(1));
        let end = verify(&domain, &start, &repaired.actions)?;
        assert!(hurt_enemy.is_met(&end));

        // A valid plan that reaches the goal stands as written.
        let good = ids(&domain, &["reload", "scout", "attack"])?;
        let repaired = Planner::default().repair(&domain, &start, &good, hurt_enemy)?;
        assert_eq!(
            (repaired.kept, &repaired.actions, repaired.cost),
            (3, &good, 4.0)
        );
        assert_eq!(repaired.failure, None);

        // A valid plan that stops short is completed after its last step.
        let short = ids(&domain, &["reload"])?;
        let repaired = Planner::default().repair(&domain, &start, &short, hurt_enemy)?;
        assert_eq!(repaired.kept, 1);
        assert_eq!(
            names(&domain, &repaired.actions),
            ["reload", "scout", "attack"]
        );

        // An unknown name fails at its index.
        let written = ["scout", "dance", "attack"];
        let repaired = Planner::default().repair_names(&domain, &start, &written, hurt_enemy)?;
        assert_eq!(repaired.kept, 1);
        assert_eq!(
            names(&domain, &repaired.actions),
            ["scout", "reload", "attack"]
        );
        assert!(hurt_enemy.is_met(&verify(&domain, &start, &repaired.actions)?));
        Ok(())
    }

    #[test]
    fn repair_reports_a_goal_the_kept_steps_cannot_reach() -> TestResult {
        let domain = guard()?;
        let start = domain.state_from(&[("medkits", 1)])?;
        let result = repair(
            &domain,
            &start,
            &ids(&domain, &["bandage"])?,
            goal(&domain, "heal")?,
        );
        assert!(matches!(
            result,
            Err(PlanError::NoPlan {
                reason: NoPlanReason::Exhausted,
                ..
            })
        ));
        Ok(())
    }

    /// The cheapest cost of any plan of at most `depth` steps, by enumerating them all.
    fn brute_force(domain: &Domain, state: &State, goal: &Goal, depth: usize) -> Option<f32> {
        let mut best = goal.is_met(state).then_some(0.0f32);
        if depth > 0 {
            for (_, action) in domain.actions() {
                if !action.applicable(&state.values) {
                    continue;
                }
                let mut next = state.clone();
                action.apply(&mut next.values);
                if let Some(rest) = brute_force(domain, &next, goal, depth - 1) {
                    let cost = action.cost + rest;
                    best = Some(best.map_or(cost, |b| b.min(cost)));
                }
            }
        }
        best
    }

    const FACTS: [&str; 4] = ["ammo", "in_cover", "enemy_visible", "hp"];

    fn condition() -> impl Strategy<Value = (String, Compare, i32)> {
        let op = prop_oneof![
            Just(Compare::Eq),
            Just(Compare::Ne),
            Just(Compare::Lt),
            Just(Compare::Le),
            Just(Compare::Gt),
            Just(Compare::Ge),
        ];
        (0..FACTS.len(), op, 0..3).prop_map(|(f, op, v)| (FACTS[f].to_owned(), op, v))
    }

    fn effect() -> impl Strategy<Value = (String, EffectOp, i32)> {
        prop_oneof![
            (0..FACTS.len(), 0..3).prop_map(|(f, v)| (FACTS[f].to_owned(), EffectOp::Set, v)),
            (0..FACTS.len(), prop_oneof![Just(-1), Just(1)]).prop_map(|(f, v)| (
                FACTS[f].to_owned(),
                EffectOp::Add,
                v
            )),
        ]
    }

    /// Two to eight actions over four facts, costing 0.5 to 3.0 in halves.
    fn random_domain() -> impl Strategy<Value = DomainFile> {
        let action = (
            1..=6u8,
            proptest::collection::vec(condition(), 0..3),
            proptest::collection::vec(effect(), 1..3),
        );
        proptest::collection::vec(action, 2..9).prop_map(|actions| DomainFile {
            facts: FACTS.iter().map(|&f| f.to_owned()).collect(),
            actions: actions
                .into_iter()
                .enumerate()
                .map(|(i, (halves, pre, effects))| ActionFile {
                    name: format!("squad_order_{i}"),
                    cost: f32::from(halves) * 0.5,
                    pre,
                    effects,
                })
                .collect(),
            goals: vec![],
        })
    }

    /// A goal: random conditions (often unreachable), or some facts as a random walk through the
    /// domain's actions leaves them (always reachable), so that both outcomes are common.
    #[derive(Clone, Debug)]
    enum GoalSpec {
        Random(Vec<(String, Compare, i32)>),
        Walk {
            steps: Vec<usize>,
            facts: Vec<(usize, Compare)>,
        },
    }

    fn goal_spec() -> impl Strategy<Value = GoalSpec> {
        let op = prop_oneof![Just(Compare::Eq), Just(Compare::Ge), Just(Compare::Le)];
        let walk = (
            proptest::collection::vec(0..8usize, 1..6),
            proptest::collection::vec((0..FACTS.len(), op), 1..3),
        );
        prop_oneof![
            1 => proptest::collection::vec(condition(), 1..3).prop_map(GoalSpec::Random),
            2 => walk.prop_map(|(steps, facts)| GoalSpec::Walk { steps, facts }),
        ]
    }

    fn make_goal(domain: &Domain, start: &State, spec: &GoalSpec) -> Result<Goal, GoapError> {
        let conditions = match spec {
            GoalSpec::Random(conditions) => conditions.clone(),
            GoalSpec::Walk { steps, facts } => {
                let mut state = start.clone();
                for &i in steps {
                    if let Some(action) = domain.actions.get(i)
                        && action.applicable(&state.values)
                    {
                        action.apply(&mut state.values);
                    }
                }
                facts
                    .iter()
                    .map(|&(f, op)| (FACTS[f].to_owned(), op, state.values[f]))
                    .collect()
            }
        };
        let pairs: Vec<_> = conditions
            .iter()
            .map(|(f, op, v)| (f.as_str(), *op, *v))
            .collect();
        domain.goal_from("random_goal", &pairs)
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            max_global_rejects: 1 << 16,
            ..ProptestConfig::default()
        })]

        #[test]
        fn plans_verify_reach_the_goal_and_are_no_dearer_than_brute_force(
            file in random_domain(),
            start in proptest::collection::vec(0..3i32, FACTS.len()),
            spec in goal_spec(),
        ) {
            let domain = Domain::from_file(file).map_err(TestCaseError::fail)?;
            let start = State { values: start };
            let goal = make_goal(&domain, &start, &spec)?;
            prop_assume!(!goal.is_met(&start));
            let best = brute_force(&domain, &start, &goal, 4);
            // Every action costs at least 0.5 and a plan of four steps at most 12, so a path that
            // undercuts one has at most 24 steps: a depth limit of 32 never hides it.
            let limits = PlannerLimits { max_expansions: 100_000, max_depth: 32 };
            match Planner::new(limits).plan(&domain, &start, &goal) {
                Ok(plan) => {
                    let end = verify(&domain, &start, &plan.actions)?;
                    prop_assert!(goal.is_met(&end));
                    let actions = plan.actions.iter().filter_map(|&a| domain.get_action(a));
                    let cost: f32 = actions.map(Action::cost).sum();
                    prop_assert!((cost - plan.cost).abs() < 1e-4);
                    if let Some(best) = best {
                        let cost = plan.cost;
                        prop_assert!(cost <= best + 1e-4, "{cost} > brute force {best}");
                    }
                }
                // `Add` makes the state space unbounded, so an unreachable goal may end at a limit.
                Err(PlanError::NoPlan { .. }) => prop_assert_eq!(best, None),
            }
            // Default limits never give a wrong plan either, and agree on what cannot be done.
            match plan(&domain, &start, &goal) {
                Ok(plan) => prop_assert!(goal.is_met(&verify(&domain, &start, &plan.actions)?)),
                Err(PlanError::NoPlan { reason: NoPlanReason::Exhausted, .. }) => {
                    prop_assert_eq!(best, None);
                }
                Err(_) => {}
            }
        }
    }
}
