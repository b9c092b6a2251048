//! The verified-token cache: bounded, keyed by the SHA-256 of the whole token, holding only
//! successes. An entry is good until the token's `exp` (re-checked on every hit, with the
//! policy's leeway) and only for the key-set generation that verified it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_lc_rs::digest;
use serde_json::{Map, Value};

use super::claims::is_expired;

/// Entries kept per policy.
pub(crate) const CAPACITY: usize = 10_000;

pub(crate) type CacheKey = [u8; 32];

#[derive(Clone)]
struct Entry {
    claims: Arc<Map<String, Value>>,
    exp: Option<i64>,
    generation: u64,
}

/// What a lookup found.
pub(crate) enum Lookup {
    Hit(Arc<Map<String, Value>>),
    /// Was valid, is now past `exp`.
    Expired,
    Miss,
}

pub(crate) struct TokenCache {
    inner: quick_cache::sync::Cache<CacheKey, Entry>,
    /// Lookups answered by an entry (hits and expiries).
    hits: AtomicU64,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        TokenCache {
            inner: quick_cache::sync::Cache::new(capacity),
            hits: AtomicU64::new(0),
        }
    }

    pub(crate) fn key(token: &str) -> CacheKey {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
        out
    }

    pub(crate) fn get(&self, key: &CacheKey, generation: u64, now: i64, leeway: i64) -> Lookup {
        let Some(entry) = self.inner.get(key) else {
            return Lookup::Miss;
        };
        if entry.generation != generation {
            self.inner.remove(key);
            return Lookup::Miss;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        if entry.exp.is_some_and(|exp| is_expired(exp, now, leeway)) {
            self.inner.remove(key);
            return Lookup::Expired;
        }
        Lookup::Hit(entry.claims)
    }

    pub(crate) fn insert(
        &self,
        key: CacheKey,
        claims: Arc<Map<String, Value>>,
        exp: Option<i64>,
        generation: u64,
    ) {
        self.inner.insert(
            key,
            Entry {
                claims,
                exp,
                generation,
            },
        );
    }

    pub(crate) fn clear(&self) {
        self.inner.clear();
    }

    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_follow_the_key_generation() {
        let cache = TokenCache::new(4);
        let claims = Arc::new(Map::new());
        let k = TokenCache::key("a.b.c");
        assert_ne!(k, TokenCache::key("a.b.d"));
        cache.insert(k, claims.clone(), Some(100), 1);
        assert!(matches!(cache.get(&k, 1, 129, 30), Lookup::Hit(_)));
        assert!(matches!(cache.get(&k, 1, 130, 30), Lookup::Expired));
        assert!(
            matches!(cache.get(&k, 1, 0, 30), Lookup::Miss),
            "expired entries are dropped"
        );
        cache.insert(k, claims.clone(), None, 1);
        assert!(matches!(cache.get(&k, 1, i64::MAX, 30), Lookup::Hit(_)));
        assert!(matches!(cache.get(&k, 2, 0, 30), Lookup::Miss));
        assert_eq!(cache.len(), 0);
        for i in 0..100 {
            cache.insert(TokenCache::key(&i.to_string()), claims.clone(), None, 1);
        }
        assert!(cache.len() <= 4, "bounded");
    }
}
