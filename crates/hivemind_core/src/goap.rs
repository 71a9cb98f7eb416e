//! Goal-oriented action planning: A* over symbolic facts.
//!
//! A [`Domain`] names integer facts (booleans are `0`/`1`), actions with preconditions, effects
//! and costs, and goals. [`Planner::plan`] finds the cheapest sequence of actions that takes a
//! [`State`] to a [`Goal`]; [`verify`] replays a plan written by someone else (a model, say) and
//! names the first step whose preconditions do not hold; [`Planner::repair`] keeps the part of
//! such a plan that verifies and plans the rest. The planner is purely symbolic: it knows nothing
//! of targets or coordinates, which are bound to steps elsewhere.
//!
//! # Domain files
//!
//! Domains are RON files (conventionally under `assets/goap/`):
//!
//! ```ron
//! (
//!     // Optional: facts the game sets that no action or goal mentions yet.
//!     facts: ["enemy_visible"],
//!     actions: [
//!         (name: "reload", cost: 1.0, pre: [("ammo", Eq, 0)], effects: [("ammo", Set, 3)]),
//!         (
//!             name: "attack",
//!             cost: 1.0,
//!             pre: [("ammo", Gt, 0), ("enemy_visible", Eq, 1)],
//!             effects: [("ammo", Add, -1), ("enemy_hurt", Set, 1)],
//!         ),
//!     ],
//!     goals: [(name: "hurt_enemy", conditions: [("enemy_hurt", Eq, 1)])],
//! )
//! ```
//!
//! - A condition is `(fact, op, value)` with `op` one of `Eq`, `Ne`, `Lt`, `Le`, `Gt`, `Ge`.
//! - An effect is `(fact, Set, value)` or `(fact, Add, delta)`; `Add` saturates at the bounds
//!   of `i32`. Effects apply in the order written.
//! - `cost` defaults to `1.0` and must be positive and finite; `pre`, `effects`, `facts` and
//!   `goals` default to empty. Action names and goal names must be unique and not empty.
//! - Facts are interned in order of first mention (`facts`, then actions, then goals). A state
//!   gives every fact it does not mention the value `0`.
//!
//! ```
//! use hivemind_core::goap::{Domain, Planner};
//!
//! let domain = Domain::from_ron(
//!     r#"(
//!         actions: [
//!             (name: "reload", cost: 1.0, pre: [("ammo", Eq, 0)], effects: [("ammo", Set, 3)]),
//!             (name: "attack", cost: 1.0, pre: [("ammo", Gt, 0), ("enemy_visible", Eq, 1)],
//!              effects: [("ammo", Add, -1), ("enemy_hurt", Set, 1)]),
//!         ],
//!         goals: [(name: "hurt_enemy", conditions: [("enemy_hurt", Eq, 1)])],
//!     )"#,
//!     "guard.ron",
//! )?;
//! let start = domain.state_from(&[("enemy_visible", 1)])?;
//! let goal = domain.goal("hurt_enemy").ok_or("no such goal")?;
//! let plan = Planner::default().plan(&domain, &start, goal)?;
//! let names: Vec<_> = plan.actions.iter().filter_map(|&a| domain.action_name(a)).collect();
//! assert_eq!(names, ["reload", "attack"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Design
//!
//! GOAP runs on the fallback path, where a plan must be ready in tens of microseconds, so the
//! search allocates nothing per node once its buffers have grown: every node's state lives in one
//! flat arena of `i32`s, the open list is a binary heap of small `Copy` entries pointing into it,
//! and visited states are found through an open-addressing table that hashes the arena slices
//! in place. A [`Planner`] keeps those buffers between calls; the free functions build a fresh
//! one each time.
//!
//! The heuristic is the larger of two lower bounds on the remaining cost: the cheapest action
//! that touches the costliest unmet goal fact, and the number of unmet goal facts divided by the
//! most facts one action touches, times the domain's cheapest cost. Both are consistent, so A*
//! returns a cheapest plan; a goal fact that no action touches and that does not already hold
//! makes a state a dead end at once instead of after an exhaustive search. Ties in the open
//! list are broken by a fixed rule (closer to the goal first, then generation order, which
//! follows the domain's action order), never by hashing, so the same domain, start and goal
//! always give the same plan.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{LoadError, parse_ron};

/// A fact of a [`Domain`], by its interned index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FactId(u32);

