//! The admin endpoints' responses.

use http::header::{HeaderValue, ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::error::{full_body, GatewayBody};
use crate::handler::State;
use crate::metrics::Metrics;
use crate::reload::Reloader;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Prometheus asks for OpenMetrics in its `Accept`; everything else (curl, older scrapers)
/// gets the classic text format.
pub fn metrics(metrics: &Metrics, headers: &HeaderMap) -> Response<GatewayBody> {
    let openmetrics = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = match openmetrics {
        true => (metrics.encode(true), OPENMETRICS_TEXT),
        false => (metrics.encode(false), PROMETHEUS_TEXT),
    };
    let mut response = Response::new(full_body(body));
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub fn healthz() -> Response<GatewayBody> {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// Ready means: configuration loaded and listeners bound (both true before the admin
/// listener starts), and not draining.
pub fn ready(draining: &CancellationToken) -> Response<GatewayBody> {
    match draining.is_cancelled() {
        false => json_response(StatusCode::OK, &json!({"status": "ready"})),
        true => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "draining"}),
        ),
    }
}

/// `{"upstreams": {"app": {"servers": [{"address": ..., "healthy": ..., ...}]}}}`
pub fn upstreams(state: &State) -> Response<GatewayBody> {
    let mut upstreams = Map::new();
    for ((settings, metrics), upstream) in state
        .settings
        .upstreams
        .iter()
        .zip(&state.metrics.upstreams)
        .zip(&state.upstreams)
    {
        let servers: Vec<Value> = settings
            .servers
            .iter()
            .zip(&metrics.servers)
            .zip(&upstream.servers)
            .map(|((server, m), live)| {
                json!({
                    "address": server.address,
                    "weight": server.weight,
                    "healthy": m.healthy(),
                    "ejected": m.ejected(),
                    "ejections": live.state.ejections_total(),
                    "in_flight": m.in_flight.get().max(0),
                    "requests": m.requests.get(),
                    "failures": m.failures.get(),
                })
            })
            .collect();
        let balance = match settings.balance {
            crate::config::Balance::RoundRobin => "round_robin",
            crate::config::Balance::LeastConn => "least_conn",
            crate::config::Balance::P2c => "p2c",
            crate::config::Balance::ConsistentHash => "consistent_hash",
        };
        upstreams.insert(
            settings.name.clone(),
            json!({ "balance": balance, "servers": servers }),
        );
    }
    json_response(StatusCode::OK, &json!({ "upstreams": upstreams }))
}

pub async fn reload(reloader: &Reloader) -> Response<GatewayBody> {
    match reloader.reload_file().await {
        Ok(()) => json_response(StatusCode::OK, &json!({"result": "success"})),
        Err(errors) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"result": "failure", "errors": errors}),
        ),
    }
}

pub fn not_found() -> Response<GatewayBody> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": "not_found", "status": 404}),
    )
}

pub fn forbidden() -> Response<GatewayBody> {
    json_response(
        StatusCode::FORBIDDEN,
        &json!({"error": "forbidden", "status": 403}),
    )
}

pub fn method_not_allowed(allow: &'static str) -> Response<GatewayBody> {
    let mut response = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": "method_not_allowed", "status": 405}),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<GatewayBody> {
    let mut response = Response::new(full_body(value.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
