//! Where tokens come from and what the upstream sees afterwards: the policy's `token_sources`
//! in order (`Authorization: Bearer`, other headers verbatim, cookies; never the query
//! string), the forwarded-claim headers, and stripping the token when `forward_token: false`.

use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::reasons::{MALFORMED, MISSING};
use super::Rejection;
use crate::config::KeySource;

pub(crate) const MISSING_TOKEN: Rejection = Rejection::new(MISSING, "no token");

const fn malformed(description: &'static str) -> Rejection {
    Rejection::new(MALFORMED, description)
}

/// The first token found in `sources`; a source that is present but unusable is an error
/// (rather than silently trying the next), so a request never means two different things.
pub(crate) fn find_token<'h>(
    sources: &[KeySource],
    headers: &'h HeaderMap,
) -> Result<&'h str, Rejection> {
    for source in sources {
        let found = match source {
            KeySource::Header(name) => from_header(name, headers)?,
            KeySource::Cookie(name) => from_cookies(name, headers)?,
            KeySource::ClientIp | KeySource::Claim(_) => None,
        };
        if let Some(token) = found {
            return Ok(token);
        }
    }
    Err(MISSING_TOKEN)
}

fn from_header<'h>(
    name: &HeaderName,
    headers: &'h HeaderMap,
) -> Result<Option<&'h str>, Rejection> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(malformed("several credentials headers"));
    }
    let value = value
        .to_str()
        .map_err(|_| malformed("credentials header is not ASCII"))?
        .trim_matches([' ', '\t']);
    if name != AUTHORIZATION && name != PROXY_AUTHORIZATION {
        return Ok((!value.is_empty()).then_some(value));
    }
    // `Bearer <token68>`; another scheme (Basic, ...) is not ours: look at the next source.
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_start_matches([' ', '\t']);
    if token.is_empty() {
        return Err(malformed("empty bearer token"));
    }
    // Trailing junk (`Bearer <jwt> junk`) stays in `token` and fails the shape check.
    Ok(Some(token))
}

/// The value of cookie `name` across every `Cookie` header; one name with two different values
/// is refused (we cannot know which one the upstream would read).
fn from_cookies<'h>(name: &str, headers: &'h HeaderMap) -> Result<Option<&'h str>, Rejection> {
    let mut found: Option<&'h [u8]> = None;
    for header in headers.get_all(COOKIE) {
        for (n, v) in cookie_pairs(header.as_bytes()) {
            if n != name.as_bytes() || v.is_empty() {
                continue;
            }
            match found {
                Some(prev) if prev != v => return Err(malformed("several token cookies")),
                _ => found = Some(v),
            }
        }
    }
    found
        .map(|v| std::str::from_utf8(v).map_err(|_| malformed("token cookie is not ASCII")))
        .transpose()
}

/// `name=value` pairs of one Cookie header value (RFC 6265 §4.2.1, with optional quotes).
fn cookie_pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(|b| *b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        let (name, value) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
        let value = match value {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        };
        Some((name, value))
    })
}

