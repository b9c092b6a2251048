//! What a file's name says about how to serve it: `Content-Type` (with `charset=utf-8` for
//! text), whether on-the-fly compression is worth it, and whether the name carries a content
//! hash (so it may be cached forever).
//!
//! ## Hashed names
//!
//! A name is *hashed* when, after dropping its last extension, one of its `.`- or
//! `-`-separated parts other than the first is 8–64 lower-case hex characters with at least
//! one digit and at least one letter:
//!
//! - Django's `ManifestStaticFilesStorage`: `app.3f2a9c1b7e4d.css` (12 hex), also its
//!   `app.3f2a9c1b7e4d.css.gz` sibling;
//! - webpack / bundler styles: `app.3f2a9c1b.js`, `chunk-3f2a9c1b.js`, `app.3f2a9c1b.js.map`.
//!
//! Not hashed: `jquery-3.7.1.min.js`, `photo-20240101.jpg` (digits only: dates and version
//! numbers look like that), `3f2a9c1b.js` (the hash is the whole stem), `app.deadbeef.js`
//! (letters only). Calling a mutable file immutable would pin a stale copy in browsers for a
//! year, so the rule errs on the side of "not hashed": a miss only costs a revalidation.

use http::HeaderValue;

/// `Cache-Control` for hashed names when `immutable_hashed` is on.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The `Content-Type` for a file name, e.g. `text/css; charset=utf-8`.
pub fn content_type(name: &str) -> HeaderValue {
    let essence = essence(name);
    let value = if needs_charset(&essence) {
        format!("{essence}; charset=utf-8")
    } else {
        essence
    };
    HeaderValue::from_str(&value)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// The media type without parameters, lower-case.
fn essence(name: &str) -> String {
    let ext = extension(name).to_ascii_lowercase();
    // Where mime_guess's table disagrees with what browsers and Django expect.
    let fixed = match ext.as_str() {
        "js" | "mjs" | "cjs" => Some("text/javascript"),
        "map" => Some("application/json"),
        "webmanifest" => Some("application/manifest+json"),
        "gz" => Some("application/gzip"),
        "br" => Some("application/x-brotli"),
        _ => None,
    };
    match fixed {
        Some(t) => t.to_string(),
        None => mime_guess::from_ext(&ext)
            .first_raw()
            .unwrap_or("application/octet-stream")
            .to_string(),
    }
}

fn extension(name: &str) -> &str {
    name.rsplit_once('.').map_or("", |(_, ext)| ext)
}

/// Text formats served as UTF-8 (Django writes its static files that way).
fn needs_charset(essence: &str) -> bool {
    essence.starts_with("text/")
        || matches!(
            essence,
            "application/json"
                | "application/manifest+json"
                | "application/xml"
                | "application/javascript"
                | "image/svg+xml"
        )
}

/// Whether compressing this type pays off (text-like and font formats that are not already
/// compressed; images, archives, woff/woff2 are).
pub fn compressible(name: &str) -> bool {
    let essence = essence(name);
    needs_charset(&essence)
        || matches!(
            essence.as_str(),
            "application/wasm"
                | "font/ttf"
                | "font/otf"
                | "application/vnd.ms-fontobject"
                | "image/x-icon"
                | "image/vnd.microsoft.icon"
                | "image/bmp"
        )
}

/// See the module docs for the rule.
pub fn is_hashed(name: &str) -> bool {
    let stem = match name.rsplit_once('.') {
        Some((stem, _)) => stem,
        None => return false,
    };
    stem.split(['.', '-']).skip(1).any(is_hash)
}

fn is_hash(part: &str) -> bool {
    (8..=64).contains(&part.len())
        && part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && part.bytes().any(|b| b.is_ascii_digit())
        && part.bytes().any(|b| b.is_ascii_alphabetic())
}

/// `Cache-Control` for a file: immutable for hashed names (when enabled), else `max_age`.
pub fn cache_control(name: &str, immutable_hashed: bool, max_age_secs: u64) -> HeaderValue {
    if immutable_hashed && is_hashed(name) {
        return HeaderValue::from_static(IMMUTABLE);
    }
    HeaderValue::from_str(&format!("public, max-age={max_age_secs}"))
        .unwrap_or_else(|_| HeaderValue::from_static("no-cache"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_charsets() {
        for (name, expected) in [
            ("app.css", "text/css; charset=utf-8"),
            ("app.3f2a9c1b7e4d.js", "text/javascript; charset=utf-8"),
            ("mod.mjs", "text/javascript; charset=utf-8"),
            ("index.html", "text/html; charset=utf-8"),
            ("data.json", "application/json; charset=utf-8"),
            ("app.js.map", "application/json; charset=utf-8"),
            ("logo.svg", "image/svg+xml; charset=utf-8"),
            ("photo.PNG", "image/png"),
            ("font.woff2", "font/woff2"),
            ("app.css.gz", "application/gzip"),
            ("README", "application/octet-stream"),
            ("x.unknownext", "application/octet-stream"),
        ] {
            assert_eq!(content_type(name), expected, "{name}");
        }
    }

    #[test]
    fn compressibility() {
        assert!(compressible("app.css") && compressible("app.js") && compressible("a.svg"));
        assert!(compressible("a.wasm") && compressible("a.json"));
        assert!(!compressible("a.png") && !compressible("a.woff2") && !compressible("a.gz"));
        assert!(!compressible("noext"));
    }

    #[test]
    fn hashed_names() {
        for name in [
            "app.3f2a9c1b7e4d.css",
            "app.3f2a9c1b7e4d.css.gz",
            "app.3f2a9c1b.js",
            "chunk-3f2a9c1b.js",
            "vendor.chunk-3f2a9c1b.js",
            "app.3f2a9c1b.js.map",
            "img.0123456789abcdef0123456789abcdef.png",
        ] {
            assert!(is_hashed(name), "{name}");
        }
        for name in [
            "app.css",
            "jquery-3.7.1.min.js",
            "photo-20240101.jpg",
            "3f2a9c1b7e4d.js",
            "app.deadbeef.js",
            "app.3F2A9C1B.js",
            "app.3f2a9c1.js",
            "app.3f2a9c1b7e4z.css",
            "noext",
        ] {
            assert!(!is_hashed(name), "{name}");
        }
    }

    #[test]
    fn cache_control_values() {
        assert_eq!(cache_control("app.3f2a9c1b.js", true, 60), IMMUTABLE);
        assert_eq!(
            cache_control("app.3f2a9c1b.js", false, 60),
            "public, max-age=60"
        );
        assert_eq!(cache_control("app.js", true, 0), "public, max-age=0");
    }
}
