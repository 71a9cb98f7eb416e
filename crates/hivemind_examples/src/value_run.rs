//! Runs the model-value suite ([`hivemind_arena::value`]) through the whole plugin on a lockstep
//! clock, and tabulates what the model added.
//!
//! Three passes, one app:
//! 1. **Choices and orders**, all requested in one frame, as a squad would ask: each choice set's
//!    agent is offered exactly the set's options (a planner that wraps [`ArenaPlanner`] answers
//!    the set for that agent), each order case's agent gets a [`RequestPlan::answering`]. The plan
//!    deadline is set far out for this pass: it measures what the model chooses, not whether a
//!    batch of this size is fast enough (the benchmarks and the reply pass do that).
//! 2. **Plan lines**: the `say` of every plan the model answered in pass 1, judged by the copy
//!    check, the persona word lists, and counted for distinctness.
//! 3. **Replies**, one player line at a time, on the configured deadlines: a player talks to one
//!    agent at a time.
//!
//! The test `tests/model_value.rs` asserts the targets; `./scripts/run voices` prints the table.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_hivemind::prelude::*;
use hivemind_arena::scenarios::Voice;
use hivemind_arena::value::{
    self, ChoiceSet, OrderCase, ReplyCase, choice::HOLD, choice::attack_target, judge_line,
};
use hivemind_arena::{ArenaAssets, ArenaPlanner};
use hivemind_core::backend::BackendFactory;
use hivemind_core::config::{ClockMode, HivemindConfig};
use hivemind_core::hooks::CopyCheck;
use hivemind_core::plan::{ArgValue, PlanSource};
use hivemind_core::prompt::{IntentOption, PromptAsset};
use hivemind_core::snapshot::AgentId;

/// How the suite runs.
#[derive(Clone, Debug)]
pub struct ValueOptions {
    /// The configuration; the clock is set to lockstep on its configured throughput.
    pub config: HivemindConfig,
    /// The prompt (the arena's unless a lever changes it).
    pub prompt: PromptAsset,
    /// The most frames a pass may take before its unanswered requests count as lost.
    pub max_frames: u32,
    /// The lockstep frame length.
    pub frame: Duration,
}

impl ValueOptions {
    /// The arena's prompt on `config`.
    pub fn new(assets: &ArenaAssets, config: HivemindConfig) -> Self {
        ValueOptions {
            config,
            prompt: assets.prompt.clone(),
            max_frames: 20_000,
            frame: Duration::from_millis(20),
        }
    }
}

/// The suite's planner: the arena's, except that a choice set's agent is offered that set.
struct SuitePlanner {
    inner: ArenaPlanner,
    sets: HashMap<AgentId, Vec<IntentOption>>,
    idle: PlanStep,
}

impl FallbackPlanner for SuitePlanner {
    fn plan(&self, snapshot: &WorldSnapshot) -> Vec<PlanStep> {
        self.inner.plan(snapshot)
    }

    fn complete(&self, snapshot: &WorldSnapshot, done: &[PlanStep]) -> Vec<PlanStep> {
        self.inner.complete(snapshot, done)
    }

    fn first_invalid(&self, snapshot: &WorldSnapshot, steps: &[PlanStep]) -> Option<usize> {
        self.inner.first_invalid(snapshot, steps)
    }

    fn intents(&self, snapshot: &WorldSnapshot) -> Vec<IntentOption> {
        match self.sets.get(&snapshot.agent) {
            Some(set) => set.clone(),
            None => self.inner.intents(snapshot),
        }
    }

    fn order_intents(&self, snapshot: &WorldSnapshot) -> Vec<IntentOption> {
        self.inner.order_intents(snapshot)
    }

    /// Any option of a set is carried out, sensible or not: the suite judges the choice.
    fn expand(&self, snapshot: &WorldSnapshot, goal: &str) -> Vec<PlanStep> {
        if let Some(target) = attack_target(goal) {
            return vec![
                PlanStep::new("Attack").with_arg("target", ArgValue::Int(i64::from(target.0))),
            ];
        }
        let steps = match goal {
            HOLD => Vec::new(),
            _ => self.inner.expand(snapshot, goal),
        };
        if steps.is_empty() {
            vec![self.idle.clone()]
        } else {
            steps
        }
    }
}

/// A choice set and the model's pick.
#[derive(Clone, Debug)]
pub struct ChoiceAnswer {
    /// The set.
    pub set: ChoiceSet,
    /// The goal the model chose; `None` if the plan did not come from the model.
    pub picked: Option<String>,
    /// The plan's line.
    pub say: Option<String>,
}

