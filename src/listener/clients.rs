//! `server.max_connections_per_ip`: how many connections each client address holds open
//! (nginx's `limit_conn` on `$binary_remote_addr`). Without it one address can take every
//! `server.max_connections` slot and leave the rest of the world waiting in the backlog.
//!
//! An IPv6 client is counted by its /64: one subscriber usually holds a whole /64 and can
//! pick any address in it. Peers in `server.trusted_proxies` (a load balancer in front,
//! carrying many clients) are never counted. A connection over the limit is closed as soon
//! as it is accepted, before a TLS handshake or a request costs anything: there is no
//! request yet to answer.
//!
//! The table is shared by every listener and worker thread and lives as long as the
//! gateway: connections outlive reloads, and a reload only changes the limit new
//! connections are checked against. It is touched once when a connection opens and once
//! when it closes, never per request; an entry goes when its address's last connection
//! closes, so it holds at most one entry per open connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::observability::Throttle;
use crate::policy::subscriber;

/// Open connections per client address (or IPv6 /64).
#[derive(Debug, Default)]
pub struct ClientConnections {
    open: Mutex<HashMap<IpAddr, u32>>,
    /// The "connection refused" warning, at most once a second.
    pub refusals: Throttle,
}

impl ClientConnections {
    /// Counts a new connection from `ip`, or `None` when `ip` already holds `limit`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<ClientSlot> {
        let key = subscriber(ip);
        let mut open = self.lock();
        let count = open.get(&key).copied().unwrap_or(0);
        if count as usize >= limit {
            return None;
        }
        open.insert(key, count + 1);
        Some(ClientSlot {
            table: Arc::clone(self),
            key,
        })
    }

    /// How many connections `ip`'s address (or /64) holds now.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.lock().get(&subscriber(ip)).map_or(0, |&n| n as usize)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One counted connection: the count goes down when this is dropped (the connection's task
/// ends).
#[derive(Debug)]
pub struct ClientSlot {
    table: Arc<ClientConnections>,
    key: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.table.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn admits_up_to_the_limit_and_frees_on_drop() {
        let table = Arc::new(ClientConnections::default());
        let a = ip("192.0.2.1");
        let first = table.admit(a, 2).expect("first");
        let second = table.admit(a, 2).expect("second");
        assert!(table.admit(a, 2).is_none(), "third over a limit of 2");
        // Another address has its own count.
        let other = table.admit(ip("192.0.2.2"), 2).expect("another address");
        drop(first);
        assert_eq!(table.open(a), 1);
        let again = table.admit(a, 2).expect("a slot came back");
        drop((second, again, other));
        assert_eq!(table.open(a), 0);
        assert!(table.lock().is_empty(), "no entry outlives its connections");
    }

    #[test]
    fn ipv6_is_counted_by_its_64() {
        let table = Arc::new(ClientConnections::default());
        let one = table.admit(ip("2001:db8:1:2::1"), 2).expect("one");
        let two = table
            .admit(ip("2001:db8:1:2:ffff::9"), 2)
            .expect("same /64");
        assert!(
            table
                .admit(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 2)
                .is_none(),
            "a third address in the same /64 is over the limit"
        );
        let elsewhere = table.admit(ip("2001:db8:1:3::1"), 2).expect("next /64");
        assert_eq!(table.open(ip("2001:db8:1:2::77")), 2);
        drop((one, two, elsewhere));
        assert!(table.lock().is_empty());
    }

    #[test]
    fn a_lowered_limit_refuses_new_connections_but_keeps_open_ones() {
        let table = Arc::new(ClientConnections::default());
        let a = ip("198.51.100.7");
        let held: Vec<_> = (0..3).map(|_| table.admit(a, 3).unwrap()).collect();
        assert!(table.admit(a, 1).is_none());
        assert_eq!(table.open(a), 3);
        drop(held);
        assert!(table.admit(a, 1).is_some());
    }
}
