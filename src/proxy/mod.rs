//! Forwarding a routed request to an upstream: body buffering or streaming, header rules,
//! server choice, connect retries, timeouts, WebSocket pass-through.

pub mod body;
pub mod headers;
pub mod upstream;

use std::time::Duration;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::error::{GatewayBody, GatewayError};
use headers::Forwarding;
pub use upstream::Upstream;

/// What a forwarded request produced, besides the response: which server answered.
pub struct Forwarded<'u> {
    pub response: Response<GatewayBody>,
    pub server: &'u str,
}

/// Sends `req` (whose path is already normalised into `path_and_query`) to `upstream`.
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
    let method = parts.method;
    let mut header_map = parts.headers;
    let had_framing =
        header_map.contains_key(CONTENT_LENGTH) || header_map.contains_key(TRANSFER_ENCODING);
    headers::prepare_request(&mut header_map, fwd, websocket);

    body::check_declared_length(&body, body_limit)?;
    let settings = &upstream.settings;
    // A buffered body can be replayed, so connect failures may be retried on another server.
    let (buffered, mut streaming) = if settings.request_buffering {
        let buffered = body::buffer(body, body_limit).await?;
        if had_framing || !buffered.is_empty() {
            header_map.insert(CONTENT_LENGTH, HeaderValue::from(buffered.len()));
        }
        (Some(buffered), None)
    } else {
        (None, Some(body::streaming(body, body_limit)))
    };

    let attempts = if buffered.is_some() {
        1 + settings.retries as usize
    } else {
        1
    };
    let first = upstream.next_slot();
    let mut last_error = None;
    for attempt in 0..attempts {
        let Some(server) = upstream.pick(first, attempt) else {
            return Err(GatewayError::NoHealthyServer(upstream.name().to_owned()));
        };
        let body = match (&buffered, streaming.take()) {
            (Some(b), _) => b.to_body().await?,
            (None, Some(s)) => s,
            (None, None) => break,
        };
        let last = attempt + 1 == attempts;
        let headers = if last {
            std::mem::take(&mut header_map)
        } else {
            header_map.clone()
        };
        let request = build_request(&method, server, &path_and_query, headers, body)?;
        match send(
            upstream,
            request,
            settings.response_timeout,
            &server.label,
            body_limit,
        )
        .await
        {
            Ok(mut response) => {
                if let Some(client_upgrade) = client_upgrade {
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                        splice_upgrade(client_upgrade, hyper::upgrade::on(&mut response));
                    }
                }
                return Ok(Forwarded {
                    response: finish_response(response, websocket, fwd.request_id),
                    server: &server.label,
                });
            }
            Err(e @ GatewayError::UpstreamConnect { .. }) if !last => {
                tracing::warn!(upstream = upstream.name(), error = %e, "retrying on another server");
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| GatewayError::NoHealthyServer(upstream.name().to_owned())))
}

fn build_request(
    method: &http::Method,
    server: &upstream::Server,
    path_and_query: &PathAndQuery,
    headers: HeaderMap,
    body: GatewayBody,
) -> Result<Request<GatewayBody>, GatewayError> {
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(server.authority.clone())
        .path_and_query(path_and_query.clone())
        .build()
        .map_err(|e| GatewayError::Internal(format!("upstream uri: {e}")))?;
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Ok(request)
}

async fn send(
    upstream: &Upstream,
    request: Request<GatewayBody>,
    timeout: Duration,
    server: &str,
    body_limit: u64,
) -> Result<Response<Incoming>, GatewayError> {
    match tokio::time::timeout(timeout, upstream.client.request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) if body::is_length_limit_error(&e) => {
            Err(GatewayError::BodyTooLarge(body_limit))
        }
        Ok(Err(e)) if e.is_connect() => Err(GatewayError::UpstreamConnect {
            server: server.to_owned(),
            source: e.into(),
        }),
        Ok(Err(e)) => Err(GatewayError::UpstreamFailed {
            server: server.to_owned(),
            source: e.into(),
        }),
        Err(_) => Err(GatewayError::UpstreamTimeout {
            server: server.to_owned(),
            timeout,
        }),
    }
}

fn finish_response(
    response: Response<Incoming>,
    websocket: bool,
    request_id: &HeaderValue,
) -> Response<GatewayBody> {
    let (mut parts, body) = response.into_parts();
    let switching = websocket && parts.status == StatusCode::SWITCHING_PROTOCOLS;
    headers::prepare_response(&mut parts.headers, switching, request_id);
    Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
}

/// Joins the client's and the upstream's upgraded connections once both sides switched.
fn splice_upgrade(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
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
