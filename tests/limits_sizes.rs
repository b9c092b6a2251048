//! Size limits over real sockets: `max_header_bytes` (431), `max_body_bytes` at server and
//! route level (413 for a declared length before the upstream is contacted; a chunked body
//! growing past the limit refused when buffered and cut when streamed), and
//! `max_connections` making further connections wait for a free slot, and
//! `max_connections_per_ip` closing one address's connections past its share.

mod common;
mod limits_support;

use std::time::{Duration, Instant};

use common::*;
use limits_support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

// ---------------------------------------------------------------------------------------------
// max_header_bytes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn oversized_request_head_gets_431() {
    let _g = shared().await;
    let up = TestUpstream::echo().await;
    let yaml = simple_yaml(up.addr, "", "  max_header_bytes: 8KiB");
    let gw = TestGateway::start(&yaml).await;
    let addr = gw.addr("http");

    let big = "a".repeat(20 * KIB);
    let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let (got, closed) = raw_exchange_closed(addr, raw, Duration::from_secs(3)).await;
    assert!(closed);
    assert_eq!(status_of(&got), 431, "{got}");
    assert_eq!(up.hits(), 0);

    // A head well under the limit still passes.
    let small = "a".repeat(4 * KIB);
    let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {small}\r\nConnection: close\r\n\r\n");
    let (got, _) = raw_exchange_closed(addr, raw, Duration::from_secs(3)).await;
    assert_eq!(status_of(&got), 200, "{got}");
    assert_eq!(up.hits(), 1);
    assert_eq!(up.last().headers["x-big"].len(), 4 * KIB);
}

// ---------------------------------------------------------------------------------------------
// max_body_bytes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn declared_body_over_server_limit_gets_413_without_contacting_upstream() {
    let _g = shared().await;
    let up = CountingUpstream::start().await;
    let yaml = simple_yaml(up.addr, "", "  max_body_bytes: 1KiB");
    let gw = TestGateway::start(&yaml).await;
    let addr = gw.addr("http");
    // Only the head is sent: the answer must not wait for the 5000 declared bytes.
    let raw = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n";
    let (got, closed) = raw_exchange_closed(addr, raw, Duration::from_secs(3)).await;
    assert_eq!(status_of(&got), 413, "{got}");
    assert!(
        got.contains(r#"{"error":"body_too_large","status":413}"#),
        "{got}"
    );
    assert!(closed, "connection left open with an unread body");
    // A body exactly at the limit passes.
    let raw = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{}",
        "b".repeat(1024)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!((up.hits(), up.connections()), (0, 0));
    let (got, _) = raw_exchange_closed(addr, raw, Duration::from_secs(3)).await;
    assert_eq!(status_of(&got), 200, "{got}");
    assert!(got.ends_with("\r\n\r\n1024"), "{got}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn route_body_limit_applies_to_its_route_only() {
    let _g = shared().await;
    let up = CountingUpstream::start().await;
    let yaml = format!(
        r#"
server:
  max_body_bytes: 1KiB
listeners:
  - name: http
    bind: "127.0.0.1:0"
upstreams:
  app: {{ servers: ["{}"] }}
routes:
  - match: {{ path_prefix: /small }}
    upstream: app
    max_body_bytes: 100
  - match: {{ path_prefix: / }}
    upstream: app
logging: {{ access_log: false }}
"#,
        up.addr
    );
    let gw = TestGateway::start(&yaml).await;
    let addr = gw.addr("http");
    let post = |path: &str, len: usize| {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{}",
            "b".repeat(len)
        );
        raw_exchange_closed(addr, raw, Duration::from_secs(3))
    };
    assert_eq!(status_of(&post("/small", 500).await.0), 413);
    assert_eq!(status_of(&post("/small", 100).await.0), 200);
    assert_eq!(status_of(&post("/other", 500).await.0), 200);
    assert_eq!(status_of(&post("/other", 1025).await.0), 413);
    assert_eq!(up.hits(), 2);
    assert_eq!(up.received(), 600);
}

/// A chunked request of `parts` chunks of `size` bytes each.
fn chunked_request(path: &str, parts: usize, size: usize) -> String {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for _ in 0..parts {
        raw.push_str(&format!("{size:x}\r\n{}\r\n", "c".repeat(size)));
    }
    raw.push_str("0\r\n\r\n");
    raw
}

#[tokio::test]
async fn chunked_body_growing_past_limit_gets_413_when_buffered() {
    let _g = shared().await;
    let up = CountingUpstream::start().await;
    let yaml = simple_yaml(
        up.addr,
        "    request_buffering: true",
        "  max_body_bytes: 1KiB",
    );
    let gw = TestGateway::start(&yaml).await;
    let addr = gw.addr("http");
    let (got, _) =
        raw_exchange_closed(addr, chunked_request("/", 5, 400), Duration::from_secs(3)).await;
    assert_eq!(status_of(&got), 413, "{got}");
    assert_eq!((up.hits(), up.connections(), up.received()), (0, 0, 0));
    // Just under the limit, chunked, is forwarded whole (re-framed with Content-Length).
    let (got, _) =
        raw_exchange_closed(addr, chunked_request("/", 2, 500), Duration::from_secs(3)).await;
    assert_eq!(status_of(&got), 200, "{got}");
    assert!(got.ends_with("\r\n\r\n1000"), "{got}");
}

