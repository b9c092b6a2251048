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

use super::h1::Conn;
use crate::config::PoolSettings;

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
    conn: Conn,
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
    pub fn checkout(&self) -> Option<Conn> {
        if self.max_idle == 0 {
            return None;
        }
        let mut idle = self.lock();
        if idle.is_empty() {
            return None;
        }
        let now = Instant::now();
        // Closing sockets is a system call each: done after unlocking.
        let mut discarded = Vec::new();
        let found = loop {
            let Some(mut conn) = idle.pop_back() else {
                break None;
            };
            if now.saturating_duration_since(conn.since) >= self.idle_timeout {
                // Everything below the newest is older still.
                discarded.extend(idle.drain(..));
                break None;
            }
            // Closed by the server, or it sent something unasked.
            if conn.conn.is_idle_usable() {
                break Some(conn.conn);
            }
            discarded.push(conn);
        };
        drop(idle);
        drop(discarded);
        found
    }

    /// Keeps a connection that just finished an exchange and is ready for the next one.
    /// The oldest idle connection makes room when the shard is full; expired ones go first.
    pub fn put(&self, conn: Conn) {
        if self.max_idle == 0 {
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
        idle.push_back(Idle { conn, since: now });
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
    use tokio::net::{TcpListener, TcpStream};

    fn settings(max_idle: usize, idle_timeout: Duration) -> PoolSettings {
        PoolSettings {
            max_idle_per_server: max_idle,
            idle_timeout,
        }
    }

    /// A connection to a loopback listener (the accepted end is returned to keep it open).
    async fn conn() -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conn = Conn::connect(addr, Duration::from_secs(1)).await.unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        (conn, peer)
    }

    #[tokio::test]
    async fn idle_cap_evicts_the_oldest() {
        let pool = ServerPool::new(&settings(2, Duration::from_secs(60)));
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (c, peer) = conn().await;
            peers.push(peer);
            pool.put(c);
        }
        assert_eq!(pool.idle_count(), 2);
        assert!(pool.checkout().is_some());
        assert!(pool.checkout().is_some());
        assert!(pool.checkout().is_none());
    }

    #[tokio::test]
    async fn expired_connections_are_not_handed_out() {
        let pool = ServerPool::new(&settings(8, Duration::from_millis(30)));
        let (c, _peer) = conn().await;
        pool.put(c);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.checkout().is_none());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn closed_connections_are_skipped() {
        let pool = ServerPool::new(&settings(8, Duration::from_secs(60)));
        let (live, _live_peer) = conn().await;
        pool.put(live);
        let (dead, dead_peer) = conn().await;
        pool.put(dead);
        drop(dead_peer);
        // Let the reactor see the FIN.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(pool.checkout().is_some());
        assert!(pool.checkout().is_none());
    }

    #[tokio::test]
    async fn connections_with_unasked_bytes_are_skipped() {
        use tokio::io::AsyncWriteExt;
        let pool = ServerPool::new(&settings(8, Duration::from_secs(60)));
        let (chatty, mut peer) = conn().await;
        pool.put(chatty);
        peer.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(pool.checkout().is_none());
    }

    #[tokio::test]
    async fn zero_max_idle_disables_pooling() {
        let pool = ServerPool::new(&settings(0, Duration::from_secs(60)));
        let (c, _peer) = conn().await;
        pool.put(c);
        assert_eq!(pool.idle_count(), 0);
        assert!(pool.checkout().is_none());
    }
}
