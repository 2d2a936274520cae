//! [`TunnelGuard`]: a resource held for as long as the proxied exchange really lasts.

use std::any::Any;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::Bytes;
use http::{Extensions, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};

/// Holds a resource (a concurrency permit, a metrics guard) until the exchange it was
/// attached to is over.
///
/// Put it in the request's extensions before the proxy sees the request. The proxy
/// drops the resource when the response body has been sent to its end (or dropped), or,
/// for an upgrade, when the tunnel closes; at once if the proxy answers with an error.
/// Without it, a layer that releases its permit when the response future completes
/// would free it as soon as a WebSocket's 101 is sent, while the tunnel stays open for
/// hours.
///
/// Clones share the resource: only the first proxy that forwards the request takes it
/// (a retried or cloned request does not hold it twice).
///
/// ```
/// use axum::body::Body;
/// use axum_reverse_proxy::TunnelGuard;
/// use std::sync::Arc;
///
/// # async fn f(limit: Arc<tokio::sync::Semaphore>, mut req: http::Request<Body>) {
/// let permit = limit.acquire_owned().await.unwrap();
/// req.extensions_mut().insert(TunnelGuard::new(permit));
/// // ... proxy.call(req) ...
/// # }
/// ```
#[derive(Clone)]
pub struct TunnelGuard {
    resource: Arc<Mutex<Option<Held>>>,
}

/// A taken resource: dropping it releases the resource.
pub(crate) struct Held {
    _resource: Box<dyn Any + Send>,
}

impl TunnelGuard {
    /// Hold `resource` until the exchange is over.
    pub fn new<T: Any + Send>(resource: T) -> Self {
        TunnelGuard {
            resource: Arc::new(Mutex::new(Some(Held {
                _resource: Box::new(resource),
            }))),
        }
    }

    /// Remove the guard from `extensions` and take its resource, if any is left.
    pub(crate) fn take(extensions: &mut Extensions) -> Option<Held> {
        let guard = extensions.remove::<TunnelGuard>()?;
        let mut slot = guard
            .resource
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.take()
    }
}

impl fmt::Debug for TunnelGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self
            .resource
            .lock()
            .map(|slot| slot.is_some())
            .unwrap_or(false);
        f.debug_struct("TunnelGuard").field("held", &held).finish()
    }
}

/// Keep `held` until `response`'s body ends or is dropped.
pub(crate) fn hold_until_body_ends(response: Response<Body>, held: Held) -> Response<Body> {
    response.map(|inner| {
        if HttpBody::is_end_stream(&inner) {
            return inner;
        }
        Body::new(GuardedBody {
            inner,
            held: Some(held),
        })
    })
}

pin_project_lite::pin_project! {
    struct GuardedBody {
        #[pin]
        inner: Body,
        held: Option<Held>,
    }
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) || this.inner.is_end_stream() {
            this.held.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
