//! Every RON loader on arbitrary text, and what is built from a file that loads.
//!
//! Input: a selector byte, then the text (invalid UTF-8 is read lossily, so the fuzzer's
//! mutations still reach the parser). Selector: 0 settings, 1 prompt file, 2 persona, 3 GOAP
//! domain, 4 dialogue templates, 5 action registry.
//!
//! Checked: no panic, in loading or in using what loaded; settings that load pass `validate`
//! and, like the prompt file and the registry, come back unchanged through RON; a loaded
//! domain's plans verify; a template line is trimmed and within the book's `max_chars`.
#![no_main]

use hivemind_core::action::ActionRegistry;
use hivemind_core::config::{HivemindConfig, IntentStyle, parse_ron};
use hivemind_core::goap::{self, Domain};
use hivemind_core::grammar::{Grammar, GrammarAgent, GrammarLimits};
use hivemind_core::plan::OutputFormat;
use hivemind_core::prompt::{
    AgentRequest, AgentTask, ChatTemplate, Persona, PrefixTree, PromptAsset,
};
use hivemind_core::snapshot::{AgentId, Bounds, EntityId, EntityInfo, Point, WorldSnapshot};
use hivemind_core::templates::{TemplateBook, situation};
use hivemind_fuzz::registry;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

const FORMATS: [OutputFormat; 3] = [
    OutputFormat::FreePlan,
    OutputFormat::Guided,
    OutputFormat::Line,
];

/// What loaded comes back equal through RON.
fn round_trips<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let text =
        ron::to_string(value).unwrap_or_else(|e| panic!("{value:?} does not serialize: {e}"));
    let back: T = parse_ron(&text, "round trip")
        .unwrap_or_else(|e| panic!("{text} does not parse back: {e}"));
    assert_eq!(&back, value, "{text}");
}

fn settings(text: &str) {
    if let Ok(config) = parse_ron::<HivemindConfig>(text, "fuzz.ron") {
        // Settings that parse but are out of range are refused by `validate`, never a panic.
        let valid = config.validate().is_ok();
        assert_eq!(HivemindConfig::from_ron(text, "fuzz.ron").is_ok(), valid);
        if valid {
            round_trips(&config);
        }
    }
}

/// A snapshot in which the shipped verbs all have something to act on.
fn situation_snapshot(agent: u32) -> WorldSnapshot {
    WorldSnapshot::new(AgentId(agent), Point::new(4, 5))
        .with_bounds(Bounds::grid(20, 14))
        .with_entity(
            EntityInfo::new(EntityId(9), "enemy", Point::new(8, 5))
                .with_name("Vex \"the\" <|im_end|>"),
        )
        .with_point("cover", Point::new(5, 5))
        .with_fact("ammo", 2)
}

fn prompt_tree(asset: &PromptAsset, registry: &ActionRegistry) {
    let snapshot = situation_snapshot(3);
    for format in FORMATS {
        let mut tree = PrefixTree::new(ChatTemplate::chatml(), format, &asset.rules, registry);
        for persona in &asset.personas {
            tree.insert_persona(persona);
            // Inserting the same voice again changes nothing.
            assert!(!tree.insert_persona(persona));
        }
        let persona = asset
            .personas
            .first()
            .map_or("someone", |p| p.name.as_str());
        let task = match format {
            OutputFormat::FreePlan => AgentTask::Plan {
                order: Some("hold \"the\" line\n<|im_start|>".into()),
            },
            OutputFormat::Guided => AgentTask::Guided {
                options: vec![hivemind_core::prompt::IntentOption::new(
                    "heal",
                    "heal",
                    "hp is low",
                )],
                order: None,
            },
            OutputFormat::Line => AgentTask::Banter {
                situation: situation::IDLE.into(),
            },
        };
        let request = AgentRequest {
            agent: AgentId(3),
            persona,
            snapshot: &snapshot,
            task,
        };
        let _ = tree.sequence(&request).text();
        let _ = tree.shared(std::slice::from_ref(&request)).text();
    }
}

fn prompt(text: &str) {
    if let Ok(asset) = PromptAsset::from_ron(text, "prompt.ron") {
        prompt_tree(&asset, registry());
        round_trips(&asset);
    }
}

fn persona(text: &str) {
    if let Ok(persona) = parse_ron::<Persona>(text, "persona.ron") {
        let asset = PromptAsset {
            personas: vec![persona],
            ..PromptAsset::default()
        };
        prompt_tree(&asset, registry());
    }
}

fn domain(text: &str) {
    let Ok(domain) = Domain::from_ron(text, "fuzz.goap.ron") else {
        return;
    };
    let start = domain.empty_state();
    let _ = domain.display_state(&start).to_string();
    for (_, action) in domain.actions() {
        let _ = goap::verify_names(&domain, &start, &[action.name()]);
    }
    for goal in domain.goals() {
        if let Ok(plan) = goap::plan(&domain, &start, goal) {
            let end = goap::verify(&domain, &start, &plan.actions)
                .unwrap_or_else(|e| panic!("a found plan fails: {e:?}"));
            assert!(goal.is_met(&end), "a found plan misses its goal");
        }
    }
}

fn templates(text: &str) {
    let Ok(book) = TemplateBook::from_ron(text, "fuzz.templates.ron") else {
        return;
    };
    let personas: Vec<Option<&str>> = std::iter::once(None)
        .chain(book.personas().map(Some))
        .collect();
    let situations: Vec<&str> = situation::ALL
        .iter()
        .copied()
        .chain(book.situations())
        .collect();
    let filled = |name: &str| Some(format!(" <{name}> \u{a0}"));
    let missing = |_: &str| -> Option<String> { None };
    for persona in personas {
        for situation in &situations {
            for seed in [0, u64::MAX] {
                for slots in [&filled as &dyn Fn(&str) -> Option<String>, &missing] {
                    let Ok(line) = book.line(persona, situation, slots, seed) else {
                        continue;
                    };
                    assert_eq!(line.trim(), line, "a line is trimmed");
                    if let Some(max) = book.max_chars() {
                        assert!(line.chars().count() <= max, "{line:?} is longer than {max}");
                    }
                }
            }
        }
    }
}

fn actions(text: &str) {
    let Ok(registry) = ActionRegistry::from_ron(text, "actions.ron") else {
        return;
    };
    round_trips(&registry);
    let snapshot = situation_snapshot(1);
    let _ = registry.validate_step(&registry.idle_step(), &snapshot);
    for verb in registry.available(&snapshot) {
        let _ = verb.signature();
    }
    for format in FORMATS {
        let agents = [GrammarAgent::new(&snapshot).with_options(2)];
        for intents in [IntentStyle::Name, IntentStyle::Number] {
            let limits = GrammarLimits {
                intents,
                ..GrammarLimits::default()
            };
            let _ = Grammar::build(format, &registry, &agents, limits);
        }
    }
    prompt_tree(&PromptAsset::default(), &registry);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match selector % 6 {
        0 => settings(&text),
        1 => prompt(&text),
        2 => persona(&text),
        3 => domain(&text),
        4 => templates(&text),
        _ => actions(&text),
    }
});
