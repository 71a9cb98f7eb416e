//! Dispatch: the frame's requests to the worker pool, in deterministic batches. Never blocks.

use bevy::prelude::*;

use crate::runtime::Hivemind;

/// Dispatch: hands the frame's jobs to the workers. Never blocks.
pub(crate) fn dispatch(mut hm: ResMut<Hivemind>) {
    hm.dispatch();
}
