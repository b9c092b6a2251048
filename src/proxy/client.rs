//! One request to one upstream server over a pooled HTTP/1.1 connection ([`h1`]): checkout
//! or connect, send, and hand the connection back to the pool once the response body has
//! been read to its end.
//!
//! A request that never left the gateway (connect failure) comes back to the caller
//! untouched, body included, so it can be retried on another server without having been
//! copied. A pooled connection the server closed just as a request without a body went out
//! (its keep-alive ran out) is replaced by a fresh one for idempotent methods, as browsers
//! and nginx do.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Request;

use super::body::is_length_limit_error;
use super::h1::{Conn, ExchangeError, Head, Kind, Outgoing};
use super::headers::GatewayFields;
use super::pool::ServerPool;
use super::upstream::Server;
use crate::error::{BoxError, GatewayBody, GatewayError};
use crate::observability::Throttle;

/// Why a request got no response, and the request itself when it can be sent to another
/// server (it never left the gateway, or it is idempotent and bodiless).
pub struct Failure {
    pub error: GatewayError,
    pub unsent: Option<Unsent>,
}

/// A request not yet (or safely again) sendable.
pub enum Unsent {
    Request(Request<GatewayBody>),
    /// Already encoded for a connection that turned out closed.
    Encoded(Outgoing),
}

/// Per-request limits that shape errors.
pub struct Limits {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub body_limit: u64,
    /// Fold the time from sending the request to its response head into the server's
    /// peak-EWMA (`p2c`); connection setup is left out, so a fresh connection's first
    /// request does not make a fast server look slow.
    pub track_latency: bool,
    /// The client speaks HTTP/1: the response's fields may stay encoded as the upstream
    /// sent them (see `h1::parse_head`).
    pub pass_fields: bool,
}

/// Sends `request` (origin-form URI, `Host` set) to `server`; on success returns the
/// response head and the connection it came on, which carries the body (see
/// [`super::h1::ResponseBody`]) or the upgraded stream.
pub async fn send(
    server: &Server,
    request: Unsent,
    gateway: &GatewayFields,
    limits: &Limits,
) -> Result<(Head, Conn), Failure> {
    let (mut conn, mut reused) = match server.pool.checkout() {
        Some(conn) => (conn, true),
        None => match connect(server, limits.connect_timeout).await {
            Ok(conn) => (conn, false),
            Err(error) => {
                return Err(Failure {
                    error,
                    unsent: Some(request),
                })
            }
        },
    };
    let mut out = match request {
        Unsent::Request(request) => {
            let (parts, body) = request.into_parts();
            let scratch = conn.take_scratch();
            let mut out = Outgoing::new(
                scratch,
                &parts.method,
                &parts.uri,
                &parts.headers,
                gateway,
                body,
            );
            out.pass_response_fields(limits.pass_fields);
            // The head is encoded: nothing of the request's parts is held while the
            // server answers.
            crate::header_maps::give(parts.headers);
            out
        }
        Unsent::Encoded(mut out) => {
            out.rewind();
            out
        }
    };
    loop {
        let sent_at = limits.track_latency.then(Instant::now);
        let exchange = tokio::time::timeout(limits.response_timeout, conn.exchange(&mut out));
        match exchange.await {
            Ok(Ok(head)) => {
                if let Some(at) = sent_at {
                    server.state.observe_latency(at.elapsed());
                }
                out.return_scratch(&mut conn);
                return Ok((head, conn));
            }
            Ok(Err(failed)) => {
                let stale = reused
                    && !failed.received
                    && out.can_resend()
                    && matches!(failed.kind, Kind::Io(_) | Kind::Closed);
                if !stale {
                    return Err(Failure {
                        error: exchange_error(server, failed, limits),
                        unsent: None,
                    });
                }
                // The pooled connection's keep-alive ended as the request went out.
                conn = match connect(server, limits.connect_timeout).await {
                    Ok(conn) => conn,
                    Err(error) => {
                        return Err(Failure {
                            error,
                            unsent: Some(Unsent::Encoded(out)),
                        })
                    }
                };
                reused = false;
                out.rewind();
            }
            Err(_) => {
                let error = GatewayError::UpstreamTimeout {
                    server: server.label.clone(),
                    timeout: limits.response_timeout,
                };
                return Err(Failure {
                    error,
                    unsent: None,
                });
            }
        }
    }
}

