//! Retrying requests the upstream never saw: [`RetryLayer`] and its service [`Retry`], with
//! request-body replay, exponential backoff with jitter, and a retry budget.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use axum::Router;
//! use axum_reverse_proxy::RetryLayer;
//!
//! // Up to 3 attempts per request, as in axum-reverse-proxy 1.3.
//! let app: Router = Router::new().layer(RetryLayer::new(3));
//!
//! // Tuned: 4 attempts, backoff from 50 ms up to 400 ms, GET/PUT/DELETE… also retried
//! // after an upstream reset or timeout, and at most 16 KiB of body kept for replay.
//! let retry = RetryLayer::with_delay(4, Duration::from_millis(50))
//!     .with_max_delay(Duration::from_millis(400))
//!     .with_idempotent_retries(true)
//!     .with_max_replay_body_bytes(16 * 1024);
//! let app: Router = Router::new().layer(retry);
//! ```
//!
//! The behaviour users rely on (what is retried, bodies, backoff, budget) is documented on
//! [`RetryLayer`], which is public; this module is not. The rooms:
//!
//! - `layer.rs`: [`RetryLayer`], its builders, and the retry decision (`Config::is_retryable`):
//!   only responses carrying a [`ProxyError`](crate::ProxyError) qualify, connect failures for
//!   any method, upstream failures and timeouts for idempotent methods when enabled.
//! - `service.rs`: [`Retry`], which hands the ready inner service to the response future and
//!   keeps a clone (the `mem::replace` idiom).
//! - `future.rs`: `ResponseFuture`, a state machine `Calling → Waiting → Ready → Calling`
//!   that drives the inner service to readiness again before every retry.
//! - `body.rs`: replay without read-ahead. All attempts read the client's body through one
//!   shared tee that keeps what was read (shared `Bytes`) up to the cap; a retry replays that,
//!   then continues from the client. A newer attempt cuts off the body of an older one.
//! - `backoff.rs`: capped exponential backoff with equal jitter (algorithm and source there).
//! - `tried.rs`: the endpoints a request's attempts went to, so that a balanced proxy sends
//!   a retry elsewhere.
//! - `budget.rs`: the retry budget shared by all services of one layer, after Finagle
//!   (algorithm and source there).

mod backoff;
mod body;
mod budget;
mod future;
mod layer;
mod service;
mod tried;

#[cfg(test)]
mod tests;

pub use self::layer::RetryLayer;
pub use self::service::Retry;
pub(crate) use self::tried::Tried;
