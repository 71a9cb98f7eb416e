//! Snapshot rendering, `fit_to_budget` and the prompts and grammars built from snapshots, on
//! hostile strings, extreme coordinates and budgets from 0 to `usize::MAX`.
//!
//! Checked, as `WorldSnapshot::fit_to_budget` documents: no panic; the fitted snapshot keeps
//! the agent's own line and facts and only drops entities and points; it fits the budget unless
//! everything droppable is gone; every set keeps its nearest member until nothing else is left
//! to drop; fitting is idempotent and an unlimited budget changes nothing. Untrusted text never
//! reaches a prompt unescaped: no line break, quote or template delimiter from a name or fact.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use hivemind_core::config::IntentStyle;
use hivemind_core::grammar::{Grammar, GrammarAgent, GrammarLimits};
use hivemind_core::plan::OutputFormat;
use hivemind_core::snapshot::{
    AgentId, Bounds, EntityId, EntityInfo, Fact, Health, Point, WorldSnapshot, estimate_tokens,
};
use hivemind_fuzz::registry;
use libfuzzer_sys::fuzz_target;

const SETS: [&str; 4] = ["enemy", "cover", "ally", "objective"];

#[derive(Arbitrary, Debug)]
enum Set {
    Known(u8),
    Other(String),
}

