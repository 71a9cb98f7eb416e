//! Runs situations through the whole plugin, as a game would ask for plans, and judges the first
//! steps by the rules of [`hivemind_arena::scenarios`].
//!
//! Each situation becomes an agent entity with its persona and snapshot; all of them ask for a
//! plan in the same frame, so the worker batches them as it batches a game's requests. The
//! arena's planner ([`ArenaPlanner`]) checks, repairs and expands exactly as in the arena, so
//! what is measured is what a player would see. The plan deadline is set far out: the run
//! measures what the model chooses, not whether it is fast enough (the benchmarks do that).
//!
//! The scenario test and the `scenarios` example, which prints the table of modes, both use it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_hivemind::prelude::*;
use hivemind_arena::scenarios::{Voice, is_sensible, voice};
use hivemind_arena::{ArenaAssets, ArenaPlanner};
use hivemind_core::backend::BackendFactory;
use hivemind_core::config::{ClockMode, HivemindConfig, PlanFormat, PromptLayout};
use hivemind_core::metrics::Histogram;
use hivemind_core::plan::PlanSource;

/// How plans are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// GOAP alone: every plan is the fallback plan.
    Goap,
    /// The model writes the steps; nothing checks them.
    Free,
    /// The model writes the steps; the first that fails the GOAP check is repaired.
    FreeRepair,
    /// The model picks one of the scored intents and says a line; GOAP writes the steps.
    Guided,
}

impl Mode {
    /// Every mode, in the order the table lists them.
    pub const ALL: [Mode; 4] = [Mode::Goap, Mode::Free, Mode::FreeRepair, Mode::Guided];

    /// The mode's name in tables and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Goap => "goap",
            Mode::Free => "free",
            Mode::FreeRepair => "free+repair",
            Mode::Guided => "guided",
        }
    }

    /// `config` set to make plans this way (GOAP alone is a switch on the runtime instead).
    pub fn configure(self, config: &mut HivemindConfig) {
        config.model.plan_format = match self {
            Mode::Guided => PlanFormat::Guided,
            _ => PlanFormat::Free,
        };
        config.model.repair = self != Mode::Free;
    }
}

/// How a suite is run.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// How plans are made.
    pub mode: Mode,
    /// The prompt layout.
    pub layout: PromptLayout,
    /// Real time (latencies mean something) or lockstep (the answers repeat exactly).
    pub clock: ClockMode,
    /// Worked examples kept per output format; `None` keeps the prompt asset's.
    pub examples: Option<usize>,
    /// The configuration the mode and layout are applied to.
    pub config: HivemindConfig,
    /// How long to wait for every answer before giving up on the rest.
    pub timeout: Duration,
}

impl SuiteOptions {
    /// `mode` on the default configuration, parallel sequences, real time.
    pub fn new(mode: Mode) -> Self {
        SuiteOptions {
            mode,
            layout: PromptLayout::ParallelSequences,
            clock: ClockMode::RealTime,
            examples: None,
            config: HivemindConfig::default(),
            timeout: Duration::from_secs(600),
        }
    }
}

/// A situation to run: the persona and what the agent knows.
#[derive(Clone, Debug, PartialEq)]
pub struct Situation {
    /// A name for reports.
    pub name: String,
    /// The persona.
    pub persona: String,
    /// The snapshot.
    pub snapshot: WorldSnapshot,
}

impl Situation {
    /// The suite's situations ([`hivemind_arena::scenarios::suite`]).
    pub fn suite() -> Vec<Situation> {
        hivemind_arena::scenarios::suite()
            .into_iter()
            .map(|s| Situation {
                name: s.name.to_owned(),
                persona: s.persona.to_owned(),
                snapshot: s.snapshot,
            })
            .collect()
    }

    /// Situations from a played game of `seed` ([`hivemind_arena::scenarios::played_situations`]).
    pub fn played(assets: &ArenaAssets, seed: u64, ticks: usize, every: usize) -> Vec<Situation> {
        hivemind_arena::scenarios::played_situations(assets, seed, ticks, every)
            .into_iter()
            .enumerate()
            .map(|(i, (persona, snapshot))| Situation {
                name: format!("played_{seed}_{i}"),
                persona,
                snapshot,
            })
            .collect()
    }
}

/// A situation and the plan it got, if it got one in time.
#[derive(Clone, Debug)]
pub struct Answered {
    /// The situation.
    pub situation: Situation,
    /// The completion message.
    pub plan: Option<PlanReady>,
}

impl Answered {
    /// Whether the first step is one the rules accept.
    pub fn is_sensible(&self) -> bool {
        self.first_step()
            .is_some_and(|step| is_sensible(&self.situation.snapshot, step))
    }

    /// The plan's first step.
    pub fn first_step(&self) -> Option<&PlanStep> {
        self.plan.as_ref().and_then(|p| p.steps.first())
    }
}

/// What a suite run gave.
#[derive(Clone, Debug)]
pub struct SuiteReport {
    /// The mode it ran in.
    pub mode: Mode,
    /// Every situation with its plan, in the order given.
    pub answers: Vec<Answered>,
    /// Wall time from the requests to the last completion.
    pub wall: Duration,
}

