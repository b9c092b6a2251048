//! Load balancing and upstream health over real sockets: passive ejection and readmission,
//! 503 with no usable server, active health checks, zero failed requests while a server dies
//! under load (5,000 requests, 32 at a time) and its return within `healthy_after × interval`
//! of a restart, strategy distribution over weighted servers, consistent-hash stickiness, and
//! no task left behind by a health check that flaps between pass, fail and timeout.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use http::{Response, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// One plain listener, an admin listener, upstream `app` over `servers` with `extra` keys.
fn yaml(servers: &[String], extra: &str) -> String {
    let servers = servers.join(", ");
    format!(
        r#"
server:
  shutdown_grace: 1s
listeners:
  - name: http
    bind: "127.0.0.1:0"
upstreams:
  app:
    servers: [{servers}]
    connect_timeout: 1s
    response_timeout: 5s
{extra}
routes:
  - match: {{ path_prefix: / }}
    upstream: app
admin:
  bind: "127.0.0.1:0"
logging:
  access_log: false
"#
    )
}

fn quoted(addr: SocketAddr) -> String {
    format!("\"{addr}\"")
}

/// Answers `status` with its `name` as the body.
async fn named(name: &'static str, status: u16) -> TestUpstream {
    TestUpstream::start(move |_| async move {
        let mut r = Response::new(full(name));
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        r
    })
    .await
}

