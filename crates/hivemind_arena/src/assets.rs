//! Loading the arena's three asset files together.

use std::path::Path;

use std::sync::Arc;

use hivemind_core::action::ActionRegistry;
use hivemind_core::config::HivemindConfig;
pub use hivemind_core::config::LoadError;
use hivemind_core::goap::Domain;
use hivemind_core::prompt::ChatTemplate;
pub use hivemind_core::prompt::PromptAsset;
use hivemind_core::snapshot::AgentId;
use hivemind_core::templates::TemplateBook;
use hivemind_core::worker::PromptContext;

/// The verbs, the GOAP domain, the dialogue templates and the prompt of the arena, loaded from
/// one assets directory and checked against each other.
#[derive(Clone, Debug)]
pub struct ArenaAssets {
    /// The verbs plans may use (`actions.ron`).
    pub registry: ActionRegistry,
    /// The GOAP domain (`goap/arena.goap.ron`).
    pub domain: Domain,
    /// The banter and dialogue-fallback lines (`dialogue/arena.templates.ron`).
    pub templates: TemplateBook,
    /// The prompt's rules, examples and personas (`prompt.ron`).
    pub prompt: PromptAsset,
}

impl ArenaAssets {
    /// The registry's path inside the assets directory.
    pub const ACTIONS: &str = "actions.ron";
    /// The GOAP domain's path inside the assets directory.
    pub const GOAP: &str = "goap/arena.goap.ron";
    /// The templates' path inside the assets directory.
    pub const TEMPLATES: &str = "dialogue/arena.templates.ron";
    /// The prompt's path inside the assets directory.
    pub const PROMPT: &str = "prompt.ron";

    /// Loads the four files from `dir` (the workspace's `assets/`).
    ///
    /// Besides each file's own checks, every verb's `goap` name must be an action of the
    /// domain, or GOAP could neither bind nor verify that verb; the error then names the
    /// registry file and the verb.
    pub fn load(dir: &Path) -> Result<ArenaAssets, LoadError> {
        let registry = ActionRegistry::load(&dir.join(Self::ACTIONS))?;
        let domain = Domain::load(&dir.join(Self::GOAP))?;
        let templates = TemplateBook::load(&dir.join(Self::TEMPLATES))?;
        let prompt = hivemind_core::config::load_ron_file(&dir.join(Self::PROMPT))?;
        for verb in &registry.verbs {
            if let Some(action) = &verb.goap
                && domain.action(action).is_none()
            {
                return Err(LoadError::Invalid {
                    origin: dir.join(Self::ACTIONS).display().to_string(),
                    message: format!(
                        "verb `{}` maps to GOAP action `{action}`, which {} does not define",
                        verb.name,
                        Self::GOAP
                    ),
                });
            }
        }
        Ok(ArenaAssets {
            registry,
            domain,
            templates,
            prompt,
        })
    }

    /// The persona of arena agent `id`: personas take turns down the roster, so that in a team
    /// no larger than the number of personas every agent has a voice of its own; `"default"` if
    /// the prompt has none.
    pub fn persona_of(&self, id: AgentId) -> String {
        let personas = &self.prompt.personas;
        match personas.len() {
            0 => "default".to_owned(),
            n => personas[id.0 as usize % n].name.clone(),
        }
    }

    /// What workers need to prompt for the arena: its prompt tree in `ChatML` (the default
    /// model's template), with every persona, sized by `config`.
    pub fn prompt_context(&self, config: &HivemindConfig) -> PromptContext {
        PromptContext::new(
            &ChatTemplate::chatml(),
            &self.prompt.rules,
            Arc::new(self.registry.clone()),
            &self.prompt.personas,
            config,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::verb;
    use crate::planning::goal;
    use crate::testing::{ASSETS, assets};

    #[test]
    fn the_workspace_assets_load_and_agree_with_the_rules() {
        let assets = assets();
        let names: Vec<&str> = assets
            .registry
            .verbs
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, verb::ALL);
        assert_eq!(assets.registry.idle, verb::WAIT);
        for name in [
            goal::KILL_ENEMY,
            goal::TAKE_COVER,
            goal::RELOAD,
            goal::HEAL,
            goal::HOLD_OBJECTIVE,
            goal::RETREAT,
            goal::IDLE,
        ] {
            assert!(assets.domain.goal(name).is_some(), "{name}");
        }
        for situation in crate::banter::SITUATIONS {
            assert!(
                assets.templates.situations().any(|s| s == situation),
                "{situation}"
            );
        }
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_the_file() {
        let err = ArenaAssets::load(Path::new("/no/such/assets")).unwrap_err();
        assert!(matches!(err, LoadError::Io { .. }));
        assert!(err.to_string().contains("actions.ron"), "{err}");
        assert!(Path::new(ASSETS).join(ArenaAssets::GOAP).exists());
    }
}
