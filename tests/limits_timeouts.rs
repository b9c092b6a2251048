//! The slow-loris guard over real sockets: `header_read_timeout` cuts off a request head that
//! is partial, trickled a byte at a time, or never sent (also a later head on a keep-alive
//! connection, HTTP/2 prior knowledge without a request, and a later HTTP/2 header block),
//! while keep-alive waits and heads completed in time are served; and a plain listener
//! telling HTTP/2 from HTTP/1.1 when the first bytes arrive split.

mod common;
mod limits_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use limits_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An echo upstream behind a gateway whose request heads get 300 ms (idle_timeout stays long,
/// so only header_read_timeout can close a connection that says nothing).
async fn short_head_timeout() -> (TestUpstream, TestGateway) {
    let up = TestUpstream::echo().await;
    let yaml = simple_yaml(
        up.addr,
        "",
        "  header_read_timeout: 300ms\n  idle_timeout: 60s",
    );
    let gw = TestGateway::start(&yaml).await;
    (up, gw)
}

/// Waits for the gateway to close `stream`, writing one more byte of an unfinished head every
/// 50 ms when `trickle` (bytes keep arriving, the head never completes). Panics on any answer
/// or if still open after 3 s; returns how long the close took.
async fn closed_after(stream: &mut TcpStream, trickle: bool) -> Duration {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "connection (trickle: {trickle}) still open after 3 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        if trickle && stream.write_all(b"a").await.is_err() {
            return start.elapsed();
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(n)) => panic!("unexpected answer {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
}

#[tokio::test]
async fn partial_request_head_is_cut_off_after_header_read_timeout() {
    let _g = shared().await;
    let (up, gw) = short_head_timeout().await;
    let addr = gw.addr("http");

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let start = Instant::now();
    let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    let elapsed = start.elapsed();
    assert!(closed, "connection still open after 3 s");
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(1),
        "closed after {elapsed:?}"
    );
    // hyper closes without writing anything (no 408).
    assert_eq!(got, "", "unexpected bytes before close");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn trickled_request_head_does_not_extend_header_read_timeout() {
    let _g = shared().await;
    let (up, gw) = short_head_timeout().await;
    let mut stream = TcpStream::connect(gw.addr("http")).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // One byte every 50 ms: bytes keep arriving, but the head never completes.
    let closed_after = closed_after(&mut stream, true).await;
    assert!(
        closed_after < Duration::from_secs(1),
        "closed after {closed_after:?}"
    );
    assert_eq!(up.hits(), 0);
}

/// Keep-alive idle is `idle_timeout`'s business, not `header_read_timeout`'s: a connection
/// that waits longer than header_read_timeout between two requests still gets its second
/// answer (hyper's own header timer, no longer used, also ran between requests).
#[tokio::test]
async fn keep_alive_wait_longer_than_header_read_timeout_is_served() {
    let _g = shared().await;
    let (up, gw) = short_head_timeout().await;
    let mut stream = TcpStream::connect(gw.addr("http")).await.unwrap();
    let request = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(request).await.unwrap();
    let first = read_one_response(&mut stream, Duration::from_secs(3)).await;
    assert_eq!(first.as_deref().map(status_of), Some(200), "{first:?}");
    tokio::time::sleep(Duration::from_millis(900)).await;
    stream.write_all(request).await.unwrap();
    let second = read_one_response(&mut stream, Duration::from_secs(3)).await;
    assert_eq!(second.as_deref().map(status_of), Some(200), "{second:?}");
    assert_eq!(up.hits(), 2);
}

/// A later request's head on a keep-alive connection is timed from its first byte: sent in
/// part and then left, or trickled a byte every 50 ms, it is cut off after
/// header_read_timeout, without an answer and without reaching the upstream.
#[tokio::test]
async fn later_request_head_is_bounded_by_header_read_timeout() {
    let _g = shared().await;
    let (up, gw) = short_head_timeout().await;
    for trickle in [false, true] {
        let mut stream = TcpStream::connect(gw.addr("http")).await.unwrap();
        stream
            .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let first = read_one_response(&mut stream, Duration::from_secs(3)).await;
        assert_eq!(first.as_deref().map(status_of), Some(200), "{first:?}");
        // Idle for longer than header_read_timeout first: that is allowed.
        tokio::time::sleep(Duration::from_millis(400)).await;
        stream
            .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        let closed_after = closed_after(&mut stream, trickle).await;
        assert!(
            closed_after >= Duration::from_millis(250) && closed_after < Duration::from_secs(1),
            "trickle: {trickle}: closed after {closed_after:?}"
        );
    }
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn silent_connection_is_closed_after_header_read_timeout() {
    let _g = shared().await;
    let (_up, gw) = short_head_timeout().await;
    let mut stream = TcpStream::connect(gw.addr("http")).await.unwrap();
    let start = Instant::now();
    let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    assert!(
        closed,
        "a connection that sent nothing is still open after 3 s"
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(got, "");
}

/// HTTP/2 with prior knowledge on a plain listener: a client that stops part-way through the
/// preface, or sends it and never a request, is cut off after header_read_timeout too.
#[tokio::test]
async fn h2_prior_knowledge_without_a_request_is_closed_after_header_read_timeout() {
    let _g = shared().await;
    let (_up, gw) = short_head_timeout().await;
    let whole = [H2_PREFACE, &[0, 0, 0, 4, 0, 0, 0, 0, 0]].concat();
    for sent in [&H2_PREFACE[..10], &whole[..]] {
        let mut stream = TcpStream::connect(gw.addr("http")).await.unwrap();
        let start = Instant::now();
        stream.write_all(sent).await.unwrap();
        let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(closed, "still open 5 s after sending {} bytes", sent.len());
        let took = start.elapsed();
        assert!(took < Duration::from_millis(2500), "closed after {took:?}");
    }
}

/// Every request on an HTTP/2 connection gets header_read_timeout, not only the first: a
/// header block split over two writes in time is served, a wait between requests longer than
/// the timeout is idle (allowed), but a later HEADERS frame whose block never ends (left
/// open, or kept open by a CONTINUATION every 50 ms) closes the connection after ~300 ms
/// without an answer, though idle_timeout is a minute.
#[tokio::test]
async fn h2_later_header_block_is_cut_off_after_header_read_timeout() {
    let _g = shared().await;
    let (up, gw) = short_head_timeout().await;
    for trickle in [false, true] {
        let mut conn = TcpStream::connect(gw.addr("http")).await.unwrap();
        let first = [
            H2_PREFACE,
            &h2_frame(H2_SETTINGS, 0, 0, &[]),
            &h2_frame(H2_HEADERS, H2_END_STREAM, 1, GET_FIRST_HALF),
        ]
        .concat();
        conn.write_all(&first).await.unwrap();
        let mut bytes = Vec::new(); // all the server sends
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rest = h2_frame(H2_CONTINUATION, H2_END_HEADERS, 1, GET_SECOND_HALF);
        conn.write_all(&rest).await.unwrap();
        assert!(
            h2_frame_arrives(&mut conn, &mut bytes, H2_HEADERS, 1).await,
            "first request not answered"
        );
        conn.write_all(&h2_frame(H2_SETTINGS, 0x1, 0, &[]))
            .await
            .unwrap(); // SETTINGS ACK

        tokio::time::sleep(Duration::from_millis(500)).await;
        let hits = up.hits();
        conn.write_all(&h2_frame(H2_HEADERS, H2_END_STREAM, 3, GET_FIRST_HALF))
            .await
            .unwrap();
        let start = Instant::now();
        let closed = loop {
            if start.elapsed() > Duration::from_secs(5) {
                break false;
            }
            if trickle {
                // One more `x: y` field each time (literal, not indexed).
                let more = h2_frame(H2_CONTINUATION, 0, 3, &[0x00, 0x01, b'x', 0x01, b'y']);
                if conn.write_all(&more).await.is_err() {
                    break true;
                }
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_millis(50), conn.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        };
        let took = start.elapsed();
        assert!(closed, "trickle {trickle}: still open after {took:?}");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(2500),
            "trickle {trickle}: closed after {took:?}"
        );
        let answered = h2_frames(&bytes).iter().any(|&(_, stream)| stream == 3);
        assert!(
            !answered,
            "trickle {trickle}: stream 3 was answered: {bytes:?}"
        );
        assert_eq!(
            up.hits(),
            hits,
            "trickle {trickle}: the upstream saw the unfinished request"
        );
    }
}

/// Writes the first `split` bytes, pauses, then passes everything through: a client whose
/// opening bytes arrive in two TCP segments.
struct PausedStart {
    inner: TcpStream,
    split: usize,
    written: usize,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl tokio::io::AsyncRead for PausedStart {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PausedStart {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::{ready, Poll};
        let this = &mut *self;
        if this.written < this.split {
            let n = buf.len().min(this.split - this.written);
            let n = ready!(std::pin::Pin::new(&mut this.inner).poll_write(cx, &buf[..n]))?;
            this.written += n;
            if this.written == this.split {
                this.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
            }
            return Poll::Ready(Ok(n));
        }
        if let Some(pause) = &mut this.pause {
            ready!(std::future::Future::poll(pause.as_mut(), cx));
            this.pause = None;
        }
        std::pin::Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A plain listener tells HTTP/2 (prior knowledge) from HTTP/1.1 by the first bytes, also
/// when they arrive split: a preface cut after 10 bytes is still HTTP/2, and an HTTP/1.1
/// request whose first segment is just "P" (a prefix of the preface) is still HTTP/1.1.
#[tokio::test]
async fn plain_listener_tells_http2_from_http1_when_the_first_bytes_arrive_split() {
    let _g = shared().await;
    let up = TestUpstream::echo().await;
    let yaml = simple_yaml(up.addr, "", "  header_read_timeout: 2s");
    let gw = TestGateway::start(&yaml).await;

    let tcp = TcpStream::connect(gw.addr("http")).await.unwrap();
    let io = PausedStart {
        inner: tcp,
        split: 10,
        written: 0,
        pause: None,
    };
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{}/ok", gw.addr("http")))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .expect("h2 response in time")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.ends_with(b"GET /ok"), "{body:?}");

    let mut stream = TcpStream::connect(gw.addr("http")).await.unwrap();
    stream.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream
        .write_all(b"OST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(status_of(&got), 200, "{got}");
    assert!(got.ends_with("POST /ok"), "{got}");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn request_head_completed_in_time_is_served() {
    let _g = shared().await;
    let (up, gw) = short_head_timeout().await;
    let mut stream = TcpStream::connect(gw.addr("http")).await.unwrap();
    // In two parts, 150 ms apart: slow but within the 300 ms budget.
    stream.write_all(b"GET /ok HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    stream
        .write_all(b"Host: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    assert!(closed);
    assert_eq!(status_of(&got), 200, "{got}");
    assert!(got.ends_with("GET /ok"), "{got}");
    assert_eq!(up.hits(), 1);
}

/// An HTTP/2 upload that stops arriving ends after `idle_timeout` (here 500 ms), as on
/// HTTP/1.1: the stream gets a 400 and is reset, the upstream never sees the request
/// (buffered), and the connection still serves a new request.
#[tokio::test]
async fn h2_stalled_request_body_times_out() {
    let _g = shared().await;
    let up = TestUpstream::echo().await;
    let yaml = simple_yaml(up.addr, "", "  idle_timeout: 500ms");
    let gw = TestGateway::start(&yaml).await;
    let mut conn = TcpStream::connect(gw.addr("http")).await.unwrap();
    // POST / with `content-length: 10`, then 5 bytes of body and nothing more.
    let mut post = vec![0x83, 0x86];
    post.extend_from_slice(GET_SECOND_HALF);
    post.extend_from_slice(&[0x0f, 0x0d, 0x02, b'1', b'0']);
    let first = [
        H2_PREFACE,
        &h2_frame(H2_SETTINGS, 0, 0, &[]),
        &h2_frame(H2_HEADERS, H2_END_HEADERS, 1, &post),
        &h2_frame(0x0, 0, 1, b"hello"),
    ]
    .concat();
    conn.write_all(&first).await.unwrap();
    let start = Instant::now();
    let mut bytes = Vec::new();
    assert!(
        h2_frame_arrives(&mut conn, &mut bytes, H2_RST_STREAM, 1).await,
        "stream 1 not ended: {:?}",
        h2_frames(&bytes)
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
        "stream ended after {took:?}"
    );
    // The answer before the reset: HEADERS whose block opens with `:status 400` (HPACK
    // static table entry 12).
    let (frames, _) = h2_parse(&bytes);
    let status = frames
        .iter()
        .find(|&&(kind, _, stream, _)| kind == H2_HEADERS && stream == 1)
        .and_then(|(_, _, _, block)| block.first().copied());
    assert_eq!(status, Some(0x8c), "{:?}", h2_frames(&bytes));
    assert_eq!(up.hits(), 0, "the upstream saw the stalled request");

    // The connection is still good for another request.
    conn.write_all(&h2_frame(H2_SETTINGS, 0x1, 0, &[]))
        .await
        .unwrap(); // SETTINGS ACK
    conn.write_all(&h2_get(3, "/")).await.unwrap();
    assert!(
        h2_frame_arrives(&mut conn, &mut bytes, H2_HEADERS, 3).await,
        "stream 3 not answered"
    );
}

/// An HTTP/2 client that keeps its stream's flow-control window shut (initial window 0,
/// never a WINDOW_UPDATE) while answering every PING holds nothing for ever: a response
/// that waits `idle_timeout` (here 500 ms) for the client closes the connection, as a
/// client that stops reading does on HTTP/1.1.
#[tokio::test]
async fn h2_response_the_client_never_takes_is_cut_off() {
    let _g = shared().await;
    let up = CountingUpstream::start().await;
    let yaml = simple_yaml(up.addr, "", "  idle_timeout: 500ms");
    let gw = TestGateway::start(&yaml).await;
    let mut conn = TcpStream::connect(gw.addr("http")).await.unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 0.
    let settings = h2_frame(H2_SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]);
    let request = h2_get(1, "/download/999999");
    conn.write_all(&[H2_PREFACE, &settings, &request].concat())
        .await
        .unwrap();
    let start = Instant::now();
    let (all, closed) = h2_read_answering_pings(&mut conn, Duration::from_secs(5)).await;
    let took = start.elapsed();
    assert!(closed, "still open after {took:?}: {:?}", h2_frames(&all));
    // Two to three checks of idle_timeout / 2 after the response began to wait.
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2500),
        "closed after {took:?}"
    );
    assert!(
        h2_frames(&all).contains(&(H2_HEADERS, 1)),
        "the response head was sent"
    );
}
