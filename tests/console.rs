//! Every console command, fed as text to a headless arena app on a lockstep clock, with
//! assertions on what it prints and on the state it changes.
#![cfg(feature = "console")]
#![expect(
    clippy::unwrap_used,
    reason = "a test stops at the first thing that is not as it should be"
)]

use std::sync::Arc;
use std::time::Duration;

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use hivemind::bevy::console::{
    Console, ConsoleAppExt, ConsoleCommands, ConsoleReply, HivemindConsolePlugin, Probe,
};
use hivemind::bevy::prelude::*;
use hivemind::bevy::{Hivemind, HivemindMetrics};
use hivemind::core::backend::{Latency, Transcript};
use hivemind::core::config::{ClockMode, HivemindConfig, PromptLayout};
use hivemind::core::plan::BackendId;
use hivemind_arena::{ArenaAssets, ArenaConfig};
use hivemind_examples::arena_app::{ArenaAppPlugin, scripted_backend};

const TICK: Duration = Duration::from_millis(100);

fn app() -> App {
    let assets = Arc::new(
        ArenaAssets::load(concat!(env!("CARGO_MANIFEST_DIR"), "/assets").as_ref()).unwrap(),
    );
    let mut config = HivemindConfig::default();
    config.clock.mode = ClockMode::Lockstep;
    let mut arena = ArenaAppPlugin::new(
        ArenaConfig::default().with_seed(3).with_team_size(2),
        Arc::clone(&assets),
    );
    arena.banter_every = 0;
    let hivemind = arena.hivemind(
        HivemindPlugin::new(Update)
            .with_config(config)
            .with_backend(scripted_backend(assets, Latency::Virtual)),
    );
    let mut app = App::new();
    app.add_plugins((MinimalPlugins, hivemind, arena, HivemindConsolePlugin))
        .insert_resource(TimeUpdateStrategy::ManualDuration(TICK));
    app.finish();
    app.cleanup();
    app
}

/// Submits `line`, runs one frame and returns what the command printed (after its echo).
fn run(app: &mut App, line: &str) -> Vec<String> {
    app.world_mut().resource_mut::<Console>().submit(line);
    app.update();
    let console = app.world().resource::<Console>();
    let log: Vec<String> = console.log().map(str::to_owned).collect();
    let echo = log
        .iter()
        .rposition(|l| *l == format!("> {line}"))
        .unwrap_or_else(|| panic!("`{line}` was not echoed: {log:?}"));
    log[echo + 1..].to_vec()
}

fn frames(app: &mut App, n: usize) {
    for _ in 0..n {
        app.update();
    }
}

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

#[test]
fn help_lists_every_command_and_explains_one() {
    let mut app = app();
    let out = run(&mut app, "help");
    assert!(out.iter().any(|l| l.starts_with("hm ")), "{out:?}");
    assert!(out.iter().any(|l| l.starts_with("help ")), "{out:?}");
    let out = run(&mut app, "help hm");
    for sub in [
        "status",
        "perf",
        "agents",
        "cache",
        "persona",
        "backend",
        "force-fallback",
        "replay",
        "test",
    ] {
        assert!(has(&out, sub), "`help hm` does not mention {sub}: {out:?}");
    }
}

#[test]
fn unknown_commands_and_bad_arguments_print_usage_and_change_nothing() {
    let mut app = app();
    assert!(has(
        &run(&mut app, "launch missiles"),
        "unknown command `launch`"
    ));
    let out = run(&mut app, "hm layout diagonal");
    assert!(has(&out, "invalid value 'diagonal'"), "{out:?}");
    assert!(has(&out, "Usage: hm layout"), "{out:?}");
    let out = run(&mut app, "hm");
    assert!(has(&out, "Usage: hm"), "{out:?}");
    assert!(has(
        &run(&mut app, "hm persona \"veteran"),
        "unbalanced quotes"
    ));
    let out = run(&mut app, "hm backend warp");
    assert!(has(&out, "no backend `warp` is registered"), "{out:?}");
    assert!(has(&out, "registered: scripted"), "{out:?}");
    let hm = app.world().resource::<Hivemind>();
    assert_eq!(hm.layout(), PromptLayout::ParallelSequences);
    assert_eq!(hm.backend(), Some(BackendId::new(BackendId::SCRIPTED)));
}

#[test]
fn status_reports_backend_layout_queue_and_mode() {
    let mut app = app();
    let out = run(&mut app, "hm status");
    assert!(has(&out, "backend   scripted"), "{out:?}");
    assert!(has(&out, "layout    parallel"), "{out:?}");
    assert!(has(&out, "workers"), "{out:?}");
    assert!(
        has(&out, "prefix    - (the backend keeps no decoded prefix)"),
        "{out:?}"
    );
    assert!(has(&out, "mode      model answers"), "{out:?}");
    run(&mut app, "hm force-fallback on");
    let out = run(&mut app, "hm status");
    assert!(has(&out, "fallback only: forced"), "{out:?}");
}

