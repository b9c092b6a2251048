//! `jwt_policies:` — fully parsed and type-checked into [`JwtPolicySettings`]. Keys are only
//! checked for existence here; loading them (and the first `jwks_url` fetch) happens when
//! [`crate::auth::JwtPolicy::build`] turns the settings into a runtime policy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::Errors;
use super::raw::{defaults, RawJwtKey, RawJwtPolicy};
use super::upstreams::parse_key_source;
use super::validate::{positive, resolve};
use super::KeySource;

const HMAC_ALGORITHMS: [&str; 3] = ["HS256", "HS384", "HS512"];
const PUBLIC_KEY_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
/// Headers a claim must never be forwarded into: they change how the request is framed or
/// routed, the gateway sets them itself (a claim would be overwritten), or they are
/// hop-by-hop and never reach the upstream (the claim would silently go missing).
const RESERVED_HEADERS: [&str; 18] = [
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "upgrade",
    "authorization",
    "cookie",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "keep-alive",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
];

/// Where a JWT policy's verification key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKeySource {
    SecretEnv(String),
    Secret(String),
    SecretFile(PathBuf),
    PublicKeyFile(PathBuf),
    JwksFile(PathBuf),
    JwksUrl(String),
}

/// A validated `jwt_policies.NAME` block.
#[derive(Debug, Clone)]
pub struct JwtPolicySettings {
    pub name: String,
    pub algorithms: Vec<String>,
    pub key: JwtKeySource,
    pub jwks_refresh: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub required_claims: Vec<String>,
    /// Exact-match claims, as JSON scalars.
    pub claims: Vec<(String, serde_json::Value)>,
    /// `Header` or `Cookie` only.
    pub token_sources: Vec<KeySource>,
    /// claim → header sent upstream.
    pub forward_claims: Vec<(String, http::HeaderName)>,
    pub forward_token: bool,
    pub max_token_bytes: u64,
}

/// Validates every policy (used or not). Without errors, the result has one entry per
/// declared policy, in YAML order (so a route's policy index is its position in `raw`).
pub(crate) fn jwt_policies(
    raw: &[(String, Option<RawJwtPolicy>)],
    base_dir: &Path,
    errs: &mut Errors<'_>,
) -> Vec<JwtPolicySettings> {
    raw.iter()
        .filter_map(|(name, policy)| jwt_policy(name, policy.as_ref()?, base_dir, errs))
        .collect()
}

pub(crate) fn jwt_policy(
    name: &str,
    raw: &RawJwtPolicy,
    base_dir: &Path,
    errs: &mut Errors<'_>,
) -> Option<JwtPolicySettings> {
    let path = format!("jwt_policies.{name}");
    let before = errs.count();
    if raw.algorithms.is_empty() {
        errs.add(format!("{path}.algorithms"), "list at least one algorithm");
    }
    for (i, alg) in raw.algorithms.iter().enumerate() {
        if !HMAC_ALGORITHMS.contains(&alg.as_str())
            && !PUBLIC_KEY_ALGORITHMS.contains(&alg.as_str())
        {
            errs.add(
                format!("{path}.algorithms[{i}]"),
                format!("unknown algorithm {alg:?} (HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA)"),
            );
        }
    }
    let key = jwt_key(raw.key.as_ref(), &format!("{path}.key"), base_dir, errs);
    if let Some(key) = &key {
        let secret = matches!(
            key,
            JwtKeySource::Secret(_) | JwtKeySource::SecretEnv(_) | JwtKeySource::SecretFile(_)
        );
        // Mixing would allow algorithm confusion (an HMAC token "signed" with a public key).
        let mismatched: Vec<&str> = raw
            .algorithms
            .iter()
            .map(String::as_str)
            .filter(|a| HMAC_ALGORITHMS.contains(a) != secret)
            .collect();
        if !mismatched.is_empty() {
            errs.add(
                format!("{path}.algorithms"),
                format!(
                    "{} cannot be used with a {} key",
                    mismatched.join(", "),
                    if secret { "shared-secret" } else { "public" }
                ),
            );
        }
    }
    let mut claims = Vec::new();
    for (claim, value) in raw.claims.iter().flatten() {
        let scalar = matches!(
            value,
            serde_yaml::Value::Bool(_)
                | serde_yaml::Value::Number(_)
                | serde_yaml::Value::String(_)
        );
        match serde_json::to_value(value) {
            Ok(json) if scalar => claims.push((claim.clone(), json)),
            _ => errs.add(
                format!("{path}.claims.{claim}"),
                "claim values must be a string, number or boolean",
            ),
        }
    }
    let token_sources = match &raw.token_sources {
        None => defaults::JWT_TOKEN_SOURCES
            .iter()
            .filter_map(|s| parse_key_source(s).ok())
            .collect(),
        Some(list) => token_sources(list, &format!("{path}.token_sources"), errs),
    };
    let mut forward_claims = Vec::new();
    for (claim, header) in raw.forward_claims.iter().flatten() {
        let p = format!("{path}.forward_claims.{claim}");
        match http::HeaderName::from_bytes(header.trim().as_bytes()) {
            Ok(h) if RESERVED_HEADERS.contains(&h.as_str()) => {
                errs.add(p, format!("claims cannot be forwarded in the {h} header"));
            }
            Ok(h) if h.as_str().contains('_') => errs.add(
                p,
                format!(
                    "{header:?}: header names with '_' are never sent upstream (WSGI servers \
                     read '_' and '-' alike); use '-'"
                ),
            ),
            Ok(h) => forward_claims.push((claim.clone(), h)),
            Err(_) => errs.add(p, format!("{header:?} is not a valid header name")),
        }
    }
    let max_token_bytes = raw
        .max_token_bytes
        .map_or(defaults::JWT_MAX_TOKEN_BYTES, |s| s.0);
    if max_token_bytes == 0 {
        errs.add(format!("{path}.max_token_bytes"), "must be greater than 0");
    }
    let settings = JwtPolicySettings {
        name: name.to_string(),
        algorithms: raw.algorithms.clone(),
        key: key?,
        jwks_refresh: positive(
            raw.jwks_refresh,
            defaults::JWKS_REFRESH,
            format!("{path}.jwks_refresh"),
            errs,
        ),
        issuer: raw.issuer.clone(),
        audience: raw.audience.clone(),
        leeway: raw.leeway.map_or(defaults::JWT_LEEWAY, |d| d.0),
        required_claims: raw.required_claims.clone().unwrap_or_else(|| {
            defaults::JWT_REQUIRED_CLAIMS
                .iter()
                .map(|s| s.to_string())
                .collect()
        }),
        claims,
        token_sources,
        forward_claims,
        forward_token: raw.forward_token.unwrap_or(defaults::JWT_FORWARD_TOKEN),
        max_token_bytes,
    };
    (errs.count() == before).then_some(settings)
}

