//! TLS termination over real sockets: ALPN (h2 / HTTP/1.1), SNI certificate choice, minimum
//! version, 421 for misdirected requests, the HTTPS redirect, WebSocket pass-through, an
//! upstream dying mid-response, and the self-signed development certificate.

mod common;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Version};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ProtocolVersion, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound for any single network step in these tests.
const STEP: Duration = Duration::from_secs(2);

/// One TLS listener `https` (with `tls_extra` lines under `tls:`) and one plain listener
/// `http`, the given certificates, upstream `app`, and `routes` (YAML list items) — or a
/// catch-all route to `app` when `routes` is empty.
/// A gateway with one certificate (`a.test`) in front of an echo upstream. `server`, when
/// not empty, replaces the `shutdown_grace: 1s` line under `server:` (more lines indented by
/// two spaces).
async fn a_test_gateway(server: &str) -> (TestCa, TestUpstream, TestGateway) {
    let ca = TestCa::new();
    let (c, k, _) = ca.issue("a", &["a.test"]);
    let up = TestUpstream::echo().await;
    let mut yaml = tls_yaml(up.addr, &[(c, k)], "", "", "");
    if !server.is_empty() {
        yaml = yaml.replace("shutdown_grace: 1s", server);
    }
    let gw = TestGateway::start(&yaml).await;
    (ca, up, gw)
}