#[tokio::test]
async fn chunked_body_growing_past_limit_is_cut_when_streamed() {
    let _g = shared().await;
    let up = CountingUpstream::start().await;
    let yaml = simple_yaml(
        up.addr,
        "    request_buffering: false",
        "  max_body_bytes: 1KiB",
    );
    let gw = TestGateway::start(&yaml).await;
    let addr = gw.addr("http");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    // 400 bytes at a time, with pauses so the first chunks really travel upstream first.
    for _ in 0..2 {
        stream
            .write_all(format!("190\r\n{}\r\n", "c".repeat(400)).as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Streaming: the upstream is already reading the body.
    let start = Instant::now();
    while up.received() < 800 && start.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.hits(), 1);
    assert_eq!(up.received(), 800);
    // This chunk takes the body past 1 KiB; what follows should never be read.
    let _ = stream
        .write_all(format!("190\r\n{}\r\n", "c".repeat(400)).as_bytes())
        .await;
    let _ = stream.write_all(b"190\r\n").await;
    let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    assert!(closed);
    assert_eq!(status_of(&got), 413, "{got}");
    assert!(
        up.received() <= 1024,
        "upstream received {} bytes",
        up.received()
    );
    assert_eq!(up.received(), 800);
}

// ---------------------------------------------------------------------------------------------
// max_connections
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connections_over_max_connections_wait_for_a_free_slot() {
    let _g = shared().await;
    let up = TestUpstream::echo().await;
    let yaml = simple_yaml(up.addr, "", "  max_connections: 2");
    let gw = TestGateway::start(&yaml).await;
    let addr = gw.addr("http");
    let request = b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n";

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let res = read_one_response(&mut s, Duration::from_secs(3))
            .await
            .expect("first two connections are served");
        assert_eq!(status_of(&res), 200, "{res}");
        held.push(s); // kept alive, idle
    }

    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_one_response(&mut third, Duration::from_millis(300))
            .await
            .is_none(),
        "third connection was answered while two were held"
    );
    assert_eq!(up.hits(), 2);

    drop(held.pop());
    let res = read_one_response(&mut third, Duration::from_secs(3))
        .await
        .expect("third connection answered once a slot was freed");
    assert_eq!(status_of(&res), 200, "{res}");
    assert!(res.ends_with("GET /third"), "{res}");
}

// ---------------------------------------------------------------------------------------------
// max_connections_per_ip
// ---------------------------------------------------------------------------------------------

/// A connection to `addr` from the loopback address `from` (all of 127/8 is local on Linux).
async fn connect_from(from: &str, addr: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends a GET on `s` and returns the status, or `None` when the connection is closed
/// without an answer.
async fn get_on(s: &mut TcpStream, path: &str) -> Option<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(request.as_bytes()).await.ok()?;
    let res = read_one_response(s, Duration::from_secs(3)).await?;
    Some(status_of(&res))
}

fn refused_per_ip(gw: &TestGateway) -> String {
    let text = gw.gateway.metrics().encode(false);
    let series = "gateway_connections_refused_total{listener=\"http\",reason=\"per_ip_limit\"} ";
    let line = text.lines().find(|l| l.starts_with(series));
    line.unwrap_or("(missing)").to_string()
}

#[tokio::test]
async fn connections_over_max_connections_per_ip_are_closed_at_once() {
    let _g = shared().await;
    let up = TestUpstream::echo().await;
    let yaml = simple_yaml(up.addr, "", "  max_connections_per_ip: 2");
    let gw = TestGateway::start(&yaml).await;
    let addr = gw.addr("http");

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.1", addr).await;
        assert_eq!(get_on(&mut s, "/held").await, Some(200));
        held.push(s);
    }
    // The third from the same address is closed without a byte, before any request is read.
    let mut third = connect_from("127.0.0.1", addr).await;
    let _ = third
        .write_all(b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (got, closed) = read_until_closed(&mut third, Duration::from_secs(3)).await;
    assert!(closed && got.is_empty(), "third connection got {got:?}");
    assert_eq!(up.hits(), 2);
    assert!(
        refused_per_ip(&gw).ends_with(" 1"),
        "{}",
        refused_per_ip(&gw)
    );

    // Another address has its own share.
    let mut other = connect_from("127.0.0.2", addr).await;
    assert_eq!(get_on(&mut other, "/other").await, Some(200));

    // A closed connection gives its slot back (once the gateway has seen it close).
    drop(held.pop());
    let mut served = None;
    for _ in 0..50 {
        let mut s = connect_from("127.0.0.1", addr).await;
        served = get_on(&mut s, "/again").await;
        if served.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served, Some(200), "a slot freed by a closed connection");
}

#[tokio::test]
async fn trusted_proxies_are_not_limited_per_ip() {
    let _g = shared().await;
    let up = TestUpstream::echo().await;
    let server = "  max_connections_per_ip: 1\n  trusted_proxies: [127.0.0.1/32]";
    let gw = TestGateway::start(&simple_yaml(up.addr, "", server)).await;
    let addr = gw.addr("http");

    let mut held = Vec::new();
    for i in 0..3 {
        let mut s = connect_from("127.0.0.1", addr).await;
        assert_eq!(get_on(&mut s, "/lb").await, Some(200), "connection {i}");
        held.push(s);
    }
    // An untrusted address is held to its one connection.
    let mut first = connect_from("127.0.0.3", addr).await;
    assert_eq!(get_on(&mut first, "/a").await, Some(200));
    let mut second = connect_from("127.0.0.3", addr).await;
    assert_eq!(get_on(&mut second, "/b").await, None);
    assert!(
        refused_per_ip(&gw).ends_with(" 1"),
        "{}",
        refused_per_ip(&gw)
    );
}
