//! GBNF grammars for the three output formats, bound to one batch.
//!
//! A grammar is generated per batch from the [`ActionRegistry`] and each agent's own snapshot:
//!
//! - the root is every agent's object in batch order, one per line, each agent id exactly once;
//! - an `Entity` argument may only be one of the ids in the agent's set (its visible enemies),
//!   a `Point` argument one of its listed points, a `Cell` argument a cell inside its bounds;
//! - a verb whose argument domain is empty in the agent's situation is left out of that agent's
//!   alternatives (no `Attack` without a visible enemy);
//! - a plan has between one and `max_steps` steps, and text has at most `max_chars` characters
//!   with no quote, backslash, control character or angle bracket, so it needs no escaping and
//!   cannot spell a chat-template delimiter.
//!
//! The JSON is compact (no white space), which keeps answers short and means the stream parser
//! sees exactly one spelling of each answer. Rules with equal bodies are shared: agents that see
//! the same targets share their `Attack` rule, and argument-free verbs appear once.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::action::{ActionRegistry, ArgDomain, VerbSpec};
use crate::config::IntentStyle;
use crate::config::ranges::{MAX_PLAN_STEPS, MAX_SAY_CHARS};
use crate::plan::OutputFormat;
use crate::prompt::IntentOption;
use crate::snapshot::{AgentId, WorldSnapshot};

/// Bounds on what a grammar allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrammarLimits {
    /// The most steps in a free plan.
    pub max_steps: usize,
    /// The most characters in a `say` string.
    pub max_say_chars: usize,
    /// How a guided answer names its choice.
    pub intents: IntentStyle,
}

impl Default for GrammarLimits {
    fn default() -> Self {
        GrammarLimits {
            intents: IntentStyle::default(),
            max_steps: 3,
            max_say_chars: 80,
        }
    }
}

/// Numeric ranges up to this many values are spelled out, so only in-range numbers can be
/// written; wider ranges fall back to a digit pattern and rely on validation.
const MAX_ENUMERATED: i64 = 512;

/// One agent of a batch, as the grammar sees it.
#[derive(Clone, Copy, Debug)]
pub struct GrammarAgent<'a> {
    /// The agent's snapshot, fitted to its budget exactly as its prompt shows it.
    pub snapshot: &'a WorldSnapshot,
    /// For the guided format: how many intents the prompt offers (numbered from 1).
    pub options: usize,
    /// For the guided format with [`IntentStyle::Name`]: the labels of the options, which the
    /// answer must name one of.
    pub labels: &'a [IntentOption],
}

impl<'a> GrammarAgent<'a> {
    /// An agent with no guided options.
    pub fn new(snapshot: &'a WorldSnapshot) -> Self {
        GrammarAgent {
            snapshot,
            options: 0,
            labels: &[],
        }
    }

    /// Sets the guided options, which a named answer picks by label, for chaining.
    pub fn with_labels(mut self, options: &'a [IntentOption]) -> Self {
        self.options = options.len();
        self.labels = options;
        self
    }

    /// Sets the number of guided options, for chaining.
    pub fn with_options(mut self, options: usize) -> Self {
        self.options = options;
        self
    }
}

/// Why a grammar could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    /// A batch must have at least one agent.
    #[error("a grammar needs at least one agent")]
    EmptyBatch,
    /// An agent id appears twice in one batch.
    #[error("agent {0} appears twice in the batch")]
    DuplicateAgent(AgentId),
    /// A guided answer needs at least one option to choose from.
    #[error("agent {0} has no options to choose from")]
    NoOptions(AgentId),
    /// Limits that allow nothing, or so much that the grammar would not fit in memory.
    #[error(
        "max_steps must lie in 1..={max_steps} and max_say_chars in 1..={max_say_chars}",
        max_steps = MAX_PLAN_STEPS,
        max_say_chars = MAX_SAY_CHARS
    )]
    LimitsOutOfRange,
}

/// The text every answer of `format` for `agent` starts with: its grammar leaves no choice
/// until after it (for a free plan, up to the first step's verb name).
///
/// A backend can decode it with the prompt, in one batched pass, instead of generating it one
/// token at a time, and report it as the first text of the stream.
pub fn answer_prefix(format: OutputFormat, agent: AgentId) -> String {
    match format {
        OutputFormat::FreePlan => format!("{{\"agent\":{agent},\"steps\":[{{\"act\":\""),
        OutputFormat::Guided => format!("{{\"agent\":{agent},\"intent\":"),
        OutputFormat::Line => format!("{{\"agent\":{agent},\"say\":\""),
    }
}

