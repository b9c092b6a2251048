//! The gateway's own HTTP/1.1 server connection, as `proxy::h1` is its client side.
//!
//! One task serves one connection, one request at a time: it reads a request head
//! ([`head`]), hands the request to the handler, and writes the response; the request body
//! is read by whoever polls it ([`Body`]), from the same buffered socket. Pipelined requests
//! wait in the read buffer. hyper still serves HTTP/2 (and is the reference in tests).
//!
//! Why not hyper's HTTP/1 server: it parses each head once for itself and once more in our
//! smuggling guard (it drops the evidence of a head framed two ways before we see it),
//! moves each request's handler future into its dispatcher, and allocates a read buffer per
//! request; these were about a third of the user-space instructions per proxied request.
//!
//! What the connection owns:
//! - framing: RFC 9112 §6, made strict (see [`head`]): a body framed two ways, or by
//!   anything but `chunked` or one `Content-Length`, is refused (400 and close, by the
//!   handler so it is logged and counted), never guessed at;
//! - timeouts: the first request within `header_read_timeout` of the connection (or its
//!   TLS handshake); later ones within `idle_timeout` of the previous response, each head
//!   within `header_read_timeout` of its first byte; a request body or a response write
//!   that makes no progress for `idle_timeout` ends the connection (nginx's
//!   `client_body_timeout` and `send_timeout`);
//! - `Expect: 100-continue` (the `100` goes out when the body is first read: a request
//!   refused up front, e.g. a `413`, is answered without the client sending the body),
//!   keep-alive and `Connection: close`, HTTP/1.0 keep-alive, WebSocket upgrades;
//! - responses: `Content-Length` when the body's length is known, else chunked (HTTP/1.1)
//!   or until close (HTTP/1.0); no body for HEAD, 1xx, 204, 304; a body that fails or comes
//!   out shorter or longer than announced ends the connection instead of leaving a
//!   response that looks complete;
//! - graceful drain: on shutdown an idle connection closes, a busy one after its response;
//! - static bodies by sendfile on plain TCP ([`crate::sendfile`]).

mod head;

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::body::RequestBody;
use super::upgrade;
use crate::error::{BoxError, GatewayBody};
use crate::handler::{self, ConnInfo, EncodedFields, RefusedFraming, State};
use crate::http1_body::{Decoder, Step};
use crate::proxy::h1::{push_decimal, push_field};
use crate::proxy::headers::X_REQUEST_ID;
use crate::sendfile::Zerocopy;
use head::{Framing, Parsed, Reject};

/// Room kept free in the read buffer for a request head.
const HEAD_READ: usize = 8 * 1024;
/// Room kept free in the read buffer while a body is read.
const BODY_READ: usize = 32 * 1024;
/// An unread request body up to this size is read and dropped after the response, so the
/// connection can carry the next request; a larger one closes it.
const DRAIN_MAX: u64 = 64 * 1024;
/// How long a closing connection keeps reading (and dropping) what the client still sends,
/// so that its unread bytes do not make the kernel reset the connection before the client
/// has read the response (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes read and dropped while lingering.
const LINGER_MAX: usize = 1024 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The limits a connection runs under (from `server:`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_head: usize,
}

