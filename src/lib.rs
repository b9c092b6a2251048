//! gateway: a TLS-terminating reverse proxy and API gateway for Python web apps.
//!
//! The modules, in the order a request travels through them:
//!
//! 1. [`config`]   — `gateway.yaml` is parsed (`raw`), validated into typed [`config::Settings`].
//! 2. [`listener`] — TCP accept loop with connection limits, TLS (SNI, ALPN), the gateway's own
//!    HTTP/1.1 server ([`listener::http1`]), hyper for HTTP/2.
//! 3. [`handler`]  — the per-request pipeline: framing checks, path normalisation, routing, limits.
//! 4. [`path`] and [`router`] — normalise the path once, then host + path + method → route.
//!    [`policy`] — per-route rate limits, checked after routing and JWT, before upstream work.
//! 5. [`proxy`]    — forward to an upstream: header rules, body buffering, retries, pooled client.
//! 6. [`static_files`] — `static:` routes: safe path → file, negotiation, ranges, file cache;
//!    [`sendfile`] — their cached bodies leave plain-TCP HTTP/1.1 connections by sendfile(2).
//! 7. [`error`]    — the one place a failure becomes an HTTP status; [`stall`] — the timer
//!    behind the timeouts for bodies that stop moving.
//! 8. [`observability`] — tracing subscriber and the access log.
//! 9. [`server`]   — wires it all together: start, reload, graceful drain.
//! 10. [`metrics`], [`admin`] and [`reload`] — Prometheus series, the admin listener
//!     (`/metrics`, `/healthz`, `/ready`, `/upstreams`, `POST /reload`), the shared reload path.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod error;
pub mod handler;
pub mod header_maps;
pub mod http1_body;
pub mod listener;
pub mod metrics;
pub mod observability;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod sendfile;
pub mod server;
pub mod stall;
pub mod static_files;
pub mod workers;
