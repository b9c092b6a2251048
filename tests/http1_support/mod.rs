//! Helpers for `http1_server`: an upstream that records whether each request body arrived
//! whole ([`RecordingUpstream`]), and a raw client connection ([`Client`]) that reads
//! responses one at a time off a kept-alive socket, undoing chunked framing and following
//! the HTTP/1.1 rules for which responses have no body.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{full, BoxError, TestBody};

// ---------------------------------------------------------------------------------------------
// upstream
// ---------------------------------------------------------------------------------------------

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether the body ended cleanly (false: the stream was cut or failed part-way).
    pub complete: bool,
}

/// An HTTP/1.1 upstream (hyper, up to 200 header fields) on 127.0.0.1:0 that records every
/// request. By path:
/// - `/chunked`: 200 with the body `alpha` `beta` `gamma` streamed without a length;
/// - `/sized`: 200 with `Content-Length: 11` and `hello world`;
/// - `/status/N`: status N with no body;
/// - anything else: 200, `<METHOD> <target> <body length>`.
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingUpstream {
    pub async fn start() -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(answer(req, &seen).await) }
                    });
                    // Room for the gateway's own headers on top of a client's 100.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .max_headers(200)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RecordingUpstream { addr, seen, task }
    }

    pub fn all(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The targets (path and query) seen so far, in order.
    pub fn targets(&self) -> Vec<String> {
        self.all().iter().map(|r| r.uri.to_string()).collect()
    }

    pub fn last(&self) -> Recorded {
        self.all().pop().expect("upstream saw no request")
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(req: Request<Incoming>, seen: &Mutex<Vec<Recorded>>) -> Response<TestBody> {
    let (parts, mut body) = req.into_parts();
    let mut data = Vec::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(d) = frame.data_ref() {
                    data.extend_from_slice(d);
                }
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    let body_len = data.len();
    seen.lock().unwrap().push(Recorded {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers,
        body: Bytes::from(data),
        complete,
    });
    let path = parts.uri.path();
    if path == "/chunked" {
        let frames = ["alpha", "beta", "gamma"]
            .map(|s| Ok::<_, BoxError>(Frame::data(Bytes::from_static(s.as_bytes()))));
        return Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            frames,
        ))));
    }
    if path == "/sized" {
        let mut res = Response::new(full("hello world"));
        res.headers_mut()
            .insert(http::header::CONTENT_LENGTH, 11.into());
        return res;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let mut res = Response::new(full(""));
        *res.status_mut() = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        res.headers_mut()
            .insert(http::header::ETAG, http::HeaderValue::from_static("\"v1\""));
        return res;
    }
    let target = parts
        .uri
        .path_and_query()
        .map_or("", |p| p.as_str())
        .to_owned();
    Response::new(full(format!("{} {target} {body_len}", parts.method)))
}

/// One plain listener `http` proxying every path to `upstream`, with extra `server:` keys
/// (indented two spaces) and extra keys for the upstream (indented four).
pub fn yaml(upstream: SocketAddr, server: &str, upstream_extra: &str) -> String {
    crate::common::simple_yaml(upstream, upstream_extra, server)
}

// ---------------------------------------------------------------------------------------------
// client
// ---------------------------------------------------------------------------------------------

/// A response read off the wire.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    /// Lower-case names, in order, repeats kept.
    pub headers: Vec<(String, String)>,
    /// The body with any chunked framing undone.
    pub body: Vec<u8>,
    /// Whether the body came chunked.
    pub chunked: bool,
    /// The head as received.
    pub head: String,
}

impl Parsed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }

    /// Whether `Connection` lists `token` (case-insensitive).
    pub fn connection_has(&self, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == "connection")
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What [`parse_response`] made of the bytes so far.
#[derive(Debug)]
pub enum Parse {
    /// A whole response and how many bytes it took.
    Done(Parsed, usize),
    /// More bytes needed.
    Partial,
    /// Not an HTTP/1.x response.
    Invalid(String),
}

