//! The per-request pipeline. Its order, each step with its reason:
//!
//! 1. framing checks    — ambiguous framing is a smuggling attempt: 400 and close, before anything.
//! 2. HTTPS redirect    — a `redirect_https` listener answers every request with a 308.
//! 3. path normalising  — once, so routing and the upstream see the same path (no `/%61pi` bypass).
//! 4. routing           — host + path + method → route, or 404/405/421.
//! 5. JWT               — a route with `jwt:` needs a valid token, else 401 before any upstream
//!    work (the body is not read); on success the claim headers are set.
//! 6. rate limit        — a route with `rate_limit:` counts the request under its key, else 429
//!    with `Retry-After`: after JWT because a `claim:` key needs the verified claims (and a
//!    forged token must not spend a real user's budget), before the body is read or an upstream
//!    or the disk is touched, so refused requests cost next to nothing.
//! 7. handler           — static files (from memory or disk; a miss is 404/405, or goes on to the
//!    route's upstream with `fallback: upstream`), else proxy (body limits and buffering happen
//!    there, before the upstream).
//! 8. response          — `X-Request-Id` on every response, then the access log.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use crate::listener::RequestBody;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, LOCATION, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, Request, Response, StatusCode, Uri};
use tokio_util::sync::CancellationToken;

use crate::auth::{FirstFetch, JwtPolicy, Verified};
use crate::config::{RouteHandler, Settings};
use crate::error::{full_body, GatewayBody, GatewayError};
use crate::metrics::{Completion, MeteredBody, MethodClass, Metrics, StateMetrics};
use crate::observability::{self, AccessRecord, LoggedBody};
use crate::policy::{KeyInput, RouteLimiter};
use crate::proxy::headers::{self, Forwarding, X_REQUEST_ID};
use crate::proxy::Upstream;
use crate::router::{RouteDecision, Router};
use crate::static_files::StaticSite;

/// Everything a request needs from the current configuration; swapped whole on reload.
pub struct State {
    pub settings: Arc<Settings>,
    pub router: Router,
    pub upstreams: Vec<Upstream>,
    /// One per `Settings::jwt_policies`, same order (routes refer to them by index).
    pub jwt_policies: Vec<Arc<JwtPolicy>>,
    /// Every header any policy sets from claims (`forward_claims`): removed from every
    /// request on every route before the JWT step, so a client can never send its own
    /// `X-User-Id` to an app that trusts it (on an open route, or on a route whose policy
    /// forwards other claims).
    claim_headers: Vec<HeaderName>,
    /// One per `Settings::routes`, same order: `Some` for `static:` routes (each with its
    /// own file cache, fresh on every reload).
    pub static_sites: Vec<Option<StaticSite>>,
    /// One per `Settings::routes`, same order: `Some` for routes with `rate_limit:` (fresh
    /// buckets on every reload).
    pub rate_limits: Vec<Option<RouteLimiter>>,
    /// Metric handles for these routes, upstreams and policies (series outlive reloads).
    pub metrics: StateMetrics,
    /// Ends this state's background tasks (JWKS refreshers, upstream health checks); a child
    /// of the gateway's shutdown token, cancelled by [`State::retire`] or when the state is
    /// dropped.
    tasks: CancellationToken,
}

