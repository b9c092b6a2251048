//! Zero-copy static bodies on plain-TCP HTTP/1.1 connections, as nginx's `sendfile on`.
//!
//! hyper writes bodies from `Bytes`, so a cached static file is copied into the socket on
//! every request; `sendfile(2)` instead hands the kernel the file's page-cache pages. The
//! two meet here without changing what hyper sees:
//!
//! 1. a cached file variant keeps the file it was read from open ([`DiskFile`], a bounded
//!    number per process);
//! 2. the static handler, answering with such bytes, offers them to its connection's
//!    [`Slot`] as a [`Region`]: these bytes are that file from that offset;
//! 3. the connection's I/O ([`Slot::poll_write`]), given a write whose body slice lies inside
//!    the offered bytes, sends the head with `MSG_MORE` and the body with `sendfile`.
//!
//! What goes out is always what the response's headers describe:
//! - the slot holds a clone of the offered `Bytes`, so no other data can live at those
//!   addresses while it is offered, and the pointer test alone decides; a write that is not
//!   the region's (a proxied body, a copy hyper made) goes out as it is;
//! - a file is kept only if it did not change while it was read, and a region is offered only
//!   while the file is seen unchanged (`fstat`: size, mtime, ctime; at most every
//!   [`RECHECK_AFTER`] per file) — a file rewritten in place is answered from memory, from at
//!   most 5 ms after the write until revalidation re-reads it (nginx's `open_file_cache` sends
//!   the new bytes under the old headers for `open_file_cache_valid`, 60 s by default); a file
//!   that shrinks before the send ends the region, and the rest comes from memory.
//!
//! Like nginx's `sendfile on`, the kernel reads the file's pages on the worker thread; they
//! were read moments before and stay in the page cache unless memory runs short. A static
//! route's `sendfile: false` turns this off.

use std::fs::{File, Metadata};
use std::io::{self, IoSlice};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rustix::net::SendFlags;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Smaller bodies are copied: one `writev` costs less than `send` + `sendfile`.
pub const MIN_LEN: usize = 16 * 1024;
/// How stale "the file is unchanged" may be: a file rewritten in place is noticed this
/// long after at most (then answered from memory until revalidation re-reads it).
pub const RECHECK_AFTER: Duration = Duration::from_millis(5);
/// Most files kept open for sendfile at once, in the whole process (each cached variant of
/// at least [`MIN_LEN`] holds one until it leaves the cache).
pub const MAX_OPEN_FILES: usize = 512;

static OPEN_FILES: AtomicUsize = AtomicUsize::new(0);
/// Body bytes sent by sendfile since the process started.
static SENT: AtomicU64 = AtomicU64::new(0);

/// Body bytes sent by sendfile since the process started (for tests and diagnostics).
pub fn bytes_sent() -> u64 {
    SENT.load(Ordering::Relaxed)
}

/// An open file whose bytes were read into memory, kept for sendfile.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    read_as: Fingerprint,
    kept: Instant,
    /// When (ms after `kept`) the file was last seen unchanged.
    checked_ms: AtomicU64,
    /// Seen changed: for good (revalidation replaces the entry and this file with it).
    changed: AtomicBool,
}

/// What changes when a file's content does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    fn of(meta: &Metadata) -> Fingerprint {
        Fingerprint {
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl DiskFile {
    /// Keeps `file`, from which `len` bytes were just read (it was `len` long and modified
    /// at `mtime` before the read), if they are worth sending with sendfile, the file did
    /// not change meanwhile, and the process is under [`MAX_OPEN_FILES`]. `None` otherwise:
    /// the file closes and the bytes are copied as usual.
    pub fn keep(file: File, len: usize, mtime: SystemTime) -> Option<Arc<DiskFile>> {
        if len < MIN_LEN {
            return None;
        }
        let meta = file.metadata().ok()?;
        if meta.len() != len as u64 || meta.modified().ok()? != mtime {
            return None;
        }
        let read_as = Fingerprint::of(&meta);
        let taken = OPEN_FILES.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_OPEN_FILES).then_some(n + 1)
        });
        taken.ok().map(|_| {
            Arc::new(DiskFile {
                file,
                read_as,
                kept: Instant::now(),
                checked_ms: AtomicU64::new(0),
                changed: AtomicBool::new(false),
            })
        })
    }

    /// Whether the file still holds the bytes read from it, as of [`RECHECK_AFTER`] ago at
    /// most: one `fstat` per file per interval, not per response (it cost ~12% of the CPU per
    /// response of a 25 KiB file).
    fn unchanged(&self) -> bool {
        if self.changed.load(Ordering::Relaxed) {
            return false;
        }
        let now = u64::try_from(self.kept.elapsed().as_millis()).unwrap_or(u64::MAX);
        let recheck = RECHECK_AFTER.as_millis() as u64;
        if now.saturating_sub(self.checked_ms.load(Ordering::Relaxed)) < recheck {
            return true;
        }
        self.checked_ms.store(now, Ordering::Relaxed);
        let same = self
            .file
            .metadata()
            .is_ok_and(|meta| Fingerprint::of(&meta) == self.read_as);
        if !same {
            self.changed.store(true, Ordering::Relaxed);
        }
        same
    }
}

