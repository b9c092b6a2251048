//! JWT keys over time and from the command line: JWKS rotation over a real local HTTP server
//! with a running gateway, reloads (refreshers of the replaced state stop; a policy that
//! cannot be built keeps the running state), an identity provider that is down (a reload keeps
//! the running keys, a start answers 503 until the keys come), `gateway token` and
//! `gateway check`.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

/// A gateway with one JWT route `/api/` under `policy` (YAML lines, indented 4).
fn yaml(upstream: std::net::SocketAddr, policy: &str) -> String {
    yaml_on("127.0.0.1:0", &format!("\"{upstream}\""), policy)
}

/// [`yaml`] with the listener on `bind` and `servers` (a YAML list's items) in upstream `app`.
fn yaml_on(bind: &str, servers: &str, policy: &str) -> String {
    format!(
        r#"
server:
  shutdown_grace: 5s
listeners:
  - name: http
    bind: "{bind}"
upstreams:
  app:
    servers: [{servers}]
    connect_timeout: 1s
    response_timeout: 5s
jwt_policies:
  main:
{policy}
routes:
  - {{ match: {{ path_prefix: /api/ }}, upstream: app, jwt: main }}
  - {{ match: {{ path_prefix: / }}, upstream: app }}
logging:
  access_log: false
"#
    )
}

