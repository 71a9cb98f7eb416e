//! The arena as a Bevy app: [`hivemind_arena`]'s rules driven by [`bevy_hivemind`]'s messages.
//!
//! [`ArenaAppPlugin`] owns an [`ArenaWorld`] and spawns one entity per arena agent with
//! [`NpcAgent`] and [`ArenaAgent`]. Each time hivemind's schedule runs:
//!
//! 1. before [`HivemindSystems::Gather`], every idle living agent whose plan is used up asks for
//!    a new one, and now and then an agent banters (staggered by id); then what the player said
//!    to an agent ([`PlayerSaid`]) asks it for a reply and for a plan that answers it (see
//!    [`talk`]);
//! 2. after [`HivemindSystems::Apply`], every idle living agent begins the current step of its
//!    [`ActivePlan`], and an agent whose plan was replaced while it was busy (an answer to the
//!    player) drops its old step for the new one; the world moves one tick on; each finished
//!    step becomes a [`StepFinished`] (a failed one makes hivemind plan again); every snapshot is
//!    refreshed.
//!
//! The headless tests, the benchmarks and the rendered example all run this one game loop.

use std::collections::BTreeMap;
use std::sync::Arc;

use bevy::ecs::schedule::{InternedScheduleLabel, ScheduleLabel};
use bevy::prelude::*;
use bevy_hivemind::prelude::*;
use bevy_hivemind::{AgentSnapshot, RequestId};
use hivemind_arena::{
    ArenaAssets, ArenaConfig, ArenaPlanner, ArenaWorld, Team, TickReport, banter_slots,
    fallback_plan, situation,
};
use hivemind_core::backend::{
    BackendFactory, BatchAgent, FnFactory, InferenceBackend, Latency, Script, ScriptedBackend,
};
use hivemind_core::plan::{BackendId, OutputFormat, Plan};

pub mod talk;

use talk::{Answering, answer_player};
pub use talk::{MAX_SAID_CHARS, PlayerSaid};

/// Call signs, Red's six first.
pub const NAMES: [&str; 12] = [
    "Vex", "Rook", "Ash", "Moss", "Flint", "Wren", "Kite", "Bolt", "Sable", "Jinx", "Hale", "Pike",
];

/// The name of arena agent `id`.
pub fn name(id: AgentId) -> String {
    NAMES
        .get(id.0 as usize)
        .map_or_else(|| format!("#{id}"), |n| (*n).to_owned())
}

/// The arena, its assets and the entity of each agent.
#[derive(Resource)]
pub struct Arena {
    /// The rules and the state.
    pub world: ArenaWorld,
    /// Verbs, GOAP domain, templates and prompt.
    pub assets: Arc<ArenaAssets>,
    /// The entity of each agent.
    pub entities: BTreeMap<AgentId, Entity>,
    /// Each agent banters about once every this many ticks; 0 never.
    pub banter_every: u64,
    /// How re-plans are staggered.
    pub stagger: Stagger,
    /// What happened in the last tick: shots, kills, lines, scores.
    pub last_report: TickReport,
}

/// An arena agent's entity.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaAgent {
    /// Its id in the arena.
    pub id: AgentId,
    /// Its team.
    pub team: Team,
    /// The plan step it began last, so each begins once.
    begun: Option<(RequestId, usize)>,
    /// The tick since which it has waited to ask for a plan.
    waiting_since: Option<u64>,
    /// Set while the plan answering what the player said has not begun to arrive.
    answering: Option<Answering>,
}

impl ArenaAgent {
    /// The plan step it began last: the request of its plan and the step's index.
    pub fn begun(&self) -> Option<(RequestId, usize)> {
        self.begun
    }

    /// Whether it was spoken to and the first step of the plan answering it has not arrived.
    pub fn is_answering(&self) -> bool {
        self.answering.is_some()
    }
}

/// Runs the arena with hivemind planning for its agents. See the [module docs](self).
pub struct ArenaAppPlugin {
    /// The schedule hivemind runs in; the arena's systems run there too.
    pub schedule: InternedScheduleLabel,
    /// The arena's rules and seed.
    pub config: ArenaConfig,
    /// The arena's files.
    pub assets: Arc<ArenaAssets>,
    /// How often each agent banters, in ticks; 0 never.
    pub banter_every: u64,
    /// How re-plans are staggered, as a game staggers its AI updates, so a model can serve
    /// them.
    pub stagger: Stagger,
}

