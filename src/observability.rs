//! Tracing subscriber setup and the access log: one line per request, written when the
//! response body has been sent (or abandoned), so it carries the real byte count.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingSettings};
use crate::error::{BoxError, GatewayBody};

/// Installs the global subscriber: `RUST_LOG` wins over `logging.level`.
pub fn init(logging: &LoggingSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&logging.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match logging.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if result.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
}

/// What the access log line says about one request.
pub struct AccessRecord {
    pub start: Instant,
    pub method: Method,
    pub path: String,
    pub status: StatusCode,
    pub route: String,
    pub upstream: String,
    pub request_id: String,
    pub client: std::net::IpAddr,
    pub listener: String,
}

/// Wraps a response body, counts the bytes sent, and logs the request when dropped.
pub struct LoggedBody {
    inner: GatewayBody,
    bytes: u64,
    record: Box<AccessRecord>,
}

impl LoggedBody {
    pub fn new(inner: GatewayBody, record: Box<AccessRecord>) -> Self {
        LoggedBody {
            inner,
            bytes: 0,
            record,
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let r = &self.record;
        tracing::info!(
            target: "gateway::access",
            method = %r.method,
            path = %r.path,
            status = r.status.as_u16(),
            route = %r.route,
            upstream = %r.upstream,
            duration_ms = r.start.elapsed().as_secs_f64() * 1000.0,
            bytes = self.bytes,
            request_id = %r.request_id,
            client = %r.client,
            listener = %r.listener,
            "request"
        );
    }
}
