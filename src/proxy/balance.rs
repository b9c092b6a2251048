//! Server choice for one upstream, among the servers a request may use now (healthy, not
//! ejected, under their connection cap, not already tried by this request):
//!
//! - `round_robin`: smooth weighted round-robin as nginx does it (no bursts to one server).
//! - `least_conn`: fewest in-flight requests per unit of weight; ties go round-robin by weight.
//! - `p2c`: two servers drawn at random (in proportion to weight), the less loaded one wins
//!   (in-flight requests + 1, times the peak-EWMA latency when one is over 2× the other's).
//! - `consistent_hash`: a ring of virtual nodes (100 per unit of weight) keyed by server
//!   address, so removing one of N servers remaps only about 1/N of keys; a key whose server
//!   is unusable walks on to the next server on the ring.

use std::sync::{Mutex, PoisonError};

use crate::config::Balance;

/// Virtual nodes per unit of weight on the consistent-hash ring.
const VNODES: u32 = 100;
/// `p2c` weighs latency only when the slower server is this much (µs) slower, besides 2×.
const LATENCY_FLOOR_US: u64 = 5_000;

pub struct Balancer {
    strategy: Balance,
    weights: Vec<u64>,
    /// Smooth weighted round-robin's current weights.
    current: Mutex<Vec<i64>>,
    /// Sorted `(point, server)` pairs (consistent_hash only).
    ring: Vec<(u64, usize)>,
}

impl Balancer {
    /// `servers` are `(address, weight)` in configuration order.
    pub fn new(strategy: Balance, servers: &[(&str, u32)]) -> Self {
        let weights: Vec<u64> = servers.iter().map(|(_, w)| u64::from(*w).max(1)).collect();
        let ring = match strategy {
            Balance::ConsistentHash => build_ring(servers),
            _ => Vec::new(),
        };
        Balancer {
            strategy,
            current: Mutex::new(vec![0; weights.len()]),
            weights,
            ring,
        }
    }

    pub fn strategy(&self) -> Balance {
        self.strategy
    }

    /// The server for a request: `ok(i)` says whether server `i` may take it, `load(i)` is its
    /// in-flight count, `latency(i)` its peak-EWMA latency (`p2c`), `hash` the request's key
    /// (`consistent_hash`).
    pub fn pick(
        &self,
        hash: Option<u64>,
        ok: &dyn Fn(usize) -> bool,
        load: &dyn Fn(usize) -> u64,
        latency: &dyn Fn(usize) -> u64,
    ) -> Option<usize> {
        match self.strategy {
            Balance::RoundRobin => self.smooth(ok),
            Balance::LeastConn => self.least_conn(ok, load),
            Balance::P2c => self.p2c(ok, load, latency),
            Balance::ConsistentHash => match hash {
                Some(h) => self.on_ring(h, ok),
                None => self.smooth(ok),
            },
        }
    }

    /// nginx's smooth weighted round-robin over the servers `ok` allows.
    fn smooth(&self, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, w) in self.weights.iter().enumerate() {
            if !ok(i) {
                continue;
            }
            let w = i64::try_from(*w).unwrap_or(i64::MAX / 4);
            current[i] += w;
            total += w;
            if best.map_or(true, |b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
        }
        best
    }

    fn least_conn(&self, ok: &dyn Fn(usize) -> bool, load: &dyn Fn(usize) -> u64) -> Option<usize> {
        // Lowest load/weight, compared as load_a * w_b < load_b * w_a.
        let mut best: Option<(u64, u64)> = None;
        for (i, w) in self.weights.iter().enumerate() {
            if !ok(i) {
                continue;
            }
            let l = load(i);
            if best.map_or(true, |(bl, bw)| l * bw < bl * w) {
                best = Some((l, *w));
            }
        }
        let (bl, bw) = best?;
        // Among the least loaded, weighted round-robin.
        self.smooth(&|i| ok(i) && load(i) * bw == bl * self.weights[i])
    }

