//! Whole-file tests: the SPEC.md example, the shipped gateway.yaml, reporting every error at
//! once, loading from disk, and routes referring to JWT policies.

use std::path::{Path, PathBuf};

use super::certs::tests::write_pair;
use super::test_support::{errors_of, load_in, ok, LISTENER, UPSTREAM};
use super::{load, load_str, KeySource, RouteHandler, TlsVersion};

/// The example from SPEC.md, verbatim except for the certificate paths (`{cert}`, `{key}`).
const SPEC_EXAMPLE: &str = r#"server:
  worker_threads: 0            # 0 = one per core
  max_connections: 10000
  header_read_timeout: 10s     # slow-loris guard: whole request head must arrive in time
  idle_timeout: 60s            # keep-alive idle
  max_header_bytes: 16KiB      # larger -> 431
  max_body_bytes: 10MiB        # larger -> 413 (also per route)
  shutdown_grace: 30s
  trusted_proxies: []          # CIDRs whose X-Forwarded-For is believed for client_ip

listeners:
  - name: https
    bind: "127.0.0.1:8443"
    tls:
      certificates:            # first is the default; others picked by SNI
        - cert: {cert}
          key: {key}
      min_version: "1.2"       # "1.2" | "1.3"
      alpn: [h2, http/1.1]
  - name: http
    bind: "127.0.0.1:8080"
    redirect_https: true       # 308 to https://HOST:PORT/same/path?query, PORT = first TLS listener's (omitted if 443)

upstreams:
  app:
    servers:
      - "127.0.0.1:8001"
      - { address: "127.0.0.1:8002", weight: 2 }
    balance: round_robin       # round_robin | least_conn | p2c | consistent_hash
    hash_key: "header:X-User-Id" # for consistent_hash: header:NAME | cookie:NAME | client_ip | claim:NAME
    connect_timeout: 2s
    response_timeout: 30s      # time to response head -> 504
    read_timeout: 60s          # longest wait for more response body bytes; then the response is cut off
    retries: 1                 # only for connect failures and idempotent methods
    request_buffering: true    # read the whole body before contacting upstream (shields sync workers)
    pool: { max_idle_per_server: 64, idle_timeout: 90s }
    health_check:              # active
      path: /healthz
      interval: 2s
      timeout: 1s
      unhealthy_after: 2
      healthy_after: 2
    passive:                   # outlier ejection on live traffic
      consecutive_failures: 3
      eject_for: 10s
      failure_percentage: 50   # extension: also eject at this failed share of ~50 exchanges
    max_connections: 0         # per server; 0 = unlimited

jwt_policies:
  django:
    algorithms: [HS256]        # any of HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA
    key:                       # exactly one source
      secret_env: DJANGO_SECRET_KEY   # | secret | secret_file | public_key_file (PEM) | jwks_file | jwks_url
    jwks_refresh: 5m           # jwks_url only
    issuer: null               # if set, iss must match
    audience: null             # if set, aud must contain it
    leeway: 30s
    required_claims: [exp]
    claims: { token_type: access }      # exact matches (simplejwt marks tokens access/refresh)
    token_sources: ["header:Authorization", "cookie:access_token"]
    forward_claims: { user_id: X-User-Id }   # claim -> header sent upstream
    forward_token: true        # false strips Authorization before forwarding
    max_token_bytes: 8KiB

routes:                        # first match wins; more specific first
  - name: static               # optional; names the route in logs and metrics
    match: { path_prefix: /static/ }
    static:
      root: ./static                # the prefix is stripped: /static/css/a.css -> ./static/css/a.css
      index: [index.html]
      precompressed: [br, gzip]     # serve FILE.br / FILE.gz when accepted
      immutable_hashed: true        # app.3f2a9c1b.css, Django's app.3f2a9c1b7e4d.css -> max-age=31536000, immutable
      max_age: 60s                  # everything else
      compress: false               # on-the-fly br/gzip when no sibling exists
      fallback: none                # none -> 404 | upstream (route also names upstream:)
  - match: { path_prefix: /api/token/ }
    upstream: app
  - match: { path_prefix: /api/, methods: [GET, POST, PUT, PATCH, DELETE] }
    jwt: django
    upstream: app
    max_body_bytes: 1MiB
    rate_limit: { rate: 100/s, burst: 200, key: "claim:user_id" }  # token bucket per key: holds `burst`, refills at `rate`; key: client_ip | header:NAME | claim:NAME -> 429 + Retry-After
  - match: { host: "admin.localhost", path_prefix: / }
    upstream: app
  - match: { path_prefix: / }
    upstream: app

admin:
  bind: "127.0.0.1:9901"       # GET /metrics (Prometheus), /healthz, /ready, /upstreams (JSON); POST /reload

logging:
  level: info                  # also RUST_LOG
  format: text                 # text | json
  access_log: true
"#;

