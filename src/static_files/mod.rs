//! Static file serving for `static:` routes, the way nginx and WhiteNoise serve a Django
//! `collectstatic` folder.
//!
//! A request travels through:
//! 1. method check          — only GET and HEAD ([`StaticMiss::MethodNotAllowed`] otherwise);
//! 2. prefix strip          — `/static/css/a.css` on a `/static/` route is `root/css/a.css`;
//! 3. cache                 — small files answer from memory with no syscall, and a path
//!    recently found missing is a miss with no syscall either ([`cache`]); concurrent
//!    first requests for a path wait for one lookup (`first_load`);
//! 4. resolve (blocking)    — safe path → canonical file under the root ([`resolve`]) and its
//!    precompressed siblings, on `spawn_blocking`;
//! 5. negotiate and answer  — encoding, validators, ranges ([`negotiate`], `respond`).
//!
//! A missing file is a [`StaticMiss`], so the caller decides between 404 and the route's
//! upstream (`fallback: upstream`).

mod body;
pub mod cache;
mod first_load;
pub mod mime;
pub mod negotiate;
pub mod resolve;
mod respond;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{HeaderValue, LOCATION};
use http::request::Parts;
use http::{Method, Response, StatusCode};

use self::cache::{Entry, EntryOptions, FileCache, Freshness};
use self::first_load::{FirstLoads, Turn};
use self::negotiate::Encoding;
use self::resolve::{Found, Lookup, RelPath, Stamp};
use crate::config::features::StaticSettings;
use crate::error::{GatewayBody, GatewayError};
use crate::sendfile::Slot;

/// The `Allow` value of a 405 from a static route.
pub const ALLOW: &str = "GET, HEAD";

/// Why a static route did not answer: the caller falls back to 404/405 or the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticMiss {
    /// No such file (or one the gateway will not serve: hidden, outside the root, a folder
    /// without index).
    NotFound,
    /// Neither GET nor HEAD.
    MethodNotAllowed,
}

impl From<StaticMiss> for GatewayError {
    fn from(miss: StaticMiss) -> GatewayError {
        match miss {
            StaticMiss::NotFound => GatewayError::NotFound,
            StaticMiss::MethodNotAllowed => {
                GatewayError::MethodNotAllowed(HeaderValue::from_static(ALLOW))
            }
        }
    }
}

/// One `static:` route's folder, with its file cache. Build one per route when the
/// configuration is loaded; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct StaticSite {
    /// The route's `path_prefix` without its trailing `/`.
    prefix: String,
    lookup: Arc<Lookup>,
    options: EntryOptions,
    fallback_upstream: bool,
    cache: FileCache,
    first_loads: FirstLoads,
    /// Blocking lookups started (cache misses and revalidations), for stats and tests.
    disk_lookups: AtomicU64,
}

/// A prepared entry: shared from the cache, or owned (holding open files) for this response.
enum Served {
    Shared(Arc<Entry>),
    Owned(Entry),
    /// Answered without a file (a folder's redirect).
    Ready(Response<GatewayBody>),
}

/// What a blocking lookup came back with.
enum Outcome {
    Entry(Entry),
    Unchanged,
    Redirect,
    Missing,
}

impl StaticSite {
    /// Touches no file: the root is canonicalised on each lookup.
    pub fn new(settings: &StaticSettings, path_prefix: &str) -> StaticSite {
        // With nothing cached, reading small files into memory only to drop them would be
        // wasted: every file is streamed from its open handle instead.
        let caching = settings.cache_max_bytes > 0 && settings.cache_max_file_bytes > 0;
        StaticSite {
            prefix: path_prefix.trim_end_matches('/').to_owned(),
            lookup: Arc::new(Lookup {
                root: settings.root.clone(),
                index: settings.index.clone(),
                precompressed: settings
                    .precompressed
                    .iter()
                    .filter_map(|name| Encoding::from_config(name))
                    .collect(),
                max_in_memory: if caching {
                    settings.cache_max_file_bytes
                } else {
                    0
                },
                sendfile: settings.sendfile,
            }),
            options: EntryOptions {
                immutable_hashed: settings.immutable_hashed,
                max_age_secs: settings.max_age.as_secs(),
                compress: settings.compress,
            },
            fallback_upstream: settings.fallback_upstream,
            cache: FileCache::new(settings.cache_max_bytes, settings.cache_max_file_bytes),
            first_loads: FirstLoads::default(),
            disk_lookups: AtomicU64::new(0),
        }
    }

    /// `fallback: upstream`: a miss goes to the route's upstream instead of 404/405.
    pub fn fallback_upstream(&self) -> bool {
        self.fallback_upstream
    }

    /// The in-memory cache (for stats and tests).
    pub fn cache(&self) -> &FileCache {
        &self.cache
    }

    /// How many lookups went to the disk (on a blocking thread) so far.
    pub fn disk_lookups(&self) -> u64 {
        self.disk_lookups.load(Ordering::Relaxed)
    }

