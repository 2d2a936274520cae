//! One upstream endpoint and the metrics that travel with it.
//!
//! Every [`Endpoint`] owns its counters. Strategies, outlier detection and health checks
//! read and write them through atomics, and requests hold an `Arc<Endpoint>` for as long
//! as they run, so a discovery change can never move one endpoint's load onto another,
//! and a request on a removed endpoint finishes against the endpoint it started on.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::error::{Kind, ProxyError};
use crate::uri::Target;

/// The RTT a new endpoint is assumed to have before its first sample: 30 ms, as in
/// linkerd. High enough that a cold endpoint is not flooded before it has answered once,
/// low enough that it is tried as soon as the others show any load.
pub(crate) const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// The smallest RTT sample recorded for a failed request (a gateway failure or a 5xx):
/// one second. An endpoint that fails fast must not look fast.
pub(crate) const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// Milliseconds since the balancer's epoch: how endpoint timestamps are stored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since the epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    pub(crate) fn ms_at(&self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    pub(crate) fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }
}

/// What one response says about the endpoint that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Anything below 500.
    Success,
    /// A 5xx from the upstream that is not a gateway failure (500, 501, …).
    ServerError,
    /// 502/503/504 from the upstream, or the proxy could not connect, lost the
    /// connection, or timed out.
    GatewayFailure,
    /// The proxy answered without involving the endpoint (413, 501 for CONNECT, 508…).
    NotTheEndpoint,
}

impl Outcome {
    pub(crate) fn of(response: &Response<Body>) -> Outcome {
        if let Some(err) = response.extensions().get::<ProxyError>() {
            return match err.kind() {
                Kind::Connect | Kind::Upstream | Kind::Timeout => Outcome::GatewayFailure,
                _ => Outcome::NotTheEndpoint,
            };
        }
        match response.status().as_u16() {
            502..=504 => Outcome::GatewayFailure,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Success,
        }
    }

    fn is_failure(self) -> bool {
        matches!(self, Outcome::ServerError | Outcome::GatewayFailure)
    }
}

/// One upstream and its live metrics.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) target: Target,
    /// Relative share of traffic for weighted strategies, at least 1.
    pub(crate) weight: u32,
    /// Unique per process, increasing: orders snapshots by arrival.
    pub(crate) id: u64,
    pending: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
    /// The peak-EWMA RTT estimate in nanoseconds, as `f64` bits.
    rtt_ns: AtomicU64,
    /// When `rtt_ns` was last updated (clock ms).
    rtt_stamp: AtomicU64,
    /// Ejected by outlier detection until this time (clock ms); 0 when never ejected.
    pub(crate) ejected_until: AtomicU64,
    pub(crate) times_ejected: AtomicU32,
    /// Active health: false after enough failed checks.
    pub(crate) healthy: AtomicBool,
    pub(crate) check_successes: AtomicU32,
    pub(crate) check_failures: AtomicU32,
}

