//! Upstream health over real sockets: passive ejection and readmission, panic mode when every
//! server is ejected, 503 at once when every server fails its checks, a reload keeping a kept
//! server's state, active health checks marking a server down and up, no checker left
//! running after a reload, and no task left behind by a health check that flaps between
//! pass, fail and timeout.

mod balance_support;
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use balance_support::*;
use common::*;
use http::{Response, StatusCode};

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
    let metrics = admin_metrics(&gw).await;
    assert!(
        metrics.contains("gateway_retries_total{upstream=\"app\"} 1"),
        "{metrics}"
    );
    // Ejected but not known down, both are still tried (panic mode: see the next test).
    assert_eq!(get(&client, &gw, "/").await.0, 502);

    // Once their active checks fail: 503 at once.
    let extra = "    health_check: { path: /healthz, interval: 20ms, timeout: 200ms, unhealthy_after: 1, healthy_after: 1 }";
    let gw = TestGateway::start(&yaml(&[quoted(a), quoted(b)], extra)).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while admin_upstreams(&gw)
        .await
        .iter()
        .any(|s| s["healthy"] != false)
    {
        assert!(Instant::now() < deadline, "the checks never failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    assert_eq!(get(&client, &gw, "/").await.0, 503);
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
}

/// Every server answering 500 for a moment (a database blip) ejects them all; panic mode
/// keeps serving from them instead of answering 503 for `eject_for` (the fifth audit: 9.8 s
/// of 503 after a three-request blip while the active checks passed).
#[tokio::test]
async fn a_blip_on_every_server_is_not_eject_for_of_503s() {
    let blip = Arc::new(AtomicUsize::new(4));
    let server = |name: &'static str| {
        let blip = blip.clone();
        TestUpstream::start(move |_| {
            let failing = blip
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            async move {
                let mut r = Response::new(full(name));
                if failing {
                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                }
                r
            }
        })
    };
    let (a, b) = (server("a").await, server("b").await);
    let extra = "    passive: { consecutive_failures: 2, eject_for: 60s }";
    let gw = TestGateway::start(&yaml(&[quoted(a.addr), quoted(b.addr)], extra)).await;
    let client = reqwest::Client::new();
    for _ in 0..4 {
        assert_eq!(get(&client, &gw, "/").await.0, 500);
    }
    let servers = admin_upstreams(&gw).await;
    assert_eq!(
        (servers[0]["ejected"].clone(), servers[1]["ejected"].clone()),
        (true.into(), true.into())
    );
    let mut names = Vec::new();
    for _ in 0..6 {
        let (status, name) = get(&client, &gw, "/").await;
        assert_eq!(status, 200, "{name}");
        names.push(name);
    }
    assert!(
        names.contains(&"a".to_string()) && names.contains(&"b".to_string()),
        "{names:?}"
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

/// A server failing every other exchange never fails three in a row, so only its failure
/// share can eject it (`passive.failure_percentage`, 50 by default, over ~50 exchanges).
/// Before it, such a server kept its full share: a third of all answers 5xx here, and more
/// under `least_conn`/`p2c`, which favour a server that fails fast.
#[tokio::test]
async fn a_server_failing_half_its_requests_is_ejected_by_its_failure_share() {
    let calls = Arc::new(AtomicUsize::new(0));
    let flaky = TestUpstream::start({
        let calls = calls.clone();
        move |_| {
            let failing = calls.fetch_add(1, Ordering::SeqCst) % 2 == 0;
            async move {
                let mut r = Response::new(full("flaky"));
                if failing {
                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                }
                r
            }
        }
    })
    .await;
    let good = named("good", 200).await;
    let extra = "    passive: { consecutive_failures: 3, eject_for: 60s }";
    let gw = TestGateway::start(&yaml(&[quoted(flaky.addr), quoted(good.addr)], extra)).await;
    let client = reqwest::Client::new();
    let mut errors = 0;
    for _ in 0..300 {
        if get(&client, &gw, "/").await.0 != 200 {
            errors += 1;
        }
    }
    assert_eq!(admin_upstreams(&gw).await[0]["ejected"], true);
    // Ejected after its 50th or 51st exchange: about 25 errors, not 75.
    assert!(errors <= 30, "{errors} of 300 requests failed");
    assert!(flaky.hits() <= 52, "{}", flaky.hits());
}

/// Reloads `gw` with `yaml` (parsed as the config file would be).
async fn reload_with(gw: &TestGateway, yaml: &str) {
    let dir = gw.dir.path();
    let settings = gateway::config::load_str(yaml, dir, dir.join("gateway.yaml")).unwrap();
    gw.gateway.reload(settings).await.unwrap();
}

/// A reload keeps a kept server's live state: its ejection goes on, and requests in flight
/// under the old configuration count against `max_connections` under the new one (the fifth
/// audit's finding: both started from zero, so a reload readmitted a failing server and let a
/// capped one take more than its cap).
#[tokio::test]
async fn a_reload_keeps_a_kept_servers_ejection_and_in_flight_count() {
    let bad = named("bad", 500).await;
    let good = named("good", 200).await;
    let both = [quoted(bad.addr), quoted(good.addr)];
    let passive = "    passive: { consecutive_failures: 1, eject_for: 60s }";
    let gw = TestGateway::start(&yaml(&both, passive)).await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        get(&client, &gw, "/").await;
    }
    assert_eq!(bad.hits(), 1);
    // Any change (here a new retry count) swaps in a new state.
    reload_with(
        &gw,
        &yaml(
            &both,
            &format!(
                "{passive}
    retries: 1"
            ),
        ),
    )
    .await;
    assert_eq!(admin_upstreams(&gw).await[0]["ejected"], true);
    for _ in 0..6 {
        assert_eq!(get(&client, &gw, "/").await, (200, "good".into()));
    }
    assert_eq!(bad.hits(), 1, "the reload readmitted an ejected server");

    let slow = TestUpstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Response::new(full("slow"))
    })
    .await;
    let capped = "    max_connections: 1";
    let gw = TestGateway::start(&yaml(&[quoted(slow.addr)], capped)).await;
    let first = tokio::spawn({
        let url = gw.url("http", "/");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    });
    let start = Instant::now();
    while slow.hits() == 0 && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    reload_with(
        &gw,
        &yaml(
            &[quoted(slow.addr)],
            &format!(
                "{capped}
    retries: 1"
            ),
        ),
    )
    .await;
    // The first request still holds the only slot: the second is refused after the short
    // wait for capacity instead of reaching the server as a second concurrent request.
    assert_eq!(get(&client, &gw, "/").await.0, 503);
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(slow.hits(), 1);
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
