//! Per-route rate limiting: a token bucket per key (governor's GCRA: a bucket holds `burst`
//! and refills at `rate`), with the number of keys a route tracks capped.
//!
//! Memory stays bounded whatever clients send. A key is a 128-bit digest of its text under
//! random SipHash keys (fixed size, and clients cannot aim for a collision), and a route keeps
//! at most [`MAX_KEYS_PER_ROUTE`] of them in [`SHARDS`] governor stores. Each shard counts
//! the checks it may still take before it could pass its share of the cap; when that budget
//! runs out it drops the keys whose bucket is full again (`retain_recent`: nothing is lost),
//! and if still over three quarters of its share it is cleared: its keys start over with a
//! full bucket. A flood of fresh keys thus costs a bounded table and, at worst, an extra burst
//! for the keys of one shard at a time — never unbounded memory.

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::client_key::{key_material, KeyInput, KeyMaterial};
use crate::config::features::RateLimitSettings;
use crate::config::KeySource;

/// The most keys one route tracks at a time (~50 bytes each, so a few MiB a route).
pub const MAX_KEYS_PER_ROUTE: usize = 100_000;
/// Stores per route: clearing one forgets 1/16 of the keys, not all of them.
const SHARDS: usize = 16;
/// Checks that may sit between taking budget and inserting their key while a shard is
/// measured (a bound on concurrently checking threads), so the cap holds under concurrency.
const IN_FLIGHT_SLACK: usize = 256;

type Limiter<C> =
    RateLimiter<u128, DashMapStateStore<u128>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A request over its route's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// When the next request with this key would pass.
    pub retry_after: Duration,
}

/// The limiter of one route with `rate_limit:`; built with the route's state, so a reload
/// starts every bucket afresh.
pub struct RouteLimiter<C: Clock = DefaultClock> {
    key: KeySource,
    quota: Quota,
    clock: C,
    digest: [RandomState; 2],
    shard_cap: usize,
    shards: Box<[Shard<C>]>,
    cleared: AtomicU64,
}

struct Shard<C: Clock> {
    limiter: ArcSwap<Limiter<C>>,
    /// Checks left before the shard could pass `shard_cap` keys (each check adds at most one).
    budget: AtomicIsize,
    maintenance: Mutex<()>,
}

impl RouteLimiter {
    pub fn new(settings: &RateLimitSettings) -> RouteLimiter {
        RouteLimiter::with_clock(settings, DefaultClock::default(), MAX_KEYS_PER_ROUTE)
    }
}

impl<C: Clock + Clone> RouteLimiter<C> {
    /// A limiter on `clock` tracking at most `max_keys` keys (at least 8 per shard).
    pub fn with_clock(settings: &RateLimitSettings, clock: C, max_keys: usize) -> Self {
        let quota = quota(settings);
        let shard_cap = (max_keys / SHARDS).max(8);
        let shards = (0..SHARDS)
            .map(|_| Shard {
                limiter: ArcSwap::from_pointee(Limiter::dashmap_with_clock(quota, clock.clone())),
                budget: AtomicIsize::new(0),
                maintenance: Mutex::new(()),
            })
            .collect();
        RouteLimiter {
            key: settings.key.clone(),
            quota,
            clock,
            digest: [RandomState::new(), RandomState::new()],
            shard_cap,
            shards,
            cleared: AtomicU64::new(0),
        }
    }

    /// Counts the request against its key's bucket.
    pub fn check(&self, input: &KeyInput<'_>) -> Result<(), RateLimited> {
        self.check_material(&key_material(&self.key, input))
    }