/// An order case and the model's pick.
#[derive(Clone, Debug)]
pub struct OrderAnswer {
    /// The case.
    pub case: OrderCase,
    /// The intents offered, in the order shown.
    pub offered: Vec<String>,
    /// The intents that follow the order.
    pub matching: Vec<String>,
    /// The utility's best intent.
    pub utility_best: Option<String>,
    /// The goal the model chose; `None` if the plan did not come from the model.
    pub picked: Option<String>,
    /// The plan's line.
    pub say: Option<String>,
}

/// A reply case and what the agent said.
#[derive(Clone, Debug)]
pub struct ReplyAnswer {
    /// The case.
    pub case: ReplyCase,
    /// The completion, if one came.
    pub line: Option<LineReady>,
    /// From the request to the first words, on hivemind's clock.
    pub first_words: Option<Duration>,
}

/// What a run of the suite gave.
#[derive(Clone, Debug)]
pub struct ValueReport {
    /// The model file's name, for tables.
    pub model: String,
    /// Pass 1, choices.
    pub choices: Vec<ChoiceAnswer>,
    /// Pass 1, orders.
    pub orders: Vec<OrderAnswer>,
    /// Pass 3.
    pub replies: Vec<ReplyAnswer>,
    /// The copy check over the prompt the run used.
    pub check: CopyCheck,
    /// The dialogue deadline the replies ran on.
    pub dialogue_deadline: Duration,
    /// The whole reply's budget.
    pub reply_budget: Duration,
}

#[derive(Resource, Default)]
struct Seen {
    plans: Vec<PlanReady>,
    lines: Vec<LineReady>,
}

fn collect(
    mut plans: MessageReader<PlanReady>,
    mut lines: MessageReader<LineReady>,
    mut seen: ResMut<Seen>,
) {
    seen.plans.extend(plans.read().cloned());
    seen.lines.extend(lines.read().cloned());
}

/// Runs the suite with `factory`'s backend. See the [module docs](self).
pub fn run_value_suite(
    assets: &Arc<ArenaAssets>,
    factory: Arc<dyn BackendFactory>,
    model: &str,
    options: &ValueOptions,
) -> ValueReport {
    let choice_sets = value::choice_sets();
    let order_cases = value::order_cases();
    let reply_cases = value::reply_cases();
    let planner = SuitePlanner {
        inner: ArenaPlanner::new(Arc::clone(assets)),
        sets: choice_sets
            .iter()
            .map(|s| (s.snapshot.agent, s.intents()))
            .collect(),
        idle: assets.registry.idle_step(),
    };

    let mut config = options.config.clone();
    config.clock.mode = ClockMode::Lockstep;
    let dialogue_deadline = Duration::from_millis(config.deadlines.dialogue_ms);
    let reply_budget = Duration::from_millis(config.deadlines.reply_ms);
    let plan_ms = config.deadlines.plan_ms;
    // Pass 1 measures the choice; see the module docs.
    config.deadlines.plan_ms = 600_000;
    let plugin = HivemindPlugin::new(Update)
        .with_config(config)
        .with_registry(assets.registry.clone())
        .with_templates(assets.templates.clone())
        .with_prompt(options.prompt.clone())
        .with_planner(planner)
        .with_backend(factory);
    let mut app = App::new();
    app.add_plugins((MinimalPlugins, plugin))
        .init_resource::<Seen>()
        .insert_resource(TimeUpdateStrategy::ManualDuration(options.frame))
        .add_systems(Update, collect.after(HivemindSystems::Apply));
    app.finish();
    app.cleanup();
    app.update();

    // Pass 1.
    let spawn = |app: &mut App, persona: &str, snapshot: &WorldSnapshot| {
        app.world_mut()
            .spawn((
                NpcAgent::new(persona.to_owned()),
                AgentSnapshot(snapshot.clone()),
            ))
            .id()
    };
    let choice_agents: Vec<Entity> = choice_sets
        .iter()
        .map(|s| spawn(&mut app, s.persona, &s.snapshot))
        .collect();
    let order_agents: Vec<Entity> = order_cases
        .iter()
        .map(|c| spawn(&mut app, c.persona, &c.snapshot))
        .collect();
    for &agent in &choice_agents {
        app.world_mut().write_message(RequestPlan::new(agent));
    }
    for (case, &agent) in order_cases.iter().zip(&order_agents) {
        app.world_mut()
            .write_message(RequestPlan::answering(agent, case.said));
    }
    let want = choice_agents.len() + order_agents.len();
    for _ in 0..options.max_frames {
        if app.world().resource::<Seen>().plans.len() >= want {
            break;
        }
        app.update();
    }
    let plans = std::mem::take(&mut app.world_mut().resource_mut::<Seen>().plans);
    let plan_of = |agent: Entity| plans.iter().find(|p| p.agent == agent);
    let model_pick = |p: &PlanReady| match p.source {
        PlanSource::Llm { .. } => p.intent.clone(),
        _ => None,
    };
    let choices = choice_sets
        .iter()
        .zip(&choice_agents)
        .map(|(set, &agent)| {
            let plan = plan_of(agent);
            ChoiceAnswer {
                set: set.clone(),
                picked: plan.and_then(model_pick),
                say: plan.and_then(|p| p.say.clone()),
            }
        })
        .collect();
    let orders = order_cases
        .iter()
        .zip(&order_agents)
        .map(|(case, &agent)| {
            let plan = plan_of(agent);
            let offered = case.feasible(&assets.domain, &assets.registry);
            OrderAnswer {
                matching: case.matching(&assets.domain, &assets.registry),
                utility_best: offered.first().cloned(),
                offered,
                case: case.clone(),
                picked: plan.and_then(model_pick),
                say: plan.and_then(|p| p.say.clone()),
            }
        })
        .collect();

    // Pass 3, on the configured deadlines.
    {
        let mut hm = app.world_mut().resource_mut::<Hivemind>();
        let mut config = hm.config().clone();
        config.deadlines.plan_ms = plan_ms;
        hm.apply_config(config)
            .unwrap_or_else(|e| panic!("the suite's deadline does not fit: {e}"));
    }
    let mut replies = Vec::new();
    for case in &reply_cases {
        let agent = spawn(&mut app, case.persona, &case.snapshot);
        app.world_mut()
            .write_message(RequestLine::reply(agent, "player_talk", case.said));
        let mut line = None;
        for _ in 0..options.max_frames {
            app.update();
            let seen = app.world().resource::<Seen>();
            if let Some(l) = seen.lines.iter().find(|l| l.agent == agent) {
                line = Some(l.clone());
                break;
            }
        }
        let first_words = line.as_ref().map(|l| l.first_after);
        replies.push(ReplyAnswer {
            case: case.clone(),
            line,
            first_words,
        });
        app.world_mut().despawn(agent);
    }
    app.world_mut().write_message(AppExit::Success);
    app.update();

    ValueReport {
        model: model.to_owned(),
        choices,
        orders,
        replies,
        check: value::copy_check(&options.prompt),
        dialogue_deadline,
        reply_budget,
    }
}

