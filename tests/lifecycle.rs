//! Lifecycle: graceful drain through the library, and the `gateway` binary's `run` (SIGTERM,
//! SIGHUP reload) and `check` commands.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use http::Response;

// ---------------------------------------------------------------------------------------------
// 8. graceful drain (library)
// ---------------------------------------------------------------------------------------------

async fn slow_upstream(delay: Duration) -> TestUpstream {
    TestUpstream::start(move |_seen: Seen| async move {
        tokio::time::sleep(delay).await;
        Response::new(full("slow done"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_connections_and_finishes_in_flight_requests() {
    let up = slow_upstream(Duration::from_secs(1)).await;
    let gw = TestGateway::start(&simple_yaml(up.addr, "", "")).await;
    let addr = gw.addr("http");
    let url = gw.url("http", "/slow");
    let in_flight = tokio::spawn(async move {
        let res = reqwest::get(url).await.unwrap();
        (res.status(), res.text().await.unwrap())
    });
    wait_until(
        "the request to reach the upstream",
        Duration::from_secs(2),
        || up.hits() == 1,
    )
    .await;

    let shutdown_at = Instant::now();
    gw.gateway.shutdown();
    // The listening socket closes at once: connecting is refused (not queued in a backlog).
    let refused_after = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                break shutdown_at.elapsed();
            }
            // A connect racing the close may be reset instead; Ok means still listening.
            other => {
                assert!(
                    shutdown_at.elapsed() < Duration::from_millis(500),
                    "listener not closed 500 ms after shutdown (last connect: {other:?})"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    assert!(
        !in_flight.is_finished(),
        "the in-flight request ended before the listener closed ({refused_after:?})"
    );

    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "slow done");
    let drained = tokio::time::timeout(Duration::from_secs(3), gw.gateway.drained())
        .await
        .expect("drained() did not return within 3 s");
    assert!(drained, "drained() reported requests still in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_gives_up_after_shutdown_grace() {
    let up = slow_upstream(Duration::from_secs(3)).await;
    let yaml = simple_yaml(up.addr, "", "").replace("shutdown_grace: 5s", "shutdown_grace: 300ms");
    let gw = TestGateway::start(&yaml).await;
    let url = gw.url("http", "/slow");
    let in_flight = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status()) });
    wait_until(
        "the request to reach the upstream",
        Duration::from_secs(2),
        || up.hits() == 1,
    )
    .await;
    gw.gateway.shutdown();
    let start = Instant::now();
    assert!(!gw.gateway.drained().await, "drained() claimed success");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "drained() waited {waited:?}"
    );
    in_flight.abort();
}

// ---------------------------------------------------------------------------------------------
// 9. the binary
// ---------------------------------------------------------------------------------------------

fn binary_yaml(port: u16, upstreams: &[(&str, SocketAddr)], routes: &str) -> String {
    let mut ups = String::new();
    for (name, addr) in upstreams {
        ups.push_str(&format!("  {name}:\n    servers: [\"{addr}\"]\n"));
    }
    format!(
        r#"server:
  shutdown_grace: 5s
listeners:
  - name: http
    bind: "127.0.0.1:{port}"
upstreams:
{ups}routes:
{routes}
logging:
  level: warn
  access_log: false
"#
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// GET `url`; (status, body), or None when the gateway cannot be reached.
async fn get(client: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let res = client.get(url).send().await.ok()?;
    let status = res.status().as_u16();
    Some((status, res.text().await.ok()?))
}

async fn wait_ready(gw: &mut Running, url: &str) {
    let c = client();
    let start = Instant::now();
    loop {
        if let Some((200, _)) = get(&c, url).await {
            return;
        }
        assert!(
            gw.still_running(),
            "gateway exited during start-up; stderr:\n{}",
            gw.stderr()
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "gateway not answering after 10 s; stderr:\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An upstream answering `NAME METHOD PATH`.
async fn named_upstream(name: &'static str) -> TestUpstream {
    TestUpstream::start(move |seen: Seen| async move {
        Response::new(full(format!("{name} {} {}", seen.method, seen.uri.path())))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_drains_in_flight_request_and_exits_0_on_sigterm() {
    let up = TestUpstream::start(|seen: Seen| async move {
        if seen.uri.path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        Response::new(full(format!("done {}", seen.uri.path())))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("gateway.yaml");
    let routes = "  - match: { path_prefix: / }\n    upstream: app";
    std::fs::write(&config, binary_yaml(port, &[("app", up.addr)], routes)).unwrap();
    let mut gw = Running::start(&config);
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&mut gw, &format!("{base}/ready")).await;

    let hits_before = up.hits();
    let slow_url = format!("{base}/slow");
    let in_flight = tokio::spawn(async move { get(&client(), &slow_url).await });
    wait_until(
        "the slow request to reach the upstream",
        Duration::from_secs(2),
        || up.hits() > hits_before,
    )
    .await;
    let term_at = Instant::now();
    gw.signal("TERM");

    // New connections are refused while the slow request is still being served.
    let first_refusal = async {
        loop {
            if refused(SocketAddr::from(([127, 0, 0, 1], port))).await {
                return term_at.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let refused_after = tokio::time::timeout(Duration::from_millis(700), first_refusal)
        .await
        .expect("listener still accepting 700 ms after SIGTERM");
    assert!(
        !in_flight.is_finished(),
        "refused only after {refused_after:?}"
    );

    assert_eq!(
        in_flight.await.unwrap(),
        Some((200, "done /slow".to_owned())),
        "in-flight request was not completed; stderr:\n{}",
        gw.stderr()
    );
    let status = gw.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", gw.stderr());
    assert!(term_at.elapsed() >= Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_routes_and_keeps_running_config_on_errors() {
    let a = named_upstream("A").await;
    let b = named_upstream("B").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("gateway.yaml");
    let ups = [("a", a.addr), ("b", b.addr)];
    let v1 = binary_yaml(port, &ups, "  - match: { path_prefix: / }\n    upstream: a");
    std::fs::write(&config, &v1).unwrap();
    let mut gw = Running::start(&config);
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&mut gw, &format!("{base}/")).await;
    let c = client();
    assert_eq!(
        get(&c, &format!("{base}/b/x")).await,
        Some((200, "A GET /b/x".to_owned()))
    );

    // A broken config (route to an upstream that does not exist): logged, old config kept.
    let broken = binary_yaml(
        port,
        &ups,
        "  - match: { path_prefix: /b/ }\n    upstream: nope\n  - match: { path_prefix: / }\n    upstream: b",
    );
    std::fs::write(&config, broken).unwrap();
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        gw.still_running(),
        "SIGHUP with a broken config killed the gateway"
    );
    assert_eq!(
        get(&c, &format!("{base}/b/x")).await,
        Some((200, "A GET /b/x".to_owned()))
    );
    assert_eq!(
        get(&c, &format!("{base}/")).await,
        Some((200, "A GET /".to_owned()))
    );
    assert_eq!(b.hits(), 0);

    // A valid change: /b/ now goes to the second upstream.
    let v2 = binary_yaml(
        port,
        &ups,
        "  - match: { path_prefix: /b/ }\n    upstream: b\n  - match: { path_prefix: / }\n    upstream: a",
    );
    std::fs::write(&config, v2).unwrap();
    gw.signal("HUP");
    let start = Instant::now();
    loop {
        let got = get(&c, &format!("{base}/b/x")).await;
        if got == Some((200, "B GET /b/x".to_owned())) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "reload not applied after 3 s (last answer {got:?}); stderr:\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(&c, &format!("{base}/other")).await,
        Some((200, "A GET /other".to_owned()))
    );

    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", gw.stderr());
}

#[test]
fn check_prints_ok_for_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    std::fs::write(
        &config,
        binary_yaml(
            free_port(),
            &[("app", up)],
            "  - match: { path_prefix: / }\n    upstream: app",
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().last(), Some("ok"), "{stdout}");
}

#[test]
fn check_reports_every_error_with_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    // Line numbers matter: `bogus_key` is on line 3, `upstream: nope` on line 12.
    let yaml = "\
server:
  shutdown_grace: 5s
  bogus_key: 1
listeners:
  - name: http
    bind: \"127.0.0.1:0\"
upstreams:
  app:
    servers: [\"127.0.0.1:9\"]
routes:
  - match: { path_prefix: / }
    upstream: nope
";
    std::fs::write(&config, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.lines().any(|l| l.trim() == "ok"),
        "printed ok for a broken config: {stdout}"
    );
    let line_with = |path: &str| {
        stderr
            .lines()
            .find(|l| l.contains(path))
            .unwrap_or_else(|| panic!("no error naming {path} in:\n{stderr}"))
            .to_owned()
    };
    let unknown_key = line_with("server.bogus_key");
    assert!(unknown_key.contains("line 3"), "{unknown_key}");
    let bad_upstream = line_with("routes[0].upstream");
    assert!(bad_upstream.contains("line 12"), "{bad_upstream}");
    assert!(bad_upstream.contains("nope"), "{bad_upstream}");
}

/// One JSON access-log line per request, written when the response is done, with the fields
/// the core issue names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request() {
    let up = named_upstream("app").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("gateway.yaml");
    let routes = "  - name: main\n    match: { path_prefix: / }\n    upstream: app";
    let yaml = binary_yaml(port, &[("app", up.addr)], routes).replace(
        "  level: warn\n  access_log: false",
        "  level: info\n  format: json\n  access_log: true",
    );
    std::fs::write(&config, yaml).unwrap();
    let mut gw = Running::start(&config);
    wait_ready(&mut gw, &format!("http://127.0.0.1:{port}/ready-probe")).await;
    let res = client()
        .get(format!("http://127.0.0.1:{port}/logged?q=1"))
        .header("X-Request-Id", "log-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(10)).await.success());

    let stderr = gw.stderr();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "gateway::access" && v["request_id"] == "log-test-1")
        .collect();
    assert_eq!(lines.len(), 1, "exactly one access line; stderr:\n{stderr}");
    let line = &lines[0];
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/logged");
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "main");
    assert_eq!(line["upstream"], up.addr.to_string());
    assert_eq!(line["bytes"], body.len());
    assert_eq!(line["client"], "127.0.0.1");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{line}"
    );
}

/// The access line names the TLS version (HTTPS only), the HTTP version and the verified
/// token's user id; and every other line a request logs (JWT rejection, passive ejection,
/// retry, upstream error) carries the request id of its access line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_names_tls_and_user_and_every_line_has_the_request_id() {
    let up = named_upstream("app").await;
    let (down_a, down_b) = (closed_port().await, closed_port().await);
    let ca = TestCa::new();
    let (cert, key, _) = ca.issue("gateway", &["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let (port, tls_port) = (free_port(), free_port());
    let config = dir.path().join("gateway.yaml");
    let yaml = format!(
        r#"server:
  shutdown_grace: 5s
listeners:
  - name: http
    bind: "127.0.0.1:{port}"
  - name: https
    bind: "127.0.0.1:{tls_port}"
    tls:
      certificates:
        - cert: {cert:?}
          key: {key:?}
upstreams:
  app:
    servers: ["{up}"]
  down:
    servers: ["{down_a}", "{down_b}"]
    connect_timeout: 1s
    retries: 1
    passive: {{ consecutive_failures: 1, eject_for: 30s }}
jwt_policies:
  django:
    algorithms: [HS256]
    key: {{ secret: "{JWT_SECRET}" }}
    claims: {{ token_type: access }}
routes:
  - name: api
    match: {{ path_prefix: /api/ }}
    jwt: django
    upstream: app
  - name: down
    match: {{ path_prefix: /down/ }}
    upstream: down
  - name: main
    match: {{ path_prefix: / }}
    upstream: app
logging:
  level: "info,gateway::auth=debug"
  format: json
  access_log: true
"#,
        up = up.addr,
        cert = cert.display().to_string(),
        key = key.display().to_string(),
    );
    std::fs::write(&config, yaml).unwrap();
    let mut gw = Running::start(&config);
    wait_ready(&mut gw, &format!("http://127.0.0.1:{port}/ready-probe")).await;

    let plain = client();
    let http = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let send = |req: reqwest::RequestBuilder, id: &str| {
        let req = req.header("X-Request-Id", id);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let tls_client = ca.client(&[("localhost", ([127, 0, 0, 1], tls_port).into())], false);
    let https = format!("https://localhost:{tls_port}/over-tls");
    assert_eq!(send(tls_client.get(&https), "log-tls").await, 200);
    assert_eq!(send(plain.get(http("/plain")), "log-plain").await, 200);
    let token = hs256(&access_claims(serde_json::json!({})));
    let with_token = plain.get(http("/api/me")).bearer_auth(&token);
    assert_eq!(send(with_token, "log-user").await, 200);
    let forged = plain.get(http("/api/me")).bearer_auth(format!("{token}x"));
    assert_eq!(send(forged, "log-forged").await, 401);
    assert_eq!(send(plain.get(http("/down/x")), "log-down").await, 502);
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(10)).await.success());

    let stderr = gw.stderr();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect();
    let access = |id: &str| {
        let found: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|v| v["target"] == "gateway::access" && v["request_id"] == id)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one access line for {id}; stderr:\n{stderr}"
        );
        found[0].clone()
    };
    let over_tls = access("log-tls");
    assert_eq!(over_tls["tls"], "1.3", "{over_tls}");
    assert_eq!(over_tls["http"], "2", "{over_tls}");
    assert_eq!(over_tls["listener"], "https", "{over_tls}");
    assert!(over_tls.get("user_id").is_none(), "{over_tls}");
    let plain_line = access("log-plain");
    assert!(plain_line.get("tls").is_none(), "{plain_line}");
    assert_eq!(plain_line["http"], "1.1", "{plain_line}");
    let user = access("log-user");
    assert_eq!(user["user_id"], "42", "{user}");
    assert_eq!(user["route"], "api", "{user}");
    let forged_line = access("log-forged");
    assert_eq!(forged_line["status"], 401);
    assert!(forged_line.get("user_id").is_none(), "{forged_line}");
    assert_eq!(access("log-down")["status"], 502);

    // The other lines of those requests, found by message: each names its request.
    let event = |message: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .collect()
    };
    for (message, id, count) in [
        ("jwt rejected", "log-forged", 1),
        ("server ejected", "log-down", 2),
        ("retrying on another server", "log-down", 1),
        ("upstream error", "log-down", 1),
    ] {
        let found = event(message);
        assert_eq!(found.len(), count, "{message}; stderr:\n{stderr}");
        for line in found {
            assert_eq!(line["request_id"], id, "{line}");
        }
    }
}
