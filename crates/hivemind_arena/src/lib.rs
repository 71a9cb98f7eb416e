//! The rules of hivemind's example arena as a library: world, movement, damage, scoring and
//! snapshots, shared by the example, the tests, the benchmarks and the scenario suite.
//!
//! # Design
//!
//! The rules live outside the example so that headless tests and benchmarks run exactly the
//! game a developer sees, and so that the arena stays one `WorldSnapshot` schema among many
//! rather than something the core knows about.
//!
//! # Status
//!
//! Not built yet.
