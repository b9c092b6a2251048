//! YAML text → [`RawConfig`]. The document is read into a `serde_yaml::Value` first and each
//! section (and each listener, upstream, policy and route) is deserialised on its own through
//! `serde_path_to_error`, so one file reports every type error and unknown key it has, each
//! with its full YAML path and line.

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::error::Errors;
use super::raw::RawConfig;

const TOP_LEVEL_KEYS: &str = "server, listeners, upstreams, jwt_policies, routes, admin, logging";

/// Parses the document; syntax errors, type errors and unknown keys go to `errs`. `None`
/// when the document itself could not be read (a YAML syntax error, a top level that is
/// not a mapping): nothing is known of its sections, so none is checked further (a
/// "listeners: at least one listener is required" after a syntax error would mislead).
pub(crate) fn parse(yaml: &str, errs: &mut Errors<'_>) -> Option<RawConfig> {
    let mut raw = RawConfig::default();
    let mut doc: Value = match serde_yaml::from_str(yaml) {
        Ok(v) => v,
        Err(e) => {
            // serde_yaml puts a duplicate key at the line of its mapping: name the key's own.
            let duplicate = e.to_string().contains("duplicate entry");
            if let Some((path, line, first)) = errs.lines().duplicate().filter(|_| duplicate) {
                let message = format!("duplicate key (first written at line {first})");
                errs.add_at(path.to_string(), Some(line), message);
                return None;
            }
            let line = e.location().map(|l| l.line());
            errs.add_at(String::new(), line, format!("invalid YAML: {e}"));
            return None;
        }
    };
    if let Err(e) = doc.apply_merge() {
        errs.add("", format!("invalid YAML merge key: {e}"));
        return None;
    }
    let map = match doc {
        Value::Null => return Some(raw),
        Value::Mapping(m) => m,
        _ => {
            errs.add(
                "",
                "the top level of the config must be a mapping of sections",
            );
            return None;
        }
    };
    let before = errs.count();
    for (key, value) in map {
        let Some(key) = key.as_str().map(str::to_string) else {
            errs.add("", format!("top-level keys must be strings, found {key:?}"));
            continue;
        };
        match key.as_str() {
            "server" => raw.server = section(value, &key, errs),
            "listeners" => raw.listeners = list(value, &key, errs),
            "upstreams" => raw.upstreams = named(value, &key, errs),
            "jwt_policies" => raw.jwt_policies = named(value, &key, errs),
            "routes" => raw.routes = list(value, &key, errs),
            "admin" => raw.admin = section(value, &key, errs),
            "logging" => raw.logging = section(value, &key, errs),
            _ => errs.add(
                key.clone(),
                format!("unknown key `{key}` (expected one of {TOP_LEVEL_KEYS})"),
            ),
        }
    }
    raw.partial = errs.count() > before;
    Some(raw)
}

/// Deserialises one value at `path`; `null` counts as absent.
fn section<T: DeserializeOwned>(value: Value, path: &str, errs: &mut Errors<'_>) -> Option<T> {
    if value.is_null() {
        return None;
    }
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let mut message = e.into_inner().to_string();
            // Internal type names mean nothing to an operator.
            if let Some(at) = message.find("expected struct Raw") {
                message.replace_range(at.., "expected a mapping of settings");
            }
            let mut full = if inner == "." || inner.is_empty() {
                path.to_string()
            } else if inner.starts_with('[') {
                format!("{path}{inner}")
            } else {
                format!("{path}.{inner}")
            };
            // serde reports an unknown field at its parent; name the field itself.
            if let Some(field) = unknown_field(&message) {
                if !full.ends_with(&format!(".{field}")) {
                    full = format!("{full}.{field}");
                }
            }
            errs.add(full, message);
            None
        }
    }
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// A sequence whose items are deserialised one by one (failed items stay as `None`).
fn list<T: DeserializeOwned>(value: Value, path: &str, errs: &mut Errors<'_>) -> Vec<Option<T>> {
    match value {
        Value::Null => Vec::new(),
        Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let item_path = format!("{path}[{i}]");
                if item.is_null() {
                    errs.add(item_path, "empty entry");
                    return None;
                }
                section(item, &item_path, errs)
            })
            .collect(),
        _ => {
            errs.add(path, "expected a list (`- ...` items)");
            Vec::new()
        }
    }
}

