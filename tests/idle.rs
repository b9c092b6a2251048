//! Idle connections over real sockets: an HTTP/2 connection is idle when no request is in
//! flight, whatever frames keep arriving, and closes `idle_timeout` after its last request;
//! one with a request still in flight is not idle.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

/// An HTTP/2 (prior knowledge) client to `gw` that PINGs every 100 ms, idle or not; the
/// returned task ends when the gateway closes the connection.
async fn pinging_client(
    gw: &TestGateway,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpStream::connect(gw.addr("http"))
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

fn get(gw: &TestGateway, path: &str) -> Request<http_body_util::Empty<Bytes>> {
    Request::get(format!("http://{}{path}", gw.addr("http")))
        .body(http_body_util::Empty::new())
        .unwrap()
}

#[tokio::test]
async fn http2_pings_do_not_keep_an_idle_connection_open() {
    let up = TestUpstream::echo().await;
    let gw = TestGateway::start(&simple_yaml(up.addr, "", "  idle_timeout: 1s")).await;
    let (mut send, conn) = pinging_client(&gw).await;
    let resp = send.send_request(get(&gw, "/a")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let idle_from = Instant::now();
    // Ten PINGs a second, no request: closed about idle_timeout after the last request.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the gateway closed the pinging idle connection")
        .unwrap();
    let took = idle_from.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3000),
        "closed {took:?} after the last request"
    );
}

#[tokio::test]
async fn http2_connection_with_a_request_in_flight_is_not_idle() {
    // The upstream's answer takes longer than idle_timeout to arrive.
    let up = TestUpstream::start(|_seen| async {
        tokio::time::sleep(Duration::from_millis(1800)).await;
        hyper::Response::new(full("late"))
    })
    .await;
    let gw = TestGateway::start(&simple_yaml(up.addr, "", "  idle_timeout: 1s")).await;
    let (mut send, _conn) = pinging_client(&gw).await;
    let resp = send.send_request(get(&gw, "/slow")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "late");
    // Not told to go away while it waited: the connection takes another request.
    let again = send.send_request(get(&gw, "/again")).await.unwrap();
    assert_eq!(again.status(), 200);
}
