//! Forwarding a routed request to an upstream: body buffering or streaming, header rules,
//! server choice, connect retries, timeouts, WebSocket pass-through.

pub mod body;
mod client;
pub mod headers;
pub mod pool;
pub mod upstream;

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::error::{GatewayBody, GatewayError};
use client::{Failure, Limits, PooledBody};
use headers::Forwarding;
pub use pool::{set_worker_count, set_worker_index};
use pool::{Sender, ServerPool};
pub use upstream::Upstream;

/// What a forwarded request produced, besides the response: which server answered.
pub struct Forwarded<'u> {
    pub response: Response<GatewayBody>,
    pub server: &'u str,
}

/// Sends `req` (whose path is already normalised into `path_and_query`) to `upstream`.
///
/// A request that never reached a server (connect failure) is retried on the next one, up
/// to `retries` times, whatever its method: it comes back from the failed attempt unsent,
/// headers and body included, so nothing is copied up front.
pub async fn forward<'u>(
    upstream: &'u Upstream,
    mut req: Request<Incoming>,
    path_and_query: PathAndQuery,
    fwd: &Forwarding<'_>,
    body_limit: u64,
) -> Result<Forwarded<'u>, GatewayError> {
    let websocket =
        req.version() == Version::HTTP_11 && headers::is_websocket_upgrade(req.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut header_map = parts.headers;
    let had_framing =
        header_map.contains_key(CONTENT_LENGTH) || header_map.contains_key(TRANSFER_ENCODING);
    headers::prepare_request(&mut header_map, fwd, websocket);

    body::check_declared_length(&body, body_limit)?;
    let settings = &upstream.settings;
    let body = if settings.request_buffering {
        let buffered = body::buffer(body, body_limit).await?;
        if had_framing || !buffered.is_empty() {
            header_map.insert(CONTENT_LENGTH, HeaderValue::from(buffered.len()));
        }
        buffered.into_body().await?
    } else {
        body::streaming(body, body_limit)
    };
    // Origin-form (`/path?query`): the connection already names the server.
    let mut request = Request::new(body);
    *request.method_mut() = parts.method;
    *request.uri_mut() = Uri::from(path_and_query);
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = header_map;

    let limits = Limits {
        connect_timeout: settings.connect_timeout,
        response_timeout: settings.response_timeout,
        body_limit,
    };
    let attempts = 1 + settings.retries as usize;
    let first = upstream.next_slot();
    let mut attempt = 0;
    loop {
        let Some(server) = upstream.pick(first, attempt) else {
            return Err(GatewayError::NoHealthyServer(upstream.name().to_owned()));
        };
        match client::send(server, request, &limits).await {
            Ok((response, sender)) => {
                return Ok(Forwarded {
                    response: finish_response(
                        response,
                        sender,
                        &server.pool,
                        client_upgrade,
                        fwd.request_id,
                    ),
                    server: &server.label,
                });
            }
            Err(Failure {
                error,
                unsent: Some(unsent),
            }) if attempt + 1 < attempts => {
                tracing::warn!(upstream = upstream.name(), error = %error, "retrying on another server");
                request = unsent;
                attempt += 1;
            }
            Err(failure) => return Err(failure.error),
        }
    }
}

/// Turns the upstream's response into the client's, and decides the connection's fate:
/// back to the pool when the body ends, into the WebSocket splice on `101`.
fn finish_response(
    mut response: Response<Incoming>,
    sender: Sender,
    pool: &Arc<ServerPool>,
    client_upgrade: Option<OnUpgrade>,
    request_id: &HeaderValue,
) -> Response<GatewayBody> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client)) = (switching, client_upgrade) {
        let upstream = hyper::upgrade::on(&mut response);
        splice_upgrade(client, upstream, sender);
        // The body of a 101 is empty; the connection now belongs to the splice.
        let (mut parts, _) = response.into_parts();
        headers::prepare_response(&mut parts.headers, true, request_id);
        return Response::from_parts(parts, body::empty_body());
    }
    let (mut parts, incoming) = response.into_parts();
    headers::prepare_response(&mut parts.headers, false, request_id);
    let body = if switching {
        // An upgrade nobody asked for: the connection cannot be reused.
        drop(sender);
        incoming.map_err(Into::into).boxed_unsync()
    } else if incoming.is_end_stream() {
        // No body (HEAD, 204, 304, `Content-Length: 0`): the connection is free already.
        client::release_with(pool, sender);
        body::empty_body()
    } else {
        PooledBody::new(incoming, sender, Arc::clone(pool)).boxed_unsync()
    };
    Response::from_parts(parts, body)
}

/// Joins the client's and the upstream's upgraded connections once both sides switched.
/// `sender` keeps the upstream connection's request side open until hyper hands it over.
fn splice_upgrade(client: OnUpgrade, upstream: OnUpgrade, sender: Sender) {
    tokio::spawn(async move {
        let joined = tokio::try_join!(client, upstream);
        drop(sender);
        let (client, upstream) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "websocket connection ended");
        }
    });
}
