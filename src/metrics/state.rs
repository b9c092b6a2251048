//! The metric handles of one configuration: built with each [`crate::handler::State`], so
//! a request only indexes a `Vec` and bumps an atomic. Handles are clones of the registry's
//! series, so a reload that keeps a route's name keeps counting into the same series.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::{
    Histogram, JwtLabels, Metrics, RequestLabels, RouteLabel, ServerLabels, UpstreamLabel, NO_ROUTE,
};
use crate::auth::reasons;
use crate::config::Settings;
use crate::error::GatewayError;
use crate::proxy::Forwarded;

/// Every handle the request path needs for one configuration.
pub struct StateMetrics {
    /// One per `Settings::routes`, same order.
    pub routes: Vec<Arc<RouteMetrics>>,
    /// Requests that matched no route (`route="none"`).
    pub unrouted: Arc<RouteMetrics>,
    /// One per `Settings::upstreams`, same order.
    pub upstreams: Vec<UpstreamMetrics>,
    /// One per `Settings::jwt_policies`, same order.
    jwt: Vec<JwtMetrics>,
}

impl StateMetrics {
    pub fn build(metrics: &Metrics, settings: &Settings) -> StateMetrics {
        let routes = settings
            .routes
            .iter()
            .map(|r| Arc::new(RouteMetrics::new(metrics, &r.name, true)))
            .collect();
        let upstreams = settings
            .upstreams
            .iter()
            .map(|u| {
                let upstream: Arc<str> = Arc::from(u.name.as_str());
                let label = UpstreamLabel {
                    upstream: upstream.clone(),
                };
                UpstreamMetrics {
                    servers: u
                        .servers
                        .iter()
                        .map(|s| ServerMetrics::new(metrics, &upstream, &s.address))
                        .collect(),
                    duration: metrics.upstream_duration.get_or_create_owned(&label),
                    retries: metrics.retries.get_or_create_owned(&label),
                    name: upstream,
                }
            })
            .collect();
        let jwt = settings
            .jwt_policies
            .iter()
            .map(|p| {
                let policy: Arc<str> = Arc::from(p.name.as_str());
                let by_reason = reasons::ALL
                    .iter()
                    .map(|reason| {
                        metrics.jwt_rejections.get_or_create_owned(&JwtLabels {
                            policy: policy.clone(),
                            reason,
                        })
                    })
                    .collect();
                JwtMetrics { by_reason }
            })
            .collect();
        StateMetrics {
            routes,
            unrouted: Arc::new(RouteMetrics::new(metrics, NO_ROUTE, false)),
            upstreams,
            jwt,
        }
    }

    /// The handles for a route index, or the unrouted ones.
    pub fn route(&self, index: Option<usize>) -> &Arc<RouteMetrics> {
        index
            .and_then(|i| self.routes.get(i))
            .unwrap_or(&self.unrouted)
    }

    /// `gateway_jwt_rejections_total{policy,reason}` for policy `policy` (an index into
    /// `Settings::jwt_policies`).
    pub fn jwt_rejection(&self, policy: usize, reason: &'static str) {
        let Some(p) = self.jwt.get(policy) else {
            return;
        };
        if let Some(i) = reasons::ALL.iter().position(|r| *r == reason) {
            p.by_reason[i].inc();
        }
    }

    /// `gateway_rate_limited_total{route}`: for the rate-limit step (`route` indexes
    /// `Settings::routes`).
    pub fn rate_limited(&self, route: usize) {
        if let Some(r) = self.routes.get(route) {
            r.rate_limited.inc();
        }
    }

    /// `gateway_retries_total{upstream}` (the proxy counts through its own clone of the
    /// counter, `Upstream::count_retry`).
    pub fn retry(&self, upstream: usize) {
        if let Some(u) = self.upstreams.get(upstream) {
            u.retries.inc();
        }
    }

    /// Sets `gateway_upstream_server_healthy` (the proxy's server state does this on every
    /// health transition; it also carries health across reloads).
    pub fn set_server_health(&self, upstream: usize, server: usize, healthy: bool) {
        if let Some(s) = self
            .upstreams
            .get(upstream)
            .and_then(|u| u.servers.get(server))
        {
            s.set_healthy(healthy);
        }
    }

    pub(crate) fn server_labels(&self) -> impl Iterator<Item = ServerLabels> + '_ {
        self.upstreams.iter().flat_map(|u| {
            u.servers.iter().map(|s| ServerLabels {
                upstream: u.name.clone(),
                server: s.address.clone(),
            })
        })
    }
}

/// Per-route handles. `requests_total` series are created on first use (statuses are not
/// known in advance) and then cached per method class and common status.
pub struct RouteMetrics {
    name: Arc<str>,
    requests: Family<RequestLabels, Counter>,
    cached: Box<[OnceLock<Counter>]>,
    duration: Histogram,
    bytes: Counter,
    rate_limited: Counter,
}

