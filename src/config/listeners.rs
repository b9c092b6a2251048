//! Listener validation: binds, unique names, TLS (certificates, versions, ALPN) and the
//! plain-HTTP → HTTPS redirect.

use std::collections::HashMap;
use std::path::Path;

use super::certs;
use super::error::Errors;
use super::raw::{defaults, RawCertificate, RawListener, RawTls};
use super::validate::{binds_collide, parse_bind, resolve};
use super::{CertificateSettings, ListenerSettings, TlsSettings, TlsVersion};

/// Validates the listeners; `partial` = some section failed to parse, so the cross-listener
/// check "redirect needs a TLS listener" might be wrong and is skipped.
pub(crate) fn validate(
    raw: &[Option<RawListener>],
    partial: bool,
    base_dir: &Path,
    errs: &mut Errors<'_>,
) -> Vec<ListenerSettings> {
    if raw.is_empty() {
        errs.add("listeners", "at least one listener is required");
        return Vec::new();
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<(usize, ListenerSettings, bool)> = Vec::new();
    for (i, l) in raw.iter().enumerate() {
        let Some(l) = l else { continue };
        let path = format!("listeners[{i}]");
        let name = l.name.clone().unwrap_or_else(|| path.clone());
        if name.is_empty() {
            errs.add(format!("{path}.name"), "must not be empty");
        } else if let Some(first) = names.insert(name.clone(), i) {
            errs.add(
                format!("{path}.name"),
                format!("duplicate listener name {name:?} (also listeners[{first}])"),
            );
        }
        let bind = parse_bind(&l.bind, &format!("{path}.bind"), errs);
        let tls = l
            .tls
            .as_ref()
            .and_then(|t| tls(t, &format!("{path}.tls"), base_dir, errs));
        let redirect = l.redirect_https.unwrap_or(false);
        if redirect && l.tls.is_some() {
            errs.add(
                format!("{path}.redirect_https"),
                "a TLS listener cannot also redirect to https; set redirect_https on a plain listener",
            );
        }
        if let Some(bind) = bind {
            for (j, other, _) in &out {
                if binds_collide(bind, other.bind) {
                    errs.add(
                        format!("{path}.bind"),
                        format!("{bind} collides with listeners[{j}] ({})", other.bind),
                    );
                }
            }
            out.push((
                i,
                ListenerSettings {
                    name,
                    bind,
                    tls,
                    redirect_https: None,
                },
                redirect,
            ));
        }
    }
    let https_port = raw
        .iter()
        .zip(0..)
        .find(|(l, _)| l.as_ref().is_some_and(|l| l.tls.is_some()))
        .and_then(|(_, i)| out.iter().find(|(j, ..)| *j == i))
        .map(|(_, l, _)| l.bind.port());
    for (i, listener, redirect) in &mut out {
        if !*redirect || raw[*i].as_ref().is_some_and(|l| l.tls.is_some()) {
            continue;
        }
        match https_port {
            Some(port) => listener.redirect_https = Some(port),
            None if partial => {}
            None => errs.add(
                format!("listeners[{i}].redirect_https"),
                "redirect_https needs at least one TLS listener to redirect to",
            ),
        }
    }
    out.into_iter().map(|(_, l, _)| l).collect()
}

fn tls(raw: &RawTls, path: &str, base_dir: &Path, errs: &mut Errors<'_>) -> Option<TlsSettings> {
    let before = errs.count();
    if raw.certificates.is_empty() {
        errs.add(
            format!("{path}.certificates"),
            "at least one certificate is required",
        );
    }
    let certificates: Vec<CertificateSettings> = raw
        .certificates
        .iter()
        .enumerate()
        .filter_map(|(j, c)| certificate(c, &format!("{path}.certificates[{j}]"), base_dir, errs))
        .collect();
    let min_version = match raw.min_version.as_ref().map(|v| v.0.as_str()) {
        None => match defaults::TLS_MIN_VERSION {
            "1.3" => TlsVersion::V1_3,
            _ => TlsVersion::V1_2,
        },
        Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(other) => {
            errs.add(
                format!("{path}.min_version"),
                format!("unsupported TLS version {other:?} (use \"1.2\" or \"1.3\")"),
            );
            TlsVersion::V1_2
        }
    };
    let names: Vec<String> = match &raw.alpn {
        Some(list) => list.clone(),
        None => defaults::ALPN.iter().map(|s| s.to_string()).collect(),
    };
    let mut alpn: Vec<Vec<u8>> = Vec::new();
    for (k, proto) in names.iter().enumerate() {
        let p = format!("{path}.alpn[{k}]");
        if proto != "h2" && proto != "http/1.1" {
            errs.add(
                p,
                format!("unsupported ALPN protocol {proto:?} (use h2 or http/1.1)"),
            );
        } else if alpn.contains(&proto.as_bytes().to_vec()) {
            errs.add(p, format!("duplicate ALPN protocol {proto:?}"));
        } else {
            alpn.push(proto.as_bytes().to_vec());
        }
    }
    (errs.count() == before).then_some(TlsSettings {
        certificates,
        min_version,
        alpn,
    })
}

fn certificate(
    raw: &RawCertificate,
    path: &str,
    base_dir: &Path,
    errs: &mut Errors<'_>,
) -> Option<CertificateSettings> {
    let cert_path = resolve(base_dir, &raw.cert);
    let key_path = resolve(base_dir, &raw.key);
    if raw.self_signed_if_missing {
        if let Err(msg) = certs::ensure_self_signed(&cert_path, &key_path) {
            errs.add(path, msg);
            return None;
        }
    } else {
        let mut missing = false;
        for (field, file) in [("cert", &cert_path), ("key", &key_path)] {
            if !file.exists() {
                errs.add(
                    format!("{path}.{field}"),
                    format!("file not found: {}", file.display()),
                );
                missing = true;
            }
        }
        if missing {
            return None;
        }
    }
    match certs::load(&cert_path, &key_path) {
        Ok(loaded) => Some(CertificateSettings {
            cert_path,
            key_path,
            names: loaded.names,
            key: loaded.key,
        }),
        Err(msg) => {
            errs.add(path, msg);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::certs::tests::write_pair;
    use super::super::test_support::{errors_in, load_in, UPSTREAM_AND_ROUTE};

    fn tls_listener(cert: &str, key: &str) -> String {
        format!(
            "  - name: https\n    bind: \"127.0.0.1:8443\"\n    tls:\n      certificates:\n        - {{ cert: \"{cert}\", key: \"{key}\" }}\n"
        )
    }

    #[test]
    fn tls_and_redirect() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "site", &["example.com"]);
        let yaml = format!(
            "listeners:\n{}  - bind: \"127.0.0.1:8080\"\n    redirect_https: true\n{UPSTREAM_AND_ROUTE}",
            tls_listener(&c, &k)
        );
        let s = load_in(dir.path(), &yaml).unwrap();
        let tls = s.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.certificates[0].names, ["example.com"]);
        assert_eq!(tls.min_version, super::TlsVersion::V1_2);
        assert_eq!(tls.alpn, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(s.listeners[1].name, "listeners[1]");
        assert_eq!(s.listeners[1].redirect_https, Some(8443));
        assert_eq!(s.listeners[0].redirect_https, None);
    }

    #[test]
    fn relative_cert_paths_resolve_against_base_dir() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "rel", &["rel.test"]);
        let yaml = format!(
            "listeners:\n{}{UPSTREAM_AND_ROUTE}",
            tls_listener("rel.crt", "rel.key")
        );
        let s = load_in(dir.path(), &yaml).unwrap();
        let cert = &s.listeners[0].tls.as_ref().unwrap().certificates[0];
        assert_eq!(cert.cert_path, dir.path().join("rel.crt"));
    }

    #[test]
    fn listener_rules() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "site", &["example.com"]);
        let yaml = format!(
            "listeners:
  - name: a
    bind: \"127.0.0.1:8080\"
    redirect_https: true
  - name: a
    bind: \"127.0.0.1:8080\"
  - bind: \"localhost:80\"
  - bind: \"127.0.0.1:8443\"
    redirect_https: true
    tls:
      certificates: []
      min_version: \"1.1\"
      alpn: [h2, h3, h2]
  - bind: \"127.0.0.1:9443\"
    tls:
      certificates:
        - {{ cert: \"{c}\", key: missing.key }}
{UPSTREAM_AND_ROUTE}"
        );
        let errs = errors_in(dir.path(), &yaml);
        let got: Vec<(&str, Option<usize>)> =
            errs.iter().map(|e| (e.path.as_str(), e.line)).collect();
        assert_eq!(
            got,
            [
                ("listeners[1].name", Some(5)),
                ("listeners[1].bind", Some(6)),
                ("listeners[2].bind", Some(7)),
                ("listeners[3].tls.certificates", Some(11)),
                ("listeners[3].tls.min_version", Some(12)),
                ("listeners[3].tls.alpn[1]", Some(13)),
                ("listeners[3].tls.alpn[2]", Some(13)),
                ("listeners[3].redirect_https", Some(9)),
                ("listeners[4].tls.certificates[0].key", Some(17)),
            ],
            "{errs:#?}"
        );
        let _ = k;
    }

    #[test]
    fn redirect_without_tls_listener_and_no_listeners() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "listeners:\n  - bind: \"127.0.0.1:8080\"\n    redirect_https: true\n{UPSTREAM_AND_ROUTE}"
        );
        let errs = errors_in(dir.path(), &yaml);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "listeners[0].redirect_https");
        let errs = errors_in(dir.path(), UPSTREAM_AND_ROUTE);
        assert_eq!(errs[0].path, "listeners");
    }

    #[test]
    fn mismatched_pair_and_self_signed() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = write_pair(dir.path(), "one", &["one.test"]);
        let (_, k) = write_pair(dir.path(), "two", &["two.test"]);
        let yaml = format!("listeners:\n{}{UPSTREAM_AND_ROUTE}", tls_listener(&c, &k));
        let errs = errors_in(dir.path(), &yaml);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "listeners[0].tls.certificates[0]");
        assert!(errs[0].message.contains("does not match"), "{}", errs[0]);

        let yaml = format!(
            "listeners:\n  - bind: \"127.0.0.1:8443\"\n    tls:\n      certificates:\n        - {{ cert: dev/x.crt, key: dev/x.key, self_signed_if_missing: true }}\n{UPSTREAM_AND_ROUTE}"
        );
        let s = load_in(dir.path(), &yaml).unwrap();
        assert_eq!(
            s.listeners[0].tls.as_ref().unwrap().certificates[0].names,
            ["localhost"]
        );
        assert!(dir.path().join("dev/x.key").exists());
    }
}
