//! Serving one accepted connection with hyper: HTTP/1.1 and HTTP/2 (ALPN on TLS, prior
//! knowledge on plain TCP), the slow-loris guard, keep-alive idle timeout and graceful drain.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::ServerSettings;
use crate::handler::{self, AmbiguousFraming, CloseAfter, ConnInfo, State};
use crate::sendfile::Zerocopy;

mod framing;
mod streams;

/// Which HTTP version to speak on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// hyper connection builders, configured once per listener from `server:` settings.
///
/// TLS connections use hyper's HTTP/1.1 or HTTP/2 builder as ALPN decided; plain TCP
/// connections peek at their first bytes for the HTTP/2 preface ([`serve_tcp`]).
pub struct Builders {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    idle_timeout: Duration,
    header_read_timeout: Duration,
    /// Largest request head accepted (hyper's read buffer limit).
    max_head: usize,
}

impl Builders {
    pub fn new(server: &ServerSettings) -> Self {
        let max_buf = usize::try_from(server.max_header_bytes)
            .unwrap_or(usize::MAX)
            .max(8192);
        let max_header_list = u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX);

        // No hyper header timer: it would also run while a keep-alive connection waits for
        // its next request (bounding keep-alive idle by header_read_timeout instead of
        // idle_timeout) and it costs a timer per request. ActivityIo times request heads
        // from their first byte instead, with the framing scanner's view of the stream.
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(max_buf)
            .keep_alive(true);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(max_header_list)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .keep_alive_interval(Some(server.idle_timeout))
            .keep_alive_timeout(H2_PING_TIMEOUT);
        Builders {
            http1,
            http2,
            idle_timeout: server.idle_timeout,
            header_read_timeout: server.header_read_timeout,
            max_head: max_buf,
        }
    }
}

const MAX_CONCURRENT_STREAMS: u32 = 256;
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP/2 connection preface a prior-knowledge client opens with (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves a plain TCP connection: HTTP/2 when it opens with the prior-knowledge preface,
/// else HTTP/1.1. The first bytes are peeked, not read, so hyper's parser reads them itself:
/// no rewind layer, and hyper's read buffer keeps its initial 8 KiB (after a rewound prefix
/// it doubled to 16 KiB for the life of the connection).
pub async fn serve_tcp(
    stream: TcpStream,
    builders: Arc<Builders>,
    state: Arc<arc_swap::ArcSwap<State>>,
    info: Arc<ConnInfo>,
    shutdown: CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + builders.header_read_timeout;
    let protocol = tokio::select! {
        sniffed = tokio::time::timeout_at(deadline, sniff(&stream)) => match sniffed {
            Ok(Ok(Some(protocol))) => protocol,
            Ok(Ok(None)) => return, // closed before sending anything
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "connection failed before its first request");
                return;
            }
            Err(_) => {
                tracing::debug!("closing connection: no request within header_read_timeout");
                return;
            }
        },
        _ = shutdown.cancelled() => return,
    };
    serve(stream, protocol, builders, state, info, shutdown, deadline).await
}

