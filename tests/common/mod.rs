//! Integration-test helpers: a gateway started from YAML on 127.0.0.1:0, in-test upstream
//! servers that record what they see, a throwaway CA (rcgen) and clients that trust it; raw
//! HTTP/1.1 over plain and TLS sockets in `raw`, raw HTTP/2 frames in `h2`.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gateway::server::Gateway;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

pub fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A throwaway certificate authority and the leaf certificates it signs, as PEM files.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    pub ca_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gateway test CA");
        let ca_cert = params.self_signed(&ca_key).unwrap();
        TestCa {
            dir: tempfile::tempdir().unwrap(),
            ca_pem: ca_cert.pem(),
            ca_cert,
            ca_key,
        }
    }

    /// Issues a leaf for `names`; returns (cert path, key path, cert DER).
    pub fn issue(&self, file_stem: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let cert_path = self.dir.path().join(format!("{file_stem}.crt"));
        let key_path = self.dir.path().join(format!("{file_stem}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path, cert.der().to_vec())
    }

    /// A reqwest client trusting this CA; `resolve` maps names to the gateway's address.
    pub fn client(&self, resolve: &[(&str, SocketAddr)], http1_only: bool) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20));
        for (name, addr) in resolve {
            builder = builder.resolve(name, *addr);
        }
        if http1_only {
            builder = builder.http1_only();
        }
        builder.build().unwrap()
    }

    /// A rustls client config trusting this CA, offering `alpn`.
    pub fn rustls_client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls_pemfile::certs(&mut self.ca_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        roots.add(der).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A running gateway and the folder its config lives in.
pub struct TestGateway {
    pub gateway: Gateway,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts a gateway from YAML; relative paths resolve against a fresh temp folder.
    pub async fn start(yaml: &str) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let gateway = Self::start_in(yaml, dir.path()).await;
        TestGateway { gateway, dir }
    }

    pub async fn start_in(yaml: &str, dir: &Path) -> Gateway {
        let settings = match gateway::config::load_str(yaml, dir, dir.join("gateway.yaml")) {
            Ok(s) => s,
            Err(e) => panic!("test config is invalid:\n{e}\n---\n{yaml}"),
        };
        Gateway::start(settings).await.unwrap()
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.gateway
            .local_addr(listener)
            .unwrap_or_else(|| panic!("no listener {listener}"))
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{}", self.addr(listener), path)
    }
}

/// What an in-test upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type Handler =
    Arc<dyn Fn(Seen) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>> + Send + Sync>;

/// An HTTP/1.1 upstream server on 127.0.0.1:0 that records every request.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub hits: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestUpstream {
    /// Answers 200 with `upstream <addr>` as body.
    pub async fn echo() -> TestUpstream {
        Self::start(|seen: Seen| async move {
            let body = format!("{} {}", seen.method, seen.uri);
            Response::new(full(body))
        })
        .await
    }

    /// Answers with whatever `f` returns for the recorded request (body read in full first).
    pub async fn start<F, Fut>(f: F) -> TestUpstream
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |seen| Box::pin(f(seen)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, handler).await
    }

    async fn serve(listener: TcpListener, handler: Handler) -> TestUpstream {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen2, hits2, conns2) = (seen.clone(), hits.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns2.fetch_add(1, Ordering::SeqCst);
                let (handler, seen, hits) = (handler.clone(), seen2.clone(), hits2.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (handler, seen, hits) = (handler.clone(), seen.clone(), hits.clone());
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let record = Seen {
                                method: parts.method,
                                uri: parts.uri,
                                headers: parts.headers,
                                body,
                            };
                            seen.lock().unwrap().push(record.clone());
                            Ok::<_, Infallible>(handler(record).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TestUpstream {
            addr,
            seen,
            hits,
            connections,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address on which nothing listens (bound, then closed).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// A minimal YAML for one plain listener `http` and one upstream `app` serving every path.
pub fn simple_yaml(upstream: SocketAddr, extraserver: &str, extra_server: &str) -> String {
    format!(
        r#"
server:
  shutdown_grace: 5s
{extra_server}
listeners:
  - name: http
    bind: "127.0.0.1:0"
upstreams:
  app:
    servers: ["{upstream}"]
    connect_timeout: 1s
    response_timeout: 5s
{extraserver}
routes:
  - match: {{ path_prefix: / }}
    upstream: app
logging:
  access_log: false
"#
    )
}

mod django;
mod h2;
mod jwt;
mod killable;
mod process;
mod raw;
#[allow(unused_imports)] // only the Django tests use these
pub use django::{django_app_dir, django_stack, Gunicorn};
#[allow(unused_imports)] // only the raw HTTP/2 tests use these
pub use h2::*;
#[allow(unused_imports)] // not every test binary uses the JWT helpers
pub use jwt::*;
#[allow(unused_imports)] // only the balance tests kill servers
pub use killable::{serve_until_killed, Killable};
#[allow(unused_imports)] // only the tests that run the binary use these
pub use process::*;
#[allow(unused_imports)] // only the tests that speak HTTP over raw sockets use these
pub use raw::*;