fn jwt_key(
    raw: Option<&RawJwtKey>,
    path: &str,
    base_dir: &Path,
    errs: &mut Errors<'_>,
) -> Option<JwtKeySource> {
    let Some(k) = raw else {
        errs.add(path, "a key source is required (secret_env, secret, secret_file, public_key_file, jwks_file or jwks_url)");
        return None;
    };
    let file = |p: &String| resolve(base_dir, p);
    let mut sources: Vec<(&str, JwtKeySource)> = Vec::new();
    if let Some(v) = &k.secret_env {
        sources.push(("secret_env", JwtKeySource::SecretEnv(v.clone())));
    }
    if let Some(v) = &k.secret {
        sources.push(("secret", JwtKeySource::Secret(v.clone())));
    }
    if let Some(v) = &k.secret_file {
        sources.push(("secret_file", JwtKeySource::SecretFile(file(v))));
    }
    if let Some(v) = &k.public_key_file {
        sources.push(("public_key_file", JwtKeySource::PublicKeyFile(file(v))));
    }
    if let Some(v) = &k.jwks_file {
        sources.push(("jwks_file", JwtKeySource::JwksFile(file(v))));
    }
    if let Some(v) = &k.jwks_url {
        sources.push(("jwks_url", JwtKeySource::JwksUrl(v.clone())));
    }
    if sources.len() != 1 {
        let given: Vec<&str> = sources.iter().map(|(n, _)| *n).collect();
        errs.add(
            path,
            format!(
                "exactly one key source is required, found {}",
                if given.is_empty() {
                    "none".to_string()
                } else {
                    given.join(", ")
                }
            ),
        );
        return None;
    }
    let (field, source) = sources.pop()?;
    let p = format!("{path}.{field}");
    let problem = match &source {
        JwtKeySource::SecretEnv(v) | JwtKeySource::Secret(v) if v.is_empty() => {
            Some("must not be empty".to_string())
        }
        JwtKeySource::SecretFile(f)
        | JwtKeySource::PublicKeyFile(f)
        | JwtKeySource::JwksFile(f)
            if !f.is_file() =>
        {
            Some(format!("file not found: {}", f.display()))
        }
        JwtKeySource::JwksUrl(u) if !u.starts_with("https://") && !u.starts_with("http://") => {
            Some(format!("{u:?} must be an http:// or https:// URL"))
        }
        _ => None,
    };
    match problem {
        Some(msg) => {
            errs.add(p, msg);
            None
        }
        None => Some(source),
    }
}

