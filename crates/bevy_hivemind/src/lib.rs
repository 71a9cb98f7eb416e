//! The Bevy plugin of hivemind: NPC plans and dialogue streamed to the game as messages, with
//! a GOAP plan or a template line whenever a model would be late.
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_hivemind::prelude::*;
//!
//! fn spawn_guard(mut commands: Commands) {
//!     let guard = commands.spawn(NpcAgent::new("veteran")).id();
//!     commands.request_plan(guard);
//! }
//!
//! fn act(mut steps: MessageReader<PlanStepReady>, mut done: MessageReader<PlanReady>) {
//!     for ready in steps.read() {
//!         info!("{}: step {} is {}", ready.agent, ready.index, ready.step.verb);
//!     }
//!     for plan in done.read() {
//!         info!("{}: plan from {:?}, fallback {:?}", plan.agent, plan.source, plan.fallback);
//!     }
//! }
//!
//! App::new()
//!     .add_plugins((MinimalPlugins, HivemindPlugin::default()))
//!     .add_systems(Startup, spawn_guard)
//!     .add_systems(Update, act.after(HivemindSystems::Apply))
//!     .run();
//! ```
//!
//! # Design
//!
//! Only this crate knows Bevy. The worker pool of `hivemind_core` runs on its own threads; the
//! plugin talks to it through a channel that a system drains within a per-frame budget, so a
//! frame never waits for a model. Everything a game can be answered with is decided by a
//! deadline: a plan must show its first step, a reply its first words, by then, or the fallback
//! that was prepared off the main thread when the request was queued answers instead, in the
//! same messages. A model that finishes late still fills the cache for the next agent in the same
//! situation, but never overrides what an agent was already told.
//!
//! All of that bookkeeping is the request lifecycle of `hivemind_core`
//! ([`Lifecycle`]), plain Rust unit-tested without an
//! `App`; the resource [`Hivemind`] holds it keyed by `Entity`, and the systems (a file per
//! set under `systems/`) only move messages in and out of it. The game sees facts as messages
//! ([`PlanStepReady`], [`PlanReady`], …) and state as components ([`ActivePlan`], [`Thinking`]),
//! and plugs its own rules in as values: a [`FallbackPlanner`], a [`LineFilter`], verb
//! handlers.
//!
//! On a lockstep clock ([`ClockMode::Lockstep`](hivemind_core::config::ClockMode)) time comes
//! from token counts, not from the machine: every event is due at its stamp, and Drain waits
//! for the workers until it knows every event due by now. A run then depends only on its inputs
//! and seed, however fast the machine and however many workers.

#![expect(
    clippy::needless_pass_by_value,
    reason = "Bevy systems take their parameters (`Res`, `Query`) by value"
)]

mod assets;
mod components;
#[cfg(feature = "console")]
pub mod console;
mod hooks;
mod messages;
mod metrics;
mod runtime;
mod systems;

use std::sync::Arc;

use bevy::app::AppExit;
use bevy::ecs::schedule::{InternedScheduleLabel, ScheduleLabel};
use bevy::prelude::*;
use hivemind_core::action::{ActionRegistry, VerbSpec};
use hivemind_core::backend::BackendFactory;
use hivemind_core::clock::Clock;
use hivemind_core::config::{ClockMode, HivemindConfig};
use hivemind_core::lifecycle::{Lifecycle, LifecycleParts};
use hivemind_core::plan::BackendId;
use hivemind_core::prompt::{ChatTemplate, PromptAsset};
use hivemind_core::templates::TemplateBook;

