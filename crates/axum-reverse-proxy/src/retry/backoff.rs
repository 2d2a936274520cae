//! Backoff: how long to wait before each retry.
//!
//! # Algorithm
//!
//! Capped exponential backoff with "equal jitter". Before retry `n` (1 for the first retry)
//! the nominal wait is
//!
//! ```text
//! d(n) = min(max_delay, base · 2^(n-1))
//! ```
//!
//! and the actual wait is drawn uniformly from `[d(n)/2, d(n)]`. Doubling spreads the retries
//! of one request over a growing interval, so an upstream that is restarting gets time to come
//! back; jitter spreads the retries of many requests that failed together, so they do not hit
//! the upstream again in lock-step. Equal jitter (rather than "full" jitter, uniform in
//! `[0, d(n)]`) keeps at least half of the nominal wait, so a retry never follows a connect
//! failure immediately.
//!
//! Defaults: `base` 500 ms (the fixed delay of axum-reverse-proxy 1.3), `max_delay` ten times
//! `base`. With jitter disabled the waits are exactly `d(n)`.
//!
//! # Source
//!
//! Marc Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015:
//! <https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/>.

use std::time::Duration;

/// The default base delay: the fixed delay of axum-reverse-proxy 1.3.
pub(crate) const DEFAULT_BASE: Duration = Duration::from_millis(500);

/// The default cap, as a multiple of the base delay.
const DEFAULT_MAX_FACTOR: u32 = 10;

/// Capped exponential backoff with optional equal jitter.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    base: Duration,
    /// `None`: ten times `base`.
    max: Option<Duration>,
    jitter: bool,
}

impl Backoff {
    pub(crate) fn new(base: Duration) -> Backoff {
        Backoff {
            base,
            max: None,
            jitter: true,
        }
    }

    pub(crate) fn set_max(&mut self, max: Duration) {
        self.max = Some(max);
    }

    pub(crate) fn set_jitter(&mut self, jitter: bool) {
        self.jitter = jitter;
    }

    /// The nominal wait before retry `retry` (1-based), without jitter.
    pub(crate) fn nominal(&self, retry: u32) -> Duration {
        let max = self
            .max
            .unwrap_or_else(|| self.base.saturating_mul(DEFAULT_MAX_FACTOR));
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(max)
    }

    /// The wait before retry `retry` (1-based).
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let nominal = self.nominal(retry);
        if !self.jitter || nominal.is_zero() {
            return nominal;
        }
        let half = nominal / 2;
        let spread = u64::try_from((nominal - half).as_nanos()).unwrap_or(u64::MAX);
        half.saturating_add(Duration::from_nanos(fastrand::u64(0..=spread)))
    }
}
