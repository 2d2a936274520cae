//! Retry budget: caps retries at a share of recent traffic so they cannot multiply an outage.
//!
//! # Algorithm
//!
//! Every request handled by the layer makes a *deposit*; every retry must make a
//! *withdrawal*, which is refused when the balance over the last `ttl` would go negative:
//!
//! ```text
//! retries(ttl) + 1  <=  min_per_second · ttl  +  retry_ratio · requests(ttl)
//! ```
//!
//! The first term is a reserve so that a quiet service can still retry; the second lets
//! retries grow with traffic, but never beyond a fixed fraction of it. With the defaults
//! (`ttl` 10 s, 10 retries per second, ratio 0.2) a service that loses every upstream at once
//! sends at most 1.2 times its normal load plus 100 retries per 10 s, instead of the
//! `attempts` times that per-request retry limits allow.
//!
//! Both counters are kept in a ring of ten slots, each covering a tenth of `ttl`, so old
//! traffic expires in steps of `ttl / 10`. Each slot is one atomic word holding its slot
//! number and its count: the hot path takes no lock. Concurrent withdrawals may overdraw by
//! at most the number of racing callers.
//!
//! # Source
//!
//! The model and the defaults are Finagle's `RetryBudget` (release 6.31): deposits per
//! request, withdrawals per retry, a minimum rate as reserve, deposits expiring after `ttl`;
//! see "Retry Budgets", <https://finagle.github.io/blog/2016/02/08/retry-budgets/>. linkerd
//! exposes the same three knobs (`retry_ratio`, `min_retries_per_second`, `ttl`), and tower
//! ships it as `tower::retry::budget::TpsBudget`. This implementation is our own: it keeps
//! no lock and reads the clock from `tokio::time`, so tests can drive it with a paused clock.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Number of slots the `ttl` window is divided into.
const SLOTS: usize = 10;
/// Shortest and longest accepted window (as Finagle requires).
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(60);
/// Largest accepted ratio: 1000 retries per request (as tower's `TpsBudget` allows).
const MAX_RATIO: f32 = 1000.0;

/// A retry budget shared by all services built from one [`RetryLayer`](super::RetryLayer).
pub(crate) struct Budget {
    start: Instant,
    ttl: Duration,
    slot_nanos: u128,
    min_per_second: u32,
    /// `retry_ratio` in thousandths.
    ratio_milli: u64,
    /// `min_per_second · ttl` in thousandths of a retry.
    reserve_milli: u64,
    deposits: [AtomicU64; SLOTS],
    withdrawals: [AtomicU64; SLOTS],
}

impl Budget {
    /// The default budget: 10 s window, 10 retries per second, plus 20 % of requests.
    pub(crate) fn default_budget() -> Budget {
        Budget::new(Duration::from_secs(10), 10, 0.2)
    }

    /// A budget allowing `min_per_second` retries per second plus `ratio` retries per
    /// request, both measured over the last `ttl`.
    ///
    /// `ttl` is clamped to 1..=60 s and `ratio` to 0..=1000 (NaN counts as 0).
    pub(crate) fn new(ttl: Duration, min_per_second: u32, ratio: f32) -> Budget {
        let ttl = ttl.clamp(MIN_TTL, MAX_TTL);
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, MAX_RATIO)
        };
        // In range after the clamp: at most 1_000_000.
        let ratio_milli = (f64::from(ratio) * 1000.0).round() as u64;
        let ttl_millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Budget {
            start: Instant::now(),
            ttl,
            slot_nanos: (ttl / SLOTS as u32).as_nanos().max(1),
            min_per_second,
            ratio_milli,
            reserve_milli: u64::from(min_per_second).saturating_mul(ttl_millis),
            deposits: Default::default(),
            withdrawals: Default::default(),
        }
    }

    /// Records one request.
    pub(crate) fn deposit(&self) {
        bump(&self.deposits, self.slot());
    }

    /// Takes one retry from the budget; `false` if the budget is exhausted.
    pub(crate) fn withdraw(&self) -> bool {
        let slot = self.slot();
        let requests = window_sum(&self.deposits, slot);
        let retries = window_sum(&self.withdrawals, slot);
        let allowed = self
            .reserve_milli
            .saturating_add(requests.saturating_mul(self.ratio_milli));
        let wanted = retries.saturating_add(1).saturating_mul(1000);
        if wanted > allowed {
            return false;
        }
        bump(&self.withdrawals, slot);
        true
    }

    /// The number of the slot the present instant falls in (wrapping).
    fn slot(&self) -> u32 {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        // Truncation wraps the slot number, which all comparisons expect.
        (elapsed.as_nanos() / self.slot_nanos) as u32
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("ttl", &self.ttl)
            .field("min_per_second", &self.min_per_second)
            .field("retry_ratio", &(self.ratio_milli as f64 / 1000.0))
            .finish()
    }
}

// ===== slot ring =====
//
// Each word packs `slot number << 32 | count`.

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

fn pack(slot: u32, count: u32) -> u64 {
    (u64::from(slot) << 32) | u64::from(count)
}

/// Adds one to the count of `slot`, resetting the word if it still holds an expired slot.
fn bump(ring: &[AtomicU64; SLOTS], slot: u32) {
    let word = &ring[slot as usize % SLOTS];
    let mut current = word.load(Ordering::Relaxed);
    loop {
        let (held, count) = unpack(current);
        // A caller that read the clock later may already have moved the word to a newer
        // slot: count there rather than wiping it.
        let newer_or_same = (held.wrapping_sub(slot) as i32) >= 0;
        let next = if newer_or_same {
            pack(held, count.saturating_add(1))
        } else {
            pack(slot, 1)
        };
        match word.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// The sum of the counts of the slots still inside the window that ends at `slot`.
fn window_sum(ring: &[AtomicU64; SLOTS], slot: u32) -> u64 {
    ring.iter()
        .map(|word| unpack(word.load(Ordering::Relaxed)))
        .filter(|&(held, _)| (slot.wrapping_sub(held) as usize) < SLOTS)
        .map(|(_, count)| u64::from(count))
        .sum()
}
