//! Configuration reload: the one path SIGHUP, `POST /reload` and [`crate::server::Gateway::reload`]
//! share. Everything the new configuration needs is built first (validated settings with
//! their certificates, JWT policies, upstreams and health checkers, the sockets of added
//! listeners, every TLS listener's rustls configuration); only when all of it succeeded is
//! it swapped in: the request state through one `ArcSwap`, then the listener set
//! ([`crate::listener::set`]). A failure changes nothing, logs every error, and every attempt
//! counts in `gateway_config_reloads_total{result}`.
//!
//! Restart-only: `server.worker_threads`, `server.max_connections`, `admin.bind` and
//! `logging.level`/`logging.format` are fixed at start; a reload that changes them succeeds
//! for everything else and warns, naming each such key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::{self, LogFormat, Settings};
use crate::handler::State;
use crate::listener::set::{Changes, ListenerSet};
use crate::metrics::Metrics;

pub struct Reloader {
    state: Arc<ArcSwap<State>>,
    /// The gateway's shutdown token: new states' background tasks hang under it.
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    listeners: Arc<ListenerSet>,
    /// What the process started with and cannot change without a restart.
    fixed: RestartOnly,
    /// Set by [`Reloader::set_config_path`]; else the running settings' `source`.
    config_path: Mutex<Option<PathBuf>>,
    /// One reload at a time, so a SIGHUP and a `POST /reload` cannot interleave their swaps.
    serial: tokio::sync::Mutex<()>,
}

/// The settings baked in at start (runtimes, the connection semaphore, the admin socket, the
/// tracing subscriber).
#[derive(Debug, Clone, PartialEq)]
struct RestartOnly {
    worker_threads: usize,
    max_connections: usize,
    admin_bind: Option<SocketAddr>,
    log_level: String,
    log_format: LogFormat,
}

/// What a successful reload changed.
struct Report {
    routes: usize,
    upstreams: usize,
    listeners: Changes,
    /// Keys whose new value waits for a restart.
    restart_only: Vec<&'static str>,
}

impl Reloader {
    pub fn new(
        state: Arc<ArcSwap<State>>,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
        listeners: Arc<ListenerSet>,
    ) -> Self {
        let fixed = RestartOnly::of(&state.load().settings);
        Reloader {
            state,
            shutdown,
            metrics,
            listeners,
            fixed,
            config_path: Mutex::new(None),
            serial: tokio::sync::Mutex::new(()),
        }
    }

    pub fn set_config_path(&self, path: PathBuf) {
        if let Ok(mut p) = self.config_path.lock() {
            *p = Some(path);
        }
    }

    /// The file a reload re-reads.
    pub fn config_path(&self) -> PathBuf {
        let set = self.config_path.lock().ok().and_then(|p| p.clone());
        set.unwrap_or_else(|| self.state.load().settings.source.clone())
    }

    /// Swaps in already-validated `settings` (building its JWT policies or binding its new
    /// listeners may still fail).
    pub async fn apply(&self, settings: Settings) -> Result<(), Vec<String>> {
        let _one_at_a_time = self.serial.lock().await;
        let result = self.swap(settings).await;
        self.finish(result)
    }

    /// Re-reads the config file, validates it in full (certificates and keys included), and
    /// swaps it in.
    pub async fn reload_file(&self) -> Result<(), Vec<String>> {
        let _one_at_a_time = self.serial.lock().await;
        let path = self.config_path();
        let shown = path.display().to_string();
        // Reading and validating touches the disk (certificates, keys): off the runtime.
        let loaded = tokio::task::spawn_blocking(move || config::load(&path)).await;
        let result = match loaded {
            Ok(Ok(settings)) => self.swap(settings).await,
            Ok(Err(errors)) => Err(errors.0.iter().map(|e| format!("{shown}: {e}")).collect()),
            Err(e) => Err(vec![format!("{shown}: loading failed: {e}")]),
        };
        self.finish(result)
    }

