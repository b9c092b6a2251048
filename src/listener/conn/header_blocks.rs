//! `header_read_timeout` for every request on an HTTP/2 connection, not only the first.
//!
//! hyper and h2 have no header timer: a client that opens a header block (a HEADERS frame
//! without END_HEADERS, or a frame header cut short) and never finishes it holds its
//! connection until `idle_timeout`. [`HeaderBlocks`] watches the bytes the client sends,
//! following frame boundaries only (9-byte frame headers; payloads are skipped, never
//! parsed: h2 does the parsing), and fails the read side once a header block has been open
//! for `header_read_timeout`, as HTTP/1.1 times each request head from its first byte. The
//! connection then closes like any connection whose client stopped mid-request; requests in
//! flight on it are cut off with it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The client connection preface before the first frame (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Where the client's byte stream stands, frame by frame.
#[derive(Debug)]
struct FrameScan {
    /// Bytes to pass over before the next frame header: the preface, then each payload.
    skip: usize,
    head: [u8; FRAME_HEADER_LEN],
    /// How much of the next frame header has arrived.
    have: usize,
    /// A header block has begun (HEADERS) and its END_HEADERS frame is not complete.
    in_block: bool,
    /// The payload being skipped belongs to the frame that ends the header block.
    ends_block: bool,
}

impl FrameScan {
    fn new() -> Self {
        FrameScan {
            skip: PREFACE_LEN,
            head: [0; FRAME_HEADER_LEN],
            have: 0,
            in_block: false,
            ends_block: false,
        }
    }

    /// Follows `bytes`, the next bytes the client sent.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                self.payload_done();
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == FRAME_HEADER_LEN {
                self.have = 0;
                self.frame_header();
            }
        }
    }

    fn frame_header(&mut self) {
        let [l0, l1, l2, kind, flags, ..] = self.head;
        self.skip = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        let ends = flags & END_HEADERS != 0;
        self.ends_block = match kind {
            HEADERS | PUSH_PROMISE => {
                self.in_block = true;
                ends
            }
            CONTINUATION => ends,
            _ => false,
        };
        self.payload_done();
    }

    fn payload_done(&mut self) {
        if self.skip == 0 && self.ends_block {
            self.in_block = false;
            self.ends_block = false;
        }
    }

    /// Whether the client is part-way through a header block (or a frame header).
    fn mid_header(&self) -> bool {
        self.in_block || self.have > 0
    }
}

/// An HTTP/2 server connection's transport, failing its reads once a request's header block
/// has been open for `limit`.
pub struct HeaderBlocks<I> {
    inner: I,
    scan: FrameScan,
    limit: Duration,
    /// When the open header block must be complete; `None` when none is open.
    deadline: Option<Instant>,
    /// Made on the first header block that spans reads, then reset.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<I> HeaderBlocks<I> {
    pub fn new(inner: I, limit: Duration) -> Self {
        HeaderBlocks {
            inner,
            scan: FrameScan::new(),
            limit,
            deadline: None,
            timer: None,
        }
    }
}

fn too_slow() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "HTTP/2 request header block not complete within header_read_timeout",
    )
}

impl<I: AsyncRead + Unpin> AsyncRead for HeaderBlocks<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            this.scan.feed(&buf.filled()[before..]);
        }
        if !this.scan.mid_header() {
            this.deadline = None;
            return read;
        }
        let deadline = *this
            .deadline
            .get_or_insert_with(|| Instant::now() + this.limit);
        match read {
            // Bytes keep arriving (or the client left): only a trickle that outlasts the
            // deadline is refused here; h2 reads again, and waits on the timer below.
            Poll::Ready(Ok(())) if Instant::now() >= deadline => Poll::Ready(Err(too_slow())),
            Poll::Ready(_) => read,
            Poll::Pending => {
                let timer = match &mut this.timer {
                    Some(timer) => {
                        if timer.deadline() != deadline {
                            timer.as_mut().reset(deadline);
                        }
                        timer
                    }
                    None => this
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(too_slow())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HeaderBlocks<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    fn after_preface() -> FrameScan {
        let mut scan = FrameScan::new();
        scan.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        scan.feed(&frame(0x4, 0, &[])); // SETTINGS
        assert!(!scan.mid_header());
        scan
    }

    #[test]
    fn a_complete_header_block_in_one_read_leaves_nothing_open() {
        let mut scan = after_preface();
        scan.feed(&frame(HEADERS, END_HEADERS | 0x1, &[0x82, 0x86, 0x84]));
        assert!(!scan.mid_header());
    }

    #[test]
    fn a_header_block_is_open_until_its_end_headers_frame_is_whole() {
        let mut scan = after_preface();
        let headers = frame(HEADERS, 0x1, &[0x82, 0x86]);
        let continuation = frame(CONTINUATION, END_HEADERS, &[0x84, 0x84]);
        // Byte by byte: open from the HEADERS frame header's first byte until the last byte
        // of the CONTINUATION payload.
        let all = [headers, continuation].concat();
        for (i, byte) in all.iter().enumerate() {
            scan.feed(std::slice::from_ref(byte));
            assert_eq!(scan.mid_header(), i + 1 < all.len(), "after byte {i}");
        }
    }

    #[test]
    fn other_frames_and_their_payloads_open_nothing() {
        let mut scan = after_preface();
        // A DATA payload holding what looks like a HEADERS frame header is skipped over.
        let fake = frame(HEADERS, 0, &[]);
        scan.feed(&frame(0x0, 0, &fake)[..FRAME_HEADER_LEN + 4]);
        assert!(!scan.mid_header());
        scan.feed(&fake[4..]);
        assert!(!scan.mid_header());
        scan.feed(&frame(0x6, 0, &[0; 8])); // PING
        scan.feed(&frame(0x8, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE
        assert!(!scan.mid_header());
        // A partial frame header counts as an unfinished head.
        scan.feed(&[0, 0]);
        assert!(scan.mid_header());
    }
}