/// A mapping of name → entry, kept in YAML order.
fn named<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errs: &mut Errors<'_>,
) -> Vec<(String, Option<T>)> {
    match value {
        Value::Null => Vec::new(),
        Value::Mapping(m) => m
            .into_iter()
            .filter_map(|(k, v)| {
                let Some(name) = k.as_str().map(str::to_string) else {
                    errs.add(path, format!("names must be strings, found {k:?}"));
                    return None;
                };
                let entry_path = format!("{path}.{name}");
                if v.is_null() {
                    errs.add(entry_path, "empty entry");
                    return Some((name, None));
                }
                let parsed = section(v, &entry_path, errs);
                Some((name, parsed))
            })
            .collect(),
        _ => {
            errs.add(path, "expected a mapping of name: settings");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lines::LineIndex;
    use super::*;

    fn run(yaml: &str) -> (Option<RawConfig>, Vec<super::super::ConfigError>) {
        let idx = LineIndex::build(yaml);
        let mut errs = Errors::new(&idx);
        let raw = parse(yaml, &mut errs);
        (raw, errs.list)
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let (_, errs) = run("server:\n  idle_timeout: 5s\n  max_conections: 5\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "server.max_conections");
        assert_eq!(errs[0].line, Some(3));
        assert!(errs[0].message.contains("max_conections"), "{}", errs[0]);
    }

    #[test]
    fn nested_unknown_key_in_list_item() {
        let yaml = "routes:\n  - match: { path_prefix: / }\n    upstream: app\n  - match:\n      path_prefx: /x\n";
        let (raw, errs) = run(yaml);
        let raw = raw.unwrap();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "routes[1].match.path_prefx");
        assert_eq!(errs[0].line, Some(5));
        assert_eq!(raw.routes.len(), 2);
        assert!(raw.routes[0].is_some() && raw.routes[1].is_none());
        assert!(raw.partial);
    }

    #[test]
    fn type_error_names_path_and_line() {
        let (_, errs) = run("logging:\n  level: info\nserver:\n  header_read_timeout: 10\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "server.header_read_timeout");
        assert_eq!(errs[0].line, Some(4));
        let (_, errs) =
            run("upstreams:\n  app:\n    servers:\n      - { address: a, weight: x }\n");
        assert_eq!(errs[0].path, "upstreams.app.servers[0].weight");
        assert_eq!(errs[0].line, Some(4));
    }

    #[test]
    fn unknown_top_level_key_and_syntax_error() {
        let (_, errs) = run("routs: []\n");
        assert_eq!(errs[0].path, "routs");
        assert_eq!(errs[0].line, Some(1));
        let (raw, errs) = run("server:\n  a: [1\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].line.is_some());
        assert!(errs[0].message.starts_with("invalid YAML"));
        assert!(raw.is_none(), "no section is checked after a syntax error");
        let (_, errs) = run("- 1\n");
        assert!(errs[0].message.contains("top level"));
    }

    #[test]
    fn a_duplicate_key_is_reported_at_its_own_line() {
        let yaml = "upstreams:\n  app:\n    servers: [\"a:1\"]\n    retries: 1\n\n    retries: 2\n";
        let (raw, errs) = run(yaml);
        assert!(raw.is_none());
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "upstreams.app.retries");
        assert_eq!(errs[0].line, Some(6));
        assert_eq!(errs[0].message, "duplicate key (first written at line 4)");
        // The same key in two mappings is no duplicate.
        let (_, errs) = run("server:\n  max_connections: 1\nadmin:\n  max_connections: 1\n");
        assert!(
            errs.iter().all(|e| !e.message.contains("duplicate")),
            "{errs:?}"
        );
    }

    #[test]
    fn empty_document_is_all_defaults() {
        let (raw, errs) = run("");
        let raw = raw.unwrap();
        assert!(errs.is_empty());
        assert!(raw.server.is_none() && raw.listeners.is_empty() && !raw.partial);
    }

    #[test]
    fn merge_keys_are_applied() {
        let yaml = "upstreams:\n  a: &base\n    servers: [\"x:1\"]\n    retries: 3\n  b:\n    <<: *base\n    retries: 0\n";
        let (raw, errs) = run(yaml);
        assert!(errs.is_empty(), "{errs:?}");
        let raw = raw.unwrap();
        let b = raw.upstreams[1].1.as_ref().unwrap();
        assert_eq!(b.retries, Some(0));
        assert_eq!(b.servers.len(), 1);
    }

    #[test]
    fn duplicate_keys_and_wrong_shapes() {
        let (_, errs) = run("server:\n  idle_timeout: 5s\n  idle_timeout: 6s\n");
        assert_eq!(errs[0].line, Some(3));
        assert!(errs[0].message.contains("duplicate key"), "{}", errs[0]);
        let (_, errs) = run("server: fast\n");
        assert_eq!(
            errs[0].to_string(),
            "server (line 1): invalid type: string \"fast\", expected a mapping of settings"
        );
        let (_, errs) = run("listeners: {}\nupstreams: [a]\n");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["listeners", "upstreams"]);
    }
}
