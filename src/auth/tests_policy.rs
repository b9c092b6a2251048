//! Success paths and key handling: each algorithm family and key source, key confusion,
//! JWKS `kid` selection, build errors, header rewriting, minting.

use std::time::Duration;

use http::header::{AUTHORIZATION, COOKIE};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use super::reasons::*;
use super::test_support::*;
use super::{mint, JwtPolicy};
use crate::config::jwt_policy::JwtKeySource;

#[tokio::test]
async fn public_key_policies_and_key_confusion() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = rsa();
    let rsa_pem = rsa.public_pem_file(dir.path(), "rsa.pem");
    let policy = build(&settings(
        &["RS256", "PS256"],
        JwtKeySource::PublicKeyFile(rsa_pem.clone()),
    ))
    .await;
    let claims = access_claims().to_string();
    assert_eq!(
        reason(&policy, &bearer(&rsa.sign(None, &access_claims()))),
        "ok"
    );
    assert_eq!(
        reason(
            &policy,
            &bearer(&rsa.sign(Some("any-kid"), &access_claims()))
        ),
        "ok"
    );
    let ps = sign_raw(
        r#"{"alg":"PS256"}"#,
        &claims,
        &rsa.encoding,
        Algorithm::PS256,
    );
    assert_eq!(reason(&policy, &bearer(&ps)), "ok");
    let rs512 = sign_raw(
        r#"{"alg":"RS512"}"#,
        &claims,
        &rsa.encoding,
        Algorithm::RS512,
    );
    assert_eq!(reason(&policy, &bearer(&rs512)), WRONG_ALGORITHM);
    // The classic confusion: HS256 "signed" with the public key PEM as the HMAC secret.
    let pem_secret = EncodingKey::from_secret(rsa.public_pem.as_bytes());
    let confused = sign_raw(r#"{"alg":"HS256"}"#, &claims, &pem_secret, Algorithm::HS256);
    assert_eq!(reason(&policy, &bearer(&confused)), WRONG_ALGORITHM);
    // Even with HS256 listed (only possible by bypassing config validation) the RSA key
    // never serves as an HMAC secret.
    let mixed = build(&settings(
        &["RS256", "HS256"],
        JwtKeySource::PublicKeyFile(rsa_pem),
    ))
    .await;
    assert_eq!(reason(&mixed, &bearer(&confused)), WRONG_ALGORITHM);
    // A token signed by a different RSA key.
    let other = new_rsa();
    assert_eq!(
        reason(&policy, &bearer(&other.sign(None, &access_claims()))),
        BAD_SIGNATURE
    );

    for (key, alg, wrong) in [
        (ec256(), "ES256", ec384()),
        (ec384(), "ES384", ec256()),
        (ed25519(), "EdDSA", ec256()),
    ] {
        let pem = key.public_pem_file(dir.path(), &format!("{alg}.pem"));
        let p = build(&settings(
            &["ES256", "ES384", "EdDSA"],
            JwtKeySource::PublicKeyFile(pem),
        ))
        .await;
        assert_eq!(
            reason(&p, &bearer(&key.sign(None, &access_claims()))),
            "ok",
            "{alg}"
        );
        assert_eq!(
            reason(&p, &bearer(&wrong.sign(None, &access_claims()))),
            WRONG_ALGORITHM,
            "{alg}"
        );
    }
}

#[tokio::test]
async fn jwks_file_selects_by_kid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let oct = json!({"kty": "oct", "k": b64e(SECRET.as_bytes()), "kid": "sym"});
    let body = jwks(&[rsa().jwk_with_kid("r1"), ec256().jwk_with_kid("e1"), oct]);
    std::fs::write(&path, body).unwrap();
    let policy = build(&settings(
        &["RS256", "ES256"],
        JwtKeySource::JwksFile(path.clone()),
    ))
    .await;
    let c = access_claims();
    assert_eq!(reason(&policy, &bearer(&rsa().sign(Some("r1"), &c))), "ok");
    assert_eq!(
        reason(&policy, &bearer(&ec256().sign(Some("e1"), &c))),
        "ok"
    );
    assert_eq!(
        reason(&policy, &bearer(&rsa().sign(Some("nope"), &c))),
        UNKNOWN_KID
    );
    assert_eq!(
        reason(&policy, &bearer(&rsa().sign(Some("e1"), &c))),
        WRONG_ALGORITHM
    );
    // No kid: fine while exactly one key fits the algorithm.
    assert_eq!(reason(&policy, &bearer(&rsa().sign(None, &c))), "ok");
    // The oct JWK was skipped, so an HS256 token cannot use it.
    let sym = sign_raw(
        r#"{"alg":"HS256","kid":"sym"}"#,
        &c.to_string(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    );
    assert_eq!(reason(&policy, &bearer(&sym)), WRONG_ALGORITHM);

    std::fs::write(
        &path,
        jwks(&[rsa().jwk_with_kid("r1"), new_rsa().jwk_with_kid("r2")]),
    )
    .unwrap();
    let two = build(&settings(&["RS256"], JwtKeySource::JwksFile(path))).await;
    assert_eq!(reason(&two, &bearer(&rsa().sign(Some("r1"), &c))), "ok");
    assert_eq!(reason(&two, &bearer(&rsa().sign(None, &c))), MISSING_KID);

    // A JWKS without kids cannot be indexed by one: a token's kid is then only a hint.
    let mut bare = rsa().jwk.clone();
    bare.as_object_mut().unwrap().remove("kid");
    let bare_path = dir.path().join("bare.json");
    std::fs::write(&bare_path, jwks(&[bare])).unwrap();
    let bare = build(&settings(&["RS256"], JwtKeySource::JwksFile(bare_path))).await;
    assert_eq!(reason(&bare, &bearer(&rsa().sign(Some("k9"), &c))), "ok");
}