/// Opens a new connection. Boxed: new connections are rare (pooled), and the connect
/// future is large; inline it would enlarge every request's future. A request given up
/// while its connection is being made (its client went away or reset the stream) leaves
/// the connection to be finished in the background and kept in the pool, not thrown away
/// half-made.
async fn connect(server: &Server, timeout: Duration) -> Result<Conn, GatewayError> {
    let connecting = Connecting {
        pending: Some(Box::pin(Conn::connect(server.addr, timeout))),
        pool: &server.pool,
    };
    connecting.await.map_err(|source| {
        if !is_local_exhaustion(&source) {
            return GatewayError::UpstreamConnect {
                server: server.label.clone(),
                source,
            };
        }
        static OUT_OF: Throttle = Throttle::new();
        if let Some(held_back) = OUT_OF.ready() {
            tracing::warn!(
                server = %server.label,
                error = %source,
                more_since_last = held_back,
                "cannot open an upstream connection: the gateway is out of file descriptors, \
                 memory or local ports (raise the open-file limit, LimitNOFILE); the server is \
                 not blamed"
            );
        }
        GatewayError::LocalResources(source)
    })
}

/// Whether a failed connect ran out of something on this machine (file descriptors, buffer
/// memory, ephemeral ports) rather than reaching a server that failed.
pub(super) fn is_local_exhaustion(error: &BoxError) -> bool {
    let Some(io) = error.downcast_ref::<std::io::Error>() else {
        return false;
    };
    matches!(
        io.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

type PendingConnect = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

/// A connection being made for a request; see [`connect`].
struct Connecting<'s> {
    pending: Option<PendingConnect>,
    pool: &'s Arc<ServerPool>,
}

impl Future for Connecting<'_> {
    type Output = Result<Conn, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(pending) = self.pending.as_mut() else {
            return Poll::Ready(Err("connect polled after completion".into()));
        };
        let result = std::task::ready!(pending.as_mut().poll(cx));
        self.pending = None;
        Poll::Ready(result)
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        // Outside a runtime (shutting down) there is no pool worth filling.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = Arc::clone(self.pool);
        runtime.spawn(async move {
            if let Ok(conn) = pending.await {
                pool.put(conn);
            }
        });
    }
}

