//! Verification keys: loading them from a policy's source (secret, PEM, JWKS), knowing which
//! algorithms each one may verify (HS only with secrets, RS/PS with RSA, ES256/ES384 with
//! P-256/P-384, EdDSA with Ed25519), and choosing the candidates for a token's `alg` + `kid`.

use std::path::Path;

use aws_lc_rs::digest;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use serde_json::Value;

use super::reasons::{MISSING_KID, UNKNOWN_KID, WRONG_ALGORITHM};
use super::Rejection;
use crate::config::jwt_policy::JwtKeySource;

/// A JWKS document larger than this is refused (a real one is a few KiB).
pub(crate) const MAX_JWKS_KEYS: usize = 100;
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// What a key can verify, independent of any policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    pub(crate) fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Hmac => matches!(alg, HS256 | HS384 | HS512),
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

/// One usable key.
#[derive(Clone)]
pub(crate) struct KeyEntry {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// A JWK's `alg`, when it pins one.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl KeyEntry {
    pub(crate) fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.map_or(true, |a| a == alg)
    }
}

/// The keys a policy verifies with at one moment; replaced whole when a JWKS changes.
pub(crate) struct KeySet {
    /// Bumped on every change; cache entries remember the generation that verified them.
    pub generation: u64,
    /// JWKS sets select by `kid`; a single configured key ignores it.
    pub by_kid: bool,
    pub keys: Vec<KeyEntry>,
    /// False only for the placeholder of a `jwks_url` policy whose key set was never fetched
    /// (it started while the JWKS was unreachable): its requests get 503 `jwks_unavailable`,
    /// not 401, until the first fetch succeeds.
    pub loaded: bool,
    fingerprint: [u8; 32],
}

impl KeySet {
    pub(crate) fn new(generation: u64, by_kid: bool, keys: Vec<KeyEntry>) -> Self {
        let fingerprint = fingerprint(&keys);
        KeySet {
            generation,
            by_kid,
            keys,
            loaded: true,
            fingerprint,
        }
    }

    /// No keys yet: a `jwks_url` set whose first fetch failed.
    pub(crate) fn unloaded() -> Self {
        KeySet {
            loaded: false,
            ..KeySet::new(0, true, Vec::new())
        }
    }

    /// Same keys (ids, kinds, pinned algorithms and key material) as `other`.
    pub(crate) fn same_keys(&self, other: &KeySet) -> bool {
        self.loaded == other.loaded && self.fingerprint == other.fingerprint
    }

    /// The keys that may have signed a token with this `alg` and `kid`.
    pub(crate) fn candidates(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Vec<&KeyEntry>, Rejection> {
        // A JWKS whose keys carry no `kid` cannot be indexed by one: treat the token as kid-less.
        let kid = kid.filter(|_| self.keys.iter().any(|k| k.kid.is_some()));
        let fitting: Vec<&KeyEntry> = match (self.by_kid, kid) {
            (true, Some(kid)) => {
                let named: Vec<&KeyEntry> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if named.is_empty() {
                    return Err(Rejection::new(UNKNOWN_KID, "unknown key id"));
                }
                named.into_iter().filter(|k| k.fits(alg)).collect()
            }
            (true, None) => {
                let fitting: Vec<&KeyEntry> = self.keys.iter().filter(|k| k.fits(alg)).collect();
                if fitting.len() > 1 {
                    return Err(Rejection::new(MISSING_KID, "token has no key id"));
                }
                fitting
            }
            (false, _) => self.keys.iter().filter(|k| k.fits(alg)).collect(),
        };
        if fitting.is_empty() {
            return Err(Rejection::new(
                WRONG_ALGORITHM,
                "algorithm does not fit the key",
            ));
        }
        Ok(fitting)
    }

    /// True when some key can verify one of `algorithms`.
    pub(crate) fn serves_any(&self, algorithms: &[Algorithm]) -> bool {
        self.keys
            .iter()
            .any(|k| algorithms.iter().any(|a| k.fits(*a)))
    }
}

fn fingerprint(keys: &[KeyEntry]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for k in keys {
        let mut field = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(bytes);
        };
        field(k.kid.as_deref().unwrap_or_default().as_bytes());
        field(format!("{:?}/{:?}", k.kind, k.alg).as_bytes());
        match k.key.kind() {
            DecodingKeyKind::SecretOrDer(b) => field(b),
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                field(n);
                field(e);
            }
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The shared secret of a `secret`/`secret_env`/`secret_file` source, `None` for public keys.
/// A secret file's trailing line break is not part of the secret.
pub(crate) fn read_secret(source: &JwtKeySource) -> Result<Option<Vec<u8>>, String> {
    let secret = match source {
        JwtKeySource::Secret(s) => s.as_bytes().to_vec(),
        JwtKeySource::SecretEnv(var) => std::env::var(var)
            .map_err(|_| format!("secret_env: environment variable {var} is not set"))?
            .into_bytes(),
        JwtKeySource::SecretFile(path) => {
            let mut bytes = read(path).map_err(|e| format!("secret_file: {e}"))?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            bytes
        }
        _ => return Ok(None),
    };
    if secret.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(Some(secret))
}

/// A secret as a key.
pub(crate) fn hmac_entry(secret: &[u8]) -> KeyEntry {
    KeyEntry {
        kid: None,
        kind: KeyKind::Hmac,
        alg: None,
        key: DecodingKey::from_secret(secret),
    }
}

/// A PEM public key (SPKI `PUBLIC KEY`, PKCS#1 `RSA PUBLIC KEY` or a `CERTIFICATE`).
pub(crate) fn public_pem_entry(pem: &[u8]) -> Result<KeyEntry, String> {
    if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
        return Err("holds a private key; give the public key".into());
    }
    let (kind, key) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        rsa_size_ok(&key)?;
        (KeyKind::Rsa, key)
    } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        (ec_kind(&key)?, key)
    } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        (KeyKind::Ed25519, key)
    } else {
        return Err("not a PEM RSA, EC (P-256/P-384) or Ed25519 public key".into());
    };
    Ok(KeyEntry {
        kid: None,
        kind,
        alg: None,
        key,
    })
}

