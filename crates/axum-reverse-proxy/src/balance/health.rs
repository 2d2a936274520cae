//! Active HTTP health checks: [`HealthCheck`].

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::body::Body;
use futures_util::StreamExt;
use http::uri::PathAndQuery;
use http::{Method, Request, header};
use hyper_util::client::legacy::connect::Connect;

use super::endpoint::Endpoint;
use crate::client::Transport;

/// Settings of active HTTP health checks: a background task per proxy asks every
/// endpoint for a health path at a fixed interval and takes endpoints that fail out of
/// rotation.
///
/// - **What**: every `interval` (default 10 s) each endpoint gets `GET <path>` (the path
///   as given, on the endpoint's host; the target's own path is not prepended), with
///   `timeout` (default 1 s). An answer whose status is in the expected range (default
///   200–299) is a success; anything else, a connection error or a timeout is a failure.
///   `unhealthy_threshold` failures in a row (default 3) mark a healthy endpoint down;
///   `healthy_threshold` successes in a row (default 2) bring it back.
/// - **Start and stop**: endpoints start healthy. The task starts with the proxy's first
///   request or with `start_discovery`, whichever comes first, and stops when the last
///   clone of the proxy is dropped.
/// - **No endpoint left**: requests are answered 503 with a [`ProxyError`] for which
///   [`is_no_endpoint`](crate::ProxyError::is_no_endpoint) is true.
/// - **Why**: passive detection only sees endpoints that receive traffic and only after
///   failures; an active check finds a dead endpoint before users do, and confirms a
///   recovery before traffic returns.
/// - **Source**: the usual model of Envoy's and HAProxy's HTTP health checks
///   (`interval`, `timeout`, `healthy_threshold`, `unhealthy_threshold`,
///   `expected_statuses`).
///
/// [`ProxyError`]: crate::ProxyError
///
/// ```
/// use std::time::Duration;
/// use axum_reverse_proxy::HealthCheck;
///
/// let check = HealthCheck::new("/healthz")
///     .with_interval(Duration::from_secs(5))
///     .with_timeout(Duration::from_millis(500))
///     .with_unhealthy_threshold(2)
///     .with_healthy_threshold(1)
///     .with_expected_statuses(200..=204);
/// # let _ = check;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub(crate) path: String,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) healthy_threshold: u32,
    pub(crate) unhealthy_threshold: u32,
    pub(crate) expected: RangeInclusive<u16>,
}

impl HealthCheck {
    /// Check `path` (such as `/health`) with the default interval (10 s), timeout (1 s),
    /// thresholds (2 healthy, 3 unhealthy) and expected statuses (200–299).
    pub fn new(path: impl Into<String>) -> Self {
        HealthCheck {
            path: path.into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            expected: 200..=299,
        }
    }

    /// Time between two rounds of checks (at least 1 ms).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long one check may take before it counts as failed.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Successes in a row that bring a down endpoint back (at least 1).
    pub fn with_healthy_threshold(mut self, n: u32) -> Self {
        self.healthy_threshold = n.max(1);
        self
    }

    /// Failures in a row that take a healthy endpoint down (at least 1).
    pub fn with_unhealthy_threshold(mut self, n: u32) -> Self {
        self.unhealthy_threshold = n.max(1);
        self
    }

    /// The statuses that count as healthy.
    pub fn with_expected_statuses(mut self, statuses: RangeInclusive<u16>) -> Self {
        self.expected = statuses;
        self
    }

    fn path_and_query(&self) -> Option<PathAndQuery> {
        let path = if self.path.starts_with('/') {
            self.path.clone()
        } else {
            format!("/{}", self.path)
        };
        PathAndQuery::try_from(path).ok()
    }

    /// Apply one check result to `endpoint`'s state.
    pub(crate) fn apply(&self, endpoint: &Endpoint, ok: bool) {
        if ok {
            endpoint.check_failures.store(0, Relaxed);
            let streak = endpoint
                .check_successes
                .fetch_add(1, Relaxed)
                .saturating_add(1);
            if streak >= self.healthy_threshold && !endpoint.healthy.swap(true, Relaxed) {
                tracing::info!(upstream = %endpoint.target.authority(), "endpoint healthy again");
            }
        } else {
            endpoint.check_successes.store(0, Relaxed);
            let streak = endpoint
                .check_failures
                .fetch_add(1, Relaxed)
                .saturating_add(1);
            if streak >= self.unhealthy_threshold && endpoint.healthy.swap(false, Relaxed) {
                tracing::warn!(upstream = %endpoint.target.authority(), "endpoint failed its health checks");
            }
        }
    }
}

/// At most this many checks run at the same time.
const CONCURRENCY: usize = 64;

/// One round: check every endpoint of `endpoints`.
pub(crate) async fn check_all<C>(
    config: &HealthCheck,
    transport: &Transport<C>,
    endpoints: &[Arc<Endpoint>],
) where
    C: Connect + Clone + Send + Sync + 'static,
{
    let Some(path) = config.path_and_query() else {
        tracing::error!(path = %config.path, "invalid health-check path; not checking");
        return;
    };
    futures_util::stream::iter(endpoints)
        .for_each_concurrent(CONCURRENCY, |endpoint| {
            let path = path.clone();
            async move {
                let ok = check_one(config, transport, endpoint, path).await;
                config.apply(endpoint, ok);
            }
        })
        .await;
}

async fn check_one<C>(
    config: &HealthCheck,
    transport: &Transport<C>,
    endpoint: &Endpoint,
    path: PathAndQuery,
) -> bool
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let mut req = Request::new(Body::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = path.into();
    req.headers_mut()
        .insert(header::HOST, endpoint.target.host_header().clone());
    req.headers_mut().insert(
        header::USER_AGENT,
        header::HeaderValue::from_static("axum-reverse-proxy-health-check"),
    );
    let send = transport.send(&endpoint.target, req, false);
    match tokio::time::timeout(config.timeout, send).await {
        Ok(Ok(response)) => {
            let ok = config.expected.contains(&response.status().as_u16());
            // Read a little of the body so the connection can be reused.
            let _ = tokio::time::timeout(
                config.timeout,
                http_body_util::BodyExt::collect(http_body_util::Limited::new(
                    response.into_body(),
                    64 * 1024,
                )),
            )
            .await;
            ok
        }
        Ok(Err(err)) => {
            tracing::debug!(upstream = %endpoint.target.authority(), error = %err, "health check failed");
            false
        }
        Err(_) => {
            tracing::debug!(upstream = %endpoint.target.authority(), "health check timed out");
            false
        }
    }
}
