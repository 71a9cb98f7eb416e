//! The model-value suite (`hivemind_arena::value`) on the default model, through the plugin on
//! the lockstep clock: what the model adds on top of the rules, each figure held to its target,
//! or where the target is out of reach for the default model, to the figure measured when the
//! suite landed minus five points (the README's model-value table lists both).
//!
//! Skipped without the model file unless `HIVEMIND_REQUIRE_MODEL` is set (CI sets it).
use std::sync::Arc;

use hivemind::core::config::HivemindConfig;
use hivemind_arena::ArenaAssets;
use hivemind_examples::value_run::{ValueOptions, run_value_suite};

/// A floor: the target, or the measured figure minus five points where the target is out of
/// reach.
struct Floor {
    what: &'static str,
    floor: f64,
    target: f64,
}

#[test]
fn what_the_model_adds_holds_its_floors() {
    let Some(path) = hivemind::llama::testing::model_for_test("model_value") else {
        return;
    };
    let assets = Arc::new(
        ArenaAssets::load(concat!(env!("CARGO_MANIFEST_DIR"), "/assets").as_ref())
            .unwrap_or_else(|e| panic!("the arena's assets load: {e}")),
    );
    let mut config = HivemindConfig::default();
    config.model.path = Some(path.display().to_string());
    let factory = hivemind::llama::LlamaFactory::from_config(&config)
        .unwrap_or_else(|e| panic!("the model loads: {e}"));
    let options = ValueOptions::new(&assets, config);
    let report = run_value_suite(&assets, factory, "default", &options);
    let f = report.figures();
    eprintln!("{}", report.table());

    let floors = [
        Floor {
            what: "choice: sensible picks",
            floor: f.choice_sensible,
            target: 90.0,
        },
        Floor {
            what: "orders followed",
            floor: f.orders_followed,
            target: 80.0,
        },
        Floor {
            what: "plan lines written by the model",
            floor: f.lines_own,
            target: 80.0,
        },
        Floor {
            what: "plan lines distinct",
            floor: f.lines_distinct,
            target: 90.0,
        },
        Floor {
            what: "plan lines in their persona's words",
            floor: f.lines_voice,
            target: 60.0,
        },
        Floor {
            what: "replies by the model within the reply budget",
            floor: f.replies_model,
            target: 90.0,
        },
        Floor {
            what: "replies on topic",
            floor: f.replies_on_topic,
            target: 60.0,
        },
    ];
    let mut failed = Vec::new();
    for (floor, need) in floors.iter().zip(FLOORS) {
        assert_eq!(floor.what, need.0, "the floors are listed in order");
        let want = need.1.min(floor.target);
        if floor.floor < want {
            failed.push(format!(
                "{}: {:.1} % < {want:.1} %",
                floor.what, floor.floor
            ));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");

    // Held to their targets outright.
    assert_eq!(f.copies_shown, 0, "a copy reached a player");
    assert_eq!(
        f.replies_first_in_time, 100.0,
        "first words after the dialogue deadline"
    );
    assert!(
        f.choice_sensible >= f.choice_random + CHOICE_OVER_RANDOM,
        "choice {:.1} % vs random {:.1} %",
        f.choice_sensible,
        f.choice_random
    );
    assert!(
        f.orders_followed >= f.orders_first + ORDERS_OVER_FIRST,
        "orders {:.1} % vs always-first {:.1} %",
        f.orders_followed,
        f.orders_first
    );
    assert_eq!(f.lines_bleed, 0, "lines in another persona's words");
}

/// Each figure's floor in percent: the target where the default model reaches it, else the
/// figure measured when the suite landed minus five points.
/// Measured on `SmolLM2-135M-Instruct.Q4_0.gguf` when the suite landed: choice 54 %, orders
/// 50 %, lines 66 % written by the model and 64 % distinct, 2 % in the persona's words, replies
/// 100 % by the model and 19 % on topic (35 % with other sampling seeds: see the README).
const FLOORS: [(&str, f64); 7] = [
    ("choice: sensible picks", 49.0),
    ("orders followed", 45.0),
    ("plan lines written by the model", 61.0),
    ("plan lines distinct", 59.0),
    // Measured 2 %: five points below is no floor at all, which is the truth of it.
    ("plan lines in their persona's words", 0.0),
    ("replies by the model within the reply budget", 90.0),
    ("replies on topic", 14.0),
];

/// Points the model's choice must lead the random picker by: target 25, measured 12.
const CHOICE_OVER_RANDOM: f64 = 7.0;
/// Points obeying the player must lead the always-first picker by: target 25, measured 11.
const ORDERS_OVER_FIRST: f64 = 6.0;
