//! Request-path normalisation: the one place a raw request path becomes the path that is
//! routed, checked and forwarded.
//!
//! Routing on one spelling of a path while the upstream decodes another is how
//! `/public/%2e%2e/admin` slips past a prefix rule, so every request path goes through
//! [`normalize`] exactly once, before routing:
//!
//! 1. it must be origin-form (start with `/`), else [`PathError::NotOriginForm`];
//! 2. percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every
//!    other escape is kept with its hex digits upper-cased (`%3a` → `%3A`);
//! 3. `%2F`, `%5C`, `%00` (any case) and a literal `\` are [`PathError::EncodedSeparator`]:
//!    an upstream (or a Windows file system) would treat them as separators or terminators
//!    and see a different path from the one we routed;
//! 4. a broken escape (`%`, `%4`, `%zz`), a literal space, NUL or other control character
//!    is [`PathError::Malformed`] (none of them is legal in a request target);
//! 5. dot-segments are resolved as in RFC 3986 §5.2.4 (`..` above the root stays at the root,
//!    a trailing `/.` or `/..` leaves a trailing `/`); duplicate slashes are kept, since
//!    collapsing them is the upstream's business and changes meaning for some apps.
//!
//! Every error maps to 400. The common case (a plain path) is checked in one pass and
//! returned borrowed, without allocating.

use std::borrow::Cow;

/// Why a request path was refused; every variant becomes a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2F`, `%5C`, `%00` or a literal `\`: would be decoded into a separator upstream.
    EncodedSeparator,
    /// A broken percent-escape, or a space / control character in the path.
    Malformed,
    /// The path does not start with `/` (absolute-form is split before this; `*` is not routed).
    NotOriginForm,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::EncodedSeparator => "encoded separator in path",
            PathError::Malformed => "malformed path",
            PathError::NotOriginForm => "path does not start with '/'",
        })
    }
}

impl std::error::Error for PathError {}

/// Normalises the path part of a request target (no query); see the module docs for the rules.
///
/// Returns `Cow::Borrowed` when the path is already normal.
///
/// # Errors
///
/// A [`PathError`] (always a 400) when the path is not origin-form, holds a broken escape,
/// an encoded separator or NUL, a literal `\`, space or control character.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    if !scan(bytes)? {
        return Ok(Cow::Borrowed(path));
    }
    rewrite(bytes).map(Cow::Owned)
}

/// Validates every byte and escape; returns whether the path must be rewritten: some
/// escape is to be decoded or its hex digits upper-cased, or a segment is `.` or `..`.
/// (One pass over the bytes: this runs on every request.)
fn scan(bytes: &[u8]) -> Result<bool, PathError> {
    let mut rewrite = false;
    let mut segment = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (value, upper) = escape_at(bytes, i)?;
                rewrite |= is_unreserved(value) || !upper;
                i += 3;
            }
            b'/' => {
                rewrite |= is_dot_segment(&bytes[segment..i]);
                segment = i + 1;
                i += 1;
            }
            b => {
                check_literal(b)?;
                i += 1;
            }
        }
    }
    Ok(rewrite || is_dot_segment(&bytes[segment..]))
}

fn is_dot_segment(segment: &[u8]) -> bool {
    matches!(segment, b"." | b"..")
}

