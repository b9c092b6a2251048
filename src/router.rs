//! Routing: host + normalised path + method → the index of the route that handles a request.
//!
//! Routes are tried in YAML order and the first whose host and path match decides, even when
//! it then refuses the method (405): falling through to a later catch-all would let a client
//! bypass the stricter route's policies (JWT, rate limits, body limits) just by changing
//! the method.
//!
//! On TLS connections a Host that names a host-specific route must agree with the SNI name
//! the connection was set up for, else 421: otherwise a client holding a connection (and a
//! certificate check) for one name could reach another name's routes through it.
//!
//! Everything the hot path needs (lower-case patterns, `Allow` values) is computed once in
//! [`Router::new`], so [`Router::route`] never allocates.

use http::{HeaderValue, Method};

use crate::config::{HostPattern, RouteSettings};

/// The compiled route table.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<CompiledRoute>,
    /// Distinct host patterns of all host-specific routes: the names the 421 check covers.
    host_patterns: Vec<HostMatcher>,
}

/// What the request pipeline should do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteDecision {
    /// Index into the routes the router was built from.
    Matched(usize),
    /// 404.
    NotFound,
    /// 405; `allow` is the first matching route's configured methods, `", "`-separated.
    MethodNotAllowed { allow: HeaderValue },
    /// 421: TLS request whose Host names a host-specific route but not the SNI name.
    Misdirected,
}

#[derive(Debug, Clone)]
struct CompiledRoute {
    host: Option<HostMatcher>,
    prefix: PathPrefix,
    /// `None` allows every method.
    methods: Option<Vec<Method>>,
    allow: HeaderValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatcher {
    /// Lower-case name without port, brackets or trailing dot.
    Exact(String),
    /// Lower-case suffix starting with `.`.
    Wildcard(String),
}

#[derive(Debug, Clone)]
enum PathPrefix {
    /// `/`: every path.
    Any,
    /// `/api`: `/api` itself or anything under `/api/`.
    Segment(String),
    /// `/static/` (stored with the slash): anything under it, or `/static` exactly.
    Dir(String),
}

impl Router {
    pub fn new(routes: &[RouteSettings]) -> Router {
        let routes: Vec<CompiledRoute> = routes.iter().map(CompiledRoute::new).collect();
        let mut host_patterns: Vec<HostMatcher> = Vec::new();
        for host in routes.iter().filter_map(|r| r.host.as_ref()) {
            if !host_patterns.contains(host) {
                host_patterns.push(host.clone());
            }
        }
        Router {
            routes,
            host_patterns,
        }
    }

    /// Decides the route for a request.
    ///
    /// `host` is the request's Host (or `:authority`), possibly with a port, any case; `None`
    /// if absent. `sni` is the TLS server name if the client sent one; `tls` whether the
    /// connection is TLS. `path` must already be normalised ([`crate::path::normalize`]).
    pub fn route(
        &self,
        host: Option<&str>,
        tls: bool,
        sni: Option<&str>,
        path: &str,
        method: &Method,
    ) -> RouteDecision {
        let host = host.map(host_name);
        if let (true, Some(host)) = (tls, host) {
            let names_a_route = self.host_patterns.iter().any(|p| p.matches(host));
            let agrees_with_sni =
                sni.is_some_and(|sni| strip_trailing_dot(sni).eq_ignore_ascii_case(host));
            if names_a_route && !agrees_with_sni {
                return RouteDecision::Misdirected;
            }
        }
        let Some((index, route)) = self
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(host, path))
        else {
            return RouteDecision::NotFound;
        };
        // A route without `methods` takes any method but CONNECT (nothing is tunnelled) and
        // TRACE (it echoes the request, cookies and tokens included: cross-site tracing),
        // which nginx refuses too; a route may list TRACE.
        let allowed = match &route.methods {
            Some(methods) => methods.contains(method),
            None => *method != Method::CONNECT && *method != Method::TRACE,
        };
        match allowed {
            false => RouteDecision::MethodNotAllowed {
                allow: route.allow.clone(),
            },
            true => RouteDecision::Matched(index),
        }
    }
}

