//! `jwks_url` over a real local HTTP server: first fetch at build, rotation through an early
//! refetch (rate-limited), periodic refresh, failed fetches keeping the last good keys, and
//! an unreachable JWKS at start (no keys yet, quick retries) and on reload (running keys kept).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::reasons::*;
use super::test_support::*;
use super::{FirstFetch, JwtPolicy};
use crate::config::jwt_policy::{JwtKeySource, JwtPolicySettings};

fn url_settings(url: &str, refresh: Duration) -> JwtPolicySettings {
    let mut s = settings(&["RS256", "ES256"], JwtKeySource::JwksUrl(url.to_string()));
    s.jwks_refresh = refresh;
    s
}

/// A fresh (never cached) access token.
fn fresh(key: &TestKey, kid: &str) -> http::HeaderMap {
    let claims = json!({"token_type": "access", "exp": now() + 300, "jti": format!("{:x}", fastrand::u64(..))});
    bearer(&key.sign(Some(kid), &claims))
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn rotation_without_rebuild() {
    let (a, b) = (rsa(), new_rsa());
    let server = JwksServer::start(jwks(&[a.jwk_with_kid("a")])).await;
    let policy: Arc<JwtPolicy> =
        JwtPolicy::build(&url_settings(&server.url, Duration::from_secs(300)))
            .await
            .unwrap();
    assert_eq!(server.hits(), 1, "first fetch at build");
    let token_a = fresh(a, "a");
    assert!(policy.verify(&token_a).is_ok());

    // The IdP rotates to key b; a token signed by b arrives.
    server.set(200, jwks(&[b.jwk_with_kid("b")]));
    let token_b = fresh(&b, "b");
    assert_eq!(
        policy.verify(&token_b).unwrap_err().reason,
        UNKNOWN_KID,
        "sync path never waits"
    );
    assert!(
        policy.verify_async(&token_b).await.is_ok(),
        "early refetch picked up key b"
    );
    assert_eq!(server.hits(), 2);
    assert!(policy.verify(&token_b).is_ok());
    // Key a is gone: its cached verification went with it.
    assert_eq!(policy.verify(&token_a).unwrap_err().reason, UNKNOWN_KID);

    // A second unknown kid within the rate-limit window does not refetch.
    let c = ec256();
    server.set(200, jwks(&[b.jwk_with_kid("b"), c.jwk_with_kid("c")]));
    for _ in 0..5 {
        assert_eq!(
            policy
                .verify_async(&fresh(c, "c"))
                .await
                .unwrap_err()
                .reason,
            UNKNOWN_KID
        );
    }
    assert_eq!(server.hits(), 2, "early refetches are rate-limited");
    assert_eq!(policy.jwks_failures(), 0);
}

#[tokio::test]
async fn periodic_refresh_and_failed_fetches_keep_old_keys() {
    let (a, c) = (rsa(), ec256());
    let server = JwksServer::start(jwks(&[a.jwk_with_kid("a")])).await;
    let policy = JwtPolicy::build(&url_settings(&server.url, Duration::from_millis(50)))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    policy.spawn_refresh(shutdown.clone());

    server.set(200, jwks(&[a.jwk_with_kid("a"), c.jwk_with_kid("c")]));
    wait_for("periodic refresh", || policy.verify(&fresh(c, "c")).is_ok()).await;

    for (status, body) in [
        (500, "oops".to_string()),
        (200, "{not json".to_string()),
        (200, json!({"keys": []}).to_string()),
        (
            200,
            jwks(&[json!({"kty": "oct", "k": "c2VjcmV0", "kid": "x"})]),
        ),
    ] {
        let before = policy.jwks_failures();
        server.set(status, body);
        wait_for("a failed fetch", || policy.jwks_failures() > before).await;
        assert!(
            policy.verify(&fresh(a, "a")).is_ok(),
            "old keys kept after status {status}"
        );
        assert!(policy.verify(&fresh(c, "c")).is_ok());
    }

    // Recovery: the next good fetch replaces the keys.
    server.set(200, jwks(&[c.jwk_with_kid("c")]));
    wait_for("recovery", || policy.verify(&fresh(a, "a")).is_err()).await;
    assert!(policy.verify(&fresh(c, "c")).is_ok());

    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hits = server.hits();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server.hits(),
        hits,
        "the refresher stopped with the shutdown token"
    );
}

