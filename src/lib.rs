//! hivemind gives game NPCs plans and dialogue from a small local language model, without ever
//! stalling a frame.
//!
//! This is the facade crate a game depends on. It re-exports the workspace's crates:
//!
//! | module | crate | what it holds |
//! |---|---|---|
//! | [`core`] | `hivemind_core` | snapshots, plans, prompts, grammars, the stream parser, config, clock |
//! | [`bevy`] | `bevy_hivemind` | the Bevy plugin |
//! | `llama` (feature `llama`, default) | `hivemind_llama` | the in-process llama.cpp backend |
//! | `remote` (feature `remote`) | `hivemind_remote` | the backend for OpenAI-compatible servers (llama-server, vLLM, SGLang, Ollama, OpenAI) |
//!
//! A game needs only `use hivemind::prelude::*;` (beside `bevy::prelude::*`): the plugin, its
//! messages and components, the snapshot and plan types, the hook traits, and the local
//! backend's factory.
//!
//! # Design
//!
//! The workspace is split the way the dependency arrows point: `hivemind_core` knows neither
//! Bevy, llama.cpp nor the network, so everything that decides what an NPC does builds and tests
//! in seconds; each backend and the plugin depend on it and never on each other (the `router`
//! backend, in core, composes them through the trait). llama-cpp-2 declares its API unstable,
//! so only `hivemind_llama` names it. A game that only wants remote inference turns off the
//! default `llama` feature and needs no C++ toolchain.
//!
//! The request lifecycle (deadlines, fallbacks, repair, the cache, exactly-once delivery) is
//! `hivemind_core::lifecycle`, generic over the game's agent key; the plugin holds it keyed by
//! `Entity` and only moves messages in and out.
//!
//! The example arena is not part of the facade: its rules (`hivemind_arena`) and its Bevy app
//! and suite runners (`hivemind_examples`) are dev-dependencies, used only by this package's
//! examples, tests and benchmarks, so a game that depends on hivemind compiles no example game.

pub use bevy_hivemind as bevy;
pub use hivemind_core as core;
#[cfg(feature = "llama")]
pub use hivemind_llama as llama;
#[cfg(feature = "remote")]
pub use hivemind_remote as remote;

/// Everything the README's game uses: the plugin, its messages, components and commands, the
/// snapshot, plan and config types, the hook traits, and the backends' factories.
pub mod prelude {
    pub use bevy_hivemind::prelude::*;
    pub use hivemind_core::backend::{BackendFactory, BackendFactoryExt};
    pub use hivemind_core::prelude::*;
    pub use hivemind_core::prompt::PromptAsset;
    pub use hivemind_core::router::RouterFactory;
    pub use hivemind_core::templates::TemplateBook;
    #[cfg(feature = "llama")]
    pub use hivemind_llama::LlamaFactory;
    #[cfg(feature = "remote")]
    pub use hivemind_remote::RemoteFactory;
}

/// The README's code, compiled and run as a doctest so it cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
