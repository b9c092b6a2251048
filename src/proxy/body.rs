//! Request bodies on their way upstream: read whole before the upstream is contacted
//! (`request_buffering: true`, shielding Gunicorn's sync workers from slow clients: in memory
//! up to [`MEMORY_THRESHOLD`], spilled to an unnamed temporary file beyond it), or streamed
//! through with the size limit enforced as bytes pass.
//!
//! All requests together keep at most [`MEMORY_BUDGET`] of bodies in memory: past it, a body
//! spills to a file whatever its size. Without that bound, concurrent uploads (128 streams
//! on each HTTP/2 connection, or many HTTP/1.1 connections) could hold a MiB each. Files
//! have their budget too ([`FILE_BUDGET`], `server.max_buffer_file_bytes`): a body that
//! would pass it gets 503, so slow uploads cannot fill the disk (or RAM, where `$TMPDIR` is
//! a tmpfs, as on Debian 13).

use std::io::{Seek, SeekFrom};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::listener::RequestBody;
use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Limited, StreamBody};
use tokio::io::AsyncWriteExt;

use crate::config::raw::defaults::MAX_BUFFER_FILE_BYTES;
use crate::error::{BoxError, GatewayBody, GatewayError};
use crate::observability::Throttle;

/// Bodies up to this size stay in memory; larger ones go to a temporary file.
pub const MEMORY_THRESHOLD: usize = 1024 * 1024;
/// The memory all buffered request bodies may hold together (their buffers' capacity).
pub const MEMORY_BUDGET: usize = 64 * 1024 * 1024;

/// Bytes held by buffered request bodies (in memory, or in files), against a limit.
pub struct Budget {
    used: AtomicUsize,
    limit: AtomicUsize,
}

impl Budget {
    pub const fn new(limit: usize) -> Self {
        Budget {
            used: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// A new limit (a reload): shares already held are kept, growth is checked against it.
    pub fn set_limit(&self, limit: u64) {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        self.limit.store(limit, Ordering::Relaxed);
    }
}

/// The process's budget for buffered request bodies in memory.
pub static BUDGET: Budget = Budget::new(MEMORY_BUDGET);
/// The process's budget for buffered request bodies in temporary files: the running
/// configuration's `server.max_buffer_file_bytes` (set at start and on reload).
pub static FILE_BUDGET: Budget = Budget::new(MAX_BUFFER_FILE_BYTES as usize);

/// One body's share of a [`Budget`], given back when dropped.
#[derive(Default)]
pub struct Held {
    budget: Option<&'static Budget>,
    bytes: usize,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held({})", self.bytes)
    }
}

impl Held {
    fn new(budget: &'static Budget) -> Self {
        Held {
            budget: Some(budget),
            bytes: 0,
        }
    }

    /// Grows the share to `total` bytes if the budget has room.
    fn grow_to(&mut self, total: usize) -> bool {
        let Some(budget) = self.budget else {
            return false;
        };
        if total <= self.bytes {
            return true;
        }
        let more = total - self.bytes;
        if budget.used.fetch_add(more, Ordering::Relaxed) + more > budget.limit() {
            budget.used.fetch_sub(more, Ordering::Relaxed);
            return false;
        }
        self.bytes = total;
        true
    }