/// The slow path: decode and resolve dot-segments in one pass over the segments.
///
/// Each segment is appended to `out` as `/segment`; a `.` or `..` segment is recognised
/// after decoding (so `%2e%2e` counts) and undone again.
fn rewrite(bytes: &[u8]) -> Result<String, PathError> {
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    // Skip the leading '/': every segment below is preceded by exactly one '/'.
    let mut segments = bytes
        .get(1..)
        .unwrap_or_default()
        .split(|&b| b == b'/')
        .peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let start = out.len();
        out.push(b'/');
        decode_segment(segment, &mut out)?;
        match &out[start + 1..] {
            b"." => {
                out.truncate(start);
                if last {
                    out.push(b'/');
                }
            }
            b".." => {
                out.truncate(start);
                // Drop the previous "/segment"; at the root there is nothing to drop.
                let previous = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(previous);
                if last {
                    out.push(b'/');
                }
            }
            _ => {}
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    // Only ASCII is ever inserted and non-ASCII input bytes are copied whole, so this holds.
    String::from_utf8(out).map_err(|_| PathError::Malformed)
}

fn decode_segment(segment: &[u8], out: &mut Vec<u8>) -> Result<(), PathError> {
    let mut i = 0;
    while i < segment.len() {
        match segment[i] {
            b'%' => {
                let (value, _) = escape_at(segment, i)?;
                if is_unreserved(value) {
                    out.push(value);
                } else {
                    out.extend_from_slice(&[
                        b'%',
                        HEX_UPPER[usize::from(value >> 4)],
                        HEX_UPPER[usize::from(value & 0xf)],
                    ]);
                }
                i += 3;
            }
            b => {
                check_literal(b)?;
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(())
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Decodes the escape starting at `bytes[i] == b'%'`: its value, and whether its hex
/// digits were already upper-case. Refuses escapes of separators and NUL.
fn escape_at(bytes: &[u8], i: usize) -> Result<(u8, bool), PathError> {
    let Some(&[hi, lo]) = bytes.get(i + 1..i + 3) else {
        return Err(PathError::Malformed);
    };
    let value = (hex_value(hi)? << 4) | hex_value(lo)?;
    if matches!(value, b'/' | b'\\' | 0) {
        return Err(PathError::EncodedSeparator);
    }
    let upper = !hi.is_ascii_lowercase() && !lo.is_ascii_lowercase();
    Ok((value, upper))
}

fn hex_value(b: u8) -> Result<u8, PathError> {
    match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(PathError::Malformed),
    }
}

/// A literal (unescaped) byte: `\` is a separator to some servers; space and controls are
/// never legal in a request target. Non-ASCII bytes are left for the HTTP parser to judge.
fn check_literal(b: u8) -> Result<(), PathError> {
    match b {
        b'\\' => Err(PathError::EncodedSeparator),
        0x00..=0x20 | 0x7f => Err(PathError::Malformed),
        _ => Ok(()),
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> String {
        match normalize(path) {
            Ok(p) => p.into_owned(),
            Err(e) => panic!("{path:?} should normalise, got {e:?}"),
        }
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/api/users/42",
            "//a",
            "/a//b/",
            "/a.b/.c/..d/...",
            "/%3A%20x",
            "/é",
        ] {
            match normalize(p) {
                Ok(Cow::Borrowed(b)) => assert_eq!(b, p),
                other => panic!("{p:?} -> {other:?}"),
            }
        }
    }

    #[test]
    fn must_be_origin_form() {
        for p in ["", "*", "api", "http://x/y", "%2F"] {
            assert_eq!(normalize(p), Err(PathError::NotOriginForm), "{p:?}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded() {
        assert_eq!(ok("/%61pi/"), "/api/");
        assert_eq!(ok("/%41%5a%30%39%2D%2e%5F%7e"), "/AZ09-._~");
        assert_eq!(ok("/a%2Db"), "/a-b");
    }

    #[test]
    fn other_escapes_are_kept_upper_cased() {
        assert_eq!(ok("/a%3ab"), "/a%3Ab");
        assert_eq!(ok("/a%3Ab%3a"), "/a%3Ab%3A");
        assert_eq!(ok("/%e2%82%ac"), "/%E2%82%AC");
        assert_eq!(ok("/%25%2541"), "/%25%2541");
        assert_eq!(ok("/%20%3f%23"), "/%20%3F%23");
        assert_eq!(ok("/%Aa%aA%7f"), "/%AA%AA%7F");
    }

    #[test]
    fn encoded_separators_and_nul_are_refused() {
        for p in [
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a%5Cb",
            "/a%00",
            "/%2e%2e%2f",
            "/a\\b",
            "/..\\x",
        ] {
            assert_eq!(normalize(p), Err(PathError::EncodedSeparator), "{p:?}");
        }
    }

    #[test]
    fn malformed_input_is_refused() {
        for p in [
            "/%", "/a%", "/%4", "/a%4/", "/%zz", "/%g0", "/%0g", "/%é", "/a b", "/a\0b", "/a\tb",
            "/a\r\n", "/\x7f",
        ] {
            assert_eq!(normalize(p), Err(PathError::Malformed), "{p:?}");
        }
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(ok("/a/./b"), "/a/b");
        assert_eq!(ok("/x/../api/"), "/api/");
        assert_eq!(ok("/api/%2e%2e/admin"), "/admin");
        assert_eq!(ok("/api/%2E%2e/admin"), "/admin");
        assert_eq!(ok("/%2e%2e/"), "/");
        assert_eq!(ok("/a/b/c/./../../g"), "/a/g");
        assert_eq!(ok("/./a"), "/a");
        assert_eq!(ok("/a/.%2e/b"), "/b");
    }

    #[test]
    fn dot_dot_above_root_stays_at_root() {
        assert_eq!(ok("/../a"), "/a");
        assert_eq!(ok("/../../a/.."), "/");
        assert_eq!(ok("/.."), "/");
        assert_eq!(ok("/."), "/");
    }

    #[test]
    fn trailing_dot_segments_leave_a_slash() {
        assert_eq!(ok("/a/."), "/a/");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/%2e"), "/a/");
        assert_eq!(ok("/a/.."), "/");
    }

    #[test]
    fn duplicate_slashes_are_kept() {
        assert_eq!(ok("//a/./b"), "//a/b");
        assert_eq!(ok("/a//../b"), "/a/b");
        assert_eq!(ok("//.."), "/");
        assert_eq!(ok("/a//%62"), "/a//b");
    }

    #[test]
    fn dots_that_are_not_whole_segments_stay() {
        assert_eq!(ok("/a/.../%61"), "/a/.../a");
        assert_eq!(ok("/a/%2e%2e%2e"), "/a/...");
        assert_eq!(ok("/.well-known/%2efoo"), "/.well-known/.foo");
    }

    /// Property test over a small alphabet rich in dots, slashes and escapes.
    #[test]
    fn random_paths_normalise_to_a_fixed_point() {
        const ALPHABET: &[u8] = b"/.%2eEfF5ca";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut oks = 0;
        for _ in 0..20_000 {
            let len = (next() % 16) as usize;
            let mut path = String::from("/");
            for _ in 0..len {
                path.push(char::from(
                    ALPHABET[(next() % ALPHABET.len() as u64) as usize],
                ));
            }
            let Ok(out) = normalize(&path) else { continue };
            oks += 1;
            assert!(out.starts_with('/'), "{path:?} -> {out:?}");
            assert!(
                !out.contains("/./") && !out.contains("/../"),
                "{path:?} -> {out:?}"
            );
            assert!(
                !out.ends_with("/.") && !out.ends_with("/.."),
                "{path:?} -> {out:?}"
            );
            assert_eq!(
                normalize(&out).as_deref(),
                Ok(out.as_ref()),
                "{path:?} not idempotent"
            );
            assert!(
                matches!(normalize(&out), Ok(Cow::Borrowed(_))),
                "{path:?} -> {out:?} allocates twice"
            );
        }
        assert!(oks > 1_000, "too few valid samples: {oks}");
    }
}
