//! Route validation: match (path prefix, host, methods), exactly one handler, references to
//! upstreams and JWT policies, unique names, rate limits (a `claim:` key needs `jwt:`).

use std::collections::HashMap;
use std::path::Path;

use http::Method;

use super::error::Errors;
use super::features::RateLimitSettings;
use super::raw::{RawMatch, RawRoute};
use super::{features, HostPattern, KeySource, RouteHandler, RouteMatch, RouteSettings};

/// What routes may refer to.
pub(crate) struct RouteContext<'a> {
    /// Every declared upstream, valid or not, in YAML order (= index in `Settings::upstreams`).
    pub upstream_names: Vec<&'a str>,
    /// Every declared JWT policy.
    pub policy_names: Vec<String>,
    pub default_max_body: u64,
    pub base_dir: &'a Path,
}

pub(crate) fn validate(
    raw: &[Option<RawRoute>],
    ctx: &RouteContext<'_>,
    errs: &mut Errors<'_>,
) -> Vec<RouteSettings> {
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let Some(r) = r else { continue };
        let path = format!("routes[{i}]");
        let name = r.name.clone().unwrap_or_else(|| path.clone());
        if name.is_empty() {
            errs.add(format!("{path}.name"), "must not be empty");
        } else if let Some(first) = names.insert(name.clone(), i) {
            errs.add(
                format!("{path}.name"),
                format!("duplicate route name {name:?} (also routes[{first}])"),
            );
        }
        let matcher = matcher(r.matcher.as_ref(), &format!("{path}.match"), errs);
        let handler = handler(r, &path, ctx, errs);
        let jwt = jwt_policy(r.jwt.as_deref(), &format!("{path}.jwt"), ctx, errs);
        let rate_limit = rate_limit(r, &path, errs);
        if let (Some(matcher), Some(handler), Ok(jwt), Ok(rate_limit)) =
            (matcher, handler, jwt, rate_limit)
        {
            out.push(RouteSettings {
                name,
                matcher,
                handler,
                jwt,
                max_body_bytes: r.max_body_bytes.map_or(ctx.default_max_body, |s| s.0),
                rate_limit,
            });
        }
    }
    out
}

fn matcher(raw: Option<&RawMatch>, path: &str, errs: &mut Errors<'_>) -> Option<RouteMatch> {
    let before = errs.count();
    let default = RawMatch::default();
    let raw = raw.unwrap_or(&default);
    let path_prefix = match raw.path_prefix.as_deref() {
        None => {
            errs.add(
                format!("{path}.path_prefix"),
                "match.path_prefix is required (use / to match everything)",
            );
            String::new()
        }
        Some(p) => {
            if let Err(msg) = check_prefix(p) {
                errs.add(format!("{path}.path_prefix"), msg);
            }
            p.to_string()
        }
    };
    let host = raw.host.as_deref().and_then(|h| match host_pattern(h) {
        Ok(p) => Some(p),
        Err(msg) => {
            errs.add(format!("{path}.host"), msg);
            None
        }
    });
    let methods = raw.methods.as_ref().map(|list| {
        if list.is_empty() {
            errs.add(
                format!("{path}.methods"),
                "list at least one method, or leave methods out",
            );
        }
        let mut out: Vec<Method> = Vec::new();
        for (k, m) in list.iter().enumerate() {
            match Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()) {
                Ok(Method::CONNECT) => errs.add(
                    format!("{path}.methods[{k}]"),
                    "CONNECT cannot be routed: the gateway does not tunnel",
                ),
                Ok(method) if !out.contains(&method) => out.push(method),
                Ok(_) => {}
                Err(_) => errs.add(
                    format!("{path}.methods[{k}]"),
                    format!("{m:?} is not a valid HTTP method"),
                ),
            }
        }
        out
    });
    (errs.count() == before).then_some(RouteMatch {
        host,
        path_prefix,
        methods,
    })
}

/// A prefix must already be in normal form: the router matches normalised paths.
fn check_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with /"));
    }
    if p.contains(['?', '#', '%', '\\']) || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{p:?} must be a plain path (no query, fragment, %-escapes, backslashes or spaces)"
        ));
    }
    if p.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{p:?} must not contain . or .. segments"));
    }
    Ok(())
}