/// Parses one response from the front of `buf`. `head_request`: it answers a HEAD (no
/// body whatever the headers say). `eof`: the peer has closed, so a body without a length
/// ends here.
pub fn parse_response(buf: &[u8], head_request: bool, eof: bool) -> Parse {
    let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if !buf.is_empty() && !b"HTTP/1.".starts_with(&buf[..buf.len().min(7)]) {
            return Parse::Invalid(String::from_utf8_lossy(buf).into_owned());
        }
        return Parse::Partial;
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.splitn(3, ' ');
    let version = words.next().unwrap_or_default().to_owned();
    let Some(status) = words.next().and_then(|s| s.parse::<u16>().ok()) else {
        return Parse::Invalid(head);
    };
    if !version.starts_with("HTTP/1.") {
        return Parse::Invalid(head);
    }
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let rest = &buf[split + 4..];
    let mut parsed = Parsed {
        version,
        status,
        headers: headers.clone(),
        body: Vec::new(),
        chunked: false,
        head: head.clone(),
    };
    let bodiless = head_request || status / 100 == 1 || status == 204 || status == 304;
    if bodiless {
        return Parse::Done(parsed, split + 4);
    }
    let chunked =
        find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        parsed.chunked = true;
        return match dechunk(rest) {
            Ok(Some((body, used))) => {
                parsed.body = body;
                Parse::Done(parsed, split + 4 + used)
            }
            Ok(None) => Parse::Partial,
            Err(e) => Parse::Invalid(e),
        };
    }
    if let Some(len) = find("content-length") {
        let Ok(len) = len.parse::<usize>() else {
            return Parse::Invalid(head);
        };
        if rest.len() < len {
            return Parse::Partial;
        }
        parsed.body = rest[..len].to_vec();
        return Parse::Done(parsed, split + 4 + len);
    }
    // Close-delimited.
    if !eof {
        return Parse::Partial;
    }
    parsed.body = rest.to_vec();
    Parse::Done(parsed, buf.len())
}

/// Undoes chunked framing: the body and the bytes used, `None` if incomplete.
fn dechunk(mut buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let total = buf.len();
    let mut body = Vec::new();
    loop {
        let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[..eol]).map_err(|e| e.to_string())?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|e| format!("{line:?}: {e}"))?;
        buf = &buf[eol + 2..];
        if size == 0 {
            // Trailers, up to an empty line.
            loop {
                let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                buf = &buf[eol + 2..];
                if eol == 0 {
                    return Ok(Some((body, total - buf.len())));
                }
            }
        }
        if buf.len() < size + 2 {
            return Ok(None);
        }
        if &buf[size..size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        body.extend_from_slice(&buf[..size]);
        buf = &buf[size + 2..];
    }
}

/// A raw client connection that keeps what it has read past the last response.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
            eof: false,
        }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.unwrap();
    }

    /// Sends `bytes` one at a time, `pause` apart.
    pub async fn trickle(&mut self, bytes: impl AsRef<[u8]>, pause: Duration) {
        for b in bytes.as_ref() {
            self.stream.write_all(&[*b]).await.unwrap();
            tokio::time::sleep(pause).await;
        }
    }

    /// Reads more bytes; false on EOF or reset.
    async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next whole response, `None` if the connection closes first. Panics after
    /// `timeout` or on bytes that are no response.
    pub async fn response_within(
        &mut self,
        head_request: bool,
        timeout: Duration,
    ) -> Option<Parsed> {
        let read = async {
            loop {
                match parse_response(&self.buf, head_request, self.eof) {
                    Parse::Done(parsed, used) => {
                        self.buf.drain(..used);
                        return Some(parsed);
                    }
                    Parse::Invalid(text) => panic!("not a response: {text:?}"),
                    Parse::Partial if self.eof => return None,
                    Parse::Partial => {
                        self.fill().await;
                    }
                }
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .unwrap_or_else(|_| panic!("no response within {timeout:?}; have {:?}", self.pending()))
    }

    /// The next response within 5 s; panics if the connection closes first.
    pub async fn response(&mut self) -> Parsed {
        self.response_within(false, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("closed before a response; have {:?}", self.pending()))
    }

    /// The next response to a HEAD request within 5 s.
    pub async fn head_response(&mut self) -> Parsed {
        self.response_within(true, Duration::from_secs(5))
            .await
            .expect("closed before the HEAD response")
    }

    /// Whether the peer closes within `timeout` with nothing more to read: bytes arriving
    /// first fail the test.
    pub async fn closes_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.eof {
            if tokio::time::timeout_at(deadline, self.fill())
                .await
                .is_err()
            {
                break;
            }
        }
        assert!(
            self.buf.is_empty(),
            "unexpected bytes: {:?}",
            self.pending()
        );
        self.eof
    }

    /// Bytes read but not yet part of a response, as text.
    pub fn pending(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

/// A chunked body: `parts` framed as chunks, the last chunk and no trailers.
pub fn chunked(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
