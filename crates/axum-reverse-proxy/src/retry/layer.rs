use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Method, Response};
use tower_layer::Layer;

use super::Retry;
use super::backoff::{Backoff, DEFAULT_BASE};
use super::budget::Budget;
use crate::ProxyError;

/// The default cap on the request body kept for replay: 64 KiB.
const DEFAULT_MAX_REPLAY_BODY_BYTES: usize = 64 * 1024;

/// Retries requests that failed before reaching the upstream, with backoff and a budget.
///
/// Apply it to the routes of a proxy, as in axum-reverse-proxy 1.3:
///
/// ```
/// use axum::Router;
/// use axum_reverse_proxy::RetryLayer;
///
/// // `Router::layer` wraps the routes already added, such as those of a `ReverseProxy`.
/// let app: Router = Router::new().layer(RetryLayer::new(3));
/// ```
///
/// # What is retried
///
/// Only failures the proxy itself reports, recognised by the [`ProxyError`] in the
/// response extensions, never an answer of the upstream:
///
/// - [`ProxyError::is_connect`]: connecting to the upstream failed, so the request never
///   reached it. Retried whatever the method, POST included.
/// - [`ProxyError::is_upstream`] (the connection broke after the request may have been sent)
///   and [`ProxyError::is_timeout`]: retried only for idempotent methods (GET, HEAD, OPTIONS,
///   TRACE, PUT, DELETE, and QUERY), and only when enabled with
///   [`with_idempotent_retries`](Self::with_idempotent_retries). A POST or PATCH that may
///   have reached the upstream is never sent twice.
/// - A 502, 503 or any other status the upstream sent (no `ProxyError`) is final.
///
/// At most `attempts` attempts are made. The last response is returned whatever its status;
/// the responses of failed attempts, bodies included, are dropped. The inner service is
/// driven to readiness again before each retry.
///
/// # Request bodies
///
/// Nothing is read ahead: the first attempt streams the client's body as usual, and the
/// layer keeps what it reads (shared, not copied) up to a cap, 64 KiB by default
/// ([`with_max_replay_body_bytes`](Self::with_max_replay_body_bytes)). A retry sends the kept
/// bytes again, then the rest of the client's body, so every attempt carries the complete
/// body under its original `Content-Length`, trailers included. If an attempt read past the
/// cap, or the client's body failed, the request is not retried: it was sent once, whole,
/// and its response is final. A connect failure reads nothing, so a body of any size is
/// retried after one.
///
/// # Backoff
///
/// Before retry `n` the layer waits a random time between half and all of
/// `min(max_delay, delay · 2^(n-1))` ("equal jitter", after Marc Brooker, [Exponential
/// Backoff And Jitter](https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/)).
/// `delay` is 500 ms by default (the fixed delay of 1.3), `max_delay` ten times `delay`.
///
/// # Budget
///
/// A per-request attempt limit alone lets retries multiply the load on an upstream that is
/// already failing. All services built from one layer therefore share a retry budget, as
/// in [Finagle](https://finagle.github.io/blog/2016/02/08/retry-budgets/) and linkerd: over
/// the last 10 s, retries may not exceed 10 per second plus 20 % of requests. Past that,
/// failed responses are returned without retry. See [`with_budget`](Self::with_budget).
/// Cloning the layer shares its budget.
///
/// # Memory
///
/// Each request in flight through the layer may keep up to the replay cap of body data until
/// its final response arrives. With many concurrent uploads, lower the cap to bound the
/// memory retries add.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    config: Config,
}

/// Everything a [`Retry`] service needs to decide and pace its retries.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// Total attempts per request, at least 1.
    pub(crate) attempts: usize,
    pub(crate) backoff: Backoff,
    pub(crate) max_replay_body_bytes: usize,
    /// Also retry idempotent requests after an upstream failure or timeout.
    pub(crate) idempotent_retries: bool,
    pub(crate) budget: Arc<Budget>,
}

impl RetryLayer {
    /// Up to `attempts` attempts in total per request (`0` is taken as `1`: no retry),
    /// waiting about 500 ms before the first retry and twice as long before each next one.
    pub fn new(attempts: usize) -> Self {
        Self::with_delay(attempts, DEFAULT_BASE)
    }

