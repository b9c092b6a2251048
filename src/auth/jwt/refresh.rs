//! The key set of a `jwks_url` policy over time: what a failed first fetch means (see
//! [`FirstFetch`]), the background refresher (every `jwks_refresh`, sooner while the policy
//! has no keys yet), and early refetches for unknown `kid`s.

use std::sync::{Arc, Weak};

use tokio_util::sync::CancellationToken;

use super::JwtPolicy;
use crate::auth::jwks::{RETRY_FIRST, RETRY_MAX};
use crate::auth::keys::KeySet;
use crate::auth::FirstFetch;

impl JwtPolicy {
    /// Background refresh of a `jwks_url` key set every `jwks_refresh`, plus early refetches
    /// requested by [`JwtPolicy::verify`]. While the policy has never had keys (it started
    /// while the JWKS was unreachable) it retries sooner: after [`RETRY_FIRST`], doubling up
    /// to [`RETRY_MAX`] (never later than `jwks_refresh`). Ends with `shutdown`, or at its
    /// next wake-up after the last other `Arc` of the policy is dropped (a reload replaced
    /// it). No-op for other key sources.
    pub fn spawn_refresh(self: &Arc<Self>, shutdown: CancellationToken) {
        let Some(remote) = &self.remote else {
            return;
        };
        let every = remote.refresh_every;
        let weak: Weak<JwtPolicy> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut retry = RETRY_FIRST;
            // The next periodic fetch is due at a fixed time: early refetches (woken by
            // unknown `kid`s, which any client can send) do not push it back, so a flood of
            // them cannot starve the periodic refresh.
            let mut due: Option<tokio::time::Instant> = None;
            loop {
                let early = {
                    let Some(policy) = weak.upgrade() else { break };
                    let Some(remote) = &policy.remote else { break };
                    let at = *due.get_or_insert_with(|| {
                        let wait = if policy.keys_loaded() {
                            every
                        } else {
                            let wait = retry.min(every);
                            retry = (retry * 2).min(RETRY_MAX);
                            wait
                        };
                        tokio::time::Instant::now() + wait
                    });
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep_until(at) => false,
                        _ = remote.wake.notified() => true,
                    }
                };
                if !early {
                    due = None;
                }
                let Some(policy) = weak.upgrade() else { break };
                if early {
                    policy.early_refetch().await;
                } else {
                    let Some(remote) = &policy.remote else { break };
                    let _guard = remote.fetch_lock.lock().await;
                    policy.refresh_now().await;
                }
            }
        });
    }

    /// An early refetch if the rate limit allows one; otherwise waits for any fetch in flight.
    pub(super) async fn early_refetch(&self) {
        let Some(remote) = &self.remote else {
            return;
        };
        let claimed = remote.claim_early_slot();
        let _guard = remote.fetch_lock.lock().await;
        if claimed {
            self.refresh_now().await;
        }
    }

    /// Fetches the key set and swaps it in if it changed; a failure keeps the current keys.
    /// Callers hold `fetch_lock`.
    async fn refresh_now(&self) {
        let Some(remote) = &self.remote else {
            return;
        };
        match remote.fetch().await {
            Ok(keys) => {
                let current = self.keys.load();
                let next = KeySet::new(current.generation + 1, true, keys);
                if next.same_keys(&current) {
                    return;
                }
                if !next.serves_any(&self.algorithms) {
                    remote.record_failure();
                    tracing::warn!(policy = %self.name, url = %remote.url,
                        "JWKS refresh has no key for the policy's algorithms; keeping the previous keys");
                    return;
                }
                if current.loaded {
                    tracing::info!(policy = %self.name, url = %remote.url, keys = next.keys.len(), "JWKS keys changed");
                } else {
                    tracing::info!(policy = %self.name, url = %remote.url, keys = next.keys.len(), "JWKS keys loaded: the policy's routes verify tokens again");
                }
                self.keys.store(Arc::new(next));
                self.cache.clear();
            }
            Err(e) => {
                remote.record_failure();
                if self.keys_loaded() {
                    tracing::warn!(policy = %self.name, "JWKS refresh failed, keeping the previous keys: {e}");
                } else {
                    tracing::warn!(policy = %self.name, "JWKS fetch failed, still no keys (its routes answer 503): {e}");
                }
            }
        }
    }
}

/// The key set of a `jwks_url` policy whose first fetch failed with `error`, as `first_fetch`
/// decides: an error, no keys yet, or the keys of a running policy with the same URL.
pub(super) fn keys_without_fetch(
    path: &str,
    url: &str,
    error: &str,
    first_fetch: FirstFetch<'_>,
) -> Result<Arc<KeySet>, String> {
    match first_fetch {
        FirstFetch::Required | FirstFetch::Skip => Err(format!("{path}.key.{error}")),
        FirstFetch::RetryLater => {
            tracing::warn!(
                "{path}: starting without keys, its routes answer 503 until the JWKS can be \
                 fetched (retrying in {RETRY_FIRST:?}, backing off to {RETRY_MAX:?}): {error}"
            );
            Ok(Arc::new(KeySet::unloaded()))
        }
        FirstFetch::KeepRunning(running) => {
            // The keys depend on nothing but the URL; of several running policies on it, the
            // one with the newest keys.
            let carried = running
                .iter()
                .filter(|p| p.jwks_url() == Some(url))
                .map(|p| p.keys.load_full())
                .max_by_key(|k| (k.loaded, k.generation));
            let Some(keys) = carried else {
                return Err(format!(
                    "{path}.key.{error} (no running policy uses this jwks_url, so there are no \
                     keys to keep)"
                ));
            };
            tracing::warn!(
                "{path}: keeping the running policy's {} for {url}: {error}",
                if keys.loaded {
                    "keys"
                } else {
                    "state (no keys yet)"
                }
            );
            Ok(keys)
        }
    }
}
