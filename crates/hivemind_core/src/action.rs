//! The verbs a plan may use, their arguments, and checking a plan against a situation.
//!
//! An [`ActionRegistry`] is loaded from RON (`assets/actions.ron` for the arena):
//!
//! ```ron
//! (
//!     idle: "Wait",
//!     verbs: [
//!         (name: "Attack", goap: "attack", describe: "shoot a visible enemy",
//!          args: [(name: "target", kind: Entity(set: "enemy"))]),
//!         (name: "TakeCover", goap: "take_cover", describe: "move to a cover point",
//!          args: [(name: "at", kind: Point(set: "cover"))]),
//!         (name: "Reload", goap: "reload", describe: "refill ammo"),
//!     ],
//! )
//! ```
//!
//! An argument's [`ArgKind`] says where its values come from, and [`ArgKind::domain`] turns that
//! into the concrete values one agent's snapshot allows. The grammar is generated from the same
//! domains, so a grammar-constrained plan always validates; [`ActionRegistry::validate_plan`]
//! guards every other path (remote models without grammars, cached plans, replayed transcripts).

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{LoadError, load_with, parse_ron};
use crate::plan::{ArgValue, PlanStep};
use crate::snapshot::{Bounds, EntityId, Point, WorldSnapshot};

/// Where the values of one argument come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ArgKind {
    /// The id of an entity in the snapshot's set `set` (written as a number).
    Entity {
        /// The entity set, such as `enemy`.
        set: String,
    },
    /// One of the snapshot's points in set `set` (written as `[x,y]`).
    Point {
        /// The point set, such as `cover`.
        set: String,
    },
    /// Any cell inside the snapshot's bounds (written as `[x,y]`).
    Cell,
    /// An integer in `min..=max`.
    Int {
        /// The smallest value.
        min: i64,
        /// The largest value.
        max: i64,
    },
    /// Free text of at most `max_chars` characters (written as a string).
    Text {
        /// The most characters.
        max_chars: usize,
    },
}

impl ArgKind {
    /// The values `snapshot` allows for this argument.
    pub fn domain(&self, snapshot: &WorldSnapshot) -> ArgDomain {
        match self {
            ArgKind::Entity { set } => {
                let mut ids: Vec<EntityId> = snapshot.entities_in(set).map(|e| e.id).collect();
                ids.sort_unstable();
                ids.dedup();
                ArgDomain::Entities(ids)
            }
            ArgKind::Point { set } => {
                let mut points: Vec<Point> = snapshot.points_in(set).collect();
                points.sort_unstable();
                points.dedup();
                ArgDomain::Points(points)
            }
            ArgKind::Cell => match snapshot.bounds {
                Some(b) if !b.is_empty() => ArgDomain::Cells(b),
                _ => ArgDomain::Points(Vec::new()),
            },
            ArgKind::Int { min, max } => ArgDomain::Ints {
                min: *min,
                max: *max,
            },
            ArgKind::Text { max_chars } => ArgDomain::Text {
                max_chars: *max_chars,
            },
        }
    }

    /// What a model writes for this kind, for prompts: `enemy id`, `cover [x,y]`, `text`.
    pub fn describe(&self) -> String {
        match self {
            ArgKind::Entity { set } => format!("{set} id"),
            ArgKind::Point { set } => format!("{set} [x,y]"),
            ArgKind::Cell => "cell [x,y]".to_owned(),
            ArgKind::Int { min, max } => format!("{min}..{max}"),
            ArgKind::Text { max_chars } => format!("text ≤{max_chars}"),
        }
    }
}

/// The concrete values one argument may take in one situation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgDomain {
    /// These entity ids, ascending.
    Entities(Vec<EntityId>),
    /// These points, ascending.
    Points(Vec<Point>),
    /// Any cell inside these bounds.
    Cells(Bounds),
    /// Any integer in `min..=max`.
    Ints {
        /// The smallest value.
        min: i64,
        /// The largest value.
        max: i64,
    },
    /// Any text up to `max_chars` characters.
    Text {
        /// The most characters.
        max_chars: usize,
    },
}

impl ArgDomain {
    /// Whether no value is allowed, which leaves the verb out of the agent's grammar.
    pub fn is_empty(&self) -> bool {
        match self {
            ArgDomain::Entities(ids) => ids.is_empty(),
            ArgDomain::Points(points) => points.is_empty(),
            ArgDomain::Cells(b) => b.is_empty(),
            ArgDomain::Ints { min, max } => min > max,
            ArgDomain::Text { .. } => false,
        }
    }
}

