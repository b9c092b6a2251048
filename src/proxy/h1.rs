//! HTTP/1.1 to an upstream server, driven from the request's own task.
//!
//! hyper's client runs every upstream connection as a task of its own and hands it requests
//! and responses over channels; per proxied request that machinery was about a third of the
//! gateway's user-space instructions (benches/RESULTS.md). Here the task serving the request
//! writes the request itself and reads the response itself. Parsing stays with httparse (the
//! parser hyper uses): response heads, chunk-size lines and trailers. This module owns the
//! framing around it (RFC 9112 §6):
//!
//! - requests go out with exactly one framing: the `Content-Length` they carry (the body must
//!   match it), a known body length, or `Transfer-Encoding: chunked`;
//! - responses are delimited by `Content-Length`, by chunked coding (the last coding), or by
//!   the connection's close; no body for `HEAD`, `1xx`, `204` and `304`; interim `1xx`
//!   answers other than `101` are skipped. A response with both `Content-Length` and
//!   `Transfer-Encoding`, differing `Content-Length`s, a head over [`MAX_HEAD`] bytes or more
//!   than [`MAX_HEADERS`] fields is refused (502), as nginx refuses them;
//! - a connection goes back to the pool only after a complete exchange that left no stray
//!   bytes behind, with keep-alive on both sides and the request body written in full.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::headers::{self, GatewayFields};
use super::pool::ServerPool;
use super::server_state::InFlight;
use crate::error::{BoxError, GatewayBody};
use crate::http1_body::{Decoder, Step};

/// Largest response head (status line and fields) accepted from an upstream server.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields accepted in a response head (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// Room made in the read buffer before a read of a head.
const HEAD_READ: usize = 8 * 1024;
/// Reads of a response body start at this size, double while they come back full, and
/// halve while they come back mostly empty, between [`HEAD_READ`] and [`MAX_BODY_READ`] (as
/// hyper's adaptive reads do: a large download moves in few system calls, a trickle does
/// not hold large buffers).
const BODY_READ: usize = 16 * 1024;
const MAX_BODY_READ: usize = 256 * 1024;
/// A pooled connection keeps at most this much read buffer while idle.
const IDLE_BUFFER: usize = 16 * 1024;

/// One keep-alive connection to an upstream server.
pub struct Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed (the start of the next response, at most).
    buf: BytesMut,
    /// The encoding buffer for request heads, kept between requests.
    scratch: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, BoxError> {
        let io = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(io) => io?,
            Err(_) => return Err(format!("connect timed out after {timeout:?}").into()),
        };
        io.set_nodelay(true)?;
        Ok(Conn {
            io,
            buf: BytesMut::new(),
            scratch: Vec::new(),
        })
    }

    /// Whether an idle connection can take a request: the server has neither closed it nor
    /// sent anything unasked. Usually answered from the reactor's readiness without a
    /// system call (the last read drained the socket).
    pub fn is_idle_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                matches!(self.io.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Takes the head-encoding buffer (see [`Outgoing::new`]); it comes back with
    /// [`Outgoing::return_scratch`].
    pub fn take_scratch(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.scratch)
    }

    /// Writes `out` and reads the response head. Reading starts at once, so a server that
    /// answers before the request body is through is heard (the connection is then not
    /// reused). Interim `1xx` answers other than `101` are skipped.
    pub async fn exchange(&mut self, out: &mut Outgoing) -> Result<Head, ExchangeError> {
        let mut writing = !out.is_written();
        // A write that failed: the server may have answered and closed before taking the
        // whole body, and its answer (if one comes) is better than the write error.
        let mut write_failed: Option<io::Error> = None;
        let mut parse = !self.buf.is_empty();
        let head = std::future::poll_fn(|cx| loop {
            if writing {
                match out.poll_write(&mut self.io, cx) {
                    Poll::Ready(Ok(())) => writing = false,
                    Poll::Ready(Err(Kind::Io(e))) => {
                        writing = false;
                        write_failed = Some(e);
                    }
                    Poll::Ready(Err(kind)) => {
                        return Poll::Ready(Err(ExchangeError {
                            received: !self.buf.is_empty(),
                            kind,
                        }))
                    }
                    Poll::Pending => {}
                }
            }
            if parse {
                parse = false;
                match parse_head(&mut self.buf, out.head_request, out.pass_fields) {
                    Ok(Some(head)) if head.interim => {
                        parse = true;
                        continue;
                    }
                    Ok(Some(head)) => return Poll::Ready(Ok(head)),
                    Ok(None) if self.buf.len() >= MAX_HEAD => {
                        return Poll::Ready(Err(ExchangeError::invalid(
                            "upstream response head too large",
                        )))
                    }
                    Ok(None) => {}
                    Err(message) => return Poll::Ready(Err(ExchangeError::invalid(message))),
                }
            }
            let kind = match poll_fill(&mut self.io, &mut self.buf, cx, HEAD_READ) {
                Poll::Ready(Ok(0)) => write_failed.take().map_or(Kind::Closed, Kind::Io),
                Poll::Ready(Ok(_)) => {
                    parse = true;
                    continue;
                }
                Poll::Ready(Err(e)) => Kind::Io(write_failed.take().unwrap_or(e)),
                Poll::Pending => return Poll::Pending,
            };
            return Poll::Ready(Err(ExchangeError {
                received: !self.buf.is_empty(),
                kind,
            }));
        })
        .await;
        let mut head = head?;
        // Answered before the request was through: the rest of it will not be sent, so
        // the connection cannot carry another request.
        head.keep_alive &= !writing && write_failed.is_none();
        Ok(head)
    }

    /// The socket and any bytes the server sent after its `101` head: the upgraded stream.
    pub fn into_upgraded(self) -> (TcpStream, Bytes) {
        (self.io, self.buf.freeze())
    }
}

