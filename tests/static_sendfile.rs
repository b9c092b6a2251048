//! Cached static files sent with sendfile(2) on plain HTTP/1.1, over real sockets: the bytes
//! that arrive are the file's, whole, for full, ranged, compressed, pipelined and concurrent
//! requests; a file changed in place is never sent under the old headers; `sendfile: false`
//! turns the path off.

mod common;
mod static_support;

use std::path::Path;
use std::time::Duration;

use static_support::fetch;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// The tests read the process-wide sendfile byte count: one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// 200 KiB of varied bytes: cached in memory (under 256 KiB) and sent by sendfile.
fn content(seed: u8) -> Vec<u8> {
    (0..200 * 1024u32)
        .map(|i| (i.wrapping_mul(31) % 251) as u8 ^ seed)
        .collect()
}

async fn start(dir: &Path) -> gateway::server::Gateway {
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files/app.0123456789ab.js"), content(0)).unwrap();
    std::fs::write(dir.join("files/app.0123456789ab.js.gz"), content(7)).unwrap();
    let yaml = r#"
listeners:
  - name: http
    bind: "127.0.0.1:0"
routes:
  - match: { path_prefix: /static/ }
    static: { root: ./files, precompressed: [gzip] }
  - match: { path_prefix: /copied/ }
    static: { root: ./files, sendfile: false }
logging:
  access_log: false
"#;
    common::TestGateway::start_in(yaml, dir).await
}

fn url(gw: &gateway::server::Gateway, path: &str) -> String {
    format!("http://{}{}", gw.local_addr("http").unwrap(), path)
}

/// Splits `out` into the bodies of consecutive `Content-Length` responses.
fn bodies(mut out: &[u8]) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    while let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("content-length");
        found.push(out[end + 4..end + 4 + len].to_vec());
        out = &out[end + 4 + len..];
    }
    found
}

#[tokio::test]
async fn cached_files_arrive_whole_by_sendfile() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path()).await;
    let file = content(0);
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    let before = gateway::sendfile::bytes_sent();

    // Sequential keep-alive requests: whole, compressed sibling, ranges, HEAD.
    let u = url(&gw, "/static/app.0123456789ab.js");
    for _ in 0..5 {
        let (status, _, body) = fetch(&client, &u, &[]).await;
        assert_eq!(status, 200);
        assert!(body == file, "whole file");
    }
    let (_, h, body) = fetch(&client, &u, &[("accept-encoding", "gzip")]).await;
    assert_eq!(h["content-encoding"], "gzip");
    assert!(body == content(7), "the .gz sibling");
    for (from, to) in [(0, 20_000), (1, 1), (100_000, 204_799), (50_000, 70_000)] {
        let range = format!("bytes={from}-{to}");
        let (status, _, body) = fetch(&client, &u, &[("range", &range)]).await;
        assert_eq!(status, 206);
        assert!(body[..] == file[from..=to], "range {range}");
    }
    let head = client.head(&u).send().await.unwrap();
    assert_eq!(head.headers()["content-length"], "204800");
    assert!(head.bytes().await.unwrap().is_empty());

    // Concurrent clients.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, u) = (client.clone(), u.clone());
            tokio::spawn(async move { fetch(&client, &u, &[]).await.2 })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap() == file, "concurrent");
    }

    // Pipelined: three requests in one write, answered in order on one connection.
    let addr = gw.local_addr("http").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let get = "GET /static/app.0123456789ab.js HTTP/1.1\r\nHost: x\r\n";
    let pipelined = format!(
        "{get}\r\n{get}Range: bytes=10-19\r\n\r\n{get}Accept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(pipelined.as_bytes()).await.unwrap();
    let (out, end) = common::read_to_close(&mut stream, Duration::from_secs(10)).await;
    end.unwrap();
    let got = bodies(&out);
    assert_eq!(got.len(), 3);
    assert!(got[0] == file && got[1][..] == file[10..20] && got[2] == content(7));

    let sent = gateway::sendfile::bytes_sent() - before;
    assert!(
        sent >= 20 * file.len() as u64,
        "only {sent} bytes went by sendfile"
    );

    // `sendfile: false`: the same file, copied.
    let before = gateway::sendfile::bytes_sent();
    let (_, _, body) = fetch(&client, &url(&gw, "/copied/app.0123456789ab.js"), &[]).await;
    assert!(body == file);
    assert_eq!(gateway::sendfile::bytes_sent(), before);
}

#[tokio::test]
async fn a_file_changed_in_place_is_answered_from_memory_until_revalidated() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path()).await;
    let old = content(0);
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    let u = url(&gw, "/static/app.0123456789ab.js");
    let (_, h, body) = fetch(&client, &u, &[]).await;
    assert!(body == old);
    let etag = h["etag"].clone();

    // Same inode, same length, new bytes; then cut short. Within the cache's one-second
    // trust window both answers are the cached bytes, matching the old headers.
    let path = dir.path().join("files/app.0123456789ab.js");
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::io::Write::write_all(&mut f, &content(9)).unwrap();
    // The gateway looks at the file at most every RECHECK_AFTER.
    tokio::time::sleep(gateway::sendfile::RECHECK_AFTER * 3).await;
    let before = gateway::sendfile::bytes_sent();
    let (_, h, body) = fetch(&client, &u, &[]).await;
    assert_eq!(h["etag"], etag);
    assert!(body == old, "rewritten in place: old headers, old bytes");
    f.set_len(10).unwrap();
    let (_, h, body) = fetch(&client, &u, &[]).await;
    assert_eq!(h["content-length"], "204800");
    assert!(body == old, "truncated in place: never short");
    assert_eq!(
        gateway::sendfile::bytes_sent(),
        before,
        "nothing sent from the file"
    );

    // After revalidation: the new content, with its own validator.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut fresh = false;
    for _ in 0..20 {
        let (_, h, body) = fetch(&client, &u, &[]).await;
        if body.len() == 10 {
            assert_ne!(h["etag"], etag);
            assert_eq!(body, content(9)[..10]);
            fresh = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fresh, "the new content is served after revalidation");
}
