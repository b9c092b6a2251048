//! Request-smuggling guard for HTTP/1.1 connections.
//!
//! hyper handles a request that carries both `Content-Length` and `Transfer-Encoding` the way
//! RFC 9112 §6.1 allows (Transfer-Encoding wins, `Content-Length` is dropped, the connection
//! closes after the response), but it removes the evidence before the request reaches us: when
//! `Transfer-Encoding` comes first, the `Content-Length` line is skipped entirely. We want such
//! a request refused with 400, as the product contract says, so this module watches the bytes
//! hyper reads and notes which request on the connection had both.
//!
//! [`Scanner`] follows the connection's request stream with `httparse` (hyper's own parser):
//! it parses each head, then skips the body by its framing (`Content-Length` bytes, or chunks
//! sized with `httparse::parse_chunk_size`) to find the next head. It never changes or holds
//! back a byte. On anything it does not follow (a parse error, an upgrade, a head too large)
//! it stops watching for the rest of the connection: hyper's own rules then still apply, which
//! are safe, only less strict. The verdict goes to the request handler through [`Verdict`].
//!
//! The connection also times request heads by it ([`Scanner::head_in_progress`]: from a
//! head's first byte to its end), in place of hyper's header timer. So that no head goes
//! unwatched, a stream the scanner stops following while hyper goes on serving it (an
//! upgrade that may not happen, a framing it does not follow) closes after the request in
//! hand.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Most header lines hyper accepts in one request (its default).
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (with extensions) followed; longer ones stop the scan.
const MAX_CHUNK_LINE: usize = 4096;

/// Shared between the connection's reader ([`Scanner`]) and its request handler.
#[derive(Debug, Default)]
pub struct Verdict {
    /// 1-based number of the request whose head had both framings; 0 when none.
    ambiguous: AtomicU32,
    /// Requests handed to the handler so far.
    served: AtomicU32,
    /// 1-based number of the last request whose head the scanner followed before it
    /// stopped (0 while it follows): heads after it would go unwatched (no smuggling check,
    /// no head deadline), so unless the connection is being upgraded it closes after that
    /// request.
    followed_until: AtomicU32,
}

impl Verdict {
    /// Called once for each request hyper hands to the service, in order: whether this one
    /// was seen with both `Content-Length` and `Transfer-Encoding`, and whether the
    /// connection must close after it (the scanner stopped following the stream at or
    /// before it; see `followed_until`). Every head reaches the scanner before hyper can
    /// parse it, so the verdict is always in place in time.
    pub fn next_request(&self) -> (bool, bool) {
        let number = self.served.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let ambiguous = self.ambiguous.load(Ordering::Relaxed);
        let until = self.followed_until.load(Ordering::Relaxed);
        (
            ambiguous != 0 && ambiguous == number,
            until != 0 && number >= until,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Inside a `Content-Length` body: this many bytes left.
    Fixed(u64),
    /// Reading a chunk-size line (kept in `line`).
    ChunkSize,
    /// Inside chunk data: this many bytes left, then CRLF.
    ChunkData(u64),
    /// The CRLF after chunk data: this many bytes left.
    ChunkEnd(u8),
    /// Trailer lines after the last chunk; `line_len` counts the current line.
    Trailers { line_len: usize },
    /// Not following this connection any more.
    Off,
}

/// Follows one HTTP/1.1 connection's request stream. See the module docs.
#[derive(Debug)]
pub struct Scanner {
    phase: Phase,
    /// Bytes of a head that arrived split over several reads (usually empty).
    partial: Vec<u8>,
    /// Chunk-size line split over reads.
    line: Vec<u8>,
    /// Heads seen so far.
    requests: u32,
    /// Stop after the current request's body (it asked for an upgrade).
    off_after_body: bool,
    max_head: usize,
    verdict: Arc<Verdict>,
}

impl Scanner {
    pub fn new(max_head: usize, verdict: Arc<Verdict>) -> Self {
        Scanner {
            phase: Phase::Head,
            partial: Vec::new(),
            line: Vec::new(),
            requests: 0,
            off_after_body: false,
            max_head,
            verdict,
        }
    }

    /// Whether the scanner still follows the connection.
    pub fn is_on(&self) -> bool {
        self.phase != Phase::Off
    }

    /// Whether part of a request head has arrived and the rest has not (the head deadline
    /// runs from its first byte).
    pub fn head_in_progress(&self) -> bool {
        self.phase == Phase::Head && !self.partial.is_empty()
    }

    /// Observes bytes just read from the client, in order.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.follow(bytes);
    }

    fn follow(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let used = match self.phase {
                Phase::Off => return,
                Phase::Head => self.head(bytes),
                Phase::Fixed(left) => {
                    let n = skip(left, bytes.len());
                    self.phase = if left == n as u64 {
                        self.body_done()
                    } else {
                        Phase::Fixed(left - n as u64)
                    };
                    n
                }
                Phase::ChunkSize => self.chunk_size(bytes),
                Phase::ChunkData(left) => {
                    let n = skip(left, bytes.len());
                    self.phase = if left == n as u64 {
                        Phase::ChunkEnd(2)
                    } else {
                        Phase::ChunkData(left - n as u64)
                    };
                    n
                }
                Phase::ChunkEnd(left) => {
                    let expected: &[u8] = if left == 2 { b"\r\n" } else { b"\n" };
                    let n = usize::from(left).min(bytes.len());
                    if bytes[..n] != expected[..n] {
                        self.lose();
                        return;
                    }
                    self.phase = if n == usize::from(left) {
                        Phase::ChunkSize
                    } else {
                        Phase::ChunkEnd(left - n as u8)
                    };
                    n
                }
                Phase::Trailers { line_len } => self.trailers(line_len, bytes),
            };
            bytes = &bytes[used..];
        }
    }