impl RouteMetrics {
    fn new(metrics: &Metrics, name: &str, registered_rate_limit: bool) -> Self {
        let name: Arc<str> = Arc::from(name);
        let label = RouteLabel {
            route: name.clone(),
        };
        RouteMetrics {
            requests: metrics.requests.clone(),
            cached: (0..MethodClass::COUNT * CACHED_STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            duration: metrics.request_duration.get_or_create_owned(&label),
            bytes: metrics.response_bytes.get_or_create_owned(&label),
            rate_limited: match registered_rate_limit {
                true => metrics.rate_limited.get_or_create_owned(&label),
                false => Counter::default(),
            },
            name,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A response has been sent (or abandoned): count it, its latency and its bytes.
    pub fn finished(&self, method: MethodClass, status: StatusCode, elapsed: Duration, bytes: u64) {
        let labels = || RequestLabels {
            route: self.name.clone(),
            method: method.as_str(),
            status: status.as_u16(),
        };
        match CACHED_STATUSES.iter().position(|s| *s == status.as_u16()) {
            Some(slot) => {
                let cell = &self.cached[method as usize * CACHED_STATUSES.len() + slot];
                cell.get_or_init(|| self.requests.get_or_create_owned(&labels()))
                    .inc();
            }
            None => {
                self.requests.get_or_create(&labels()).inc();
            }
        }
        self.duration.observe(elapsed);
        self.bytes.inc_by(bytes);
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }
}

/// Statuses common enough to get a cached counter (others take the family's read lock).
const CACHED_STATUSES: [u16; 24] = [
    200, 201, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 409, 413, 421, 422, 429,
    431, 500, 502, 503, 504,
];

pub struct UpstreamMetrics {
    pub name: Arc<str>,
    /// One per configured server, same order.
    pub servers: Vec<ServerMetrics>,
    pub duration: Histogram,
    pub retries: Counter,
}

impl UpstreamMetrics {
    /// The server whose `host:port` label is `address`.
    pub fn server(&self, address: &str) -> Option<&ServerMetrics> {
        self.servers.iter().find(|s| &*s.address == address)
    }

    /// A forward finished (response head received, or failed at a server): its latency and
    /// the answering server's counts (a 5xx answer counts as a failure, as it does for
    /// passive ejection). Failures the client caused (body too large) or that
    /// reached no server are not the upstream's and are not counted here.
    pub fn finished(&self, elapsed: Duration, result: &Result<Forwarded<'_>, GatewayError>) {
        let (server, failed) = match result {
            Ok(forwarded) => (
                forwarded.server,
                forwarded.reply.response.status().is_server_error(),
            ),
            Err(
                GatewayError::UpstreamConnect { server, .. }
                | GatewayError::UpstreamTimeout { server, .. }
                | GatewayError::UpstreamFailed { server, .. },
            ) => (server.as_str(), true),
            Err(_) => return,
        };
        self.duration.observe(elapsed);
        if let Some(s) = self.server(server) {
            s.requests.inc();
            if failed {
                s.failures.inc();
            }
        }
    }
}

/// One upstream server: what `/upstreams` shows and the `gateway_upstream_server_*` series.
/// Clones share the series (the proxy's server state keeps one).
#[derive(Clone)]
pub struct ServerMetrics {
    pub address: Arc<str>,
    healthy: Gauge,
    ejected: Gauge,
    /// Raised and lowered by the proxy around each request (until its body ends).
    pub in_flight: Gauge,
    pub requests: Counter,
    pub failures: Counter,
}

impl ServerMetrics {
    fn new(metrics: &Metrics, upstream: &Arc<str>, address: &str) -> Self {
        let labels = ServerLabels {
            upstream: upstream.clone(),
            server: Arc::from(address),
        };
        // Servers start healthy; a reload keeps the state of a server it keeps.
        let known = metrics.server_healthy.get(&labels).is_some();
        let healthy = metrics.server_healthy.get_or_create_owned(&labels);
        if !known {
            healthy.set(1);
        }
        ServerMetrics {
            ejected: metrics.server_ejected.get_or_create_owned(&labels),
            in_flight: metrics.server_in_flight.get_or_create_owned(&labels),
            requests: metrics.server_requests.get_or_create_owned(&labels),
            failures: metrics.server_failures.get_or_create_owned(&labels),
            address: labels.server,
            healthy,
        }
    }

    /// Handles registered nowhere (unit tests, servers without metrics).
    pub fn detached(address: &str) -> Self {
        let healthy = Gauge::default();
        healthy.set(1);
        ServerMetrics {
            address: Arc::from(address),
            healthy,
            ejected: Gauge::default(),
            in_flight: Gauge::default(),
            requests: Counter::default(),
            failures: Counter::default(),
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy.get() != 0
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.set(i64::from(healthy));
    }

    pub fn ejected(&self) -> bool {
        self.ejected.get() != 0
    }

    pub fn set_ejected(&self, ejected: bool) {
        self.ejected.set(i64::from(ejected));
    }
}

struct JwtMetrics {
    /// In `reasons::ALL` order.
    by_reason: Vec<Counter>,
}

/// The `method` label: the standard methods by name, anything else `OTHER` (a client must
/// not be able to mint series by inventing methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodClass {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Connect,
    Trace,
    Other,
}

impl MethodClass {
    const COUNT: usize = 10;

    pub fn of(method: &Method) -> Self {
        match method.as_str() {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "PATCH" => Self::Patch,
            "DELETE" => Self::Delete,
            "OPTIONS" => Self::Options,
            "CONNECT" => Self::Connect,
            "TRACE" => Self::Trace,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Options => "OPTIONS",
            Self::Connect => "CONNECT",
            Self::Trace => "TRACE",
            Self::Other => "OTHER",
        }
    }
}