impl FactId {
    /// The fact's index in its domain's fact list (and in a [`State`]'s values).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// An action of a [`Domain`], by its index in the domain's action list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActionId(u32);

impl ActionId {
    /// The action's index in its domain's action list.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// How a [`Condition`] compares a fact with its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Compare {
    /// `fact == value`
    Eq,
    /// `fact != value`
    Ne,
    /// `fact < value`
    Lt,
    /// `fact <= value`
    Le,
    /// `fact > value`
    Gt,
    /// `fact >= value`
    Ge,
}

impl Compare {
    /// Whether `actual` compares with `value` this way.
    pub fn holds(self, actual: i32, value: i32) -> bool {
        match self {
            Compare::Eq => actual == value,
            Compare::Ne => actual != value,
            Compare::Lt => actual < value,
            Compare::Le => actual <= value,
            Compare::Gt => actual > value,
            Compare::Ge => actual >= value,
        }
    }

    /// The operator as written in messages: `==`, `!=`, `<`, `<=`, `>` or `>=`.
    pub fn symbol(self) -> &'static str {
        match self {
            Compare::Eq => "==",
            Compare::Ne => "!=",
            Compare::Lt => "<",
            Compare::Le => "<=",
            Compare::Gt => ">",
            Compare::Ge => ">=",
        }
    }
}

impl fmt::Display for Compare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// A fact compared with a constant: a precondition or a goal condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Condition {
    /// The fact.
    pub fact: FactId,
    /// How it is compared.
    pub op: Compare,
    /// The constant it is compared with.
    pub value: i32,
}

impl Condition {
    /// Whether the condition holds in `state`.
    pub fn holds(&self, state: &State) -> bool {
        self.holds_in(&state.values)
    }

    /// Facts beyond the end of `values` (a goal from another domain) read as `0`.
    fn holds_in(&self, values: &[i32]) -> bool {
        self.op.holds(
            values.get(self.fact.index()).copied().unwrap_or(0),
            self.value,
        )
    }
}

/// How an [`Effect`] changes its fact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EffectOp {
    /// The fact becomes the value.
    Set,
    /// The value is added to the fact, saturating at the bounds of `i32`.
    Add,
}

/// What an action does to one fact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Effect {
    /// The fact changed.
    pub fact: FactId,
    /// Set or add.
    pub op: EffectOp,
    /// The new value ([`EffectOp::Set`]) or the delta ([`EffectOp::Add`]).
    pub value: i32,
}

impl Effect {
    /// Applies the effect to the values of a state of this effect's domain.
    fn apply(&self, values: &mut [i32]) {
        if let Some(v) = values.get_mut(self.fact.index()) {
            *v = match self.op {
                EffectOp::Set => self.value,
                EffectOp::Add => v.saturating_add(self.value),
            };
        }
    }
}

/// An action: what must hold before it, what it changes, and what it costs.
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    name: String,
    cost: f32,
    pre: Vec<Condition>,
    effects: Vec<Effect>,
}

impl Action {
    /// The action's name, unique in its domain.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The action's cost, positive and finite.
    pub fn cost(&self) -> f32 {
        self.cost
    }

    /// What must hold before the action can run.
    pub fn preconditions(&self) -> &[Condition] {
        &self.pre
    }

    /// What the action changes, applied in order.
    pub fn effects(&self) -> &[Effect] {
        &self.effects
    }

    fn applicable(&self, values: &[i32]) -> bool {
        self.pre.iter().all(|c| c.holds_in(values))
    }

    fn apply(&self, values: &mut [i32]) {
        for effect in &self.effects {
            effect.apply(values);
        }
    }
}

/// A named set of conditions a plan must make hold, such as `hurt_enemy` or `take_cover`.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    name: String,
    conditions: Vec<Condition>,
}

impl Goal {
    /// A goal from conditions over a domain's facts (see [`Domain::fact_id`] and
    /// [`Domain::goal_from`]).
    pub fn new(name: impl Into<String>, conditions: Vec<Condition>) -> Self {
        Goal {
            name: name.into(),
            conditions,
        }
    }

    /// The goal's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The conditions that must all hold.
    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// Whether every condition holds in `state`.
    pub fn is_met(&self, state: &State) -> bool {
        self.conditions.iter().all(|c| c.holds(state))
    }
}

/// The values of a domain's facts, indexed by [`FactId`].
///
/// States made by a [`Domain`] hold one value per fact of that domain; a fact beyond the end
/// reads as `0`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct State {
    values: Vec<i32>,
}

