//! The admin listener (`admin.bind`, loopback by default): plain HTTP/1.1 for operators and
//! orchestrators. It keeps serving while the gateway drains (so `/ready` can say 503 and
//! `/metrics` can watch the drain) and stops when the drain is over.
//!
//! | endpoint | does |
//! | --- | --- |
//! | `GET /metrics` | Prometheus text 0.0.4, or OpenMetrics when the scraper asks for it |
//! | `GET /healthz` | 200 `{"status":"ok"}` while the process serves |
//! | `GET /ready` | 200 once configured and bound, 503 once draining has started |
//! | `GET /upstreams` | servers of every upstream with health and counts (JSON) |
//! | `POST /reload` | re-reads the config file: 200, or 422 with every error |

mod endpoints;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::GatewayBody;
use crate::handler::State;
use crate::listener::clients::ClientConnections;
use crate::metrics::Metrics;
use crate::reload::Reloader;

/// Admin connections served at once; more wait in the backlog (scrapers and probes are few).
const MAX_CONNECTIONS: usize = 64;
/// Of those, from one address (IPv6: one /64); more are closed at once. Without it one
/// client holding silent connections kept the kubelet's `/healthz` probes waiting.
const MAX_CONNECTIONS_PER_ADDRESS: usize = 16;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Request heads are small here (the main listeners' `max_header_bytes` does not apply);
/// hyper's floor is 8 KiB.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What the endpoints read.
pub struct AdminContext {
    pub metrics: Arc<Metrics>,
    pub state: Arc<ArcSwap<State>>,
    pub reloader: Arc<Reloader>,
    /// The gateway's shutdown token: cancelled when draining starts.
    pub draining: CancellationToken,
}

/// Serves the admin endpoints on `tcp` until `stop` fires; every task joins `tracker`.
pub fn spawn(
    tcp: std::net::TcpListener,
    ctx: AdminContext,
    stop: CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<SocketAddr> {
    let addr = tcp.local_addr()?;
    let tcp = TcpListener::from_std(tcp)?;
    tracing::info!(%addr, "admin listening");
    let private = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        // fc00::/7, unique local addresses.
        std::net::IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    };
    if !private {
        tracing::warn!(%addr, "the admin listener has no authentication (POST /reload, metrics): keep it on loopback or a private network");
    }
    tracker.spawn(accept_loop(tcp, Arc::new(ctx), stop, tracker.clone()));
    Ok(addr)
}

async fn accept_loop(
    tcp: TcpListener,
    ctx: Arc<AdminContext>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let clients = Arc::new(ClientConnections::default());
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let Some(slot) = clients.admit(peer.ip().to_canonical(), MAX_CONNECTIONS_PER_ADDRESS)
        else {
            continue; // dropping the stream closes it
        };
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tracker.spawn(async move {
            let _permit = permit;
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| handle(ctx.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

async fn handle(
    ctx: Arc<AdminContext>,
    req: Request<Incoming>,
) -> Result<Response<GatewayBody>, Infallible> {
    if from_a_web_page(req.headers()) {
        return Ok(endpoints::forbidden());
    }
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let response = match (req.uri().path(), read) {
        ("/metrics", true) => endpoints::metrics(&ctx.metrics, req.headers()),
        ("/healthz", true) => endpoints::healthz(),
        ("/ready", true) => endpoints::ready(&ctx.draining),
        ("/upstreams", true) => endpoints::upstreams(&ctx.state.load()),
        ("/reload", _) if req.method() == Method::POST => endpoints::reload(&ctx.reloader).await,
        ("/reload", _) => endpoints::method_not_allowed("POST"),
        ("/metrics" | "/healthz" | "/ready" | "/upstreams", false) => {
            endpoints::method_not_allowed("GET, HEAD")
        }
        _ => endpoints::not_found(),
    };
    Ok(response)
}

/// Whether a browser sent the request on behalf of a web page: it carries `Origin` (every
/// cross-origin request and every POST from a page), or `Sec-Fetch-Site` says anything but
/// `none` (what a browser sends when the operator types the address). The admin listener has
/// no authentication, so without this any page open in a browser on the operator's machine
/// could `POST /reload` with a form (no CORS preflight for that), and a DNS-rebinding page
/// could read `/upstreams` as "same-origin". curl, Prometheus and kubelet send neither.
fn from_a_web_page(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::ORIGIN)
        || headers
            .get("sec-fetch-site")
            .is_some_and(|site| site.as_bytes() != b"none")
}
