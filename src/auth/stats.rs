//! Per-policy rejection counters, one atomic per [`reasons::ALL`] label: the data behind
//! `gateway_jwt_rejections_total{policy,reason}`.

use std::sync::atomic::{AtomicU64, Ordering};

use super::reasons;

/// How many requests a policy refused, by reason.
#[derive(Debug, Default)]
pub struct RejectionCounts([AtomicU64; reasons::ALL.len()]);

impl RejectionCounts {
    /// Counts one rejection; a reason outside [`reasons::ALL`] is ignored.
    pub fn record(&self, reason: &str) {
        if let Some(i) = reasons::ALL.iter().position(|r| *r == reason) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count for one reason (0 for an unknown reason).
    pub fn get(&self, reason: &str) -> u64 {
        reasons::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.0[i].load(Ordering::Relaxed))
    }

    /// Every reason with its count, zeros included, in [`reasons::ALL`] order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        reasons::ALL
            .iter()
            .zip(&self.0)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// All rejections, every reason together.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason() {
        let c = RejectionCounts::default();
        c.record(reasons::EXPIRED);
        c.record(reasons::EXPIRED);
        c.record(reasons::MISSING);
        c.record("not_a_reason");
        assert_eq!(c.get(reasons::EXPIRED), 2);
        assert_eq!(c.get(reasons::MISSING), 1);
        assert_eq!(c.get(reasons::BAD_SIGNATURE), 0);
        assert_eq!(c.total(), 3);
        let snap = c.snapshot();
        assert_eq!(snap.len(), reasons::ALL.len());
        assert!(snap.contains(&(reasons::EXPIRED, 2)));
    }
}
