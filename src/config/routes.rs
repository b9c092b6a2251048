//! Route validation: match (path prefix, host, methods), exactly one handler, references to
//! upstreams and JWT policies, unique names. Features whose runtime is not built yet (rate
//! limits) fail closed here: they are type-checked, then refused.

use std::collections::HashMap;
use std::path::Path;

use http::Method;

use super::error::Errors;
use super::raw::{RawMatch, RawRoute};
use super::{features, HostPattern, RouteHandler, RouteMatch, RouteSettings};

/// What routes may refer to.
pub(crate) struct RouteContext<'a> {
    /// Every declared upstream, valid or not, in YAML order (= index in `Settings::upstreams`).
    pub upstream_names: Vec<&'a str>,
    /// Every declared JWT policy.
    pub policy_names: Vec<String>,
    pub default_max_body: u64,
    pub base_dir: &'a Path,
}

pub(crate) fn validate(
    raw: &[Option<RawRoute>],
    ctx: &RouteContext<'_>,
    errs: &mut Errors<'_>,
) -> Vec<RouteSettings> {
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let Some(r) = r else { continue };
        let path = format!("routes[{i}]");
        let name = r.name.clone().unwrap_or_else(|| path.clone());
        if name.is_empty() {
            errs.add(format!("{path}.name"), "must not be empty");
        } else if let Some(first) = names.insert(name.clone(), i) {
            errs.add(
                format!("{path}.name"),
                format!("duplicate route name {name:?} (also routes[{first}])"),
            );
        }
        let matcher = matcher(r.matcher.as_ref(), &format!("{path}.match"), errs);
        let handler = handler(r, &path, ctx, errs);
        let jwt = jwt_policy(r.jwt.as_deref(), &format!("{path}.jwt"), ctx, errs);
        if let (Some(matcher), Some(handler), Ok(jwt)) = (matcher, handler, jwt) {
            out.push(RouteSettings {
                name,
                matcher,
                handler,
                jwt,
                max_body_bytes: r.max_body_bytes.map_or(ctx.default_max_body, |s| s.0),
            });
        }
    }
    out
}

fn matcher(raw: Option<&RawMatch>, path: &str, errs: &mut Errors<'_>) -> Option<RouteMatch> {
    let before = errs.count();
    let default = RawMatch::default();
    let raw = raw.unwrap_or(&default);
    let path_prefix = match raw.path_prefix.as_deref() {
        None => {
            errs.add(
                format!("{path}.path_prefix"),
                "match.path_prefix is required (use / to match everything)",
            );
            String::new()
        }
        Some(p) => {
            if let Err(msg) = check_prefix(p) {
                errs.add(format!("{path}.path_prefix"), msg);
            }
            p.to_string()
        }
    };
    let host = raw.host.as_deref().and_then(|h| match host_pattern(h) {
        Ok(p) => Some(p),
        Err(msg) => {
            errs.add(format!("{path}.host"), msg);
            None
        }
    });
    let methods = raw.methods.as_ref().map(|list| {
        if list.is_empty() {
            errs.add(
                format!("{path}.methods"),
                "list at least one method, or leave methods out",
            );
        }
        let mut out: Vec<Method> = Vec::new();
        for (k, m) in list.iter().enumerate() {
            match Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()) {
                Ok(method) if !out.contains(&method) => out.push(method),
                Ok(_) => {}
                Err(_) => errs.add(
                    format!("{path}.methods[{k}]"),
                    format!("{m:?} is not a valid HTTP method"),
                ),
            }
        }
        out
    });
    (errs.count() == before).then_some(RouteMatch {
        host,
        path_prefix,
        methods,
    })
}

/// A prefix must already be in normal form: the router matches normalised paths.
fn check_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with /"));
    }
    if p.contains(['?', '#', '%', '\\']) || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{p:?} must be a plain path (no query, fragment, %-escapes, backslashes or spaces)"
        ));
    }
    if p.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{p:?} must not contain . or .. segments"));
    }
    Ok(())
}

