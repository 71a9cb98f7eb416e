//! hivemind's example game as a Bevy app, and the runners that play it without a window.
//!
//! | module | what it holds |
//! |---|---|
//! | [`arena_app`] | [`ArenaAppPlugin`](arena_app::ArenaAppPlugin): `hivemind_arena`'s rules driven by `bevy_hivemind`'s messages, the player talking to agents ([`arena_app::talk`]), and the arena's scripted "model" |
//! | [`llama_server`] | [`LlamaServer`](llama_server::LlamaServer): a real llama-server on loopback, for the remote backend's tests and benchmarks |
//! | [`frame_cap`] | [`FrameCapPlugin`](frame_cap::FrameCapPlugin): a frame-rate cap that leaves a local model its cores under a software renderer |
//! | [`scenario_run`] | [`run_suite`](scenario_run::run_suite): situations run through the whole plugin and judged by the arena's scenario rules |
//!
//! The root package's `arena` and `scenarios` examples, its headless tests and its benchmarks
//! all build on these, so what they measure is the game a developer watches.
//!
//! # Design
//!
//! This crate is the example game's Bevy app and its suite runners, and it is never a dependency
//! of the `hivemind` facade: a game that depends on hivemind compiles no example game. The
//! arena's rules stay in `hivemind_arena`, which knows nothing of Bevy, so they test in seconds;
//! what lives here is only the glue a Bevy game would write itself (spawning agents, asking for
//! plans, turning ticks into messages), kept in one place so the examples, the tests and the
//! benchmarks cannot drift apart. It is `publish = false`: it is the workspace's own harness,
//! not an API.

pub mod arena_app;
pub mod frame_cap;
pub mod llama_server;
pub mod scenario_run;
pub mod value_run;