    fn p2c(
        &self,
        ok: &dyn Fn(usize) -> bool,
        load: &dyn Fn(usize) -> u64,
        latency: &dyn Fn(usize) -> u64,
    ) -> Option<usize> {
        let total: u64 = (0..self.weights.len())
            .filter(|i| ok(*i))
            .map(|i| self.weights[i])
            .sum();
        if total == 0 {
            return None;
        }
        let a = self.weighted_draw(total, ok)?;
        // Two distinct servers: drawn with replacement, a slow server would be paired with
        // itself 1/N² of the time and get that traffic whatever its cost. It is still probed
        // as its latency estimate decays (server_state::EWMA_DECAY_MS).
        let others = |i: usize| i != a && ok(i);
        let Some(b) = self.weighted_draw(total - self.weights[a], &others) else {
            return Some(a); // the only usable server
        };
        // The draws already follow the weights: compare raw costs (dividing by weight too
        // would count it twice). Latency only counts when one server is clearly slower (over
        // 2× and by more than LATENCY_FLOOR_US), so jitter between equal servers on a fast
        // network cannot pin traffic to whichever looked faster.
        let (la, lb) = (load(a) + 1, load(b) + 1);
        let (ta, tb) = (latency(a).max(1), latency(b).max(1));
        let (slow, fast) = (ta.max(tb), ta.min(tb));
        let (ca, cb) = match slow > fast.saturating_mul(2) && slow - fast > LATENCY_FLOOR_US {
            true => (la.saturating_mul(ta), lb.saturating_mul(tb)),
            false => (la, lb),
        };
        if cb < ca {
            Some(b)
        } else {
            Some(a)
        }
    }

    fn weighted_draw(&self, total: u64, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        if total == 0 {
            return None;
        }
        let mut r = fastrand::u64(0..total);
        for (i, w) in self.weights.iter().enumerate() {
            if !ok(i) {
                continue;
            }
            if r < *w {
                return Some(i);
            }
            r -= w;
        }
        None
    }

    fn on_ring(&self, hash: u64, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|(p, _)| *p < hash);
        let n = self.ring.len();
        let mut rejected: Vec<usize> = Vec::new();
        for step in 0..n {
            let server = self.ring[(start + step) % n].1;
            if rejected.contains(&server) {
                continue;
            }
            if ok(server) {
                return Some(server);
            }
            rejected.push(server);
            if rejected.len() == self.weights.len() {
                break;
            }
        }
        None
    }
}

fn build_ring(servers: &[(&str, u32)]) -> Vec<(u64, usize)> {
    let mut ring = Vec::new();
    for (i, (address, weight)) in servers.iter().enumerate() {
        for v in 0..VNODES.saturating_mul((*weight).max(1)) {
            ring.push((hash_bytes(format!("{address}#{v}").as_bytes()), i));
        }
    }
    ring.sort_unstable();
    ring
}

