//! The attack table: one hand-built request per way a token can be wrong, each with the
//! policy that must refuse it and the reason it must be counted under.

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

use super::{rsa, rsa_other};
use crate::common::*;

/// One attack: where it goes, what it sends, and the reason it must be refused with.
pub struct Attack {
    pub name: &'static str,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub policy: &'static str,
    pub reason: &'static str,
}

fn bearer(name: &'static str, path: &str, token: String, reason: &'static str) -> Attack {
    let policy = match path.split('/').nth(1) {
        Some("api") => "django",
        Some("scoped") => "scoped",
        Some("rs") => "rs",
        Some("kids") => "kids",
        other => panic!("no policy for {other:?}"),
    };
    Attack {
        name,
        path: path.to_owned(),
        headers: vec![("authorization", format!("Bearer {token}"))],
        policy,
        reason,
    }
}

fn hs(alg: Algorithm, header: &str, payload: &str) -> String {
    sign_jwt(
        header,
        payload,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        alg,
    )
}

pub fn attacks() -> Vec<Attack> {
    let now = unix_now();
    let valid = hs256(&access_claims(json!({})));
    let seg: Vec<&str> = valid.split('.').collect();
    let hs256_header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let claims = access_claims(json!({})).to_string();
    let tampered = format!(
        "{}.{}.{}",
        seg[0],
        b64url(access_claims(json!({"user_id": 1})).to_string().as_bytes()),
        seg[2]
    );
    let tampered_header = format!(
        "{}.{}.{}",
        b64url(br#"{"alg":"HS256","typ":"JWT","kid":"x"}"#),
        seg[1],
        seg[2]
    );
    let none = |alg: &str| {
        let header = b64url(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
        format!("{header}.{}.", seg[1])
    };
    // The RS policy's public key PEM used as an HMAC secret (classic key confusion).
    let confused = sign_jwt(
        hs256_header,
        &claims,
        &EncodingKey::from_secret(rsa().public_pem.as_bytes()),
        Algorithm::HS256,
    );
    let duplicate = format!(
        r#"{{"token_type":"access","exp":{},"user_id":42,"user_id":1}}"#,
        now + 300
    );
    let mut list = vec![
        bearer(
            "expired",
            "/api/x",
            hs256(&access_claims(json!({"exp": now - 31}))),
            "expired",
        ),
        bearer(
            "not yet valid",
            "/api/x",
            hs256(&access_claims(json!({"nbf": now + 3600}))),
            "not_yet_valid",
        ),
        bearer(
            "issued in the future",
            "/api/x",
            hs256(&access_claims(json!({"iat": now + 3600}))),
            "not_yet_valid",
        ),
        bearer(
            "wrong signature",
            "/api/x",
            sign_jwt(
                hs256_header,
                &claims,
                &EncodingKey::from_secret(b"another-secret"),
                Algorithm::HS256,
            ),
            "bad_signature",
        ),
        bearer("tampered payload", "/api/x", tampered, "bad_signature"),
        bearer(
            "tampered header",
            "/api/x",
            tampered_header,
            "bad_signature",
        ),
        bearer("alg none", "/api/x", none("none"), "wrong_algorithm"),
        bearer("alg None", "/api/x", none("None"), "wrong_algorithm"),
        bearer("alg NONE", "/api/x", none("NONE"), "wrong_algorithm"),
        bearer(
            "alg not allowed",
            "/api/x",
            hs(Algorithm::HS512, r#"{"alg":"HS512"}"#, &claims),
            "wrong_algorithm",
        ),
        bearer(
            "HS256 with the RS public key as secret",
            "/rs/x",
            confused,
            "wrong_algorithm",
        ),
        bearer(
            "RS token signed by another key",
            "/rs/x",
            rsa_other().sign(None, &access_claims(json!({}))),
            "bad_signature",
        ),
        bearer(
            "unknown kid",
            "/kids/x",
            rsa().sign(Some("zzz"), &access_claims(json!({}))),
            "unknown_kid",
        ),
        bearer(
            "kid of the other key",
            "/kids/x",
            rsa().sign(Some("b"), &access_claims(json!({}))),
            "bad_signature",
        ),
        bearer(
            "crit header",
            "/api/x",
            hs(
                Algorithm::HS256,
                r#"{"alg":"HS256","crit":["exp"]}"#,
                &claims,
            ),
            "crit",
        ),
        bearer(
            "wrong iss",
            "/scoped/x",
            hs256(&access_claims(
                json!({"iss": "https://evil.test", "aud": "api"}),
            )),
            "wrong_issuer",
        ),
        bearer(
            "wrong aud",
            "/scoped/x",
            hs256(&access_claims(
                json!({"iss": "https://issuer.test", "aud": ["web", "other"]}),
            )),
            "wrong_audience",
        ),
        bearer(
            "no aud",
            "/scoped/x",
            hs256(&access_claims(json!({"iss": "https://issuer.test"}))),
            "wrong_audience",
        ),
        bearer(
            "refresh token",
            "/api/x",
            hs256(&access_claims(json!({"token_type": "refresh"}))),
            "wrong_claim",
        ),
        bearer(
            "no exp",
            "/api/x",
            hs(
                Algorithm::HS256,
                hs256_header,
                r#"{"token_type":"access","user_id":42}"#,
            ),
            "missing_claim",
        ),
        bearer(
            "exp of the wrong type",
            "/api/x",
            hs256(&access_claims(json!({"exp": "soon"}))),
            "malformed",
        ),
        bearer(
            "two segments",
            "/api/x",
            format!("{}.{}", seg[0], seg[1]),
            "malformed",
        ),
        bearer(
            "bad base64",
            "/api/x",
            format!("{}.{}!!.{}", seg[0], seg[1], seg[2]),
            "malformed",
        ),
        bearer(
            "bad base64 payload",
            "/api/x",
            format!("{}.a$b.{}", seg[0], seg[2]),
            "malformed",
        ),
        bearer(
            "payload not an object",
            "/api/x",
            hs(Algorithm::HS256, hs256_header, "[1,2,3]"),
            "malformed",
        ),
        bearer(
            "duplicate claim keys",
            "/api/x",
            hs(Algorithm::HS256, hs256_header, &duplicate),
            "malformed",
        ),
        bearer(
            "oversized",
            "/api/x",
            hs256(&access_claims(json!({"pad": "x".repeat(9000)}))),
            "too_large",
        ),
        bearer(
            "trailing junk",
            "/api/x",
            format!("{valid} junk"),
            "malformed",
        ),
        bearer(
            "whitespace inside",
            "/api/x",
            format!("{}. {}.{}", seg[0], seg[1], seg[2]),
            "malformed",
        ),
    ];
    let raw = |name, path: &str, headers: Vec<(&'static str, String)>, reason| Attack {
        name,
        path: path.to_owned(),
        headers,
        policy: "django",
        reason,
    };
    list.extend([
        raw("missing token", "/api/x", vec![], "missing"),
        raw(
            "client-sent X-User-Id without a token",
            "/api/x",
            vec![("x-user-id", "1".into())],
            "missing",
        ),
        raw(
            "Basic credentials",
            "/api/x",
            vec![("authorization", "Basic YWRtaW46YWRtaW4=".into())],
            "missing",
        ),
        raw(
            "token only in ?token=",
            &format!("/api/x?token={valid}"),
            vec![],
            "missing",
        ),
        raw(
            "token only in ?access_token=",
            &format!("/api/x?access_token={valid}"),
            vec![],
            "missing",
        ),
        raw(
            "Bearer with no token",
            "/api/x",
            vec![("authorization", "Bearer".into())],
            "malformed",
        ),
        raw(
            "Bearer and spaces",
            "/api/x",
            vec![("authorization", "Bearer   ".into())],
            "malformed",
        ),
        raw(
            "several Authorization headers",
            "/api/x",
            vec![
                ("authorization", format!("Bearer {valid}")),
                ("authorization", format!("Bearer {valid}")),
            ],
            "malformed",
        ),
        raw(
            "expired token in the cookie",
            "/api/x",
            vec![(
                "cookie",
                format!(
                    "access_token={}",
                    hs256(&access_claims(json!({"exp": now - 60})))
                ),
            )],
            "expired",
        ),
        raw(
            "two different token cookies",
            "/api/x",
            vec![(
                "cookie",
                format!("access_token={valid}; access_token=other"),
            )],
            "malformed",
        ),
    ]);
    list
}
