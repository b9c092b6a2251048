//! Raw-socket HTTP/1.1 helpers: request bytes go out exactly as given (no client library
//! normalises them) and responses come back as text. Every `timeout` bounds the whole read.
//!
//! On a fresh TCP connection to `addr`, by how strict the read is:
//! - [`raw_exchange`]: whatever arrives until the peer closes or the timeout; never fails.
//! - [`raw_exchange_closed`]: the same, plus whether the peer closed (EOF or reset) in time.
//! - [`raw_exchange_parsed`]: the peer must close cleanly in time; status, headers and body.
//!
//! On a stream that is already open (plain or TLS): [`exchange_on_stream`] (write, then read
//! to a close that must come in time), [`read_until_closed`], [`read_one_response`] (for
//! kept-alive connections) and [`read_head`] (consumes nothing after the head).
//!
//! Connecting: [`tls_connect`], and [`refused`] to see that nothing listens any more.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

// ---------------------------------------------------------------------------------------------
// a fresh connection per exchange
// ---------------------------------------------------------------------------------------------

/// Connects to `addr`, writes `raw`, reads until the peer closes or `timeout`: whatever
/// arrived, as lossy text. Neither a timeout nor a reset fails.
pub async fn raw_exchange(addr: SocketAddr, raw: impl AsRef<[u8]>, timeout: Duration) -> String {
    raw_exchange_closed(addr, raw, timeout).await.0
}

/// Connects to `addr`, writes `raw`, then [`read_until_closed`]: what arrived and whether the
/// peer closed the connection (EOF or reset) within `timeout`.
pub async fn raw_exchange_closed(
    addr: SocketAddr,
    raw: impl AsRef<[u8]>,
    timeout: Duration,
) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw.as_ref()).await.unwrap();
    read_until_closed(&mut stream, timeout).await
}

/// Connects to `addr`, writes `raw` and reads until the peer closes, which must happen within
/// `timeout` and cleanly: unlike [`exchange_on_stream`], a reset fails the test. The response
/// is parsed into status, headers and body.
pub async fn raw_exchange_parsed(
    addr: SocketAddr,
    raw: impl AsRef<[u8]>,
    timeout: Duration,
) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw.as_ref()).await.unwrap();
    let (out, end) = read_to_close(&mut stream, timeout).await;
    end.unwrap();
    RawResponse::parse(&out)
}

// ---------------------------------------------------------------------------------------------
// an open stream
// ---------------------------------------------------------------------------------------------

/// Writes `raw` on an open `stream` (plain or TLS) and reads until the peer closes, which
/// must happen within `timeout`; a reset counts as a close. What arrived, as lossy text.
pub async fn exchange_on_stream<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    raw: impl AsRef<[u8]>,
    timeout: Duration,
) -> String {
    stream.write_all(raw.as_ref()).await.unwrap();
    let (out, _reset_counts_as_close) = read_to_close(&mut stream, timeout).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until the peer closes; panics if it has not within `timeout`. Returns what arrived
/// and how the read ended: `Err` for a reset (the bytes before it are kept).
pub async fn read_to_close<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> (Vec<u8>, io::Result<usize>) {
    let mut out = Vec::new();
    let end = tokio::time::timeout(timeout, stream.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| panic!("the peer did not close the connection within {timeout:?}"));
    (out, end)
}

/// Reads until EOF/reset or `timeout`; returns the bytes (lossy text) and whether the
/// connection closed. Neither a timeout nor a reset fails.
pub async fn read_until_closed<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> (String, bool) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let closed = loop {
        let mut buf = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Reads exactly one response (head plus a `Content-Length` body) from a kept-alive
/// connection. `None` if the connection closes first or `timeout` passes.
pub async fn read_one_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Option<String> {
    let read = async {
        let mut out = Vec::new();
        loop {
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if out.len() >= end + 4 + len {
                    return Some(String::from_utf8_lossy(&out).into_owned());
                }
            }
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()
}

/// Reads a head (through `\r\n\r\n`) byte by byte, so nothing after it is consumed. Panics
/// if a byte takes longer than `timeout` or the connection closes before the head ends.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, timeout: Duration) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(timeout, stream.read(&mut byte))
            .await
            .expect("head did not arrive")
            .unwrap();
        assert!(
            n == 1,
            "closed before the end of the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

// ---------------------------------------------------------------------------------------------
// connecting
// ---------------------------------------------------------------------------------------------

/// TCP connect + TLS handshake with `server_name` (a DNS name sends SNI, an IP sends none).
/// A refused connection or a failed handshake is the `Err`; a handshake taking longer than
/// `timeout` panics.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    timeout: Duration,
) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    tokio::time::timeout(timeout, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("TLS handshake hung")
}

/// Whether connecting to `addr` is refused (nothing listens there any more).
pub async fn refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect(addr).await,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
    )
}

// ---------------------------------------------------------------------------------------------
// reading a response
// ---------------------------------------------------------------------------------------------

/// The status code of the first response in `raw` (`HTTP/1.1 404 ...` → 404).
pub fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"))
}

/// One response read off a raw socket, split into its parts.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    /// Everything after the head, as received (chunked framing not undone).
    pub body: Vec<u8>,
    /// The whole response, lossy text.
    pub text: String,
}

impl RawResponse {
    /// Splits `out` at the end of the head; panics if it holds no complete head.
    pub fn parse(out: &[u8]) -> RawResponse {
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(out)));
        let head = String::from_utf8_lossy(&out[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        RawResponse {
            status,
            headers,
            body: out[split + 4..].to_vec(),
            text: String::from_utf8_lossy(out).into_owned(),
        }
    }

    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}
