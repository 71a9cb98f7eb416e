//! The `hm` command: hivemind's status, performance, agents, cache and switches.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};

use bevy::ecs::message::MessageCursor;
use bevy::prelude::*;
use hivemind_core::backend::{ReplayFactory, Transcript, TranscriptError, TranscriptWriter};
use hivemind_core::config::PromptLayout;
use hivemind_core::metrics::HumanDuration;
use hivemind_core::plan::{BackendId, FallbackReason, OutputFormat, PlanSource};
use hivemind_core::router::LinkStatus;
use hivemind_core::snapshot::WorldSnapshot;

use super::{Console, ConsoleAppExt, ConsoleReply};
use crate::components::{ActivePlan, AgentSnapshot, NpcAgent, PlanStatus, Thinking};
use crate::messages::{PlanReady, RequestPlan};
use crate::runtime::Hivemind;
use crate::systems::shut_down_on_exit;
use crate::{HivemindMetrics, HivemindSettings, HivemindSystems};
use hivemind_core::lifecycle::FallbackOnly;

/// hivemind: status, performance, agents, cache, personas and run-time switches.
#[derive(clap::Parser, Debug)]
#[command(name = "hm")]
pub struct Hm {
    /// What to show or change.
    #[command(subcommand)]
    pub command: HmCommand,
}

/// The subcommands of `hm`.
#[derive(clap::Subcommand, Debug)]
pub enum HmCommand {
    /// Backend, model file and quantization, layout, queue, workers, prefix, fallback-only mode.
    Status,
    /// Latency percentiles per kind and source, tokens/s, fallbacks, repairs; opens the plot.
    Perf,
    /// Each agent's state, current plan, step and source.
    Agents,
    /// Answer-cache size, hit rate and TTL; `hm cache clear` empties it.
    Cache {
        /// `clear` empties the cache and the banter pool.
        #[command(subcommand)]
        action: Option<CacheAction>,
    },
    /// A persona's prompt block and whether its decoded branch is kept.
    Persona {
        /// The persona's name.
        id: String,
    },
    /// Switches to a registered backend.
    Backend {
        /// The backend id, as its factory declared it (`hm status` lists them).
        id: String,
    },
    /// Switches the prompt layout.
    Layout {
        /// One sequence per agent, or one prompt for the whole batch.
        #[arg(value_enum)]
        layout: LayoutArg,
    },
    /// Streams plan steps and words as they are written, or only whole answers.
    Stream {
        /// `on` or `off`.
        #[arg(value_enum)]
        state: OnOff,
    },
    /// Answers every request from its fallback at once.
    ForceFallback {
        /// `on` or `off`.
        #[arg(value_enum)]
        state: OnOff,
    },
    /// Records what the backend writes to a file, or plays a recording back.
    Replay {
        /// `record <file>`, `play <file>` or `stop`.
        #[command(subcommand)]
        action: ReplayAction,
    },
    /// Sends a probe plan request and reports its source and latency when it is answered.
    Test,
    /// The router's table: each backend's p95 per kind against its budget, and whether it is
    /// in use or skipped.
    Route,
}

/// `hm cache` actions.
#[derive(clap::Subcommand, Debug)]
pub enum CacheAction {
    /// Forgets every cached plan and banter line.
    Clear,
}

/// `hm replay` actions.
#[derive(clap::Subcommand, Debug)]
pub enum ReplayAction {
    /// Records every stream the backend writes from now on; `hm replay stop` saves it.
    Record {
        /// The transcript file to write (JSON lines).
        file: PathBuf,
    },
    /// Switches to the `replay` backend, playing back a saved transcript.
    Play {
        /// The transcript file.
        file: PathBuf,
    },
    /// Stops recording and saves the transcript.
    Stop,
}

/// A switch's state.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// The prompt layouts by their console names.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutArg {
    /// One sequence per agent, each from its persona's prefix.
    Parallel,
    /// One prompt and one sequence for the whole batch.
    Shared,
}

/// A probe sent by `hm test`: an agent of its own, despawned when its plan is complete.
#[derive(Component, Debug)]
pub struct Probe {
    sent_at_tick: u64,
}

/// Where `hm replay record` saves, opened when the recording started.
#[derive(Resource)]
struct RecordingTo(TranscriptWriter);