    /// Records what was really allocated (an allocator may round up past the budget check).
    fn settle(&mut self, total: usize) {
        if let Some(budget) = self.budget {
            if total > self.bytes {
                budget.used.fetch_add(total - self.bytes, Ordering::Relaxed);
                self.bytes = total;
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(budget) = self.budget {
            budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}
const FILE_READ_CHUNK: usize = 64 * 1024;

/// A request body read in full before the upstream is contacted.
#[derive(Debug)]
pub enum Buffered {
    Empty,
    /// In memory, with its share of [`BUDGET`].
    Memory(Bytes, Held),
    /// In a temporary file, with its share of [`FILE_BUDGET`].
    File {
        file: std::fs::File,
        len: u64,
        held: Held,
    },
}

/// Rejects up front a body whose declared length is over `limit`.
pub fn check_declared_length(body: &RequestBody, limit: u64) -> Result<(), GatewayError> {
    match body.size_hint().exact() {
        Some(len) if len > limit => Err(GatewayError::BodyTooLarge(limit)),
        _ => Ok(()),
    }
}

/// Reads the whole body (never more than `limit` bytes) before anything is sent upstream.
pub async fn buffer<B>(body: B, limit: u64) -> Result<Buffered, GatewayError>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    buffer_within(body, limit, &BUDGET, &FILE_BUDGET).await
}

async fn buffer_within<B>(
    mut body: B,
    limit: u64,
    budget: &'static Budget,
    files: &'static Budget,
) -> Result<Buffered, GatewayError>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    if body.is_end_stream() {
        return Ok(Buffered::Empty);
    }
    let mut memory = BytesMut::new();
    let mut held = Held::new(budget);
    // A declared length that fits is allocated once.
    if let Some(len) = body.size_hint().exact() {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len <= MEMORY_THRESHOLD && held.grow_to(len) {
            memory.reserve(len);
            held.settle(memory.capacity());
        }
    }
    let mut spill: Option<(std::fs::File, tokio::fs::File)> = None;
    let mut on_disk = Held::new(files);
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(GatewayError::ClientBody)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not forwarded
        };
        total += data.len() as u64;
        if total > limit {
            return Err(GatewayError::BodyTooLarge(limit));
        }
        let needed = memory.len() + data.len();
        let fits = spill.is_none()
            && needed <= MEMORY_THRESHOLD
            && (needed <= memory.capacity()
                || held.grow_to(needed.max(memory.capacity() * 2).min(MEMORY_THRESHOLD)));
        if fits {
            memory.extend_from_slice(&data);
            held.settle(memory.capacity());
            continue;
        }
        if !on_disk.grow_to(usize::try_from(total).unwrap_or(usize::MAX)) {
            static FULL: Throttle = Throttle::new();
            if let Some(held_back) = FULL.ready() {
                tracing::warn!(
                    on_disk = files.used(),
                    limit = files.limit(),
                    more_since_last = held_back,
                    "request refused: request bodies buffered to files are at server.max_buffer_file_bytes"
                );
            }
            return Err(GatewayError::BufferFull);
        }
        match &mut spill {
            Some((_, file)) => file.write_all(&data).await.map_err(spill_error)?,
            None => {
                if needed <= MEMORY_THRESHOLD {
                    tracing::debug!(
                        in_memory = budget.used(),
                        "request body spilled to a file: the memory budget is in use"
                    );
                }
                let std_file = tokio::task::spawn_blocking(tempfile::tempfile)
                    .await
                    .map_err(|e| GatewayError::Internal(e.to_string()))?
                    .map_err(spill_error)?;
                let mut file =
                    tokio::fs::File::from_std(std_file.try_clone().map_err(spill_error)?);
                file.write_all(&memory).await.map_err(spill_error)?;
                file.write_all(&data).await.map_err(spill_error)?;
                memory = BytesMut::new();
                held = Held::default();
                spill = Some((std_file, file));
            }
        }
    }
    Ok(match spill {
        Some((std_file, mut file)) => {
            file.flush().await.map_err(spill_error)?;
            Buffered::File {
                file: std_file,
                len: total,
                held: on_disk,
            }
        }
        None if total == 0 => Buffered::Empty,
        None => Buffered::Memory(memory.freeze(), held),
    })
}

fn spill_error(e: std::io::Error) -> GatewayError {
    GatewayError::Internal(format!(
        "could not buffer request body to a temporary file: {e}"
    ))
}

impl Buffered {
    pub fn len(&self) -> u64 {
        match self {
            Self::Empty => 0,
            Self::Memory(b, _) => b.len() as u64,
            Self::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the body's share of the memory budget, for a copy of the bytes that outlives
    /// the body to hold (otherwise the body holds it until it is dropped).
    pub fn take_held(&mut self) -> Held {
        match self {
            Self::Memory(_, held) => std::mem::take(held),
            _ => Held::default(),
        }
    }

    /// The body that sends this buffer upstream (a retry on another server gets the same
    /// body back unread, so it is built once). Not async: a rewind only moves the file
    /// offset (no I/O), and an `await` here would put tokio's file state into every
    /// request's future.
    pub fn into_body(self) -> Result<GatewayBody, GatewayError> {
        Ok(match self {
            Self::Empty => empty_body(),
            Self::Memory(bytes, held) => Holding {
                inner: http_body_util::Full::new(bytes),
                _held: held,
            }
            .boxed_unsync(),
            Self::File { mut file, held, .. } => {
                // The writing handle shared this descriptor's offset: rewind it.
                file.seek(SeekFrom::Start(0)).map_err(spill_error)?;
                let file = tokio::fs::File::from_std(file);
                let stream = tokio_util::io::ReaderStream::with_capacity(file, FILE_READ_CHUNK)
                    .map_ok(Frame::data)
                    .map_err(BoxError::from);
                Holding {
                    inner: StreamBody::new(stream),
                    _held: held,
                }
                .boxed_unsync()
            }
        })
    }
}

/// A buffered body that keeps its share of a budget until it is dropped (sent, or the
/// request given up).
struct Holding<B> {
    inner: B,
    _held: Held,
}

impl<B> Body for Holding<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A body with no bytes (boxing it allocates nothing).
pub fn empty_body() -> GatewayBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Streams the client's body upstream, cutting it off once it passes `limit`.
pub fn streaming(body: RequestBody, limit: u64) -> GatewayBody {
    Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).boxed_unsync()
}

/// Whether an error (from the upstream client) was caused by the body passing its limit.
pub fn is_length_limit_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::full_body;
    use http_body_util::BodyExt;