/// Serves HTTP/1.1 requests on `io` until the client leaves, the connection idles out or
/// fails, or `shutdown` fires (a request in progress is answered first, with
/// `Connection: close`). The first request's head must be complete by `first_request_by`.
pub async fn serve<I>(
    io: I,
    limits: Limits,
    state: Arc<arc_swap::ArcSwap<State>>,
    info: Arc<ConnInfo>,
    shutdown: CancellationToken,
    first_request_by: Instant,
) where
    I: AsyncRead + AsyncWrite + Zerocopy + Unpin + Send + 'static,
{
    let core = Arc::new(Mutex::new(Core {
        io,
        buf: BytesMut::with_capacity(HEAD_READ),
        decoder: Decoder::Done,
        seq: 0,
        continue_at: None,
        continue_flush: false,
        eof: false,
        timer: None,
        waiting_since: None,
        idle: limits.idle_timeout,
        max_head: limits.max_head,
    }));
    let mut conn = Connection {
        core,
        limits,
        info,
        shutdown: Box::pin(shutdown.clone().cancelled_owned()),
        draining: shutdown,
        spans: Vec::new(),
        out: Out::default(),
    };
    let mut deadline = Some(first_request_by);
    let lingering = loop {
        let parsed = match conn.read_head(deadline.take()).await {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break false,
            Err(reject) => {
                tracing::debug!(reason = reject.reason(), "refused a request head");
                let _ = conn.write_reject(reject).await;
                break true;
            }
        };
        let next = conn.exchange(parsed, &state).await;
        match next {
            Next::KeepAlive => conn.shrink_buffer(),
            Next::Close { linger } => break linger,
            Next::Upgrade(upgrade) => return conn.hand_over(upgrade).await,
        }
    };
    conn.close(lingering).await;
}

/// What follows a response.
enum Next {
    KeepAlive,
    /// Close; `linger` when the client may still be sending (see [`LINGER`]).
    Close {
        linger: bool,
    },
    /// The `101` is out: the socket goes to the upgrade.
    Upgrade(upgrade::Sender),
}

