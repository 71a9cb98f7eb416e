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
    // A budget from a hand-edited file may be anything: NaN or less reads nothing past the
    // first few events, too much for a `Duration` reads everything.
    let ms = f64::from(hm.config().budgets.drain_ms.max(0.0));
    let budget = Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::MAX);
    hm.drain(budget, &mut metrics);
    out.flush(&mut hm);
}