/// Text form of a claim for a header: strings as-is, numbers in decimal, booleans
/// `true`/`false`; other types, and strings with anything but printable ASCII (spaces
/// included), give no header. (`HeaderValue` would take UTF-8 bytes, which WSGI servers
/// decode as Latin-1: `José` would reach Django as `JosÃ©`.)
fn claim_header_value(value: &Value) -> Option<HeaderValue> {
    match value {
        Value::String(s) if s.bytes().all(|b| (b' '..=b'~').contains(&b)) => {
            HeaderValue::from_str(s).ok()
        }
        Value::String(_) => None,
        Value::Number(n) => HeaderValue::from_str(&n.to_string()).ok(),
        Value::Bool(b) => Some(HeaderValue::from_static(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// Removes every client copy of the forwarded-claim headers, then sets them from the claims.
///
/// Spellings with `_` instead of `-` (`X_User_Id`) go too: WSGI servers map both to the same
/// `HTTP_X_USER_ID`, so a client could otherwise smuggle a second user id past us.
pub(crate) fn set_forward_headers(
    forward: &[(String, HeaderName)],
    claims: &Map<String, Value>,
    headers: &mut HeaderMap,
) {
    if forward.is_empty() {
        return;
    }
    let aliases: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .filter(|k| {
            let dashed = k.as_str().replace('_', "-");
            forward.iter().any(|(_, h)| h.as_str() == dashed)
        })
        .cloned()
        .collect();
    for name in aliases {
        headers.remove(name);
    }
    for (claim, header) in forward {
        headers.remove(header);
        if let Some(value) = claims.get(claim).and_then(claim_header_value) {
            headers.insert(header.clone(), value);
        }
    }
}

/// After a token from `sources` was verified: an `Authorization` header that does not carry
/// that very token (another scheme such as `Basic` or `JWT`, or another bearer token while
/// the verified one came from a cookie) is removed, so the app behind cannot authenticate
/// the request as someone other than the verified token's subject.
pub(crate) fn keep_one_credential(sources: &[KeySource], headers: &mut HeaderMap) {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    if values.next().is_none() {
        return;
    }
    let carries_token = values.next().is_none()
        && match (
            find_token(sources, headers),
            from_header(&AUTHORIZATION, headers),
        ) {
            (Ok(verified), Ok(Some(bearer))) => verified == bearer,
            _ => false,
        };
    if !carries_token {
        headers.remove(AUTHORIZATION);
    }
}

/// `forward_token: false`: the upstream sees the token in none of the policy's sources —
/// those headers are removed and the token cookies cut out of `Cookie` (other cookies stay).
pub(crate) fn strip_token_sources(sources: &[KeySource], headers: &mut HeaderMap) {
    let mut cookies: Vec<&str> = Vec::new();
    for source in sources {
        match source {
            KeySource::Header(name) => {
                headers.remove(name);
            }
            KeySource::Cookie(name) => cookies.push(name),
            KeySource::ClientIp | KeySource::Claim(_) => {}
        }
    }
    if cookies.is_empty() || !headers.contains_key(COOKIE) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|h| {
            let parts: Vec<&[u8]> = h
                .as_bytes()
                .split(|b| *b == b';')
                .map(<[u8]>::trim_ascii)
                .filter(|p| !p.is_empty())
                .filter(|p| {
                    let name = p.split(|b| *b == b'=').next().unwrap_or_default();
                    !cookies.iter().any(|c| c.as_bytes() == name.trim_ascii())
                })
                .collect();
            (!parts.is_empty())
                .then(|| HeaderValue::from_bytes(&parts.join(&b"; "[..])).ok())
                .flatten()
        })
        .collect();
    headers.remove(COOKIE);
    for value in kept {
        headers.append(COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_values_that_make_headers() {
        use serde_json::json;
        let text = |v: Value| claim_header_value(&v).map(|h| h.to_str().unwrap().to_owned());
        assert_eq!(text(json!(42)).as_deref(), Some("42"));
        assert_eq!(text(json!("abc-42")).as_deref(), Some("abc-42"));
        assert_eq!(text(json!("John Smith")).as_deref(), Some("John Smith"));
        assert_eq!(text(json!(true)).as_deref(), Some("true"));
        for none in [
            json!("José"),
            json!("a\r\nX-Admin: 1"),
            json!("tab\there"),
            json!(null),
            json!([1]),
            json!({"a": 1}),
        ] {
            assert_eq!(text(none.clone()), None, "{none}");
        }
    }

    fn sources() -> Vec<KeySource> {
        vec![
            KeySource::Header(AUTHORIZATION),
            KeySource::Cookie("access_token".into()),
        ]
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn find(pairs: &[(&str, &str)]) -> Result<String, &'static str> {
        find_token(&sources(), &headers(pairs))
            .map(str::to_owned)
            .map_err(|r| r.reason)
    }

    #[test]
    fn token_sources_in_order() {
        assert_eq!(
            find(&[("authorization", "Bearer a.b.c")]),
            Ok("a.b.c".into())
        );
        assert_eq!(
            find(&[("Authorization", "bearer  a.b.c ")]),
            Ok("a.b.c".into())
        );
        assert_eq!(
            find(&[("authorization", "BEARER\ta.b.c")]),
            Ok("a.b.c".into())
        );
        assert_eq!(
            find(&[("authorization", "Bearer a.b.c junk")]),
            Ok("a.b.c junk".into())
        );
        assert_eq!(find(&[("authorization", "Bearer")]), Err(MALFORMED));
        assert_eq!(find(&[("authorization", "Bearer   ")]), Err(MALFORMED));
        assert_eq!(
            find(&[
                ("authorization", "Bearer a.b.c"),
                ("authorization", "Bearer a.b.c")
            ]),
            Err(MALFORMED)
        );
        assert_eq!(find(&[("authorization", "Basic dTpw")]), Err(MISSING));
        assert_eq!(
            find(&[
                ("authorization", "Basic dTpw"),
                ("cookie", "access_token=x.y.z")
            ]),
            Ok("x.y.z".into())
        );
        assert_eq!(
            find(&[("cookie", "a=1; access_token=x.y.z; b=2")]),
            Ok("x.y.z".into())
        );
        assert_eq!(
            find(&[("cookie", "access_token=\"x.y.z\"")]),
            Ok("x.y.z".into())
        );
        assert_eq!(
            find(&[
                ("cookie", "access_token=x.y.z"),
                ("cookie", "access_token=x.y.z")
            ]),
            Ok("x.y.z".into())
        );
        assert_eq!(
            find(&[("cookie", "access_token=x; access_token=y")]),
            Err(MALFORMED)
        );
        assert_eq!(find(&[("cookie", "access_token=; other=1")]), Err(MISSING));
        assert_eq!(find(&[("cookie", "xaccess_token=x.y.z")]), Err(MISSING));
        assert_eq!(find(&[]), Err(MISSING));
        // The header source wins over the cookie.
        assert_eq!(
            find(&[
                ("cookie", "access_token=c.c.c"),
                ("authorization", "Bearer h.h.h")
            ]),
            Ok("h.h.h".into())
        );
    }

    #[test]
    fn forwarded_claims_replace_every_client_copy() {
        let forward = vec![
            ("user_id".to_string(), HeaderName::from_static("x-user-id")),
            ("admin".to_string(), HeaderName::from_static("x-admin")),
            ("roles".to_string(), HeaderName::from_static("x-roles")),
        ];
        let mut h = headers(&[
            ("X-User-Id", "1"),
            ("x-user-id", "2"),
            ("X-USER-ID", "3"),
            ("X_User_Id", "4"),
            ("x-roles", "root"),
            ("x-other", "kept"),
        ]);
        let claims = serde_json::json!({"user_id": 42, "admin": false, "roles": ["a"]});
        set_forward_headers(&forward, claims.as_object().unwrap(), &mut h);
        let all: Vec<_> = h.get_all("x-user-id").iter().collect();
        assert_eq!(all, ["42"]);
        assert!(!h.contains_key("x_user_id"));
        assert_eq!(h["x-admin"], "false");
        assert!(!h.contains_key("x-roles"), "array claims are not forwarded");
        assert_eq!(h["x-other"], "kept");
        let claims = serde_json::json!({"user_id": "7f3a", "admin": "a\nb"});
        set_forward_headers(&forward, claims.as_object().unwrap(), &mut h);
        assert_eq!(h["x-user-id"], "7f3a");
        assert!(
            !h.contains_key("x-admin"),
            "control characters are never forwarded"
        );
    }

    #[test]
    fn strip_removes_token_sources_only() {
        let mut h = headers(&[
            ("authorization", "Bearer a.b.c"),
            ("cookie", "a=1; access_token=x.y.z; b=2"),
            ("cookie", "access_token=x.y.z"),
            ("x-keep", "1"),
        ]);
        strip_token_sources(&sources(), &mut h);
        assert!(!h.contains_key(AUTHORIZATION));
        let cookies: Vec<_> = h.get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
        assert_eq!(h["x-keep"], "1");
    }
}
