//! Plans, their steps, and where an answer came from.
//!
//! A [`Plan`] is what an agent acts on: an ordered list of [`PlanStep`]s, each a verb from the
//! [`ActionRegistry`](crate::action::ActionRegistry) with named arguments. Every plan carries its
//! [`PlanSource`], and a plan that stands in for a model's answer carries the
//! [`FallbackReason`] too, so the game never has to ask how an answer was produced.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::snapshot::{AgentId, EntityId, Point};

/// What an agent asks for. Each kind has its own deadline (see [`Deadlines`](crate::config::Deadlines)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub enum RequestKind {
    /// A short remark. Never waits for a model: it comes from templates or from model-written
    /// lines cached in idle time. The deadline covers the whole line.
    Banter,
    /// A line spoken to the player. The deadline covers the first words; the rest streams.
    Dialogue,
    /// A plan of action. The deadline covers the first step; the rest streams.
    Plan,
}

impl RequestKind {
    /// Every kind, in declaration order.
    pub const ALL: [RequestKind; 3] = [
        RequestKind::Banter,
        RequestKind::Dialogue,
        RequestKind::Plan,
    ];

    /// The lower-case name used in config, on the command line and in the console.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Banter => "banter",
            RequestKind::Dialogue => "dialogue",
            RequestKind::Plan => "plan",
        }
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shape of what a model writes. Each has a grammar ([`crate::grammar`]) and is read by the
/// same stream parser ([`crate::stream`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub enum OutputFormat {
    /// `{"agent":ID,"steps":[{"act":VERB,...args},...]}`
    FreePlan,
    /// `{"agent":ID,"intent":K,"say":"..."}`: one of the candidate intents listed in the prompt.
    Guided,
    /// `{"agent":ID,"say":"..."}`, for dialogue and banter.
    Line,
}

/// The name of a backend, used in config, CLI flags, metrics, transcripts and the console.
///
/// Each factory declares one (`scripted`, `replay`, `local`, …), and a game can give a backend
/// another ([`BackendFactoryExt::with_id`](crate::backend::BackendFactoryExt::with_id)). Cheap
/// to clone (a shared string). Names are compared as text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "reflect",
    derive(bevy_reflect::Reflect),
    reflect(opaque, Debug, PartialEq, Hash, Clone)
)]
pub struct BackendId(Arc<str>);

impl Serialize for BackendId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BackendId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(BackendId::from)
    }
}

impl BackendId {
    /// The scripted backend's default name.
    pub const SCRIPTED: &'static str = "scripted";
    /// The replay backend's default name.
    pub const REPLAY: &'static str = "replay";
    /// The in-process llama.cpp backend's default name.
    pub const LOCAL: &'static str = "local";
    /// The remote backend's default name (`hivemind_remote`).
    pub const REMOTE: &'static str = "remote";
    /// The router's name.
    pub const ROUTER: &'static str = "router";

    /// A backend named `name`.
    pub fn new(name: impl AsRef<str>) -> Self {
        BackendId(Arc::from(name.as_ref()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for BackendId {
    fn from(name: &str) -> Self {
        BackendId::new(name)
    }
}

impl From<String> for BackendId {
    fn from(name: String) -> Self {
        BackendId(Arc::from(name))
    }
}

impl PartialEq<str> for BackendId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for BackendId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl std::borrow::Borrow<str> for BackendId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Where an answer came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub enum PlanSource {
    /// A language model wrote it.
    Llm {
        /// The backend that answered.
        backend: BackendId,
        /// GOAP replaced the steps from the first one that failed verification onward.
        repaired: bool,
    },
    /// A cached, situation-relative answer re-bound to the current snapshot.
    Cache,
    /// The GOAP planner.
    Goap,
    /// A dialogue template.
    Template,
}

impl PlanSource {
    /// A short label for HUDs and logs: `llm`, `llm+repair`, `cache`, `goap` or `template`.
    pub fn label(&self) -> &'static str {
        match self {
            PlanSource::Llm {
                repaired: false, ..
            } => "llm",
            PlanSource::Llm { repaired: true, .. } => "llm+repair",
            PlanSource::Cache => "cache",
            PlanSource::Goap => "goap",
            PlanSource::Template => "template",
        }
    }
}

impl fmt::Display for PlanSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanSource::Llm { backend, repaired } => {
                write!(
                    f,
                    "llm({backend}{})",
                    if *repaired { ", repaired" } else { "" }
                )
            }
            other => f.write_str(other.label()),
        }
    }
}