fn pct(n: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

/// A model plan's line (if it had one) and where it came from.
struct PlanLine<'a> {
    persona: &'a str,
    text: Option<&'a str>,
    shown: Vec<String>,
    said: Option<&'a str>,
}

/// The suite's figures, computed once from a report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValueFigures {
    /// Choice sets run.
    pub choice_sets: usize,
    /// % of sets where the model picked a sensible option.
    pub choice_sensible: f64,
    /// % the always-first picker gets.
    pub choice_first: f64,
    /// % the uniform random picker gets (expected).
    pub choice_random: f64,
    /// % of picks at each position (1-based index 0 = position 1).
    pub choice_positions: Vec<f64>,
    /// % of sets picked the same in both orders.
    pub choice_consistent: f64,
    /// Order cases run.
    pub orders: usize,
    /// % followed.
    pub orders_followed: f64,
    /// % the always-first picker follows.
    pub orders_first: f64,
    /// % the utility's best intent follows.
    pub orders_utility: f64,
    /// Plans the model answered, each of which should carry a line.
    pub lines: usize,
    /// % of those whose line the player saw was written by the model (no copy, no echo).
    pub lines_own: f64,
    /// % of plans with a distinct line, counting only lines written by the model.
    pub lines_distinct: f64,
    /// % of plans whose line (written by the model) is in their persona's words.
    pub lines_voice: f64,
    /// Plan lines in another persona's words.
    pub lines_bleed: usize,
    /// Copies that reached a player, plan lines and replies.
    pub copies_shown: usize,
    /// Replies run.
    pub replies: usize,
    /// % of replies written by the model (source `Llm`) within the reply budget.
    pub replies_model: f64,
    /// % on topic by the rubrics.
    pub replies_on_topic: f64,
    /// % whose first words came by the dialogue deadline.
    pub replies_first_in_time: f64,
    /// Replies that began with a bridge.
    pub replies_bridged: usize,
    /// The 95th percentile of a whole reply's latency, on hivemind's clock.
    pub replies_p95: Duration,
}

