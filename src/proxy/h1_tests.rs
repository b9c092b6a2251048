//! The upstream HTTP/1.1 exchange against scripted servers over real loopback sockets: what
//! goes out on the wire, how each framing is read, and when a connection is pooled.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::config::PoolSettings;
use crate::error::full_body;
use crate::proxy::server_state::ServerState;

const STEP: Duration = Duration::from_secs(5);

/// A server that runs `script` on the first connection it accepts.
async fn scripted<F, Fut>(script: F) -> SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        script(stream).await;
    });
    addr
}

/// A server that answers the first request with `answer`, then keeps the connection open
/// (whether it is reused is the client's decision).
async fn answering(answer: &[u8]) -> SocketAddr {
    let answer = answer.to_vec();
    scripted(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.write_all(&answer).await;
        tokio::time::sleep(STEP).await;
    })
    .await
}

/// Reads one request head (up to its blank line) and returns it.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads until the peer closes.
async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(STEP, stream.read_to_end(&mut all)).await;
    all
}

/// Writes `parts` one by one with a pause between them (so they arrive in separate reads).
async fn trickle(stream: &mut TcpStream, parts: &[&[u8]]) {
    for part in parts {
        stream.write_all(part).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn pool() -> Arc<ServerPool> {
    Arc::new(ServerPool::new(&PoolSettings {
        max_idle_per_server: 8,
        idle_timeout: Duration::from_secs(60),
    }))
}

fn in_flight() -> InFlight {
    let state = Arc::new(ServerState::new(
        "app",
        "test",
        true,
        crate::metrics::ServerMetrics::detached("test"),
    ));
    InFlight::new(&state)
}

fn get(headers: HeaderMap) -> Outgoing {
    outgoing(Method::GET, headers, full_body(Bytes::new()))
}

fn outgoing(method: Method, headers: HeaderMap, body: GatewayBody) -> Outgoing {
    let gateway = GatewayFields {
        host: Some(HeaderValue::from_static("app.test")),
        ..GatewayFields::default()
    };
    Outgoing::new(
        Vec::new(),
        &method,
        &Uri::from_static("/p?q=1"),
        &headers,
        &gateway,
        body,
    )
}

/// A body that yields `parts` as separate frames, then ends.
fn frames(parts: &[&'static str]) -> GatewayBody {
    let frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> = parts
        .iter()
        .map(|p| Ok(http_body::Frame::data(Bytes::from_static(p.as_bytes()))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

/// Sends `out` to `addr`, reads the whole response; returns the head, the body, its
/// trailers and the pool it went back to (if it did).
async fn round_trip(
    addr: SocketAddr,
    mut out: Outgoing,
) -> Result<(Head, Bytes, Option<HeaderMap>, Arc<ServerPool>), ExchangeError> {
    let mut conn = Conn::connect(addr, STEP).await.unwrap();
    let head = tokio::time::timeout(STEP, conn.exchange(&mut out))
        .await
        .expect("exchange hung")?;
    let pool = pool();
    let framing = head.framing;
    let body = ResponseBody::new(
        conn,
        framing,
        head.keep_alive,
        Arc::clone(&pool),
        in_flight(),
    );
    let collected = tokio::time::timeout(STEP, body.collect())
        .await
        .expect("body hung")
        .expect("body failed");
    let trailers = collected.trailers().cloned();
    Ok((head, collected.to_bytes(), trailers, pool))
}

#[tokio::test]
async fn request_head_goes_out_with_one_framing() {
    let seen = Arc::new(Mutex::new(String::new()));
    let record = Arc::clone(&seen);
    let addr = scripted(|mut s| async move {
        let head = read_head(&mut s).await;
        let mut body = vec![0u8; 7];
        s.read_exact(&mut body).await.unwrap();
        *record.lock().unwrap() = head + std::str::from_utf8(&body).unwrap();
        s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
    })
    .await;
    let mut headers = HeaderMap::new();
    headers.append("x-a", HeaderValue::from_static("1"));
    headers.append("x-a", HeaderValue::from_static("2"));
    let out = outgoing(Method::POST, headers, full_body("payload"));
    let (head, body, _, pool) = round_trip(addr, out).await.ok().unwrap();
    assert_eq!(head.response.status(), StatusCode::NO_CONTENT);
    assert!(body.is_empty());
    assert_eq!(
        *seen.lock().unwrap(),
        "POST /p?q=1 HTTP/1.1\r\nhost: app.test\r\nx-a: 1\r\nx-a: 2\r\nx-forwarded-host: app.test\r\n\
         content-length: 7\r\n\r\npayload"
    );
    assert_eq!(pool.idle_count(), 1);
}

#[test]
fn cookie_crumbs_go_out_as_one_field() {
    let mut headers = HeaderMap::new();
    headers.append("x-a", HeaderValue::from_static("1"));
    for crumb in ["sessionid=abc", "csrftoken=xyz", "theme=dark"] {
        headers.append(http::header::COOKIE, HeaderValue::from_static(crumb));
    }
    headers.append("x-b", HeaderValue::from_static("2"));
    let out = outgoing(Method::GET, headers, full_body(Bytes::new()));
    assert_eq!(
        std::str::from_utf8(out.head()).unwrap(),
        "GET /p?q=1 HTTP/1.1\r\nhost: app.test\r\nx-a: 1\r\n\
         cookie: sessionid=abc; csrftoken=xyz; theme=dark\r\nx-b: 2\r\n\
         x-forwarded-host: app.test\r\n\r\n"
    );
}

#[test]
fn underscored_names_and_expect_stay_behind() {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("x_forwarded_proto", "https"),
        ("x_forwarded_for", "6.6.6.6"),
        ("x_user_id", "1"),
        ("expect", "100-continue"),
        ("x-kept", "yes"),
    ] {
        headers.append(
            http::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    let out = outgoing(Method::GET, headers, full_body(Bytes::new()));
    assert_eq!(
        std::str::from_utf8(out.head()).unwrap(),
        "GET /p?q=1 HTTP/1.1\r\nhost: app.test\r\nx-kept: yes\r\nx-forwarded-host: app.test\r\n\r\n"
    );
}

#[tokio::test]
async fn content_length_goes_out_once_as_plain_digits() {
    let seen = Arc::new(Mutex::new(String::new()));
    let record = Arc::clone(&seen);
    let addr = scripted(|mut s| async move {
        let head = read_head(&mut s).await;
        let mut body = [0u8; 5];
        s.read_exact(&mut body).await.unwrap();
        *record.lock().unwrap() = head;
        s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
    })
    .await;
    let mut headers = HeaderMap::new();
    headers.append(
        http::header::CONTENT_LENGTH,
        HeaderValue::from_static("5, 5"),
    );
    headers.append(http::header::CONTENT_LENGTH, HeaderValue::from_static("5"));
    let out = outgoing(Method::PUT, headers, frames(&["he", "llo"]));
    round_trip(addr, out).await.ok().unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        "PUT /p?q=1 HTTP/1.1\r\nhost: app.test\r\nx-forwarded-host: app.test\r\ncontent-length: 5\r\n\r\n"
    );
}

#[tokio::test]
async fn a_body_of_unknown_length_goes_out_chunked() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let addr = scripted(|mut s| async move {
        let mut all = read_head(&mut s).await.into_bytes();
        while !all.ends_with(b"0\r\n\r\n") {
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "request ended early: {all:?}");
            all.extend_from_slice(&buf[..n]);
        }
        *record.lock().unwrap() = all;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
    })
    .await;
    let out = outgoing(
        Method::PUT,
        HeaderMap::new(),
        frames(&["abc", "", "0123456789abcdefg"]),
    );
    let (_, body, _, _) = round_trip(addr, out).await.ok().unwrap();
    assert_eq!(body, "ok");
    let seen = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
    assert_eq!(
        seen,
        "PUT /p?q=1 HTTP/1.1\r\nhost: app.test\r\nx-forwarded-host: app.test\r\ntransfer-encoding: chunked\r\n\r\n\
         3\r\nabc\r\n11\r\n0123456789abcdefg\r\n0\r\n\r\n"
    );
}

#[tokio::test]
async fn a_body_shorter_or_longer_than_its_content_length_is_refused() {
    for (declared, parts) in [("10", &["abc"][..]), ("2", &["abc"][..])] {
        let addr = scripted(|mut s| async move {
            read_to_end(&mut s).await;
        })
        .await;
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from_static(declared),
        );
        let out = outgoing(Method::POST, headers, frames(parts));
        let Err(error) = round_trip(addr, out).await else {
            panic!("a {declared}-byte declaration with 3 bytes went through");
        };
        assert!(matches!(error.kind, Kind::BodyLength), "{:?}", error.kind);
    }
}

#[tokio::test]
async fn chunked_response_in_small_pieces_with_trailers() {
    let addr = scripted(|mut s| async move {
        read_head(&mut s).await;
        trickle(
            &mut s,
            &[
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n",
                b"x-b: 1\r\n\r\n5",
                b";ext=1\r",
                b"\nhello\r\n",
                b"6\r\n wor",
                b"ld\r",
                b"\n0\r\nx-checksum: abc\r\n",
                b"\r\n",
            ],
        )
        .await;
        // Keep the connection open: it must be pooled, not waited on.
        tokio::time::sleep(STEP).await;
    })
    .await;
    let (head, body, trailers, pool) = round_trip(addr, get(HeaderMap::new())).await.ok().unwrap();
    assert_eq!(head.framing, Framing::Chunked);
    assert_eq!(head.response.headers()["x-b"], "1");
    assert_eq!(body, "hello world");
    assert_eq!(trailers.unwrap()["x-checksum"], "abc");
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test]
async fn content_length_body_across_reads_then_pooled() {
    let addr = scripted(|mut s| async move {
        read_head(&mut s).await;
        trickle(
            &mut s,
            &[
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123",
                b"456",
                b"789",
            ],
        )
        .await;
        tokio::time::sleep(STEP).await;
    })
    .await;
    let (head, body, _, pool) = round_trip(addr, get(HeaderMap::new())).await.ok().unwrap();
    assert_eq!(head.framing, Framing::Length(10));
    assert_eq!(body, "0123456789");
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let addr = answering(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
              HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let (head, body, _, _) = round_trip(addr, get(HeaderMap::new())).await.ok().unwrap();
    assert_eq!(head.response.status(), StatusCode::OK);
    assert!(head.response.headers().get("link").is_none());
    assert_eq!(body, "ok");
}

#[tokio::test]
async fn head_response_has_no_body_whatever_its_length() {
    let addr = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n").await;
    let out = outgoing(Method::HEAD, HeaderMap::new(), full_body(Bytes::new()));
    let (head, body, _, pool) = round_trip(addr, out).await.ok().unwrap();
    assert_eq!(head.framing, Framing::Empty);
    assert_eq!(head.response.headers()["content-length"], "5000");
    assert!(body.is_empty());
    assert_eq!(pool.idle_count(), 1);
}

/// A bodiless answer's Content-Length goes to the client, so it is checked as a GET's is.
#[tokio::test]
async fn head_response_with_a_malformed_length_is_refused() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 1, 2\r\n\r\n",
    ] {
        let addr = answering(answer).await;
        let out = outgoing(Method::HEAD, HeaderMap::new(), full_body(Bytes::new()));
        let Err(error) = round_trip(addr, out).await else {
            panic!("accepted: {}", String::from_utf8_lossy(answer));
        };
        assert!(matches!(error.kind, Kind::Invalid(_)), "{error:?}");
    }
}

#[tokio::test]
async fn body_until_close_is_read_whole_and_not_pooled() {
    let addr = scripted(|mut s| async move {
        read_head(&mut s).await;
        trickle(&mut s, &[b"HTTP/1.0 200 OK\r\n\r\nno", b" length"]).await;
    })
    .await;
    let (head, body, _, pool) = round_trip(addr, get(HeaderMap::new())).await.ok().unwrap();
    assert_eq!(head.framing, Framing::Close);
    assert_eq!(body, "no length");
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn connections_that_cannot_be_reused_are_not_pooled() {
    let answers: [&[u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        // Bytes after the response that nobody asked for.
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
    ];
    for answer in answers {
        let addr = answering(answer).await;
        let (_, body, _, pool) = round_trip(addr, get(HeaderMap::new())).await.ok().unwrap();
        assert_eq!(body, "ok");
        assert_eq!(pool.idle_count(), 0, "{}", String::from_utf8_lossy(answer));
    }
    // HTTP/1.0 with keep-alive asked for is kept.
    let addr =
        answering(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok")
            .await;
    let (_, _, _, pool) = round_trip(addr, get(HeaderMap::new())).await.ok().unwrap();
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test]
async fn ambiguous_or_oversized_response_heads_are_refused() {
    let many = format!(
        "HTTP/1.1 200 OK\r\n{}\r\n",
        "x-h: 1\r\n".repeat(MAX_HEADERS + 1)
    );
    let huge = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    let answers = [
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        "HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok",
        "HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nbad name: 1\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "SMTP ready\r\n\r\n",
        &many,
        &huge,
    ];
    for answer in answers {
        let addr = answering(answer.as_bytes()).await;
        let Err(error) = round_trip(addr, get(HeaderMap::new())).await else {
            panic!("accepted: {:.80}", answer);
        };
        assert!(
            matches!(error.kind, Kind::Invalid(_)),
            "{:.80}: {:?}",
            answer,
            error.kind
        );
    }
    // Equal values, repeated or listed, are one length.
    let addr =
        answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2, 2\r\n\r\nok").await;
    let (_, body, _, _) = round_trip(addr, get(HeaderMap::new())).await.ok().unwrap();
    assert_eq!(body, "ok");
}

#[tokio::test]
async fn malformed_chunked_bodies_fail_instead_of_ending() {
    let bodies: [&[u8]; 4] = [
        b"5\r\nhelloXX0\r\n\r\n",    // no CRLF after the data
        b"zz\r\nhello\r\n0\r\n\r\n", // not hex
        b"5\r\nhel",                 // cut short
        b"ffffffffffffffffff\r\n",   // overflows
    ];
    for chunked in bodies {
        let addr = scripted(move |mut s| async move {
            read_head(&mut s).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let _ = s.write_all(chunked).await;
        })
        .await;
        let mut conn = Conn::connect(addr, STEP).await.unwrap();
        let mut out = get(HeaderMap::new());
        let head = conn.exchange(&mut out).await.ok().unwrap();
        let body = ResponseBody::new(conn, head.framing, head.keep_alive, pool(), in_flight());
        let result = tokio::time::timeout(STEP, body.collect()).await.unwrap();
        assert!(
            result.is_err(),
            "{:?} completed",
            String::from_utf8_lossy(chunked)
        );
    }
}

#[tokio::test]
async fn an_answer_before_the_body_is_through_ends_the_exchange() {
    let addr = answering(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n").await;
    // A streamed body that never ends.
    let never = StreamBody::new(futures_util::stream::pending::<
        Result<http_body::Frame<Bytes>, BoxError>,
    >())
    .boxed_unsync();
    let out = outgoing(Method::POST, HeaderMap::new(), never);
    let (head, _, _, pool) = round_trip(addr, out).await.ok().unwrap();
    assert_eq!(head.response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!head.keep_alive);
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn an_upgrade_hands_over_the_socket_with_early_bytes() {
    let addr = scripted(|mut s| async move {
        read_head(&mut s).await;
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\nearly")
            .await
            .unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
    })
    .await;
    let mut conn = Conn::connect(addr, STEP).await.unwrap();
    let mut out = get(HeaderMap::new());
    let head = conn.exchange(&mut out).await.ok().unwrap();
    assert_eq!(head.response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(!head.keep_alive);
    let (mut io, early) = conn.into_upgraded();
    // The head may have come alone; the rest of "early" follows on the socket.
    let mut got = early.to_vec();
    while got.len() < 5 {
        let mut buf = [0u8; 8];
        let n = io.read(&mut buf).await.unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"early");
    io.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    io.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
}

#[tokio::test]
async fn a_reason_phrase_of_its_own_is_kept() {
    let addr = answering(b"HTTP/1.1 200 Fine Thanks\r\ncontent-length: 0\r\n\r\n").await;
    let (head, _, _, _) = round_trip(addr, get(HeaderMap::new())).await.ok().unwrap();
    let reason = head.response.extensions().get::<hyper::ext::ReasonPhrase>();
    assert_eq!(reason.map(|r| r.as_bytes()), Some(&b"Fine Thanks"[..]));
}

#[test]
fn body_reads_grow_while_full_and_shrink_while_mostly_empty() {
    let mut size = BODY_READ;
    for _ in 0..10 {
        size = next_read_size(size, size);
    }
    assert_eq!(size, MAX_BODY_READ);
    assert_eq!(next_read_size(size, size / 2), size, "half full: kept");
    for _ in 0..10 {
        size = next_read_size(size, 100);
    }
    assert_eq!(size, HEAD_READ);
    assert_eq!(next_read_size(size, 0), size, "end of stream: kept");
}

#[tokio::test]
async fn a_large_body_arrives_whole_through_growing_reads() {
    const LEN: usize = 3 * 1024 * 1024 + 17;
    let addr = scripted(|mut s| async move {
        read_head(&mut s).await;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let body: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        s.write_all(&body).await.unwrap();
        tokio::time::sleep(STEP).await;
    })
    .await;
    let (_, body, _, pool) = round_trip(addr, get(HeaderMap::new())).await.ok().unwrap();
    assert_eq!(body.len(), LEN);
    assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    assert_eq!(pool.idle_count(), 1);
}

/// Random chunked bodies (sizes, extensions, trailers) written in random pieces: every one
/// reassembles to its bytes, and the connection is pooled after each.
#[tokio::test]
async fn random_chunked_bodies_reassemble() {
    let mut rng = fastrand::Rng::with_seed(5);
    for round in 0..40 {
        let body: Vec<u8> = (0..rng.usize(0..20_000)).map(|_| rng.u8(..)).collect();
        let mut wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        let mut at = 0;
        while at < body.len() {
            let n = rng.usize(1..=(body.len() - at).min(5000));
            let ext = if rng.bool() { ";a=b" } else { "" };
            let size = if rng.bool() {
                format!("{n:x}")
            } else {
                format!("{n:X}")
            };
            wire.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
            wire.extend_from_slice(&body[at..at + n]);
            wire.extend_from_slice(b"\r\n");
            at += n;
        }
        wire.extend_from_slice(b"0\r\n");
        if rng.bool() {
            wire.extend_from_slice(b"x-t: 1\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        let cuts: Vec<usize> = {
            let mut c: Vec<usize> = (0..rng.usize(0..8))
                .map(|_| rng.usize(0..wire.len()))
                .collect();
            c.sort_unstable();
            c
        };
        let addr = scripted(move |mut s| async move {
            read_head(&mut s).await;
            let mut from = 0;
            for cut in cuts.into_iter().chain([wire.len()]) {
                s.write_all(&wire[from..cut]).await.unwrap();
                s.flush().await.unwrap();
                tokio::task::yield_now().await;
                from = cut;
            }
            tokio::time::sleep(STEP).await;
        })
        .await;
        let (_, got, _, pool) = round_trip(addr, get(HeaderMap::new())).await.ok().unwrap();
        assert_eq!(got.len(), body.len(), "round {round}");
        assert!(got == body, "round {round}: bytes differ");
        assert_eq!(pool.idle_count(), 1, "round {round}");
    }
}

/// Random bytes in place of a response: the exchange ends (answer or error) within the
/// time limit and never panics; whatever it accepts has a status and a framing.
#[tokio::test]
async fn random_response_bytes_never_panic_or_hang() {
    let mut rng = fastrand::Rng::with_seed(11);
    let alphabet = b"HTP/1.0 2345:\r\n\tabcxyz-;,chunkedtransfer-encodingcontent-length";
    for round in 0..60 {
        let mut wire = if rng.bool() {
            b"HTTP/1.1 200 OK\r\n".to_vec()
        } else {
            Vec::new()
        };
        for _ in 0..rng.usize(0..300) {
            wire.push(if rng.u8(..) < 200 {
                alphabet[rng.usize(..alphabet.len())]
            } else {
                rng.u8(..)
            });
        }
        if rng.bool() {
            wire.extend_from_slice(b"\r\n\r\n");
        }
        let addr = scripted(move |mut s| async move {
            read_head(&mut s).await;
            let _ = s.write_all(&wire).await;
            // Close: a response that needs more bytes must end as an error, not hang.
        })
        .await;
        let mut conn = Conn::connect(addr, STEP).await.unwrap();
        let mut out = get(HeaderMap::new());
        let exchanged = tokio::time::timeout(STEP, conn.exchange(&mut out))
            .await
            .unwrap_or_else(|_| panic!("round {round}: exchange hung"));
        if let Ok(head) = exchanged {
            let body = ResponseBody::new(conn, head.framing, head.keep_alive, pool(), in_flight());
            let _ = tokio::time::timeout(STEP, body.collect())
                .await
                .unwrap_or_else(|_| panic!("round {round}: body hung"));
        }
    }
}

/// The fields a response passed through encoded carries, as (lower-case name, value).
fn passed(head: &Head) -> Vec<(String, String)> {
    let encoded = head.encoded.as_ref().expect("fields passed encoded");
    let text = std::str::from_utf8(&encoded.fields).unwrap();
    let mut fields: Vec<(String, String)> = text
        .split_terminator("\r\n")
        .map(|line| {
            let (n, v) = line.split_once(": ").unwrap();
            (n.to_ascii_lowercase(), v.to_owned())
        })
        .collect();
    assert_eq!(
        encoded.dated,
        fields.iter().any(|(n, _)| n == "date"),
        "dated flag"
    );
    fields.sort();
    fields
}

#[test]
fn passed_fields_are_the_filtered_map() {
    // Each head parsed both ways: kept encoded for an HTTP/1 client, or into a map that
    // prepare_response filters (HTTP/2 clients). The client must get the same fields,
    // but X-Request-Id (the connection writes the gateway's) and Content-Length (the
    // connection writes the framing; kept on a response sent without a body).
    let heads: &[(&str, bool)] = &[
        ("HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 23 Nov 2026 00:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n", false),
        ("HTTP/1.1 200 OK\r\nConnection: X-Secret, close\r\nX-Secret: 1\r\nx-secret: 2\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Kept: a\r\nX-Kept: b\r\nX-Request-Id: upstream\r\nContent-Length: 3\r\n\r\n", false),
        ("HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nVary: Accept-Encoding\r\n\r\n", false),
        ("HTTP/1.1 200 OK\r\nContent-Length: 99\r\nETag: \"x\"\r\n\r\n", true),
        ("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 99\r\nConnection: ,,keep-alive , ETag\r\n\r\n", false),
        ("HTTP/1.0 200 OK\r\nX-Obs: café\r\nX-Tab: a\tb\r\nX-Empty:\r\n\r\n", false),
        ("HTTP/1.1 204 No Content\r\nCONNECTION: Keep-Alive, x-drop\r\nX-DROP: 1\r\nX-Keep: 1\r\n\r\n", false),
    ];
    for (raw, head_request) in heads {
        let mut a = BytesMut::from(raw.as_bytes());
        let mut b = BytesMut::from(raw.as_bytes());
        let encoded = parse_head(&mut a, *head_request, true).unwrap().unwrap();
        let mapped = parse_head(&mut b, *head_request, false).unwrap().unwrap();
        assert!(a.is_empty() && b.is_empty());
        assert_eq!(encoded.framing, mapped.framing, "{raw:?}");
        assert_eq!(encoded.keep_alive, mapped.keep_alive, "{raw:?}");
        assert!(encoded.response.headers().is_empty());
        let status = mapped.response.status();
        let bodiless =
            *head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let (mut parts, ()) = mapped.response.into_parts();
        crate::proxy::headers::prepare_response(&mut parts.headers, false);
        let mut expected: Vec<(String, String)> = parts
            .headers
            .iter()
            .filter(|(n, _)| *n != "x-request-id" && (bodiless || *n != "content-length"))
            .map(|(n, v)| {
                let v = String::from_utf8(v.as_bytes().to_vec()).unwrap();
                (n.as_str().to_owned(), v)
            })
            .collect();
        expected.sort();
        assert_eq!(passed(&encoded), expected, "{raw:?}");
    }
    // What neither way lets through.
    let mut raw =
        BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-Secret: 1\r\nConnection: x-secret\r\n\r\n"[..]);
    let head = parse_head(&mut raw, false, true).unwrap().unwrap();
    assert!(passed(&head).is_empty());
    for bad in [
        &b"HTTP/1.1 200 OK\r\nX-Del: a\x7fb\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    ] {
        for pass in [true, false] {
            let mut buf = BytesMut::from(bad);
            assert!(parse_head(&mut buf, false, pass).is_err(), "{bad:?} {pass}");
        }
    }
}

#[test]
fn switching_protocols_keeps_its_map() {
    let raw =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let head = parse_head(&mut BytesMut::from(&raw[..]), false, true)
        .unwrap()
        .unwrap();
    assert!(head.encoded.is_none());
    assert_eq!(head.response.headers()["upgrade"], "websocket");
}
