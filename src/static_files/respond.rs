//! Turns a prepared [`Entry`] and the request's headers into the response: picks the
//! variant (`Accept-Encoding`), answers 304 for a current validator, 206/416 for ranges, and
//! sends headers only for HEAD.
//!
//! Every header of a whole-variant `200` is prepared once per variant ([`full_headers`]),
//! and once more encoded for HTTP/1.1 ([`encode_fields`]): the common answer, a `GET` of the
//! whole variant over HTTP/1, is those bytes plus the body; other answers start from a clone
//! of the map (conditional and range requests adjust it).

use std::fs::File;

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, LAST_MODIFIED, VARY, X_CONTENT_TYPE_OPTIONS,
};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode, Version};

use super::body;
use super::cache::{Entry, Variant};
use super::negotiate::{self, Encoding, Present, RangeOutcome};
use super::resolve::Body;
use crate::error::GatewayBody;
use crate::handler::{EncodedFields, Reply};
use crate::sendfile::Slot;

/// Open file handles moved out of an owned entry, by variant index.
pub type Files = Vec<Option<File>>;

/// Moves the open files out of an entry that is answered once (not cached); the variants
/// keep an empty in-memory body in their place.
pub fn take_bodies(entry: &mut Entry) -> Files {
    entry
        .variants
        .iter_mut()
        .map(
            |v| match std::mem::replace(&mut v.body, Body::Memory(Bytes::new(), None)) {
                Body::File(file) => Some(file),
                memory => {
                    v.body = memory;
                    None
                }
            },
        )
        .collect()
}

/// The headers of a `200` carrying the whole of `variant`, in the order they are sent.
pub fn full_headers(entry: &Entry, variant: &Variant) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(10);
    headers.insert(CONTENT_TYPE, entry.content_type.clone());
    headers.insert(CACHE_CONTROL, entry.cache_control.clone());
    headers.insert(LAST_MODIFIED, entry.last_modified.clone());
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if entry.has_variants() {
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    if let Some(token) = variant.encoding.token() {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static(token));
    }
    headers.insert(ETAG, variant.etag.clone());
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(variant.len));
    headers
}