/// One argument of a verb.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArgSpec {
    /// The JSON key the model writes.
    pub name: String,
    /// Where its values come from.
    pub kind: ArgKind,
}

/// One verb.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VerbSpec {
    /// The name the model writes as `"act"`.
    pub name: String,
    /// The arguments, in the order the model writes them.
    #[serde(default)]
    pub args: Vec<ArgSpec>,
    /// The GOAP action that models this verb's preconditions and effects, if any. A verb
    /// without one (such as `Say`) is never rejected by GOAP verification.
    #[serde(default)]
    pub goap: Option<String>,
    /// A few words for the prompt's action list.
    #[serde(default)]
    pub describe: String,
}

impl VerbSpec {
    /// Whether every argument has at least one allowed value in `snapshot`.
    pub fn is_available(&self, snapshot: &WorldSnapshot) -> bool {
        self.args
            .iter()
            .all(|a| !a.kind.domain(snapshot).is_empty())
    }

    /// The verb's signature for prompts: `Attack(target: enemy id)`.
    pub fn signature(&self) -> String {
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| format!("{}: {}", a.name, a.kind.describe()))
            .collect();
        format!("{}({})", self.name, args.join(", "))
    }
}

/// The verbs plans may use. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRegistry {
    /// The verb used when nothing else can be planned; it must take no arguments.
    pub idle: String,
    /// The verbs, in the order prompts and grammars list them.
    pub verbs: Vec<VerbSpec>,
}

impl ActionRegistry {
    /// Parses a registry from RON and checks it. `origin` names the text in errors.
    pub fn from_ron(text: &str, origin: &str) -> Result<Self, LoadError> {
        let registry: ActionRegistry = parse_ron(text, origin)?;
        registry.check().map_err(|message| LoadError::Invalid {
            origin: origin.to_owned(),
            message,
        })?;
        Ok(registry)
    }

