//! Runtime state of one upstream: its servers (each with its pool of keep-alive HTTP/1.1
//! connections and its live state: in-flight, health, ejection) and server choice.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use crate::config::{Balance, KeySource, UpstreamSettings};
use crate::metrics::{ServerMetrics, UpstreamMetrics};
use crate::policy::client_key::{key_material, KeyInput, KeyMaterial};

use super::balance::{hash_bytes, Balancer};
use super::pool::ServerPool;
use super::retry_budget::RetryBudget;
use super::server_state::{now_ms, ServerState};

/// One server of an upstream, as requests address it.
pub struct Server {
    /// `host:port` as configured: the label in logs and metrics.
    pub label: String,
    /// The address resolved at load time: what connections go to.
    pub addr: SocketAddr,
    /// Idle connections to this server (shared with response bodies that hand theirs back).
    pub pool: Arc<ServerPool>,
    /// In-flight count, health and ejection (shared with bodies and the health checker).
    pub state: Arc<ServerState>,
}

pub struct Upstream {
    pub settings: UpstreamSettings,
    pub servers: Vec<Server>,
    balancer: Balancer,
    /// `gateway_retries_total{upstream}`.
    retries: Counter,
    budget: RetryBudget,
}

/// Why no server could be chosen.
#[derive(Debug, PartialEq, Eq)]
pub enum NoServer {
    /// Every server is unhealthy, ejected or already tried.
    Unusable,
    /// Some usable server is at its `max_connections` cap: worth a short wait.
    AtCapacity,
}

