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

/// Slow uploads cannot fill the disk: with room for 3 MiB of buffered bodies, one upload
/// stalled at 1.5 MiB leaves too little for a second 2 MiB body (503, the upstream never
/// sees it); once the first is complete and sent, a third fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_max_buffer_file_bytes_get_503() {
    let up = CountingUpstream::start().await;
    let yaml = simple_yaml(
        up.addr,
        "",
        "  max_body_bytes: 2MiB\n  max_buffer_file_bytes: 3MiB",
    );
    let gw = TestGateway::start(&yaml).await;
    let addr = gw.addr("http");
    let body = vec![b'b'; 2 * MIB];
    let stalled_at = 3 * MIB / 2;

    // A: 1.5 MiB of its 2 MiB, then nothing (in a file: past the 1 MiB memory threshold).
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(&post_head(body.len())).await.unwrap();
    slow.write_all(&body[..stalled_at]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // B: a whole 2 MiB body finds 1.5 MiB of room.
    let mut refused = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = refused.split();
    let (_, (got, closed)) = tokio::join!(
        async {
            let _ = wr.write_all(&post_head(body.len())).await;
            let _ = wr.write_all(&body).await; // may fail once refused
        },
        read_until_closed(&mut rd, Duration::from_secs(5))
    );
    assert!(closed);
    assert_eq!(status_of(&got), 503, "{got}");
    assert!(got.contains("buffer_full"), "{got}");
    assert_eq!(up.hits(), 0, "the upstream saw a request");

    // A completes: buffered whole, sent, answered; its file space is given back.
    slow.write_all(&body[stalled_at..]).await.unwrap();
    let (got, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(status_of(&got), 200, "{got}");
    assert!(got.ends_with(&body.len().to_string()), "{got}");

    // C: room again.
    let mut later = TcpStream::connect(addr).await.unwrap();
    later.write_all(&post_head(body.len())).await.unwrap();
    later.write_all(&body).await.unwrap();
    let (got, _) = read_until_closed(&mut later, Duration::from_secs(5)).await;
    assert_eq!(status_of(&got), 200, "{got}");
    assert_eq!(up.hits(), 2);
}
