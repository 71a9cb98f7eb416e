//! The arena: two teams of NPCs that plan and banter through hivemind, drawn with Bevy shapes
//! and text, with a HUD and (feature `console`) the in-game debug console.
//!
//! ```text
//! cargo run --example arena --features console                    # the local model
//! cargo run --example arena --features console -- --backend scripted
//! cargo run --example arena -- --headless --ticks 300 [--lockstep]
//! cargo run --example arena --features console -- --backend scripted \
//!     --screenshot arena.png --frames 120 --console --check
//! ```
//!
//! The world moves one tick every 200 ms in `FixedUpdate`, where hivemind runs too; drawing
//! runs every frame in `Update` and slides each agent between its last two cells. Agents that need
//! a plan ask in planning rounds, one agent every third tick by default, the one that has waited
//! longest, as a game staggers its AI updates so that one small model can serve them. Speech bubbles fill word by word as
//! lines stream in. The HUD shows where each agent's plan came from, the intent it carries out
//! and how long it took.
//!
//! # Talking to an agent
//!
//! Click an agent, or press 1–9 for the agents in id order (Red's six, then Blue's, as the HUD
//! numbers them), to select it; Escape lets it go. A talk box opens: what you type there goes, on
//! Enter, to the agent as a [`PlayerSaid`] message, which asks it for a reply (streamed into its
//! speech bubble, and kept in its `Conversation`) and for a new plan that answers what you said.
//! The model alone decides whether it was an order. While a text box has the keyboard, keys do
//! not reach the game; selecting an agent closes the console, which otherwise keeps the keyboard.
//!
//! # Frame rate
//!
//! A software renderer (Mesa's llvmpipe, as under Xvfb) draws on the CPU and would take the
//! cores the local model needs, so while that model plays the arena then draws at most 3 frames a
//! second; `--fps` sets another cap (0 for none). The world keeps its 200 ms tick whatever the
//! frame rate.
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example that prints its results"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "Bevy systems take their parameters by value"
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bevy::ecs::schedule::ScheduleLabel;
use bevy::prelude::*;
use bevy::render::renderer::RenderAdapterInfo;
use bevy::render::view::screenshot::{Screenshot, save_to_disk};
use bevy::text::TextBounds;
use bevy::time::TimeUpdateStrategy;
use bevy::window::{PrimaryWindow, WindowResolution};
use bevy_egui::input::EguiWantsInput;
use bevy_egui::{EguiContexts, EguiPlugin, EguiPrimaryContextPass, egui};
use clap::Parser;
use hivemind::bevy::prelude::*;
use hivemind::bevy::{FallbackOnly, Hivemind, HivemindMetrics, RequestId};
use hivemind::core::backend::{BackendError, BackendFactory, FnFactory, Latency, ReplayFactory};
use hivemind::core::config::{ClockMode, HivemindConfig};
use hivemind::core::metrics::{HumanDuration, LatencyStage, SourceLabel};
use hivemind::core::plan::{BackendId, RequestKind};
use hivemind::core::router::RouterFactory;
use hivemind_arena::{ArenaAssets, ArenaConfig, Team};
use hivemind_examples::arena_app::{
    Arena, ArenaAgent, ArenaAppPlugin, ArenaSystems, MAX_SAID_CHARS, PlayerSaid, Stagger, name,
    scripted_backend,
};
use hivemind_examples::frame_cap::{FrameCap, FrameCapPlugin};

/// One tick of the arena.
const TICK: Duration = Duration::from_millis(200);
/// The window.
const WINDOW: (u32, u32) = (1280, 720);
/// Pixels per arena cell.
const CELL: f32 = 32.0;
/// The arena's top-left corner, in window pixels.
const ARENA_AT: (f32, f32) = (20.0, 20.0);
/// The HUD's left edge, in window pixels.
const HUD_LEFT: f32 = 690.0;
/// Where the console opens, in window pixels, below the arena.
const CONSOLE_AT: (f32, f32) = (12.0, 484.0);
/// Where the talk box opens, in window pixels, below the HUD.
const TALK_AT: (f32, f32) = (HUD_LEFT, 440.0);
/// Frames a second at most while a software renderer shares the CPU with the local model,
/// unless `--fps` says otherwise. On two cores, 5 leaves the model too little time to answer
/// most plans in time; 2 or 3 leave it about as much as a run without a window.
const SOFTWARE_FPS: f64 = 3.0;
/// How close to an agent, in pixels, a click selects it.
const CLICK_RADIUS: f32 = 16.0;
/// Seconds a reply to the player stays in its speech bubble.
const REPLY_SECS: f32 = 8.0;
/// Seconds any other line stays in its speech bubble.
const LINE_SECS: f32 = 3.0;

const BACKGROUND: Color = Color::srgb_u8(14, 16, 20);
const FLOOR: Color = Color::srgb_u8(40, 46, 56);
const COVER: Color = Color::srgb_u8(112, 116, 124);
const OBJECTIVE: Color = Color::srgba_u8(230, 200, 60, 70);
const MEDKIT: Color = Color::srgb_u8(90, 220, 120);
const RED: Color = Color::srgb_u8(226, 64, 64);
const BLUE: Color = Color::srgb_u8(64, 120, 236);
const SELECTED: Color = Color::srgb_u8(250, 236, 170);

