//! The smallest game with hivemind: a guard with an empty gun asks for a plan and follows it.
use bevy::{log::LogPlugin, prelude::*};
use hivemind::prelude::*;

fn main() -> Result<AppExit, Box<dyn std::error::Error>> {
    let mut hivemind = HivemindPlugin::default()
        .with_registry(ActionRegistry::load("assets/actions.ron".as_ref())?)
        .with_prompt(PromptAsset::load("assets/prompt.ron".as_ref())?);
    if let Ok(model) = LlamaFactory::from_config(&HivemindConfig::default()) {
        hivemind = hivemind.with_backend(model);
    }
    Ok(App::new()
        .add_plugins((MinimalPlugins, LogPlugin::default(), hivemind))
        .add_systems(Startup, spawn_guard)
        .add_systems(Update, follow_orders.after(HivemindSystems::Apply))
        .run())
}

fn spawn_guard(mut commands: Commands) {
    let me = WorldSnapshot::new(AgentId(1), Point::new(4, 4)).with_fact("ammo", 0);
    let me = me.with_entity(EntityInfo::new(EntityId(7), "enemy", Point::new(9, 4)));
    let agent = (NpcAgent::new("veteran"), AgentSnapshot(me));
    let guard = commands.spawn(agent).id();
    commands.request_plan(guard);
}

fn follow_orders(plans: Query<&ActivePlan, Changed<ActivePlan>>, mut exit: MessageWriter<AppExit>) {
    for plan in &plans {
        let steps: Vec<String> = plan.steps.iter().map(PlanStep::to_json).collect();
        info!("{steps:?} from {:?}, {:?}", plan.source, plan.fallback);
        if plan.status == PlanStatus::Complete {
            exit.write(AppExit::Success);
        }
    }
}
