//! Passive outlier detection: [`OutlierDetection`].

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::endpoint::Endpoint;
use super::set::EndpointSet;

/// Settings of passive outlier detection: endpoints that keep failing are taken out of
/// rotation for a while, judged from the responses to real traffic.
///
/// - **What**: after [`consecutive_gateway_failures`](OutlierDetection::with_consecutive_gateway_failures)
///   gateway failures in a row (default 5) — a 502, 503 or 504 from the endpoint, or the
///   proxy failing to connect, losing the connection or timing out — the endpoint is
///   ejected: it receives no traffic for `base_ejection_time × times ejected` (default
///   30 s), at most `max_ejection_time` (default 300 s). It comes back by itself when the
///   time is up; no probe is needed. A success resets the failure count. Each full
///   `base_ejection_time` spent in rotation since its last return takes one off the
///   ejection count, so an endpoint that recovered for good starts again from 30 s.
/// - **Caps**: never more than `max_ejection_percent` of the endpoints (default 10 %)
///   are ejected at once, but at least one may be when there are two or more, and never
///   all of them: a single endpoint is never ejected, nor the last one that is healthy
///   and not ejected.
/// - **Why**: a crashed or overloaded instance stops receiving traffic within five
///   requests, without waiting for an active health check.
/// - **Source**: Envoy's outlier detection (`consecutive_gateway_failure`,
///   `base_ejection_time`, `max_ejection_time`, `max_ejection_percent`), with its
///   defaults. Enabled by default; [`OutlierDetection::disabled`] turns it off.
///
/// ```
/// use std::time::Duration;
/// use axum_reverse_proxy::OutlierDetection;
///
/// let outliers = OutlierDetection::default()
///     .with_consecutive_gateway_failures(3)
///     .with_base_ejection_time(Duration::from_secs(10))
///     .with_max_ejection_percent(50);
/// # let _ = outliers;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    pub(crate) enabled: bool,
    pub(crate) consecutive_gateway_failures: u32,
    pub(crate) base_ejection_time: Duration,
    pub(crate) max_ejection_time: Duration,
    pub(crate) max_ejection_percent: u8,
}

impl Default for OutlierDetection {
    /// Envoy's defaults: 5 consecutive gateway failures, 30 s base ejection, 300 s
    /// maximum, 10 % of the endpoints at most (at least one).
    fn default() -> Self {
        OutlierDetection {
            enabled: true,
            consecutive_gateway_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

impl OutlierDetection {
    /// No passive ejection at all.
    pub fn disabled() -> Self {
        OutlierDetection {
            enabled: false,
            ..Self::default()
        }
    }

    /// Gateway failures in a row that eject an endpoint (at least 1).
    pub fn with_consecutive_gateway_failures(mut self, failures: u32) -> Self {
        self.consecutive_gateway_failures = failures.max(1);
        self
    }

    /// The ejection time, multiplied by the number of times the endpoint was ejected.
    pub fn with_base_ejection_time(mut self, time: Duration) -> Self {
        self.base_ejection_time = time;
        self
    }

    /// The longest ejection.
    pub fn with_max_ejection_time(mut self, time: Duration) -> Self {
        self.max_ejection_time = time;
        self
    }

    /// The largest share of endpoints ejected at once, in percent (clamped to 100). At
    /// least one endpoint may be ejected when there are two or more; never all.
    pub fn with_max_ejection_percent(mut self, percent: u8) -> Self {
        self.max_ejection_percent = percent.min(100);
        self
    }

    /// How many of `n` endpoints may be ejected at once.
    pub(crate) fn max_ejected(&self, n: usize) -> usize {
        let share = n * usize::from(self.max_ejection_percent) / 100;
        share.max(1).min(n.saturating_sub(1))
    }

    /// Called after a gateway failure left `endpoint` with `consecutive` failures in a
    /// row. Ejects it if the threshold is reached and the caps allow. Returns whether it
    /// was ejected.
    pub(crate) fn on_failure(
        &self,
        set: &EndpointSet,
        endpoint: &Endpoint,
        consecutive: u32,
    ) -> bool {
        if !self.enabled || consecutive < self.consecutive_gateway_failures {
            return false;
        }
        // Rare: only on the threshold. Poisoning cannot leave the `()` inconsistent.
        let _guard = set
            .eject_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = set.clock.now_ms();
        if endpoint.is_ejected_at(now) {
            return false;
        }
        let snapshot = set.load();
        if !snapshot.endpoints.iter().any(|e| e.id == endpoint.id) {
            // Removed by discovery meanwhile.
            return false;
        }
        let ejected = snapshot
            .endpoints
            .iter()
            .filter(|e| e.is_ejected_at(now))
            .count();
        if ejected >= self.max_ejected(snapshot.len()) {
            return false;
        }
        // Never take out the last endpoint that can serve (others may be down by health
        // checks).
        let others_available = snapshot
            .endpoints
            .iter()
            .any(|e| e.id != endpoint.id && e.is_available(|| now));
        if !others_available {
            return false;
        }
        let base = self.base_ejection_time.as_millis().max(1);
        // Forgive one past ejection per full base time spent in rotation since the last
        // one ended (an approximation of Envoy's per-interval decrement).
        let previous = endpoint.times_ejected.load(Relaxed);
        let last_end = endpoint.ejected_until.load(Relaxed);
        let forgiven = if last_end == 0 {
            0
        } else {
            u32::try_from(u128::from(now.saturating_sub(last_end)) / base).unwrap_or(u32::MAX)
        };
        let times = previous.saturating_sub(forgiven).saturating_add(1);
        let duration =
            (base.saturating_mul(u128::from(times))).min(self.max_ejection_time.as_millis().max(1));
        let until = now.saturating_add(u64::try_from(duration).unwrap_or(u64::MAX));
        endpoint.times_ejected.store(times, Relaxed);
        endpoint.ejected_until.store(until, Relaxed);
        endpoint.reset_consecutive_failures();
        tracing::warn!(
            upstream = %endpoint.target.authority(),
            times,
            ejected_for_ms = duration as u64,
            "ejecting endpoint after consecutive gateway failures"
        );
        true
    }
}