/// FNV-1a with a final avalanche (splitmix64): stable across runs and builds.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(b: &Balancer, n: usize, rounds: usize, ok: &dyn Fn(usize) -> bool) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..rounds {
            if let Some(i) = b.pick(None, ok, &|_| 0, &|_| 0) {
                c[i] += 1;
            }
        }
        c
    }

    #[test]
    fn smooth_round_robin_interleaves_by_weight() {
        let b = Balancer::new(Balance::RoundRobin, &[("a", 5), ("b", 1), ("c", 1)]);
        let seq: Vec<usize> = (0..7)
            .filter_map(|_| b.pick(None, &|_| true, &|_| 0, &|_| 0))
            .collect();
        // nginx's example: a a b a c a a
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn unusable_servers_are_skipped_and_none_means_none() {
        for s in [Balance::RoundRobin, Balance::LeastConn, Balance::P2c] {
            let b = Balancer::new(s, &[("a", 1), ("b", 2), ("c", 1)]);
            let c = counts(&b, 3, 100, &|i| i != 1);
            assert_eq!(c[1], 0, "{s:?}");
            assert_eq!(c[0] + c[2], 100, "{s:?}");
            assert_eq!(b.pick(None, &|_| false, &|_| 0, &|_| 0), None);
        }
    }

    #[test]
    fn idle_strategies_follow_weights() {
        for s in [Balance::RoundRobin, Balance::LeastConn, Balance::P2c] {
            let b = Balancer::new(s, &[("a", 1), ("b", 3)]);
            let c = counts(&b, 2, 4000, &|_| true);
            assert!((2700..=3300).contains(&c[1]), "{s:?}: {c:?}");
        }
    }

    #[test]
    fn least_conn_and_p2c_prefer_the_less_loaded() {
        let load = |i: usize| if i == 0 { 10 } else { 1 };
        let b = Balancer::new(Balance::LeastConn, &[("a", 1), ("b", 1)]);
        assert_eq!(b.pick(None, &|_| true, &load, &|_| 0), Some(1));
        let b = Balancer::new(Balance::P2c, &[("a", 1), ("b", 1)]);
        let zeros = (0..200)
            .filter(|_| b.pick(None, &|_| true, &load, &|_| 0) == Some(0))
            .count();
        // Server 0 only wins when both draws land on it (~1/4).
        assert!(zeros < 90, "{zeros}");
    }

    #[test]
    fn p2c_avoids_a_clearly_slower_server() {
        let b = Balancer::new(Balance::P2c, &[("a", 1), ("b", 1)]);
        let slow = |i: usize| if i == 0 { 50_000 } else { 1_000 };
        let zeros = (0..200)
            .filter(|_| b.pick(None, &|_| true, &|_| 0, &slow) == Some(0))
            .count();
        // Two distinct draws: the slow one always meets the fast one and loses.
        assert_eq!(zeros, 0);
        // A 4× gap of 3 ms is jitter on a fast network, not a slow server: weights rule.
        let jitter = |i: usize| if i == 0 { 4_000 } else { 1_000 };
        let zeros = (0..1000)
            .filter(|_| b.pick(None, &|_| true, &|_| 0, &jitter) == Some(0))
            .count();
        assert!((400..600).contains(&zeros), "{zeros}");
        // The only usable server is chosen however slow.
        let only_a = |i: usize| i == 0;
        assert_eq!(b.pick(None, &only_a, &|_| 0, &slow), Some(0));
    }

    #[test]
    fn ring_is_stable_and_remaps_about_one_in_n() {
        let three = Balancer::new(Balance::ConsistentHash, &[("a", 1), ("b", 1), ("c", 1)]);
        let two = Balancer::new(Balance::ConsistentHash, &[("a", 1), ("b", 1)]);
        let keys: Vec<u64> = (0..3000)
            .map(|k| hash_bytes(format!("user-{k}").as_bytes()))
            .collect();
        let mut moved = 0;
        let mut per = [0usize; 3];
        for k in &keys {
            let a = three.pick(Some(*k), &|_| true, &|_| 0, &|_| 0).unwrap_or(9);
            assert_eq!(three.pick(Some(*k), &|_| true, &|_| 0, &|_| 0), Some(a));
            per[a] += 1;
            let b = two.pick(Some(*k), &|_| true, &|_| 0, &|_| 0).unwrap_or(9);
            if a != 2 && a != b {
                moved += 1;
            }
            // With server c unusable, keys walk to the same place as on the 2-server ring.
            let walked = three.pick(Some(*k), &|i| i != 2, &|_| 0, &|_| 0);
            assert_eq!(walked, Some(b));
        }
        assert_eq!(moved, 0, "keys of kept servers moved");
        for p in per {
            assert!((700..=1300).contains(&p), "{per:?}");
        }
    }
}