impl Drop for DiskFile {
    fn drop(&mut self) {
        OPEN_FILES.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bytes that equal `file` from `offset` on.
struct Region {
    bytes: Bytes,
    file: Arc<DiskFile>,
    offset: u64,
}

/// One connection's offered region (at most one: the latest static response's body), held
/// until it has been sent or another replaces it.
#[derive(Default)]
pub struct Slot {
    region: Mutex<Option<Region>>,
    /// Whether `region` is `Some`: every write on the connection looks here first, without
    /// taking the lock.
    armed: AtomicBool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

/// The socket under a connection's I/O, when it is a plain TCP socket.
pub trait Zerocopy {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl Zerocopy for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl<IO> Zerocopy for tokio_rustls::server::TlsStream<IO> {}

impl Slot {
    /// `bytes` (about to be a response body) were read from `file` at `offset`; they go
    /// out by sendfile if the file still holds them.
    pub fn offer(&self, bytes: &Bytes, file: &Arc<DiskFile>, offset: u64) {
        let mut region = self.lock();
        *region = (bytes.len() >= MIN_LEN && file.unchanged()).then(|| Region {
            bytes: bytes.clone(),
            file: Arc::clone(file),
            offset,
        });
        self.armed.store(region.is_some(), Ordering::Relaxed);
    }

    /// Writes `bufs` to `tcp` with sendfile if one of them lies inside the offered region;
    /// `None` when none does (the caller writes them as usual).
    pub fn poll_write(
        &self,
        tcp: &TcpStream,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Option<Poll<io::Result<usize>>> {
        if !self.armed.load(Ordering::Relaxed) {
            return None;
        }
        let mut offered = self.lock();
        let (sent, done) = {
            let region = offered.as_ref()?;
            let base = region.bytes.as_ptr() as usize;
            let end = base + region.bytes.len();
            let at = bufs.iter().position(|b| {
                let start = b.as_ptr() as usize;
                !b.is_empty() && start >= base && start + b.len() <= end
            })?;
            // What comes before the body (the response head): one slice at a time, and the
            // body only once nothing else is before it.
            let mut before = bufs[..at].iter().filter(|b| !b.is_empty());
            let head = before.next();
            let body_next = before.next().is_none();
            let body = &bufs[at];
            // Everything up to the region's end, if this write goes through whole.
            let done = body_next
                .then(|| head.map_or(0, |h| h.len()) + body.len())
                .filter(|_| body.as_ptr() as usize + body.len() == end);
            let offset = region.offset + (body.as_ptr() as usize - base) as u64;
            let sent = loop {
                match tcp.poll_write_ready(cx) {
                    Poll::Pending => return Some(Poll::Pending),
                    Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                    Poll::Ready(Ok(())) => {}
                }
                let sent = tcp.try_io(Interest::WRITABLE, || {
                    let body = body_next.then_some((&region.file.file, offset, body.len()));
                    send(tcp, head.map(|h| &**h), body)
                });
                match sent {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => break other,
                }
            };
            (sent, done)
        };
        match sent {
            // The file is shorter than what was read from it: stop offering; these bytes
            // go out from memory.
            Ok(Sent::FileEnded) => {
                *offered = None;
                self.armed.store(false, Ordering::Relaxed);
                None
            }
            Ok(Sent::Bytes(n)) => {
                if done == Some(n) {
                    // All sent: let go of the bytes and the file.
                    *offered = None;
                    self.armed.store(false, Ordering::Relaxed);
                }
                Some(Poll::Ready(Ok(n)))
            }
            Err(e) => Some(Poll::Ready(Err(e))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Region>> {
        self.region.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

enum Sent {
    Bytes(usize),
    FileEnded,
}

/// `head` with `MSG_MORE` (so it leaves in one segment with the body), then `body` (`len`
/// bytes of a file from an offset) if given. A partial head is reported as is; the caller
/// comes back for the rest.
fn send(
    tcp: &TcpStream,
    head: Option<&[u8]>,
    body: Option<(&File, u64, usize)>,
) -> io::Result<Sent> {
    let mut written = 0;
    if let Some(head) = head {
        written = rustix::net::send(tcp, head, SendFlags::MORE | SendFlags::NOSIGNAL)?;
        if written < head.len() {
            return Ok(Sent::Bytes(written));
        }
    }
    let Some((file, offset, len)) = body else {
        return Ok(Sent::Bytes(written));
    };
    let mut at = offset;
    match rustix::fs::sendfile(tcp, file, Some(&mut at), len) {
        Ok(0) if written == 0 => Ok(Sent::FileEnded),
        Ok(n) => {
            SENT.fetch_add(n as u64, Ordering::Relaxed);
            Ok(Sent::Bytes(written + n))
        }
        // The head went out: report it; the body's turn comes with the next write.
        Err(_) if written > 0 => Ok(Sent::Bytes(written)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::io::{Seek, Write};
    use tokio::io::AsyncReadExt;

    /// A connected pair of loopback sockets (sender, receiver).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let out = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        (out, peer)
    }

    /// A file holding `content`, kept as if `content` had just been read from it.
    fn disk(content: &[u8]) -> (Arc<DiskFile>, File) {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(content).unwrap();
        file.rewind().unwrap();
        let other = file.try_clone().unwrap();
        let mtime = file.metadata().unwrap().modified().unwrap();
        let kept = DiskFile::keep(file, content.len(), mtime).expect("kept");
        (kept, other)
    }

    /// Writes `bufs` through the slot until all is sent (the caller's loop, as hyper's);
    /// `None` if the slot declined them.
    async fn write_all(slot: &Slot, tcp: &TcpStream, bufs: &[&[u8]]) -> Option<usize> {
        let mut sent = 0;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        while sent < total {
            // The unsent tail of `bufs`, as hyper would pass it.
            let mut skip = sent;
            let mut rest = Vec::new();
            for b in bufs {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                rest.push(IoSlice::new(&b[skip..]));
                skip = 0;
            }
            let polled = poll_fn(|cx| match slot.poll_write(tcp, cx, &rest) {
                Some(p) => p.map(|r| r.map(Some)),
                None => Poll::Ready(Ok(None)),
            });
            match polled.await.unwrap() {
                Some(n) => sent += n,
                None => return None,
            }
        }
        Some(sent)
    }

    async fn read_n(peer: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        peer.read_exact(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn bytes_inside_the_offered_region_leave_from_the_file() {
        // The file and the memory differ on purpose, to see which one was sent; in real
        // use they are equal.
        let on_disk = vec![b'F'; 64 * 1024];
        let in_memory = Bytes::from(vec![b'M'; 64 * 1024]);
        let (file, _) = disk(&on_disk);
        let slot = Slot::default();
        slot.offer(&in_memory.slice(1000..), &file, 1000);
        let (out, mut peer) = pair().await;
        let head = b"HTTP/1.1 200 OK\r\n\r\n";
        let body = &in_memory[1000..];
        let total = head.len() + body.len();
        let reader = tokio::spawn(async move { read_n(&mut peer, total).await });
        assert_eq!(write_all(&slot, &out, &[head, body]).await, Some(total));
        let got = reader.await.unwrap();
        assert_eq!(&got[..19], head);
        assert!(got[19..].iter().all(|&b| b == b'F'), "sent by sendfile");
        assert!(slot.lock().is_none(), "let go once sent");
    }

    #[tokio::test]
    async fn every_slice_before_the_body_goes_first() {
        let on_disk = vec![b'F'; 32 * 1024];
        let in_memory = Bytes::from(vec![b'M'; 32 * 1024]);
        let (file, _) = disk(&on_disk);
        let slot = Slot::default();
        slot.offer(&in_memory, &file, 0);
        let (out, mut peer) = pair().await;
        let total = 4 + 6 + in_memory.len() + 2;
        let reader = tokio::spawn(async move { read_n(&mut peer, total).await });
        // As hyper writes a chunked body: head, chunk size, data, CRLF.
        let bufs: [&[u8]; 4] = [b"head", b"8000\r\n", &in_memory, b"\r\n"];
        // The slot sends the head slices and the body; the CRLF after it is not the
        // region's, so the caller writes it.
        assert_eq!(write_all(&slot, &out, &bufs[..3]).await, Some(total - 2));
        assert_eq!(write_all(&slot, &out, &bufs[3..]).await, None);
        out.try_write(b"\r\n").unwrap();
        let got = reader.await.unwrap();
        assert_eq!(&got[..10], b"head8000\r\n");
        assert!(got[10..total - 2].iter().all(|&b| b == b'F'));
        assert_eq!(&got[total - 2..], b"\r\n");
    }

    #[tokio::test]
    async fn a_large_region_survives_partial_writes() {
        let content: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let bytes = Bytes::from(content.clone());
        let (file, _) = disk(&content);
        let slot = Slot::default();
        slot.offer(&bytes, &file, 0);
        let (out, mut peer) = pair().await;
        let len = content.len();
        let reader = tokio::spawn(async move {
            // A slow reader: the socket buffer fills and sendfile sends part at a time.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            read_n(&mut peer, 4 + len).await
        });
        assert_eq!(
            write_all(&slot, &out, &[b"head", &bytes]).await,
            Some(4 + len)
        );
        let got = reader.await.unwrap();
        assert_eq!(&got[..4], b"head");
        assert!(got[4..] == content[..]);
    }

    #[tokio::test]
    async fn other_bytes_are_left_to_the_caller() {
        let content = vec![b'x'; 32 * 1024];
        let bytes = Bytes::from(content.clone());
        let (file, _) = disk(&content);
        let slot = Slot::default();
        let (out, _peer) = pair().await;
        // Nothing offered yet.
        assert_eq!(write_all(&slot, &out, &[b"head", &bytes]).await, None);
        slot.offer(&bytes, &file, 0);
        // Equal content elsewhere in memory is not the region.
        let copy = content.clone();
        assert_eq!(write_all(&slot, &out, &[b"head", &copy]).await, None);
        // Small bodies are not offered at all.
        let small = bytes.slice(..1024);
        slot.offer(&small, &file, 0);
        assert_eq!(write_all(&slot, &out, &[&small]).await, None);
    }

    #[tokio::test]
    async fn a_file_changed_since_it_was_read_is_not_offered() {
        let content = vec![b'a'; 32 * 1024];
        let bytes = Bytes::from(content.clone());
        let (file, mut writer) = disk(&content);
        writer.write_all(b"b").unwrap();
        // Noticed once the last check (at keep time) is RECHECK_AFTER old.
        std::thread::sleep(RECHECK_AFTER * 2);
        let slot = Slot::default();
        slot.offer(&bytes, &file, 0);
        let (out, _peer) = pair().await;
        assert_eq!(write_all(&slot, &out, &[&bytes]).await, None);
    }

    #[tokio::test]
    async fn a_file_that_shrinks_after_the_offer_ends_the_region() {
        let content = vec![b'a'; 32 * 1024];
        let bytes = Bytes::from(content.clone());
        let (file, writer) = disk(&content);
        let slot = Slot::default();
        slot.offer(&bytes, &file, 0);
        writer.set_len(0).unwrap();
        let (out, mut peer) = pair().await;
        let reader = tokio::spawn(async move { read_n(&mut peer, 4).await });
        // The head goes out; the body finds the file empty, and the caller gets it back
        // (it writes the bytes from memory).
        assert_eq!(write_all(&slot, &out, &[b"head", &bytes]).await, None);
        assert_eq!(reader.await.unwrap(), b"head");
        assert!(slot.lock().is_none());
    }

    #[test]
    fn only_large_unchanged_files_are_kept() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[0; 100]).unwrap();
        let mtime = file.metadata().unwrap().modified().unwrap();
        assert!(DiskFile::keep(file.try_clone().unwrap(), 100, mtime).is_none());
        file.write_all(&[0; MIN_LEN]).unwrap();
        let len = MIN_LEN + 100;
        let mtime = file.metadata().unwrap().modified().unwrap();
        assert!(DiskFile::keep(file.try_clone().unwrap(), len, mtime).is_some());
        // Read as shorter than the file is (it grew during the read).
        assert!(DiskFile::keep(file.try_clone().unwrap(), len - 1, mtime).is_none());
        // Modified after the length and mtime were taken.
        let earlier = mtime - std::time::Duration::from_secs(1);
        assert!(DiskFile::keep(file, len, earlier).is_none());
    }
}
