//! Drain: what the workers produced, within the frame budget, as messages.

use std::time::Duration;

use bevy::prelude::*;

use super::Outbox;
use crate::metrics::HivemindMetrics;
use crate::runtime::Hivemind;

/// Drain: reads what the workers produced, within the frame budget on a real-time clock.
pub(crate) fn drain(
    mut hm: ResMut<Hivemind>,
    mut metrics: ResMut<HivemindMetrics>,
    mut out: Outbox,
) {
    let budget = Duration::from_secs_f64(f64::from(hm.config().budgets.drain_ms.max(0.0)) / 1000.0);
    hm.drain(budget, &mut metrics);
    out.flush(&mut hm);
}
