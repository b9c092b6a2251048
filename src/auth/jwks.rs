//! `jwks_url`: fetching the key set over HTTP(S) (bounded in time and size, no redirects),
//! and the bookkeeping of refreshes — the rate limit on early refetches for unknown `kid`s,
//! the single-flight lock, and the failure counter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;

use super::keys::{parse_jwks, KeyEntry};

/// A fetch that takes longer than this fails (and keeps the previous keys).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS body accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Unknown `kid`s trigger at most one early refetch per this interval.
pub(crate) const EARLY_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// A policy that has never had keys (its JWKS was unreachable at start) retries this soon,
/// then doubling each time up to [`RETRY_MAX`].
pub(crate) const RETRY_FIRST: Duration = Duration::from_secs(1);
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(30);

/// A remote key set and the state of its refreshes.
pub(crate) struct Remote {
    pub url: String,
    uri: http::Uri,
    pub refresh_every: Duration,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// When the last early (unknown-kid) refetch was started.
    last_early: Mutex<Option<Instant>>,
    /// One fetch at a time; waiters re-verify once it is done.
    pub fetch_lock: tokio::sync::Mutex<()>,
    /// Wakes the refresher task for an early refetch (from the synchronous verify path).
    pub wake: Notify,
    failures: AtomicU64,
    fetches: AtomicU64,
}

impl Remote {
    pub(crate) fn new(url: &str, refresh_every: Duration) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("jwks_url {url}: invalid URL: {e}"))?;
        let loopback = ["localhost", "127.0.0.1", "[::1]"].contains(&uri.host().unwrap_or(""));
        if uri.scheme_str() == Some("http") && !loopback {
            tracing::warn!(
                url,
                "jwks_url over plain http: anyone on the path can inject keys"
            );
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_provider_and_native_roots(provider.clone()) {
            Ok(b) => b,
            Err(e) => {
                // No system roots (minimal container): http:// still works, https:// will fail
                // at fetch time with a certificate error naming the URL.
                tracing::warn!(url, "no native root certificates for jwks_url: {e}");
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("jwks_url {url}: TLS setup: {e}"))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Remote {
            url: url.to_string(),
            uri,
            refresh_every,
            client,
            last_early: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            failures: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
        })
    }

    /// Fetches and parses the key set; errors name the URL.
    pub(crate) async fn fetch(&self) -> Result<Vec<KeyEntry>, String> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let url = &self.url;
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.fetch_body())
            .await
            .map_err(|_| format!("jwks_url {url}: timed out after {FETCH_TIMEOUT:?}"))?
            .map_err(|e| format!("jwks_url {url}: {e}"))?;
        parse_jwks(&body).map_err(|e| format!("jwks_url {url}: {e}"))
    }

    async fn fetch_body(&self) -> Result<Bytes, String> {
        let request = http::Request::get(self.uri.clone())
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .header(http::header::USER_AGENT, "gateway-jwks")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(format!("HTTP status {}", response.status()));
        }
        Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("reading body: {e} (limit {MAX_JWKS_BYTES} bytes)"))
    }

    /// Claims the early-refetch slot if the last early refetch is old enough.
    pub(crate) fn claim_early_slot(&self) -> bool {
        let Ok(mut last) = self.last_early.lock() else {
            return false;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < EARLY_REFETCH_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }

    pub(crate) fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Fetch attempts so far (initial, periodic and early).
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }
}

/// `e: cause: cause` — hyper's client errors hide the useful part in `source()`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