/// Reads into `buf`'s spare room (at least `room` bytes of it).
fn poll_fill(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
    room: usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < room / 2 {
        buf.reserve(room);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Why an exchange produced no response head.
#[derive(Debug)]
pub struct ExchangeError {
    /// Some bytes of a response had arrived.
    pub received: bool,
    pub kind: Kind,
}

#[derive(Debug)]
pub enum Kind {
    /// The socket failed.
    Io(io::Error),
    /// The server closed the connection.
    Closed,
    /// The request body failed (the client's side, or its size limit).
    Body(BoxError),
    /// The request body did not match its declared length.
    BodyLength,
    /// The server's answer broke HTTP/1.1.
    Invalid(&'static str),
}

impl ExchangeError {
    fn invalid(message: &'static str) -> Self {
        ExchangeError {
            received: true,
            kind: Kind::Invalid(message),
        }
    }

    /// The error for the upstream side, for logs and `UpstreamFailed`.
    pub fn into_upstream_error(self) -> BoxError {
        match self.kind {
            Kind::Io(e) => e.into(),
            Kind::Closed if self.received => "upstream closed the connection mid-head".into(),
            Kind::Closed => "upstream closed the connection before answering".into(),
            Kind::Body(e) => e,
            Kind::BodyLength => "request body did not match its Content-Length".into(),
            Kind::Invalid(message) => message.into(),
        }
    }
}

/// A request on its way out: its encoded head, then its body in the chosen framing.
pub struct Outgoing {
    head: Vec<u8>,
    head_pos: usize,
    head_request: bool,
    /// The response's fields may be kept encoded (see [`parse_head`]).
    pass_fields: bool,
    idempotent: bool,
    body: GatewayBody,
    framing: RequestFraming,
    /// The data being written, after `frame[frame_pos..frame_len]` (chunk-size line).
    chunk: Bytes,
    frame: [u8; 24],
    frame_pos: usize,
    frame_len: usize,
    /// The body has ended and its final framing is queued.
    ended: bool,
    /// Nothing of the body has been taken yet (so the request can be sent again).
    pristine: bool,
}

#[derive(Clone, Copy)]
enum RequestFraming {
    /// Exactly this many body bytes are still due.
    Length(u64),
    Chunked {
        started: bool,
    },
}

impl Outgoing {
    /// Encodes the request head into `scratch` (a buffer from [`Conn::take_scratch`], or
    /// empty): `Host` from `gateway`, the fields in `headers` except any of the gateway's
    /// own names ([`headers::is_gateway_field`]) and those never forwarded
    /// ([`headers::is_forwarded_client_field`]), the rest of `gateway`, and one framing:
    /// the `Content-Length` in `headers` (the body must match it), else the body's exact
    /// length, else chunked. `headers` must hold no `Transfer-Encoding` (hop-by-hop, removed
    /// before forwarding).
    pub fn new(
        mut scratch: Vec<u8>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        gateway: &GatewayFields,
        body: GatewayBody,
    ) -> Self {
        scratch.clear();
        scratch.extend_from_slice(method.as_str().as_bytes());
        scratch.push(b' ');
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        scratch.extend_from_slice(target.as_bytes());
        scratch.extend_from_slice(b" HTTP/1.1\r\n");
        gateway.write_host(&mut scratch);
        let mut declared = None;
        let mut cookie_written = false;
        for (name, value) in headers {
            if name == CONTENT_LENGTH {
                // Written once below, as plain digits (never a client's `5, 5`).
                declared = declared.or_else(|| parse_length(value.as_bytes()));
                continue;
            }
            if headers::is_gateway_field(name) || !headers::is_forwarded_client_field(name) {
                continue;
            }
            if name == COOKIE {
                // HTTP/2 clients send each cookie as its own field ("crumbs"); an HTTP/1.1
                // server joins repeated fields with `,`, which splits no cookie pair
                // (Django would read `sessionid=abc,csrftoken=xyz` as one value). One line,
                // joined with `; ` (RFC 9113 §8.2.3). The map yields a name's values
                // together, so the line is still the last one written.
                if cookie_written {
                    scratch.truncate(scratch.len() - 2); // the line's CRLF
                    scratch.extend_from_slice(b"; ");
                    scratch.extend_from_slice(value.as_bytes());
                    scratch.extend_from_slice(b"\r\n");
                    continue;
                }
                cookie_written = true;
            }
            push_field(&mut scratch, name.as_str().as_bytes(), value.as_bytes());
        }
        gateway.write_rest(&mut scratch);
        let ended = body.is_end_stream();
        let framing = match (declared, body.size_hint().exact()) {
            (None, _) if ended => RequestFraming::Length(0),
            (Some(len), _) | (None, Some(len)) => {
                scratch.extend_from_slice(b"content-length: ");
                push_decimal(&mut scratch, len);
                scratch.extend_from_slice(b"\r\n");
                RequestFraming::Length(len)
            }
            (None, None) => {
                scratch.extend_from_slice(b"transfer-encoding: chunked\r\n");
                RequestFraming::Chunked { started: false }
            }
        };
        scratch.extend_from_slice(b"\r\n");
        Outgoing {
            head: scratch,
            head_pos: 0,
            head_request: method == Method::HEAD,
            pass_fields: false,
            idempotent: super::is_idempotent(method),
            body,
            framing,
            chunk: Bytes::new(),
            frame: [0; 24],
            frame_pos: 0,
            frame_len: 0,
            ended: ended && !matches!(framing, RequestFraming::Length(n) if n > 0),
            pristine: true,
        }
    }

    /// The encoded request head.
    #[cfg(test)]
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Lets the response's fields stay encoded: the client speaks HTTP/1.
    pub fn pass_response_fields(&mut self, pass: bool) {
        self.pass_fields = pass;
    }

    /// Whether the request can go out again on another connection after it may have
    /// reached a server: its method is idempotent and none of its body has been taken
    /// (it has none).
    pub fn can_resend(&self) -> bool {
        self.idempotent && self.pristine && self.ended && self.chunk.is_empty()
    }

    /// Starts the request over (only when [`Outgoing::can_resend`]).
    pub fn rewind(&mut self) {
        self.head_pos = 0;
    }

    /// Gives the head buffer back to a connection for its next request.
    pub fn return_scratch(self, conn: &mut Conn) {
        conn.scratch = self.head;
    }

    fn is_written(&self) -> bool {
        self.ended
            && self.head_pos == self.head.len()
            && self.frame_pos == self.frame_len
            && self.chunk.is_empty()
    }

    /// Writes as much as the socket takes; ready once the whole request is out.
    fn poll_write(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), Kind>> {
        loop {
            let idle = self.frame_pos == self.frame_len && self.chunk.is_empty();
            if idle && !self.ended {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        self.pristine = false;
                        if let Ok(data) = frame.into_data() {
                            self.queue(data)?;
                        } // trailers are not forwarded
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Kind::Body(e))),
                    Poll::Ready(None) => {
                        self.finish()?;
                        continue;
                    }
                    // Nothing of the body yet: the head can go ahead alone.
                    Poll::Pending if self.head_pos == self.head.len() => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
            let slices = [
                IoSlice::new(&self.head[self.head_pos..]),
                IoSlice::new(&self.frame[self.frame_pos..self.frame_len]),
                IoSlice::new(&self.chunk),
            ];
            let total = slices.iter().map(|s| s.len()).sum::<usize>();
            if total == 0 {
                if self.ended {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut n =
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices)).map_err(Kind::Io)?;
            if n == 0 {
                return Poll::Ready(Err(Kind::Io(io::ErrorKind::WriteZero.into())));
            }
            let head = (self.head.len() - self.head_pos).min(n);
            self.head_pos += head;
            n -= head;
            let frame = (self.frame_len - self.frame_pos).min(n);
            self.frame_pos += frame;
            n -= frame;
            self.chunk.advance(n);
        }
    }

    /// Queues one data frame of the body, with its chunk-size line when chunked.
    fn queue(&mut self, data: Bytes) -> Result<(), Kind> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            RequestFraming::Length(due) => {
                let len = data.len() as u64;
                if len > *due {
                    return Err(Kind::BodyLength);
                }
                *due -= len;
                self.frame_len = 0;
            }
            RequestFraming::Chunked { started } => {
                let mut at = 0;
                if *started {
                    self.frame[..2].copy_from_slice(b"\r\n");
                    at = 2;
                }
                *started = true;
                at += write_hex(&mut self.frame[at..], data.len() as u64);
                self.frame[at..at + 2].copy_from_slice(b"\r\n");
                self.frame_len = at + 2;
            }
        }
        self.frame_pos = 0;
        self.chunk = data;
        Ok(())
    }

    /// The body ended: checks its length, or queues the last chunk.
    fn finish(&mut self) -> Result<(), Kind> {
        self.ended = true;
        match self.framing {
            RequestFraming::Length(0) => Ok(()),
            RequestFraming::Length(_) => Err(Kind::BodyLength),
            RequestFraming::Chunked { started } => {
                let end: &[u8] = if started {
                    b"\r\n0\r\n\r\n"
                } else {
                    b"0\r\n\r\n"
                };
                self.frame[..end.len()].copy_from_slice(end);
                self.frame_pos = 0;
                self.frame_len = end.len();
                Ok(())
            }
        }
    }
}

