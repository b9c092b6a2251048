//! Proxying over real sockets: headers, routing, path normalisation, upstream failures.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn forwards_with_gateway_headers_and_request_id() {
    let up = TestUpstream::echo().await;
    let gw = TestGateway::start(&simple_yaml(up.addr, "", "")).await;
    let client = reqwest::Client::new();
    let res = client
        .get(gw.url("http", "/hello?x=1"))
        .header("X-Forwarded-For", "6.6.6.6")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "evil.test")
        .header("Connection", "X-Forwarded-For, X-Drop-Me")
        .header("X-Drop-Me", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(res.text().await.unwrap(), "GET /hello?x=1");

    let seen = up.last();
    let addr = gw.addr("http");
    assert_eq!(seen.headers["host"], addr.to_string().as_str());
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], addr.to_string().as_str());
    assert_eq!(seen.headers["x-request-id"], id.as_str());
    assert!(seen.headers.get("x-drop-me").is_none());
    assert!(seen.headers.get("connection").is_none());
    // The gateway's values replace the client's: never two of a name.
    for name in [
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    ] {
        assert_eq!(seen.headers.get_all(name).iter().count(), 1, "{name}");
    }
}

#[tokio::test]
async fn client_request_id_is_kept_when_well_formed() {
    let up = TestUpstream::echo().await;
    let gw = TestGateway::start(&simple_yaml(up.addr, "", "")).await;
    let client = reqwest::Client::new();
    let res = client
        .get(gw.url("http", "/"))
        .header("X-Request-Id", "trace-123.abc_DEF")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-123.abc_DEF");
    assert_eq!(up.last().headers["x-request-id"], "trace-123.abc_DEF");
    let res = client
        .get(gw.url("http", "/"))
        .header("X-Request-Id", "has space")
        .send()
        .await
        .unwrap();
    assert_ne!(res.headers()["x-request-id"], "has space");
}

/// An HTTP/1.1 client and an HTTP/2 (prior knowledge) one, for plain-HTTP listeners.
fn h1_and_h2_clients() -> [(reqwest::Client, http::Version); 2] {
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    [
        (reqwest::Client::new(), http::Version::HTTP_11),
        (h2, http::Version::HTTP_2),
    ]
}