/// `headers` but `Content-Length` as HTTP/1.1 field lines (the connection writes the
/// framing).
pub fn encode_fields(headers: &HeaderMap) -> Bytes {
    let mut out = Vec::with_capacity(256);
    for (name, value) in headers {
        if name == CONTENT_LENGTH {
            continue;
        }
        crate::proxy::h1::push_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    Bytes::from(out)
}

/// The variant to send.
enum Choice<'a> {
    Stored(usize, &'a Variant),
    /// The identity file compressed while streaming.
    Stream(Encoding),
}

/// `None` when a body that should exist cannot be produced (an open file missing from
/// `files`, a failed seek): the caller treats it as a miss.
pub fn respond(
    parts: &Parts,
    entry: &Entry,
    files: Option<Files>,
    sendfile: Option<&Slot>,
) -> Option<Reply> {
    let get = parts.method == Method::GET;
    let present = Present::scan(&parts.headers);
    let wants_range = get && present.range;
    let accept = present.accept(&parts.headers);
    let stored = entry.variants.iter().map(|v| v.encoding);
    // Compressed streams have no known length, so a range request gets the stored identity.
    let streamable = [Encoding::Br, Encoding::Gzip]
        .into_iter()
        .filter(|_| entry.stream_compress && !wants_range);
    let encoding = accept
        .choose(stored.chain(streamable))
        .unwrap_or(Encoding::Identity);
    // A GET compressed while it streams needs an encoder slot; with none free it gets the
    // stored identity.
    let mut slot = None;
    let choice = match entry.variants.iter().position(|v| v.encoding == encoding) {
        Some(i) => Choice::Stored(i, &entry.variants[i]),
        None if entry.stream_compress && !get => Choice::Stream(encoding),
        None if entry.stream_compress => match body::EncoderSlot::try_take() {
            Some(taken) => {
                slot = Some(taken);
                Choice::Stream(encoding)
            }
            None => Choice::Stored(0, entry.variants.first()?),
        },
        None => Choice::Stored(0, entry.variants.first()?),
    };
    match choice {
        Choice::Stored(index, variant) => {
            respond_stored(parts, entry, present, index, variant, files, sendfile)
        }
        Choice::Stream(encoding) => respond_stream(parts, entry, present, encoding, files, slot),
    }
}

/// A variant held in memory or on disk as is: 200, 304, 206 or 416.
fn respond_stored(
    parts: &Parts,
    entry: &Entry,
    present: Present<'_>,
    index: usize,
    variant: &Variant,
    files: Option<Files>,
    sendfile: Option<&Slot>,
) -> Option<Reply> {
    let get = parts.method == Method::GET;
    if present.conditional && not_modified(parts, &variant.etag, entry) {
        let mut headers = variant.headers.clone();
        headers.remove(ACCEPT_RANGES);
        headers.remove(CONTENT_LENGTH);
        return Some(build(StatusCode::NOT_MODIFIED, headers, body::empty()));
    }
    let len = variant.len;
    let outcome = if get && present.range {
        negotiate::range(
            &parts.headers,
            len,
            variant.etag.to_str().unwrap_or_default(),
            entry.mtime,
        )
    } else {
        RangeOutcome::Full
    };
    let file = files.and_then(|mut files| files.get_mut(index).and_then(Option::take));
    let mut headers = match outcome {
        // The common answer: the prepared bytes, no header map to fill, copy or encode. The
        // connection writes `Content-Length` from the body's exact size (a streamed file
        // has none: it keeps the map and its `Content-Length`).
        RangeOutcome::Full if get && parts.version < Version::HTTP_2 => {
            let body = variant_body(variant, file, 0, len, sendfile)?;
            if http_body::Body::size_hint(&body).exact() == Some(len) {
                return Some(Reply {
                    response: Response::new(body),
                    fields: Some(EncodedFields {
                        fields: variant.encoded.clone(),
                        dated: false,
                    }),
                });
            }
            return Some(build(StatusCode::OK, variant.headers.clone(), body));
        }
        _ => variant.headers.clone(),
    };
    let (status, start, count) = match outcome {
        RangeOutcome::Full => (StatusCode::OK, 0, len),
        RangeOutcome::Partial { start, end } => {
            let range = format!("bytes {start}-{end}/{len}");
            headers.insert(CONTENT_RANGE, HeaderValue::from_str(&range).ok()?);
            let count = end - start + 1;
            headers.insert(CONTENT_LENGTH, HeaderValue::from(count));
            (StatusCode::PARTIAL_CONTENT, start, count)
        }
        RangeOutcome::Unsatisfiable => {
            let range = format!("bytes */{len}");
            headers.insert(CONTENT_RANGE, HeaderValue::from_str(&range).ok()?);
            headers.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
            return Some(build(
                StatusCode::RANGE_NOT_SATISFIABLE,
                headers,
                body::empty(),
            ));
        }
    };
    let body = if get {
        variant_body(variant, file, start, count, sendfile)?
    } else {
        body::empty()
    };
    Some(build(status, headers, body))
}

/// The identity file compressed while it streams: no length, no ranges.
fn respond_stream(
    parts: &Parts,
    entry: &Entry,
    present: Present<'_>,
    encoding: Encoding,
    files: Option<Files>,
    slot: Option<body::EncoderSlot>,
) -> Option<Reply> {
    let identity = entry.variants.first()?;
    let mut headers = identity.headers.clone();
    headers.remove(ACCEPT_RANGES);
    headers.remove(CONTENT_LENGTH);
    let tag = negotiate::etag(identity.len, entry.mtime, encoding);
    let etag = HeaderValue::from_str(&tag).ok()?;
    if let Some(token) = encoding.token() {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static(token));
    }
    headers.insert(ETAG, etag.clone());
    if present.conditional && not_modified(parts, &etag, entry) {
        return Some(build(StatusCode::NOT_MODIFIED, headers, body::empty()));
    }
    let body = if let Some(slot) = slot {
        let file = files?.into_iter().next()??;
        body::compressed_file(file, identity.len, encoding, slot)
    } else {
        body::empty()
    };
    Some(build(StatusCode::OK, headers, body))
}

fn not_modified(parts: &Parts, etag: &HeaderValue, entry: &Entry) -> bool {
    negotiate::not_modified(
        &parts.headers,
        etag.to_str().unwrap_or_default(),
        entry.mtime,
    )
}

/// `count` bytes of a variant from `start`; bytes that came from an open file are offered
/// to the connection's sendfile slot.
fn variant_body(
    variant: &Variant,
    file: Option<File>,
    start: u64,
    count: u64,
    sendfile: Option<&Slot>,
) -> Option<GatewayBody> {
    match (file, &variant.body) {
        (Some(file), _) => match body::file(file, start, count) {
            Ok(body) => Some(body),
            Err(e) => {
                tracing::debug!(request_id = %crate::observability::CurrentRequestId, error = %e, "static file seek failed");
                None
            }
        },
        (None, Body::Memory(bytes, disk)) => {
            let from = usize::try_from(start).ok()?;
            let to = from.checked_add(usize::try_from(count).ok()?)?;
            let part = match (from, to) {
                (0, to) if to == bytes.len() => bytes.clone(),
                (from, to) if to <= bytes.len() => bytes.slice(from..to),
                _ => return None,
            };
            if let (Some(slot), Some(disk)) = (sendfile, disk) {
                slot.offer(&part, disk, start);
            }
            Some(body::memory(part))
        }
        // Shared (cached) entries never hold open files.
        (None, Body::File(_)) => None,
    }
}

fn build(status: StatusCode, headers: HeaderMap, body: GatewayBody) -> Reply {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.into()
}
