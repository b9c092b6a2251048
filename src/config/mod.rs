//! Configuration: `parse` (YAML → `raw` serde mirror, section by section) → `validate`
//! (defaults, rules, certificates, resolution → typed [`Settings`]), collecting every error
//! with its YAML path and line so `gateway check` can report them all at once.

pub mod certs;
mod error;
pub mod features;
pub mod jwt_policy;
pub mod lines;
mod listeners;
mod parse;
pub mod raw;
mod routes;
pub mod settings;
pub mod units;
pub mod upstreams;
mod validate;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrors};
pub use jwt_policy::{JwtKeySource, JwtPolicySettings};
pub use settings::*;

/// Reads and validates the config file; relative paths in it resolve against its folder.
pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::single(
            "",
            format!("cannot read config file {}: {e}", path.display()),
        )
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
    load_str(&text, &base, path.to_path_buf())
}

/// Validates YAML held in memory; `base_dir` anchors relative paths, `source` is recorded
/// as [`Settings::source`].
pub fn load_str(yaml: &str, base_dir: &Path, source: PathBuf) -> Result<Settings, ConfigErrors> {
    let index = lines::LineIndex::build(yaml);
    let mut errs = error::Errors::new(&index);
    let raw = parse::parse(yaml, &mut errs);
    match validate::validate(raw, base_dir, source, &mut errs) {
        Some(settings) if errs.list.is_empty() => Ok(settings),
        _ => Err(ConfigErrors(errs.list)),
    }
}
