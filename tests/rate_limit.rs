//! Route `rate_limit:` over real sockets: a burst then 429 with `Retry-After` (the upstream
//! sees only what was allowed), refill over time, one bucket per key (client address behind a
//! trusted proxy, header, JWT claim), no escape by forging X-Forwarded-For, static routes.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// What a client saw: status, `Retry-After`, body.
struct Seen429 {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Seen429 {
    let mut req = client.get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    Seen429 {
        status,
        retry_after,
        body: res.text().await.unwrap(),
    }
}

/// Statuses of `n` requests in a row.
async fn statuses(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(client, url, headers).await.status);
    }
    out
}

/// A gateway on 127.0.0.1 in front of `up`; `trusted` is `server.trusted_proxies`.
async fn start(up: &TestUpstream, trusted: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("public")).unwrap();
    std::fs::write(dir.path().join("public/a.txt"), "static file").unwrap();
    let yaml = format!(
        r#"
server:
  shutdown_grace: 5s
  trusted_proxies: {trusted}
listeners:
  - name: http
    bind: "127.0.0.1:0"
upstreams:
  app:
    servers: ["{up}"]
    connect_timeout: 1s
    response_timeout: 5s
jwt_policies:
  django:
    algorithms: [HS256]
    key: {{ secret: "{JWT_SECRET}" }}
    claims: {{ token_type: access }}
    forward_claims: {{ user_id: X-User-Id }}
routes:
  - match: {{ path_prefix: /burst/ }}
    upstream: app
    rate_limit: {{ rate: 1/m, burst: 3 }}
  - match: {{ path_prefix: /refill/ }}
    upstream: app
    rate_limit: {{ rate: 10/s, burst: 1, key: client_ip }}
  - match: {{ path_prefix: /ip/ }}
    upstream: app
    rate_limit: {{ rate: 1/m, burst: 2, key: client_ip }}
  - match: {{ path_prefix: /hdr/ }}
    upstream: app
    rate_limit: {{ rate: 1/m, burst: 2, key: "header:X-Api-Key" }}
  - match: {{ path_prefix: /user/ }}
    upstream: app
    jwt: django
    rate_limit: {{ rate: 1/m, burst: 2, key: "claim:user_id" }}
  - match: {{ path_prefix: /static/ }}
    static: {{ root: ./public }}
    rate_limit: {{ rate: 1/h, burst: 1 }}
  - match: {{ path_prefix: / }}
    upstream: app
logging:
  access_log: false
"#,
        up = up.addr
    );
    let gateway = TestGateway::start_in(&yaml, dir.path()).await;
    TestGateway { gateway, dir }
}

