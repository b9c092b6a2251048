//! WebSocket tunnels: after `101 Switching Protocols` the client's connection and the
//! upstream's are spliced, bytes copied both ways until either side closes, or until no
//! byte has moved either way for the upstream's `read_timeout` (nginx closes a quiet
//! WebSocket after `proxy_read_timeout` too; WebSocket servers such as Daphne ping every
//! 20 s by default, which keeps a live tunnel open). A client that vanished without a FIN
//! would otherwise hold the upstream's connection (a Channels consumer) for ever.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h1::Conn;
use super::server_state::InFlight;
use crate::listener::upgrade::OnUpgrade;
use crate::observability::id_str;

/// Joins the client's upgraded connection and the upstream's once the client switched
/// (bytes the server sent right after its `101` go first). `request_id` names the request
/// in the tunnel's log lines (it outlives the handler). The tunnel counts as a request in
/// flight at its server for as long as it lasts (`in_flight`), as nginx counts an upgraded
/// connection: `least_conn`/`p2c` see WebSocket load and the server's `max_connections`
/// caps tunnels too. (The client side holds its connection slots: the client's connection
/// task waits for the tunnel, see `listener::upgrade`.)
pub fn splice(
    client: OnUpgrade,
    conn: Conn,
    idle: Duration,
    request_id: HeaderValue,
    in_flight: InFlight,
) {
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let client = match client.await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(request_id = %id_str(&request_id), error = %e, "websocket upgrade failed");
                return;
            }
        };
        let (upstream, early) = conn.into_upgraded();
        let moved = Arc::new(AtomicU64::new(0));
        let mut client = Counting::new(client, &moved);
        let mut upstream = Counting::new(upstream, &moved);
        let result = async {
            if !early.is_empty() {
                tokio::io::AsyncWriteExt::write_all(&mut client, &early).await?;
            }
            let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
            tokio::pin!(copy);
            let mut seen = 0;
            loop {
                tokio::select! {
                    done = &mut copy => return done.map(|_| ()),
                    () = tokio::time::sleep(idle) => {
                        let now = moved.load(Ordering::Relaxed);
                        if now == seen {
                            tracing::debug!(request_id = %id_str(&request_id), "websocket quiet for read_timeout: closing");
                            return Ok(());
                        }
                        seen = now;
                    }
                }
            }
        };
        if let Err(e) = result.await {
            tracing::debug!(request_id = %id_str(&request_id), error = %e, "websocket connection ended");
        }
    });
}

/// One side of a tunnel, counting the bytes read from it into a total both sides share.
struct Counting<T> {
    io: T,
    moved: Arc<AtomicU64>,
}

impl<T> Counting<T> {
    fn new(io: T, moved: &Arc<AtomicU64>) -> Self {
        Counting {
            io,
            moved: Arc::clone(moved),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counting<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.moved.fetch_add(n, Ordering::Relaxed);
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
