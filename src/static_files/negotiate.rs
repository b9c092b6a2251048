//! The header rules of static responses, as pure functions over request headers:
//! content-coding negotiation (`Accept-Encoding` with q-values), validators (`ETag`,
//! `If-None-Match`, `If-Modified-Since`) and byte ranges (`Range`, `If-Range`).

use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{ACCEPT_ENCODING, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, RANGE};
use http::{HeaderMap, HeaderValue};

/// A content coding the gateway can serve, in preference order for ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Br,
    Gzip,
    Identity,
}

impl Encoding {
    /// The `Content-Encoding` token (`None` for identity).
    pub fn token(self) -> Option<&'static str> {
        match self {
            Encoding::Br => Some("br"),
            Encoding::Gzip => Some("gzip"),
            Encoding::Identity => None,
        }
    }

    /// The file-name suffix of a precompressed sibling (`app.css.gz`).
    pub fn suffix(self) -> &'static str {
        match self {
            Encoding::Br => ".br",
            Encoding::Gzip => ".gz",
            Encoding::Identity => "",
        }
    }

    /// `br` / `gzip` as written in `static.precompressed`.
    pub fn from_config(name: &str) -> Option<Encoding> {
        match name {
            "br" => Some(Encoding::Br),
            "gzip" => Some(Encoding::Gzip),
            _ => None,
        }
    }

    fn preference(self) -> u8 {
        match self {
            Encoding::Br => 2,
            Encoding::Gzip => 1,
            Encoding::Identity => 0,
        }
    }
}

/// The request headers that shape a static answer, found in one pass over the request's
/// headers (cheaper than a hashed lookup per rule for the few headers a request carries),
/// so that requests without them skip those rules entirely.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Present<'a> {
    /// The first `Accept-Encoding` line.
    pub accept_encoding: Option<&'a HeaderValue>,
    /// More than one `Accept-Encoding` line.
    pub more_accept_encoding: bool,
    /// `If-None-Match` or `If-Modified-Since`.
    pub conditional: bool,
    /// `Range` (`If-Range` only matters with it).
    pub range: bool,
}

impl<'a> Present<'a> {
    pub fn scan(headers: &'a HeaderMap) -> Present<'a> {
        let mut present = Present::default();
        for (name, value) in headers {
            if name == ACCEPT_ENCODING {
                if present.accept_encoding.is_none() {
                    present.accept_encoding = Some(value);
                } else {
                    present.more_accept_encoding = true;
                }
            } else if name == IF_NONE_MATCH || name == IF_MODIFIED_SINCE {
                present.conditional = true;
            } else if name == RANGE {
                present.range = true;
            }
        }
        present
    }

    /// The parsed `Accept-Encoding` of the scanned request.
    pub fn accept(&self, headers: &HeaderMap) -> AcceptEncoding {
        match (self.accept_encoding, self.more_accept_encoding) {
            (None, _) => AcceptEncoding::IDENTITY,
            (Some(value), false) => AcceptEncoding::common(value.as_bytes())
                .unwrap_or_else(|| AcceptEncoding::from_values([value])),
            (Some(_), true) => AcceptEncoding::parse(headers),
        }
    }
}

/// A parsed `Accept-Encoding`: the q-value (in thousandths) of each coding we can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptEncoding {
    br: u16,
    gzip: u16,
    identity: u16,
}

impl AcceptEncoding {
    /// What a request without `Accept-Encoding` accepts.
    pub const IDENTITY: AcceptEncoding = AcceptEncoding {
        br: 0,
        gzip: 0,
        identity: 1,
    };

