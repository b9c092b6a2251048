//! Request bodies over real sockets: request buffering (a buffered request reaches the
//! upstream only once complete, a streamed one at once), large uploads and downloads
//! streaming through in bounded memory, and a large buffered body spilling to a temporary
//! file and arriving intact.

mod common;
mod limits_support;

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use limits_support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

fn checksum(data: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

// ---------------------------------------------------------------------------------------------
// request buffering
// ---------------------------------------------------------------------------------------------

/// Sends a 3-part chunked body over ~600 ms; returns the upstream connection count seen just
/// before the last part, and the response.
async fn trickle_three_chunks(addr: SocketAddr, up: &TestUpstream) -> (usize, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /trickle HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    for part in [b"part1-", b"part2-"] {
        stream.write_all(b"6\r\n").await.unwrap();
        stream.write_all(part).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let before_last = up.connections.load(Ordering::SeqCst);
    stream.write_all(b"5\r\npart3\r\n0\r\n\r\n").await.unwrap();
    let (got, _) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    (before_last, got)
}

#[tokio::test]
async fn buffered_request_reaches_upstream_only_once_complete() {
    let _g = shared().await;
    let up = TestUpstream::echo().await;
    let yaml = simple_yaml(up.addr, "    request_buffering: true", "");
    let gw = TestGateway::start(&yaml).await;
    let (before_last, got) = trickle_three_chunks(gw.addr("http"), &up).await;
    assert_eq!(
        before_last, 0,
        "upstream contacted before the body was complete"
    );
    assert_eq!(status_of(&got), 200, "{got}");
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    let seen = up.last();
    assert_eq!(&seen.body[..], b"part1-part2-part3");
    assert_eq!(seen.headers["content-length"], "17");
    assert!(seen.headers.get("transfer-encoding").is_none());
}

#[tokio::test]
async fn streamed_request_reaches_upstream_before_body_is_complete() {
    let _g = shared().await;
    let up = TestUpstream::echo().await;
    let yaml = simple_yaml(up.addr, "    request_buffering: false", "");
    let gw = TestGateway::start(&yaml).await;
    let (before_last, got) = trickle_three_chunks(gw.addr("http"), &up).await;
    assert_eq!(before_last, 1, "streaming should connect upstream at once");
    assert_eq!(status_of(&got), 200, "{got}");
    assert_eq!(&up.last().body[..], b"part1-part2-part3");
}

// ---------------------------------------------------------------------------------------------
// large bodies with bounded memory; buffered spill to a temporary file
// ---------------------------------------------------------------------------------------------

fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resets the peak RSS to the current RSS; returns the current RSS in bytes.
fn reset_peak_rss() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("cannot reset VmHWM");
    proc_status_kib("VmRSS:") * 1024
}

fn peak_rss() -> u64 {
    proc_status_kib("VmHWM:") * 1024
}

const BIG: u64 = 256 * MIB as u64;
const MEMORY_BUDGET: u64 = 64 * MIB as u64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_bodies_stream_through_in_bounded_memory() {
    let _g = EXCLUSIVE.write().await;
    let up = CountingUpstream::start().await;
    let yaml = simple_yaml(
        up.addr,
        "    request_buffering: false",
        "  max_body_bytes: 1GiB",
    );
    let gw = TestGateway::start(&yaml).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // Warm up (pools, lazily allocated buffers) so the measurement sees only the transfer.
    let res = client
        .post(gw.url("http", "/warmup"))
        .body(vec![0u8; 256 * KIB])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    up.received.store(0, Ordering::SeqCst);

    // Upload.
    let baseline = reset_peak_rss();
    let start = Instant::now();
    let body = reqwest::Body::wrap_stream(generated_chunks(BIG).map(Ok::<_, std::io::Error>));
    let res = client
        .post(gw.url("http", "/upload"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), BIG.to_string());
    assert_eq!(up.received(), BIG);
    let growth = peak_rss().saturating_sub(baseline);
    eprintln!(
        "upload of {} MiB took {:?}, peak RSS growth {} KiB",
        BIG / MIB as u64,
        start.elapsed(),
        growth / 1024
    );
    assert!(
        growth < MEMORY_BUDGET,
        "upload grew peak RSS by {} MiB",
        growth / MIB as u64
    );

    // Download.
    let baseline = reset_peak_rss();
    let start = Instant::now();
    let res = client
        .get(gw.url("http", &format!("/download/{BIG}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.iter().all(|&b| b == b'x'));
        total += chunk.len() as u64;
    }
    assert_eq!(total, BIG);
    let growth = peak_rss().saturating_sub(baseline);
    eprintln!(
        "download of {} MiB took {:?}, peak RSS growth {} KiB",
        BIG / MIB as u64,
        start.elapsed(),
        growth / 1024
    );
    assert!(
        growth < MEMORY_BUDGET,
        "download grew peak RSS by {} MiB",
        growth / MIB as u64
    );
}

/// Open files of this process that are unlinked and exactly `len` bytes long.
fn deleted_open_files_of_len(len: u64) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|target| target.to_string_lossy().ends_with("(deleted)"))
        })
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.len() == len))
        .count()
}

#[tokio::test]
async fn buffered_large_body_spills_to_a_temp_file_and_arrives_intact() {
    let _g = shared().await;
    const LEN: usize = 8 * MIB;
    let spilled = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(None::<(http::HeaderMap, Bytes)>));
    // The upstream looks for the spilled file as soon as the request head arrives, before it
    // reads any of the body: the gateway is still sending it, from the file.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let (spilled2, seen2) = (spilled.clone(), seen.clone());
    let upstream = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            spilled2.store(deleted_open_files_of_len(LEN as u64), Ordering::SeqCst);
            let seen = seen2.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let sum = format!("{:x}", checksum(&body));
                *seen.lock().unwrap() = Some((parts.headers, body));
                Ok::<_, std::convert::Infallible>(Response::new(full(sum)))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let yaml = simple_yaml(
        up_addr,
        "    request_buffering: true",
        "  max_body_bytes: 16MiB",
    );
    let gw = TestGateway::start(&yaml).await;
    // Not uniform, so reordering or loss changes the checksum.
    let body: Vec<u8> = (0..LEN as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let expected = format!("{:x}", checksum(&body));
    let chunks: Vec<Bytes> = body.chunks(100_000).map(Bytes::copy_from_slice).collect();
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let res = reqwest::Client::new()
        .post(gw.url("http", "/big"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), expected);
    let (headers, seen_body) = seen
        .lock()
        .unwrap()
        .take()
        .expect("upstream saw no request");
    assert_eq!(headers["content-length"], LEN.to_string().as_str());
    assert_eq!(seen_body.len(), LEN);
    assert!(
        spilled.load(Ordering::SeqCst) >= 1,
        "no unlinked temp file of the body's size was open while it was forwarded"
    );
    upstream.abort();
}