/// The arena with hivemind planning for both teams.
#[derive(Parser, Debug)]
#[command(
    name = "arena",
    about = "The hivemind arena example",
    after_help = "In the window: click an agent, or press 1-9 for the agents in id order (as the \
                  HUD numbers them), to talk to it in the talk box; Enter sends, Escape lets go. \
                  ` opens the console."
)]
struct Args {
    /// Which backend writes plans and lines: the same names as the console and the config.
    #[arg(
        long,
        default_value = "local",
        value_parser = ["local", "scripted", "replay", "remote", "router"]
    )]
    backend: String,
    /// The server `--backend remote` (and the router's `remote`) asks, in place of the one
    /// `remotes` in hivemind.ron names: an OpenAI-compatible server such as llama-server.
    #[arg(long)]
    url: Option<String>,
    /// The transcript `--backend replay` plays (recorded with `hm replay record`).
    #[arg(long, default_value = "arena.transcript.jsonl")]
    transcript: PathBuf,
    /// The arena's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Agents per team.
    #[arg(long, default_value_t = 6)]
    team_size: u32,
    /// Ticks between planning rounds.
    #[arg(long, default_value_t = 3)]
    plan_every: u64,
    /// The most agents that ask for a new plan in one round (those that waited longest first).
    #[arg(long, default_value_t = 1)]
    plans_per_round: usize,
    /// The plan deadline in milliseconds, in place of the configuration's.
    #[arg(long)]
    plan_ms: Option<u64>,
    /// Runs without a window and prints a summary table.
    #[arg(long)]
    headless: bool,
    /// Ticks a headless run lasts.
    #[arg(long, default_value_t = 300)]
    ticks: u64,
    /// Headless: time comes from token counts, so the run repeats exactly.
    #[arg(long)]
    lockstep: bool,
    /// Headless: fail unless at least this % of banter lines were written by the model.
    #[arg(long)]
    banter_floor: Option<f64>,
    /// Headless: fail if more than this % of banter lines were said before.
    #[arg(long)]
    repeat_ceiling: Option<f64>,
    /// Renders `--frames` frames, saves a screenshot here and exits.
    #[arg(long)]
    screenshot: Option<PathBuf>,
    /// Frames to render before the screenshot.
    #[arg(long, default_value_t = 120)]
    frames: u32,
    /// Opens the console at start.
    #[arg(long)]
    console: bool,
    /// After the screenshot, checks that the arena, both teams, the HUD and (with `--console`)
    /// the console are where they should be in it and, with `--backend local`, that a plan from
    /// the model was on the HUD (the screenshot waits up to `--model-wait` seconds past
    /// `--frames` for one); exits 1 if not.
    #[arg(long)]
    check: bool,
    /// With `--check` and `--backend local`: the most seconds the screenshot waits, past
    /// `--frames`, for a plan from the model to be on the HUD.
    #[arg(long, default_value_t = 180)]
    model_wait: u64,
    /// Frames a second at most; 0 for no cap. By default, while the local model plays, a
    /// software renderer (llvmpipe and the like, as under Xvfb) draws at most 3, leaving the
    /// model the cores it needs; a GPU is not capped. The world moves at its own rate whatever
    /// this is.
    #[arg(long)]
    fps: Option<f64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let assets = match ArenaAssets::load(&asset_dir()) {
        Ok(assets) => Arc::new(assets),
        Err(e) => {
            eprintln!("arena: {e}");
            return ExitCode::from(2);
        }
    };
    if args.headless {
        run_headless(&args, assets);
        return ExitCode::SUCCESS;
    }
    let mut app = App::new();
    app.add_plugins(DefaultPlugins.set(WindowPlugin {
        primary_window: Some(Window {
            title: "hivemind arena".into(),
            resolution: WindowResolution::new(WINDOW.0, WINDOW.1),
            ..default()
        }),
        ..default()
    }));
    add_game(&mut app, &args, assets);
    // The model's plans are checked when it is the one playing.
    let model =
        (args.check && args.backend == BackendId::LOCAL).then(|| BackendId::new(BackendId::LOCAL));
    let shot = Arc::new(Mutex::new(None));
    app.add_plugins(ArenaScene {
        screenshot: args.screenshot.clone(),
        frames: args.frames,
        open_console: args.console,
        fps: args.fps,
        wait_for: model
            .clone()
            .map(|backend| (backend, Duration::from_secs(args.model_wait))),
        shot: Arc::clone(&shot),
    })
    .run();
    let shot = shot.lock().ok().and_then(|mut s| s.take());
    if let Some(shot) = &shot {
        println!("{shot}");
    }
    match (&args.screenshot, args.check) {
        (Some(path), true) => {
            let checked = check_screenshot(path, args.console).and_then(|report| match &model {
                Some(backend) => {
                    check_model_plans(shot.as_ref(), backend).map(|m| format!("{report}, {m}"))
                }
                None => Ok(report),
            });
            match checked {
                Ok(report) => {
                    println!("screenshot check passed: {report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("screenshot check failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => ExitCode::SUCCESS,
    }
}

fn asset_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets")
}

/// Adds hivemind and the arena's rules, in `FixedUpdate`, with the chosen backend.
fn add_game(app: &mut App, args: &Args, assets: Arc<ArenaAssets>) {
    let mut config = HivemindConfig::load(&asset_dir().join("hivemind.ron")).unwrap_or_else(|e| {
        eprintln!("arena: {e}; using the default configuration");
        HivemindConfig::default()
    });
    if args.lockstep {
        config.clock.mode = ClockMode::Lockstep;
    }
    if let Some(ms) = args.plan_ms {
        config.deadlines.plan_ms = ms;
    }
    if let Some(url) = &args.url {
        let remote = config.remotes.entry(BackendId::REMOTE.into()).or_default();
        remote.url.clone_from(url);
    }
    let mut arena = ArenaAppPlugin::new(
        ArenaConfig::default()
            .with_seed(args.seed)
            .with_team_size(args.team_size),
        Arc::clone(&assets),
    );
    arena.schedule = FixedUpdate.intern();
    arena.stagger = Stagger {
        every: args.plan_every,
        at_most: args.plans_per_round,
    };

    let latency = if args.lockstep {
        Latency::Virtual
    } else {
        // About what the local model costs: a prompt, then a few milliseconds a token.
        Latency::Real {
            prompt: Duration::from_millis(60),
            per_token: Duration::from_millis(6),
        }
    };
    let scripted = scripted_backend(Arc::clone(&assets), latency);
    let local = local_backend(&config);
    let replay: Arc<dyn BackendFactory> = match ReplayFactory::load(&args.transcript) {
        Ok(replay) => replay,
        Err(e) => {
            let why = e.to_string();
            FnFactory::new(BackendId::REPLAY, move || {
                Err(BackendError::NoModel(why.clone()))
            })
        }
    };
    let remote = remote_backend();
    let router: Arc<dyn BackendFactory> =
        RouterFactory::new([Arc::clone(&local), Arc::clone(&remote)]);
    // The chosen backend in use, the others registered for `hm backend`.
    let mut all = vec![local, scripted, replay, remote, router];
    let chosen = all
        .iter()
        .position(|f| f.id().as_str() == args.backend)
        .unwrap_or(0);
    let chosen = all.remove(chosen);
    let plugin = all
        .into_iter()
        .fold(
            arena.hivemind(HivemindPlugin::new(FixedUpdate).with_config(config)),
            HivemindPlugin::with_standby_backend,
        )
        .with_backend(chosen);
    app.add_plugins((plugin, arena))
        .insert_resource(Time::<Fixed>::from_duration(TICK));
    if args.lockstep {
        app.insert_resource(TimeUpdateStrategy::ManualDuration(TICK));
    }
}

/// The `local` backend, or one that says why there is none.
fn local_backend(config: &HivemindConfig) -> Arc<dyn BackendFactory> {
    #[cfg(feature = "llama")]
    let why = match hivemind::llama::LlamaFactory::from_config(config) {
        Ok(factory) => return factory,
        Err(e) => e.to_string(),
    };
    #[cfg(not(feature = "llama"))]
    let why = {
        let _ = config;
        "built without the `llama` feature".to_owned()
    };
    FnFactory::new(BackendId::LOCAL, move || {
        Err(BackendError::NoModel(why.clone()))
    })
}

/// The `remote` backend, on the server hivemind.ron (or `--url`) names.
fn remote_backend() -> Arc<dyn BackendFactory> {
    #[cfg(feature = "remote")]
    return hivemind::remote::RemoteFactory::new();
    #[cfg(not(feature = "remote"))]
    FnFactory::new(BackendId::REMOTE, || {
        Err(BackendError::NoModel(
            "built without the `remote` feature".into(),
        ))
    })
}

// ----- headless --------------------------------------------------------------------------------

fn run_headless(args: &Args, assets: Arc<ArenaAssets>) {
    let mut app = App::new();
    app.add_plugins(MinimalPlugins);
    add_game(&mut app, args, assets);
    app.init_resource::<BanterLog>()
        .add_systems(Last, log_banter);
    app.finish();
    app.cleanup();
    let frame = Duration::from_secs_f64(1.0 / 60.0);
    let started = Instant::now();
    while app.world().resource::<Arena>().world.now() < args.ticks {
        let t = Instant::now();
        app.update();
        if !args.lockstep {
            std::thread::sleep(frame.saturating_sub(t.elapsed()));
        }
    }
    print!("{}", summary(app.world_mut(), args, started.elapsed()));
    let failed = app
        .world()
        .get_resource::<BanterLog>()
        .and_then(|log| log.check(args.banter_floor, args.repeat_ceiling));
    app.world_mut().write_message(AppExit::Success);
    app.update();
    if let Some(why) = failed {
        eprintln!("arena: {why}");
        std::process::exit(1);
    }
}

/// Every banter line said in a headless run: how many the model wrote, and how many were said
/// before.
#[derive(Resource, Default)]
struct BanterLog {
    said: BTreeMap<String, u32>,
    lines: u32,
    from_model: u32,
}

impl BanterLog {
    fn share_from_model(&self) -> f64 {
        100.0 * f64::from(self.from_model) / f64::from(self.lines.max(1))
    }

    fn repeated(&self) -> u32 {
        self.said.values().map(|n| n - 1).sum()
    }

    /// What is wrong against `--banter-floor` and `--repeat-ceiling`, if anything.
    fn check(&self, floor: Option<f64>, ceiling: Option<f64>) -> Option<String> {
        let share = self.share_from_model();
        let repeated = 100.0 * f64::from(self.repeated()) / f64::from(self.lines.max(1));
        match (floor, ceiling) {
            (Some(floor), _) if share < floor => Some(format!(
                "{share:.1} % of banter from the model, under the floor of {floor} %"
            )),
            (_, Some(ceiling)) if repeated > ceiling => Some(format!(
                "{repeated:.1} % of banter lines said before, over the ceiling of {ceiling} %"
            )),
            _ => None,
        }
    }
}

fn log_banter(mut lines: MessageReader<LineReady>, mut log: ResMut<BanterLog>) {
    for line in lines.read().filter(|l| l.kind == RequestKind::Banter) {
        log.lines += 1;
        if line.source == PlanSource::Cache {
            log.from_model += 1;
        }
        *log.said.entry(line.text.clone()).or_default() += 1;
    }
}

/// The headless summary: scores, then plans and lines by source, latency per kind, fallbacks by
/// reason, cache, repairs and tokens/s (the last from hivemind's own table).
fn summary(world: &mut World, args: &Args, took: Duration) -> String {
    let arena = world.resource::<Arena>();
    let hm = world.resource::<Hivemind>();
    let metrics = &world.resource::<HivemindMetrics>().0;
    let mut out = String::new();
    let clock = if args.lockstep {
        "lockstep"
    } else {
        "real time"
    };
    let _ = writeln!(
        out,
        "arena: {} ticks, seed {}, {} v {}, backend {}, {clock}, {:.1} s",
        arena.world.now(),
        args.seed,
        args.team_size,
        args.team_size,
        hm.backend_name(),
        took.as_secs_f64()
    );
    if let Some(why) = hm.fallback_only() {
        let _ = writeln!(out, "fallback only: {}", fallback_text(&why));
    }
    if let (Some(main), Some(all)) = (cpu_seconds("thread-self"), cpu_seconds("self")) {
        let wall = took.as_secs_f64().max(f64::EPSILON);
        let _ = writeln!(
            out,
            "cpu: {:.2} cores in all, the game's main thread {:.2} ({:.0} % of the process)",
            all / wall,
            main / wall,
            100.0 * main / all.max(f64::EPSILON)
        );
    }
    for team in Team::ALL {
        let _ = writeln!(
            out,
            "  {:<5} score {:>4}  kills {:>3}  deaths {:>3}",
            team.as_str(),
            arena.world.score(team),
            arena.world.team_kills(team),
            arena.world.team_deaths(team)
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "kind", "answers", "first p50", "p95", "p99", "full p50", "p95", "p99"
    );
    for kind in RequestKind::ALL {
        let first = metrics.latency_by_kind(kind, LatencyStage::First);
        let full = metrics.latency_by_kind(kind, LatencyStage::Full);
        let q = |d: Option<Duration>| {
            d.map_or_else(|| "-".to_owned(), |d| HumanDuration(d).to_string())
        };
        let _ = writeln!(
            out,
            "{:<9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            kind.as_str(),
            metrics.total_answers(kind),
            q(first.p50()),
            q(first.p95()),
            q(first.p99()),
            q(full.p50()),
            q(full.p95()),
            q(full.p99()),
        );
    }
    // Which backend (or fallback) answered what.
    let mut by_source: Vec<String> = Vec::new();
    for (kind, source, stats) in metrics.latencies() {
        let count = stats.get(LatencyStage::Full).count();
        if count > 0 {
            by_source.push(format!("{} {source} {count}", kind.as_str()));
        }
    }
    let _ = writeln!(out, "answered by: {}", by_source.join(", "));
    let plans = metrics.total_answers(RequestKind::Plan);
    let cached = metrics.answers(RequestKind::Plan, SourceLabel::Cache);
    let written = metrics.answers(RequestKind::Plan, SourceLabel::Llm)
        + metrics.answers(RequestKind::Plan, SourceLabel::LlmRepaired);
    let _ = writeln!(
        out,
        "plans from the model: {} of {plans} ({:.0} %): {written} written, {cached} from the cache",
        written + cached,
        100.0 * (written + cached) as f64 / plans.max(1) as f64
    );
    if let Some(log) = world.get_resource::<BanterLog>() {
        let _ = writeln!(
            out,
            "banter lines said {}: {} written by the model ({:.0} %), {} said before",
            log.lines,
            log.from_model,
            log.share_from_model(),
            log.repeated()
        );
    }
    let _ = writeln!(out);
    let _ = write!(out, "{metrics}");
    out
}

/// CPU seconds (user and system) of `/proc/<which>/stat`: `self` for the process, `thread-self`
/// for the calling thread; `None` where there is no such file.
fn cpu_seconds(which: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{which}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the name and state,
    // in ticks of 1/100 s on Linux.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn fallback_text(why: &FallbackOnly) -> String {
    match why {
        FallbackOnly::Forced => format!("{why} (hm force-fallback on)"),
        _ => why.to_string(),
    }
}

// ----- the rendered scene ----------------------------------------------------------------------

/// Draws the arena, its agents, speech bubbles, the HUD and the talk box; takes the screenshot.
struct ArenaScene {
    screenshot: Option<PathBuf>,
    frames: u32,
    open_console: bool,
    /// `--fps`: the frame-rate cap, if given.
    fps: Option<f64>,
    /// The backend whose plans the screenshot waits for, and for how long at most.
    wait_for: Option<(BackendId, Duration)>,
    /// What the screenshot showed, for the check after the app exits.
    shot: Arc<Mutex<Option<Shot>>>,
}

impl Plugin for ArenaScene {
    fn build(&self, app: &mut App) {
        app.insert_resource(ClearColor(BACKGROUND))
            .insert_resource(Capture {
                path: self.screenshot.clone(),
                frames: self.frames,
                frame: 0,
                taken_at: None,
                wait_for: self.wait_for.clone(),
                waiting_since: None,
                shot: Arc::clone(&self.shot),
            })
            .init_resource::<FrameTime>()
            .init_resource::<PlanTally>()
            .init_resource::<Selected>()
            .init_resource::<TalkBox>()
            .insert_resource(FrameRate {
                asked: self.fps,
                software: None,
            })
            .add_plugins((FrameCapPlugin, EguiPlugin::default()))
            .add_systems(Startup, (spawn_arena, spawn_hud, detect_software_renderer))
            .add_systems(
                FixedUpdate,
                observe
                    .after(HivemindSystems::Apply)
                    .after(ArenaSystems::Act),
            )
            .add_systems(
                Update,
                (
                    spawn_agent_views,
                    cap_frame_rate,
                    (select_with_keys, select_with_mouse, on_select).chain(),
                    place_agents,
                    fade_tracers,
                    update_hud,
                    capture,
                ),
            )
            .add_systems(EguiPrimaryContextPass, talk_box);
        #[cfg(feature = "console")]
        {
            use hivemind::bevy::console::{Console, HivemindConsolePlugin};
            app.add_plugins(HivemindConsolePlugin);
            if self.open_console {
                app.world_mut().resource_mut::<Console>().open = true;
                app.world_mut()
                    .resource_mut::<Console>()
                    .submit("hm status");
            }
        }
        #[cfg(not(feature = "console"))]
        let _ = self.open_console;
    }
}

/// Window pixels (y down) to world coordinates (y up, origin at the centre).
fn to_world(x: f32, y: f32) -> Vec2 {
    Vec2::new(x - WINDOW.0 as f32 / 2.0, WINDOW.1 as f32 / 2.0 - y)
}

/// The centre of arena cell `(x, y)` in world coordinates.
fn cell_center(x: i32, y: i32) -> Vec2 {
    to_world(
        ARENA_AT.0 + (x as f32 + 0.5) * CELL,
        ARENA_AT.1 + (y as f32 + 0.5) * CELL,
    )
}

fn team_color(team: Team) -> Color {
    match team {
        Team::Red => RED,
        Team::Blue => BLUE,
    }
}

fn spawn_arena(
    mut commands: Commands,
    arena: Res<Arena>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<ColorMaterial>>,
) {
    commands.spawn(Camera2d);
    let grid = arena.world.grid();
    let mut rect = |min: (i32, i32), max: (i32, i32), color: Color, z: f32, inset: f32| {
        let size = Vec2::new(
            (max.0 - min.0 + 1) as f32 * CELL - inset,
            (max.1 - min.1 + 1) as f32 * CELL - inset,
        );
        let centre = (cell_center(min.0, min.1) + cell_center(max.0, max.1)) / 2.0;
        commands.spawn((
            Mesh2d(meshes.add(Rectangle::from_size(size))),
            MeshMaterial2d(materials.add(color)),
            Transform::from_translation(centre.extend(z)),
        ));
    };
    rect(
        (0, 0),
        (grid.width() - 1, grid.height() - 1),
        FLOOR,
        0.0,
        0.0,
    );
    for team in Team::ALL {
        let base = grid.base(team);
        rect(
            (base.min.x, base.min.y),
            (base.max.x, base.max.y),
            team_color(team).with_alpha(0.12),
            0.1,
            0.0,
        );
    }
    let zone = grid.objective();
    rect(
        (zone.min.x, zone.min.y),
        (zone.max.x, zone.max.y),
        OBJECTIVE,
        0.2,
        0.0,
    );
    for p in grid.cover_cells() {
        rect((p.x, p.y), (p.x, p.y), COVER, 0.3, 4.0);
    }
    for p in grid.medkit_spots() {
        rect((p.x, p.y), (p.x, p.y), MEDKIT.with_alpha(0.5), 0.3, 18.0);
    }
}

/// How one agent is drawn: where it slides from and to, what it says, and its plan's origin.
#[derive(Component)]
struct AgentView {
    from: Vec2,
    to: Vec2,
    bubble: Entity,
    bar: Entity,
    /// The ring drawn around it while it is selected.
    ring: Entity,
    speech: String,
    speech_request: Option<RequestId>,
    speech_until: f32,
    plan_from: String,
    /// The backend that wrote its current plan, if a model did (and in time).
    plan_model: Option<BackendId>,
    plan_intent: Option<String>,
    plan_took: Option<Duration>,
}

fn spawn_agent_views(
    mut commands: Commands,
    arena: Res<Arena>,
    agents: Query<(Entity, &ArenaAgent), Without<AgentView>>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<ColorMaterial>>,
) {
    for (entity, agent) in &agents {
        let at = arena
            .world
            .agent(agent.id)
            .map_or(Vec2::ZERO, |a| cell_center(a.position().x, a.position().y));
        let font = TextFont::from_font_size(11.0);
        let label = commands
            .spawn((
                Text2d::new(name(agent.id)),
                font.clone(),
                TextColor(Color::srgb(0.85, 0.87, 0.9)),
                Transform::from_xyz(0.0, -19.0, 1.0),
            ))
            .id();
        let bar = commands
            .spawn((
                Mesh2d(meshes.add(Rectangle::new(24.0, 3.0))),
                MeshMaterial2d(materials.add(Color::srgb(0.3, 0.9, 0.4))),
                Transform::from_xyz(0.0, 15.0, 1.0),
            ))
            .id();
        let bubble = commands
            .spawn((
                Text2d::new(""),
                TextFont::from_font_size(12.0),
                TextColor(Color::srgb(0.08, 0.08, 0.1)),
                TextBackgroundColor(Color::srgba(0.95, 0.95, 0.9, 0.92)),
                TextLayout::linebreak(LineBreak::WordBoundary),
                TextBounds::new_horizontal(180.0),
                Transform::from_xyz(0.0, 34.0, 5.0),
                Visibility::Hidden,
            ))
            .id();
        let ring = commands
            .spawn((
                Mesh2d(meshes.add(Annulus::new(13.5, 16.0))),
                MeshMaterial2d(materials.add(SELECTED)),
                Transform::from_xyz(0.0, 0.0, -0.5),
                Visibility::Hidden,
            ))
            .id();
        commands
            .entity(entity)
            .insert((
                Mesh2d(meshes.add(Circle::new(11.0))),
                MeshMaterial2d(materials.add(team_color(agent.team))),
                Transform::from_translation(at.extend(2.0)),
                Visibility::Visible,
                AgentView {
                    from: at,
                    to: at,
                    bubble,
                    bar,
                    ring,
                    speech: String::new(),
                    speech_request: None,
                    speech_until: 0.0,
                    plan_from: "-".to_owned(),
                    plan_model: None,
                    plan_intent: None,
                    plan_took: None,
                },
            ))
            .add_children(&[label, bar, bubble, ring]);
    }
}

/// A shot, drawn for a moment.
#[derive(Component)]
struct Tracer {
    until: f32,
}

/// After each tick: where agents went, what they said, where their plans came from, and the
/// shots fired.
#[expect(clippy::too_many_arguments, reason = "a system reading many messages")]
fn observe(
    mut commands: Commands,
    arena: Res<Arena>,
    time: Res<Time<Real>>,
    mut views: Query<(&ArenaAgent, &mut AgentView)>,
    mut plans: MessageReader<PlanReady>,
    mut words: MessageReader<LineDelta>,
    mut lines: MessageReader<LineReady>,
    mut tally: ResMut<PlanTally>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<ColorMaterial>>,
) {
    let now = time.elapsed_secs();
    for plan in plans.read() {
        tally.count(plan);
        if let Ok((_, mut view)) = views.get_mut(plan.agent) {
            view.plan_from = match (&plan.source, plan.fallback) {
                (source, Some(reason)) => format!("{} ({})", source.label(), reason.as_str()),
                (PlanSource::Llm { backend, .. }, None) => {
                    format!("{} ({backend})", plan.source.label())
                }
                (source, None) => source.label().to_owned(),
            };
            view.plan_model = match (&plan.source, plan.fallback) {
                (PlanSource::Llm { backend, .. }, None) => Some(backend.clone()),
                _ => None,
            };
            view.plan_intent.clone_from(&plan.intent);
            view.plan_took = Some(plan.latency);
            if let Some(say) = &plan.say {
                view.speech = say.clone();
                view.speech_request = Some(plan.request);
                view.speech_until = now + LINE_SECS;
            }
        }
    }
    for delta in words.read() {
        if let Ok((_, mut view)) = views.get_mut(delta.agent) {
            if view.speech_request != Some(delta.request) {
                view.speech.clear();
                view.speech_request = Some(delta.request);
            }
            view.speech.push_str(&delta.text);
            view.speech_until = now + 4.0;
        }
    }
    for line in lines.read() {
        if let Ok((_, mut view)) = views.get_mut(line.agent) {
            view.speech = line.text.clone();
            view.speech_request = Some(line.request);
            view.speech_until = now
                + match line.kind {
                    RequestKind::Dialogue => REPLY_SECS,
                    _ => LINE_SECS,
                };
        }
    }
    for said in &arena.last_report.said {
        if let Some(&entity) = arena.entities.get(&said.agent)
            && let Ok((_, mut view)) = views.get_mut(entity)
        {
            view.speech = said.text.clone();
            view.speech_request = None;
            view.speech_until = now + LINE_SECS;
        }
    }
    for (agent, mut view) in &mut views {
        if let Some(a) = arena.world.agent(agent.id) {
            view.from = view.to;
            view.to = cell_center(a.position().x, a.position().y);
            if !a.is_alive() {
                view.from = view.to;
            }
        }
    }
    for shot in &arena.last_report.shots {
        let (Some(a), Some(b)) = (
            arena.world.agent(shot.attacker),
            arena.world.agent(shot.target),
        ) else {
            continue;
        };
        let (from, to) = (
            cell_center(a.position().x, a.position().y),
            cell_center(b.position().x, b.position().y),
        );
        let length = from.distance(to);
        if length < 1.0 {
            continue;
        }
        let color = if shot.hit {
            Color::srgb(1.0, 0.9, 0.4)
        } else {
            Color::srgba(1.0, 1.0, 1.0, 0.35)
        };
        commands.spawn((
            Mesh2d(meshes.add(Rectangle::new(length, 2.0))),
            MeshMaterial2d(materials.add(color)),
            Transform::from_translation(((from + to) / 2.0).extend(4.0))
                .with_rotation(Quat::from_rotation_z((to - from).to_angle())),
            Tracer { until: now + 0.15 },
        ));
    }
}

/// Slides agents between cells, hides the dead, and fills bubbles and health bars.
fn place_agents(
    arena: Res<Arena>,
    fixed: Res<Time<Fixed>>,
    time: Res<Time<Real>>,
    mut agents: Query<(&ArenaAgent, &AgentView, &mut Transform, &mut Visibility)>,
    mut texts: Query<&mut Text2d>,
    mut visibility: Query<&mut Visibility, Without<ArenaAgent>>,
    mut bars: Query<&mut Transform, Without<ArenaAgent>>,
) {
    let t = fixed.overstep_fraction().clamp(0.0, 1.0);
    let now = time.elapsed_secs();
    for (agent, view, mut transform, mut shown) in &mut agents {
        let Some(a) = arena.world.agent(agent.id) else {
            continue;
        };
        transform.translation = view.from.lerp(view.to, t).extend(2.0);
        *shown = if a.is_alive() {
            Visibility::Visible
        } else {
            Visibility::Hidden
        };
        if let Ok(mut bubble) = texts.get_mut(view.bubble) {
            let text = view.speech.trim();
            if bubble.0 != text {
                bubble.0 = text.to_owned();
            }
        }
        if let Ok(mut bubble_shown) = visibility.get_mut(view.bubble) {
            *bubble_shown = if view.speech_until > now && !view.speech.trim().is_empty() {
                Visibility::Visible
            } else {
                Visibility::Hidden
            };
        }
        if let Ok(mut bar) = bars.get_mut(view.bar) {
            let health = a.health();
            let fraction = health.current as f32 / health.max.max(1) as f32;
            bar.scale.x = fraction.clamp(0.0, 1.0);
        }
    }
}

fn fade_tracers(mut commands: Commands, time: Res<Time<Real>>, tracers: Query<(Entity, &Tracer)>) {
    let now = time.elapsed_secs();
    for (entity, tracer) in &tracers {
        if tracer.until < now {
            commands.entity(entity).despawn();
        }
    }
}

/// The HUD's text and its warning line.
#[derive(Component)]
struct Hud;

#[derive(Component)]
struct HudWarning;

/// The frame time, smoothed.
#[derive(Resource, Default)]
struct FrameTime(f32);

fn spawn_hud(mut commands: Commands) {
    commands
        .spawn(Node {
            position_type: PositionType::Absolute,
            left: Val::Px(HUD_LEFT),
            top: Val::Px(ARENA_AT.1),
            width: Val::Px(WINDOW.0 as f32 - HUD_LEFT - 12.0),
            flex_direction: FlexDirection::Column,
            row_gap: Val::Px(6.0),
            ..default()
        })
        .with_children(|hud| {
            hud.spawn((
                Text::new(""),
                TextFont::from_font_size(13.0),
                TextColor(Color::srgb_u8(240, 170, 60)),
                HudWarning,
            ));
            hud.spawn((
                Text::new(""),
                TextFont::from_font_size(13.0),
                TextColor(Color::srgb(0.86, 0.88, 0.92)),
                Hud,
            ));
        });
}

#[expect(clippy::too_many_arguments, reason = "a system reading many resources")]
fn update_hud(
    arena: Res<Arena>,
    hm: Res<Hivemind>,
    time: Res<Time<Real>>,
    cap: Res<FrameCap>,
    selected: Res<Selected>,
    mut frame_time: ResMut<FrameTime>,
    agents: Query<(Entity, &ArenaAgent, &AgentView, &NpcAgent, &ActivePlan)>,
    mut hud: Query<&mut Text, (With<Hud>, Without<HudWarning>)>,
    mut warning: Query<&mut Text, (With<HudWarning>, Without<Hud>)>,
) {
    let ms = time.delta_secs() * 1_000.0;
    frame_time.0 = if frame_time.0 == 0.0 {
        ms
    } else {
        frame_time.0 * 0.9 + ms * 0.1
    };
    if let Ok(mut text) = warning.single_mut() {
        let line = match hm.fallback_only() {
            Some(why) => format!("FALLBACKS ONLY: {}", fallback_text(&why)),
            None => String::new(),
        };
        if text.0 != line {
            text.0 = line;
        }
    }
    let Ok(mut text) = hud.single_mut() else {
        return;
    };
    let world = &arena.world;
    let info = hm.backend_info();
    let model = info
        .source
        .as_deref()
        .map(|s| {
            Path::new(s)
                .file_name()
                .map_or(s.to_owned(), |n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "-".to_owned());
    let mut out = String::new();
    let _ = writeln!(out, "hivemind arena   tick {}", world.now());
    let _ = writeln!(out, "backend {}   {model}", hm.backend_name());
    let capped = cap
        .rate()
        .map_or_else(String::new, |fps| format!(" (cap {fps:.0}/s)"));
    let _ = writeln!(
        out,
        "Red {}   Blue {}   frame {:.1} ms{capped}   queue {}   waiting {}",
        world.score(Team::Red),
        world.score(Team::Blue),
        frame_time.0,
        hm.queue_depth(),
        hm.in_flight()
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "   {:<6} {:<8} {:<14} {:<17} {:<11} {:>6}",
        "agent", "persona", "doing", "plan from", "intent", "took"
    );
    let mut rows: Vec<_> = agents.iter().collect();
    rows.sort_by_key(|(_, a, ..)| a.id);
    for (number, (entity, agent, view, npc, plan)) in rows.into_iter().enumerate() {
        let alive = world
            .agent(agent.id)
            .is_some_and(hivemind_arena::Agent::is_alive);
        let doing = if alive {
            plan.current_step()
                .map_or_else(|| "-".to_owned(), |s| truncate(&s.to_string(), 14))
        } else {
            "(down)".to_owned()
        };
        let took = view
            .plan_took
            .map_or_else(|| "-".to_owned(), |d| HumanDuration(d).to_string());
        // The number key that selects the agent, and a mark on the one selected.
        let mark = if selected.0 == Some(entity) { '>' } else { ' ' };
        let key = if number < 9 {
            (number + 1).to_string()
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{mark}{key:<2}{:<6} {:<8} {:<14} {:<17} {:<11} {:>6}",
            name(agent.id),
            truncate(&npc.persona, 8),
            doing,
            truncate(&view.plan_from, 17),
            truncate(view.plan_intent.as_deref().unwrap_or("-"), 11),
            took
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "click an agent or press 1-9 to talk to it, Esc lets go"
    );
    let _ = write!(out, "` opens the console (hm status, hm perf, help)");
    if text.0 != out {
        text.0 = out;
    }
}

/// `text` cut to `width` characters, the last one a `~` if it was cut (the HUD's font has no
/// ellipsis).
fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('~');
        cut
    }
}

// ----- talking to an agent ---------------------------------------------------------------------

/// The agent the player talks to, if any.
#[derive(Resource, Default)]
struct Selected(Option<Entity>);

/// The talk box: the line being typed, and whether the box should take the keyboard.
#[derive(Resource, Default)]
struct TalkBox {
    text: String,
    focus: bool,
}

/// The number keys select agents in the HUD's order; Escape lets go. Not while a text box has the
/// keyboard: the keys are being typed there.
fn select_with_keys(
    keys: Res<ButtonInput<KeyCode>>,
    egui: Res<EguiWantsInput>,
    arena: Res<Arena>,
    mut selected: ResMut<Selected>,
) {
    if egui.wants_any_keyboard_input() {
        return;
    }
    const NUMBERS: [(KeyCode, KeyCode); 9] = [
        (KeyCode::Digit1, KeyCode::Numpad1),
        (KeyCode::Digit2, KeyCode::Numpad2),
        (KeyCode::Digit3, KeyCode::Numpad3),
        (KeyCode::Digit4, KeyCode::Numpad4),
        (KeyCode::Digit5, KeyCode::Numpad5),
        (KeyCode::Digit6, KeyCode::Numpad6),
        (KeyCode::Digit7, KeyCode::Numpad7),
        (KeyCode::Digit8, KeyCode::Numpad8),
        (KeyCode::Digit9, KeyCode::Numpad9),
    ];
    for (number, (digit, pad)) in NUMBERS.into_iter().enumerate() {
        if keys.any_just_pressed([digit, pad])
            && let Some(agent) = arena.numbered(number + 1)
        {
            selected.0 = Some(agent);
        }
    }
    if keys.just_pressed(KeyCode::Escape) {
        selected.0 = None;
    }
}

/// A left click on an agent selects it; one on the arena's floor lets go. Not while the pointer
/// is over a window of the console or the talk box.
fn select_with_mouse(
    buttons: Res<ButtonInput<MouseButton>>,
    egui: Res<EguiWantsInput>,
    windows: Query<&Window, With<PrimaryWindow>>,
    cameras: Query<(&Camera, &GlobalTransform)>,
    agents: Query<(Entity, &GlobalTransform, &Visibility), With<AgentView>>,
    mut selected: ResMut<Selected>,
) {
    if !buttons.just_pressed(MouseButton::Left) || egui.wants_any_pointer_input() {
        return;
    }
    let (Ok(window), Ok((camera, camera_at))) = (windows.single(), cameras.single()) else {
        return;
    };
    let Some(cursor) = window.cursor_position() else {
        return;
    };
    let Ok(at) = camera.viewport_to_world_2d(camera_at, cursor) else {
        return;
    };
    let nearest = agents
        .iter()
        .filter(|(_, _, shown)| **shown != Visibility::Hidden)
        .map(|(entity, place, _)| (entity, place.translation().truncate().distance(at)))
        .filter(|(_, distance)| *distance <= CLICK_RADIUS)
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let (x0, y0) = ARENA_AT;
    let on_floor =
        (x0..x0 + 20.0 * CELL).contains(&cursor.x) && (y0..y0 + 14.0 * CELL).contains(&cursor.y);
    match nearest {
        Some((agent, _)) => selected.0 = Some(agent),
        None if on_floor => selected.0 = None,
        None => {}
    }
}

/// A newly selected agent gets the talk box, which takes the keyboard (from the console too:
/// the two cannot share it), and the ring that marks it.
fn on_select(
    selected: Res<Selected>,
    mut talk: ResMut<TalkBox>,
    views: Query<(Entity, &AgentView)>,
    mut rings: Query<&mut Visibility, Without<AgentView>>,
    #[cfg(feature = "console")] console: Option<ResMut<hivemind::bevy::console::Console>>,
) {
    if !selected.is_changed() {
        return;
    }
    for (agent, view) in &views {
        if let Ok(mut ring) = rings.get_mut(view.ring) {
            *ring = if selected.0 == Some(agent) {
                Visibility::Inherited
            } else {
                Visibility::Hidden
            };
        }
    }
    if selected.0.is_some() {
        talk.focus = true;
        #[cfg(feature = "console")]
        if let Some(mut console) = console {
            console.open = false;
        }
    }
}

/// The talk box of the selected agent: the last exchanges, the reply being written, and a line
/// to type. Enter sends the line as a [`PlayerSaid`]. Hidden while the console is open, since the
/// console keeps the keyboard.
fn talk_box(
    mut contexts: EguiContexts,
    selected: Res<Selected>,
    mut talk: ResMut<TalkBox>,
    arena: Res<Arena>,
    agents: Query<(&ArenaAgent, &AgentView, &Conversation, Option<&Thinking>)>,
    mut said: MessageWriter<PlayerSaid>,
    #[cfg(feature = "console")] console: Option<Res<hivemind::bevy::console::Console>>,
) -> Result {
    let Some(entity) = selected.0 else {
        return Ok(());
    };
    let Ok((agent, view, conversation, thinking)) = agents.get(entity) else {
        return Ok(());
    };
    #[cfg(feature = "console")]
    if console.is_some_and(|c| c.open) {
        return Ok(());
    }
    let ctx = contexts.ctx_mut()?;
    let who = name(agent.id);
    let number = arena
        .entities
        .keys()
        .position(|id| *id == agent.id)
        .filter(|i| *i < 9)
        .map_or_else(String::new, |i| format!(" ({})", i + 1));
    let alive = arena
        .world
        .agent(agent.id)
        .is_some_and(hivemind_arena::Agent::is_alive);
    let mut send = None;
    egui::Window::new(format!("Say to {who}{number}"))
        .id(egui::Id::new("arena talk box"))
        .default_pos([TALK_AT.0, TALK_AT.1])
        .default_size([WINDOW.0 as f32 - TALK_AT.0 - 24.0, 200.0])
        .resizable(true)
        .show(ctx, |ui| {
            egui::ScrollArea::vertical()
                .max_height(150.0)
                .stick_to_bottom(true)
                .auto_shrink([false, true])
                .show(ui, |ui| {
                    for exchange in &conversation.exchanges {
                        ui.label(egui::RichText::new(format!("you: {}", exchange.player)).weak());
                        ui.label(format!("{who}: {}", exchange.reply));
                    }
                    // The reply on its way, as far as it has been written.
                    if let Some(thinking) = thinking.filter(|t| t.kind == RequestKind::Dialogue) {
                        let so_far = if view.speech_request == Some(thinking.request) {
                            view.speech.trim()
                        } else {
                            ""
                        };
                        ui.label(format!("{who}: {so_far}…"));
                    }
                });
            ui.separator();
            if !alive {
                ui.label(format!("{who} is down and hears nothing."));
                return;
            }
            let response = ui.add(
                egui::TextEdit::singleline(&mut talk.text)
                    .char_limit(MAX_SAID_CHARS)
                    .hint_text("say something · Enter sends · Esc, then Esc again, lets go")
                    .desired_width(f32::INFINITY),
            );
            // The key that opens the console is not part of what is said.
            talk.text.retain(|c| c != '`');
            if response.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
                send = Some(std::mem::take(&mut talk.text));
                talk.focus = true;
            }
            if std::mem::take(&mut talk.focus) {
                response.request_focus();
            }
        });
    if let Some(text) = send.filter(|t| !t.trim().is_empty()) {
        said.write(PlayerSaid {
            agent: entity,
            text,
        });
    }
    Ok(())
}

// ----- frame rate ------------------------------------------------------------------------------

/// The frame-rate cap asked for with `--fps`, and the renderer's name if it draws on the CPU.
#[derive(Resource, Default)]
struct FrameRate {
    asked: Option<f64>,
    software: Option<String>,
}

/// Notes whether the renderer draws on the CPU: Mesa's llvmpipe, lavapipe or softpipe, or
/// Google's `SwiftShader`.
fn detect_software_renderer(adapter: Option<Res<RenderAdapterInfo>>, mut rate: ResMut<FrameRate>) {
    let Some(adapter) = adapter else { return };
    let name = adapter.name.to_lowercase();
    if ["llvmpipe", "lavapipe", "softpipe", "swiftshader"]
        .iter()
        .any(|s| name.contains(s))
    {
        rate.software = Some(adapter.name.clone());
    }
}

/// Caps the frame rate at `--fps`, or, without it, at [`SOFTWARE_FPS`] while the renderer
/// draws on the CPU and the model runs in this process (the `local` backend), so both share the
/// cores. The backend can change at any time (`hm backend`), so this follows it.
fn cap_frame_rate(rate: Res<FrameRate>, hm: Res<Hivemind>, mut cap: ResMut<FrameCap>) {
    let local = hm.backend().is_some_and(|b| b.as_str() == BackendId::LOCAL);
    let wanted = match (rate.asked, &rate.software) {
        (Some(fps), _) => FrameCap::fps(fps),
        (None, Some(renderer)) if local => {
            if cap.frame.is_none() {
                info!(
                    "arena: {renderer} draws on the CPU the model runs on: at most \
                     {SOFTWARE_FPS} frames a second (--fps changes it)"
                );
            }
            FrameCap::fps(SOFTWARE_FPS)
        }
        (None, _) => FrameCap::none(),
    };
    if cap.frame != wanted.frame {
        *cap = wanted;
    }
}

// ----- screenshot ------------------------------------------------------------------------------

#[derive(Resource)]
struct Capture {
    path: Option<PathBuf>,
    frames: u32,
    frame: u32,
    taken_at: Option<u32>,
    /// The backend whose plan must be on the HUD before the screenshot, and the longest wait
    /// for one past `frames`.
    wait_for: Option<(BackendId, Duration)>,
    waiting_since: Option<Instant>,
    /// What the screenshot shows, once it is taken.
    shot: Arc<Mutex<Option<Shot>>>,
}

/// Completed plans by where they came from, since the start.
#[derive(Resource, Default)]
struct PlanTally {
    /// From a model in time, by backend: (as written, repaired).
    models: BTreeMap<BackendId, (u32, u32)>,
    cache: u32,
    fallbacks: u32,
}

impl PlanTally {
    fn count(&mut self, plan: &PlanReady) {
        match (&plan.source, plan.fallback) {
            (PlanSource::Llm { backend, repaired }, None) => {
                let (written, mended) = self.models.entry(backend.clone()).or_default();
                if *repaired {
                    *mended += 1;
                } else {
                    *written += 1;
                }
            }
            (PlanSource::Cache, None) => self.cache += 1,
            _ => self.fallbacks += 1,
        }
    }
}

/// What the screenshot showed: the plans so far and the HUD rows whose plan a model wrote.
struct Shot {
    frame: u32,
    after: Duration,
    models: BTreeMap<BackendId, (u32, u32)>,
    cache: u32,
    fallbacks: u32,
    /// Per backend, the agents whose HUD row showed a plan it wrote.
    rows: BTreeMap<BackendId, usize>,
}

impl std::fmt::Display for Shot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "screenshot at frame {} after {:.1} s; plans so far:",
            self.frame,
            self.after.as_secs_f64()
        )?;
        for (backend, (written, repaired)) in &self.models {
            write!(f, " {written} from {backend} ({repaired} more repaired),")?;
        }
        write!(
            f,
            " {} from the cache, {} fallbacks",
            self.cache, self.fallbacks
        )?;
        for (backend, rows) in &self.rows {
            write!(f, "; {rows} HUD rows from {backend}")?;
        }
        Ok(())
    }
}