/// `jwt: NAME` → the policy's index (`Ok(None)` without `jwt:`); `Err` after recording an
/// unknown name.
fn jwt_policy(
    name: Option<&str>,
    path: &str,
    ctx: &RouteContext<'_>,
    errs: &mut Errors<'_>,
) -> Result<Option<usize>, ()> {
    let Some(name) = name else {
        return Ok(None);
    };
    if let Some(index) = ctx.policy_names.iter().position(|n| n == name) {
        return Ok(Some(index));
    }
    let known = if ctx.policy_names.is_empty() {
        "no jwt_policies are defined".to_string()
    } else {
        format!("known: {}", ctx.policy_names.join(", "))
    };
    errs.add(path, format!("unknown jwt policy {name:?} ({known})"));
    Err(())
}

/// `example.com` → exact; `*.example.com` → any subdomain. Lower-cased; no port.
pub(crate) fn host_pattern(text: &str) -> Result<HostPattern, String> {
    let h = text.trim().to_ascii_lowercase();
    if h.starts_with('[') && h.ends_with(']') {
        return h[1..h.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .map(|_| HostPattern::Exact(h.clone()))
            .map_err(|_| format!("invalid IPv6 host {text:?}"));
    }
    if h.contains(':') {
        return Err(format!("{text:?}: write the host without a port"));
    }
    let (wildcard, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h.as_str()),
    };
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || !name.split('.').all(valid_label) {
        return Err(format!(
            "invalid host {text:?}: expected a name like example.com or *.example.com"
        ));
    }
    Ok(if wildcard {
        HostPattern::Wildcard(format!(".{name}"))
    } else {
        HostPattern::Exact(name.to_string())
    })
}