fn tls_yaml(
    app: SocketAddr,
    certs: &[(PathBuf, PathBuf)],
    tls_extra: &str,
    extra_upstreams: &str,
    routes: &str,
) -> String {
    let certificates: String = certs
        .iter()
        .map(|(c, k)| {
            format!(
                "        - cert: {:?}\n          key: {:?}\n",
                c.display().to_string(),
                k.display().to_string()
            )
        })
        .collect();
    let routes = if routes.is_empty() {
        "  - match: { path_prefix: / }\n    upstream: app\n"
    } else {
        routes
    };
    format!(
        r#"
server:
  shutdown_grace: 1s
listeners:
  - name: https
    bind: "127.0.0.1:0"
    tls:
      certificates:
{certificates}{tls_extra}
  - name: http
    bind: "127.0.0.1:0"
upstreams:
  app:
    servers: ["{app}"]
    connect_timeout: 1s
    response_timeout: 5s
{extra_upstreams}
routes:
{routes}
logging:
  access_log: false
"#
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A rustls client trusting `ca`, speaking only `versions`, offering `alpn`.
fn client_config(
    ca: &TestCa,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pemfile::certs(&mut ca.ca_pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Accepts any certificate (signatures are still checked), so a test can look at which
/// certificate the server chose even when it does not cover the requested name.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn accept_any_client() -> Arc<ClientConfig> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// The rustls error inside a failed handshake's `io::Error`.
fn rustls_error(e: &io::Error) -> &rustls::Error {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {e:?}"))
}

// 1. HTTPS with h2 via ALPN and with HTTP/1.1.

#[tokio::test]
async fn https_h2_and_http1_are_proxied_with_forwarded_proto() {
    let (ca, up, gw) = a_test_gateway("").await;
    let addr = gw.addr("https");
    let authority = format!("a.test:{}", addr.port());

    let h2 = ca.client(&[("a.test", addr)], false);
    let res = h2
        .get(format!("https://{authority}/two?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    assert_eq!(res.text().await.unwrap(), "GET /two?x=1");
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    // From :authority: h2 requests carry no Host header of their own.
    assert_eq!(seen.headers["host"], authority.as_str());
    assert_eq!(seen.headers["x-forwarded-host"], authority.as_str());

    let h1 = ca.client(&[("a.test", addr)], true);
    let res = h1
        .get(format!("https://{authority}/one"))
        .header("X-Forwarded-Proto", "http")
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), Version::HTTP_11);
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "GET /one");
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["host"], authority.as_str());
    assert_eq!(up.hits(), 2);

    // The plain listener of the same gateway says http.
    reqwest::Client::new()
        .get(gw.url("http", "/plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(up.last().headers["x-forwarded-proto"], "http");
}

/// On shutdown, HTTP/1.1 connections with no request under way close at once: a TLS
/// connection that finished its handshake and has sent nothing yet (its first-request
/// deadline is far off) and one waiting in keep-alive after a response. The drain does not
/// wait for their timeouts (nor give up on them after `shutdown_grace`).
#[tokio::test]
async fn shutdown_closes_idle_http1_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ca, _up, gw) = a_test_gateway("shutdown_grace: 5s\n  header_read_timeout: 30s").await;
    let config = ca.rustls_client(&[b"http/1.1"]);
    let mut silent = tls_connect(gw.addr("https"), config.clone(), "a.test", STEP)
        .await
        .unwrap();
    let mut kept = tls_connect(gw.addr("https"), config, "a.test", STEP)
        .await
        .unwrap();
    kept.write_all(b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let mut buf = [0u8; 1024];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the response");
        got.extend_from_slice(&buf[..n]);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let shutdown_at = std::time::Instant::now();
    gw.gateway.shutdown();
    let drained = tokio::time::timeout(Duration::from_secs(4), gw.gateway.drained())
        .await
        .expect("drained() did not return within 4 s");
    assert!(drained, "connections still open after shutdown_grace");
    assert!(
        shutdown_at.elapsed() < Duration::from_secs(3),
        "{:?}",
        shutdown_at.elapsed()
    );
    for (name, conn) in [("silent", &mut silent), ("keep-alive", &mut kept)] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(STEP, conn.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "{name} connection not closed by the drain: {read:?}"
        );
    }
}

/// HTTP/1.1 over TLS: `Expect: 100-continue` gets its `100` (flushed through the TLS
/// layer) before the body is sent, then the answer; two requests pipelined in one TLS write
/// are answered in order on the same connection.
#[tokio::test]
async fn http1_over_tls_continue_and_pipelining() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new();
    let (c, k, _) = ca.issue("a", &["a.test"]);
    let up = TestUpstream::start(|seen: Seen| async move {
        let body = format!("{} {} {}", seen.method, seen.uri, seen.body.len());
        http::Response::new(full(body))
    })
    .await;
    let gw = TestGateway::start(&tls_yaml(up.addr, &[(c, k)], "", "", "")).await;
    let mut tls = tls_connect(
        gw.addr("https"),
        ca.rustls_client(&[b"http/1.1"]),
        "a.test",
        STEP,
    )
    .await
    .unwrap();
    async fn read_until(tls: &mut (impl AsyncReadExt + Unpin), got: &mut Vec<u8>, what: &str) {
        tokio::time::timeout(STEP, async {
            while !String::from_utf8_lossy(got).contains(what) {
                let mut buf = [0u8; 4096];
                let n = tls.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(got));
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {what:?} in {:?}", String::from_utf8_lossy(got)));
    }
    tls.write_all(
        b"POST /up HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    read_until(&mut tls, &mut got, "HTTP/1.1 100 Continue\r\n\r\n").await;
    assert_eq!(up.hits(), 0, "upstream contacted before the body");
    tls.write_all(b"hello").await.unwrap();
    read_until(&mut tls, &mut got, "POST /up 5").await;

    let mut got = Vec::new();
    tls.write_all(
        b"GET /one HTTP/1.1\r\nHost: a.test\r\n\r\nGET /two HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await
    .unwrap();
    read_until(&mut tls, &mut got, "GET /two 0").await;
    let text = String::from_utf8_lossy(&got);
    let one = text.find("GET /one 0").expect("first answer");
    assert!(one < text.find("GET /two 0").unwrap(), "{text}");
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
}

#[tokio::test]
async fn client_without_alpn_gets_http1() {
    let (ca, _up, gw) = a_test_gateway("").await;
    let tls = tls_connect(gw.addr("https"), ca.rustls_client(&[]), "a.test", STEP)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let res = exchange_on_stream(
        tls,
        "GET /no-alpn HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        STEP,
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(res.ends_with("GET /no-alpn"), "{res}");
}

// 2. SNI certificate choice.

#[tokio::test]
async fn sni_selects_certificate_exact_wildcard_and_default() {
    let ca = TestCa::new();
    let (ac, ak, a_der) = ca.issue("a", &["a.test"]);
    let (bc, bk, b_der) = ca.issue("b", &["b.test"]);
    let (wc, wk, w_der) = ca.issue("wild", &["*.wild.test"]);
    let up = TestUpstream::echo().await;
    let yaml = tls_yaml(up.addr, &[(ac, ak), (bc, bk), (wc, wk)], "", "", "");
    let gw = TestGateway::start(&yaml).await;
    let addr = gw.addr("https");
    let verified = ca.rustls_client(&[b"http/1.1"]);

    // Verified against the CA and the requested name, and compared byte for byte.
    for (name, want) in [
        ("b.test", &b_der),
        ("a.test", &a_der),
        ("B.Test", &b_der),
        ("x.wild.test", &w_der),
    ] {
        let tls = tls_connect(addr, verified.clone(), name, STEP)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = tls.get_ref().1.peer_certificates().unwrap()[0].as_ref();
        assert_eq!(got, want.as_slice(), "certificate for {name}");
    }

    // Names no certificate covers get the first one; so does a client sending no SNI.
    // A verifying client then refuses it, since it does not cover the name.
    let any = accept_any_client();
    for name in ["unknown.test", "x.y.wild.test", "wild.test", "127.0.0.1"] {
        let tls = tls_connect(addr, any.clone(), name, STEP).await.unwrap();
        let got = tls.get_ref().1.peer_certificates().unwrap()[0].as_ref();
        assert_eq!(got, a_der.as_slice(), "default certificate for {name}");
    }
    let err = tls_connect(addr, verified, "unknown.test", STEP)
        .await
        .expect_err("a.test certificate must not verify for unknown.test");
    assert!(
        matches!(rustls_error(&err), rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );

    // And the chosen certificate's connection really serves requests.
    let tls = tls_connect(addr, accept_any_client(), "b.test", STEP)
        .await
        .unwrap();
    let res = exchange_on_stream(
        tls,
        "GET /b HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
        STEP,
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
}

// 3. Minimum version and ALPN restrictions.

#[tokio::test]
async fn min_version_1_3_refuses_tls_1_2_clients() {
    let ca = TestCa::new();
    let (c, k, _) = ca.issue("a", &["a.test"]);
    let up = TestUpstream::echo().await;
    let strict = TestGateway::start(&tls_yaml(
        up.addr,
        &[(c.clone(), k.clone())],
        "      min_version: \"1.3\"",
        "",
        "",
    ))
    .await;
    let lax = TestGateway::start(&tls_yaml(up.addr, &[(c, k)], "", "", "")).await;
    let tls12 = client_config(&ca, &[&rustls::version::TLS12], &[b"http/1.1"]);
    let tls13 = client_config(&ca, &[&rustls::version::TLS13], &[b"http/1.1"]);

    let err = tls_connect(strict.addr("https"), tls12.clone(), "a.test", STEP)
        .await
        .expect_err("TLS 1.2 client must be refused");
    assert!(
        matches!(
            rustls_error(&err),
            rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion)
        ),
        "{err:?}"
    );

    let tls = tls_connect(strict.addr("https"), tls13, "a.test", STEP)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    let res = exchange_on_stream(
        tls,
        "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        STEP,
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");

    // The default minimum (1.2) accepts the same 1.2 client.
    let tls = tls_connect(lax.addr("https"), tls12, "a.test", STEP)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    let res = exchange_on_stream(
        tls,
        "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        STEP,
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
}

/// With `alpn: [http/1.1]`, rustls (RFC 7301 §3.2) refuses a client whose ALPN list has no
/// overlap with a `no_application_protocol` alert instead of continuing without ALPN; a
/// client offering both gets http/1.1, and h2 is never negotiated.
#[tokio::test]
async fn alpn_http1_only_listener() {
    let ca = TestCa::new();
    let (c, k, _) = ca.issue("a", &["a.test"]);
    let up = TestUpstream::echo().await;
    let yaml = tls_yaml(up.addr, &[(c, k)], "      alpn: [http/1.1]", "", "");
    let gw = TestGateway::start(&yaml).await;
    let addr = gw.addr("https");

    let err = tls_connect(addr, ca.rustls_client(&[b"h2"]), "a.test", STEP)
        .await
        .expect_err("h2-only client must be refused");
    assert!(
        matches!(
            rustls_error(&err),
            rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
        ),
        "{err:?}"
    );

    let tls = tls_connect(
        addr,
        ca.rustls_client(&[b"h2", b"http/1.1"]),
        "a.test",
        STEP,
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    // reqwest offers h2 first but must end up on HTTP/1.1.
    let client = ca.client(&[("a.test", addr)], false);
    let res = client
        .get(format!("https://a.test:{}/x", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_11);
}

// 4. 421 Misdirected Request.

fn misdirect_yaml(ca: &TestCa, app: SocketAddr, admin: SocketAddr) -> String {
    let (ac, ak, _) = ca.issue("a", &["a.test"]);
    let (mc, mk, _) = ca.issue("admin", &["admin.test"]);
    tls_yaml(
        app,
        &[(ac, ak), (mc, mk)],
        "",
        &format!("  admin: {{ servers: [\"{admin}\"] }}"),
        "  - match: { host: admin.test, path_prefix: / }\n    upstream: admin\n  \
         - match: { path_prefix: / }\n    upstream: app\n",
    )
}

#[tokio::test]
async fn host_differing_from_sni_gets_421() {
    let ca = TestCa::new();
    let app = TestUpstream::echo().await;
    let admin = TestUpstream::echo().await;
    let gw = TestGateway::start(&misdirect_yaml(&ca, app.addr, admin.addr)).await;
    let addr = gw.addr("https");
    let config = ca.rustls_client(&[b"http/1.1"]);
    let get = |sni: &'static str, host: &'static str| {
        let config = config.clone();
        async move {
            let tls = tls_connect(addr, config, sni, STEP).await.unwrap();
            exchange_on_stream(
                tls,
                &format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
                STEP,
            )
            .await
        }
    };

    let res = get("a.test", "admin.test").await;
    assert_eq!(status_of(&res), 421, "{res}");
    assert!(
        res.contains(r#"{"error":"misdirected_request","status":421}"#),
        "{res}"
    );
    let res = get("a.test", "Admin.Test:443").await;
    assert_eq!(status_of(&res), 421, "{res}");
    assert_eq!(admin.hits(), 0);
    assert_eq!(app.hits(), 0);

    let res = get("admin.test", "admin.test").await;
    assert_eq!(status_of(&res), 200, "{res}");
    assert_eq!(admin.hits(), 1);

    // A Host naming no route host falls through to the host-less route.
    let res = get("a.test", "unknown.test").await;
    assert_eq!(status_of(&res), 200, "{res}");
    assert_eq!(app.hits(), 1);
    assert_eq!(app.last().headers["host"], "unknown.test");
    let res = get("a.test", "a.test").await;
    assert_eq!(status_of(&res), 200, "{res}");
    assert_eq!((app.hits(), admin.hits()), (2, 1));

    // No SNI at all (a client connecting by IP): nothing vouches for admin.test either.
    let tls = tls_connect(addr, accept_any_client(), "127.0.0.1", STEP)
        .await
        .unwrap();
    let res = exchange_on_stream(
        tls,
        "GET /x HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
        STEP,
    )
    .await;
    assert_eq!(status_of(&res), 421, "{res}");
    assert_eq!((app.hits(), admin.hits()), (2, 1));

    // Plain HTTP has no SNI to disagree with: Host alone routes.
    let res = raw_exchange(
        gw.addr("http"),
        "GET /x HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
        STEP,
    )
    .await;
    assert_eq!(status_of(&res), 200, "{res}");
    assert_eq!(admin.hits(), 2);
}

/// An h2 client coalescing requests for another name onto a connection set up for
/// `a.test` (as browsers do when a certificate covers both) gets 421 for that name.
#[tokio::test]
async fn h2_authority_differing_from_sni_gets_421() {
    let ca = TestCa::new();
    let app = TestUpstream::echo().await;
    let admin = TestUpstream::echo().await;
    let gw = TestGateway::start(&misdirect_yaml(&ca, app.addr, admin.addr)).await;
    let tls = tls_connect(gw.addr("https"), ca.rustls_client(&[b"h2"]), "a.test", STEP)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut status = |uri: &'static str| {
        let req = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
        let fut = send.send_request(req);
        async move {
            tokio::time::timeout(STEP, fut)
                .await
                .unwrap()
                .unwrap()
                .status()
        }
    };
    assert_eq!(status("https://admin.test/x").await, 421);
    assert_eq!(admin.hits(), 0);
    assert_eq!(status("https://a.test/x").await, 200);
    assert_eq!(app.hits(), 1);
}

// 5. Plain → HTTPS redirect.

#[tokio::test]
async fn redirect_https_names_the_bound_tls_port() {
    let ca = TestCa::new();
    let (c, k, _) = ca.issue("a", &["example.test"]);
    let up = TestUpstream::echo().await;
    let yaml = format!(
        r#"
listeners:
  - name: http
    bind: "127.0.0.1:0"
    redirect_https: true
  - name: https
    bind: "127.0.0.1:0"
    tls:
      certificates:
        - {{ cert: {c:?}, key: {k:?} }}
upstreams:
  app: {{ servers: ["{up}"] }}
routes:
  - match: {{ path_prefix: / }}
    upstream: app
logging: {{ access_log: false }}
"#,
        c = c.display().to_string(),
        k = k.display().to_string(),
        up = up.addr,
    );
    let gw = TestGateway::start(&yaml).await;
    let tls_port = gw.addr("https").port();
    assert_ne!(tls_port, 0);

    for method in ["GET", "POST"] {
        let res = raw_exchange(
            gw.addr("http"),
            format!(
                "{method} /p/a?q=1 HTTP/1.1\r\nHost: example.test:1234\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            STEP,
        )
        .await;
        assert_eq!(status_of(&res), 308, "{res}");
        let location = res
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case("location"))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no Location in {res}"));
        assert_eq!(
            location,
            format!("https://example.test:{tls_port}/p/a?q=1"),
            "{res}"
        );
    }
    assert_eq!(up.hits(), 0);

    // The redirect target really answers.
    let res = ca
        .client(&[("example.test", gw.addr("https"))], false)
        .get(format!("https://example.test:{tls_port}/p/a?q=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.hits(), 1);
}

// 6. WebSocket pass-through.

/// A raw upstream that answers the first request on each connection with 101 and then echoes
/// bytes until the peer closes; records each request head.
async fn websocket_echo_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let heads2 = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let heads = heads2.clone();
            tokio::spawn(async move {
                let head = read_head(&mut stream, STEP).await;
                heads.lock().unwrap().push(head);
                stream
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                          Connection: Upgrade\r\n\
                          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                    )
                    .await
                    .unwrap();
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, heads)
}

const WS_REQUEST: &str = "GET /ws?room=1 HTTP/1.1\r\nHost: chat.test\r\nUpgrade: websocket\r\n\
    Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// Upgrades through the gateway, checks the echo both ways, then closes and expects the
/// tunnel to close too.
async fn websocket_round_trip<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    stream.write_all(WS_REQUEST.as_bytes()).await.unwrap();
    let head = read_head(&mut stream, STEP).await;
    assert_eq!(status_of(&head), 101, "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(
        head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "accept key must pass: {head}"
    );

    for message in [&b"hello"[..], b"\x81\x05world", &[0u8; 3000]] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(STEP, stream.read_exact(&mut echoed))
            .await
            .expect("echo did not arrive")
            .unwrap();
        assert_eq!(echoed, message);
    }
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut rest))
        .await
        .expect("tunnel did not close after the client did")
        .ok();
    assert!(rest.is_empty(), "{rest:?}");
}

fn check_upstream_upgrade_head(head: &str, proto: &str) {
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("get /ws?room=1 http/1.1\r\n"), "{head}");
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(
        lower.contains("\r\nsec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n"),
        "{head}"
    );
    assert!(
        lower.contains("\r\nsec-websocket-version: 13\r\n"),
        "{head}"
    );
    assert!(
        lower.contains(&format!("\r\nx-forwarded-proto: {proto}\r\n")),
        "{head}"
    );
    assert!(!lower.contains("keep-alive"), "{head}");
}

#[tokio::test]
async fn an_upgrade_the_client_did_not_ask_for_is_a_502() {
    let (up, _) = websocket_echo_upstream().await;
    let gw = TestGateway::start(&simple_yaml(up, "", "")).await;
    let tcp = TcpStream::connect(gw.addr("http")).await.unwrap();
    let res = exchange_on_stream(
        tcp,
        "GET /ws HTTP/1.1\r\nHost: chat.test\r\nConnection: close\r\n\r\n",
        STEP,
    )
    .await;
    assert_eq!(status_of(&res), 502, "{res}");
    assert!(res.contains("upstream_failed"), "{res}");
}

#[tokio::test]
async fn websocket_upgrade_is_passed_through_plain_and_tls() {
    let ca = TestCa::new();
    let (c, k, _) = ca.issue("chat", &["chat.test"]);
    let (up, heads) = websocket_echo_upstream().await;
    let gw = TestGateway::start(&tls_yaml(up, &[(c, k)], "", "", "")).await;

    let tcp = TcpStream::connect(gw.addr("http")).await.unwrap();
    websocket_round_trip(tcp).await;
    check_upstream_upgrade_head(&heads.lock().unwrap()[0], "http");

    let tls = tls_connect(
        gw.addr("https"),
        ca.rustls_client(&[b"http/1.1"]),
        "chat.test",
        STEP,
    )
    .await
    .unwrap();
    websocket_round_trip(tls).await;
    check_upstream_upgrade_head(&heads.lock().unwrap()[1], "https");
}

/// A tunnel holds its client connection's slots for as long as it lasts, as nginx counts an
/// upgraded connection: it shows in `gateway_active_connections` and in its server's
/// `in_flight`, and counts against `max_connections_per_ip` (before, the slots went back
/// at the `101` and one address could open tunnels without limit).
#[tokio::test]
async fn websocket_tunnels_count_against_connection_limits() {
    let (up, _) = websocket_echo_upstream().await;
    let gw = TestGateway::start(&simple_yaml(up, "", "  max_connections_per_ip: 2")).await;
    let metric = |series: &str| {
        let text = gw.gateway.metrics().encode(false);
        let line = text
            .lines()
            .find(|l| l.starts_with(series))
            .map(str::to_owned);
        line.unwrap_or_default()
    };
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(gw.addr("http")).await.unwrap();
        tcp.write_all(WS_REQUEST.as_bytes()).await.unwrap();
        let head = read_head(&mut tcp, STEP).await;
        assert_eq!(status_of(&head), 101, "{head}");
        tunnels.push(tcp);
    }
    assert!(
        metric("gateway_active_connections{listener=\"http\"}").ends_with(" 2"),
        "{}",
        metric("gateway_active_connections")
    );
    assert!(
        metric("gateway_upstream_server_in_flight{").ends_with(" 2"),
        "{}",
        metric("gateway_upstream_server_in_flight")
    );
    // A third connection from the same address is refused while both tunnels are open.
    let mut third = TcpStream::connect(gw.addr("http")).await.unwrap();
    let _ = third.write_all(WS_REQUEST.as_bytes()).await;
    let (got, closed) = read_until_closed(&mut third, STEP).await;
    assert!(closed && got.is_empty(), "{got:?}");

    // A tunnel that ends gives its slots back.
    let mut first = tunnels.remove(0);
    first.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(STEP, first.read_to_end(&mut rest)).await;
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        let mut tcp = TcpStream::connect(gw.addr("http")).await.unwrap();
        tcp.write_all(WS_REQUEST.as_bytes()).await.unwrap();
        let (head, _) = read_until_closed(&mut tcp, Duration::from_millis(300)).await;
        if status_of(&head) == 101 {
            reopened = Some(tcp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        reopened.is_some(),
        "no slot came back after a tunnel closed"
    );
}

/// A tunnel in which nothing moves either way for the upstream's `read_timeout` (here
/// 400 ms) is closed, as nginx closes a quiet WebSocket; one that keeps talking stays open.
#[tokio::test]
async fn quiet_websocket_is_closed_after_read_timeout() {
    let (up, _) = websocket_echo_upstream().await;
    let gw = TestGateway::start(&simple_yaml(up, "    read_timeout: 400ms", "")).await;
    let mut tcp = TcpStream::connect(gw.addr("http")).await.unwrap();
    tcp.write_all(WS_REQUEST.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp, STEP).await;
    assert_eq!(status_of(&head), 101, "{head}");
    // Talking every 150 ms for 1.5 s, well past read_timeout: every echo comes back.
    for _ in 0..10 {
        tcp.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        tokio::time::timeout(STEP, tcp.read_exact(&mut echoed))
            .await
            .expect("the tunnel closed while in use")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Then silence: closed after one to two read_timeouts.
    let start = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
        .await
        .expect("a quiet tunnel stayed open")
        .ok();
    let took = start.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2500),
        "closed after {took:?}"
    );
}

// 7. Upstream dies mid-response.

/// A raw upstream announcing a 100000-byte body, sending 10 bytes of it and closing.
async fn truncating_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                read_head(&mut stream, STEP).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

fn truncation_yaml(ca: &TestCa, broken: SocketAddr, healthy: SocketAddr) -> String {
    let (c, k, _) = ca.issue("a", &["a.test"]);
    tls_yaml(
        broken,
        &[(c, k)],
        "",
        &format!("  ok: {{ servers: [\"{healthy}\"] }}"),
        "  - match: { path_prefix: /ok }\n    upstream: ok\n  \
         - match: { path_prefix: / }\n    upstream: app\n",
    )
}

#[tokio::test]
async fn truncated_upstream_body_is_not_completed_over_http1() {
    let ca = TestCa::new();
    let healthy = TestUpstream::echo().await;
    let gw = TestGateway::start(&truncation_yaml(
        &ca,
        truncating_upstream().await,
        healthy.addr,
    ))
    .await;

    // Keep-alive client: the gateway must close the connection, or the client would wait
    // forever for the other 99990 bytes.
    let tcp = TcpStream::connect(gw.addr("http")).await.unwrap();
    let res = exchange_on_stream(tcp, "GET /big HTTP/1.1\r\nHost: x.test\r\n\r\n", STEP).await;
    assert_eq!(status_of(&res), 200, "{res}");
    assert!(
        res.to_ascii_lowercase().contains("content-length: 100000"),
        "{res}"
    );
    let body = res.split_once("\r\n\r\n").unwrap().1;
    assert!(body.len() < 100_000, "{} body bytes", body.len());
    assert!("0123456789".starts_with(body), "{body:?}");

    let res = reqwest::Client::new()
        .get(gw.url("http", "/big"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = tokio::time::timeout(STEP, res.bytes()).await.unwrap();
    assert!(body.is_err(), "body completed: {body:?}");
}

#[tokio::test]
async fn truncated_upstream_body_resets_the_h2_stream() {
    let ca = TestCa::new();
    let healthy = TestUpstream::echo().await;
    let gw = TestGateway::start(&truncation_yaml(
        &ca,
        truncating_upstream().await,
        healthy.addr,
    ))
    .await;
    let addr = gw.addr("https");
    let client = ca.client(&[("a.test", addr)], false);
    let res = client
        .get(format!("https://a.test:{}/big", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let body = tokio::time::timeout(STEP, res.bytes()).await.unwrap();
    assert!(body.is_err(), "body completed: {body:?}");

    // Only the stream was reset: the same client (and connection) still works.
    let res = client
        .get(format!("https://a.test:{}/ok", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(res.text().await.unwrap(), "GET /ok");
}

// 8. Self-signed development certificate.

#[tokio::test]
async fn self_signed_if_missing_generates_a_usable_localhost_certificate() {
    let up = TestUpstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
listeners:
  - name: https
    bind: "127.0.0.1:0"
    tls:
      certificates:
        - cert: certs/dev.crt
          key: certs/dev.key
          self_signed_if_missing: true
upstreams:
  app: {{ servers: ["{}"] }}
routes:
  - match: {{ path_prefix: / }}
    upstream: app
logging: {{ access_log: false }}
"#,
        up.addr
    );
    let cert_path = dir.path().join("certs/dev.crt");
    let key_path = dir.path().join("certs/dev.key");
    assert!(!cert_path.exists() && !key_path.exists());
    let gw = TestGateway::start_in(&yaml, dir.path()).await;
    let addr = gw.local_addr("https").unwrap();
    let pem = std::fs::read(&cert_path).expect("certificate was not written");
    assert!(key_path.exists(), "key was not written");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key is readable by others: {mode:o}");
    }

    let trusting = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .resolve("localhost", addr)
        .timeout(STEP)
        .build()
        .unwrap();
    let res = trusting
        .get(format!("https://localhost:{}/dev", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "GET /dev");
    assert_eq!(up.last().headers["x-forwarded-proto"], "https");

    // A client that does not trust the generated certificate is refused.
    let other_ca = TestCa::new();
    let err = other_ca
        .client(&[("localhost", addr)], false)
        .get(format!("https://localhost:{}/dev", addr.port()))
        .send()
        .await
        .expect_err("untrusted self-signed certificate accepted");
    assert!(err.is_connect(), "{err:?}");

    // A second start keeps the existing pair instead of generating a new one.
    let key_before = std::fs::read(&key_path).unwrap();
    let gw2 = TestGateway::start_in(&yaml, dir.path()).await;
    assert_eq!(std::fs::read(&cert_path).unwrap(), pem);
    assert_eq!(std::fs::read(&key_path).unwrap(), key_before);
    let res = trusting
        .get(format!(
            "https://localhost:{}/again",
            gw2.local_addr("https").unwrap().port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// After ALPN settled on http/1.1 the connection must speak HTTP/1.1 (RFC 7301 §3.1), and
/// `alpn: [http/1.1]` must really keep h2 off (hyper-util's auto builder would sniff the h2
/// preface whatever ALPN chose, so TLS connections use hyper's per-version builders).
#[tokio::test]
async fn h2_preface_on_an_http1_alpn_connection_is_refused() {
    let ca = TestCa::new();
    let (c, k, _) = ca.issue("a", &["a.test"]);
    let up = TestUpstream::echo().await;
    let yaml = tls_yaml(up.addr, &[(c, k)], "      alpn: [http/1.1]", "", "");
    let gw = TestGateway::start(&yaml).await;
    let tls = tls_connect(
        gw.addr("https"),
        ca.rustls_client(&[b"http/1.1"]),
        "a.test",
        STEP,
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let outcome = tokio::time::timeout(STEP, async move {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = Request::get("https://a.test/h2")
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.map(|res| res.status())
    })
    .await
    .expect("h2 attempt hung");
    assert!(outcome.is_err(), "h2 was served: {outcome:?}");
    assert_eq!(up.hits(), 0);
}

/// HTTP/2 has no header timer of its own: a client that stops part-way through the preface,
/// or sends the preface and SETTINGS but never a request, must still lose its connection
/// after `header_read_timeout` (here 300 ms; idle_timeout is a minute).
#[tokio::test]
async fn h2_connection_without_a_request_is_closed_after_header_read_timeout() {
    let (ca, _up, gw) =
        a_test_gateway("shutdown_grace: 1s\n  header_read_timeout: 300ms\n  idle_timeout: 60s")
            .await;
    let partial = &H2_PREFACE[..10];
    let whole = [H2_PREFACE, &h2_frame(H2_SETTINGS, 0, 0, &[])].concat();
    for sent in [partial, &whole[..]] {
        let mut tls = tls_connect(gw.addr("https"), ca.rustls_client(&[b"h2"]), "a.test", STEP)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let start = std::time::Instant::now();
        tls.write_all(sent).await.unwrap();
        tls.flush().await.unwrap();
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // the server's SETTINGS, then GOAWAY
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "still open 5 s after sending {} bytes",
            sent.len()
        );
        let took = start.elapsed();
        assert!(took < Duration::from_millis(2500), "closed after {took:?}");
    }
    // A client that does send a request in time is served.
    let client = ca.client(&[("a.test", gw.addr("https"))], false);
    let res = client
        .get(format!("https://a.test:{}/ok", gw.addr("https").port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_2);
}