fn write_hex(dst: &mut [u8], mut n: u64) -> usize {
    let mut digits = [0u8; 16];
    let mut len = 0;
    loop {
        digits[len] = b"0123456789abcdef"[(n & 15) as usize];
        len += 1;
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    for (i, d) in digits[..len].iter().rev().enumerate() {
        dst[i] = *d;
    }
    len
}

/// One `name: value` field line, as every HTTP/1.1 head the gateway writes carries it.
/// Always inlined: a few calls per field of every proxied request, and inlined the
/// constant names and separators become plain stores (the optimiser left it out of line
/// in some builds and not others, ~300 instructions per request either way).
#[inline(always)]
pub(crate) fn push_field(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.extend_from_slice(name);
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}

/// `n` in decimal digits (Content-Length values, written once per message).
pub(crate) fn push_decimal(dst: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[at..]);
}

/// A `Content-Length` value: digits only (a list of equal values is accepted, as RFC 9110
/// §8.6 allows a recipient to).
fn parse_length(value: &[u8]) -> Option<u64> {
    let mut found = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        match found {
            Some(prev) if prev != n => return None,
            _ => found = Some(n),
        }
    }
    found
}

/// A parsed response head and how its body is delimited.
pub struct Head {
    pub response: Response<()>,
    pub framing: Framing,
    /// The connection may carry another request once this response is read.
    pub keep_alive: bool,
    /// A `1xx` other than `101`: skipped.
    interim: bool,
    /// The fields as the client is sent them, when it speaks HTTP/1 (`response`'s header
    /// map is then empty): see [`parse_head`].
    pub encoded: Option<crate::handler::EncodedFields>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body follows.
    Empty,
    /// This many bytes follow.
    Length(u64),
    Chunked,
    /// The body runs until the server closes the connection.
    Close,
}

