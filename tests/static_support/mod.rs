//! Helpers of the static-file tests: a tree shaped like Django's `collectstatic` output
//! (hashed names, `.gz`/`.br` siblings made with real encoders), a secret file beside the
//! root, a gateway serving it, and a raw HTTP/1.1 client for paths no URL library would
//! send unchanged.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_compression::tokio::bufread::{BrotliDecoder, BrotliEncoder, GzipDecoder, GzipEncoder};
use gateway::server::Gateway;
use tokio::io::AsyncReadExt;

use crate::common::{raw_exchange_parsed, RawResponse, TestGateway, TestUpstream};

/// Content of the file beside the root: must never appear in any response.
pub const SECRET: &str = "TOP-SECRET-d41d8cd98f00b204";

/// A GET of `url` on `client` with extra `headers`: status, headers and body.
pub async fn fetch(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = client.get(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let h = res.headers().clone();
    (status, h, res.bytes().await.unwrap().to_vec())
}

pub fn css() -> Vec<u8> {
    (0..200)
        .map(|i| format!(".rule-{i} {{ color: #{i:06x}; margin: {i}px; }}\n"))
        .collect::<String>()
        .into_bytes()
}

pub fn js() -> Vec<u8> {
    (0..150)
        .map(|i| format!("export function f{i}(x) {{ return x * {i}; }}\n"))
        .collect::<String>()
        .into_bytes()
}

/// 1.5 MiB of poorly compressible bytes: larger than the in-memory limit, so streamed.
pub fn big_bin() -> Vec<u8> {
    let mut state: u32 = 0x1234_5678;
    (0..1536 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

/// 600 KiB of text: streamed, and compressible on the fly.
pub fn big_text() -> Vec<u8> {
    (0..12_000)
        .map(|i| format!("line {i:08}: the quick brown fox jumps over the lazy dog\n"))
        .collect::<String>()
        .into_bytes()
}

pub async fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzipEncoder::new(data).read_to_end(&mut out).await.unwrap();
    out
}

pub async fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    BrotliEncoder::new(data)
        .read_to_end(&mut out)
        .await
        .unwrap();
    out
}

pub async fn decode(data: &[u8], encoding: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        Some("gzip") => GzipDecoder::new(data).read_to_end(&mut out).await.unwrap(),
        Some("br") => BrotliDecoder::new(data)
            .read_to_end(&mut out)
            .await
            .unwrap(),
        None => return data.to_vec(),
        Some(other) => panic!("unexpected encoding {other}"),
    };
    out
}

/// A gateway over a collectstatic-like tree in `dir/site/static`, with `dir/site/secret.txt`
/// beside it. Routes: `/static/` (precompressed br+gzip, immutable_hashed, max_age 60s),
/// `/assets/` (same root, compress on the fly, no siblings), `/app/` (fallback to the
/// echo upstream).
pub struct Site {
    pub gateway: Gateway,
    pub dir: tempfile::TempDir,
    pub upstream: TestUpstream,
}

impl Site {
    pub async fn start() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site");
        let root = site.join("static");
        write_tree(&root).await;
        std::fs::write(site.join("secret.txt"), SECRET).unwrap();
        let upstream = TestUpstream::echo().await;
        let yaml = format!(
            r#"
listeners:
  - name: http
    bind: "127.0.0.1:0"
upstreams:
  app:
    servers: ["{}"]
    connect_timeout: 1s
    response_timeout: 5s
routes:
  - name: static
    match: {{ path_prefix: /static/ }}
    static:
      root: ./site/static
      precompressed: [br, gzip]
      immutable_hashed: true
      max_age: 60s
  - name: assets
    match: {{ path_prefix: /assets/ }}
    static: {{ root: ./site/static, compress: true, max_age: 0s }}
  - name: app
    match: {{ path_prefix: /app/ }}
    static: {{ root: ./site/static, fallback: upstream }}
    upstream: app
logging:
  access_log: false
"#,
            upstream.addr
        );
        let gateway = TestGateway::start_in(&yaml, dir.path()).await;
        Site {
            gateway,
            dir,
            upstream,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("site/static")
    }

    pub fn addr(&self) -> SocketAddr {
        self.gateway.local_addr("http").unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }
}

async fn write_tree(root: &Path) {
    for sub in ["css", "js", "img", "docs", "empty", "admin/css"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let put = |rel: &str, data: &[u8]| std::fs::write(root.join(rel), data).unwrap();
    let (css, js) = (css(), js());
    // Django's manifest storage keeps the original next to the hashed copy.
    for name in ["css/app.css", "css/app.3f2a9c1b7e4d.css"] {
        put(name, &css);
        put(&format!("{name}.gz"), &gzip(&css).await);
        put(&format!("{name}.br"), &brotli(&css).await);
    }
    put("js/app.3f2a9c1b.js", &js);
    put("js/app.3f2a9c1b.js.gz", &gzip(&js).await);
    put("js/chunk-3f2a9c1b.js", &js);
    put("admin/css/base.css", b"body { margin: 0 }\n");
    put("img/logo.png", b"\x89PNG\r\n\x1a\n-not-really-a-png-");
    put("docs/index.html", b"<!doctype html><title>docs</title>\n");
    put("big.bin", &big_bin());
    put("big.txt", &big_text());
    put(".env", SECRET.as_bytes());
    put("empty.txt", b"");
    #[cfg(unix)]
    {
        use std::os::unix::fs::symlink;
        let secret = root.parent().unwrap().join("secret.txt");
        symlink(&secret, root.join("leak.txt")).unwrap();
        symlink(root.parent().unwrap(), root.join("up")).unwrap();
        put("alias.txt", b"alias");
        symlink(&secret, root.join("alias.txt.gz")).unwrap();
    }
}

/// Sends `METHOD target` with `headers` (each `Name: value`) and `Connection: close`.
pub async fn raw(addr: SocketAddr, method: &str, target: &str, headers: &[&str]) -> RawResponse {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    raw_exchange_parsed(addr, head, Duration::from_secs(10)).await
}
