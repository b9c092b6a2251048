//! What is known about one file, ready to answer with ([`Entry`]: headers prepared once,
//! variants in memory or open), and the bounded in-memory caches of a static site.
//!
//! Two caches, both bounded in bytes and evicted by quick_cache's CLOCK-Pro policy (which
//! keeps a flood of one-off keys from pushing out the hot ones):
//! - *files*: files of at most `cache_max_file_bytes` (with their compressed variants), up to
//!   `cache_max_bytes` per site;
//! - *misses*: paths that were not found, up to [`MISS_CACHE_BYTES`] of keys per site, so a
//!   repeated 404 (or a `fallback: upstream` pass-through) costs no blocking lookup, and a
//!   flood of distinct random paths costs a bounded amount of memory.
//!
//! Both are trusted for [`REVALIDATE_AFTER`]; after that one request (the one that wins the
//! claim in [`FileCache::get`] / [`FileCache::get_miss`]) re-resolves the path on a blocking
//! thread — comparing size and mtime of every on-disk variant for a file — while concurrent
//! requests keep getting the cached answer. So an unchanged file costs no syscall at all on
//! the hot path, and a changed, deleted or newly added file is picked up within about a
//! second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use super::body;
use super::mime;
use super::negotiate::{etag, Encoding};
use super::resolve::{Body, Loaded, Stamp};
use super::respond;

/// How long a cached file or a remembered miss is served without looking at the disk.
pub const REVALIDATE_AFTER: Duration = Duration::from_secs(1);
/// Smaller files are not compressed on the fly: the framing would eat the gain.
pub const MIN_COMPRESS: u64 = 1024;
/// Most bytes of remembered misses per site (less when `cache_max_bytes` is smaller).
pub const MISS_CACHE_BYTES: u64 = 1024 * 1024;
/// What a remembered miss costs beyond its key's bytes: the key's heap block, the shared
/// timestamp and the cache slot.
const MISS_OVERHEAD: u64 = 96;
/// What an entry costs beyond its bytes, and each variant beyond its body: the prepared
/// header map and validators.
const ENTRY_OVERHEAD: u64 = 256;
const VARIANT_OVERHEAD: u64 = 1024;

/// Per-site choices that shape an entry.
#[derive(Debug, Clone, Copy)]
pub struct EntryOptions {
    pub immutable_hashed: bool,
    pub max_age_secs: u64,
    pub compress: bool,
}

/// One representation, with its validator and response headers prepared.
#[derive(Debug)]
pub struct Variant {
    pub encoding: Encoding,
    pub len: u64,
    pub etag: HeaderValue,
    pub body: Body,
    /// Every header of a `200` carrying this whole variant. A response starts as a clone of
    /// it: no formatting, no hashing of header names per request.
    pub headers: HeaderMap,
    /// The same fields but `Content-Length`, encoded for HTTP/1.1: a whole-variant `GET` over
    /// HTTP/1 sends these bytes as they are ([`crate::handler::EncodedFields`]).
    pub encoded: Bytes,
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
                if let Body::Memory(bytes, _) = &v.body {
                    for encoding in [Encoding::Br, Encoding::Gzip] {
                        if let Some(packed) = body::compress_bytes(bytes, encoding) {
                            generated.push(variant(
                                encoding,
                                packed.len() as u64,
                                v.stamp,
                                Body::Memory(packed, None),
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
        let mut entry = Entry {
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
        };
        let prepared: Vec<HeaderMap> = entry
            .variants
            .iter()
            .map(|v| respond::full_headers(&entry, v))
            .collect();
        for (v, headers) in entry.variants.iter_mut().zip(prepared) {
            v.encoded = respond::encode_fields(&headers);
            v.headers = headers;
        }
        entry
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
            .all(|v| matches!(v.body, Body::Memory(..)))
    }

    fn weight(&self) -> u64 {
        let bytes: u64 = self.variants.iter().map(|v| v.len + VARIANT_OVERHEAD).sum();
        bytes + ENTRY_OVERHEAD
    }
}

/// A variant whose etag is derived from the stamp of the bytes it was made from, so a
/// generated variant changes tag exactly when its source does. Its headers are prepared
/// once every variant is known (`Vary` depends on them all).
fn variant(encoding: Encoding, len: u64, source: Stamp, body: Body) -> Variant {
    let tag = etag(source.len, source.mtime, encoding);
    Variant {
        encoding,
        len,
        etag: HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"0\"")),
        body,
        headers: HeaderMap::new(),
        encoded: Bytes::new(),
    }
}

/// Whether a cached answer may be given as is.
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

/// A remembered miss: when the disk last said "not found".
type Miss = Arc<AtomicU64>;

#[derive(Debug, Clone)]
struct MissBytes;

impl quick_cache::Weighter<String, Miss> for MissBytes {
    fn weight(&self, key: &String, _: &Miss) -> u64 {
        key.len() as u64 + MISS_OVERHEAD
    }
}

/// The bounded caches of one static site, keyed by the path below the route prefix.
pub struct FileCache {
    /// `None` when `cache_max_bytes` is 0.
    entries: Option<quick_cache::sync::Cache<String, Arc<Entry>, ByBytes>>,
    misses: Option<quick_cache::sync::Cache<String, Miss, MissBytes>>,
    epoch: Instant,
}

impl std::fmt::Debug for FileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCache")
            .field("entries", &self.len())
            .field("bytes", &self.weight())
            .field("misses", &self.miss_len())
            .finish()
    }
}

