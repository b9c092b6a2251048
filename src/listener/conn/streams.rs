//! The requests in flight on an HTTP/2 connection, for its watcher ([`super::Watch`]):
//!
//! - "Idle" means no request in flight, since the last one ended. Bytes do not count: a
//!   client's PINGs, SETTINGS or WINDOW_UPDATEs would otherwise hold a connection (and its
//!   `max_connections` slot) open for ever without a request (nginx likewise closes an
//!   HTTP/2 connection `keepalive_timeout` after its last stream).
//! - "Stalled" means a response has waited `idle_timeout` for the client to take its next
//!   bytes: hyper only asks a response body for data when the stream's flow-control window
//!   (and h2's send buffer) has room, so a client that keeps the window shut while answering
//!   PINGs would hold the stream, and the upstream connection behind it, for ever. That is
//!   HTTP/1.1's "client not reading the response" (nginx's `send_timeout`).
//!
//! A body waiting on hyper is counted in one of three buckets, by the watcher's tick (one
//! every `idle_timeout / 2` while requests are in flight) at which its wait began; a bucket
//! still counting a body two ticks later has a body that waited at least `idle_timeout`.
//! Two relaxed atomic operations per response frame, no lock, no allocation.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::error::{BoxError, GatewayBody};

const BUCKETS: usize = 3;

#[derive(Default)]
struct Shared {
    in_flight: AtomicUsize,
    /// When (ms after `epoch`) a request last started or ended.
    last_activity: AtomicU64,
    /// The watcher's stall checks so far.
    tick: AtomicUsize,
    /// Response bodies waiting for hyper to take a frame, by `tick % BUCKETS` at the start
    /// of the wait.
    waiting: [AtomicUsize; BUCKETS],
}

/// One connection's requests, shared by its service (which counts them) and its watcher.
#[derive(Clone)]
pub struct Streams {
    shared: Arc<Shared>,
    epoch: Instant,
}

impl Streams {
    pub fn new() -> Self {
        Streams {
            shared: Arc::default(),
            epoch: Instant::now(),
        }
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn start(&self) -> InFlight {
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// How long since a request last started or ended.
    pub fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.shared.last_activity.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// The watcher's periodic check: true when a response body has waited for the client
    /// since two checks ago; otherwise starts the next tick.
    pub fn stalled(&self) -> bool {
        let tick = self.shared.tick.load(Ordering::Relaxed);
        let next = (tick + 1) % BUCKETS;
        if self.shared.waiting[next].load(Ordering::Relaxed) > 0 {
            return true;
        }
        self.shared.tick.store(tick + 1, Ordering::Relaxed);
        false
    }

    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.shared.last_activity.store(now, Ordering::Relaxed);
    }
}

/// One request in flight: from its arrival to the end (or abandonment) of its response.
pub struct InFlight(Streams);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A response body that keeps its request counted in flight until it is done with, and
/// counts itself as waiting on the client whenever hyper has yet to ask for its next frame.
pub struct Counted {
    inner: GatewayBody,
    in_flight: InFlight,
    /// The bucket counting this body's current wait on hyper.
    waiting: Option<usize>,
}

impl Counted {
    /// Hands `inner` to hyper: from now on it waits for hyper (unless it has nothing to send).
    pub fn new(inner: GatewayBody, in_flight: InFlight) -> Self {
        let mut counted = Counted {
            inner,
            in_flight,
            waiting: None,
        };
        counted.wait_if_more();
        counted
    }

    fn wait_if_more(&mut self) {
        if self.inner.is_end_stream() {
            return;
        }
        let shared = &self.in_flight.0.shared;
        let bucket = shared.tick.load(Ordering::Relaxed) % BUCKETS;
        shared.waiting[bucket].fetch_add(1, Ordering::Relaxed);
        self.waiting = Some(bucket);
    }

    fn stop_waiting(&mut self) {
        if let Some(bucket) = self.waiting.take() {
            self.in_flight.0.shared.waiting[bucket].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.stop_waiting();
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // Asked: the wait on the client is over; one on the upstream does not count.
        this.stop_waiting();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = frame {
            this.wait_if_more();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::full_body;

    #[test]
    fn a_body_left_waiting_two_ticks_is_a_stall() {
        let streams = Streams::new();
        let body = Counted::new(full_body(Bytes::from_static(b"x")), streams.start());
        assert!(!streams.stalled(), "tick 1");
        assert!(!streams.stalled(), "tick 2");
        assert!(streams.stalled(), "tick 3: waited two whole periods");
        drop(body);
        assert!(!streams.stalled());
        assert_eq!(streams.in_flight(), 0);
    }

    #[test]
    fn a_body_hyper_keeps_asking_never_stalls() {
        let streams = Streams::new();
        let mut body = Counted::new(full_body(Bytes::from_static(b"x")), streams.start());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(!streams.stalled());
        // Its only frame taken: the body has nothing more, so nothing waits.
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        for _ in 0..5 {
            assert!(!streams.stalled());
        }
        // An empty body never waits.
        let _empty = Counted::new(full_body(Bytes::new()), streams.start());
        for _ in 0..5 {
            assert!(!streams.stalled());
        }
    }
}