    /// Up to `attempts` attempts in total per request (`0` is taken as `1`), with `delay` as
    /// the base of the exponential backoff: the wait before retry `n` is
    /// `delay · 2^(n-1)`, capped (see [`with_max_delay`](Self::with_max_delay)) and jittered
    /// (see [`with_jitter`](Self::with_jitter)). A zero `delay` retries at once.
    pub fn with_delay(attempts: usize, delay: Duration) -> Self {
        RetryLayer {
            config: Config {
                attempts: attempts.max(1),
                backoff: Backoff::new(delay),
                max_replay_body_bytes: DEFAULT_MAX_REPLAY_BODY_BYTES,
                idempotent_retries: false,
                budget: Arc::new(Budget::default_budget()),
            },
        }
    }

    /// Caps the wait before any retry at `max`. Default: ten times the base delay.
    pub fn with_max_delay(mut self, max: Duration) -> Self {
        self.config.backoff.set_max(max);
        self
    }

    /// Whether waits are randomised (default `true`): each wait is drawn uniformly between
    /// half and all of its nominal value, so requests that failed together do not retry
    /// together. Turn it off for exact, reproducible waits, for example in tests.
    pub fn with_jitter(mut self, enabled: bool) -> Self {
        self.config.backoff.set_jitter(enabled);
        self
    }

    /// How many bytes of a request body are kept so that it can be sent again
    /// (default 64 KiB).
    ///
    /// A request whose body has been read past this limit by a failed attempt is not retried.
    /// A body no attempt has started to read is not kept at all and can always be retried.
    /// Each request in flight may hold up to this many bytes until its response arrives, so
    /// this bounds the memory retries add per concurrent request.
    pub fn with_max_replay_body_bytes(mut self, bytes: usize) -> Self {
        self.config.max_replay_body_bytes = bytes;
        self
    }

    /// Also retry requests with an idempotent method (GET, HEAD, OPTIONS, TRACE, PUT,
    /// DELETE) when the proxy failed after the request may have reached the upstream: the
    /// connection broke, the response was malformed, or the upstream timed out
    /// ([`ProxyError::is_upstream`], [`ProxyError::is_timeout`]). Off by default.
    ///
    /// The upstream may then see such a request more than once. That is harmless only if it
    /// honours the idempotency of these methods; leave this off for upstreams that, say,
    /// count GETs or act on them. Other methods, POST and PATCH among them, are never
    /// retried once they may have reached the upstream.
    pub fn with_idempotent_retries(mut self, enabled: bool) -> Self {
        self.config.idempotent_retries = enabled;
        self
    }

    /// Replaces the retry budget. Over any window of `ttl`, retries may not exceed
    /// `min_retries_per_second · ttl` plus `retry_ratio` times the number of requests; a retry
    /// over budget is not made and the failed response is returned instead.
    ///
    /// Default: `ttl` 10 s, 10 retries per second, ratio 0.2 (20 % of requests).
    /// `ttl` is clamped to 1..=60 s and `retry_ratio` to 0..=1000 (NaN counts as 0).
    /// The new budget is shared by every service built from this layer or its later clones.
    pub fn with_budget(
        mut self,
        ttl: Duration,
        min_retries_per_second: u32,
        retry_ratio: f32,
    ) -> Self {
        self.config.budget = Arc::new(Budget::new(ttl, min_retries_per_second, retry_ratio));
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::from_config(inner, Arc::new(self.config.clone()))
    }
}

// ===== impl Config =====

impl Config {
    /// Whether `response`, the answer to a `method` request, is a failure worth retrying.
    ///
    /// Only failures the proxy itself reported qualify: a response from the upstream,
    /// whatever its status, is final.
    pub(crate) fn is_retryable(&self, method: &Method, response: &Response<Body>) -> bool {
        let Some(error) = response.extensions().get::<ProxyError>() else {
            return false;
        };
        if error.is_connect() {
            return true;
        }
        self.idempotent_retries
            && method.is_idempotent()
            && (error.is_upstream() || error.is_timeout())
    }
}
