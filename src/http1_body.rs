//! HTTP/1.1 message bodies as they arrive, for both sides of the gateway (client requests in
//! `listener::http1`, upstream responses in `proxy::h1`): `Content-Length` bytes, or chunks
//! (RFC 9112 §7.1) whose sizes are parsed by httparse. Data is handed out as views of the
//! connection's read buffer, never copied.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Whether a response is sent without a body whatever its headers say (RFC 9112 §6.3): the
/// answer to a HEAD, a 1xx, 204 or 304. Its `Content-Length`, if any, describes the body a
/// GET would have had.
pub fn sent_without_body(status: http::StatusCode, head_request: bool) -> bool {
    head_request
        || status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
}

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most trailer fields accepted after the last chunk.
const MAX_TRAILERS: usize = 64;

/// Where in the body the next bytes belong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes of a `Content-Length` body are still due.
    Length(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// Inside a chunk: this many bytes still due.
    ChunkData(u64),
    /// After a chunk's data: its CRLF.
    ChunkEnd,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
    /// The body is complete (or there was none).
    Done,
    /// The body was malformed or cut off: the connection cannot be reused.
    Failed,
}

/// What the buffered bytes gave.
#[derive(Debug)]
pub enum Step {
    Data(Bytes),
    /// The body ended with these trailer fields (invalid ones left out).
    Trailers(HeaderMap),
    /// The body ended.
    End,
    /// More bytes are needed.
    More,
}

impl Decoder {
    /// A body of `n` bytes.
    pub fn length(n: u64) -> Decoder {
        Decoder::Length(n)
    }

    /// A chunked body.
    pub fn chunked() -> Decoder {
        Decoder::ChunkSize
    }

    /// Bytes certainly still due: the rest of a `Content-Length` body or of the current
    /// chunk (for sizing reads).
    pub fn due(&self) -> Option<u64> {
        match *self {
            Decoder::Length(n) | Decoder::ChunkData(n) => Some(n),
            _ => None,
        }
    }

    /// What is left of a `Content-Length` body.
    pub fn length_left(&self) -> Option<u64> {
        match *self {
            Decoder::Length(n) => Some(n),
            _ => None,
        }
    }

    /// Takes the next piece of the body out of `buf`; trailers may be up to `max_trailers`
    /// bytes. An error leaves the decoder `Failed`.
    pub fn step(&mut self, buf: &mut BytesMut, max_trailers: usize) -> Result<Step, &'static str> {
        let stepped = self.step_inner(buf, max_trailers);
        if stepped.is_err() {
            *self = Decoder::Failed;
        }
        stepped
    }

    fn step_inner(
        &mut self,
        buf: &mut BytesMut,
        max_trailers: usize,
    ) -> Result<Step, &'static str> {
        loop {
            match *self {
                Decoder::Done => return Ok(Step::End),
                Decoder::Failed => return Err("body already failed"),
                Decoder::Length(0) => {
                    *self = Decoder::Done;
                    return Ok(Step::End);
                }
                Decoder::Length(due) | Decoder::ChunkData(due) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = buf.len().min(usize::try_from(due).unwrap_or(usize::MAX));
                    let left = due - n as u64;
                    *self = match *self {
                        Decoder::Length(_) => Decoder::Length(left),
                        _ if left == 0 => Decoder::ChunkEnd,
                        _ => Decoder::ChunkData(left),
                    };
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                Decoder::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        // httparse takes any byte in a chunk extension up to the CR; a bare
                        // LF or other control byte there is read as a line end by some
                        // parsers (nginx), and a proxy in front that disagrees with us about
                        // where a chunk starts is a smuggling channel (RFC 9112 §7.1.1).
                        if !chunk_line_is_clean(&buf[..used]) {
                            return Err("control character in a chunk-size line");
                        }
                        buf.advance(used);
                        *self = if size == 0 {
                            Decoder::Trailers
                        } else {
                            Decoder::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err("chunk-size line too long")
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::More),
                    Err(_) => return Err("invalid chunk size"),
                },
                Decoder::ChunkEnd => {
                    if buf.len() < 2 {
                        return match buf.first() {
                            Some(b'\r') | None => Ok(Step::More),
                            Some(_) => Err("chunk data not followed by CRLF"),
                        };
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    *self = Decoder::ChunkSize;
                }
                Decoder::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Decoder::Done;
                        return Ok(Step::End);
                    }
                    if buf.len() < 2 {
                        return match buf.first() {
                            Some(b'\r') | None => Ok(Step::More),
                            Some(_) => self.trailers(buf, max_trailers),
                        };
                    }
                    return self.trailers(buf, max_trailers);
                }
            }
        }
    }

    /// Trailer fields, read whole.
    fn trailers(&mut self, buf: &mut BytesMut, max_trailers: usize) -> Result<Step, &'static str> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
        match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((used, fields))) => {
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for field in fields {
                    if let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(field.name.as_bytes()),
                        HeaderValue::from_bytes(field.value),
                    ) {
                        trailers.append(name, value);
                    }
                }
                buf.advance(used);
                *self = Decoder::Done;
                Ok(Step::Trailers(trailers))
            }
            Ok(httparse::Status::Partial) if buf.len() > max_trailers => Err("trailers too large"),
            Ok(httparse::Status::Partial) => Ok(Step::More),
            Err(_) => Err("malformed trailers"),
        }
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        matches!(self, Decoder::Done | Decoder::Length(0))
    }
}