impl CompiledRoute {
    fn new(settings: &RouteSettings) -> CompiledRoute {
        let matcher = &settings.matcher;
        let allow = matcher
            .methods
            .as_ref()
            .map(|methods| {
                methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS".to_owned());
        CompiledRoute {
            host: matcher.host.as_ref().map(HostMatcher::new),
            prefix: PathPrefix::new(&matcher.path_prefix),
            methods: matcher.methods.clone(),
            // Method names are tokens, always valid header text; empty is a legal Allow value.
            allow: HeaderValue::from_str(&allow).unwrap_or_else(|_| HeaderValue::from_static("")),
        }
    }

    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(pattern), Some(host)) => pattern.matches(host),
            (Some(_), None) => false,
        };
        host_ok && self.prefix.matches(path)
    }
}

impl HostMatcher {
    fn new(pattern: &HostPattern) -> HostMatcher {
        match pattern {
            HostPattern::Exact(name) => HostMatcher::Exact(host_name(name).to_ascii_lowercase()),
            HostPattern::Wildcard(suffix) => {
                let suffix = strip_trailing_dot(suffix);
                // Tolerate `*.example.com` as written in YAML, though validation stores `.example.com`.
                let suffix = suffix
                    .strip_prefix('*')
                    .unwrap_or(suffix)
                    .to_ascii_lowercase();
                if suffix.starts_with('.') {
                    HostMatcher::Wildcard(suffix)
                } else {
                    HostMatcher::Wildcard(format!(".{suffix}"))
                }
            }
        }
    }

    /// `host` is already stripped of port and trailing dot ([`host_name`]).
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatcher::Exact(name) => host.eq_ignore_ascii_case(name),
            HostMatcher::Wildcard(suffix) => {
                let Some(label_end) = host.len().checked_sub(suffix.len()) else {
                    return false;
                };
                let (labels, tail) = host.as_bytes().split_at(label_end);
                // At least one non-empty label in front: `.example.com` and `a..example.com` don't match.
                !labels.is_empty()
                    && labels.last() != Some(&b'.')
                    && tail.eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

impl PathPrefix {
    fn new(prefix: &str) -> PathPrefix {
        match prefix {
            "" | "/" => PathPrefix::Any,
            p if p.ends_with('/') => PathPrefix::Dir(p.to_owned()),
            p => PathPrefix::Segment(p.to_owned()),
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathPrefix::Any => true,
            PathPrefix::Segment(p) => path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            PathPrefix::Dir(p) => {
                path.starts_with(p.as_str()) || (path.len() + 1 == p.len() && p.starts_with(path))
            }
        }
    }
}

/// The name part of a Host / `:authority` value: port, IPv6 brackets and one trailing dot
/// removed (`Example.COM.:8080` → `Example.COM`, `[::1]:8443` → `::1`). Case is kept;
/// compare with `eq_ignore_ascii_case`.
#[must_use]
pub fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: whatever follows the `]` is the port.
        return rest.split_once(']').map_or(host, |(addr, _)| addr);
    }
    // Bytes, not `split_once(':')`: a char searcher costs more than these few bytes do.
    let bytes = host.as_bytes();
    let name = match bytes.iter().position(|&b| b == b':') {
        // A second colon means an unbracketed IPv6 address: not a valid Host, leave it whole.
        Some(colon) if !bytes[colon + 1..].contains(&b':') => &host[..colon],
        _ => host,
    };
    strip_trailing_dot(name)
}

