//! [`RawConfig`] → [`Settings`]: apply defaults, check every rule, and collect every error
//! (never stop at the first). Sections live in sibling files: `listeners`, `upstreams`,
//! `jwt_policy`, `routes`, `features` (static files / rate limits: type-checked, not yet enabled).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::error::Errors;
use super::raw::{defaults, RawConfig, RawLogging, RawRoute, RawServer};
use super::units::DurationValue;
use super::{jwt_policy, listeners, routes, upstreams};
use super::{AdminSettings, LogFormat, LoggingSettings, ServerSettings, Settings};
use super::{RouteHandler, RouteSettings, UpstreamSettings};

/// Validates everything; `None` when any error was recorded.
pub(crate) fn validate(
    raw: RawConfig,
    base_dir: &Path,
    source: PathBuf,
    errs: &mut Errors<'_>,
) -> Option<Settings> {
    let server = server(raw.server.unwrap_or_default(), errs);
    let listeners = listeners::validate(&raw.listeners, raw.partial, base_dir, errs);
    let admin = raw.admin.and_then(|a| {
        let bind = parse_bind(&a.bind, "admin.bind", errs)?;
        for l in &listeners {
            if binds_collide(bind, l.bind) {
                errs.add(
                    "admin.bind",
                    format!("{bind} collides with listener {:?} ({})", l.name, l.bind),
                );
            }
        }
        Some(AdminSettings { bind })
    });
    let upstreams = upstreams::validate(&raw.upstreams, errs);
    let jwt_policies = jwt_policy::jwt_policies(&raw.jwt_policies, base_dir, errs);
    let ctx = routes::RouteContext {
        upstream_names: raw.upstreams.iter().map(|(n, _)| n.as_str()).collect(),
        policy_names: raw.jwt_policies.iter().map(|(n, _)| n.clone()).collect(),
        default_max_body: server.max_body_bytes,
        base_dir,
    };
    let routes = routes::validate(&raw.routes, &ctx, errs);
    buffered_bodies_fit(&server, &raw.routes, &routes, &upstreams, errs);
    let logging = logging(raw.logging.unwrap_or_default(), errs);

    if errs.count() > 0 {
        return None;
    }
    Some(Settings {
        source,
        server,
        listeners,
        upstreams: upstreams.into_iter().flatten().collect(),
        jwt_policies,
        routes,
        admin,
        logging,
    })
}

/// Every body a buffering upstream may be sent fits in `server.max_buffer_file_bytes`: a
/// larger `max_body_bytes` would let through bodies that could never be buffered.
fn buffered_bodies_fit(
    server: &ServerSettings,
    raw_routes: &[Option<RawRoute>],
    routes: &[RouteSettings],
    upstreams: &[Option<UpstreamSettings>],
    errs: &mut Errors<'_>,
) {
    let limit = server.max_buffer_file_bytes;
    if routes.len() != raw_routes.len() {
        return; // a route failed to parse (reported): indices would not line up
    }
    let mut server_reported = false;
    for (i, route) in routes.iter().enumerate() {
        let upstream = match &route.handler {
            RouteHandler::Upstream(u)
            | RouteHandler::Static {
                upstream: Some(u), ..
            } => *u,
            RouteHandler::Static { upstream: None, .. } => continue,
        };
        let Some(Some(upstream)) = upstreams.get(upstream) else {
            continue;
        };
        if !upstream.request_buffering || route.max_body_bytes <= limit {
            continue;
        }
        let own = raw_routes[i]
            .as_ref()
            .is_some_and(|r| r.max_body_bytes.is_some());
        if !own && server_reported {
            continue;
        }
        server_reported |= !own;
        let path = match own {
            true => format!("routes[{i}].max_body_bytes"),
            false => "server.max_body_bytes".to_string(),
        };
        errs.add(
            path,
            format!(
                "{} bytes is more than server.max_buffer_file_bytes ({limit} bytes), but \
                 upstream {:?} buffers request bodies (request_buffering: true): raise \
                 max_buffer_file_bytes, lower max_body_bytes, or stream this upstream",
                route.max_body_bytes, upstream.name
            ),
        );
    }
}

