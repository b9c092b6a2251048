//! Unit tests of the request-head parser and the response encoder; the connection itself
//! is tested over real sockets in `tests/http1_server.rs` and the `limits_*` suites.

use super::head::{self, Framing, Reject};
use super::*;

fn parse(raw: &str) -> Result<Option<head::Parsed>, Reject> {
    let mut buf = BytesMut::from(raw.as_bytes());
    head::parse(&mut buf, 8192, &mut Vec::new())
}

/// `raw` with a `Host` field after its request line (HTTP/1.1 requires one).
fn hosted(raw: &str) -> String {
    raw.replacen("\r\n", "\r\nHost: h\r\n", 1)
}

fn framing(raw: &str) -> Framing {
    parse(raw).unwrap().unwrap().framing
}

#[test]
fn heads_become_requests_sharing_the_head_bytes() {
    let raw = "POST /a/b?q=1 HTTP/1.1\r\nHost: example.com\r\nX-Two: 1\r\nx-two: 2\r\nContent-Length: 3\r\n\r\nabcGET";
    let mut buf = BytesMut::from(raw.as_bytes());
    let parsed = head::parse(&mut buf, 8192, &mut Vec::new())
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..], b"abcGET", "only the head is taken");
    let req = &parsed.request;
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(req.uri().path(), "/a/b");
    assert_eq!(req.uri().query(), Some("q=1"));
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(req.headers()["host"], "example.com");
    let twos: Vec<_> = req.headers().get_all("x-two").iter().collect();
    assert_eq!(twos, ["1", "2"]);
    assert_eq!(parsed.framing, Framing::Length(3));
    assert!(parsed.keep_alive);
    assert!(!parsed.expect_continue && !parsed.upgrade);
}

#[test]
fn partial_heads_wait_and_big_ones_are_refused() {
    assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    assert!(parse("GET / HT").unwrap().is_none());
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
    assert_eq!(parse(&big).err(), Some(Reject::TooLarge));
    let many: String = (0..=head::MAX_HEADERS)
        .map(|i| format!("X-{i}: v\r\n"))
        .collect();
    assert_eq!(
        parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).err(),
        Some(Reject::TooLarge)
    );
}

#[test]
fn malformed_heads_are_refused() {
    for raw in [
        "GET / HTTP/1.1\r\n: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        "GET / HTTP/1.1\r\nHo\x00st: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        "G(T / HTTP/1.1\r\n\r\n",
        "GET\r\n\r\n",
    ] {
        assert!(
            matches!(parse(raw), Err(Reject::BadRequest(_))),
            "{raw:?}: {:?}",
            parse(raw).err()
        );
    }
    // A space in the target reads as a bad version (505), as with hyper.
    for raw in [
        "GET / HTTP/2.0\r\n\r\n",
        "GET / HTTP/1.2\r\n\r\n",
        "GET /a b HTTP/1.1\r\n\r\n",
    ] {
        assert!(parse(raw).is_err(), "{raw:?}");
    }
}