fn token_sources(list: &[String], path: &str, errs: &mut Errors<'_>) -> Vec<KeySource> {
    if list.is_empty() {
        errs.add(path, "list at least one token source");
    }
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        match parse_key_source(s) {
            Ok(k @ (KeySource::Header(_) | KeySource::Cookie(_))) => out.push(k),
            Ok(_) => errs.add(
                format!("{path}[{i}]"),
                format!("{s:?}: tokens come from header:NAME or cookie:NAME"),
            ),
            Err(msg) => errs.add(format!("{path}[{i}]"), msg),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::lines::LineIndex;
    use super::*;

    /// Parses one policy from YAML and validates it in `dir`.
    fn check(dir: &Path, yaml: &str) -> (Option<JwtPolicySettings>, Vec<String>) {
        let raw: RawJwtPolicy = serde_yaml::from_str(yaml).unwrap();
        let idx = LineIndex::default();
        let mut errs = Errors::new(&idx);
        let out = jwt_policy("p", &raw, dir, &mut errs);
        (out, errs.list.into_iter().map(|e| e.path).collect())
    }

    #[test]
    fn full_policy_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let (p, errs) = check(
            dir.path(),
            "algorithms: [HS256]\nkey: { secret_env: SECRET }\nclaims: { token_type: access, v: 2 }\nforward_claims: { user_id: X-User-Id }\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        let p = p.unwrap();
        assert_eq!(p.key, JwtKeySource::SecretEnv("SECRET".into()));
        assert_eq!(p.leeway, Duration::from_secs(30));
        assert_eq!(p.required_claims, ["exp"]);
        assert_eq!(p.max_token_bytes, 8192);
        assert!(p.forward_token);
        assert_eq!(
            p.claims[0],
            ("token_type".into(), serde_json::json!("access"))
        );
        assert_eq!(p.claims[1], ("v".into(), serde_json::json!(2)));
        assert_eq!(p.forward_claims[0].1.as_str(), "x-user-id");
        assert_eq!(p.token_sources.len(), 1);
    }

    #[test]
    fn public_key_file_resolves_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pub.pem"), "x").unwrap();
        let (p, errs) = check(
            dir.path(),
            "algorithms: [RS256, ES256]\nkey: { public_key_file: pub.pem }\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            p.unwrap().key,
            JwtKeySource::PublicKeyFile(dir.path().join("pub.pem"))
        );
        let (_, errs) = check(
            dir.path(),
            "algorithms: [RS256]\nkey: { jwks_file: nope.json }\n",
        );
        assert_eq!(errs, ["jwt_policies.p.key.jwks_file"]);
    }

    #[test]
    fn policy_rules() {
        let dir = tempfile::tempdir().unwrap();
        let (p, errs) = check(
            dir.path(),
            "algorithms: [HS256, XX1]
key: { secret: a, jwks_url: \"https://x\" }
claims: { roles: [a, b] }
token_sources: [\"header:Authorization\", client_ip, \"query:t\"]
forward_claims: { sub: Host, u: \"bad header\", v: X_User, w: X-Forwarded-For, x: Keep-Alive, y: X-Request-Id }
max_token_bytes: 0
",
        );
        assert!(p.is_none());
        assert_eq!(
            errs,
            [
                "jwt_policies.p.algorithms[1]",
                "jwt_policies.p.key",
                "jwt_policies.p.claims.roles",
                "jwt_policies.p.token_sources[1]",
                "jwt_policies.p.token_sources[2]",
                "jwt_policies.p.forward_claims.sub",
                "jwt_policies.p.forward_claims.u",
                "jwt_policies.p.forward_claims.v",
                "jwt_policies.p.forward_claims.w",
                "jwt_policies.p.forward_claims.x",
                "jwt_policies.p.forward_claims.y",
                "jwt_policies.p.max_token_bytes",
            ]
        );
    }

    #[test]
    fn algorithm_must_suit_key_kind() {
        let dir = tempfile::tempdir().unwrap();
        let (_, errs) = check(
            dir.path(),
            "algorithms: [HS256, RS256]\nkey: { secret: s }\n",
        );
        assert_eq!(errs, ["jwt_policies.p.algorithms"]);
        let (_, errs) = check(
            dir.path(),
            "algorithms: [HS256]\nkey: { jwks_url: \"https://idp/jwks\" }\n",
        );
        assert_eq!(errs, ["jwt_policies.p.algorithms"]);
        let (_, errs) = check(
            dir.path(),
            "algorithms: []\nkey: { jwks_url: \"ftp://x\" }\n",
        );
        assert_eq!(
            errs,
            ["jwt_policies.p.algorithms", "jwt_policies.p.key.jwks_url"]
        );
    }
}
