//! The key a request is counted under, from a route's `key:`: `client_ip` (the peer, or behind
//! trusted proxies the right-most X-Forwarded-For address that is not itself a trusted proxy),
//! `header:NAME`, `cookie:NAME` or `claim:NAME` (of the verified token).
//!
//! A request without the named header, cookie or claim is counted under its client address
//! instead (in a namespace of its own), so leaving the value out never escapes the limit and
//! one such client does not use up the budget of every other.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::header::{HeaderMap, HeaderName, COOKIE};
use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::config::KeySource;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What is known about a request when its key is taken.
#[derive(Debug, Clone, Copy)]
pub struct KeyInput<'a> {
    /// The TCP peer.
    pub peer: IpAddr,
    /// Whether the peer is in `server.trusted_proxies`.
    pub peer_trusted: bool,
    pub trusted_proxies: &'a [IpNet],
    pub headers: &'a HeaderMap,
    /// The verified token's claims on a `jwt:` route.
    pub claims: Option<&'a Map<String, Value>>,
}

/// A request's key before it is digested: the client address, or text from the request.
/// The variant is part of the key, so the header value `10.0.0.1` and the address 10.0.0.1
/// are different keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyMaterial {
    Ip(IpAddr),
    Text(Vec<u8>),
}

/// The key of a request under `source`.
pub fn key_material(source: &KeySource, input: &KeyInput<'_>) -> KeyMaterial {
    let text = match source {
        KeySource::ClientIp => None,
        KeySource::Header(name) => header_text(input.headers, name),
        KeySource::Cookie(name) => cookie_text(input.headers, name),
        KeySource::Claim(name) => input.claims.and_then(|c| c.get(name)).and_then(claim_text),
    };
    match text {
        Some(text) => KeyMaterial::Text(text),
        None => KeyMaterial::Ip(subscriber(client_ip(
            input.peer,
            input.peer_trusted,
            input.headers,
            input.trusted_proxies,
        ))),
    }
}

/// The address a client is limited under: an IPv4 address itself, an IPv6 address its /64.
/// One subscriber usually holds a whole /64 and can use any address in it, so counting
/// IPv6 addresses one by one would let it step around a limit (and flood the key table).
/// Expects IPv4-mapped addresses made canonical.
#[must_use]
pub fn subscriber(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
    }
}

