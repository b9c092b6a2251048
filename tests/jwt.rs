//! JWT verification through a running gateway, over real sockets: the attack suite (every
//! case 401 with the right challenge, counted under the expected reason, and the upstream
//! never contacted) and what a valid token lets through (claim headers, token forwarding,
//! cookies). Key rotation, reloads and the CLI live in `jwt_keys.rs`.

#[path = "jwt/attacks.rs"]
mod attacks;
mod common;

use std::sync::OnceLock;

use attacks::attacks;
use common::*;
use serde_json::json;

fn rsa() -> &'static TestRsaKey {
    static KEY: OnceLock<TestRsaKey> = OnceLock::new();
    KEY.get_or_init(TestRsaKey::generate)
}

fn rsa_other() -> &'static TestRsaKey {
    static KEY: OnceLock<TestRsaKey> = OnceLock::new();
    KEY.get_or_init(TestRsaKey::generate)
}

/// One upstream, five policies, a route for each, and an open route.
async fn start() -> (TestGateway, TestUpstream) {
    let up = TestUpstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rs.pub.pem"), &rsa().public_pem).unwrap();
    let keys = jwks(&[rsa().jwk_with_kid("a"), rsa_other().jwk_with_kid("b")]);
    std::fs::write(dir.path().join("kids.json"), keys).unwrap();
    let yaml = format!(
        r#"
server:
  shutdown_grace: 5s
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
    token_sources: ["header:Authorization", "cookie:access_token"]
    forward_claims: {{ user_id: X-User-Id }}
  scoped:
    algorithms: [HS256]
    key: {{ secret: "{JWT_SECRET}" }}
    issuer: https://issuer.test
    audience: api
  strip:
    algorithms: [HS256]
    key: {{ secret: "{JWT_SECRET}" }}
    forward_claims: {{ user_id: X-User-Id }}
    forward_token: false
  rs:
    algorithms: [RS256]
    key: {{ public_key_file: rs.pub.pem }}
  kids:
    algorithms: [RS256]
    key: {{ jwks_file: kids.json }}
routes:
  - {{ match: {{ path_prefix: /api/ }}, upstream: app, jwt: django }}
  - {{ match: {{ path_prefix: /scoped/ }}, upstream: app, jwt: scoped }}
  - {{ match: {{ path_prefix: /strip/ }}, upstream: app, jwt: strip }}
  - {{ match: {{ path_prefix: /rs/ }}, upstream: app, jwt: rs }}
  - {{ match: {{ path_prefix: /kids/ }}, upstream: app, jwt: kids }}
  - {{ match: {{ path_prefix: /open/ }}, upstream: app }}
logging:
  access_log: false
"#,
        up = up.addr
    );
    let gateway = TestGateway::start_in(&yaml, dir.path()).await;
    (TestGateway { gateway, dir }, up)
}