/// A transcript `hm replay play` is reading on a thread of its own: a big file must not stall
/// a frame.
#[derive(Resource)]
struct LoadingReplay {
    file: PathBuf,
    loaded: Receiver<Result<Arc<ReplayFactory>, TranscriptError>>,
}

pub(super) fn build(app: &mut App) {
    app.add_console_command(run)
        .add_systems(
            Update,
            (report_probes, start_loaded_replay).after(HivemindSystems::Apply),
        )
        .add_systems(Last, save_recording_on_exit.before(shut_down_on_exit));
}

fn run(hm_args: Hm, world: &mut World, reply: &mut ConsoleReply) {
    if world.get_resource::<Hivemind>().is_none() {
        reply.line("hivemind is not running (no HivemindPlugin)");
        return;
    }
    match hm_args.command {
        HmCommand::Status => status(world, reply),
        HmCommand::Perf => {
            reply.text(&world.resource::<HivemindMetrics>().0.to_string());
            world.resource_mut::<Console>().plot = true;
        }
        HmCommand::Agents => agents(world, reply),
        HmCommand::Cache { action } => cache(world, action.is_some(), reply),
        HmCommand::Persona { id } => persona(world, &id, reply),
        HmCommand::Backend { id } => {
            // Switching ends a recording: it is saved first, not dropped.
            stop_recording(world, reply);
            backend(world, &id, reply);
        }
        HmCommand::Layout { layout } => {
            let layout = match layout {
                LayoutArg::Parallel => PromptLayout::ParallelSequences,
                LayoutArg::Shared => PromptLayout::SharedPrompt,
            };
            world.resource_mut::<HivemindSettings>().0.model.layout = layout;
            reply.line(format!(
                "layout: {} from the next batch",
                layout_name(layout)
            ));
        }
        HmCommand::Stream { state } => {
            world
                .resource_mut::<Hivemind>()
                .set_streaming(state == OnOff::On);
            reply.line(format!("streaming: {}", on_off(state == OnOff::On)));
        }
        HmCommand::ForceFallback { state } => {
            world
                .resource_mut::<Hivemind>()
                .set_force_fallback(state == OnOff::On);
            reply.line(format!("force-fallback: {}", on_off(state == OnOff::On)));
        }
        HmCommand::Replay { action } => replay(world, action, reply),
        HmCommand::Test => probe(world, reply),
        HmCommand::Route => {
            let info = world.resource::<Hivemind>().backend_info();
            match &info.routes {
                Some(routes) => reply.text(&route_table(routes)),
                None => reply.line("the backend in use routes nothing (hm backend router)"),
            }
        }
    }
}

/// `hm route`: a row per backend and kind.
fn route_table(routes: &[LinkStatus]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<10} {:<9} {:>8} {:>8} {:>7} {:>8} {:>6} {:>6} {:>6}\n",
        "backend", "kind", "p95", "budget", "state", "answered", "fell", "passed", "probes"
    );
    if routes.is_empty() {
        out.push_str("(no answers yet)\n");
    }
    let ms =
        |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()));
    for r in routes {
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:>8} {:>8} {:>7} {:>8} {:>6} {:>6} {:>6}",
            r.backend.as_str(),
            r.kind.as_str(),
            ms(r.p95),
            ms(r.budget),
            if r.skipped { "skipped" } else { "in use" },
            r.answered,
            r.fell_through,
            r.passed_over,
            r.probes,
        );
    }
    out
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

fn layout_name(layout: PromptLayout) -> &'static str {
    match layout {
        PromptLayout::ParallelSequences => "parallel",
        PromptLayout::SharedPrompt => "shared",
    }
}

