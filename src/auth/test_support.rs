//! Test helpers: policy settings, keys generated at test time (aws-lc-rs for RSA, rcgen for
//! EC/Ed25519), hand-built tokens (any header, any payload bytes) and a local JWKS server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use super::JwtPolicy;
use crate::config::jwt_policy::{JwtKeySource, JwtPolicySettings};
use crate::config::KeySource;

pub(crate) const SECRET: &str = "test-only-django-secret-key-0123456789";

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The SPEC's example policy (simplejwt defaults) with the given algorithms and key.
pub(crate) fn settings(algorithms: &[&str], key: JwtKeySource) -> JwtPolicySettings {
    JwtPolicySettings {
        name: "test".into(),
        algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
        key,
        jwks_refresh: Duration::from_secs(300),
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(30),
        required_claims: vec!["exp".into()],
        claims: vec![("token_type".into(), json!("access"))],
        token_sources: vec![
            KeySource::Header(http::header::AUTHORIZATION),
            KeySource::Cookie("access_token".into()),
        ],
        forward_claims: vec![("user_id".into(), HeaderName::from_static("x-user-id"))],
        forward_token: true,
        max_token_bytes: 8192,
    }
}

pub(crate) fn hs_settings() -> JwtPolicySettings {
    settings(&["HS256"], JwtKeySource::Secret(SECRET.into()))
}

/// Claims of a fresh simplejwt access token.
pub(crate) fn access_claims() -> Value {
    let now = now();
    json!({"token_type": "access", "exp": now + 300, "iat": now, "jti": "0f1e2d", "user_id": 42})
}

/// Unpadded base64url, through the one encoder jsonwebtoken exposes (an `oct` JWK's `k`).
pub(crate) fn b64e(bytes: &[u8]) -> String {
    match Jwk::from_encoding_key(&EncodingKey::from_secret(bytes), Algorithm::HS256)
        .unwrap()
        .algorithm
    {
        jsonwebtoken::jwk::AlgorithmParameters::OctetKey(k) => k.value,
        _ => unreachable!(),
    }
}

/// A token with exactly this header and payload text, signed with `key` as `alg`.
pub(crate) fn sign_raw(header: &str, payload: &str, key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!("{}.{}", b64e(header.as_bytes()), b64e(payload.as_bytes()));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{sig}")
}

/// An HS256 token over `claims` with the test secret.
pub(crate) fn hs256(claims: &Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    sign_raw(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &claims.to_string(),
        &key,
        Algorithm::HS256,
    )
}

pub(crate) fn bearer(token: &str) -> HeaderMap {
    headers(&[("authorization", &format!("Bearer {token}"))])
}

pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// An asymmetric test key: its signing key, PEMs and public JWK (without `kid`).
pub(crate) struct TestKey {
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub private_pem: String,
    pub public_pem: String,
    pub jwk: Value,
}

impl TestKey {
    /// A token signed by this key, with an optional `kid`.
    pub(crate) fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = json!({"alg": format!("{:?}", self.alg), "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        sign_raw(
            &header.to_string(),
            &claims.to_string(),
            &self.encoding,
            self.alg,
        )
    }

    pub(crate) fn jwk_with_kid(&self, kid: &str) -> Value {
        let mut jwk = self.jwk.clone();
        jwk["kid"] = json!(kid);
        jwk
    }

    /// Writes the public PEM to `dir/name`; returns the path.
    pub(crate) fn public_pem_file(&self, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.public_pem).unwrap();
        path
    }
}

fn from_rcgen(pair: rcgen::KeyPair, alg: Algorithm) -> TestKey {
    let private_pem = pair.serialize_pem();
    let encoding = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(private_pem.as_bytes()),
        _ => EncodingKey::from_ec_pem(private_pem.as_bytes()),
    }
    .unwrap();
    let jwk = match alg {
        // jsonwebtoken only derives Ed25519 JWKs from PKCS#8 v1; build it from the raw key.
        Algorithm::EdDSA => {
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64e(pair.public_key_raw())})
        }
        _ => serde_json::to_value(Jwk::from_encoding_key(&encoding, alg).unwrap()).unwrap(),
    };
    TestKey {
        alg,
        encoding,
        public_pem: pair.public_key_pem(),
        private_pem,
        jwk,
    }
}

/// A fresh 2048-bit RSA key (RS256).
pub(crate) fn new_rsa() -> TestKey {
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = pair.as_der().unwrap();
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_ref().to_vec());
    let pair =
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap();
    from_rcgen(pair, Algorithm::RS256)
}

pub(crate) fn rsa() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(new_rsa)
}

pub(crate) fn ec256() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        from_rcgen(pair, Algorithm::ES256)
    })
}

pub(crate) fn ec384() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        from_rcgen(pair, Algorithm::ES384)
    })
}

pub(crate) fn ed25519() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        from_rcgen(pair, Algorithm::EdDSA)
    })
}

pub(crate) fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// A real HTTP server on 127.0.0.1 serving whatever status and body the test sets.
pub(crate) struct JwksServer {
    pub url: String,
    response: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicU64>,
}

impl JwksServer {
    pub(crate) async fn start(body: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let response = Arc::new(Mutex::new((200, body)));
        let hits = Arc::new(AtomicU64::new(0));
        let (r, h) = (response.clone(), hits.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (r, h) = (r.clone(), h.clone());
                let service = hyper::service::service_fn(move |_req| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = r.lock().unwrap().clone();
                    let resp = http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        JwksServer {
            url,
            response,
            hits,
        }
    }

    pub(crate) fn set(&self, status: u16, body: String) {
        *self.response.lock().unwrap() = (status, body);
    }

    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

pub(crate) async fn build(settings: &JwtPolicySettings) -> Arc<JwtPolicy> {
    JwtPolicy::build(settings).await.unwrap()
}

pub(crate) fn reason(policy: &JwtPolicy, headers: &http::HeaderMap) -> &'static str {
    match policy.verify(headers) {
        Ok(_) => "ok",
        Err(r) => {
            assert!(!r.description.contains("eyJ"), "description echoes a token");
            r.reason
        }
    }
}

pub(crate) fn with(extra: Value) -> Value {
    let mut claims = access_claims();
    if let (Value::Object(c), Value::Object(e)) = (&mut claims, extra) {
        c.extend(e);
    }
    claims
}

/// A valid token with one segment replaced.
pub(crate) fn replace_segment(token: &str, index: usize, text: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[index] = b64e(text.as_bytes());
    parts.join(".")
}
