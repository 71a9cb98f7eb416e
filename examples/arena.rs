//! A headless game in the arena, played by GOAP fallback plans and template banter alone.
//!
//! ```text
//! cargo run --example arena --no-default-features -- [--ticks N] [--seed S]
//! ```
//!
//! Every agent re-plans with `fallback_plan` when its plan is used up or a step fails, and now
//! and then says a line from the dialogue templates about its situation. At the end it prints
//! the scores, how the plans went and a few of the lines. Until the Bevy scene exists, this is
//! the arena with no model and no renderer: what every NPC does when the LLM never answers.
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example that prints its results"
)]

use std::collections::{BTreeMap, VecDeque};
use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use hivemind::arena::{
    Agent, ArenaAssets, ArenaConfig, Team, World, banter_slots, fallback_plan, situation,
};
use hivemind::arena_app::name;
use hivemind::prelude::*;

/// Personas take turns down each team's roster; `None` speaks the shared lines.
const PERSONAS: [Option<&str>; 3] = [Some("veteran"), Some("rookie"), None];

/// Each agent banters about once every this many ticks, staggered by id.
const BANTER_EVERY: u64 = 40;

fn parse_args() -> Result<(u64, u64), String> {
    let (mut ticks, mut seed) = (300, 1);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let target = match flag.as_str() {
            "--ticks" => &mut ticks,
            "--seed" => &mut seed,
            "-h" | "--help" => {
                println!("usage: arena [--ticks N] [--seed S]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        };
        let value = args.next().ok_or(format!("{flag} needs a number"))?;
        *target = value
            .parse()
            .map_err(|_| format!("{flag}: `{value}` is not a number"))?;
    }
    Ok((ticks, seed))
}

#[derive(Default)]
struct Tally {
    plans: u32,
    planning: Duration,
    ok: u32,
    failed: BTreeMap<&'static str, u32>,
    rejected: u32,
    lines: Vec<(u64, AgentId, &'static str, String)>,
}

fn main() -> Result<(), Box<dyn Error>> {
    let (ticks, seed) = parse_args().unwrap_or_else(|message| {
        eprintln!("arena: {message}");
        std::process::exit(2);
    });
    let assets = ArenaAssets::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/assets")))?;
    let mut world = World::new(ArenaConfig::default().with_seed(seed));
    let mut plans: Vec<VecDeque<PlanStep>> = vec![VecDeque::new(); world.agents().len()];
    let mut tally = Tally::default();

    for _ in 0..ticks {
        for agent in world.agent_ids() {
            if !world.is_idle(agent) {
                continue;
            }
            let plan = &mut plans[agent.0 as usize];
            if plan.is_empty() {
                let snapshot = world.snapshot(agent);
                let start = Instant::now();
                let steps = fallback_plan(&assets.domain, &assets.registry, &snapshot);
                tally.planning += start.elapsed();
                tally.plans += 1;
                plan.extend(steps);
            }
            if let Some(step) = plan.pop_front()
                && world.begin_step(agent, &step).is_err()
            {
                tally.rejected += 1;
                plan.clear();
            }
        }

        let report = world.tick();
        for finished in &report.finished {
            match finished.failure {
                None => tally.ok += 1,
                Some(why) => {
                    *tally.failed.entry(why.as_str()).or_default() += 1;
                    plans[finished.agent.0 as usize].clear();
                }
            }
        }

        for agent in world.agent_ids() {
            let due = (report.tick + 7 * u64::from(agent.0)).is_multiple_of(BANTER_EVERY);
            if !due || !world.agent(agent).is_some_and(Agent::is_alive) {
                continue;
            }
            let about = situation(&world, agent);
            let slots = banter_slots(&world, agent, name);
            let persona = PERSONAS[agent.0 as usize % PERSONAS.len()];
            let line_seed = (report.tick << 16) ^ (seed << 32) ^ u64::from(agent.0);
            if let Ok(line) = assets.templates.line(persona, about, &slots, line_seed) {
                tally.lines.push((report.tick, agent, about, line));
            }
        }
    }

    print_summary(&world, &tally, ticks, seed);
    Ok(())
}

fn print_summary(world: &World, tally: &Tally, ticks: u64, seed: u64) {
    let size = world.config().team_size;
    println!(
        "arena: {ticks} ticks, seed {seed}, {size} v {size}, GOAP plans and template banter only\n"
    );
    println!(
        "{:<6} {:>6} {:>6} {:>7}",
        "team", "score", "kills", "deaths"
    );
    for team in Team::ALL {
        let (score, kills, deaths) = (
            world.score(team),
            world.team_kills(team),
            world.team_deaths(team),
        );
        println!("{:<6} {score:>6} {kills:>6} {deaths:>7}", team.as_str());
    }

    let mean_us = tally.planning.as_secs_f64() * 1e6 / f64::from(tally.plans.max(1));
    let failed: u32 = tally.failed.values().sum();
    let reasons: Vec<String> = tally
        .failed
        .iter()
        .map(|(why, n)| format!("{why} {n}"))
        .collect();
    println!();
    println!("{:<22} {:>7}", "plans made", tally.plans);
    let build = if cfg!(debug_assertions) {
        "  (unoptimised build)"
    } else {
        ""
    };
    println!("{:<22} {mean_us:>7.1} µs{build}", "mean per fallback plan");
    println!("{:<22} {:>7}", "steps finished ok", tally.ok);
    println!(
        "{:<22} {:>7}  ({})",
        "steps failed",
        failed,
        reasons.join(", ")
    );
    println!("{:<22} {:>7}", "steps rejected", tally.rejected);
    println!("{:<22} {:>7}", "lines said", tally.lines.len());

    // The first line of each situation, topped up to eight with lines from across the run.
    let mut samples: Vec<&(u64, AgentId, &str, String)> = Vec::new();
    for entry in &tally.lines {
        if samples.iter().all(|s| s.2 != entry.2) {
            samples.push(entry);
        }
    }
    for entry in tally.lines.iter().step_by(7) {
        if samples.len() < 8 && !samples.contains(&entry) {
            samples.push(entry);
        }
    }
    samples.sort_by_key(|e| (e.0, e.1));
    println!("\nsample lines");
    for (tick, agent, about, line) in samples {
        let team = world.agent(*agent).map_or("?", |a| a.team().as_str());
        let persona = PERSONAS[agent.0 as usize % PERSONAS.len()].unwrap_or("-");
        println!(
            "  t={tick:<4} {:<6} {team:<4} {persona:<7} {about:<12} {line}",
            name(*agent)
        );
    }
}
