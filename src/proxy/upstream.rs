//! Runtime state of one upstream: its servers, the pooled keep-alive HTTP/1.1 client that
//! talks to them, and server choice (plain weighted round-robin until the balancer issue).

use std::sync::atomic::{AtomicUsize, Ordering};

use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamSettings;
use crate::error::GatewayBody;

pub type UpstreamClient = Client<HttpConnector, GatewayBody>;

/// One server of an upstream, as requests address it.
#[derive(Debug)]
pub struct Server {
    /// `host:port` as configured: the label in logs and metrics.
    pub label: String,
    /// The resolved socket address as a URI authority (what the client connects to).
    pub authority: Authority,
}

pub struct Upstream {
    pub settings: UpstreamSettings,
    pub servers: Vec<Server>,
    /// Server indices, each repeated `weight` times, interleaved.
    schedule: Vec<usize>,
    next: AtomicUsize,
    pub client: UpstreamClient,
}

impl Upstream {
    pub fn new(settings: UpstreamSettings) -> Self {
        let servers = settings
            .servers
            .iter()
            .map(|s| Server {
                label: s.address.clone(),
                authority: Authority::try_from(s.socket_addr.to_string())
                    .unwrap_or_else(|_| Authority::from_static("0.0.0.0:0")),
            })
            .collect();
        let schedule = interleaved_schedule(settings.servers.iter().map(|s| s.weight));

        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(settings.pool.max_idle_per_server)
            .pool_idle_timeout(settings.pool.idle_timeout)
            .retry_canceled_requests(true)
            .set_host(false)
            .build(connector);
        Upstream {
            settings,
            servers,
            schedule,
            next: AtomicUsize::new(0),
            client,
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
