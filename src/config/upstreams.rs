//! Upstream validation: servers (resolved now, so `gateway check` catches typos in host
//! names), balancing, hash keys, timeouts, pool, active and passive health checks. Also owns
//! the `header:NAME | cookie:NAME | client_ip | claim:NAME` key grammar.

use std::net::ToSocketAddrs;

use super::error::Errors;
use super::raw::{defaults, RawHealthCheck, RawPassive, RawPool, RawServerEntry, RawUpstream};
use super::validate::{at_least_one, positive};
use super::{
    Balance, HealthCheckSettings, KeySource, PassiveSettings, PoolSettings, UpstreamServer,
    UpstreamSettings,
};

/// One entry per raw upstream (same order); `None` where it had errors.
pub(crate) fn validate(
    raw: &[(String, Option<RawUpstream>)],
    errs: &mut Errors<'_>,
) -> Vec<Option<UpstreamSettings>> {
    raw.iter()
        .map(|(name, up)| {
            let up = up.as_ref()?;
            let before = errs.count();
            let settings = upstream(name, up, errs);
            (errs.count() == before).then_some(settings)
        })
        .collect()
}

fn upstream(name: &str, raw: &RawUpstream, errs: &mut Errors<'_>) -> UpstreamSettings {
    let path = format!("upstreams.{name}");
    if name.is_empty() {
        errs.add(&path, "upstream names must not be empty");
    }
    if raw.servers.is_empty() {
        errs.add(format!("{path}.servers"), "at least one server is required");
    }
    let mut servers: Vec<UpstreamServer> = Vec::new();
    for (k, entry) in raw.servers.iter().enumerate() {
        if let Some(s) = server(entry, &format!("{path}.servers[{k}]"), errs) {
            if servers.iter().any(|o| o.address == s.address) {
                errs.add(
                    format!("{path}.servers[{k}]"),
                    format!("duplicate server {:?}", s.address),
                );
            }
            servers.push(s);
        }
    }
    let balance = match raw.balance.as_deref().unwrap_or(defaults::BALANCE) {
        "round_robin" => Balance::RoundRobin,
        "least_conn" => Balance::LeastConn,
        "p2c" => Balance::P2c,
        "consistent_hash" => Balance::ConsistentHash,
        other => {
            errs.add(
                format!("{path}.balance"),
                format!("unknown balance {other:?} (use round_robin, least_conn, p2c or consistent_hash)"),
            );
            Balance::RoundRobin
        }
    };
    let hash_key = raw
        .hash_key
        .as_deref()
        .and_then(|k| match parse_key_source(k) {
            Ok(key) => Some(key),
            Err(msg) => {
                errs.add(format!("{path}.hash_key"), msg);
                None
            }
        });
    if balance == Balance::ConsistentHash && raw.hash_key.is_none() {
        errs.add(
            format!("{path}.balance"),
            "balance: consistent_hash requires hash_key (header:NAME, cookie:NAME, client_ip or claim:NAME)",
        );
    }
    UpstreamSettings {
        name: name.to_string(),
        servers,
        balance,
        hash_key,
        connect_timeout: positive(
            raw.connect_timeout,
            defaults::CONNECT_TIMEOUT,
            format!("{path}.connect_timeout"),
            errs,
        ),
        response_timeout: positive(
            raw.response_timeout,
            defaults::RESPONSE_TIMEOUT,
            format!("{path}.response_timeout"),
            errs,
        ),
        read_timeout: positive(
            raw.read_timeout,
            defaults::READ_TIMEOUT,
            format!("{path}.read_timeout"),
            errs,
        ),
        retries: raw.retries.unwrap_or(defaults::RETRIES),
        request_buffering: raw.request_buffering.unwrap_or(defaults::REQUEST_BUFFERING),
        pool: pool(raw.pool.as_ref(), &format!("{path}.pool"), errs),
        health_check: raw
            .health_check
            .as_ref()
            .map(|h| health_check(h, &format!("{path}.health_check"), errs)),
        passive: raw
            .passive
            .as_ref()
            .map(|p| passive(p, &format!("{path}.passive"), errs)),
        max_connections: raw
            .max_connections
            .unwrap_or(defaults::UPSTREAM_MAX_CONNECTIONS),
    }
}