pub use assets::{
    ActionsAsset, ActionsLoader, AssetLoadError, ConfigAsset, ConfigLoader, HivemindAssetHandles,
    PromptFileAsset, PromptLoader, RonAsset, RonLoader, TemplatesAsset, TemplatesLoader,
};
pub use components::{
    ActivePlan, AgentSnapshot, Conversation, Exchange, NpcAgent, PlanStatus, RequestKinds, Thinking,
};
pub use hivemind_core::banter::BanterLines;
pub use hivemind_core::hooks::{FallbackPlanner, IdlePlanner, LineFilter, LineRules, LineVerdict};
pub use hivemind_core::lifecycle::{DuplicateBackend, FallbackOnly, Phase, UnknownBackend};
pub use hooks::{HivemindAppExt, VerbCall, VerbHandlers};
pub use messages::{
    CancelRequest, LineDelta, LineKind, LineReady, PlanReady, PlanStepReady, RequestId,
    RequestLine, RequestPlan, RequestSlot, StepFinished,
};
pub use metrics::{FrameCost, HivemindMetrics, diagnostic};
pub use runtime::{Hivemind, TaskPoolExecutor};

/// What a game needs in scope.
pub mod prelude {
    pub use crate::{
        ActivePlan, AgentSnapshot, CancelRequest, Conversation, FallbackPlanner, Hivemind,
        HivemindAppExt, HivemindCommandsExt, HivemindMetrics, HivemindPlugin, HivemindSettings,
        HivemindSystems, LineDelta, LineFilter, LineKind, LineReady, LineRules, NpcAgent,
        PlanReady, PlanStatus, PlanStepReady, RequestLine, RequestPlan, StepFinished, Thinking,
        VerbCall,
    };
    pub use hivemind_core::plan::{FallbackReason, PlanSource, PlanStep, RequestKind};
    pub use hivemind_core::snapshot::{AgentId, WorldSnapshot};
}

/// The plugin's systems, in the order they run each time its schedule runs.
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HivemindSystems {
    /// Reads the game's messages: new requests (answered at once from the cache, the banter
    /// pool or a forced fallback, or queued with their fallback prepared off the main thread),
    /// cancellations, finished steps and despawned agents. Applies edited settings and reloaded
    /// assets. Never blocks.
    Gather,
    /// Hands the frame's requests to the worker pool in deterministic batches, and in idle time
    /// asks for banter lines. Never blocks.
    Dispatch,
    /// Reads what the workers produced and sends it on as [`PlanStepReady`] and [`LineDelta`]
    /// messages, and completions for finished answers. On a real-time clock it stops at the
    /// frame budget (`budgets.drain_ms`) and the rest waits for the next frame; on a lockstep
    /// clock it waits for the workers to report everything due by now.
    Drain,
    /// Answers every request whose deadline passed with nothing in time from the model with its
    /// prepared fallback.
    Fallback,
    /// Updates [`ActivePlan`], [`Thinking`] and [`Conversation`], runs verb handlers for steps
    /// that start, and publishes metrics and diagnostics.
    Apply,
}

/// The effective configuration: the plugin's `config` until `hivemind.ron` loads, the file's
/// after each load or reload, and any edit made here (by the console or an inspector) until the
/// next reload.
#[derive(Resource, Reflect, Clone, Debug, PartialEq, Deref, DerefMut)]
#[reflect(Resource)]
pub struct HivemindSettings(pub HivemindConfig);