impl State {
    /// Builds the runtime state: upstream pools, the router, and every JWT policy (keys
    /// loaded, `jwks_url` fetched once; their refreshers start under a child of `shutdown`;
    /// an unreachable `jwks_url` is no error unless a reload introduces it, see
    /// [`FirstFetch`]).
    /// `previous` is the running state on a reload (`None` at start): what outlives a reload
    /// is taken from it. Errors name the failing `jwt_policies.NAME...`.
    pub async fn build(
        settings: Arc<Settings>,
        shutdown: &CancellationToken,
        metrics: &Metrics,
        previous: Option<&State>,
    ) -> Result<State, Vec<String>> {
        // An unreachable `jwks_url` starts without keys (503 on its routes, retried soon), or
        // on a reload keeps the running keys of the same URL (a new URL must answer).
        let first_fetch = match previous {
            None => FirstFetch::RetryLater,
            Some(running) => FirstFetch::KeepRunning(&running.jwt_policies),
        };
        let jwt_policies = crate::auth::build_all(&settings.jwt_policies, first_fetch).await?;
        let tasks = shutdown.child_token();
        for policy in &jwt_policies {
            policy.spawn_refresh(tasks.clone());
        }
        let state_metrics = StateMetrics::build(metrics, &settings);
        let upstreams: Vec<Upstream> = settings
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let running =
                    previous.and_then(|p| p.upstreams.iter().find(|r| r.name() == u.name));
                Upstream::new(u.clone(), state_metrics.upstreams.get(i), running)
            })
            .collect();
        for upstream in &upstreams {
            crate::proxy::health::spawn_checks(upstream, &tasks);
        }
        let mut claim_headers: Vec<HeaderName> = Vec::new();
        for name in jwt_policies.iter().flat_map(|p| p.forwarded_headers()) {
            if !claim_headers.contains(name) {
                claim_headers.push(name.clone());
            }
        }
        Ok(State {
            router: Router::new(&settings.routes),
            upstreams,
            jwt_policies,
            claim_headers,
            static_sites: settings
                .routes
                .iter()
                .map(|route| match &route.handler {
                    RouteHandler::Static { files, .. } => {
                        Some(StaticSite::new(files, &route.matcher.path_prefix))
                    }
                    RouteHandler::Upstream(_) => None,
                })
                .collect(),
            rate_limits: settings
                .routes
                .iter()
                .map(|route| route.rate_limit.as_ref().map(RouteLimiter::new))
                .collect(),
            metrics: state_metrics,
            tasks,
            settings,
        })
    }

    /// Stops this state's background tasks: called when a reload swaps in a new state
    /// (requests still running on this one finish normally).
    pub fn retire(&self) {
        self.tasks.cancel();
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.tasks.cancel();
    }
}

/// Request extension set by the HTTP/1.1 connection when the head framed its body in a way
/// it refuses to follow (both `Content-Length` and `Transfer-Encoding`, a coding other than
/// `chunked`, differing or malformed lengths): the request is answered 400 here, so that
/// it is logged and counted, and the connection closes after it without reading the body.
#[derive(Debug, Clone, Copy)]
pub struct RefusedFraming(pub &'static str);

/// Header fields already in HTTP/1.1 form (`name: value\r\n` lines), which the HTTP/1.1
/// connection writes after the response's own ([`Reply::fields`]). A static file's
/// whole-variant `200` carries its prepared fields this way, and a proxied response the
/// upstream's (filtered) field lines, instead of a header map built, copied and encoded
/// per response. Only set for HTTP/1 clients: HTTP/2 responses carry every field in the
/// map.
#[derive(Debug, Clone)]
pub struct EncodedFields {
    /// No `Transfer-Encoding`, and `Content-Length` only for a response sent without a body.
    pub fields: bytes::Bytes,
    /// The fields include `Date` (the connection adds one otherwise).
    pub dated: bool,
}

/// What is known about the client connection a request arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as `X-Forwarded-For` text, made once for all its requests.
    pub peer_header: HeaderValue,
    pub listener: Arc<str>,
    pub tls: bool,
    /// The TLS server name the client asked for, lower-case.
    pub sni: Option<String>,
    /// The negotiated TLS version for the access log (`1.2`, `1.3`); `None` on plain HTTP.
    pub tls_version: Option<&'static str>,
    /// `Some(port)` on a `redirect_https` listener.
    pub redirect_https: Option<u16>,
    /// Plain TCP: where static responses offer their bodies for sendfile.
    pub sendfile: Option<crate::sendfile::Slot>,
    /// The listener's connection-level metrics.
    pub metrics: Arc<crate::metrics::ListenerMetrics>,
}

/// A response, and for an HTTP/1 client possibly its fields already encoded (written after
/// the response's own header map, which is then usually empty).
pub struct Reply {
    pub response: Response<GatewayBody>,
    pub fields: Option<EncodedFields>,
}

impl From<Response<GatewayBody>> for Reply {
    fn from(response: Response<GatewayBody>) -> Reply {
        Reply {
            response,
            fields: None,
        }
    }
}

/// A request's answer and its id. The connection puts the id on the response head
/// (`X-Request-Id`, replacing any the response carries): HTTP/1.1 writes it while encoding
/// the head, so the response's header map never grows for it; HTTP/2 inserts it.
pub struct Handled {
    pub response: Response<GatewayBody>,
    pub request_id: HeaderValue,
    /// See [`Reply::fields`]: only ever set for HTTP/1 requests.
    pub fields: Option<EncodedFields>,
}

