//! Unit tests of entries and the bounded cache.

use std::time::UNIX_EPOCH;

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
        body: Body::Memory(Bytes::copy_from_slice(data)),
        generated: false,
    }];
    for &encoding in siblings {
        variants.push(FileVariant {
            encoding,
            stamp: Stamp { len: 3, ..stamp },
            body: Body::Memory(Bytes::from_static(b"zzz")),
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
    let cache = FileCache::new(64 * 1024);
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
    let cache = FileCache::new(1 << 20);
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
