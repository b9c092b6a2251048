//! Serving one accepted connection: HTTP/1.1 by the gateway's own connection
//! ([`super::http1`]), HTTP/2 by hyper (ALPN on TLS, prior knowledge on plain TCP), with the
//! first-request deadline, a deadline for every HTTP/2 header block, keep-alive idle timeout
//! and graceful drain.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::body::{Http2Body, RequestBody};
use crate::config::ServerSettings;
use crate::handler::{self, ConnInfo, State};
use crate::sendfile::Zerocopy;

mod header_blocks;
mod streams;

/// Which HTTP version to speak on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// How connections are served, configured once per listener from `server:` settings.
///
/// TLS connections speak HTTP/1.1 or HTTP/2 as ALPN decided; plain TCP connections peek at
/// their first bytes for the HTTP/2 preface ([`serve_tcp`]).
pub struct Builders {
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    idle_timeout: Duration,
    header_read_timeout: Duration,
    /// Largest HTTP/1.1 request head accepted (`max_header_bytes`).
    max_head: usize,
}

impl Builders {
    pub fn new(server: &ServerSettings) -> Self {
        let max_head = usize::try_from(server.max_header_bytes).unwrap_or(usize::MAX);
        let max_header_list = u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(max_header_list)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_send_buf_size(H2_SEND_BUFFER)
            .keep_alive_interval(Some(server.idle_timeout))
            .keep_alive_timeout(H2_PING_TIMEOUT);
        Builders {
            http2,
            idle_timeout: server.idle_timeout,
            header_read_timeout: server.header_read_timeout,
            max_head,
        }
    }
}

/// nginx's `http2_max_concurrent_streams` default.
const MAX_CONCURRENT_STREAMS: u32 = 128;
/// Response bytes h2 holds per stream for a client that has granted the window but not yet
/// taken the bytes off the socket (hyper's default is 400 KiB): with the stream limit, what
/// a client that stops reading can make one connection hold, about 11 MiB here against
/// ~120 MiB with 256 streams at the default (nginx's per-request proxy buffers are 64 KiB).
const H2_SEND_BUFFER: usize = 64 * 1024;
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP/2 connection preface a prior-knowledge client opens with (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves a plain TCP connection: HTTP/2 when it opens with the prior-knowledge preface,
/// else HTTP/1.1. The first bytes are peeked, not read, so the chosen server reads them
/// itself (no rewind layer).
pub async fn serve_tcp(
    stream: TcpStream,
    builders: Arc<Builders>,
    state: Arc<arc_swap::ArcSwap<State>>,
    info: Arc<ConnInfo>,
    shutdown: CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + builders.header_read_timeout;
    let protocol = tokio::select! {
        // Bytes already received win over a drain that started meanwhile: a connection
        // accepted with its request on the way is served, not closed unanswered (the
        // HTTP/1.1 head reader likewise reads before it looks at the drain).
        biased;
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
/// request must arrive by `first_request_by`.
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
    if protocol == Protocol::Http1 {
        let limits = super::http1::Limits {
            idle_timeout: builders.idle_timeout,
            header_read_timeout: builders.header_read_timeout,
            max_head: builders.max_head,
        };
        return super::http1::serve(io, limits, state, info, shutdown, first_request_by).await;
    }
    let streams = streams::Streams::new();
    let watch = Watch {
        streams: streams.clone(),
        peer: info.peer,
        metrics: info.metrics.clone(),
        requested: Arc::new(AtomicBool::new(false)),
        idle: builders.idle_timeout,
        first_request_by,
        shutdown,
    };
    let requested = watch.requested.clone();
    let idle = builders.idle_timeout;
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        requested.store(true, Ordering::Relaxed);
        let head_request = req.method() == http::Method::HEAD;
        let in_flight = streams.start();
        // h2 has checked its syntax (and that DATA never passes it).
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let req = req.map(|body| RequestBody::Http2(Http2Body::new(body, idle, declared)));
        let handled = handler::handle(state.load_full(), info.clone(), req, None);
        async move {
            let response = handled.await?.into_response(head_request);
            Ok::<_, std::convert::Infallible>(response.map(|inner| {
                http_body_util::BodyExt::boxed_unsync(streams::Counted::new(inner, in_flight))
            }))
        }
    });
    let io = header_blocks::HeaderBlocks::new(io, builders.header_read_timeout);
    let conn = builders.http2.serve_connection(TokioIo::new(io), service);
    watch.drive(conn, |c| c.graceful_shutdown()).await
}

