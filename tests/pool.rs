//! The upstream connection pool over real sockets: keep-alive reuse, connections the
//! upstream closes between requests replaced transparently, the idle cap, and connect
//! retries of requests that never left (streamed ones included).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get_ok(client: &reqwest::Client, url: &str) -> String {
    let res = client.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200, "GET {url}");
    res.text().await.unwrap()
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let up = TestUpstream::echo().await;
    let gw = TestGateway::start(&simple_yaml(up.addr, "", "")).await;
    let client = client();
    for i in 0..50 {
        let body = get_ok(&client, &gw.url("http", &format!("/n/{i}?q=1"))).await;
        assert_eq!(body, format!("GET /n/{i}?q=1"));
    }
    assert_eq!(up.hits(), 50);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bodiless_responses_free_their_connection_at_once() {
    let up = TestUpstream::start(|_| async {
        let mut res = Response::new(full(""));
        *res.status_mut() = StatusCode::NO_CONTENT;
        res
    })
    .await;
    let gw = TestGateway::start(&simple_yaml(up.addr, "", "")).await;
    let client = client();
    for _ in 0..10 {
        let res = client.get(gw.url("http", "/")).send().await.unwrap();
        assert_eq!(res.status(), 204);
        let res = client.head(gw.url("http", "/")).send().await.unwrap();
        assert_eq!(res.status(), 204);
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn upstream_connection_close_is_replaced_transparently() {
    let up = TestUpstream::start(|_| async {
        let mut res = Response::new(full("bye"));
        res.headers_mut()
            .insert("connection", http::HeaderValue::from_static("close"));
        res
    })
    .await;
    let gw = TestGateway::start(&simple_yaml(up.addr, "", "")).await;
    let client = client();
    for _ in 0..20 {
        assert_eq!(get_ok(&client, &gw.url("http", "/")).await, "bye");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 20);
}

/// A keep-alive upstream that closes a connection after `idle` without a request (as
/// Gunicorn's `--keep-alive` does), without announcing it. Counts accepted connections.
async fn idle_closing_upstream(idle: Duration) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // GET requests only: a head is the whole request.
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return, // idle too long, EOF or error: close
                        }
                    }
                    buf.clear();
                    let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(response).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn connections_the_upstream_closed_while_idle_are_replaced() {
    let (addr, accepted) = idle_closing_upstream(Duration::from_millis(30)).await;
    let gw = TestGateway::start(&simple_yaml(addr, "", "")).await;
    let client = client();
    for i in 0..20 {
        assert_eq!(get_ok(&client, &gw.url("http", "/")).await, "ok");
        // Every other gap outlasts the upstream's keep-alive.
        let gap = if i % 2 == 0 { 60 } else { 1 };
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
    // At least one per long gap; short gaps reuse (unless the machine stalls past 30ms).
    let accepted = accepted.load(Ordering::SeqCst);
    assert!((10..=20).contains(&accepted), "{accepted} connections");
}

#[tokio::test]
async fn idle_connections_are_capped_per_server() {
    let up = TestUpstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Response::new(full("slow"))
    })
    .await;
    let extra = "    pool: { max_idle_per_server: 2, idle_timeout: 60s }";
    let gw = TestGateway::start(&simple_yaml(up.addr, extra, "")).await;
    let client = client();
    let url = gw.url("http", "/");
    let burst = || {
        let requests: Vec<_> = (0..5).map(|_| get_ok(&client, &url)).collect();
        futures_util::future::join_all(requests)
    };
    burst().await;
    assert_eq!(up.connections.load(Ordering::SeqCst), 5);
    // Two of the five were kept; the next burst needs three new ones.
    burst().await;
    assert_eq!(up.connections.load(Ordering::SeqCst), 8);
}

#[tokio::test]
async fn pooling_can_be_turned_off() {
    let up = TestUpstream::echo().await;
    let extra = "    pool: { max_idle_per_server: 0 }";
    let gw = TestGateway::start(&simple_yaml(up.addr, extra, "")).await;
    let client = client();
    for _ in 0..3 {
        get_ok(&client, &gw.url("http", "/")).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn streamed_request_is_retried_when_the_connect_fails() {
    // A failed connect never touched the body, so even a streamed one can go elsewhere.
    let up = TestUpstream::echo().await;
    let dead = closed_port().await;
    let yaml = format!(
        r#"
listeners: [{{ name: http, bind: "127.0.0.1:0" }}]
upstreams:
  app: {{ servers: ["{dead}", "{live}"], retries: 1, request_buffering: false }}
routes: [{{ match: {{ path_prefix: / }}, upstream: app }}]
logging: {{ access_log: false }}
"#,
        live = up.addr
    );
    let gw = TestGateway::start(&yaml).await;
    let client = client();
    for i in 0..4 {
        let chunks = vec![Ok::<_, std::io::Error>("pay"), Ok("load")];
        let res = client
            .post(gw.url("http", &format!("/s/{i}")))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(up.last().body, "payload");
    }
    assert_eq!(up.hits(), 4);
}
