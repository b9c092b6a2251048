//! Active health checks: one background task per server of an upstream with
//! `health_check:`, sending `GET path` (with `Host` = the server's address) every `interval`
//! on a fresh connection, each bounded by `timeout`. A 2xx or 3xx answer is a success. A
//! server turns unhealthy after `unhealthy_after` consecutive failures and healthy again
//! after `healthy_after` consecutive successes. Checks begin at once, never touch the request
//! path, and end when the configuration's task token is cancelled (reload or shutdown).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header::HOST, HeaderValue, Request, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::server_state::ServerState;
use super::upstream::Upstream;
use crate::config::HealthCheckSettings;

/// Starts the checkers of `upstream` (none without `health_check:`).
pub fn spawn_checks(upstream: &Upstream, tasks: &CancellationToken) {
    let Some(check) = &upstream.settings.health_check else {
        return;
    };
    let Ok(path) = Uri::try_from(check.path.as_str()) else {
        tracing::warn!(upstream = upstream.name(), path = %check.path, "health_check.path is not a valid request target; no checks run");
        return;
    };
    for server in &upstream.servers {
        let Ok(host) = HeaderValue::from_str(&server.label) else {
            continue;
        };
        let probe = Probe {
            addr: server.addr,
            host,
            path: path.clone(),
            timeout: check.timeout,
        };
        tokio::spawn(run(
            probe,
            check.clone(),
            Arc::clone(&server.state),
            tasks.clone(),
        ));
    }
}

struct Probe {
    addr: SocketAddr,
    host: HeaderValue,
    path: Uri,
    timeout: Duration,
}

async fn run(
    probe: Probe,
    check: HealthCheckSettings,
    state: Arc<ServerState>,
    stop: CancellationToken,
) {
    let mut successes = 0u32;
    let mut failures = 0u32;
    loop {
        let verdict = tokio::select! {
            _ = stop.cancelled() => return,
            verdict = probe.once() => verdict,
        };
        match verdict {
            Some(true) => {
                failures = 0;
                successes = successes.saturating_add(1);
                if successes >= check.healthy_after.max(1) {
                    state.set_healthy(true);
                }
            }
            Some(false) => {
                successes = 0;
                failures = failures.saturating_add(1);
                if failures >= check.unhealthy_after.max(1) {
                    state.set_healthy(false);
                }
            }
            None => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(check.interval) => {}
        }
    }
}

impl Probe {
    /// One check: true for a 2xx/3xx answer within the timeout; `None` when the gateway
    /// could not even open the connection (out of file descriptors or ports: not a verdict
    /// on the server).
    async fn once(&self) -> Option<bool> {
        match tokio::time::timeout(self.timeout, self.exchange()).await {
            Ok(Ok(status)) => Some(status.is_success() || status.is_redirection()),
            Ok(Err(e)) if super::client::is_local_exhaustion(&e) => None,
            _ => Some(false),
        }
    }

    async fn exchange(&self) -> Result<http::StatusCode, Box<dyn std::error::Error + Send + Sync>> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection task ends with this probe: aborted on return, and on a timeout
        // when the probe is dropped mid-request (a plain JoinHandle would only detach it).
        let conn = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(conn));
        let mut request = Request::new(Empty::<Bytes>::new());
        *request.uri_mut() = self.path.clone();
        request.headers_mut().insert(HOST, self.host.clone());
        request
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        let result = sender.send_request(request).await;
        drop(conn);
        Ok(result?.status())
    }
}