    /// Parses a head from `bytes` (plus any earlier partial head); returns the bytes used.
    fn head(&mut self, bytes: &[u8]) -> usize {
        // Uninitialised, as hyper does: zeroing 100 header slots per request costs more than
        // parsing a typical head.
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let earlier = self.partial.len();
        let parsed = if earlier == 0 {
            req.parse_with_uninit_headers(bytes, &mut headers)
        } else {
            self.partial.extend_from_slice(bytes);
            req.parse_with_uninit_headers(&self.partial, &mut headers)
        };
        match parsed {
            Ok(httparse::Status::Complete(len)) => {
                let (framing, upgrades) = Framing::of(&req);
                self.off_after_body = upgrades;
                self.partial.clear();
                self.requests = self.requests.wrapping_add(1);
                self.phase = match framing {
                    Framing::Ambiguous => {
                        self.verdict
                            .ambiguous
                            .store(self.requests, Ordering::Relaxed);
                        Phase::Off
                    }
                    Framing::Unfollowed => self.lost(),
                    Framing::Length(n) => {
                        if n == 0 {
                            self.body_done()
                        } else {
                            Phase::Fixed(n)
                        }
                    }
                    Framing::Chunked => Phase::ChunkSize,
                };
                len - earlier
            }
            Ok(httparse::Status::Partial) => {
                if earlier == 0 {
                    self.partial.extend_from_slice(bytes);
                }
                if self.partial.len() > self.max_head {
                    // hyper answers 431; nothing after it is worth following.
                    self.partial = Vec::new();
                    self.phase = Phase::Off;
                }
                bytes.len()
            }
            Err(_) => {
                // hyper rejects it too (400), or it is HTTP/2's preface on a plain listener.
                self.partial = Vec::new();
                self.phase = Phase::Off;
                bytes.len()
            }
        }
    }

