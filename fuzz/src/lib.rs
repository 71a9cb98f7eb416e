//! What the fuzz targets share: the shipped assets they check plans against, and how one input
//! is cut into the chunks a stream would arrive in.
//!
//! Inputs that drive a streaming parser start with two header bytes (see [`split_header`]) so
//! that the seed corpus can hold real model output after them, readable as text.

use std::sync::LazyLock;

use hivemind_core::action::ActionRegistry;
use hivemind_core::goap::Domain;

/// The arena's verbs, as shipped.
pub const ACTIONS_RON: &str = include_str!("../../assets/actions.ron");
/// The arena's GOAP domain, as shipped.
pub const DOMAIN_RON: &str = include_str!("../../assets/goap/arena.goap.ron");
/// The arena's prompt rules and personas, as shipped.
pub const PROMPT_RON: &str = include_str!("../../assets/prompt.ron");
/// The arena's dialogue templates, as shipped.
pub const TEMPLATES_RON: &str = include_str!("../../assets/dialogue/arena.templates.ron");
/// The shipped settings.
pub const CONFIG_RON: &str = include_str!("../../assets/hivemind.ron");

static REGISTRY: LazyLock<ActionRegistry> = LazyLock::new(|| {
    ActionRegistry::from_ron(ACTIONS_RON, "assets/actions.ron")
        .unwrap_or_else(|e| panic!("the shipped registry must load: {e}"))
});

static DOMAIN: LazyLock<Domain> = LazyLock::new(|| {
    Domain::from_ron(DOMAIN_RON, "assets/goap/arena.goap.ron")
        .unwrap_or_else(|e| panic!("the shipped domain must load: {e}"))
});

/// The shipped action registry, loaded once.
pub fn registry() -> &'static ActionRegistry {
    &REGISTRY
}

/// The shipped GOAP domain, loaded once.
pub fn domain() -> &'static Domain {
    &DOMAIN
}

/// Splits an input into its two header bytes (a configuration byte and a chunking seed) and
/// the text after them. Short inputs get zero bytes for what they lack.
pub fn split_header(data: &[u8]) -> (u8, u8, &[u8]) {
    match data {
        [config, seed, text @ ..] => (*config, *seed, text),
        [config] => (*config, 0, &[]),
        [] => (0, 0, &[]),
    }
}

/// Cuts `bytes` into chunks whose lengths come from `seed`: seed 0 gives one byte at a time,
/// others a repeating pattern of lengths up to 64, so the fuzzer moves the cuts by changing
/// one byte.
pub fn chunks(bytes: &[u8], seed: u8) -> Vec<&[u8]> {
    let span = u32::from(seed % 64) + 1;
    let mut state = u32::from(seed).wrapping_mul(0x9E37_79B9) | 1;
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        // xorshift32: cheap, and the same seed always cuts the same way.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = if seed == 0 {
            1
        } else {
            (state % span) as usize + 1
        };
        let (chunk, tail) = rest.split_at(len.min(rest.len()));
        out.push(chunk);
        rest = tail;
    }
    out
}