    fn check_material(&self, material: &KeyMaterial) -> Result<(), RateLimited> {
        let key = self.digest(material);
        // The high half picks the shard; the store hashes the whole key again.
        let shard = &self.shards[(key >> 64) as usize % SHARDS];
        self.take_budget(shard);
        let limiter = shard.limiter.load();
        limiter.check_key(&key).map_err(|not_until| RateLimited {
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// Keys tracked right now, over all shards.
    pub fn tracked_keys(&self) -> usize {
        self.shards.iter().map(|s| s.limiter.load().len()).sum()
    }

    /// How often a shard had to be cleared because its keys were all still in use.
    pub fn cleared_shards(&self) -> u64 {
        self.cleared.load(Ordering::Relaxed)
    }

    /// Two SipHash-1-3 digests under independent random keys.
    fn digest(&self, material: &KeyMaterial) -> u128 {
        let [high, low] = &self.digest;
        (u128::from(high.hash_one(material)) << 64) | u128::from(low.hash_one(material))
    }

    fn take_budget(&self, shard: &Shard<C>) {
        while shard.budget.fetch_sub(1, Ordering::AcqRel) <= 0 {
            let _guard = shard
                .maintenance
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Another thread may have refilled the budget while this one waited.
            if shard.budget.load(Ordering::Acquire) <= 0 {
                let room = self.maintain(shard);
                shard.budget.store(room, Ordering::Release);
            }
        }
    }

    /// Brings the shard down to at most 3/4 of its cap; returns the checks it may take next.
    fn maintain(&self, shard: &Shard<C>) -> isize {
        let low = self.shard_cap * 3 / 4;
        let limiter = shard.limiter.load();
        let mut len = limiter.len();
        if len > low {
            limiter.retain_recent();
            limiter.shrink_to_fit();
            len = limiter.len();
        }
        if len > low {
            shard.limiter.store(Arc::new(Limiter::dashmap_with_clock(
                self.quota,
                self.clock.clone(),
            )));
            self.cleared.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(keys = len, "rate-limit shard full of active keys: cleared");
            len = 0;
        }
        let slack = IN_FLIGHT_SLACK.min(self.shard_cap / 8);
        let room = self.shard_cap.saturating_sub(len + slack).max(1);
        isize::try_from(room).unwrap_or(isize::MAX)
    }
}

/// `burst` cells, one more every `per / rate` (at least 1 ns).
fn quota(settings: &RateLimitSettings) -> Quota {
    let period = (settings.per / settings.rate.max(1)).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(settings.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn settings(rate: u32, per_secs: u64, burst: u32) -> RateLimitSettings {
        RateLimitSettings {
            rate,
            per: Duration::from_secs(per_secs),
            burst,
            key: KeySource::ClientIp,
        }
    }

    fn ip_key(n: u32) -> KeyMaterial {
        KeyMaterial::Ip(IpAddr::V4(Ipv4Addr::from(n)))
    }

    #[test]
    fn burst_then_limited_then_refilled() {
        let clock = FakeRelativeClock::default();
        let limiter = RouteLimiter::with_clock(&settings(10, 1, 3), clock.clone(), 1000);
        let a = ip_key(1);
        for _ in 0..3 {
            assert_eq!(limiter.check_material(&a), Ok(()));
        }
        let limited = limiter.check_material(&a).unwrap_err();
        assert_eq!(limited.retry_after, Duration::from_millis(100));
        clock.advance(Duration::from_millis(60));
        let limited = limiter.check_material(&a).unwrap_err();
        assert_eq!(limited.retry_after, Duration::from_millis(40));
        // Another key has its own full bucket.
        assert_eq!(limiter.check_material(&ip_key(2)), Ok(()));
        clock.advance(Duration::from_millis(40));
        assert_eq!(limiter.check_material(&a), Ok(()));
        assert!(limiter.check_material(&a).is_err());
        // A whole period refills the whole burst, never more.
        clock.advance(Duration::from_secs(10));
        let passed = (0..10)
            .filter(|_| limiter.check_material(&a).is_ok())
            .count();
        assert_eq!(passed, 3);
    }

    #[test]
    fn rates_per_minute_and_hour() {
        for (per, period) in [(60, 12), (3600, 720)] {
            let clock = FakeRelativeClock::default();
            let limiter = RouteLimiter::with_clock(&settings(5, per, 1), clock.clone(), 1000);
            assert!(limiter.check_material(&ip_key(1)).is_ok());
            let limited = limiter.check_material(&ip_key(1)).unwrap_err();
            assert_eq!(limited.retry_after, Duration::from_secs(period));
        }
    }

    #[test]
    fn digests_separate_kinds_and_values() {
        let limiter = RouteLimiter::new(&settings(1, 1, 1));
        let v4 = KeyMaterial::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        let text = KeyMaterial::Text(b"10.0.0.1".to_vec());
        let v6 = KeyMaterial::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_ne!(limiter.digest(&v4), limiter.digest(&text));
        assert_ne!(limiter.digest(&v4), limiter.digest(&v6));
        assert_eq!(limiter.digest(&v4), limiter.digest(&v4.clone()));
        // Digests are keyed per limiter: another route (or a reload) hashes differently.
        assert_ne!(
            RouteLimiter::new(&settings(1, 1, 1)).digest(&v4),
            limiter.digest(&v4)
        );
    }

    /// Three times the cap in distinct clients within one refill period (nothing goes stale):
    /// the table never holds more than the cap, because whole shards are cleared. (1,000,000
    /// keys behave the same, a cycle of fill and clear per shard; 300k keeps a debug run ~1 s.)
    #[test]
    fn distinct_keys_beyond_the_cap_stay_within_it() {
        let clock = FakeRelativeClock::default();
        let limiter =
            RouteLimiter::with_clock(&settings(1, 3600, 1), clock.clone(), MAX_KEYS_PER_ROUTE);
        let started = std::time::Instant::now();
        let mut peak = 0;
        for n in 0..3 * MAX_KEYS_PER_ROUTE as u32 {
            assert!(limiter.check_material(&ip_key(n)).is_ok());
            if n % 4096 == 0 {
                peak = peak.max(limiter.tracked_keys());
            }
        }
        peak = peak.max(limiter.tracked_keys());
        assert!(peak <= MAX_KEYS_PER_ROUTE, "peak {peak}");
        assert!(
            peak > MAX_KEYS_PER_ROUTE / 2,
            "peak {peak}: the cap was not used"
        );
        assert!(limiter.cleared_shards() > 0);
        eprintln!("300k keys in {:?}, peak {peak}", started.elapsed());
    }

    /// Keys whose bucket is full again are dropped first, so a steady stream of fresh keys
    /// does not make the limiter forget a client it is limiting.
    #[test]
    fn stale_keys_go_first_and_active_ones_stay_limited() {
        let clock = FakeRelativeClock::default();
        // 1/s, burst 1, 100 keys a shard.
        let limiter = RouteLimiter::with_clock(&settings(1, 1, 1), clock.clone(), 1600);
        let victim = KeyMaterial::Text(b"victim".to_vec());
        let mut passed = 0;
        for n in 0..20_000u32 {
            // 100 fresh keys a second; the victim asks 10 times a second.
            assert!(limiter.check_material(&ip_key(n)).is_ok());
            if n % 10 == 0 && limiter.check_material(&victim).is_ok() {
                passed += 1;
            }
            assert!(limiter.tracked_keys() <= 1600);
            clock.advance(Duration::from_millis(10));
        }
        // 200 seconds went by: the victim got one request a second, no more.
        assert!(
            (200..=201).contains(&passed),
            "victim passed {passed} times"
        );
        assert_eq!(limiter.cleared_shards(), 0);
    }
}