    /// The values browsers, curl and load generators send, byte for byte, with what they
    /// parse to (a unit test holds each to the parser).
    const COMMON: [(&'static [u8], AcceptEncoding); 7] = {
        let gzip = AcceptEncoding {
            br: 0,
            gzip: 1000,
            identity: 1,
        };
        let both = AcceptEncoding {
            br: 1000,
            gzip: 1000,
            identity: 1,
        };
        [
            (b"gzip", gzip),
            (b"gzip, deflate", gzip),
            (b"gzip, deflate, br", both),
            (b"gzip, deflate, br, zstd", both),
            (b"br, gzip", both),
            (b"gzip, br", both),
            (b"br", AcceptEncoding { gzip: 0, ..both }),
        ]
    };

    /// A common value answered without parsing.
    fn common(value: &[u8]) -> Option<AcceptEncoding> {
        AcceptEncoding::COMMON
            .iter()
            .find(|(known, _)| *known == value)
            .map(|(_, accept)| *accept)
    }

    /// No header (or an unusable one) means identity only.
    pub fn parse(headers: &HeaderMap) -> AcceptEncoding {
        AcceptEncoding::from_values(headers.get_all(ACCEPT_ENCODING))
    }

    /// From the `Accept-Encoding` lines of a request. Works on bytes: a line that is not
    /// visible ASCII text is ignored whole.
    pub fn from_values<'v>(values: impl IntoIterator<Item = &'v HeaderValue>) -> AcceptEncoding {
        let mut br = None;
        let mut gzip = None;
        let mut identity = None;
        let mut star = None;
        for value in values {
            let bytes = value.as_bytes();
            if !bytes
                .iter()
                .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
            {
                continue;
            }
            for item in bytes.split(|&b| b == b',') {
                let mut params = item.split(|&b| b == b';');
                let coding = params.next().unwrap_or_default().trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                let Some(q) = quality(params) else { continue };
                let slot = if coding.eq_ignore_ascii_case(b"br") {
                    &mut br
                } else if coding.eq_ignore_ascii_case(b"gzip")
                    || coding.eq_ignore_ascii_case(b"x-gzip")
                {
                    &mut gzip
                } else if coding.eq_ignore_ascii_case(b"identity") {
                    &mut identity
                } else if coding == b"*" {
                    &mut star
                } else {
                    continue;
                };
                // A coding listed twice keeps its first q (RFC 9110 leaves this open).
                slot.get_or_insert(q);
            }
        }
        AcceptEncoding {
            br: br.or(star).unwrap_or(0),
            gzip: gzip.or(star).unwrap_or(0),
            // identity is acceptable unless excluded (by name or `*;q=0`, RFC 9110 §12.5.3),
            // but when not named it ranks below every coding the client did name.
            identity: identity.or(star).unwrap_or(1),
        }
    }

    pub fn q(&self, encoding: Encoding) -> u16 {
        match encoding {
            Encoding::Br => self.br,
            Encoding::Gzip => self.gzip,
            Encoding::Identity => self.identity,
        }
    }

    /// The acceptable coding (q > 0) with the highest q among `available`, ties going to
    /// br, then gzip, then identity; `None` when none is acceptable.
    pub fn choose(&self, available: impl IntoIterator<Item = Encoding>) -> Option<Encoding> {
        available
            .into_iter()
            .filter(|e| self.q(*e) > 0)
            .max_by_key(|e| (self.q(*e), e.preference()))
    }
}

/// The `q` parameter of one list item in thousandths (1000 if absent); `None` if malformed.
fn quality<'a>(params: impl Iterator<Item = &'a [u8]>) -> Option<u16> {
    let mut q = 1000;
    for param in params {
        let Some(eq) = param.iter().position(|&b| b == b'=') else {
            continue;
        };
        if !param[..eq].trim_ascii().eq_ignore_ascii_case(b"q") {
            continue;
        }
        q = parse_q(param[eq + 1..].trim_ascii())?;
    }
    Some(q)
}

