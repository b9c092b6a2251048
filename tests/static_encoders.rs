//! Responses compressed while they stream hold an encoder (~0.5 MiB gzip, ~1.7 MiB brotli)
//! until done; a client that stops reading keeps it until the stall timer. At most
//! `MAX_STREAMING_ENCODERS` (32) exist at once in the process; past that a large file goes
//! out uncompressed. Alone in its test binary: the cap is process-wide.

mod common;
mod static_support;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use static_support::*;
use tokio::net::TcpStream;

const CAP: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_encoders_are_capped_and_large_files_fall_back_to_identity() {
    let site = Site::start().await;
    // One HTTP/2 connection whose streams never open their flow-control window: each
    // compressed response, once its head is out, holds its encoder.
    let tcp = TcpStream::connect(site.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = || {
        http::Request::get(site.url("/assets/big.txt"))
            .header("accept-encoding", "gzip")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap()
    };
    let mut held = Vec::new();
    for i in 0..CAP {
        let res = send.send_request(request()).await.unwrap();
        assert_eq!(res.headers()["content-encoding"], "gzip", "response {i}");
        held.push(res);
    }
    // The next one gets the file as it is stored, with its length.
    let res = send.send_request(request()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(!res.headers().contains_key("content-encoding"));
    assert_eq!(
        res.headers()["content-length"],
        big_text().len().to_string().as_str()
    );
    drop(res);

    // Streams the client gives up on give their encoders back.
    drop(held);
    drop(send);
    let mut compressed = false;
    for _ in 0..100 {
        let (_, headers, body) = fetch(
            &reqwest::Client::new(),
            &site.url("/assets/big.txt"),
            &[("accept-encoding", "gzip")],
        )
        .await;
        if headers.get("content-encoding").is_some() {
            assert_eq!(decode(&body, Some("gzip")).await, big_text());
            compressed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(compressed, "no encoder came back");
}
