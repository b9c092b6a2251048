//! The admin listener over real sockets: `/metrics` scraped after real traffic and parsed by
//! a Prometheus text parser (every SPEC.md series, with its labels and plausible values),
//! `/healthz`, `/ready` (503 while draining), `/upstreams`, `POST /reload`, 404/405.

mod admin_support;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use admin_support::*;
use common::*;
use http::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Routes: `api` (JWT), `routes[1]` (`/broken/`, an upstream that is down), `routes[2]`
/// (everything else); an HTTPS listener for the handshake counters.
fn yaml(up: SocketAddr, down: SocketAddr, ca: &TestCa) -> String {
    let (cert, key, _) = ca.issue("localhost", &["localhost"]);
    format!(
        r#"
server: {{ shutdown_grace: 5s }}
listeners:
  - name: http
    bind: "127.0.0.1:0"
  - name: https
    bind: "127.0.0.1:0"
    tls:
      certificates: [{{ cert: "{cert}", key: "{key}" }}]
upstreams:
  app:
    servers: ["{up}"]
  down:
    servers: ["{down}"]
    connect_timeout: 1s
    retries: 0
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
  - match: {{ path_prefix: /broken/ }}
    upstream: down
  - match: {{ path_prefix: / }}
    upstream: app
admin:
  bind: "127.0.0.1:0"
logging: {{ access_log: false }}
"#,
        cert = cert.display(),
        key = key.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_every_spec_series_after_traffic() {
    let up = TestUpstream::echo().await;
    let down = closed_port().await;
    let ca = TestCa::new();
    let gw = AdminGateway::start(&yaml(up.addr, down, &ca)).await;

    // Traffic: 3 GET + 1 POST on routes[2], JWT missing/expired/valid on `api`, a bad path
    // (no route), a dead upstream.
    for _ in 0..3 {
        assert_eq!(gw.get("/hello").await, 200);
    }
    let post = gw.client.post(gw.url("http", "/form")).body("x=1");
    assert_eq!(post.send().await.unwrap().status(), 200);
    assert_eq!(gw.get("/api/items").await, 401);
    let expired = hs256(&access_claims(
        serde_json::json!({"exp": unix_now() - 3600}),
    ));
    let valid = hs256(&access_claims(serde_json::json!({})));
    for (token, status) in [(&expired, 401), (&valid, 200)] {
        let req = gw
            .client
            .get(gw.url("http", "/api/items"))
            .bearer_auth(token);
        assert_eq!(req.send().await.unwrap().status(), status);
    }
    assert_eq!(gw.get("/a%2Fb").await, 400);
    assert_eq!(gw.get("/broken/x").await, 502);
    let https = gw.gateway.local_addr("https").unwrap();
    let tls_client = ca.client(&[("localhost", https)], true);
    let url = format!("https://localhost:{}/hello", https.port());
    assert_eq!(tls_client.get(url).send().await.unwrap().status(), 200);

    // Counted when each response body is done: wait for all 10.
    eventually("every request counted", Duration::from_secs(5), || async {
        gw.scrape().await.sum("gateway_requests_total") == 10.0
    })
    .await;
    let m = gw.scrape().await;
    let requests = |route, method, status| {
        m.get(
            "gateway_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(requests("routes[2]", "GET", "200"), 4.0); // 3 plain + 1 over TLS
    assert_eq!(requests("routes[2]", "POST", "200"), 1.0);
    assert_eq!(requests("api", "GET", "401"), 2.0);
    assert_eq!(requests("api", "GET", "200"), 1.0);
    assert_eq!(requests("none", "GET", "400"), 1.0);
    assert_eq!(requests("routes[1]", "GET", "502"), 1.0);

    let duration = "gateway_request_duration_seconds";
    assert_eq!(m.histogram_count(duration, &[("route", "routes[2]")]), 5.0);
    assert_eq!(m.histogram_count(duration, &[("route", "api")]), 3.0);
    let upstream_duration = "gateway_upstream_request_duration_seconds";
    assert_eq!(
        m.histogram_count(upstream_duration, &[("upstream", "app")]),
        6.0
    );
    assert_eq!(
        m.histogram_count(upstream_duration, &[("upstream", "down")]),
        1.0
    );

    let rejections = |reason| {
        m.get(
            "gateway_jwt_rejections_total",
            &[("policy", "django"), ("reason", reason)],
        )
    };
    assert_eq!(rejections("missing"), 1.0);
    assert_eq!(rejections("expired"), 1.0);
    assert_eq!(
        rejections("bad_signature"),
        0.0,
        "every reason is pre-registered"
    );

    let app_server = up.addr.to_string();
    let server = [("upstream", "app"), ("server", app_server.as_str())];
    assert_eq!(m.get("gateway_upstream_server_healthy", &server), 1.0);
    assert_eq!(
        m.get("gateway_upstream_server_requests_total", &server),
        6.0
    );
    let down_server = down.to_string();
    let dead = [("upstream", "down"), ("server", down_server.as_str())];
    assert_eq!(m.get("gateway_upstream_server_failures_total", &dead), 1.0);
    assert_eq!(m.get("gateway_retries_total", &[("upstream", "app")]), 0.0);
    assert_eq!(
        m.get("gateway_rate_limited_total", &[("route", "api")]),
        0.0
    );
    for result in ["success", "failure"] {
        assert_eq!(
            m.get("gateway_config_reloads_total", &[("result", result)]),
            0.0
        );
    }
    let handshakes = [("listener", "https"), ("version", "1.3")];
    assert_eq!(m.get("gateway_tls_handshakes_total", &handshakes), 1.0);
    assert!(m.declares("gateway_tls_handshake_failures_total"));
    assert!(
        m.get(
            "gateway_response_body_bytes_total",
            &[("route", "routes[2]")]
        ) > 0.0
    );
    assert!(m.get("gateway_active_connections", &[("listener", "http")]) >= 0.0);
    assert!(m.get("process_start_time_seconds", &[]) > 1.0e9);
    assert_eq!(m.get("gateway_build_info", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_connections_follow_open_sockets_and_tls_failures_count() {
    let up = TestUpstream::echo().await;
    let ca = TestCa::new();
    let gw = AdminGateway::start(&yaml(up.addr, closed_port().await, &ca)).await;
    let active = |m: &Metrics| m.get("gateway_active_connections", &[("listener", "http")]);
    assert_eq!(active(&gw.scrape().await), 0.0);

    let mut conn = tokio::net::TcpStream::connect(gw.gateway.local_addr("http").unwrap())
        .await
        .unwrap();
    conn.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert_eq!(
        active(&gw.scrape().await),
        1.0,
        "the keep-alive connection is open"
    );
    drop(conn);
    eventually("the gauge to drop", Duration::from_secs(5), || async {
        active(&gw.scrape().await) == 0.0
    })
    .await;

    // Not TLS at all: a failed handshake.
    let https = gw.gateway.local_addr("https").unwrap();
    let raw = raw_exchange(https, "GET / HTTP/1.1\r\n\r\n", Duration::from_secs(2)).await;
    assert!(!raw.starts_with("HTTP/1.1 200"));
    let failures = [("listener", "https"), ("reason", "error")];
    eventually("the failed handshake", Duration::from_secs(5), || async {
        gw.scrape()
            .await
            .value("gateway_tls_handshake_failures_total", &failures)
            == Some(1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_succeeds_or_keeps_the_old_config_and_counts_both() {
    let up = TestUpstream::echo().await;
    let ca = TestCa::new();
    let gw = AdminGateway::start(&yaml(up.addr, closed_port().await, &ca)).await;
    let reload = || async {
        let response = gw
            .client
            .post(gw.admin_url("/reload"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<serde_json::Value>().await.unwrap())
    };

    // A good file: the catch-all route gets a name, the upstream another server.
    let other = TestUpstream::echo().await;
    let good = yaml(other.addr, closed_port().await, &ca).replace(
        "  - match: { path_prefix: / }",
        "  - name: site\n    match: { path_prefix: / }",
    );
    std::fs::write(gw.config_path(), good).unwrap();
    let (status, body) = reload().await;
    assert_eq!(
        (status, body),
        (200, serde_json::json!({"result": "success"}))
    );
    assert_eq!(gw.get("/hello").await, 200);
    assert_eq!(other.hits(), 1, "the new upstream serves");

    // A broken file: 422 with every error; the running config keeps serving.
    std::fs::write(
        gw.config_path(),
        "routes:\n  - match: { path_prefix: / }\n    upstream: nope\nbogus: 1\n",
    )
    .unwrap();
    let (status, body) = reload().await;
    assert_eq!(status, 422);
    assert_eq!(body["result"], "failure");
    let errors = body["errors"].as_array().unwrap();
    assert!(errors.len() >= 2, "{body}");
    assert!(
        errors.iter().any(|e| e.as_str().unwrap().contains("bogus")),
        "{body}"
    );
    assert_eq!(gw.get("/hello").await, 200);
    assert_eq!(other.hits(), 2);

    // Counted when each response body is done: wait for the second.
    let get = [("route", "site"), ("method", "GET"), ("status", "200")];
    eventually("both GETs counted", Duration::from_secs(5), || async {
        gw.scrape().await.value("gateway_requests_total", &get) == Some(2.0)
    })
    .await;
    let m = gw.scrape().await;
    let reloads = |result| m.get("gateway_config_reloads_total", &[("result", result)]);
    assert_eq!((reloads("success"), reloads("failure")), (1.0, 1.0));
    let old = up.addr.to_string();
    let new = other.addr.to_string();
    let healthy = "gateway_upstream_server_healthy";
    assert_eq!(
        m.value(healthy, &[("server", old.as_str())]),
        None,
        "pruned"
    );
    assert_eq!(m.get(healthy, &[("server", new.as_str())]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_upstreams_and_unknown_paths() {
    let up = TestUpstream::echo().await;
    let ca = TestCa::new();
    let gw = AdminGateway::start(&yaml(up.addr, closed_port().await, &ca)).await;
    for _ in 0..3 {
        assert_eq!(gw.get("/x").await, 200);
    }
    let get = |path: &'static str| {
        let url = gw.admin_url(path);
        let client = gw.client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    assert_eq!(
        get("/healthz").await,
        (200, serde_json::json!({"status": "ok"}))
    );
    assert_eq!(get("/ready").await.0, 200);

    let (status, body) = get("/upstreams").await;
    assert_eq!(status, 200);
    let servers = body["upstreams"]["app"]["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1);
    let s = &servers[0];
    assert_eq!(s["address"], up.addr.to_string());
    assert_eq!(s["healthy"], true);
    assert_eq!(s["ejected"], false);
    assert_eq!(s["in_flight"], 0);
    assert_eq!(s["requests"], 3);
    assert_eq!(s["failures"], 0);
    assert!(body["upstreams"]["down"]["servers"].is_array());

    assert_eq!(get("/nope").await.0, 404);
    let post = gw
        .client
        .post(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    let reload = gw.client.get(gw.admin_url("/reload")).send().await.unwrap();
    assert_eq!(reload.status(), 405);
    assert_eq!(reload.headers()["allow"], "POST");

    let open = gw
        .client
        .get(gw.admin_url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    let content_type = open.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"));
    let text = open.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"));
    assert!(text.contains("# TYPE gateway_requests counter\n"));
}

/// Requests a browser sends for a web page are refused: a page on any site could otherwise
/// `POST /reload` by a plain form (this session's audit: 200 with `Origin: http://evil.example`,
/// every rate-limit bucket reset), or read `/upstreams` after a DNS rebinding. The operator
/// typing the address (`Sec-Fetch-Site: none`), curl and Prometheus are served.
#[tokio::test]
async fn requests_from_web_pages_are_refused() {
    let up = TestUpstream::echo().await;
    let ca = TestCa::new();
    let gw = AdminGateway::start(&yaml(up.addr, closed_port().await, &ca)).await;
    let forged = gw
        .client
        .post(gw.admin_url("/reload"))
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(
        forged.text().await.unwrap(),
        r#"{"error":"forbidden","status":403}"#
    );
    let rebound = gw
        .client
        .get(gw.admin_url("/upstreams"))
        .header("host", "evil.example")
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    let typed = gw
        .client
        .get(gw.admin_url("/metrics"))
        .header("sec-fetch-site", "none")
        .send()
        .await
        .unwrap();
    assert_eq!(typed.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_while_draining_and_admin_stops_after() {
    let slow = TestUpstream::start(|_seen: Seen| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Response::new(full("slow done"))
    })
    .await;
    let ca = TestCa::new();
    let gw = AdminGateway::start(&yaml(slow.addr, closed_port().await, &ca)).await;
    let url = gw.url("http", "/slow");
    let client = gw.client.clone();
    let in_flight = tokio::spawn(async move {
        let r = client.get(url).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    eventually(
        "the slow request upstream",
        Duration::from_secs(5),
        || async { slow.hits() == 1 },
    )
    .await;

    gw.gateway.shutdown();
    let ready = gw.client.get(gw.admin_url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "draining");
    let m = gw.scrape().await;
    assert_eq!(
        m.get("gateway_active_connections", &[("listener", "http")]),
        1.0
    );

    assert!(gw.gateway.drained().await);
    assert_eq!(in_flight.await.unwrap(), (200, "slow done".to_owned()));
    let after = tokio::net::TcpStream::connect(gw.admin()).await;
    assert!(after.is_err(), "the admin listener closes once drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_requests_are_counted_by_route() {
    let up = TestUpstream::echo().await;
    let yaml = simple_yaml(up.addr, "admin: { bind: \"127.0.0.1:0\" }", "").replace(
        "  - match: { path_prefix: / }",
        "  - name: limited\n    match: { path_prefix: / }\n    rate_limit: { rate: 1/m, burst: 1, key: client_ip }",
    );
    let gw = AdminGateway::start(&yaml).await;
    assert_eq!(gw.get("/a").await, 200);
    assert_eq!(gw.get("/a").await, 429);
    assert_eq!(gw.get("/a").await, 429);
    let limited = [("route", "limited"), ("status", "429")];
    // requests_total is counted when each response body is done, which can come just after
    // the client has read it (a CI run once scraped 1 of 2): wait for both.
    eventually("both 429s counted", Duration::from_secs(5), || async {
        gw.scrape().await.value("gateway_requests_total", &limited) == Some(2.0)
    })
    .await;
    let m = gw.scrape().await;
    assert_eq!(
        m.get("gateway_rate_limited_total", &[("route", "limited")]),
        2.0
    );
}

/// One client holding silent connections cannot starve the admin listener (a kubelet's
/// `/healthz` probe from another address still gets through), and request heads there
/// are bounded (431).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_starve_the_admin_listener() {
    let up = TestUpstream::echo().await;
    let ca = TestCa::new();
    let gw = AdminGateway::start(&yaml(up.addr, closed_port().await, &ca)).await;
    let admin = gw.gateway.admin_addr().unwrap();
    // 80 silent connections from 127.0.0.1: more than the admin listener serves at once.
    let mut silent = Vec::new();
    for _ in 0..80 {
        silent.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut probe = socket.connect(admin).await.unwrap();
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(2), probe.read_to_string(&mut answer))
        .await
        .expect("the probe waited behind another client's silent connections")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    drop(silent);
    // Refused, not served: a 431, or (hyper closes as soon as it has answered, without
    // reading the rest) a reset that reaches the client before the answer does.
    let huge = "a".repeat(100 * 1024);
    let res = gw
        .client
        .get(gw.admin_url("/healthz"))
        .header("x-big", huge)
        .send()
        .await;
    if let Ok(res) = res {
        assert_eq!(res.status(), 431);
    }
}
