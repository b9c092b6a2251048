//! Runtime state of one upstream: its servers (each with its pool of keep-alive HTTP/1.1
//! connections) and server choice (plain weighted round-robin until the balancer issue).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::UpstreamSettings;

use super::pool::ServerPool;

/// One server of an upstream, as requests address it.
pub struct Server {
    /// `host:port` as configured: the label in logs and metrics.
    pub label: String,
    /// The address resolved at load time: what connections go to.
    pub addr: SocketAddr,
    /// Idle connections to this server (shared with response bodies that hand theirs back).
    pub pool: Arc<ServerPool>,
}

pub struct Upstream {
    pub settings: UpstreamSettings,
    pub servers: Vec<Server>,
    /// Server indices, each repeated `weight` times, interleaved.
    schedule: Vec<usize>,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(settings: UpstreamSettings) -> Self {
        let servers = settings
            .servers
            .iter()
            .map(|s| Server {
                label: s.address.clone(),
                addr: s.socket_addr,
                pool: Arc::new(ServerPool::new(&settings.pool)),
            })
            .collect();
        let schedule = interleaved_schedule(settings.servers.iter().map(|s| s.weight));
        Upstream {
            settings,
            servers,
            schedule,
            next: AtomicUsize::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The server for attempt number `attempt` (0-based) of a request: consecutive attempts
    /// go to consecutive entries of the schedule, so a retry lands elsewhere when it can.
    pub fn pick(&self, first: usize, attempt: usize) -> Option<&Server> {
        if self.schedule.is_empty() {
            return None;
        }
        let mut index = self.schedule[(first + attempt) % self.schedule.len()];
        if attempt > 0 && self.servers.len() > 1 {
            // Weighted schedules repeat a server; step until the server differs from the first.
            let first_server = self.schedule[first % self.schedule.len()];
            let mut step = 0;
            while index == first_server && step < self.schedule.len() {
                step += 1;
                index = self.schedule[(first + attempt + step) % self.schedule.len()];
            }
        }
        self.servers.get(index)
    }

    /// The schedule position for a new request.
    pub fn next_slot(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// `[3, 1]` → `[0, 1, 0, 0]`: each server as often as its weight, spread out.
fn interleaved_schedule(weights: impl Iterator<Item = u32>) -> Vec<usize> {
    let weights: Vec<u32> = weights.collect();
    let max = weights.iter().copied().max().unwrap_or(0);
    let mut schedule = Vec::new();
    for round in 0..max {
        for (i, w) in weights.iter().enumerate() {
            if round < *w {
                schedule.push(i);
            }
        }
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_weights() {
        assert_eq!(interleaved_schedule([1, 2].into_iter()), vec![0, 1, 1]);
        assert_eq!(interleaved_schedule([3, 1].into_iter()), vec![0, 1, 0, 0]);
        assert!(interleaved_schedule(std::iter::empty()).is_empty());
    }
}
