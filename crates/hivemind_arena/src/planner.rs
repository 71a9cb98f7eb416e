//! The arena's rules for plans as one [`FallbackPlanner`], the way a game hands them to
//! hivemind.
//!
//! [`ArenaPlanner`] adds no rules of its own: each method is one of [`crate::planning`]'s or
//! [`crate::intents()`]'s functions over the assets' GOAP domain and verbs. It lives with the
//! rules rather than with the Bevy app so that every runner (the app, the scenario suite, a test
//! that builds the plugin by hand) plans with exactly the same rules.

use std::sync::Arc;

use hivemind_core::hooks::FallbackPlanner;
use hivemind_core::plan::PlanStep;
use hivemind_core::prompt::IntentOption;
use hivemind_core::snapshot::WorldSnapshot;

use crate::intents::order_intents;
use crate::planning::{complete_plan, expand_intent, fallback_plan, first_invalid};
use crate::{ArenaAssets, intents};

/// The arena's rules for plans, over its GOAP domain.
///
/// They are fallback plans ([`fallback_plan`]), checks and repairs of a model's plans
/// ([`first_invalid`], [`complete_plan`]), and the guided format's intents ([`intents()`],
/// [`expand_intent`]).
#[derive(Clone)]
pub struct ArenaPlanner {
    /// The verbs and the GOAP domain.
    pub assets: Arc<ArenaAssets>,
}

impl ArenaPlanner {
    /// The planner over `assets`' domain and verbs.
    pub fn new(assets: Arc<ArenaAssets>) -> Self {
        ArenaPlanner { assets }
    }
}

impl FallbackPlanner for ArenaPlanner {
    fn plan(&self, snapshot: &WorldSnapshot) -> Vec<PlanStep> {
        fallback_plan(&self.assets.domain, &self.assets.registry, snapshot)
    }

    fn complete(&self, snapshot: &WorldSnapshot, done: &[PlanStep]) -> Vec<PlanStep> {
        complete_plan(&self.assets.domain, &self.assets.registry, snapshot, done)
    }

    fn first_invalid(&self, snapshot: &WorldSnapshot, steps: &[PlanStep]) -> Option<usize> {
        first_invalid(&self.assets.domain, &self.assets.registry, snapshot, steps)
    }

    fn intents(&self, snapshot: &WorldSnapshot) -> Vec<IntentOption> {
        intents(&self.assets.domain, &self.assets.registry, snapshot)
    }

    fn order_intents(&self, snapshot: &WorldSnapshot) -> Vec<IntentOption> {
        order_intents(&self.assets.domain, &self.assets.registry, snapshot)
    }

    fn expand(&self, snapshot: &WorldSnapshot, goal: &str) -> Vec<PlanStep> {
        expand_intent(&self.assets.domain, &self.assets.registry, snapshot, goal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assets, flanking_guard};

    #[test]
    fn a_flanking_guard_gets_a_valid_plan_and_intents_that_expand() {
        let planner = ArenaPlanner::new(Arc::new(assets()));
        let guard = flanking_guard();
        let plan = planner.plan(&guard);
        assert!(!plan.is_empty());
        assert_eq!(planner.first_invalid(&guard, &plan), None);
        let intents = planner.intents(&guard);
        assert!(!intents.is_empty());
        for intent in &intents {
            assert!(
                !planner.expand(&guard, &intent.goal).is_empty(),
                "{intent:?}"
            );
        }
    }
}