    /// Reads, parses and checks a registry file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        load_with(path, Self::from_ron)
    }

    fn check(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        for verb in &self.verbs {
            if !is_identifier(&verb.name) {
                return Err(format!(
                    "verb name `{}` must be a letter followed by letters, digits or _",
                    verb.name
                ));
            }
            if !names.insert(verb.name.as_str()) {
                return Err(format!("verb `{}` is declared twice", verb.name));
            }
            let mut args = BTreeSet::new();
            for arg in &verb.args {
                if !is_identifier(&arg.name) || arg.name == "act" {
                    return Err(format!(
                        "verb `{}`: argument name `{}` is not allowed",
                        verb.name, arg.name
                    ));
                }
                if !args.insert(arg.name.as_str()) {
                    return Err(format!(
                        "verb `{}`: argument `{}` is declared twice",
                        verb.name, arg.name
                    ));
                }
                match &arg.kind {
                    ArgKind::Int { min, max } if min > max => {
                        return Err(format!(
                            "verb `{}`: argument `{}` has min > max",
                            verb.name, arg.name
                        ));
                    }
                    ArgKind::Text { max_chars: 0 } => {
                        return Err(format!(
                            "verb `{}`: argument `{}` allows no text",
                            verb.name, arg.name
                        ));
                    }
                    _ => {}
                }
            }
        }
        match self.verb(&self.idle) {
            Some(v) if v.args.is_empty() => Ok(()),
            Some(_) => Err(format!(
                "the idle verb `{}` must take no arguments",
                self.idle
            )),
            None => Err(format!("the idle verb `{}` is not declared", self.idle)),
        }
    }

    /// The verb called `name`.
    pub fn verb(&self, name: &str) -> Option<&VerbSpec> {
        self.verbs.iter().find(|v| v.name == name)
    }

    /// The verbs `snapshot` leaves available (every argument has a value), in registry order.
    pub fn available<'a>(
        &'a self,
        snapshot: &'a WorldSnapshot,
    ) -> impl Iterator<Item = &'a VerbSpec> + 'a {
        self.verbs.iter().filter(move |v| v.is_available(snapshot))
    }

    /// The idle step, the answer of last resort.
    pub fn idle_step(&self) -> PlanStep {
        PlanStep::new(self.idle.clone())
    }

    /// Checks one step against the registry and `snapshot`.
    pub fn validate_step(
        &self,
        step: &PlanStep,
        snapshot: &WorldSnapshot,
    ) -> Result<(), StepError> {
        let verb = self
            .verb(&step.verb)
            .ok_or_else(|| StepError::UnknownVerb {
                verb: step.verb.clone(),
            })?;
        for (name, _) in &step.args {
            if !verb.args.iter().any(|a| a.name == *name) {
                return Err(StepError::UnexpectedArg {
                    verb: verb.name.clone(),
                    arg: name.clone(),
                });
            }
        }
        for spec in &verb.args {
            let value = step.arg(&spec.name).ok_or_else(|| StepError::MissingArg {
                verb: verb.name.clone(),
                arg: spec.name.clone(),
            })?;
            check_arg(&verb.name, spec, value, snapshot)?;
        }
        Ok(())
    }

    /// Checks every step; the error names the first step that fails.
    pub fn validate_plan(
        &self,
        steps: &[PlanStep],
        snapshot: &WorldSnapshot,
    ) -> Result<(), PlanError> {
        for (index, step) in steps.iter().enumerate() {
            self.validate_step(step, snapshot)
                .map_err(|error| PlanError { index, error })?;
        }
        Ok(())
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_arg(
    verb: &str,
    spec: &ArgSpec,
    value: &ArgValue,
    snapshot: &WorldSnapshot,
) -> Result<(), StepError> {
    let wrong_type = |expected: &'static str| StepError::WrongType {
        verb: verb.to_owned(),
        arg: spec.name.clone(),
        expected,
        found: value.clone(),
    };
    match (&spec.kind, value) {
        (ArgKind::Entity { set }, ArgValue::Int(n)) => {
            // Looked up within the set, as `ArgKind::domain` lists the grammar's ids: an id that
            // another set also uses (an ally listed first) must not hide the enemy.
            let known = value
                .as_entity()
                .is_some_and(|id| snapshot.entities_in(set).any(|e| e.id == id));
            if known {
                Ok(())
            } else {
                Err(StepError::UnknownTarget {
                    verb: verb.to_owned(),
                    arg: spec.name.clone(),
                    set: set.clone(),
                    id: *n,
                })
            }
        }
        (ArgKind::Entity { .. }, _) => Err(wrong_type("an entity id")),
        (ArgKind::Point { set }, ArgValue::Point(p)) => {
            if snapshot.points_in(set).any(|q| q == *p) {
                Ok(())
            } else {
                Err(StepError::UnknownPoint {
                    verb: verb.to_owned(),
                    arg: spec.name.clone(),
                    set: set.clone(),
                    point: *p,
                })
            }
        }
        (ArgKind::Cell, ArgValue::Point(p)) => match snapshot.bounds {
            Some(b) if b.contains(*p) => Ok(()),
            _ => Err(StepError::OutOfBounds {
                verb: verb.to_owned(),
                arg: spec.name.clone(),
                point: *p,
            }),
        },
        (ArgKind::Point { .. } | ArgKind::Cell, _) => Err(wrong_type("a point [x,y]")),
        (ArgKind::Int { min, max }, ArgValue::Int(n)) => {
            if (*min..=*max).contains(n) {
                Ok(())
            } else {
                Err(StepError::OutOfRange {
                    verb: verb.to_owned(),
                    arg: spec.name.clone(),
                    value: *n,
                    min: *min,
                    max: *max,
                })
            }
        }
        (ArgKind::Int { .. }, _) => Err(wrong_type("an integer")),
        (ArgKind::Text { max_chars }, ArgValue::Text(t)) => {
            let chars = t.chars().count();
            if chars <= *max_chars {
                Ok(())
            } else {
                Err(StepError::TextTooLong {
                    verb: verb.to_owned(),
                    arg: spec.name.clone(),
                    chars,
                    max_chars: *max_chars,
                })
            }
        }
        (ArgKind::Text { .. }, _) => Err(wrong_type("text")),
    }
}