#[tokio::test]
async fn attacks_get_401_and_never_reach_the_upstream() {
    let (gw, up) = start().await;
    let client = reqwest::Client::new();
    let state = gw.gateway.state();
    let policy = |name: &str| {
        state
            .jwt_policies
            .iter()
            .find(|p| p.name() == name)
            .unwrap()
            .clone()
    };
    for attack in attacks() {
        let counted_before = policy(attack.policy).rejections().get(attack.reason);
        let mut req = client.get(gw.url("http", &attack.path));
        for (name, value) in &attack.headers {
            req = req.header(*name, value);
        }
        let res = req.send().await.unwrap();
        let name = attack.name;
        assert_eq!(res.status(), 401, "{name}");
        let challenge = res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        if attack.reason == "missing" {
            assert_eq!(challenge, r#"Bearer realm="gateway""#, "{name}");
        } else {
            assert!(
                challenge.starts_with(r#"Bearer error="invalid_token", error_description=""#),
                "{name}: {challenge}"
            );
        }
        assert!(
            !challenge.contains("eyJ"),
            "{name}: echoes a token: {challenge}"
        );
        for (_, value) in &attack.headers {
            let token = value.trim_start_matches("Bearer ").trim();
            if token.len() > 8 {
                assert!(!challenge.contains(token), "{name}: echoes the token");
            }
        }
        assert_eq!(res.headers()["content-type"], "application/json", "{name}");
        assert_eq!(
            res.text().await.unwrap(),
            r#"{"error":"invalid_token","status":401}"#,
            "{name}"
        );
        assert_eq!(
            policy(attack.policy).rejections().get(attack.reason),
            counted_before + 1,
            "{name}: not refused as {}",
            attack.reason
        );
        assert_eq!(up.hits(), 0, "{name}: the upstream was contacted");
    }
    // The open route works, so the zero above is not a dead upstream.
    let res = client.get(gw.url("http", "/open/x")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn a_valid_access_token_is_forwarded_with_claim_headers() {
    let (gw, up) = start().await;
    let client = reqwest::Client::new();
    let token = hs256(&access_claims(json!({"user_id": 42})));
    let res = client
        .post(gw.url("http", "/api/items?page=2"))
        .header("authorization", format!("bearer {token}"))
        .header("X-User-Id", "1")
        .header("x-user-id", "2")
        .header("X_User_Id", "3")
        .header("Connection", "X-User-Id")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "POST /api/items?page=2");
    let seen = up.last();
    let ids: Vec<_> = seen.headers.get_all("x-user-id").iter().collect();
    assert_eq!(ids, ["42"]);
    assert!(seen.headers.get("x_user_id").is_none());
    assert_eq!(
        seen.headers["authorization"],
        format!("bearer {token}").as_str()
    );
    assert_eq!(seen.body, "payload");

    // simplejwt ≥ 5.5.1 sends user_id as a string: forwarded as its text.
    let token = hs256(&access_claims(json!({"user_id": "7"})));
    let res = client
        .get(gw.url("http", "/api/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.last().headers["x-user-id"], "7");
}

/// A client's own copy of a claim header never reaches the upstream, whichever route it
/// takes: not on an open route (the sixth audit: `X-User-Id: 1` reached Django on `/open/`
/// and on routes whose policy forwards other claims), nor on a JWT route whose policy sets
/// other headers or none.
#[tokio::test]
async fn client_claim_headers_are_removed_on_every_route() {
    let (gw, up) = start().await;
    let client = reqwest::Client::new();
    let rs_token = rsa().sign(None, &access_claims(json!({"user_id": 42})));
    for (path, token) in [("/open/x", None), ("/rs/x", Some(&rs_token))] {
        let mut req = client.get(gw.url("http", path)).header("X-User-Id", "1");
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let seen = up.last();
        assert!(seen.headers.get("x-user-id").is_none(), "{path}: {seen:?}");
    }
}

#[tokio::test]
async fn forward_token_false_strips_authorization() {
    let (gw, up) = start().await;
    let token = hs256(&access_claims(json!({})));
    let res = reqwest::Client::new()
        .get(gw.url("http", "/strip/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = up.last();
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(seen.headers["x-user-id"], "42");
}

#[tokio::test]
async fn the_token_cookie_is_a_source() {
    let (gw, up) = start().await;
    let token = hs256(&access_claims(json!({"user_id": 5})));
    let res = reqwest::Client::new()
        .get(gw.url("http", "/api/x"))
        .header("cookie", format!("theme=dark; access_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-user-id"], "5");
    assert!(seen.headers["cookie"]
        .to_str()
        .unwrap()
        .contains("theme=dark"));

    // Another credential beside the cookie's verified token (DRF could authenticate the
    // request by it as somebody else: this session's JWT audit) is not passed on.
    let other = hs256(&access_claims(json!({"user_id": 6})));
    for authorization in ["Basic dXNlcjpwdw==".to_string(), format!("JWT {other}")] {
        let res = reqwest::Client::new()
            .get(gw.url("http", "/api/x"))
            .header("cookie", format!("access_token={token}"))
            .header("authorization", &authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let seen = up.last();
        assert_eq!(seen.headers["x-user-id"], "5");
        assert!(
            seen.headers.get("authorization").is_none(),
            "{authorization}"
        );
    }
}

#[tokio::test]
async fn public_key_and_jwks_file_policies_accept_their_tokens() {
    let (gw, up) = start().await;
    let client = reqwest::Client::new();
    let claims = access_claims(json!({}));
    for (path, token) in [
        ("/rs/x", rsa().sign(None, &claims)),
        ("/kids/x", rsa().sign(Some("a"), &claims)),
        ("/kids/x", rsa_other().sign(Some("b"), &claims)),
    ] {
        let res = client
            .get(gw.url("http", path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    assert_eq!(up.hits(), 3);
}