/// Gives NPCs plans and dialogue from a model, with fallbacks that never miss a deadline.
///
/// # Schedule
///
/// Runs in `Update` by default; [`HivemindPlugin::lockstep`] runs it in `FixedUpdate` on a
/// lockstep clock. Its sets, chained in this order: [`HivemindSystems::Gather`],
/// [`Dispatch`](HivemindSystems::Dispatch), [`Drain`](HivemindSystems::Drain),
/// [`Fallback`](HivemindSystems::Fallback), [`Apply`](HivemindSystems::Apply). Game systems
/// that read answers run after `Apply`; those that send requests, before `Gather` (or they
/// are read the next time).
///
/// # Components
///
/// An agent needs [`NpcAgent`], which brings [`AgentSnapshot`] (the game keeps it current),
/// [`ActivePlan`] and [`Conversation`]. [`Thinking`] is added while a plan or reply is on its
/// way.
///
/// # Resources
///
/// [`Hivemind`] (the runtime), [`HivemindSettings`], [`HivemindMetrics`], [`FrameCost`],
/// [`VerbHandlers`]; with an `AssetPlugin`, `hivemind.ron`, the prompt file, the action
/// registry and the templates load as [`ConfigAsset`], [`PromptFileAsset`], [`ActionsAsset`]
/// and [`TemplatesAsset`] and reload when they change.
pub struct HivemindPlugin {
    /// The schedule the systems run in.
    pub schedule: InternedScheduleLabel,
    /// The configuration until (and unless) `config_asset` loads.
    pub config: HivemindConfig,
    /// The asset path of `hivemind.ron`; `None` keeps `config`.
    pub config_asset: Option<String>,
    /// Prompt rules and personas until (and unless) `prompt_asset` loads.
    pub prompt: PromptAsset,
    /// The asset path of the prompt file; `None` keeps `prompt`.
    pub prompt_asset: Option<String>,
    /// The verbs plans may use, until (and unless) `registry_asset` loads.
    pub registry: ActionRegistry,
    /// The asset path of the action registry; `None` keeps `registry`.
    pub registry_asset: Option<String>,
    /// Lines for banter and for replies that miss their deadline, until (and unless)
    /// `templates_asset` loads.
    pub templates: TemplateBook,
    /// The asset path of the dialogue templates; `None` keeps `templates`.
    pub templates_asset: Option<String>,
    /// The chat format of the model.
    pub chat_template: ChatTemplate,
    /// Fallback plans.
    pub planner: Arc<dyn FallbackPlanner>,
    /// Checks every line before a player sees it.
    pub line_filter: Arc<dyn LineFilter>,
    /// The clock; `None` makes the one `config.clock` describes.
    pub clock: Option<Clock>,
    backends: Vec<Arc<dyn BackendFactory>>,
    backend: Option<BackendId>,
}

impl Default for HivemindPlugin {
    fn default() -> Self {
        HivemindPlugin::new(Update)
    }
}

impl HivemindPlugin {
    /// The plugin with its systems in `schedule`, the default configuration, a registry with
    /// only the `Wait` verb, no templates, and no backend (every answer is a fallback, with
    /// reason `NoModel`, and [`Lifecycle::fallback_only`] says "no backend", until one is
    /// added).
    pub fn new(schedule: impl ScheduleLabel) -> Self {
        HivemindPlugin {
            schedule: schedule.intern(),
            config: HivemindConfig::default(),
            config_asset: None,
            prompt: PromptAsset::default(),
            prompt_asset: None,
            registry: ActionRegistry {
                idle: "Wait".into(),
                verbs: vec![VerbSpec {
                    name: "Wait".into(),
                    args: Vec::new(),
                    goap: None,
                    describe: "hold position".into(),
                }],
            },
            registry_asset: None,
            templates: TemplateBook::default(),
            templates_asset: None,
            chat_template: ChatTemplate::chatml(),
            planner: Arc::new(IdlePlanner),
            line_filter: Arc::new(LineRules::default()),
            clock: None,
            backends: Vec::new(),
            backend: None,
        }
    }

    /// The plugin in `FixedUpdate` on a lockstep clock: the simulation and test mode.
    pub fn lockstep() -> Self {
        let mut plugin = HivemindPlugin::new(FixedUpdate);
        plugin.config.clock.mode = ClockMode::Lockstep;
        plugin
    }

    /// Adds a backend and makes it the one in use (the last one added wins). Others stay
    /// registered for [`Lifecycle::set_backend`].
    ///
    /// # Panics
    ///
    /// If a backend with the same id is registered already: give one of them another name
    /// with [`BackendFactoryExt::with_id`](hivemind_core::backend::BackendFactoryExt::with_id).
    pub fn with_backend(mut self, factory: Arc<dyn BackendFactory>) -> Self {
        self.insert_backend(factory);
        self
    }

    /// Adds a backend and makes it the one in use.
    ///
    /// # Panics
    ///
    /// As [`HivemindPlugin::with_backend`].
    pub fn insert_backend(&mut self, factory: Arc<dyn BackendFactory>) -> &mut Self {
        self.backend = Some(factory.id());
        self.register_backend(factory);
        self
    }