/// Whether a Host / `:authority` value is one a request may carry (RFC 9112 §3.2: any other
/// gets 400, as nginx answers): a name of letters, digits, `-`, `_` and `.` (no empty label,
/// one trailing dot allowed) or a bracketed IPv6 literal, then an optional `:port` of 1-5
/// digits. Stricter than RFC 3986's reg-name (no percent-escapes, sub-delims or userinfo):
/// exactly what Django's `ALLOWED_HOSTS` check accepts, plus `_`. Spaces, commas, `/` or
/// `@` would otherwise reach the app in `Host` and `X-Forwarded-Host` after missing every
/// host-specific route.
#[must_use]
pub fn valid_host(host: &[u8]) -> bool {
    // One pass, a table lookup per byte: this runs on every request.
    const NAME: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.';
            b += 1;
        }
        table
    };
    let port = if host.first() == Some(&b'[') {
        let Some(end) = host.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &host[1..end];
        let literal_ok = literal.contains(&b':')
            && literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !literal_ok {
            return false;
        }
        &host[end + 1..]
    } else {
        // Labels: not empty (no leading dot, no `..`); one trailing dot is allowed.
        let mut previous = b'.';
        let mut at = 0;
        while at < host.len() && host[at] != b':' {
            let b = host[at];
            if !NAME[usize::from(b)] || (b == b'.' && previous == b'.') {
                return false;
            }
            previous = b;
            at += 1;
        }
        if at == 0 {
            return false;
        }
        &host[at..]
    };
    match port {
        [] => true,
        [b':', digits @ ..] => {
            (1..=5).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

fn strip_trailing_dot(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_a_request_may_carry() {
        for ok in [
            "example.com",
            "Example.COM.",
            "api.example.com:8443",
            "localhost",
            "my_host-1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "[2001:db8::1]",
            "[::ffff:192.0.2.1]:443",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok:?} should pass");
        }
        for bad in [
            "",
            ":80",
            ".",
            "a..b",
            ".a",
            "admin.localhost :80",
            "a, admin.localhost",
            "a,admin.localhost",
            "admin.localhost/../x",
            "u:p@admin.localhost",
            "u@admin.localhost",
            "host:",
            "host:123456",
            "host:8o",
            "host:80:80",
            "::1",
            "[::1",
            "[::1]x",
            "[v1.x]",
            "[]",
            "a%2eb",
            "a b",
            "a\tb",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} should fail");
        }
    }
    use crate::config::{RouteHandler, RouteMatch};

    fn route(host: Option<HostPattern>, prefix: &str, methods: Option<&[Method]>) -> RouteSettings {
        RouteSettings {
            name: format!("{host:?}{prefix}"),
            matcher: RouteMatch {
                host,
                path_prefix: prefix.to_owned(),
                methods: methods.map(<[Method]>::to_vec),
            },
            handler: RouteHandler::Upstream(0),
            jwt: None,
            max_body_bytes: 1024,
            rate_limit: None,
        }
    }

    fn exact(name: &str) -> Option<HostPattern> {
        Some(HostPattern::Exact(name.to_owned()))
    }

    fn wildcard(suffix: &str) -> Option<HostPattern> {
        Some(HostPattern::Wildcard(suffix.to_owned()))
    }

    fn plain(router: &Router, host: Option<&str>, path: &str) -> RouteDecision {
        router.route(host, false, None, path, &Method::GET)
    }

    #[test]
    fn first_match_wins() {
        let r = Router::new(&[
            route(None, "/api/", None),
            route(None, "/api/x", None),
            route(None, "/", None),
        ]);
        assert_eq!(plain(&r, None, "/api/x"), RouteDecision::Matched(0));
        assert_eq!(plain(&r, None, "/other"), RouteDecision::Matched(2));
    }

    #[test]
    fn no_match_is_not_found() {
        let r = Router::new(&[route(None, "/api", None), route(exact("a.test"), "/", None)]);
        assert_eq!(plain(&r, None, "/"), RouteDecision::NotFound);
        assert_eq!(plain(&r, Some("b.test"), "/x"), RouteDecision::NotFound);
        assert_eq!(
            Router::new(&[]).route(None, false, None, "/", &Method::GET),
            RouteDecision::NotFound
        );
    }

    #[test]
    fn path_prefix_is_segment_aware() {
        let r = Router::new(&[route(None, "/api", None)]);
        for p in ["/api", "/api/", "/api/x", "/api//x"] {
            assert_eq!(plain(&r, None, p), RouteDecision::Matched(0), "{p}");
        }
        for p in ["/apix", "/ap", "/", "/API", "/x/api"] {
            assert_eq!(plain(&r, None, p), RouteDecision::NotFound, "{p}");
        }
    }

    #[test]
    fn path_prefix_with_trailing_slash_also_matches_the_bare_directory() {
        let r = Router::new(&[route(None, "/static/", None)]);
        for p in ["/static", "/static/", "/static/css/a.css"] {
            assert_eq!(plain(&r, None, p), RouteDecision::Matched(0), "{p}");
        }
        for p in ["/staticx", "/stati", "/", "/static.css"] {
            assert_eq!(plain(&r, None, p), RouteDecision::NotFound, "{p}");
        }
    }

    #[test]
    fn root_prefix_matches_everything() {
        let r = Router::new(&[route(None, "/", None)]);
        for p in ["/", "/a", "//x/y/"] {
            assert_eq!(plain(&r, None, p), RouteDecision::Matched(0), "{p}");
        }
    }

    #[test]
    fn method_not_allowed_lists_configured_methods() {
        let r = Router::new(&[route(None, "/api/", Some(&[Method::GET, Method::POST]))]);
        assert_eq!(
            r.route(None, false, None, "/api/x", &Method::POST),
            RouteDecision::Matched(0)
        );
        assert_eq!(
            r.route(None, false, None, "/api/x", &Method::DELETE),
            RouteDecision::MethodNotAllowed {
                allow: HeaderValue::from_static("GET, POST")
            }
        );
        // Exactly what is configured: HEAD is not implied by GET.
        assert_eq!(
            r.route(None, false, None, "/api/x", &Method::HEAD),
            RouteDecision::MethodNotAllowed {
                allow: HeaderValue::from_static("GET, POST")
            }
        );
    }

    #[test]
    fn connect_and_trace_are_refused_unless_listed() {
        let r = Router::new(&[
            route(None, "/trace/", Some(&[Method::GET, Method::TRACE])),
            route(None, "/", None),
        ]);
        let common = HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
        for method in [Method::CONNECT, Method::TRACE] {
            assert_eq!(
                r.route(None, false, None, "/x", &method),
                RouteDecision::MethodNotAllowed {
                    allow: common.clone()
                },
                "{method}"
            );
        }
        assert_eq!(
            r.route(None, false, None, "/trace/x", &Method::TRACE),
            RouteDecision::Matched(0)
        );
        let custom = Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(
            r.route(None, false, None, "/x", &custom),
            RouteDecision::Matched(1)
        );
    }

    #[test]
    fn first_match_with_405_does_not_fall_through() {
        let r = Router::new(&[
            route(None, "/api/", Some(&[Method::GET])),
            route(None, "/", None),
        ]);
        assert_eq!(
            r.route(None, false, None, "/api/admin", &Method::DELETE),
            RouteDecision::MethodNotAllowed {
                allow: HeaderValue::from_static("GET")
            }
        );
        assert_eq!(
            r.route(None, false, None, "/other", &Method::DELETE),
            RouteDecision::Matched(1)
        );
    }

    #[test]
    fn exact_host_ignores_case_port_and_trailing_dot() {
        let r = Router::new(&[
            route(exact("admin.localhost"), "/", None),
            route(None, "/", None),
        ]);
        for h in [
            "admin.localhost",
            "ADMIN.Localhost",
            "admin.localhost:8080",
            "admin.localhost.",
            "Admin.LocalHost.:443",
        ] {
            assert_eq!(plain(&r, Some(h), "/"), RouteDecision::Matched(0), "{h}");
        }
        for h in [
            "localhost",
            "xadmin.localhost",
            "admin.localhost..",
            "admin.localhostx",
        ] {
            assert_eq!(plain(&r, Some(h), "/"), RouteDecision::Matched(1), "{h}");
        }
        assert_eq!(plain(&r, None, "/"), RouteDecision::Matched(1));
    }

    #[test]
    fn wildcard_host_matches_subdomains_only() {
        let r = Router::new(&[
            route(wildcard(".example.com"), "/", None),
            route(None, "/", None),
        ]);
        for h in [
            "a.example.com",
            "a.b.example.com",
            "A.Example.COM:8443",
            "a.example.com.",
        ] {
            assert_eq!(plain(&r, Some(h), "/"), RouteDecision::Matched(0), "{h}");
        }
        for h in [
            "example.com",
            ".example.com",
            "a..example.com",
            "aexample.com",
            "a.example.org",
        ] {
            assert_eq!(plain(&r, Some(h), "/"), RouteDecision::Matched(1), "{h}");
        }
    }

    #[test]
    fn ipv6_hosts() {
        let r = Router::new(&[route(exact("::1"), "/", None), route(None, "/", None)]);
        assert_eq!(
            plain(&r, Some("[::1]:8443"), "/"),
            RouteDecision::Matched(0)
        );
        assert_eq!(plain(&r, Some("[::1]"), "/"), RouteDecision::Matched(0));
        assert_eq!(
            plain(&r, Some("[::2]:8443"), "/"),
            RouteDecision::Matched(1)
        );
        let bracketed = Router::new(&[route(exact("[::1]"), "/", None)]);
        assert_eq!(
            plain(&bracketed, Some("[::1]:1"), "/"),
            RouteDecision::Matched(0)
        );
    }

    #[test]
    fn host_name_strips_port_brackets_and_dot() {
        assert_eq!(host_name("example.com:8080"), "example.com");
        assert_eq!(host_name("example.com."), "example.com");
        assert_eq!(host_name("example.com.:80"), "example.com");
        assert_eq!(host_name("[::1]:8443"), "::1");
        assert_eq!(host_name("[::1]"), "::1");
        assert_eq!(host_name("[::1"), "[::1");
        assert_eq!(host_name("::1"), "::1");
        assert_eq!(host_name(""), "");
    }

    #[test]
    fn tls_host_must_agree_with_sni_for_host_routes() {
        let r = Router::new(&[
            route(exact("admin.localhost"), "/", None),
            route(None, "/", None),
        ]);
        let get = &Method::GET;
        // Host names a host-specific route but the connection was for another name, or no SNI.
        assert_eq!(
            r.route(Some("admin.localhost"), true, Some("localhost"), "/", get),
            RouteDecision::Misdirected
        );
        assert_eq!(
            r.route(Some("admin.localhost"), true, None, "/", get),
            RouteDecision::Misdirected
        );
        // Agreeing names, any case, port and trailing dot ignored.
        assert_eq!(
            r.route(
                Some("Admin.Localhost:8443"),
                true,
                Some("admin.LOCALHOST"),
                "/",
                get
            ),
            RouteDecision::Matched(0)
        );
        assert_eq!(
            r.route(
                Some("admin.localhost."),
                true,
                Some("admin.localhost"),
                "/",
                get
            ),
            RouteDecision::Matched(0)
        );
        // A Host that names no route host falls through to host-less routes, whatever the SNI.
        assert_eq!(
            r.route(Some("other.test"), true, Some("localhost"), "/", get),
            RouteDecision::Matched(1)
        );
        assert_eq!(
            r.route(None, true, Some("admin.localhost"), "/", get),
            RouteDecision::Matched(1)
        );
        // Plain HTTP has no SNI to disagree with.
        assert_eq!(
            r.route(Some("admin.localhost"), false, None, "/", get),
            RouteDecision::Matched(0)
        );
    }

    #[test]
    fn misdirected_is_checked_against_any_host_route_not_just_the_matching_one() {
        // The host route only covers /admin, but a mismatching SNI is refused on every path.
        let r = Router::new(&[
            route(exact("admin.localhost"), "/admin", None),
            route(None, "/", None),
        ]);
        assert_eq!(
            r.route(
                Some("admin.localhost"),
                true,
                Some("localhost"),
                "/x",
                &Method::GET
            ),
            RouteDecision::Misdirected
        );
        assert_eq!(
            r.route(
                Some("admin.localhost"),
                true,
                Some("admin.localhost"),
                "/x",
                &Method::GET
            ),
            RouteDecision::Matched(1)
        );
    }

    #[test]
    fn misdirected_with_wildcard_routes() {
        let r = Router::new(&[
            route(wildcard(".example.com"), "/", None),
            route(None, "/", None),
        ]);
        let get = &Method::GET;
        assert_eq!(
            r.route(Some("a.example.com"), true, Some("b.example.com"), "/", get),
            RouteDecision::Misdirected
        );
        assert_eq!(
            r.route(Some("a.example.com"), true, Some("a.example.com"), "/", get),
            RouteDecision::Matched(0)
        );
        assert_eq!(
            r.route(Some("example.com"), true, Some("a.example.com"), "/", get),
            RouteDecision::Matched(1)
        );
    }
}
