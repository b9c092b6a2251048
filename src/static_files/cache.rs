//! What is known about one file, ready to answer with ([`Entry`]: headers prepared once,
//! variants in memory or open), and the bounded in-memory cache of small files.
//!
//! The cache holds files of at most [`MAX_IN_MEMORY`] bytes (with their compressed
//! variants), up to [`CACHE_BYTES`] in total per static site, evicted by quick_cache's
//! CLOCK-Pro policy. A cached entry is trusted for [`REVALIDATE_AFTER`]; after that one
//! request (the one that wins [`FileCache::get`]'s claim) re-resolves the path on a blocking
//! thread and compares size and mtime of every on-disk variant, while concurrent requests
//! keep getting the cached copy. So an unchanged file costs no syscall at all on the hot
//! path, and a changed file is picked up within about a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::HeaderValue;

use super::body;
use super::mime;
use super::negotiate::{etag, Encoding};
use super::resolve::{Body, Loaded, Stamp};

/// Files up to this size are read into memory (and cached); larger ones are streamed.
pub const MAX_IN_MEMORY: u64 = 256 * 1024;
/// Total bytes cached per static site.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// How long a cached file is served without looking at the disk.
pub const REVALIDATE_AFTER: Duration = Duration::from_secs(1);
/// Smaller files are not compressed on the fly: the framing would eat the gain.
pub const MIN_COMPRESS: u64 = 1024;

/// Per-site choices that shape an entry.
#[derive(Debug, Clone, Copy)]
pub struct EntryOptions {
    pub immutable_hashed: bool,
    pub max_age_secs: u64,
    pub compress: bool,
}

/// One representation, with its validator prepared.
#[derive(Debug)]
pub struct Variant {
    pub encoding: Encoding,
    pub len: u64,
    pub etag: HeaderValue,
    pub body: Body,
}

/// A resolved file and everything needed to answer for it.
#[derive(Debug)]
pub struct Entry {
    pub content_type: HeaderValue,
    pub cache_control: HeaderValue,
    pub last_modified: HeaderValue,
    pub mtime: SystemTime,
    /// Identity first.
    pub variants: Vec<Variant>,
    /// The identity is a large file that may be compressed while streaming (`compress: true`,
    /// compressible type, no sibling on disk).
    pub stream_compress: bool,
    stamps: Vec<(Encoding, Stamp)>,
    /// Milliseconds since the cache's epoch when the disk was last consulted.
    checked: AtomicU64,
}

impl Entry {
    /// Blocking when `compress` applies (compresses in memory): call on `spawn_blocking`.
    pub fn build(loaded: Loaded, options: EntryOptions, checked_ms: u64) -> Entry {
        let stamps = loaded.stamps();
        let identity = loaded
            .variants
            .iter()
            .find(|v| v.encoding == Encoding::Identity)
            .map(|v| v.stamp);
        let mtime = identity.map_or(SystemTime::UNIX_EPOCH, |s| s.mtime);
        let wants_compress = options.compress
            && loaded.variants.len() == 1
            && identity.is_some_and(|s| s.len >= MIN_COMPRESS)
            && mime::compressible(&loaded.name);
        let mut variants: Vec<Variant> = Vec::with_capacity(3);
        let mut generated = Vec::new();
        for v in loaded.variants {
            if wants_compress {
                if let Body::Memory(bytes) = &v.body {
                    for encoding in [Encoding::Br, Encoding::Gzip] {
                        if let Some(packed) = body::compress_bytes(bytes, encoding) {
                            generated.push(variant(
                                encoding,
                                packed.len() as u64,
                                v.stamp,
                                Body::Memory(packed),
                            ));
                        }
                    }
                }
            }
            variants.push(variant(v.encoding, v.stamp.len, v.stamp, v.body));
        }
        let stream_compress = wants_compress
            && matches!(
                variants.first(),
                Some(Variant {
                    body: Body::File(_),
                    ..
                })
            );
        variants.extend(generated);
        Entry {
            content_type: mime::content_type(&loaded.name),
            cache_control: mime::cache_control(
                &loaded.name,
                options.immutable_hashed,
                options.max_age_secs,
            ),
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(mtime))
                .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
            mtime,
            variants,
            stream_compress,
            stamps,
            checked: AtomicU64::new(checked_ms),
        }
    }

    /// The on-disk stamps revalidation compares against.
    pub fn stamps(&self) -> &[(Encoding, Stamp)] {
        &self.stamps
    }

    /// Whether more than one representation may be chosen by `Accept-Encoding`.
    pub fn has_variants(&self) -> bool {
        self.variants.len() > 1 || self.stream_compress
    }

    /// Only entries whose every variant is in memory are cached (open files are not shared).
    pub fn cacheable(&self) -> bool {
        self.variants
            .iter()
            .all(|v| matches!(v.body, Body::Memory(_)))
    }

    fn weight(&self) -> u64 {
        let bytes: u64 = self.variants.iter().map(|v| v.len).sum();
        bytes + 512
    }
}

/// A variant whose etag is derived from the stamp of the bytes it was made from, so a
/// generated variant changes tag exactly when its source does.
fn variant(encoding: Encoding, len: u64, source: Stamp, body: Body) -> Variant {
    let tag = etag(source.len, source.mtime, encoding);
    Variant {
        encoding,
        len,
        etag: HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"0\"")),
        body,
    }
}

/// Whether a cached entry may be served as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// This caller claimed the revalidation: look at the disk, then answer.
    Revalidate,
}

#[derive(Debug, Clone)]
struct ByBytes;

impl quick_cache::Weighter<String, Arc<Entry>> for ByBytes {
    fn weight(&self, key: &String, entry: &Arc<Entry>) -> u64 {
        key.len() as u64 + entry.weight()
    }
}

/// The bounded cache of small files, keyed by the path below the route prefix.
pub struct FileCache {
    entries: quick_cache::sync::Cache<String, Arc<Entry>, ByBytes>,
    epoch: Instant,
}

impl std::fmt::Debug for FileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCache")
            .field("entries", &self.entries.len())
            .field("bytes", &self.entries.weight())
            .finish()
    }
}

impl FileCache {
    pub fn new(capacity_bytes: u64) -> FileCache {
        FileCache {
            entries: quick_cache::sync::Cache::with_weighter(1024, capacity_bytes, ByBytes),
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since this cache was made: the clock of `checked`.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn get(&self, key: &str) -> Option<(Arc<Entry>, Freshness)> {
        let entry = self.entries.get(key)?;
        let now = self.now_ms();
        let checked = entry.checked.load(Ordering::Relaxed);
        let stale = now.saturating_sub(checked) >= REVALIDATE_AFTER.as_millis() as u64;
        let claimed = stale
            && entry
                .checked
                .compare_exchange(checked, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        let freshness = if claimed {
            Freshness::Revalidate
        } else {
            Freshness::Fresh
        };
        Some((entry, freshness))
    }

    pub fn insert(&self, key: &str, entry: Arc<Entry>) {
        self.entries.insert(key.to_owned(), entry);
    }

    pub fn remove(&self, key: &str) {
        self.entries.remove(key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held (file bytes plus a small per-entry overhead).
    pub fn weight(&self) -> u64 {
        self.entries.weight()
    }
}

/// Bytes of a variant for a response: shared entries hold only in-memory bodies.
pub fn shared_bytes(variant: &Variant) -> Option<Bytes> {
    match &variant.body {
        Body::Memory(bytes) => Some(bytes.clone()),
        Body::File(_) => None,
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
