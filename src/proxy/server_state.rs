//! The live state of one upstream server, shared by requests, response bodies and its health
//! checker: in-flight requests, active health, and passive outlier ejection (consecutive
//! connect errors, resets before a response head, 5xx or timeouts eject the server for
//! `eject_for`, doubled on each repeat up to 8×). Plain atomics: no lock on the request path.
//! Every health or ejection change is logged once and mirrored into the server's metrics.
//!
//! The state holds nothing from the configuration but the server's names, so a reload that
//! keeps a server keeps its state (`Upstream::new`): requests still in flight on the old
//! configuration count against `max_connections` under the new one, and an ejection, the
//! latency estimate and the health carry on. The passive-ejection settings come with each
//! failure, from the configuration the request runs under.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::PassiveSettings;
use crate::metrics::ServerMetrics;
use crate::observability::CurrentRequestId;

/// Weight of a faster sample in the peak-EWMA (a slower one takes over at once).
const EWMA_ALPHA: f64 = 0.3;
/// Time constant of the peak-EWMA's decay towards zero once a server gets no samples (as
/// tower's and Linkerd's PeakEwma decay): a server that looked slow once (one jittery
/// response) is tried again within a few hundred milliseconds, a really slow one gets a probe
/// now and then, and in-flight counting keeps that probe from becoming a burst.
///
/// The decay runs while the server is idle, not while answers are on the way: with requests
/// in flight the estimate holds for up to [`HOLD_FACTOR`]× itself since the last sample (a
/// 100 ms server otherwise decayed to 67% while its own probe was still out, and was chosen
/// more). Past that hold it decays again, so a long-lived stream (SSE, websocket, a big
/// download) cannot keep a server out for as long as it lasts after one slow sample. And
/// from when a server becomes busy until its first answer, the estimate is at least the
/// age of that first request: a server whose estimate decayed to nothing while unused (after
/// an idle spell, an ejection) is not taken for the fastest and flooded until it answers.
const EWMA_DECAY_MS: f64 = 250.0;
/// With requests in flight, the estimate holds for this many times itself since the last
/// sample (an answer is due within about the estimate), then decays as when idle.
const HOLD_FACTOR: u64 = 2;

/// The failure rate behind `passive.failure_percentage` is an average over about this many
/// exchanges (a plain mean until there are this many, then an EWMA with weight 1/this), and
/// judged only once there are this many (Envoy's minimum request volume is 50 too).
const RATE_WINDOW: u64 = 50;
/// Fixed-point 1.0 of the failure rate.
const RATE_ONE: u64 = 1 << 24;
/// The rate packed with its sample count: enough samples and no failure in the average, so
/// a success changes nothing (the usual case: one load per response).
const RATE_SETTLED: u64 = RATE_WINDOW << 32;

/// Repeat ejections grow `eject_for` by 2^(n-1), at most by this factor.
const MAX_EJECT_FACTOR: u32 = 8;

/// Milliseconds since a process-wide origin (so states built on different reloads agree).
pub fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

pub struct ServerState {
    upstream: String,
    label: String,
    in_flight: AtomicUsize,
    /// Consecutive failed exchanges (reset by a success).
    failures: AtomicU32,
    /// Failed share of recent exchanges: samples (up to [`RATE_WINDOW`]) << 32 | rate as a
    /// fraction of [`RATE_ONE`]. Plain loads and stores: a race loses one sample at worst.
    failure_rate: AtomicU64,
    /// `now_ms()` when the current ejection ends; 0 = not ejected.
    ejected_until: AtomicU64,
    /// Ejections since the last success: the backoff exponent.
    ejections: AtomicU32,
    /// Ejections in this state's lifetime (for `/upstreams`).
    ejections_total: AtomicU64,
    /// Active health (true without `health_check`).
    healthy: AtomicBool,
    /// Peak-EWMA of response-head latency in µs (0 = no sample yet), as of `ewma_at_ms`.
    ewma_us: AtomicU64,
    /// `now_ms()` of the last change of `ewma_us`'s regime: its last sample, or when the
    /// server last became busy or idle. (Relaxed atomics: a race between a server's last
    /// request ending and a new one starting can misplace one decay step.)
    ewma_at_ms: AtomicU64,
    /// From when the server became busy until its first sample since.
    awaiting_answer: AtomicBool,
    metrics: ServerMetrics,
}

