//! The attack suite at the unit level: each case pins its exact rejection reason. Also the
//! issuer/audience rules and the cache's expiry.

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

use super::reasons::*;
use super::test_support::*;

#[tokio::test]
async fn hs256_attack_suite() {
    let policy = build(&hs_settings()).await;
    let now = now();
    let hs = |header: &str, payload: &str| {
        sign_raw(
            header,
            payload,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            Algorithm::HS256,
        )
    };
    let good = hs256(&access_claims());
    let h256 = r#"{"alg":"HS256","typ":"JWT"}"#;
    let none_payload = b64e(access_claims().to_string().as_bytes());
    let alg_none = |alg: &str| {
        format!(
            "{}.{none_payload}.",
            b64e(format!(r#"{{"alg":"{alg}"}}"#).as_bytes())
        )
    };
    let oversized = hs256(&with(json!({"pad": "x".repeat(9000)})));
    let cases: Vec<(&str, http::HeaderMap, &str)> = vec![
        ("valid", bearer(&good), "ok"),
        (
            "lowercase bearer",
            headers(&[("authorization", &format!("bearer {good}"))]),
            "ok",
        ),
        (
            "cookie source",
            headers(&[("cookie", &format!("a=b; access_token={good}"))]),
            "ok",
        ),
        ("missing", headers(&[]), MISSING),
        (
            "other scheme only",
            headers(&[("authorization", "Basic dTpw")]),
            MISSING,
        ),
        (
            "bearer without token",
            headers(&[("authorization", "Bearer")]),
            MALFORMED,
        ),
        (
            "bearer with blanks",
            headers(&[("authorization", "Bearer   ")]),
            MALFORMED,
        ),
        ("trailing junk", bearer(&format!("{good} junk")), MALFORMED),
        (
            "whitespace inside",
            bearer(&good.replacen('.', ". ", 1)),
            MALFORMED,
        ),
        (
            "several authorization headers",
            headers(&[
                ("authorization", &format!("Bearer {good}")),
                ("authorization", &format!("Bearer {good}")),
            ]),
            MALFORMED,
        ),
        (
            "two segments",
            bearer(good.rsplit_once('.').unwrap().0),
            MALFORMED,
        ),
        ("four segments", bearer(&format!("{good}.abcd")), MALFORMED),
        ("bad base64 length", bearer(&format!("a{good}")), MALFORMED),
        (
            "bad base64 character",
            bearer(&good.replacen('.', "=.", 1)),
            MALFORMED,
        ),
        (
            "payload bad base64 but signed",
            bearer(&{
                let input = format!("{}.aGl", b64e(h256.as_bytes()));
                let sig = jsonwebtoken::crypto::sign(
                    input.as_bytes(),
                    &EncodingKey::from_secret(SECRET.as_bytes()),
                    Algorithm::HS256,
                )
                .unwrap();
                format!("{input}.{sig}")
            }),
            MALFORMED,
        ),
        (
            "signature bad base64",
            bearer(&format!("{}.aGl", good.rsplit_once('.').unwrap().0)),
            MALFORMED,
        ),
        ("payload is an array", bearer(&hs(h256, "[1,2]")), MALFORMED),
        (
            "payload is a string",
            bearer(&hs(h256, r#""sub""#)),
            MALFORMED,
        ),
        ("payload not JSON", bearer(&hs(h256, "{nope")), MALFORMED),
        (
            "duplicate claim keys",
            bearer(&hs(
                h256,
                &format!(
                    r#"{{"token_type":"refresh","token_type":"access","exp":{}}}"#,
                    now + 300
                ),
            )),
            MALFORMED,
        ),
        (
            "header not an object",
            bearer(&hs("[]", &access_claims().to_string())),
            MALFORMED,
        ),
        (
            "header without alg",
            bearer(&hs(r#"{"typ":"JWT"}"#, &access_claims().to_string())),
            MALFORMED,
        ),
        (
            "duplicate alg",
            bearer(&hs(
                r#"{"alg":"none","alg":"HS256"}"#,
                &access_claims().to_string(),
            )),
            MALFORMED,
        ),
        (
            "kid not a string",
            bearer(&hs(
                r#"{"alg":"HS256","kid":7}"#,
                &access_claims().to_string(),
            )),
            MALFORMED,
        ),
        (
            "crit",
            bearer(&hs(
                r#"{"alg":"HS256","crit":["exp"]}"#,
                &access_claims().to_string(),
            )),
            CRIT,
        ),
        (
            "crit empty",
            bearer(&hs(
                r#"{"alg":"HS256","crit":[]}"#,
                &access_claims().to_string(),
            )),
            CRIT,
        ),
        ("alg none", bearer(&alg_none("none")), WRONG_ALGORITHM),
        ("alg None", bearer(&alg_none("None")), WRONG_ALGORITHM),
        ("alg NONE", bearer(&alg_none("NONE")), WRONG_ALGORITHM),
        (
            "alg hs256 lowercase",
            bearer(&alg_none("hs256")),
            WRONG_ALGORITHM,
        ),
        (
            "alg not allowed (HS512)",
            bearer(&sign_raw(
                r#"{"alg":"HS512"}"#,
                &access_claims().to_string(),
                &EncodingKey::from_secret(SECRET.as_bytes()),
                Algorithm::HS512,
            )),
            WRONG_ALGORITHM,
        ),
        (
            "jku/x5u/jwk ignored, signature still ours",
            bearer(&hs(
                r#"{"alg":"HS256","jku":"https://evil/jwks","x5u":"https://evil","jwk":{"kty":"oct","k":"AA"}}"#,
                &access_claims().to_string(),
            )),
            "ok",
        ),
        (
            "wrong secret",
            bearer(&sign_raw(
                h256,
                &access_claims().to_string(),
                &EncodingKey::from_secret(b"another-secret"),
                Algorithm::HS256,
            )),
            BAD_SIGNATURE,
        ),
        (
            "tampered payload",
            bearer(&replace_segment(
                &good,
                1,
                &with(json!({"user_id": 1})).to_string(),
            )),
            BAD_SIGNATURE,
        ),
        (
            "tampered header",
            bearer(&replace_segment(
                &good,
                0,
                r#"{"alg":"HS256","typ":"JWT","x":1}"#,
            )),
            BAD_SIGNATURE,
        ),
        (
            "empty signature",
            bearer(&format!("{}.", good.rsplit_once('.').unwrap().0)),
            BAD_SIGNATURE,
        ),
        (
            "expired",
            bearer(&hs256(&with(json!({"exp": now - 31})))),
            EXPIRED,
        ),
        (
            "expired at the boundary",
            bearer(&hs256(&with(json!({"exp": now - 30})))),
            EXPIRED,
        ),
        (
            "not yet valid",
            bearer(&hs256(&with(json!({"nbf": now + 120})))),
            NOT_YET_VALID,
        ),
        (
            "issued in the future",
            bearer(&hs256(&with(json!({"iat": now + 120})))),
            NOT_YET_VALID,
        ),
        (
            "exp is a string",
            bearer(&hs256(&with(json!({"exp": "soon"})))),
            MALFORMED,
        ),
        (
            "exp missing",
            bearer(&hs256(&json!({"token_type": "access", "user_id": 1}))),
            MISSING_CLAIM,
        ),
        (
            "refresh token",
            bearer(&hs256(&with(json!({"token_type": "refresh"})))),
            WRONG_CLAIM,
        ),
        (
            "no token_type",
            bearer(&hs256(&json!({"exp": now + 60}))),
            WRONG_CLAIM,
        ),
        (
            "aud ignored without policy audience",
            bearer(&hs256(&with(json!({"aud": "other"})))),
            "ok",
        ),
        ("oversized valid token", bearer(&oversized), TOO_LARGE),
        (
            "oversized garbage (no decoding first)",
            bearer(&"%".repeat(9000)),
            TOO_LARGE,
        ),
    ];
    for (name, headers, want) in &cases {
        assert_eq!(reason(&policy, headers), *want, "case {name:?}");
    }
    assert!(policy.verify(&headers(&[])).unwrap_err().is_missing());
    assert!(!policy.verify(&bearer("x")).unwrap_err().is_missing());
    // One second inside the boundary still passes.
    assert_eq!(
        reason(&policy, &bearer(&hs256(&with(json!({"exp": now - 29}))))),
        "ok"
    );
}

#[tokio::test]
async fn issuer_and_audience_when_configured() {
    let mut s = hs_settings();
    s.issuer = Some("https://idp.example".into());
    s.audience = Some("api".into());
    let policy = build(&s).await;
    let ok = with(json!({"iss": "https://idp.example", "aud": ["web", "api"]}));
    assert_eq!(reason(&policy, &bearer(&hs256(&ok))), "ok");
    let bad_iss = with(json!({"iss": "https://evil", "aud": "api"}));
    assert_eq!(reason(&policy, &bearer(&hs256(&bad_iss))), WRONG_ISSUER);
    let bad_aud = with(json!({"iss": "https://idp.example", "aud": "web"}));
    assert_eq!(reason(&policy, &bearer(&hs256(&bad_aud))), WRONG_AUDIENCE);
    let no_aud = with(json!({"iss": "https://idp.example"}));
    assert_eq!(reason(&policy, &bearer(&hs256(&no_aud))), WRONG_AUDIENCE);
}

#[tokio::test]
async fn cache_hits_never_outlive_exp() {
    let policy = build(&hs_settings()).await;
    let now = now();
    let token = hs256(&with(json!({"exp": now + 10})));
    assert!(policy.verify_token(&token, now).is_ok());
    assert_eq!(policy.cache_hits(), 0);
    assert!(policy.verify_token(&token, now + 39).is_ok());
    assert_eq!(
        policy.cache_hits(),
        1,
        "second verification served from the cache"
    );
    let err = policy.verify_token(&token, now + 40).unwrap_err();
    assert_eq!(err.reason, EXPIRED);
    assert_eq!(
        policy.cache_hits(),
        2,
        "the expiry was decided on the cached entry"
    );
    assert_eq!(
        policy.verify_token(&token, now + 40).unwrap_err().reason,
        EXPIRED
    );
    // Failures are never cached: the same bad token is re-checked every time.
    let bad = replace_segment(&token, 1, &with(json!({"user_id": 1})).to_string());
    for _ in 0..2 {
        assert_eq!(
            policy.verify_token(&bad, now).unwrap_err().reason,
            BAD_SIGNATURE
        );
    }
}
