//! One disk lookup per path when many requests want the same uncached file at once (a
//! deploy, a restart under load): the first request looks, the others wait for it and then
//! take the answer from the cache, instead of each reading the file on a blocking thread
//! (64 concurrent clients made 23 reads of one file before this).
//!
//! Bounded by the requests in flight: a path's gate lives only while its first lookup runs,
//! and is removed even if that request is cancelled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OwnedMutexGuard;

/// The paths whose first lookup is running.
#[derive(Debug, Default)]
pub struct FirstLoads {
    running: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// What a request should do about an uncached path.
pub enum Turn<'a> {
    /// Look it up; others wait until this is dropped.
    Lead(Leading<'a>),
    /// Another request looked it up meanwhile: check the cache again (and look it up
    /// yourself if the answer could not be cached).
    Followed,
}

/// Held by the request doing a path's first lookup.
pub struct Leading<'a> {
    loads: &'a FirstLoads,
    key: String,
    _gate: OwnedMutexGuard<()>,
}

impl FirstLoads {
    pub async fn enter(&self, key: &str) -> Turn<'_> {
        let gate = {
            let mut running = self.lock();
            match running.get(key) {
                Some(gate) => Arc::clone(gate),
                None => {
                    let gate = Arc::new(tokio::sync::Mutex::new(()));
                    let Ok(held) = Arc::clone(&gate).try_lock_owned() else {
                        unreachable!("a new gate is unlocked");
                    };
                    running.insert(key.to_owned(), gate);
                    return Turn::Lead(Leading {
                        loads: self,
                        key: key.to_owned(),
                        _gate: held,
                    });
                }
            }
        };
        // Released when the leader is done (or gone).
        drop(gate.lock().await);
        Turn::Followed
    }

    /// Paths whose first lookup is running.
    #[cfg(test)]
    pub fn running(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        // Before the gate opens (fields drop after this): a request arriving now leads
        // a lookup of its own rather than waiting on a finished one.
        self.loads.lock().remove(&self.key);
    }
}