#[test]
fn perf_prints_latency_by_kind_and_source_and_opens_the_plot() {
    let mut app = app();
    frames(&mut app, 40);
    let out = run(&mut app, "hm perf");
    assert!(has(&out, "latency: full answer"), "{out:?}");
    assert!(
        out.iter()
            .any(|l| l.trim_start().starts_with("plan") && l.contains("scripted")),
        "no plan latency from the scripted backend: {out:?}"
    );
    assert!(has(&out, "tokens/s"), "{out:?}");
    assert!(has(&out, "repairs"), "{out:?}");
    assert!(app.world().resource::<Console>().shows_plot());
}

#[test]
fn agents_lists_each_agent_with_its_plan_and_source() {
    let mut app = app();
    frames(&mut app, 40);
    let out = run(&mut app, "hm agents");
    for who in ["Vex", "Rook", "Ash", "Moss"] {
        let row = out.iter().find(|l| l.starts_with(who));
        assert!(row.is_some(), "{who} is not listed: {out:?}");
    }
    assert!(has(&out, "llm (scripted)") || has(&out, "cache"), "{out:?}");
}

#[test]
fn cache_reports_and_clears() {
    let mut app = app();
    frames(&mut app, 60);
    assert!(!app.world().resource::<Hivemind>().cache().is_empty());
    let out = run(&mut app, "hm cache");
    assert!(has(&out, "size "), "{out:?}");
    assert!(has(&out, "hit rate"), "{out:?}");
    assert!(has(&out, "ttl"), "{out:?}");
    // No answer may fill the cache in the frame of the clear: the model is switched off and
    // what it was writing is let finish first.
    run(&mut app, "hm force-fallback on");
    frames(&mut app, 20);
    assert!(!app.world().resource::<Hivemind>().cache().is_empty());
    let out = run(&mut app, "hm cache clear");
    assert!(has(&out, "cache cleared"), "{out:?}");
    assert_eq!(app.world().resource::<Hivemind>().cache().len(), 0);
}

#[test]
fn persona_shows_its_block_or_lists_the_known_ones() {
    let mut app = app();
    let out = run(&mut app, "hm persona veteran");
    assert!(has(&out, "persona   veteran"), "{out:?}");
    assert!(has(&out, "voice"), "{out:?}");
    assert!(has(&out, "branch    -"), "{out:?}");
    let out = run(&mut app, "hm persona nobody");
    assert!(
        has(&out, "unknown persona `nobody`; known: veteran"),
        "{out:?}"
    );
}

#[test]
fn backend_layout_stream_and_force_fallback_switch_the_runtime() {
    let mut app = app();
    let out = run(&mut app, "hm backend remote");
    assert!(has(&out, "registered: scripted"), "{out:?}");
    assert_eq!(
        app.world().resource::<Hivemind>().backend(),
        Some(BackendId::new(BackendId::SCRIPTED))
    );

    assert!(has(&run(&mut app, "hm layout shared"), "layout: shared"));
    app.update();
    assert_eq!(
        app.world().resource::<Hivemind>().layout(),
        PromptLayout::SharedPrompt
    );
    run(&mut app, "hm stream off");
    assert!(!app.world().resource::<Hivemind>().is_streaming());
    run(&mut app, "hm stream on");
    assert!(app.world().resource::<Hivemind>().is_streaming());

    run(&mut app, "hm force-fallback on");
    assert!(app.world().resource::<Hivemind>().is_forcing_fallback());
    frames(&mut app, 30);
    let metrics = &app.world().resource::<HivemindMetrics>().0;
    assert!(metrics.total_fallbacks(FallbackReason::Forced) > 0);
    run(&mut app, "hm force-fallback off");
    assert!(!app.world().resource::<Hivemind>().is_forcing_fallback());
}

/// Runs frames until the console's log has a line containing `needle`; returns whether it came
/// within a few frames.
fn eventually(app: &mut App, needle: &str) -> bool {
    (0..50).any(|_| {
        app.update();
        app.world()
            .resource::<Console>()
            .log()
            .any(|l| l.contains(needle))
    })
}

#[test]
fn replay_records_a_transcript_and_plays_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.jsonl");
    let path = file.display().to_string();
    let mut app = app();
    let out = run(&mut app, &format!("hm replay record {path}"));
    assert!(has(&out, "recording to"), "{out:?}");
    frames(&mut app, 40);
    let out = run(&mut app, "hm replay stop");
    assert!(has(&out, "saved"), "{out:?}");
    let saved = std::fs::read_to_string(&file).unwrap();
    assert!(saved.lines().count() > 0, "an empty transcript");

    // The transcript is read off the main thread; the backend switches when it is in.
    let out = run(&mut app, &format!("hm replay play {path}"));
    assert!(has(&out, "loading"), "{out:?}");
    assert!(eventually(&mut app, "backend: replay"));
    assert_eq!(
        app.world().resource::<Hivemind>().backend(),
        Some(BackendId::new(BackendId::REPLAY))
    );
    run(&mut app, "hm replay play /no/such/file.jsonl");
    assert!(eventually(
        &mut app,
        "error: transcript /no/such/file.jsonl"
    ));
    assert!(has(&run(&mut app, "hm replay stop"), "not recording"));
}