impl State {
    /// The value of `fact` (`0` if this state does not hold it).
    pub fn get(&self, fact: FactId) -> i32 {
        self.values.get(fact.index()).copied().unwrap_or(0)
    }

    /// Sets `fact` to `value`, growing the state if needed.
    pub fn set_fact(&mut self, fact: FactId, value: i32) {
        let i = fact.index();
        if i >= self.values.len() {
            self.values.resize(i + 1, 0);
        }
        self.values[i] = value;
    }

    /// Sets the fact named `name` in `domain` to `value`.
    pub fn set(&mut self, domain: &Domain, name: &str, value: i32) -> Result<(), GoapError> {
        let fact = domain.known_fact(name)?;
        self.set_fact(fact, value);
        Ok(())
    }

    /// The value of the fact named `name` in `domain`.
    pub fn value(&self, domain: &Domain, name: &str) -> Result<i32, GoapError> {
        Ok(self.get(domain.known_fact(name)?))
    }

    /// The values, indexed by [`FactId::index`].
    pub fn values(&self) -> &[i32] {
        &self.values
    }
}

/// Why a name could not be resolved in a [`Domain`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GoapError {
    /// No action or goal of the domain mentions the fact, and its `facts` list does not declare it.
    #[error("unknown fact `{name}`")]
    UnknownFact {
        /// The name as given.
        name: String,
    },
}

/// A set of facts, actions and goals to plan over. See the [module docs](self) for its RON form.
#[derive(Clone, Debug)]
pub struct Domain {
    facts: Vec<String>,
    fact_ids: HashMap<String, FactId>,
    actions: Vec<Action>,
    action_ids: HashMap<String, ActionId>,
    goals: Vec<Goal>,
    goal_ids: HashMap<String, usize>,
    /// Per fact, the cost of the cheapest action whose effects touch it (infinite if none).
    fact_min_cost: Vec<f32>,
    /// The most distinct facts one action's effects touch.
    max_touched: u32,
    /// The cost of the cheapest action (infinite if there are none).
    min_cost: f32,
}

impl Domain {
    /// Parses and checks a domain from RON text. `origin` names the text in errors.
    pub fn from_ron(text: &str, origin: &str) -> Result<Self, LoadError> {
        let file: DomainFile = parse_ron(text, origin)?;
        Domain::from_file(file).map_err(|message| LoadError::Invalid {
            origin: origin.to_owned(),
            message,
        })
    }

