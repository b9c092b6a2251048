//! Static file serving over real sockets, on a tree like Django's `collectstatic` output:
//! types, caching headers, negotiation of precompressed and on-the-fly variants,
//! validators, ranges, HEAD, folders, methods, fallback, and picking up changes.

mod common;
mod static_support;

use std::time::Duration;

use reqwest::header::HeaderMap;
use static_support::*;

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap, Vec<u8>) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    fetch(&client, url, headers).await
}

fn h<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn types_caching_headers_and_hashed_names() {
    let site = Site::start().await;
    let (status, hd, body) = get(&site.url("/static/css/app.css"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, css());
    assert_eq!(h(&hd, "content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(h(&hd, "x-content-type-options"), Some("nosniff"));
    assert_eq!(h(&hd, "cache-control"), Some("public, max-age=60"));
    assert_eq!(h(&hd, "accept-ranges"), Some("bytes"));
    assert_eq!(h(&hd, "vary"), Some("Accept-Encoding"));
    assert_eq!(
        h(&hd, "content-length"),
        Some(css().len().to_string().as_str())
    );
    assert!(h(&hd, "content-encoding").is_none());
    assert!(h(&hd, "etag").unwrap().starts_with('"'));
    assert!(h(&hd, "last-modified").unwrap().ends_with(" GMT"));
    assert!(hd.contains_key("x-request-id"));

    for hashed in [
        "/static/css/app.3f2a9c1b7e4d.css",
        "/static/js/app.3f2a9c1b.js",
        "/static/js/chunk-3f2a9c1b.js",
    ] {
        let (status, hd, _) = get(&site.url(hashed), &[]).await;
        assert_eq!(status, 200, "{hashed}");
        assert_eq!(
            h(&hd, "cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{hashed}"
        );
    }
    let (_, hd, _) = get(&site.url("/static/js/chunk-3f2a9c1b.js"), &[]).await;
    assert_eq!(
        h(&hd, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    // No sibling and no on-the-fly compression on this route: a single variant, no Vary.
    assert!(h(&hd, "vary").is_none());

    let (status, hd, body) = get(&site.url("/static/img/logo.png"), &[]).await;
    assert_eq!((status, h(&hd, "content-type")), (200, Some("image/png")));
    assert_eq!(body, b"\x89PNG\r\n\x1a\n-not-really-a-png-");
    let (status, hd, body) = get(&site.url("/static/empty.txt"), &[]).await;
    assert_eq!(
        (status, h(&hd, "content-length"), body.len()),
        (200, Some("0"), 0)
    );
    // Several static routes over one folder, each with its own rules.
    let (_, hd, _) = get(&site.url("/assets/css/app.3f2a9c1b7e4d.css"), &[]).await;
    assert_eq!(h(&hd, "cache-control"), Some("public, max-age=0"));
}

#[tokio::test]
async fn precompressed_siblings_are_negotiated() {
    let site = Site::start().await;
    let url = site.url("/static/css/app.3f2a9c1b7e4d.css");
    let mut etags = Vec::new();
    for (accept, expected) in [
        ("gzip, deflate, br", Some("br")),
        ("gzip", Some("gzip")),
        ("br;q=0, gzip", Some("gzip")),
        ("br;q=0.5, gzip;q=0.9", Some("gzip")),
        ("identity", None),
        ("br;q=0, gzip;q=0", None),
        ("deflate", None),
    ] {
        let (status, hd, body) = get(&url, &[("accept-encoding", accept)]).await;
        assert_eq!(status, 200);
        assert_eq!(h(&hd, "content-encoding"), expected, "{accept}");
        assert_eq!(h(&hd, "vary"), Some("Accept-Encoding"));
        assert_eq!(h(&hd, "content-type"), Some("text/css; charset=utf-8"));
        assert_eq!(
            h(&hd, "content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(decode(&body, expected).await, css(), "{accept}");
        etags.push((expected, h(&hd, "etag").unwrap().to_owned()));
    }
    let tag = |e: Option<&str>| etags.iter().find(|(x, _)| *x == e).unwrap().1.clone();
    assert_ne!(tag(Some("br")), tag(Some("gzip")));
    assert_ne!(tag(Some("gzip")), tag(None));

    // Only gzip next to the JS file: br clients get gzip.
    let (_, hd, body) = get(
        &site.url("/static/js/app.3f2a9c1b.js"),
        &[("accept-encoding", "br, gzip")],
    )
    .await;
    assert_eq!(h(&hd, "content-encoding"), Some("gzip"));
    assert_eq!(decode(&body, Some("gzip")).await, js());
}

#[tokio::test]
async fn on_the_fly_compression_for_compressible_types() {
    let site = Site::start().await;
    let accept = [("accept-encoding", "gzip, br")];
    let (_, hd, body) = get(&site.url("/assets/css/app.css"), &accept).await;
    assert_eq!(h(&hd, "content-encoding"), Some("br"));
    assert_eq!(h(&hd, "vary"), Some("Accept-Encoding"));
    assert_eq!(decode(&body, Some("br")).await, css());
    let (_, hd, body) = get(
        &site.url("/assets/css/app.css"),
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(h(&hd, "content-encoding"), Some("gzip"));
    assert_eq!(decode(&body, Some("gzip")).await, css());
    // Too small, or not compressible: as is.
    for path in ["/assets/admin/css/base.css", "/assets/img/logo.png"] {
        let (status, hd, _) = get(&site.url(path), &accept).await;
        assert_eq!(status, 200);
        assert!(h(&hd, "content-encoding").is_none(), "{path}");
    }
    // A large file is compressed while streaming (no length known up front).
    let (status, hd, body) =
        get(&site.url("/assets/big.txt"), &[("accept-encoding", "gzip")]).await;
    assert_eq!((status, h(&hd, "content-encoding")), (200, Some("gzip")));
    assert!(body.len() < big_text().len() / 4);
    assert_eq!(decode(&body, Some("gzip")).await, big_text());
    let (_, hd, body) = get(&site.url("/assets/big.txt"), &[("accept-encoding", "br")]).await;
    assert_eq!(h(&hd, "content-encoding"), Some("br"));
    assert_eq!(decode(&body, Some("br")).await, big_text());
    // A range request gets the identity bytes.
    let (status, hd, body) = get(
        &site.url("/assets/big.txt"),
        &[("accept-encoding", "gzip"), ("range", "bytes=10-19")],
    )
    .await;
    assert_eq!((status, h(&hd, "content-encoding")), (206, None));
    assert_eq!(body, &big_text()[10..20]);
}

#[tokio::test]
async fn validators_answer_304_without_body() {
    let site = Site::start().await;
    let url = site.url("/static/css/app.css");
    let (_, hd, _) = get(&url, &[]).await;
    let etag = h(&hd, "etag").unwrap().to_owned();
    let last_modified = h(&hd, "last-modified").unwrap().to_owned();
    let weak = format!("W/{etag}");
    let list = format!("\"nope\", {etag}");
    for (name, value) in [
        ("if-none-match", etag.as_str()),
        ("if-none-match", weak.as_str()),
        ("if-none-match", list.as_str()),
        ("if-none-match", "*"),
        ("if-modified-since", last_modified.as_str()),
        ("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT"),
    ] {
        let (status, hd, body) = get(&url, &[(name, value)]).await;
        assert_eq!(status, 304, "{name}: {value}");
        assert!(body.is_empty());
        assert_eq!(h(&hd, "etag"), Some(etag.as_str()));
        assert_eq!(h(&hd, "cache-control"), Some("public, max-age=60"));
    }
    for (name, value) in [
        ("if-none-match", "\"nope\""),
        ("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT"),
    ] {
        let (status, _, body) = get(&url, &[(name, value)]).await;
        assert_eq!((status, body.len()), (200, css().len()), "{name}");
    }
    // Each variant has its own validator.
    let br = [("accept-encoding", "br")];
    let (_, hd, _) = get(&url, &br).await;
    let br_tag = h(&hd, "etag").unwrap().to_owned();
    let (status, _, _) = get(&url, &[br[0], ("if-none-match", br_tag.as_str())]).await;
    assert_eq!(status, 304);
    let (status, _, _) = get(&url, &[("if-none-match", br_tag.as_str())]).await;
    assert_eq!(status, 200);
    // HEAD too.
    let r = raw(
        site.addr(),
        "HEAD",
        "/static/css/app.css",
        &[&format!("If-None-Match: {etag}")],
    )
    .await;
    assert_eq!(r.status, 304);
}

#[tokio::test]
async fn single_ranges_multiple_ranges_and_if_range() {
    let site = Site::start().await;
    let data = big_bin();
    let len = data.len();
    for path in ["/static/big.bin", "/static/css/app.css"] {
        let data = if path.ends_with(".bin") {
            data.clone()
        } else {
            css()
        };
        let len = data.len();
        let url = site.url(path);
        let (status, hd, body) = get(&url, &[("range", "bytes=0-99")]).await;
        assert_eq!(status, 206, "{path}");
        assert_eq!(
            h(&hd, "content-range"),
            Some(format!("bytes 0-99/{len}").as_str())
        );
        assert_eq!(h(&hd, "content-length"), Some("100"));
        assert_eq!(body, &data[..100]);
        let (status, _, body) = get(&url, &[("range", "bytes=-10")]).await;
        assert_eq!((status, body.as_slice()), (206, &data[len - 10..]));
        let (status, _, body) = get(&url, &[("range", "bytes=1000-")]).await;
        assert_eq!((status, body.as_slice()), (206, &data[1000..]));
        let (status, hd, body) = get(&url, &[("range", &format!("bytes={len}-"))]).await;
        assert_eq!((status, body.len()), (416, 0));
        assert_eq!(
            h(&hd, "content-range"),
            Some(format!("bytes */{len}").as_str())
        );
        let (status, _, body) = get(&url, &[("range", "bytes=0-1,5-6")]).await;
        assert_eq!((status, body), (200, data.clone()));
    }
    let url = site.url("/static/big.bin");
    let (_, hd, _) = get(&url, &[]).await;
    let etag = h(&hd, "etag").unwrap().to_owned();
    let lm = h(&hd, "last-modified").unwrap().to_owned();
    for (if_range, expected) in [
        (etag.as_str(), 206),
        (lm.as_str(), 206),
        ("\"stale\"", 200),
        ("Sat, 01 Jan 2000 00:00:00 GMT", 200),
    ] {
        let (status, _, body) = get(&url, &[("range", "bytes=5-9"), ("if-range", if_range)]).await;
        assert_eq!(status, expected, "{if_range}");
        let want = if expected == 206 {
            &data[5..10]
        } else {
            &data[..]
        };
        assert_eq!(body, want);
    }
    // A range of the br variant is a range of the compressed bytes.
    let css_url = site.url("/static/css/app.css");
    let (_, _, whole) = get(&css_url, &[("accept-encoding", "br")]).await;
    let (status, hd, part) = get(
        &css_url,
        &[("accept-encoding", "br"), ("range", "bytes=0-9")],
    )
    .await;
    assert_eq!((status, h(&hd, "content-encoding")), (206, Some("br")));
    assert_eq!(part, &whole[..10]);
    assert_eq!(len, 1536 * 1024);
}

#[tokio::test]
async fn head_sends_headers_only_with_the_real_length() {
    let site = Site::start().await;
    let br_len = brotli(&css()).await.len();
    for (path, headers, length) in [
        ("/static/css/app.css", vec![], css().len()),
        ("/static/css/app.css", vec!["Accept-Encoding: br"], br_len),
        ("/static/big.bin", vec![], big_bin().len()),
    ] {
        let r = raw(site.addr(), "HEAD", path, &headers).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("content-length"),
            Some(length.to_string().as_str()),
            "{path}"
        );
        assert!(r.body.is_empty(), "{path}: HEAD sent a body");
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
    }
}

#[tokio::test]
async fn every_protocol_gets_the_same_fields() {
    // A whole-variant GET over HTTP/1 is written from prepared bytes; HTTP/2, HEAD and the
    // other statuses build a header map. The fields must not differ.
    let site = Site::start().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let fields = |hd: &HeaderMap| {
        let mut v: Vec<(String, String)> = hd
            .iter()
            .filter(|(n, _)| !matches!(n.as_str(), "date" | "x-request-id"))
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        v.sort();
        v
    };
    for (path, encoding) in [
        ("/static/css/app.css", "identity"),
        ("/static/css/app.css", "br"),
        ("/static/css/app.css", "gzip"),
        ("/static/big.bin", "identity"),
    ] {
        let ae = [("Accept-Encoding", encoding)];
        let (status, h1, body1) = get(&site.url(path), &ae).await;
        assert_eq!(status, 200);
        assert_eq!(h1.get_all("x-request-id").iter().count(), 1);
        assert_eq!(h1.get_all("content-type").iter().count(), 1);
        let (status, over_h2, body2) = fetch(&h2, &site.url(path), &ae).await;
        assert_eq!(status, 200);
        assert_eq!(fields(&h1), fields(&over_h2), "{path} {encoding}");
        assert_eq!(body1, body2);

        let header = format!("Accept-Encoding: {encoding}");
        let head = raw(site.addr(), "HEAD", path, &[header.as_str()]).await;
        let http10 = common::raw_exchange_parsed(
            site.addr(),
            format!("GET {path} HTTP/1.0\r\n{header}\r\n\r\n"),
            Duration::from_secs(10),
        )
        .await;
        for r in [&head, &http10] {
            let mut v: Vec<(String, String)> = r
                .headers
                .iter()
                .filter(|(n, _)| !matches!(n.as_str(), "date" | "x-request-id" | "connection"))
                .cloned()
                .collect();
            v.sort();
            assert_eq!(v, fields(&h1), "{path} {encoding}");
        }
    }
}

#[tokio::test]
async fn folders_indexes_and_methods() {
    let site = Site::start().await;
    let (status, hd, body) = get(&site.url("/static/docs/"), &[]).await;
    assert_eq!(
        (status, h(&hd, "content-type")),
        (200, Some("text/html; charset=utf-8"))
    );
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("<title>docs</title>"));
    let (status, hd, _) = get(&site.url("/static/docs?x=1"), &[]).await;
    assert_eq!(
        (status, h(&hd, "location")),
        (301, Some("/static/docs/?x=1"))
    );
    for missing in [
        "/static/empty/",
        "/static/empty",
        "/static/",
        "/static",
        "/static/nope.css",
        "/static/css/app.css/",
    ] {
        let (status, hd, body) = get(&site.url(missing), &[]).await;
        assert_eq!(status, 404, "{missing}");
        assert_eq!(h(&hd, "content-type"), Some("application/json"));
        assert_eq!(body, br#"{"error":"not_found","status":404}"#);
    }
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let r = raw(
            site.addr(),
            method,
            "/static/css/app.css",
            &["Content-Length: 0"],
        )
        .await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
}

#[tokio::test]
async fn fallback_upstream_serves_what_the_folder_lacks() {
    let site = Site::start().await;
    let (status, _, body) = get(&site.url("/app/css/app.css"), &[]).await;
    assert_eq!((status, body), (200, css()));
    assert_eq!(site.upstream.hits(), 0);
    let (status, _, body) = get(&site.url("/app/media/report.pdf?v=2"), &[]).await;
    assert_eq!(
        (status, body),
        (200, b"GET /app/media/report.pdf?v=2".to_vec())
    );
    let r = raw(
        site.addr(),
        "POST",
        "/app/css/app.css",
        &["Content-Length: 0"],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(site.upstream.last().method, "POST");
    // Hidden and outside-root files are misses too: the upstream decides, the file is not read.
    let (_, _, body) = get(&site.url("/app/.env"), &[]).await;
    assert_eq!(body, b"GET /app/.env");
}

#[tokio::test]
async fn changes_on_disk_are_picked_up() {
    let site = Site::start().await;
    let url = site.url("/static/admin/css/base.css");
    let (_, hd, body) = get(&url, &[]).await;
    assert_eq!(body, b"body { margin: 0 }\n");
    let old_tag = h(&hd, "etag").unwrap().to_owned();
    std::fs::write(
        site.root().join("admin/css/base.css"),
        "body { margin: 1px }\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The first request after the window revalidates; allow one stale answer meanwhile.
    let mut fresh = None;
    for _ in 0..20 {
        let (_, hd, body) = get(&url, &[]).await;
        if body == b"body { margin: 1px }\n" {
            fresh = Some(h(&hd, "etag").unwrap().to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(fresh.expect("new content served"), old_tag);
    std::fs::remove_file(site.root().join("admin/css/base.css")).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut gone = false;
    for _ in 0..20 {
        if get(&url, &[]).await.0 == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "deleted file still served");
}

#[tokio::test]
async fn a_file_added_after_a_404_is_served_within_about_a_second() {
    let site = Site::start().await;
    let url = site.url("/static/css/late.css");
    for _ in 0..3 {
        assert_eq!(get(&url, &[]).await.0, 404);
    }
    std::fs::write(site.root().join("css/late.css"), "a { color: red }\n").unwrap();
    let added = std::time::Instant::now();
    let mut served = None;
    while added.elapsed() < Duration::from_secs(5) {
        let (status, _, body) = get(&url, &[]).await;
        if status == 200 {
            served = Some((added.elapsed(), body));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (after, body) = served.expect("the new file is served");
    assert_eq!(body, b"a { color: red }\n");
    // The miss is remembered for about a second (plus slack for a busy machine).
    assert!(after < Duration::from_millis(2500), "took {after:?}");
}

/// A separate gateway over its own folder: `/off/` caches nothing, `/tiny/` keeps only
/// files up to 8 bytes in memory.
async fn cache_limits_site(dir: &std::path::Path) -> gateway::server::Gateway {
    std::fs::create_dir_all(dir.join("files")).unwrap();
    let yaml = r#"
listeners:
  - name: http
    bind: "127.0.0.1:0"
routes:
  - match: { path_prefix: /off/ }
    static: { root: ./files, cache_max_bytes: 0 }
  - match: { path_prefix: /tiny/ }
    static: { root: ./files, cache_max_file_bytes: 8B, cache_max_bytes: 1MiB }
logging:
  access_log: false
"#;
    common::TestGateway::start_in(yaml, dir).await
}

#[tokio::test]
async fn cache_max_bytes_zero_reads_every_change_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let gw = cache_limits_site(dir.path()).await;
    let file = dir.path().join("files/a.txt");
    let url = |prefix: &str| format!("http://{}{prefix}a.txt", gw.local_addr("http").unwrap());
    assert_eq!(get(&url("/off/"), &[]).await.0, 404);
    std::fs::write(&file, "one").unwrap();
    // No remembered miss, no cached copy: every request sees the disk as it is.
    assert_eq!(get(&url("/off/"), &[]).await.2, b"one");
    std::fs::write(&file, "two").unwrap();
    assert_eq!(get(&url("/off/"), &[]).await.2, b"two");
    std::fs::write(&file, "three, longer than eight bytes").unwrap();
    let (status, hd, body) = get(&url("/tiny/"), &[("Range", "bytes=0-4")]).await;
    assert_eq!((status, body.as_slice()), (206, &b"three"[..]));
    assert_eq!(h(&hd, "content-range"), Some("bytes 0-4/30"));
    // Larger than cache_max_file_bytes: streamed from disk each time, so a change shows.
    std::fs::write(&file, "four, also longer than eight").unwrap();
    assert_eq!(
        get(&url("/tiny/"), &[]).await.2,
        b"four, also longer than eight"
    );
    std::fs::remove_file(&file).unwrap();
    assert_eq!(get(&url("/off/"), &[]).await.0, 404);
}

#[test]
fn cache_keys_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("files")).unwrap();
    let config = |keys: &str| {
        let yaml = format!(
            "listeners: [{{ name: http, bind: \"127.0.0.1:0\" }}]\n\
             routes:\n  - match: {{ path_prefix: /s/ }}\n    static: {{ root: ./files, {keys} }}\n"
        );
        gateway::config::load_str(&yaml, dir.path(), dir.path().join("gateway.yaml"))
    };
    assert!(config("cache_max_file_bytes: 16KiB, cache_max_bytes: 8MiB").is_ok());
    assert!(config("cache_max_file_bytes: 0").is_ok());
    assert!(config("cache_max_bytes: 0, cache_max_file_bytes: 1GiB").is_ok());
    for (keys, path) in [
        (
            "cache_max_file_bytes: 2MiB, cache_max_bytes: 1MiB",
            "routes[0].static.cache_max_file_bytes",
        ),
        ("cache_max_bytes: lots", "routes[0].static.cache_max_bytes"),
        (
            "cache_max_file_bytes: -1",
            "routes[0].static.cache_max_file_bytes",
        ),
    ] {
        let err = config(keys)
            .err()
            .unwrap_or_else(|| panic!("{keys} accepted"));
        let text = err.to_string();
        assert!(text.contains(path), "{keys}: {text}");
    }
}