/// Why an answer did not come (entirely) from the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub enum FallbackReason {
    /// The model had not produced the first step or words by the deadline.
    Deadline,
    /// The model's output did not parse or did not validate.
    Parse,
    /// The backend failed, including a worker that panicked.
    BackendError,
    /// The job queue was full.
    Overflow,
    /// The game or the console asked for fallback answers only.
    Forced,
    /// No model is loaded.
    NoModel,
}

impl FallbackReason {
    /// Every reason, in declaration order.
    pub const ALL: [FallbackReason; 6] = [
        FallbackReason::Deadline,
        FallbackReason::Parse,
        FallbackReason::BackendError,
        FallbackReason::Overflow,
        FallbackReason::Forced,
        FallbackReason::NoModel,
    ];

    /// The lower-case name used in logs, metrics and the console.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::Deadline => "deadline",
            FallbackReason::Parse => "parse",
            FallbackReason::BackendError => "backend_error",
            FallbackReason::Overflow => "overflow",
            FallbackReason::Forced => "forced",
            FallbackReason::NoModel => "no_model",
        }
    }
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value of one argument of a [`PlanStep`].
///
/// In the JSON that models write, an entity or integer is a number, a point is a two-element
/// array `[x,y]`, and text is a string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub enum ArgValue {
    /// An integer; also how an entity id arrives before validation binds it.
    Int(i64),
    /// A grid point.
    Point(Point),
    /// Free text, such as a line to say.
    Text(String),
}

impl ArgValue {
    /// The value as an entity id, if it is a non-negative integer that fits one.
    pub fn as_entity(&self) -> Option<EntityId> {
        match self {
            ArgValue::Int(n) => u32::try_from(*n).ok().map(EntityId),
            _ => None,
        }
    }

    /// The value as a point.
    pub fn as_point(&self) -> Option<Point> {
        match self {
            ArgValue::Point(p) => Some(*p),
            _ => None,
        }
    }

    /// The value as text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            ArgValue::Text(t) => Some(t),
            _ => None,
        }
    }

    /// Writes the value as compact JSON.
    pub fn write_json(&self, out: &mut String) {
        match self {
            ArgValue::Int(n) => out.push_str(&n.to_string()),
            ArgValue::Point(p) => out.push_str(&format!("[{},{}]", p.x, p.y)),
            ArgValue::Text(t) => out.push_str(&serde_json::Value::from(t.as_str()).to_string()),
        }
    }
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgValue::Int(n) => write!(f, "{n}"),
            ArgValue::Point(p) => write!(f, "({},{})", p.x, p.y),
            ArgValue::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// One step of a plan: a verb and its named arguments, in the order the registry declares them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct PlanStep {
    /// The verb, as named in the [`ActionRegistry`](crate::action::ActionRegistry).
    pub verb: String,
    /// The arguments by name.
    pub args: Vec<(String, ArgValue)>,
}

impl PlanStep {
    /// A step with no arguments.
    pub fn new(verb: impl Into<String>) -> Self {
        PlanStep {
            verb: verb.into(),
            args: Vec::new(),
        }
    }

    /// Adds an argument, for chaining: `PlanStep::new("Attack").with_arg("target", ArgValue::Int(7))`.
    pub fn with_arg(mut self, name: impl Into<String>, value: ArgValue) -> Self {
        self.insert_arg(name, value);
        self
    }

    /// Adds or replaces an argument in place.
    pub fn insert_arg(&mut self, name: impl Into<String>, value: ArgValue) -> &mut Self {
        let name = name.into();
        match self.args.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => *v = value,
            None => self.args.push((name, value)),
        }
        self
    }

    /// The argument called `name`.
    pub fn arg(&self, name: &str) -> Option<&ArgValue> {
        self.args.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Writes the step as the compact JSON object models write: `{"act":"Attack","target":7}`.
    pub fn write_json(&self, out: &mut String) {
        out.push_str("{\"act\":");
        out.push_str(&serde_json::Value::from(self.verb.as_str()).to_string());
        for (name, value) in &self.args {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":");
            value.write_json(out);
        }
        out.push('}');
    }

    /// The step as compact JSON.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }
}