/// A generated grammar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grammar {
    /// The GBNF text; its start rule is `root`.
    pub text: String,
    /// The agents in the order their objects must appear.
    pub order: Vec<AgentId>,
}

impl Grammar {
    /// The name of the start rule.
    pub const ROOT: &'static str = "root";

    /// Builds the grammar of `format` for a batch, in batch order.
    pub fn build(
        format: OutputFormat,
        registry: &ActionRegistry,
        agents: &[GrammarAgent<'_>],
        limits: GrammarLimits,
    ) -> Result<Grammar, GrammarError> {
        if agents.is_empty() {
            return Err(GrammarError::EmptyBatch);
        }
        if !(1..=MAX_PLAN_STEPS).contains(&limits.max_steps)
            || !(1..=MAX_SAY_CHARS).contains(&limits.max_say_chars)
        {
            return Err(GrammarError::LimitsOutOfRange);
        }
        let mut order = Vec::with_capacity(agents.len());
        for a in agents {
            if order.contains(&a.snapshot.agent) {
                return Err(GrammarError::DuplicateAgent(a.snapshot.agent));
            }
            order.push(a.snapshot.agent);
        }

        let mut rules = Rules::default();
        let mut objects = Vec::with_capacity(agents.len());
        for a in agents {
            let id = a.snapshot.agent;
            let body = match format {
                OutputFormat::FreePlan => {
                    let step = step_rule(&mut rules, registry, a.snapshot);
                    let mut body =
                        format!("{} {step}", lit(&format!("{{\"agent\":{id},\"steps\":[")));
                    for _ in 1..limits.max_steps {
                        let _ = write!(body, " ({} {step})?", lit(","));
                    }
                    body.push(' ');
                    body.push_str(&lit("]}"));
                    body
                }
                OutputFormat::Guided => {
                    if a.options == 0 {
                        return Err(GrammarError::NoOptions(id));
                    }
                    let intent = match limits.intents {
                        IntentStyle::Name if a.labels.len() == a.options => rules.add(
                            "intent",
                            alternatives(a.labels.iter().map(|o| json_string(&o.label))),
                        ),
                        _ => rules.add(
                            "intent",
                            alternatives((1..=a.options).map(|n| n.to_string())),
                        ),
                    };
                    let say = say_rule(&mut rules, limits.max_say_chars);
                    format!(
                        "{} {intent} {} {say} {}",
                        lit(&format!("{{\"agent\":{id},\"intent\":")),
                        lit(",\"say\":\""),
                        lit("\"}")
                    )
                }
                OutputFormat::Line => {
                    let say = say_rule(&mut rules, limits.max_say_chars);
                    format!(
                        "{} {say} {}",
                        lit(&format!("{{\"agent\":{id},\"say\":\"")),
                        lit("\"}")
                    )
                }
            };
            objects.push(rules.add(&format!("agent-{id}"), body));
        }

        let mut text = format!(
            "{} ::= {}\n",
            Grammar::ROOT,
            objects.join(&format!(" {} ", lit("\n")))
        );
        for (name, body) in &rules.list {
            let _ = writeln!(text, "{name} ::= {body}");
        }
        Ok(Grammar { text, order })
    }
}

/// Rules in insertion order, with equal bodies shared under the first name given.
#[derive(Default)]
struct Rules {
    list: Vec<(String, String)>,
    by_body: HashMap<String, usize>,
}

impl Rules {
    fn add(&mut self, base: &str, body: String) -> String {
        if let Some(&i) = self.by_body.get(&body) {
            return self.list[i].0.clone();
        }
        let base: String = base
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let mut name = base.clone();
        let mut n = 2;
        while self.list.iter().any(|(existing, _)| *existing == name) || name == Grammar::ROOT {
            name = format!("{base}-{n}");
            n += 1;
        }
        self.by_body.insert(body.clone(), self.list.len());
        self.list.push((name.clone(), body));
        name
    }
}

fn step_rule(rules: &mut Rules, registry: &ActionRegistry, snapshot: &WorldSnapshot) -> String {
    let verbs: Vec<String> = registry
        .available(snapshot)
        .map(|verb| verb_rule(rules, verb, snapshot))
        .collect();
    rules.add("step", verbs.join(" | "))
}

fn verb_rule(rules: &mut Rules, verb: &VerbSpec, snapshot: &WorldSnapshot) -> String {
    let mut body = lit(&format!("{{\"act\":\"{}\"", verb.name));
    for arg in &verb.args {
        let _ = write!(body, " {} ", lit(&format!(",\"{}\":", arg.name)));
        match arg.kind.domain(snapshot) {
            ArgDomain::Entities(ids) => {
                let name = rules.add(
                    &format!("{}-{}", verb.name, arg.name),
                    alternatives(ids.iter().map(ToString::to_string)),
                );
                body.push_str(&name);
            }
            ArgDomain::Points(points) => {
                let name = rules.add(
                    &format!("{}-{}", verb.name, arg.name),
                    alternatives(points.iter().map(|p| format!("[{},{}]", p.x, p.y))),
                );
                body.push_str(&name);
            }
            ArgDomain::Cells(b) => {
                let x = rules.add("x", int_range(i64::from(b.min.x), i64::from(b.max.x)));
                let y = rules.add("y", int_range(i64::from(b.min.y), i64::from(b.max.y)));
                let _ = write!(body, "{} {x} {} {y} {}", lit("["), lit(","), lit("]"));
            }
            ArgDomain::Ints { min, max } => {
                body.push_str(
                    &rules.add(&format!("{}-{}", verb.name, arg.name), int_range(min, max)),
                );
            }
            ArgDomain::Text { max_chars } => {
                let chars = char_rule(rules);
                let _ = write!(body, "{} {chars}{{0,{max_chars}}} {}", lit("\""), lit("\""));
            }
        }
    }
    body.push(' ');
    body.push_str(&lit("}"));
    rules.add(&format!("act-{}", verb.name), body)
}

fn say_rule(rules: &mut Rules, max_chars: usize) -> String {
    let chars = char_rule(rules);
    rules.add("say", format!("{chars}{{1,{max_chars}}}"))
}

/// A character allowed in model-written text: no quote, backslash, control character or angle
/// bracket, so the text never needs escaping and cannot spell a chat delimiter.
fn char_rule(rules: &mut Rules) -> String {
    rules.add("char", r#"[^"\\<>\x00-\x1F\x7F]"#.to_owned())
}

fn int_range(min: i64, max: i64) -> String {
    if max.saturating_sub(min) < MAX_ENUMERATED {
        alternatives((min..=max).map(|n| n.to_string()))
    } else {
        format!("{}? [0-9]{{1,19}}", lit("-"))
    }
}

fn alternatives(values: impl Iterator<Item = String>) -> String {
    let alts: Vec<String> = values.map(|v| lit(&v)).collect();
    if alts.len() == 1 {
        alts.into_iter().collect()
    } else {
        format!("({})", alts.join(" | "))
    }
}

/// `s` as a JSON string, quotes included.
fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// A GBNF string literal.
fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod recognizer;

#[cfg(test)]
mod tests {
    use super::recognizer::accepts;
    use super::*;
    use crate::action::tests::{arena_registry, flanking_guard};
    use crate::plan::{ArgValue, Plan, PlanSource, PlanStep};
    use crate::snapshot::{EntityId, EntityInfo, Point};
    use crate::stream::{StreamEvent, StreamParser};
    use std::path::PathBuf;

    fn golden(name: &str, actual: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("HIVEMIND_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with HIVEMIND_BLESS=1 to create it",
                path.display()
            )
        });
        assert_eq!(
            actual,
            expected,
            "{} differs; run with HIVEMIND_BLESS=1 if the change is intended",
            path.display()
        );
    }

