//! JWT verification for routes that name a `jwt:` policy: simplejwt-compatible claim rules,
//! static keys or JWKS (file or URL, refreshed), a verified-token cache, and token minting.
//!
//! The pieces, in the order a request meets them:
//!
//! 1. [`extract`] — find the token (`Authorization: Bearer`, cookies; never the query string).
//! 2. [`token`]   — strict shape, header and payload parsing (no duplicate keys, no `crit`).
//! 3. [`cache`]   — a hit skips everything below except the `exp` check.
//! 4. [`keys`] / [`jwks`] — pick the key by `kid` and by the algorithm's key type.
//! 5. [`claims`]  — `exp`/`nbf`/`iat`/`iss`/`aud`/required/exact claims, as simplejwt does.
//! 6. [`jwt`]     — [`JwtPolicy`] ties them together; `apply` rewrites the upstream headers.
//!
//! [`mint`] signs tokens for `gateway token`; [`build_all`] builds every configured policy
//! (the gateway's start and reload, and `gateway check`). Each policy counts its rejections
//! by reason ([`RejectionCounts`]).
//!
//! We never use `jsonwebtoken::Validation`/`decode`: its defaults (60 s leeway, `exp < now -
//! leeway`, `aud` checked whenever present, `nbf` skipped, `crit` ignored) are not ours, so the
//! crate is used only for signature checks ([`jsonwebtoken::crypto::verify`]) and key parsing.

mod cache;
mod claims;
mod extract;
mod jwks;
mod jwt;
mod keys;
mod mint;
mod stats;
mod token;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_jwks;
#[cfg(test)]
mod tests_policy;

use std::fmt;
use std::sync::Arc;

pub use jwt::JwtPolicy;
pub use mint::mint;
pub use stats::RejectionCounts;

/// The first fetch of a `jwt_policies.NAME.key.jwks_url` policy: whether it must succeed.
#[derive(Clone, Copy)]
pub enum FirstFetch<'a> {
    /// A failed fetch is an error naming the policy and the URL: `gateway check` (like
    /// `nginx -t`, it reports what would not work now).
    Required,
    /// A failed fetch starts the policy without keys: its routes answer 503
    /// `jwks_unavailable` (never 401 to a token no key could be checked against) and the
    /// refresher retries within seconds, with backoff. The gateway's start: an
    /// identity-provider outage must not keep every other route down (Envoy also starts and
    /// fetches asynchronously).
    RetryLater,
    /// A reload: after a failed fetch, a policy whose `jwks_url` a running policy also uses
    /// takes over that policy's current keys (with a warning), as the running refresher keeps
    /// them; a `jwks_url` no running policy uses is an error, so a mistyped URL is reported
    /// and the running config kept.
    KeepRunning(&'a [Arc<JwtPolicy>]),
    /// No fetch at all (`gateway check --no-jwks-fetch`): the URL is only parsed.
    Skip,
}

/// Builds every policy, in order (one per `Settings::jwt_policies` entry; `jwks_url` policies
/// fetch concurrently). Errors name `jwt_policies.NAME...`; all of them are reported.
/// `first_fetch` decides what an unreachable `jwks_url` means (see [`FirstFetch`]).
pub async fn build_all(
    settings: &[crate::config::JwtPolicySettings],
    first_fetch: FirstFetch<'_>,
) -> Result<Vec<Arc<JwtPolicy>>, Vec<String>> {
    let results = futures_util::future::join_all(
        settings
            .iter()
            .map(|s| JwtPolicy::build_with(s, first_fetch)),
    )
    .await;
    let mut policies = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok(p) => policies.push(p),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(errors)
    }
}

/// A successfully verified token: its claims, shared with the cache.
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Arc<serde_json::Map<String, serde_json::Value>>,
}

/// Why a request's token was refused. `reason` is the metric label, `description` goes into
/// `error_description` (short, plain words, never the token itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub description: &'static str,
}

impl Rejection {
    pub(crate) const fn new(reason: &'static str, description: &'static str) -> Self {
        Rejection {
            reason,
            description,
        }
    }

    /// No token at all: answered with a plain `Bearer realm="gateway"` challenge.
    pub fn is_missing(&self) -> bool {
        self.reason == reasons::MISSING
    }

    /// Not the token's fault: the policy has no keys yet (its `jwks_url` was never fetched).
    /// Answered 503 `jwks_unavailable`, not 401.
    pub fn is_unavailable(&self) -> bool {
        self.reason == reasons::JWKS_UNAVAILABLE
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.description)
    }
}

/// Every `reason` label a [`Rejection`] can carry (the metric's label values).
pub mod reasons {
    pub const MISSING: &str = "missing";
    pub const MALFORMED: &str = "malformed";
    pub const TOO_LARGE: &str = "too_large";
    pub const CRIT: &str = "crit";
    pub const WRONG_ALGORITHM: &str = "wrong_algorithm";
    pub const UNKNOWN_KID: &str = "unknown_kid";
    /// No `kid` in the token and several keys of the set could have signed it.
    pub const MISSING_KID: &str = "missing_kid";
    pub const BAD_SIGNATURE: &str = "bad_signature";
    pub const EXPIRED: &str = "expired";
    /// `nbf` or `iat` later than now + leeway.
    pub const NOT_YET_VALID: &str = "not_yet_valid";
    pub const WRONG_ISSUER: &str = "wrong_issuer";
    pub const WRONG_AUDIENCE: &str = "wrong_audience";
    /// A `required_claims` entry is absent (or null).
    pub const MISSING_CLAIM: &str = "missing_claim";
    /// A `claims:` exact match failed (e.g. a refresh token on an access route).
    pub const WRONG_CLAIM: &str = "wrong_claim";
    /// The policy's `jwks_url` was never fetched (it started while the JWKS was unreachable):
    /// no key to check the token against, answered 503.
    pub const JWKS_UNAVAILABLE: &str = "jwks_unavailable";

    /// All of them, for pre-registering metric series.
    pub const ALL: [&str; 15] = [
        MISSING,
        MALFORMED,
        TOO_LARGE,
        CRIT,
        WRONG_ALGORITHM,
        UNKNOWN_KID,
        MISSING_KID,
        BAD_SIGNATURE,
        EXPIRED,
        NOT_YET_VALID,
        WRONG_ISSUER,
        WRONG_AUDIENCE,
        MISSING_CLAIM,
        WRONG_CLAIM,
        JWKS_UNAVAILABLE,
    ];
}
