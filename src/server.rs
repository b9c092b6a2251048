//! The running gateway: binds every listener, owns the one cancellation tree and the task
//! tracker, swaps configuration atomically, and drains on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::handler::State;
use crate::listener::conn::Builders;
use crate::listener::{self, tls, Acceptor};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listeners[{index}] ({name}): cannot bind {addr}: {source}")]
    Bind {
        index: usize,
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// JWT policies that could not be built (keys unreadable, first JWKS fetch failed).
    #[error("{}", .0.join("; "))]
    Policies(Vec<String>),
    #[error("listeners[{index}] ({name}): TLS configuration: {source}")]
    Tls {
        index: usize,
        name: String,
        source: rustls::Error,
    },
}

/// A started gateway. Dropping it does not stop it; call [`Gateway::shutdown`].
pub struct Gateway {
    state: Arc<ArcSwap<State>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    listeners: Vec<(String, SocketAddr)>,
    grace: Duration,
}

impl Gateway {
    /// Binds every listener and starts accepting on the current tokio runtime.
    pub async fn start(settings: Settings) -> Result<Gateway, StartError> {
        Self::start_on(settings, &[tokio::runtime::Handle::current()]).await
    }

    /// Binds every listener once and runs one accept loop per listener on each of `workers`
    /// (the binary gives one single-threaded runtime per core, as nginx runs one worker
    /// process per core); connections stay on the worker that accepted them.
    pub async fn start_on(
        settings: Settings,
        workers: &[tokio::runtime::Handle],
    ) -> Result<Gateway, StartError> {
        let settings = Arc::new(settings);
        let shutdown = CancellationToken::new();
        let state = State::build(settings.clone(), &shutdown)
            .await
            .map_err(StartError::Policies)?;
        let state = Arc::new(ArcSwap::from_pointee(state));
        let tracker = TaskTracker::new();
        let connections = Arc::new(Semaphore::new(settings.server.max_connections.max(1)));
        let builders = Arc::new(Builders::new(&settings.server));

        let mut bound = Vec::new();
        for (index, l) in settings.listeners.iter().enumerate() {
            let tcp = listener::bind(l.bind).map_err(|source| StartError::Bind {
                index,
                name: l.name.clone(),
                addr: l.bind,
                source,
            })?;
            let tls = match &l.tls {
                Some(t) => Some(TlsAcceptor::from(tls::server_config(t).map_err(
                    |source| StartError::Tls {
                        index,
                        name: l.name.clone(),
                        source,
                    },
                )?)),
                None => None,
            };
            bound.push((l, tcp, tls));
        }
        // Redirects name the port actually bound (it differs from the file's when that says 0).
        let https_port = bound
            .iter()
            .find(|(_, _, tls)| tls.is_some())
            .and_then(|(_, tcp, _)| tcp.local_addr().ok())
            .map(|a| a.port());

        let mut listeners = Vec::new();
        for (index, (l, tcp, tls)) in bound.into_iter().enumerate() {
            let addr = tcp.local_addr().unwrap_or(l.bind);
            tracing::info!(listener = %l.name, %addr, tls = tls.is_some(), "listening");
            listeners.push((l.name.clone(), addr));
            let name: Arc<str> = Arc::from(l.name.as_str());
            for worker in workers {
                // Each accept loop owns a duplicate of the socket; the kernel closes the
                // listening socket once the last loop drops its copy.
                let tcp = tcp.try_clone().map_err(|source| StartError::Bind {
                    index,
                    name: l.name.clone(),
                    addr,
                    source,
                })?;
                let acceptor = Acceptor {
                    name: name.clone(),
                    tcp: Some(tcp),
                    tls: tls.clone(),
                    redirect_https: l.redirect_https.and(https_port).or(l.redirect_https),
                    builders: builders.clone(),
                    state: state.clone(),
                    connections: connections.clone(),
                    shutdown: shutdown.clone(),
                    tracker: tracker.clone(),
                };
                tracker.spawn_on(acceptor.run(), worker);
            }
        }
        Ok(Gateway {
            state,
            shutdown,
            tracker,
            listeners,
            grace: settings.server.shutdown_grace,
        })
    }

    /// The address a listener actually bound (useful with port 0).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(name, _)| name == listener)
            .map(|(_, addr)| *addr)
    }

    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    /// Swaps in a new configuration for routes, upstreams and policies. In-flight requests
    /// finish on the state they started with. When the new JWT policies cannot be built the
    /// running state is kept and the errors (naming `jwt_policies.NAME...`) are returned.
    pub async fn reload(&self, settings: Settings) -> Result<(), Vec<String>> {
        let state = State::build(Arc::new(settings), &self.shutdown).await?;
        let old = self.state.swap(Arc::new(state));
        old.retire();
        Ok(())
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.state.load().settings.clone()
    }

    /// The running state (routes, upstreams, JWT policies and their counters).
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// Stops accepting (listeners close at once) and starts draining connections.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for in-flight connections to finish, at most `server.shutdown_grace`.
    /// Returns false when the grace period ran out.
    pub async fn drained(&self) -> bool {
        self.tracker.close();
        tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_ok()
    }
}
