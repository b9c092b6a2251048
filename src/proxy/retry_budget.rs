//! The retry budget of one upstream: retries may add at most [`RATIO_PERCENT`] of the
//! requests seen over a sliding window of the current and the previous second (never fewer
//! than [`MIN_RETRIES`]), so a failing fleet is not hammered by its own retries. Two
//! one-second buckets of atomics; a race at a bucket boundary may miscount a request or two,
//! which a budget can afford.

use std::sync::atomic::{AtomicU64, Ordering};

use super::server_state::now_ms;

/// Retries allowed per 100 requests.
pub const RATIO_PERCENT: u64 = 20;
/// Retries always allowed within the window, however few the requests.
pub const MIN_RETRIES: u64 = 5;

#[derive(Default)]
pub struct RetryBudget {
    /// The second the current bucket counts (`now_ms() / 1000`).
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    prev_requests: AtomicU64,
    prev_retries: AtomicU64,
}

impl RetryBudget {
    /// Whether one more retry fits the budget; counts it when it does.
    pub fn try_retry(&self) -> bool {
        self.try_retry_at(now_ms())
    }

    /// A request started at `now` (`now_ms()`; once per request, whatever its attempts).
    pub fn record_request_at(&self, now: u64) {
        self.rotate(now);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn try_retry_at(&self, now: u64) -> bool {
        self.rotate(now);
        let requests =
            self.requests.load(Ordering::Relaxed) + self.prev_requests.load(Ordering::Relaxed);
        let retries =
            self.retries.load(Ordering::Relaxed) + self.prev_retries.load(Ordering::Relaxed);
        let allowed = (requests * RATIO_PERCENT / 100).max(MIN_RETRIES);
        if retries >= allowed {
            return false;
        }
        self.retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Starts a new bucket when the second changed (the old one becomes the previous, or is
    /// dropped when more than a second passed).
    fn rotate(&self, now: u64) {
        let second = now / 1000;
        let current = self.second.load(Ordering::Relaxed);
        if second == current
            || self
                .second
                .compare_exchange(current, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (requests, retries) = match second == current + 1 {
            true => (
                self.requests.swap(0, Ordering::Relaxed),
                self.retries.swap(0, Ordering::Relaxed),
            ),
            false => {
                self.requests.store(0, Ordering::Relaxed);
                self.retries.store(0, Ordering::Relaxed);
                (0, 0)
            }
        };
        self.prev_requests.store(requests, Ordering::Relaxed);
        self.prev_retries.store(retries, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_a_fifth_of_requests() {
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.record_request_at(10_000);
        }
        let granted = (0..50).filter(|_| b.try_retry_at(10_500)).count();
        assert_eq!(granted, 20);
        // The previous second still counts; two seconds later both buckets are gone.
        assert!(!b.try_retry_at(11_200));
        let granted = (0..50).filter(|_| b.try_retry_at(13_000)).count();
        assert_eq!(granted as u64, MIN_RETRIES);
    }

    #[test]
    fn a_few_retries_are_always_allowed() {
        let b = RetryBudget::default();
        b.record_request_at(5_000);
        let granted = (0..10).filter(|_| b.try_retry_at(5_001)).count();
        assert_eq!(granted as u64, MIN_RETRIES);
    }
}