/// Waits for enough of the first bytes to tell HTTP/2's preface from anything else; `None`
/// if the peer closed first. A partial preface is re-peeked after a short sleep (peek would
/// return the same bytes at once and spin); the caller bounds the wait.
async fn sniff(stream: &TcpStream) -> io::Result<Option<Protocol>> {
    let mut first = [0u8; H2_PREFACE.len()];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 {
            return Ok(None);
        }
        if first[..n] != H2_PREFACE[..n] {
            return Ok(Some(Protocol::Http1));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(Protocol::Http2));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Serves requests on `io` until the client leaves, the connection idles out, or
/// `shutdown` fires (then in-flight requests finish and the connection closes). The first
/// request must reach the service by `first_request_by`.
pub async fn serve<I>(
    io: I,
    protocol: Protocol,
    builders: Arc<Builders>,
    state: Arc<arc_swap::ArcSwap<State>>,
    info: Arc<ConnInfo>,
    shutdown: CancellationToken,
    first_request_by: tokio::time::Instant,
) where
    I: AsyncRead + AsyncWrite + Zerocopy + Unpin + Send + 'static,
{
    let watch = Watch {
        epoch: Instant::now(),
        last_activity: Arc::new(AtomicU64::new(0)),
        in_flight: Arc::new(AtomicUsize::new(0)),
        requested: Arc::new(AtomicBool::new(false)),
        idle: builders.idle_timeout,
        first_request_by,
        shutdown,
    };
    // HTTP/1.1 heads are watched for request smuggling (see `framing`); HTTP/2 frames
    // carry their own lengths.
    let verdict = (protocol != Protocol::Http2).then(Arc::<framing::Verdict>::default);
    let io = TokioIo::new(ActivityIo {
        inner: io,
        epoch: watch.epoch,
        last_activity: watch.last_activity.clone(),
        // HTTP/2 is idle by its requests (`streams`), not by the frames that keep arriving.
        bytes_are_activity: protocol == Protocol::Http1,
        scanner: verdict
            .as_ref()
            .map(|v| framing::Scanner::new(builders.max_head, v.clone())),
        head_timeout: builders.header_read_timeout,
        head_started: None,
        head_deadline: None,
        // HTTP/1.1 on plain TCP: a response body is one run of bytes on the socket.
        sendfile: (protocol == Protocol::Http1 && info.sendfile.is_some()).then(|| info.clone()),
    });
    let requested = watch.requested.clone();
    let handle = move |mut req: hyper::Request<hyper::body::Incoming>| {
        requested.store(true, Ordering::Relaxed);
        if let Some(v) = &verdict {
            let (ambiguous, close_after) = v.next_request();
            if ambiguous {
                req.extensions_mut().insert(AmbiguousFraming);
            }
            if close_after {
                req.extensions_mut().insert(CloseAfter);
            }
        }
        let state = state.load_full();
        handler::handle(state, info.clone(), req)
    };
    match protocol {
        Protocol::Http1 => {
            let service = service_fn(handle);
            let conn = builders.http1.serve_connection(io, service).with_upgrades();
            watch.drive(conn, |c| c.graceful_shutdown()).await
        }
        Protocol::Http2 => {
            let streams = streams::Streams {
                in_flight: watch.in_flight.clone(),
                last_activity: watch.last_activity.clone(),
                epoch: watch.epoch,
            };
            let service = service_fn(move |req| {
                let in_flight = streams.start();
                let handled = handle(req);
                async move {
                    let response = handled.await?;
                    Ok::<_, std::convert::Infallible>(response.map(|inner| {
                        let counted = streams::Counted {
                            inner,
                            _in_flight: in_flight,
                        };
                        http_body_util::BodyExt::boxed_unsync(counted)
                    }))
                }
            });
            let conn = builders.http2.serve_connection(io, service);
            watch.drive(conn, |c| c.graceful_shutdown()).await
        }
    }
}

/// The timers around one connection: first request, idle, and shutdown.
struct Watch {
    epoch: Instant,
    last_activity: Arc<AtomicU64>,
    /// HTTP/2 requests in flight (always 0 on HTTP/1.1, where bytes are the activity).
    in_flight: Arc<AtomicUsize>,
    /// Whether a request has reached the service yet (for the first-request deadline).
    requested: Arc<AtomicBool>,
    idle: Duration,
    first_request_by: tokio::time::Instant,
    shutdown: CancellationToken,
}

impl Watch {
    async fn drive<C, E>(self, conn: C, graceful: impl Fn(Pin<&mut C>))
    where
        C: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        tokio::pin!(conn);
        let mut draining = false;
        let idle_check = tokio::time::sleep(self.idle);
        tokio::pin!(idle_check);
        // The first request must arrive within header_read_timeout of the connection (or of
        // its TLS handshake), whether or not it sends anything: HTTP/1.1 heads are otherwise
        // timed from their first byte (ActivityIo), and HTTP/2 has no header timer at all: a
        // client that sends part of the preface, or a SETTINGS frame and no HEADERS, would
        // hold a connection slot until the idle timeout. Between requests, idle_timeout
        // applies: on HTTP/1.1 from the last byte, on HTTP/2 from the last request's end
        // (`streams`: frames without a request, PINGs included, do not keep it open).
        let first_request = tokio::time::sleep_until(self.first_request_by);
        tokio::pin!(first_request);
        let mut awaiting_first_request = true;
        // Made once: a fresh `cancelled()` per wake-up would register with the token and
        // deregister again (a lock each way) on every request.
        let shutdown = self.shutdown.cancelled();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                // The connection first: it is what woke us nearly every time (the other
                // branches are timers and the shutdown signal, none of which can starve).
                biased;
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.as_mut(), if !draining => {
                    draining = true;
                    graceful(conn.as_mut());
                }
                _ = first_request.as_mut(), if awaiting_first_request => {
                    awaiting_first_request = false;
                    if !self.requested.load(Ordering::Relaxed) {
                        tracing::debug!("closing connection: no request within header_read_timeout");
                        return;
                    }
                }
                _ = idle_check.as_mut(), if !draining => {
                    if self.in_flight.load(Ordering::Relaxed) > 0 {
                        idle_check.as_mut().reset((Instant::now() + self.idle).into());
                        continue;
                    }
                    let last = Duration::from_millis(self.last_activity.load(Ordering::Relaxed));
                    let quiet_for = self.epoch.elapsed().saturating_sub(last);
                    if quiet_for >= self.idle {
                        tracing::debug!("closing idle connection");
                        draining = true;
                        graceful(conn.as_mut());
                    } else {
                        idle_check.as_mut().reset((Instant::now() + (self.idle - quiet_for)).into());
                    }
                }
            }
        }
    }
}

