//! JWT helpers for the integration tests: hand-built tokens (any header, any payload text),
//! a fresh RSA key with its PEMs and JWK, and a JWKS server whose document (and availability)
//! a test can change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http::Response;

use super::{full, TestUpstream};

/// The shared secret of the test HS* policies.
pub const JWT_SECRET: &str = "test-only-django-secret-key-0123456789";

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Unpadded base64url (RFC 4648 §5).
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A token with exactly this header and payload text, signed with `key` as `alg`.
pub fn sign_jwt(
    header: &str,
    payload: &str,
    key: &jsonwebtoken::EncodingKey,
    alg: jsonwebtoken::Algorithm,
) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(payload.as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{sig}")
}

/// An HS256 token over `claims` with [`JWT_SECRET`].
pub fn hs256(claims: &serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    sign_jwt(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &claims.to_string(),
        &key,
        jsonwebtoken::Algorithm::HS256,
    )
}

/// The claims of a fresh simplejwt access token for user 42, with `extra` merged in.
pub fn access_claims(extra: serde_json::Value) -> serde_json::Value {
    let now = unix_now();
    let mut claims = serde_json::json!({
        "token_type": "access", "exp": now + 300, "iat": now, "jti": "0f1e2d3c", "user_id": 42
    });
    if let (Some(c), serde_json::Value::Object(e)) = (claims.as_object_mut(), extra) {
        c.extend(e);
    }
    claims
}

/// A fresh RSA-2048 key: signing key, PEMs and public JWK (without `kid`).
pub struct TestRsaKey {
    pub encoding: jsonwebtoken::EncodingKey,
    pub private_pem: String,
    pub public_pem: String,
    pub jwk: serde_json::Value,
}

impl TestRsaKey {
    pub fn generate() -> TestRsaKey {
        use aws_lc_rs::encoding::AsDer;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = pair.as_der().unwrap();
        let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_ref().to_vec());
        let pair =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap();
        let private_pem = pair.serialize_pem();
        let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap();
        let jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::RS256)
                .unwrap();
        TestRsaKey {
            encoding,
            public_pem: pair.public_key_pem(),
            private_pem,
            jwk: serde_json::to_value(jwk).unwrap(),
        }
    }

    /// An RS256 token over `claims`, with an optional `kid`.
    pub fn sign(&self, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = kid.into();
        }
        sign_jwt(
            &header.to_string(),
            &claims.to_string(),
            &self.encoding,
            jsonwebtoken::Algorithm::RS256,
        )
    }

    pub fn jwk_with_kid(&self, kid: &str) -> serde_json::Value {
        let mut jwk = self.jwk.clone();
        jwk["kid"] = kid.into();
        jwk
    }
}

/// `{"keys": [...]}`.
pub fn jwks(keys: &[serde_json::Value]) -> String {
    serde_json::json!({ "keys": keys }).to_string()
}

/// A real HTTP server on 127.0.0.1 serving a JWKS document the test can change, or, while
/// [`JwksServer::set_down`], answering every fetch with a 503 (an identity-provider outage).
pub struct JwksServer {
    pub url: String,
    body: Arc<Mutex<String>>,
    down: Arc<AtomicBool>,
    server: TestUpstream,
}

impl JwksServer {
    pub async fn start(body: String) -> JwksServer {
        let body = Arc::new(Mutex::new(body));
        let down = Arc::new(AtomicBool::new(false));
        let (current, is_down) = (body.clone(), down.clone());
        let upstream = TestUpstream::start(move |_| {
            let text = current.lock().unwrap().clone();
            let status = if is_down.load(Ordering::SeqCst) {
                503
            } else {
                200
            };
            async move {
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(full(if status == 200 { text } else { String::new() }))
                    .unwrap()
            }
        })
        .await;
        JwksServer {
            url: format!("http://{}/.well-known/jwks.json", upstream.addr),
            body,
            down,
            server: upstream,
        }
    }

    pub fn set(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    /// While `true`, every fetch gets `503` with an empty body.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Fetches so far.
    pub fn hits(&self) -> usize {
        self.server.hits()
    }
}