fn server(entry: &RawServerEntry, path: &str, errs: &mut Errors<'_>) -> Option<UpstreamServer> {
    let address = entry.address.trim().to_string();
    let addr_path = if entry.weight.is_some() {
        format!("{path}.address")
    } else {
        path.to_string()
    };
    let weight = at_least_one(
        entry.weight,
        defaults::SERVER_WEIGHT,
        format!("{path}.weight"),
        errs,
    );
    if address.contains("://") {
        errs.add(
            addr_path,
            format!("{address:?}: write host:port without a scheme"),
        );
        return None;
    }
    let port_ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        errs.add(
            addr_path,
            format!("{address:?}: expected host:port such as \"127.0.0.1:8000\""),
        );
        return None;
    }
    let resolved = address.to_socket_addrs().map(|mut it| it.next());
    match resolved {
        Ok(Some(socket_addr)) => Some(UpstreamServer {
            address,
            socket_addr,
            weight,
        }),
        Ok(None) => {
            errs.add(addr_path, format!("{address:?} resolved to no addresses"));
            None
        }
        Err(e) => {
            errs.add(addr_path, format!("cannot resolve {address:?}: {e}"));
            None
        }
    }
}

fn pool(raw: Option<&RawPool>, path: &str, errs: &mut Errors<'_>) -> PoolSettings {
    PoolSettings {
        max_idle_per_server: raw
            .and_then(|p| p.max_idle_per_server)
            .unwrap_or(defaults::POOL_MAX_IDLE_PER_SERVER),
        idle_timeout: positive(
            raw.and_then(|p| p.idle_timeout),
            defaults::POOL_IDLE_TIMEOUT,
            format!("{path}.idle_timeout"),
            errs,
        ),
    }
}

fn health_check(raw: &RawHealthCheck, path: &str, errs: &mut Errors<'_>) -> HealthCheckSettings {
    let check_path = raw
        .path
        .clone()
        .unwrap_or_else(|| defaults::HEALTH_PATH.to_string());
    if !check_path.starts_with('/') || check_path.chars().any(|c| c.is_whitespace()) {
        errs.add(
            format!("{path}.path"),
            format!("{check_path:?} must start with / and contain no spaces"),
        );
    }
    HealthCheckSettings {
        path: check_path,
        interval: positive(
            raw.interval,
            defaults::HEALTH_INTERVAL,
            format!("{path}.interval"),
            errs,
        ),
        timeout: positive(
            raw.timeout,
            defaults::HEALTH_TIMEOUT,
            format!("{path}.timeout"),
            errs,
        ),
        unhealthy_after: at_least_one(
            raw.unhealthy_after,
            defaults::HEALTH_UNHEALTHY_AFTER,
            format!("{path}.unhealthy_after"),
            errs,
        ),
        healthy_after: at_least_one(
            raw.healthy_after,
            defaults::HEALTH_HEALTHY_AFTER,
            format!("{path}.healthy_after"),
            errs,
        ),
    }
}

fn passive(raw: &RawPassive, path: &str, errs: &mut Errors<'_>) -> PassiveSettings {
    PassiveSettings {
        consecutive_failures: at_least_one(
            raw.consecutive_failures,
            defaults::PASSIVE_CONSECUTIVE_FAILURES,
            format!("{path}.consecutive_failures"),
            errs,
        ),
        eject_for: positive(
            raw.eject_for,
            defaults::PASSIVE_EJECT_FOR,
            format!("{path}.eject_for"),
            errs,
        ),
        failure_percentage: match raw.failure_percentage {
            Some(p) if p > 100 => {
                errs.add(
                    format!("{path}.failure_percentage"),
                    format!("{p} is not a percentage (0 turns it off, at most 100)"),
                );
                defaults::PASSIVE_FAILURE_PERCENTAGE
            }
            Some(p) => p,
            None => defaults::PASSIVE_FAILURE_PERCENTAGE,
        },
    }
}

