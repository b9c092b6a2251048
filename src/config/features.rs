//! Route blocks validated into typed values: `static:` (served by [`crate::static_files`])
//! and `rate_limit:` (enforced by [`crate::policy::rate_limit`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::Errors;
use super::raw::{defaults, RawRateLimit, RawStatic};
use super::upstreams::parse_key_source;
use super::validate::resolve;
use super::KeySource;

/// A validated route `static:` block.
#[derive(Debug, Clone)]
pub struct StaticSettings {
    pub root: PathBuf,
    pub index: Vec<String>,
    pub precompressed: Vec<String>,
    pub immutable_hashed: bool,
    pub max_age: Duration,
    pub compress: bool,
    /// `true` for `fallback: upstream`.
    pub fallback_upstream: bool,
    /// Files up to this size are kept in memory; larger ones are streamed. 0: none.
    pub cache_max_file_bytes: u64,
    /// Memory for cached files of this route (and, up to 1 MiB of it, for remembered
    /// misses). 0: nothing is cached, every request looks at the disk.
    pub cache_max_bytes: u64,
    /// Cached files of 16 KiB or more leave plain-TCP HTTP/1.1 connections by sendfile(2).
    pub sendfile: bool,
}

/// A validated route `rate_limit:` block: a bucket of `burst` refilled `rate` per `per`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    pub rate: u32,
    pub per: Duration,
    pub burst: u32,
    pub key: KeySource,
}

