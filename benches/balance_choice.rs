//! Criterion: the cost of choosing a server for one request, per strategy, over 3 and 16
//! idle servers. It times `Upstream::choose`, what the proxy calls per attempt: the usable
//! check of every candidate (health, ejection, connection cap), the strategy's pick and,
//! for `consistent_hash`, the ring lookup of a precomputed key (keys cycle through 1,024
//! values so the lookups do not all hit one cache line). Issue 4's target: < 1 µs.
//!
//! `cargo bench --bench balance_choice`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gateway::proxy::Upstream;

fn upstream(balance: &str, servers: usize, dir: &std::path::Path) -> Upstream {
    let list: Vec<String> = (0..servers)
        .map(|i| format!("\"127.0.0.1:{}\"", 20_000 + i))
        .collect();
    let yaml = format!(
        r#"
listeners: [{{ name: http, bind: "127.0.0.1:0" }}]
upstreams:
  app:
    servers: [{}]
    balance: {balance}
    hash_key: "header:X-User-Id"
    passive: {{ consecutive_failures: 3, eject_for: 10s }}
routes: [{{ match: {{ path_prefix: / }}, upstream: app }}]
"#,
        list.join(", ")
    );
    let settings = gateway::config::load_str(&yaml, dir, dir.join("gateway.yaml"))
        .expect("bench config is valid");
    let upstream = settings.upstreams.into_iter().next().expect("one upstream");
    Upstream::new(upstream, None, None)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    // splitmix64 of 0..1024: well-spread ring keys, the same on every run.
    let keys: Vec<u64> = (0..1024u64)
        .map(|i| {
            let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
        .collect();
    let mut group = c.benchmark_group("choose");
    for balance in ["round_robin", "least_conn", "p2c", "consistent_hash"] {
        for servers in [3, 16] {
            let up = upstream(balance, servers, dir.path());
            let hashed = balance == "consistent_hash";
            let mut n = 0usize;
            group.bench_function(BenchmarkId::new(balance, servers), |b| {
                b.iter(|| {
                    n = n.wrapping_add(1);
                    let hash = hashed.then(|| keys[n % keys.len()]);
                    up.choose(std::hint::black_box(hash), &[])
                        .expect("an idle server")
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
