//! The proxy's error type: why a request could not be forwarded, and the status it maps to.
//!
//! Modelled on hyper's `Error`: an opaque value whose `Display` text is not API, with
//! `is_*()` predicates that say what went wrong. Every response the proxy synthesises
//! (502, 503, 504, 413, 501, 508) carries a [`ProxyError`] in its extensions, so
//! middleware such as [`RetryLayer`](crate::RetryLayer) or a metrics layer can tell a
//! proxy-made 502 from one the upstream sent, without parsing bodies.
//!
//! ```
//! use axum_reverse_proxy::ProxyError;
//! # fn check(response: &http::Response<axum::body::Body>) {
//! if let Some(err) = response.extensions().get::<ProxyError>() {
//!     if err.is_connect() {
//!         // the request never reached the upstream: safe to retry
//!     }
//! }
//! # }
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// Why the proxy answered instead of the upstream.
///
/// Found in the extensions of every response the proxy synthesises. Cheap to clone.
#[derive(Clone)]
pub struct ProxyError {
    inner: Arc<ErrorImpl>,
}

struct ErrorImpl {
    kind: Kind,
    cause: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Could not open a connection to the upstream (refused, DNS, TLS, connect timeout),
    /// or an HTTP/2 upstream refused the request unprocessed.
    Connect,
    /// The upstream did not send response headers within the configured deadline.
    Timeout,
    /// The connection failed after the request was (possibly) sent: reset, malformed response.
    Upstream,
    /// The request body exceeded the configured limit.
    BodyTooLarge,
    /// No endpoint was available to serve the request.
    NoEndpoint,
    /// The request has already passed through this proxy.
    Loop,
    /// The request asked for something the proxy does not do (CONNECT, a transfer
    /// coding other than chunked).
    NotImplemented,
    /// The resolved upstream target is not a valid URI.
    InvalidTarget,
    /// The request itself is malformed in a way that cannot be forwarded.
    BadRequest,
}

impl ProxyError {
    pub(crate) fn new(kind: Kind) -> Self {
        ProxyError {
            inner: Arc::new(ErrorImpl { kind, cause: None }),
        }
    }

    pub(crate) fn with_cause(kind: Kind, cause: impl Into<BoxError>) -> Self {
        ProxyError {
            inner: Arc::new(ErrorImpl {
                kind,
                cause: Some(cause.into()),
            }),
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        self.inner.kind
    }

    /// The request never reached the upstream: connecting failed (refused, unreachable,
    /// DNS or TLS failure, connect timeout), or an HTTP/2 upstream refused the stream
    /// before processing it (REFUSED_STREAM, or after its GOAWAY). Such a request is
    /// always safe to retry.
    pub fn is_connect(&self) -> bool {
        self.inner.kind == Kind::Connect
    }

    /// The upstream did not answer within the configured deadline (504).
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == Kind::Timeout
    }

    /// The upstream connection failed after the request may have been sent: reset, closed
    /// early, or a malformed response (502). Not safe to retry a non-idempotent request.
    pub fn is_upstream(&self) -> bool {
        self.inner.kind == Kind::Upstream
    }

    /// The request body was larger than the configured limit (413).
    pub fn is_body_too_large(&self) -> bool {
        self.inner.kind == Kind::BodyTooLarge
    }

    /// No upstream endpoint was available (503).
    pub fn is_no_endpoint(&self) -> bool {
        self.inner.kind == Kind::NoEndpoint
    }

    /// The request had already passed through this proxy (508).
    pub fn is_loop(&self) -> bool {
        self.inner.kind == Kind::Loop
    }

    /// The request needs something the proxy does not implement, such as CONNECT or a
    /// transfer coding other than chunked (501).
    pub fn is_not_implemented(&self) -> bool {
        self.inner.kind == Kind::NotImplemented
    }

    /// The target resolved for this request is not a valid upstream URI.
    pub fn is_invalid_target(&self) -> bool {
        self.inner.kind == Kind::InvalidTarget
    }

    /// The status code this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self.inner.kind {
            Kind::Connect | Kind::Upstream => StatusCode::BAD_GATEWAY,
            Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Loop => StatusCode::LOOP_DETECTED,
            Kind::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Kind::InvalidTarget => StatusCode::INTERNAL_SERVER_ERROR,
            Kind::BadRequest => StatusCode::BAD_REQUEST,
        }
    }

    /// A short, generic description, safe to show to clients (no addresses, no causes).
    pub fn message(&self) -> &'static str {
        match self.inner.kind {
            Kind::Connect | Kind::Upstream => "Bad Gateway",
            Kind::Timeout => "Gateway Timeout",
            Kind::BodyTooLarge => "Payload Too Large",
            Kind::NoEndpoint => "No upstream services available",
            Kind::Loop => "Loop Detected",
            Kind::NotImplemented => "Not Implemented",
            Kind::InvalidTarget => "Internal Server Error",
            Kind::BadRequest => "Bad Request",
        }
    }

    /// Build the response the proxy sends for this error: the status, a generic
    /// plain-text body, and `self` in the extensions.
    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Body::from(self.message()));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response.extensions_mut().insert(self);
        response
    }
}

impl fmt::Debug for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ProxyError");
        d.field("kind", &self.inner.kind);
        if let Some(cause) = &self.inner.cause {
            d.field("cause", cause);
        }
        d.finish()
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.inner.kind {
            Kind::Connect => "error connecting to upstream",
            Kind::Timeout => "upstream timed out",
            Kind::Upstream => "upstream connection failed",
            Kind::BodyTooLarge => "request body too large",
            Kind::NoEndpoint => "no upstream endpoint available",
            Kind::Loop => "request loop detected",
            Kind::NotImplemented => "not implemented by the proxy",
            Kind::InvalidTarget => "invalid upstream target",
            Kind::BadRequest => "malformed request",
        };
        f.write_str(what)?;
        // The cause chain is for logs: it may name addresses, never secrets.
        let mut source = self.inner.cause.as_deref().map(|e| e as &dyn StdError);
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .cause
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The error a proxy constructor returns for a target it cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTarget {
    pub(crate) target: String,
    pub(crate) reason: &'static str,
}

impl InvalidTarget {
    /// The target string as it was given.
    pub fn target(&self) -> &str {
        &self.target
    }
}

impl fmt::Display for InvalidTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid proxy target {:?}: {}", self.target, self.reason)
    }
}

impl StdError for InvalidTarget {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_predicates() {
        let cases = [
            (Kind::Connect, 502),
            (Kind::Upstream, 502),
            (Kind::Timeout, 504),
            (Kind::BodyTooLarge, 413),
            (Kind::NoEndpoint, 503),
            (Kind::Loop, 508),
            (Kind::NotImplemented, 501),
            (Kind::BadRequest, 400),
        ];
        for (kind, status) in cases {
            let err = ProxyError::new(kind);
            assert_eq!(err.status().as_u16(), status, "{kind:?}");
            let response = err.clone().into_response();
            assert_eq!(response.status().as_u16(), status);
            assert!(response.extensions().get::<ProxyError>().is_some());
        }
        assert!(ProxyError::new(Kind::Connect).is_connect());
        assert!(ProxyError::new(Kind::Timeout).is_timeout());
        assert!(!ProxyError::new(Kind::Timeout).is_connect());
    }

    #[test]
    fn display_walks_the_cause_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = ProxyError::with_cause(Kind::Connect, io);
        assert_eq!(err.to_string(), "error connecting to upstream: refused");
    }
}
