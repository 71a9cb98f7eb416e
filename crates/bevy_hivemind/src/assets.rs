//! hivemind's files as Bevy assets, hot-reloaded: `hivemind.ron`, the prompt file (rules and
//! personas), the action registry (`actions.ron`) and the dialogue templates.
//!
//! The loaders take the `.ron` extension, which games use for their own files too: Bevy picks
//! a loader by the asset type asked for, so `asset_server.load::<ConfigAsset>("hivemind.ron")`
//! always reaches this one.

use std::marker::PhantomData;

use bevy::asset::io::Reader;
use bevy::asset::{AssetLoader, LoadContext};
use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use hivemind_core::action::ActionRegistry;
use hivemind_core::config::{HivemindConfig, LoadError};
use hivemind_core::prompt::PromptAsset;
use hivemind_core::templates::TemplateBook;

/// `hivemind.ron`: the configuration.
#[derive(Asset, TypePath, Clone, Debug, PartialEq)]
pub struct ConfigAsset(pub HivemindConfig);

/// The prompt file: rules, worked examples and personas.
#[derive(Asset, TypePath, Clone, Debug, PartialEq, Eq)]
pub struct PromptFileAsset(pub PromptAsset);

/// The action registry: the verbs plans may use.
#[derive(Asset, TypePath, Clone, Debug, PartialEq, Eq)]
pub struct ActionsAsset(pub ActionRegistry);

/// A dialogue templates file.
#[derive(Asset, TypePath, Clone, Debug, PartialEq, Eq)]
pub struct TemplatesAsset(pub TemplateBook);

/// A file that could not be read or parsed; the message names the file, line and column.
#[derive(Debug, thiserror::Error)]
pub enum AssetLoadError {
    /// The bytes could not be read.
    #[error("could not read {path}: {source}")]
    Io {
        /// The asset path.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not valid UTF-8.
    #[error("{path} is not UTF-8 text")]
    NotText {
        /// The asset path.
        path: String,
    },
    /// The RON did not parse or a value is inconsistent.
    #[error(transparent)]
    Invalid(#[from] LoadError),
}

async fn read_text(
    reader: &mut dyn Reader,
    load_context: &LoadContext<'_>,
) -> Result<(String, String), AssetLoadError> {
    let path = load_context.path().to_string();
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| AssetLoadError::Io {
            path: path.clone(),
            source,
        })?;
    let text =
        String::from_utf8(bytes).map_err(|_| AssetLoadError::NotText { path: path.clone() })?;
    Ok((text, path))
}

/// An asset read from one RON file by a core parser.
pub trait RonAsset: Asset + Sized {
    /// Parses the file's text; `origin` names it in errors.
    fn from_ron(text: &str, origin: &str) -> Result<Self, LoadError>;
}

impl RonAsset for ConfigAsset {
    fn from_ron(text: &str, origin: &str) -> Result<Self, LoadError> {
        HivemindConfig::from_ron(text, origin).map(ConfigAsset)
    }
}

impl RonAsset for PromptFileAsset {
    fn from_ron(text: &str, origin: &str) -> Result<Self, LoadError> {
        PromptAsset::from_ron(text, origin).map(PromptFileAsset)
    }
}

impl RonAsset for ActionsAsset {
    fn from_ron(text: &str, origin: &str) -> Result<Self, LoadError> {
        ActionRegistry::from_ron(text, origin).map(ActionsAsset)
    }
}

impl RonAsset for TemplatesAsset {
    fn from_ron(text: &str, origin: &str) -> Result<Self, LoadError> {
        TemplateBook::from_ron(text, origin).map(TemplatesAsset)
    }
}

/// Loads a [`RonAsset`] from a `.ron` file.
#[derive(TypePath)]
pub struct RonLoader<A>(PhantomData<fn() -> A>);

impl<A> Default for RonLoader<A> {
    fn default() -> Self {
        RonLoader(PhantomData)
    }
}

impl<A: RonAsset> AssetLoader for RonLoader<A> {
    type Asset = A;
    type Settings = ();
    type Error = AssetLoadError;

    async fn load(
        &self,
        reader: &mut dyn Reader,
        _settings: &(),
        load_context: &mut LoadContext<'_>,
    ) -> Result<A, AssetLoadError> {
        let (text, path) = read_text(reader, load_context).await?;
        Ok(A::from_ron(&text, &path)?)
    }

    fn extensions(&self) -> &[&str] {
        &["ron"]
    }
}

/// Loads [`ConfigAsset`]s.
pub type ConfigLoader = RonLoader<ConfigAsset>;

/// Loads [`PromptFileAsset`]s.
pub type PromptLoader = RonLoader<PromptFileAsset>;

/// Loads [`ActionsAsset`]s.
pub type ActionsLoader = RonLoader<ActionsAsset>;

/// Loads [`TemplatesAsset`]s.
pub type TemplatesLoader = RonLoader<TemplatesAsset>;

/// The handles of the plugin's own assets, kept so they stay loaded and are watched.
#[derive(Resource, Default, Debug)]
pub struct HivemindAssetHandles {
    /// `hivemind.ron`, if the plugin loads one.
    pub config: Option<Handle<ConfigAsset>>,
    /// The prompt file, if the plugin loads one.
    pub prompt: Option<Handle<PromptFileAsset>>,
    /// The action registry, if the plugin loads one.
    pub actions: Option<Handle<ActionsAsset>>,
    /// The dialogue templates, if the plugin loads them.
    pub templates: Option<Handle<TemplatesAsset>>,
    pub(crate) applied_config: Option<ConfigAsset>,
    pub(crate) applied_prompt: Option<PromptFileAsset>,
    pub(crate) applied_actions: Option<ActionsAsset>,
    pub(crate) applied_templates: Option<TemplatesAsset>,
}

/// One of the plugin's asset types as a system reads it: its events and its store.
#[derive(SystemParam)]
pub(crate) struct Watch<'w, 's, A: Asset> {
    events: MessageReader<'w, 's, AssetEvent<A>>,
    assets: Res<'w, Assets<A>>,
}

impl<A: Asset + Clone + PartialEq> Watch<'_, '_, A> {
    /// The file behind `handle` if it (re)loaded since the last call with content other than
    /// `applied`, which it then becomes. The several events of one reload apply it once, and a
    /// file that failed to load changes nothing.
    pub(crate) fn fresh(
        &mut self,
        handle: Option<&Handle<A>>,
        applied: &mut Option<A>,
    ) -> Option<A> {
        if self.events.read().count() == 0 {
            return None;
        }
        let loaded = self.assets.get(handle?)?;
        if applied.as_ref() == Some(loaded) {
            return None;
        }
        *applied = Some(loaded.clone());
        Some(loaded.clone())
    }
}
