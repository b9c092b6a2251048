//! The gateway out of file descriptors (its binary under `ulimit -n 64`, hard limit too, so
//! it cannot raise it): it says so at start, a connection it cannot accept waits in the
//! backlog, and an upstream connect that fails for want of a descriptor is a 503 of its
//! own (`overloaded`) that does not count against the server. Before, the server was
//! blamed and ejected, and requests kept failing with 503 after the pressure was gone.

mod common;

use std::time::Duration;

use common::*;
use http::{HeaderValue, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const OPEN_FILES: u32 = 64;

/// An upstream that closes every connection after its answer, so that each proxied request
/// needs a fresh upstream connection (a descriptor) rather than a pooled one.
async fn closing_upstream() -> TestUpstream {
    TestUpstream::start(|_| async {
        let mut res = Response::new(full("ok"));
        res.headers_mut()
            .insert("connection", HeaderValue::from_static("close"));
        res
    })
    .await
}

/// Sends a GET on `s`; the status, or `None` if no answer came within `wait`.
async fn get_on(s: &mut TcpStream, wait: Duration) -> Option<(u16, String)> {
    s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let res = read_one_response(s, wait).await?;
    Some((status_of(&res), res))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_is_a_503_that_does_not_eject_the_server() {
    let up = closing_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
server: {{ worker_threads: 1 }}
listeners:
  - {{ name: http, bind: "127.0.0.1:{port}" }}
upstreams:
  app:
    servers: ["{}"]
    retries: 1
    passive: {{ consecutive_failures: 1, eject_for: 60s }}
routes:
  - {{ match: {{ path_prefix: / }}, upstream: app }}
logging: {{ access_log: false }}
"#,
            up.addr
        ),
    )
    .unwrap();
    let gw = Running::start_with_open_files(&config, OPEN_FILES);
    gw.wait_log("the start", |log| log.contains("gateway started"))
        .await;
    assert!(
        gw.stderr().contains("open-file limit is below"),
        "no warning about the limit:\n{}",
        gw.stderr()
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Fill the gateway's descriptor table with served, idle keep-alive connections. The
    // first request that cannot be served either finds no descriptor for its upstream
    // connection (503 overloaded), or its connection was not even accepted (it waits in the
    // kernel's backlog): then one descriptor back lets it in, with none for the upstream.
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..OPEN_FILES {
        let mut s = TcpStream::connect(addr).await.unwrap();
        match get_on(&mut s, Duration::from_millis(500)).await {
            Some((200, _)) => held.push(s),
            Some((_, res)) => {
                refused = Some(res);
                break;
            }
            None => {
                drop(held.pop());
                let res = read_one_response(&mut s, Duration::from_secs(5)).await;
                refused = Some(res.expect("the waiting connection was never answered"));
                break;
            }
        }
    }
    let res = refused.expect("the descriptor table never filled");
    assert!(held.len() > 10, "only {} connections fit", held.len());
    assert_eq!(status_of(&res), 503, "{res}");
    assert!(res.contains(r#""error":"overloaded""#), "{res}");
    gw.wait_log("the warning", |log| log.contains("out of file descriptors"))
        .await;

    // Pressure gone: the server was not ejected, the next request is served.
    held.truncate(held.len() - 5);
    let mut served = None;
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if let Some(answer) = get_on(&mut s, Duration::from_millis(500)).await {
            served = Some(answer);
            break;
        }
    }
    let (status, res) = served.expect("no answer after descriptors came back");
    assert_eq!(status, 200, "{res}");
    // (Panic mode would serve from an ejected lone server too: the log says it was not.)
    let log = gw.stderr();
    assert!(!log.contains("server ejected"), "{log}");
    assert!(!log.contains("panic mode"), "{log}");
}