fn status(world: &mut World, reply: &mut ConsoleReply) {
    let hm = world.resource::<Hivemind>();
    let info = hm.backend_info();
    let registered: Vec<&str> = hm.backends().map(BackendId::as_str).collect();
    reply.line(format!(
        "backend   {} (registered: {})",
        hm.backend_name(),
        registered.join(", ")
    ));
    let model = match (&info.source, &info.quantization) {
        (Some(source), Some(q)) => format!("{source} ({q})"),
        (Some(source), None) => source.clone(),
        (None, _) => "-".to_owned(),
    };
    reply.line(format!("model     {model}"));
    reply.line(format!("layout    {}", layout_name(hm.layout())));
    reply.line(format!(
        "queue     {} queued, {} waiting for an answer, {} workers",
        hm.queue_depth(),
        hm.in_flight(),
        hm.workers()
    ));
    let prefix = match &info.warm_levels {
        None => "- (the backend keeps no decoded prefix)".to_owned(),
        Some(warm) => {
            let context = hm.prompt_context();
            let formats = [
                (OutputFormat::FreePlan, "plan"),
                (OutputFormat::Guided, "guided"),
                (OutputFormat::Line, "line"),
            ];
            let hot: Vec<&str> = formats
                .iter()
                .filter(|(f, _)| warm.contains(&context.tree(*f).root().key))
                .map(|(_, name)| *name)
                .collect();
            if hot.is_empty() {
                "cold (decoded on the first batch)".to_owned()
            } else {
                format!("warm: {}", hot.join(", "))
            }
        }
    };
    reply.line(format!("prefix    {prefix}"));
    let mode = match hm.fallback_only() {
        None => "model answers, fallbacks past deadlines".to_owned(),
        Some(why @ FallbackOnly::Forced) => format!("fallback only: {why} (hm force-fallback on)"),
        Some(why) => format!("fallback only: {why}"),
    };
    reply.line(format!("mode      {mode}"));
    if let Some(routes) = &info.routes {
        let skipped: Vec<String> = routes
            .iter()
            .filter(|r| r.skipped)
            .map(|r| format!("{} for {}", r.backend, r.kind.as_str()))
            .collect();
        reply.line(format!(
            "routes    {}",
            if skipped.is_empty() {
                "every backend in use (hm route)".to_owned()
            } else {
                format!("skipped as too slow: {} (hm route)", skipped.join(", "))
            }
        ));
    }
    reply.line(format!(
        "stream    {}{}",
        on_off(hm.is_streaming()),
        match hm.recording() {
            Some(t) => format!(
                ", recording ({} streams)",
                t.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .streams()
                    .len()
            ),
            None => String::new(),
        }
    ));
}

fn agents(world: &mut World, reply: &mut ConsoleReply) {
    let mut query = world.query::<(
        Entity,
        &NpcAgent,
        &ActivePlan,
        Option<&Name>,
        Has<Thinking>,
        Has<Probe>,
    )>();
    let mut rows: Vec<_> = query.iter(world).filter(|row| !row.5).collect();
    rows.sort_by_key(|row| row.0);
    reply.line(format!(
        "{:<10} {:<9} {:<9} {:<5} {:<22} {}",
        "agent", "persona", "state", "step", "doing", "plan from"
    ));
    for (entity, agent, plan, name, thinking, _) in &rows {
        let who = name.map_or_else(|| entity.to_string(), ToString::to_string);
        let state = match (thinking, plan.status) {
            (true, _) => "thinking",
            (false, PlanStatus::Idle) => "idle",
            (false, PlanStatus::Streaming) => "streaming",
            (false, PlanStatus::Complete) if plan.is_finished() => "done",
            (false, PlanStatus::Complete) => "acting",
            (false, PlanStatus::Failed) => "failed",
        };
        let step = if plan.steps.is_empty() {
            "-".to_owned()
        } else {
            format!(
                "{}/{}",
                (plan.current + 1).min(plan.steps.len()),
                plan.steps.len()
            )
        };
        let doing = plan
            .current_step()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        reply.line(format!(
            "{:<10} {:<9} {:<9} {:<5} {:<22} {}",
            who,
            agent.persona,
            state,
            step,
            doing,
            source_text(
                plan.source.clone(),
                plan.fallback.map(FallbackReason::as_str)
            )
        ));
    }
    if rows.is_empty() {
        reply.line("(no agents)");
    }
}

/// `llm (local)`, `goap (deadline)`, or `-`.
fn source_text(source: Option<PlanSource>, fallback: Option<&str>) -> String {
    let Some(source) = source else {
        return "-".to_owned();
    };
    let detail = match (&source, fallback) {
        (_, Some(reason)) => format!(" ({reason})"),
        (PlanSource::Llm { backend, .. }, None) => format!(" ({backend})"),
        _ => String::new(),
    };
    format!("{}{detail}", source.label())
}