    async fn swap(&self, settings: Settings) -> Result<Report, Vec<String>> {
        if self.shutdown.is_cancelled() {
            return Err(vec!["the gateway is shutting down".to_string()]);
        }
        let settings = Arc::new(settings);
        // Everything that can fail, before anything running changes. Both steps run even when
        // the first fails, so the operator sees every error at once; a failed reload drops
        // what was built (new sockets close, new health checkers stop).
        let plan = self.listeners.prepare(&settings);
        let running = self.state.load_full();
        let state = State::build(
            settings.clone(),
            &self.shutdown,
            &self.metrics,
            Some(&running),
        )
        .await;
        let (plan, state) = match (plan, state) {
            (Ok(plan), Ok(state)) => (plan, state),
            (plan, state) => {
                let mut errors = plan.err().map(|e| e.messages()).unwrap_or_default();
                errors.extend(state.err().unwrap_or_default());
                return Err(errors);
            }
        };
        // Routes first, then listeners: an added listener never serves the old routes.
        let new = Arc::new(state);
        let old = self.state.swap(new.clone());
        crate::proxy::body::FILE_BUDGET.set_limit(settings.server.max_buffer_file_bytes);
        self.metrics.forget_removed(&old.metrics, &new.metrics);
        old.retire();
        let listeners = self.listeners.commit(plan).await;
        Ok(Report {
            routes: settings.routes.len(),
            upstreams: settings.upstreams.len(),
            listeners,
            restart_only: self.fixed.changed(&RestartOnly::of(&settings)),
        })
    }

    fn finish(&self, result: Result<Report, Vec<String>>) -> Result<(), Vec<String>> {
        self.metrics.reload(result.is_ok());
        match result {
            Ok(report) => {
                let names = |list: &[String]| list.join(",");
                tracing::info!(
                    routes = report.routes,
                    upstreams = report.upstreams,
                    listeners_kept = %names(&report.listeners.kept),
                    listeners_added = %names(&report.listeners.added),
                    listeners_removed = %names(&report.listeners.removed),
                    listeners_renamed = %report
                        .listeners
                        .renamed
                        .iter()
                        .map(|(was, now)| format!("{was}->{now}"))
                        .collect::<Vec<_>>()
                        .join(","),
                    "configuration reloaded: routes, upstreams, JWT policies, health checks, certificates and listeners swapped"
                );
                for key in report.restart_only {
                    tracing::warn!(
                        key,
                        "reload: {key} changed but only takes effect after a restart; keeping the running value"
                    );
                }
                Ok(())
            }
            Err(errors) => {
                for e in &errors {
                    tracing::error!(error = %e, "reload failed; keeping the running configuration");
                }
                Err(errors)
            }
        }
    }
}

impl RestartOnly {
    fn of(s: &Settings) -> Self {
        RestartOnly {
            worker_threads: s.server.worker_threads,
            max_connections: s.server.max_connections,
            admin_bind: s.admin.as_ref().map(|a| a.bind),
            log_level: s.logging.level.clone(),
            log_format: s.logging.format,
        }
    }

    /// The YAML keys whose value in `new` differs from the running one.
    fn changed(&self, new: &RestartOnly) -> Vec<&'static str> {
        [
            (
                "server.worker_threads",
                self.worker_threads != new.worker_threads,
            ),
            (
                "server.max_connections",
                self.max_connections != new.max_connections,
            ),
            ("admin.bind", self.admin_bind != new.admin_bind),
            ("logging.level", self.log_level != new.log_level),
            ("logging.format", self.log_format != new.log_format),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "listeners:\n  - bind: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:1\"]\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: app\n{extra}"
        );
        config::load_str(&yaml, dir.path(), dir.path().join("gateway.yaml")).unwrap()
    }

    #[test]
    fn restart_only_keys_are_named() {
        let running = RestartOnly::of(&settings(""));
        assert!(running.changed(&RestartOnly::of(&settings(""))).is_empty());
        let new = settings(
            "server:\n  max_connections: 7\n  idle_timeout: 5s\nadmin:\n  bind: \"127.0.0.1:9\"\nlogging:\n  format: json\n",
        );
        assert_eq!(
            running.changed(&RestartOnly::of(&new)),
            ["server.max_connections", "admin.bind", "logging.format"]
        );
    }
}