/// The client's address, as nginx's realip module finds it with `real_ip_recursive on`:
/// the peer, unless the peer is a trusted proxy; then the X-Forwarded-For entries (all its
/// field lines, in order) are read right to left, skipping trusted proxies, and the first
/// address that is not trusted is the client. If every entry is trusted, the left-most is
/// the client; an entry that is not an address (`unknown`, garbage) ends the walk at the
/// last address reached. Entries may carry a port (`1.2.3.4:80`, `[::1]:80`); IPv4-mapped
/// IPv6 addresses count as IPv4.
pub fn client_ip(
    peer: IpAddr,
    peer_trusted: bool,
    headers: &HeaderMap,
    trusted_proxies: &[IpNet],
) -> IpAddr {
    let mut client = peer.to_canonical();
    if !peer_trusted {
        return client;
    }
    for line in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        // Entry by entry from the right: bytes that are not text in an entry further left
        // (which a trusted proxy appends to as it is) must not hide the valid ones after it.
        let entries = line
            .as_bytes()
            .rsplit(|b| *b == b',')
            .map(<[u8]>::trim_ascii);
        for entry in entries.filter(|e| !e.is_empty()) {
            let Some(ip) = std::str::from_utf8(entry).ok().and_then(parse_forwarded) else {
                return client;
            };
            client = ip;
            if !trusted_proxies.iter().any(|net| net.contains(&ip)) {
                return client;
            }
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:80`.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse::<Ipv6Addr>().ok())
                .map(IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

/// All field lines of `name`, joined as `a, b`; `None` when absent or empty.
fn header_text(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for value in headers.get_all(name) {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(value.as_bytes().trim_ascii());
    }
    (!out.is_empty()).then_some(out)
}

/// The value of cookie `name` as Django reads it (`parse_cookie`: pairs split at every `;`,
/// quotes removed, the last pair of a name wins); an empty value counts as missing. Taking
/// the first instead let a client put a fresh decoy `sessionid=...;` before its real one and
/// get a fresh bucket while Django still used the real session.
fn cookie_text(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    let value = headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|h| h.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            let (n, v) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
            let v = match v {
                [b'"', inner @ .., b'"'] => inner,
                v => v,
            };
            (n == name.as_bytes()).then_some(v)
        })
        .next_back()?;
    (!value.is_empty()).then(|| value.to_vec())
}

/// Strings as they are, numbers in decimal (`42` and `"42"` are one user: simplejwt sends
/// either), other values as JSON; `null` and `""` count as missing.
fn claim_text(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.as_bytes().to_vec()),
        other => Some(other.to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|s| {
                s.parse()
                    .unwrap_or_else(|_| IpNet::from(s.parse::<IpAddr>().unwrap()))
            })
            .collect()
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let h = xff(&["203.0.113.9"]);
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("198.51.100.1"), false, &h, &trusted),
            ip("198.51.100.1")
        );
        // IPv4-mapped peers count as IPv4.
        assert_eq!(
            client_ip(ip("::ffff:198.51.100.1"), false, &h, &trusted),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn trusted_chain_is_walked_right_to_left() {
        let trusted = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        let peer = ip("10.0.0.1");
        let cases: &[(&[&str], &str)] = &[
            // the proxy appended the client it saw
            (&["203.0.113.9"], "203.0.113.9"),
            // the client's own forged entries sit left of what the proxy appended
            (&["1.1.1.1, 203.0.113.9"], "203.0.113.9"),
            // trusted hops are skipped, across several field lines
            (
                &["1.1.1.1, 203.0.113.9, 10.1.1.1", "10.2.2.2"],
                "203.0.113.9",
            ),
            (
                &["6.6.6.6", "203.0.113.9:4711, [2001:db8::5]:443"],
                "203.0.113.9",
            ),
            (&["[2001:db8:1::1], 2001:db8::7"], "2001:db8:1::1"),
            (&["7.7.7.7, 2001:db9::1"], "2001:db9::1"),
            // every entry trusted: the left-most
            (&["10.9.9.9, 10.8.8.8"], "10.9.9.9"),
            // garbage ends the walk at the last address reached
            (&["1.1.1.1, unknown, 10.3.3.3"], "10.3.3.3"),
            (&["203.0.113.9, junk"], "10.0.0.1"),
            (&["::ffff:203.0.113.9"], "203.0.113.9"),
            // no header: the proxy itself
            (&[], "10.0.0.1"),
            (&[" , "], "10.0.0.1"),
        ];
        for (lines, want) in cases {
            assert_eq!(
                client_ip(peer, true, &xff(lines), &trusted),
                ip(want),
                "{lines:?}"
            );
        }
        // A non-text byte left of what the proxy appended does not hide the appended entry
        // (it used to end the walk at the proxy, moving the client onto the proxy's key).
        let mut h = HeaderMap::new();
        let line = HeaderValue::from_bytes(b"\xff, 203.0.113.9").unwrap();
        h.append(&X_FORWARDED_FOR, line);
        assert_eq!(client_ip(peer, true, &h, &trusted), ip("203.0.113.9"));
    }

    #[test]
    fn header_cookie_and_claim_keys() {
        fn input<'a>(
            headers: &'a HeaderMap,
            claims: Option<&'a Map<String, Value>>,
        ) -> KeyInput<'a> {
            KeyInput {
                peer: ip("192.0.2.1"),
                peer_trusted: false,
                trusted_proxies: &[],
                headers,
                claims,
            }
        }
        let mut h = HeaderMap::new();
        h.append("x-api-key", HeaderValue::from_static(" abc "));
        h.append("x-api-key", HeaderValue::from_static("def"));
        h.append(COOKIE, HeaderValue::from_static("a=1; sid=\"s1\"; sid=s2"));
        let header = KeySource::Header(HeaderName::from_static("x-api-key"));
        assert_eq!(
            key_material(&header, &input(&h, None)),
            KeyMaterial::Text(b"abc, def".to_vec())
        );
        let cookie = KeySource::Cookie("sid".into());
        // Django's parse_cookie: the last pair of a name wins, whatever comes before it.
        assert_eq!(
            key_material(&cookie, &input(&h, None)),
            KeyMaterial::Text(b"s2".to_vec())
        );
        for decoyed in [
            "sid=decoy1; a=1; sid=real",
            "csrftoken=\"x;sid=decoy\"; sid=real",
        ] {
            let mut d = HeaderMap::new();
            d.append(COOKIE, HeaderValue::from_static(decoyed));
            let key = key_material(&cookie, &input(&d, None));
            assert_eq!(key, KeyMaterial::Text(b"real".to_vec()), "{decoyed}");
        }
        // A last, empty `sid=` is no session to Django: the client address.
        let mut d = HeaderMap::new();
        d.append(COOKIE, HeaderValue::from_static("sid=s1; sid="));
        let key = key_material(&cookie, &input(&d, None));
        assert_eq!(key, KeyMaterial::Ip(ip("192.0.2.1")));

        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"n": 42, "s": "42", "b": true, "z": null, "e": ""}"#).unwrap();
        let claim =
            |name: &str| key_material(&KeySource::Claim(name.into()), &input(&h, Some(&claims)));
        assert_eq!(claim("n"), KeyMaterial::Text(b"42".to_vec()));
        assert_eq!(claim("n"), claim("s"));
        assert_eq!(claim("b"), KeyMaterial::Text(b"true".to_vec()));

        // Missing, empty or null: the client address, never a free pass.
        let fallback = KeyMaterial::Ip(ip("192.0.2.1"));
        for name in ["z", "e", "absent"] {
            assert_eq!(claim(name), fallback, "{name}");
        }
        let empty = HeaderMap::new();
        assert_eq!(key_material(&header, &input(&empty, None)), fallback);
        assert_eq!(key_material(&cookie, &input(&empty, None)), fallback);
        assert_eq!(
            key_material(&KeySource::Claim("n".into()), &input(&empty, None)),
            fallback
        );
        assert_eq!(
            key_material(&KeySource::ClientIp, &input(&h, None)),
            fallback
        );
        assert_ne!(fallback, KeyMaterial::Text(b"192.0.2.1".to_vec()));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let key = |peer: &str| {
            key_material(
                &KeySource::ClientIp,
                &KeyInput {
                    peer: ip(peer),
                    peer_trusted: false,
                    trusted_proxies: &[],
                    headers: &HeaderMap::new(),
                    claims: None,
                },
            )
        };
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:ee:dd:cc"));
        assert_eq!(
            key("2001:db8:1:2::1"),
            KeyMaterial::Ip(ip("2001:db8:1:2::"))
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("::ffff:192.0.2.1"), KeyMaterial::Ip(ip("192.0.2.1")));
    }
}