/// After `frames` frames (and, if it waits for a model, once a plan of that model is on the HUD
/// or the wait is over), saves a screenshot; once it is on disk, exits.
fn capture(
    mut commands: Commands,
    mut capture: ResMut<Capture>,
    tally: Res<PlanTally>,
    hm: Res<Hivemind>,
    time: Res<Time<Real>>,
    views: Query<&AgentView>,
    mut exit: MessageWriter<AppExit>,
) {
    let Some(path) = capture.path.clone() else {
        return;
    };
    capture.frame += 1;
    let rows = |backend: &BackendId| {
        views
            .iter()
            .filter(|v| v.plan_model.as_ref() == Some(backend))
            .count()
    };
    match capture.taken_at {
        None if capture.frame >= capture.frames => {
            // A model that cannot answer (no model file, or forced fallbacks) is not waited for.
            if let Some((backend, longest)) = capture.wait_for.clone()
                && hm.fallback_only().is_none()
                && rows(&backend) == 0
            {
                let since = *capture.waiting_since.get_or_insert_with(Instant::now);
                if since.elapsed() < longest {
                    return;
                }
            }
            let _ = std::fs::remove_file(&path);
            commands
                .spawn(Screenshot::primary_window())
                .observe(save_to_disk(path));
            capture.taken_at = Some(capture.frame);
            let shot = Shot {
                frame: capture.frame,
                after: time.elapsed(),
                models: tally.models.clone(),
                cache: tally.cache,
                fallbacks: tally.fallbacks,
                rows: tally
                    .models
                    .keys()
                    .map(|backend| (backend.clone(), rows(backend)))
                    .collect(),
            };
            if let Ok(mut slot) = capture.shot.lock() {
                *slot = Some(shot);
            }
        }
        Some(at) if path.is_file() && capture.frame > at + 2 => {
            exit.write(AppExit::Success);
        }
        Some(at) if capture.frame > at + 600 => {
            eprintln!("arena: the screenshot was not written");
            exit.write(AppExit::from_code(1));
        }
        _ => {}
    }
}

