//! Request heads: bytes → `http::Request<()>` and the framing of the body that follows.
//!
//! httparse (hyper's parser) reads the head; header values share the head's bytes (one
//! reference-counted buffer, no copy per field). The framing rules are RFC 9112 §6 made
//! strict, as the product contract asks: a body framed two ways, or in a way we do not
//! follow, is refused (400 and close) instead of being guessed at.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};

/// Most header fields in one request head (hyper's default): more is a 431.
pub const MAX_HEADERS: usize = 100;
/// Header fields a request may gain on its way upstream without its map growing.
const FORWARDING_ROOM: usize = 8;
/// Longest request target the `http` crate takes.
const MAX_URI: usize = u16::MAX as usize - 1;

/// A complete request head.
pub struct Parsed {
    pub request: Request<()>,
    pub framing: Framing,
    /// The client will send another request after this one unless told otherwise.
    pub keep_alive: bool,
    /// `Expect: 100-continue` with a body: the client waits for a `100` before sending it.
    pub expect_continue: bool,
    /// `Upgrade` with `Connection: upgrade` (a WebSocket handshake).
    pub upgrade: bool,
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// Framed in a way that cannot be trusted: the request is answered 400 (by the handler,
    /// so it is logged and counted) and the connection closes without reading further.
    Refused(&'static str),
}

/// A head that gets an answer from the connection itself, which then closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    BadRequest(&'static str),
    /// Longer than `max_header_bytes`, or more than [`MAX_HEADERS`] fields.
    TooLarge,
    UriTooLong,
    /// An HTTP version other than 1.0 or 1.1.
    Version,
}

impl Reject {
    pub fn status(self) -> StatusCode {
        match self {
            Reject::BadRequest(_) => StatusCode::BAD_REQUEST,
            Reject::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::UriTooLong => StatusCode::URI_TOO_LONG,
            Reject::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Reject::BadRequest(reason) => reason,
            Reject::TooLarge => "request head too large",
            Reject::UriTooLong => "request target too long",
            Reject::Version => "unsupported HTTP version",
        }
    }
}

/// Byte ranges of one field's name and value within the head.
type Span = (u32, u32, u32, u32);

/// Parses the request head at the start of `buf`, taking it out of `buf` when complete;
/// `Ok(None)` when more bytes are needed. `spans` is scratch space kept by the connection.
pub fn parse(
    buf: &mut BytesMut,
    max_head: usize,
    spans: &mut Vec<Span>,
) -> Result<Option<Parsed>, Reject> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => return Err(Reject::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::TooLarge),
        Err(httparse::Error::Version) => return Err(Reject::Version),
        Err(httparse::Error::HeaderName) => return Err(Reject::BadRequest("invalid header name")),
        Err(httparse::Error::HeaderValue) => {
            return Err(Reject::BadRequest("invalid header value"))
        }
        Err(_) => return Err(Reject::BadRequest("malformed request head")),
    };
    if len > max_head {
        return Err(Reject::TooLarge);
    }
    let method = parsed.method.unwrap_or_default();
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| Reject::BadRequest("invalid method"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let target = parsed.path.unwrap_or_default().as_bytes();
    if target.len() > MAX_URI {
        return Err(Reject::UriTooLong);
    }
    let target = (offset(target), offset(target) + target.len() as u32);
    spans.clear();
    for field in parsed.headers.iter() {
        let name = offset(field.name.as_bytes());
        let value = offset(field.value);
        spans.push((
            name,
            name + field.name.len() as u32,
            value,
            value + field.value.len() as u32,
        ));
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0 as usize..target.1 as usize))
        .map_err(|_| Reject::BadRequest("invalid request target"))?;

    // Room for what the proxy adds (X-Forwarded-*, X-Request-Id, claim headers): growing a
    // map rehashes it.
    let mut headers = crate::header_maps::take(spans.len() + FORWARDING_ROOM);
    let mut lengths = Lengths::None;
    let mut codings = 0usize;
    let mut chunked_last = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut upgrade_token = false;
    let mut upgrade_header = false;
    let mut expect_continue = false;
    let mut hosts = 0usize;
    for &(ns, ne, vs, ve) in spans.iter() {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| Reject::BadRequest("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| Reject::BadRequest("invalid header value"))?;
        let bytes = value.as_bytes();
        if name == CONTENT_LENGTH {
            lengths = lengths.add(bytes);
        } else if name == TRANSFER_ENCODING {
            for coding in bytes.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if !coding.is_empty() {
                    codings += 1;
                    chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                }
            }
        } else if name == CONNECTION {
            for token in bytes.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                upgrade_token |= token.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name == EXPECT {
            expect_continue |= bytes.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if name == UPGRADE {
            upgrade_header = true;
        } else if name == HOST {
            hosts += 1;
        }
        headers.append(name, value);
    }

    // RFC 9112 §3.2: an HTTP/1.1 request names exactly one host; routing by one of several
    // would let a request be routed as one host and read by the app as another.
    if hosts > 1 {
        return Err(Reject::BadRequest("several Host fields"));
    }
    if hosts == 0 && version == Version::HTTP_11 {
        return Err(Reject::BadRequest("missing Host"));
    }

    let framing = if codings > 0 || headers.contains_key(TRANSFER_ENCODING) {
        if !matches!(lengths, Lengths::None) {
            Framing::Refused("both Content-Length and Transfer-Encoding")
        } else if version == Version::HTTP_10 {
            Framing::Refused("Transfer-Encoding in an HTTP/1.0 request")
        } else if codings != 1 || !chunked_last {
            Framing::Refused("Transfer-Encoding other than chunked")
        } else {
            Framing::Chunked
        }
    } else {
        match lengths {
            Lengths::None | Lengths::One(0) => Framing::Empty,
            Lengths::One(n) => Framing::Length(n),
            Lengths::Several => Framing::Refused("several Content-Length values"),
            Lengths::Invalid => Framing::Refused("invalid Content-Length"),
        }
    };
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive_token);
    let has_body = matches!(framing, Framing::Length(_) | Framing::Chunked);

    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Parsed {
        request,
        framing,
        keep_alive,
        expect_continue: expect_continue && has_body && version == Version::HTTP_11,
        upgrade: upgrade_header && upgrade_token,
    }))
}

/// The `Content-Length` fields seen so far.
#[derive(Debug, Clone, Copy)]
enum Lengths {
    None,
    One(u64),
    /// Differing values, or a comma-separated list (refused, as the contract says).
    Several,
    Invalid,
}

impl Lengths {
    fn add(self, value: &[u8]) -> Lengths {
        let valid = !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit);
        match self {
            Lengths::Invalid => Lengths::Invalid,
            _ if !valid => {
                if value.contains(&b',') {
                    Lengths::Several
                } else {
                    Lengths::Invalid
                }
            }
            Lengths::None => Lengths::One(parse_digits(value)),
            // Repeated equal values are one length (RFC 9110 §8.6 lets a recipient accept
            // them); differing ones are refused.
            Lengths::One(n) if parse_digits(value) == n => Lengths::One(n),
            Lengths::One(_) | Lengths::Several => Lengths::Several,
        }
    }
}

/// At most 19 ASCII digits (checked by the caller) as a number.
fn parse_digits(value: &[u8]) -> u64 {
    value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))
}