/// Why one step is not valid in a situation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The verb is not in the registry.
    #[error("unknown verb `{verb}`")]
    UnknownVerb {
        /// The verb as written.
        verb: String,
    },
    /// A declared argument is missing.
    #[error("`{verb}` needs `{arg}`")]
    MissingArg {
        /// The verb.
        verb: String,
        /// The missing argument.
        arg: String,
    },
    /// An argument the verb does not declare.
    #[error("`{verb}` takes no argument `{arg}`")]
    UnexpectedArg {
        /// The verb.
        verb: String,
        /// The argument as written.
        arg: String,
    },
    /// An argument of the wrong shape.
    #[error("`{verb}`: `{arg}` should be {expected}, found {found}")]
    WrongType {
        /// The verb.
        verb: String,
        /// The argument.
        arg: String,
        /// What the registry expects.
        expected: &'static str,
        /// What was written.
        found: ArgValue,
    },
    /// A target that is not in the snapshot's set.
    #[error("`{verb}`: `{arg}` = {id} is not a known {set}")]
    UnknownTarget {
        /// The verb.
        verb: String,
        /// The argument.
        arg: String,
        /// The set the target must belong to.
        set: String,
        /// The id as written.
        id: i64,
    },
    /// A point that is not in the snapshot's set.
    #[error("`{verb}`: `{arg}` = {point} is not a listed {set} point")]
    UnknownPoint {
        /// The verb.
        verb: String,
        /// The argument.
        arg: String,
        /// The set the point must belong to.
        set: String,
        /// The point as written.
        point: Point,
    },
    /// A cell outside the snapshot's bounds (or a snapshot with no bounds).
    #[error("`{verb}`: `{arg}` = {point} is outside the area")]
    OutOfBounds {
        /// The verb.
        verb: String,
        /// The argument.
        arg: String,
        /// The point as written.
        point: Point,
    },
    /// An integer out of its range.
    #[error("`{verb}`: `{arg}` = {value} is outside {min}..={max}")]
    OutOfRange {
        /// The verb.
        verb: String,
        /// The argument.
        arg: String,
        /// The value as written.
        value: i64,
        /// The smallest allowed value.
        min: i64,
        /// The largest allowed value.
        max: i64,
    },
    /// Text longer than allowed.
    #[error("`{verb}`: `{arg}` has {chars} characters, more than {max_chars}")]
    TextTooLong {
        /// The verb.
        verb: String,
        /// The argument.
        arg: String,
        /// How many characters were written.
        chars: usize,
        /// The most allowed.
        max_chars: usize,
    },
}

/// The first invalid step of a plan.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("step {index}: {error}")]
pub struct PlanError {
    /// The index of the step, from zero.
    pub index: usize,
    /// What is wrong with it.
    pub error: StepError,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::snapshot::{AgentId, EntityInfo, Health};

    pub(crate) const ARENA_ACTIONS: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/actions.ron");

    pub(crate) fn arena_registry() -> ActionRegistry {
        ActionRegistry::load(Path::new(ARENA_ACTIONS)).unwrap()
    }

    pub(crate) fn flanking_guard() -> WorldSnapshot {
        WorldSnapshot::new(AgentId(3), Point::new(4, 5))
            .with_health(Health::new(40, 100))
            .with_bounds(Bounds::grid(20, 14))
            .with_fact("ammo", 2)
            .with_entity(EntityInfo::new(EntityId(7), "enemy", Point::new(10, 2)))
            .with_entity(EntityInfo::new(EntityId(9), "enemy", Point::new(12, 8)))
            .with_entity(EntityInfo::new(EntityId(4), "ally", Point::new(3, 3)))
            .with_point("cover", Point::new(3, 4))
            .with_point("cover", Point::new(10, 2))
    }

    fn step(verb: &str) -> PlanStep {
        PlanStep::new(verb)
    }

    #[test]
    fn a_sensible_plan_validates() {
        let plan = [
            step("TakeCover").with_arg("at", ArgValue::Point(Point::new(3, 4))),
            step("Attack").with_arg("target", ArgValue::Int(7)),
            step("MoveTo").with_arg("to", ArgValue::Point(Point::new(19, 13))),
            step("Say").with_arg("text", ArgValue::Text("Hold the line!".into())),
        ];
        assert_eq!(
            arena_registry().validate_plan(&plan, &flanking_guard()),
            Ok(())
        );
    }

    #[test]
    fn each_kind_of_mistake_gets_its_own_error() {
        let registry = arena_registry();
        let snapshot = flanking_guard();
        let check = |s: PlanStep| registry.validate_step(&s, &snapshot).unwrap_err();

        assert!(matches!(
            check(step("Dance")),
            StepError::UnknownVerb { .. }
        ));
        assert!(matches!(
            check(step("Attack")),
            StepError::MissingArg { .. }
        ));
        // An ally is an entity, but not an enemy.
        assert!(matches!(
            check(step("Attack").with_arg("target", ArgValue::Int(4))),
            StepError::UnknownTarget { id: 4, .. }
        ));
        assert!(matches!(
            check(step("Attack").with_arg("target", ArgValue::Int(-7))),
            StepError::UnknownTarget { .. }
        ));
        assert!(matches!(
            check(step("TakeCover").with_arg("at", ArgValue::Point(Point::new(5, 5)))),
            StepError::UnknownPoint { .. }
        ));
        assert!(matches!(
            check(step("MoveTo").with_arg("to", ArgValue::Point(Point::new(20, 0)))),
            StepError::OutOfBounds { .. }
        ));
        assert!(matches!(
            check(step("MoveTo").with_arg("to", ArgValue::Int(3))),
            StepError::WrongType { .. }
        ));
        assert!(matches!(
            check(step("Reload").with_arg("ammo", ArgValue::Int(3))),
            StepError::UnexpectedArg { .. }
        ));
        assert!(matches!(
            check(step("Say").with_arg("text", ArgValue::Text("x".repeat(500)))),
            StepError::TextTooLong { .. }
        ));
    }