fn cache(world: &mut World, clear: bool, reply: &mut ConsoleReply) {
    let mut hm = world.resource_mut::<Hivemind>();
    if clear {
        let (plans, lines) = (hm.cache().len(), hm.banter().len());
        hm.clear_cache();
        reply.line(format!(
            "cache cleared: {plans} answers and {lines} banter lines forgotten"
        ));
        return;
    }
    let cache = hm.cache();
    let counters = cache.stats();
    let rate = counters
        .hit_rate()
        .map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0));
    reply.line(format!(
        "size      {} of {} answers",
        cache.len(),
        cache.capacity()
    ));
    reply.line(format!(
        "hit rate  {rate} ({} hits, {} misses)",
        counters.hits, counters.misses
    ));
    reply.line(format!("ttl       {}", HumanDuration(cache.ttl())));
    reply.line(format!("banter    {} lines in the pool", hm.banter().len()));
}

fn persona(world: &mut World, id: &str, reply: &mut ConsoleReply) {
    let hm = world.resource::<Hivemind>();
    let Some(persona) = hm.prompt().persona(id) else {
        let known: Vec<&str> = hm
            .prompt()
            .personas
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        reply.line(format!(
            "unknown persona `{id}`; known: {}",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ));
        return;
    };
    reply.line(format!("persona   {}", persona.name));
    reply.line(format!("voice     {}", persona.voice));
    let context = hm.prompt_context();
    let level = context.tree(OutputFormat::FreePlan).persona(id);
    reply.line("block (plan prompts):");
    reply.text(&level.text);
    let info = hm.backend_info();
    let Some(warm) = info.warm_levels else {
        reply.line("branch    - (the backend keeps no decoded prefix)");
        return;
    };
    let formats = [
        (OutputFormat::FreePlan, "plan"),
        (OutputFormat::Guided, "guided"),
        (OutputFormat::Line, "line"),
    ];
    let states: Vec<String> = formats
        .iter()
        .map(|(format, name)| {
            let key = context.tree(*format).persona(id).key;
            let state = if warm.contains(&key) {
                "cached"
            } else {
                "not cached"
            };
            format!("{name} {state}")
        })
        .collect();
    reply.line(format!("branch    {}", states.join(", ")));
}

fn backend(world: &mut World, id: &str, reply: &mut ConsoleReply) {
    let id = BackendId::new(id);
    let mut hm = world.resource_mut::<Hivemind>();
    match hm.set_backend(&id) {
        Ok(()) => reply.line(format!("backend: {id}")),
        Err(e) => {
            let registered: Vec<&str> = hm.backends().map(BackendId::as_str).collect();
            reply.line(format!("{e}; registered: {}", registered.join(", ")));
        }
    }
}

fn replay(world: &mut World, action: ReplayAction, reply: &mut ConsoleReply) {
    match action {
        ReplayAction::Record { file } => {
            stop_recording(world, reply);
            match TranscriptWriter::create(&file) {
                Ok(writer) => {
                    world.resource_mut::<Hivemind>().start_recording();
                    reply.line(format!(
                        "recording to {}; `hm replay stop` saves it",
                        file.display()
                    ));
                    world.insert_resource(RecordingTo(writer));
                }
                Err(e) => reply.line(format!("error: {e}")),
            }
        }
        ReplayAction::Stop => {
            if !stop_recording(world, reply) {
                reply.line("not recording");
            }
        }
        ReplayAction::Play { file } => {
            stop_recording(world, reply);
            let (send, loaded) = crossbeam_channel::bounded(1);
            let path = file.clone();
            let spawned = std::thread::Builder::new()
                .name("hivemind-replay-load".into())
                .spawn(move || {
                    let _ = send.send(ReplayFactory::load(&path));
                });
            match spawned {
                Ok(_) => {
                    reply.line(format!("loading {}", file.display()));
                    world.insert_resource(LoadingReplay { file, loaded });
                }
                Err(e) => reply.line(format!("error: cannot start loading: {e}")),
            }
        }
    }
}

