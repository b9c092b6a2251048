//! Prometheus metrics: one [`Metrics`] registry per running gateway (it outlives reloads, so
//! counters keep counting when routes are swapped), and the handles the request path uses.
//!
//! The hot path never builds a label set from strings: every handle a request touches is
//! created when a configuration is loaded ([`StateMetrics`], [`ListenerMetrics`]) and is a
//! clone of the registry's atomic (prometheus-client metrics share their value when cloned).
//!
//! Series (SPEC.md names; `_total` is added to counters by the encoder):
//! `gateway_requests_total{route,method,status}`, `gateway_request_duration_seconds{route}`,
//! `gateway_response_body_bytes_total{route}`, `gateway_upstream_request_duration_seconds{upstream}`,
//! `gateway_upstream_server_{healthy,ejected,in_flight}{upstream,server}`,
//! `gateway_upstream_server_{requests,failures}_total{upstream,server}`,
//! `gateway_retries_total{upstream}`, `gateway_jwt_rejections_total{policy,reason}`,
//! `gateway_active_connections{listener}`, `gateway_tls_handshakes_total{listener,version}`,
//! `gateway_tls_handshake_failures_total{listener,reason}`,
//! `gateway_http2_reset_floods_total{listener}`, `gateway_connections_refused_total{listener,reason}`,
//! `gateway_config_reloads_total{result}`, `gateway_rate_limited_total{route}`,
//! `gateway_build_info{version}`, `process_start_time_seconds`, and (Linux)
//! `process_resident_memory_bytes`, `process_open_fds`.

mod body;
mod histogram;
mod labels;
mod process;
mod state;
mod text;

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use body::{Completion, MeteredBody};
pub use histogram::Histogram;
pub use labels::*;
pub use state::{MethodClass, RouteMetrics, ServerMetrics, StateMetrics, UpstreamMetrics};