/// When agents that need a plan may ask for one.
///
/// They ask in planning rounds every `every` ticks, at most `at_most` agents a round, those that
/// have waited longest first. The requests of one round go to the model as one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stagger {
    /// Ticks between rounds; 0 or 1 plans every tick.
    pub every: u64,
    /// Agents that may ask in one round; 0 for no limit.
    pub at_most: usize,
}

impl ArenaAppPlugin {
    /// The arena of `config` with `assets` in `Update`, bantering every 40 ticks.
    pub fn new(config: ArenaConfig, assets: Arc<ArenaAssets>) -> Self {
        ArenaAppPlugin {
            schedule: Update.intern(),
            config,
            assets,
            banter_every: 40,
            stagger: Stagger::default(),
        }
    }

    /// `plugin` set up for the arena: its verbs, templates, prompt and GOAP fallback planner.
    pub fn hivemind(&self, plugin: HivemindPlugin) -> HivemindPlugin {
        plugin
            .with_registry(self.assets.registry.clone())
            .with_templates(self.assets.templates.clone())
            .with_prompt(self.assets.prompt.clone())
            .with_planner(ArenaPlanner::new(Arc::clone(&self.assets)))
    }
}

impl Plugin for ArenaAppPlugin {
    fn build(&self, app: &mut App) {
        let world = ArenaWorld::new(self.config.clone());
        let mut entities = BTreeMap::new();
        for id in world.agent_ids() {
            let team = world
                .agent(id)
                .map_or(Team::Red, hivemind_arena::Agent::team);
            let entity = app
                .world_mut()
                .spawn((
                    Name::new(name(id)),
                    NpcAgent::new(self.assets.persona_of(id)),
                    AgentSnapshot(world.snapshot(id)),
                    ArenaAgent {
                        id,
                        team,
                        begun: None,
                        waiting_since: None,
                        answering: None,
                    },
                ))
                .id();
            entities.insert(id, entity);
        }
        app.add_message::<PlayerSaid>().insert_resource(Arena {
            world,
            assets: Arc::clone(&self.assets),
            entities,
            banter_every: self.banter_every,
            stagger: self.stagger,
            last_report: TickReport::default(),
        });
        app.configure_sets(
            self.schedule,
            (
                ArenaSystems::Ask.before(HivemindSystems::Gather),
                ArenaSystems::Act.after(HivemindSystems::Apply),
            ),
        )
        .add_systems(
            self.schedule,
            (ask, answer_player).chain().in_set(ArenaSystems::Ask),
        )
        .add_systems(
            self.schedule,
            (act, advance).chain().in_set(ArenaSystems::Act),
        );
    }
}

/// The arena's systems, around hivemind's sets in the same schedule.
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArenaSystems {
    /// Before [`HivemindSystems::Gather`]: agents ask for plans and banter, and answer the
    /// player.
    Ask,
    /// After [`HivemindSystems::Apply`]: agents begin steps and the world moves a tick on.
    Act,
}

/// Idle agents with nothing left to do ask for a plan, in the rounds of [`Arena::stagger`];
/// some banter. Agents answering the player wait for that answer instead.
#[expect(
    clippy::needless_pass_by_value,
    reason = "Bevy systems take their parameters by value"
)]
fn ask(
    arena: Res<Arena>,
    mut agents: Query<(Entity, &mut ArenaAgent, &ActivePlan), Without<Thinking>>,
    mut plans: MessageWriter<RequestPlan>,
    mut lines: MessageWriter<RequestLine>,
) {
    let world = &arena.world;
    let now = world.now();
    let mut waiting: Vec<(u64, AgentId, Entity)> = Vec::new();
    for (entity, mut agent, plan) in &mut agents {
        let alive = world
            .agent(agent.id)
            .is_some_and(hivemind_arena::Agent::is_alive);
        if !alive || agent.answering.is_some() {
            agent.waiting_since = None;
            continue;
        }
        if world.is_idle(agent.id) && plan.is_finished() && plan.status != PlanStatus::Failed {
            let since = *agent.waiting_since.get_or_insert(now);
            waiting.push((since, agent.id, entity));
        }
        if arena.banter_every > 0
            && (now + u64::from(agent.id.0) * 7).is_multiple_of(arena.banter_every)
        {
            let mut line = RequestLine::banter(entity, situation(world, agent.id));
            line.slots = banter_slots(world, agent.id, name).into_pairs();
            lines.write(line);
        }
    }
    let stagger = arena.stagger;
    if stagger.every > 1 && !now.is_multiple_of(stagger.every) {
        return;
    }
    waiting.sort_unstable();
    let cap = match stagger.at_most {
        0 => waiting.len(),
        n => n,
    };
    for &(_, _, entity) in waiting.iter().take(cap) {
        plans.write(RequestPlan::new(entity));
        if let Ok((_, mut agent, _)) = agents.get_mut(entity) {
            agent.waiting_since = None;
        }
    }
}