#[tokio::test]
async fn upstream_request_id_is_replaced_by_the_gateways() {
    // An upstream's own X-Request-Id (two of them, even) never reaches the client: the
    // response carries exactly one, the id the upstream was sent, over HTTP/1.1 and HTTP/2.
    let up = TestUpstream::start(|_| async {
        http::Response::builder()
            .header("X-Request-Id", "made-upstream")
            .header("X-Request-Id", "made-upstream-2")
            .header("X-Kept", "1")
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let gw = TestGateway::start(&simple_yaml(up.addr, "", "")).await;
    for (client, version) in h1_and_h2_clients() {
        let res = client.get(gw.url("http", "/")).send().await.unwrap();
        assert_eq!(res.version(), version);
        let ids: Vec<_> = res.headers().get_all("x-request-id").iter().collect();
        assert_eq!(ids.len(), 1, "{version:?}: {ids:?}");
        assert_eq!(ids[0], up.last().headers["x-request-id"]);
        assert_eq!(res.headers()["x-kept"], "1");
        assert_eq!(res.text().await.unwrap(), "ok");
    }
}

/// An upstream that answers every request on a connection with `response` as written.
async fn raw_upstream(response: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if stream.write_all(response).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// An upstream that stops sending mid-body is given `read_timeout` (here 300 ms; nginx's
/// `proxy_read_timeout`), then the client's response is cut off: an HTTP/1.1 client sees the
/// connection close short of `Content-Length`, an HTTP/2 one a reset stream; neither waits
/// for ever, nor sees a complete body.
#[tokio::test]
async fn upstream_stalling_mid_body_is_cut_off_after_read_timeout() {
    let addr = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
    let yaml = simple_yaml(addr, "    read_timeout: 300ms", "");
    let gw = TestGateway::start(&yaml).await;
    for (client, version) in h1_and_h2_clients() {
        let res = client.get(gw.url("http", "/")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{version:?}");
        let start = std::time::Instant::now();
        let body = tokio::time::timeout(Duration::from_secs(5), res.bytes()).await;
        let took = start.elapsed();
        let Ok(body) = body else {
            panic!("{version:?}: body still open after {took:?}")
        };
        assert!(body.is_err(), "{version:?}: a complete body: {body:?}");
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(3),
            "{version:?}: cut off after {took:?}"
        );
    }
}

#[tokio::test]
async fn hop_by_hop_response_fields_never_reach_the_client() {
    // Over HTTP/1.1 the upstream's fields pass through as bytes, over HTTP/2 through a
    // header map: both drop the same fields and keep the same ones.
    let up = raw_upstream(
        b"HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-Secret: 1\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
          Trailer: X-T\r\nUpgrade: h2c\r\nX-Request-Id: upstream\r\nSet-Cookie: a=1\r\n\
          Set-Cookie: b=2\r\nDate: Mon, 23 Nov 2026 00:00:00 GMT\r\nServer: raw\r\n\
          Content-Length: 2\r\n\r\nok",
    )
    .await;
    let gw = TestGateway::start(&simple_yaml(up, "", "")).await;
    for (client, version) in h1_and_h2_clients() {
        for _ in 0..2 {
            let res = client.get(gw.url("http", "/")).send().await.unwrap();
            assert_eq!(res.version(), version);
            let h = res.headers();
            for gone in [
                "x-secret",
                "keep-alive",
                "proxy-connection",
                "te",
                "trailer",
                "upgrade",
                "transfer-encoding",
            ] {
                assert!(!h.contains_key(gone), "{version:?}: {gone} passed");
            }
            assert_ne!(h["x-request-id"], "upstream");
            assert_eq!(h.get_all("x-request-id").iter().count(), 1);
            let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
            assert_eq!(cookies, ["a=1", "b=2"], "{version:?}");
            assert_eq!(h.get_all("date").iter().count(), 1, "{version:?}");
            assert_eq!(h["date"], "Mon, 23 Nov 2026 00:00:00 GMT");
            assert_eq!(h["server"], "raw");
            assert_eq!(res.text().await.unwrap(), "ok");
        }
    }
}

#[tokio::test]
async fn trusted_proxy_forwarded_for_is_appended() {
    let up = TestUpstream::echo().await;
    let yaml = simple_yaml(up.addr, "", "  trusted_proxies: [127.0.0.0/8]");
    let gw = TestGateway::start(&yaml).await;
    reqwest::Client::new()
        .get(gw.url("http", "/"))
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(
        up.last().headers["x-forwarded-for"],
        "203.0.113.9, 127.0.0.1"
    );
}

fn routing_yaml(api: std::net::SocketAddr, other: std::net::SocketAddr) -> String {
    format!(
        r#"
listeners:
  - name: http
    bind: "127.0.0.1:0"
upstreams:
  api: {{ servers: ["{api}"] }}
  other: {{ servers: ["{other}"] }}
routes:
  - name: admin
    match: {{ host: admin.test, path_prefix: / }}
    upstream: other
  - name: api
    match: {{ path_prefix: /api, methods: [GET, POST] }}
    upstream: api
  - name: wild
    match: {{ host: "*.apps.test", path_prefix: /app }}
    upstream: other
logging: {{ access_log: false }}
"#
    )
}

#[tokio::test]
async fn routes_by_host_path_and_method() {
    let api = TestUpstream::echo().await;
    let other = TestUpstream::echo().await;
    let gw = TestGateway::start(&routing_yaml(api.addr, other.addr)).await;
    let addr = gw.addr("http");
    let get = |path: &str, host: &str| {
        raw_exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .into_bytes(),
            Duration::from_secs(5),
        )
    };
    assert_eq!(status_of(&get("/api/users", "x.test").await), 200);
    assert_eq!(api.hits(), 1);
    // Segment-aware: /apix is not under /api.
    assert_eq!(status_of(&get("/apix", "x.test").await), 404);
    // Host routes: exact (case and port ignored) and wildcard.
    assert_eq!(status_of(&get("/api/users", "ADMIN.test:8080").await), 200);
    assert_eq!(other.hits(), 1);
    assert_eq!(status_of(&get("/app/1", "a.b.apps.test").await), 200);
    assert_eq!(other.hits(), 2);
    assert_eq!(status_of(&get("/app/1", "apps.test").await), 404);
    assert_eq!(api.hits(), 1);

    // Method not allowed on the first matching route: 405 with Allow, no fall-through.
    let res = raw_exchange(
        addr,
        b"DELETE /api/x HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n".to_vec(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&res), 405, "{res}");
    assert!(
        res.to_ascii_lowercase().contains("allow: get, post"),
        "{res}"
    );
    assert!(
        res.contains(r#"{"error":"method_not_allowed","status":405}"#),
        "{res}"
    );
    assert_eq!(api.hits(), 1);
}

#[tokio::test]
async fn paths_are_normalised_before_routing_and_forwarding() {
    let api = TestUpstream::echo().await;
    let other = TestUpstream::echo().await;
    let gw = TestGateway::start(&routing_yaml(api.addr, other.addr)).await;
    let addr = gw.addr("http");
    for (raw_path, forwarded) in [
        ("/%61pi/x", "/api/x"),
        ("/x/../api/", "/api/"),
        ("/api/./a/%7Euser", "/api/a/~user"),
        ("/api//double", "/api//double"),
    ] {
        let res = raw_exchange(
            addr,
            format!("GET {raw_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status_of(&res), 200, "{raw_path}: {res}");
        assert_eq!(api.last().uri.path(), forwarded, "{raw_path}");
    }
    let before = api.hits();
    for bad in [
        "/api/a%2Fb",
        "/api/a%2fb",
        "/api/a%5Cb",
        "/api/a%00b",
        "/api/%zz",
    ] {
        let res = raw_exchange(
            addr,
            format!("GET {bad} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status_of(&res), 400, "{bad}: {res}");
    }
    assert_eq!(api.hits(), before, "no bad path reached the upstream");
}

#[tokio::test]
async fn connection_refused_is_502() {
    let dead = closed_port().await;
    let gw = TestGateway::start(&simple_yaml(dead, "", "")).await;
    let res = reqwest::get(gw.url("http", "/")).await.unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(
        res.text().await.unwrap(),
        r#"{"error":"upstream_connect_failed","status":502}"#
    );
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let up = TestUpstream::start(|_| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        http::Response::new(full("late"))
    })
    .await;
    let yaml =
        simple_yaml(up.addr, "", "").replace("response_timeout: 5s", "response_timeout: 300ms");
    let gw = TestGateway::start(&yaml).await;
    let started = std::time::Instant::now();
    let res = reqwest::get(gw.url("http", "/")).await.unwrap();
    assert_eq!(res.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_server() {
    let up = TestUpstream::echo().await;
    let dead = closed_port().await;
    let yaml = format!(
        r#"
listeners: [{{ name: http, bind: "127.0.0.1:0" }}]
upstreams:
  app: {{ servers: ["{dead}", "{live}"], retries: 1 }}
routes: [{{ match: {{ path_prefix: / }}, upstream: app }}]
logging: {{ access_log: false }}
"#,
        live = up.addr
    );
    let gw = TestGateway::start(&yaml).await;
    let client = reqwest::Client::new();
    for _ in 0..6 {
        let res = client
            .post(gw.url("http", "/x"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(up.hits(), 6);
    assert_eq!(up.last().body, "payload");
}

/// HTTP/2 clients send each cookie as its own `cookie` field; the upstream (HTTP/1.1) gets
/// one `Cookie` joined with `; ` (RFC 9113 §8.2.3), not repeated fields a WSGI server would
/// join with `,` (Django then reads `sessionid` as `abc,csrftoken=xyz`). A request without
/// `:authority` or `host` is 400, as HTTP/1.1 without `Host` is.
#[tokio::test]
async fn http2_cookie_crumbs_are_joined_and_a_missing_authority_is_400() {
    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    let up = TestUpstream::echo().await;
    let gw = TestGateway::start(&simple_yaml(up.addr, "", "")).await;
    let mut send = h2c(gw.addr("http")).await;
    let mut req = http::Request::get(format!("http://{}/c", gw.addr("http")))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    for crumb in ["sessionid=abc", "csrftoken=xyz", "theme=dark"] {
        req.headers_mut()
            .append(http::header::COOKIE, crumb.parse().unwrap());
    }
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let seen = up.last();
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["sessionid=abc; csrftoken=xyz; theme=dark"]);

    // `:method GET`, `:scheme http`, `:path /` and nothing else.
    let mut raw = TcpStream::connect(gw.addr("http")).await.unwrap();
    let mut hello = H2_PREFACE.to_vec();
    hello.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    hello.extend(h2_frame(
        H2_HEADERS,
        H2_END_HEADERS | H2_END_STREAM,
        1,
        &[0x82, 0x86, 0x84],
    ));
    raw.write_all(&hello).await.unwrap();
    let mut got = Vec::new();
    assert!(h2_frame_arrives(&mut raw, &mut got, H2_HEADERS, 1).await);
    let (frames, _) = h2_parse(&got);
    let (_, _, _, block) = frames
        .iter()
        .find(|&&(kind, _, stream, _)| kind == H2_HEADERS && stream == 1)
        .unwrap();
    assert_eq!(
        block.first(),
        Some(&0x8c),
        "`:status 400` (static index 12)"
    );
    assert_eq!(up.hits(), 1);
}

/// What HTTP/2 clients are strict about: no DATA on a HEAD answer (the gateway's own 404
/// JSON went out as DATA, and nghttp2 dropped the whole connection), one `content-length`
/// (an upstream's repeated `Content-Length: 2` went out twice), none on a 204. HTTP/1.1
/// clients get the same: one length, none on a 204.
#[tokio::test]
async fn http2_clients_get_clean_heads_and_lengths() {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::net::TcpStream;

    let twice =
        raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok").await;
    let no_content = raw_upstream(b"HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n").await;
    let yaml = format!(
        r#"
listeners:
  - {{ name: http, bind: "127.0.0.1:0" }}
upstreams:
  twice: {{ servers: ["{twice}"] }}
  none: {{ servers: ["{no_content}"] }}
routes:
  - {{ match: {{ path_prefix: /twice }}, upstream: twice }}
  - {{ match: {{ path_prefix: /none }}, upstream: none }}
logging: {{ access_log: false }}
"#
    );
    let gw = TestGateway::start(&yaml).await;
    let mut send = h2c(gw.addr("http")).await;
    let base = format!("http://{}", gw.addr("http"));
    let mut ask = |method: http::Method, path: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let sent = send.send_request(req);
        async move {
            let res = sent.await.expect("a clean HTTP/2 response");
            let (parts, body) = res.into_parts();
            let body = body.collect().await.expect("a clean body").to_bytes();
            (parts, body)
        }
    };
    // HEAD of the gateway's own 404: headers only, and the connection serves on.
    let (parts, body) = ask(http::Method::HEAD, "/missing").await;
    assert_eq!(parts.status, 404);
    assert!(body.is_empty());
    assert!(parts.headers.contains_key("content-length"));
    let (parts, body) = ask(http::Method::GET, "/twice").await;
    assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"ok"[..]));
    assert_eq!(parts.headers.get_all("content-length").iter().count(), 1);
    let (parts, body) = ask(http::Method::GET, "/none").await;
    assert_eq!(parts.status, 204);
    assert!(body.is_empty());
    assert!(!parts.headers.contains_key("content-length"));

    // HTTP/1.1: one length, none on the 204.
    for (path, lengths) in [("/twice", 1), ("/none", 0)] {
        let tcp = TcpStream::connect(gw.addr("http")).await.unwrap();
        let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let res = exchange_on_stream(tcp, raw, Duration::from_secs(3)).await;
        let head = res.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert_eq!(head.matches("content-length:").count(), lengths, "{res}");
    }
}

/// An HTTP/2 client connection (prior knowledge, plain TCP) to `addr`.
async fn h2c(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// A client that closes its connection while its request waits on the upstream abandons the
/// request at once (nginx's 499), instead of holding the server's in-flight slot and the
/// upstream connection until `response_timeout` (this session's audit: 30 s of
/// `gateway_upstream_server_in_flight` 4 after four clients had gone). Pipelined bytes do not
/// count as going away.
#[tokio::test]
async fn a_client_that_goes_away_abandons_its_request() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    let upstream_closed = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let closed = upstream_closed.clone();
    tokio::spawn(async move {
        // Reads the request, never answers, and notes when the gateway closes the connection.
        while let Ok((mut s, _)) = listener.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let yaml =
        simple_yaml(up_addr, "", "").replace("response_timeout: 5s", "response_timeout: 30s");
    let gw = TestGateway::start(&yaml).await;
    let in_flight = || gw.gateway.state().upstreams[0].servers[0].state.in_flight();
    let mut client = tokio::net::TcpStream::connect(gw.addr("http"))
        .await
        .unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\nGET /next HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let waited = std::time::Instant::now();
    while in_flight() == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The pipelined second request is not a departure: still in flight a while later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(in_flight(), 1);
    drop(client);
    let gone = std::time::Instant::now();
    while in_flight() != 0 || upstream_closed.load(Ordering::SeqCst) == 0 {
        assert!(
            gone.elapsed() < Duration::from_secs(3),
            "still in flight {} / upstream connection open after the client left",
            in_flight()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