#[test]
fn one_host_is_required() {
    assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap()
        .is_some());
    assert!(parse("GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
    for raw in [
        "GET / HTTP/1.1\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n",
    ] {
        assert!(matches!(parse(raw), Err(Reject::BadRequest(_))), "{raw:?}");
    }
}

#[test]
fn framing_is_strict() {
    let base = "POST / HTTP/1.1\r\nHost: x\r\n";
    let f = |extra: &str| framing(&format!("{base}{extra}\r\n"));
    assert_eq!(f(""), Framing::Empty);
    assert_eq!(f("Content-Length: 0\r\n"), Framing::Empty);
    assert_eq!(f("Content-Length: 12\r\n"), Framing::Length(12));
    assert_eq!(
        f("Content-Length: 12\r\nContent-Length: 12\r\n"),
        Framing::Length(12)
    );
    assert_eq!(f("Transfer-Encoding: chunked\r\n"), Framing::Chunked);
    assert_eq!(f("Transfer-Encoding: Chunked\r\n"), Framing::Chunked);
    for refused in [
        "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 1\r\n",
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: \r\n",
        "Content-Length: 1\r\nContent-Length: 2\r\n",
        "Content-Length: 1, 1\r\n",
        "Content-Length: +1\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 0x10\r\n",
        "Content-Length: \r\n",
        "Content-Length: 99999999999999999999\r\n",
    ] {
        assert!(matches!(f(refused), Framing::Refused(_)), "{refused:?}");
    }
    let old = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(matches!(framing(old), Framing::Refused(_)));
}

#[test]
fn connection_semantics() {
    let p = |raw: &str| parse(&hosted(raw)).unwrap().unwrap();
    assert!(p("GET / HTTP/1.1\r\n\r\n").keep_alive);
    assert!(!p("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!p("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive);
    assert!(!p("GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(p("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    let ws = p("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    assert!(ws.upgrade);
    assert!(!p("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").upgrade);
    let expect = "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
    assert!(p(expect).expect_continue);
    // Nothing to wait for without a body.
    assert!(!p("POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expect_continue);
}

#[test]
fn absolute_and_asterisk_targets() {
    let p = |raw: &str| parse(&hosted(raw)).unwrap().unwrap().request;
    let abs = p("GET http://example.com:8080/x?y HTTP/1.1\r\n\r\n");
    assert_eq!(abs.uri().authority().unwrap().as_str(), "example.com:8080");
    assert_eq!(abs.uri().path(), "/x");
    assert_eq!(p("OPTIONS * HTTP/1.1\r\n\r\n").uri(), "*");
}

fn encoded(status: StatusCode, headers: &[(&str, &str)], announce: Announce) -> String {
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        map.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let mut dst = Vec::new();
    encode_head(&mut dst, status, None, &map, None, None, announce);
    String::from_utf8(dst).unwrap()
}

#[test]
fn the_request_id_replaces_the_responses_own() {
    let mut map = HeaderMap::new();
    map.append(
        "x-request-id",
        http::HeaderValue::from_static("from-upstream"),
    );
    map.append("x-a", http::HeaderValue::from_static("1"));
    map.append("x-request-id", http::HeaderValue::from_static("second"));
    map.append("date", http::HeaderValue::from_static("then"));
    let announce = Announce {
        length: Some(0),
        chunked: false,
        bodiless: false,
    };
    let id = http::HeaderValue::from_static("abc123");
    let mut dst = Vec::new();
    encode_head(
        &mut dst,
        StatusCode::OK,
        None,
        &map,
        None,
        Some(&id),
        announce,
    );
    assert_eq!(
        String::from_utf8(dst).unwrap(),
        "HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: then\r\nx-request-id: abc123\r\ncontent-length: 0\r\n"
    );
}

#[test]
fn response_heads_carry_one_framing() {
    let h = [
        ("content-length", "99"),
        ("transfer-encoding", "chunked"),
        ("x-a", "1"),
        ("date", "then"),
    ];
    let with_length = encoded(
        StatusCode::OK,
        &h,
        Announce {
            length: Some(5),
            chunked: false,
            bodiless: false,
        },
    );
    assert_eq!(
        with_length,
        "HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: then\r\ncontent-length: 5\r\n"
    );
    let chunked = encoded(
        StatusCode::NOT_FOUND,
        &h[1..],
        Announce {
            length: None,
            chunked: true,
            bodiless: false,
        },
    );
    assert_eq!(
        chunked,
        "HTTP/1.1 404 Not Found\r\nx-a: 1\r\ndate: then\r\ntransfer-encoding: chunked\r\n"
    );
    // HEAD: the headers describe the body that is not sent.
    let head = encoded(
        StatusCode::OK,
        &h,
        Announce {
            length: None,
            chunked: false,
            bodiless: true,
        },
    );
    assert!(head.contains("content-length: 99\r\n") && !head.contains("chunked"));
    // A date is added when the handler set none.
    let dated = encoded(
        StatusCode::NO_CONTENT,
        &[],
        Announce {
            length: None,
            chunked: false,
            bodiless: true,
        },
    );
    assert!(
        dated.starts_with("HTTP/1.1 204 No Content\r\ndate: "),
        "{dated}"
    );
    assert!(dated.ends_with(" GMT\r\n"), "{dated}");
}

#[test]
fn out_queues_chunks_and_advances_across_parts() {
    let mut out = Out::default();
    out.head.extend_from_slice(b"HEAD\r\n");
    out.push_data(Bytes::from_static(&[b'x'; 26]), true);
    let mut all = Vec::new();
    all.extend_from_slice(&out.head[out.head_at..]);
    all.extend_from_slice(&out.data);
    all.extend_from_slice(&out.tail[out.tail_at..]);
    assert_eq!(all, [&b"HEAD\r\n1a\r\n"[..], &[b'x'; 26], b"\r\n"].concat());
    // Partial writes in odd sizes leave exactly the unwritten rest.
    for step in [3, 5, 7, 11] {
        let mut o = Out::default();
        o.head.extend_from_slice(b"HEAD\r\n");
        o.push_data(Bytes::from_static(&[b'x'; 26]), true);
        let mut sent = Vec::new();
        while !o.is_empty() {
            let mut rest = Vec::new();
            rest.extend_from_slice(&o.head[o.head_at..]);
            rest.extend_from_slice(&o.data);
            rest.extend_from_slice(&o.tail[o.tail_at..]);
            let n = step.min(rest.len());
            sent.extend_from_slice(&rest[..n]);
            o.advance(n);
        }
        assert_eq!(sent, all, "step {step}");
    }
}

#[test]
fn decimal_lengths() {
    for n in [0u64, 7, 10, 1234567890, u64::MAX] {
        let mut dst = Vec::new();
        push_decimal(&mut dst, n);
        assert_eq!(dst, n.to_string().as_bytes());
    }
}

/// Random and mutated heads: the parser never panics, and whatever it accepts obeys the
/// framing and Host rules (a body framed two ways is never followed).
#[test]
fn random_heads_never_panic_and_accepted_ones_obey_the_rules() {
    let mut rng = fastrand::Rng::with_seed(11);
    let lines: &[&str] = &[
        "GET / HTTP/1.1",
        "POST /x HTTP/1.1",
        "PUT /y?z HTTP/1.0",
        "GET * HTTP/1.1",
    ];
    let names: &[&str] = &[
        "Host",
        "host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Expect",
        "Upgrade",
        "X-A",
        "",
        "Con tent-Length",
    ];
    let values: &[&str] = &[
        "h",
        "5",
        "0",
        "05",
        "5, 5",
        "-1",
        "chunked",
        "Chunked",
        "gzip, chunked",
        "chunked, gzip",
        "close",
        "keep-alive",
        "upgrade",
        "100-continue",
        "websocket",
        " x ",
        "",
        "a\tb",
    ];
    let (mut accepted, mut chunked, mut refused) = (0, 0, 0);
    for _ in 0..20_000 {
        let mut raw = Vec::new();
        raw.extend_from_slice(lines[rng.usize(..lines.len())].as_bytes());
        raw.extend_from_slice(b"\r\n");
        for _ in 0..rng.usize(0..6) {
            let name = names[rng.usize(..names.len())];
            let value = values[rng.usize(..values.len())];
            raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        for _ in 0..rng.usize(0..3).saturating_sub(1) {
            let at = rng.usize(..raw.len());
            match rng.u8(..4) {
                0 => raw[at] = rng.u8(..),
                1 => raw.insert(at, *rng.choice(b"\r\n\0: \t\x80").unwrap()),
                2 => {
                    raw.remove(at);
                }
                _ => raw.truncate(at),
            }
        }
        let mut buf = BytesMut::from(&raw[..]);
        let Ok(Some(parsed)) = head::parse(&mut buf, 512, &mut Vec::new()) else {
            continue;
        };
        accepted += 1;
        chunked += usize::from(parsed.framing == Framing::Chunked);
        refused += usize::from(matches!(parsed.framing, Framing::Refused(_)));
        let headers = parsed.request.headers();
        let has_cl = headers.contains_key(CONTENT_LENGTH);
        let has_te = headers.contains_key(TRANSFER_ENCODING);
        if has_cl && has_te {
            assert!(matches!(parsed.framing, Framing::Refused(_)), "{raw:?}");
        }
        if parsed.framing == Framing::Chunked {
            assert!(
                !has_cl && parsed.request.version() == Version::HTTP_11,
                "{raw:?}"
            );
        }
        if let Framing::Length(n) = parsed.framing {
            assert!(!has_te && n > 0, "{raw:?}");
        }
        let hosts = headers.get_all(http::header::HOST).iter().count();
        assert!(hosts <= 1, "{raw:?}");
        if parsed.request.version() == Version::HTTP_11 {
            assert_eq!(hosts, 1, "{raw:?}");
        }
        assert!(raw.len() - buf.len() <= 512, "{raw:?}");
    }
    // The generator reaches the interesting cases, not only parse errors.
    assert!(
        accepted > 1000 && chunked > 10 && refused > 200,
        "{accepted} accepted, {chunked} chunked, {refused} refused"
    );
}