    /// Reads, parses and checks a domain file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        Domain::from_ron(&text, &path.display().to_string())
    }

    fn from_file(file: DomainFile) -> Result<Self, String> {
        let mut interner = Interner::default();
        for name in file.facts {
            if name.is_empty() {
                return Err("`facts` holds an empty fact name".to_owned());
            }
            if interner.ids.contains_key(&name) {
                return Err(format!("fact `{name}` is declared twice in `facts`"));
            }
            interner.intern(name)?;
        }

        let mut actions = Vec::with_capacity(file.actions.len());
        let mut action_ids = HashMap::with_capacity(file.actions.len());
        for (i, a) in file.actions.into_iter().enumerate() {
            if a.name.is_empty() {
                return Err(format!("action {i} has an empty name"));
            }
            let what = format!("action `{}`", a.name);
            if !(a.cost.is_finite() && a.cost > 0.0) {
                return Err(format!(
                    "{what}: cost must be positive and finite, got {}",
                    a.cost
                ));
            }
            let pre = interner.conditions(a.pre, &what)?;
            let effects = a
                .effects
                .into_iter()
                .map(|(fact, op, value)| {
                    Ok(Effect {
                        fact: interner.fact(fact, &what)?,
                        op,
                        value,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let id = ActionId(index_u32(i, "actions")?);
            if let Some(first) = action_ids.insert(a.name.clone(), id) {
                return Err(format!(
                    "{what} is defined twice (actions {} and {i})",
                    first.0
                ));
            }
            actions.push(Action {
                name: a.name,
                cost: a.cost,
                pre,
                effects,
            });
        }

        let mut goals = Vec::with_capacity(file.goals.len());
        let mut goal_ids = HashMap::with_capacity(file.goals.len());
        for (i, g) in file.goals.into_iter().enumerate() {
            if g.name.is_empty() {
                return Err(format!("goal {i} has an empty name"));
            }
            let what = format!("goal `{}`", g.name);
            let conditions = interner.conditions(g.conditions, &what)?;
            if let Some(first) = goal_ids.insert(g.name.clone(), i) {
                return Err(format!("{what} is defined twice (goals {first} and {i})"));
            }
            goals.push(Goal {
                name: g.name,
                conditions,
            });
        }

        let mut fact_min_cost = vec![f32::INFINITY; interner.names.len()];
        let mut max_touched = 0;
        let mut touched = Vec::new();
        for action in &actions {
            touched.clear();
            touched.extend(action.effects.iter().map(|e| e.fact));
            touched.sort_unstable();
            touched.dedup();
            max_touched = max_touched.max(touched.len());
            for fact in &touched {
                let cost = &mut fact_min_cost[fact.index()];
                *cost = cost.min(action.cost);
            }
        }
        let min_cost = actions.iter().map(|a| a.cost).fold(f32::INFINITY, f32::min);

        Ok(Domain {
            facts: interner.names,
            fact_ids: interner.ids,
            actions,
            action_ids,
            goals,
            goal_ids,
            fact_min_cost,
            max_touched: u32::try_from(max_touched).unwrap_or(u32::MAX),
            min_cost,
        })
    }

    /// The id of the fact named `name`.
    pub fn fact_id(&self, name: &str) -> Option<FactId> {
        self.fact_ids.get(name).copied()
    }

    /// The name of `fact`, if it belongs to this domain.
    pub fn fact_name(&self, fact: FactId) -> Option<&str> {
        self.facts.get(fact.index()).map(String::as_str)
    }

    /// How many facts the domain has; every state it makes holds this many values.
    pub fn fact_count(&self) -> usize {
        self.facts.len()
    }

    /// Every fact with its name, in id order.
    pub fn facts(&self) -> impl ExactSizeIterator<Item = (FactId, &str)> + '_ {
        self.facts
            .iter()
            .enumerate()
            .map(|(i, n)| (FactId(i as u32), n.as_str()))
    }

    /// The id of the action named `name`.
    pub fn action(&self, name: &str) -> Option<ActionId> {
        self.action_ids.get(name).copied()
    }

    /// The name of `action`, if it belongs to this domain.
    pub fn action_name(&self, action: ActionId) -> Option<&str> {
        self.get_action(action).map(Action::name)
    }

    /// The definition of `action`, if it belongs to this domain.
    pub fn get_action(&self, action: ActionId) -> Option<&Action> {
        self.actions.get(action.index())
    }

    /// Every action with its id, in the order the domain lists them.
    pub fn actions(&self) -> impl ExactSizeIterator<Item = (ActionId, &Action)> + '_ {
        self.actions
            .iter()
            .enumerate()
            .map(|(i, a)| (ActionId(i as u32), a))
    }

    /// The goal named `name`.
    pub fn goal(&self, name: &str) -> Option<&Goal> {
        self.goal_ids.get(name).and_then(|&i| self.goals.get(i))
    }

    /// Every goal, in the order the domain lists them.
    pub fn goals(&self) -> impl ExactSizeIterator<Item = &Goal> + '_ {
        self.goals.iter()
    }

    /// A goal that is not in the domain file, from conditions over named facts.
    pub fn goal_from(
        &self,
        name: &str,
        conditions: &[(&str, Compare, i32)],
    ) -> Result<Goal, GoapError> {
        let conditions = conditions
            .iter()
            .map(|&(fact, op, value)| {
                Ok(Condition {
                    fact: self.known_fact(fact)?,
                    op,
                    value,
                })
            })
            .collect::<Result<_, GoapError>>()?;
        Ok(Goal {
            name: name.to_owned(),
            conditions,
        })
    }

    /// A state in which every fact is `0`.
    pub fn empty_state(&self) -> State {
        State {
            values: vec![0; self.facts.len()],
        }
    }

    /// A state with the named facts set and every other fact `0`.
    pub fn state_from(&self, facts: &[(&str, i32)]) -> Result<State, GoapError> {
        let mut state = self.empty_state();
        for &(name, value) in facts {
            state.set(self, name, value)?;
        }
        Ok(state)
    }

    /// Whether `action` belongs to this domain and its preconditions hold in `state`.
    pub fn is_applicable(&self, state: &State, action: ActionId) -> bool {
        self.get_action(action)
            .is_some_and(|a| a.applicable(&state.values))
    }

    /// Shows `state` as `fact=value` pairs, in fact order, for logs and consoles.
    pub fn display_state<'a>(&'a self, state: &'a State) -> impl fmt::Display + 'a {
        StateDisplay {
            domain: self,
            state,
        }
    }

    fn known_fact(&self, name: &str) -> Result<FactId, GoapError> {
        self.fact_id(name).ok_or_else(|| GoapError::UnknownFact {
            name: name.to_owned(),
        })
    }

    /// `state`'s values resized to this domain's fact count.
    fn normalized(&self, state: &State) -> State {
        let mut values = state.values.clone();
        values.resize(self.facts.len(), 0);
        State { values }
    }

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

    /// A lower bound on the cost of reaching `goal` (sorted by fact) from `values`; zero
    /// exactly when the goal is met, infinite when it cannot be.
    fn heuristic(&self, goal: &[Condition], values: &[i32]) -> f32 {
        let mut unmet_facts = 0u32;
        let mut last = None;
        let mut worst = 0.0f32;
        for c in goal {
            if c.holds_in(values) || last == Some(c.fact) {
                continue;
            }
            last = Some(c.fact);
            unmet_facts += 1;
            worst = worst.max(
                self.fact_min_cost
                    .get(c.fact.index())
                    .copied()
                    .unwrap_or(f32::INFINITY),
            );
        }
        if unmet_facts == 0 || worst.is_infinite() {
            return worst;
        }
        let by_count = unmet_facts.div_ceil(self.max_touched.max(1)) as f32 * self.min_cost;
        worst.max(by_count)
    }
}