fn handler(
    r: &RawRoute,
    path: &str,
    ctx: &RouteContext<'_>,
    errs: &mut Errors<'_>,
) -> Option<RouteHandler> {
    let before = errs.count();
    let upstream = r.upstream.as_deref().and_then(|name| {
        let found = ctx.upstream_names.iter().position(|n| *n == name);
        if found.is_none() {
            let known = if ctx.upstream_names.is_empty() {
                "no upstreams are defined".to_string()
            } else {
                format!("known: {}", ctx.upstream_names.join(", "))
            };
            errs.add(
                format!("{path}.upstream"),
                format!("unknown upstream {name:?} ({known})"),
            );
        }
        found
    });
    match (&r.static_files, &r.upstream) {
        (None, None) => errs.add(
            path,
            "route has no handler: give it `upstream: NAME` or a `static:` block",
        ),
        (Some(s), Some(_)) if s.fallback.as_deref() != Some("upstream") => errs.add(
            path,
            "route has both `upstream` and `static`; set static.fallback: upstream to use the upstream for missing files",
        ),
        (Some(s), None) if s.fallback.as_deref() == Some("upstream") => errs.add(
            format!("{path}.static.fallback"),
            "fallback: upstream needs the route to name an `upstream`",
        ),
        _ => {}
    }
    let static_files = r
        .static_files
        .as_ref()
        .and_then(|s| features::static_files(s, &format!("{path}.static"), ctx.base_dir, errs));
    if let Some(rl) = &r.rate_limit {
        let p = format!("{path}.rate_limit");
        features::rate_limit(rl, &p, errs);
        errs.add(p, "rate limiting is not available in this build yet");
    }
    if errs.count() != before {
        return None;
    }
    match static_files {
        Some(files) => Some(RouteHandler::Static { files, upstream }),
        None => upstream.map(RouteHandler::Upstream),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{errors_in, errors_of, ok, LISTENER, UPSTREAM};
    use super::*;

    fn with_routes(routes: &str) -> String {
        format!("{LISTENER}{UPSTREAM}routes:\n{routes}")
    }

    fn paths(errs: &[super::super::ConfigError]) -> Vec<&str> {
        errs.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            host_pattern("Example.COM"),
            Ok(HostPattern::Exact("example.com".into()))
        );
        assert_eq!(
            host_pattern("*.Example.com"),
            Ok(HostPattern::Wildcard(".example.com".into()))
        );
        assert_eq!(
            host_pattern("[::1]"),
            Ok(HostPattern::Exact("[::1]".into()))
        );
        for bad in [
            "example.com:8080",
            "",
            "*.",
            "a..b",
            "exa mple.com",
            "*",
            "a.*.b",
        ] {
            assert!(host_pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn good_routes() {
        let s = ok(&with_routes(
            "  - name: api
    match: { host: \"*.Example.com\", path_prefix: /api/, methods: [get, POST, get] }
    upstream: app
    max_body_bytes: 1MiB
  - match: { path_prefix: / }
    upstream: app
",
        ));
        let r = &s.routes[0];
        assert_eq!(r.name, "api");
        assert_eq!(
            r.matcher.host,
            Some(HostPattern::Wildcard(".example.com".into()))
        );
        assert_eq!(r.matcher.methods, Some(vec![Method::GET, Method::POST]));
        assert_eq!(r.max_body_bytes, 1 << 20);
        assert!(matches!(r.handler, RouteHandler::Upstream(0)));
        assert_eq!(s.routes[1].name, "routes[1]");
        assert!(s.routes[1].matcher.methods.is_none() && s.routes[1].matcher.host.is_none());
    }

    #[test]
    fn match_rules() {
        let errs = errors_of(&with_routes(
            "  - match: { path_prefix: api/ }
    upstream: app
  - match: { path_prefix: \"/a/../b\", host: \"a.com:80\", methods: [\"GE T\"] }
    upstream: app
  - upstream: app
  - match: { path_prefix: /x, methods: [] }
    upstream: app
",
        ));
        assert_eq!(
            paths(&errs),
            [
                "routes[0].match.path_prefix",
                "routes[1].match.path_prefix",
                "routes[1].match.host",
                "routes[1].match.methods[0]",
                "routes[2].match.path_prefix",
                "routes[3].match.methods",
            ]
        );
        assert_eq!(errs[0].line, Some(7));
        assert_eq!(errs[4].line, Some(11));
    }

    #[test]
    fn handler_and_reference_rules() {
        let errs = errors_of(&with_routes(
            "  - name: dup
    match: { path_prefix: / }
    upstream: ap
  - name: dup
    match: { path_prefix: / }
  - match: { path_prefix: / }
    upstream: app
    static: { root: ., fallback: none }
  - match: { path_prefix: / }
    static: { root: ., fallback: upstream }
",
        ));
        assert_eq!(
            paths(&errs),
            [
                "routes[0].upstream",
                "routes[1].name",
                "routes[1]",
                "routes[2]",
                "routes[3].static.fallback",
            ]
        );
        assert_eq!(
            errs[0].to_string(),
            "routes[0].upstream (line 9): unknown upstream \"ap\" (known: app)"
        );
        assert!(errs[1].message.contains("duplicate"));
    }

    #[test]
    fn unfinished_features_fail_closed() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "jwt_policies:
  django:
    algorithms: [HS256]
    key: {{ secret: s3cret }}
{LISTENER}{UPSTREAM}routes:
  - match: {{ path_prefix: /api/ }}
    upstream: app
    jwt: django
    rate_limit: {{ rate: 10/s }}
  - match: {{ path_prefix: /static/ }}
    static: {{ root: . }}
  - match: {{ path_prefix: / }}
    upstream: app
    jwt: djnago
"
        );
        let errs = errors_in(dir.path(), &yaml);
        assert_eq!(paths(&errs), ["routes[0].rate_limit", "routes[2].jwt"]);
        assert!(errs[0].message.contains("not available in this build yet"));
        assert_eq!(
            errs[1].message,
            "unknown jwt policy \"djnago\" (known: django)"
        );
        assert_eq!(errs[1].line, Some(19));
    }

    #[test]
    fn static_routes_with_and_without_fallback() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("public")).unwrap();
        let s = super::super::test_support::load_in(
            dir.path(),
            &with_routes(
                "  - match: { path_prefix: /static/ }
    static: { root: ./public, precompressed: [gzip], compress: true }
  - match: { path_prefix: /media/ }
    static: { root: ./public, fallback: upstream }
    upstream: app
",
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let RouteHandler::Static { files, upstream } = &s.routes[0].handler else {
            panic!("not a static route: {:?}", s.routes[0].handler)
        };
        assert_eq!(*upstream, None);
        assert!(files.root.ends_with("public") && files.compress && !files.fallback_upstream);
        assert_eq!(files.precompressed, ["gzip"]);
        let RouteHandler::Static { files, upstream } = &s.routes[1].handler else {
            panic!("not a static route: {:?}", s.routes[1].handler)
        };
        assert_eq!((*upstream, files.fallback_upstream), (Some(0), true));
    }
}