/// Checks that plans from `backend` were on the HUD when the screenshot was taken.
fn check_model_plans(shot: Option<&Shot>, backend: &BackendId) -> Result<String, String> {
    let shot = shot.ok_or("no screenshot was taken")?;
    let rows = shot.rows.get(backend).copied().unwrap_or(0);
    let plans = shot
        .models
        .get(backend)
        .map_or(0, |(written, repaired)| written + repaired);
    if plans == 0 || rows == 0 {
        return Err(format!(
            "{plans} plans from {backend} before the screenshot, {rows} on the HUD \
             ({} fallbacks)",
            shot.fallbacks
        ));
    }
    Ok(format!("{plans} plans from {backend}, {rows} on the HUD"))
}

/// Checks a screenshot of the scene: the arena floor, both teams' agents, the HUD's text and,
/// if it was open, the console, each in its own region. Colours are matched loosely and counts
/// are fractions, so the numbers in the HUD may change freely.
fn check_screenshot(path: &Path, console: bool) -> Result<String, String> {
    let image = image::open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .to_rgb8();
    if (image.width(), image.height()) != WINDOW {
        return Err(format!(
            "the screenshot is {}x{}, not {}x{}",
            image.width(),
            image.height(),
            WINDOW.0,
            WINDOW.1
        ));
    }
    let rgb = |c: Color| {
        let s = c.to_srgba();
        [s.red, s.green, s.blue].map(|v| (v * 255.0).round() as i32)
    };
    let near = |p: &image::Rgb<u8>, c: [i32; 3], tolerance: i32| {
        (0..3).all(|i| (i32::from(p[i]) - c[i]).abs() <= tolerance)
    };
    let region = |x0: f32, y0: f32, x1: f32, y1: f32| {
        let (x0, y0, x1, y1) = (x0 as u32, y0 as u32, x1 as u32, y1 as u32);
        (y0..y1).flat_map(move |y| (x0..x1).map(move |x| (x, y)))
    };
    let count = |x0, y0, x1, y1, test: &dyn Fn(&image::Rgb<u8>) -> bool| {
        let (mut hits, mut all) = (0u32, 0u32);
        for (x, y) in region(x0, y0, x1, y1) {
            all += 1;
            if test(image.get_pixel(x, y)) {
                hits += 1;
            }
        }
        (hits, all)
    };
    let arena_w = 20.0 * CELL;
    let arena_h = 14.0 * CELL;
    let (ax0, ay0) = ARENA_AT;
    let (ax1, ay1) = (ax0 + arena_w, ay0 + arena_h);
    let mut report = Vec::new();

    let (floor, all) = count(ax0, ay0, ax1, ay1, &|p| near(p, rgb(FLOOR), 24));
    let share = f64::from(floor) / f64::from(all);
    if share < 0.35 {
        return Err(format!(
            "the arena floor covers {:.0}% of its region",
            share * 100.0
        ));
    }
    report.push(format!("floor {:.0}%", share * 100.0));

    for (team, color) in [("red", RED), ("blue", BLUE)] {
        let (pixels, _) = count(ax0, ay0, ax1, ay1, &|p| near(p, rgb(color), 40));
        if pixels < 600 {
            return Err(format!("{pixels} {team} agent pixels in the arena"));
        }
        report.push(format!("{team} {pixels} px"));
    }

    let bright = |p: &image::Rgb<u8>| p.0.iter().all(|&v| v > 150);
    let (text, _) = count(HUD_LEFT, ay0, WINDOW.0 as f32 - 12.0, ay1, &bright);
    if text < 1_500 {
        return Err(format!("{text} text pixels in the HUD"));
    }
    report.push(format!("hud text {text} px"));

    if console {
        let (x0, y0) = CONSOLE_AT;
        let (x1, y1) = (x0 + 600.0, (y0 + 220.0).min(WINDOW.1 as f32));
        let (panel, all) = count(x0 + 10.0, y0 + 10.0, x1, y1, &|p| {
            !near(p, rgb(BACKGROUND), 6)
        });
        let share = f64::from(panel) / f64::from(all);
        // egui's text is a light grey on a dark grey panel.
        let light = |p: &image::Rgb<u8>| p.0.iter().all(|&v| v > 110);
        let (text, _) = count(x0 + 10.0, y0 + 10.0, x1, y1, &light);
        if share < 0.6 || text < 300 {
            return Err(format!(
                "the console region is {:.0}% covered with {text} text pixels",
                share * 100.0
            ));
        }
        report.push(format!(
            "console {:.0}% covered, {text} text px",
            share * 100.0
        ));
    }
    Ok(report.join(", "))
}