/// Parses a response head at the start of `buf`, consuming it when complete.
///
/// With `pass_fields` (the client speaks HTTP/1), a final response other than `101` keeps
/// its fields as the bytes the client is sent ([`Head::encoded`]), hop-by-hop fields
/// dropped, and its header map stays empty: building a map of the fields, filtering it and
/// encoding it again cost ~2,000 of the ~24,000 instructions of a small proxied request.
/// Otherwise the fields go into the map, which [`super::headers::prepare_response`] filters.
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    pass_fields: bool,
) -> Result<Option<Head>, &'static str> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err("upstream response has too many header fields")
        }
        Err(_) => return Err("upstream sent a malformed response head"),
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| "upstream sent an invalid status code")?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(Some(Head {
            response: Response::new(()),
            framing: Framing::Empty,
            keep_alive: true,
            interim: true,
            encoded: None,
        }));
    }
    // Field positions, so that values can share the head's bytes once it is split off.
    let base = buf.as_ptr() as usize;
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = parsed.headers.len();
    for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = field.name.as_ptr() as usize - base;
        let value = field.value.as_ptr() as usize - base;
        *span = (
            name as u32,
            (name + field.name.len()) as u32,
            value as u32,
            (value + field.value.len()) as u32,
        );
    }
    let reason = parsed
        .reason
        .filter(|r| Some(*r) != status.canonical_reason());
    let reason = reason.map(|r| Bytes::copy_from_slice(r.as_bytes()));
    let head = buf.split_to(len).freeze();
    let spans = &spans[..count];
    let field = |&(ns, ne, vs, ve): &(u32, u32, u32, u32)| {
        (
            &head[ns as usize..ne as usize],
            &head[vs as usize..ve as usize],
        )
    };

    // Connection management and framing, from the raw fields.
    let mut kinds = [Field::Other; MAX_HEADERS];
    let mut keep_alive = version == Version::HTTP_11;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    let mut length: Result<Option<u64>, &'static str> = Ok(None);
    let mut has_length = false;
    // `Connection` names a field that is not hop-by-hop anyway.
    let mut names_more = false;
    for (kind, span) in kinds.iter_mut().zip(spans) {
        let (name, value) = field(span);
        *kind = Field::of(name);
        match *kind {
            Field::Connection => {
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive |= version == Version::HTTP_10;
                    } else if !token.is_empty() && Field::of(token) != Field::HopByHop {
                        names_more = true;
                    }
                }
            }
            Field::TransferEncoding => {
                transfer_encoding = true;
                let last = value.rsplit(|&b| b == b',').next().map(<[u8]>::trim_ascii);
                chunked_last = last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
            }
            Field::ContentLength => {
                has_length = true;
                length = length.and_then(|prev| {
                    let n = parse_length(value).ok_or("upstream sent an invalid Content-Length")?;
                    match prev {
                        Some(p) if p != n => Err("upstream sent differing Content-Length values"),
                        _ => Ok(Some(n)),
                    }
                });
            }
            _ => {}
        }
    }
    // (Of the 1xx answers only 101 gets here.)
    let bodiless = crate::http1_body::sent_without_body(status, head_request);
    let framing = if bodiless {
        // No body to frame, but the client is sent its Content-Length: a malformed or
        // ambiguous one is refused as it would be on a GET.
        length?;
        Framing::Empty
    } else if transfer_encoding {
        if has_length {
            return Err("upstream sent both Content-Length and Transfer-Encoding");
        }
        if chunked_last && version == Version::HTTP_11 {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match length? {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    if framing == Framing::Close || status == StatusCode::SWITCHING_PROTOCOLS {
        keep_alive = false;
    }

    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    let encoded = if pass_fields && status != StatusCode::SWITCHING_PROTOCOLS {
        // The client's connection writes the framing of what it sends, except for a
        // response it sends without a body, whose Content-Length describes the upstream's.
        let fields = kinds.iter().zip(spans).map(|(kind, span)| {
            let (name, value) = field(span);
            (*kind, name, value)
        });
        let keep_length = bodiless && status != StatusCode::NO_CONTENT;
        Some(encode_fields(fields, keep_length, names_more)?)
    } else {
        // Room for what the gateway may add: growing a map rehashes it.
        let mut headers = crate::header_maps::take(count + 2);
        // As on HTTP/1: the body's own length frames it (hyper writes `content-length` from
        // it), and a bodiless answer keeps one upstream value (checked above), except a 204,
        // which must carry none. Repeated values are a protocol error to HTTP/2 clients.
        let mut length_kept = !bodiless || status == StatusCode::NO_CONTENT;
        for (span, kind) in spans.iter().zip(&kinds) {
            if *kind == Field::ContentLength {
                if length_kept {
                    continue;
                }
                length_kept = true;
            }
            let (ns, ne, vs, ve) = *span;
            let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
                .map_err(|_| "upstream sent an invalid header name")?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
                .map_err(|_| "upstream sent an invalid header value")?;
            headers.append(name, value);
        }
        *response.headers_mut() = headers;
        None
    };
    if let Some(reason) = reason {
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason) {
            response.extensions_mut().insert(reason);
        }
    }
    Ok(Some(Head {
        response,
        framing,
        keep_alive,
        interim: false,
        encoded,
    }))
}

/// What a response field is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Connection,
    TransferEncoding,
    ContentLength,
    /// Hop-by-hop (RFC 9110 §7.6.1) whether or not `Connection` lists it, other than the
    /// two above: `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`.
    HopByHop,
    RequestId,
    Date,
    Other,
}