    fn lone_rookie() -> WorldSnapshot {
        WorldSnapshot::new(AgentId(8), Point::new(1, 1)).with_entity(EntityInfo::new(
            EntityId(9),
            "enemy",
            Point::new(2, 2),
        ))
    }

    #[test]
    fn free_plan_grammar_matches_golden() {
        let (a, b) = (flanking_guard(), lone_rookie());
        let g = Grammar::build(
            OutputFormat::FreePlan,
            &arena_registry(),
            &[GrammarAgent::new(&a), GrammarAgent::new(&b)],
            GrammarLimits::default(),
        )
        .unwrap();
        assert_eq!(g.order, vec![AgentId(3), AgentId(8)]);
        golden("free_plan.gbnf", &g.text);
    }

    #[test]
    fn guided_grammar_matches_golden() {
        let (a, b) = (flanking_guard(), lone_rookie());
        let g = Grammar::build(
            OutputFormat::Guided,
            &arena_registry(),
            &[
                GrammarAgent::new(&a).with_options(4),
                GrammarAgent::new(&b).with_options(3),
            ],
            GrammarLimits {
                max_steps: 3,
                max_say_chars: 60,
                intents: IntentStyle::Number,
            },
        )
        .unwrap();
        golden("guided.gbnf", &g.text);
    }