    #[test]
    fn a_target_the_grammar_offers_validates_when_another_set_shares_its_id() {
        // Ally 7 comes first in the snapshot; the grammar still offers enemy 7 to `Attack`, so
        // validation must accept it rather than find the ally and call the target unknown.
        let mut snapshot = flanking_guard();
        snapshot
            .entities
            .insert(0, EntityInfo::new(EntityId(7), "ally", Point::new(5, 5)));
        let registry = arena_registry();
        let attack = step("Attack").with_arg("target", ArgValue::Int(7));
        let target = &registry.verb("Attack").unwrap().args[0];
        let ArgDomain::Entities(offered) = target.kind.domain(&snapshot) else {
            panic!("an entity argument offers entities");
        };
        assert!(offered.contains(&EntityId(7)));
        assert_eq!(registry.validate_step(&attack, &snapshot), Ok(()));
        // The ally alone is still no target.
        snapshot.entities.retain(|e| e.set != "enemy");
        assert!(matches!(
            registry.validate_step(&attack, &snapshot),
            Err(StepError::UnknownTarget { id: 7, .. })
        ));
    }

    #[test]
    fn plan_errors_name_the_first_bad_step() {
        let plan = [step("Reload"), step("Dance"), step("Fly")];
        let err = arena_registry()
            .validate_plan(&plan, &flanking_guard())
            .unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.to_string().starts_with("step 1: unknown verb `Dance`"));
    }

    #[test]
    fn verbs_with_nothing_to_act_on_are_unavailable() {
        let registry = arena_registry();
        let alone = WorldSnapshot::new(AgentId(1), Point::new(0, 0));
        let verbs: Vec<&str> = registry
            .available(&alone)
            .map(|v| v.name.as_str())
            .collect();
        assert!(
            !verbs.contains(&"Attack")
                && !verbs.contains(&"TakeCover")
                && !verbs.contains(&"MoveTo")
        );
        assert!(verbs.contains(&"Reload") && verbs.contains(&registry.idle.as_str()));
    }

    #[test]
    fn domains_are_sorted_and_deduplicated() {
        let snapshot = flanking_guard().with_point("cover", Point::new(3, 4));
        let kind = ArgKind::Point {
            set: "cover".into(),
        };
        assert_eq!(
            kind.domain(&snapshot),
            ArgDomain::Points(vec![Point::new(3, 4), Point::new(10, 2)])
        );
        let kind = ArgKind::Entity {
            set: "enemy".into(),
        };
        assert_eq!(
            kind.domain(&snapshot),
            ArgDomain::Entities(vec![EntityId(7), EntityId(9)])
        );
    }

    #[test]
    fn inconsistent_registries_are_rejected_with_the_verb_named() {
        let dup = r#"(idle: "Wait", verbs: [(name: "Wait"), (name: "Wait")])"#;
        let err = ActionRegistry::from_ron(dup, "dup.ron").unwrap_err();
        assert!(
            err.to_string().contains("`Wait` is declared twice"),
            "{err}"
        );

        let no_idle = r#"(idle: "Wait", verbs: [(name: "Reload")])"#;
        assert!(
            ActionRegistry::from_ron(no_idle, "x.ron")
                .unwrap_err()
                .to_string()
                .contains("idle")
        );

        let bad_range = r#"(idle: "Wait", verbs: [(name: "Wait"), (name: "Aim", args: [(name: "deg", kind: Int(min: 5, max: 1))])])"#;
        assert!(
            ActionRegistry::from_ron(bad_range, "x.ron")
                .unwrap_err()
                .to_string()
                .contains("min > max")
        );

        let syntax = "(idle: \"Wait\",\n verbs: [(name: Wait)])";
        let err = ActionRegistry::from_ron(syntax, "syntax.ron").unwrap_err();
        assert!(err.to_string().starts_with("syntax.ron:2:"), "{err}");
    }
}
