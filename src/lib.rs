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
//! | `remote` (feature `remote`) | `hivemind_remote` | the backend for OpenAI-compatible servers |
//!
//! # Design
//!
//! The workspace is split the way the dependency arrows point: `hivemind_core` knows neither
//! Bevy, llama.cpp nor the network, so everything that decides what an NPC does builds and tests
//! in seconds; each backend and the plugin depend on it and never on each other. llama-cpp-2
//! declares its API unstable, so only `hivemind_llama` names it. A game that only wants remote
//! inference turns off the default `llama` feature and needs no C++ toolchain.
//!
//! The example arena is not part of the facade: its rules (`hivemind_arena`) and its Bevy app and suite
//! runners (`hivemind_examples`) are dev-dependencies, used only by this package's examples,
//! tests and benchmarks, so a game that depends on hivemind compiles no example game.

pub use bevy_hivemind as bevy;
pub use hivemind_core as core;
#[cfg(feature = "llama")]
pub use hivemind_llama as llama;
#[cfg(feature = "remote")]
pub use hivemind_remote as remote;

/// The types most games need.
pub mod prelude {
    pub use hivemind_core::prelude::*;
}

/// The README's code, compiled and run as a doctest so it cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
