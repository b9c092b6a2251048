//! Load balancing over real Gunicorn workers: three Gunicorn instances of the test Django
//! app (tests/django_app) behind the gateway, a bounded concurrent GET load, and one instance
//! killed outright mid-run (SIGKILL to its process group: master and workers die at once,
//! with requests in flight and connections queued in its listen backlog). The client must
//! see no failed request: resets before a response head and refused connections are retried
//! on the other instances, and the dead one is ejected at its first failure.
//!
//! Needs `pip install -r tests/django_app/requirements.txt` (`.ci/run` does it). Without
//! Django the test says so and passes, except under CI (`CI` set), where it fails.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Requests in the load, how many at a time, and the one before which an instance dies.
const TOTAL: usize = 1500;
const CONCURRENCY: usize = 16;
const KILL_AT: usize = 500;
/// Give-up time for the load, whatever its request count.
const LOAD_DEADLINE: Duration = Duration::from_secs(90);

/// Each server's `requests` from the admin `/upstreams`, in configuration order.
async fn server_requests(gw: &TestGateway) -> Vec<u64> {
    let admin = gw.gateway.admin_addr().unwrap();
    let json: Value = reqwest::get(format!("http://{admin}/upstreams"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    json["upstreams"]["app"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_gunicorn_under_load_fails_no_request() {
    if !django_stack(&["django", "rest_framework_simplejwt", "gunicorn"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db.sqlite3");
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(Gunicorn::spawn(closed_port().await, &db, &["-w", "2"]));
    }
    for app in &apps {
        app.wait_ready().await;
    }

    let servers: Vec<String> = apps.iter().map(|a| format!("\"{}\"", a.addr)).collect();
    let yaml = format!(
        r#"
listeners:
  - name: http
    bind: "127.0.0.1:0"
upstreams:
  app:
    servers: [{servers}]
    connect_timeout: 1s
    response_timeout: 10s
    retries: 2
    passive: {{ consecutive_failures: 1, eject_for: 30s }}
    health_check: {{ path: /healthz, interval: 500ms, timeout: 1s, unhealthy_after: 2, healthy_after: 2 }}
routes:
  - match: {{ path_prefix: / }}
    upstream: app
admin:
  bind: "127.0.0.1:0"
logging:
  access_log: false
"#,
        servers = servers.join(", ")
    );
    let gw = Arc::new(TestGateway::start(&yaml).await);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let url = gw.url("http", "/healthz");

    let victim = Arc::new(Mutex::new(apps.remove(1)));
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + LOAD_DEADLINE;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, url, victim) = (client.clone(), url.clone(), victim.clone());
        let (next, sent, failures) = (next.clone(), sent.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= TOTAL {
                    break;
                }
                if n == KILL_AT {
                    victim.lock().unwrap().kill_group();
                }
                let outcome = match client.get(&url).send().await {
                    Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                };
                sent.fetch_add(1, Ordering::SeqCst);
                if outcome.0 != 200 || !outcome.1.contains("\"ok\":true") {
                    let line = format!("request {n}: {} {}", outcome.0, outcome.1);
                    failures.lock().unwrap().push(line);
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed();

    let failures = std::mem::take(&mut *failures.lock().unwrap());
    assert_eq!(
        sent.load(Ordering::SeqCst),
        TOTAL,
        "the load did not finish in time"
    );
    let shown = &failures[..failures.len().min(10)];
    assert!(
        failures.is_empty(),
        "{} of {TOTAL} requests failed, first ones: {shown:#?}",
        failures.len()
    );
    // The victim is really gone, and took its share of the load until the kill.
    let victim_addr = victim.lock().unwrap().addr;
    assert!(tokio::net::TcpStream::connect(victim_addr).await.is_err());
    let requests = server_requests(&gw).await;
    assert!(
        requests[1] >= (KILL_AT / 6) as u64 && requests[1] < (TOTAL / 2) as u64,
        "{requests:?}"
    );
    eprintln!("{TOTAL} requests, {CONCURRENCY} at a time, in {elapsed:?}; per server {requests:?}");
}
