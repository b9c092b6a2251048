//! Helpers shared by the `limits_*` tests: the lock that lets the memory test run alone in
//! its binary (`EXCLUSIVE`, held shared by every other test through `shared()`), size
//! constants, and `CountingUpstream`, an HTTP/1.1 upstream that counts body bytes without
//! keeping them and can stream a large generated response.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::common::{full, BoxError, TestBody};

/// The memory test measures the whole test process, so it runs alone: every other test in
/// its binary holds this lock shared, the memory test holds it exclusively. Each test binary
/// has its own copy; in binaries without the memory test the shared guard costs nothing.
pub static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

pub async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().await
}

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

/// An HTTP/1.1 upstream that counts body bytes as they arrive without keeping them, and can
/// stream a large response: `GET /download/N` answers N bytes; anything else answers the
/// number of body bytes it received.
pub struct CountingUpstream {
    pub addr: SocketAddr,
    pub received: Arc<AtomicU64>,
    pub hits: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    pub task: tokio::task::JoinHandle<()>,
}

impl CountingUpstream {
    pub async fn start() -> CountingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (received2, hits2, conns2) = (received.clone(), hits.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns2.fetch_add(1, Ordering::SeqCst);
                let (received, hits) = (received2.clone(), hits2.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (received, hits) = (received.clone(), hits.clone());
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let download = req
                                .uri()
                                .path()
                                .strip_prefix("/download/")
                                .map(|n| n.parse::<u64>().unwrap());
                            let mut body = req.into_body();
                            let mut mine = 0u64;
                            while let Some(frame) = body.frame().await {
                                let Ok(frame) = frame else {
                                    // Truncated body: the gateway cut the stream.
                                    return Err("client body failed");
                                };
                                if let Some(data) = frame.data_ref() {
                                    mine += data.len() as u64;
                                    received.fetch_add(data.len() as u64, Ordering::SeqCst);
                                }
                            }
                            Ok::<_, &'static str>(match download {
                                Some(n) => Response::new(streamed_body(n)),
                                None => Response::new(full(mine.to_string())),
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        CountingUpstream {
            addr,
            received,
            hits,
            connections,
            task,
        }
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const CHUNK: usize = 64 * KIB;

/// `len` bytes generated on the fly, 64 KiB at a time.
pub fn generated_chunks(len: u64) -> impl futures_util::Stream<Item = Bytes> + Send + 'static {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= len {
                return None;
            }
            let n = (len - sent).min(CHUNK as u64) as usize;
            Some((chunk.slice(..n), sent + n as u64))
        }
    })
}

pub fn streamed_body(len: u64) -> TestBody {
    let frames = generated_chunks(len).map(|b| Ok::<_, BoxError>(Frame::data(b)));
    BodyExt::boxed(StreamBody::new(frames))
}