#[tokio::test]
async fn first_fetch_failure_names_the_url() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);
    let err = JwtPolicy::build(&url_settings(&url, Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(
        err.contains(&url) && err.contains("jwt_policies.test.key.jwks_url"),
        "{err}"
    );

    let server = JwksServer::start("{}".into()).await;
    server.set(404, String::new());
    let err = JwtPolicy::build(&url_settings(&server.url, Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(err.contains(&server.url) && err.contains("404"), "{err}");
}

#[tokio::test]
async fn unreachable_at_start_means_no_keys_yet_and_a_quick_retry() {
    let a = rsa();
    let server = JwksServer::start(jwks(&[a.jwk_with_kid("a")])).await;
    server.set(503, String::new());
    // An hour between refreshes: only the retry of a never-loaded set can fetch soon.
    let s = url_settings(&server.url, Duration::from_secs(3600));
    let policy = JwtPolicy::build_with(&s, FirstFetch::RetryLater)
        .await
        .unwrap();
    assert!(!policy.keys_loaded());
    assert_eq!(policy.jwks_failures(), 1);
    // A token that may well be valid: no key to tell, so not a 401 reason.
    assert_eq!(reason(&policy, &fresh(a, "a")), JWKS_UNAVAILABLE);
    assert!(policy.verify(&fresh(a, "a")).unwrap_err().is_unavailable());
    // What needs no key is still refused as usual.
    assert_eq!(reason(&policy, &http::HeaderMap::new()), MISSING);
    assert_eq!(reason(&policy, &bearer("not-a-token")), MALFORMED);
    assert_eq!(
        reason(&policy, &bearer(&hs256(&access_claims()))),
        WRONG_ALGORITHM
    );

    let shutdown = CancellationToken::new();
    policy.spawn_refresh(shutdown.clone());
    wait_for("a retry within seconds", || server.hits() >= 2).await;
    server.set(200, jwks(&[a.jwk_with_kid("a")]));
    // Retries at 1 s, 3 s, 7 s after the start: the keys arrive within a few seconds.
    wait_for("the keys", || policy.keys_loaded()).await;
    assert!(policy.verify(&fresh(a, "a")).is_ok());
    shutdown.cancel();
}

#[tokio::test]
async fn a_reload_keeps_the_running_keys_of_an_unchanged_url() {
    let a = rsa();
    let server = JwksServer::start(jwks(&[a.jwk_with_kid("a")])).await;
    let s = url_settings(&server.url, Duration::from_secs(300));
    let running = vec![JwtPolicy::build(&s).await.unwrap()];
    server.set(503, String::new());

    // Same URL (another name, other algorithms that the keys still serve): the running keys.
    let mut renamed = url_settings(&server.url, Duration::from_secs(60));
    renamed.name = "renamed".into();
    renamed.algorithms = vec!["RS256".into()];
    let policy = JwtPolicy::build_with(&renamed, FirstFetch::KeepRunning(&running))
        .await
        .unwrap();
    assert!(policy.keys_loaded());
    assert!(policy.verify(&fresh(a, "a")).is_ok());
    // Algorithms the running keys cannot verify: an error, as with a fetched set.
    let mut es_only = s.clone();
    es_only.algorithms = vec!["ES256".into()];
    let err = JwtPolicy::build_with(&es_only, FirstFetch::KeepRunning(&running))
        .await
        .unwrap_err();
    assert!(err.contains("jwt_policies.test.algorithms"), "{err}");

    // A URL no running policy uses: the fetch error, as before (a typo must be reported).
    let other = JwksServer::start(String::new()).await;
    other.set(503, String::new());
    let err = JwtPolicy::build_with(
        &url_settings(&other.url, Duration::from_secs(60)),
        FirstFetch::KeepRunning(&running),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("jwt_policies.test.key.jwks_url") && err.contains(&other.url),
        "{err}"
    );
    // `gateway check` (and `JwtPolicy::build`) still fail on any unreachable URL.
    assert!(JwtPolicy::build_with(&s, FirstFetch::Required)
        .await
        .is_err());
}

/// A JWK whose `key_ops` leave out `verify` (say `["encrypt"]`) is not a verification key,
/// like one marked `use: enc` (this session's JWT audit: only `use` was checked).
#[test]
fn keys_whose_key_ops_leave_out_verify_are_skipped() {
    let with_ops = |ops: serde_json::Value| {
        let mut jwk = rsa().jwk_with_kid("k");
        jwk["key_ops"] = ops;
        serde_json::to_vec(&json!({ "keys": [jwk] })).unwrap()
    };
    let refused = super::keys::parse_jwks(&with_ops(json!(["encrypt"])));
    assert_eq!(refused.err().as_deref(), Some("no usable signing key"));
    assert!(super::keys::parse_jwks(&with_ops(json!(["verify"]))).is_ok());
}
