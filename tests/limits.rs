//! Limits over real sockets: the slow-loris guard, header and body size limits, request
//! buffering, bounded memory while streaming large bodies, the connection limit, and
//! request-smuggling / bad-framing attempts sent as raw bytes.

mod common;

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The memory test measures the whole test process, so it runs alone: every other test here
/// holds this lock shared, the memory test holds it exclusively.
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().await
}

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn checksum(data: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

// ---------------------------------------------------------------------------------------------
// 1. header_read_timeout (slow loris)
// ---------------------------------------------------------------------------------------------

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
    let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let whole = [preface, &[0, 0, 0, 4, 0, 0, 0, 0, 0]].concat();
    for sent in [&preface[..10], &whole[..]] {
        let mut stream = TcpStream::connect(gw.addr("http")).await.unwrap();
        let start = Instant::now();
        stream.write_all(sent).await.unwrap();
        let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(closed, "still open 5 s after sending {} bytes", sent.len());
        let took = start.elapsed();
        assert!(took < Duration::from_millis(2500), "closed after {took:?}");
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

// ---------------------------------------------------------------------------------------------
// 2. max_header_bytes
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
// 3. max_body_bytes
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 upstream that counts body bytes as they arrive without keeping them, and can
/// stream a large response: `GET /download/N` answers N bytes; anything else answers the
/// number of body bytes it received.
struct CountingUpstream {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingUpstream {
    async fn start() -> CountingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (received2, hits2, conns2) = (received.clone(), hits.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns2.fetch_add(1, Ordering::SeqCst);
                let (received, hits) = (received2.clone(), hits2.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (received, hits) = (received.clone(), hits.clone());
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let download = req
                                .uri()
                                .path()
                                .strip_prefix("/download/")
                                .map(|n| n.parse::<u64>().unwrap());
                            let mut body = req.into_body();
                            let mut mine = 0u64;
                            while let Some(frame) = body.frame().await {
                                let Ok(frame) = frame else {
                                    // Truncated body: the gateway cut the stream.
                                    return Err("client body failed");
                                };
                                if let Some(data) = frame.data_ref() {
                                    mine += data.len() as u64;
                                    received.fetch_add(data.len() as u64, Ordering::SeqCst);
                                }
                            }
                            Ok::<_, &'static str>(match download {
                                Some(n) => Response::new(streamed_body(n)),
                                None => Response::new(full(mine.to_string())),
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        CountingUpstream {
            addr,
            received,
            hits,
            connections,
            task,
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const CHUNK: usize = 64 * KIB;

/// `len` bytes generated on the fly, 64 KiB at a time.
fn generated_chunks(len: u64) -> impl futures_util::Stream<Item = Bytes> + Send + 'static {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= len {
                return None;
            }
            let n = (len - sent).min(CHUNK as u64) as usize;
            Some((chunk.slice(..n), sent + n as u64))
        }
    })
}

fn streamed_body(len: u64) -> TestBody {
    let frames = generated_chunks(len).map(|b| Ok::<_, BoxError>(Frame::data(b)));
    BodyExt::boxed(StreamBody::new(frames))
}

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

impl CountingUpstream {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
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
// 4. request buffering
// ---------------------------------------------------------------------------------------------

/// Sends a 3-part chunked body over ~600 ms; returns the upstream connection count seen just
/// before the last part, and the response.
async fn trickle_three_chunks(addr: SocketAddr, up: &TestUpstream) -> (usize, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /trickle HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    for part in [b"part1-", b"part2-"] {
        stream.write_all(b"6\r\n").await.unwrap();
        stream.write_all(part).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let before_last = up.connections.load(Ordering::SeqCst);
    stream.write_all(b"5\r\npart3\r\n0\r\n\r\n").await.unwrap();
    let (got, _) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    (before_last, got)
}

#[tokio::test]
async fn buffered_request_reaches_upstream_only_once_complete() {
    let _g = shared().await;
    let up = TestUpstream::echo().await;
    let yaml = simple_yaml(up.addr, "    request_buffering: true", "");
    let gw = TestGateway::start(&yaml).await;
    let (before_last, got) = trickle_three_chunks(gw.addr("http"), &up).await;
    assert_eq!(
        before_last, 0,
        "upstream contacted before the body was complete"
    );
    assert_eq!(status_of(&got), 200, "{got}");
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    let seen = up.last();
    assert_eq!(&seen.body[..], b"part1-part2-part3");
    assert_eq!(seen.headers["content-length"], "17");
    assert!(seen.headers.get("transfer-encoding").is_none());
}

#[tokio::test]
async fn streamed_request_reaches_upstream_before_body_is_complete() {
    let _g = shared().await;
    let up = TestUpstream::echo().await;
    let yaml = simple_yaml(up.addr, "    request_buffering: false", "");
    let gw = TestGateway::start(&yaml).await;
    let (before_last, got) = trickle_three_chunks(gw.addr("http"), &up).await;
    assert_eq!(before_last, 1, "streaming should connect upstream at once");
    assert_eq!(status_of(&got), 200, "{got}");
    assert_eq!(&up.last().body[..], b"part1-part2-part3");
}

// ---------------------------------------------------------------------------------------------
// 5. large bodies with bounded memory; buffered spill to a temporary file
// ---------------------------------------------------------------------------------------------

fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resets the peak RSS to the current RSS; returns the current RSS in bytes.
fn reset_peak_rss() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("cannot reset VmHWM");
    proc_status_kib("VmRSS:") * 1024
}

fn peak_rss() -> u64 {
    proc_status_kib("VmHWM:") * 1024
}

const BIG: u64 = 256 * MIB as u64;
const MEMORY_BUDGET: u64 = 64 * MIB as u64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_bodies_stream_through_in_bounded_memory() {
    let _g = EXCLUSIVE.write().await;
    let up = CountingUpstream::start().await;
    let yaml = simple_yaml(
        up.addr,
        "    request_buffering: false",
        "  max_body_bytes: 1GiB",
    );
    let gw = TestGateway::start(&yaml).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // Warm up (pools, lazily allocated buffers) so the measurement sees only the transfer.
    let res = client
        .post(gw.url("http", "/warmup"))
        .body(vec![0u8; 256 * KIB])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    up.received.store(0, Ordering::SeqCst);

    // Upload.
    let baseline = reset_peak_rss();
    let start = Instant::now();
    let body = reqwest::Body::wrap_stream(generated_chunks(BIG).map(Ok::<_, std::io::Error>));
    let res = client
        .post(gw.url("http", "/upload"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), BIG.to_string());
    assert_eq!(up.received(), BIG);
    let growth = peak_rss().saturating_sub(baseline);
    eprintln!(
        "upload of {} MiB took {:?}, peak RSS growth {} KiB",
        BIG / MIB as u64,
        start.elapsed(),
        growth / 1024
    );
    assert!(
        growth < MEMORY_BUDGET,
        "upload grew peak RSS by {} MiB",
        growth / MIB as u64
    );

    // Download.
    let baseline = reset_peak_rss();
    let start = Instant::now();
    let res = client
        .get(gw.url("http", &format!("/download/{BIG}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.iter().all(|&b| b == b'x'));
        total += chunk.len() as u64;
    }
    assert_eq!(total, BIG);
    let growth = peak_rss().saturating_sub(baseline);
    eprintln!(
        "download of {} MiB took {:?}, peak RSS growth {} KiB",
        BIG / MIB as u64,
        start.elapsed(),
        growth / 1024
    );
    assert!(
        growth < MEMORY_BUDGET,
        "download grew peak RSS by {} MiB",
        growth / MIB as u64
    );
}

/// Open files of this process that are unlinked and exactly `len` bytes long.
fn deleted_open_files_of_len(len: u64) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|target| target.to_string_lossy().ends_with("(deleted)"))
        })
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.len() == len))
        .count()
}

