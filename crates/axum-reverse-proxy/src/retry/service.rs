use std::convert::Infallible;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response};
use tower_service::Service;

use super::body::Replay;
use super::future::{Attempts, ResponseFuture};
use super::layer::Config;
use super::tried::Tried;

/// The service built by [`RetryLayer`](crate::RetryLayer): retries requests that failed
/// before reaching the upstream, on a clone of the inner service. The rules are described on
/// [`RetryLayer`](crate::RetryLayer).
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Retry<S> {
    pub(crate) fn from_config(inner: S, config: Arc<Config>) -> Self {
        Retry { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Request<Body>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> ResponseFuture<S> {
        if self.config.attempts <= 1 {
            return ResponseFuture::once(self.inner.call(request));
        }
        self.config.budget.deposit();

        // The service that was driven to readiness serves this request; `self` keeps a
        // fresh clone for the next one.
        let clone = self.inner.clone();
        let mut service = mem::replace(&mut self.inner, clone);

        let (mut parts, body) = request.into_parts();
        // Shared by every attempt: a balanced proxy sends a retry to another endpoint.
        parts.extensions.insert(Tried::default());
        let (replay, body) = Replay::new(body, self.config.max_replay_body_bytes);
        let future = service.call(Request::from_parts(parts.clone(), body));
        ResponseFuture::retrying(
            future,
            Attempts::new(service, parts, replay, self.config.clone()),
        )
    }
}
