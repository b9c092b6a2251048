//! Forwarding a routed request to an upstream: body buffering or streaming, header rules,
//! server choice (`balance`), retries within a budget, timeouts, WebSocket pass-through.
//! Each exchange's outcome feeds its server's passive ejection (`server_state`); active
//! health checks run beside the request path (`health`).

mod balance;
pub mod body;
mod client;
pub(crate) mod h1;
pub mod headers;
pub mod health;
pub mod pool;
mod retry_budget;
mod server_state;
mod tunnel;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;

use crate::error::{GatewayBody, GatewayError};
use crate::handler::Reply;
use crate::listener::upgrade::{self, OnUpgrade};
use crate::listener::RequestBody;
use crate::observability::id_str;
use client::{Failure, Limits, Unsent};
use h1::{Conn, Framing, Head, ResponseBody};
use headers::Forwarding;
use pool::ServerPool;
pub use pool::{set_worker_count, set_worker_index};
use server_state::InFlight;
use upstream::NoServer;
pub use upstream::Upstream;

/// How long a request may wait for a server under its `max_connections` cap.
const CAP_WAIT: Duration = Duration::from_millis(100);
/// How often a waiting request looks for a free server again.
const CAP_POLL: Duration = Duration::from_millis(5);

/// What a forwarded request produced, besides the response: which server answered.
pub struct Forwarded<'u> {
    /// The response, with the upstream's fields encoded when the client speaks HTTP/1.
    pub reply: Reply,
    pub server: &'u str,
}

/// Sends `req` (whose path is already normalised into `path_and_query`) to `upstream`;
/// `hash` is the request's `consistent_hash` key (see [`Upstream::request_hash`]).
///
/// A request that never reached a server (connect failure) is retried on another one, up
/// to `retries` times, whatever its method: it comes back from the failed attempt unsent,
/// headers and body included, so nothing is copied up front. An idempotent request whose
/// body was buffered in memory is also retried after a reset before the response head (from
/// a copy kept for that); never once the response started. With no usable server (all
/// unhealthy or ejected) the answer is 503 at once; with every usable server at its
/// `max_connections` cap, after a wait of at most [`CAP_WAIT`]. Retries also stay within the
/// upstream's retry budget (20% of its requests).
pub async fn forward<'u>(
    upstream: &'u Upstream,
    mut req: Request<RequestBody>,
    path_and_query: PathAndQuery,
    mut fwd: Forwarding<'_>,
    body_limit: u64,
    hash: Option<u64>,
) -> Result<Forwarded<'u>, GatewayError> {
    let client_http1 = req.version() < Version::HTTP_2;
    let websocket =
        req.version() == Version::HTTP_11 && headers::is_websocket_upgrade(req.headers());
    let client_upgrade = websocket.then(|| upgrade::on(&mut req)).flatten();
    let (parts, body) = req.into_parts();
    // Nothing of the client's request head is held while the upstream answers (the head's
    // values share one hyper read buffer): its URI is dropped here, the headers and method
    // move into the upstream request, and the target only stays for a possible replay.
    let http::request::Parts {
        method,
        uri: client_uri,
        headers: mut header_map,
        ..
    } = parts;
    drop(client_uri);
    let had_framing =
        header_map.contains_key(CONTENT_LENGTH) || header_map.contains_key(TRANSFER_ENCODING);
    let gateway_fields = headers::prepare_request(&mut header_map, &mut fwd, websocket);

    body::check_declared_length(&body, body_limit)?;
    let settings = &upstream.settings;
    let mut replay: Option<Box<Replay>> = None;
    let body = if settings.request_buffering {
        // Boxed: reading a body needs a large future (spill file, buffers) that most
        // requests (GETs, no body) never use; inline, every request's future would carry
        // it and hyper moves that future on each request.
        let mut buffered = if body.is_end_stream() {
            body::Buffered::Empty
        } else {
            Box::pin(body::buffer(body, body_limit)).await?
        };
        if had_framing || !buffered.is_empty() {
            header_map.insert(CONTENT_LENGTH, HeaderValue::from(buffered.len()));
        }
        let bytes = match &buffered {
            body::Buffered::Empty => Some(bytes::Bytes::new()),
            body::Buffered::Memory(b, _) => Some(b.clone()),
            body::Buffered::File { .. } => None,
        };
        // The copy costs a header-map clone per request: only kept when a retry on another
        // server is possible at all.
        let can_retry = settings.retries > 0 && upstream.servers.len() > 1;
        if let (true, true, false, Some(bytes)) =
            (can_retry, is_idempotent(&method), websocket, bytes)
        {
            replay = Some(Box::new(Replay {
                method: method.clone(),
                uri: Uri::from(path_and_query.clone()),
                headers: header_map.clone(),
                bytes,
                // The bytes stay in memory as long as this copy: so does their share.
                _held: buffered.take_held(),
            }));
        }
        buffered.into_body()?
    } else {
        body::streaming(body, body_limit)
    };
    // Origin-form (`/path?query`): the connection already names the server.
    let uri = Uri::from(path_and_query);
    let mut request = Unsent::Request(build_request(method, uri, header_map, body));

    let limits = Limits {
        connect_timeout: settings.connect_timeout,
        response_timeout: settings.response_timeout,
        body_limit,
        track_latency: upstream.tracks_latency(),
        pass_fields: client_http1,
    };
    let attempts = 1 + settings.retries as usize;
    // One clock read for the retry budget and the first choice (a retry reads it again).
    let mut now = Some(upstream.record_request());
    let mut tried: Vec<usize> = Vec::new();
    let mut last_error = None;
    loop {
        let index = match choose(upstream, hash, &tried, now.take()).await {
            Ok(index) => index,
            // Nothing usable (or, after a failure, nothing else to try).
            Err(_) => {
                return Err(last_error
                    .unwrap_or_else(|| GatewayError::NoHealthyServer(upstream.name().to_owned())))
            }
        };
        let server = &upstream.servers[index];
        let in_flight = InFlight::new(&server.state);
        match client::send(server, request, &gateway_fields, &limits).await {
            Ok((head, conn)) => {
                if head.response.status() == StatusCode::SWITCHING_PROTOCOLS
                    && client_upgrade.is_none()
                {
                    // Only an upgrade the client asked for can be passed on: anything else
                    // would hand the client a connection in a protocol it never chose.
                    server.state.record_failure(settings.passive.as_ref());
                    return Err(GatewayError::UpstreamFailed {
                        server: server.label.clone(),
                        source: "upstream switched protocols unasked".into(),
                    });
                }
                if head.response.status().is_server_error() {
                    server.state.record_failure(settings.passive.as_ref());
                } else {
                    server.state.record_success();
                }
                return Ok(Forwarded {
                    reply: finish_response(
                        head,
                        conn,
                        settings.read_timeout,
                        &server.pool,
                        client_upgrade,
                        fwd.request_id,
                        in_flight,
                    ),
                    server: &server.label,
                });
            }
            Err(Failure { error, unsent }) => {
                if is_server_failure(&error) {
                    server.state.record_failure(settings.passive.as_ref());
                }
                // A reset before the response head: an idempotent request with its body in
                // memory is sent again from its copy.
                let reset = matches!(error, GatewayError::UpstreamFailed { .. });
                let unsent = unsent.or_else(|| {
                    let copy = replay.as_ref().filter(|_| reset)?;
                    let body = crate::error::full_body(copy.bytes.clone());
                    Some(Unsent::Request(build_request(
                        copy.method.clone(),
                        copy.uri.clone(),
                        copy.headers.clone(),
                        body,
                    )))
                });
                // Out of local resources: another server would fail the same way.
                let local = matches!(error, GatewayError::LocalResources(_));
                match unsent {
                    Some(unsent)
                        if !local && tried.len() + 1 < attempts && upstream.try_retry() =>
                    {
                        tracing::warn!(request_id = %id_str(fwd.request_id), upstream = upstream.name(), error = %error, "retrying on another server");
                        request = unsent;
                        tried.push(index);
                        last_error = Some(error);
                    }
                    _ => return Err(error),
                }
            }
        }
    }
}

