//! What a plan is made of: facts, conditions, effects, actions and goals, the [`State`] they
//! act on, and the [`Domain`] that holds them, loaded from RON.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{LoadError, load_with, parse_ron};

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
pub struct ActionId(pub(super) u32);

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
    pub(super) fn holds_in(&self, values: &[i32]) -> bool {
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
    pub(super) name: String,
    pub(super) cost: f32,
    pub(super) pre: Vec<Condition>,
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

    pub(super) fn applicable(&self, values: &[i32]) -> bool {
        self.pre.iter().all(|c| c.holds_in(values))
    }

    pub(super) fn apply(&self, values: &mut [i32]) {
        for effect in &self.effects {
            effect.apply(values);
        }
    }
}

/// A named set of conditions a plan must make hold, such as `hurt_enemy` or `take_cover`.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    pub(super) name: String,
    pub(super) conditions: Vec<Condition>,
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
    pub(super) values: Vec<i32>,
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

/// A set of facts, actions and goals to plan over. See the [module docs](super) for its RON form.
#[derive(Clone, Debug)]
pub struct Domain {
    facts: Vec<String>,
    fact_ids: HashMap<String, FactId>,
    pub(super) actions: Vec<Action>,
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
        load_with(path, Domain::from_ron)
    }

    pub(super) fn from_file(file: DomainFile) -> Result<Self, String> {
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
    pub(super) fn normalized(&self, state: &State) -> State {
        let mut values = state.values.clone();
        values.resize(self.facts.len(), 0);
        State { values }
    }

    /// A lower bound on the cost of reaching `goal` (sorted by fact) from `values`; zero
    /// exactly when the goal is met, infinite when it cannot be.
    pub(super) fn heuristic(&self, goal: &[Condition], values: &[i32]) -> f32 {
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
pub(super) struct DomainFile {
    #[serde(default)]
    pub(super) facts: Vec<String>,
    #[serde(default)]
    pub(super) actions: Vec<ActionFile>,
    #[serde(default)]
    pub(super) goals: Vec<GoalFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ActionFile {
    pub(super) name: String,
    #[serde(default = "default_cost")]
    pub(super) cost: f32,
    #[serde(default)]
    pub(super) pre: Vec<(String, Compare, i32)>,
    #[serde(default)]
    pub(super) effects: Vec<(String, EffectOp, i32)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GoalFile {
    name: String,
    #[serde(default)]
    conditions: Vec<(String, Compare, i32)>,
}

fn default_cost() -> f32 {
    1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goap::fixtures::{goal, guard, ids, names};
    use crate::goap::plan;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

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
}