/// The curve of an EC public key, from its uncompressed point's length.
fn ec_kind(key: &DecodingKey) -> Result<KeyKind, String> {
    match key
        .try_get_as_bytes()
        .map(|b| (b.len(), b.first().copied()))
    {
        Ok((65, Some(4))) => Ok(KeyKind::EcP256),
        Ok((97, Some(4))) => Ok(KeyKind::EcP384),
        _ => Err("unsupported EC key (P-256 and P-384 only)".into()),
    }
}

/// aws-lc refuses RSA keys under 2048 bits at verification time; say so at load time instead.
fn rsa_size_ok(key: &DecodingKey) -> Result<(), String> {
    let modulus_len = match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, .. } => n.iter().skip_while(|b| **b == 0).count(),
        DecodingKeyKind::SecretOrDer(der) => aws_lc_rs::rsa::PublicKey::from_der(der)
            .map_err(|_| "invalid RSA public key".to_string())?
            .modulus_len(),
    };
    if modulus_len < MIN_RSA_MODULUS_BYTES {
        return Err("RSA keys must have at least 2048 bits".into());
    }
    Ok(())
}

/// Parses a JWKS document. Keys we cannot or must not use are skipped with a warning:
/// symmetric (`oct`) keys (a public JWKS never legitimately holds one), encryption keys
/// (`use: enc`, or `key_ops` without `verify`),
/// unknown types and curves, RSA under 2048 bits. No usable key at all is an error.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<Vec<KeyEntry>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Some(Value::Array(keys)) = doc.get("keys") else {
        return Err("no \"keys\" array".into());
    };
    if keys.len() > MAX_JWKS_KEYS {
        return Err(format!("more than {MAX_JWKS_KEYS} keys"));
    }
    let mut out = Vec::new();
    for (i, raw) in keys.iter().enumerate() {
        match jwk_entry(raw) {
            Ok(entry) => out.push(entry),
            Err(why) => tracing::warn!(index = i, "JWKS key skipped: {why}"),
        }
    }
    if out.is_empty() {
        return Err("no usable signing key".into());
    }
    Ok(out)
}

fn jwk_entry(raw: &Value) -> Result<KeyEntry, String> {
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| format!("invalid JWK: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err("not a signature key (use)".into());
    }
    // RFC 7517 §4.3: with `key_ops`, only the listed operations (ours is `verify`).
    if matches!(&jwk.common.key_operations, Some(ops) if !ops.contains(&KeyOperations::Verify)) {
        return Err("not a verification key (key_ops)".into());
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(key_algorithm(a).ok_or("not a signature algorithm (alg)")?),
    };
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            _ => return Err("unsupported curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are not accepted".into()),
        _ => return Err("unsupported key type".into()),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("invalid key: {e}"))?;
    match kind {
        KeyKind::Rsa => rsa_size_ok(&key)?,
        KeyKind::EcP256 | KeyKind::EcP384 => {
            if ec_kind(&key)? != kind {
                return Err("EC point does not match crv".into());
            }
        }
        KeyKind::Ed25519 => {
            if key.try_get_as_bytes().map(<[u8]>::len) != Ok(32) {
                return Err("invalid Ed25519 key".into());
            }
        }
        KeyKind::Hmac => {}
    }
    let entry = KeyEntry {
        kid: jwk.common.key_id,
        kind,
        alg,
        key,
    };
    if alg.is_some_and(|a| !kind.fits(a)) {
        return Err("alg does not fit the key type".into());
    }
    Ok(entry)
}

fn key_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Loads a policy's keys from a local source (everything but `jwks_url`).
pub(crate) fn load_local(source: &JwtKeySource) -> Result<KeySet, String> {
    if let Some(secret) = read_secret(source)? {
        return Ok(KeySet::new(0, false, vec![hmac_entry(&secret)]));
    }
    match source {
        JwtKeySource::PublicKeyFile(path) => {
            let entry = public_pem_entry(&read(path)?)
                .map_err(|e| format!("public_key_file {}: {e}", path.display()))?;
            Ok(KeySet::new(0, false, vec![entry]))
        }
        JwtKeySource::JwksFile(path) => {
            let keys = parse_jwks(&read(path)?)
                .map_err(|e| format!("jwks_file {}: {e}", path.display()))?;
            Ok(KeySet::new(0, true, keys))
        }
        _ => Err("jwks_url keys are fetched, not loaded".into()),
    }
}
