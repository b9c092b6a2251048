//! Unit tests of a static site's request path: what is cached, what goes to the disk.

use std::path::Path;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use super::cache::REVALIDATE_AFTER;
use super::*;

fn settings(root: &Path, cache_max_file_bytes: u64, cache_max_bytes: u64) -> StaticSettings {
    StaticSettings {
        root: root.to_path_buf(),
        index: vec!["index.html".into()],
        precompressed: vec![],
        immutable_hashed: false,
        max_age: Duration::from_secs(60),
        compress: false,
        fallback_upstream: false,
        cache_max_file_bytes,
        cache_max_bytes,
        sendfile: true,
    }
}

fn get(path: &str) -> Parts {
    http::Request::get(path).body(()).unwrap().into_parts().0
}

/// Status and body of a GET, or the miss.
async fn fetch(site: &StaticSite, path: &str) -> Result<(u16, Vec<u8>), StaticMiss> {
    let response = site.serve(&get(path), path, None).await?.response;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, body.to_vec()))
}

#[tokio::test]
async fn misses_are_remembered_for_a_second_then_looked_up_again() {
    let dir = tempfile::tempdir().unwrap();
    let site = StaticSite::new(&settings(dir.path(), 1024, 1 << 20), "/static/");
    let first = Instant::now();
    for _ in 0..50 {
        assert_eq!(
            fetch(&site, "/static/new.css").await,
            Err(StaticMiss::NotFound)
        );
    }
    // One blocking lookup, then answers from memory.
    assert_eq!(site.disk_lookups(), 1);
    assert_eq!(site.cache().miss_len(), 1);

    std::fs::write(dir.path().join("new.css"), "a{}").unwrap();
    let still_missing = fetch(&site, "/static/new.css").await;
    if first.elapsed() < REVALIDATE_AFTER {
        assert_eq!(still_missing, Err(StaticMiss::NotFound));
        assert_eq!(site.disk_lookups(), 1);
    }
    // Within the revalidation window the new file is found.
    tokio::time::sleep(REVALIDATE_AFTER).await;
    assert_eq!(
        fetch(&site, "/static/new.css").await,
        Ok((200, b"a{}".to_vec()))
    );
    assert_eq!(site.cache().miss_len(), 0);
    assert_eq!(site.cache().len(), 1);
    let lookups = site.disk_lookups();
    fetch(&site, "/static/new.css").await.unwrap();
    assert_eq!(site.disk_lookups(), lookups, "served from memory");

    // Deleted: a miss again, remembered again.
    std::fs::remove_file(dir.path().join("new.css")).unwrap();
    tokio::time::sleep(REVALIDATE_AFTER).await;
    assert_eq!(
        fetch(&site, "/static/new.css").await,
        Err(StaticMiss::NotFound)
    );
    assert_eq!((site.cache().len(), site.cache().miss_len()), (0, 1));
}

#[tokio::test]
async fn hidden_and_malformed_paths_cost_no_lookup_and_no_memory() {
    let dir = tempfile::tempdir().unwrap();
    let site = StaticSite::new(&settings(dir.path(), 1024, 1 << 20), "/static/");
    for path in ["/static/.env", "/static//x", "/static/a%zz"] {
        assert_eq!(fetch(&site, path).await, Err(StaticMiss::NotFound));
    }
    assert_eq!(site.disk_lookups(), 0);
    assert_eq!(site.cache().miss_len(), 0);
}

#[tokio::test]
async fn zero_cache_bytes_looks_at_the_disk_every_time() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.css"), "one").unwrap();
    let site = StaticSite::new(&settings(dir.path(), 1024, 0), "/static/");
    assert_eq!(
        fetch(&site, "/static/a.css").await,
        Ok((200, b"one".to_vec()))
    );
    std::fs::write(dir.path().join("a.css"), "two!").unwrap();
    assert_eq!(
        fetch(&site, "/static/a.css").await,
        Ok((200, b"two!".to_vec()))
    );
    for _ in 0..3 {
        assert!(fetch(&site, "/static/nope.css").await.is_err());
    }
    assert_eq!(site.disk_lookups(), 5);
    assert_eq!((site.cache().len(), site.cache().miss_len()), (0, 0));
}

#[tokio::test]
async fn only_files_up_to_the_per_file_limit_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let small = vec![b's'; 100];
    let large = vec![b'l'; 101];
    std::fs::write(dir.path().join("small.txt"), &small).unwrap();
    std::fs::write(dir.path().join("large.txt"), &large).unwrap();
    let site = StaticSite::new(&settings(dir.path(), 100, 1 << 20), "/static/");
    for _ in 0..3 {
        assert_eq!(
            fetch(&site, "/static/small.txt").await,
            Ok((200, small.clone()))
        );
        assert_eq!(
            fetch(&site, "/static/large.txt").await,
            Ok((200, large.clone()))
        );
    }
    // The small file was looked up once; the large one (streamed) every time.
    assert_eq!(site.disk_lookups(), 1 + 3);
    assert_eq!(site.cache().len(), 1);

    // 0: nothing is kept in memory, misses still are.
    let site = StaticSite::new(&settings(dir.path(), 0, 1 << 20), "/static/");
    for _ in 0..2 {
        assert_eq!(
            fetch(&site, "/static/small.txt").await,
            Ok((200, small.clone()))
        );
        assert!(fetch(&site, "/static/nope.txt").await.is_err());
    }
    assert_eq!(site.disk_lookups(), 2 + 1);
    assert_eq!((site.cache().len(), site.cache().miss_len()), (0, 1));
}

/// `n` concurrent GETs of `path`.
async fn fetch_many(
    site: &StaticSite,
    path: &str,
    n: usize,
) -> Vec<Result<(u16, Vec<u8>), StaticMiss>> {
    futures_util::future::join_all((0..n).map(|_| fetch(site, path))).await
}

#[tokio::test]
async fn concurrent_first_requests_share_one_lookup() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.css"), "body{}").unwrap();
    std::fs::write(dir.path().join("big.bin"), vec![7u8; 4096]).unwrap();
    let site = StaticSite::new(&settings(dir.path(), 1024, 1 << 20), "/static/");

    for got in fetch_many(&site, "/static/a.css", 50).await {
        assert_eq!(got, Ok((200, b"body{}".to_vec())));
    }
    assert_eq!(
        site.disk_lookups(),
        1,
        "one lookup for 50 concurrent first requests"
    );

    for got in fetch_many(&site, "/static/missing.css", 50).await {
        assert_eq!(got, Err(StaticMiss::NotFound));
    }
    assert_eq!(
        site.disk_lookups(),
        2,
        "one lookup for 50 concurrent misses"
    );

    // Too large to cache: each request needs its own open file, so each looks.
    for got in fetch_many(&site, "/static/big.bin", 10).await {
        assert_eq!(got.unwrap().1.len(), 4096);
    }
    assert_eq!(site.disk_lookups(), 12);
    assert_eq!(site.first_loads.running(), 0);
}

#[tokio::test]
async fn a_cancelled_first_request_leaves_no_gate_behind() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.css"), "body{}").unwrap();
    let site = StaticSite::new(&settings(dir.path(), 1024, 1 << 20), "/static/");
    let first = fetch(&site, "/static/a.css");
    tokio::select! {
        biased;
        _ = first => panic!("a disk lookup cannot finish in one poll"),
        _ = std::future::ready(()) => {}
    }
    assert_eq!(site.first_loads.running(), 0);
    assert_eq!(
        fetch(&site, "/static/a.css").await,
        Ok((200, b"body{}".to_vec()))
    );
}