    /// Answers a GET or HEAD for `normalized_path` (the whole path, prefix included, as
    /// [`crate::path::normalize`] returned it).
    /// On a plain-TCP connection, `sendfile` is its slot for zero-copy bodies.
    pub async fn serve(
        &self,
        parts: &Parts,
        normalized_path: &str,
        sendfile: Option<&Slot>,
    ) -> Result<crate::handler::Reply, StaticMiss> {
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return Err(StaticMiss::MethodNotAllowed);
        }
        let rest = normalized_path
            .strip_prefix(self.prefix.as_str())
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .ok_or(StaticMiss::NotFound)?;
        let served = match self.cache.get(rest) {
            Some((entry, Freshness::Fresh)) => Served::Shared(entry),
            Some((entry, Freshness::Revalidate)) => {
                let previous = entry.stamps().to_vec();
                let now = self.cache.now_ms();
                match self.load(rest, Some(previous)).await? {
                    Outcome::Unchanged => Served::Shared(entry),
                    other => self.settle(rest, other, parts, normalized_path, now)?,
                }
            }
            None => self.uncached(rest, parts, normalized_path).await?,
        };
        let response = match served {
            Served::Shared(entry) => respond::respond(parts, &entry, None, sendfile),
            Served::Owned(mut entry) => {
                let taken = respond::take_bodies(&mut entry);
                respond::respond(parts, &entry, Some(taken), sendfile)
            }
            Served::Ready(response) => Some(response.into()),
        };
        response.ok_or(StaticMiss::NotFound)
    }

    /// A path with no cached entry: a remembered miss, or a lookup — the first of several
    /// concurrent requests for it looks, the others wait and take its answer from the cache.
    async fn uncached(
        &self,
        rest: &str,
        parts: &Parts,
        normalized_path: &str,
    ) -> Result<Served, StaticMiss> {
        let _leading = match self.cache.get_miss(rest) {
            Some(Freshness::Fresh) => return Err(StaticMiss::NotFound),
            // This caller claimed the remembered miss's revalidation.
            Some(Freshness::Revalidate) => None,
            None => match self.first_loads.enter(rest).await {
                Turn::Lead(leading) => Some(leading),
                Turn::Followed => {
                    if let Some((entry, _)) = self.cache.get(rest) {
                        return Ok(Served::Shared(entry));
                    }
                    if let Some(Freshness::Fresh) = self.cache.get_miss(rest) {
                        return Err(StaticMiss::NotFound);
                    }
                    // Not cacheable (a large file, streamed per request): look again.
                    None
                }
            },
        };
        let now = self.cache.now_ms();
        let outcome = self.load(rest, None).await?;
        self.settle(rest, outcome, parts, normalized_path, now)
    }

    /// Resolves `rest` on a blocking thread; `previous` stamps allow an `Unchanged` answer.
    async fn load(
        &self,
        rest: &str,
        previous: Option<Vec<(Encoding, Stamp)>>,
    ) -> Result<Outcome, StaticMiss> {
        let rel = RelPath::parse(rest).ok_or(StaticMiss::NotFound)?;
        self.disk_lookups.fetch_add(1, Ordering::Relaxed);
        let lookup = self.lookup.clone();
        let options = self.options;
        let now = self.cache.now_ms();
        let outcome = tokio::task::spawn_blocking(crate::observability::with_request_id(
            move || match lookup.run(&rel, previous.as_deref()) {
                Found::File(loaded) => Outcome::Entry(Entry::build(loaded, options, now)),
                Found::Unchanged => Outcome::Unchanged,
                Found::Redirect => Outcome::Redirect,
                Found::Missing => Outcome::Missing,
            },
        ))
        .await;
        outcome.map_err(|e| {
            tracing::warn!(request_id = %crate::observability::CurrentRequestId, error = %e, "static lookup task failed");
            StaticMiss::NotFound
        })
    }

    /// Caches what can be cached (a miss as of `asked_ms`, when the lookup started) and
    /// turns the other outcomes into responses or misses.
    fn settle(
        &self,
        rest: &str,
        outcome: Outcome,
        parts: &Parts,
        normalized_path: &str,
        asked_ms: u64,
    ) -> Result<Served, StaticMiss> {
        match outcome {
            Outcome::Entry(entry) if entry.cacheable() => {
                let entry = Arc::new(entry);
                self.cache.insert(rest, entry.clone());
                Ok(Served::Shared(entry))
            }
            Outcome::Entry(entry) => {
                self.cache.remove(rest);
                Ok(Served::Owned(entry))
            }
            // Only asked for with `previous`, and handled by the caller then.
            Outcome::Unchanged => Err(StaticMiss::NotFound),
            Outcome::Redirect => {
                self.cache.remove(rest);
                redirect(parts, normalized_path)
                    .map(Served::Ready)
                    .ok_or(StaticMiss::NotFound)
            }
            Outcome::Missing => {
                self.cache.insert_miss(rest, asked_ms);
                Err(StaticMiss::NotFound)
            }
        }
    }
}

/// `301` from a folder to the folder with a trailing `/` (relative links in its index
/// resolve against it), keeping the query.
fn redirect(parts: &Parts, normalized_path: &str) -> Option<Response<GatewayBody>> {
    let location = match parts.uri.query() {
        Some(q) => format!("{normalized_path}/?{q}"),
        None => format!("{normalized_path}/"),
    };
    let location = HeaderValue::from_str(&location).ok()?;
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    response.headers_mut().insert(LOCATION, location);
    Some(response)
}

#[cfg(test)]
#[path = "site_tests.rs"]
mod tests;