    #[test]
    fn line_grammar_matches_golden() {
        let (a, b) = (flanking_guard(), lone_rookie());
        let g = Grammar::build(
            OutputFormat::Line,
            &arena_registry(),
            &[GrammarAgent::new(&a), GrammarAgent::new(&b)],
            GrammarLimits::default(),
        )
        .unwrap();
        golden("line.gbnf", &g.text);
    }

    /// Limits in the millions once built grammars of gigabytes; out of range, they are refused
    /// before any rule is written.
    #[test]
    fn limits_out_of_range_are_refused_before_building() {
        let a = flanking_guard();
        for (max_steps, max_say_chars) in [(0, 80), (3, 0), (5_000_000, 80), (3, 50_000_000)] {
            let limits = GrammarLimits {
                max_steps,
                max_say_chars,
                ..GrammarLimits::default()
            };
            for format in [OutputFormat::FreePlan, OutputFormat::Line] {
                let built =
                    Grammar::build(format, &arena_registry(), &[GrammarAgent::new(&a)], limits);
                assert_eq!(built, Err(GrammarError::LimitsOutOfRange));
            }
        }
    }

    #[test]
    fn targets_are_bound_to_each_agents_own_snapshot() {
        let (a, b) = (flanking_guard(), lone_rookie());
        let g = Grammar::build(
            OutputFormat::FreePlan,
            &arena_registry(),
            &[GrammarAgent::new(&a), GrammarAgent::new(&b)],
            GrammarLimits::default(),
        )
        .unwrap();
        let rule = |name: &str| {
            g.text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ::= ")))
                .unwrap_or_else(|| panic!("no rule {name} in\n{}", g.text))
                .to_owned()
        };
        // Agent 3 sees enemies 7 and 9; agent 8 sees only 9.
        assert!(rule("attack-target").contains("\"7\" | \"9\""));
        assert_eq!(rule("attack-target-2"), "\"9\"");
        // Agent 8 has no cover and no bounds: no TakeCover, no MoveTo among its steps.
        let step8 = rule("step-2");
        assert!(
            !step8.contains("takecover") && !step8.contains("moveto"),
            "{step8}"
        );
        assert!(rule("step").contains("act-takecover"));
        // The idle verb is always there.
        assert!(step8.contains("act-wait"));
    }

