//! The body of a client's request, whichever server read its head: the gateway's own
//! HTTP/1.1 connection ([`super::http1`]) or hyper's HTTP/2 one.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::error::BoxError;
use crate::stall::StallTimer;

/// A request body as the handler sees it.
pub enum RequestBody {
    /// No body: the head said so (no framing, `Content-Length: 0`), or it was refused.
    Empty,
    /// Read from an HTTP/1.1 connection as the handler asks for it.
    Http1(super::http1::Body),
    /// An HTTP/2 stream's DATA frames.
    Http2(Http2Body),
}

/// An HTTP/2 request body that fails once no DATA has arrived for `idle` (`idle_timeout`,
/// nginx's `client_body_timeout`), as the HTTP/1.1 connection times a stalled body: the
/// h2 connection stays open for its other streams, but a stalled upload cannot hold its
/// stream, its handler (and with `request_buffering: false` an upstream connection) for
/// ever. The handler answers 400 and hyper resets the stream.
pub struct Http2Body {
    inner: hyper::body::Incoming,
    stall: StallTimer,
}

impl Http2Body {
    pub fn new(inner: hyper::body::Incoming, idle: Duration) -> Self {
        Http2Body {
            inner,
            stall: StallTimer::new(idle),
        }
    }
}

impl Body for Http2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.stall.progress();
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending if this.stall.poll_expired(cx) => {
                Poll::Ready(Some(Err(BoxError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no request body data within idle_timeout",
                )))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("RequestBody::Empty"),
            Self::Http1(_) => f.write_str("RequestBody::Http1"),
            Self::Http2(_) => f.write_str("RequestBody::Http2"),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Http1(body) => Pin::new(body).poll_frame(cx),
            Self::Http2(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Http1(body) => body.is_end_stream(),
            Self::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Http1(body) => body.size_hint(),
            Self::Http2(body) => body.size_hint(),
        }
    }
}
