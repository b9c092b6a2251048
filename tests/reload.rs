//! Hot reload over real sockets: a route change under concurrent load without a failed
//! request, a broken config keeping the old one, a renewed certificate reaching new TLS
//! handshakes while open connections keep theirs, and listeners added, removed, renamed (under
//! load, without a dropped connection) and moved by a reload.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Upper bound for any single network step in these tests.
const STEP: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// A TLS listener entry for `listeners:` serving `cert`/`key`, with `extra` lines under `tls:`.
fn tls_listener(name: &str, bind: &str, cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "  - name: {name}\n    bind: \"{bind}\"\n    tls:\n      certificates:\n        - {{ cert: {:?}, key: {:?} }}\n{extra}",
        cert.display().to_string(),
        key.display().to_string()
    )
}

fn plain_listener(name: &str, bind: &str) -> String {
    format!("  - name: {name}\n    bind: \"{bind}\"\n")
}

/// A whole config: `listeners` (entries), upstream `app`, any `extra_upstreams`, then
/// `routes` (entries) before a catch-all route to `app`.
fn config(listeners: &str, app: SocketAddr, extra_upstreams: &str, routes: &str) -> String {
    format!(
        r#"server:
  shutdown_grace: 5s
listeners:
{listeners}upstreams:
  app:
    servers: ["{app}"]
    connect_timeout: 1s
    response_timeout: 5s
{extra_upstreams}routes:
{routes}  - match: {{ path_prefix: / }}
    upstream: app
logging:
  access_log: false
"#
    )
}

/// Starts a gateway from `yaml`, also written to the file a reload re-reads.
async fn start(yaml: &str) -> TestGateway {
    let gw = TestGateway::start(yaml).await;
    std::fs::write(gw.dir.path().join("gateway.yaml"), yaml).unwrap();
    gw
}

/// Writes `yaml` over the config file and reloads it, as SIGHUP and `POST /reload` do.
async fn reload(gw: &TestGateway, yaml: &str) -> Result<(), Vec<String>> {
    std::fs::write(gw.dir.path().join("gateway.yaml"), yaml).unwrap();
    gw.gateway.reload_from_file().await
}

