//! `hivemind.ron` and the prompt file (rules and personas) as Bevy assets, hot-reloaded.
//!
//! Both loaders take the `.ron` extension, which games use for their own files too: Bevy picks
//! a loader by the asset type asked for, so `asset_server.load::<ConfigAsset>("hivemind.ron")`
//! always reaches this one.

use std::marker::PhantomData;

use bevy::asset::io::Reader;
use bevy::asset::{AssetLoader, LoadContext};
use bevy::prelude::*;
use hivemind_core::config::{HivemindConfig, LoadError};
use hivemind_core::prompt::PromptAsset;

/// `hivemind.ron`: the configuration.
#[derive(Asset, TypePath, Clone, Debug, PartialEq)]
pub struct ConfigAsset(pub HivemindConfig);

/// The prompt file: rules, worked examples and personas.
#[derive(Asset, TypePath, Clone, Debug, PartialEq, Eq)]
pub struct PromptFileAsset(pub PromptAsset);

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

/// The handles of the plugin's own assets, kept so they stay loaded and are watched.
#[derive(Resource, Default, Debug)]
pub struct HivemindAssetHandles {
    /// `hivemind.ron`, if the plugin loads one.
    pub config: Option<Handle<ConfigAsset>>,
    /// The prompt file, if the plugin loads one.
    pub prompt: Option<Handle<PromptFileAsset>>,
    pub(crate) applied_config: Option<HivemindConfig>,
    pub(crate) applied_prompt: Option<PromptAsset>,
}