impl SuiteReport {
    /// Situations run.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Whether no situation was run.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    fn share(&self, f: impl Fn(&Answered) -> bool) -> f64 {
        if self.answers.is_empty() {
            return 0.0;
        }
        self.answers.iter().filter(|a| f(a)).count() as f64 / self.answers.len() as f64
    }

    /// The share of first steps the rules accept.
    pub fn sensible(&self) -> f64 {
        self.share(Answered::is_sensible)
    }

    /// The share of plans whose every step validates against `registry` in its snapshot.
    pub fn valid(&self, registry: &hivemind_core::action::ActionRegistry) -> f64 {
        self.share(|a| {
            a.plan.as_ref().is_some_and(|p| {
                !p.steps.is_empty()
                    && registry
                        .validate_plan(&p.steps, &a.situation.snapshot)
                        .is_ok()
            })
        })
    }

    /// The share of plans that came from the model (repaired or not).
    pub fn from_model(&self) -> f64 {
        self.share(|a| {
            matches!(
                a.plan.as_ref().map(|p| p.source.clone()),
                Some(PlanSource::Llm { .. })
            )
        })
    }

    /// The share of plans the planner repaired.
    pub fn repaired(&self) -> f64 {
        self.share(|a| {
            matches!(
                a.plan.as_ref().map(|p| p.source.clone()),
                Some(PlanSource::Llm { repaired: true, .. })
            )
        })
    }

    /// The median time to the first step, over answered situations.
    pub fn first_p50(&self) -> Duration {
        median(
            self.answers
                .iter()
                .filter_map(|a| a.plan.as_ref().map(|p| p.first_after)),
        )
    }

    /// The median time to the whole plan, over answered situations.
    pub fn full_p50(&self) -> Duration {
        median(
            self.answers
                .iter()
                .filter_map(|a| a.plan.as_ref().map(|p| p.latency)),
        )
    }

    /// How many lines were in their own persona's voice, in another's, in none, and how many
    /// plans said nothing.
    pub fn voices(&self) -> VoiceCounts {
        let mut counts = VoiceCounts::default();
        for a in &self.answers {
            match a.plan.as_ref().and_then(|p| p.say.as_deref()) {
                None => counts.silent += 1,
                Some(line) => match voice(&a.situation.persona, line) {
                    Voice::Own => counts.own += 1,
                    Voice::Bleed => counts.bleed += 1,
                    Voice::Plain => counts.plain += 1,
                },
            }
        }
        counts
    }
}

/// The voices of a run's lines; see [`SuiteReport::voices`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VoiceCounts {
    /// Lines with their persona's words and no other's.
    pub own: usize,
    /// Lines with another persona's words.
    pub bleed: usize,
    /// Lines with no persona's words.
    pub plain: usize,
    /// Plans without a line.
    pub silent: usize,
}

fn median(values: impl Iterator<Item = Duration>) -> Duration {
    let mut histogram = Histogram::new();
    values.for_each(|v| histogram.record(v));
    histogram.p50().unwrap_or_default()
}

/// The completions read so far, by agent.
#[derive(Resource, Default)]
struct Completions(Vec<PlanReady>);

fn collect(mut plans: MessageReader<PlanReady>, mut done: ResMut<Completions>) {
    done.0.extend(plans.read().cloned());
}

/// Runs `situations` through the plugin with `factory`'s backend. See the [module docs](self).
pub fn run_suite(
    situations: &[Situation],
    assets: &Arc<ArenaAssets>,
    factory: Arc<dyn BackendFactory>,
    options: &SuiteOptions,
) -> SuiteReport {
    let mut config = options.config.clone();
    options.mode.configure(&mut config);
    config.model.layout = options.layout;
    config.clock.mode = options.clock;
    config.deadlines.plan_ms = u64::try_from(options.timeout.as_millis()).unwrap_or(u64::MAX);

    let mut prompt = assets.prompt.clone();
    if let Some(keep) = options.examples {
        let mut kept = std::collections::HashMap::new();
        prompt.rules.examples.retain(|(format, _)| {
            let n = kept.entry(*format).or_insert(0usize);
            *n += 1;
            *n <= keep
        });
    }
    let plugin = HivemindPlugin::new(Update)
        .with_config(config)
        .with_registry(assets.registry.clone())
        .with_templates(assets.templates.clone())
        .with_prompt(prompt)
        .with_planner(ArenaPlanner::new(Arc::clone(assets)))
        .with_backend(factory);
    let mut app = App::new();
    app.add_plugins((MinimalPlugins, plugin))
        .init_resource::<Completions>()
        .add_systems(Update, collect.after(HivemindSystems::Apply));
    if options.clock != ClockMode::RealTime {
        app.insert_resource(TimeUpdateStrategy::ManualDuration(Duration::from_millis(
            50,
        )));
    }
    app.finish();
    app.cleanup();
    app.update();
    if options.mode == Mode::Goap {
        app.world_mut()
            .resource_mut::<Hivemind>()
            .set_force_fallback(true);
    }

    let entities: Vec<Entity> = situations
        .iter()
        .map(|s| {
            app.world_mut()
                .spawn((
                    NpcAgent::new(s.persona.clone()),
                    AgentSnapshot(s.snapshot.clone()),
                ))
                .id()
        })
        .collect();
    for &agent in &entities {
        app.world_mut().write_message(RequestPlan::new(agent));
    }
    let start = Instant::now();
    while app.world().resource::<Completions>().0.len() < entities.len()
        && start.elapsed() < options.timeout
    {
        app.update();
        if options.clock == ClockMode::RealTime {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let wall = start.elapsed();
    app.world_mut().write_message(AppExit::Success);
    app.update();

    let done = std::mem::take(&mut app.world_mut().resource_mut::<Completions>().0);
    let answers = situations
        .iter()
        .zip(&entities)
        .map(|(situation, &agent)| Answered {
            situation: situation.clone(),
            plan: done.iter().find(|p| p.agent == agent).cloned(),
        })
        .collect();
    SuiteReport {
        mode: options.mode,
        answers,
        wall,
    }
}
