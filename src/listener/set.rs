//! The running set of listeners, and how a reload changes it without dropping a connection.
//!
//! A listener whose `name` and `bind` stay the same keeps its socket and accept loops (binding
//! the port again would race the old socket) and only swaps its [`ListenerOptions`]: new TLS
//! handshakes get the new certificates, SNI map, ALPN and minimum version, new connections the
//! new `redirect_https`. A removed listener stops accepting at once; its open connections
//! finish the requests in flight and close, as in a drain. An added listener is bound and gets
//! an accept loop on every worker. A changed `bind` is a removal plus an addition.
//!
//! A rename (a new `name` on the `bind` of a listener the new file no longer names) is kept
//! like an unchanged listener: same socket, same accept loops, and its open connections carry
//! on as if nothing happened; new connections are served and logged under the new name.
//! (Stopping the old listener and starting the new one on a copy of its socket instead would
//! drain, like a removal, the connections accepted a moment before under the old name: those
//! whose request was not read yet were closed unanswered.)
//!
//! Everything that can fail (binding, TLS configuration) happens in [`ListenerSet::prepare`],
//! before anything running changes; [`ListenerSet::commit`] cannot fail.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::Builders;
use super::{tls, Acceptor, ListenerOptions};
use crate::config::Settings;
use crate::handler::State;
use crate::metrics::Metrics;

/// How long a commit waits for a removed listener's accept loops to let go of the socket, so
/// that the port refuses connections once the reload has returned.
const STOP_ACCEPTING_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("listeners[{index}] ({name}): cannot bind {addr}: {source}")]
    Bind {
        index: usize,
        name: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("listeners[{index}] ({name}): TLS configuration: {source}")]
    Tls {
        index: usize,
        name: String,
        source: rustls::Error,
    },
}

/// Why a [`Plan`] could not be made: at least one error, then any others.
#[derive(Debug)]
pub struct PrepareError {
    pub first: ListenerError,
    pub more: Vec<ListenerError>,
}

impl PrepareError {
    pub fn messages(&self) -> Vec<String> {
        std::iter::once(&self.first)
            .chain(&self.more)
            .map(ToString::to_string)
            .collect()
    }
}

/// What every accept loop shares, whichever listener it serves.
pub struct Shared {
    /// Built from `server:`; a commit stores the new settings' builders.
    pub builders: Arc<ArcSwap<Builders>>,
    pub state: Arc<ArcSwap<State>>,
    /// `server.max_connections`, across all listeners.
    pub connections: Arc<Semaphore>,
    /// `server.max_connections_per_ip`, across all listeners.
    pub clients: Arc<super::clients::ClientConnections>,
    /// The gateway's drain token: each listener's own stop token is its child.
    pub shutdown: CancellationToken,
    /// The gateway's tracker: accept loops and connections, awaited by the drain.
    pub tracker: TaskTracker,
    pub metrics: Arc<Metrics>,
}

/// The listeners currently accepting, and the worker runtimes their accept loops run on.
pub struct ListenerSet {
    workers: Vec<Handle>,
    shared: Shared,
    live: Mutex<Vec<Live>>,
    next_id: AtomicU64,
}

/// One running listener.
struct Live {
    id: u64,
    name: String,
    /// As written in the file (port 0 stays 0): what a reload compares.
    bind: SocketAddr,
    /// What the socket actually bound. Each accept loop owns a duplicate of the socket: the
    /// port closes when the last of them stops.
    addr: SocketAddr,
    /// Includes the name, which a rename swaps.
    options: Arc<ArcSwap<ListenerOptions>>,
    /// Stops this listener's accept loops and drains its connections.
    stop: CancellationToken,
    /// This listener's accept loops (one per worker).
    loops: TaskTracker,
}

/// A change of the listener set with every fallible step done: sockets bound, TLS built.
pub struct Plan {
    entries: Vec<Planned>,
    builders: Builders,
}

struct Planned {
    name: String,
    bind: SocketAddr,
    addr: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    redirect_https: Option<u16>,
    source: Source,
}

enum Source {
    /// Same bind, and the same name or a rename: the live listener `id` keeps its socket and
    /// accept loops.
    Keep(u64),
    /// A new accept loop per worker, each on its own duplicate of the socket.
    Start(Vec<std::net::TcpListener>),
}

