//! [`JwtPolicy`]: one `jwt_policies` entry at run time. `verify` runs the steps in the order
//! that makes attacks cheap to refuse: find the token → size limit (before any decoding) →
//! shape → cache → header (`crit`, `alg` in the policy's list) → key by `kid` and key type →
//! signature → payload → claims. `apply` then rewrites the headers the upstream sees.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Algorithm;

use super::cache::{Lookup, TokenCache, CAPACITY};
use super::claims::ClaimRules;
use super::jwks::Remote;
use super::keys::{load_local, KeySet};
use super::reasons::{
    BAD_SIGNATURE, EXPIRED, JWKS_UNAVAILABLE, MALFORMED, TOO_LARGE, UNKNOWN_KID, WRONG_ALGORITHM,
};
use super::{extract, token, FirstFetch, Rejection, RejectionCounts, Verified};
use crate::config::jwt_policy::{JwtKeySource, JwtPolicySettings};
use crate::config::KeySource;

mod refresh;

use refresh::keys_without_fetch;

const TOO_LARGE_TOKEN: Rejection = Rejection::new(TOO_LARGE, "token too large");
const JWKS_UNAVAILABLE_NOW: Rejection = Rejection::new(
    JWKS_UNAVAILABLE,
    "no keys yet: the JWKS could not be fetched",
);

/// Policies are shared across connection tasks.
const _: fn() = || {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<JwtPolicy>();
};

/// A verification policy, shared by every route that names it.
pub struct JwtPolicy {
    name: String,
    algorithms: Vec<Algorithm>,
    max_token_bytes: usize,
    sources: Vec<KeySource>,
    forward_claims: Vec<(String, HeaderName)>,
    forward_token: bool,
    rules: ClaimRules,
    keys: ArcSwap<KeySet>,
    remote: Option<Remote>,
    cache: TokenCache,
    rejections: RejectionCounts,
}

impl fmt::Debug for JwtPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtPolicy")
            .field("name", &self.name)
            .field("algorithms", &self.algorithms)
            .field("keys", &self.keys.load().keys.len())
            .field("jwks_url", &self.remote.as_ref().map(|r| r.url.as_str()))
            .finish_non_exhaustive()
    }
}