#[tokio::test]
async fn buffered_large_body_spills_to_a_temp_file_and_arrives_intact() {
    let _g = shared().await;
    const LEN: usize = 8 * MIB;
    let spilled = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(None::<(http::HeaderMap, Bytes)>));
    // The upstream looks for the spilled file as soon as the request head arrives, before it
    // reads any of the body: the gateway is still sending it, from the file.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let (spilled2, seen2) = (spilled.clone(), seen.clone());
    let upstream = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            spilled2.store(deleted_open_files_of_len(LEN as u64), Ordering::SeqCst);
            let seen = seen2.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let sum = format!("{:x}", checksum(&body));
                *seen.lock().unwrap() = Some((parts.headers, body));
                Ok::<_, std::convert::Infallible>(Response::new(full(sum)))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let yaml = simple_yaml(
        up_addr,
        "    request_buffering: true",
        "  max_body_bytes: 16MiB",
    );
    let gw = TestGateway::start(&yaml).await;
    // Not uniform, so reordering or loss changes the checksum.
    let body: Vec<u8> = (0..LEN as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let expected = format!("{:x}", checksum(&body));
    let chunks: Vec<Bytes> = body.chunks(100_000).map(Bytes::copy_from_slice).collect();
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let res = reqwest::Client::new()
        .post(gw.url("http", "/big"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), expected);
    let (headers, seen_body) = seen
        .lock()
        .unwrap()
        .take()
        .expect("upstream saw no request");
    assert_eq!(headers["content-length"], LEN.to_string().as_str());
    assert_eq!(seen_body.len(), LEN);
    assert!(
        spilled.load(Ordering::SeqCst) >= 1,
        "no unlinked temp file of the body's size was open while it was forwarded"
    );
    upstream.abort();
}

// ---------------------------------------------------------------------------------------------
// 6. max_connections
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
// 7. smuggling and bad framing
// ---------------------------------------------------------------------------------------------

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
