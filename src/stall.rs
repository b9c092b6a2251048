//! [`StallTimer`]: how long one side has kept us waiting, for the timeouts that bound a body
//! that stops moving (an HTTP/2 upload, an upstream's response body).

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Armed when a wait begins, disarmed by any progress; the timer itself is made on the
/// first wait only, so a body that never waits costs nothing.
pub struct StallTimer {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl StallTimer {
    pub fn new(limit: Duration) -> Self {
        StallTimer {
            limit,
            timer: None,
            waiting: false,
        }
    }

    /// The awaited side moved: the next wait starts a fresh `limit`.
    pub fn progress(&mut self) {
        self.waiting = false;
    }

    /// The awaited side is still pending: true once this wait has lasted `limit`
    /// (registering `cx` to be woken then).
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.waiting {
            self.waiting = true;
            let deadline = Instant::now() + self.limit;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn only_an_unbroken_wait_of_the_limit_expires() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut stall = StallTimer::new(Duration::from_secs(10));
        assert!(!stall.poll_expired(&mut cx));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!stall.poll_expired(&mut cx));
        // Progress: the next wait gets the whole limit again.
        stall.progress();
        assert!(!stall.poll_expired(&mut cx));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!stall.poll_expired(&mut cx));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(stall.poll_expired(&mut cx));
    }
}