struct StateDisplay<'a> {
    domain: &'a Domain,
    state: &'a State,
}

impl fmt::Display for StateDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (fact, name)) in self.domain.facts().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={}", self.state.get(fact))?;
        }
        Ok(())
    }
}

fn index_u32(i: usize, what: &str) -> Result<u32, String> {
    u32::try_from(i).map_err(|_| format!("too many {what}"))
}

#[derive(Default)]
struct Interner {
    names: Vec<String>,
    ids: HashMap<String, FactId>,
}

impl Interner {
    fn intern(&mut self, name: String) -> Result<FactId, String> {
        if let Some(&id) = self.ids.get(&name) {
            return Ok(id);
        }
        let id = FactId(index_u32(self.names.len(), "facts")?);
        self.names.push(name.clone());
        self.ids.insert(name, id);
        Ok(id)
    }

    fn fact(&mut self, name: String, what: &str) -> Result<FactId, String> {
        if name.is_empty() {
            return Err(format!("{what} names an empty fact"));
        }
        self.intern(name)
    }

    fn conditions(
        &mut self,
        raw: Vec<(String, Compare, i32)>,
        what: &str,
    ) -> Result<Vec<Condition>, String> {
        raw.into_iter()
            .map(|(fact, op, value)| {
                Ok(Condition {
                    fact: self.fact(fact, what)?,
                    op,
                    value,
                })
            })
            .collect()
    }
}

