//! The running gateway: binds every listener, owns the one cancellation tree and the task
//! tracker, swaps configuration (and the listener set) atomically, and drains on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminContext;
use crate::config::Settings;
use crate::handler::State;
use crate::listener;
use crate::listener::conn::Builders;
use crate::listener::set::{ListenerError, ListenerSet, Shared};
use crate::metrics::Metrics;
use crate::reload::Reloader;

/// Each error's cause is its `source()`, printed after it by `{:#}` (anyhow's chain, as `main`
/// prints it): repeating it in the message printed it twice.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listeners[{index}] ({name}): cannot bind {addr}")]
    Bind {
        index: usize,
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// JWT policies that could not be built (keys unreadable, first JWKS fetch failed).
    #[error("{}", .0.join("; "))]
    Policies(Vec<String>),
    #[error("admin.bind: cannot bind {addr}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listeners[{index}] ({name}): TLS configuration")]
    Tls {
        index: usize,
        name: String,
        source: rustls::Error,
    },
}

impl From<ListenerError> for StartError {
    fn from(e: ListenerError) -> Self {
        match e {
            ListenerError::Bind {
                index,
                name,
                addr,
                source,
            } => StartError::Bind {
                index,
                name,
                addr,
                source,
            },
            ListenerError::Tls {
                index,
                name,
                source,
            } => StartError::Tls {
                index,
                name,
                source,
            },
        }
    }
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
    /// The listeners accepting now; a reload may add, remove or retune them.
    listeners: Arc<ListenerSet>,
    admin_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
}

impl Gateway {
    /// Binds every listener and starts accepting on the current tokio runtime.
    pub async fn start(settings: Settings) -> Result<Gateway, StartError> {
        Self::start_on(settings, &[tokio::runtime::Handle::current()]).await
    }

    /// Binds every listener once and runs one accept loop per listener on each of `workers`
    /// (the binary gives one single-threaded runtime per core, as nginx runs one worker
    /// process per core); connections stay on the worker that accepted them. The handles are
    /// kept: listeners a reload adds get their accept loops on the same workers.
    pub async fn start_on(
        settings: Settings,
        workers: &[tokio::runtime::Handle],
    ) -> Result<Gateway, StartError> {
        let settings = Arc::new(settings);
        let stopped = CancellationToken::new();
        let shutdown = stopped.child_token();
        let metrics = Arc::new(Metrics::new());
        let state = State::build(settings.clone(), &shutdown, &metrics, None)
            .await
            .map_err(StartError::Policies)?;
        let state = Arc::new(ArcSwap::from_pointee(state));
        crate::proxy::body::FILE_BUDGET.set_limit(settings.server.max_buffer_file_bytes);
        let tracker = TaskTracker::new();
        let listeners = Arc::new(ListenerSet::new(
            workers.to_vec(),
            Shared {
                builders: Arc::new(ArcSwap::from_pointee(Builders::new(&settings.server))),
                state: state.clone(),
                connections: Arc::new(Semaphore::new(settings.server.max_connections.max(1))),
                clients: Arc::default(),
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
                metrics: metrics.clone(),
            },
        ));
        // Bind everything before any accept loop runs.
        let plan = listeners.prepare(&settings).map_err(|e| e.first)?;
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
        listeners.commit(plan).await;
        let reloader = Arc::new(Reloader::new(
            state.clone(),
            shutdown.clone(),
            metrics.clone(),
            listeners.clone(),
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
        })
    }

    /// The address a listener actually bound (useful with port 0); `None` for a listener
    /// that is not (or no longer) configured.
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners
            .addresses()
            .into_iter()
            .find(|(name, _)| name == listener)
            .map(|(_, addr)| addr)
    }

    /// `(name, bound address)` of every listener accepting now, in the file's order.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.listeners.addresses()
    }

    /// The admin listener's bound address, when `admin:` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The registry behind `/metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Swaps in a new configuration: routes, upstreams, JWT policies, health checks,
    /// certificates and listeners (see [`crate::listener::set`]). In-flight requests finish
    /// on the state they started with and open connections carry on. When anything cannot be
    /// built (JWT keys, a listener's socket) nothing changes and every error (naming
    /// `jwt_policies.NAME...`, `listeners[N]...`) is returned. Counted in
    /// `gateway_config_reloads_total`.
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
        let grace = self.state.load().settings.server.shutdown_grace;
        let drained = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        // The admin listener answered `/ready` with 503 during the drain; now it stops too.
        self.stopped.cancel();
        self.admin_tasks.close();
        let _ = tokio::time::timeout(ADMIN_STOP_GRACE, self.admin_tasks.wait()).await;
        drained
    }
}