/// The value of `gateway_config_reloads_total{result="<result>"}`.
fn reloads(gw: &TestGateway, result: &str) -> u64 {
    let text = gw.gateway.metrics().encode(false);
    let prefix = format!("gateway_config_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// An upstream answering `ok PATH`, after `delay` for paths under `/slow`.
async fn app_upstream(delay: Duration) -> TestUpstream {
    TestUpstream::start(move |seen: Seen| async move {
        if seen.uri.path().starts_with("/slow") {
            tokio::time::sleep(delay).await;
        }
        Response::new(full(format!("ok {}", seen.uri.path())))
    })
    .await
}

/// An upstream answering `NAME PATH`.
async fn named_upstream(name: &'static str) -> TestUpstream {
    TestUpstream::start(move |seen: Seen| async move {
        Response::new(full(format!("{name} {}", seen.uri.path())))
    })
    .await
}

/// An HTTP/1.1 keep-alive connection over `io`, driven by a background task.
async fn h1<I>(io: I) -> SendRequest<Empty<Bytes>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends `GET path` on an open connection; status and body.
async fn send(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> hyper::Result<(u16, String)> {
    sender.ready().await?;
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let res = sender.send_request(req).await?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One request on a fresh plain connection.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut sender = h1(TcpStream::connect(addr).await.unwrap()).await;
    tokio::time::timeout(STEP, send(&mut sender, path))
        .await
        .expect("request hung")
        .unwrap()
}

/// [`tls_connect`] for `localhost`, trusting `ca`, offering `alpn`.
async fn tls_localhost(ca: &TestCa, addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    tls_connect(addr, ca.rustls_client(alpn), "localhost", STEP)
        .await
        .unwrap()
}

/// Which of the `known` leaf certificates (label, DER) the server presented on `tls`.
fn served(tls: &TlsStream<TcpStream>, known: &[(&'static str, &[u8])]) -> &'static str {
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].as_ref();
    known
        .iter()
        .find(|(_, der)| *der == leaf)
        .map_or("an unknown certificate", |(label, _)| label)
}

// ---------------------------------------------------------------------------------------------
// 1. reload under load
// ---------------------------------------------------------------------------------------------

const LOAD_REQUESTS: usize = 1_500;
const LOAD_CLIENTS: usize = 8;
const LOAD_DEADLINE: Duration = Duration::from_secs(60);
const LOAD_RELOADS: usize = 6;

/// A client for the load: HTTP or HTTPS (h2 by ALPN), pooled or a new connection (and TLS
/// handshake) per request.
fn load_client(ca: &TestCa, https: SocketAddr, pooled: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap())
        .resolve("localhost", https)
        .timeout(Duration::from_secs(10));
    if !pooled {
        builder = builder.pool_max_idle_per_host(0);
    }
    builder.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_fails_no_request() {
    let ca = TestCa::new();
    let (cert, key, _) = ca.issue("site", &["localhost"]);
    let app = app_upstream(Duration::from_secs(1)).await;
    let fresh = named_upstream("fresh").await;
    let listeners = format!(
        "{}{}",
        plain_listener("http", "127.0.0.1:0"),
        tls_listener("https", "127.0.0.1:0", &cert, &key, "")
    );
    let v1 = config(&listeners, app.addr, "", "");
    // v2: a new route to a new upstream, and an extra listener.
    let v2 = config(
        &format!("{listeners}{}", plain_listener("extra", "127.0.0.1:0")),
        app.addr,
        &format!("  fresh:\n    servers: [\"{}\"]\n", fresh.addr),
        "  - match: { path_prefix: /fresh/ }\n    upstream: fresh\n",
    );
    let gw = start(&v1).await;
    let (http, https) = (gw.addr("http"), gw.addr("https"));
    assert_eq!(get(http, "/fresh/x").await, (200, "ok /fresh/x".into()));

    // 8 clients: HTTP and HTTPS, keep-alive and a new connection per request.
    let issued = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..LOAD_CLIENTS {
        let (tls, pooled) = (i % 2 == 0, i % 4 < 2);
        let client = load_client(&ca, https, pooled);
        let base = match tls {
            true => format!("https://localhost:{}", https.port()),
            false => format!("http://{http}"),
        };
        let (issued, done, failures) = (issued.clone(), done.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            while issued.fetch_add(1, Ordering::SeqCst) < LOAD_REQUESTS
                && started.elapsed() < LOAD_DEADLINE
            {
                let path = format!("/load/{i}");
                let outcome = match client.get(format!("{base}{path}")).send().await {
                    Ok(res) if res.status() == 200 => match res.text().await {
                        Ok(body) if body == format!("ok {path}") => None,
                        other => Some(format!("{base}: body {other:?}")),
                    },
                    Ok(res) => Some(format!("{base}: status {}", res.status())),
                    Err(e) => Some(format!("{base}: {e:?}")),
                };
                if let Some(failure) = outcome {
                    failures.lock().unwrap().push(failure);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }

    // A slow request in flight across every reload.
    wait_until("the load to start", STEP, || {
        done.load(Ordering::SeqCst) >= 100
    })
    .await;
    let slow_url = format!("http://{http}/slow");
    let slow = tokio::spawn(async move {
        let res = reqwest::get(slow_url).await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    });
    wait_until("the slow request to reach the upstream", STEP, || {
        app.seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.uri.path() == "/slow")
    })
    .await;

    for n in 0..LOAD_RELOADS {
        let at = done.load(Ordering::SeqCst);
        let yaml = if n % 2 == 0 { &v2 } else { &v1 };
        reload(&gw, yaml).await.unwrap();
        assert_eq!(gw.addr("http"), http, "a kept listener was rebound");
        assert_eq!(gw.addr("https"), https, "a kept listener was rebound");
        if n == 0 {
            // The new route answers at once, and so does the added listener.
            assert_eq!(get(http, "/fresh/x").await, (200, "fresh /fresh/x".into()));
            assert_eq!(
                get(gw.addr("extra"), "/fresh/y").await,
                (200, "fresh /fresh/y".into())
            );
            assert!(
                !slow.is_finished(),
                "the slow request ended before the reload"
            );
        }
        wait_until("requests between reloads", STEP, || {
            done.load(Ordering::SeqCst) >= at + 100
        })
        .await;
    }
    assert!(
        done.load(Ordering::SeqCst) < LOAD_REQUESTS,
        "the load ended before the last reload; the test proves less than it claims"
    );
    // The last reload went back to v1: the route is gone again.
    assert_eq!(get(http, "/fresh/x").await, (200, "ok /fresh/x".into()));

    for client in clients {
        client.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert_eq!(
        done.load(Ordering::SeqCst),
        LOAD_REQUESTS,
        "the load hit its deadline"
    );
    assert!(
        failures.is_empty(),
        "{} of {LOAD_REQUESTS} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(slow.await.unwrap(), (200, "ok /slow".into()));
    assert_eq!(reloads(&gw, "success"), LOAD_RELOADS as u64);
    assert_eq!(reloads(&gw, "failure"), 0);
}

// ---------------------------------------------------------------------------------------------
// 2. a broken config keeps the running one
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn broken_config_keeps_the_running_one_and_counts_failures() {
    let ca = TestCa::new();
    let (cert, key, der) = ca.issue("site", &["localhost"]);
    let app = app_upstream(Duration::ZERO).await;
    let fresh = named_upstream("fresh").await;
    let listeners = format!(
        "{}{}",
        plain_listener("http", "127.0.0.1:0"),
        tls_listener("https", "127.0.0.1:0", &cert, &key, "")
    );
    let v1 = config(&listeners, app.addr, "", "");
    let gw = start(&v1).await;
    let (http, https) = (gw.addr("http"), gw.addr("https"));
    let fresh_upstream = format!("  fresh:\n    servers: [\"{}\"]\n", fresh.addr);
    let fresh_route = "  - match: { path_prefix: /fresh/ }\n    upstream: fresh\n";

    // Validation errors: every one is reported.
    let invalid =
        config(&listeners, app.addr, "", fresh_route).replace("server:", "bogus: 1\nserver:");
    let errors = reload(&gw, &invalid).await.unwrap_err();
    assert!(errors.len() >= 2, "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("bogus")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("fresh")), "{errors:?}");

    // An unreadable certificate fails the whole reload, the route change included.
    let broken = ca.dir.path().join("broken.crt");
    std::fs::write(&broken, "not a certificate").unwrap();
    let bad_cert = config(
        &format!(
            "{}{}",
            plain_listener("http", "127.0.0.1:0"),
            tls_listener("https", "127.0.0.1:0", &broken, &key, "")
        ),
        app.addr,
        &fresh_upstream,
        fresh_route,
    );
    let errors = reload(&gw, &bad_cert).await.unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("listeners[1].tls.certificates[0]")),
        "{errors:?}"
    );

    // A listener that cannot bind fails the whole reload: the other new listener is not
    // left bound, the route change is not applied.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spare = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let bad_bind = config(
        &format!(
            "{listeners}{}{}",
            plain_listener("spare", &spare.to_string()),
            plain_listener("taken", &taken.local_addr().unwrap().to_string())
        ),
        app.addr,
        &fresh_upstream,
        fresh_route,
    );
    let errors = reload(&gw, &bad_bind).await.unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("listeners[3] (taken): cannot bind")),
        "{errors:?}"
    );
    assert!(
        refused(spare).await,
        "a failed reload left a listener bound"
    );

    // The running config serves throughout: routes, listeners, certificate.
    assert_eq!(get(http, "/fresh/x").await, (200, "ok /fresh/x".into()));
    let names: Vec<String> = gw.gateway.listeners().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["http", "https"]);
    assert_eq!((gw.addr("http"), gw.addr("https")), (http, https));
    let tls = tls_localhost(&ca, https, &[]).await;
    assert_eq!(
        served(&tls, &[("the running one", &der)]),
        "the running one"
    );
    assert_eq!(fresh.hits(), 0);
    assert_eq!((reloads(&gw, "success"), reloads(&gw, "failure")), (0, 3));

    // And a good reload afterwards goes through.
    let good = config(&listeners, app.addr, &fresh_upstream, fresh_route);
    reload(&gw, &good).await.unwrap();
    assert_eq!(get(http, "/fresh/x").await, (200, "fresh /fresh/x".into()));
    assert_eq!((reloads(&gw, "success"), reloads(&gw, "failure")), (1, 3));
}

// ---------------------------------------------------------------------------------------------
// 3. certificate renewal
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn renewed_certificate_reaches_new_handshakes_while_open_connections_keep_theirs() {
    let ca = TestCa::new();
    let (cert, key, old_der) = ca.issue("site", &["localhost"]);
    // The renewal: same name, new key and serial; copied over the served files later.
    let (new_cert, new_key, new_der) = ca.issue("renewed", &["localhost"]);
    let certs: &[(&str, &[u8])] = &[("old", &old_der), ("new", &new_der)];
    let app = app_upstream(Duration::ZERO).await;
    let yaml = |alpn: &str| {
        config(
            &tls_listener("https", "127.0.0.1:0", &cert, &key, alpn),
            app.addr,
            "",
            "",
        )
    };
    let gw = start(&yaml("")).await;
    let https = gw.addr("https");
    let both: &[&[u8]] = &[b"h2", b"http/1.1"];

    let open = tls_localhost(&ca, https, &[b"http/1.1"]).await;
    assert_eq!(served(&open, certs), "old");
    let mut open = h1(open).await;
    assert_eq!(send(&mut open, "/a").await.unwrap(), (200, "ok /a".into()));

    // Renewed on disk: nothing changes until the reload.
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let before = tls_localhost(&ca, https, both).await;
    assert_eq!(served(&before, certs), "old");

    // Reload with a different ALPN list too: new handshakes get both.
    assert_eq!(before.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    reload(&gw, &yaml("      alpn: [http/1.1]\n"))
        .await
        .unwrap();
    assert_eq!(gw.addr("https"), https, "the listener was rebound");
    let renewed = tls_localhost(&ca, https, both).await;
    assert_eq!(served(&renewed, certs), "new");
    assert_eq!(renewed.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut renewed = h1(renewed).await;
    assert_eq!(
        send(&mut renewed, "/b").await.unwrap(),
        (200, "ok /b".into())
    );

    // The connection opened before the reload carries on with its session.
    assert_eq!(send(&mut open, "/c").await.unwrap(), (200, "ok /c".into()));
    assert_eq!(send(&mut open, "/d").await.unwrap(), (200, "ok /d".into()));

    // A certificate that no longer loads: the reload fails, the renewed one keeps serving.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    reload(&gw, &yaml("")).await.unwrap_err();
    let after = tls_localhost(&ca, https, both).await;
    assert_eq!(served(&after, certs), "new");
    assert_eq!((reloads(&gw, "success"), reloads(&gw, "failure")), (1, 1));
}

// ---------------------------------------------------------------------------------------------
// 4. listeners added, removed, renamed and moved
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_removed_renamed_and_moved_by_reload() {
    let app = app_upstream(Duration::from_secs(1)).await;
    let fixed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let v1 = config(
        &format!(
            "{}{}",
            plain_listener("http", "127.0.0.1:0"),
            plain_listener("old", "127.0.0.1:0")
        ),
        app.addr,
        "",
        "",
    );
    let gw = start(&v1).await;
    let (http, old) = (gw.addr("http"), gw.addr("old"));

    // A keep-alive connection on `old`: one request done, a slow one in flight.
    let mut kept_alive = h1(TcpStream::connect(old).await.unwrap()).await;
    assert_eq!(
        send(&mut kept_alive, "/hello").await.unwrap(),
        (200, "ok /hello".into())
    );
    let in_flight = tokio::spawn(async move {
        let response = send(&mut kept_alive, "/slow").await;
        (response, kept_alive)
    });
    wait_until("the slow request to reach the upstream", STEP, || {
        app.hits() == 2
    })
    .await;

    // v2: `old` removed, `new` added on a fixed port.
    let v2 = config(
        &format!(
            "{}{}",
            plain_listener("http", "127.0.0.1:0"),
            plain_listener("new", &fixed.to_string())
        ),
        app.addr,
        "",
        "",
    );
    reload(&gw, &v2).await.unwrap();
    assert!(refused(old).await, "a removed listener still accepts");
    assert_eq!(gw.gateway.local_addr("old"), None);
    assert_eq!(gw.addr("new"), fixed);
    assert_eq!(get(fixed, "/n").await, (200, "ok /n".into()));
    assert_eq!(gw.addr("http"), http, "a kept listener was rebound");
    assert_eq!(get(http, "/h").await, (200, "ok /h".into()));
    assert!(
        !in_flight.is_finished(),
        "the slow request ended before the reload"
    );

    // The open connection on the removed listener finishes its request, then closes.
    let (response, mut kept_alive) = tokio::time::timeout(STEP, in_flight)
        .await
        .expect("the in-flight request hung")
        .unwrap();
    assert_eq!(response.unwrap(), (200, "ok /slow".into()));
    assert!(
        send(&mut kept_alive, "/again").await.is_err(),
        "a removed listener's connection kept serving after its drain"
    );

    // v3: `new` renamed on the same port (kept under its new name, not bound again), and
    // `http` moved to another port (removed + added).
    let moved = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let v3 = config(
        &format!(
            "{}{}",
            plain_listener("http", &moved.to_string()),
            plain_listener("renamed", &fixed.to_string())
        ),
        app.addr,
        "",
        "",
    );
    reload(&gw, &v3).await.unwrap();
    let listed = gw.gateway.listeners();
    assert_eq!(
        listed,
        [("http".to_string(), moved), ("renamed".to_string(), fixed)]
    );
    assert_eq!(get(fixed, "/r").await, (200, "ok /r".into()));
    assert_eq!(get(moved, "/m").await, (200, "ok /m".into()));
    assert!(
        refused(http).await,
        "the old address of a moved listener still accepts"
    );
}

const RENAMES: usize = 20;
const RENAME_CLIENTS: usize = 4;

/// One request on a fresh connection; any failure (refused, reset, closed without an
/// answer, hung) as text.
async fn try_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        send(&mut sender, path).await.map_err(|e| format!("{e:?}"))
    };
    tokio::time::timeout(STEP, exchange)
        .await
        .unwrap_or_else(|_| Err("hung".into()))
}

/// The audit's rename storm: a listener renamed back and forth on its address while clients
/// open a new connection per request. The socket and accept loops carry over, so no
/// connection may be refused, reset or closed unanswered (it was: each rename drained the
/// connections accepted under the old name, closing those whose request was not read yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renaming_a_listener_under_load_drops_no_connection() {
    let app = app_upstream(Duration::ZERO).await;
    let fixed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let named = |name: &str| config(&plain_listener(name, &fixed.to_string()), app.addr, "", "");
    let gw = start(&named("a")).await;
    assert_eq!(gw.addr("a"), fixed);
    // A keep-alive connection opened under the first name: a rename is no removal, so it
    // keeps serving (a removed listener's connections close after their current request).
    let mut kept_alive = h1(TcpStream::connect(fixed).await.unwrap()).await;
    assert_eq!(
        send(&mut kept_alive, "/first").await.unwrap(),
        (200, "ok /first".into())
    );

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for i in 0..RENAME_CLIENTS {
        let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            let path = format!("/rename/{i}");
            while !stop.load(Ordering::SeqCst) {
                match try_get(fixed, &path).await {
                    Ok((200, body)) if body == format!("ok {path}") => {}
                    other => failures.lock().unwrap().push(format!("{other:?}")),
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    wait_until("the load to start", STEP, || {
        done.load(Ordering::SeqCst) >= 50
    })
    .await;
    for n in 0..RENAMES {
        let at = done.load(Ordering::SeqCst);
        let name = if n % 2 == 0 { "b" } else { "a" };
        reload(&gw, &named(name)).await.unwrap();
        assert_eq!(gw.gateway.listeners(), [(name.to_string(), fixed)]);
        wait_until("requests between renames", STEP, || {
            done.load(Ordering::SeqCst) >= at + 20
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across {RENAMES} renames: {:?}",
        failures.len(),
        done.load(Ordering::SeqCst),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(
        send(&mut kept_alive, "/after").await.unwrap(),
        (200, "ok /after".into())
    );
}

#[tokio::test]
async fn plain_listener_options_follow_reload() {
    let ca = TestCa::new();
    let (cert, key, _) = ca.issue("site", &["localhost"]);
    let app = app_upstream(Duration::ZERO).await;
    let listeners = |redirect: &str| {
        format!(
            "{}{redirect}{}",
            plain_listener("http", "127.0.0.1:0"),
            tls_listener("https", "127.0.0.1:0", &cert, &key, "")
        )
    };
    let gw = start(&config(&listeners(""), app.addr, "", "")).await;
    let (http, https) = (gw.addr("http"), gw.addr("https"));
    let request = "GET /x?y=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of(&raw_exchange(http, request, STEP).await), 200);

    let redirecting = config(&listeners("    redirect_https: true\n"), app.addr, "", "");
    reload(&gw, &redirecting).await.unwrap();
    let res = raw_exchange(http, request, STEP).await;
    assert_eq!(status_of(&res), 308, "{res}");
    let location = format!("location: https://localhost:{}/x?y=1", https.port());
    assert!(res.to_ascii_lowercase().contains(&location), "{res}");
}

/// `trusted_proxies` is asked per request, of the request's configuration: a reload that stops
/// trusting a proxy also stops believing the `X-Forwarded-For` it sends on a keep-alive
/// connection it opened before the reload (the audit's spoofing case).
#[tokio::test]
async fn a_proxy_removed_by_reload_is_not_believed_on_its_open_connection() {
    let app = TestUpstream::echo().await;
    let trusting = config(&plain_listener("http", "127.0.0.1:0"), app.addr, "", "").replace(
        "server:\n",
        "server:\n  trusted_proxies: [\"127.0.0.1/32\"]\n",
    );
    let gw = start(&trusting).await;
    let addr = gw.addr("http");
    let mut sender = h1(TcpStream::connect(addr).await.unwrap()).await;
    let spoofed = || {
        Request::get("/")
            .header("host", "localhost")
            .header("x-forwarded-for", "203.0.113.9")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let forwarded_for = |app: &TestUpstream| {
        app.last().headers["x-forwarded-for"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    sender.ready().await.unwrap();
    let res = sender.send_request(spoofed()).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
    assert_eq!(forwarded_for(&app), "203.0.113.9, 127.0.0.1");

    let distrusting = config(&plain_listener("http", "127.0.0.1:0"), app.addr, "", "");
    reload(&gw, &distrusting).await.unwrap();
    sender.ready().await.unwrap();
    let res = sender.send_request(spoofed()).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
    assert_eq!(
        forwarded_for(&app),
        "127.0.0.1",
        "the same connection, after the reload"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. the binary: SIGHUP with one runtime per worker
// ---------------------------------------------------------------------------------------------

/// A running `gateway run`; killed on drop so a failing test leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_listeners_on_every_worker() {
    let app = app_upstream(Duration::ZERO).await;
    let [http, old, new] = [0; 3].map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    let yaml = |listeners: &str, server: &str| {
        config(listeners, app.addr, "", "").replace(
            "server:\n",
            &format!("server:\n  worker_threads: 3\n{server}"),
        )
    };
    let v1 = yaml(
        &format!(
            "{}{}",
            plain_listener("http", &http.to_string()),
            plain_listener("old", &old.to_string())
        ),
        "",
    );
    std::fs::write(&file, &v1).unwrap();
    let gw = Running::start(&file);
    gw.wait_log("start-up", |log| log.contains("gateway started"))
        .await;
    assert_eq!(get(old, "/o").await, (200, "ok /o".into()));

    // `old` removed, `new` added; a restart-only key changed along the way.
    let v2 = yaml(
        &format!(
            "{}{}",
            plain_listener("http", &http.to_string()),
            plain_listener("new", &new.to_string())
        ),
        "  max_connections: 77\n",
    );
    std::fs::write(&file, &v2).unwrap();
    gw.signal("HUP");
    gw.wait_log("reload", |log| log.contains("configuration reloaded"))
        .await;
    // Fresh connections to the added listener all land.
    for i in 0..30 {
        let path = format!("/n{i}");
        assert_eq!(get(new, &path).await, (200, format!("ok {path}")));
    }
    assert_eq!(get(http, "/h").await, (200, "ok /h".into()));
    assert!(refused(old).await, "a removed listener still accepts");
    let log = gw.stderr();
    assert!(
        log.contains("server.max_connections") && log.contains("restart"),
        "no restart-only warning:\n{log}"
    );

    // Each accept loop logs when it stops: the added listener had one on each of the 3
    // workers, like the one it replaced.
    gw.signal("TERM");
    gw.wait_log("exit", |log| log.contains("drained")).await;
    let loops = |name: &str| {
        let line = format!("stopped accepting listener={name}");
        gw.stderr().lines().filter(|l| l.contains(&line)).count()
    };
    assert_eq!((loops("old"), loops("new"), loops("http")), (3, 3, 3));
}
