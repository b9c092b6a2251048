//! Request smuggling and bad framing sent as raw bytes: unknown transfer codings, conflicting
//! or malformed Content-Length, malformed header names, Content-Length together with
//! Transfer-Encoding (also after earlier requests on a keep-alive connection), and pipelined
//! smuggling attempts, all refused with 400 and a close before reaching the upstream.

mod common;
mod limits_support;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use limits_support::*;

async fn expect_400_closed(addr: SocketAddr, raw: &str, up: &TestUpstream) {
    let (got, closed) = raw_exchange_closed(addr, raw, Duration::from_secs(3)).await;
    assert_eq!(status_of(&got), 400, "{raw:?} -> {got}");
    assert!(closed, "connection left open after 400 for {raw:?}");
    assert_eq!(up.hits(), 0, "upstream hit for {raw:?}");
}

#[tokio::test]
async fn bad_framing_is_rejected_before_the_upstream() {
    let _g = shared().await;
    let up = TestUpstream::echo().await;
    let gw = TestGateway::start(&simple_yaml(up.addr, "", "")).await;
    let addr = gw.addr("http");
    // A coding other than chunked: the body length is unknowable.
    expect_400_closed(
        addr,
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        &up,
    )
    .await;
    expect_400_closed(
        addr,
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        &up,
    )
    .await;
    // Two differing Content-Lengths.
    expect_400_closed(
        addr,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        &up,
    )
    .await;
    expect_400_closed(
        addr,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 5\r\n\r\nabcde",
        &up,
    )
    .await;
    // An empty header name.
    expect_400_closed(addr, "GET / HTTP/1.1\r\nHost: x\r\n: x\r\n\r\n", &up).await;
    // Whitespace between a header name and its colon (RFC 9112 §5.1).
    expect_400_closed(
        addr,
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nabcde",
        &up,
    )
    .await;
    expect_400_closed(addr, "GET / HTTP/1.1\r\nHost : x\r\n\r\n", &up).await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_and_closes() {
    let _g = shared().await;
    for buffering in [true, false] {
        let up = TestUpstream::echo().await;
        let extra = format!("    request_buffering: {buffering}");
        let gw = TestGateway::start(&simple_yaml(up.addr, &extra, "")).await;
        let addr = gw.addr("http");
        for framing in [
            "Content-Length: 3\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked\r\nContent-Length: 3",
            "transfer-encoding: gzip, chunked\r\ncontent-length: 3",
        ] {
            let raw = format!(
                "POST /both HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            );
            let (got, closed) = raw_exchange_closed(addr, raw, Duration::from_secs(3)).await;
            // hyper alone would frame it by Transfer-Encoding and drop Content-Length (in
            // the TE-first order without a trace); the gateway refuses it outright.
            assert_eq!(status_of(&got), 400, "{framing:?} -> {got}");
            assert!(closed, "connection kept open after {framing:?}");
            assert_eq!(up.hits(), 0, "{framing:?} reached the upstream");
        }
        // The same after ordinary requests on one keep-alive connection, the first with a
        // body: the gateway follows the request stream to the right head.
        let raw = "GET /first HTTP/1.1\r\nHost: x\r\n\r\n\
                   POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n\
                   POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n\
                   POST /third HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
        let (got, closed) = raw_exchange_closed(addr, raw.to_owned(), Duration::from_secs(3)).await;
        let statuses: Vec<&str> = got
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &got[i + 9..i + 12])
            .collect();
        assert_eq!(statuses, ["200", "200", "400"], "{got}");
        assert!(closed);
        assert_eq!(up.hits(), 2);
    }
}

#[tokio::test]
async fn pipelined_smuggling_attempt_never_reaches_upstream() {
    let _g = shared().await;
    for buffering in [true, false] {
        let up = TestUpstream::echo().await;
        let extra = format!("    request_buffering: {buffering}");
        let gw = TestGateway::start(&simple_yaml(up.addr, &extra, "")).await;
        let addr = gw.addr("http");
        for framing in [
            "Content-Length: 5\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked\r\nContent-Length: 5",
        ] {
            let raw = format!(
                "POST / HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n0\r\n\r\n\
                 GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
            );
            let (got, closed) = raw_exchange_closed(addr, raw, Duration::from_secs(3)).await;
            assert!(closed, "{got}");
            assert_eq!(
                got.matches("HTTP/1.1 ").count(),
                1,
                "more than one response: {got}"
            );
            // Also a CL.TE desync aimed at a pooled upstream connection: the next request
            // on a fresh client connection must be the only other thing the upstream sees.
            let (next, _) = raw_exchange_closed(
                addr,
                "GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                Duration::from_secs(3),
            )
            .await;
            assert_eq!(status_of(&next), 200, "{next}");
            assert!(next.ends_with("GET /next"), "{next}");
        }
        let paths: Vec<String> = up
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.uri.path().to_owned())
            .collect();
        assert!(
            !paths.iter().any(|p| p.contains("smuggled")),
            "upstream saw {paths:?}"
        );
        // The ambiguous request itself is refused (400) before any upstream work.
        assert!(paths.iter().all(|p| p == "/next"), "{paths:?}");
    }
}
