//! Per-route policies applied after routing and JWT verification, before any body is read or
//! any upstream work is done: rate limits ([`rate_limit`]) and the request keys they count
//! by ([`client_key`]: client address behind trusted proxies, header, cookie or claim).

pub mod client_key;
pub mod rate_limit;

pub use client_key::{client_ip, subscriber, KeyInput};
pub use rate_limit::{RateLimited, RouteLimiter, MAX_KEYS_PER_ROUTE};