/// `jwt: NAME` → the policy's index (`Ok(None)` without `jwt:`); `Err` after recording an
/// unknown name.
fn jwt_policy(
    name: Option<&str>,
    path: &str,
    ctx: &RouteContext<'_>,
    errs: &mut Errors<'_>,
) -> Result<Option<usize>, ()> {
    let Some(name) = name else {
        return Ok(None);
    };
    if let Some(index) = ctx.policy_names.iter().position(|n| n == name) {
        return Ok(Some(index));
    }
    let known = if ctx.policy_names.is_empty() {
        "no jwt_policies are defined".to_string()
    } else {
        format!("known: {}", ctx.policy_names.join(", "))
    };
    errs.add(path, format!("unknown jwt policy {name:?} ({known})"));
    Err(())
}

/// `rate_limit:` (`Ok(None)` without one). A `claim:NAME` key counts by the verified token,
/// so the route must have `jwt:`; without it every request would fall back to its address.
fn rate_limit(
    r: &RawRoute,
    path: &str,
    errs: &mut Errors<'_>,
) -> Result<Option<RateLimitSettings>, ()> {
    let Some(raw) = &r.rate_limit else {
        return Ok(None);
    };
    let path = format!("{path}.rate_limit");
    let settings = features::rate_limit(raw, &path, errs).ok_or(())?;
    if let KeySource::Claim(name) = &settings.key {
        if r.jwt.is_none() {
            errs.add(
                format!("{path}.key"),
                format!(
                    "key \"claim:{name}\" needs a verified token: give the route `jwt: POLICY`"
                ),
            );
            return Err(());
        }
    }
    Ok(Some(settings))
}

/// `example.com` → exact; `*.example.com` → any subdomain. Lower-cased; no port.
pub(crate) fn host_pattern(text: &str) -> Result<HostPattern, String> {
    let h = text.trim().to_ascii_lowercase();
    if h.starts_with('[') && h.ends_with(']') {
        return h[1..h.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .map(|_| HostPattern::Exact(h.clone()))
            .map_err(|_| format!("invalid IPv6 host {text:?}"));
    }
    if h.contains(':') {
        return Err(format!("{text:?}: write the host without a port"));
    }
    let (wildcard, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h.as_str()),
    };
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || !name.split('.').all(valid_label) {
        return Err(format!(
            "invalid host {text:?}: expected a name like example.com or *.example.com"
        ));
    }
    Ok(if wildcard {
        HostPattern::Wildcard(format!(".{name}"))
    } else {
        HostPattern::Exact(name.to_string())
    })
}

fn handler(
    r: &RawRoute,
    path: &str,
    ctx: &RouteContext<'_>,
    errs: &mut Errors<'_>,
) -> Option<RouteHandler> {
    let before = errs.count();
    let upstream = r.upstream.as_deref().and_then(|name| {
        let found = ctx.upstream_names.iter().position(|n| *n == name);
        if found.is_none() {
            let known = if ctx.upstream_names.is_empty() {
                "no upstreams are defined".to_string()
            } else {
                format!("known: {}", ctx.upstream_names.join(", "))
            };
            errs.add(
                format!("{path}.upstream"),
                format!("unknown upstream {name:?} ({known})"),
            );
        }
        found
    });
    match (&r.static_files, &r.upstream) {
        (None, None) => errs.add(
            path,
            "route has no handler: give it `upstream: NAME` or a `static:` block",
        ),
        (Some(s), Some(_)) if s.fallback.as_deref() != Some("upstream") => errs.add(
            path,
            "route has both `upstream` and `static`; set static.fallback: upstream to use the upstream for missing files",
        ),
        (Some(s), None) if s.fallback.as_deref() == Some("upstream") => errs.add(
            format!("{path}.static.fallback"),
            "fallback: upstream needs the route to name an `upstream`",
        ),
        _ => {}
    }
    let static_files = r
        .static_files
        .as_ref()
        .and_then(|s| features::static_files(s, &format!("{path}.static"), ctx.base_dir, errs));
    if errs.count() != before {
        return None;
    }
    match static_files {
        Some(files) => Some(RouteHandler::Static { files, upstream }),
        None => upstream.map(RouteHandler::Upstream),
    }
}

#[cfg(test)]
#[path = "tests_routes.rs"]
mod tests;
