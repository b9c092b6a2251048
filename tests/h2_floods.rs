//! HTTP/2 abuse over raw frames: the rapid-reset attack (CVE-2023-44487) in its two forms —
//! a burst of streams reset before the server took them (h2's own limit) and streams reset
//! one at a time after each reached the upstream (the gateway's early-reset count) — the
//! CONTINUATION flood, PING / SETTINGS floods from a client that never reads the answers
//! (h2 stops reading until its answers can be written, so nothing piles up), and the memory
//! one connection can make the gateway hold by not reading its responses.

mod common;
mod limits_support;

use std::time::{Duration, Instant};

use common::*;
use http::Response;
use limits_support::CountingUpstream;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpSocket, TcpStream};

/// RST_STREAM's CANCEL code, as browsers send it.
const CANCEL: [u8; 4] = [0, 0, 0, 8];
/// GOAWAY's ENHANCE_YOUR_CALM code.
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// An upstream that holds `/hold` for 5 s, `/slow` for 300 ms, and answers anything else
/// at once.
async fn holding_upstream() -> TestUpstream {
    TestUpstream::start(|seen: Seen| async move {
        match seen.uri.path() {
            "/hold" => tokio::time::sleep(Duration::from_secs(5)).await,
            "/slow" => tokio::time::sleep(Duration::from_millis(300)).await,
            _ => {}
        }
        Response::new(full("ok"))
    })
    .await
}

/// A gateway (default limits, an admin listener) in front of [`holding_upstream`].
async fn holding_gateway() -> (TestUpstream, TestGateway) {
    let up = holding_upstream().await;
    let admin = "admin:\n  bind: \"127.0.0.1:0\"";
    let gw = TestGateway::start(&simple_yaml(up.addr, admin, "")).await;
    (up, gw)
}

/// The `gateway_http2_reset_floods_total` sample of the `http` listener.
async fn reset_floods(gw: &TestGateway) -> String {
    let admin = gw.gateway.admin_addr().expect("admin listener");
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = "gateway_http2_reset_floods_total{listener=\"http\"} ";
    let line = text.lines().find(|l| l.starts_with(series));
    line.unwrap_or("(missing)").to_string()
}

/// Opens a prior-knowledge HTTP/2 connection (preface and SETTINGS sent).
async fn h2_connect(gw: &TestGateway) -> TcpStream {
    let mut conn = TcpStream::connect(gw.addr("http")).await.unwrap();
    let open = [H2_PREFACE, &h2_frame(H2_SETTINGS, 0, 0, &[])].concat();
    conn.write_all(&open).await.unwrap();
    conn
}

/// Reads everything the server sends until it closes (true) or 3 s pass in silence.
fn read_all(rd: OwnedReadHalf) -> tokio::task::JoinHandle<(Vec<u8>, bool)> {
    read_until(rd, None)
}

/// Reads what the server sends until a frame of `(kind, stream)` arrives (false), it closes
/// (true) or 3 s pass in silence (false).
fn read_until(
    mut rd: OwnedReadHalf,
    until: Option<(u8, u32)>,
) -> tokio::task::JoinHandle<(Vec<u8>, bool)> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16384];
        loop {
            if until.is_some_and(|frame| h2_frames(&got).contains(&frame)) {
                return (got, false);
            }
            match tokio::time::timeout(Duration::from_secs(3), rd.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => return (got, false),
            }
        }
    })
}