/// The `route` label of requests that matched no route (404, 400 before routing, redirects).
pub const NO_ROUTE: &str = "none";

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The gateway's registry and the metric families in it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) request_duration: HistogramFamily<RouteLabel>,
    pub(crate) response_bytes: Family<RouteLabel, Counter>,
    pub(crate) rate_limited: Family<RouteLabel, Counter>,
    pub(crate) upstream_duration: HistogramFamily<UpstreamLabel>,
    pub(crate) retries: Family<UpstreamLabel, Counter>,
    pub(crate) server_healthy: Family<ServerLabels, Gauge>,
    pub(crate) server_ejected: Family<ServerLabels, Gauge>,
    pub(crate) server_in_flight: Family<ServerLabels, Gauge>,
    pub(crate) server_requests: Family<ServerLabels, Counter>,
    pub(crate) server_failures: Family<ServerLabels, Counter>,
    pub(crate) jwt_rejections: Family<JwtLabels, Counter>,
    active_connections: Family<ListenerLabel, Gauge>,
    tls_handshakes: Family<TlsVersionLabels, Counter>,
    tls_failures: Family<ListenerReasonLabels, Counter>,
    reset_floods: Family<ListenerLabel, Counter>,
    refused: Family<ListenerReasonLabels, Counter>,
    reload_success: Counter,
    reload_failure: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let latency: fn() -> Histogram = Histogram::latency;
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency),
            response_bytes: Family::default(),
            rate_limited: Family::default(),
            upstream_duration: Family::new_with_constructor(latency),
            retries: Family::default(),
            server_healthy: Family::default(),
            server_ejected: Family::default(),
            server_in_flight: Family::default(),
            server_requests: Family::default(),
            server_failures: Family::default(),
            jwt_rejections: Family::default(),
            active_connections: Family::default(),
            tls_handshakes: Family::default(),
            tls_failures: Family::default(),
            reset_floods: Family::default(),
            refused: Family::default(),
            reload_success: Counter::default(),
            reload_failure: Counter::default(),
            registry: Registry::default(),
        };
        r.register(
            "gateway_requests",
            "Requests answered, by route, method class and status",
            m.requests.clone(),
        );
        r.register(
            "gateway_request_duration_seconds",
            "Time from request head to the last response byte",
            m.request_duration.clone(),
        );
        r.register(
            "gateway_response_body_bytes",
            "Response body bytes sent to clients",
            m.response_bytes.clone(),
        );
        r.register(
            "gateway_rate_limited",
            "Requests refused with 429 by a route's rate_limit",
            m.rate_limited.clone(),
        );
        r.register(
            "gateway_upstream_request_duration_seconds",
            "Time until the upstream's response head (includes request buffering)",
            m.upstream_duration.clone(),
        );
        r.register(
            "gateway_retries",
            "Requests retried on another server",
            m.retries.clone(),
        );
        r.register(
            "gateway_upstream_server_healthy",
            "1 when the server takes traffic (health checks), else 0",
            m.server_healthy.clone(),
        );
        r.register(
            "gateway_upstream_server_ejected",
            "1 while passive outlier detection ejects the server",
            m.server_ejected.clone(),
        );
        r.register(
            "gateway_upstream_server_in_flight",
            "Requests currently at the server",
            m.server_in_flight.clone(),
        );
        r.register(
            "gateway_upstream_server_requests",
            "Requests a server answered or failed",
            m.server_requests.clone(),
        );
        r.register(
            "gateway_upstream_server_failures",
            "Requests that failed at a server (connect, timeout, broken response)",
            m.server_failures.clone(),
        );
        r.register(
            "gateway_jwt_rejections",
            "Requests refused by a JWT policy, by reason",
            m.jwt_rejections.clone(),
        );
        r.register(
            "gateway_active_connections",
            "Open client connections",
            m.active_connections.clone(),
        );
        r.register(
            "gateway_tls_handshakes",
            "Completed TLS handshakes",
            m.tls_handshakes.clone(),
        );
        r.register(
            "gateway_tls_handshake_failures",
            "Failed or timed-out TLS handshakes",
            m.tls_failures.clone(),
        );
        r.register(
            "gateway_http2_reset_floods",
            "HTTP/2 connections sent away for cancelling too many requests early (rapid reset)",
            m.reset_floods.clone(),
        );
        r.register(
            "gateway_connections_refused",
            "Connections closed as soon as accepted (reason per_ip_limit: server.max_connections_per_ip)",
            m.refused.clone(),
        );
        let reloads: Family<ResultLabel, Counter> = Family::default();
        let reload_success = reloads.get_or_create_owned(&ResultLabel { result: "success" });
        let reload_failure = reloads.get_or_create_owned(&ResultLabel { result: "failure" });
        r.register(
            "gateway_config_reloads",
            "Configuration reloads (SIGHUP, POST /reload)",
            reloads,
        );
        let build: Family<VersionLabel, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("gateway_build_info", "The running gateway's version", build);
        r.register_collector(Box::new(process::ProcessCollector::new()));
        Metrics {
            registry: r,
            reload_success,
            reload_failure,
            ..m
        }
    }

    /// Counts one reload attempt (`gateway_config_reloads_total{result}`).
    pub fn reload(&self, success: bool) {
        match success {
            true => self.reload_success.inc(),
            false => self.reload_failure.inc(),
        };
    }

    /// The handles one listener's accept loop uses. A plain-HTTP listener gets TLS counters
    /// that are not registered, so it adds no always-zero TLS series.
    pub fn listener(&self, name: &str, tls: bool) -> ListenerMetrics {
        let listener: Arc<str> = Arc::from(name);
        let version = |version| TlsVersionLabels {
            listener: listener.clone(),
            version,
        };
        let reason = |reason| ListenerReasonLabels {
            listener: listener.clone(),
            reason,
        };
        let label = ListenerLabel {
            listener: listener.clone(),
        };
        let active = self.active_connections.get_or_create_owned(&label);
        let reset_floods = self.reset_floods.get_or_create_owned(&label);
        let refused_per_ip = self.refused.get_or_create_owned(&reason("per_ip_limit"));
        if !tls {
            return ListenerMetrics {
                active,
                reset_floods,
                refused_per_ip,
                tls12: Counter::default(),
                tls13: Counter::default(),
                tls_error: Counter::default(),
                tls_timeout: Counter::default(),
            };
        }
        ListenerMetrics {
            active,
            reset_floods,
            refused_per_ip,
            tls12: self.tls_handshakes.get_or_create_owned(&version("1.2")),
            tls13: self.tls_handshakes.get_or_create_owned(&version("1.3")),
            tls_error: self.tls_failures.get_or_create_owned(&reason("error")),
            tls_timeout: self.tls_failures.get_or_create_owned(&reason("timeout")),
        }
    }

    /// The exposition: OpenMetrics text when `openmetrics`, else Prometheus text 0.0.4.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        match openmetrics {
            true => out,
            false => text::to_prometheus_text(&out),
        }
    }

    /// Removes the gauges of servers a reload dropped (a stale `healthy 1` would mislead);
    /// counters stay, as Prometheus expects of counters.
    pub fn forget_removed(&self, old: &StateMetrics, new: &StateMetrics) {
        for labels in old.server_labels() {
            if !new.server_labels().any(|l| l == labels) {
                self.server_healthy.remove(&labels);
                self.server_ejected.remove(&labels);
                self.server_in_flight.remove(&labels);
            }
        }
    }
}