    fn chunk_size(&mut self, bytes: &[u8]) -> usize {
        let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
            self.line.extend_from_slice(bytes);
            if self.line.len() > MAX_CHUNK_LINE {
                self.lose();
            }
            return bytes.len();
        };
        let used = newline + 1;
        let parsed = if self.line.is_empty() {
            httparse::parse_chunk_size(&bytes[..used])
        } else {
            self.line.extend_from_slice(&bytes[..used]);
            httparse::parse_chunk_size(&self.line)
        };
        self.line.clear();
        self.phase = match parsed {
            Ok(httparse::Status::Complete((_, 0))) => Phase::Trailers { line_len: 0 },
            Ok(httparse::Status::Complete((_, size))) => Phase::ChunkData(size),
            _ => self.lost(),
        };
        used
    }

    fn trailers(&mut self, mut line_len: usize, bytes: &[u8]) -> usize {
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\n' if line_len == 0 => {
                    self.phase = self.body_done();
                    return i + 1;
                }
                b'\n' => line_len = 0,
                b'\r' => {}
                _ => line_len += 1,
            }
            if line_len > self.max_head {
                self.lose();
                return bytes.len();
            }
        }
        self.phase = Phase::Trailers { line_len };
        bytes.len()
    }

    /// Stops following a stream that hyper goes on serving (a framing or chunk layout this
    /// scanner does not follow, an upgrade): the connection closes after the request in
    /// hand, so that no later head goes unwatched. (Heads hyper refuses itself - parse
    /// errors, oversized heads, ambiguous framing - close the connection anyway.)
    fn lost(&mut self) -> Phase {
        self.verdict
            .followed_until
            .store(self.requests.max(1), Ordering::Relaxed);
        Phase::Off
    }

    fn lose(&mut self) {
        self.phase = self.lost();
    }

    fn body_done(&mut self) -> Phase {
        if self.off_after_body {
            self.lost()
        } else {
            Phase::Head
        }
    }
}

/// How many of `available` bytes a body with `left` bytes to go takes.
fn skip(left: u64, available: usize) -> usize {
    usize::try_from(left).map_or(available, |left| left.min(available))
}

/// What a request head says about its body.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// Both `Content-Length` and `Transfer-Encoding`.
    Ambiguous,
    /// Something hyper refuses or handles itself (bad or differing lengths, a coding other
    /// than chunked, HTTP/1.0 with Transfer-Encoding).
    Unfollowed,
    Length(u64),
    Chunked,
}

impl Framing {
    /// The head's framing, and whether the connection may stop being HTTP/1.1 after this
    /// request (an upgrade or CONNECT).
    fn of(req: &httparse::Request<'_, '_>) -> (Framing, bool) {
        let mut length: Option<u64> = None;
        let mut has_length = false;
        let mut chunked: Option<bool> = None;
        let mut upgrades = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            // Only three names matter; their lengths tell most others apart at once.
            match h.name.len() {
                17 if h.name.eq_ignore_ascii_case("transfer-encoding") => {
                    chunked = Some(last_coding_is_chunked(h.value));
                }
                14 if h.name.eq_ignore_ascii_case("content-length") => {
                    has_length = true;
                    let Some(n) = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                    else {
                        return (Framing::Unfollowed, upgrades);
                    };
                    if length.is_some_and(|prev| prev != n) {
                        return (Framing::Unfollowed, upgrades);
                    }
                    length = Some(n);
                }
                7 if h.name.eq_ignore_ascii_case("upgrade") => upgrades = true,
                _ => {}
            }
        }
        let framing = match (chunked, has_length) {
            (Some(_), true) => Framing::Ambiguous,
            (Some(true), false) if req.version == Some(1) => Framing::Chunked,
            (Some(_), false) => Framing::Unfollowed,
            (None, _) => Framing::Length(length.unwrap_or(0)),
        };
        (framing, upgrades)
    }
}