impl Handled {
    /// The response with `X-Request-Id` in its headers (for HTTP/2). Encoded fields are
    /// never made for HTTP/2 requests; if some were, they are decoded into the map rather
    /// than lost. The answer to a HEAD request goes without its body (hyper's HTTP/2 server
    /// would send it as DATA, a protocol error that strict clients answer by dropping the
    /// connection): its length stays in `Content-Length`.
    pub fn into_response(self, head_request: bool) -> Response<GatewayBody> {
        let mut response = self.response;
        if head_request && !http_body::Body::is_end_stream(response.body()) {
            let length = http_body::Body::size_hint(response.body()).exact();
            if let Some(length) = length {
                response
                    .headers_mut()
                    .entry(CONTENT_LENGTH)
                    .or_insert_with(|| HeaderValue::from(length));
            }
            *response.body_mut() = crate::proxy::body::empty_body();
        }
        let headers = response.headers_mut();
        if let Some(encoded) = &self.fields {
            for line in encoded.fields.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let Some(colon) = line.iter().position(|&b| b == b':') else {
                    continue;
                };
                let name = HeaderName::from_bytes(&line[..colon]);
                let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii());
                if let (Ok(name), Ok(value)) = (name, value) {
                    headers.append(name, value);
                }
            }
        }
        headers.insert(X_REQUEST_ID.clone(), self.request_id);
        response
    }
}

