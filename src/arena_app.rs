//! The arena as a Bevy app: [`hivemind_arena`]'s rules driven by [`bevy_hivemind`]'s messages.
//!
//! [`ArenaAppPlugin`] owns an arena [`World`] and spawns one entity per arena agent with
//! [`NpcAgent`] and [`ArenaAgent`]. Each time hivemind's schedule runs:
//!
//! 1. before [`HivemindSystems::Gather`], every idle living agent whose plan is used up asks for
//!    a new one, and now and then an agent banters (staggered by id);
//! 2. after [`HivemindSystems::Apply`], every idle living agent begins the current step of its
//!    [`ActivePlan`]; the world moves one tick on; each finished step becomes a
//!    [`StepFinished`] (a failed one makes hivemind plan again); every snapshot is refreshed.
//!
//! The headless tests, the benchmarks and the rendered example all run this one game loop.

use std::collections::BTreeMap;
use std::sync::Arc;

use bevy::ecs::schedule::{InternedScheduleLabel, ScheduleLabel};
use bevy::prelude::*;
use bevy_hivemind::prelude::*;
use bevy_hivemind::{AgentSnapshot, RequestId};
use hivemind_arena::{
    ArenaAssets, ArenaConfig, Team, World, banter_slots, fallback_plan, situation,
};

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
    pub world: World,
    /// Verbs, GOAP domain, templates and prompt.
    pub assets: Arc<ArenaAssets>,
    /// The entity of each agent.
    pub entities: BTreeMap<AgentId, Entity>,
    /// Each agent banters about once every this many ticks; 0 never.
    pub banter_every: u64,
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
}

impl ArenaAppPlugin {
    /// The arena of `config` with `assets` in `Update`, bantering every 40 ticks.
    pub fn new(config: ArenaConfig, assets: Arc<ArenaAssets>) -> Self {
        ArenaAppPlugin {
            schedule: Update.intern(),
            config,
            assets,
            banter_every: 40,
        }
    }

    /// `plugin` set up for the arena: its verbs, templates, prompt and GOAP fallback planner.
    pub fn hivemind(&self, plugin: HivemindPlugin) -> HivemindPlugin {
        let assets = Arc::clone(&self.assets);
        plugin
            .with_registry(self.assets.registry.clone())
            .with_templates(self.assets.templates.clone())
            .with_prompt(self.assets.prompt.clone())
            .with_planner(move |snapshot: &WorldSnapshot| {
                fallback_plan(&assets.domain, &assets.registry, snapshot)
            })
    }
}

/// Personas take turns down each team's roster.
fn persona_of(assets: &ArenaAssets, id: AgentId) -> String {
    let personas = &assets.prompt.personas;
    match personas.len() {
        0 => "default".to_owned(),
        n => personas[(id.0 as usize / 2) % n].name.clone(),
    }
}

impl Plugin for ArenaAppPlugin {
    fn build(&self, app: &mut App) {
        let world = World::new(self.config.clone());
        let mut entities = BTreeMap::new();
        for id in world.agent_ids() {
            let team = world
                .agent(id)
                .map_or(Team::Red, hivemind_arena::Agent::team);
            let entity = app
                .world_mut()
                .spawn((
                    Name::new(name(id)),
                    NpcAgent::new(persona_of(&self.assets, id)),
                    AgentSnapshot(world.snapshot(id)),
                    ArenaAgent {
                        id,
                        team,
                        begun: None,
                    },
                ))
                .id();
            entities.insert(id, entity);
        }
        app.insert_resource(Arena {
            world,
            assets: Arc::clone(&self.assets),
            entities,
            banter_every: self.banter_every,
        });
        app.configure_sets(
            self.schedule,
            (
                ArenaSystems::Ask.before(HivemindSystems::Gather),
                ArenaSystems::Act.after(HivemindSystems::Apply),
            ),
        )
        .add_systems(self.schedule, ask.in_set(ArenaSystems::Ask))
        .add_systems(
            self.schedule,
            (act, advance).chain().in_set(ArenaSystems::Act),
        );
    }
}

/// The arena's systems, around hivemind's sets in the same schedule.
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArenaSystems {
    /// Before [`HivemindSystems::Gather`]: agents ask for plans and banter.
    Ask,
    /// After [`HivemindSystems::Apply`]: agents begin steps and the world moves a tick on.
    Act,
}

/// Idle agents with nothing left to do ask for a plan; some banter.
#[expect(
    clippy::needless_pass_by_value,
    reason = "Bevy systems take their parameters by value"
)]
fn ask(
    arena: Res<Arena>,
    agents: Query<(Entity, &ArenaAgent, &ActivePlan), Without<Thinking>>,
    mut plans: MessageWriter<RequestPlan>,
    mut lines: MessageWriter<RequestLine>,
) {
    let world = &arena.world;
    let now = world.now();
    for (entity, agent, plan) in &agents {
        let alive = world
            .agent(agent.id)
            .is_some_and(hivemind_arena::Agent::is_alive);
        if !alive {
            continue;
        }
        if world.is_idle(agent.id) && plan.is_finished() && plan.status != PlanStatus::Failed {
            plans.write(RequestPlan::new(entity));
        }
        if arena.banter_every > 0
            && (now + u64::from(agent.id.0) * 7).is_multiple_of(arena.banter_every)
        {
            let mut line = RequestLine::banter(entity, situation(world, agent.id));
            line.slots = banter_slots(world, agent.id, name).into_pairs();
            lines.write(line);
        }
    }
}

/// Idle living agents begin their plan's current step.
fn act(
    mut arena: ResMut<Arena>,
    mut agents: Query<(Entity, &mut ArenaAgent, &ActivePlan)>,
    mut finished: MessageWriter<StepFinished>,
) {
    for (entity, mut agent, plan) in &mut agents {
        let (Some(request), Some(step)) = (plan.request, plan.current_step()) else {
            continue;
        };
        let key = (request, plan.current);
        let world = &mut arena.world;
        let alive = world
            .agent(agent.id)
            .is_some_and(hivemind_arena::Agent::is_alive);
        if agent.begun == Some(key) || !alive || !world.is_idle(agent.id) {
            continue;
        }
        agent.begun = Some(key);
        if world.begin_step(agent.id, step).is_err() {
            finished.write(StepFinished {
                agent: entity,
                ok: false,
            });
        }
    }
}

/// The world moves one tick on; finished steps are reported and snapshots refreshed.
fn advance(
    mut arena: ResMut<Arena>,
    mut agents: Query<(&ArenaAgent, &mut AgentSnapshot)>,
    mut finished: MessageWriter<StepFinished>,
) {
    let report = arena.world.tick();
    for done in &report.finished {
        if let Some(&entity) = arena.entities.get(&done.agent) {
            finished.write(StepFinished {
                agent: entity,
                ok: done.ok,
            });
        }
    }
    for (agent, mut snapshot) in &mut agents {
        snapshot.0 = arena.world.snapshot(agent.id);
    }
}