impl ValueReport {
    /// The figures. See [`ValueFigures`].
    pub fn figures(&self) -> ValueFigures {
        let mut f = ValueFigures::default();
        let sets = &self.choices;
        f.choice_sets = sets.len();
        let sensible = sets
            .iter()
            .filter(|a| a.picked.as_deref().is_some_and(|g| a.set.is_sensible(g)))
            .count();
        f.choice_sensible = pct(sensible, sets.len());
        f.choice_first = pct(
            sets.iter().filter(|a| a.set.first_is_sensible()).count(),
            sets.len(),
        );
        f.choice_random = 100.0 * sets.iter().map(|a| a.set.random_sensible()).sum::<f64>()
            / sets.len().max(1) as f64;
        let mut positions = [0usize; value::choice::SET_SIZE];
        let mut picked = 0;
        for a in sets {
            if let Some(p) = a.picked.as_deref().and_then(|g| a.set.position(g)) {
                positions[p - 1] += 1;
                picked += 1;
            }
        }
        f.choice_positions = positions.iter().map(|&n| pct(n, picked)).collect();
        let consistent = sets
            .chunks(2)
            .filter(|pair| {
                pair.len() == 2 && pair[0].picked.is_some() && pair[0].picked == pair[1].picked
            })
            .count();
        f.choice_consistent = pct(consistent, sets.len() / 2);

        let orders = &self.orders;
        f.orders = orders.len();
        let follows =
            |g: Option<&String>, o: &OrderAnswer| g.is_some_and(|g| o.matching.contains(g));
        f.orders_followed = pct(
            orders
                .iter()
                .filter(|o| follows(o.picked.as_ref(), o))
                .count(),
            orders.len(),
        );
        f.orders_first = pct(
            orders
                .iter()
                .filter(|o| follows(o.offered.first(), o))
                .count(),
            orders.len(),
        );
        f.orders_utility = pct(
            orders
                .iter()
                .filter(|o| follows(o.utility_best.as_ref(), o))
                .count(),
            orders.len(),
        );

        let lines = self.plan_lines();
        f.lines = lines.len();
        let judged: Vec<_> = lines
            .iter()
            .filter_map(|l| {
                let shown: Vec<&str> = l.shown.iter().map(String::as_str).collect();
                let text = l.text?;
                Some((
                    text,
                    judge_line(&self.check, l.persona, text, &shown, l.said),
                ))
            })
            .collect();
        let own: Vec<_> = judged.iter().filter(|(_, j)| j.is_own()).collect();
        f.lines_own = pct(own.len(), lines.len());
        let distinct: BTreeSet<Vec<String>> = own
            .iter()
            .map(|(text, _)| hivemind_core::hooks::normalised_words(text))
            .collect();
        f.lines_distinct = pct(distinct.len(), lines.len());
        f.lines_voice = pct(
            own.iter().filter(|(_, j)| j.voice == Voice::Own).count(),
            lines.len(),
        );
        f.lines_bleed = judged
            .iter()
            .filter(|(_, j)| j.voice == Voice::Bleed)
            .count();
        f.copies_shown = judged.iter().filter(|(_, j)| !j.is_own()).count();

        let replies = &self.replies;
        f.replies = replies.len();
        let by_model = |r: &ReplyAnswer| {
            r.line.as_ref().is_some_and(|l| {
                matches!(l.source, PlanSource::Llm { .. }) && l.latency <= self.reply_budget
            })
        };
        f.replies_model = pct(
            replies.iter().filter(|r| by_model(r)).count(),
            replies.len(),
        );
        f.replies_on_topic = pct(
            replies
                .iter()
                .filter(|r| {
                    r.line
                        .as_ref()
                        .is_some_and(|l| r.case.on_topic(&self.check, &l.text))
                })
                .count(),
            replies.len(),
        );
        f.replies_first_in_time = pct(
            replies
                .iter()
                .filter(|r| r.first_words.is_some_and(|t| t <= self.dialogue_deadline))
                .count(),
            replies.len(),
        );
        let mut latencies = hivemind_core::metrics::Histogram::new();
        for line in replies.iter().filter_map(|r| r.line.as_ref()) {
            latencies.record(line.latency);
        }
        f.replies_p95 = latencies.p95().unwrap_or_default();
        f.replies_bridged = replies
            .iter()
            .filter(|r| r.line.as_ref().is_some_and(|l| l.bridged))
            .count();
        f.copies_shown += replies
            .iter()
            .filter(|r| {
                r.line.as_ref().is_some_and(|l| {
                    matches!(l.source, PlanSource::Llm { .. })
                        && !judge_line(&self.check, r.case.persona, &l.text, &[], Some(r.case.said))
                            .is_own()
                })
            })
            .count();
        f
    }

