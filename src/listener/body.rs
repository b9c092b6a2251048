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
///
/// A stream the client resets with `NO_ERROR` or `CANCEL` ends hyper's body as if it were
/// complete, so an upload cut short could go upstream framed as whole (RFC 9113 §8.1.1:
/// the request is aborted). Two guards: a body shorter than its `content-length` fails;
/// and at its end the body yields once before saying so, which lets hyper see the reset
/// and drop the request (it checks for one whenever the handler is pending) before the
/// last chunk or a buffered body goes upstream.
pub struct Http2Body<B = hyper::body::Incoming> {
    inner: B,
    stall: StallTimer,
    /// The request's `content-length`, if it declared one.
    declared: Option<u64>,
    received: u64,
    /// The end was seen once (and a yield made).
    ending: bool,
}

impl<B> Http2Body<B> {
    pub fn new(inner: B, idle: Duration, declared: Option<u64>) -> Self {
        Http2Body {
            inner,
            stall: StallTimer::new(idle),
            declared,
            received: 0,
            ending: false,
        }
    }
}

impl<B> Body for Http2Body<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ending {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if this
                    .declared
                    .is_some_and(|declared| this.received < declared)
                {
                    return Poll::Ready(Some(Err(BoxError::from(
                        "the request body ended before its content-length (stream reset)",
                    ))));
                }
                this.ending = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(Some(frame)) => {
                this.stall.progress();
                if let Ok(data) = &frame {
                    if let Some(data) = data.data_ref() {
                        this.received += data.len() as u64;
                    }
                }
                Poll::Ready(Some(frame.map_err(Into::into)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    /// A body that yields `chunks` and then ends, as hyper's does for a stream the client
    /// reset with NO_ERROR or CANCEL.
    fn ending_after(
        chunks: &[&'static [u8]],
    ) -> Http2Body<impl Body<Data = Bytes, Error = BoxError> + Unpin> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(frames));
        Http2Body::new(body, Duration::from_secs(5), None)
    }

    #[tokio::test]
    async fn a_body_short_of_its_content_length_fails() {
        let mut short = ending_after(&[b"abc", b"def"]);
        short.declared = Some(100_000);
        let err = short.collect().await.expect_err("a cut-off body must fail");
        assert!(err.to_string().contains("content-length"), "{err}");

        let mut whole = ending_after(&[b"abc", b"def"]);
        whole.declared = Some(6);
        assert_eq!(whole.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn the_end_is_announced_after_one_yield() {
        let mut body = ending_after(&[b"x"]);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut pinned = Pin::new(&mut body);
        assert!(matches!(
            pinned.as_mut().poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        // The first sight of the end yields (hyper then looks for a reset)...
        assert!(pinned.as_mut().poll_frame(&mut cx).is_pending());
        // ...and the next poll ends the body.
        assert!(matches!(
            pinned.as_mut().poll_frame(&mut cx),
            Poll::Ready(None)
        ));
    }
}
