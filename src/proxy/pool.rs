//! Idle keep-alive connections to one upstream server: a stack per worker thread (LIFO, so
//! the hottest connection is reused and the coldest ones age out), capped at
//! `pool.max_idle_per_server` and `pool.idle_timeout`.
//!
//! The gateway runs one single-threaded runtime per worker thread, so a connection's task,
//! the request using it and the body returning it all run on one thread: each thread gets
//! its own shard, and its mutex is uncontended (it is never held across an `.await`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;

use crate::config::PoolSettings;
use crate::error::GatewayBody;

/// The sending half of one HTTP/1.1 connection to an upstream server.
pub type Sender = SendRequest<GatewayBody>;

/// Shard count for pools built from now on; 0 = one per available core.
static WORKER_COUNT: AtomicUsize = AtomicUsize::new(0);
/// Hands out indices to threads that never called [`set_worker_index`].
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static WORKER_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Names the calling thread's worker index (its pool shard). Optional: a thread that never
/// calls it gets the next free index on first use.
pub fn set_worker_index(index: usize) {
    WORKER_INDEX.with(|w| w.set(Some(index)));
}

/// How many worker threads pools built from now on are sharded for (default: one per core).
pub fn set_worker_count(count: usize) {
    WORKER_COUNT.store(count.max(1), Ordering::Relaxed);
}

fn worker_count() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    match WORKER_COUNT.load(Ordering::Relaxed) {
        0 => *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        n => n,
    }
}

fn worker_index() -> usize {
    WORKER_INDEX.with(|w| match w.get() {
        Some(index) => index,
        None => {
            let index = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
            w.set(Some(index));
            index
        }
    })
}

/// The idle connections of one upstream server, one shard per worker thread.
pub struct ServerPool {
    shards: Box<[Shard]>,
    max_idle: usize,
    idle_timeout: Duration,
}

/// Cache-line aligned so that two workers' shards never share a line.
#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<VecDeque<Idle>>);

/// Oldest at the front, most recently used at the back.
struct Idle {
    sender: Sender,
    since: Instant,
}

impl ServerPool {
    pub fn new(settings: &PoolSettings) -> Self {
        ServerPool {
            shards: (0..worker_count()).map(|_| Shard::default()).collect(),
            max_idle: settings.max_idle_per_server,
            idle_timeout: settings.idle_timeout,
        }
    }

    /// The most recently used idle connection that can take a request now, if any.
    pub fn checkout(&self) -> Option<Sender> {
        if self.max_idle == 0 {
            return None;
        }
        let mut idle = self.lock();
        if idle.is_empty() {
            return None;
        }
        let now = Instant::now();
        // Dropping a sender wakes its connection task; do it after unlocking.
        let mut discarded = Vec::new();
        let found = loop {
            let Some(conn) = idle.pop_back() else {
                break None;
            };
            if now.saturating_duration_since(conn.since) >= self.idle_timeout {
                // Everything below the newest is older still.
                discarded.extend(idle.drain(..));
                break None;
            }
            // Not ready = closed (by the server, or after an error) or still busy.
            if conn.sender.is_ready() {
                break Some(conn.sender);
            }
            discarded.push(conn);
        };
        drop(idle);
        drop(discarded);
        found
    }

    /// Keeps a connection that just finished an exchange and is ready for the next one.
    /// The oldest idle connection makes room when the shard is full; expired ones go first.
    pub fn put(&self, sender: Sender) {
        if self.max_idle == 0 || !sender.is_ready() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        let mut evicted = Vec::new();
        while let Some(oldest) = idle.front() {
            let expired = now.saturating_duration_since(oldest.since) >= self.idle_timeout;
            if !expired && idle.len() < self.max_idle {
                break;
            }
            evicted.extend(idle.pop_front());
        }
        idle.push_back(Idle { sender, since: now });
        drop(idle);
        drop(evicted);
    }

    /// Idle connections in the calling thread's shard.
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// How long a connection may wait in the pool.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    pub fn is_disabled(&self) -> bool {
        self.max_idle == 0
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        let shard = &self.shards[worker_index() % self.shards.len()];
        // A panic while holding the lock cannot leave the deque inconsistent.
        shard.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;

    fn settings(max_idle: usize, idle_timeout: Duration) -> PoolSettings {
        PoolSettings {
            max_idle_per_server: max_idle,
            idle_timeout,
        }
    }

    /// A ready sender over an in-memory pipe (the peer end is returned to keep it open).
    async fn sender() -> (Sender, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(ours))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender.ready().await.unwrap();
        (sender, theirs)
    }

    #[tokio::test]
    async fn idle_cap_evicts_the_oldest() {
        let pool = ServerPool::new(&settings(2, Duration::from_secs(60)));
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (s, peer) = sender().await;
            peers.push(peer);
            pool.put(s);
        }
        assert_eq!(pool.idle_count(), 2);
        assert!(pool.checkout().is_some());
        assert!(pool.checkout().is_some());
        assert!(pool.checkout().is_none());
    }

    #[tokio::test]
    async fn expired_connections_are_not_handed_out() {
        let pool = ServerPool::new(&settings(8, Duration::from_millis(30)));
        let (s, _peer) = sender().await;
        pool.put(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.checkout().is_none());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn closed_connections_are_skipped() {
        let pool = ServerPool::new(&settings(8, Duration::from_secs(60)));
        let (live, _live_peer) = sender().await;
        pool.put(live);
        let (dead, dead_peer) = sender().await;
        pool.put(dead);
        drop(dead_peer);
        // Let the dead connection's task see the EOF and close.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(pool.checkout().is_some());
        assert!(pool.checkout().is_none());
    }

    #[tokio::test]
    async fn zero_max_idle_disables_pooling() {
        let pool = ServerPool::new(&settings(0, Duration::from_secs(60)));
        let (s, _peer) = sender().await;
        pool.put(s);
        assert_eq!(pool.idle_count(), 0);
        assert!(pool.checkout().is_none());
    }
}