    /// Every plan the model answered, with its line.
    fn plan_lines(&self) -> Vec<PlanLine<'_>> {
        let mut out = Vec::new();
        for a in self.choices.iter().filter(|a| a.picked.is_some()) {
            out.push(PlanLine {
                persona: a.set.persona,
                text: a.say.as_deref(),
                shown: a
                    .set
                    .options
                    .iter()
                    .map(|o| format!("{}: {}", o.option.label, o.option.reason))
                    .collect(),
                said: None,
            });
        }
        for o in self.orders.iter().filter(|o| o.picked.is_some()) {
            out.push(PlanLine {
                persona: o.case.persona,
                text: o.say.as_deref(),
                shown: Vec::new(),
                said: Some(o.case.said),
            });
        }
        out
    }

    /// The table, as Markdown.
    pub fn table(&self) -> String {
        let f = self.figures();
        let mut out = String::new();
        let _ = writeln!(out, "model: {}", self.model);
        let _ = writeln!(out, "| measure | model | baseline | target |");
        let _ = writeln!(out, "|---|---|---|---|");
        let _ = writeln!(
            out,
            "| choice: sensible picks ({} sets) | {:.0} % | first {:.0} %, random {:.0} % | ≥ 90 %, ≥ random + 25 |",
            f.choice_sets, f.choice_sensible, f.choice_first, f.choice_random
        );
        let positions: Vec<String> = f
            .choice_positions
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}: {p:.0} %", i + 1))
            .collect();
        let _ = writeln!(
            out,
            "| choice: picks by position | {} | | |",
            positions.join(", ")
        );
        let _ = writeln!(
            out,
            "| choice: same pick in both orders | {:.0} % | | |",
            f.choice_consistent
        );
        let _ = writeln!(
            out,
            "| orders followed ({} cases) | {:.0} % | first {:.0} %, utility {:.0} % | ≥ 80 %, ≥ first + 25 |",
            f.orders, f.orders_followed, f.orders_first, f.orders_utility
        );
        let _ = writeln!(
            out,
            "| plan lines written by the model ({} lines) | {:.0} % | | ≥ 80 % |",
            f.lines, f.lines_own
        );
        let _ = writeln!(
            out,
            "| plan lines distinct | {:.0} % | | ≥ 90 % |",
            f.lines_distinct
        );
        let _ = writeln!(
            out,
            "| plan lines in own persona's words | {:.0} % ({} in another's) | | ≥ 60 %, none |",
            f.lines_voice, f.lines_bleed
        );
        let _ = writeln!(
            out,
            "| copies shown to a player | {} | | 0 |",
            f.copies_shown
        );
        let _ = writeln!(
            out,
            "| replies by the model within {} ms ({} lines, {} bridged) | {:.0} % | | ≥ 90 % |",
            self.reply_budget.as_millis(),
            f.replies,
            f.replies_bridged,
            f.replies_model
        );
        let _ = writeln!(
            out,
            "| replies on topic | {:.0} % | | ≥ 60 % |",
            f.replies_on_topic
        );
        let _ = writeln!(
            out,
            "| a whole reply's latency, p95 | {} ms | | within `reply_ms` |",
            f.replies_p95.as_millis()
        );
        let _ = writeln!(
            out,
            "| replies' first words by {} ms | {:.0} % | | 100 % |",
            self.dialogue_deadline.as_millis(),
            f.replies_first_in_time
        );
        out
    }

    /// Every answer, one per line, for reading what the model did.
    pub fn details(&self) -> String {
        let mut out = String::new();
        for a in &self.choices {
            let shown: Vec<String> = a
                .set
                .options
                .iter()
                .map(|o| format!("{}{}", o.option.goal, if o.sensible { "+" } else { "-" }))
                .collect();
            let _ = writeln!(
                out,
                "choice {:32} [{}] -> {:?} {:?}",
                a.set.name,
                shown.join(" "),
                a.picked,
                a.say
            );
        }
        for o in &self.orders {
            let _ = writeln!(
                out,
                "order  {:32} {:?} [{}] match {:?} -> {:?} {:?}",
                o.case.name,
                o.case.said,
                o.offered.join(" "),
                o.matching,
                o.picked,
                o.say
            );
        }
        for r in &self.replies {
            let _ = writeln!(
                out,
                "reply  {:10} {:?} -> {:?}",
                r.case.persona,
                r.case.said,
                r.line.as_ref().map(|l| (&l.text, &l.source, l.bridged))
            );
        }
        out
    }
}