/// The timers around one HTTP/2 connection: first request, idle, stalled responses, and
/// shutdown.
struct Watch {
    streams: streams::Streams,
    peer: std::net::SocketAddr,
    metrics: Arc<crate::metrics::ListenerMetrics>,
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
        // Draining because the connection went idle or its client reset too many requests
        // (not for shutdown): closed outright if still open `idle` later.
        let mut closing_idle = false;
        // Gone away for a reset flood: more resets close the connection at once.
        let mut flooded = false;
        let idle_check = tokio::time::sleep(self.idle);
        tokio::pin!(idle_check);
        // The first request must arrive within header_read_timeout of the connection (or of
        // its TLS handshake), whether or not it sends anything: HTTP/2 has no header timer
        // at all, and a client that sends part of the preface, or a SETTINGS frame and no
        // HEADERS, would hold a connection slot until the idle timeout. Every header block
        // is timed from its first byte by the transport (`header_blocks`). Between requests,
        // idle_timeout applies from the last request's end (`streams`: frames without a
        // request, PINGs included, do not keep it open).
        let first_request = tokio::time::sleep_until(self.first_request_by);
        tokio::pin!(first_request);
        let mut awaiting_first_request = true;
        // Made once: a fresh `cancelled()` per wake-up would register with the token and
        // deregister again (a lock each way) on every request.
        let shutdown = self.shutdown.cancelled();
        tokio::pin!(shutdown);
        let reset_flood = self.streams.reset_flood();
        tokio::pin!(reset_flood);
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
                _ = reset_flood.as_mut() => {
                    let (early, of) = self.streams.resets();
                    if flooded {
                        tracing::warn!(peer = %self.peer, early_resets = early, requests = of,
                            "closing HTTP/2 connection: the client kept cancelling its requests after GOAWAY");
                        return;
                    }
                    tracing::warn!(peer = %self.peer, early_resets = early, requests = of,
                        "HTTP/2 connection going away: the client cancels too many of its requests (rapid reset)");
                    self.metrics.reset_flood();
                    flooded = true;
                    reset_flood.set(self.streams.reset_flood());
                    draining = true;
                    closing_idle = true;
                    graceful(conn.as_mut());
                    idle_check.as_mut().reset((Instant::now() + self.idle).into());
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
                _ = idle_check.as_mut(), if !draining || closing_idle => {
                    if closing_idle {
                        // A response the client never takes can hold a graceful close open.
                        tracing::debug!("closing connection: still open idle_timeout after going away");
                        return;
                    }
                    if self.streams.in_flight() > 0 {
                        if self.streams.stalled() {
                            tracing::debug!("closing connection: a response waited idle_timeout for the client");
                            return;
                        }
                        idle_check.as_mut().reset((Instant::now() + self.idle / 2).into());
                        continue;
                    }
                    let quiet_for = self.streams.quiet_for();
                    if quiet_for >= self.idle {
                        tracing::debug!("closing idle connection");
                        draining = true;
                        closing_idle = true;
                        graceful(conn.as_mut());
                        idle_check.as_mut().reset((Instant::now() + self.idle).into());
                    } else {
                        idle_check.as_mut().reset((Instant::now() + (self.idle - quiet_for)).into());
                    }
                }
            }
        }
    }
}
