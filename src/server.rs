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

use crate::admin::AdminContext;
use crate::config::Settings;
use crate::handler::State;
use crate::listener::conn::Builders;
use crate::listener::{self, tls, Acceptor};
use crate::metrics::Metrics;
use crate::reload::Reloader;

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
    #[error("admin.bind: cannot bind {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listeners[{index}] ({name}): TLS configuration: {source}")]
    Tls {
        index: usize,
        name: String,
        source: rustls::Error,
    },
}

/// How long a scrape in progress may take to finish once the drain is over.
const ADMIN_STOP_GRACE: Duration = Duration::from_secs(1);

/// A started gateway. Dropping it does not stop it; call [`Gateway::shutdown`].
pub struct Gateway {
    state: Arc<ArcSwap<State>>,
    /// Cancelled when draining starts: listeners close, connections finish their requests.
    shutdown: CancellationToken,
    /// The root of the cancellation tree (`shutdown` is its child): cancelled once the drain
    /// is over, which also stops the admin listener.
    stopped: CancellationToken,
    tracker: TaskTracker,
    /// The admin listener's tasks: outside `tracker`, since they outlive the drain.
    admin_tasks: TaskTracker,
    listeners: Vec<(String, SocketAddr)>,
    admin_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
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
        let stopped = CancellationToken::new();
        let shutdown = stopped.child_token();
        let metrics = Arc::new(Metrics::new());
        let state = State::build(settings.clone(), &shutdown, &metrics)
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
        let admin_tcp = match &settings.admin {
            Some(admin) => {
                Some(
                    listener::bind(admin.bind).map_err(|source| StartError::AdminBind {
                        addr: admin.bind,
                        source,
                    })?,
                )
            }
            None => None,
        };
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
            let listener_metrics = Arc::new(metrics.listener(&l.name, tls.is_some()));
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
                    metrics: listener_metrics.clone(),
                };
                tracker.spawn_on(acceptor.run(), worker);
            }
        }
        let reloader = Arc::new(Reloader::new(
            state.clone(),
            shutdown.clone(),
            metrics.clone(),
        ));
        let admin_tasks = TaskTracker::new();
        let admin_addr = match (admin_tcp, &settings.admin) {
            (Some(tcp), Some(admin)) => {
                let ctx = AdminContext {
                    metrics: metrics.clone(),
                    state: state.clone(),
                    reloader: reloader.clone(),
                    draining: shutdown.clone(),
                };
                let addr = crate::admin::spawn(tcp, ctx, stopped.clone(), &admin_tasks).map_err(
                    |source| {
                        // The accept loops already run: stop them with the failed start.
                        stopped.cancel();
                        StartError::AdminBind {
                            addr: admin.bind,
                            source,
                        }
                    },
                )?;
                Some(addr)
            }
            _ => None,
        };
        Ok(Gateway {
            state,
            shutdown,
            stopped,
            tracker,
            admin_tasks,
            listeners,
            admin_addr,
            metrics,
            reloader,
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

    /// The admin listener's bound address, when `admin:` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The registry behind `/metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Swaps in a new configuration for routes, upstreams and policies. In-flight requests
    /// finish on the state they started with. When the new JWT policies cannot be built the
    /// running state is kept and the errors (naming `jwt_policies.NAME...`) are returned.
    /// Counted in `gateway_config_reloads_total`.
    pub async fn reload(&self, settings: Settings) -> Result<(), Vec<String>> {
        self.reloader.apply(settings).await
    }

    /// The file [`Gateway::reload_from_file`] re-reads (default: the file the running
    /// settings came from).
    pub fn set_config_path(&self, path: std::path::PathBuf) {
        self.reloader.set_config_path(path);
    }

    /// Re-reads and validates the config file and swaps it in: SIGHUP and `POST /reload`.
    /// A bad file is logged with all its errors (returned too) and the running config kept.
    pub async fn reload_from_file(&self) -> Result<(), Vec<String>> {
        self.reloader.reload_file().await
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
        let drained = tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_ok();
        // The admin listener answered `/ready` with 503 during the drain; now it stops too.
        self.stopped.cancel();
        self.admin_tasks.close();
        let _ = tokio::time::timeout(ADMIN_STOP_GRACE, self.admin_tasks.wait()).await;
        drained
    }
}