/// The RON form of a domain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainFile {
    #[serde(default)]
    facts: Vec<String>,
    #[serde(default)]
    actions: Vec<ActionFile>,
    #[serde(default)]
    goals: Vec<GoalFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionFile {
    name: String,
    #[serde(default = "default_cost")]
    cost: f32,
    #[serde(default)]
    pre: Vec<(String, Compare, i32)>,
    #[serde(default)]
    effects: Vec<(String, EffectOp, i32)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GoalFile {
    name: String,
    #[serde(default)]
    conditions: Vec<(String, Compare, i32)>,
}

fn default_cost() -> f32 {
    1.0
}

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
    use proptest::prelude::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

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

    fn guard() -> Result<Domain, LoadError> {
        Domain::from_ron(GUARD, "guard.ron")
    }

    fn goal<'a>(domain: &'a Domain, name: &str) -> Result<&'a Goal, String> {
        domain.goal(name).ok_or_else(|| format!("no goal `{name}`"))
    }

    fn names<'a>(domain: &'a Domain, actions: &[ActionId]) -> Vec<&'a str> {
        actions
            .iter()
            .map(|&a| domain.action_name(a).unwrap_or("?"))
            .collect()
    }

    fn ids(domain: &Domain, names: &[&str]) -> Result<Vec<ActionId>, String> {
        names
            .iter()
            .map(|n| domain.action(n).ok_or_else(|| format!("no action `{n}`")))
            .collect()
    }

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

    #[test]
    fn states_are_built_by_fact_name() -> TestResult {
        let domain = guard()?;
        assert_eq!(
            domain.state_from(&[("mana", 3)]),
            Err(GoapError::UnknownFact {
                name: "mana".into()
            })
        );
        let mut state = domain.empty_state();
        state.set(&domain, "ammo", 3)?;
        assert_eq!(domain.fact_id("ammo").map(|ammo| state.get(ammo)), Some(3));
        assert!(state.set(&domain, "mana", 1).is_err());
        assert_eq!(
            domain.display_state(&state).to_string(),
            "ammo=3 enemy_visible=0 enemy_hurt=0 medkits=0 hp=0"
        );
        // A short state (made by hand) reads missing facts as zero.
        let plan = plan(&domain, &State::default(), goal(&domain, "hurt_enemy")?)?;
        assert_eq!(names(&domain, &plan.actions), ["reload", "scout", "attack"]);
        Ok(())
    }

    #[test]
    fn declared_facts_come_first_and_accessors_agree() -> TestResult {
        let domain = Domain::from_ron(
            r#"(facts: ["alarm"], actions: [(name: "reload", effects: [("ammo", Set, 3)])])"#,
            "t",
        )?;
        let facts: Vec<_> = domain.facts().map(|(_, name)| name).collect();
        assert_eq!(facts, ["alarm", "ammo"]);
        let reload = ids(&domain, &["reload"])?[0];
        assert_eq!(domain.get_action(reload).map(Action::cost), Some(1.0));
        assert_eq!((domain.actions().count(), domain.goals().count()), (1, 0));
        assert!(domain.is_applicable(&domain.empty_state(), reload));
        Ok(())
    }

    #[test]
    fn malformed_ron_names_the_line() {
        let result = Domain::from_ron("(\n  actions: [\n    (name: reload)\n  ],\n)", "guard.ron");
        let Err(LoadError::Ron(err)) = result else {
            panic!("expected a RON error, got {result:?}")
        };
        assert_eq!((err.origin.as_str(), err.line), ("guard.ron", 3));
        assert!(err.to_string().starts_with("guard.ron:3:"), "{err}");

        let bad_op = r#"(actions: [(name: "x", pre: [("ammo", Equals, 1)])])"#;
        let result = Domain::from_ron(bad_op, "t");
        assert!(matches!(result, Err(LoadError::Ron(_))), "{result:?}");
    }

    #[test]
    fn nonsense_domains_are_invalid_with_the_culprit_named() {
        let invalid = |text: &str| match Domain::from_ron(text, "guard.ron") {
            Err(LoadError::Invalid { origin, message }) => {
                assert_eq!(origin, "guard.ron");
                message
            }
            other => panic!("expected Invalid, got {other:?}"),
        };
        let m =
            invalid(r#"(actions: [(name: "reload", cost: -1.0, effects: [("ammo", Set, 3)])])"#);
        assert_eq!(
            m,
            "action `reload`: cost must be positive and finite, got -1"
        );
        let m = invalid(r#"(actions: [(name: "reload", cost: 0.0)])"#);
        assert!(m.contains("`reload`"), "{m}");
        let m = invalid(r#"(actions: [(name: "reload", cost: inf)])"#);
        assert!(m.contains("`reload`"), "{m}");
        let m = invalid(r#"(actions: [(name: "reload"), (name: "attack"), (name: "reload")])"#);
        assert_eq!(m, "action `reload` is defined twice (actions 0 and 2)");
        let m = invalid(r#"(goals: [(name: "heal", conditions: []), (name: "heal")])"#);
        assert_eq!(m, "goal `heal` is defined twice (goals 0 and 1)");
        let m = invalid(r#"(actions: [(name: "")])"#);
        assert_eq!(m, "action 0 has an empty name");
        let m = invalid(r#"(actions: [(name: "reload", effects: [("", Set, 3)])])"#);
        assert_eq!(m, "action `reload` names an empty fact");
        let m = invalid(r#"(facts: ["ammo", "ammo"])"#);
        assert!(m.contains("`ammo`"), "{m}");
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_it() {
        let result = Domain::load(Path::new("/no/such/goap/guard.ron"));
        let Err(err @ LoadError::Io { .. }) = result else {
            panic!("expected Io, got {result:?}")
        };
        assert!(err.to_string().contains("/no/such/goap/guard.ron"));
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
        #![proptest_config(ProptestConfig::with_cases(512))]

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