fn last_coding_is_chunked(value: &[u8]) -> bool {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> (Scanner, Arc<Verdict>) {
        let verdict = Arc::new(Verdict::default());
        let mut s = Scanner::new(8192, verdict.clone());
        for c in chunks {
            s.feed(c);
        }
        (s, verdict)
    }

    fn ambiguous_at(v: &Verdict) -> u32 {
        v.ambiguous.load(Ordering::Relaxed)
    }

    const SMUGGLE_TE_FIRST: &[u8] =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n";
    const SMUGGLE_CL_FIRST: &[u8] =
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn a_head_is_in_progress_from_its_first_byte_to_its_end() {
        let verdict = Arc::new(Verdict::default());
        let mut s = Scanner::new(8192, verdict);
        assert!(!s.head_in_progress(), "idle between requests is not a head");
        s.feed(b"G");
        assert!(s.head_in_progress());
        s.feed(b"ET / HTTP/1.1\r\nHost: a\r\n");
        assert!(s.head_in_progress());
        s.feed(b"\r\n");
        assert!(!s.head_in_progress());
        // A whole head in one read never counts as in progress; nor does its body.
        s.feed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab");
        assert!(!s.head_in_progress());
        s.feed(b"cde");
        assert!(!s.head_in_progress());
    }

    #[test]
    fn a_stream_no_longer_followed_closes_after_the_request_in_hand() {
        // Ordinary requests: never asked to close.
        let (_, v) = scan(&[b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"]);
        assert_eq!(v.next_request(), (false, false));
        assert_eq!(v.next_request(), (false, false));
        // An upgrade request (served as a tunnel if the upstream agrees; closed otherwise)
        // and a framing the scanner does not follow: close after that request.
        for raw in [
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"[..],
            &b"POST /x HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello"[..],
        ] {
            let first = b"GET /a HTTP/1.1\r\n\r\n";
            let (s, v) = scan(&[first, raw, first]);
            assert!(!s.is_on());
            assert_eq!(v.next_request(), (false, false));
            assert_eq!(
                v.next_request(),
                (false, true),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(v.next_request(), (false, true));
        }
        // Heads hyper refuses itself (here: unparseable) close the connection anyway: the
        // requests before them are not cut short.
        let (s, v) = scan(&[b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nBad Header\r\n\r\n"]);
        assert!(!s.is_on());
        assert_eq!(v.next_request(), (false, false));
    }

    #[test]
    fn both_framings_flag_the_request_in_either_order() {
        for raw in [SMUGGLE_TE_FIRST, SMUGGLE_CL_FIRST] {
            let (s, v) = scan(&[raw]);
            assert_eq!(ambiguous_at(&v), 1);
            assert!(!s.is_on());
            assert!(v.next_request().0);
        }
    }

    #[test]
    fn finds_the_smuggling_request_after_bodies_of_both_kinds() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
        stream.extend_from_slice(
            b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\n\r\nGET /x HTTP/1.1\r\nContent-Length: 1\r\n\r\n",
        );
        // A chunked body whose data looks like a smuggling head.
        stream.extend_from_slice(
            b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        let fake = b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n";
        stream.extend_from_slice(format!("{:x};ext=1\r\n", fake.len()).as_bytes());
        stream.extend_from_slice(fake);
        stream.extend_from_slice(b"\r\n0\r\nX-Trailer: t\r\n\r\n");
        stream.extend_from_slice(SMUGGLE_CL_FIRST);
        // Whole, and then one byte at a time (every split point).
        let (_, v) = scan(&[&stream]);
        assert_eq!(ambiguous_at(&v), 4);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let (_, v) = scan(&bytes);
        assert_eq!(ambiguous_at(&v), 4);
        for _ in 0..3 {
            assert!(!v.next_request().0);
        }
        assert!(v.next_request().0);
    }

    #[test]
    fn plain_requests_are_never_flagged() {
        let one = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (s, v) = scan(&[one, one, one]);
        assert!(s.is_on());
        assert_eq!(ambiguous_at(&v), 0);
        assert_eq!(s.requests, 3);
    }

    #[test]
    fn stops_following_what_it_cannot_follow() {
        let cases: [&[u8]; 5] = [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ];
        for raw in cases {
            let (s, v) = scan(&[raw, SMUGGLE_TE_FIRST]);
            assert!(!s.is_on(), "{}", String::from_utf8_lossy(raw));
            assert_eq!(ambiguous_at(&v), 0);
        }
    }

    #[test]
    fn oversized_head_stops_the_scan() {
        let verdict = Arc::new(Verdict::default());
        let mut s = Scanner::new(64, verdict);
        s.feed(b"GET / HTTP/1.1\r\n");
        for _ in 0..10 {
            s.feed(b"X-Long: aaaaaaaaaaaaaaaa\r\n");
        }
        assert!(!s.is_on());
        assert!(s.partial.capacity() == 0);
    }
}
