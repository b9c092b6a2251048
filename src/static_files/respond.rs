//! Turns a prepared [`Entry`] and the request's headers into the response: picks the
//! variant (`Accept-Encoding`), answers 304 for a current validator, 206/416 for ranges, and
//! sends headers only for HEAD.

use std::fs::File;

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, LAST_MODIFIED, RANGE, VARY, X_CONTENT_TYPE_OPTIONS,
};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};

use super::body;
use super::cache::{Entry, Variant};
use super::negotiate::{self, AcceptEncoding, Encoding, RangeOutcome};
use super::resolve::Body;
use crate::error::GatewayBody;

/// Open file handles moved out of an owned entry, by variant index.
pub type Files = Vec<Option<File>>;

/// Moves the open files out of an entry that is answered once (not cached); the variants
/// keep an empty in-memory body in their place.
pub fn take_bodies(entry: &mut Entry) -> Files {
    entry
        .variants
        .iter_mut()
        .map(
            |v| match std::mem::replace(&mut v.body, Body::Memory(Bytes::new())) {
                Body::File(file) => Some(file),
                memory => {
                    v.body = memory;
                    None
                }
            },
        )
        .collect()
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
) -> Option<Response<GatewayBody>> {
    let mut files = files.unwrap_or_default();
    let get = parts.method == Method::GET;
    let wants_range = get && parts.headers.contains_key(RANGE);
    let accept = AcceptEncoding::parse(&parts.headers);
    let stored = entry.variants.iter().map(|v| v.encoding);
    // Compressed streams have no known length, so a range request gets the stored identity.
    let streamable = [Encoding::Br, Encoding::Gzip]
        .into_iter()
        .filter(|_| entry.stream_compress && !wants_range);
    let encoding = accept
        .choose(stored.chain(streamable))
        .unwrap_or(Encoding::Identity);
    let choice = match entry.variants.iter().position(|v| v.encoding == encoding) {
        Some(i) => Choice::Stored(i, &entry.variants[i]),
        None if entry.stream_compress => Choice::Stream(encoding),
        None => Choice::Stored(0, entry.variants.first()?),
    };

    let mut headers = HeaderMap::with_capacity(10);
    headers.insert(CONTENT_TYPE, entry.content_type.clone());
    headers.insert(CACHE_CONTROL, entry.cache_control.clone());
    headers.insert(LAST_MODIFIED, entry.last_modified.clone());
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if entry.has_variants() {
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    let (etag, encoding) = match &choice {
        Choice::Stored(_, v) => (v.etag.clone(), v.encoding),
        Choice::Stream(e) => {
            let len = entry.variants.first().map_or(0, |v| v.len);
            let tag = negotiate::etag(len, entry.mtime, *e);
            (HeaderValue::from_str(&tag).ok()?, *e)
        }
    };
    if let Some(token) = encoding.token() {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static(token));
    }
    headers.insert(ETAG, etag.clone());

    if negotiate::not_modified(
        &parts.headers,
        etag.to_str().unwrap_or_default(),
        entry.mtime,
    ) {
        return Some(build(StatusCode::NOT_MODIFIED, headers, body::empty()));
    }

    let (index, variant) = match choice {
        Choice::Stored(i, v) => (i, v),
        Choice::Stream(encoding) => {
            let len = entry.variants.first()?.len;
            let body = if get {
                body::compressed_file(files.first_mut()?.take()?, len, encoding)
            } else {
                body::empty()
            };
            return Some(build(StatusCode::OK, headers, body));
        }
    };
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let len = variant.len;
    let outcome = if get {
        negotiate::range(
            &parts.headers,
            len,
            etag.to_str().unwrap_or_default(),
            entry.mtime,
        )
    } else {
        RangeOutcome::Full
    };
    let file = files.get_mut(index).and_then(Option::take);
    let (status, start, count) = match outcome {
        RangeOutcome::Full => (StatusCode::OK, 0, len),
        RangeOutcome::Partial { start, end } => {
            let range = format!("bytes {start}-{end}/{len}");
            headers.insert(CONTENT_RANGE, HeaderValue::from_str(&range).ok()?);
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
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
    headers.insert(CONTENT_LENGTH, HeaderValue::from(count));
    let body = if get {
        variant_body(variant, file, start, count)?
    } else {
        body::empty()
    };
    Some(build(status, headers, body))
}

/// `count` bytes of a variant from `start`.
fn variant_body(
    variant: &Variant,
    file: Option<File>,
    start: u64,
    count: u64,
) -> Option<GatewayBody> {
    match (file, &variant.body) {
        (Some(file), _) => match body::file(file, start, count) {
            Ok(body) => Some(body),
            Err(e) => {
                tracing::debug!(error = %e, "static file seek failed");
                None
            }
        },
        (None, Body::Memory(bytes)) => {
            let from = usize::try_from(start).ok()?;
            let to = from.checked_add(usize::try_from(count).ok()?)?;
            (to <= bytes.len()).then(|| body::memory(bytes.slice(from..to)))
        }
        // Shared (cached) entries never hold open files.
        (None, Body::File(_)) => None,
    }
}

fn build(status: StatusCode, headers: HeaderMap, body: GatewayBody) -> Response<GatewayBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