impl fmt::Display for PlanStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.verb)?;
        if self.args.is_empty() {
            return Ok(());
        }
        f.write_str("(")?;
        for (i, (name, value)) in self.args.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name}={value}")?;
        }
        f.write_str(")")
    }
}

/// A complete answer to a plan request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct Plan {
    /// The agent the plan is for.
    pub agent: AgentId,
    /// The steps, in order.
    pub steps: Vec<PlanStep>,
    /// Where the plan came from.
    pub source: PlanSource,
    /// Why the plan did not (entirely) come from the model, if it did not.
    pub fallback: Option<FallbackReason>,
    /// A line the agent says with the plan, if the answer carried one (guided mode).
    pub say: Option<String>,
}

impl Plan {
    /// A plan from `source` with no fallback reason and no line.
    pub fn new(agent: AgentId, steps: Vec<PlanStep>, source: PlanSource) -> Self {
        Plan {
            agent,
            steps,
            source,
            fallback: None,
            say: None,
        }
    }

    /// Sets the fallback reason, for chaining.
    pub fn with_fallback(mut self, reason: FallbackReason) -> Self {
        self.fallback = Some(reason);
        self
    }

    /// Sets the spoken line, for chaining.
    pub fn with_say(mut self, say: impl Into<String>) -> Self {
        self.say = Some(say.into());
        self
    }

    /// The plan in the free-plan output format: `{"agent":ID,"steps":[...]}`.
    pub fn to_json(&self) -> String {
        let mut out = format!("{{\"agent\":{},\"steps\":[", self.agent.0);
        for (i, step) in self.steps.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            step.write_json(&mut out);
        }
        out.push_str("]}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_ids_are_their_names() {
        let id = BackendId::new("big-local");
        assert_eq!(id, "big-local");
        assert_eq!(id.to_string(), "big-local");
        assert_eq!(format!("{id:>10}"), " big-local");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"big-local\"");
        assert_eq!(serde_json::from_str::<BackendId>(&json).unwrap(), id);
        assert_ne!(BackendId::new(BackendId::LOCAL), id);
    }

    #[test]
    fn steps_write_the_compact_json_models_write() {
        let step = PlanStep::new("TakeCover").with_arg("at", ArgValue::Point(Point::new(3, -4)));
        assert_eq!(step.to_json(), r#"{"act":"TakeCover","at":[3,-4]}"#);
        let say = PlanStep::new("Say").with_arg("text", ArgValue::Text("say \"hi\"".into()));
        assert_eq!(say.to_json(), r#"{"act":"Say","text":"say \"hi\""}"#);
        let plan = Plan::new(
            AgentId(3),
            vec![PlanStep::new("Reload"), say],
            PlanSource::Goap,
        );
        assert_eq!(
            plan.to_json(),
            r#"{"agent":3,"steps":[{"act":"Reload"},{"act":"Say","text":"say \"hi\""}]}"#
        );
    }

    #[test]
    fn inserting_an_argument_twice_replaces_it() {
        let mut step = PlanStep::new("Attack");
        step.insert_arg("target", ArgValue::Int(1))
            .insert_arg("target", ArgValue::Int(2));
        assert_eq!(step.args.len(), 1);
        assert_eq!(
            step.arg("target").and_then(ArgValue::as_entity),
            Some(EntityId(2))
        );
        assert_eq!(step.to_string(), "Attack(target=2)");
    }

    #[test]
    fn negative_or_huge_integers_are_not_entities() {
        assert_eq!(ArgValue::Int(-1).as_entity(), None);
        assert_eq!(ArgValue::Int(i64::from(u32::MAX) + 1).as_entity(), None);
    }

    #[test]
    fn sources_have_stable_labels() {
        let llm = PlanSource::Llm {
            backend: BackendId::new(BackendId::LOCAL),
            repaired: true,
        };
        assert_eq!(llm.label(), "llm+repair");
        assert_eq!(llm.to_string(), "llm(local, repaired)");
        assert_eq!(PlanSource::Goap.to_string(), "goap");
    }
}
