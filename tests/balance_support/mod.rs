//! Helpers of the load-balancing tests: the gateway config of one upstream `app` over given
//! servers (one plain listener and an admin listener), upstreams that answer with their
//! name, the admin listener's `/metrics` and `/upstreams` views, and a GET that reports a
//! failed request as status 0.
#![allow(dead_code)]

use std::net::SocketAddr;

use http::{Response, StatusCode};
use serde_json::Value;

use crate::common::{full, TestGateway, TestUpstream};

/// One plain listener, an admin listener, upstream `app` over `servers` with `extra` keys.
pub fn yaml(servers: &[String], extra: &str) -> String {
    let servers = servers.join(", ");
    format!(
        r#"
server:
  shutdown_grace: 1s
listeners:
  - name: http
    bind: "127.0.0.1:0"
upstreams:
  app:
    servers: [{servers}]
    connect_timeout: 1s
    response_timeout: 5s
{extra}
routes:
  - match: {{ path_prefix: / }}
    upstream: app
admin:
  bind: "127.0.0.1:0"
logging:
  access_log: false
"#
    )
}

pub fn quoted(addr: SocketAddr) -> String {
    format!("\"{addr}\"")
}

/// Answers `status` with its `name` as the body.
pub async fn named(name: &'static str, status: u16) -> TestUpstream {
    TestUpstream::start(move |_| async move {
        let mut r = Response::new(full(name));
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        r
    })
    .await
}

/// The admin listener's `/metrics` text.
pub async fn admin_metrics(gw: &TestGateway) -> String {
    let admin = gw.gateway.admin_addr().unwrap();
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn admin_upstreams(gw: &TestGateway) -> Vec<Value> {
    let admin = gw.gateway.admin_addr().unwrap();
    let url = format!("http://{admin}/upstreams");
    let json: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    json["upstreams"]["app"]["servers"]
        .as_array()
        .cloned()
        .unwrap()
}

pub async fn get(client: &reqwest::Client, gw: &TestGateway, path: &str) -> (u16, String) {
    match client.get(gw.url("http", path)).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}
