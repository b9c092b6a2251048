//! Counting a request when its response body is finished (or abandoned), like the access log:
//! the latency then covers the whole transfer and the byte count is real.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};

use super::{MethodClass, RouteMetrics};

/// What to record once the response is done.
pub struct Completion {
    pub route: Arc<RouteMetrics>,
    pub method: MethodClass,
    pub status: StatusCode,
    pub start: Instant,
}

pin_project_lite::pin_project! {
    /// Wraps a response body; records [`Completion`] when dropped.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        bytes: u64,
        completion: Option<Completion>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(c) = this.completion.take() {
                c.route.finished(c.method, c.status, c.start.elapsed(), *this.bytes);
            }
        }
    }
}

impl<B> MeteredBody<B> {
    pub fn new(inner: B, completion: Completion) -> Self {
        MeteredBody {
            inner,
            bytes: 0,
            completion: Some(completion),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                *this.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
