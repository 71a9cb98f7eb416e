//! hivemind's metrics as a resource and as Bevy diagnostics, and the plugin's own frame cost.

use std::time::Duration;

use bevy::prelude::*;
use hivemind_core::metrics::{Histogram, Metrics};

/// Latency histograms, token rates, cache hits, answers by source and fallbacks by reason, for
/// the console, a HUD or a test. See [`Metrics`].
#[derive(Resource, Debug, Default, Deref, DerefMut)]
pub struct HivemindMetrics(pub Metrics);

/// The main-thread time of all hivemind systems, per frame.
#[derive(Resource, Debug, Default)]
pub struct FrameCost {
    pub(crate) start: Option<std::time::Instant>,
    last: Duration,
    histogram: Histogram,
}

impl FrameCost {
    pub(crate) fn record(&mut self, cost: Duration) {
        self.last = cost;
        self.histogram.record(cost);
    }

    /// The last frame's cost.
    pub fn last(&self) -> Duration {
        self.last
    }

    /// Every frame's cost since the start (or the last [`FrameCost::clear`]).
    pub fn histogram(&self) -> &Histogram {
        &self.histogram
    }

    /// Forgets the recorded frames.
    pub fn clear(&mut self) {
        self.histogram.clear();
    }
}

/// The diagnostics hivemind publishes every frame.
pub mod diagnostic {
    use bevy::diagnostic::{Diagnostic, DiagnosticPath, Diagnostics, RegisterDiagnostic};
    use bevy::prelude::*;
    use hivemind_core::plan::RequestKind;

    use super::HivemindMetrics;
    use crate::runtime::Hivemind;

    /// Jobs queued and not yet taken by a worker.
    pub const QUEUE_DEPTH: DiagnosticPath = DiagnosticPath::const_new("hivemind/queue_depth");
    /// Requests waiting for their answer.
    pub const IN_FLIGHT: DiagnosticPath = DiagnosticPath::const_new("hivemind/in_flight");
    /// Plans answered by a fallback, in percent of all plans.
    pub const PLAN_FALLBACK_PERCENT: DiagnosticPath =
        DiagnosticPath::const_new("hivemind/plan_fallback_percent");
    /// Answer-cache hits, in percent of lookups.
    pub const CACHE_HIT_PERCENT: DiagnosticPath =
        DiagnosticPath::const_new("hivemind/cache_hit_percent");
    /// Tokens generated per second, over recent jobs.
    pub const TOKENS_PER_SECOND: DiagnosticPath =
        DiagnosticPath::const_new("hivemind/tokens_per_second");
    /// The main-thread time of all hivemind systems last frame, in milliseconds.
    pub const FRAME_COST_MS: DiagnosticPath = DiagnosticPath::const_new("hivemind/frame_cost_ms");

    /// Every path above.
    pub const ALL: [DiagnosticPath; 6] = [
        QUEUE_DEPTH,
        IN_FLIGHT,
        PLAN_FALLBACK_PERCENT,
        CACHE_HIT_PERCENT,
        TOKENS_PER_SECOND,
        FRAME_COST_MS,
    ];

    pub(crate) fn register(app: &mut App) {
        for path in ALL {
            app.register_diagnostic(Diagnostic::new(path));
        }
    }

    pub(crate) fn publish(hm: &Hivemind, metrics: &HivemindMetrics, diagnostics: &mut Diagnostics) {
        diagnostics.add_measurement(&QUEUE_DEPTH, || hm.queue_depth() as f64);
        diagnostics.add_measurement(&IN_FLIGHT, || hm.in_flight() as f64);
        if let Some(rate) = metrics.fallback_rate(RequestKind::Plan) {
            diagnostics.add_measurement(&PLAN_FALLBACK_PERCENT, || rate * 100.0);
        }
        if let Some(rate) = metrics.cache().hit_rate() {
            diagnostics.add_measurement(&CACHE_HIT_PERCENT, || rate * 100.0);
        }
        if let Some(tokens) = metrics.tokens().recent().generated_per_sec {
            diagnostics.add_measurement(&TOKENS_PER_SECOND, || tokens);
        }
    }

    pub(crate) fn publish_cost(diagnostics: &mut Diagnostics, cost: std::time::Duration) {
        diagnostics.add_measurement(&FRAME_COST_MS, || cost.as_secs_f64() * 1000.0);
    }
}
