//! A deadline between the frames of an upstream's response body.
//!
//! [`ProxyPolicy::with_upstream_body_idle_timeout`](crate::ProxyPolicy::with_upstream_body_idle_timeout):
//! an upstream that sends its head and then goes silent would otherwise hold the client,
//! the upstream connection and their tasks for as long as the client is willing to wait.
//! When no frame arrives for the timeout, the body fails with a [`ProxyError`] for which
//! `is_timeout()` is true: hyper then closes an HTTP/1.1 client connection without the
//! body's valid end (or resets the HTTP/2 stream), and dropping the upstream body closes
//! the upstream connection. The clock runs only while the proxy waits for the upstream
//! (from the moment a poll finds no frame ready), so neither a slow but steady stream nor
//! a client that reads slowly is cut.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::error::{BoxError, Kind, ProxyError};

pin_project_lite::pin_project! {
    /// A response body that fails when the upstream sends nothing for `timeout`.
    pub(crate) struct IdleTimeoutBody {
        #[pin]
        inner: Body,
        #[pin]
        sleep: Sleep,
        timeout: Duration,
        waiting: bool,
        expired: bool,
    }
}

impl IdleTimeoutBody {
    pub(crate) fn new(inner: Body, timeout: Duration) -> Self {
        IdleTimeoutBody {
            inner,
            sleep: tokio::time::sleep(timeout),
            timeout,
            waiting: false,
            expired: false,
        }
    }
}

impl HttpBody for IdleTimeoutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.waiting = false;
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        // The clock runs only while we wait for the upstream: a client that reads slowly
        // does not count against it.
        if !*this.waiting {
            *this.waiting = true;
            this.sleep.as_mut().reset(Instant::now() + *this.timeout);
        }
        ready!(this.sleep.poll(cx));
        *this.expired = true;
        tracing::warn!(
            timeout_ms = u64::try_from(this.timeout.as_millis()).unwrap_or(u64::MAX),
            "upstream response body idle timeout; closing the response"
        );
        let err = ProxyError::with_cause(Kind::Timeout, "the upstream's response body went idle");
        // Boxed, not wrapped: `Body::new` keeps a boxed error as it is, so the client's
        // body error downcasts straight to the `ProxyError`.
        Poll::Ready(Some(Err(Box::new(err))))
    }

    fn is_end_stream(&self) -> bool {
        !self.expired && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `response` with its body under `timeout`, if any.
pub(crate) fn limit(
    response: http::Response<Body>,
    timeout: Option<Duration>,
) -> http::Response<Body> {
    match timeout {
        Some(timeout) if !response.body().is_end_stream() => {
            response.map(|body| Body::new(IdleTimeoutBody::new(body, timeout)))
        }
        _ => response,
    }
}
