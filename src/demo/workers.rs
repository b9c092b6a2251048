//! The demo's upstream workers: tiny HTTP/1.1 servers on 127.0.0.1 ephemeral ports that
//! answer every request with one line of JSON naming the worker (so balancing is visible)
//! and echoing what the gateway added (`X-User-Id` from the token, `X-Request-Id`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Binds `count` workers named `demo-worker-1..` and serves them on the current runtime
/// until it stops. Returns their addresses, in name order.
pub async fn start(count: usize) -> std::io::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::with_capacity(count);
    for index in 1..=count {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        addrs.push(listener.local_addr()?);
        tokio::spawn(serve(listener, Arc::from(format!("demo-worker-{index}"))));
    }
    Ok(addrs)
}

async fn serve(listener: TcpListener, name: Arc<str>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(worker = %name, error = %e, "demo worker cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = answer(&name, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "demo worker connection ended");
            }
        });
    }
}

/// `{"worker":"demo-worker-2","method":"GET","path":"/hello","x_user_id":"42",...}`.
fn answer(name: &str, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body = serde_json::json!({
        "worker": name,
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "x_user_id": header("x-user-id"),
        "x_request_id": header("x-request-id"),
        "x_forwarded_for": header("x-forwarded-for"),
    });
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn workers_name_themselves_and_echo_the_user() {
        let addrs = start(2).await.unwrap();
        assert_eq!(addrs.len(), 2);
        let mut stream = tokio::net::TcpStream::connect(addrs[1]).await.unwrap();
        stream
            .write_all(
                b"GET /hello HTTP/1.1\r\nHost: x\r\nX-User-Id: 42\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains(r#""worker":"demo-worker-2""#), "{text}");
        assert!(text.contains(r#""x_user_id":"42""#), "{text}");
    }
}
