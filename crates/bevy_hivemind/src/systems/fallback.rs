//! Fallback: requests past their deadline get their prepared answer.

use bevy::prelude::*;

use super::Outbox;
use crate::metrics::HivemindMetrics;
use crate::runtime::Hivemind;

/// Fallback: answers requests whose deadline passed with their prepared fallback.
pub(crate) fn fallback(
    mut hm: ResMut<Hivemind>,
    mut metrics: ResMut<HivemindMetrics>,
    mut out: Outbox,
) {
    hm.answer_late(&mut metrics);
    out.flush(&mut hm);
}
