//! [`Rfc9110`]: the service that applies the RFC 9110 intermediary rules around an inner
//! service.

use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{HeaderValue, Method, Request, Response, header};
use tower_service::Service;

use super::Rfc9110Config;
use super::future::ResponseFuture;
use super::rules::{self, MaxForwards, Prepared};
use crate::error::{Kind, ProxyError};

/// Applies RFC 9110 intermediary rules around an inner service (usually a proxy).
///
/// Made by [`Rfc9110Layer`](crate::Rfc9110Layer); see the [layer](crate::Rfc9110Layer) and
/// [`Rfc9110Config`] for what it does.
#[derive(Clone, Debug)]
pub struct Rfc9110<S> {
    inner: S,
    config: Arc<Prepared>,
}

impl<S> Rfc9110<S> {
    /// Wrap `inner` with the default [`Rfc9110Config`].
    pub fn new(inner: S) -> Self {
        Self::from_prepared(inner, Arc::default())
    }

    /// Wrap `inner` with the given configuration.
    pub fn with_config(inner: S, config: Rfc9110Config) -> Self {
        Self::from_prepared(inner, Arc::new(Prepared::new(config)))
    }

    pub(super) fn from_prepared(inner: S, config: Arc<Prepared>) -> Self {
        Rfc9110 { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// What the request-side rules decided.
#[derive(Debug)]
pub(super) enum Decision {
    /// Answer with this response; the inner service is not called.
    Respond(Response<Body>),
    /// Forward the (rewritten) request. `upgrade`: it is an upgrade whose fields were kept.
    Forward { upgrade: bool },
}

/// The request-side rules, in order: loop detection, `Max-Forwards`, hop-by-hop fields,
/// `Via`.
pub(super) fn prepare_request(config: &Prepared, request: &mut Request<Body>) -> Decision {
    if config.is_loop(request) {
        tracing::debug!(method = %request.method(), "request loop detected; answering 508");
        return Decision::Respond(ProxyError::new(Kind::Loop).into_response());
    }
    match rules::max_forwards(request.method(), request.headers()) {
        MaxForwards::Answer if request.method() == Method::TRACE => {
            return Decision::Respond(rules::trace_response(request));
        }
        MaxForwards::Answer => return Decision::Respond(rules::options_response()),
        MaxForwards::Forward(remaining) => {
            request
                .headers_mut()
                .insert(header::MAX_FORWARDS, HeaderValue::from(remaining));
        }
        MaxForwards::Ignore => {}
    }
    let upgrade = config.preserve_websocket_headers && rules::is_upgrade_request(request.headers());
    let version = request.version();
    let headers = request.headers_mut();
    rules::strip_hop_by_hop(headers, upgrade);
    let via = config.request_via(headers, version);
    headers.insert(header::VIA, via);
    Decision::Forward { upgrade }
}

impl<S> Service<Request<Body>> for Rfc9110<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        match prepare_request(&self.config, &mut request) {
            Decision::Respond(response) => ResponseFuture::local(response),
            Decision::Forward { upgrade } => {
                // `self.inner` is the service that was driven to readiness: use it, and
                // leave a fresh clone for the next `poll_ready`.
                let clone = self.inner.clone();
                let mut inner = mem::replace(&mut self.inner, clone);
                ResponseFuture::inner(inner.call(request), self.config.clone(), upgrade)
            }
        }
    }
}