impl Upstream {
    /// `metrics` are this upstream's handles (same server order). `previous` is the running
    /// upstream of the same name on a reload: a server it had at the same address keeps its
    /// live state (in-flight count, ejection, latency estimate, health: see
    /// [`ServerState`]) and, when `pool:` is unchanged, its idle connections. A server whose
    /// health check is removed while it is unhealthy starts afresh (healthy), so a failed
    /// reload never changes the running state.
    pub fn new(
        settings: UpstreamSettings,
        metrics: Option<&UpstreamMetrics>,
        previous: Option<&Upstream>,
    ) -> Self {
        let servers = settings
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let kept = previous.and_then(|p| {
                    p.servers
                        .iter()
                        .find(|old| old.label == s.address && old.addr == s.socket_addr)
                        .map(|old| (old, p.settings.pool == settings.pool))
                });
                let state = kept
                    .map(|(old, _)| &old.state)
                    .filter(|state| settings.health_check.is_some() || state.is_healthy())
                    .map(Arc::clone)
                    .unwrap_or_else(|| {
                        let m = metrics
                            .and_then(|m| m.servers.get(i))
                            .cloned()
                            .unwrap_or_else(|| ServerMetrics::detached(&s.address));
                        Arc::new(ServerState::new(&settings.name, &s.address, true, m))
                    });
                let pool = match kept {
                    Some((old, true)) => Arc::clone(&old.pool),
                    _ => Arc::new(ServerPool::new(&settings.pool)),
                };
                Server {
                    label: s.address.clone(),
                    addr: s.socket_addr,
                    pool,
                    state,
                }
            })
            .collect();
        let weighted: Vec<(&str, u32)> = settings
            .servers
            .iter()
            .map(|s| (s.address.as_str(), s.weight))
            .collect();
        Upstream {
            balancer: Balancer::new(settings.balance, &weighted),
            retries: metrics.map(|m| m.retries.clone()).unwrap_or_default(),
            budget: RetryBudget::default(),
            settings,
            servers,
        }
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The server for the next attempt of a request: usable now, under its cap, and not in
    /// `tried` (so a retry lands elsewhere).
    ///
    /// Panic mode (Envoy's name): when passive ejection has taken out every healthy server,
    /// the ejections are ignored and the request goes to one of the healthy servers anyway.
    /// Ejection is for an outlier among its peers; when all of them failed together (a
    /// database blip making every worker answer 500 for a moment), ejecting them all would
    /// turn a short blip into `eject_for` of 503s while the active checks pass. Servers that
    /// failed their active checks stay out.
    pub fn choose(&self, hash: Option<u64>, tried: &[usize]) -> Result<usize, NoServer> {
        self.choose_at(hash, tried, now_ms())
    }

    /// [`Upstream::choose`] at `now` (`now_ms()`).
    pub fn choose_at(
        &self,
        hash: Option<u64>,
        tried: &[usize],
        now: u64,
    ) -> Result<usize, NoServer> {
        let cap = self.settings.max_connections;
        let room = |i: usize| cap == 0 || self.servers[i].state.in_flight() < cap;
        let ok = |i: usize| !tried.contains(&i) && self.servers[i].state.usable(now) && room(i);
        let load = |i: usize| self.servers[i].state.in_flight() as u64;
        let latency = |i: usize| self.servers[i].state.latency_us(now);
        if let Some(i) = self.balancer.pick(hash, &ok, &load, &latency) {
            return Ok(i);
        }
        if (0..self.servers.len()).any(|i| !tried.contains(&i) && self.servers[i].state.usable(now))
        {
            // Some server may take the request once it has room.
            return Err(if cap > 0 {
                NoServer::AtCapacity
            } else {
                NoServer::Unusable
            });
        }
        if self.servers.iter().any(|s| s.state.usable(now)) {
            // Only servers this request already tried are usable: no panic for a retry.
            return Err(NoServer::Unusable);
        }
        let panic = |i: usize| !tried.contains(&i) && self.servers[i].state.is_healthy() && room(i);
        if let Some(i) = self.balancer.pick(hash, &panic, &load, &latency) {
            static PANIC: crate::observability::Throttle = crate::observability::Throttle::new();
            if let Some(held_back) = PANIC.ready() {
                tracing::warn!(
                    upstream = %self.name(),
                    more_since_last = held_back,
                    "every healthy server is ejected; ignoring the ejections (panic mode)"
                );
            }
            return Ok(i);
        }
        let capped = (0..self.servers.len())
            .any(|i| !tried.contains(&i) && self.servers[i].state.is_healthy() && !room(i));
        Err(if capped {
            NoServer::AtCapacity
        } else {
            NoServer::Unusable
        })
    }

    /// The request's key for `consistent_hash` (`None` for other strategies).
    pub fn request_hash(&self, input: &KeyInput<'_>) -> Option<u64> {
        if self.balancer.strategy() != Balance::ConsistentHash {
            return None;
        }
        let source = self
            .settings
            .hash_key
            .as_ref()
            .unwrap_or(&KeySource::ClientIp);
        Some(match key_material(source, input) {
            KeyMaterial::Text(text) => hash_bytes(&text),
            KeyMaterial::Ip(ip) => hash_bytes(ip.to_string().as_bytes()),
        })
    }

    /// Whether response latencies feed server choice (`p2c`).
    pub fn tracks_latency(&self) -> bool {
        self.balancer.strategy() == Balance::P2c
    }

    /// A request to this upstream started (the retry budget's base); returns the `now_ms()`
    /// it read, for the request's first [`Upstream::choose_at`].
    pub fn record_request(&self) -> u64 {
        let now = now_ms();
        self.budget.record_request_at(now);
        now
    }

    /// Whether the retry budget allows one more retry; a granted retry is counted in
    /// `gateway_retries_total`.
    pub fn try_retry(&self) -> bool {
        let granted = self.budget.try_retry();
        if granted {
            self.retries.inc();
        }
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use serde_json::{json, Map, Value};

    fn upstream(extra: &str) -> Upstream {
        let yaml = format!(
            "listeners: [{{ name: http, bind: \"127.0.0.1:0\" }}]\n\
             upstreams:\n  app:\n    servers: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n{extra}\n\
             routes: [{{ match: {{ path_prefix: / }}, upstream: app }}]\n"
        );
        let dir = std::env::temp_dir();
        let settings = crate::config::load_str(&yaml, &dir, dir.join("gateway.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        Upstream::new(settings.upstreams[0].clone(), None, None)
    }

    fn hash_of(u: &Upstream, claims: Option<&Map<String, Value>>) -> Option<u64> {
        let headers = HeaderMap::new();
        u.request_hash(&KeyInput {
            peer: std::net::IpAddr::from([10, 0, 0, 1]),
            peer_trusted: false,
            trusted_proxies: &[],
            headers: &headers,
            claims,
        })
    }

    #[test]
    fn claim_hash_key_uses_the_verified_claim() {
        let u = upstream("    balance: consistent_hash\n    hash_key: \"claim:user_id\"");
        let c42 = json!({"user_id": 42})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let c43 = json!({"user_id": 43})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let h42 = hash_of(&u, Some(&c42));
        assert!(h42.is_some());
        assert_eq!(h42, hash_of(&u, Some(&c42)));
        assert_ne!(h42, hash_of(&u, Some(&c43)));
        // No token: the client address is the key.
        assert!(hash_of(&u, None).is_some());
        assert_ne!(hash_of(&u, None), h42);
    }

    #[test]
    fn other_strategies_take_no_hash_and_avoid_tried_servers() {
        let u = upstream("    balance: least_conn");
        assert_eq!(hash_of(&u, None), None);
        let first = u.choose(None, &[]);
        assert!(first.is_ok());
        assert_eq!(u.choose(None, &[0, 1, 2]), Err(NoServer::Unusable));
        let retry = u.choose(None, &[0]);
        assert!(matches!(retry, Ok(i) if i != 0));
    }

    fn eject(u: &Upstream, i: usize) {
        let passive = crate::config::PassiveSettings {
            consecutive_failures: 1,
            eject_for: std::time::Duration::from_secs(60),
            failure_percentage: 50,
        };
        u.servers[i].state.record_failure(Some(&passive));
        assert!(u.servers[i].state.is_ejected(now_ms()));
    }

    #[test]
    fn with_every_healthy_server_ejected_the_ejections_are_ignored() {
        let u = upstream("");
        eject(&u, 0);
        eject(&u, 1);
        // One server left: it takes everything, and a retry does not go to the ejected.
        assert_eq!(u.choose(None, &[]), Ok(2));
        assert_eq!(u.choose(None, &[2]), Err(NoServer::Unusable));
        eject(&u, 2);
        // Every server ejected: panic mode spreads requests over all of them.
        let mut seen = [0; 3];
        for _ in 0..30 {
            seen[u.choose(None, &[]).unwrap_or_else(|e| panic!("{e:?}"))] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
        // A retry still avoids the servers this request tried.
        assert_eq!(u.choose(None, &[0, 1]), Ok(2));
        // Failing active checks is not overridden.
        u.servers[1].state.set_healthy(false);
        for _ in 0..10 {
            assert_ne!(u.choose(None, &[]), Ok(1));
        }
        u.servers[0].state.set_healthy(false);
        u.servers[2].state.set_healthy(false);
        assert_eq!(u.choose(None, &[]), Err(NoServer::Unusable));
    }
}
