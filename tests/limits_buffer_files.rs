//! `server.max_buffer_file_bytes` over real sockets: request bodies buffered to temporary
//! files share one budget, and a body that would pass it gets 503 without reaching the
//! upstream; the space comes back when a buffered body has been sent.
//!
//! The budget is the process's (one gateway per process), so this binary holds one test.

mod common;
mod limits_support;

use std::time::Duration;

use common::*;
use limits_support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A `POST /` head declaring `len` body bytes.
fn post_head(len: usize) -> Vec<u8> {
    format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// Starts an upload that stalls 1.5 MiB into its 2 MiB body (past the 1 MiB memory
/// threshold: in a file), then sends a whole 2 MiB body on another connection; returns that
/// response and the stalled upload's socket.
async fn race_a_stalled_upload(addr: std::net::SocketAddr) -> (String, TcpStream) {
    let body = vec![b'b'; 2 * MIB];
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(&post_head(body.len())).await.unwrap();
    slow.write_all(&body[..STALLED_AT]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut other = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = other.split();
    let (_, (got, closed)) = tokio::join!(
        async {
            let _ = wr.write_all(&post_head(body.len())).await;
            let _ = wr.write_all(&body).await; // may fail once refused
        },
        read_until_closed(&mut rd, Duration::from_secs(5))
    );
    assert!(closed);
    (got, slow)
}

const STALLED_AT: usize = 3 * MIB / 2;

/// Finishes an upload [`race_a_stalled_upload`] left stalled; it must be answered 200.
async fn finish_stalled_upload(mut slow: TcpStream) {
    slow.write_all(&vec![b'b'; 2 * MIB - STALLED_AT])
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(status_of(&got), 200, "{got}");
    assert!(got.ends_with(&(2 * MIB).to_string()), "{got}");
}

/// Slow uploads cannot fill the disk: with room for 3 MiB of buffered bodies, one upload
/// stalled at 1.5 MiB leaves too little for a second 2 MiB body (503, the upstream never
/// sees it); once the first is complete and sent, there is room again. A reload that
/// raises the limit applies at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_max_buffer_file_bytes_get_503() {
    let up = CountingUpstream::start().await;
    let config = |limit: &str| {
        let server = format!("  max_body_bytes: 2MiB\n  max_buffer_file_bytes: {limit}");
        simple_yaml(up.addr, "", &server)
    };
    let gw = TestGateway::start(&config("3MiB")).await;
    let addr = gw.addr("http");

    let (got, slow) = race_a_stalled_upload(addr).await;
    assert_eq!(status_of(&got), 503, "{got}");
    assert!(got.contains("buffer_full"), "{got}");
    assert_eq!(up.hits(), 0, "the upstream saw a request");
    finish_stalled_upload(slow).await;
    assert_eq!(up.hits(), 1);

    // Room again: the first body's share came back once it was sent.
    let (got, slow) = race_a_stalled_upload(addr).await;
    assert_eq!(status_of(&got), 503, "{got}");
    finish_stalled_upload(slow).await;
    assert_eq!(up.hits(), 2);

    // Reloaded with room for both.
    std::fs::write(gw.dir.path().join("gateway.yaml"), config("4MiB")).unwrap();
    gw.gateway.reload_from_file().await.unwrap();
    let (got, slow) = race_a_stalled_upload(addr).await;
    assert_eq!(status_of(&got), 200, "{got}");
    finish_stalled_upload(slow).await;
    assert_eq!(up.hits(), 4);
}