/// A buffered idempotent request kept to be sent again after a reset. Boxed: most requests
/// have none, and inline it would sit in (and be moved with) every request's future.
struct Replay {
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
    bytes: bytes::Bytes,
    _held: body::Held,
}

fn build_request(
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
    body: GatewayBody,
) -> Request<GatewayBody> {
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    request
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(method)
}

/// A server for the next attempt (`now`: a `now_ms()` just read, if any); waits briefly
/// while every usable server is at its cap.
async fn choose(
    upstream: &Upstream,
    hash: Option<u64>,
    tried: &[usize],
    now: Option<u64>,
) -> Result<usize, NoServer> {
    let now = now.unwrap_or_else(server_state::now_ms);
    match upstream.choose_at(hash, tried, now) {
        // The wait (and its timer) is boxed: rare, and inline it would enlarge every
        // request's future.
        Err(NoServer::AtCapacity) => Box::pin(wait_for_capacity(upstream, hash, tried)).await,
        other => other,
    }
}

/// Looks for a server again every [`CAP_POLL`], for at most [`CAP_WAIT`].
async fn wait_for_capacity(
    upstream: &Upstream,
    hash: Option<u64>,
    tried: &[usize],
) -> Result<usize, NoServer> {
    let deadline = Instant::now() + CAP_WAIT;
    loop {
        match upstream.choose(hash, tried) {
            Err(NoServer::AtCapacity) if Instant::now() < deadline => {
                tokio::time::sleep(CAP_POLL).await;
            }
            other => return other,
        }
    }
}

/// Failures that count against a server for passive ejection (not the client's own).
fn is_server_failure(error: &GatewayError) -> bool {
    matches!(
        error,
        GatewayError::UpstreamConnect { .. }
            | GatewayError::UpstreamFailed { .. }
            | GatewayError::UpstreamTimeout { .. }
    )
}

/// Turns the upstream's response into the client's, and decides the connection's fate:
/// back to the pool when the body ends, into the WebSocket splice on `101`.
fn finish_response(
    head: Head,
    conn: Conn,
    read_timeout: Duration,
    pool: &Arc<ServerPool>,
    client_upgrade: Option<OnUpgrade>,
    request_id: &HeaderValue,
    in_flight: InFlight,
) -> Reply {
    let Head {
        response,
        framing,
        keep_alive,
        encoded,
        ..
    } = head;
    let (mut parts, ()) = response.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client)) = (switching, client_upgrade) {
        tunnel::splice(client, conn, read_timeout, request_id.clone(), in_flight);
        // The body of a 101 is empty; the connection now belongs to the splice.
        headers::prepare_response(&mut parts.headers, true);
        return Response::from_parts(parts, body::empty_body()).into();
    }
    if encoded.is_none() {
        headers::prepare_response(&mut parts.headers, false);
    }
    let body = if framing == Framing::Empty {
        // No body (HEAD, 204, 304, `Content-Length: 0`): the connection is free already.
        h1::release(pool, conn, keep_alive);
        body::empty_body()
    } else {
        let pool = Arc::clone(pool);
        ResponseBody::new(conn, framing, keep_alive, pool, in_flight)
            .read_timeout(read_timeout)
            .boxed_unsync()
    };
    Reply {
        response: Response::from_parts(parts, body),
        // Filtered while parsing (the map is then empty).
        fields: encoded,
    }
}