    /// Adds a backend the game can switch to, without using it yet.
    ///
    /// # Panics
    ///
    /// As [`HivemindPlugin::with_backend`].
    pub fn with_standby_backend(mut self, factory: Arc<dyn BackendFactory>) -> Self {
        self.register_backend(factory);
        self
    }

    fn register_backend(&mut self, factory: Arc<dyn BackendFactory>) {
        let id = factory.id();
        assert!(
            self.backends.iter().all(|f| f.id() != id),
            "hivemind: {}",
            DuplicateBackend(id)
        );
        self.backends.push(factory);
    }

    /// Sets the configuration, for chaining.
    pub fn with_config(mut self, config: HivemindConfig) -> Self {
        self.config = config;
        self
    }

    /// Loads the configuration from the asset at `path` (and reloads it when it changes).
    pub fn with_config_asset(mut self, path: impl Into<String>) -> Self {
        self.config_asset = Some(path.into());
        self
    }

    /// Sets the prompt rules and personas, for chaining.
    pub fn with_prompt(mut self, prompt: PromptAsset) -> Self {
        self.prompt = prompt;
        self
    }

    /// Loads the prompt rules and personas from the asset at `path` (and reloads them).
    pub fn with_prompt_asset(mut self, path: impl Into<String>) -> Self {
        self.prompt_asset = Some(path.into());
        self
    }

    /// Sets the verbs, for chaining.
    pub fn with_registry(mut self, registry: ActionRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// Loads the verbs from the asset at `path` (and reloads them when it changes); until it
    /// loads, `registry` is used.
    pub fn with_registry_asset(mut self, path: impl Into<String>) -> Self {
        self.registry_asset = Some(path.into());
        self
    }

    /// Loads the template lines from the asset at `path` (and reloads them when it changes);
    /// until it loads, `templates` are used.
    pub fn with_templates_asset(mut self, path: impl Into<String>) -> Self {
        self.templates_asset = Some(path.into());
        self
    }

    /// Sets the template lines, for chaining.
    pub fn with_templates(mut self, templates: TemplateBook) -> Self {
        self.templates = templates;
        self
    }

    /// Sets the fallback planner, for chaining.
    pub fn with_planner(mut self, planner: impl FallbackPlanner) -> Self {
        self.planner = Arc::new(planner);
        self
    }

    /// Sets the line filter, for chaining.
    pub fn with_line_filter(mut self, filter: impl LineFilter) -> Self {
        self.line_filter = Arc::new(filter);
        self
    }

    /// Sets the clock, for chaining (tests use a manual one).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// `config`, or the defaults (with an error naming the field) if a value is out of its
    /// range: a game built from a bad settings file starts, on sane settings.
    fn checked_config(&self) -> HivemindConfig {
        match self.config.validate() {
            Ok(()) => self.config.clone(),
            Err(message) => {
                error!("hivemind: the plugin's config is refused, defaults used: {message}");
                HivemindConfig::default()
            }
        }
    }

    fn runtime(&self, config: HivemindConfig) -> Hivemind {
        let clock = self
            .clock
            .clone()
            .unwrap_or_else(|| Clock::from_config(&config.clock));
        let lifecycle = Lifecycle::new(LifecycleParts {
            config,
            registry: self.registry.clone(),
            templates: self.templates.clone(),
            prompt: self.prompt.clone(),
            chat: self.chat_template.clone(),
            planner: Arc::clone(&self.planner),
            filter: Arc::clone(&self.line_filter),
            executor: Arc::new(TaskPoolExecutor),
            backends: self.backends.clone(),
            backend: self.backend.clone(),
            clock,
        });
        match lifecycle {
            Ok(lifecycle) => Hivemind(lifecycle),
            // The builder registers each id once and chooses only registered ones.
            Err(e) => unreachable!("hivemind: {e}"),
        }
    }
}

impl Plugin for HivemindPlugin {
    fn build(&self, app: &mut App) {
        let config = self.checked_config();
        app.add_message::<RequestPlan>()
            .add_message::<RequestLine>()
            .add_message::<CancelRequest>()
            .add_message::<StepFinished>()
            .add_message::<PlanStepReady>()
            .add_message::<LineDelta>()
            .add_message::<PlanReady>()
            .add_message::<LineReady>()
            .add_message::<AppExit>()
            .register_type::<NpcAgent>()
            .register_type::<AgentSnapshot>()
            .register_type::<Thinking>()
            .register_type::<ActivePlan>()
            .register_type::<Conversation>()
            .register_type::<HivemindSettings>()
            .register_type::<RequestPlan>()
            .register_type::<RequestLine>()
            .register_type::<CancelRequest>()
            .register_type::<StepFinished>()
            .register_type::<PlanStepReady>()
            .register_type::<LineDelta>()
            .register_type::<PlanReady>()
            .register_type::<LineReady>()
            .insert_resource(HivemindSettings(config.clone()))
            .insert_resource(self.runtime(config))
            .init_resource::<HivemindMetrics>()
            .init_resource::<FrameCost>()
            .init_resource::<VerbHandlers>()
            .init_resource::<systems::PendingExchanges>()
            .init_resource::<HivemindAssetHandles>();
        diagnostic::register(app);

        use HivemindSystems::*;
        app.configure_sets(
            self.schedule,
            (Gather, Dispatch, Drain, Fallback, Apply).chain(),
        )
        .add_systems(
            self.schedule,
            (
                (systems::gather::begin_frame, systems::gather::gather)
                    .chain()
                    .in_set(Gather),
                systems::dispatch::dispatch.in_set(Dispatch),
                systems::drain::drain.in_set(Drain),
                systems::fallback::fallback.in_set(Fallback),
                (
                    systems::apply::apply,
                    systems::apply::start_steps,
                    systems::apply::publish,
                )
                    .chain()
                    .in_set(Apply),
            ),
        )
        .add_systems(Last, systems::shut_down_on_exit);
    }