/// `base_dir/p` unless `p` is absolute.
pub(crate) fn resolve(base_dir: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// A duration that must be > 0, defaulted when absent.
pub(crate) fn positive(
    value: Option<DurationValue>,
    default: Duration,
    path: impl Into<String>,
    errs: &mut Errors<'_>,
) -> Duration {
    match value {
        None => default,
        Some(DurationValue(d)) if d.is_zero() => {
            errs.add(path, "must be greater than 0");
            default
        }
        Some(DurationValue(d)) => d,
    }
}

/// A count that must be ≥ 1, defaulted when absent.
pub(crate) fn at_least_one<T: Copy + PartialEq + Default>(
    value: Option<T>,
    default: T,
    path: impl Into<String>,
    errs: &mut Errors<'_>,
) -> T {
    match value {
        Some(v) if v == T::default() => {
            errs.add(path, "must be at least 1");
            default
        }
        Some(v) => v,
        None => default,
    }
}

pub(crate) fn parse_bind(text: &str, path: &str, errs: &mut Errors<'_>) -> Option<SocketAddr> {
    match text.trim().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.add(
                path,
                format!(
                    "invalid bind address {text:?}: expected IP:PORT such as \"127.0.0.1:8080\" or \"[::]:443\""
                ),
            );
            None
        }
    }
}

/// Whether two binds would fight over the same socket (port 0 = ephemeral, never collides).
pub(crate) fn binds_collide(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// More worker threads than this is a typo (each is an OS thread with its own runtime).
const MAX_WORKER_THREADS: usize = 1024;

fn server(raw: RawServer, errs: &mut Errors<'_>) -> ServerSettings {
    let max_header_bytes = raw
        .max_header_bytes
        .map_or(defaults::MAX_HEADER_BYTES, |s| s.0);
    if max_header_bytes < 1024 {
        errs.add("server.max_header_bytes", "must be at least 1KiB");
    }
    let trusted_proxies = raw
        .trusted_proxies
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, text)| match parse_cidr(text) {
            Ok(net) => Some(net),
            Err(msg) => {
                errs.add(format!("server.trusted_proxies[{i}]"), msg);
                None
            }
        })
        .collect();
    let max_connections = at_least_one(
        raw.max_connections,
        defaults::MAX_CONNECTIONS,
        "server.max_connections",
        errs,
    );
    let max_connections_per_ip = raw.max_connections_per_ip.unwrap_or(0);
    if max_connections_per_ip > max_connections {
        errs.add(
            "server.max_connections_per_ip",
            format!(
                "{max_connections_per_ip} is more than server.max_connections \
                 ({max_connections}), so it would never apply: lower it, or 0 for no \
                 per-address limit"
            ),
        );
    }
    ServerSettings {
        worker_threads: match raw.worker_threads {
            Some(n) if n > MAX_WORKER_THREADS => {
                errs.add(
                    "server.worker_threads",
                    format!("{n} is more than {MAX_WORKER_THREADS} (0 = one per core)"),
                );
                defaults::WORKER_THREADS
            }
            n => n.unwrap_or(defaults::WORKER_THREADS),
        },
        max_connections,
        max_connections_per_ip,
        header_read_timeout: positive(
            raw.header_read_timeout,
            defaults::HEADER_READ_TIMEOUT,
            "server.header_read_timeout",
            errs,
        ),
        idle_timeout: positive(
            raw.idle_timeout,
            defaults::IDLE_TIMEOUT,
            "server.idle_timeout",
            errs,
        ),
        max_header_bytes,
        max_body_bytes: raw.max_body_bytes.map_or(defaults::MAX_BODY_BYTES, |s| s.0),
        max_buffer_file_bytes: raw
            .max_buffer_file_bytes
            .map_or(defaults::MAX_BUFFER_FILE_BYTES, |s| s.0),
        // 0 is allowed: stop at once without draining.
        shutdown_grace: raw.shutdown_grace.map_or(defaults::SHUTDOWN_GRACE, |d| d.0),
        trusted_proxies,
    }
}