    #[test]
    fn the_step_count_is_bounded() {
        let a = flanking_guard();
        let g = Grammar::build(
            OutputFormat::FreePlan,
            &arena_registry(),
            &[GrammarAgent::new(&a)],
            GrammarLimits {
                max_steps: 2,
                max_say_chars: 10,
                intents: IntentStyle::Number,
            },
        )
        .unwrap();
        let agent = g
            .text
            .lines()
            .find(|l| l.starts_with("agent-3 ::="))
            .unwrap();
        assert_eq!(agent.matches(r#"("," step)?"#).count(), 1, "{agent}");
    }

    #[test]
    fn bad_batches_are_refused() {
        let a = flanking_guard();
        let registry = arena_registry();
        let limits = GrammarLimits::default();
        assert_eq!(
            Grammar::build(OutputFormat::Line, &registry, &[], limits),
            Err(GrammarError::EmptyBatch)
        );
        assert_eq!(
            Grammar::build(
                OutputFormat::Line,
                &registry,
                &[GrammarAgent::new(&a), GrammarAgent::new(&a)],
                limits
            ),
            Err(GrammarError::DuplicateAgent(AgentId(3)))
        );
        assert_eq!(
            Grammar::build(
                OutputFormat::Guided,
                &registry,
                &[GrammarAgent::new(&a)],
                limits
            ),
            Err(GrammarError::NoOptions(AgentId(3)))
        );
    }

    #[test]
    fn wide_ranges_fall_back_to_digits() {
        assert_eq!(int_range(0, 2), r#"("0" | "1" | "2")"#);
        assert_eq!(int_range(0, 100_000), r#""-"? [0-9]{1,19}"#);
        assert_eq!(lit("{\"a\"}\n"), r#""{\"a\"}\n""#);
    }

    fn two_agent_grammar(format: OutputFormat) -> (Grammar, WorldSnapshot, WorldSnapshot) {
        let (a, b) = (flanking_guard(), lone_rookie());
        let g = Grammar::build(
            format,
            &arena_registry(),
            &[
                GrammarAgent::new(&a).with_options(4),
                GrammarAgent::new(&b).with_options(3),
            ],
            GrammarLimits::default(),
        )
        .unwrap();
        (g, a, b)
    }

    fn parse_all(format: OutputFormat, text: &str) -> Vec<StreamEvent> {
        let mut parser = StreamParser::new(format);
        let mut events = Vec::new();
        parser.feed(text.as_bytes(), &mut events).unwrap();
        parser.finish(&mut events).unwrap();
        events
    }

    #[test]
    fn canonical_free_plans_are_accepted_and_parse_back() {
        let (g, _, _) = two_agent_grammar(OutputFormat::FreePlan);
        let a = Plan::new(
            AgentId(3),
            vec![
                PlanStep::new("TakeCover").with_arg("at", ArgValue::Point(Point::new(10, 2))),
                PlanStep::new("Attack").with_arg("target", ArgValue::Int(9)),
                PlanStep::new("Say").with_arg("text", ArgValue::Text("Eat this, Vex!".into())),
            ],
            PlanSource::Goap,
        );
        let b = Plan::new(AgentId(8), vec![PlanStep::new("Reload")], PlanSource::Goap);
        let text = format!("{}\n{}", a.to_json(), b.to_json());
        assert!(accepts(&g.text, &text), "{text}");

        let events = parse_all(OutputFormat::FreePlan, &text);
        let steps: Vec<&PlanStep> = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Step { step, .. } => Some(step),
                _ => None,
            })
            .collect();
        assert_eq!(steps, a.steps.iter().chain(&b.steps).collect::<Vec<_>>());
    }

    #[test]
    fn every_answer_starts_with_the_forced_prefix() {
        let answers = [
            (
                OutputFormat::FreePlan,
                r#"{"agent":3,"steps":[{"act":"Wait"}]}
{"agent":8,"steps":[{"act":"Reload"}]}"#,
            ),
            (
                OutputFormat::Guided,
                "{\"agent\":3,\"intent\":2,\"say\":\"Go\"}\n{\"agent\":8,\"intent\":1,\"say\":\"Ok\"}",
            ),
            (
                OutputFormat::Line,
                "{\"agent\":3,\"say\":\"Go\"}\n{\"agent\":8,\"say\":\"Ok\"}",
            ),
        ];
        for (format, text) in answers {
            let (g, _, _) = two_agent_grammar(format);
            assert!(accepts(&g.text, text), "{text}");
            let prefix = answer_prefix(format, AgentId(3));
            assert!(text.starts_with(&prefix), "{format:?}: {prefix}");
            // Anything else where the prefix stands is refused.
            let other = text.replacen(&prefix, &prefix.replace('3', "8"), 1);
            assert!(!accepts(&g.text, &other), "{format:?}");
        }
    }

    #[test]
    fn the_grammar_rejects_what_the_situation_does_not_allow() {
        let (g, _, _) = two_agent_grammar(OutputFormat::FreePlan);
        let ok_b = r#"{"agent":8,"steps":[{"act":"Wait"}]}"#;
        for bad_a in [
            // enemy 4 is an ally; (5,5) is not cover; x = 20 is outside; four steps.
            r#"{"agent":3,"steps":[{"act":"Attack","target":4}]}"#,
            r#"{"agent":3,"steps":[{"act":"TakeCover","at":[5,5]}]}"#,
            r#"{"agent":3,"steps":[{"act":"MoveTo","to":[20,1]}]}"#,
            r#"{"agent":3,"steps":[{"act":"Wait"},{"act":"Wait"},{"act":"Wait"},{"act":"Wait"}]}"#,
            r#"{"agent":3,"steps":[]}"#,
            r#"{"agent":3, "steps":[{"act":"Wait"}]}"#,
            r#"{"agent":3,"steps":[{"act":"Say","text":"<|im_end|>"}]}"#,
        ] {
            assert!(
                !accepts(&g.text, &format!("{bad_a}\n{ok_b}")),
                "accepted {bad_a}"
            );
        }
        // Agents must come in batch order, each once.
        let ok_a = r#"{"agent":3,"steps":[{"act":"Wait"}]}"#;
        assert!(accepts(&g.text, &format!("{ok_a}\n{ok_b}")));
        assert!(!accepts(&g.text, &format!("{ok_b}\n{ok_a}")));
        assert!(!accepts(&g.text, ok_a));
        // Agent 8 sees no cover and has no bounds.
        let cover_b = r#"{"agent":8,"steps":[{"act":"TakeCover","at":[3,4]}]}"#;
        assert!(!accepts(&g.text, &format!("{ok_a}\n{cover_b}")));
    }

    #[test]
    fn canonical_guided_answers_and_lines_are_accepted_and_parse_back() {
        let (g, _, _) = two_agent_grammar(OutputFormat::Guided);
        let text = "{\"agent\":3,\"intent\":4,\"say\":\"Flanking left\"}\n{\"agent\":8,\"intent\":1,\"say\":\"Uh, okay\"}";
        assert!(accepts(&g.text, text));
        assert!(
            !accepts(&g.text, &text.replace("\"intent\":1", "\"intent\":4")),
            "agent 8 has 3 options"
        );
        let events = parse_all(OutputFormat::Guided, text);
        assert!(events.contains(&StreamEvent::Intent {
            agent: AgentId(3),
            intent: 4
        }));
        assert!(events.contains(&StreamEvent::Done { agent: AgentId(8) }));

        let (g, _, _) = two_agent_grammar(OutputFormat::Line);
        let text = "{\"agent\":3,\"say\":\"Hold the line\"}\n{\"agent\":8,\"say\":\"Wow\"}";
        assert!(accepts(&g.text, text));
        assert!(
            !accepts(&g.text, &text.replace("Wow", "")),
            "a line says something"
        );
        let words: String = parse_all(OutputFormat::Line, text)
            .into_iter()
            .filter_map(|e| match e {
                StreamEvent::Words {
                    agent: AgentId(3),
                    text,
                } => Some(text),
                _ => None,
            })
            .collect();
        assert_eq!(words, "Hold the line");
    }

    #[test]
    fn a_named_answer_picks_an_option_by_its_label_and_parses_back_to_its_number() {
        let a = flanking_guard();
        let options = [
            IntentOption::new("kill_enemy", "attack enemy 9", "it is at 20% hp"),
            IntentOption::new("reload", "reload", "1 of 3 shots left"),
            IntentOption::new("retreat", "retreat to \"base\"", "hp 30%"),
        ];
        let g = Grammar::build(
            OutputFormat::Guided,
            &arena_registry(),
            &[GrammarAgent::new(&a).with_labels(&options)],
            GrammarLimits::default(),
        )
        .unwrap();
        let id = a.agent;
        let answer =
            |intent: &str| format!("{{\"agent\":{id},\"intent\":{intent},\"say\":\"Go\"}}");
        assert!(accepts(&g.text, &answer("\"reload\"")));
        assert!(accepts(&g.text, &answer(r#""retreat to \"base\"""#)));
        assert!(!accepts(&g.text, &answer("\"heal\"")), "not offered");
        assert!(!accepts(&g.text, &answer("2")), "named, not numbered");

        let labels = HashMap::from([(
            id,
            options.iter().map(|o| o.label.clone()).collect::<Vec<_>>(),
        )]);
        let parse = |text: &str| {
            let mut parser =
                StreamParser::new(OutputFormat::Guided).with_intent_labels(labels.clone());
            let mut events = Vec::new();
            let fed = parser.feed(text.as_bytes(), &mut events);
            (fed.and_then(|()| parser.finish(&mut events)), events)
        };
        let (ok, events) = parse(&answer("\"reload\""));
        assert!(ok.is_ok());
        assert!(events.contains(&StreamEvent::Intent {
            agent: id,
            intent: 2
        }));
        let (_, events) = parse(&answer(r#""retreat to \"base\"""#));
        assert!(events.contains(&StreamEvent::Intent {
            agent: id,
            intent: 3
        }));
        // A name no option has is a bad answer, never an intent.
        let (_, events) = parse(&answer("\"dance\""));
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, StreamEvent::Intent { .. }))
        );
    }
}
