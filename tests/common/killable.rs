//! An in-test upstream that can be killed for real (listener and open connections).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::full;

/// An upstream that can be killed for real: the listener and every open connection close.
pub struct Killable {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub kill: CancellationToken,
}

impl Killable {
    /// Answers `200 ok` after 1 ms; `kill.cancel()` closes everything at once.
    pub async fn start() -> Killable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let kill = CancellationToken::new();
        let h = hits.clone();
        serve_until_killed(listener, kill.clone(), move |_| {
            h.fetch_add(1, Ordering::SeqCst);
        });
        Killable { addr, hits, kill }
    }
}

/// Serves `listener` until `kill` is cancelled, then drops the listener and every open
/// connection at once: each request is passed to `seen`, then answered `200 ok` after 1 ms.
pub fn serve_until_killed<F>(listener: TcpListener, kill: CancellationToken, seen: F)
where
    F: Fn(&http::Request<hyper::body::Incoming>) + Clone + Send + Sync + 'static,
{
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = kill.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let (seen, kill) = (seen.clone(), kill.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    seen(&req);
                    async move {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        Ok::<_, std::convert::Infallible>(Response::new(full("ok")))
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = kill.cancelled() => {}
                    _ = conn => {}
                }
            });
        }
    });
}
