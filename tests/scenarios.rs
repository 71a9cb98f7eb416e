//! The scenario suite on the real model: the default configuration's first steps make sense.
//!
//! Every situation of `hivemind_arena::scenarios` goes through the plugin with the local model
//! fetched by `scripts/setup`, on the lockstep clock so the answers repeat exactly. The first
//! step of each plan is judged by the suite's rules, which were written before any model ran;
//! situations from a played game, outside the suite, are judged by the same rules.
#![cfg(feature = "llama")]
#![expect(
    clippy::expect_used,
    reason = "a test stops at the first thing that is not as it should be"
)]

use std::sync::Arc;

use hivemind::core::backend::BackendFactory;
use hivemind::core::config::{ClockMode, HivemindConfig, PromptLayout};
use hivemind::llama::LlamaFactory;
use hivemind_arena::ArenaAssets;
use hivemind_examples::scenario_run::{Mode, Situation, SuiteOptions, SuiteReport, run_suite};

fn assets() -> Arc<ArenaAssets> {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/assets"));
    Arc::new(ArenaAssets::load(dir).expect("the workspace's assets load"))
}

/// The default model, or `None` (the test is skipped) if it is absent.
fn model(test: &str) -> Option<Arc<dyn BackendFactory>> {
    hivemind::llama::testing::model_for_test(test)?;
    Some(
        LlamaFactory::from_config(&HivemindConfig::default())
            .expect("the model fetched by scripts/setup loads"),
    )
}

fn default_options() -> SuiteOptions {
    let config = HivemindConfig::default();
    let mut options = SuiteOptions::new(match config.model.plan_format {
        hivemind::core::config::PlanFormat::Guided => Mode::Guided,
        hivemind::core::config::PlanFormat::Free if config.model.repair => Mode::FreeRepair,
        hivemind::core::config::PlanFormat::Free => Mode::Free,
    });
    options.layout = config.model.layout;
    options.clock = ClockMode::Lockstep;
    options.config = config;
    options
}

fn describe(report: &SuiteReport) -> String {
    report
        .answers
        .iter()
        .filter(|a| !a.is_sensible())
        .map(|a| {
            format!(
                "\n  {}: {:?}",
                a.situation.name,
                a.plan.as_ref().map(|p| (&p.steps, &p.source))
            )
        })
        .collect()
}

#[test]
fn the_default_configuration_makes_sensible_valid_plans_on_the_suite_and_off_it() {
    let Some(factory) = model("the_default_configuration_makes_sensible_valid_plans") else {
        return;
    };
    let assets = assets();
    let options = default_options();

    let suite = run_suite(&Situation::suite(), &assets, Arc::clone(&factory), &options);
    assert!(suite.len() >= 30);
    eprintln!(
        "suite: sensible {:.3}, valid {:.3}, from the model {:.3}, repaired {:.3}",
        suite.sensible(),
        suite.valid(&assets.registry),
        suite.from_model(),
        suite.repaired()
    );
    assert_eq!(suite.valid(&assets.registry), 1.0, "every plan validates");
    assert!(
        suite.from_model() >= 0.9,
        "the model answered: {:.3}",
        suite.from_model()
    );
    assert!(
        suite.sensible() >= 0.9,
        "sensible {:.3}; not:{}",
        suite.sensible(),
        describe(&suite)
    );

    let played = Situation::played(&assets, 11, 200, 29);
    assert!(played.len() >= 20);
    let off = run_suite(&played, &assets, factory, &options);
    eprintln!(
        "played (seed 11): sensible {:.3} of {}",
        off.sensible(),
        off.len()
    );
    assert_eq!(off.valid(&assets.registry), 1.0);
    assert!(
        off.sensible() >= 0.9,
        "sensible off the suite {:.3}; not:{}",
        off.sensible(),
        describe(&off)
    );
}

#[test]
fn in_the_shared_prompt_each_agent_keeps_its_own_persona() {
    let Some(factory) = model("in_the_shared_prompt_each_agent_keeps_its_own_persona") else {
        return;
    };
    let assets = assets();
    let mut options = default_options();
    options.mode = Mode::Guided;
    options.layout = PromptLayout::SharedPrompt;
    let report = run_suite(&Situation::suite(), &assets, factory, &options);
    let voices = report.voices();
    eprintln!("shared prompt voices: {voices:?}");
    assert_eq!(report.valid(&assets.registry), 1.0);
    assert!(
        report.sensible() >= 0.9,
        "sensible {:.3}",
        report.sensible()
    );
    // A line in another persona's words is bleed; lines in no persona's words are counted but
    // allowed.
    assert!(
        voices.bleed * 10 <= report.len(),
        "{} of {} lines in another persona's words",
        voices.bleed,
        report.len()
    );
}
