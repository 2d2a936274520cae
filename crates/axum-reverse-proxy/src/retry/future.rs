use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use http::request::Parts;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::body::Replay;
use super::layer::Config;

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S>
    where
        S: Service<Request<Body>>,
    {
        #[pin]
        kind: Kind<S>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S>
    where
        S: Service<Request<Body>>,
    {
        // Retries are off: the inner future, as is.
        Once { #[pin] future: S::Future },
        Retrying { #[pin] state: State<S::Future>, attempts: Attempts<S> },
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt is in flight.
        Calling { #[pin] future: F },
        // Backing off before the next attempt.
        Waiting { #[pin] sleep: Sleep, body: Body },
        // Waiting for the inner service to be ready for the next attempt.
        Ready { body: Body },
    }
}

/// What a retrying request keeps between attempts.
pub(crate) struct Attempts<S> {
    /// A clone of the inner service, used for every attempt of this request.
    service: S,
    /// The request head, copied into each attempt.
    parts: Parts,
    replay: Replay,
    /// Attempts made so far.
    made: usize,
    config: Arc<Config>,
}

impl<S> Attempts<S> {
    pub(crate) fn new(service: S, parts: Parts, replay: Replay, config: Arc<Config>) -> Self {
        Attempts {
            service,
            parts,
            replay,
            made: 1,
            config,
        }
    }

    /// Decides whether to retry after `response`: returns the wait and the body of the next
    /// attempt, or `None` to return `response` to the client.
    fn next(&mut self, response: &Response<Body>) -> Option<(Duration, Body)> {
        if self.made >= self.config.attempts
            || !self.config.is_retryable(&self.parts.method, response)
        {
            return None;
        }
        let Some(body) = self.replay.replay() else {
            tracing::debug!(
                attempt = self.made,
                "not retrying: the request body was read beyond the replay limit or failed"
            );
            return None;
        };
        if !self.config.budget.withdraw() {
            tracing::debug!(attempt = self.made, "not retrying: retry budget exhausted");
            return None;
        }
        let retry = u32::try_from(self.made).unwrap_or(u32::MAX);
        let delay = self.config.backoff.delay(retry);
        self.made += 1;
        tracing::debug!(
            method = %self.parts.method,
            status = %response.status(),
            next_attempt = self.made,
            ?delay,
            "retrying after a proxy failure"
        );
        Some((delay, body))
    }
}

// ===== impl ResponseFuture =====

impl<S> ResponseFuture<S>
where
    S: Service<Request<Body>>,
{
    pub(crate) fn once(future: S::Future) -> Self {
        ResponseFuture {
            kind: Kind::Once { future },
        }
    }

    pub(crate) fn retrying(future: S::Future, attempts: Attempts<S>) -> Self {
        ResponseFuture {
            kind: Kind::Retrying {
                state: State::Calling { future },
                attempts,
            },
        }
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (mut state, attempts) = match self.project().kind.project() {
            KindProj::Once { future } => return future.poll(cx),
            KindProj::Retrying { state, attempts } => (state, attempts),
        };
        loop {
            match state.as_mut().project() {
                StateProj::Calling { future } => {
                    let response = match ready!(future.poll(cx)) {
                        Ok(response) => response,
                        Err(never) => match never {},
                    };
                    let Some((delay, body)) = attempts.next(&response) else {
                        return Poll::Ready(Ok(response));
                    };
                    // The failed attempt's response (and its body) is dropped here.
                    drop(response);
                    if delay.is_zero() {
                        state.set(State::Ready { body });
                    } else {
                        let sleep = tokio::time::sleep(delay);
                        state.set(State::Waiting { sleep, body });
                    }
                }
                StateProj::Waiting { sleep, body } => {
                    ready!(sleep.poll(cx));
                    let body = mem::take(body);
                    state.set(State::Ready { body });
                }
                StateProj::Ready { body } => {
                    match ready!(attempts.service.poll_ready(cx)) {
                        Ok(()) => {}
                        Err(never) => match never {},
                    }
                    let request = Request::from_parts(attempts.parts.clone(), mem::take(body));
                    let future = attempts.service.call(request);
                    state.set(State::Calling { future });
                }
            }
        }
    }
}

impl<S> fmt::Debug for ResponseFuture<S>
where
    S: Service<Request<Body>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ResponseFuture");
        if let Kind::Retrying { attempts, .. } = &self.kind {
            d.field("attempts_made", &attempts.made);
        }
        d.finish_non_exhaustive()
    }
}
