//! Certificates: load a PEM chain + private key into a rustls `CertifiedKey` (aws-lc-rs),
//! check that they belong together, read the DNS names the certificate covers, and — for
//! development only — mint a self-signed localhost pair when asked to.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

/// A loaded certificate: the key rustls serves and the names it covers.
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// Lower-case DNS subjectAltNames (may include `*.example.com`).
    pub names: Vec<String>,
}

/// Names a self-signed development certificate covers.
pub const DEV_CERT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Loads and cross-checks a PEM certificate chain and its private key.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<LoadedCert, String> {
    let cert_pem = fs::read(cert_path)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert_path.display()))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse certificate {}: {e}", cert_path.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "no CERTIFICATE block found in {}",
            cert_path.display()
        ));
    };
    let names = dns_names(leaf).map_err(|e| format!("{}: {e}", cert_path.display()))?;

    let key_pem =
        fs::read(key_path).map_err(|e| format!("cannot read key {}: {e}", key_path.display()))?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("cannot parse key {}: {e}", key_path.display()))?
        .ok_or_else(|| format!("no private key found in {}", key_path.display()))?;
    let signing_key = aws_lc_rs::sign::any_supported_type(&key_der)
        .map_err(|e| format!("unsupported private key {}: {e}", key_path.display()))?;

    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            tracing::debug!(key = %key_path.display(), "cannot compare key with certificate");
        }
        Err(e) => {
            return Err(format!(
                "private key {} does not match certificate {}: {e}",
                key_path.display(),
                cert_path.display()
            ))
        }
    }
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
    })
}

/// Lower-case DNS names from the subjectAltName extension; warns when the cert is not
/// currently valid (an expired cert still loads, as in nginx).
fn dns_names(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("invalid X.509 certificate: {e}"))?;
    if !cert.validity().is_valid() {
        tracing::warn!(
            not_before = %cert.validity().not_before,
            not_after = %cert.validity().not_after,
            "certificate is outside its validity period"
        );
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("invalid subjectAltName: {e}"))?;
    let mut names = Vec::new();
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                let lower = dns.to_ascii_lowercase();
                if !names.contains(&lower) {
                    names.push(lower);
                }
            }
        }
    }
    Ok(names)
}

/// For `self_signed_if_missing: true`: when both files are missing, writes a fresh
/// self-signed certificate for localhost / 127.0.0.1 / ::1. Returns whether it generated one.
pub fn ensure_self_signed(cert_path: &Path, key_path: &Path) -> Result<bool, String> {
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => return Ok(false),
        (true, false) => {
            return Err(format!(
            "key {} is missing but certificate {} exists; refusing to generate a new pair over it",
            key_path.display(),
            cert_path.display()
        ))
        }
        (false, true) => {
            return Err(format!(
            "certificate {} is missing but key {} exists; refusing to generate a new pair over it",
            cert_path.display(),
            key_path.display()
        ))
        }
        (false, false) => {}
    }
    let names: Vec<String> = DEV_CERT_NAMES.iter().map(|s| s.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
    for path in [cert_path, key_path] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create folder {}: {e}", dir.display()))?;
        }
    }
    write_new(
        key_path,
        generated.key_pair.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_new(cert_path, generated.cert.pem().as_bytes(), 0o644)?;
    tracing::warn!(
        cert = %cert_path.display(),
        key = %key_path.display(),
        "GENERATED A SELF-SIGNED DEVELOPMENT CERTIFICATE for localhost, 127.0.0.1 and ::1 \
         (self_signed_if_missing: true). Browsers will not trust it. \
         DO NOT USE IT IN PRODUCTION: configure a real certificate."
    );
    Ok(true)
}

/// Creates `path` (failing if it appeared meanwhile) with `mode` on Unix.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(contents)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a fresh self-signed pair for `names` into `dir` as `<stem>.crt` / `<stem>.key`.
    pub(crate) fn write_pair(dir: &Path, stem: &str, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let ck = rcgen::generate_simple_self_signed(names).unwrap();
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        fs::write(&cert, ck.cert.pem()).unwrap();
        fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        (
            cert.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
        )
    }

    #[test]
    fn loads_matching_pair_and_reads_names() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(
            dir.path(),
            "a",
            &["Example.COM", "*.example.com", "10.0.0.1"],
        );
        let loaded = load(Path::new(&c), Path::new(&k)).unwrap();
        assert_eq!(loaded.names, ["example.com", "*.example.com"]);
        assert_eq!(loaded.key.cert.len(), 1);
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = write_pair(dir.path(), "a", &["a.test"]);
        let (_, k) = write_pair(dir.path(), "b", &["b.test"]);
        let err = load(Path::new(&c), Path::new(&k)).err().unwrap();
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn missing_and_garbage_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "a", &["a.test"]);
        let missing = dir.path().join("nope.crt");
        let err = load(&missing, Path::new(&k)).err().unwrap();
        assert!(err.contains("nope.crt"), "{err}");
        let garbage = dir.path().join("garbage.pem");
        fs::write(&garbage, "hello").unwrap();
        let err = load(&garbage, Path::new(&k)).err().unwrap();
        assert!(err.contains("no CERTIFICATE"), "{err}");
        let err = load(Path::new(&c), &garbage).err().unwrap();
        assert!(err.contains("no private key"), "{err}");
    }

    #[test]
    fn self_signed_generation() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("certs/dev.crt");
        let key = dir.path().join("certs/dev.key");
        assert!(ensure_self_signed(&cert, &key).unwrap());
        let loaded = load(&cert, &key).unwrap();
        assert_eq!(loaded.names, ["localhost"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Second call keeps the existing pair.
        assert!(!ensure_self_signed(&cert, &key).unwrap());
        // Only one of the two present: refuse.
        fs::remove_file(&key).unwrap();
        let err = ensure_self_signed(&cert, &key).unwrap_err();
        assert!(err.contains("missing"), "{err}");
    }
}