/// The connection's entry point: never fails; every error is a response.
/// `client_gone`, when the connection can tell, completes once the client has closed its
/// connection (HTTP/1.1; an HTTP/2 stream reset drops this future instead): the request is
/// then abandoned (its upstream exchange dropped, its server's in-flight slot freed) and
/// logged and counted as 499, as nginx does.
pub async fn handle(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    req: Request<RequestBody>,
    client_gone: Option<Pin<&mut (dyn Future<Output = ()> + Send + '_)>>,
) -> Result<Handled, Infallible> {
    let start = Instant::now();
    let method = MethodClass::of(req.method());
    let request_id = headers::request_id(req.headers());
    let access_log = state.settings.logging.access_log;
    // Boxed from the start: it waits across the whole request, and inline it would sit in
    // every request's future, access log on or off.
    let record = access_log.then(|| {
        Box::new(AccessRecord {
            start,
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            http: observability::http_version(req.version()),
            status: StatusCode::OK,
            route: String::new(),
            upstream: String::new(),
            request_id: observability::id_str(&request_id).to_owned(),
            client: conn.peer.ip(),
            listener: Arc::clone(&conn.listener),
            tls: conn.tls_version,
            claims: None,
        })
    });
    let mut labels = Labels::default();
    let routed = {
        // Pinned in this frame and scoped by reference: the routing future is ~4 KB, and
        // moved into the scope it was copied whole on every request. (The block ends its
        // borrow of `labels`; an abandoned one is dropped after the scope, not in it, and
        // nothing logs while it is dropped.)
        let routed = std::pin::pin!(route_and_forward(
            &state,
            &conn,
            req,
            &request_id,
            &mut labels
        ));
        // Events below the handler (proxy, JWT, static files) take the id from here.
        let scoped = observability::in_request(&request_id, routed);
        match client_gone {
            None => scoped.await,
            Some(gone) => tokio::select! {
                biased;
                routed = scoped => routed,
                () = gone => Err(GatewayError::ClientClosed),
            },
        }
    };
    let Reply { response, fields } = match routed {
        Ok(reply) => reply,
        Err(e) => {
            let id = observability::id_str(&request_id);
            tracing::debug!(request_id = %id, error = %e, side = ?e.side(), "request failed");
            if e.status().is_server_error() {
                tracing::warn!(request_id = %id, error = %e, "upstream error");
            }
            e.into_response().into()
        }
    };
    // Metrics and the access log are written when the body is done (or abandoned).
    let completion = Completion {
        route: state.metrics.route(labels.route_index).clone(),
        method,
        status: response.status(),
        start,
    };
    let (parts, body) = response.into_parts();
    let body = match record {
        Some(mut record) => {
            record.status = parts.status;
            record.route = labels
                .route_index
                .and_then(|i| state.settings.routes.get(i))
                .map(|r| r.name.clone())
                .unwrap_or_default();
            record.upstream = labels.server;
            record.claims = labels.claims;
            let logged = LoggedBody::new(body, record);
            http_body_util::BodyExt::boxed_unsync(MeteredBody::new(logged, completion))
        }
        None => http_body_util::BodyExt::boxed_unsync(MeteredBody::new(body, completion)),
    };
    Ok(Handled {
        response: Response::from_parts(parts, body),
        request_id,
        fields,
    })
}

/// Names for the access log, filled in as the request travels.
#[derive(Default)]
struct Labels {
    /// The server that answered; filled only when the access log is on.
    server: String,
    /// For the metrics; `None` until a route matched.
    route_index: Option<usize>,
    /// The verified token's claims, kept (shared) only when the access log is on.
    claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

async fn route_and_forward(
    state: &State,
    conn: &ConnInfo,
    mut req: Request<RequestBody>,
    request_id: &HeaderValue,
    labels: &mut Labels,
) -> Result<Reply, GatewayError> {
    check_framing(&req)?;
    if let Some(port) = conn.redirect_https {
        return redirect_to_https(&req, port).map(Reply::from);
    }
    for name in &state.claim_headers {
        req.headers_mut().remove(name);
    }

    let path = crate::path::normalize(req.uri().path()).map_err(GatewayError::BadPath)?;
    let host = request_host(&req)?;
    let host_str = host.as_ref().and_then(|h| h.to_str().ok());
    let (route_index, route) =
        match state
            .router
            .route(host_str, conn.tls, conn.sni.as_deref(), &path, req.method())
        {
            RouteDecision::Matched(index) => (index, &state.settings.routes[index]),
            RouteDecision::NotFound => return Err(GatewayError::NotFound),
            RouteDecision::MethodNotAllowed { allow } => {
                return Err(GatewayError::MethodNotAllowed(allow))
            }
            RouteDecision::Misdirected => return Err(GatewayError::Misdirected),
        };
    labels.route_index = Some(route_index);

    let path_and_query = forwarded_path_and_query(req.uri(), &path)?;
    let mut verified = None;
    if let Some(index) = route.jwt {
        let policy = state
            .jwt_policies
            .get(index)
            .ok_or_else(|| GatewayError::Internal(format!("route {} has no policy", route.name)))?;
        // Boxed: token checks (and a possible JWKS fetch) make a large future that
        // routes without `jwt:` should not carry.
        let authorized = Box::pin(authorize(policy, req.headers_mut())).await;
        match &authorized {
            Err(GatewayError::Unauthorized(rejection)) => {
                state.metrics.jwt_rejection(index, rejection.reason);
            }
            Err(GatewayError::JwksUnavailable(_)) => {
                state
                    .metrics
                    .jwt_rejection(index, crate::auth::reasons::JWKS_UNAVAILABLE);
            }
            _ => {}
        }
        let authorized = authorized?;
        if state.settings.logging.access_log {
            labels.claims = Some(Arc::clone(&authorized.claims));
        }
        verified = Some(authorized);
    }
    // Per request, from this request's configuration (not once per connection).
    let peer_trusted = state.settings.server.trusts(conn.peer.ip());
    if let Some(limiter) = state.rate_limits.get(route_index).and_then(Option::as_ref) {
        let input = KeyInput {
            peer: conn.peer.ip(),
            peer_trusted,
            trusted_proxies: &state.settings.server.trusted_proxies,
            headers: req.headers(),
            claims: verified.as_ref().map(|v| &*v.claims),
        };
        if let Err(limited) = limiter.check(&input) {
            state.metrics.rate_limited(route_index);
            return Err(GatewayError::RateLimited(limited.retry_after));
        }
    }
    let upstream_index = match &route.handler {
        RouteHandler::Upstream(index) => Some(*index),
        RouteHandler::Static { upstream, .. } => {
            let site = state
                .static_sites
                .get(route_index)
                .and_then(Option::as_ref)
                .ok_or_else(|| {
                    GatewayError::Internal(format!("route {} has no site", route.name))
                })?;
            let (parts, body) = req.into_parts();
            // The normalised path (`path` borrows from the request taken apart here).
            let sendfile = conn.sendfile.as_ref();
            match site.serve(&parts, path_and_query.path(), sendfile).await {
                Ok(reply) => {
                    // The request's map has room for the next request's fields.
                    crate::header_maps::give(parts.headers);
                    return Ok(reply);
                }
                Err(_) if site.fallback_upstream() && upstream.is_some() => {
                    req = Request::from_parts(parts, body);
                    *upstream
                }
                Err(miss) => return Err(miss.into()),
            }
        }
    };
    match upstream_index {
        None => Err(GatewayError::Internal(format!(
            "route {} has no upstream",
            route.name
        ))),
        Some(index) => {
            let upstream = &state.upstreams[index];
            let fwd = Forwarding {
                peer: &conn.peer_header,
                peer_trusted,
                https: conn.tls,
                host,
                request_id,
            };
            let hash = upstream.request_hash(&KeyInput {
                peer: conn.peer.ip(),
                peer_trusted,
                trusted_proxies: &state.settings.server.trusted_proxies,
                headers: req.headers(),
                claims: verified.as_ref().map(|v| &*v.claims),
            });
            let sent = Instant::now();
            let result = crate::proxy::forward(
                upstream,
                req,
                path_and_query,
                fwd,
                route.max_body_bytes,
                hash,
            )
            .await;
            if let Some(m) = state.metrics.upstreams.get(index) {
                m.finished(sent.elapsed(), &result);
            }
            let forwarded = result?;
            // Only the access log names the server: no copy per request without it.
            if state.settings.logging.access_log {
                labels.server.push_str(forwarded.server);
            }
            Ok(forwarded.reply)
        }
    }
}

/// Verifies the request's token; on success rewrites `headers` into what the upstream may
/// see (claim headers set, client copies removed, the token stripped if so configured) and
/// returns the verified claims (rate-limit keys may count by them).
async fn authorize(policy: &JwtPolicy, headers: &mut HeaderMap) -> Result<Verified, GatewayError> {
    let verified = policy.verify_async(headers).await.map_err(|rejection| {
        if rejection.is_unavailable() {
            GatewayError::JwksUnavailable(policy.name().to_string())
        } else {
            GatewayError::Unauthorized(rejection)
        }
    })?;
    policy.apply(&verified, headers);
    unlist_from_connection(headers, policy.forwarded_headers());
    Ok(verified)
}

/// Removes `names` from the request's `Connection` lists, so that the hop-by-hop removal in
/// the proxy cannot be told (`Connection: X-User-Id`) to drop a header the gateway just set.
fn unlist_from_connection<'a>(
    headers: &mut HeaderMap,
    names: impl Iterator<Item = &'a HeaderName>,
) {
    if !headers.contains_key(CONNECTION) {
        return;
    }
    let names: Vec<&HeaderName> = names.collect();
    let listed = |token: &str| {
        names
            .iter()
            .any(|n| n.as_str().eq_ignore_ascii_case(token.trim()))
    };
    let values: Vec<HeaderValue> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| {
            // A value that is not text names nothing the proxy could parse; keep it as it is.
            let Ok(text) = v.to_str() else {
                return Some(v.clone());
            };
            let kept: Vec<&str> = text.split(',').filter(|t| !listed(t)).collect();
            let joined = kept.join(",");
            (!joined.trim().is_empty())
                .then(|| HeaderValue::from_str(&joined).ok())
                .flatten()
        })
        .collect();
    headers.remove(CONNECTION);
    for v in values {
        headers.append(CONNECTION, v);
    }
}