impl Field {
    fn of(name: &[u8]) -> Field {
        let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
        match name.len() {
            2 if is(b"te") => Field::HopByHop,
            4 if is(b"date") => Field::Date,
            7 if is(b"trailer") || is(b"upgrade") => Field::HopByHop,
            10 if is(b"connection") => Field::Connection,
            10 if is(b"keep-alive") => Field::HopByHop,
            12 if is(b"x-request-id") => Field::RequestId,
            14 if is(b"content-length") => Field::ContentLength,
            16 if is(b"proxy-connection") => Field::HopByHop,
            17 if is(b"transfer-encoding") => Field::TransferEncoding,
            _ => Field::Other,
        }
    }
}

/// An upstream response's fields as the client is sent them: the names and values as the
/// server wrote them, without hop-by-hop fields, fields that `Connection` names (looked
/// for only when it `names_more` than hop-by-hop ones), `X-Request-Id` (the client's
/// connection writes the gateway's) and `Content-Length` (the connection writes the
/// framing) but, with `keep_length` (a HEAD or 304 answer), its first value. The same rules as
/// [`super::headers::prepare_response`] on a header map.
fn encode_fields<'a>(
    fields: impl Iterator<Item = (Field, &'a [u8], &'a [u8])> + Clone,
    keep_length: bool,
    names_more: bool,
) -> Result<crate::handler::EncodedFields, &'static str> {
    let listed = |name: &[u8]| {
        names_more
            && fields.clone().any(|(kind, _, v)| {
                kind == Field::Connection
                    && v.split(|&b| b == b',')
                        .any(|token| token.trim_ascii().eq_ignore_ascii_case(name))
            })
    };
    let mut out = Vec::with_capacity(256);
    let mut dated = false;
    let mut length_kept = !keep_length;
    for (kind, name, value) in fields.clone() {
        // The same values a header map accepts (httparse lets a DEL through).
        if value.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err("upstream sent an invalid header value");
        }
        let pass = match kind {
            Field::Connection | Field::TransferEncoding | Field::HopByHop | Field::RequestId => {
                false
            }
            Field::ContentLength => !std::mem::replace(&mut length_kept, true) && !listed(name),
            Field::Date | Field::Other => !listed(name),
        };
        if !pass {
            continue;
        }
        dated |= kind == Field::Date;
        push_field(&mut out, name, value);
    }
    Ok(crate::handler::EncodedFields {
        fields: Bytes::from(out),
        dated,
    })
}

