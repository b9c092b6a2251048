//! Serde mirror of gateway.yaml, key for key. Every struct denies unknown fields so a typo is
//! an error, not a silently ignored setting. Absent keys are `None` here; their defaults live
//! in [`defaults`] and are applied by `validate`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::units::{ByteSize, DurationValue};

/// Every default of gateway.yaml, in one place.
pub mod defaults {
    use std::time::Duration;

    pub const WORKER_THREADS: usize = 0;
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const MAX_HEADER_BYTES: u64 = 16 * 1024;
    pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
    pub const MAX_BUFFER_FILE_BYTES: u64 = 1024 * 1024 * 1024;
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

    pub const TLS_MIN_VERSION: &str = "1.2";
    pub const ALPN: [&str; 2] = ["h2", "http/1.1"];

    pub const BALANCE: &str = "round_robin";
    pub const SERVER_WEIGHT: u32 = 1;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
    /// nginx's `proxy_read_timeout`.
    pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
    pub const RETRIES: u32 = 1;
    pub const REQUEST_BUFFERING: bool = true;
    pub const POOL_MAX_IDLE_PER_SERVER: usize = 64;
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
    pub const UPSTREAM_MAX_CONNECTIONS: usize = 0;

    pub const HEALTH_PATH: &str = "/healthz";
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    pub const HEALTH_UNHEALTHY_AFTER: u32 = 2;
    pub const HEALTH_HEALTHY_AFTER: u32 = 2;

    pub const PASSIVE_CONSECUTIVE_FAILURES: u32 = 3;
    pub const PASSIVE_EJECT_FOR: Duration = Duration::from_secs(10);
    pub const PASSIVE_FAILURE_PERCENTAGE: u32 = 50;

    pub const JWKS_REFRESH: Duration = Duration::from_secs(300);
    pub const JWT_LEEWAY: Duration = Duration::from_secs(30);
    pub const JWT_REQUIRED_CLAIMS: [&str; 1] = ["exp"];
    pub const JWT_TOKEN_SOURCES: [&str; 1] = ["header:Authorization"];
    pub const JWT_FORWARD_TOKEN: bool = true;
    pub const JWT_MAX_TOKEN_BYTES: u64 = 8 * 1024;

    pub const STATIC_INDEX: [&str; 1] = ["index.html"];
    pub const STATIC_MAX_AGE: Duration = Duration::from_secs(60);
    pub const STATIC_CACHE_MAX_FILE_BYTES: u64 = 256 * 1024;
    pub const STATIC_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;

    pub const RATE_LIMIT_KEY: &str = "client_ip";

    pub const LOG_LEVEL: &str = "info";
    pub const LOG_FORMAT: &str = "text";
    pub const ACCESS_LOG: bool = true;
}

/// The whole file. Sections are deserialised one by one (see `parse`), so a mistake in one
/// route does not hide mistakes elsewhere; an entry that failed to deserialise is `None`
/// but keeps its index / name so references and default names stay right.
#[derive(Debug, Default)]
pub struct RawConfig {
    pub server: Option<RawServer>,
    pub listeners: Vec<Option<RawListener>>,
    pub upstreams: Vec<(String, Option<RawUpstream>)>,
    pub jwt_policies: Vec<(String, Option<RawJwtPolicy>)>,
    pub routes: Vec<Option<RawRoute>>,
    pub admin: Option<RawAdmin>,
    pub logging: Option<RawLogging>,
    /// Some section failed to deserialise: cross-checks that depend on it are skipped.
    pub partial: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub worker_threads: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub header_read_timeout: Option<DurationValue>,
    pub idle_timeout: Option<DurationValue>,
    pub max_header_bytes: Option<ByteSize>,
    pub max_body_bytes: Option<ByteSize>,
    pub max_buffer_file_bytes: Option<ByteSize>,
    pub shutdown_grace: Option<DurationValue>,
    pub trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Option<String>,
    pub bind: String,
    pub tls: Option<RawTls>,
    pub redirect_https: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    pub min_version: Option<ScalarString>,
    pub alpn: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
    /// Dev convenience: generate a self-signed localhost pair when both files are missing.
    #[serde(default)]
    pub self_signed_if_missing: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(default)]
    pub servers: Vec<RawServerEntry>,
    pub balance: Option<String>,
    pub hash_key: Option<String>,
    pub connect_timeout: Option<DurationValue>,
    pub response_timeout: Option<DurationValue>,
    pub read_timeout: Option<DurationValue>,
    pub retries: Option<u32>,
    pub request_buffering: Option<bool>,
    pub pool: Option<RawPool>,
    pub health_check: Option<RawHealthCheck>,
    pub passive: Option<RawPassive>,
    pub max_connections: Option<usize>,
}