/// Switches to the replay backend once `hm replay play` has read its transcript.
fn start_loaded_replay(
    mut commands: Commands,
    loading: Option<Res<LoadingReplay>>,
    hm: Option<ResMut<Hivemind>>,
    console: Option<ResMut<Console>>,
) {
    let (Some(loading), Some(mut hm)) = (loading, hm) else {
        return;
    };
    let message = match loading.loaded.try_recv() {
        Err(TryRecvError::Empty) => return,
        Err(TryRecvError::Disconnected) => {
            format!("error: loading {} failed", loading.file.display())
        }
        Ok(Err(e)) => format!("error: {e}"),
        Ok(Ok(factory)) => {
            hm.replace_backend(factory);
            match hm.set_backend(&BackendId::new(BackendId::REPLAY)) {
                Ok(()) => format!("backend: replay of {}", loading.file.display()),
                Err(e) => format!("error: {e}"),
            }
        }
    };
    commands.remove_resource::<LoadingReplay>();
    if let Some(mut console) = console {
        console.print(message);
    }
}

/// Stops a running recording and saves it; returns whether one was running.
fn stop_recording(world: &mut World, reply: &mut ConsoleReply) -> bool {
    let Some(transcript) = world.resource_mut::<Hivemind>().stop_recording() else {
        return false;
    };
    let Some(RecordingTo(writer)) = world.remove_resource::<RecordingTo>() else {
        return true;
    };
    reply.line(save(writer, &transcript));
    true
}

/// Saves `transcript` through `writer`, and says how that went.
fn save(writer: TranscriptWriter, transcript: &Mutex<Transcript>) -> String {
    let transcript = transcript
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let path = writer.path().display().to_string();
    match writer.finish(&transcript) {
        Ok(()) => format!("saved {} streams to {path}", transcript.streams().len()),
        Err(e) => format!("error: {e}"),
    }
}

/// Saves a running recording when the app exits, before the runtime shuts down.
fn save_recording_on_exit(world: &mut World, mut exits: Local<MessageCursor<AppExit>>) {
    let exiting = world
        .get_resource::<Messages<AppExit>>()
        .is_some_and(|messages| exits.read(messages).count() > 0);
    if !exiting || !world.contains_resource::<RecordingTo>() {
        return;
    }
    let Some(transcript) = world
        .get_resource_mut::<Hivemind>()
        .and_then(|mut hm| hm.stop_recording())
    else {
        return;
    };
    if let Some(RecordingTo(writer)) = world.remove_resource::<RecordingTo>() {
        let said = save(writer, &transcript);
        info!("hivemind: {said}");
        if let Some(mut console) = world.get_resource_mut::<Console>() {
            console.print(said);
        }
    }
}

fn probe(world: &mut World, reply: &mut ConsoleReply) {
    let snapshot = world
        .query_filtered::<&AgentSnapshot, Without<Probe>>()
        .iter(world)
        .next()
        .map_or_else(WorldSnapshot::default, |s| s.0.clone());
    let persona = world
        .resource::<Hivemind>()
        .prompt()
        .personas
        .first()
        .map_or_else(|| "default".to_owned(), |p| p.name.clone());
    let tick = world.resource::<Hivemind>().tick();
    let probe = world
        .spawn((
            Name::new("probe"),
            NpcAgent::new(persona),
            AgentSnapshot(snapshot),
            Probe { sent_at_tick: tick },
        ))
        .id();
    world.write_message(RequestPlan::new(probe));
    reply.line(format!(
        "probe {probe} sent; its answer will be reported here"
    ));
}

/// Reports answered probes to the console and despawns them.
fn report_probes(
    mut commands: Commands,
    mut plans: MessageReader<PlanReady>,
    probes: Query<&Probe>,
    hm: Res<Hivemind>,
    console: Option<ResMut<Console>>,
) {
    let Some(mut console) = console else { return };
    for plan in plans.read() {
        let Ok(probe) = probes.get(plan.agent) else {
            continue;
        };
        console.print(format!(
            "probe {}: {} step(s) from {} in {} (first step after {}, {} frames)",
            plan.agent,
            plan.steps.len(),
            source_text(
                Some(plan.source.clone()),
                plan.fallback.map(FallbackReason::as_str)
            ),
            HumanDuration(plan.latency),
            HumanDuration(plan.first_after),
            hm.tick().saturating_sub(probe.sent_at_tick),
        ));
        commands.entity(plan.agent).despawn();
    }
}
