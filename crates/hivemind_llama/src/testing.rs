//! For tests and benchmarks that need the real model: they skip, saying why, where the model
//! is absent, and fail where it must be there (CI sets [`REQUIRE_MODEL_ENV`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use hivemind_core::config::HivemindConfig;

/// Set (to anything but `0` or nothing), a test that needs the model fails when the file is
/// absent instead of skipping. `.ci/run` sets it, so CI runs every real-model test.
pub const REQUIRE_MODEL_ENV: &str = "HIVEMIND_REQUIRE_MODEL";

/// The path of the default model (`HIVEMIND_MODEL` honoured) if the file is there, for `test`.
///
/// If it is not, says on stderr that `test` is skipped and that `scripts/setup` fetches the
/// model, and returns `None`.
///
/// # Panics
///
/// If the file is absent and [`REQUIRE_MODEL_ENV`] is set: the test fails, naming the file.
pub fn model_for_test(test: &str) -> Option<PathBuf> {
    let path = HivemindConfig::default().model.resolved_path();
    model_at(test, &path)
}

/// As [`model_for_test`], for the model at `path`.
///
/// # Panics
///
/// As [`model_for_test`].
pub fn model_at(test: &str, path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_owned());
    }
    let required = std::env::var(REQUIRE_MODEL_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "{test}: the model {} is missing ({REQUIRE_MODEL_ENV} is set); run scripts/setup",
        path.display()
    );
    // Straight to the process's stderr: the test harness captures `eprintln!` of a passing
    // test, and the skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "{test}: skipped, no model at {} (run scripts/setup to fetch it)",
        path.display()
    );
    None
}
