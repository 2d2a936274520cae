//! [`ResponseFuture`]: the response of [`Rfc9110`](super::Rfc9110), answered locally or by
//! the inner service and then cleaned.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use http::{Response, StatusCode, header};
use pin_project_lite::pin_project;

use super::rules::{self, Prepared};

pin_project! {
    /// The future returned by [`Rfc9110`](super::Rfc9110).
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        /// The layer answered itself (loop, `Max-Forwards: 0`).
        Local { response: Option<Response<Body>> },
        /// The inner service answers; its response gets the response-side rules.
        Inner {
            #[pin]
            future: F,
            config: Arc<Prepared>,
            upgrade: bool,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn local(response: Response<Body>) -> Self {
        ResponseFuture {
            state: State::Local {
                response: Some(response),
            },
        }
    }

    pub(super) fn inner(future: F, config: Arc<Prepared>, upgrade: bool) -> Self {
        ResponseFuture {
            state: State::Inner {
                future,
                config,
                upgrade,
            },
        }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Local { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after completion: an empty 500 rather than a panic.
                None => {
                    let mut response = Response::new(Body::empty());
                    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    Poll::Ready(Ok(response))
                }
            },
            StateProj::Inner {
                future,
                config,
                upgrade,
            } => {
                let mut response = ready!(future.poll(cx))?;
                finish_response(&mut response, config, *upgrade);
                Poll::Ready(Ok(response))
            }
        }
    }
}

/// The response-side rules: hop-by-hop fields removed (upgrade fields kept on the `101`
/// answering a preserved upgrade), and this hop appended to `Via`.
pub(super) fn finish_response(response: &mut Response<Body>, config: &Prepared, upgrade: bool) {
    let keep_upgrade = upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let version = response.version();
    let headers = response.headers_mut();
    rules::strip_hop_by_hop(headers, keep_upgrade);
    let ours = rules::via_element(rules::via_protocol(version), config.received_by());
    let via = rules::extend_via(headers, &ours);
    headers.insert(header::VIA, via);
}
