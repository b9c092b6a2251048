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
    let text = read_config(path).map_err(|(line, message)| {
        ConfigErrors(vec![error::ConfigError {
            path: String::new(),
            line,
            message: format!("cannot read config file {}: {message}", path.display()),
        }])
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
    load_str(&text, &base, path.to_path_buf())
}

/// The config file's text. Only a regular file is read: a FIFO (or a device) would block
/// the reading thread for good, and with it every later reload. Errors name the line of
/// the first byte that is not UTF-8.
fn read_config(path: &Path) -> Result<String, (Option<usize>, String)> {
    let meta = std::fs::metadata(path).map_err(|e| (None, e.to_string()))?;
    if !meta.is_file() {
        return Err((None, "not a regular file".to_string()));
    }
    let bytes = std::fs::read(path).map_err(|e| (None, e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
        (Some(line), "not UTF-8 text".to_string())
    })
}

/// Validates YAML held in memory; `base_dir` anchors relative paths, `source` is recorded
/// as [`Settings::source`].
pub fn load_str(yaml: &str, base_dir: &Path, source: PathBuf) -> Result<Settings, ConfigErrors> {
    // A byte-order mark (some Windows editors write one) is not part of the YAML.
    let yaml = yaml.strip_prefix('\u{feff}').unwrap_or(yaml);
    let index = lines::LineIndex::build(yaml);
    let mut errs = error::Errors::new(&index);
    let Some(raw) = parse::parse(yaml, &mut errs) else {
        return Err(ConfigErrors(errs.list));
    };
    match validate::validate(raw, base_dir, source, &mut errs) {
        Some(settings) if errs.list.is_empty() => Ok(settings),
        _ => Err(ConfigErrors(errs.list)),
    }
}
