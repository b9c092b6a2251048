//! Header rules between client and upstream (SPEC.md "Headers sent upstream"): hop-by-hop
//! removal in both directions, `X-Forwarded-*`, `X-Request-Id`, Host preservation, upgrades.
//!
//! Order matters: everything the client may not control is removed first, then the gateway's
//! own headers are set, so a client can never use `Connection:` to strip what we add.

use std::net::{IpAddr, Ipv4Addr};

use http::header::{
    Entry, HeaderMap, HeaderName, HeaderValue, CONNECTION, EXPECT, HOST, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What the gateway knows about the request that the upstream should learn through headers.
pub struct Forwarding<'a> {
    /// The client's address as header text ([`peer_header`], made once per connection).
    pub peer: &'a HeaderValue,
    /// The peer is in `server.trusted_proxies`: its `X-Forwarded-For` is appended to.
    pub peer_trusted: bool,
    pub https: bool,
    /// Host as the client named it (`Host` or `:authority`), port included. Taken (moved
    /// into the upstream request) by [`prepare_request`]: the value shares the connection's
    /// read buffer with the rest of the request head, and holding it while the upstream
    /// answers would keep that buffer from being reused for the next request.
    pub host: Option<HeaderValue>,
    pub request_id: &'a HeaderValue,
}

/// Whether the request asks for a WebSocket upgrade (HTTP/1.1 `Connection: upgrade` +
/// `Upgrade: websocket`). Other upgrade protocols are not passed through.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let upgrade_listed = headers
        .get_all(CONNECTION)
        .iter()
        .any(|v| list_contains(v, "upgrade"));
    upgrade_listed
        && headers
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// The fields the gateway writes on every upstream request, whatever the client sent:
/// `Host`, `X-Forwarded-Host/Proto/For`, `X-Request-Id` and, for a WebSocket upgrade,
/// `Upgrade` + `Connection: upgrade`. Written by the request encoder
/// ([`super::h1::Outgoing::new`]), which drops the client's own fields of these names
/// ([`is_gateway_field`]), rather than inserted into the header map (five map inserts per
/// request).
#[derive(Debug, Default, Clone)]
pub struct GatewayFields {
    /// `Host` (and `X-Forwarded-Host`): the host the client named; neither is sent without.
    pub host: Option<HeaderValue>,
    /// `X-Forwarded-Proto`.
    pub proto: Option<&'static str>,
    /// `X-Forwarded-For`: the peer, after the client's chain when the peer is trusted.
    pub forwarded_for: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
    /// A WebSocket upgrade's `Upgrade` value.
    pub upgrade: Option<HeaderValue>,
}

impl GatewayFields {
    /// Writes `Host` (the first field of the head, where user agents put it).
    pub fn write_host(&self, dst: &mut Vec<u8>) {
        if let Some(host) = &self.host {
            super::h1::push_field(dst, b"host", host.as_bytes());
        }
    }

    /// Writes the other fields (after the client's).
    pub fn write_rest(&self, dst: &mut Vec<u8>) {
        use super::h1::push_field;
        if let Some(host) = &self.host {
            push_field(dst, b"x-forwarded-host", host.as_bytes());
        }
        if let Some(proto) = self.proto {
            push_field(dst, b"x-forwarded-proto", proto.as_bytes());
        }
        if let Some(chain) = &self.forwarded_for {
            push_field(dst, b"x-forwarded-for", chain.as_bytes());
        }
        if let Some(id) = &self.request_id {
            push_field(dst, b"x-request-id", id.as_bytes());
        }
        if let Some(upgrade) = &self.upgrade {
            push_field(dst, b"upgrade", upgrade.as_bytes());
            push_field(dst, b"connection", b"upgrade");
        }
    }
}

/// Whether `name` is one of the [`GatewayFields`]: a client's field of that name is never
/// sent upstream. (`Upgrade` and `Connection` are hop-by-hop, gone from the map already.)
pub fn is_gateway_field(name: &HeaderName) -> bool {
    name == HOST
        || name == X_FORWARDED_FOR
        || name == X_FORWARDED_PROTO
        || name == X_FORWARDED_HOST
        || name == X_REQUEST_ID
}