/// A chunk-size line as httparse accepted it: ends in CRLF, and before that no control
/// byte but HTAB (whitespace around `;` in extensions, RFC 9112's BWS).
fn chunk_line_is_clean(line: &[u8]) -> bool {
    match line.strip_suffix(b"\r\n") {
        Some(rest) => !rest.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `piece` bytes; returns the body or the error.
    fn decode(
        mut decoder: Decoder,
        wire: &[u8],
        piece: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = wire.chunks(piece.max(1));
        loop {
            match decoder.step(&mut buf, 1024)? {
                Step::Data(data) => body.extend_from_slice(&data),
                Step::End | Step::Trailers(_) => return Ok((body, buf.to_vec())),
                Step::More => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return Err("cut off"),
                },
            }
        }
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        for piece in [1, 3, 100] {
            let (body, rest) = decode(Decoder::length(5), b"helloGET /", piece).unwrap();
            assert_eq!(body, b"hello");
            assert!(b"GET /".starts_with(&rest), "{rest:?}");
        }
        assert_eq!(decode(Decoder::length(5), b"hel", 1), Err("cut off"));
    }

    #[test]
    fn chunked_bodies_in_any_pieces() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in 1..wire.len() {
            let (body, rest) = decode(Decoder::chunked(), wire, piece).unwrap();
            assert_eq!(body, b"hello world!", "piece {piece}");
            assert!(b"NEXT".starts_with(&rest));
        }
        let (body, rest) = decode(Decoder::chunked(), b"0\r\n\r\nGET", 64).unwrap();
        assert!(body.is_empty());
        assert_eq!(rest, b"GET");
    }

    #[test]
    fn malformed_chunked_bodies_fail() {
        for wire in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\r\nhello\nX",
            b"fffffffffffffffffff\r\n",
            b"-1\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            // Control bytes in an extension: nginx ends the line at the bare LF and reads
            // `abc` as the next size.
            b"3;x\nabc\r\nabc\r\n0\r\n\r\n",
            b"3;x\x00y\r\nabc\r\n0\r\n\r\n",
            b"3;x\ry\r\nabc\r\n0\r\n\r\n",
            b"3;x\x7f\r\nabc\r\n0\r\n\r\n",
        ] {
            for piece in [1, 4, 64] {
                assert!(
                    matches!(decode(Decoder::chunked(), wire, piece), Err(e) if e != "cut off"),
                    "{wire:?} in pieces of {piece}"
                );
            }
        }
        let long_line = [b'1'; MAX_CHUNK_LINE + 2];
        assert!(decode(Decoder::chunked(), &long_line, 512).is_err());
        let mut decoder = Decoder::chunked();
        let mut buf = BytesMut::from(&b"x\r\n"[..]);
        assert!(decoder.step(&mut buf, 1024).is_err());
        assert_eq!(decoder, Decoder::Failed);
    }

    #[test]
    fn random_chunked_bodies_round_trip() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..rng.usize(0..6) {
                let len = rng.usize(1..300);
                let data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                wire.extend_from_slice(format!("{len:x}\r\n").as_bytes());
                wire.extend_from_slice(&data);
                wire.extend_from_slice(b"\r\n");
                expected.extend_from_slice(&data);
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let piece = rng.usize(1..40);
            let (body, rest) = decode(Decoder::chunked(), &wire, piece).unwrap();
            assert_eq!(body, expected);
            assert!(rest.is_empty());
        }
    }
}
