//! Error types of the request path, and the ONE place where a failure becomes an HTTP status
//! ([`GatewayError::status`]) and a short JSON body ([`GatewayError::into_response`]).

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::auth::Rejection;
use crate::path::PathError;

/// The body type every response of the gateway carries (upstream stream, error JSON, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type GatewayBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Wraps a complete in-memory body.
pub fn full_body(bytes: impl Into<Bytes>) -> GatewayBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Where a failure came from, for logs: the client (downstream), the upstream, or the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
    Internal,
}

/// Everything that can end a request before (or instead of) an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("bad request path: {0:?}")]
    BadPath(PathError),
    #[error("ambiguous message framing: {0}")]
    BadFraming(&'static str),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("no route matches")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed(HeaderValue),
    #[error("host does not match the TLS server name")]
    Misdirected,
    /// The route needs a JWT and the request has none or a bad one. Displays the reason
    /// and a short description, never the token.
    #[error("token rejected ({0})")]
    Unauthorized(Rejection),
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The route's JWT policy has no keys yet: its `jwks_url` was unreachable at start and
    /// has not been fetched since. The token may well be valid, so this is no 401.
    #[error("no keys for jwt policy {0} yet: its JWKS could not be fetched")]
    JwksUnavailable(String),
    /// Over the route's `rate_limit`; the next request with this key passes after the delay.
    #[error("rate limited (retry after {0:?})")]
    RateLimited(std::time::Duration),
    #[error("error reading the request body: {0}")]
    ClientBody(#[source] BoxError),
    /// Request bodies buffered to files are at `server.max_buffer_file_bytes`.
    #[error("no room to buffer the request body (server.max_buffer_file_bytes)")]
    BufferFull,
    #[error("no healthy server in upstream {0}")]
    NoHealthyServer(String),
    /// The gateway itself could not open an upstream connection: out of file descriptors,
    /// memory or local ports. Not the server's fault: it is neither blamed (no ejection)
    /// nor left for another server (which would fail the same way).
    #[error("no local resources to connect upstream: {0}")]
    LocalResources(#[source] BoxError),
    #[error("could not connect to upstream server {server}: {source}")]
    UpstreamConnect {
        server: String,
        #[source]
        source: BoxError,
    },
    #[error("upstream server {server} did not answer within {timeout:?}")]
    UpstreamTimeout {
        server: String,
        timeout: std::time::Duration,
    },
    #[error("upstream server {server} failed: {source}")]
    UpstreamFailed {
        server: String,
        #[source]
        source: BoxError,
    },
    /// The client closed its connection while the request was being handled (nginx's 499):
    /// the work for it is dropped (the upstream exchange with it) and only the log and the
    /// metrics see the status.
    #[error("the client closed the connection before the response")]
    ClientClosed,
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// The HTTP status a client sees for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadPath(_) | Self::BadFraming(_) | Self::BadRequest(_) | Self::ClientBody(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::NoHealthyServer(_)
            | Self::BufferFull
            | Self::LocalResources(_)
            | Self::JwksUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamConnect { .. } | Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ClientClosed => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        }
    }

    /// The short snake_case word in the JSON body and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadPath(_) => "bad_path",
            Self::BadFraming(_) => "bad_framing",
            Self::BadRequest(_) => "bad_request",
            Self::ClientBody(_) => "bad_body",
            Self::NotFound => "not_found",
            // SPEC.md's body for every 401; the header tells "missing" apart.
            Self::Unauthorized(_) => "invalid_token",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Misdirected => "misdirected_request",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::RateLimited(_) => "rate_limited",
            Self::NoHealthyServer(_) => "no_healthy_upstream",
            Self::BufferFull => "buffer_full",
            Self::JwksUnavailable(_) => "jwks_unavailable",
            Self::LocalResources(_) => "overloaded",
            Self::UpstreamConnect { .. } => "upstream_connect_failed",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::UpstreamFailed { .. } => "upstream_failed",
            Self::Internal(_) => "internal_error",
            Self::ClientClosed => "client_closed_request",
        }
    }

    pub fn side(&self) -> Side {
        match self {
            Self::UpstreamConnect { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamFailed { .. }
            | Self::NoHealthyServer(_) => Side::Upstream,
            Self::Internal(_)
            | Self::BufferFull
            | Self::LocalResources(_)
            | Self::JwksUnavailable(_) => Side::Internal,
            _ => Side::Downstream,
        }
    }

    /// Whether the client connection must be closed after this response (the byte stream
    /// can no longer be trusted to be in sync).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::BadFraming(_) | Self::ClientBody(_) | Self::ClientClosed
        )
    }

    /// The response a client sees: status, `{"error":"...","status":N}`, and the headers
    /// that go with the status.
    pub fn into_response(self) -> Response<GatewayBody> {
        let status = self.status();
        let closes = self.closes_connection();
        let body = format!(
            "{{\"error\":\"{}\",\"status\":{}}}",
            self.code(),
            status.as_u16()
        );
        let mut response = Response::new(full_body(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            Self::MethodNotAllowed(allow) => {
                headers.insert(ALLOW, allow);
            }
            Self::Unauthorized(rejection) => {
                headers.insert(WWW_AUTHENTICATE, bearer_challenge(&rejection));
            }
            Self::RateLimited(wait) => {
                headers.insert(RETRY_AFTER, retry_after(wait));
            }
            _ => {}
        }
        if closes {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// `Retry-After` in whole seconds, rounded up and at least 1 (RFC 9110 §10.2.3 has no
/// fractions, and `0` would invite an immediate retry that fails again).
fn retry_after(wait: std::time::Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

/// RFC 6750 §3: a request without a token gets a bare challenge; a bad token gets
/// `error="invalid_token"` and a short description (SPEC.md's exact shapes).
fn bearer_challenge(rejection: &Rejection) -> HeaderValue {
    const MISSING: &str = "Bearer realm=\"gateway\"";
    if rejection.is_missing() {
        return HeaderValue::from_static(MISSING);
    }
    // Descriptions are fixed ASCII phrases; quotes and backslashes are kept out regardless.
    let description: String = rejection
        .description
        .chars()
        .map(|c| if c == '"' || c == '\\' { '\'' } else { c })
        .collect();
    HeaderValue::from_str(&format!(
        "Bearer error=\"invalid_token\", error_description=\"{description}\""
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(msg: &str) -> BoxError {
        msg.to_string().into()
    }

    #[test]
    fn statuses_are_pinned() {
        let cases: Vec<(GatewayError, u16)> = vec![
            (GatewayError::BadPath(PathError::EncodedSeparator), 400),
            (GatewayError::BadFraming("te+cl"), 400),
            (GatewayError::ClientBody(err("reset")), 400),
            (GatewayError::NotFound, 404),
            (
                GatewayError::Unauthorized(Rejection {
                    reason: "expired",
                    description: "token expired",
                }),
                401,
            ),
            (
                GatewayError::MethodNotAllowed(HeaderValue::from_static("GET")),
                405,
            ),
            (GatewayError::Misdirected, 421),
            (GatewayError::BodyTooLarge(10), 413),
            (GatewayError::RateLimited(std::time::Duration::ZERO), 429),
            (GatewayError::NoHealthyServer("app".into()), 503),
            (GatewayError::JwksUnavailable("idp".into()), 503),
            (
                GatewayError::UpstreamConnect {
                    server: "s".into(),
                    source: err("refused"),
                },
                502,
            ),
            (
                GatewayError::UpstreamTimeout {
                    server: "s".into(),
                    timeout: std::time::Duration::from_secs(1),
                },
                504,
            ),
            (
                GatewayError::UpstreamFailed {
                    server: "s".into(),
                    source: err("reset"),
                },
                502,
            ),
            (GatewayError::Internal("x".into()), 500),
        ];
        for (e, status) in cases {
            assert_eq!(e.status().as_u16(), status, "{e}");
        }
    }

    #[tokio::test]
    async fn response_is_short_json_with_allow_and_close() {
        let response =
            GatewayError::MethodNotAllowed(HeaderValue::from_static("GET, POST")).into_response();
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()[ALLOW], "GET, POST");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"error":"method_not_allowed","status":405}"#);

        let response = GatewayError::BadFraming("te+cl").into_response();
        assert_eq!(response.headers()[CONNECTION], "close");
    }

    #[tokio::test]
    async fn unauthorized_carries_a_bearer_challenge() {
        let missing = Rejection {
            reason: crate::auth::reasons::MISSING,
            description: "no token",
        };
        let response = GatewayError::Unauthorized(missing).into_response();
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="gateway""#
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"error":"invalid_token","status":401}"#);

        let bad = Rejection {
            reason: crate::auth::reasons::EXPIRED,
            description: "token \"expired\"",
        };
        let response = GatewayError::Unauthorized(bad).into_response();
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token", error_description="token 'expired'""#
        );
        assert!(response.headers().get(CONNECTION).is_none());
    }

    #[tokio::test]
    async fn rate_limited_says_when_to_retry_in_whole_seconds() {
        use std::time::Duration;
        for (wait, header) in [
            (Duration::ZERO, "1"),
            (Duration::from_millis(10), "1"),
            (Duration::from_secs(1), "1"),
            (Duration::from_millis(1001), "2"),
            (Duration::from_secs(720), "720"),
        ] {
            let response = GatewayError::RateLimited(wait).into_response();
            assert_eq!(response.status(), 429);
            assert_eq!(response.headers()[RETRY_AFTER], header, "{wait:?}");
        }
        let response = GatewayError::RateLimited(Duration::from_millis(5)).into_response();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"error":"rate_limited","status":429}"#);
    }
}
