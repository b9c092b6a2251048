//! TLS termination: a rustls `ServerConfig` per TLS listener, with the certificate chosen by
//! SNI (exact name, then `*.` wildcard, then the first certificate as the default).

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{TlsSettings, TlsVersion};

/// Picks a certificate by the client's SNI name.
#[derive(Debug)]
pub struct SniResolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `("example.com", key)` for a `*.example.com` name.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
}

impl SniResolver {
    /// `None` when `tls` holds no certificate (validation refuses that earlier).
    pub fn new(tls: &TlsSettings) -> Option<Self> {
        let default = tls.certificates.first()?.key.clone();
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        for cert in &tls.certificates {
            for name in &cert.names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.push((suffix.to_owned(), cert.key.clone())),
                    // The first certificate naming a host wins, as the order in the file says.
                    None => {
                        exact.entry(name).or_insert_with(|| cert.key.clone());
                    }
                }
            }
        }
        Some(SniResolver {
            default,
            exact,
            wildcard,
        })
    }

    fn lookup(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        // A wildcard covers exactly one label (RFC 6125 §6.4.3).
        if let Some((_, parent)) = name.split_once('.') {
            if let Some((_, key)) = self.wildcard.iter().find(|(suffix, _)| suffix == parent) {
                return key.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.lookup(client_hello.server_name()))
    }
}

/// Builds the rustls configuration of one listener.
pub fn server_config(tls: &TlsSettings) -> Result<Arc<ServerConfig>, rustls::Error> {
    let resolver = SniResolver::new(tls)
        .ok_or_else(|| rustls::Error::General("no certificate configured".into()))?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols.clone_from(&tls.alpn);
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CertificateSettings;

    fn cert(names: &[&str]) -> CertificateSettings {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let c = params.self_signed(&key).unwrap();
        let der_key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der_key).unwrap();
        CertificateSettings {
            cert_path: "x".into(),
            key_path: "y".into(),
            names: names.iter().map(|s| s.to_string()).collect(),
            key: Arc::new(CertifiedKey::new(vec![c.der().clone()], signing)),
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let a = cert(&["a.test"]);
        let b = cert(&["b.test", "*.wild.test"]);
        let tls = TlsSettings {
            certificates: vec![a.clone(), b.clone()],
            min_version: TlsVersion::V1_2,
            alpn: vec![],
        };
        let r = SniResolver::new(&tls).unwrap();
        assert!(Arc::ptr_eq(&r.lookup(Some("B.TEST")), &b.key));
        assert!(Arc::ptr_eq(&r.lookup(Some("x.wild.test")), &b.key));
        assert!(Arc::ptr_eq(&r.lookup(Some("x.y.wild.test")), &a.key));
        assert!(Arc::ptr_eq(&r.lookup(Some("other.test")), &a.key));
        assert!(Arc::ptr_eq(&r.lookup(None), &a.key));
    }
}
