//! Failover under load over real sockets: zero failed requests while one of three servers
//! dies under load (5,000 requests, 32 at a time), and a server restarted on its port back
//! in rotation within `healthy_after × interval` of the restart, not before `healthy_after`
//! checks have passed, with traffic flowing and no request failing throughout.

mod balance_support;
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use balance_support::*;
use common::*;
use tokio_util::sync::CancellationToken;

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

/// The load at full size: 5,000 GETs, 32 at a time, while one of three servers dies
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
