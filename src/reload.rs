//! Configuration reload: the one path SIGHUP, `POST /reload` and [`crate::server::Gateway::reload`]
//! share. The new state is built in full before it is swapped in; a failure keeps the running
//! state, logs every error, and every attempt counts in `gateway_config_reloads_total{result}`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Settings};
use crate::handler::State;
use crate::metrics::Metrics;

pub struct Reloader {
    state: Arc<ArcSwap<State>>,
    /// The gateway's shutdown token: new states' background tasks hang under it.
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    /// Set by [`Reloader::set_config_path`]; else the running settings' `source`.
    config_path: Mutex<Option<PathBuf>>,
    /// One reload at a time, so a SIGHUP and a `POST /reload` cannot interleave their swaps.
    serial: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(
        state: Arc<ArcSwap<State>>,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        Reloader {
            state,
            shutdown,
            metrics,
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

    /// Swaps in already-validated `settings` (building its JWT policies may still fail).
    pub async fn apply(&self, settings: Settings) -> Result<(), Vec<String>> {
        let _one_at_a_time = self.serial.lock().await;
        let result = self.swap(settings).await;
        self.finish(result)
    }

    /// Re-reads the config file, validates it in full, and swaps it in.
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

    async fn swap(&self, settings: Settings) -> Result<(), Vec<String>> {
        let state = State::build(Arc::new(settings), &self.shutdown, &self.metrics).await?;
        let new = Arc::new(state);
        let old = self.state.swap(new.clone());
        self.metrics.forget_removed(&old.metrics, &new.metrics);
        old.retire();
        Ok(())
    }

    fn finish(&self, result: Result<(), Vec<String>>) -> Result<(), Vec<String>> {
        self.metrics.reload(result.is_ok());
        match &result {
            Ok(()) => tracing::info!(
                "configuration reloaded (routes, upstreams and JWT policies; listener changes need a restart)"
            ),
            Err(errors) => {
                for e in errors {
                    tracing::error!(error = %e, "reload failed; keeping the running configuration");
                }
            }
        }
        result
    }
}
