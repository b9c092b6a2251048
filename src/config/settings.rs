//! Typed runtime settings: what the rest of the gateway sees once `gateway.yaml` has been
//! parsed (`raw.rs`) and validated (`validate.rs`). Nothing here is raw YAML; every
//! duration is a `Duration`, every size a `u64`, every reference an index.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use ipnet::IpNet;
use rustls::sign::CertifiedKey;

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file this was loaded from (relative paths in it were resolved against its folder).
    pub source: PathBuf,
    pub server: ServerSettings,
    pub listeners: Vec<ListenerSettings>,
    /// In YAML order; routes refer to them by index.
    pub upstreams: Vec<UpstreamSettings>,
    /// In YAML order; routes refer to them by index.
    pub jwt_policies: Vec<super::jwt_policy::JwtPolicySettings>,
    /// In YAML order: first match wins.
    pub routes: Vec<RouteSettings>,
    pub admin: Option<AdminSettings>,
    pub logging: LoggingSettings,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// 0 = one per core.
    pub worker_threads: usize,
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: one /64), 0 = unlimited; peers in
    /// `trusted_proxies` are exempt.
    pub max_connections_per_ip: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: u64,
    pub max_body_bytes: u64,
    /// All request bodies buffered to temporary files together, at most (past it, 503).
    pub max_buffer_file_bytes: u64,
    pub shutdown_grace: Duration,
    pub trusted_proxies: Vec<IpNet>,
}

impl ServerSettings {
    /// Whether `peer` is one of `trusted_proxies` (its `X-Forwarded-For` is believed). Asked
    /// per request, of the request's own configuration: a reload that removes a proxy stops
    /// believing it on connections it already had open.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }
}

#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub name: String,
    pub bind: SocketAddr,
    pub tls: Option<TlsSettings>,
    /// `Some(port)` when `redirect_https: true`: the port of the first TLS listener.
    pub redirect_https: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// First is the default; the others are chosen by SNI.
    pub certificates: Vec<CertificateSettings>,
    pub min_version: TlsVersion,
    /// ALPN protocol ids in preference order, e.g. `b"h2"`, `b"http/1.1"`.
    pub alpn: Vec<Vec<u8>>,
}

#[derive(Clone)]
pub struct CertificateSettings {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Lower-case DNS names from the certificate's subjectAltName (may hold `*.example.com`).
    pub names: Vec<String>,
    pub key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for CertificateSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateSettings")
            .field("cert_path", &self.cert_path)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    P2c,
    ConsistentHash,
}

/// Where a per-request key (hash key, rate-limit key) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Lower-case header name.
    Header(http::HeaderName),
    Cookie(String),
    ClientIp,
    Claim(String),
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// The key under `upstreams:`.
    pub name: String,
    pub servers: Vec<UpstreamServer>,
    pub balance: Balance,
    pub hash_key: Option<KeySource>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// The longest wait for the next bytes of a response body (nginx's
    /// `proxy_read_timeout`); past it the response is cut off.
    pub read_timeout: Duration,
    pub retries: u32,
    pub request_buffering: bool,
    pub pool: PoolSettings,
    pub health_check: Option<HealthCheckSettings>,
    pub passive: Option<PassiveSettings>,
    /// Per server; 0 = unlimited.
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamServer {
    /// As written (`127.0.0.1:8001`, `app:8000`): used in logs, metrics and the Host of health checks.
    pub address: String,
    /// Resolved at load time.
    pub socket_addr: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_idle_per_server: usize,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HealthCheckSettings {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

#[derive(Debug, Clone)]
pub struct PassiveSettings {
    pub consecutive_failures: u32,
    pub eject_for: Duration,
    /// Eject when about this share (%) of the last ~20 exchanges failed; 0 = off.
    pub failure_percentage: u32,
}

#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// `name:` if given, else `routes[N]`: the label in logs and metrics.
    pub name: String,
    pub matcher: RouteMatch,
    pub handler: RouteHandler,
    /// Index into `Settings::jwt_policies`: requests need a valid token of that policy.
    pub jwt: Option<usize>,
    /// Route-level `max_body_bytes`, else the server's.
    pub max_body_bytes: u64,
    /// `rate_limit:`: requests over it get 429 before any upstream work.
    pub rate_limit: Option<super::features::RateLimitSettings>,
}

#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// `None` matches any host.
    pub host: Option<HostPattern>,
    /// Normalised, starts with `/`.
    pub path_prefix: String,
    /// `None` allows every method.
    pub methods: Option<Vec<Method>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Lower-case, no port.
    Exact(String),
    /// `*.example.com` stored as `.example.com` (lower-case): matches any name ending in it.
    Wildcard(String),
}

#[derive(Debug, Clone)]
pub enum RouteHandler {
    /// Index into `Settings::upstreams`.
    Upstream(usize),
    /// A `static:` folder. `upstream` (an index into `Settings::upstreams`) is set with
    /// `fallback: upstream`: requests the folder cannot answer go there.
    Static {
        files: super::features::StaticSettings,
        upstream: Option<usize>,
    },
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub bind: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LoggingSettings {
    /// A tracing filter directive such as `info` or `gateway=debug`.
    pub level: String,
    pub format: LogFormat,
    pub access_log: bool,
}