/// Parses `header:NAME`, `cookie:NAME`, `client_ip` or `claim:NAME`.
pub fn parse_key_source(text: &str) -> Result<KeySource, String> {
    let usage = "expected header:NAME, cookie:NAME, client_ip or claim:NAME";
    let t = text.trim();
    if t == "client_ip" {
        return Ok(KeySource::ClientIp);
    }
    let Some((kind, name)) = t.split_once(':') else {
        return Err(format!("invalid key {text:?}: {usage}"));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!(
            "invalid key {text:?}: missing NAME after \"{kind}:\""
        ));
    }
    match kind {
        "header" => http::HeaderName::from_bytes(name.as_bytes())
            .map(KeySource::Header)
            .map_err(|_| format!("invalid key {text:?}: {name:?} is not a valid header name")),
        "cookie"
            if name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b";=,\"".contains(&b)) =>
        {
            Ok(KeySource::Cookie(name.to_string()))
        }
        "cookie" => Err(format!(
            "invalid key {text:?}: {name:?} is not a valid cookie name"
        )),
        "claim" => Ok(KeySource::Claim(name.to_string())),
        _ => Err(format!("invalid key {text:?}: {usage}")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::{errors_of, ok, LISTENER, ROUTE};
    use super::*;

    fn with_upstream(body: &str) -> String {
        format!("{LISTENER}upstreams:\n  app:\n{body}{ROUTE}")
    }

    #[test]
    fn key_grammar() {
        assert_eq!(parse_key_source("client_ip"), Ok(KeySource::ClientIp));
        assert_eq!(
            parse_key_source("header:X-User-Id"),
            Ok(KeySource::Header(http::HeaderName::from_static(
                "x-user-id"
            )))
        );
        assert_eq!(
            parse_key_source("cookie:sid"),
            Ok(KeySource::Cookie("sid".into()))
        );
        assert_eq!(
            parse_key_source("claim:user_id"),
            Ok(KeySource::Claim("user_id".into()))
        );
        for bad in [
            "",
            "ip",
            "header:",
            "header:bad name",
            "cookie:a;b",
            "query:x",
        ] {
            assert!(parse_key_source(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_and_full_upstream() {
        let s = ok(&with_upstream("    servers: [\"127.0.0.1:8001\"]\n"));
        let u = &s.upstreams[0];
        assert_eq!(u.name, "app");
        assert_eq!(u.balance, Balance::RoundRobin);
        assert_eq!(u.connect_timeout, Duration::from_secs(2));
        assert_eq!(u.response_timeout, Duration::from_secs(30));
        assert_eq!(u.read_timeout, Duration::from_secs(60));
        assert_eq!(
            (u.retries, u.request_buffering, u.max_connections),
            (1, true, 0)
        );
        assert_eq!(u.pool.max_idle_per_server, 64);
        assert_eq!(u.pool.idle_timeout, Duration::from_secs(90));
        assert!(u.health_check.is_none() && u.passive.is_none() && u.hash_key.is_none());
        assert_eq!(u.servers[0].weight, 1);

        let s = ok(&with_upstream(
            "    servers: [\"localhost:8001\", { address: \"127.0.0.1:8002\", weight: 3 }]\n    balance: consistent_hash\n    hash_key: \"cookie:sid\"\n    health_check: {}\n    passive: { eject_for: 5s }\n    read_timeout: 5m\n",
        ));
        let u = &s.upstreams[0];
        assert_eq!(u.read_timeout, Duration::from_secs(300));
        assert_eq!(u.servers[0].address, "localhost:8001");
        assert_eq!(u.servers[0].socket_addr.port(), 8001);
        assert_eq!(u.servers[1].weight, 3);
        let h = u.health_check.as_ref().unwrap();
        assert_eq!(
            (h.path.as_str(), h.unhealthy_after, h.healthy_after),
            ("/healthz", 2, 2)
        );
        assert_eq!(
            (h.interval, h.timeout),
            (Duration::from_secs(2), Duration::from_secs(1))
        );
        let p = u.passive.as_ref().unwrap();
        assert_eq!(
            (p.consecutive_failures, p.eject_for, p.failure_percentage),
            (3, Duration::from_secs(5), 50)
        );
    }

    #[test]
    fn upstream_rules() {
        let errs = errors_of(&with_upstream(
            "    servers:
      - \"127.0.0.1\"
      - { address: \"127.0.0.1:1\", weight: 0 }
      - \"http://a:1\"
      - \"no-such-host.invalid:80\"
    balance: consistent_hash
    connect_timeout: 0s
    health_check: { path: healthz, unhealthy_after: 0 }
    passive: { consecutive_failures: 0, failure_percentage: 101 }
",
        ));
        let got: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            got,
            [
                "upstreams.app.servers[0]",
                "upstreams.app.servers[1].weight",
                "upstreams.app.servers[2]",
                "upstreams.app.servers[3]",
                "upstreams.app.balance",
                "upstreams.app.connect_timeout",
                "upstreams.app.health_check.path",
                "upstreams.app.health_check.unhealthy_after",
                "upstreams.app.passive.consecutive_failures",
                "upstreams.app.passive.failure_percentage",
            ],
            "{errs:#?}"
        );
        assert_eq!(errs[1].line, Some(7));
        let errs = errors_of(&with_upstream("    servers: []\n    balance: fastest\n"));
        let got: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(got, ["upstreams.app.servers", "upstreams.app.balance"]);
    }
}