/// Seconds since the epoch, floored (PyJWT compares against the fractional time; for integer
/// `exp`/`nbf`/`iat` and whole-second leeway the floor gives the same answers).
fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl JwtPolicy {
    /// Loads the keys (the first `jwks_url` fetch included; a failed fetch is an error).
    /// Errors are whole sentences that name the policy and the key source.
    pub async fn build(settings: &JwtPolicySettings) -> Result<Arc<JwtPolicy>, String> {
        Self::build_with(settings, FirstFetch::Required).await
    }

    /// [`JwtPolicy::build`], with `first_fetch` deciding what a failed first `jwks_url` fetch
    /// means (an error, no keys yet, or the running policy's keys).
    pub async fn build_with(
        settings: &JwtPolicySettings,
        first_fetch: FirstFetch<'_>,
    ) -> Result<Arc<JwtPolicy>, String> {
        let path = format!("jwt_policies.{}", settings.name);
        let mut algorithms = Vec::new();
        for name in &settings.algorithms {
            let alg = Algorithm::from_str(name)
                .map_err(|_| format!("{path}.algorithms: unknown algorithm {name:?}"))?;
            algorithms.push(alg);
        }
        let (keys, remote) = match &settings.key {
            JwtKeySource::JwksUrl(url) => {
                let remote = Remote::new(url, settings.jwks_refresh)
                    .map_err(|e| format!("{path}.key.{e}"))?;
                let fetched = match first_fetch {
                    FirstFetch::Skip => Ok(Arc::new(KeySet::unloaded())),
                    _ => remote
                        .fetch()
                        .await
                        .map(|k| Arc::new(KeySet::new(0, true, k))),
                };
                let keys = match fetched {
                    Ok(keys) => keys,
                    Err(e) => {
                        remote.record_failure();
                        keys_without_fetch(&path, url, &e, first_fetch)?
                    }
                };
                (keys, Some(remote))
            }
            local => (
                Arc::new(load_local(local).map_err(|e| format!("{path}.key: {e}"))?),
                None,
            ),
        };
        // A key set not fetched yet is checked when it is (see `refresh_now`).
        if keys.loaded && !keys.serves_any(&algorithms) {
            return Err(format!(
                "{path}.algorithms: no key of this policy can verify {}",
                settings.algorithms.join(", ")
            ));
        }
        Ok(Arc::new(JwtPolicy {
            name: settings.name.clone(),
            algorithms,
            max_token_bytes: usize::try_from(settings.max_token_bytes).unwrap_or(usize::MAX),
            sources: settings.token_sources.clone(),
            forward_claims: settings.forward_claims.clone(),
            forward_token: settings.forward_token,
            rules: ClaimRules::new(settings),
            keys: ArcSwap::new(keys),
            remote,
            cache: TokenCache::new(CAPACITY),
            rejections: RejectionCounts::default(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `jwks_url` this policy fetches its keys from, if any.
    pub fn jwks_url(&self) -> Option<&str> {
        self.remote.as_ref().map(|r| r.url.as_str())
    }

    /// False while a `jwks_url` policy has never had a key set (it started while its JWKS
    /// was unreachable): its routes answer 503 `jwks_unavailable` meanwhile.
    pub fn keys_loaded(&self) -> bool {
        self.keys.load().loaded
    }

    /// Finds the request's token and verifies it. Never blocks: an unknown `kid` on a
    /// `jwks_url` policy wakes the refresher for an early refetch and is refused this time
    /// (use [`JwtPolicy::verify_async`] to wait for that refetch instead).
    pub fn verify(&self, headers: &HeaderMap) -> Result<Verified, Rejection> {
        let result = self.verify_at(headers, now_secs());
        if let Err(r) = &result {
            if r.reason == UNKNOWN_KID {
                if let Some(remote) = &self.remote {
                    remote.wake.notify_one();
                }
            }
            self.rejected(r);
        }
        result
    }

    /// Logs (without the token) and counts a final rejection.
    fn rejected(&self, r: &Rejection) {
        self.rejections.record(r.reason);
        tracing::debug!(request_id = %crate::observability::CurrentRequestId, policy = %self.name, reason = r.reason, "jwt rejected: {}", r.description);
    }

    /// Requests this policy refused so far, by reason.
    pub fn rejections(&self) -> &RejectionCounts {
        &self.rejections
    }

    /// Like [`JwtPolicy::verify`], but an unknown `kid` on a `jwks_url` policy first waits for
    /// the (rate-limited, shared) early refetch, so a key rotation costs no failed request.
    pub async fn verify_async(&self, headers: &HeaderMap) -> Result<Verified, Rejection> {
        match self.verify_at(headers, now_secs()) {
            Err(r) if r.reason == UNKNOWN_KID && self.remote.is_some() => {
                self.early_refetch().await;
                self.verify(headers)
            }
            Err(r) => {
                self.rejected(&r);
                Err(r)
            }
            ok => ok,
        }
    }

    /// The whole check at time `now` (seconds since the epoch).
    pub(crate) fn verify_at(&self, headers: &HeaderMap, now: i64) -> Result<Verified, Rejection> {
        let raw = extract::find_token(&self.sources, headers)?;
        self.verify_token(raw, now)
    }

    pub(crate) fn verify_token(&self, raw: &str, now: i64) -> Result<Verified, Rejection> {
        if raw.len() > self.max_token_bytes {
            return Err(TOO_LARGE_TOKEN);
        }
        let segments = token::split(raw)?;
        let keys = self.keys.load();
        let cache_key = TokenCache::key(raw);
        match self
            .cache
            .get(&cache_key, keys.generation, now, self.rules.leeway)
        {
            Lookup::Hit(claims) => return Ok(Verified { claims }),
            Lookup::Expired => return Err(Rejection::new(EXPIRED, "token expired")),
            Lookup::Miss => {}
        }
        let header = token::parse_header(segments.header)?;
        let alg = Algorithm::from_str(&header.alg)
            .ok()
            .filter(|a| self.algorithms.contains(a))
            .ok_or(Rejection::new(WRONG_ALGORITHM, "algorithm not allowed"))?;
        if !keys.loaded {
            // Everything the token could be refused for without a key was checked above.
            return Err(JWKS_UNAVAILABLE_NOW);
        }
        let mut verified = false;
        for entry in keys.candidates(alg, header.kid.as_deref())? {
            let input = segments.signing_input.as_bytes();
            match jsonwebtoken::crypto::verify(segments.signature, input, &entry.key, alg) {
                Ok(true) => {
                    verified = true;
                    break;
                }
                Ok(false) => {}
                Err(e) if matches!(e.kind(), ErrorKind::Base64(_)) => {
                    return Err(Rejection::new(
                        MALFORMED,
                        "token signature is not base64url",
                    ));
                }
                Err(e) => {
                    tracing::warn!(request_id = %crate::observability::CurrentRequestId, policy = %self.name, "jwt key unusable: {e}")
                }
            }
        }
        if !verified {
            return Err(Rejection::new(BAD_SIGNATURE, "invalid signature"));
        }
        let claims = token::parse_payload(segments.payload)?;
        let exp = self.rules.check(&claims, now)?;
        let claims = Arc::new(claims);
        self.cache
            .insert(cache_key, claims.clone(), exp, keys.generation);
        Ok(Verified { claims })
    }

    /// Sets the forwarded-claim headers (after removing every client copy) and, with
    /// `forward_token: false`, removes the token from every configured source: the
    /// `Authorization` (or other) header, and the token cookie from `Cookie` (other cookies
    /// are kept).
    pub fn apply(&self, verified: &Verified, headers: &mut HeaderMap) {
        extract::keep_one_credential(&self.sources, headers);
        extract::set_forward_headers(&self.forward_claims, &verified.claims, headers);
        if !self.forward_token {
            extract::strip_token_sources(&self.sources, headers);
        }
    }

    /// The headers this policy sets upstream from claims.
    pub fn forwarded_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.forward_claims.iter().map(|(_, h)| h)
    }

    /// Failed JWKS fetches since start (0 for other key sources).
    pub fn jwks_failures(&self) -> u64 {
        self.remote.as_ref().map_or(0, Remote::failures)
    }

    /// JWKS fetch attempts since start, the first included (0 for other key sources).
    pub fn jwks_fetches(&self) -> u64 {
        self.remote.as_ref().map_or(0, Remote::fetches)
    }

    /// Verified tokens served from the cache so far.
    pub fn cache_hits(&self) -> u64 {
        self.cache.hits()
    }
}
