//! What "idle" means on an HTTP/2 connection: no request in flight, since the last one
//! ended. Bytes do not count: a client's PINGs, SETTINGS or WINDOW_UPDATEs would otherwise
//! hold a connection (and its `max_connections` slot) open for ever without a request (nginx
//! likewise closes an HTTP/2 connection `keepalive_timeout` after its last stream).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::error::{BoxError, GatewayBody};

/// The requests in flight on one connection, and when (ms after `epoch`) one last started
/// or ended.
#[derive(Clone)]
pub struct Streams {
    pub in_flight: Arc<AtomicUsize>,
    pub last_activity: Arc<AtomicU64>,
    pub epoch: Instant,
}

impl Streams {
    /// Counts a request in flight until the returned guard is dropped.
    pub fn start(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity.store(now, Ordering::Relaxed);
    }
}

/// One request in flight: from its arrival to the end (or abandonment) of its response.
pub struct InFlight(Streams);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A response body that keeps its request counted in flight until it is done with.
pub struct Counted {
    pub inner: GatewayBody,
    pub _in_flight: InFlight,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