/// Records when bytes last moved, for the idle timeout.
struct ActivityIo<I> {
    inner: I,
    epoch: Instant,
    last_activity: Arc<AtomicU64>,
    /// Whether moving bytes counts as activity for the idle timeout (HTTP/1.1).
    bytes_are_activity: bool,
    /// Follows HTTP/1.1 request framing until it has nothing more to say.
    scanner: Option<framing::Scanner>,
    /// header_read_timeout: a request head must be complete this long after its first byte.
    head_timeout: Duration,
    /// When (ms after `epoch`) the head now arriving began; `None` between heads.
    head_started: Option<u64>,
    /// Wakes the connection when a partial head's time is up (made on first need: most heads
    /// arrive in one read and never arm it).
    head_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The connection's sendfile slot (in its `ConnInfo`), on plain-TCP HTTP/1.1.
    sendfile: Option<Arc<ConnInfo>>,
}

impl<I> ActivityIo<I> {
    /// Records activity now; returns the time, in ms after `epoch`.
    fn touch(&self) -> u64 {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if self.bytes_are_activity {
            self.last_activity.store(now, Ordering::Relaxed);
        }
        now
    }

    /// Whether the head in progress (if any) is past its deadline at `now`.
    fn head_overdue(&self, now: u64) -> bool {
        let limit = u64::try_from(self.head_timeout.as_millis()).unwrap_or(u64::MAX);
        self.head_started
            .is_some_and(|started| now.saturating_sub(started) >= limit)
    }

    /// With a head in progress and no bytes to read, makes sure the task wakes at its
    /// deadline; true once the deadline has passed.
    fn poll_head_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(started) = self.head_started else {
            return false;
        };
        let deadline = tokio::time::Instant::from_std(
            self.epoch + Duration::from_millis(started) + self.head_timeout,
        );
        let sleep = self
            .head_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        std::future::Future::poll(sleep.as_mut(), cx).is_ready()
    }
}

fn head_timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request head not complete within header_read_timeout",
    )
}

impl<I: AsyncRead + Unpin> AsyncRead for ActivityIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let now = this.touch();
                if let Some(scanner) = &mut this.scanner {
                    scanner.feed(&buf.filled()[before..]);
                    this.head_started = match scanner.head_in_progress() {
                        true => this.head_started.or(Some(now)),
                        false => None,
                    };
                    if !scanner.is_on() {
                        this.scanner = None;
                        this.head_started = None;
                    }
                }
                // A head trickled in byte by byte keeps the reads coming: check here too.
                if this.head_overdue(now) {
                    return Poll::Ready(Err(head_timed_out()));
                }
                polled
            }
            Poll::Pending if this.poll_head_deadline(cx) => Poll::Ready(Err(head_timed_out())),
            other => other,
        }
    }
}

impl<I: AsyncWrite + Zerocopy + Unpin> ActivityIo<I> {
    /// Writes `bufs` with sendfile when they carry the body this connection's static
    /// handler offered (see [`crate::sendfile`]); `None` otherwise.
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Option<Poll<io::Result<usize>>> {
        let slot = self.sendfile.as_ref()?.sendfile.as_ref()?;
        slot.poll_write(self.inner.tcp()?, cx, bufs)
    }
}

impl<I: AsyncWrite + Zerocopy + Unpin> AsyncWrite for ActivityIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = match self.poll_sendfile(cx, &[io::IoSlice::new(buf)]) {
            Some(polled) => polled,
            None => Pin::new(&mut self.inner).poll_write(cx, buf),
        };
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = match self.poll_sendfile(cx, bufs) {
            Some(polled) => polled,
            None => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
        };
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
