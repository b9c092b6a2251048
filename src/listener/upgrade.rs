//! Handing an HTTP/1.1 connection over after `101 Switching Protocols` (WebSocket).
//!
//! The connection puts an [`OnUpgrade`] into the extensions of a request that asks for an
//! upgrade; the handler takes it with [`on`]. If the response is a `101`, the connection
//! writes it and sends its socket (with any bytes the client already sent after the
//! request head) through; otherwise the sender is dropped and [`OnUpgrade`] resolves to an
//! error.
//!
//! The connection's task then waits until the [`Upgraded`] is dropped (the tunnel ended):
//! what it holds for the connection (the `max_connections` permit, the per-address slot,
//! `gateway_active_connections`, the drain's task tracker) holds for the tunnel too, so
//! WebSockets count against every connection limit and a drain waits for them (up to
//! `shutdown_grace`), as with nginx.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// What a client connection's socket must be to be handed over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A connection after `101`: reads return the bytes that followed the request head first.
pub struct Upgraded {
    io: Box<dyn Io>,
    early: Bytes,
    /// Dropped with the tunnel: tells the connection's task it is over.
    _done: oneshot::Sender<()>,
}

impl Upgraded {
    /// The upgraded connection, and what resolves once it has been dropped.
    pub(super) fn new(io: Box<dyn Io>, early: Bytes) -> (Self, oneshot::Receiver<()>) {
        let (done, over) = oneshot::channel();
        let upgraded = Upgraded {
            io,
            early,
            _done: done,
        };
        (upgraded, over)
    }
}

/// Resolves to the connection once its `101` has been written.
pub struct OnUpgrade(oneshot::Receiver<Upgraded>);

/// The sending side, kept by the connection.
pub(super) type Sender = oneshot::Sender<Upgraded>;

/// The request extension holding an [`OnUpgrade`] (extensions must be `Clone`).
#[derive(Clone)]
pub(super) struct Pending(Arc<Mutex<Option<OnUpgrade>>>);

pub(super) fn pair() -> (Sender, Pending) {
    let (tx, rx) = oneshot::channel();
    (tx, Pending(Arc::new(Mutex::new(Some(OnUpgrade(rx))))))
}

/// Takes the upgrade handle out of a request that asked for one.
pub fn on<B>(req: &mut Request<B>) -> Option<OnUpgrade> {
    let pending = req.extensions_mut().remove::<Pending>()?;
    let mut slot = pending.0.lock().unwrap_or_else(PoisonError::into_inner);
    slot.take()
}

impl Future for OnUpgrade {
    type Output = io::Result<Upgraded>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map_err(|_| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection was not upgraded",
            )
        })
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            buf.put_slice(&self.early[..n]);
            self.early.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