/// RFC 9112 §6: a request must carry one unambiguous framing. The HTTP/1.1 connection
/// checked its head already and marks what it refused ([`RefusedFraming`]); the header
/// checks cover HTTP/2 (where the frames carry the length, and these headers must still not
/// contradict it).
fn check_framing(req: &Request<RequestBody>) -> Result<(), GatewayError> {
    if let Some(RefusedFraming(reason)) = req.extensions().get::<RefusedFraming>() {
        return Err(GatewayError::BadFraming(reason));
    }
    if req.version() != http::Version::HTTP_2 {
        return Ok(());
    }
    let headers = req.headers();
    let te_count = headers.get_all(TRANSFER_ENCODING).iter().count();
    if te_count > 0 {
        if headers.contains_key(CONTENT_LENGTH) {
            return Err(GatewayError::BadFraming(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        let only_chunked = te_count == 1
            && headers
                .get(TRANSFER_ENCODING)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        if !only_chunked {
            return Err(GatewayError::BadFraming(
                "Transfer-Encoding other than chunked",
            ));
        }
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if lengths.any(|other| other != first) || first.to_str().map_or(true, |s| s.contains(',')) {
            return Err(GatewayError::BadFraming("several Content-Length values"));
        }
    }
    Ok(())
}

/// The authority the client addressed: the URI's when it has one (absolute-form, HTTP/2
/// `:authority`; RFC 9112 §3.2.2 says it wins over `Host`), else the `Host` header.
/// The host the request names (an absolute-form target's authority, HTTP/2's `:authority`,
/// else `Host`), or 400 when it is not a valid host ([`crate::router::valid_host`]): it
/// goes upstream in `Host` and `X-Forwarded-Host`. `None` for an HTTP/1.0 request without
/// one; an HTTP/2 request without `:authority` or `Host` gets 400 as HTTP/1.1 without `Host`
/// does (refused by the connection), since the upstream request is HTTP/1.1.
fn request_host(req: &Request<RequestBody>) -> Result<Option<HeaderValue>, GatewayError> {
    let host = match req.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => req.headers().get(HOST).cloned(),
    };
    match host {
        Some(h) if !crate::router::valid_host(h.as_bytes()) => {
            Err(GatewayError::BadRequest("invalid Host"))
        }
        None if req.version() == http::Version::HTTP_2 => {
            Err(GatewayError::BadRequest("missing :authority"))
        }
        host => Ok(host),
    }
}

/// The target sent upstream: the normalised `path` and the client's query.
fn forwarded_path_and_query(uri: &Uri, path: &str) -> Result<PathAndQuery, GatewayError> {
    // Normalising changed nothing (the common case): the client's own target, shared
    // rather than copied and parsed again. (`http://h` has an empty target whose path
    // reads as `/`: rebuilt below.)
    if let Some(target) = uri.path_and_query() {
        if target.as_str().starts_with('/') && target.path() == path {
            return Ok(target.clone());
        }
    }
    let result = match uri.query() {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    };
    result.map_err(|_| GatewayError::BadRequest("unparseable request target"))
}

/// `308` to `https://HOST[:PORT]/same/path?query`.
fn redirect_to_https(
    req: &Request<RequestBody>,
    port: u16,
) -> Result<Response<GatewayBody>, GatewayError> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_owned())
        .or_else(|| {
            req.headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| strip_port(h).to_owned())
        })
        .ok_or(GatewayError::BadRequest("missing Host"))?;
    if !crate::router::valid_host(host.as_bytes()) {
        return Err(GatewayError::BadRequest("invalid Host"));
    }
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{port}{target}")
    };
    let location =
        HeaderValue::try_from(location).map_err(|_| GatewayError::BadRequest("invalid target"))?;
    let mut response = Response::new(full_body(""));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(LOCATION, location);
    Ok(response)
}

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_fields_reach_an_http2_response_as_a_map() {
        let handled = Handled {
            response: Response::new(crate::error::full_body("ok")),
            request_id: HeaderValue::from_static("id-1"),
            fields: Some(EncodedFields {
                fields: bytes::Bytes::from_static(b"Content-Type: text/css\r\nx-a: 1\r\nx-a:2\r\n"),
                dated: false,
            }),
        };
        let response = handled.into_response(false);
        let h = response.headers();
        assert_eq!(h["content-type"], "text/css");
        let xa: Vec<_> = h.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(h["x-request-id"], "id-1");
        assert_eq!(h.len(), 4);
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn connection_cannot_name_claim_headers() {
        let mut h = HeaderMap::new();
        h.append(
            CONNECTION,
            HeaderValue::from_static("X-User-Id, keep-alive"),
        );
        h.append(CONNECTION, HeaderValue::from_static(" x-user-id "));
        h.append(CONNECTION, HeaderValue::from_static("upgrade"));
        let user = HeaderName::from_static("x-user-id");
        unlist_from_connection(&mut h, [&user].into_iter());
        let left: Vec<&str> = h
            .get_all(CONNECTION)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, [" keep-alive", "upgrade"]);
    }

    #[test]
    fn path_and_query_keeps_query() {
        let uri: Uri = "/b/../a?x=1&y=%2F".parse().unwrap();
        let pq = forwarded_path_and_query(&uri, "/a").unwrap();
        assert_eq!(pq.as_str(), "/a?x=1&y=%2F");
        let uri: Uri = "/b/../a".parse().unwrap();
        let pq = forwarded_path_and_query(&uri, "/a").unwrap();
        assert_eq!(pq.as_str(), "/a");
        // Unchanged paths keep the client's target as it came.
        for target in [
            "/a?x=1&y=%2F",
            "/a",
            "/a?",
            "http://h/a?q",
            "http://h",
            "http://h?x",
        ] {
            let uri: Uri = target.parse().unwrap();
            let pq = forwarded_path_and_query(&uri, uri.path()).unwrap();
            let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            assert_eq!(pq.as_str(), format!("{}{query}", uri.path()), "{target}");
        }
    }
}