impl Endpoint {
    pub(crate) fn new(target: Target, weight: u32, clock: &Clock) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Endpoint {
            target,
            weight: weight.max(1),
            id: NEXT_ID.fetch_add(1, Relaxed),
            pending: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            rtt_ns: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            rtt_stamp: AtomicU64::new(clock.now_ms()),
            ejected_until: AtomicU64::new(0),
            times_ejected: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
        }
    }

    /// Requests sent and not yet finished (response body not yet ended).
    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Relaxed)
    }

    /// Whether the endpoint may receive traffic at `now_ms`: healthy and not ejected.
    pub(crate) fn is_available(&self, now_ms: impl FnOnce() -> u64) -> bool {
        if !self.healthy.load(Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Relaxed);
        until == 0 || now_ms() >= until
    }

    pub(crate) fn is_ejected_at(&self, now_ms: u64) -> bool {
        let until = self.ejected_until.load(Relaxed);
        until != 0 && now_ms < until
    }

    /// The peak-EWMA RTT estimate at `now_ms`, in nanoseconds: the stored value decayed
    /// towards zero by the time since it was last updated, so an endpoint that has not
    /// been sampled for a while is tried again.
    pub(crate) fn rtt_estimate(&self, now_ms: u64, decay: Duration) -> f64 {
        let rtt = f64::from_bits(self.rtt_ns.load(Relaxed));
        let stamp = self.rtt_stamp.load(Relaxed);
        rtt * decay_weight(now_ms.saturating_sub(stamp), decay)
    }

    /// Record one RTT sample: a sample above the estimate replaces it at once (the
    /// "peak"); a lower one is mixed in with the weight the elapsed time gives it.
    pub(crate) fn observe_rtt(&self, sample: Duration, now_ms: u64, decay: Duration) {
        let sample = sample.as_nanos() as f64;
        let mut current = self.rtt_ns.load(Relaxed);
        loop {
            let rtt = f64::from_bits(current);
            let stamp = self.rtt_stamp.load(Relaxed);
            let next = if sample > rtt {
                sample
            } else {
                let w = decay_weight(now_ms.saturating_sub(stamp), decay);
                rtt * w + sample * (1.0 - w)
            };
            match self
                .rtt_ns
                .compare_exchange_weak(current, next.to_bits(), Relaxed, Relaxed)
            {
                Ok(_) => {
                    // Two racing samples may both decay from the same stamp: a harmless
                    // approximation that keeps the hot path free of locks.
                    self.rtt_stamp.fetch_max(now_ms, Relaxed);
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Record a finished exchange; returns the number of consecutive gateway failures
    /// after it.
    pub(crate) fn record(
        &self,
        outcome: Outcome,
        rtt: Duration,
        now_ms: u64,
        decay: Duration,
    ) -> u32 {
        match outcome {
            Outcome::NotTheEndpoint => return self.consecutive_failures.load(Relaxed),
            Outcome::Success => {
                self.observe_rtt(rtt, now_ms, decay);
                self.consecutive_failures.store(0, Relaxed);
                return 0;
            }
            _ => {}
        }
        debug_assert!(outcome.is_failure());
        self.failures.fetch_add(1, Relaxed);
        self.observe_rtt(rtt.max(FAILURE_PENALTY), now_ms, decay);
        if outcome == Outcome::GatewayFailure {
            self.consecutive_failures
                .fetch_add(1, Relaxed)
                .saturating_add(1)
        } else {
            self.consecutive_failures.load(Relaxed)
        }
    }

    pub(crate) fn reset_consecutive_failures(&self) {
        self.consecutive_failures.store(0, Relaxed);
    }

    pub(crate) fn stats(&self, clock: &Clock, decay: Duration) -> EndpointStats {
        let now = clock.now_ms();
        let until = self.ejected_until.load(Relaxed);
        EndpointStats {
            url: self.target.as_str().to_owned(),
            host: self.target.server_name().map(str::to_owned),
            weight: self.weight,
            healthy: self.healthy.load(Relaxed),
            ejected_until: (until != 0 && now < until).then(|| clock.instant(until)),
            times_ejected: self.times_ejected.load(Relaxed),
            pending: self.pending(),
            rtt_ewma: Duration::from_nanos(self.rtt_estimate(now, decay) as u64),
            requests: self.requests.load(Relaxed),
            failures: self.failures.load(Relaxed),
            consecutive_failures: self.consecutive_failures.load(Relaxed),
        }
    }
}

/// `e^(-elapsed/decay)`: how much of an old estimate survives `elapsed_ms`.
fn decay_weight(elapsed_ms: u64, decay: Duration) -> f64 {
    let tau = decay.as_secs_f64() * 1000.0;
    if tau <= 0.0 {
        return 0.0;
    }
    (-(elapsed_ms as f64) / tau).exp()
}

/// A read-only view of one endpoint, from [`BalancedProxy::endpoints`] or
/// [`DiscoverableBalancedProxy::endpoints`].
///
/// [`BalancedProxy::endpoints`]: crate::BalancedProxy::endpoints
/// [`DiscoverableBalancedProxy::endpoints`]: crate::DiscoverableBalancedProxy::endpoints
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// The endpoint's URL as given: where connections go.
    pub url: String,
    /// The name requests carry in `Host` and TLS verifies (SNI) when it is not the URL's
    /// host: the DNS name of an endpoint found by DNS discovery. `None` otherwise.
    pub host: Option<String>,
    /// Its weight (1 unless set or discovered).
    pub weight: u32,
    /// False while active health checks consider it down.
    pub healthy: bool,
    /// Set while passive outlier detection keeps it out of rotation.
    pub ejected_until: Option<Instant>,
    /// How many times it has been ejected (decays while it behaves).
    pub times_ejected: u32,
    /// Requests in flight, counted until their response body ends.
    pub pending: u64,
    /// The peak-EWMA round-trip estimate now (see
    /// [`P2cPeakEwma`](crate::LoadBalancingStrategy::P2cPeakEwma)).
    pub rtt_ewma: Duration,
    /// Requests sent to it.
    pub requests: u64,
    /// Requests that ended in a 5xx or a gateway failure.
    pub failures: u64,
    /// Gateway failures in a row, reset by a success.
    pub consecutive_failures: u32,
}

// ===== impl InFlight =====

/// One request in flight on an endpoint: counted on creation, uncounted on drop. Drop
/// runs whatever way the request ends (answer, error, cancellation), so error paths
/// need no bookkeeping.
#[derive(Debug)]
pub(crate) struct InFlight {
    endpoint: Arc<Endpoint>,
}

impl InFlight {
    pub(crate) fn start(endpoint: Arc<Endpoint>) -> Self {
        endpoint.pending.fetch_add(1, Relaxed);
        endpoint.requests.fetch_add(1, Relaxed);
        InFlight { endpoint }
    }

    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Keep the request counted until the response body ends.
    pub(crate) fn attach(self, response: Response<Body>) -> Response<Body> {
        if http_body::Body::is_end_stream(response.body()) {
            return response;
        }
        response.map(|inner| {
            Body::new(TrackedBody {
                inner,
                guard: Some(self),
            })
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.pending.fetch_sub(1, Relaxed);
    }
}

pin_project! {
    /// A response body that keeps its request counted as pending until it ends.
    struct TrackedBody {
        #[pin]
        inner: Body,
        guard: Option<InFlight>,
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
