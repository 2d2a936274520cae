//! Endpoint selection: one file per strategy. Each `pick` reads one snapshot and the
//! endpoints' atomics, and returns the index of an available endpoint, or `None` when
//! none is available.

use std::cell::Cell;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use super::LoadBalancingStrategy;
use super::endpoint::{Clock, Endpoint};
use super::set::{EndpointSet, Snapshot};

pub mod least_request;
pub mod maglev;
pub mod p2c;
pub mod peak_ewma;
pub mod random;
pub mod round_robin;
pub mod weighted;

/// What a strategy may use to pick.
pub(crate) struct PickCtx<'a> {
    set: &'a EndpointSet,
    rng: Option<fastrand::Rng>,
    pub(crate) cursor: &'a AtomicUsize,
    /// The request's hash key, for consistent hashing.
    pub(crate) hash: Option<u64>,
    /// The peak-EWMA decay time constant.
    pub(crate) decay: Duration,
    clock: &'a Clock,
    now: Cell<Option<u64>>,
}

impl<'a> PickCtx<'a> {
    pub(crate) fn new(set: &'a EndpointSet, hash: Option<u64>, decay: Duration) -> Self {
        PickCtx {
            set,
            rng: None,
            cursor: &set.cursor,
            hash,
            decay,
            clock: &set.clock,
            now: Cell::new(None),
        }
    }

    /// The pick's RNG, seeded on first use (strategies without randomness never touch
    /// the shared seed counter).
    pub(crate) fn rng(&mut self) -> &mut fastrand::Rng {
        let set = self.set;
        self.rng.get_or_insert_with(|| set.rng())
    }

    /// The current time, read at most once per pick and only when needed.
    pub(crate) fn now_ms(&self) -> u64 {
        match self.now.get() {
            Some(now) => now,
            None => {
                let now = self.clock.now_ms();
                self.now.set(Some(now));
                now
            }
        }
    }

    pub(crate) fn available(&self, endpoint: &Endpoint) -> bool {
        endpoint.is_available(|| self.now_ms())
    }
}

/// Pick an endpoint of `snapshot` with `strategy`.
pub(crate) fn pick(
    strategy: LoadBalancingStrategy,
    snapshot: &Snapshot,
    ctx: &mut PickCtx<'_>,
) -> Option<usize> {
    match strategy {
        LoadBalancingStrategy::RoundRobin => round_robin::pick(snapshot, ctx),
        LoadBalancingStrategy::WeightedRoundRobin => weighted::pick(snapshot, ctx),
        LoadBalancingStrategy::P2cPendingRequests => p2c::pick(snapshot, ctx),
        LoadBalancingStrategy::P2cPeakEwma => peak_ewma::pick(snapshot, ctx),
        LoadBalancingStrategy::LeastRequest => least_request::pick(snapshot, ctx),
        LoadBalancingStrategy::Random => random::pick(snapshot, ctx),
        LoadBalancingStrategy::ConsistentHash => maglev::pick(snapshot, ctx),
    }
}

/// The first available endpoint at or after `start`, wrapping around.
pub(crate) fn next_available(
    snapshot: &Snapshot,
    ctx: &PickCtx<'_>,
    start: usize,
) -> Option<usize> {
    let n = snapshot.len();
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| ctx.available(&snapshot.endpoints[i]))
}

/// Two distinct available endpoints drawn uniformly (one if only one is available), for
/// the power-of-two-choices strategies. A few redraws skip unavailable endpoints; after
/// that the draw is made among the available ones directly.
pub(crate) fn two_choices(
    snapshot: &Snapshot,
    ctx: &mut PickCtx<'_>,
) -> Option<(usize, Option<usize>)> {
    let n = snapshot.len();
    match n {
        0 => return None,
        1 => return ctx.available(&snapshot.endpoints[0]).then_some((0, None)),
        _ => {}
    }
    for _ in 0..4 {
        let a = ctx.rng().usize(0..n);
        let mut b = ctx.rng().usize(0..n - 1);
        if b >= a {
            b += 1;
        }
        if ctx.available(&snapshot.endpoints[a]) && ctx.available(&snapshot.endpoints[b]) {
            return Some((a, Some(b)));
        }
    }
    let live: Vec<usize> = (0..n)
        .filter(|&i| ctx.available(&snapshot.endpoints[i]))
        .collect();
    match live.len() {
        0 => None,
        1 => Some((live[0], None)),
        m => {
            let a = ctx.rng().usize(0..m);
            let mut b = ctx.rng().usize(0..m - 1);
            if b >= a {
                b += 1;
            }
            Some((live[a], Some(live[b])))
        }
    }
}

/// The cheaper of two choices by `cost`; ties go to the first draw.
pub(crate) fn cheaper(
    snapshot: &Snapshot,
    choices: (usize, Option<usize>),
    cost: impl Fn(&Endpoint) -> f64,
) -> usize {
    match choices {
        (a, None) => a,
        (a, Some(b)) => {
            if cost(&snapshot.endpoints[b]) < cost(&snapshot.endpoints[a]) {
                b
            } else {
                a
            }
        }
    }
}