/// RFC 9110 §12.4.2 `qvalue`: `0`, `0.5`, `1`, `1.000`, at most three decimals.
fn parse_q(text: &[u8]) -> Option<u16> {
    let (int, frac) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &[][..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // `0.5` is 500 thousandths: missing digits count as zeros.
    let thousandths = (0..3).fold(0u16, |acc, i| {
        acc * 10 + frac.get(i).map_or(0, |d| u16::from(d - b'0'))
    });
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// A strong validator for one representation: size and modification time, plus the coding
/// so that the identity and a compressed variant never share a tag.
pub fn etag(len: u64, mtime: SystemTime, encoding: Encoding) -> String {
    let nanos = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    match encoding.token() {
        Some(token) => format!("\"{len:x}-{nanos:x}-{token}\""),
        None => format!("\"{len:x}-{nanos:x}\""),
    }
}

/// Whole seconds since the epoch: HTTP dates carry no finer resolution.
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// RFC 9110 §13.2.2 for GET/HEAD: `If-None-Match` decides when present (weak comparison,
/// `*` matches any); otherwise `If-Modified-Since`. `true` means answer 304.
pub fn not_modified(headers: &HeaderMap, etag: &str, last_modified: SystemTime) -> bool {
    let mut saw_inm = false;
    for value in headers.get_all(IF_NONE_MATCH) {
        saw_inm = true;
        let Ok(text) = value.to_str() else { continue };
        let ours = opaque(etag);
        if text
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || opaque(tag) == ours)
        {
            return true;
        }
    }
    if saw_inm {
        return false;
    }
    let Some(since) = headers
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
    else {
        return false;
    };
    unix_secs(last_modified) <= unix_secs(since)
}

/// The quoted part of an entity tag, for weak comparison.
fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// What to send for a GET with (or without) `Range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// 200 with the whole representation.
    Full,
    /// 206 with bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Evaluates `Range` and `If-Range` against a representation of `len` bytes. Anything we
/// don't serve as a single range — other units, several ranges, bad syntax, a failed
/// `If-Range` — is answered with the whole representation, as RFC 9110 §14.2 allows.
pub fn range(headers: &HeaderMap, len: u64, etag: &str, last_modified: SystemTime) -> RangeOutcome {
    let Some(spec) = headers.get(RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeOutcome::Full;
    };
    if let Some(if_range) = headers.get(IF_RANGE) {
        if !if_range_matches(if_range.to_str().unwrap_or_default(), etag, last_modified) {
            return RangeOutcome::Full;
        }
    }
    let spec = spec.trim();
    let Some((unit, set)) = spec.split_once('=') else {
        return RangeOutcome::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeOutcome::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // More digits than u64 holds is still a valid (huge) position.
        Some(s.parse().unwrap_or(u64::MAX))
    };
    match (number(first), last) {
        // `bytes=a-2`, `bytes=+1-2`: neither a position nor a suffix (`-N`), so no range.
        (None, _) if !first.is_empty() => RangeOutcome::Full,
        (None, suffix) => match number(suffix) {
            Some(0) => RangeOutcome::Unsatisfiable,
            Some(_) if len == 0 => RangeOutcome::Unsatisfiable,
            Some(n) => RangeOutcome::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            None => RangeOutcome::Full,
        },
        (Some(start), "") if start < len => RangeOutcome::Partial {
            start,
            end: len - 1,
        },
        (Some(_), "") => RangeOutcome::Unsatisfiable,
        (Some(start), last) => match number(last) {
            Some(end) if end < start => RangeOutcome::Full,
            Some(_) if start >= len => RangeOutcome::Unsatisfiable,
            Some(end) => RangeOutcome::Partial {
                start,
                end: end.min(len - 1),
            },
            None => RangeOutcome::Full,
        },
    }
}

/// RFC 9110 §13.1.5: an entity tag must match strongly; a date must equal Last-Modified.
fn if_range_matches(value: &str, etag: &str, last_modified: SystemTime) -> bool {
    let value = value.trim();
    if value.starts_with("W/") {
        return false;
    }
    if value.starts_with('"') {
        return value == etag;
    }
    httpdate::parse_http_date(value).is_ok_and(|date| unix_secs(date) == unix_secs(last_modified))
}

#[cfg(test)]
#[path = "negotiate_tests.rs"]
mod tests;
