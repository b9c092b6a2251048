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
//!
//! - "Reset flood" means the client keeps cancelling its own requests (RST_STREAM) early:
//!   the HTTP/2 rapid-reset attack (CVE-2023-44487). A request cancelled after it reached
//!   the handler costs the gateway its upstream connection (a response half-read cannot be
//!   reused, as in nginx), so a client that opens and resets streams one at a time (h2's
//!   own limit only counts streams reset before they were accepted) could make the gateway
//!   open upstream connections as fast as it sends frames. As Envoy does, a request ended
//!   by its client within [`EARLY`] of its start, before its response was complete, counts
//!   as an early reset; [`FLOOD_WINDOW`] / 2 of them among the connection's first
//!   [`FLOOD_WINDOW`] requests, or more than half of its requests after that, make the
//!   connection go away (GOAWAY: requests in flight finish, a browser opens a new
//!   connection for the next ones), and [`AFTER_GOAWAY`] more early resets (a client that
//!   ignores the GOAWAY) close it at once.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use crate::error::{BoxError, GatewayBody};

const BUCKETS: usize = 3;

/// A request its client cancels within this time of its start is an early reset.
const EARLY: Duration = Duration::from_secs(1);
/// Early resets tolerated: half of this many among the first this many requests, half of
/// all requests after that.
pub const FLOOD_WINDOW: usize = 100;
/// Early resets after the flood was signalled that signal it again.
pub const AFTER_GOAWAY: usize = 10;

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
    /// Requests ended so far, and how many of them were early resets.
    ended: AtomicUsize,
    early_resets: AtomicUsize,
    /// The early resets counted when they passed the limit (0 until then); `flood` is
    /// signalled then, and again [`AFTER_GOAWAY`] early resets later.
    flood_at: AtomicUsize,
    flood: Notify,
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

    /// Counts a request in flight until the returned guard is dropped. Dropped before
    /// [`InFlight::finish`], the request was cancelled.
    pub fn start(&self) -> InFlight {
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            streams: self.clone(),
            started: self.touch(),
            finished: false,
        }
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

    /// Resolves when the client has reset too many of its requests early, and (made anew)
    /// once more if it goes on after that.
    pub async fn reset_flood(&self) {
        self.shared.flood.notified().await
    }

    /// How many of the connection's requests its client reset early, and how many have
    /// ended in all.
    pub fn resets(&self) -> (usize, usize) {
        let shared = &self.shared;
        let ended = shared.ended.load(Ordering::Relaxed);
        (shared.early_resets.load(Ordering::Relaxed), ended)
    }

    /// Marks activity now; returns now as ms after `epoch`.
    fn touch(&self) -> u64 {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.shared.last_activity.store(now, Ordering::Relaxed);
        now
    }

    fn ended(&self, early_reset: bool) {
        let shared = &self.shared;
        let ended = shared.ended.fetch_add(1, Ordering::Relaxed) + 1;
        if !early_reset {
            return;
        }
        let resets = shared.early_resets.fetch_add(1, Ordering::Relaxed) + 1;
        let flood_at = shared.flood_at.load(Ordering::Relaxed);
        if flood_at != 0 {
            // Each count is seen by one caller only: signalled once more.
            if resets == flood_at + AFTER_GOAWAY {
                shared.flood.notify_one();
            }
            return;
        }
        let flood = if ended <= FLOOD_WINDOW {
            resets * 2 >= FLOOD_WINDOW
        } else {
            resets * 2 > ended
        };
        if !flood {
            return;
        }
        let first =
            shared
                .flood_at
                .compare_exchange(0, resets, Ordering::Relaxed, Ordering::Relaxed);
        if first.is_ok() {
            shared.flood.notify_one();
        }
    }
}

/// One request in flight: from its arrival to the end (or abandonment) of its response.
pub struct InFlight {
    streams: Streams,
    /// When it started, in ms after the connection's `epoch`.
    started: u64,
    /// Its response was sent whole (or ended by the gateway), not cancelled by the client.
    finished: bool,
}

impl InFlight {
    pub fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.streams
            .shared
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
        let now = self.streams.touch();
        let early = now.saturating_sub(self.started) < EARLY.as_millis() as u64;
        self.streams.ended(!self.finished && early);
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