/// `"host:port"` or `{ address: "host:port", weight: 2 }`.
#[derive(Debug, PartialEq, Eq)]
pub struct RawServerEntry {
    pub address: String,
    pub weight: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerEntryMap {
    address: String,
    weight: Option<u32>,
}

struct ServerEntryVisitor;

impl<'de> Visitor<'de> for ServerEntryVisitor {
    type Value = RawServerEntry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"host:port\" or { address: \"host:port\", weight: N }")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawServerEntry, E> {
        Ok(RawServerEntry {
            address: v.to_string(),
            weight: None,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawServerEntry, A::Error> {
        let m = RawServerEntryMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(RawServerEntry {
            address: m.address,
            weight: m.weight,
        })
    }
}

impl<'de> Deserialize<'de> for RawServerEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ServerEntryVisitor)
    }
}

/// A scalar read as text, so `min_version: 1.3` works as well as `"1.3"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalarString(pub String);

struct ScalarVisitor;

impl Visitor<'_> for ScalarVisitor {
    type Value = ScalarString;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarString, E> {
        Ok(ScalarString(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarString, E> {
        Ok(ScalarString(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarString, E> {
        Ok(ScalarString(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarString, E> {
        Ok(ScalarString(v.to_string()))
    }
}

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub max_idle_per_server: Option<usize>,
    pub idle_timeout: Option<DurationValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<DurationValue>,
    pub timeout: Option<DurationValue>,
    pub unhealthy_after: Option<u32>,
    pub healthy_after: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub consecutive_failures: Option<u32>,
    pub eject_for: Option<DurationValue>,
    pub failure_percentage: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtPolicy {
    #[serde(default)]
    pub algorithms: Vec<String>,
    pub key: Option<RawJwtKey>,
    pub jwks_refresh: Option<DurationValue>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Option<DurationValue>,
    pub required_claims: Option<Vec<String>>,
    pub claims: Option<BTreeMap<String, serde_yaml::Value>>,
    pub token_sources: Option<Vec<String>>,
    pub forward_claims: Option<BTreeMap<String, String>>,
    pub forward_token: Option<bool>,
    pub max_token_bytes: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtKey {
    pub secret_env: Option<String>,
    pub secret: Option<String>,
    pub secret_file: Option<String>,
    pub public_key_file: Option<String>,
    pub jwks_file: Option<String>,
    pub jwks_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    #[serde(rename = "static")]
    pub static_files: Option<RawStatic>,
    pub upstream: Option<String>,
    pub jwt: Option<String>,
    pub max_body_bytes: Option<ByteSize>,
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatic {
    pub root: String,
    pub index: Option<Vec<String>>,
    pub precompressed: Option<Vec<String>>,
    pub immutable_hashed: Option<bool>,
    pub max_age: Option<DurationValue>,
    pub compress: Option<bool>,
    pub fallback: Option<String>,
    pub cache_max_file_bytes: Option<ByteSize>,
    pub cache_max_bytes: Option<ByteSize>,
    pub sendfile: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub rate: String,
    pub burst: Option<u32>,
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub level: Option<String>,
    pub format: Option<String>,
    pub access_log: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_entry_string_or_map() {
        let v: Vec<RawServerEntry> =
            serde_yaml::from_str("- \"a:1\"\n- { address: \"b:2\", weight: 3 }\n").unwrap();
        assert_eq!(v[0].address, "a:1");
        assert_eq!(v[0].weight, None);
        assert_eq!(v[1].weight, Some(3));
        let err = serde_yaml::from_str::<RawServerEntry>("{ address: x, wieght: 2 }").unwrap_err();
        assert!(err.to_string().contains("wieght"), "{err}");
    }

    #[test]
    fn scalar_string_accepts_numbers() {
        let v: ScalarString = serde_yaml::from_str("1.3").unwrap();
        assert_eq!(v.0, "1.3");
        let v: ScalarString = serde_yaml::from_str("\"1.2\"").unwrap();
        assert_eq!(v.0, "1.2");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_yaml::from_str::<RawServer>("idle_timout: 5s").unwrap_err();
        assert!(err.to_string().contains("idle_timout"), "{err}");
    }
}
