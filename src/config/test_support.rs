//! Helpers for the config unit tests: small YAML building blocks and loaders.

use std::path::{Path, PathBuf};

use super::{load_str, ConfigError, ConfigErrors, Settings};

/// One plain listener (2 lines).
pub(crate) const LISTENER: &str = "listeners:\n  - bind: \"127.0.0.1:8080\"\n";
/// The `app` upstream (3 lines).
pub(crate) const UPSTREAM: &str = "upstreams:\n  app:\n    servers: [\"127.0.0.1:8001\"]\n";
/// One catch-all route to `app` (3 lines).
pub(crate) const ROUTE: &str = "routes:\n  - match: { path_prefix: / }\n    upstream: app\n";
pub(crate) const UPSTREAM_AND_ROUTE: &str = "upstreams:\n  app:\n    servers: [\"127.0.0.1:8001\"]\nroutes:\n  - match: { path_prefix: / }\n    upstream: app\n";

/// `extra` (starting at line 1) followed by a valid listener, upstream and route.
pub(crate) fn minimal(extra: &str) -> String {
    format!("{extra}{LISTENER}{UPSTREAM}{ROUTE}")
}

pub(crate) fn load_in(dir: &Path, yaml: &str) -> Result<Settings, ConfigErrors> {
    load_str(yaml, dir, PathBuf::from("test.yaml"))
}

pub(crate) fn errors_in(dir: &Path, yaml: &str) -> Vec<ConfigError> {
    match load_in(dir, yaml) {
        Ok(_) => panic!("expected errors for:\n{yaml}"),
        Err(e) => e.0,
    }
}

/// Loads with a throw-away base folder; panics with every error on failure.
pub(crate) fn ok(yaml: &str) -> Settings {
    let dir = tempfile::tempdir().unwrap();
    match load_in(dir.path(), yaml) {
        Ok(s) => s,
        Err(e) => panic!("unexpected errors:\n{e}\nfor:\n{yaml}"),
    }
}

pub(crate) fn errors_of(yaml: &str) -> Vec<ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    errors_in(dir.path(), yaml)
}