pub(crate) fn static_files(
    raw: &RawStatic,
    path: &str,
    base_dir: &Path,
    errs: &mut Errors<'_>,
) -> Option<StaticSettings> {
    let before = errs.count();
    let root = resolve(base_dir, &raw.root);
    if !root.is_dir() {
        errs.add(
            format!("{path}.root"),
            format!("folder not found: {}", root.display()),
        );
    }
    let index = raw.index.clone().unwrap_or_else(|| {
        defaults::STATIC_INDEX
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    for (i, name) in index.iter().enumerate() {
        if name.is_empty() || name.contains(['/', '\\']) || name == ".." {
            errs.add(format!("{path}.index[{i}]"), "must be a plain file name");
        }
    }
    let precompressed = raw.precompressed.clone().unwrap_or_default();
    for (i, enc) in precompressed.iter().enumerate() {
        if enc != "br" && enc != "gzip" {
            errs.add(
                format!("{path}.precompressed[{i}]"),
                format!("unknown encoding {enc:?} (use br or gzip)"),
            );
        }
    }
    let fallback_upstream = match raw.fallback.as_deref() {
        None | Some("none") => false,
        Some("upstream") => true,
        Some(other) => {
            errs.add(
                format!("{path}.fallback"),
                format!("unknown fallback {other:?} (use none or upstream)"),
            );
            false
        }
    };
    let cache_max_file_bytes = raw
        .cache_max_file_bytes
        .map_or(defaults::STATIC_CACHE_MAX_FILE_BYTES, |b| b.0);
    let cache_max_bytes = raw
        .cache_max_bytes
        .map_or(defaults::STATIC_CACHE_MAX_BYTES, |b| b.0);
    if cache_max_bytes > 0 && cache_max_file_bytes > cache_max_bytes {
        errs.add(
            format!("{path}.cache_max_file_bytes"),
            format!(
                "{cache_max_file_bytes} bytes is more than cache_max_bytes ({cache_max_bytes}): \
                 such files could never be cached (0 turns file caching off)"
            ),
        );
    }
    let settings = StaticSettings {
        root,
        index,
        precompressed,
        immutable_hashed: raw.immutable_hashed.unwrap_or(false),
        max_age: raw.max_age.map_or(defaults::STATIC_MAX_AGE, |d| d.0),
        compress: raw.compress.unwrap_or(false),
        fallback_upstream,
        cache_max_file_bytes,
        cache_max_bytes,
        sendfile: raw.sendfile.unwrap_or(true),
    };
    (errs.count() == before).then_some(settings)
}

pub(crate) fn rate_limit(
    raw: &RawRateLimit,
    path: &str,
    errs: &mut Errors<'_>,
) -> Option<RateLimitSettings> {
    let parsed = raw.rate.trim().split_once('/').and_then(|(n, unit)| {
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return None,
        };
        n.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .map(|n| (n, per))
    });
    let Some((rate, per)) = parsed else {
        errs.add(
            format!("{path}.rate"),
            format!(
                "invalid rate {:?}: expected N/s, N/m or N/h with N > 0",
                raw.rate
            ),
        );
        return None;
    };
    let burst = raw.burst.unwrap_or(rate);
    if burst == 0 {
        errs.add(format!("{path}.burst"), "must be at least 1");
        return None;
    }
    match parse_key_source(raw.key.as_deref().unwrap_or(defaults::RATE_LIMIT_KEY)) {
        Ok(key) => Some(RateLimitSettings {
            rate,
            per,
            burst,
            key,
        }),
        Err(msg) => {
            errs.add(format!("{path}.key"), msg);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lines::LineIndex;
    use super::*;

    fn errs_for<T>(f: impl FnOnce(&mut Errors<'_>) -> Option<T>) -> (Option<T>, Vec<String>) {
        let idx = LineIndex::default();
        let mut errs = Errors::new(&idx);
        let out = f(&mut errs);
        (out, errs.list.into_iter().map(|e| e.path).collect())
    }

    #[test]
    fn static_block() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("static")).unwrap();
        let raw: RawStatic = serde_yaml::from_str(
            "{ root: ./static, precompressed: [br, gzip], immutable_hashed: true, max_age: 2m, fallback: upstream }",
        )
        .unwrap();
        let (s, errs) = errs_for(|e| static_files(&raw, "s", dir.path(), e));
        assert!(errs.is_empty(), "{errs:?}");
        let s = s.unwrap();
        assert!(s.root.ends_with("static") && s.root.is_dir());
        assert_eq!(s.index, ["index.html"]);
        assert_eq!(s.max_age, Duration::from_secs(120));
        assert!(s.fallback_upstream && s.immutable_hashed && !s.compress);
        assert_eq!(
            (s.cache_max_file_bytes, s.cache_max_bytes),
            (256 * 1024, 64 * 1024 * 1024)
        );

        let raw: RawStatic = serde_yaml::from_str(
            "{ root: ./static, cache_max_file_bytes: 16KiB, cache_max_bytes: 1048576 }",
        )
        .unwrap();
        let (s, errs) = errs_for(|e| static_files(&raw, "s", dir.path(), e));
        assert!(errs.is_empty(), "{errs:?}");
        let s = s.unwrap();
        assert_eq!(
            (s.cache_max_file_bytes, s.cache_max_bytes),
            (16384, 1 << 20)
        );
        // 0 turns caching off, whatever the per-file limit.
        for yaml in [
            "{ root: ./static, cache_max_bytes: 0, cache_max_file_bytes: 1MiB }",
            "{ root: ./static, cache_max_file_bytes: 0 }",
        ] {
            let raw: RawStatic = serde_yaml::from_str(yaml).unwrap();
            let (s, errs) = errs_for(|e| static_files(&raw, "s", dir.path(), e));
            assert!(errs.is_empty() && s.is_some(), "{yaml}: {errs:?}");
        }
        let raw: RawStatic = serde_yaml::from_str(
            "{ root: ./static, cache_max_file_bytes: 2MiB, cache_max_bytes: 1MiB }",
        )
        .unwrap();
        let (s, errs) = errs_for(|e| static_files(&raw, "s", dir.path(), e));
        assert!(s.is_none());
        assert_eq!(errs, ["s.cache_max_file_bytes"]);
        for bad in [
            "{ root: ./static, cache_max_bytes: lots }",
            "{ root: ./static, cache_max_file_bytes: -1 }",
        ] {
            assert!(serde_yaml::from_str::<RawStatic>(bad).is_err(), "{bad}");
        }

        let raw: RawStatic = serde_yaml::from_str(
            "{ root: ./nope, index: [../x], precompressed: [zstd], fallback: maybe }",
        )
        .unwrap();
        let (s, errs) = errs_for(|e| static_files(&raw, "s", dir.path(), e));
        assert!(s.is_none());
        assert_eq!(
            errs,
            ["s.root", "s.index[0]", "s.precompressed[0]", "s.fallback"]
        );
    }

    #[test]
    fn rate_limit_block() {
        let raw: RawRateLimit =
            serde_yaml::from_str("{ rate: 100/s, burst: 200, key: \"claim:user_id\" }").unwrap();
        let (r, errs) = errs_for(|e| rate_limit(&raw, "r", e));
        assert!(errs.is_empty());
        let r = r.unwrap();
        assert_eq!((r.rate, r.per, r.burst), (100, Duration::from_secs(1), 200));
        assert_eq!(r.key, KeySource::Claim("user_id".into()));

        let raw: RawRateLimit = serde_yaml::from_str("{ rate: 5/m }").unwrap();
        let (r, _) = errs_for(|e| rate_limit(&raw, "r", e));
        let r = r.unwrap();
        assert_eq!((r.burst, r.key), (5, KeySource::ClientIp));

        for (yaml, path) in [
            ("{ rate: 0/s }", "r.rate"),
            ("{ rate: 10 }", "r.rate"),
            ("{ rate: 10/week }", "r.rate"),
            ("{ rate: 10/s, burst: 0 }", "r.burst"),
            ("{ rate: 10/s, key: ip }", "r.key"),
        ] {
            let raw: RawRateLimit = serde_yaml::from_str(yaml).unwrap();
            let (r, errs) = errs_for(|e| rate_limit(&raw, "r", e));
            assert!(r.is_none());
            assert_eq!(errs, [path], "{yaml}");
        }
    }
}
