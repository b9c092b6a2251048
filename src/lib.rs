//! gateway: a TLS-terminating reverse proxy and API gateway for Python web apps.
//!
//! The modules, in the order a request travels through them:
//!
//! 1. [`config`]   — `gateway.yaml` is parsed (`raw`), validated into typed [`config::Settings`].
//! 2. [`listener`] — TCP accept loop with connection limits, TLS (SNI, ALPN), hyper h1/h2 serving.
//! 3. [`handler`]  — the per-request pipeline: framing checks, path normalisation, routing, limits.
//! 4. [`path`] and [`router`] — normalise the path once, then host + path + method → route.
//! 5. [`proxy`]    — forward to an upstream: header rules, body buffering, retries, pooled client.
//! 6. [`static_files`] — `static:` routes: safe path → file, negotiation, ranges, file cache.
//! 7. [`error`]    — the one place a failure becomes an HTTP status.
//! 8. [`observability`] — tracing subscriber and the access log.
//! 9. [`server`]   — wires it all together: start, reload, graceful drain.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod error;
pub mod handler;
pub mod listener;
pub mod observability;
pub mod path;
pub mod proxy;
pub mod router;
pub mod server;
pub mod static_files;
