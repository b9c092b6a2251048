//! One request to one upstream server over a pooled HTTP/1.1 connection (hyper's
//! `client::conn::http1`): checkout or connect, send, and hand the connection back to the
//! pool once the response body has been read to its end.
//!
//! A request that never left the gateway (connect failure, or a pooled connection that died
//! before the request was written) comes back to the caller untouched, body included, so it
//! can be retried on another server without having been copied.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::is_length_limit_error;
use super::pool::{Sender, ServerPool};
use super::server_state::InFlight;
use super::upstream::Server;
use crate::error::{BoxError, GatewayBody, GatewayError};

/// Why a request got no response, and the request itself when it was never sent (so it is
/// safe to try elsewhere, whatever its method).
pub struct Failure {
    pub error: GatewayError,
    pub unsent: Option<Request<GatewayBody>>,
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
}

/// Sends `request` (origin-form URI, `Host` set) to `server`; on success returns the
/// response head and the connection it came on, which the caller releases (see
/// [`release_with`]) or keeps for an upgrade.
pub async fn send(
    server: &Server,
    mut request: Request<GatewayBody>,
    limits: &Limits,
) -> Result<(Response<Incoming>, Sender), Failure> {
    let mut pooled = server.pool.checkout();
    loop {
        let reused = pooled.is_some();
        let mut sender = match pooled.take() {
            Some(sender) => sender,
            // Boxed: new connections are rare (pooled), and the connect + handshake future
            // is large; inline it would enlarge every request's future.
            None => match Box::pin(connect(server, limits.connect_timeout)).await {
                Ok(sender) => sender,
                Err(source) => {
                    let error = GatewayError::UpstreamConnect {
                        server: server.label.clone(),
                        source,
                    };
                    return Err(Failure {
                        error,
                        unsent: Some(request),
                    });
                }
            },
        };
        let sent_at = limits.track_latency.then(Instant::now);
        let sent =
            tokio::time::timeout(limits.response_timeout, sender.try_send_request(request)).await;
        let mut failed = match sent {
            Ok(Ok(response)) => {
                if let Some(at) = sent_at {
                    server.state.observe_latency(at.elapsed());
                }
                return Ok((response, sender));
            }
            Ok(Err(failed)) => failed,
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
        };
        match failed.take_message() {
            // The pooled connection closed before our request went out (the server's
            // keep-alive ended): transparently use a fresh connection instead.
            Some(unsent) if reused => request = unsent,
            Some(unsent) => {
                let error = GatewayError::UpstreamConnect {
                    server: server.label.clone(),
                    source: failed.into_error().into(),
                };
                return Err(Failure {
                    error,
                    unsent: Some(unsent),
                });
            }
            None => {
                let source = failed.into_error();
                let error = if is_length_limit_error(&source) {
                    GatewayError::BodyTooLarge(limits.body_limit)
                } else {
                    GatewayError::UpstreamFailed {
                        server: server.label.clone(),
                        source: source.into(),
                    }
                };
                return Err(Failure {
                    error,
                    unsent: None,
                });
            }
        }
    }
}

/// Opens a new connection and runs it on the current runtime (upgrades allowed, so a
/// `101 Switching Protocols` hands the socket over for WebSocket splicing).
async fn connect(server: &Server, timeout: Duration) -> Result<Sender, BoxError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(server.addr)).await {
        Ok(stream) => stream?,
        Err(_) => return Err(format!("connect timed out after {timeout:?}").into()),
    };
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Returns `sender` to `pool` once its connection can take another request. Usually it
/// already can (its task runs on this thread and finished the exchange before we saw the
/// end of the body); if it is still busy (e.g. the request body is still being written
/// after an early response), a small task waits for it, at most the pool's idle timeout.
pub fn release_with(pool: &Arc<ServerPool>, mut sender: Sender) {
    if sender.is_ready() {
        pool.put(sender);
        return;
    }
    if sender.is_closed() || pool.is_disabled() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let pool = Arc::clone(pool);
    runtime.spawn(async move {
        if let Ok(Ok(())) = tokio::time::timeout(pool.idle_timeout(), sender.ready()).await {
            pool.put(sender);
        }
    });
}

/// An upstream response body that gives its connection back to the pool when it reaches
/// its end. Dropped early, it drops the connection too (hyper then closes it: the rest of
/// the body would have to be read first).
/// It also keeps its request counted in flight at the server until it is dropped.
pub struct PooledBody {
    inner: Incoming,
    conn: Option<(Sender, Arc<ServerPool>)>,
    _in_flight: InFlight,
}

impl PooledBody {
    pub fn new(
        inner: Incoming,
        sender: Sender,
        pool: Arc<ServerPool>,
        in_flight: InFlight,
    ) -> Self {
        PooledBody {
            inner,
            conn: Some((sender, pool)),
            _in_flight: in_flight,
        }
    }

    fn release(&mut self) {
        if let Some((sender, pool)) = self.conn.take() {
            release_with(&pool, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A reader may stop at `is_end_stream` without polling once more.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolSettings;
    use crate::error::full_body;
    use http_body_util::BodyExt;

    fn limits() -> Limits {
        Limits {
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(5),
            body_limit: 1024,
            track_latency: true,
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
                None,
                true,
                crate::metrics::ServerMetrics::detached(&addr.to_string()),
            )),
        }
    }

    fn request() -> Request<GatewayBody> {
        let mut req = Request::new(full_body("payload"));
        *req.uri_mut() = http::Uri::from_static("/x");
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("h"));
        req
    }

    /// An upstream answering `fresh` on every connection it accepts.
    async fn upstream() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(full_body("fresh")))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn pooled_connection_dying_before_the_request_left_is_replaced() {
        let server = server(upstream().await);
        let (ours, theirs) = tokio::io::duplex(1024);
        let (mut stale, conn) = hyper::client::conn::http1::handshake(TokioIo::new(ours))
            .await
            .unwrap();
        tokio::spawn(conn);
        stale.ready().await.unwrap();
        server.pool.put(stale);
        // The server end goes away; the connection task has not noticed yet, so the pool
        // still hands the connection out and the request goes back unsent.
        drop(theirs);
        let (response, sender) = send(&server, request(), &limits()).await.ok().unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "fresh");
        release_with(&server.pool, sender);
        assert_eq!(server.pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn connect_failure_hands_the_request_back() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let Err(failure) = send(&server(addr), request(), &limits()).await else {
            panic!("connected to a closed port");
        };
        assert!(matches!(
            failure.error,
            GatewayError::UpstreamConnect { .. }
        ));
        let unsent = failure.unsent.unwrap();
        assert_eq!(unsent.uri(), "/x");
        let body = unsent.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "payload");
    }
}
