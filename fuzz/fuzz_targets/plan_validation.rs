//! Plan validation against the shipped action registry, and GOAP verification, repair and
//! planning against the shipped domain, on arbitrary steps, names and situations.
//!
//! Checked: no panic; `validate_plan` fails exactly at the first step `validate_step` rejects;
//! a step validates exactly when every argument lies inside the domain `ArgKind::domain` gives
//! the grammar (so its verb counts as available); valid steps written as JSON parse back to the
//! same steps; `verify_names` fails at the first unknown or inapplicable step and at no other;
//! plans and repairs the planner returns verify and reach their goal.
#![no_main]

use arbitrary::Arbitrary;
use hivemind_core::action::{ArgDomain, ArgKind};
use hivemind_core::goap::{self, Domain, Planner, State, VerifyError};
use hivemind_core::plan::{ArgValue, OutputFormat, PlanStep};
use hivemind_core::snapshot::{AgentId, Bounds, EntityId, EntityInfo, Point, WorldSnapshot};
use hivemind_core::stream::{StreamEvent, StreamParser};
use hivemind_fuzz::{domain, registry};
use libfuzzer_sys::fuzz_target;

const SETS: [&str; 5] = ["enemy", "cover", "ally", "objective", ""];
const ARG_NAMES: [&str; 6] = ["target", "at", "to", "text", "act", "agent"];

/// A name from a list the target knows, or any text.
#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Other(String),
}