#[tokio::test]
async fn build_errors_name_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let err = JwtPolicy::build(&settings(
        &["HS256"],
        JwtKeySource::SecretEnv("GATEWAY_TEST_UNSET_VAR_0".into()),
    ))
    .await
    .unwrap_err();
    assert!(
        err.contains("jwt_policies.test.key") && err.contains("GATEWAY_TEST_UNSET_VAR_0"),
        "{err}"
    );
    let pem = ec256().public_pem_file(dir.path(), "ec.pem");
    let err = JwtPolicy::build(&settings(&["RS256"], JwtKeySource::PublicKeyFile(pem)))
        .await
        .unwrap_err();
    assert!(err.contains("jwt_policies.test.algorithms"), "{err}");
    let private = dir.path().join("private.pem");
    std::fs::write(&private, &rsa().private_pem).unwrap();
    let err = JwtPolicy::build(&settings(&["RS256"], JwtKeySource::PublicKeyFile(private)))
        .await
        .unwrap_err();
    assert!(err.contains("private key"), "{err}");
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let policy = build(&settings(&["HS256"], JwtKeySource::SecretFile(secret_file))).await;
    assert_eq!(
        reason(&policy, &bearer(&hs256(&access_claims()))),
        "ok",
        "trailing newline trimmed"
    );
}

#[tokio::test]
async fn apply_forwards_claims_and_strips_client_copies() {
    let policy = build(&hs_settings()).await;
    for (user_id, want) in [
        (json!(42), "42"),
        (json!("42"), "42"),
        (json!("b7c1-uuid"), "b7c1-uuid"),
    ] {
        let token = hs256(&with(json!({"user_id": user_id})));
        let mut h = bearer(&token);
        h.append("X-User-Id", "1".parse().unwrap());
        h.append("x-USER-id", "2".parse().unwrap());
        h.append("x_user_id", "3".parse().unwrap());
        let v = policy.verify(&h).unwrap();
        policy.apply(&v, &mut h);
        let got: Vec<_> = h.get_all("x-user-id").iter().collect();
        assert_eq!(got, [want]);
        assert!(!h.contains_key("x_user_id"));
        assert!(
            h.contains_key(AUTHORIZATION),
            "forward_token: true keeps the token"
        );
    }
    // No user_id claim: the client's copies still go, and nothing is set.
    let token = hs256(&json!({"token_type": "access", "exp": now() + 60}));
    let mut h = bearer(&token);
    h.append("x-user-id", "1".parse().unwrap());
    let v = policy.verify(&h).unwrap();
    policy.apply(&v, &mut h);
    assert!(!h.contains_key("x-user-id"));

    let mut s = hs_settings();
    s.forward_token = false;
    let strip = build(&s).await;
    let token = hs256(&access_claims());
    let mut h = bearer(&token);
    h.append(
        COOKIE,
        format!("sessionid=abc; access_token={token}")
            .parse()
            .unwrap(),
    );
    let v = strip.verify(&h).unwrap();
    strip.apply(&v, &mut h);
    assert!(!h.contains_key(AUTHORIZATION));
    assert_eq!(h[COOKIE], "sessionid=abc");
    assert_eq!(h["x-user-id"], "42");
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&super::token::b64url_decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn minted_tokens_verify() {
    let s = hs_settings();
    let claims = vec![
        ("user_id".to_string(), "42".to_string()),
        ("name".to_string(), "bob".to_string()),
        ("roles".to_string(), r#"["a"]"#.to_string()),
    ];
    let token = mint(&s, &claims, Duration::from_secs(300), None).unwrap();
    let policy = build(&s).await;
    let v = policy.verify(&bearer(&token)).unwrap();
    assert_eq!(v.claims["user_id"], json!(42));
    assert_eq!(v.claims["name"], json!("bob"));
    assert_eq!(v.claims["roles"], json!(["a"]));
    assert_eq!(v.claims["token_type"], json!("access"));
    assert_eq!(v.claims["jti"].as_str().map(str::len), Some(32));
    let refresh = vec![("token_type".to_string(), "refresh".to_string())];
    let token = mint(&s, &refresh, Duration::from_secs(300), None).unwrap();
    assert_eq!(
        reason(&policy, &bearer(&token)),
        WRONG_CLAIM,
        "--claim overrides the policy"
    );
    let c = claims_of(&token);
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 300);

    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("private.pem");
    std::fs::write(&key_path, &ec384().private_pem).unwrap();
    let pem = ec384().public_pem_file(dir.path(), "pub.pem");
    let ec = settings(&["ES256", "ES384"], JwtKeySource::PublicKeyFile(pem));
    assert!(mint(&ec, &[], Duration::from_secs(60), None)
        .unwrap_err()
        .contains("private key"));
    let token = mint(&ec, &[], Duration::from_secs(60), Some(&key_path)).unwrap();
    assert_eq!(reason(&*build(&ec).await, &bearer(&token)), "ok");

    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(
        &jwks_path,
        jwks(&[rsa().jwk_with_kid("a"), ec384().jwk_with_kid("b")]),
    )
    .unwrap();
    let js = settings(&["RS256", "ES384"], JwtKeySource::JwksFile(jwks_path));
    let token = mint(&js, &[], Duration::from_secs(60), Some(&key_path)).unwrap();
    assert_eq!(
        reason(&*build(&js).await, &bearer(&token)),
        "ok",
        "kid found in the JWKS"
    );
}
