//! The Bevy plugin of hivemind: NPC plans and dialogue streamed to the game as messages.
//!
//! # Design
//!
//! Only this crate knows Bevy. The worker pool runs outside the ECS and talks to it through a
//! channel drained by a system within a per-frame budget, so the game never waits on a model.
//!
//! # Status
//!
//! Not built yet; the crate exists so the workspace layout, the `console` feature and the Bevy
//! version pin are in place.