    fn finish(&self, app: &mut App) {
        let Some(server) = app.world().get_resource::<AssetServer>().cloned() else {
            let paths = [
                &self.config_asset,
                &self.prompt_asset,
                &self.registry_asset,
                &self.templates_asset,
            ];
            if paths.iter().any(|p| p.is_some()) {
                warn!("hivemind: no AssetPlugin, so its asset files are not loaded");
            }
            return;
        };
        app.init_asset::<ConfigAsset>()
            .init_asset::<PromptFileAsset>()
            .init_asset::<ActionsAsset>()
            .init_asset::<TemplatesAsset>()
            .init_asset_loader::<ConfigLoader>()
            .init_asset_loader::<PromptLoader>()
            .init_asset_loader::<ActionsLoader>()
            .init_asset_loader::<TemplatesLoader>();
        let handles = HivemindAssetHandles {
            config: self.config_asset.as_ref().map(|p| server.load(p.clone())),
            prompt: self.prompt_asset.as_ref().map(|p| server.load(p.clone())),
            actions: self.registry_asset.as_ref().map(|p| server.load(p.clone())),
            templates: self
                .templates_asset
                .as_ref()
                .map(|p| server.load(p.clone())),
            ..default()
        };
        app.insert_resource(handles).add_systems(
            self.schedule,
            systems::gather::reload_assets
                .in_set(HivemindSystems::Gather)
                .before(systems::gather::begin_frame),
        );
    }
}

/// Sends hivemind requests from `Commands`.
pub trait HivemindCommandsExt {
    /// Asks for a plan for `agent` (see [`RequestPlan`]).
    fn request_plan(&mut self, agent: Entity);
    /// Asks `agent` to say something (see [`RequestLine`]).
    fn request_line(&mut self, request: RequestLine);
    /// Cancels an agent's request (see [`CancelRequest`]).
    fn cancel_request(&mut self, cancel: CancelRequest);
}

impl HivemindCommandsExt for Commands<'_, '_> {
    fn request_plan(&mut self, agent: Entity) {
        self.write_message(RequestPlan::new(agent));
    }

    fn request_line(&mut self, request: RequestLine) {
        self.write_message(request);
    }

    fn cancel_request(&mut self, cancel: CancelRequest) {
        self.write_message(cancel);
    }
}