impl Name {
    fn pick<'a>(&'a self, known: &[&'a str]) -> &'a str {
        match self {
            Name::Known(i) if !known.is_empty() => known[usize::from(*i) % known.len()],
            Name::Known(_) => "",
            Name::Other(text) => text,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Value {
    Int(i64),
    Id(u8),
    Near(i8, i8),
    Far(i32, i32),
    Text(String),
}

impl Value {
    fn to_arg(&self) -> ArgValue {
        match self {
            Value::Int(n) => ArgValue::Int(*n),
            Value::Id(n) => ArgValue::Int(i64::from(*n)),
            Value::Near(x, y) => ArgValue::Point(Point::new(i32::from(*x), i32::from(*y))),
            Value::Far(x, y) => ArgValue::Point(Point::new(*x, *y)),
            Value::Text(t) => ArgValue::Text(t.clone()),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Step {
    verb: Name,
    args: Vec<(Name, Value)>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    agent: u8,
    position: (i8, i8),
    bounds: Option<(i8, i8, i8, i8)>,
    entities: Vec<(u8, Name, i8, i8)>,
    points: Vec<(Name, i8, i8)>,
    steps: Vec<Step>,
    /// GOAP facts of the start state, by name.
    facts: Vec<(Name, i32)>,
    /// GOAP action names mixed into the verbs' own.
    names: Vec<(u8, Name)>,
    goal: u8,
}

fn snapshot(input: &Input) -> WorldSnapshot {
    let at = |x: i8, y: i8| Point::new(i32::from(x), i32::from(y));
    let mut snapshot = WorldSnapshot::new(
        AgentId(u32::from(input.agent)),
        at(input.position.0, input.position.1),
    );
    if let Some((x0, y0, x1, y1)) = input.bounds {
        snapshot = snapshot.with_bounds(Bounds {
            min: at(x0, y0),
            max: at(x1, y1),
        });
    }
    for (id, set, x, y) in &input.entities {
        snapshot = snapshot.with_entity(EntityInfo::new(
            EntityId(u32::from(*id)),
            set.pick(&SETS),
            at(*x, *y),
        ));
    }
    for (set, x, y) in &input.points {
        snapshot = snapshot.with_point(set.pick(&SETS), at(*x, *y));
    }
    snapshot
}

fn plan_steps(input: &Input) -> Vec<PlanStep> {
    let verbs: Vec<&str> = registry().verbs.iter().map(|v| v.name.as_str()).collect();
    input
        .steps
        .iter()
        .map(|s| {
            let mut step = PlanStep::new(s.verb.pick(&verbs));
            for (name, value) in &s.args {
                step.insert_arg(name.pick(&ARG_NAMES), value.to_arg());
            }
            step
        })
        .collect()
}

/// Whether `value` is one of the values `domain` allows.
fn allows(domain: &ArgDomain, value: &ArgValue) -> bool {
    match (domain, value) {
        (ArgDomain::Entities(ids), v) => v.as_entity().is_some_and(|id| ids.contains(&id)),
        (ArgDomain::Points(points), ArgValue::Point(p)) => points.contains(p),
        (ArgDomain::Cells(bounds), ArgValue::Point(p)) => bounds.contains(*p),
        (ArgDomain::Ints { min, max }, ArgValue::Int(n)) => (min..=max).contains(&n),
        (ArgDomain::Text { max_chars }, ArgValue::Text(t)) => t.chars().count() <= *max_chars,
        _ => false,
    }
}

fn check_validation(steps: &[PlanStep], snapshot: &WorldSnapshot) -> Vec<PlanStep> {
    let registry = registry();
    let first_bad = steps
        .iter()
        .enumerate()
        .find_map(|(i, s)| registry.validate_step(s, snapshot).err().map(|e| (i, e)));
    match (registry.validate_plan(steps, snapshot), first_bad) {
        (Ok(()), None) => {}
        (Err(e), Some((index, error))) => {
            assert_eq!(e.index, index, "validate_plan names another step");
            assert_eq!(e.error, error);
        }
        (plan, step) => panic!("validate_plan {plan:?} disagrees with validate_step {step:?}"),
    }

    let mut valid = Vec::new();
    for step in steps {
        // What the grammar allows (every argument in its domain, nothing else) validates.
        let in_domain = registry.verb(&step.verb).is_some_and(|verb| {
            step.args
                .iter()
                .all(|(name, _)| verb.args.iter().any(|a| a.name == *name))
                && verb.args.iter().all(|spec| {
                    step.arg(&spec.name)
                        .is_some_and(|value| allows(&spec.kind.domain(snapshot), value))
                })
        });
        let validated = registry.validate_step(step, snapshot);
        if in_domain {
            assert_eq!(
                validated,
                Ok(()),
                "{step} lies in its grammar's domain but is refused"
            );
        }
        if validated.is_err() {
            continue;
        }
        let Some(verb) = registry.verb(&step.verb) else {
            panic!("a step of unknown verb {} validated", step.verb);
        };
        for spec in &verb.args {
            let value = step
                .arg(&spec.name)
                .unwrap_or_else(|| panic!("{step} validated without {}", spec.name));
            let allowed = spec.kind.domain(snapshot);
            assert!(
                allows(&allowed, value),
                "{step}: {value:?} validated but lies outside {allowed:?}"
            );
            if matches!(spec.kind, ArgKind::Cell) {
                assert!(snapshot.bounds.is_some_and(|b| !b.is_empty()));
            }
        }
        assert!(
            verb.is_available(snapshot),
            "{step} validated but {} is unavailable",
            verb.name
        );
        valid.push(step.clone());
    }
    valid
}

/// Valid steps, written the way a model writes them, parse back to themselves.
fn check_round_trip(agent: AgentId, steps: &[PlanStep]) {
    if steps.is_empty() {
        return;
    }
    let mut json = format!("{{\"agent\":{agent},\"steps\":[");
    for (i, step) in steps.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        step.write_json(&mut json);
    }
    json.push_str("]}");
    let mut parser = StreamParser::new(OutputFormat::FreePlan);
    let mut events = Vec::new();
    let result = parser
        .feed(json.as_bytes(), &mut events)
        .and_then(|()| parser.finish(&mut events));
    assert_eq!(result, Ok(()), "valid steps did not parse: {json}");
    let mut expected: Vec<StreamEvent> = steps
        .iter()
        .enumerate()
        .map(|(index, step)| StreamEvent::Step {
            agent,
            index,
            step: step.clone(),
        })
        .collect();
    expected.push(StreamEvent::Done { agent });
    assert_eq!(events, expected, "{json}");
}

fn check_goap(domain: &Domain, start: &State, names: &[&str], goal: u8) {
    match goap::verify_names(domain, start, names) {
        Ok(end) => {
            let ids: Vec<_> = names
                .iter()
                .map(|n| domain.action(n).unwrap_or_else(|| panic!("{n} verified")))
                .collect();
            assert_eq!(goap::verify(domain, start, &ids), Ok(end));
        }
        Err(error) => {
            let index = error.index();
            assert!(index < names.len());
            assert!(
                goap::verify_names(domain, start, &names[..index]).is_ok(),
                "{error:?} is not the first failure"
            );
            match &error {
                VerifyError::UnknownAction { action, .. } => {
                    assert_eq!(action, names[index]);
                    assert!(domain.action(action).is_none());
                }
                VerifyError::Unmet { .. } => {
                    let state = goap::verify_names(domain, start, &names[..index])
                        .unwrap_or_else(|e| panic!("{e:?}"));
                    let id = domain
                        .action(names[index])
                        .unwrap_or_else(|| panic!("{} unmet but unknown", names[index]));
                    assert!(!domain.is_applicable(&state, id));
                    assert!(!error.unmet().is_empty());
                }
            }
        }
    }

    let goals: Vec<_> = domain.goals().collect();
    let Some(goal) = goals.get(usize::from(goal) % goals.len().max(1)) else {
        return;
    };
    let mut planner = Planner::default();
    let depth = planner.limits().max_depth;
    if let Ok(plan) = planner.plan(domain, start, goal) {
        assert!(plan.actions.len() <= depth);
        let end = goap::verify(domain, start, &plan.actions)
            .unwrap_or_else(|e| panic!("a found plan fails: {e:?}"));
        assert!(goal.is_met(&end), "a found plan misses its goal");
    }
    if let Ok(repair) = planner.repair_names(domain, start, names, goal) {
        assert!(repair.kept <= names.len());
        assert_eq!(repair.failure.is_none(), repair.kept == names.len());
        for (id, name) in repair.actions.iter().zip(&names[..repair.kept]) {
            assert_eq!(domain.action_name(*id), Some(*name), "a kept step changed");
        }
        let end = goap::verify(domain, start, &repair.actions)
            .unwrap_or_else(|e| panic!("a repair fails: {e:?}"));
        assert!(goal.is_met(&end), "a repair misses its goal");
    }
}

fuzz_target!(|input: Input| {
    let snapshot = snapshot(&input);
    let steps = plan_steps(&input);
    let valid = check_validation(&steps, &snapshot);
    check_round_trip(snapshot.agent, &valid);

    let domain = domain();
    let facts: Vec<&str> = domain.facts().map(|(_, name)| name).collect();
    let actions: Vec<&str> = domain.actions().map(|(_, a)| a.name()).collect();
    let mut start = domain.empty_state();
    for (fact, value) in &input.facts {
        // An unknown fact is an error the caller sees; it must not panic.
        let _ = start.set(domain, fact.pick(&facts), *value);
    }
    // The verbs' own GOAP names, as the arena verifies a model's plan, then the extra names.
    let mut names: Vec<&str> = steps
        .iter()
        .filter_map(|s| registry().verb(&s.verb).and_then(|v| v.goap.as_deref()))
        .collect();
    for (at, name) in &input.names {
        let at = usize::from(*at) % (names.len() + 1);
        names.insert(at, name.pick(&actions));
    }
    check_goap(domain, &start, &names, input.goal);
});