/// Waits up to 2 s for the upstream to have seen `n` requests.
async fn upstream_reaches(up: &TestUpstream, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while up.hits() < n {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// Sends `count` requests for `/hold` on `wr`, each cancelled (RST_STREAM) once the upstream
/// has it, from stream `first` on. Returns how many were sent and cancelled before the
/// gateway stopped taking them.
async fn cancel_one_by_one(
    up: &TestUpstream,
    wr: &mut (impl AsyncWrite + Unpin),
    first: u32,
    count: u32,
) -> u32 {
    for i in 0..count {
        let stream = first + 2 * i;
        if wr.write_all(&h2_get(stream, "/hold")).await.is_err() {
            return i;
        }
        let seen = up.hits();
        if !upstream_reaches(up, seen + 1).await {
            return i;
        }
        let reset = h2_frame(H2_RST_STREAM, 0, stream, &CANCEL);
        if wr.write_all(&reset).await.is_err() {
            return i;
        }
    }
    count
}

/// The rapid reset as h2's own limit cannot see it: each request is cancelled only after the
/// gateway took it and sent it upstream, which costs the gateway that upstream connection.
/// Once its client has cancelled 50 requests early (of its first 100) the connection goes
/// away (GOAWAY); this client ignores that and goes on, and 10 more close it. One client
/// connection cannot keep the upstream churning; other connections are served as before.
#[tokio::test]
async fn requests_cancelled_one_by_one_close_the_connection() {
    let (up, gw) = holding_gateway().await;
    let (rd, mut wr) = h2_connect(&gw).await.into_split();
    let reader = read_all(rd);

    let sent = cancel_one_by_one(&up, &mut wr, 1, 300).await;
    let (got, closed) = reader.await.unwrap();
    assert!(closed, "open after {sent} cancelled requests");
    assert!(
        (60..=62).contains(&sent),
        "{sent} requests cancelled before the gateway stopped taking them"
    );
    assert!(up.hits() <= 62, "the upstream saw {} requests", up.hits());
    assert_eq!(h2_goaway_code(&got), Some(0), "{:?}", h2_frames(&got));
    let answered = h2_frames(&got).iter().any(|&(kind, _)| kind == H2_HEADERS);
    assert!(
        !answered,
        "a held request was answered: {:?}",
        h2_frames(&got)
    );

    let client = reqwest::Client::new();
    let fresh = client.get(gw.url("http", "/")).send().await.unwrap();
    assert_eq!(fresh.status(), 200, "a new connection is served");
    assert!(reset_floods(&gw).await.ends_with(" 1"));
}

/// The same limit reached by a client that heeds GOAWAY (a browser whose page cancels many
/// requests): the request it still has in flight is answered, then the connection closes;
/// nothing it asked for is lost.
#[tokio::test]
async fn going_away_for_resets_finishes_the_requests_in_flight() {
    let (up, gw) = holding_gateway().await;
    let mut conn = h2_connect(&gw).await;
    assert_eq!(cancel_one_by_one(&up, &mut conn, 1, 49).await, 49);
    conn.write_all(&h2_get(99, "/slow")).await.unwrap();
    assert!(upstream_reaches(&up, 50).await);
    assert_eq!(cancel_one_by_one(&up, &mut conn, 101, 1).await, 1);

    let start = Instant::now();
    let (got, closed) = h2_read_answering_pings(&mut conn, Duration::from_secs(3)).await;
    let frames = h2_frames(&got);
    assert!(closed, "still open: {frames:?}");
    assert_eq!(h2_goaway_code(&got), Some(0), "{frames:?}");
    let (all, _) = h2_parse(&got);
    let status = all
        .iter()
        .find(|&&(kind, _, stream, _)| kind == H2_HEADERS && stream == 99)
        .and_then(|(_, _, _, block)| block.first().copied());
    assert_eq!(
        status,
        Some(0x88),
        "the request in flight got a 200: {frames:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

/// A browser cancels requests too (a page left while its images load): fewer than 50 early
/// cancellations leave the connection open and serving.
#[tokio::test]
async fn some_cancelled_requests_are_not_a_flood() {
    let (up, gw) = holding_gateway().await;
    let (rd, mut wr) = h2_connect(&gw).await.into_split();
    let reader = read_until(rd, Some((H2_HEADERS, 231)));

    assert_eq!(cancel_one_by_one(&up, &mut wr, 1, 45).await, 45);
    // Completed requests count for the client: 60 answered, then 10 more cancelled is 55
    // early cancellations of 115 requests, within "half of all requests".
    for i in 0..60 {
        wr.write_all(&h2_get(91 + 2 * i, "/")).await.unwrap();
    }
    assert!(upstream_reaches(&up, 105).await, "answered requests");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cancel_one_by_one(&up, &mut wr, 211, 10).await, 10);
    assert!(reset_floods(&gw).await.ends_with(" 0"));
    wr.write_all(&h2_get(231, "/")).await.unwrap();
    let (got, closed) = reader.await.unwrap();
    let frames = h2_frames(&got);
    assert!(!closed, "the connection was closed: {frames:?}");
    assert!(
        frames.contains(&(H2_HEADERS, 231)),
        "the last request was not answered: {frames:?}"
    );
    assert_eq!(h2_goaway_code(&got), None, "the gateway went away");
}

/// The burst form: a thousand HEADERS + RST_STREAM pairs in one write. h2 counts streams
/// reset before the server accepted them and answers GOAWAY ENHANCE_YOUR_CALM after 20;
/// hardly any reach the upstream.
#[tokio::test]
async fn burst_of_reset_streams_is_refused() {
    let (up, gw) = holding_gateway().await;
    let (rd, mut wr) = h2_connect(&gw).await.into_split();
    let reader = read_all(rd);
    let mut burst = Vec::new();
    for i in 0..1000 {
        let stream = 1 + 2 * i;
        burst.extend(h2_get(stream, "/hold"));
        burst.extend(h2_frame(H2_RST_STREAM, 0, stream, &CANCEL));
    }
    let _ = wr.write_all(&burst).await; // may fail once the gateway has closed
    let (got, closed) = reader.await.unwrap();
    assert!(closed);
    assert_eq!(
        h2_goaway_code(&got),
        Some(ENHANCE_YOUR_CALM),
        "{:?}",
        h2_frames(&got)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(up.hits() <= 25, "the upstream saw {} requests", up.hits());
}

/// The CONTINUATION flood (2024's CVE-2024-27316 family): a header block kept open by
/// endless CONTINUATION frames that add nothing (a dynamic-table-size update, or empty).
/// h2 counts them and answers GOAWAY ENHANCE_YOUR_CALM at once, long before the
/// header_read_timeout would; nothing reaches the upstream.
#[tokio::test]
async fn continuation_flood_is_refused() {
    let (up, gw) = holding_gateway().await;
    for filler in [&[][..], &[0x20]] {
        let (rd, mut wr) = h2_connect(&gw).await.into_split();
        let reader = read_all(rd);
        let mut flood = h2_frame(H2_HEADERS, H2_END_STREAM, 1, GET_FIRST_HALF);
        let more = h2_frame(H2_CONTINUATION, 0, 1, filler);
        flood.extend(more.repeat(100_000));
        let start = Instant::now();
        let _ = wr.write_all(&flood).await; // may fail once the gateway has closed
        let (got, closed) = reader.await.unwrap();
        assert!(closed, "filler {filler:?}: still open");
        assert_eq!(
            h2_goaway_code(&got),
            Some(ENHANCE_YOUR_CALM),
            "filler {filler:?}: {:?}",
            h2_frames(&got)
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
    assert_eq!(up.hits(), 0);
}

/// A client that floods PINGs or SETTINGS (each owed an answer) and never reads the answers
/// gets nothing queued for it: once the answers cannot be written, the gateway stops reading
/// the connection, so the client's writes stop making progress. Small socket buffers on the
/// client make that come soon.
#[tokio::test]
async fn control_frame_flood_without_reading_stops_being_read() {
    let (_up, gw) = holding_gateway().await;
    let ping = h2_frame(H2_PING, 0, 0, &[7; 8]);
    let settings = h2_frame(H2_SETTINGS, 0, 0, &[]);
    for (name, frame) in [("PING", ping), ("SETTINGS", settings)] {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.set_send_buffer_size(4096).unwrap();
        let mut conn = socket.connect(gw.addr("http")).await.unwrap();
        let open = [H2_PREFACE, &h2_frame(H2_SETTINGS, 0, 0, &[])].concat();
        conn.write_all(&open).await.unwrap();
        let chunk = frame.repeat(64 * 1024 / frame.len());
        // Write until a whole second passes without the gateway taking a byte, for at most
        // 10 s or 256 MiB: a gateway that kept queueing answers would keep reading.
        let start = Instant::now();
        let mut written = 0usize;
        let stalled = loop {
            if start.elapsed() > Duration::from_secs(10) || written > 256 << 20 {
                break false;
            }
            let rest = &chunk[written % chunk.len()..];
            match tokio::time::timeout(Duration::from_secs(1), conn.write(rest)).await {
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => panic!(
                    "{name}: connection failed after {written} bytes, {:?}: {e}",
                    start.elapsed()
                ),
                Err(_) => break true,
            }
        };
        assert!(
            stalled,
            "{name}: the gateway took {written} bytes in {:?} without its answers being read",
            start.elapsed()
        );
        assert!(written < 64 << 20, "{name}: {written} bytes taken");
        // Nothing else is held up by it.
        let fresh = reqwest::get(gw.url("http", "/")).await.unwrap();
        assert_eq!(fresh.status(), 200);
    }
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A client that opens every stream it may, grants the gateway the largest windows HTTP/2
/// allows, asks for large downloads and then never reads: what the gateway holds for it is
/// bounded by 128 streams x h2's per-stream send buffer (64 KiB) plus the upstream reads,
/// ~11 MiB. With hyper's defaults (256 streams, 400 KiB each) the same connection held
/// ~120 MiB. Measured on the `gateway` binary as a child process, so nothing else in the
/// test counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_bounded_memory() {
    let up = CountingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let port = free_port();
    let yaml = simple_yaml(up.addr, "", "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&config, yaml).unwrap();
    let gw = Running::start(&config);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "gateway not listening: {}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = gw.child.id();
    let before = rss_kib(pid);

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(addr).await.unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 2^31 - 1, and the connection window raised to it.
    let settings = h2_frame(H2_SETTINGS, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]);
    const WINDOW_UPDATE: u8 = 0x8;
    let raise = (0x7fff_ffff_u32 - 65_535).to_be_bytes();
    let mut out = [
        H2_PREFACE,
        &settings,
        &h2_frame(WINDOW_UPDATE, 0, 0, &raise),
    ]
    .concat();
    for i in 0..256 {
        out.extend(h2_get(1 + 2 * i, "/download/100000000"));
    }
    conn.write_all(&out).await.unwrap();

    wait_until("128 streams upstream", Duration::from_secs(10), || {
        up.hits() >= 128
    })
    .await;
    let mut peak = 0;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak = peak.max(rss_kib(pid));
    }
    let grew_mib = peak.saturating_sub(before) / 1024;
    assert!(
        grew_mib < 32,
        "the gateway grew by {grew_mib} MiB for one connection"
    );
    assert_eq!(up.hits(), 128, "streams beyond 128 were refused");
    drop(conn);
}