/// The socket and what is read from it, shared between the connection's task and the
/// request body it hands out (which the handler polls, usually from the same task: the
/// lock is never contended and never held across a wait).
struct Core<I> {
    io: I,
    /// Bytes read and not yet consumed: the rest of a head, body bytes, pipelined requests.
    buf: BytesMut,
    /// Where the current request's body stands.
    decoder: Decoder,
    /// Number of the request whose body `decoder` follows.
    seq: u32,
    /// `Some(n)`: the `100 Continue` is owed, `n` bytes of it written.
    continue_at: Option<usize>,
    /// The `100 Continue` is written but may sit in a TLS buffer.
    continue_flush: bool,
    /// The client closed its side.
    eof: bool,
    /// The connection's one timer, made on first need and moved as deadlines change.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the read or write now waiting started to wait.
    waiting_since: Option<Instant>,
    idle: Duration,
    max_head: usize,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Core<I> {
    /// Reads into the buffer's spare room (at least `room / 2` of it).
    fn poll_read(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < room / 2 {
            self.buf.reserve(room);
        }
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ));
        if matches!(read, Ok(0)) {
            self.eof = true;
        }
        if read.is_ok() {
            self.waiting_since = None;
        }
        Poll::Ready(read)
    }

    /// Whether `deadline` has passed; if not, the task wakes when it does.
    fn poll_deadline(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        loop {
            match timer.as_mut().poll(cx) {
                Poll::Pending => return false,
                Poll::Ready(()) if timer.deadline() >= deadline => return true,
                // It was set for an earlier deadline that no longer applies.
                Poll::Ready(()) => timer.as_mut().reset(deadline),
            }
        }
    }

    /// For a read or write that is waiting: whether it has waited `limit` (the clock is
    /// read once per wait, not per poll).
    fn poll_stalled(&mut self, cx: &mut Context<'_>, limit: Duration) -> bool {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        self.poll_deadline(cx, since + limit)
    }

    /// Writes the `100 Continue` still owed, if any.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(at) = self.continue_at {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &CONTINUE[at..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) if at + n >= CONTINUE.len() => {
                    self.continue_at = None;
                    self.continue_flush = true;
                }
                Ok(n) => self.continue_at = Some(at + n),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if self.continue_flush {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.continue_flush = false;
        }
        Poll::Ready(Ok(()))
    }

    /// The next piece of request `seq`'s body.
    fn poll_body(
        &mut self,
        seq: u32,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BoxError>>> {
        if seq != self.seq {
            return Poll::Ready(Some(
                Err("request body read after its request ended".into()),
            ));
        }
        if let Err(e) = ready!(self.poll_continue(cx)) {
            self.decoder = Decoder::Failed;
            return Poll::Ready(Some(Err(e.into())));
        }
        loop {
            match self.decoder.step(&mut self.buf, self.max_head) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(data))),
                // Request trailers are not passed on.
                Ok(Step::End | Step::Trailers(_)) => return Poll::Ready(None),
                Ok(Step::More) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
            if self.eof {
                self.decoder = Decoder::Failed;
                return Poll::Ready(Some(Err(
                    "the client closed the connection before the body ended".into(),
                )));
            }
            match self.poll_read(cx, BODY_READ) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.decoder = Decoder::Failed;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Pending => {
                    if self.poll_stalled(cx, self.idle) {
                        self.decoder = Decoder::Failed;
                        return Poll::Ready(Some(Err(format!(
                            "no request body bytes for {:?}",
                            self.idle
                        )
                        .into())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Completes when the client closes its connection (or it fails) while its request is being
/// handled, once the request's body has been read (before that the body reader owns the
/// socket). Bytes that arrive meanwhile (a pipelined request) stay in the buffer for later;
/// past `max_head` of them it stops reading (and so watching), which bounds the buffer.
struct ClientWatch<'c, I> {
    core: &'c Mutex<Core<I>>,
    /// It completed: the client is gone.
    gone: bool,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Future for ClientWatch<'_, I> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut core = lock(this.core);
        loop {
            if core.eof {
                this.gone = true;
                return Poll::Ready(());
            }
            // Re-polled whenever the request's task wakes, so the watch starts soon after
            // the body is read.
            if !matches!(core.decoder, Decoder::Done) || core.buf.len() >= core.max_head {
                return Poll::Pending;
            }
            // Into a small buffer on the stack, copied over only when bytes do arrive: the
            // connection buffer's spare room is usually shared with the request's head still
            // in use, and reserving room there would allocate for every request.
            let mut scratch = [0u8; 512];
            let mut read = tokio::io::ReadBuf::new(&mut scratch);
            match Pin::new(&mut core.io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                    core.buf.extend_from_slice(read.filled());
                }
                // End of stream or a failed socket: the client is gone (checked above).
                Poll::Ready(_) => core.eof = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn lock<I>(core: &Mutex<Core<I>>) -> MutexGuard<'_, Core<I>> {
    core.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a request body comes from (a [`Core`] of whatever socket type).
trait Source: Send + Sync {
    fn poll_body(&self, seq: u32, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>>;
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send> Source for Mutex<Core<I>> {
    fn poll_body(&self, seq: u32, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        lock(self).poll_body(seq, cx)
    }
}

/// A request body read from its HTTP/1.1 connection as it is polled.
pub struct Body {
    source: Arc<dyn Source>,
    seq: u32,
    /// Bytes still due of a `Content-Length` body.
    remaining: Option<u64>,
    ended: bool,
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let polled = ready!(self.source.poll_body(self.seq, cx));
        match &polled {
            Some(Ok(data)) => {
                if let Some(left) = &mut self.remaining {
                    *left = left.saturating_sub(data.len() as u64);
                }
            }
            Some(Err(_)) | None => self.ended = true,
        }
        Poll::Ready(polled.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// One client connection (see the module docs).
struct Connection<I> {
    core: Arc<Mutex<Core<I>>>,
    limits: Limits,
    info: Arc<ConnInfo>,
    /// Fires when the gateway starts draining.
    shutdown: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    draining: CancellationToken,
    /// Scratch for the head parser, kept between requests.
    spans: Vec<(u32, u32, u32, u32)>,
    /// Response bytes on their way out; its head buffer is kept between requests.
    out: Out,
}

/// What a request's answer needs to know about it.
struct Asked {
    head: bool,
    version: Version,
    keep_alive: bool,
    refused: bool,
    upgrade: Option<upgrade::Sender>,
}

impl<I> Connection<I>
where
    I: AsyncRead + AsyncWrite + Zerocopy + Unpin + Send + 'static,
{
    /// Waits for the next complete request head; `None` when the connection should just
    /// close (the client left, timed out, or the gateway is draining). `first_by` is the
    /// first request's deadline.
    async fn read_head(&mut self, first_by: Option<Instant>) -> Result<Option<Parsed>, Reject> {
        let limits = self.limits;
        let core = &*self.core;
        let spans = &mut self.spans;
        let shutdown = &mut self.shutdown;
        let mut head_started: Option<Instant> = None;
        poll_fn(|cx| {
            let mut core = lock(core);
            loop {
                if !core.buf.is_empty() {
                    if let Some(parsed) = head::parse(&mut core.buf, limits.max_head, spans)? {
                        core.waiting_since = None;
                        return Poll::Ready(Ok(Some(parsed)));
                    }
                    head_started.get_or_insert_with(Instant::now);
                }
                if core.eof {
                    return Poll::Ready(Ok(None));
                }
                match core.poll_read(cx, HEAD_READ) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ok(None)),
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Pending => {}
                }
                // No request under way: the gateway's drain closes the connection now.
                if head_started.is_none() && shutdown.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(None));
                }
                let deadline = match (first_by, head_started) {
                    (Some(by), _) => by,
                    (None, Some(started)) => started + limits.header_read_timeout,
                    (None, None) => {
                        let since = *core.waiting_since.get_or_insert_with(Instant::now);
                        since + limits.idle_timeout
                    }
                };
                if core.poll_deadline(cx, deadline) {
                    tracing::debug!(
                        partial_head = head_started.is_some(),
                        "closing connection: no request in time"
                    );
                    return Poll::Ready(Ok(None));
                }
                return Poll::Pending;
            }
        })
        .await
    }

    /// Serves one request: hands it to the handler and writes the response.
    async fn exchange(&mut self, parsed: Parsed, state: &arc_swap::ArcSwap<State>) -> Next {
        let Parsed {
            request,
            framing,
            keep_alive,
            expect_continue,
            upgrade,
        } = parsed;
        let seq = {
            let mut core = lock(&self.core);
            core.seq = core.seq.wrapping_add(1);
            core.decoder = match framing {
                Framing::Length(n) => Decoder::length(n),
                Framing::Chunked => Decoder::chunked(),
                Framing::Empty | Framing::Refused(_) => Decoder::Done,
            };
            core.continue_at = expect_continue.then_some(0);
            core.seq
        };
        let body = match framing {
            Framing::Length(n) => RequestBody::Http1(Body {
                source: self.core.clone(),
                seq,
                remaining: Some(n),
                ended: false,
            }),
            Framing::Chunked => RequestBody::Http1(Body {
                source: self.core.clone(),
                seq,
                remaining: None,
                ended: false,
            }),
            Framing::Empty | Framing::Refused(_) => RequestBody::Empty,
        };
        let mut asked = Asked {
            head: request.method() == http::Method::HEAD,
            version: request.version(),
            keep_alive,
            refused: matches!(framing, Framing::Refused(_)),
            upgrade: None,
        };
        let mut request = request.map(|()| body);
        if let Framing::Refused(reason) = framing {
            request.extensions_mut().insert(RefusedFraming(reason));
        }
        if upgrade {
            let (tx, rx) = upgrade::pair();
            request.extensions_mut().insert(rx);
            asked.upgrade = Some(tx);
        }
        // Watched while the handler works (not for an upgrade, whose first bytes after the
        // head belong to the new protocol): a client that goes away abandons its request.
        let mut watch = std::pin::pin!(ClientWatch {
            core: &self.core,
            gone: false,
        });
        let watched =
            (!upgrade).then_some(watch.as_mut() as Pin<&mut (dyn Future<Output = ()> + Send)>);
        let handled =
            match handler::handle(state.load_full(), self.info.clone(), request, watched).await {
                Ok(handled) => handled,
                Err(never) => match never {},
            };
        if watch.gone {
            // Nobody to answer (a half-closed client gets nothing either, as from nginx):
            // dropping the 499 logs and counts it.
            return Next::Close { linger: false };
        }
        self.respond(
            handled.response,
            Some(&handled.request_id),
            handled.fields.as_ref(),
            asked,
        )
        .await
    }

    /// Writes `response` (with `X-Request-Id: request_id` and the encoded `fields` when
    /// given) and decides what comes after it.
    async fn respond(
        &mut self,
        response: Response<GatewayBody>,
        request_id: Option<&HeaderValue>,
        fields: Option<&EncodedFields>,
        asked: Asked,
    ) -> Next {
        let (parts, body) = response.into_parts();
        let status = parts.status;
        let switching = status == StatusCode::SWITCHING_PROTOCOLS;
        if switching && asked.upgrade.is_none() {
            tracing::warn!("handler answered 101 to a request that asked for no upgrade");
            return Next::Close { linger: false };
        }
        let bodiless = crate::http1_body::sent_without_body(status, asked.head);
        let length = if bodiless {
            None
        } else {
            body.size_hint()
                .exact()
                .or_else(|| declared_length(&parts.headers))
        };
        let chunked = !bodiless && length.is_none() && asked.version == Version::HTTP_11;
        let until_close = !bodiless && length.is_none() && !chunked;

        // Whether the connection can carry another request after this one. A body left
        // unread is read and dropped after the response if it is small, except after a
        // 413: that client's body is too large by definition (nginx closes too).
        let (body_settled, continue_owed) = {
            let core = lock(&self.core);
            let settled = match core.decoder {
                Decoder::Done | Decoder::Length(0) => true,
                _ if status == StatusCode::PAYLOAD_TOO_LARGE => false,
                Decoder::Length(n) => n <= DRAIN_MAX,
                Decoder::Failed => false,
                _ => true, // chunked: drained within DRAIN_MAX after the response, or closed
            };
            (settled, core.continue_at.is_some())
        };
        let out = &mut self.out;
        out.head.clear();
        let closing = encode_head(
            &mut out.head,
            status,
            parts.extensions.get::<hyper::ext::ReasonPhrase>(),
            &parts.headers,
            fields,
            request_id,
            Announce {
                length,
                chunked,
                bodiless,
            },
        );
        crate::header_maps::give(parts.headers);
        let keep_alive = asked.keep_alive
            && !asked.refused
            && !switching
            && !until_close
            && body_settled
            && !continue_owed
            && !closing
            && !self.draining.is_cancelled();
        if !keep_alive && !switching && !closing {
            out.head.extend_from_slice(b"connection: close\r\n");
        } else if keep_alive && asked.version == Version::HTTP_10 {
            out.head.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.head.extend_from_slice(b"\r\n");
        out.head_at = 0;

        let written = if bodiless {
            drop(body);
            self.write_out().await
        } else {
            self.write_body(body, length, chunked).await
        };
        if let Err(e) = written.and(self.flush().await) {
            tracing::debug!(error = %e, "response not completed");
            return Next::Close { linger: false };
        }
        if let (true, Some(upgrade)) = (switching, asked.upgrade) {
            return Next::Upgrade(upgrade);
        }
        if !keep_alive {
            return Next::Close { linger: true };
        }
        if !self.drain_request_body().await {
            return Next::Close { linger: true };
        }
        Next::KeepAlive
    }

    /// Writes the head (already in `out`) and the body, framed by `length` or `chunked`
    /// (else until close).
    async fn write_body(
        &mut self,
        body: GatewayBody,
        length: Option<u64>,
        chunked: bool,
    ) -> io::Result<()> {
        let mut body = std::pin::pin!(body);
        let mut sent: u64 = 0;
        // The first frame goes out with the head when it is ready at once.
        let mut next = poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
        loop {
            let frame = match next {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    self.write_out().await?;
                    // Wait for the body, with what was written flushed meanwhile.
                    let core = &*self.core;
                    poll_fn(|cx| match body.as_mut().poll_frame(cx) {
                        Poll::Pending => {
                            let mut core = lock(core);
                            match Pin::new(&mut core.io).poll_flush(cx) {
                                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                                _ => Poll::Pending,
                            }
                        }
                        Poll::Ready(frame) => Poll::Ready(frame),
                    })
                    .await
                }
            };
            match frame {
                None => {
                    if length.is_some_and(|n| n != sent) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "response body shorter than its Content-Length",
                        ));
                    }
                    if chunked {
                        // The last chunk, after the CRLF of the one before if that is
                        // still queued.
                        self.out.tail = if self.out.tail_at == 0 && self.out.tail == b"\r\n" {
                            b"\r\n0\r\n\r\n"
                        } else {
                            b"0\r\n\r\n"
                        };
                        self.out.tail_at = 0;
                    }
                    return self.write_out().await;
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        next = Poll::Pending;
                        continue; // trailers are not sent
                    };
                    sent += data.len() as u64;
                    if length.is_some_and(|n| sent > n) {
                        return Err(io::Error::other(
                            "response body longer than its Content-Length",
                        ));
                    }
                    if !data.is_empty() {
                        self.out.push_data(data, chunked);
                    }
                }
            }
            next = poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
            if !matches!(next, Poll::Ready(None)) {
                // Out before the next frame; only the end goes out with the last data.
                self.write_out().await?;
            }
        }
    }

    /// Writes everything in `out`.
    async fn write_out(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let core = &*self.core;
        let out = &mut self.out;
        let slot = self.info.sendfile.as_ref();
        let idle = self.limits.idle_timeout;
        poll_fn(|cx| {
            let mut core = lock(core);
            while !out.is_empty() {
                let head = &out.head[out.head_at..];
                let tail = &out.tail[out.tail_at..];
                let slices = [
                    IoSlice::new(head),
                    IoSlice::new(&out.data),
                    IoSlice::new(tail),
                ];
                let first = slices.iter().position(|s| !s.is_empty()).unwrap_or(0);
                let slices = &slices[first..];
                let written = match slot.and_then(|slot| {
                    let tcp = core.io.tcp()?;
                    slot.poll_write(tcp, cx, slices)
                }) {
                    Some(polled) => polled,
                    None => Pin::new(&mut core.io).poll_write_vectored(cx, slices),
                };
                match written {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        core.waiting_since = None;
                        out.advance(n);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if core.poll_stalled(cx, idle) {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "client not reading the response",
                            )));
                        }
                        return Poll::Pending;
                    }
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    async fn flush(&mut self) -> io::Result<()> {
        let core = &*self.core;
        poll_fn(|cx| Pin::new(&mut lock(core).io).poll_flush(cx)).await
    }

    /// After a response: reads and drops what is left of the request body (at most
    /// [`DRAIN_MAX`] bytes, within `header_read_timeout`); false if the connection cannot
    /// be reused.
    async fn drain_request_body(&mut self) -> bool {
        let core = &*self.core;
        let limit = self.limits.header_read_timeout;
        let mut dropped: u64 = 0;
        let mut started: Option<Instant> = None;
        poll_fn(|cx| {
            let mut core = lock(core);
            if core.decoder.is_done() {
                return Poll::Ready(true);
            }
            let seq = core.seq;
            loop {
                match core.poll_body(seq, cx) {
                    Poll::Ready(None) => return Poll::Ready(true),
                    Poll::Ready(Some(Ok(data))) => {
                        dropped += data.len() as u64;
                        if dropped > DRAIN_MAX {
                            return Poll::Ready(false);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(false),
                    Poll::Pending => {
                        let since = *started.get_or_insert_with(Instant::now);
                        if core.poll_deadline(cx, since + limit) {
                            return Poll::Ready(false);
                        }
                        return Poll::Pending;
                    }
                }
            }
        })
        .await
    }

    /// Lets go of a read buffer a large body made big, once it holds nothing: an idle
    /// keep-alive connection keeps [`HEAD_READ`] bytes, not the last upload's.
    fn shrink_buffer(&mut self) {
        let mut core = lock(&self.core);
        if core.buf.is_empty() && core.buf.capacity() > 2 * BODY_READ {
            core.buf = BytesMut::with_capacity(HEAD_READ);
        }
    }

    /// After a `101`: the socket and any bytes already read go to the upgrade, and this
    /// task (with the connection's slots) lasts until the tunnel is over.
    async fn hand_over(self, upgrade: upgrade::Sender) {
        // The request body (if any) may still hold the core: then there is no clean hand-over.
        match Arc::try_unwrap(self.core) {
            Ok(core) => {
                let core = core.into_inner().unwrap_or_else(PoisonError::into_inner);
                let (upgraded, over) = upgrade::Upgraded::new(Box::new(core.io), core.buf.freeze());
                // Not taken (the proxy gave up): dropped here, and `over` resolves at once.
                let _ = upgrade.send(upgraded);
                let _ = over.await;
            }
            Err(_) => tracing::debug!("upgrade abandoned: the request body is still held"),
        }
    }

    /// Answers a head the connection refuses by itself (it then closes).
    async fn write_reject(&mut self, reject: Reject) -> io::Result<()> {
        let status = reject.status();
        let code = match reject {
            Reject::BadRequest(_) => "bad_request",
            Reject::TooLarge => "request_head_too_large",
            Reject::UriTooLong => "uri_too_long",
            Reject::Version => "http_version_not_supported",
        };
        let body = format!("{{\"error\":\"{code}\",\"status\":{}}}", status.as_u16());
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        self.out.head.clear();
        encode_head(
            &mut self.out.head,
            status,
            None,
            &headers,
            None,
            None,
            Announce {
                length: Some(body.len() as u64),
                chunked: false,
                bodiless: false,
            },
        );
        self.out
            .head
            .extend_from_slice(b"connection: close\r\n\r\n");
        self.out.head.extend_from_slice(body.as_bytes());
        self.out.head_at = 0;
        self.write_out().await?;
        self.flush().await
    }

    /// Ends the connection: FIN (or TLS close_notify), then, if the client may still be
    /// sending, reads and drops its bytes for a while (see [`LINGER`]).
    async fn close(self, linger: bool) {
        let core = &*self.core;
        let shut = poll_fn(|cx| Pin::new(&mut lock(core).io).poll_shutdown(cx));
        if tokio::time::timeout(LINGER, shut).await.is_err() || !linger {
            return;
        }
        let mut dropped = 0usize;
        let reading = poll_fn(|cx| {
            let mut core = lock(core);
            loop {
                if core.eof || dropped > LINGER_MAX {
                    return Poll::Ready(());
                }
                core.buf.clear();
                match ready!(core.poll_read(cx, HEAD_READ)) {
                    Ok(n) if n > 0 => dropped += n,
                    _ => return Poll::Ready(()),
                }
            }
        });
        let _ = tokio::time::timeout(LINGER, reading).await;
    }
}

/// Whether a `Connection` value lists `close`.
fn lists_close(value: &http::HeaderValue) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// A `Content-Length` the response's headers declare (used when the body cannot say).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(CONTENT_LENGTH)?.to_str().ok()?;
    value.trim().parse().ok()
}

/// How the response body is framed.
struct Announce {
    length: Option<u64>,
    chunked: bool,
    /// No body follows (HEAD, 1xx, 204, 304): the headers go out as they are.
    bodiless: bool,
}

/// Writes the status line and header fields (without the final empty line); returns
/// whether the headers' own `Connection` says `close`. A `request_id` is written as
/// `X-Request-Id` in place of any the headers hold.
fn encode_head(
    dst: &mut Vec<u8>,
    status: StatusCode,
    reason: Option<&hyper::ext::ReasonPhrase>,
    headers: &HeaderMap,
    encoded: Option<&EncodedFields>,
    request_id: Option<&HeaderValue>,
    framing: Announce,
) -> bool {
    let mut close = false;
    let mut dated = false;
    dst.extend_from_slice(b"HTTP/1.1 ");
    dst.extend_from_slice(status.as_str().as_bytes());
    dst.push(b' ');
    match reason {
        Some(reason) => dst.extend_from_slice(reason.as_bytes()),
        None => dst.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    dst.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if *name == TRANSFER_ENCODING
            || (*name == CONTENT_LENGTH && !framing.bodiless)
            || (request_id.is_some() && *name == X_REQUEST_ID)
        {
            continue;
        }
        if *name == CONNECTION {
            close |= lists_close(value);
        }
        dated |= *name == DATE;
        push_field(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(encoded) = encoded {
        dst.extend_from_slice(&encoded.fields);
        dated |= encoded.dated;
    }
    if let Some(id) = request_id {
        push_field(dst, b"x-request-id", id.as_bytes());
    }
    if let Some(n) = framing.length {
        dst.extend_from_slice(b"content-length: ");
        push_decimal(dst, n);
        dst.extend_from_slice(b"\r\n");
    } else if framing.chunked {
        dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !dated {
        dst.extend_from_slice(b"date: ");
        push_date(dst);
        dst.extend_from_slice(b"\r\n");
    }
    close
}

/// The current time as an HTTP date, formatted once per second per thread.
fn push_date(dst: &mut Vec<u8>) {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, Vec<u8>)> = const {
            std::cell::RefCell::new((u64::MAX, Vec::new()))
        };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            cached.1.clear();
            cached
                .1
                .extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
            cached.0 = secs;
        }
        dst.extend_from_slice(&cached.1);
    });
}

/// Response bytes to write: head (or a chunk-size line), data, then a tail (a chunk's CRLF,
/// the last chunk).
#[derive(Default)]
struct Out {
    head: Vec<u8>,
    head_at: usize,
    data: Bytes,
    tail: &'static [u8],
    tail_at: usize,
}

impl Out {
    fn is_empty(&self) -> bool {
        self.head_at == self.head.len() && self.data.is_empty() && self.tail_at == self.tail.len()
    }

    /// Queues `data` after whatever is queued (only head bytes can be: the caller writes
    /// out before queueing more data).
    fn push_data(&mut self, data: Bytes, chunked: bool) {
        debug_assert!(self.data.is_empty() && self.tail_at == self.tail.len());
        if chunked {
            if self.head_at == self.head.len() {
                self.head.clear();
                self.head_at = 0;
            }
            let mut hex = [0u8; 16];
            let mut at = hex.len();
            let mut n = data.len();
            loop {
                at -= 1;
                hex[at] = b"0123456789abcdef"[n & 15];
                n >>= 4;
                if n == 0 {
                    break;
                }
            }
            self.head.extend_from_slice(&hex[at..]);
            self.head.extend_from_slice(b"\r\n");
            self.tail = b"\r\n";
            self.tail_at = 0;
        }
        self.data = data;
    }

    fn advance(&mut self, mut n: usize) {
        let head = (self.head.len() - self.head_at).min(n);
        self.head_at += head;
        n -= head;
        let data = self.data.len().min(n);
        self.data.advance(data);
        n -= data;
        self.tail_at += n.min(self.tail.len() - self.tail_at);
    }
}

#[cfg(test)]
mod tests;