/// What once lost a recording or hung the game: a bad path noticed only at the end, a backend
/// switch that dropped it, an exit that never saved it, and a device read on the main thread.
#[test]
fn recordings_are_checked_at_the_start_and_saved_on_a_switch_and_on_exit() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app();

    let bad = dir.path().join("no-such-dir").join("run.jsonl");
    let out = run(&mut app, &format!("hm replay record {}", bad.display()));
    assert!(has(&out, "error: transcript"), "{out:?}");
    assert!(app.world().resource::<Hivemind>().recording().is_none());

    let switched = dir.path().join("switched.jsonl");
    run(
        &mut app,
        &format!("hm replay record {}", switched.display()),
    );
    frames(&mut app, 30);
    let out = run(&mut app, "hm backend scripted");
    assert!(has(&out, "saved"), "{out:?}");
    assert!(has(&out, "backend: scripted"), "{out:?}");
    assert!(!Transcript::load(&switched).unwrap().streams().is_empty());

    let exited = dir.path().join("exited.jsonl");
    run(&mut app, &format!("hm replay record {}", exited.display()));
    frames(&mut app, 30);
    app.world_mut().write_message(AppExit::Success);
    app.update();
    let log: Vec<&str> = app.world().resource::<Console>().log().collect();
    let saved = Transcript::load(&exited).unwrap_or_else(|e| panic!("{e}; console: {log:?}"));
    assert!(!saved.streams().is_empty());

    let mut app = self::app();
    run(&mut app, "hm replay play /dev/zero");
    assert!(eventually(&mut app, "refused, it is not a regular file"));
    assert_ne!(
        app.world().resource::<Hivemind>().backend(),
        Some(BackendId::new(BackendId::REPLAY))
    );
}

#[test]
fn test_sends_a_probe_and_reports_its_answer() {
    let mut app = app();
    let out = run(&mut app, "hm test");
    assert!(has(&out, "sent"), "{out:?}");
    frames(&mut app, 20);
    let log: Vec<String> = app
        .world()
        .resource::<Console>()
        .log()
        .map(str::to_owned)
        .collect();
    let report = log
        .iter()
        .find(|l| l.starts_with("probe ") && l.contains("step(s) from"));
    assert!(report.is_some(), "no probe report: {log:?}");
    let mut probes = app.world_mut().query::<&Probe>();
    assert_eq!(
        probes.iter(app.world()).count(),
        0,
        "the probe was not despawned"
    );
}

#[test]
fn tab_completes_commands_subcommands_and_values_and_history_recalls() {
    let mut app = app();
    let commands = app.world().resource::<ConsoleCommands>();
    assert_eq!(commands.complete("h"), ["help", "hm"]);
    assert_eq!(commands.complete("hm st"), ["status", "stream"]);
    assert_eq!(commands.complete("hm layout "), ["parallel", "shared"]);
    assert_eq!(commands.complete("hm replay p"), ["play"]);
    assert!(commands.complete("nope ").is_empty());

    let commands_ptr = app
        .world_mut()
        .remove_resource::<ConsoleCommands>()
        .unwrap();
    let mut console = app.world_mut().resource_mut::<Console>();
    console.set_input("hm stat");
    console.complete_input(&commands_ptr);
    assert_eq!(console.input(), "hm status ");
    console.set_input("hm force");
    console.complete_input(&commands_ptr);
    assert_eq!(console.input(), "hm force-fallback ");
    // Spaces of more than one byte: a no-break space and an ideographic one.
    for space in ['\u{a0}', '\u{3000}'] {
        console.set_input(format!("hm{space}stat"));
        console.complete_input(&commands_ptr);
        assert_eq!(console.input(), format!("hm{space}status "));
    }

    console.submit("hm status");
    console.submit("hm perf");
    console.recall_previous();
    assert_eq!(console.input(), "hm perf");
    console.recall_previous();
    assert_eq!(console.input(), "hm status");
    console.recall_next();
    assert_eq!(console.input(), "hm perf");
    console.recall_next();
    assert_eq!(console.input(), "");
}

/// Counts the entities in the world.
#[derive(clap::Parser)]
#[command(name = "entities")]
struct Entities {
    /// Only those with a name.
    #[arg(long)]
    named: bool,
}

#[test]
fn other_plugins_add_commands_through_the_same_api() {
    let mut app = app();
    app.add_console_command(
        |args: Entities, world: &mut World, reply: &mut ConsoleReply| {
            let n = if args.named {
                world.query::<&Name>().iter(world).count()
            } else {
                world.entities().len() as usize
            };
            reply.line(format!("{n} entities"));
        },
    );
    let out = run(&mut app, "entities --named");
    assert_eq!(out, ["4 entities"]);
    assert!(has(&run(&mut app, "help"), "entities"));
    assert!(has(
        &run(&mut app, "entities --bogus"),
        "unexpected argument '--bogus'"
    ));
}