/// One listener's connection gauge and TLS counters.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    active: Gauge,
    reset_floods: Counter,
    refused_per_ip: Counter,
    tls12: Counter,
    tls13: Counter,
    tls_error: Counter,
    tls_timeout: Counter,
}

impl ListenerMetrics {
    /// Counts an accepted connection until the returned guard is dropped.
    pub fn open(&self) -> OpenConnection {
        self.active.inc();
        OpenConnection(self.active.clone())
    }

    pub fn handshake(&self, version: Option<rustls::ProtocolVersion>) {
        match version {
            Some(rustls::ProtocolVersion::TLSv1_3) => self.tls13.inc(),
            _ => self.tls12.inc(),
        };
    }

    /// A connection closed at once for `server.max_connections_per_ip`.
    pub fn refused_per_ip(&self) {
        self.refused_per_ip.inc();
    }

    /// An HTTP/2 connection sent away for a reset flood.
    pub fn reset_flood(&self) {
        self.reset_floods.inc();
    }

    pub fn handshake_failed(&self, timed_out: bool) {
        match timed_out {
            true => self.tls_timeout.inc(),
            false => self.tls_error.inc(),
        };
    }
}

/// Decrements `gateway_active_connections` when the connection task ends.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let m = Metrics::new();
        m.reload(true);
        let text = m.encode(false);
        assert!(text.contains("# TYPE gateway_config_reloads_total counter\n"));
        assert!(text.contains("# HELP gateway_config_reloads_total "));
        assert!(text.contains("gateway_config_reloads_total{result=\"success\"} 1\n"));
        assert!(!text.contains("# EOF"));
        let open = m.encode(true);
        assert!(open.contains("# TYPE gateway_config_reloads counter\n"));
        assert!(open.ends_with("# EOF\n"));
    }

    #[test]
    fn connection_guard_counts_down() {
        let m = Metrics::new();
        let l = m.listener("https", true);
        let a = l.open();
        let b = l.open();
        assert_eq!(l.active.get(), 2);
        drop(a);
        drop(b);
        assert_eq!(l.active.get(), 0);
        l.handshake_failed(true);
        assert!(m.encode(false).contains(
            "gateway_tls_handshake_failures_total{listener=\"https\",reason=\"timeout\"} 1"
        ));
    }
}