/// Pools `conn` after an exchange if it can carry another request: keep-alive on both
/// sides and no stray bytes after the response.
pub fn release(pool: &ServerPool, mut conn: Conn, keep_alive: bool) {
    if !keep_alive || !conn.buf.is_empty() || pool.is_disabled() {
        return;
    }
    if conn.buf.capacity() > IDLE_BUFFER {
        conn.buf = BytesMut::new();
    }
    pool.put(conn);
}

/// The size of the read after one of `current` bytes returned `n`: see [`BODY_READ`].
fn next_read_size(current: usize, n: usize) -> usize {
    if n >= current {
        (current * 2).min(MAX_BODY_READ)
    } else if n > 0 && n < current / 4 {
        (current / 2).max(HEAD_READ)
    } else {
        current
    }
}

/// A response body read from its connection; the connection goes back to the pool when
/// the body has been read to its end (dropped early, the connection is closed). It keeps
/// its request counted in flight at the server until it is dropped.
pub struct ResponseBody {
    conn: Option<Conn>,
    state: BodyState,
    /// The next read's size (see [`BODY_READ`]).
    read_size: usize,
    pool: Arc<ServerPool>,
    keep_alive: bool,
    _in_flight: InFlight,
    /// The longest wait for more bytes from the upstream (`read_timeout`), if bounded.
    stall: Option<crate::stall::StallTimer>,
}