#[tokio::test]
async fn burst_then_429_with_retry_after_and_refill() {
    let up = TestUpstream::echo().await;
    let gw = start(&up, "[]").await;
    let client = reqwest::Client::new();

    // A bucket of 3 refilled once a minute: 3 pass, the rest never reach the upstream.
    let url = gw.url("http", "/burst/x");
    assert_eq!(statuses(&client, &url, &[], 3).await, [200, 200, 200]);
    for _ in 0..4 {
        let seen = get(&client, &url, &[]).await;
        assert_eq!(seen.status, 429);
        assert_eq!(seen.body, r#"{"error":"rate_limited","status":429}"#);
        let secs: u64 = seen.retry_after.unwrap().parse().unwrap();
        assert!((55..=60).contains(&secs), "Retry-After {secs}");
    }
    assert_eq!(up.hits(), 3);
    // Other routes are not limited.
    assert_eq!(
        statuses(&client, &gw.url("http", "/other"), &[], 5).await,
        [200; 5]
    );

    // 10/s with a bucket of 1: empty at once, one more token after 100 ms.
    let url = gw.url("http", "/refill/x");
    let mut limited = None;
    for _ in 0..5 {
        let seen = get(&client, &url, &[]).await;
        if seen.status == 429 {
            limited = Some(seen);
            break;
        }
    }
    let limited = limited.expect("the bucket never ran dry");
    assert_eq!(limited.retry_after.as_deref(), Some("1"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(get(&client, &url, &[]).await.status, 200);
    assert_eq!(get(&client, &url, &[]).await.status, 429);
}

#[tokio::test]
async fn untrusted_peer_cannot_escape_its_bucket_with_x_forwarded_for() {
    let up = TestUpstream::echo().await;
    // 127.0.0.1 is not trusted: X-Forwarded-For is ignored for client_ip.
    let gw = start(&up, "[10.0.0.0/8]").await;
    let client = reqwest::Client::new();
    let url = gw.url("http", "/ip/x");
    let mut got = Vec::new();
    for i in 0..6 {
        let forged = format!("198.51.100.{i}");
        got.push(
            get(&client, &url, &[("x-forwarded-for", &forged)])
                .await
                .status,
        );
    }
    assert_eq!(got, [200, 200, 429, 429, 429, 429]);
    assert_eq!(up.hits(), 2);

    // Leaving out the key header falls back to the client address: still limited.
    let url = gw.url("http", "/hdr/x");
    assert_eq!(statuses(&client, &url, &[], 3).await, [200, 200, 429]);
}

#[tokio::test]
async fn each_key_has_its_own_bucket() {
    let up = TestUpstream::echo().await;
    let gw = start(&up, "[127.0.0.1/32]").await;
    let client = reqwest::Client::new();

    // Behind the trusted proxy (the test client), the right-most untrusted entry is the client.
    let url = gw.url("http", "/ip/x");
    let a = [("x-forwarded-for", "203.0.113.1")];
    let b = [("x-forwarded-for", "203.0.113.2")];
    assert_eq!(statuses(&client, &url, &a, 3).await, [200, 200, 429]);
    assert_eq!(statuses(&client, &url, &b, 3).await, [200, 200, 429]);
    // Client A cannot pass as someone else by writing to the left of what its proxy added,
    // nor by adding trusted hops.
    for chain in [
        "192.0.2.77, 203.0.113.1",
        "203.0.113.1, 127.0.0.1",
        "192.0.2.77",
    ] {
        let status = get(&client, &url, &[("x-forwarded-for", chain)])
            .await
            .status;
        let want = if chain == "192.0.2.77" { 200 } else { 429 };
        assert_eq!(status, want, "{chain}");
    }

    // header:X-Api-Key: one bucket per value.
    let url = gw.url("http", "/hdr/x");
    let k1 = [("x-api-key", "k1")];
    let k2 = [("x-api-key", "k2")];
    assert_eq!(statuses(&client, &url, &k1, 3).await, [200, 200, 429]);
    assert_eq!(statuses(&client, &url, &k2, 3).await, [200, 200, 429]);

    // claim:user_id: one bucket per verified user; tokens are checked first.
    let url = gw.url("http", "/user/x");
    let bearer = |user: serde_json::Value| {
        let token = hs256(&access_claims(json!({ "user_id": user })));
        format!("Bearer {token}")
    };
    let (u1, u2, u1_text) = (bearer(json!(1)), bearer(json!(2)), bearer(json!("1")));
    let hits = up.hits();
    assert_eq!(
        statuses(&client, &url, &[("authorization", &u1)], 2).await,
        [200, 200]
    );
    // simplejwt sends user_id as a number or as a string: the same user either way.
    assert_eq!(
        statuses(&client, &url, &[("authorization", &u1_text)], 1).await,
        [429]
    );
    assert_eq!(
        statuses(&client, &url, &[("authorization", &u2)], 3).await,
        [200, 200, 429]
    );
    // No token or a forged one: 401, not counted against anyone.
    let forged = format!("{}x", u2);
    assert_eq!(statuses(&client, &url, &[], 1).await, [401]);
    assert_eq!(
        statuses(&client, &url, &[("authorization", &forged)], 1).await,
        [401]
    );
    assert_eq!(up.hits(), hits + 4);
    let seen = get(&client, &url, &[("authorization", &u1)]).await;
    assert_eq!((seen.status, seen.retry_after.is_some()), (429, true));

    // Static routes are limited before the disk is touched.
    let url = gw.url("http", "/static/a.txt");
    let first = get(&client, &url, &[]).await;
    assert_eq!((first.status, first.body.as_str()), (200, "static file"));
    let second = get(&client, &url, &[]).await;
    assert_eq!(second.status, 429);
    let secs: u64 = second.retry_after.unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&secs), "Retry-After {secs}");
}
