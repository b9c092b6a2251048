//! Route validation tests: matchers, handlers and references, static routes, rate limits.

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
  - match: { path_prefix: /y, methods: [GET, connect] }
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
            "routes[4].match.methods[1]",
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
fn rate_limits_and_policy_references() {
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
    rate_limit: {{ rate: 10/s, key: \"claim:user_id\" }}
  - match: {{ path_prefix: /static/ }}
    static: {{ root: . }}
    rate_limit: {{ rate: 5/m, burst: 20 }}
  - match: {{ path_prefix: / }}
    upstream: app
    jwt: djnago
  - match: {{ path_prefix: /open/ }}
    upstream: app
    rate_limit: {{ rate: 10/s, key: \"claim:user_id\" }}
  - match: {{ path_prefix: /bad/ }}
    upstream: app
    rate_limit: {{ rate: 10/fortnight }}
"
    );
    let errs = errors_in(dir.path(), &yaml);
    assert_eq!(
        paths(&errs),
        [
            "routes[2].jwt",
            "routes[3].rate_limit.key",
            "routes[4].rate_limit.rate"
        ]
    );
    assert_eq!(
        errs[0].message,
        "unknown jwt policy \"djnago\" (known: django)"
    );
    assert_eq!(errs[0].line, Some(20));
    assert!(errs[1].message.contains("jwt: POLICY"), "{}", errs[1]);

    let valid: String = yaml.lines().take(17).map(|l| format!("{l}\n")).collect();
    let s = super::super::test_support::load_in(dir.path(), &valid)
        .unwrap_or_else(|e| panic!("{e}\n{valid}"));
    let rl = s.routes[0].rate_limit.as_ref().unwrap();
    assert_eq!((rl.rate, rl.burst), (10, 10));
    assert_eq!(rl.key, KeySource::Claim("user_id".into()));
    let rl = s.routes[1].rate_limit.as_ref().unwrap();
    assert_eq!((rl.rate, rl.per.as_secs(), rl.burst), (5, 60, 20));
    assert_eq!(rl.key, KeySource::ClientIp);
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