/// Whether a client's field of this name may go upstream at all (checked by the request
/// encoder, field by field). Not sent:
/// - names with `_`, as nginx's default (`underscores_in_headers off`): a WSGI server turns
///   `-` and `_` alike into `HTTP_X_FORWARDED_PROTO`, so a client's `X_Forwarded_Proto:
///   https` beside the gateway's own field would reach Django as `https,http` (Gunicorn
///   before 22 joins them), and `X_User_Id` would pose as a forwarded claim;
/// - `Expect`: the gateway answers `100-continue` itself, and the upstream gets the body
///   whether or not it asks.
pub fn is_forwarded_client_field(name: &HeaderName) -> bool {
    name != EXPECT && !name.as_str().as_bytes().contains(&b'_')
}

/// Rewrites a client request's headers into what is sent upstream: hop-by-hop fields (and
/// those `Connection` lists) leave the map, and the gateway's own fields are returned, to be
/// written in place of any the client sent.
pub fn prepare_request(
    headers: &mut HeaderMap,
    fwd: &mut Forwarding<'_>,
    websocket: bool,
) -> GatewayFields {
    let upgrade = if websocket {
        headers.get(UPGRADE).cloned()
    } else {
        None
    };
    remove_hop_by_hop(headers);
    GatewayFields {
        host: fwd.host.take(),
        proto: Some(if fwd.https { "https" } else { "http" }),
        forwarded_for: forwarded_for(headers, fwd.peer, fwd.peer_trusted),
        request_id: Some(fwd.request_id.clone()),
        upgrade,
    }
}

/// Rewrites an upstream response's headers into what the client sees. (`X-Request-Id` is
/// set by the handler, on every response, the upstream's replaced.)
pub fn prepare_response(headers: &mut HeaderMap, switching_protocols: bool) {
    let upgrade = if switching_protocols {
        headers.get(UPGRADE).cloned()
    } else {
        None
    };
    remove_hop_by_hop(headers);
    if let Some(upgrade) = upgrade {
        headers.insert(UPGRADE, upgrade);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The client's `X-Request-Id` when it is 1–128 characters of `[A-Za-z0-9._-]`, else a fresh one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get(&X_REQUEST_ID) {
        let bytes = value.as_bytes();
        let valid = (1..=128).contains(&bytes.len())
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            return value.clone();
        }
    }
    generate_request_id()
}

fn generate_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Two digits per random byte, low nibble first (a byte at a time: half the steps of
    // shifting a u128 per digit).
    let random = fastrand::u128(..).to_le_bytes();
    let mut out = [0u8; 32];
    for (pair, byte) in out.chunks_exact_mut(2).zip(random) {
        pair[0] = HEX[usize::from(byte & 0xf)];
        pair[1] = HEX[usize::from(byte >> 4)];
    }
    // Shared from the start: the id is cloned into the upstream request (and the HTTP/2
    // response), and a plain copy would allocate again on its first clone. Only hex digits: always a
    // valid header value.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Removes RFC 9110 §7.6.1 hop-by-hop headers and every header named in `Connection`.
///
/// Runs twice per proxied request, so it avoids work on the common shapes: `Connection`
/// tokens are removed by name without allocating, and the fixed list is only walked when a
/// scan finds one of its members.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if let Entry::Occupied(entry) = headers.entry(CONNECTION) {
        let mut values = entry.remove_entry_mult().1;
        let first = values.next();
        // Almost always one value: the rest only allocate when there are more.
        let rest: Vec<HeaderValue> = values.collect();
        for value in first.iter().chain(&rest) {
            let Ok(list) = value.to_str() else { continue };
            for name in list.split(',') {
                let name = name.trim();
                if !name.is_empty() {
                    // An invalid name names no header: nothing to remove.
                    headers.remove(name);
                }
            }
        }
    }
    if headers.keys().any(is_fixed_hop_by_hop) {
        for name in [TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
            headers.remove(name);
        }
        for name in [&KEEP_ALIVE, &PROXY_CONNECTION] {
            headers.remove(name);
        }
    }
}

/// The hop-by-hop headers removed whether or not `Connection` lists them.
fn is_fixed_hop_by_hop(name: &HeaderName) -> bool {
    name == TE
        || name == TRAILER
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// The text of `peer` as an `X-Forwarded-For` value. Made once per connection: each of its
/// requests then shares it instead of formatting and allocating its own.
pub fn peer_header(peer: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 15];
    let text = match peer {
        IpAddr::V4(v4) => format_ipv4(v4, &mut buf).to_owned(),
        IpAddr::V6(v6) => v6.to_string(),
    };
    // Digits, dots, colons and hex: always a valid header value.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `X-Forwarded-For` value: the peer, appended to the client's chain when the peer is
/// trusted (`None` if that chain does not make a valid value).
fn forwarded_for(headers: &HeaderMap, peer: &HeaderValue, trusted: bool) -> Option<HeaderValue> {
    if !(trusted && headers.contains_key(&X_FORWARDED_FOR)) {
        return Some(peer.clone());
    }
    let mut chain = String::with_capacity(64);
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            chain.push_str(s.trim());
            chain.push_str(", ");
        }
    }
    chain.push_str(peer.to_str().unwrap_or_default());
    HeaderValue::try_from(chain).ok()
}