/// Idle living agents begin their plan's current step. A busy agent whose step belongs to a plan
/// that has since been replaced (by one answering the player) drops it for the new plan's.
fn act(
    mut arena: ResMut<Arena>,
    mut agents: Query<(Entity, &mut ArenaAgent, &ActivePlan)>,
    mut finished: MessageWriter<StepFinished>,
) {
    for (entity, mut agent, plan) in &mut agents {
        if agent
            .answering
            .is_some_and(|answering| answering.replaces != plan.request)
        {
            agent.answering = None;
        }
        let (Some(request), Some(step)) = (plan.request, plan.current_step()) else {
            continue;
        };
        let key = (request, plan.current);
        let world = &mut arena.world;
        let alive = world
            .agent(agent.id)
            .is_some_and(hivemind_arena::Agent::is_alive);
        let replaced = agent.begun.is_some_and(|(begun, _)| begun != request);
        if agent.begun == Some(key) || !alive || !(world.is_idle(agent.id) || replaced) {
            continue;
        }
        // The dropped step reports nothing, so no `StepFinished` of the old plan reaches the new.
        world.cancel_step(agent.id);
        agent.begun = Some(key);
        if world.begin_step(agent.id, step).is_err() {
            finished.write(StepFinished {
                agent: entity,
                ok: false,
            });
        }
    }
}

/// The world moves one tick on; finished steps are reported and snapshots refreshed. A failed
/// step of an agent answering the player is not: the plan on its way replaces the one that
/// failed, where a report would ask for another.
fn advance(
    mut arena: ResMut<Arena>,
    mut agents: Query<(&ArenaAgent, &mut AgentSnapshot)>,
    mut finished: MessageWriter<StepFinished>,
) {
    let report = arena.world.tick();
    for done in &report.finished {
        if let Some(&entity) = arena.entities.get(&done.agent) {
            let answering = agents.get(entity).is_ok_and(|(a, _)| a.answering.is_some());
            if answering && !done.ok {
                continue;
            }
            finished.write(StepFinished {
                agent: entity,
                ok: done.ok,
            });
        }
    }
    for (agent, mut snapshot) in &mut agents {
        snapshot.0 = arena.world.snapshot(agent.id);
    }
    arena.last_report = report;
}

/// The arena's scripted "model": the GOAP plan for the snapshot it is shown.
///
/// It writes that plan as a model would, and the canned line for everything else. With
/// `latency`, it takes real time as a model does; on a lockstep clock its token counts cost
/// virtual time instead.
pub fn scripted_backend(assets: Arc<ArenaAssets>, latency: Latency) -> Arc<dyn BackendFactory> {
    let canned = ScriptedBackend::canned(&assets.registry.idle);
    let script: Script = Arc::new(move |agent: &BatchAgent, format: OutputFormat| {
        if format == OutputFormat::FreePlan {
            let steps = fallback_plan(&assets.domain, &assets.registry, &agent.snapshot);
            Plan::new(agent.agent, steps, PlanSource::Goap).to_json()
        } else {
            canned(agent, format)
        }
    });
    FnFactory::new(BackendId::SCRIPTED, move || {
        Ok(
            Box::new(ScriptedBackend::new(Arc::clone(&script)).with_latency(latency))
                as Box<dyn InferenceBackend>,
        )
    })
}