/// The error a failed exchange answers with: the client's body's own failures are the
/// client's (400, or 413 past the size limit); everything else is the server's (502).
fn exchange_error(server: &Server, failed: ExchangeError, limits: &Limits) -> GatewayError {
    match failed.kind {
        Kind::Body(e) if is_length_limit_error(&*e) => {
            GatewayError::BodyTooLarge(limits.body_limit)
        }
        Kind::Body(e) => GatewayError::ClientBody(e),
        Kind::BodyLength => {
            GatewayError::ClientBody("request body did not match its Content-Length".into())
        }
        _ => GatewayError::UpstreamFailed {
            server: server.label.clone(),
            source: failed.into_upstream_error(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolSettings;
    use crate::error::full_body;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn limits() -> Limits {
        Limits {
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(5),
            body_limit: 1024,
            track_latency: true,
            pass_fields: false,
        }
    }

    fn server(addr: std::net::SocketAddr) -> Server {
        let settings = PoolSettings {
            max_idle_per_server: 8,
            idle_timeout: Duration::from_secs(60),
        };
        Server {
            label: addr.to_string(),
            addr,
            pool: Arc::new(ServerPool::new(&settings)),
            state: Arc::new(super::super::server_state::ServerState::new(
                "app",
                &addr.to_string(),
                true,
                crate::metrics::ServerMetrics::detached(&addr.to_string()),
            )),
        }
    }

    fn request(method: http::Method, body: &'static str) -> Request<GatewayBody> {
        let mut req = Request::new(full_body(body));
        *req.method_mut() = method;
        *req.uri_mut() = http::Uri::from_static("/x");
        req
    }

    /// The gateway's fields for [`request`]: just `Host`.
    fn host_only() -> GatewayFields {
        GatewayFields {
            host: Some(http::HeaderValue::from_static("h")),
            ..GatewayFields::default()
        }
    }

    async fn read_body(server: &Server, head: Head, conn: Conn) -> bytes::Bytes {
        let in_flight = super::super::server_state::InFlight::new(&server.state);
        let body = super::super::h1::ResponseBody::new(
            conn,
            head.framing,
            head.keep_alive,
            Arc::clone(&server.pool),
            in_flight,
        );
        body.collect().await.unwrap().to_bytes()
    }

    /// Sends a bodiless GET to `server` and reads the whole answer.
    async fn get_body(server: &Server) -> bytes::Bytes {
        let request = Unsent::Request(request(http::Method::GET, ""));
        let (head, conn) = send(server, request, &host_only(), &limits())
            .await
            .ok()
            .unwrap();
        read_body(server, head, conn).await
    }

    /// An upstream whose first connection answers its first request and then closes when
    /// the next request arrives without answering it (a keep-alive ending just then);
    /// later connections answer `fresh`. Returns the address and the number of requests
    /// seen.
    async fn closing_upstream() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((mut stream, _)) = listener.accept().await {
                let close_second = std::mem::take(&mut first);
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut answered = 0;
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if close_second && answered == 1 {
                            return; // closes without an answer
                        }
                        let body = if close_second { "first" } else { "fresh" };
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        stream.write_all(response.as_bytes()).await.unwrap();
                        answered += 1;
                    }
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn pooled_connection_closing_as_a_get_goes_out_is_replaced() {
        let (addr, seen) = closing_upstream().await;
        let server = server(addr);
        assert_eq!(get_body(&server).await, "first");
        assert_eq!(server.pool.idle_count(), 1);
        assert_eq!(get_body(&server).await, "fresh");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(server.pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_post_is_never_sent_twice() {
        let (addr, seen) = closing_upstream().await;
        let server = server(addr);
        assert_eq!(get_body(&server).await, "first");
        let Err(failure) = send(
            &server,
            Unsent::Request(request(http::Method::POST, "payload")),
            &host_only(),
            &limits(),
        )
        .await
        else {
            panic!("the closed connection answered");
        };
        assert!(matches!(failure.error, GatewayError::UpstreamFailed { .. }));
        assert!(failure.unsent.is_none());
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connect_failure_hands_the_request_back() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let Err(failure) = send(
            &server(addr),
            Unsent::Request(request(http::Method::POST, "payload")),
            &host_only(),
            &limits(),
        )
        .await
        else {
            panic!("connected to a closed port");
        };
        assert!(matches!(
            failure.error,
            GatewayError::UpstreamConnect { .. }
        ));
        let Some(Unsent::Request(unsent)) = failure.unsent else {
            panic!("the request did not come back as it was");
        };
        assert_eq!(unsent.uri(), "/x");
        let body = unsent.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "payload");
    }

    #[test]
    fn running_out_of_descriptors_is_not_the_servers_fault() {
        let local = |code| -> BoxError { Box::new(std::io::Error::from_raw_os_error(code)) };
        for code in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(is_local_exhaustion(&local(code)), "{code}");
        }
        for code in [libc::ECONNREFUSED, libc::EHOSTUNREACH, libc::ETIMEDOUT] {
            assert!(!is_local_exhaustion(&local(code)), "{code}");
        }
        assert!(!is_local_exhaustion(&"connect timed out".into()));
    }

    /// A request given up while its connection is being made (a client that went away)
    /// leaves the connection to the pool: the next request reuses it instead of the
    /// gateway opening one more.
    #[tokio::test]
    async fn a_connection_abandoned_half_made_is_pooled() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = server(listener.local_addr().unwrap());
        {
            let connecting = connect(&server, Duration::from_secs(1));
            tokio::pin!(connecting);
            let waker = std::task::Waker::noop();
            let first = connecting.as_mut().poll(&mut Context::from_waker(waker));
            assert!(
                first.is_pending(),
                "a loopback connect still takes a round trip"
            );
        } // dropped half-made
        let (_accepted, _) = listener.accept().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while server.pool.idle_count() == 0 {
            assert!(
                Instant::now() < deadline,
                "the connection never reached the pool"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(server.pool.checkout().is_some());
    }
}