enum BodyState {
    /// `Content-Length` or chunked: [`Decoder`] follows the framing.
    Framed(Decoder),
    /// Until the server closes the connection.
    Close,
    /// Failed: the error goes out on the next poll (see [`ResponseBody::fail`]).
    Failed(Option<BoxError>),
    Done,
}

impl BodyState {
    /// Whether every byte of the body has been read.
    fn is_complete(&self) -> bool {
        match self {
            BodyState::Done => true,
            BodyState::Framed(decoder) => decoder.is_done(),
            _ => false,
        }
    }
}

impl ResponseBody {
    pub fn new(
        conn: Conn,
        framing: Framing,
        keep_alive: bool,
        pool: Arc<ServerPool>,
        in_flight: InFlight,
    ) -> Self {
        let state = match framing {
            Framing::Empty => BodyState::Done,
            Framing::Length(n) => BodyState::Framed(Decoder::length(n)),
            Framing::Chunked => BodyState::Framed(Decoder::chunked()),
            Framing::Close => BodyState::Close,
        };
        let mut body = ResponseBody {
            conn: Some(conn),
            state,
            read_size: BODY_READ,
            pool,
            keep_alive,
            _in_flight: in_flight,
            stall: None,
        };
        if matches!(body.state, BodyState::Done) {
            body.finish();
        }
        body
    }

    /// Cuts the body off when the upstream sends nothing for `limit`.
    pub fn read_timeout(mut self, limit: Duration) -> Self {
        self.stall = Some(crate::stall::StallTimer::new(limit));
        self
    }

    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let Some(conn) = self.conn.take() {
            release(&self.pool, conn, self.keep_alive);
        }
    }

    /// Ends the body with `error`, one poll later: the connection serving the client first
    /// gets to send the head and the data it has (an HTTP/2 reset would discard frames still
    /// queued, and an HTTP/1.1 abort would skip the unflushed ones), so the client sees a
    /// response that breaks off, not no response at all.
    fn fail(
        &mut self,
        cx: &mut Context<'_>,
        error: BoxError,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = BodyState::Failed(Some(error));
        self.conn = None;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let BodyState::Failed(error) = &mut this.state {
                let error = error.take();
                this.state = BodyState::Done;
                return Poll::Ready(error.map(Err));
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let room = match &mut this.state {
                BodyState::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                BodyState::Close if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::Framed(decoder) => match decoder.step(&mut conn.buf, MAX_HEAD) {
                    Ok(Step::Data(data)) => {
                        if decoder.is_done() {
                            // Back to the pool at once, not on the next poll.
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Step::Trailers(trailers)) => {
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Step::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => match decoder.due() {
                        Some(due) => usize::try_from(due)
                            .unwrap_or(usize::MAX)
                            .clamp(HEAD_READ, this.read_size),
                        None => HEAD_READ,
                    },
                    Err(e) => return this.fail(cx, format!("upstream body: {e}").into()),
                },
                BodyState::Close => this.read_size,
                BodyState::Failed(_) => return Poll::Ready(None),
            };
            // More bytes are needed.
            let read = match poll_fill(&mut conn.io, &mut conn.buf, cx, room) {
                Poll::Ready(read) => read,
                Poll::Pending => {
                    if this.stall.as_mut().is_some_and(|s| s.poll_expired(cx)) {
                        let error = "upstream sent nothing within read_timeout mid-body";
                        return this.fail(cx, error.into());
                    }
                    return Poll::Pending;
                }
            };
            if let Some(stall) = &mut this.stall {
                stall.progress();
            }
            if let Ok(n) = read {
                this.read_size = next_read_size(this.read_size, n);
            }
            match read {
                Ok(0) if matches!(this.state, BodyState::Close) => {
                    this.state = BodyState::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(cx, "upstream closed the connection mid-body".into()),
                Ok(_) => {}
                Err(e) => return this.fail(cx, e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state.is_complete()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Framed(decoder) => decoder
                .length_left()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
            BodyState::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A reader may stop at `is_end_stream` without polling once more.
        if self.state.is_complete() {
            self.finish();
        }
    }
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
