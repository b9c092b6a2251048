//! Unit tests of entries and the bounded cache.

use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, ETAG, VARY};

use super::super::resolve::FileVariant;
use super::*;

fn loaded(name: &str, data: &[u8], siblings: &[Encoding]) -> Loaded {
    let stamp = Stamp {
        len: data.len() as u64,
        mtime: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    };
    let mut variants = vec![FileVariant {
        encoding: Encoding::Identity,
        stamp,
        body: Body::Memory(Bytes::copy_from_slice(data), None),
        generated: false,
    }];
    for &encoding in siblings {
        variants.push(FileVariant {
            encoding,
            stamp: Stamp { len: 3, ..stamp },
            body: Body::Memory(Bytes::from_static(b"zzz"), None),
            generated: false,
        });
    }
    Loaded {
        name: name.into(),
        variants,
    }
}

const OPTIONS: EntryOptions = EntryOptions {
    immutable_hashed: true,
    max_age_secs: 60,
    compress: true,
};

fn css(n: usize) -> Vec<u8> {
    ".a{color:red}\n".repeat(n).into_bytes()
}

#[test]
fn entry_headers_and_generated_variants() {
    let e = Entry::build(loaded("app.3f2a9c1b7e4d.css", &css(200), &[]), OPTIONS, 0);
    assert_eq!(e.content_type, "text/css; charset=utf-8");
    assert_eq!(e.cache_control, mime::IMMUTABLE);
    assert_eq!(e.last_modified, "Tue, 14 Nov 2023 22:13:20 GMT");
    let encodings: Vec<Encoding> = e.variants.iter().map(|v| v.encoding).collect();
    assert_eq!(
        encodings,
        [Encoding::Identity, Encoding::Br, Encoding::Gzip]
    );
    assert!(e.has_variants() && e.cacheable() && !e.stream_compress);
    // Generated variants are not revalidated against the disk.
    assert_eq!(e.stamps().len(), 1);
    let tags: Vec<&HeaderValue> = e.variants.iter().map(|v| &v.etag).collect();
    assert!(tags[0] != tags[1] && tags[1] != tags[2]);
}

#[test]
fn siblings_win_over_compression_and_small_or_binary_files_stay_plain() {
    let e = Entry::build(loaded("app.css", &css(200), &[Encoding::Gzip]), OPTIONS, 0);
    assert_eq!(e.variants.len(), 2);
    assert_eq!(e.cache_control, "public, max-age=60");
    let e = Entry::build(loaded("app.css", &css(10), &[]), OPTIONS, 0);
    assert!(!e.has_variants(), "below MIN_COMPRESS");
    let e = Entry::build(loaded("a.png", &[0u8; 4096], &[]), OPTIONS, 0);
    assert!(!e.has_variants(), "not compressible");
    let off = EntryOptions {
        compress: false,
        ..OPTIONS
    };
    assert!(!Entry::build(loaded("app.css", &css(200), &[]), off, 0).has_variants());
}

#[test]
fn cache_is_bounded_by_bytes() {
    let cache = FileCache::new(64 * 1024, 4096);
    let data = vec![b'x'; 4000];
    for i in 0..100 {
        let e = Entry::build(loaded("a.bin", &data, &[]), OPTIONS, 0);
        cache.insert(&format!("/f{i}"), Arc::new(e));
    }
    assert!(cache.weight() <= 64 * 1024, "{}", cache.weight());
    assert!(cache.len() < 100 && !cache.is_empty());
}

#[test]
fn one_caller_claims_each_revalidation() {
    let cache = FileCache::new(1 << 20, 64 * 1024);
    let now = cache.now_ms();
    let e = Entry::build(loaded("a.txt", b"hi", &[]), OPTIONS, now);
    cache.insert("/a.txt", Arc::new(e));
    assert_eq!(cache.get("/a.txt").map(|(_, f)| f), Some(Freshness::Fresh));
    // Pretend the last check was long ago.
    let (entry, _) = cache.get("/a.txt").unwrap();
    entry.checked.store(0, Ordering::Relaxed);
    std::thread::sleep(REVALIDATE_AFTER);
    assert_eq!(
        cache.get("/a.txt").map(|(_, f)| f),
        Some(Freshness::Revalidate)
    );
    assert_eq!(cache.get("/a.txt").map(|(_, f)| f), Some(Freshness::Fresh));
    cache.remove("/a.txt");
    assert!(cache.get("/a.txt").is_none());
}