/// What a commit changed, by listener name.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    pub kept: Vec<String>,
    /// `(old, new)`: kept with their socket and connections under a new name.
    pub renamed: Vec<(String, String)>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl ListenerSet {
    /// An empty set; the first [`ListenerSet::commit`] starts the configured listeners.
    pub fn new(workers: Vec<Handle>, shared: Shared) -> Self {
        ListenerSet {
            workers,
            shared,
            live: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// `(name, bound address)` of every listener now accepting, in the file's order.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.lock()
            .iter()
            .map(|l| (l.name.clone(), l.addr))
            .collect()
    }

    /// Binds the listeners `settings` adds and builds the TLS configuration of every TLS
    /// listener; every error is reported. Nothing running changes, and dropping the plan
    /// closes the sockets it bound.
    pub fn prepare(&self, settings: &Settings) -> Result<Plan, PrepareError> {
        let live = self.lock();
        let mut errors = Vec::new();
        let mut entries = Vec::new();
        let mut kept: Vec<Option<usize>> = settings
            .listeners
            .iter()
            .map(|l| {
                live.iter()
                    .position(|o| o.name == l.name && o.bind == l.bind)
            })
            .collect();
        // A rename: a listener the file no longer names keeps its socket, accept loops and
        // connections under the new name of the one on its fixed address (the port is ours,
        // and binding it again would fail).
        let mut taken: Vec<bool> = (0..live.len()).map(|i| kept.contains(&Some(i))).collect();
        for (l, keep) in settings.listeners.iter().zip(&mut kept) {
            if keep.is_none() && l.bind.port() != 0 {
                *keep = (0..live.len()).find(|&j| !taken[j] && live[j].bind == l.bind);
                if let Some(j) = *keep {
                    taken[j] = true;
                }
            }
        }
        for (index, l) in settings.listeners.iter().enumerate() {
            let tls = match l.tls.as_ref().map(tls::server_config) {
                Some(Ok(config)) => Some(config),
                Some(Err(source)) => {
                    errors.push(ListenerError::Tls {
                        index,
                        name: l.name.clone(),
                        source,
                    });
                    None
                }
                None => None,
            };
            let (addr, source) = match kept[index] {
                Some(i) => (live[i].addr, Source::Keep(live[i].id)),
                None => match super::bind(l.bind).and_then(|s| self.duplicate(s)) {
                    Ok((addr, per_worker)) => (addr, Source::Start(per_worker)),
                    Err(source) => {
                        errors.push(ListenerError::Bind {
                            index,
                            name: l.name.clone(),
                            addr: l.bind,
                            source,
                        });
                        continue;
                    }
                },
            };
            entries.push(Planned {
                name: l.name.clone(),
                bind: l.bind,
                addr,
                tls,
                redirect_https: l.redirect_https,
                source,
            });
        }
        let mut errors = errors.into_iter();
        if let Some(first) = errors.next() {
            return Err(PrepareError {
                first,
                more: errors.collect(),
            });
        }
        // Redirects name the port actually bound (it differs from the file's when that says 0).
        let https_port = entries
            .iter()
            .find(|e| e.tls.is_some())
            .map(|e| e.addr.port());
        for e in &mut entries {
            e.redirect_https = e.redirect_https.and(https_port).or(e.redirect_https);
        }
        Ok(Plan {
            entries,
            builders: Builders::new(&settings.server),
        })
    }

    /// Its bound address, and one duplicate of `socket` per worker's accept loop (`socket`
    /// itself is the last).
    fn duplicate(
        &self,
        socket: std::net::TcpListener,
    ) -> io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
        let addr = socket.local_addr()?;
        let mut per_worker = (1..self.workers.len())
            .map(|_| socket.try_clone())
            .collect::<io::Result<Vec<_>>>()?;
        per_worker.push(socket);
        Ok((addr, per_worker))
    }

    /// Applies `plan`: kept listeners swap their options (a renamed one its name too; its
    /// connections carry on), added ones start accepting on every worker, removed ones stop
    /// (this waits until their sockets are closed, so the port refuses connections once it
    /// returns) and their connections drain.
    pub async fn commit(&self, plan: Plan) -> Changes {
        let mut changes = Changes::default();
        self.shared.builders.store(Arc::new(plan.builders));
        let removed = {
            let mut live = self.lock();
            let mut old = std::mem::take(&mut *live);
            for p in plan.entries {
                let options = ListenerOptions {
                    name: Arc::from(p.name.as_str()),
                    metrics: Arc::new(self.shared.metrics.listener(&p.name, p.tls.is_some())),
                    tls: p.tls,
                    redirect_https: p.redirect_https,
                };
                match p.source {
                    Source::Keep(id) => match old.iter().position(|o| o.id == id) {
                        Some(i) => {
                            let mut l = old.remove(i);
                            l.options.store(Arc::new(options));
                            if l.name == p.name {
                                changes.kept.push(p.name);
                            } else {
                                tracing::info!(listener = %p.name, was = %l.name, addr = %l.addr, "listener renamed; it keeps its socket and connections");
                                let was = std::mem::replace(&mut l.name, p.name.clone());
                                changes.renamed.push((was, p.name));
                            }
                            live.push(l);
                        }
                        // Reloads run one at a time, so the listener prepare saw is there.
                        None => {
                            tracing::error!(listener = %p.name, "listener vanished during reload")
                        }
                    },
                    Source::Start(per_worker) => {
                        tracing::info!(listener = %p.name, addr = %p.addr, tls = options.tls.is_some(), "listening");
                        changes.added.push(p.name.clone());
                        let l = self.start(p.name, p.bind, p.addr, per_worker, options);
                        live.push(l);
                    }
                }
            }
            old
        };
        for l in &removed {
            l.stop.cancel();
            l.loops.close();
        }
        for l in removed {
            if tokio::time::timeout(STOP_ACCEPTING_WAIT, l.loops.wait())
                .await
                .is_err()
            {
                tracing::warn!(listener = %l.name, "accept loops still running after removal");
            }
            tracing::info!(listener = %l.name, addr = %l.addr, "listener removed; its connections drain");
            changes.removed.push(l.name);
        }
        changes
    }

    fn start(
        &self,
        name: String,
        bind: SocketAddr,
        addr: SocketAddr,
        per_worker: Vec<std::net::TcpListener>,
        options: ListenerOptions,
    ) -> Live {
        let options = Arc::new(ArcSwap::from_pointee(options));
        let stop = self.shared.shutdown.child_token();
        let loops = TaskTracker::new();
        for (tcp, worker) in per_worker.into_iter().zip(&self.workers) {
            let acceptor = Acceptor {
                tcp: Some(tcp),
                options: options.clone(),
                builders: self.shared.builders.clone(),
                state: self.shared.state.clone(),
                connections: self.shared.connections.clone(),
                clients: self.shared.clients.clone(),
                stop: stop.clone(),
                tracker: self.shared.tracker.clone(),
            };
            self.shared
                .tracker
                .spawn_on(loops.track_future(acceptor.run()), worker);
        }
        Live {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name,
            bind,
            addr,
            options,
            stop,
            loops,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Live>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
