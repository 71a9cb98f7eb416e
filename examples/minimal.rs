//! The smallest game with hivemind: a guard with an empty gun asks for a plan and follows it.
#![expect(
    clippy::print_stdout,
    reason = "an example that prints what it is told"
)]

use bevy::prelude::*;
use hivemind::bevy::prelude::*;
use hivemind::core::snapshot::{EntityId, EntityInfo, Point};
use hivemind::core::{action::ActionRegistry, config::HivemindConfig, prompt::PromptAsset};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut hivemind = HivemindPlugin::default()
        .with_registry(ActionRegistry::load("assets/actions.ron".as_ref())?)
        .with_prompt(PromptAsset::load("assets/prompt.ron".as_ref())?);
    match hivemind::llama::LlamaFactory::from_config(&HivemindConfig::default()) {
        Ok(model) => hivemind = hivemind.with_backend(model),
        Err(e) => println!("{e}: the guard plans with fallbacks"),
    }
    App::new()
        .add_plugins((MinimalPlugins, hivemind))
        .add_systems(Startup, spawn_guard)
        .add_systems(Update, follow_orders.after(HivemindSystems::Apply))
        .run();
    Ok(())
}

fn spawn_guard(mut commands: Commands) {
    let snapshot = WorldSnapshot::new(AgentId(1), Point::new(4, 4))
        .with_entity(EntityInfo::new(EntityId(7), "enemy", Point::new(9, 4)))
        .with_fact("ammo", 0);
    let guard = commands
        .spawn((NpcAgent::new("veteran"), AgentSnapshot(snapshot)))
        .id();
    commands.request_plan(guard);
}

fn follow_orders(
    mut steps: MessageReader<PlanStepReady>,
    mut done: MessageReader<PlanReady>,
    mut exit: MessageWriter<AppExit>,
) {
    for ready in steps.read() {
        println!("step {}: {}", ready.index, ready.step.to_json());
    }
    for plan in done.read() {
        println!(
            "plan from {:?} (fallback: {:?})",
            plan.source, plan.fallback
        );
        exit.write(AppExit::Success);
    }
}