    /// A body of `len` bytes in 1 KiB frames, its length not declared (as chunked).
    fn chunked(len: usize) -> GatewayBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = (0..len / 1024)
            .map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 1024]))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    fn declared(len: usize) -> GatewayBody {
        full_body(Bytes::from(vec![b'y'; len]))
    }

    /// A file budget no test here comes near.
    static FILES: Budget = Budget::new(usize::MAX);

    async fn read(buffered: Buffered) -> usize {
        let body = buffered.into_body().unwrap();
        body.collect().await.unwrap().to_bytes().len()
    }

    /// Bodies within the threshold stay in memory only while the budget has room; past it
    /// they go to a file (and read back whole), and a share is given back when dropped.
    #[tokio::test]
    async fn bodies_spill_once_the_memory_budget_is_in_use() {
        static SMALL: Budget = Budget::new(40 * 1024);
        let first = buffer_within(declared(30 * 1024), u64::MAX, &SMALL, &FILES)
            .await
            .unwrap();
        assert!(matches!(first, Buffered::Memory(..)), "{first:?}");
        assert!(SMALL.used() >= 30 * 1024);
        // Both kinds of body find the budget nearly spent.
        let second = buffer_within(declared(20 * 1024), u64::MAX, &SMALL, &FILES)
            .await
            .unwrap();
        assert!(matches!(second, Buffered::File { .. }), "{second:?}");
        let third = buffer_within(chunked(20 * 1024), u64::MAX, &SMALL, &FILES)
            .await
            .unwrap();
        assert!(matches!(third, Buffered::File { .. }), "{third:?}");
        assert_eq!(read(second).await, 20 * 1024);
        assert_eq!(read(third).await, 20 * 1024);

        // The share goes with the body's Held, wherever that is kept.
        let mut first = first;
        let held = first.take_held();
        assert!(SMALL.used() >= 30 * 1024);
        assert_eq!(read(first).await, 30 * 1024);
        drop(held);
        assert_eq!(SMALL.used(), 0);

        let fourth = buffer_within(chunked(20 * 1024), u64::MAX, &SMALL, &FILES)
            .await
            .unwrap();
        assert!(matches!(fourth, Buffered::Memory(..)), "{fourth:?}");
        assert_eq!(read(fourth).await, 20 * 1024);
        assert_eq!(SMALL.used(), 0);
    }

    /// A body that outgrows the threshold gives its memory share back as it spills.
    #[tokio::test]
    async fn a_spilled_body_holds_no_memory_share() {
        static ROOMY: Budget = Budget::new(8 * MEMORY_THRESHOLD);
        let big = buffer_within(chunked(MEMORY_THRESHOLD + 4096), u64::MAX, &ROOMY, &FILES)
            .await
            .unwrap();
        assert!(matches!(big, Buffered::File { .. }), "{big:?}");
        assert_eq!(ROOMY.used(), 0);
        assert_eq!(read(big).await, MEMORY_THRESHOLD + 4096);
    }

    /// Bodies in files hold their size of the file budget until sent or dropped; one that
    /// would pass it is refused (503) and gives back what it took.
    #[tokio::test]
    async fn bodies_past_the_file_budget_are_refused() {
        static NO_MEMORY: Budget = Budget::new(0);
        static DISK: Budget = Budget::new(100 * 1024);
        let first = buffer_within(chunked(60 * 1024), u64::MAX, &NO_MEMORY, &DISK)
            .await
            .unwrap();
        assert!(matches!(first, Buffered::File { .. }), "{first:?}");
        assert_eq!(DISK.used(), 60 * 1024);
        let refused = buffer_within(chunked(60 * 1024), u64::MAX, &NO_MEMORY, &DISK).await;
        assert!(
            matches!(refused, Err(GatewayError::BufferFull)),
            "{refused:?}"
        );
        assert_eq!(DISK.used(), 60 * 1024);
        // The share lives with the body until it is sent.
        let body = first.into_body().unwrap();
        assert_eq!(DISK.used(), 60 * 1024);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 60 * 1024);
        assert_eq!(DISK.used(), 0);
        let later = buffer_within(chunked(60 * 1024), u64::MAX, &NO_MEMORY, &DISK).await;
        assert!(matches!(later, Ok(Buffered::File { .. })), "{later:?}");
        // A reload may lower the limit: growth is checked against the new one.
        DISK.set_limit(10 * 1024);
        drop(later);
        let small = buffer_within(chunked(20 * 1024), u64::MAX, &NO_MEMORY, &DISK).await;
        assert!(matches!(small, Err(GatewayError::BufferFull)), "{small:?}");
        assert_eq!(DISK.used(), 0);
    }
}