#[test]
fn each_variant_carries_its_prepared_headers() {
    let e = Entry::build(loaded("app.css", &css(200), &[Encoding::Gzip]), OPTIONS, 0);
    let (plain, gz) = (&e.variants[0], &e.variants[1]);
    assert_eq!(plain.headers[CONTENT_LENGTH], css(200).len().to_string());
    assert_eq!(gz.headers[CONTENT_LENGTH], "3");
    assert_eq!(plain.headers[ETAG], plain.etag);
    assert_eq!(gz.headers[ETAG], gz.etag);
    assert!(plain.headers.get(CONTENT_ENCODING).is_none());
    assert_eq!(gz.headers[CONTENT_ENCODING], "gzip");
    assert_eq!(plain.headers[VARY], "Accept-Encoding");
    let single = Entry::build(loaded("a.png", &[1, 2, 3], &[]), OPTIONS, 0);
    assert!(single.variants[0].headers.get(VARY).is_none());
}

#[test]
fn misses_are_remembered_and_one_caller_claims_each_recheck() {
    let cache = FileCache::new(1 << 20, 64 * 1024);
    assert_eq!(cache.get_miss("/new.css"), None);
    cache.insert_miss("/new.css", cache.now_ms());
    assert_eq!(cache.get_miss("/new.css"), Some(Freshness::Fresh));
    assert_eq!(cache.miss_len(), 1);
    // Found later: the miss is forgotten.
    let e = Entry::build(loaded("new.css", b"a{}", &[]), OPTIONS, cache.now_ms());
    cache.insert("/new.css", Arc::new(e));
    assert_eq!(cache.get_miss("/new.css"), None);
    assert!(cache.get("/new.css").is_some());
    // Deleted later: the entry is forgotten.
    cache.insert_miss("/new.css", 0);
    assert!(cache.get("/new.css").is_none());
    std::thread::sleep(REVALIDATE_AFTER);
    assert_eq!(cache.get_miss("/new.css"), Some(Freshness::Revalidate));
    assert_eq!(cache.get_miss("/new.css"), Some(Freshness::Fresh));
    cache.remove("/new.css");
    assert_eq!(cache.get_miss("/new.css"), None);
}

#[test]
fn a_flood_of_distinct_missing_paths_stays_bounded() {
    let cache = FileCache::new(64 * 1024 * 1024, 256 * 1024);
    let hot = Entry::build(loaded("app.css", b"a{}", &[]), OPTIONS, cache.now_ms());
    cache.insert("/app.css", Arc::new(hot));
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut random_path = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        format!("/wp-admin/{state:016x}/{:x}.php", state.rotate_left(17))
    };
    let now = cache.now_ms();
    for _ in 0..20_000 {
        cache.insert_miss(&random_path(), now);
    }
    let table_early = cache.miss_table_bytes();
    for _ in 0..300_000 {
        cache.insert_miss(&random_path(), now);
    }
    // Counted bytes stay under the budget, so the number of keys (and their heap) does too.
    assert!(
        cache.miss_weight() <= MISS_CACHE_BYTES,
        "{}",
        cache.miss_weight()
    );
    let most = (MISS_CACHE_BYTES / MISS_OVERHEAD) as usize;
    assert!(cache.miss_len() <= most, "{} misses", cache.miss_len());
    assert!(cache.miss_len() > 1000, "misses are kept at all");
    // The cache's own tables do not grow with the flood either.
    let table_late = cache.miss_table_bytes();
    assert!(
        table_late <= table_early + table_early / 4 && table_late < 4 << 20,
        "miss tables grew from {table_early} to {table_late} bytes"
    );
    // Misses never push files out.
    assert!(cache.get("/app.css").is_some());
}

#[test]
fn zero_capacity_caches_nothing() {
    let cache = FileCache::new(0, 256 * 1024);
    let e = Entry::build(loaded("a.txt", b"hi", &[]), OPTIONS, 0);
    cache.insert("/a.txt", Arc::new(e));
    cache.insert_miss("/b.txt", 0);
    assert!(cache.get("/a.txt").is_none());
    assert_eq!(cache.get_miss("/b.txt"), None);
    assert_eq!((cache.len(), cache.miss_len(), cache.weight()), (0, 0, 0));
}

#[test]
fn a_largest_file_fits_even_in_a_small_cache() {
    // quick_cache refuses items heavier than one shard: shards follow the file limit.
    let cache = FileCache::new(1 << 20, 256 * 1024);
    let data = vec![b'x'; 256 * 1024];
    let e = Entry::build(loaded("big.bin", &data, &[]), OPTIONS, 0);
    cache.insert("/big.bin", Arc::new(e));
    assert!(cache.get("/big.bin").is_some());
}

#[test]
fn huge_limits_do_not_overflow() {
    let cache = FileCache::new(u64::MAX, u64::MAX);
    let e = Entry::build(loaded("a.txt", b"hi", &[]), OPTIONS, 0);
    cache.insert("/a.txt", Arc::new(e));
    assert!(cache.get("/a.txt").is_some());
}