/// Dotted-quad text of `ip` in `buf` (what `Display` prints, without the formatter: this
/// runs once per proxied request).
fn format_ipv4(ip: Ipv4Addr, buf: &mut [u8; 15]) -> &str {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    // Only ASCII digits and dots were written.
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

/// Case-insensitive membership in a comma-separated token list.
fn list_contains(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    static PEER: HeaderValue = HeaderValue::from_static("10.0.0.7");

    fn fwd<'a>(host: &'a HeaderValue, id: &'a HeaderValue, trusted: bool) -> Forwarding<'a> {
        Forwarding {
            peer: &PEER,
            peer_trusted: trusted,
            https: true,
            host: Some(host.clone()),
            request_id: id,
        }
    }

    #[test]
    fn fixed_hop_by_hop_names_are_exactly_the_six() {
        for name in [
            &TE,
            &TRAILER,
            &TRANSFER_ENCODING,
            &UPGRADE,
            &KEEP_ALIVE,
            &PROXY_CONNECTION,
        ] {
            assert!(is_fixed_hop_by_hop(name), "{name}");
        }
        for name in [
            "connection",
            "host",
            "x-te",
            "trailers",
            "content-length",
            "upgrade-x",
        ] {
            let name = HeaderName::from_static(name);
            assert!(!is_fixed_hop_by_hop(&name), "{name}");
        }
        // Any case on the wire is the same (lowercase) name.
        let mixed = HeaderName::from_bytes(b"Keep-Alive").unwrap();
        assert!(is_fixed_hop_by_hop(&mixed));
    }

    #[test]
    fn connection_tokens_in_any_case_remove_their_headers() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Keep-Alive, X-Secret"));
        h.insert(&KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    /// The fields the upstream is sent for a GET with `h`: `prepare_request`, then the
    /// request encoder, then the head parsed back (names lowercase, in order).
    fn sent(mut h: HeaderMap, fwd: &mut Forwarding<'_>, websocket: bool) -> Vec<(String, String)> {
        let gateway = prepare_request(&mut h, fwd, websocket);
        let out = super::super::h1::Outgoing::new(
            Vec::new(),
            &http::Method::GET,
            &http::Uri::from_static("/"),
            &h,
            &gateway,
            crate::error::full_body(bytes::Bytes::new()),
        );
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut fields);
        assert!(req.parse(out.head()).unwrap().is_complete());
        req.headers
            .iter()
            .map(|f| {
                let value = String::from_utf8(f.value.to_vec()).unwrap();
                (f.name.to_ascii_lowercase(), value)
            })
            .collect()
    }

    /// The values sent under `name`.
    fn values<'a>(sent: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        sent.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn client_cannot_strip_gateway_headers_via_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("X-Forwarded-For, x-request-id, Host, X-Forwarded-Proto, foo"),
        );
        h.insert("foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static("gopher"),
        );
        let host = HeaderValue::from_static("example.com:8443");
        let id = HeaderValue::from_static("abc");
        let got = sent(h, &mut fwd(&host, &id, false), false);
        let expected = [
            ("host", "example.com:8443"),
            ("x-forwarded-host", "example.com:8443"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "10.0.0.7"),
            ("x-request-id", "abc"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, expected);
    }

    /// A client's own Host, X-Forwarded-* and X-Request-Id never reach the upstream beside
    /// the gateway's: each name is sent once, with the gateway's value, Host first.
    #[test]
    fn client_copies_of_gateway_fields_are_never_sent() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-request-id", "forged"),
            ("x-forwarded-host", "evil.test"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-kept", "1"),
            ("host", "evil.test"),
            ("x-forwarded-for", "7.7.7.7"),
        ] {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let host = HeaderValue::from_static("app.test");
        let id = HeaderValue::from_static("gw-id");
        let mut forwarding = fwd(&host, &id, false);
        forwarding.https = false;
        let first = sent(h, &mut forwarding, false);
        assert_eq!(first[0], ("host".to_owned(), "app.test".to_owned()));
        for (name, value) in [
            ("host", "app.test"),
            ("x-forwarded-host", "app.test"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-for", "10.0.0.7"),
            ("x-request-id", "gw-id"),
            ("x-kept", "1"),
        ] {
            assert_eq!(values(&first, name), [value], "{name} in {first:?}");
        }

        // Without a host from the client, neither Host nor X-Forwarded-Host is sent.
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("evil.test"));
        h.insert(
            X_FORWARDED_HOST.clone(),
            HeaderValue::from_static("evil.test"),
        );
        let mut forwarding = fwd(&host, &id, false);
        forwarding.host = None;
        let hostless = sent(h, &mut forwarding, false);
        assert!(values(&hostless, "host").is_empty(), "{hostless:?}");
        assert!(
            values(&hostless, "x-forwarded-host").is_empty(),
            "{hostless:?}"
        );
    }

    #[test]
    fn forwarded_for_is_replaced_unless_peer_trusted() {
        let host = HeaderValue::from_static("h");
        let id = HeaderValue::from_static("i");
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR.clone(), HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR.clone(), HeaderValue::from_static("2.2.2.2"));
        let untrusted = sent(h.clone(), &mut fwd(&host, &id, false), false);
        assert_eq!(values(&untrusted, "x-forwarded-for"), ["10.0.0.7"]);
        let trusted = sent(h, &mut fwd(&host, &id, true), false);
        assert_eq!(
            values(&trusted, "x-forwarded-for"),
            ["1.1.1.1, 2.2.2.2, 10.0.0.7"]
        );
    }

    #[test]
    fn websocket_upgrade_survives_hop_by_hop_removal() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_websocket_upgrade(&h));
        let host = HeaderValue::from_static("h");
        let id = HeaderValue::from_static("i");
        let upgrade = sent(h.clone(), &mut fwd(&host, &id, false), true);
        assert_eq!(values(&upgrade, "upgrade"), ["websocket"]);
        assert_eq!(values(&upgrade, "connection"), ["upgrade"]);
        // Not a WebSocket request: neither field is passed on.
        let plain = sent(h, &mut fwd(&host, &id, false), false);
        assert!(values(&plain, "upgrade").is_empty(), "{plain:?}");
        assert!(values(&plain, "connection").is_empty(), "{plain:?}");

        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        assert!(!is_websocket_upgrade(&h));
    }

    #[test]
    fn response_loses_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        prepare_response(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(TRANSFER_ENCODING).is_none());
        assert!(h.get(CONNECTION).is_none());
    }

    #[test]
    fn ipv4_text_matches_display() {
        let mut buf = [0u8; 15];
        for ip in [
            "0.0.0.0",
            "10.0.0.7",
            "127.0.0.1",
            "255.255.255.255",
            "1.20.100.9",
        ] {
            let parsed: Ipv4Addr = ip.parse().unwrap();
            assert_eq!(format_ipv4(parsed, &mut buf), ip);
        }
        assert_eq!(peer_header("::1".parse().unwrap()), "::1");
        assert_eq!(peer_header("10.0.0.7".parse().unwrap()), "10.0.0.7");
    }

    #[test]
    fn every_connection_value_and_listed_name_is_removed() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("close, X-A"));
        h.append(
            CONNECTION,
            HeaderValue::from_static(" x-b ,, bad name ,keep-alive"),
        );
        for name in ["x-a", "x-b", "keep-alive", "x-kept"] {
            h.insert(name, HeaderValue::from_static("1"));
        }
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        remove_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn request_id_kept_only_when_well_formed() {
        let mut h = HeaderMap::new();
        h.insert(
            X_REQUEST_ID.clone(),
            HeaderValue::from_static("abc-123_x.y"),
        );
        assert_eq!(request_id(&h), "abc-123_x.y");
        for bad in ["", "a b", "a/b", "<script>"] {
            h.insert(X_REQUEST_ID.clone(), HeaderValue::from_str(bad).unwrap());
            let id = request_id(&h);
            assert_eq!(id.len(), 32, "{bad:?}");
        }
        h.insert(
            X_REQUEST_ID.clone(),
            HeaderValue::from_str(&"a".repeat(129)).unwrap(),
        );
        assert_eq!(request_id(&h).len(), 32);
        h.remove(&X_REQUEST_ID);
        assert_ne!(request_id(&h), request_id(&h));
    }
}