/// The admin listener's `/metrics` text.
async fn admin_metrics(gw: &TestGateway) -> String {
    let admin = gw.gateway.admin_addr().unwrap();
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn admin_upstreams(gw: &TestGateway) -> Vec<Value> {
    let admin = gw.gateway.admin_addr().unwrap();
    let url = format!("http://{admin}/upstreams");
    let json: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    json["upstreams"]["app"]["servers"]
        .as_array()
        .cloned()
        .unwrap()
}

async fn get(client: &reqwest::Client, gw: &TestGateway, path: &str) -> (u16, String) {
    match client.get(gw.url("http", path)).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test]
async fn failing_server_is_ejected_then_readmitted() {
    let bad = named("bad", 500).await;
    let good = named("good", 200).await;
    let extra = "    passive: { consecutive_failures: 2, eject_for: 400ms }";
    let gw = TestGateway::start(&yaml(&[quoted(bad.addr), quoted(good.addr)], extra)).await;
    let client = reqwest::Client::new();
    for _ in 0..4 {
        get(&client, &gw, "/").await;
    }
    assert_eq!(bad.hits(), 2);
    let servers = admin_upstreams(&gw).await;
    assert_eq!(servers[0]["ejected"], true);
    assert_eq!(servers[0]["ejections"], 1);
    assert_eq!(servers[0]["failures"], 2);
    for _ in 0..10 {
        assert_eq!(get(&client, &gw, "/").await, (200, "good".into()));
    }
    assert_eq!(bad.hits(), 2, "an ejected server got traffic");
    tokio::time::sleep(Duration::from_millis(450)).await;
    for _ in 0..4 {
        get(&client, &gw, "/").await;
    }
    assert!(
        bad.hits() > 2,
        "the server did not come back after eject_for"
    );
}

#[tokio::test]
async fn all_servers_down_is_503_at_once() {
    let (a, b) = (closed_port().await, closed_port().await);
    let extra = "    retries: 1\n    passive: { consecutive_failures: 1, eject_for: 10s }";
    let gw = TestGateway::start(&yaml(&[quoted(a), quoted(b)], extra)).await;
    let client = reqwest::Client::new();
    // Both refuse: 502 after the retry, and both are ejected.
    assert_eq!(get(&client, &gw, "/").await.0, 502);
    let start = Instant::now();
    assert_eq!(get(&client, &gw, "/").await.0, 503);
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    let metrics = admin_metrics(&gw).await;
    assert!(
        metrics.contains("gateway_retries_total{upstream=\"app\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn active_checks_mark_a_server_down_and_up() {
    let health = Arc::new(AtomicU16::new(200));
    let h = health.clone();
    let up = TestUpstream::start(move |seen| {
        let status = match seen.uri.path() {
            "/healthz" => h.load(Ordering::SeqCst),
            _ => 200,
        };
        async move {
            let mut r = Response::new(full("up"));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            r
        }
    })
    .await;
    let extra = "    health_check: { path: /healthz, interval: 30ms, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }";
    let gw = TestGateway::start(&yaml(&[quoted(up.addr)], extra)).await;
    let client = reqwest::Client::new();
    assert_eq!(get(&client, &gw, "/").await.0, 200);
    // Checks begin at once, with the server's address as Host.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let checked = up.seen.lock().unwrap().iter().any(|s| {
            s.uri.path() == "/healthz" && s.headers["host"] == up.addr.to_string().as_str()
        });
        if checked {
            break;
        }
        assert!(Instant::now() < deadline, "no health check arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    health.store(500, Ordering::SeqCst);
    wait_for_health(&gw, false).await;
    assert_eq!(get(&client, &gw, "/").await.0, 503);
    let metrics = admin_metrics(&gw).await;
    let series = format!(
        "gateway_upstream_server_healthy{{upstream=\"app\",server=\"{}\"}} 0",
        up.addr
    );
    assert!(metrics.contains(&series), "{metrics}");

    health.store(200, Ordering::SeqCst);
    wait_for_health(&gw, true).await;
    assert_eq!(get(&client, &gw, "/").await, (200, "up".into()));
}

async fn wait_for_health(gw: &TestGateway, healthy: bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while admin_upstreams(gw).await[0]["healthy"] != healthy {
        assert!(
            Instant::now() < deadline,
            "server never became healthy={healthy}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Give-up time for any load loop, whatever its request count.
const LOAD_DEADLINE: Duration = Duration::from_secs(60);

/// A bounded concurrent GET load on `/`: at most `total` requests, `concurrency` at a time,
/// each worker pausing `pause` between its requests; it ends early once `stop` is set or
/// after [`LOAD_DEADLINE`].
struct Load {
    total: usize,
    concurrency: usize,
    pause: Duration,
    stop: Arc<AtomicBool>,
}

/// What a load saw: requests sent, and a line per request that did not get `200 ok`.
struct LoadReport {
    sent: usize,
    failures: Vec<String>,
}

/// Runs `load` against `gw`; `before(n)` runs just before request `n` is sent.
async fn run_load(
    gw: Arc<TestGateway>,
    load: Load,
    before: Arc<dyn Fn(usize) + Send + Sync>,
) -> LoadReport {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = Instant::now() + LOAD_DEADLINE;
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..load.concurrency {
        let (gw, client, next, sent) = (gw.clone(), client.clone(), next.clone(), sent.clone());
        let (failures, before, stop) = (failures.clone(), before.clone(), load.stop.clone());
        let (total, pause) = (load.total, load.pause);
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= total {
                    break;
                }
                before(n);
                let (status, body) = get(&client, &gw, "/").await;
                sent.fetch_add(1, Ordering::SeqCst);
                if status != 200 || body != "ok" {
                    let line = format!("request {n}: {status} {body}");
                    failures.lock().unwrap().push(line);
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    LoadReport {
        sent: sent.load(Ordering::SeqCst),
        failures,
    }
}

fn assert_no_failures(report: &LoadReport) {
    let shown = &report.failures[..report.failures.len().min(10)];
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed, first ones: {shown:#?}",
        report.failures.len(),
        report.sent
    );
}

/// `gateway_retries_total{upstream="app"}` from the admin metrics.
async fn retries_total(gw: &TestGateway) -> u64 {
    let metrics = admin_metrics(gw).await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("gateway_retries_total{upstream=\"app\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The issue's load at full size: 5,000 GETs, 32 at a time, while one of three servers dies
/// (listener and open connections closed) at request 1,500. Requests in flight there are
/// reset before a response head and retried elsewhere (GET is idempotent), new ones fail to
/// connect and are retried, and the first failure ejects the server: no client sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_one_of_three_under_load_fails_no_request() {
    let servers = [
        Killable::start().await,
        Killable::start().await,
        Killable::start().await,
    ];
    let list: Vec<String> = servers.iter().map(|s| quoted(s.addr)).collect();
    let extra = "    retries: 2\n    passive: { consecutive_failures: 1, eject_for: 10s }";
    let gw = Arc::new(TestGateway::start(&yaml(&list, extra)).await);
    let victim = servers[1].kill.clone();
    let load = Load {
        total: 5000,
        concurrency: 32,
        pause: Duration::ZERO,
        stop: Arc::default(),
    };
    let kill_at_1500 = Arc::new(move |n: usize| {
        if n == 1500 {
            victim.cancel();
        }
    });
    let report = run_load(gw.clone(), load, kill_at_1500).await;
    assert_eq!(report.sent, 5000, "the load did not finish in time");
    assert_no_failures(&report);
    let hits: Vec<usize> = servers
        .iter()
        .map(|s| s.hits.load(Ordering::SeqCst))
        .collect();
    // Round-robin: the victim took about a third of the first 1,500, then nothing.
    assert!((400..=600).contains(&hits[1]), "{hits:?}");
    assert!(hits[0] + hits[2] >= 4400, "{hits:?}");
    // The kill landed under load: some requests were in flight there and were retried.
    assert!(retries_total(&gw).await > 0, "no request was retried");
}

/// A `200 ok` upstream (1 ms per request) on a chosen address that can be killed for real
/// (listener and open connections) and started again on the same port. Health probes
/// (`/healthz`) are counted apart from live requests; the first live request records when
/// it came and how many probes this instance had answered by then.
struct Revivable {
    addr: SocketAddr,
    /// When the listener was bound (connections are accepted into the backlog from then).
    started: Instant,
    hits: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
    first_hit: Arc<OnceLock<(Instant, usize)>>,
    kill: CancellationToken,
}

impl Revivable {
    async fn bind(addr: SocketAddr) -> Revivable {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let started = Instant::now();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let probes = Arc::new(AtomicUsize::new(0));
        let first_hit = Arc::new(OnceLock::new());
        let kill = CancellationToken::new();
        let (h, p, f) = (hits.clone(), probes.clone(), first_hit.clone());
        serve_until_killed(listener, kill.clone(), move |req| {
            if req.uri().path() == "/healthz" {
                p.fetch_add(1, Ordering::SeqCst);
            } else {
                h.fetch_add(1, Ordering::SeqCst);
                f.get_or_init(|| (Instant::now(), p.load(Ordering::SeqCst)));
            }
        });
        Revivable {
            addr,
            started,
            hits,
            probes,
            first_hit,
            kill,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Revivable {
    fn drop(&mut self) {
        self.kill.cancel();
    }
}

/// Polls `done` every 10 ms until it holds; fails naming `what` after `within`.
/// A killed server restarted on the same port rejoins the rotation once `healthy_after`
/// active checks in a row have passed: within `healthy_after × interval` of the restart
/// (plus 1 s for scheduling), and not before those checks (no live request reaches the new
/// instance until it answered `healthy_after` probes). Traffic flows throughout, 0 failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_server_returns_within_healthy_after_intervals() {
    const INTERVAL: Duration = Duration::from_millis(200);
    const HEALTHY_AFTER: u32 = 3;
    const SLACK: Duration = Duration::from_secs(1);
    let others = [Killable::start().await, Killable::start().await];
    let victim = Revivable::bind("127.0.0.1:0".parse().unwrap()).await;
    let list = [
        quoted(others[0].addr),
        quoted(victim.addr),
        quoted(others[1].addr),
    ];
    // A short ejection, so that by the restart only the active checks keep the server out.
    let extra = format!(
        "    retries: 2\n    passive: {{ consecutive_failures: 1, eject_for: 100ms }}\n    \
         health_check: {{ path: /healthz, interval: {}ms, timeout: 500ms, unhealthy_after: 2, \
         healthy_after: {HEALTHY_AFTER} }}",
        INTERVAL.as_millis()
    );
    let gw = Arc::new(TestGateway::start(&yaml(&list, &extra)).await);
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load {
        total: 100_000,
        concurrency: 8,
        pause: Duration::from_millis(1),
        stop: stop.clone(),
    };
    let load = tokio::spawn(run_load(gw.clone(), load, Arc::new(|_| {})));

    wait_until("traffic on the victim", Duration::from_secs(5), || {
        victim.hits() >= 50
    })
    .await;
    victim.kill.cancel();
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin_upstreams(&gw).await[1]["healthy"] != false {
        assert!(Instant::now() < deadline, "the dead server stayed healthy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dead_hits = victim.hits();

    let revived = Revivable::bind(victim.addr).await;
    let bound = INTERVAL * HEALTHY_AFTER + SLACK;
    wait_until("the restarted server's first request", bound * 3, || {
        revived.first_hit.get().is_some()
    })
    .await;
    let (first, probes_before) = *revived.first_hit.get().unwrap();
    let back_after = first - revived.started;
    stop.store(true, Ordering::SeqCst);
    let report = load.await.unwrap();

    assert_no_failures(&report);
    assert_eq!(victim.hits(), dead_hits, "a killed server answered");
    assert!(
        probes_before >= HEALTHY_AFTER as usize,
        "live traffic came back after {probes_before} passed checks, before healthy_after"
    );
    assert!(
        back_after <= bound,
        "back in rotation {back_after:?} after the restart; healthy_after x interval is {:?}",
        INTERVAL * HEALTHY_AFTER
    );
    eprintln!(
        "restarted server back after {back_after:?} ({probes_before} checks passed), {} requests, {} probes",
        report.sent,
        revived.probes.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn strategies_follow_weights() {
    let ups = [
        named("a", 200).await,
        named("b", 200).await,
        named("c", 200).await,
    ];
    let list: Vec<String> = ups
        .iter()
        .zip([1, 2, 3])
        .map(|(u, w)| format!("{{ address: \"{}\", weight: {w} }}", u.addr))
        .collect();
    for balance in ["round_robin", "least_conn", "p2c"] {
        let gw = TestGateway::start(&yaml(&list, &format!("    balance: {balance}"))).await;
        let client = reqwest::Client::new();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..600 {
            let (status, body) = get(&client, &gw, "/").await;
            assert_eq!(status, 200);
            *counts.entry(body).or_default() += 1;
        }
        for (name, expected) in [("a", 100), ("b", 200), ("c", 300)] {
            let got = counts.get(name).copied().unwrap_or(0);
            assert!(
                got.abs_diff(expected) <= 50,
                "{balance}: {name} got {got}, expected ~{expected}: {counts:?}"
            );
        }
    }
}

/// The server each of `keys` lands on (asked twice: it must not change).
async fn placement(gw: &TestGateway, keys: &[String]) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for key in keys {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let res = client
                .get(gw.url("http", "/"))
                .header("X-User-Id", key)
                .send()
                .await
                .unwrap();
            seen.push(res.text().await.unwrap());
        }
        assert_eq!(seen[0], seen[1], "key {key} moved between requests");
        out.push(seen.remove(0));
    }
    out
}

#[tokio::test]
async fn consistent_hash_sticks_and_remaps_about_a_third() {
    let ups = [
        named("a", 200).await,
        named("b", 200).await,
        named("c", 200).await,
    ];
    let extra = "    balance: consistent_hash\n    hash_key: \"header:X-User-Id\"";
    let all: Vec<String> = ups.iter().map(|u| quoted(u.addr)).collect();
    let keys: Vec<String> = (0..150).map(|k| format!("user-{k}")).collect();

    let three = TestGateway::start(&yaml(&all, extra)).await;
    let before = placement(&three, &keys).await;
    let two = TestGateway::start(&yaml(&all[..2], extra)).await;
    let after = placement(&two, &keys).await;
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        if b != a {
            assert_eq!(b, "c", "a key of a kept server moved");
            moved += 1;
        }
    }
    assert!((25..=75).contains(&moved), "{moved} of 150 keys moved");
    // The server returns: every key goes back where it was.
    let again = TestGateway::start(&yaml(&all, extra)).await;
    assert_eq!(placement(&again, &keys).await, before);
}

/// Answers after `delay` with its `name` as the body.
async fn slow(name: &'static str, delay: Duration) -> TestUpstream {
    TestUpstream::start(move |_| async move {
        tokio::time::sleep(delay).await;
        Response::new(full(name))
    })
    .await
}

#[tokio::test]
async fn max_connections_spills_over_then_503s() {
    let delay = Duration::from_millis(400);
    let (a, b) = (slow("a", delay).await, slow("b", delay).await);
    let gw = TestGateway::start(&yaml(&[quoted(a.addr)], "    max_connections: 1")).await;
    let client = reqwest::Client::new();
    let start = Instant::now();
    let (first, second) = tokio::join!(get(&client, &gw, "/"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = get(&client, &gw, "/").await;
        (r, start.elapsed())
    });
    assert_eq!(first.0, 200);
    let ((status, _), at) = second;
    assert_eq!(status, 503);
    // Refused after the short wait, not after the first request finished.
    assert!(at < Duration::from_millis(350), "{at:?}");

    let both = [quoted(a.addr), quoted(b.addr)];
    let gw = TestGateway::start(&yaml(&both, "    max_connections: 1")).await;
    let (x, y) = tokio::join!(get(&client, &gw, "/"), get(&client, &gw, "/"));
    assert_eq!((x.0, y.0), (200, 200));
    assert_ne!(x.1, y.1, "both requests went to one capped server");
}

#[tokio::test]
async fn reload_ends_the_old_health_checkers() {
    let up = named("up", 200).await;
    let extra = "    health_check: { path: /healthz, interval: 20ms, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }";
    let gw = TestGateway::start(&yaml(&[quoted(up.addr)], extra)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(up.hits() >= 2, "checks did not run: {}", up.hits());
    let plain = yaml(&[quoted(up.addr)], "");
    let dir = gw.dir.path();
    let settings = gateway::config::load_str(&plain, dir, dir.join("gateway.yaml")).unwrap();
    gw.gateway.reload(settings).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = up.hits();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(up.hits(), after, "a retired state's checker still runs");
}

/// A health endpoint on plain threads (outside the test's runtime, so that runtime's task
/// count is the gateway's): check n answers 200 when n % 3 == 0, 500 when n % 3 == 1, and
/// holds the connection open for 30 s without answering when n % 3 == 2. Returns the address
/// and the number of checks received.
fn flapping_health_endpoint() -> (SocketAddr, Arc<AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let checks = Arc::new(AtomicUsize::new(0));
    let seen = checks.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut head = [0u8; 1024];
                let _ = stream.read(&mut head);
                let status = match n % 3 {
                    0 => "200 OK",
                    1 => "500 Internal Server Error",
                    _ => {
                        std::thread::sleep(Duration::from_secs(30));
                        return;
                    }
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
            });
        }
    });
    (addr, checks)
}

/// A server whose checks flip between pass, fail and time out on every round: the checker
/// keeps going, health follows it, and no task is left behind by the timed-out probes (each
/// of those holds an upstream connection the server never answers for 30 s).
#[tokio::test]
async fn health_check_flapping_does_not_leak_tasks() {
    let (addr, checks) = flapping_health_endpoint();
    let extra = "    health_check: { path: /healthz, interval: 10ms, timeout: 40ms, unhealthy_after: 1, healthy_after: 1 }";
    let gw = TestGateway::start(&yaml(&[quoted(addr)], extra)).await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = tasks();
    let mut states = std::collections::HashSet::new();
    let mut most = baseline;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        states.insert(admin_upstreams(&gw).await[0]["healthy"] == true);
        most = most.max(tasks());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let checked = checks.load(Ordering::SeqCst);
    // ~1.5 s at one check per 10-50 ms; a third of them time out.
    assert!(checked >= 30, "only {checked} checks arrived");
    assert_eq!(states.len(), 2, "health never flapped: {states:?}");
    // A leaked probe would stay alive for the endpoint's 30 s: a dozen or more by now.
    assert!(
        most <= baseline + 3,
        "tasks grew from {baseline} to {most} over {checked} flapping checks"
    );
}

#[tokio::test]
async fn p2c_sends_less_to_a_much_slower_server() {
    let fast = named("fast", 200).await;
    let slow = slow("slow", Duration::from_millis(20)).await;
    let both = [quoted(fast.addr), quoted(slow.addr)];
    let gw = TestGateway::start(&yaml(&both, "    balance: p2c")).await;
    let client = reqwest::Client::new();
    for _ in 0..100 {
        assert_eq!(get(&client, &gw, "/").await.0, 200);
    }
    // Round-robin would send 50; p2c only when both draws land on the slow one (~25).
    assert!(slow.hits() < 40, "slow server got {} of 100", slow.hits());
}