/// `10.0.0.0/8`, `fd00::/8`, or a bare IP meaning just that address.
pub(crate) fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    t.parse::<std::net::IpAddr>().map(IpNet::from).map_err(|_| {
        format!("invalid CIDR {text:?}: expected e.g. \"10.0.0.0/8\" or \"192.0.2.7\"")
    })
}

fn logging(raw: RawLogging, errs: &mut Errors<'_>) -> LoggingSettings {
    let level = raw.level.unwrap_or_else(|| defaults::LOG_LEVEL.to_string());
    let simple = ["trace", "debug", "info", "warn", "error", "off"];
    let plain = !level.contains(['=', ',', '[']);
    if plain && !simple.contains(&level.to_ascii_lowercase().as_str()) {
        errs.add(
            "logging.level",
            format!("unknown level {level:?} (use trace, debug, info, warn, error, off, or a filter like \"gateway=debug\")"),
        );
    } else if !plain {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
            errs.add("logging.level", format!("invalid filter {level:?}: {e}"));
        }
    }
    let format = match raw.format.as_deref().unwrap_or(defaults::LOG_FORMAT) {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            errs.add(
                "logging.format",
                format!("unknown format {other:?} (use text or json)"),
            );
            LogFormat::Text
        }
    };
    LoggingSettings {
        level,
        format,
        access_log: raw.access_log.unwrap_or(defaults::ACCESS_LOG),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{errors_of, minimal, ok};
    use super::*;

    #[test]
    fn defaults_apply() {
        let s = ok(&minimal(""));
        assert_eq!(s.server.worker_threads, 0);
        assert_eq!(s.server.max_connections, 10_000);
        assert_eq!(s.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.server.max_header_bytes, 16 * 1024);
        assert_eq!(s.server.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(s.server.max_buffer_file_bytes, 1 << 30);
        assert_eq!(s.server.shutdown_grace, Duration::from_secs(30));
        assert!(s.server.trusted_proxies.is_empty());
        assert_eq!(s.logging.level, "info");
        assert_eq!(s.logging.format, LogFormat::Text);
        assert!(s.logging.access_log);
        assert!(s.admin.is_none());
        assert_eq!(s.routes[0].max_body_bytes, 10 * 1024 * 1024);
    }

    #[test]
    fn server_values_and_trusted_proxies() {
        let s = ok(&minimal(
            "server:\n  max_body_bytes: 1MiB\n  header_read_timeout: 250ms\n  trusted_proxies: [10.0.0.0/8, 192.0.2.7, \"::1\", 10.1.2.3/16]\n",
        ));
        assert_eq!(s.server.max_body_bytes, 1 << 20);
        assert_eq!(s.server.header_read_timeout, Duration::from_millis(250));
        let nets: Vec<String> = s
            .server
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            nets,
            ["10.0.0.0/8", "192.0.2.7/32", "::1/128", "10.1.0.0/16"]
        );
    }

    /// A body a buffering upstream may be sent must fit the file budget; the error names the
    /// key that sets the too-large limit (the route's own, else the server's, once).
    #[test]
    fn max_body_bytes_past_the_file_budget_of_a_buffering_upstream() {
        use super::super::test_support::LISTENER;
        let upstreams = "upstreams:\n  app:\n    servers: [\"127.0.0.1:8001\"]\n  stream:\n    servers: [\"127.0.0.1:8002\"]\n    request_buffering: false\n";
        let routes = "routes:\n  - match: { path_prefix: /a }\n    upstream: app\n  - match: { path_prefix: /b }\n    upstream: app\n    max_body_bytes: 8MiB\n  - match: { path_prefix: /c }\n    upstream: stream\n    max_body_bytes: 8GiB\n  - match: { path_prefix: / }\n    upstream: app\n";
        let server = "server:\n  max_body_bytes: 4MiB\n  max_buffer_file_bytes: 2MiB\n";
        let errs = errors_of(&format!("{server}{LISTENER}{upstreams}{routes}"));
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["server.max_body_bytes", "routes[1].max_body_bytes"]);
        assert_eq!(errs[0].line, Some(2));
        assert!(
            errs[1]
                .message
                .contains("upstream \"app\" buffers request bodies"),
            "{}",
            errs[1].message
        );
        // Streaming upstreams need no file room; a budget as large as the limits is fine.
        let server = "server:\n  max_body_bytes: 4MiB\n  max_buffer_file_bytes: 8MiB\n";
        let s = ok(&format!("{server}{LISTENER}{upstreams}{routes}"));
        assert_eq!(s.server.max_buffer_file_bytes, 8 << 20);
    }

    #[test]
    fn bad_server_values() {
        let errs = errors_of(&minimal(
            "server:\n  idle_timeout: 0s\n  max_connections: 0\n  trusted_proxies: [10.0.0.0/33, nope]\n",
        ));
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "server.trusted_proxies[0]",
                "server.trusted_proxies[1]",
                "server.max_connections",
                "server.idle_timeout"
            ]
        );
        assert_eq!(errs[3].line, Some(2));
    }

    #[test]
    fn absurd_durations_and_thread_counts_are_refused() {
        for (server, path) in [
            ("worker_threads: 100000000", "server.worker_threads"),
            (
                "header_read_timeout: 18446744073709551615s",
                "server.header_read_timeout",
            ),
            ("idle_timeout: 366d", "server.idle_timeout"),
        ] {
            let errs = errors_of(&minimal(&format!("server:\n  {server}\n")));
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert_eq!((errs[0].path.as_str(), errs[0].line), (path, Some(2)));
        }
        let s = ok(&minimal(
            "server:\n  idle_timeout: 365d\n  worker_threads: 64\n",
        ));
        assert_eq!(
            s.server.idle_timeout,
            std::time::Duration::from_secs(365 * 86_400)
        );
    }

    #[test]
    fn per_ip_connection_limit() {
        assert_eq!(ok(&minimal("")).server.max_connections_per_ip, 0);
        let s = ok(&minimal("server:\n  max_connections_per_ip: 100\n"));
        assert_eq!(s.server.max_connections_per_ip, 100);
        let errs = errors_of(&minimal(
            "server:\n  max_connections: 50\n  max_connections_per_ip: 100\n",
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "server.max_connections_per_ip");
        assert_eq!(errs[0].line, Some(3));
        assert!(errs[0]
            .message
            .contains("more than server.max_connections (50)"));
    }

    #[test]
    fn admin_and_logging() {
        let s = ok(&minimal(
            "admin: { bind: \"127.0.0.1:9901\" }\nlogging: { level: \"gateway=debug,info\", format: json, access_log: false }\n",
        ));
        assert_eq!(s.admin.unwrap().bind.port(), 9901);
        assert_eq!(s.logging.format, LogFormat::Json);
        assert!(!s.logging.access_log);
        let errs = errors_of(&minimal(
            "admin: { bind: \"127.0.0.1:8080\" }\nlogging: { level: loud, format: xml }\n",
        ));
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["admin.bind", "logging.level", "logging.format"]);
        assert!(errs[0].message.contains("collides"), "{}", errs[0]);
    }

    #[test]
    fn bind_collisions() {
        let a: SocketAddr = "0.0.0.0:80".parse().unwrap();
        assert!(binds_collide(a, "127.0.0.1:80".parse().unwrap()));
        assert!(!binds_collide(a, "127.0.0.1:81".parse().unwrap()));
        assert!(!binds_collide(a, "[::]:80".parse().unwrap()));
        let zero: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(!binds_collide(zero, zero));
    }
}
