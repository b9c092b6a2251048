//! `gateway token`: signs a token a policy accepts. Claims start from the policy's own
//! (`claims`, `iss`, `aud`), then `iat`/`exp` from the TTL and a random `jti` (simplejwt
//! requires one if the token also reaches Django), then the `--claim` values, which win.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::{Map, Value};

use super::keys::read_secret;
use crate::config::jwt_policy::{JwtKeySource, JwtPolicySettings};

/// Mints a token for `settings`. Shared-secret policies sign with their secret and the first
/// listed algorithm; public-key policies need the matching private key PEM and use the first
/// listed algorithm that key can sign. For a `jwks_file` policy the header carries the `kid`
/// of the JWKS entry holding the same public key.
pub fn mint(
    settings: &JwtPolicySettings,
    claims: &[(String, String)],
    ttl: Duration,
    private_key_pem: Option<&Path>,
) -> Result<String, String> {
    let payload = payload(settings, claims, ttl)?;
    let algorithms: Vec<Algorithm> = settings
        .algorithms
        .iter()
        .filter_map(|a| Algorithm::from_str(a).ok())
        .collect();
    let name = &settings.name;
    if let Some(secret) = read_secret(&settings.key).map_err(|e| format!("policy {name}: {e}"))? {
        if private_key_pem.is_some() {
            return Err(format!(
                "policy {name} uses a shared secret; a private key is not needed"
            ));
        }
        let alg = algorithms
            .first()
            .copied()
            .ok_or_else(|| format!("policy {name} lists no algorithm"))?;
        return jsonwebtoken::encode(
            &Header::new(alg),
            &payload,
            &EncodingKey::from_secret(&secret),
        )
        .map_err(|e| format!("signing failed: {e}"));
    }
    let Some(path) = private_key_pem else {
        return Err(format!(
            "policy {name} verifies with a public key: give the matching private key (PEM)"
        ));
    };
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    for alg in algorithms {
        let key = match alg.family() {
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
            AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem),
            AlgorithmFamily::Hmac => continue,
        };
        let Ok(key) = key else { continue };
        let mut header = Header::new(alg);
        header.kid = jwks_kid(&settings.key, &key, alg);
        if let Ok(token) = jsonwebtoken::encode(&header, &payload, &key) {
            return Ok(token);
        }
    }
    Err(format!(
        "{} is not a private key for any of policy {name}'s algorithms ({})",
        path.display(),
        settings.algorithms.join(", ")
    ))
}

fn payload(
    settings: &JwtPolicySettings,
    claims: &[(String, String)],
    ttl: Duration,
) -> Result<Map<String, Value>, String> {
    if ttl < Duration::from_secs(1) || ttl > crate::config::units::MAX_CONFIG_DURATION {
        return Err(format!(
            "--ttl {ttl:?}: a token must live at least 1s and at most 365d (0s would be expired at once)"
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_string())?
        .as_secs();
    let mut out = Map::new();
    for (k, v) in &settings.claims {
        out.insert(k.clone(), v.clone());
    }
    if let Some(iss) = &settings.issuer {
        out.insert("iss".into(), Value::String(iss.clone()));
    }
    if let Some(aud) = &settings.audience {
        out.insert("aud".into(), Value::String(aud.clone()));
    }
    out.insert("iat".into(), now.into());
    out.insert("exp".into(), now.saturating_add(ttl.as_secs()).into());
    out.insert("jti".into(), format!("{:032x}", fastrand::u128(..)).into());
    for (k, v) in claims {
        if k.is_empty() {
            return Err("a claim needs a name (--claim NAME=VALUE)".into());
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
        // The policy refuses time claims that are not whole numbers of seconds: minting one
        // would hand out a token that never works.
        if matches!(k.as_str(), "exp" | "nbf" | "iat") && !(value.is_u64() || value.is_i64()) {
            return Err(format!(
                "--claim {k}={v}: {k} must be a whole number of seconds since 1970"
            ));
        }
        out.insert(k.clone(), value);
    }
    Ok(out)
}

/// The `kid` of the `jwks_file` entry whose public key is `key`'s, if any.
fn jwks_kid(source: &JwtKeySource, key: &EncodingKey, alg: Algorithm) -> Option<String> {
    let JwtKeySource::JwksFile(path) = source else {
        return None;
    };
    let ours = Jwk::from_encoding_key(key, alg).ok()?.algorithm;
    let doc: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    doc.get("keys")?
        .as_array()?
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .find(|k| k.algorithm == ours)
        .and_then(|k| k.common.key_id)
}