impl Set {
    fn name(&self) -> String {
        match self {
            Set::Known(i) => SETS[usize::from(*i) % SETS.len()].to_owned(),
            Set::Other(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Coord {
    Near(i8),
    Any(i32),
}

impl Coord {
    fn get(&self) -> i32 {
        match self {
            Coord::Near(v) => i32::from(*v),
            Coord::Any(v) => *v,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum FactValue {
    Bool(bool),
    Int(i64),
    Text(String),
}

#[derive(Arbitrary, Debug)]
struct Entity {
    id: u32,
    set: Set,
    x: Coord,
    y: Coord,
    health: Option<(u32, u32)>,
    name: Option<String>,
    facts: Vec<(String, FactValue)>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    agent: u32,
    x: Coord,
    y: Coord,
    health: (u32, u32),
    bounds: Option<(Coord, Coord, Coord, Coord)>,
    facts: Vec<(String, FactValue)>,
    entities: Vec<Entity>,
    points: Vec<(Set, Coord, Coord)>,
    budgets: Vec<u16>,
    /// More snapshots' agent ids for the batch grammar (duplicates included).
    batch: Vec<u8>,
}

fn facts(list: &[(String, FactValue)]) -> BTreeMap<String, Fact> {
    list.iter()
        .map(|(k, v)| {
            let fact = match v {
                FactValue::Bool(b) => Fact::Bool(*b),
                FactValue::Int(n) => Fact::Int(*n),
                FactValue::Text(t) => Fact::Text(t.clone()),
            };
            (k.clone(), fact)
        })
        .collect()
}

fn build(input: &Input) -> WorldSnapshot {
    let mut snapshot = WorldSnapshot::new(
        AgentId(input.agent),
        Point::new(input.x.get(), input.y.get()),
    )
    .with_health(Health::new(input.health.0, input.health.1));
    if let Some((x0, y0, x1, y1)) = &input.bounds {
        snapshot = snapshot.with_bounds(Bounds {
            min: Point::new(x0.get(), y0.get()),
            max: Point::new(x1.get(), y1.get()),
        });
    }
    snapshot.facts = facts(&input.facts);
    // `fit_to_budget` renders once per dropped item: keep the worst case to milliseconds.
    for e in input.entities.iter().take(48) {
        let mut entity = EntityInfo::new(
            EntityId(e.id),
            e.set.name(),
            Point::new(e.x.get(), e.y.get()),
        );
        entity.health = e.health.map(|(current, max)| Health::new(current, max));
        entity.name.clone_from(&e.name);
        entity.facts = facts(&e.facts);
        snapshot = snapshot.with_entity(entity);
    }
    for (set, x, y) in input.points.iter().take(48) {
        snapshot = snapshot.with_point(set.name(), Point::new(x.get(), y.get()));
    }
    snapshot
}

/// Text a player may have written must come out escaped: no line break of its own, no quote,
/// no chat-template delimiter.
fn check_escaped(snapshot: &WorldSnapshot, rendered: &str) {
    let lines = 1
        + snapshot
            .entities
            .iter()
            .map(|e| &e.set)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
        + snapshot
            .points
            .iter()
            .map(|p| &p.set)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
    assert!(
        rendered.lines().count() <= lines,
        "untrusted text broke a line: {rendered:?}"
    );
    for forbidden in ["<|", "|>", "[INST]", "<end_of_turn>"] {
        assert!(
            !rendered.contains(forbidden),
            "{forbidden:?} in {rendered:?}"
        );
    }
}

fn check_fit(snapshot: &WorldSnapshot, budget: usize) {
    let fitted = snapshot.fit_to_budget(budget);
    assert_eq!(fitted.agent, snapshot.agent);
    assert_eq!(fitted.position, snapshot.position);
    assert_eq!(fitted.health, snapshot.health);
    assert_eq!(fitted.bounds, snapshot.bounds);
    assert_eq!(fitted.facts, snapshot.facts);
    assert!(
        fitted
            .entities
            .iter()
            .all(|e| snapshot.entities.contains(e)),
        "an entity appeared"
    );
    assert!(
        fitted.points.iter().all(|p| snapshot.points.contains(p)),
        "a point appeared"
    );
    let rendered = fitted.render();
    if estimate_tokens(&rendered) > budget {
        assert!(
            fitted.entities.is_empty() && fitted.points.is_empty(),
            "over budget with something left to drop"
        );
    }
    // A set loses its last member only once every set is down to one.
    let members = |s: &WorldSnapshot| {
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        let sets = s.entities.iter().map(|e| &e.set);
        for set in sets.chain(s.points.iter().map(|p| &p.set)) {
            *count.entry(set.clone()).or_default() += 1;
        }
        count
    };
    let (before, after) = (members(snapshot), members(&fitted));
    if after.len() < before.len() {
        assert!(
            after.values().all(|&n| n == 1),
            "a set vanished while others had spares: {after:?}"
        );
    }
    assert_eq!(
        fitted.fit_to_budget(budget),
        fitted,
        "fitting twice drops more"
    );
}

fuzz_target!(|input: Input| {
    let snapshot = build(&input);
    let rendered = snapshot.render();
    check_escaped(&snapshot, &rendered);
    check_escaped(&snapshot, &snapshot.render_brief());
    let own = snapshot.render_self();
    assert!(!own.contains('\n'), "the agent's own line broke: {own:?}");
    let keys: Vec<String> = input.facts.iter().take(2).map(|(k, _)| k.clone()).collect();
    let _ = snapshot.render_self_with(Some(&keys));
    let _ = estimate_tokens(&rendered);

    assert_eq!(
        snapshot.fit_to_budget(usize::MAX),
        snapshot,
        "an unlimited budget dropped something"
    );
    check_fit(&snapshot, 0);
    for budget in input.budgets.iter().take(3) {
        check_fit(&snapshot, usize::from(*budget));
    }

    // The batch grammar from this snapshot and copies under other (or the same) agent ids.
    let mut snapshots = vec![snapshot.clone()];
    for id in input.batch.iter().take(3) {
        let mut other = snapshot.clone();
        other.agent = AgentId(u32::from(*id));
        snapshots.push(other);
    }
    let agents: Vec<GrammarAgent<'_>> = snapshots
        .iter()
        .map(|s| GrammarAgent::new(s).with_options(3))
        .collect();
    for format in [
        OutputFormat::FreePlan,
        OutputFormat::Guided,
        OutputFormat::Line,
    ] {
        for intents in [IntentStyle::Name, IntentStyle::Number] {
            let limits = GrammarLimits {
                intents,
                ..GrammarLimits::default()
            };
            let _ = Grammar::build(format, registry(), &agents, limits);
        }
    }
});