#[test]
fn spec_example_validates() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), "localhost", &["localhost"]);
    std::fs::create_dir(dir.path().join("static")).unwrap();
    let yaml = SPEC_EXAMPLE.replace("{cert}", &cert).replace("{key}", &key);
    let s = load_in(dir.path(), &yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.listeners[0].tls.as_ref().unwrap().min_version,
        TlsVersion::V1_2
    );
    assert_eq!(s.listeners[1].redirect_https, Some(8443));
    assert_eq!(s.upstreams[0].servers[1].weight, 2);
    assert_eq!(s.routes.len(), 5);
    let RouteHandler::Static {
        files,
        upstream: None,
    } = &s.routes[0].handler
    else {
        panic!("routes[0] is not static: {:?}", s.routes[0].handler)
    };
    assert!(files.root.ends_with("static") && files.immutable_hashed && !files.compress);
    assert_eq!(files.precompressed, ["br", "gzip"]);
    assert_eq!(s.routes[2].max_body_bytes, 1 << 20);
    assert_eq!(s.routes[2].jwt, Some(0));
    let rate_limit = s.routes[2].rate_limit.as_ref().unwrap();
    assert_eq!(
        (rate_limit.rate, rate_limit.per.as_secs(), rate_limit.burst),
        (100, 1, 200)
    );
    assert_eq!(rate_limit.key, KeySource::Claim("user_id".into()));
    assert!(s.routes[3].rate_limit.is_none());
    assert_eq!(s.jwt_policies[0].name, "django");
    assert_eq!(s.admin.unwrap().bind.port(), 9901);
}

#[test]
fn shipped_gateway_yaml_validates() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = include_str!("../../gateway.yaml");
    let s =
        load_str(yaml, dir.path(), PathBuf::from("gateway.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.source, Path::new("gateway.yaml"));
    let tls = s.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.certificates[0].names, ["localhost"]);
    assert_eq!(
        tls.certificates[0].cert_path,
        dir.path().join("certs/localhost.crt")
    );
    assert_eq!(s.listeners[1].redirect_https, Some(8443));
    assert_eq!(s.upstreams[0].servers.len(), 2);
    assert!(matches!(s.routes[0].handler, RouteHandler::Upstream(0)));
    assert!(dir.path().join("certs/localhost.key").exists());
}

#[test]
fn every_error_is_reported_at_once() {
    let yaml = "server:
  idle_timeout: forever
listeners:
  - bind: \"127.0.0.1:8080\"
    tls_cert: x.pem
upstreams:
  app:
    servers: [\"127.0.0.1:8001\"]
    balance: random
routes:
  - match: { path_prefix: / }
    upstream: ap
";
    let errs = errors_of(yaml);
    let got: Vec<(&str, Option<usize>)> = errs.iter().map(|e| (e.path.as_str(), e.line)).collect();
    assert_eq!(
        got,
        [
            ("server.idle_timeout", Some(2)),
            ("listeners[0].tls_cert", Some(5)),
            ("upstreams.app.balance", Some(9)),
            ("routes[0].upstream", Some(12)),
        ],
        "{errs:#?}"
    );
    assert!(
        errs[1].message.contains("unknown field `tls_cert`"),
        "{}",
        errs[1]
    );
}

#[test]
fn load_reads_files_and_resolves_against_their_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    write_pair(&dir.path().join("conf"), "site", &["site.test"]);
    let file = dir.path().join("conf/gateway.yaml");
    std::fs::write(
        &file,
        "listeners:\n  - bind: \"127.0.0.1:0\"\n    tls: { certificates: [{ cert: site.crt, key: site.key }] }\n",
    )
    .unwrap();
    let s = load(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.source, file);
    assert_eq!(
        s.listeners[0].tls.as_ref().unwrap().certificates[0].names,
        ["site.test"]
    );
    assert!(s.routes.is_empty());

    let err = load(&dir.path().join("missing.yaml")).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(
        err.to_string().starts_with("cannot read config file"),
        "{err}"
    );
}

#[test]
fn routes_refer_to_policies_by_index() {
    let s = ok(&format!(
        "jwt_policies:
  first:
    algorithms: [HS256]
    key: {{ secret: one }}
  django:
    algorithms: [HS384]
    key: {{ secret: two }}
{LISTENER}{UPSTREAM}routes:
  - match: {{ path_prefix: /api/ }}
    upstream: app
    jwt: django
  - match: {{ path_prefix: / }}
    upstream: app
"
    ));
    assert_eq!(s.jwt_policies.len(), 2);
    assert_eq!(s.jwt_policies[1].name, "django");
    assert_eq!(s.jwt_policies[1].algorithms, ["HS384"]);
    assert_eq!(s.routes[0].jwt, Some(1));
    assert_eq!(s.routes[1].jwt, None);
}

#[test]
fn only_a_readable_regular_utf8_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let minimal = super::test_support::minimal("");
    // A byte-order mark is skipped, not taken for a second document.
    let bom = dir.path().join("bom.yaml");
    std::fs::write(&bom, format!("\u{feff}{minimal}")).unwrap();
    assert!(load(&bom).is_ok(), "{:?}", load(&bom).err());
    // A FIFO would block the reading thread (and every later reload) for good.
    let fifo = dir.path().join("fifo.yaml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        let errs = load(&fifo).unwrap_err().0;
        assert!(errs[0].message.contains("not a regular file"), "{errs:?}");
    }
    let errs = load(dir.path()).unwrap_err().0;
    assert!(errs[0].message.contains("not a regular file"), "{errs:?}");
    // Not UTF-8: the line of the first bad byte.
    let latin1 = dir.path().join("latin1.yaml");
    std::fs::write(&latin1, b"server:\n  # caf\xe9\n".as_slice()).unwrap();
    let errs = load(&latin1).unwrap_err().0;
    assert_eq!(errs[0].line, Some(2), "{errs:?}");
    assert!(errs[0].message.contains("not UTF-8"), "{errs:?}");
    // A syntax error is reported alone (no "at least one listener is required" after it).
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, format!("{minimal}server: [1\n")).unwrap();
    let errs = load(&broken).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].message.starts_with("invalid YAML"), "{errs:?}");
}
