//! Criterion: the cost of verifying a JWT at the gateway, cold (a token never seen before:
//! parse, signature check, claim checks, cache insert) and warm (the verified-token cache).
//!
//! `cargo bench --bench jwt_verify`

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use gateway::auth::JwtPolicy;
use gateway::config::JwtPolicySettings;
use http::{HeaderMap, HeaderValue};

fn policy_settings(dir: &std::path::Path) -> Vec<JwtPolicySettings> {
    let ec = rcgen::KeyPair::generate().expect("P-256 key");
    std::fs::write(dir.join("es.key"), ec.serialize_pem()).expect("write key");
    std::fs::write(dir.join("es.pub"), ec.public_key_pem()).expect("write public key");
    let yaml = r#"
listeners: [{ name: http, bind: "127.0.0.1:0" }]
upstreams: { app: { servers: ["127.0.0.1:9"] } }
jwt_policies:
  hs: { algorithms: [HS256], key: { secret: "bench-secret-0123456789abcdef0123456789" }, claims: { token_type: access } }
  es: { algorithms: [ES256], key: { public_key_file: es.pub }, claims: { token_type: access } }
routes: [{ match: { path_prefix: / }, upstream: app }]
"#;
    gateway::config::load_str(yaml, dir, dir.join("gateway.yaml"))
        .expect("bench config is valid")
        .jwt_policies
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("token is ASCII");
    headers.insert(http::header::AUTHORIZATION, value);
    headers
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for settings in policy_settings(dir.path()) {
        let policy: Arc<JwtPolicy> = runtime
            .block_on(JwtPolicy::build(&settings))
            .expect("policy builds");
        let key = (settings.name == "es").then(|| dir.path().join("es.key"));
        let claims = [("user_id".to_string(), "42".to_string())];
        // Every minted token has a fresh jti, so each one is a cache miss.
        let mint = || {
            gateway::auth::mint(
                &settings,
                &claims,
                Duration::from_secs(3600),
                key.as_deref(),
            )
            .expect("mint")
        };
        c.bench_function(&format!("{}_cold", settings.name), |b| {
            b.iter_batched(
                || bearer(&mint()),
                |headers| policy.verify(&headers).expect("valid token"),
                BatchSize::SmallInput,
            )
        });
        let warm = bearer(&mint());
        c.bench_function(&format!("{}_warm", settings.name), |b| {
            b.iter(|| policy.verify(&warm).expect("valid token"))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