impl ServerState {
    /// `healthy` is the starting health (a reload carries it over for a kept server).
    pub fn new(upstream: &str, label: &str, healthy: bool, metrics: ServerMetrics) -> Self {
        metrics.set_healthy(healthy);
        metrics.set_ejected(false);
        ServerState {
            upstream: upstream.to_owned(),
            label: label.to_owned(),
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            failure_rate: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            ejections_total: AtomicU64::new(0),
            healthy: AtomicBool::new(healthy),
            ewma_us: AtomicU64::new(0),
            ewma_at_ms: AtomicU64::new(0),
            awaiting_answer: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether live traffic may go here now: healthy and not ejected. An ejection that has
    /// run out ends here (logged once, by whichever request notices first).
    pub fn usable(&self, now: u64) -> bool {
        if !self.is_healthy() {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if now < until {
            return false;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.metrics.set_ejected(false);
            tracing::info!(request_id = %CurrentRequestId, upstream = %self.upstream, server = %self.label, "server back from ejection");
        }
        true
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now < until
    }

    /// The active checker's verdict; returns true when it changed the server's health.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let changed = self.healthy.swap(healthy, Ordering::Relaxed) != healthy;
        if changed {
            self.metrics.set_healthy(healthy);
            if healthy {
                // Back from unhealthy (e.g. restarted): its checks passed, so a passive
                // ejection from when it went down no longer holds (Envoy un-ejects on a
                // successful active check too). Its failure history starts afresh.
                self.failures.store(0, Ordering::Relaxed);
                self.ejections.store(0, Ordering::Relaxed);
                if self.ejected_until.swap(0, Ordering::Relaxed) != 0 {
                    self.metrics.set_ejected(false);
                }
                tracing::info!(upstream = %self.upstream, server = %self.label, "server healthy");
            } else {
                tracing::warn!(upstream = %self.upstream, server = %self.label, "server unhealthy");
            }
        }
        changed
    }

    /// The peak-EWMA latency in µs at `now` (`now_ms()`) for `p2c`'s cost (0 before a
    /// sample): decayed over idle time, held while requests are in flight (within the hold),
    /// and at least the age of the first request still awaiting an answer (see
    /// [`EWMA_DECAY_MS`]).
    pub fn latency_us(&self, now: u64) -> u64 {
        let since = now.saturating_sub(self.ewma_at_ms.load(Ordering::Relaxed));
        if self.in_flight() == 0 {
            return decayed(self.ewma_us.load(Ordering::Relaxed), since);
        }
        let held = self.held(since);
        if self.awaiting_answer.load(Ordering::Relaxed) {
            held.max(since.saturating_mul(1_000))
        } else {
            held
        }
    }

    /// The estimate while busy, `since` ms after `ewma_at_ms`: held, then decaying.
    fn held(&self, since: u64) -> u64 {
        let ewma = self.ewma_us.load(Ordering::Relaxed);
        decayed(
            ewma,
            since.saturating_sub(ewma.saturating_mul(HOLD_FACTOR) / 1_000),
        )
    }

    /// Folds a response-head latency into the peak-EWMA: a slower sample takes over at once,
    /// a faster one pulls the average down by [`EWMA_ALPHA`] of the difference.
    pub fn observe_latency(&self, latency: Duration) {
        let sample = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let now = now_ms();
        let old = self.held(now.saturating_sub(self.ewma_at_ms.load(Ordering::Relaxed)));
        let next = if old == 0 || sample >= old {
            sample
        } else {
            (old as f64 * (1.0 - EWMA_ALPHA) + sample as f64 * EWMA_ALPHA) as u64
        };
        self.ewma_us.store(next.max(1), Ordering::Relaxed);
        self.ewma_at_ms.store(now, Ordering::Relaxed);
        self.awaiting_answer.store(false, Ordering::Relaxed);
    }

    /// A request starts here. Coming out of idleness (the clock is read only then), the
    /// decay so far becomes the estimate, held from now on, and the wait for an answer
    /// begins.
    fn request_started(&self, now: impl FnOnce() -> u64) {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) != 0 {
            return;
        }
        let now = now();
        let idle = now.saturating_sub(self.ewma_at_ms.load(Ordering::Relaxed));
        let ewma = decayed(self.ewma_us.load(Ordering::Relaxed), idle);
        self.ewma_us.store(ewma, Ordering::Relaxed);
        self.ewma_at_ms.store(now, Ordering::Relaxed);
        self.awaiting_answer.store(true, Ordering::Relaxed);
    }

    /// A request here ended. When it was the last in flight (the clock is read only then),
    /// the estimate as held so far is kept and the idle decay starts.
    fn request_ended(&self, now: impl FnOnce() -> u64) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) != 1 {
            return;
        }
        let now = now();
        let held = self.held(now.saturating_sub(self.ewma_at_ms.load(Ordering::Relaxed)));
        self.ewma_us.store(held, Ordering::Relaxed);
        self.ewma_at_ms.store(now, Ordering::Relaxed);
    }

    /// An exchange got a response head that is not a 5xx.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        let rate = self.failure_rate.load(Ordering::Relaxed);
        if rate != RATE_SETTLED {
            self.failure_rate
                .store(rate_step(rate, false), Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 && !self.is_ejected(now_ms()) {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// An exchange failed at this server (connect error, reset, timeout, 5xx); `passive` is
    /// the upstream's setting (no ejection without it).
    pub fn record_failure(&self, passive: Option<&PassiveSettings>) {
        let Some(passive) = passive else {
            return;
        };
        let rate = rate_step(self.failure_rate.load(Ordering::Relaxed), true);
        self.failure_rate.store(rate, Ordering::Relaxed);
        let threshold = passive.consecutive_failures.max(1);
        let count = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let percent = rate_percent(rate);
        let by_rate = passive.failure_percentage > 0
            && rate >> 32 >= RATE_WINDOW
            && percent >= u64::from(passive.failure_percentage);
        if count < threshold && !by_rate {
            return;
        }
        let now = now_ms();
        // One of several concurrent failures claims the ejection.
        if self.is_ejected(now)
            || self
                .failures
                .compare_exchange(count, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        // Back from this ejection, the server is judged on fresh exchanges.
        self.failure_rate.store(0, Ordering::Relaxed);
        let n = self
            .ejections
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let eject_for = ejection_time(passive.eject_for, n);
        let millis = u64::try_from(eject_for.as_millis()).unwrap_or(u64::MAX);
        self.ejected_until
            .store(now.saturating_add(millis.max(1)), Ordering::Relaxed);
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.set_ejected(true);
        tracing::warn!(
            request_id = %CurrentRequestId,
            upstream = %self.upstream,
            server = %self.label,
            failures = count,
            failure_percent = percent,
            eject_for = ?eject_for,
            "server ejected"
        );
    }
}

/// The failure rate after one more exchange: a plain mean over the first [`RATE_WINDOW`],
/// then an EWMA of weight 1/[`RATE_WINDOW`] (rounded so that successes bring it to 0).
fn rate_step(packed: u64, failed: bool) -> u64 {
    let samples = (packed >> 32).saturating_add(1).min(RATE_WINDOW);
    let rate = packed & 0xFFFF_FFFF;
    let rate = rate - rate.div_ceil(samples) + if failed { RATE_ONE / samples } else { 0 };
    samples << 32 | rate
}

/// The packed failure rate in whole percent.
fn rate_percent(packed: u64) -> u64 {
    ((packed & 0xFFFF_FFFF) * 100 + RATE_ONE / 2) / RATE_ONE
}

/// `ewma` µs decayed over `idle_ms` (at least 1 µs, so a server with samples never reads as
/// one without).
fn decayed(ewma: u64, idle_ms: u64) -> u64 {
    if ewma == 0 || idle_ms == 0 {
        return ewma;
    }
    ((ewma as f64 * (-(idle_ms as f64) / EWMA_DECAY_MS).exp()) as u64).max(1)
}

/// `eject_for` × 2^(n-1), capped at [`MAX_EJECT_FACTOR`]×.
pub fn ejection_time(eject_for: Duration, n: u32) -> Duration {
    let factor = 1u32
        .checked_shl(n.saturating_sub(1))
        .unwrap_or(MAX_EJECT_FACTOR)
        .min(MAX_EJECT_FACTOR);
    eject_for.saturating_mul(factor)
}

/// Counts one request in flight at a server until dropped (with the response body, so
/// `least_conn` and `max_connections` see requests whose bodies are still streaming).
pub struct InFlight(Arc<ServerState>);

impl InFlight {
    pub fn new(state: &Arc<ServerState>) -> Self {
        state.request_started(now_ms);
        state.metrics.in_flight.inc();
        InFlight(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended(now_ms);
        self.0.metrics.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server and the passive settings its failures are recorded with.
    struct Tested {
        s: ServerState,
        passive: PassiveSettings,
    }

    impl std::ops::Deref for Tested {
        type Target = ServerState;
        fn deref(&self) -> &ServerState {
            &self.s
        }
    }

    impl Tested {
        fn record_failure(&self) {
            self.s.record_failure(Some(&self.passive));
        }
    }

    fn state(failures: u32, eject_for: Duration) -> Tested {
        Tested {
            s: ServerState::new("app", "s:1", true, ServerMetrics::detached("s:1")),
            passive: PassiveSettings {
                consecutive_failures: failures,
                eject_for,
                failure_percentage: 50,
            },
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let s = state(3, Duration::from_secs(60));
        s.record_failure();
        s.record_failure();
        s.record_success();
        s.record_failure();
        s.record_failure();
        assert!(s.usable(now_ms()));
        s.record_failure();
        assert!(!s.usable(now_ms()));
        assert!(s.metrics.ejected());
        assert_eq!(s.ejections_total(), 1);
        // An ejected server's further failures do not stack ejections.
        for _ in 0..5 {
            s.record_failure();
        }
        assert_eq!(s.ejections_total(), 1);
    }

    #[test]
    fn ejection_ends_after_eject_for_and_repeats_last_longer() {
        let s = state(1, Duration::from_millis(20));
        s.record_failure();
        let now = now_ms();
        assert!(!s.usable(now));
        assert!(s.usable(now + 25));
        assert!(!s.metrics.ejected());
        s.record_failure();
        let until = s.ejected_until.load(Ordering::Relaxed);
        assert!(until >= now_ms() + 35, "second ejection should last ~40ms");
    }

    #[test]
    fn unhealthy_servers_are_not_usable_and_transitions_report_once() {
        let s = state(1, Duration::from_secs(1));
        assert!(s.set_healthy(false));
        assert!(!s.set_healthy(false));
        assert!(!s.usable(now_ms()));
        assert!(!s.metrics.healthy());
        assert!(s.set_healthy(true));
        assert!(s.usable(now_ms()));
    }

    /// The estimate as of its last sample (no decay).
    fn fresh(s: &Tested) -> u64 {
        s.latency_us(s.ewma_at_ms.load(Ordering::Relaxed))
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let s = state(1, Duration::from_secs(1));
        s.observe_latency(Duration::from_millis(10));
        assert_eq!(fresh(&s), 10_000);
        s.observe_latency(Duration::from_millis(50));
        assert_eq!(fresh(&s), 50_000);
        s.observe_latency(Duration::from_millis(1));
        // 0.7 × 50 ms + 0.3 × 1 ms (a millisecond of decay in between may shave a little).
        assert!(fresh(&s).abs_diff(35_300) <= 100, "{}", fresh(&s));
        for _ in 0..20 {
            s.observe_latency(Duration::from_millis(1));
        }
        assert!(fresh(&s) < 1_100, "{}", fresh(&s));
    }

    #[test]
    fn peak_ewma_decays_towards_zero_without_samples() {
        let s = state(1, Duration::from_secs(1));
        s.observe_latency(Duration::from_millis(100));
        let at = s.ewma_at_ms.load(Ordering::Relaxed);
        assert_eq!(s.latency_us(at), 100_000);
        // One time constant: e^-1 of the estimate; ten: practically nothing.
        let one = s.latency_us(at + EWMA_DECAY_MS as u64);
        assert!(one.abs_diff(36_788) <= 10, "{one}");
        assert!(s.latency_us(at + 10 * EWMA_DECAY_MS as u64) < 10);
    }

    const TAU: u64 = EWMA_DECAY_MS as u64;

    #[test]
    fn peak_ewma_holds_while_answers_are_due() {
        let s = state(1, Duration::from_secs(1));
        s.request_started(|| 1_000);
        s.request_started(|| unreachable!("only the first request reads the clock"));
        s.observe_latency(Duration::from_millis(100));
        let at = s.ewma_at_ms.load(Ordering::Relaxed);
        // The other request is still out: no decay for twice the estimate...
        assert_eq!(s.latency_us(at + 100), 100_000);
        assert_eq!(s.latency_us(at + 200), 100_000);
        // ...then the usual decay (a stream outliving it must not keep the server out).
        let one = s.latency_us(at + 200 + TAU);
        assert!(one.abs_diff(36_788) <= 10, "{one}");
        // Idle from the end of the last request on.
        s.request_ended(|| unreachable!("not idle yet"));
        s.request_ended(|| at + 150);
        assert_eq!(s.latency_us(at + 150), 100_000);
        let one = s.latency_us(at + 150 + TAU);
        assert!(one.abs_diff(36_788) <= 10, "{one}");
    }

    #[test]
    fn peak_ewma_keeps_the_idle_decay_and_waits_for_the_first_answer() {
        let s = state(1, Duration::from_secs(1));
        s.observe_latency(Duration::from_millis(100));
        let at = s.ewma_at_ms.load(Ordering::Relaxed);
        // Idle for one time constant, then a request: e^-1 of the estimate, held.
        s.request_started(|| at + TAU);
        assert!(fresh(&s).abs_diff(36_788) <= 10, "{}", fresh(&s));
        assert_eq!(s.latency_us(at + TAU + 30), fresh(&s));
        // No answer after 50 ms: the server is at least that slow.
        assert_eq!(s.latency_us(at + TAU + 50), 50_000);
        assert_eq!(s.latency_us(at + TAU + 5_000), 5_000_000);
        // Idle again after 60 ms (within the hold) and one more time constant: e^-2 in all.
        s.request_ended(|| at + TAU + 60);
        let two = s.latency_us(at + 2 * TAU + 60);
        assert!(two.abs_diff(13_534) <= 10, "{two}");
        // A long idle decays towards zero but still reads as a server with samples.
        assert_eq!(s.latency_us(at + 1_000 * TAU), 1);
    }

    #[test]
    fn a_server_without_samples_is_as_slow_as_its_first_request() {
        let s = state(1, Duration::from_secs(1));
        assert_eq!(s.latency_us(1_000), 0);
        s.request_started(|| 1_000);
        assert_eq!(s.latency_us(1_000), 0);
        assert_eq!(s.latency_us(1_030), 30_000);
        s.request_ended(|| 1_040);
        assert_eq!(s.latency_us(1_050), 0);
    }

    #[test]
    fn a_server_back_to_healthy_is_no_longer_ejected() {
        let s = state(1, Duration::from_secs(60));
        s.record_failure();
        assert!(s.is_ejected(now_ms()));
        assert!(s.set_healthy(false));
        assert!(s.set_healthy(true));
        assert!(!s.is_ejected(now_ms()));
        assert!(s.usable(now_ms()));
        assert!(!s.metrics.ejected());
    }

    #[test]
    fn ejection_time_doubles_and_caps() {
        let base = Duration::from_secs(10);
        assert_eq!(ejection_time(base, 1), base);
        assert_eq!(ejection_time(base, 2), base * 2);
        assert_eq!(ejection_time(base, 4), base * 8);
        assert_eq!(ejection_time(base, 40), base * 8);
    }

    #[test]
    fn failure_rate_is_a_mean_then_an_ewma_that_settles() {
        let mut r = 0;
        for i in 0..10 {
            r = rate_step(r, i % 2 == 0);
        }
        assert_eq!(rate_percent(r), 50);
        for _ in 0..2_000 {
            r = rate_step(r, false);
        }
        assert_eq!(r, RATE_SETTLED, "successes bring the rate to exactly 0");
        for _ in 0..2_000 {
            r = rate_step(r, true);
        }
        assert_eq!(rate_percent(r), 100);
    }

    /// Half the answers failing, never three in a row: the consecutive rule never fires,
    /// the failure share does once there are enough samples; a 20% share never does.
    #[test]
    fn a_server_failing_half_its_exchanges_is_ejected() {
        let s = state(3, Duration::from_secs(60));
        for i in 0..RATE_WINDOW {
            assert!(s.usable(now_ms()), "ejected after {i} exchanges");
            if i % 2 == 0 {
                s.record_failure();
            } else {
                s.record_success();
            }
        }
        s.record_failure();
        assert!(s.is_ejected(now_ms()));
        assert_eq!(s.ejections_total(), 1);

        let s = state(3, Duration::from_secs(60));
        for i in 0..2_000 {
            if i % 5 == 0 {
                s.record_failure();
            } else {
                s.record_success();
            }
        }
        assert_eq!(s.ejections_total(), 0);

        let mut s = state(3, Duration::from_secs(60));
        s.passive.failure_percentage = 0;
        for i in 0..2_000 {
            if i % 2 == 0 {
                s.record_failure();
            } else {
                s.record_success();
            }
        }
        assert_eq!(s.ejections_total(), 0, "failure_percentage: 0 turns it off");
    }
}