impl FileCache {
    /// Caches up to `capacity_bytes` of entries whose largest file is `max_file_bytes`, and
    /// up to [`MISS_CACHE_BYTES`] (at most `capacity_bytes`) of misses; 0 caches nothing.
    pub fn new(capacity_bytes: u64, max_file_bytes: u64) -> FileCache {
        // quick_cache splits its capacity between shards and refuses an item heavier than a
        // shard: keep shards large enough for the largest entry (a file and two variants).
        let largest = max_file_bytes
            .saturating_add(VARIANT_OVERHEAD)
            .saturating_mul(3)
            .saturating_add(ENTRY_OVERHEAD);
        let entries = (capacity_bytes > 0).then(|| {
            cache_with(
                capacity_bytes,
                capacity_bytes / (16 * 1024),
                capacity_bytes / largest.saturating_mul(4),
                ByBytes,
            )
        });
        let miss_bytes = MISS_CACHE_BYTES.min(capacity_bytes);
        let misses = (miss_bytes > 0).then(|| {
            cache_with(
                miss_bytes,
                miss_bytes / (MISS_OVERHEAD + 32),
                u64::MAX,
                MissBytes,
            )
        });
        FileCache {
            entries,
            misses,
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since this cache was made: the clock of `checked`.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn get(&self, key: &str) -> Option<(Arc<Entry>, Freshness)> {
        let entry = self.entries.as_ref()?.get(key)?;
        let freshness = self.claim(&entry.checked);
        Some((entry, freshness))
    }

    /// Whether `key` was recently found missing (`Revalidate`: this caller looks again).
    pub fn get_miss(&self, key: &str) -> Option<Freshness> {
        let checked = self.misses.as_ref()?.get(key)?;
        Some(self.claim(&checked))
    }

    /// `Revalidate` for exactly one caller once `checked` is older than [`REVALIDATE_AFTER`].
    fn claim(&self, checked: &AtomicU64) -> Freshness {
        let now = self.now_ms();
        let last = checked.load(Ordering::Relaxed);
        let stale = now.saturating_sub(last) >= REVALIDATE_AFTER.as_millis() as u64;
        let claimed = stale
            && checked
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if claimed {
            Freshness::Revalidate
        } else {
            Freshness::Fresh
        }
    }

    /// Caches a found file (and forgets any miss of the same key).
    pub fn insert(&self, key: &str, entry: Arc<Entry>) {
        if let Some(misses) = &self.misses {
            misses.remove(key);
        }
        if let Some(entries) = &self.entries {
            entries.insert(key.to_owned(), entry);
        }
    }

    /// Remembers that `key` was not found, as of `checked_ms` (and forgets its entry).
    pub fn insert_miss(&self, key: &str, checked_ms: u64) {
        if let Some(entries) = &self.entries {
            entries.remove(key);
        }
        if let Some(misses) = &self.misses {
            misses.insert(key.to_owned(), Arc::new(AtomicU64::new(checked_ms)));
        }
    }

    /// Forgets both what was found and what was missed under `key`.
    pub fn remove(&self, key: &str) {
        if let Some(entries) = &self.entries {
            entries.remove(key);
        }
        if let Some(misses) = &self.misses {
            misses.remove(key);
        }
    }

    /// Files cached.
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |c| c.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by files (file bytes plus a per-entry overhead).
    pub fn weight(&self) -> u64 {
        self.entries.as_ref().map_or(0, |c| c.weight())
    }

    /// Misses remembered.
    pub fn miss_len(&self) -> usize {
        self.misses.as_ref().map_or(0, |c| c.len())
    }

    /// Bytes counted for remembered misses (keys plus a per-miss overhead).
    pub fn miss_weight(&self) -> u64 {
        self.misses.as_ref().map_or(0, |c| c.weight())
    }

    /// Memory of the miss cache's own tables (slots and index), for bounds tests.
    pub fn miss_table_bytes(&self) -> usize {
        self.misses.as_ref().map_or(0, |c| c.memory_used().total())
    }
}

/// A quick_cache of `capacity` weight, expecting about `items`, with at most `max_shards`
/// shards (rounded down to a power of two; at least one).
fn cache_with<V: Clone, W: quick_cache::Weighter<String, V> + Clone>(
    capacity: u64,
    items: u64,
    max_shards: u64,
    weighter: W,
) -> quick_cache::sync::Cache<String, V, W> {
    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let shards = (parallel * 4).min(max_shards).max(1);
    let shards = 1u64 << shards.ilog2();
    let items = usize::try_from(items.clamp(64, 1 << 20)).unwrap_or(1 << 20);
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(items)
        .weight_capacity(capacity)
        .shards(usize::try_from(shards).unwrap_or(1))
        .build();
    match options {
        Ok(options) => quick_cache::sync::Cache::with_options(
            options,
            weighter,
            Default::default(),
            Default::default(),
        ),
        // Only reachable if a required option were missing above.
        Err(_) => quick_cache::sync::Cache::with_weighter(items, capacity, weighter),
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