    /// Counts the body as waiting on hyper, or its request as finished if it has no more.
    fn wait_if_more(&mut self) {
        if self.inner.is_end_stream() {
            self.in_flight.finish();
            return;
        }
        let shared = &self.in_flight.streams.shared;
        let bucket = shared.tick.load(Ordering::Relaxed) % BUCKETS;
        shared.waiting[bucket].fetch_add(1, Ordering::Relaxed);
        self.waiting = Some(bucket);
    }

    fn stop_waiting(&mut self) {
        if let Some(bucket) = self.waiting.take() {
            self.in_flight.streams.shared.waiting[bucket].fetch_sub(1, Ordering::Relaxed);
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
        match frame {
            Poll::Ready(Some(Ok(_))) => this.wait_if_more(),
            // Ended by the gateway (an upstream or timeout failure), not by the client.
            Poll::Ready(None | Some(Err(_))) => this.in_flight.finish(),
            Poll::Pending => {}
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

    fn flood_signalled(streams: &Streams) -> bool {
        use futures_util::FutureExt;
        streams.reset_flood().now_or_never().is_some()
    }

    /// Requests cancelled (guards dropped unfinished) and requests answered (finished).
    fn run(streams: &Streams, cancelled: usize, answered: usize) {
        for _ in 0..cancelled {
            drop(streams.start());
        }
        for _ in 0..answered {
            streams.start().finish();
        }
    }

    #[test]
    fn half_the_window_cancelled_early_is_a_flood() {
        let streams = Streams::new();
        run(&streams, FLOOD_WINDOW / 2 - 1, 0);
        assert!(!flood_signalled(&streams));
        run(&streams, 1, 0);
        assert!(flood_signalled(&streams));
        assert_eq!(streams.resets(), (FLOOD_WINDOW / 2, FLOOD_WINDOW / 2));
        // Signalled again only after AFTER_GOAWAY more.
        run(&streams, AFTER_GOAWAY - 1, 0);
        assert!(!flood_signalled(&streams));
        run(&streams, 1, 0);
        assert!(flood_signalled(&streams));
        run(&streams, 3 * AFTER_GOAWAY, 0);
        assert!(!flood_signalled(&streams));
    }

    #[test]
    fn past_the_window_more_than_half_cancelled_early_is_a_flood() {
        let streams = Streams::new();
        run(&streams, 0, FLOOD_WINDOW);
        run(&streams, FLOOD_WINDOW / 2, 0);
        assert!(!flood_signalled(&streams), "a third cancelled");
        run(&streams, FLOOD_WINDOW / 2, 0);
        assert!(!flood_signalled(&streams), "half cancelled");
        run(&streams, 1, 0);
        assert!(flood_signalled(&streams), "more than half cancelled");
    }

    #[test]
    fn answered_requests_and_bodies_ended_by_the_gateway_are_not_resets() {
        let streams = Streams::new();
        for _ in 0..FLOOD_WINDOW {
            // A body that ends, one that fails (an upstream cut off), an empty one.
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            let mut whole = Counted::new(full_body(Bytes::from_static(b"x")), streams.start());
            while let Poll::Ready(Some(_)) = Pin::new(&mut whole).poll_frame(&mut cx) {}
            let failing = http_body_util::StreamBody::new(futures_util::stream::iter([Err::<
                Frame<Bytes>,
                BoxError,
            >(
                "cut off".into(),
            )]));
            let failing = http_body_util::BodyExt::boxed_unsync(failing);
            let mut failed = Counted::new(failing, streams.start());
            while let Poll::Ready(Some(_)) = Pin::new(&mut failed).poll_frame(&mut cx) {}
            drop(Counted::new(full_body(Bytes::new()), streams.start()));
        }
        assert_eq!(streams.resets(), (0, 3 * FLOOD_WINDOW));
        // A body the client reset part-way is one.
        drop(Counted::new(
            full_body(Bytes::from_static(b"x")),
            streams.start(),
        ));
        assert_eq!(streams.resets(), (1, 3 * FLOOD_WINDOW + 1));
    }
}