/// Waits (up to 5 s) until `server` has been fetched at least `n` times.
async fn wait_hits(server: &JwksServer, n: usize, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.hits() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {} fetches",
            server.hits()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An RS256 `jwks_url` policy (YAML lines, indented 4), refreshed every `refresh`.
fn url_policy(url: &str, refresh: &str) -> String {
    format!(
        "    algorithms: [RS256]\n    key: {{ jwks_url: \"{url}\" }}\n    jwks_refresh: {refresh}"
    )
}

async fn status(client: &reqwest::Client, url: &str, token: &str) -> u16 {
    let res = client.get(url).bearer_auth(token).send().await.unwrap();
    res.status().as_u16()
}

#[tokio::test]
async fn jwks_url_rotation_needs_no_restart() {
    let (old, new) = (TestRsaKey::generate(), TestRsaKey::generate());
    let jwks_server = JwksServer::start(jwks(&[old.jwk_with_kid("old")])).await;
    let up = TestUpstream::echo().await;
    let policy = format!(
        "    algorithms: [RS256]\n    key: {{ jwks_url: \"{}\" }}\n    jwks_refresh: 1h\n    forward_claims: {{ user_id: X-User-Id }}",
        jwks_server.url
    );
    let gw = TestGateway::start(&yaml(up.addr, &policy)).await;
    assert_eq!(jwks_server.hits(), 1, "fetched once at start");
    let client = reqwest::Client::new();
    let url = gw.url("http", "/api/x");
    let claims = access_claims(json!({}));

    assert_eq!(
        status(&client, &url, &old.sign(Some("old"), &claims)).await,
        200
    );
    // The issuer rotates: only the new key is published from now on.
    jwks_server.set(jwks(&[new.jwk_with_kid("new")]));
    assert_eq!(
        status(&client, &url, &new.sign(Some("new"), &claims)).await,
        200
    );
    assert_eq!(
        jwks_server.hits(),
        2,
        "one early refetch for the unknown kid"
    );
    assert_eq!(up.last().headers["x-user-id"], "42");
    // The old key is gone (its verified tokens were dropped from the cache with it).
    assert_eq!(
        status(&client, &url, &old.sign(Some("old"), &claims)).await,
        401
    );
    assert_eq!(up.hits(), 2);
    let state = gw.gateway.state();
    assert_eq!(state.jwt_policies[0].rejections().get("unknown_kid"), 1);
}

/// Tokens with unknown `kid`s (any client can send them) wake the refresher for early
/// refetches; they must not push the periodic refresh back. Before, each wake-up restarted
/// the `jwks_refresh` wait: a steady flood meant no periodic fetch at all (this session's JWT
/// audit: 0 fetches in 12 s at `jwks_refresh: 3s`), only the rate-limited early ones.
#[tokio::test]
async fn a_flood_of_unknown_kids_does_not_starve_the_periodic_refresh() {
    let key = TestRsaKey::generate();
    let idp = JwksServer::start(jwks(&[key.jwk_with_kid("k")])).await;
    let up = TestUpstream::echo().await;
    let gw = TestGateway::start(&yaml(up.addr, &url_policy(&idp.url, "500ms"))).await;
    let client = reqwest::Client::new();
    let url = gw.url("http", "/api/x");
    let claims = access_claims(json!({}));
    let start = std::time::Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_millis(2_300) {
        let token = key.sign(Some(&format!("unknown-{n}")), &claims);
        assert_eq!(status(&client, &url, &token).await, 401);
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One fetch at start, at most one early refetch (rate-limited), and the periodic ones
    // every 500 ms: four by now, allowing one for a slow machine.
    assert!(
        idp.hits() >= 4,
        "{} fetches for {n} unknown kids",
        idp.hits()
    );
}

#[tokio::test]
async fn reload_stops_old_refreshers_and_keeps_state_when_policies_fail() {
    let key = TestRsaKey::generate();
    let first = JwksServer::start(jwks(&[key.jwk_with_kid("k")])).await;
    let up = TestUpstream::echo().await;
    let policy = |url: &str| {
        format!(
            "    algorithms: [RS256]\n    key: {{ jwks_url: \"{url}\" }}\n    jwks_refresh: 100ms"
        )
    };
    let gw = TestGateway::start(&yaml(up.addr, &policy(&first.url))).await;
    wait_hits(&first, 3, "refreshing every 100ms").await;

    // A policy whose keys cannot be fetched: the reload fails and the running state stays.
    let dead = format!("http://{}/jwks.json", closed_port().await);
    let settings = gateway::config::load_str(
        &yaml(up.addr, &policy(&dead)),
        gw.dir.path(),
        gw.dir.path().join("gateway.yaml"),
    )
    .unwrap();
    let errors = gw.gateway.reload(settings).await.unwrap_err();
    assert!(errors[0].starts_with("jwt_policies.main"), "{errors:?}");
    let client = reqwest::Client::new();
    let token = key.sign(Some("k"), &access_claims(json!({})));
    let url = gw.url("http", "/api/x");
    assert_eq!(status(&client, &url, &token).await, 200);

    // A good reload: the new state's refresher takes over, the old one stops.
    let second = JwksServer::start(jwks(&[key.jwk_with_kid("k")])).await;
    let settings = gateway::config::load_str(
        &yaml(up.addr, &policy(&second.url)),
        gw.dir.path(),
        gw.dir.path().join("gateway.yaml"),
    )
    .unwrap();
    gw.gateway.reload(settings).await.unwrap();
    let stopped_at = first.hits();
    wait_hits(&second, 4, "the new refresher").await;
    assert!(
        first.hits() <= stopped_at + 1,
        "old refresher still running"
    );
    assert_eq!(status(&client, &url, &token).await, 200);
}

// ---- an identity-provider outage: reloads keep the running keys, a start waits for them ----

#[tokio::test]
async fn reload_while_the_jwks_is_down_keeps_the_running_keys() {
    let key = TestRsaKey::generate();
    let idp = JwksServer::start(jwks(&[key.jwk_with_kid("k")])).await;
    let (one, two) = (TestUpstream::echo().await, TestUpstream::echo().await);
    let policy = url_policy(&idp.url, "1h");
    let v1 = yaml_on("127.0.0.1:0", &format!("\"{}\"", one.addr), &policy);
    let gw = TestGateway::start(&v1).await;
    let file = gw.dir.path().join("gateway.yaml");
    let client = reqwest::Client::new();
    let url = gw.url("http", "/api/x");
    let token = key.sign(Some("k"), &access_claims(json!({})));
    assert_eq!(status(&client, &url, &token).await, 200);

    // The identity provider goes down; the operator adds an upstream server (SIGHUP and
    // `POST /reload` take this path).
    idp.set_down(true);
    let servers = format!("\"{}\", \"{}\"", one.addr, two.addr);
    std::fs::write(&file, yaml_on("127.0.0.1:0", &servers, &policy)).unwrap();
    let reloaded = gw.gateway.reload_from_file().await;
    assert_eq!(reloaded, Ok(()), "a JWKS outage must not block the reload");
    assert_eq!(idp.hits(), 2, "the reload tried to fetch");
    assert_eq!(gw.gateway.settings().upstreams[0].servers.len(), 2);
    // The new state verifies with the keys fetched before the outage, on both servers.
    for _ in 0..4 {
        assert_eq!(status(&client, &url, &token).await, 200);
    }
    assert!(two.hits() > 0, "the added server gets traffic");
    let state = gw.gateway.state();
    assert!(state.jwt_policies[0].keys_loaded());
    assert_eq!(state.jwt_policies[0].jwks_failures(), 1);
}

#[tokio::test]
async fn reload_with_a_changed_jwks_url_that_is_down_fails() {
    let key = TestRsaKey::generate();
    let idp = JwksServer::start(jwks(&[key.jwk_with_kid("k")])).await;
    let moved = JwksServer::start(jwks(&[key.jwk_with_kid("k")])).await;
    let up = TestUpstream::echo().await;
    // Two policies on the same identity provider; `other` is then pointed elsewhere.
    let policies = |other_url: &str| {
        format!(
            "{}\n  other:\n{}",
            url_policy(&idp.url, "1h"),
            url_policy(other_url, "1h")
        )
    };
    let gw = TestGateway::start(&yaml(up.addr, &policies(&idp.url))).await;
    let file = gw.dir.path().join("gateway.yaml");
    let client = reqwest::Client::new();
    let url = gw.url("http", "/api/x");
    let token = key.sign(Some("k"), &access_claims(json!({})));
    assert_eq!(status(&client, &url, &token).await, 200);

    // Both URLs down: only the changed one is an error (it may be a typo), named with its URL.
    idp.set_down(true);
    moved.set_down(true);
    std::fs::write(&file, yaml(up.addr, &policies(&moved.url))).unwrap();
    let errors = gw.gateway.reload_from_file().await.unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("jwt_policies.other.key.jwks_url") && errors[0].contains(&moved.url),
        "{errors:?}"
    );
    // The running config (and its keys) stays.
    assert_eq!(status(&client, &url, &token).await, 200);
    let state = gw.gateway.state();
    assert_eq!(state.jwt_policies[1].jwks_url(), Some(idp.url.as_str()));
}

#[tokio::test]
async fn gateway_run_starts_while_the_jwks_is_down_and_answers_503_until_it_is_up() {
    let key = TestRsaKey::generate();
    let idp = JwksServer::start(jwks(&[key.jwk_with_kid("k")])).await;
    idp.set_down(true);
    let up = TestUpstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    let addr = format!("127.0.0.1:{}", free_port());
    // An hour between refreshes: only the quick retry of a policy without keys fetches soon.
    let policy = url_policy(&idp.url, "1h");
    std::fs::write(&file, yaml_on(&addr, &format!("\"{}\"", up.addr), &policy)).unwrap();
    let mut gw = Running::start(&file);

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://{addr}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Routes without JWT serve.
    loop {
        if let Ok(res) = client.get(format!("{base}/open")).send().await {
            assert_eq!(res.status(), 200);
            break;
        }
        assert!(gw.still_running(), "gateway exited:\n{}", gw.stderr());
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.stderr().contains("jwt_policies.main"), "{}", gw.stderr());

    // A valid token: no key to check it against yet, so 503 (not 401), upstream untouched.
    let token = key.sign(Some("k"), &access_claims(json!({})));
    let before = up.hits();
    let res = client
        .get(format!("{base}/api/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("www-authenticate").is_none());
    assert_eq!(
        res.text().await.unwrap(),
        r#"{"error":"jwks_unavailable","status":503}"#
    );
    // What needs no key is answered as usual.
    let res = client.get(format!("{base}/api/x")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(status(&client, &format!("{base}/api/x"), "nope").await, 401);
    assert_eq!(up.hits(), before, "the upstream was never contacted");
    // Retried within seconds, not after `jwks_refresh`.
    wait_hits(&idp, 2, "a quick retry").await;

    // The identity provider comes back: tokens pass within a bounded wait.
    idp.set_down(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match status(&client, &format!("{base}/api/x"), &token).await {
            200 => break,
            503 => {}
            other => panic!("status {other}"),
        }
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up.hits(), before + 1);
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(10)).await.success());
}

// ---- the binary: `gateway token` and `gateway check` ----

async fn gateway_cmd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).env_remove("GW_TEST_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A config with an HS256 `django` policy (secret in a file) and an RS256 `rs` policy.
fn cli_yaml(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"
listeners:
  - name: http
    bind: "127.0.0.1:0"
upstreams:
  app:
    servers: ["{upstream}"]
jwt_policies:
  django:
    algorithms: [HS256]
    key: {{ secret_file: secret.txt }}
    claims: {{ token_type: access }}
    forward_claims: {{ user_id: X-User-Id, is_staff: X-Staff }}
  rs:
    algorithms: [RS256]
    key: {{ public_key_file: rs.pub.pem }}
    forward_claims: {{ sub: X-Subject }}
routes:
  - {{ match: {{ path_prefix: /api/ }}, upstream: app, jwt: django }}
  - {{ match: {{ path_prefix: /rs/ }}, upstream: app, jwt: rs }}
logging:
  access_log: false
"#
    )
}

fn write_cli_files(dir: &Path, key: &TestRsaKey) {
    std::fs::write(dir.join("secret.txt"), JWT_SECRET).unwrap();
    std::fs::write(dir.join("rs.pub.pem"), &key.public_pem).unwrap();
    std::fs::write(dir.join("rs.key.pem"), &key.private_pem).unwrap();
}

#[tokio::test]
async fn gateway_token_mints_tokens_a_running_gateway_accepts() {
    let key = TestRsaKey::generate();
    let up = TestUpstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    write_cli_files(dir.path(), &key);
    let yaml = cli_yaml(up.addr);
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let file = file.to_str().unwrap();

    let out = gateway_cmd(
        &[
            "token",
            "-c",
            file,
            "--policy",
            "django",
            "--claim",
            "user_id=42",
        ]
        .into_iter()
        .chain(["--claim", "is_staff=true", "--ttl", "5m"])
        .collect::<Vec<_>>(),
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hs_token = text(&out.stdout);
    assert_eq!(hs_token.lines().count(), 1, "the token alone: {hs_token:?}");
    let hs_token = hs_token.trim().to_owned();

    let rs_args = ["token", "-c", file, "--policy", "rs", "--claim", "sub=svc"];
    let out = gateway_cmd(&[&rs_args[..], &["--key", "rs.key.pem"]].concat(), &[]).await;
    // --key is relative to the current folder, not the config's: give the full path.
    assert!(!out.status.success());
    let key_path = dir.path().join("rs.key.pem");
    let rs_args = [&rs_args[..], &["--key", key_path.to_str().unwrap()]].concat();
    let out = gateway_cmd(&rs_args, &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rs_token = text(&out.stdout).trim().to_owned();

    let gateway = TestGateway::start_in(&yaml, dir.path()).await;
    let gw = TestGateway { gateway, dir };
    let client = reqwest::Client::new();
    assert_eq!(
        status(&client, &gw.url("http", "/api/x"), &hs_token).await,
        200
    );
    let seen = up.last();
    assert_eq!(seen.headers["x-user-id"], "42");
    assert_eq!(seen.headers["x-staff"], "true");
    assert_eq!(
        status(&client, &gw.url("http", "/rs/x"), &rs_token).await,
        200
    );
    assert_eq!(up.last().headers["x-subject"], "svc");
    // A token minted for one policy is not accepted by the other.
    assert_eq!(
        status(&client, &gw.url("http", "/rs/x"), &hs_token).await,
        401
    );
}

#[tokio::test]
async fn gateway_token_errors_go_to_stderr_with_exit_1() {
    let key = TestRsaKey::generate();
    let dir = tempfile::tempdir().unwrap();
    write_cli_files(dir.path(), &key);
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, cli_yaml(closed_port().await)).unwrap();
    let file = file.to_str().unwrap();
    for (args, expected) in [
        (
            vec!["--policy", "nope"],
            "unknown policy (known: django, rs)",
        ),
        (vec!["--policy", "rs"], "private key"),
        (vec!["--policy", "django", "--ttl", "soon"], "--ttl"),
        (vec!["--policy", "django", "--ttl", "0s"], "at least 1s"),
        (vec!["--policy", "django", "--ttl", "400d"], "365d"),
        (
            vec!["--policy", "django", "--claim", "exp=abc"],
            "exp must be a whole number",
        ),
        (
            vec!["--policy", "django", "--claim", "exp=1e400"],
            "exp must be a whole number",
        ),
        (
            vec!["--policy", "django", "--claim", "user_id"],
            "NAME=VALUE",
        ),
    ] {
        let out = gateway_cmd(&[&["token", "-c", file][..], &args].concat(), &[]).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            text(&out.stderr).contains(expected),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test]
async fn gateway_check_loads_jwt_keys() {
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("http://{}/jwks.json", closed_port().await);
    let file = dir.path().join("gateway.yaml");
    let policies = format!(
        "    algorithms: [HS256]\n    key: {{ secret_env: GW_TEST_SECRET }}\n  remote:\n    algorithms: [RS256]\n    key: {{ jwks_url: \"{dead}\" }}"
    );
    std::fs::write(&file, yaml(closed_port().await, &policies)).unwrap();
    let file = file.to_str().unwrap();

    let out = gateway_cmd(&["check", "-c", file], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("jwt_policies.main.key"), "{stderr}");
    assert!(stderr.contains("GW_TEST_SECRET"), "{stderr}");
    assert!(stderr.contains("jwt_policies.remote.key"), "{stderr}");
    // `--no-jwks-fetch` (the systemd unit's check before a start or reload, which the
    // gateway survives with the JWKS down) leaves the URL alone, but not the other keys.
    let out = gateway_cmd(&["check", "--no-jwks-fetch", "-c", file], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("jwt_policies.main.key"), "{stderr}");
    assert!(!stderr.contains("jwt_policies.remote"), "{stderr}");
    let args = ["check", "--no-jwks-fetch", "-c", file];
    let out = gateway_cmd(&args, &[("GW_TEST_SECRET", "s3cret")]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // With the secret set and a JWKS that answers, the same file is fine.
    let key = TestRsaKey::generate();
    let server = JwksServer::start(jwks(&[key.jwk_with_kid("k")])).await;
    let contents = std::fs::read_to_string(file)
        .unwrap()
        .replace(&dead, &server.url);
    std::fs::write(file, contents).unwrap();
    let out = gateway_cmd(&["check", "-c", file], &[("GW_TEST_SECRET", "s3cret")]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().last(), Some("ok"));
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn gateway_run_refuses_to_start_without_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    let policy = "    algorithms: [HS256]\n    key: { secret_env: GW_TEST_SECRET }";
    std::fs::write(&file, yaml(closed_port().await, policy)).unwrap();
    let args = ["run", "-c", file.to_str().unwrap()];
    let run = gateway_cmd(&args, &[]);
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("gateway run should exit at once");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("jwt_policies.main.key"), "{stderr}");
}
