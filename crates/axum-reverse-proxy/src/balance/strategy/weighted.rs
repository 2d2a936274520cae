//! Smooth weighted round robin (`WeightedRoundRobin`), nginx's algorithm.
//!
//! - **What**: every endpoint has a running score. Each step adds every endpoint's
//!   weight to its score, picks the highest score (the first on ties) and subtracts the
//!   total weight from the winner. Weights 5, 1, 1 give `a a b a c a a`: the heavy
//!   endpoint gets its share without long bursts.
//! - **How here**: the sequence is periodic (its period is the sum of the weights after
//!   dividing by their greatest common divisor), so it is computed once per endpoint-set
//!   change and requests walk it with one atomic cursor; no lock, no per-request scan.
//!   Unavailable endpoints are skipped (the next entry of the sequence is used).
//! - **Limits**: if the period exceeds 2^20 entries, or computing it would take more than
//!   2^26 steps, the proxy uses a weighted random draw instead (same shares, not the
//!   smooth order). With equal weights this is plain round robin.
//! - **Source**: nginx `ngx_http_upstream_round_robin.c` (`ngx_http_upstream_get_peer`),
//!   described in nginx's changeset 3a9c6bd0d7d6 (2012). Our own implementation.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::{PickCtx, next_available, random, round_robin};
use crate::balance::endpoint::Endpoint;
use crate::balance::set::Snapshot;

const MAX_PERIOD: u64 = 1 << 20;
const MAX_STEPS: u64 = 1 << 26;

/// The precomputed order of a weighted set.
#[derive(Debug)]
pub(crate) enum Schedule {
    /// Endpoint indices in smooth-WRR order, one period long.
    Smooth(Vec<u32>),
    /// Too long to precompute: draw at random by weight.
    Random,
}

impl Schedule {
    pub(crate) fn build(endpoints: &[Arc<Endpoint>]) -> Schedule {
        let weights: Vec<u64> = endpoints.iter().map(|e| u64::from(e.weight)).collect();
        Self::from_weights(&weights)
    }

    pub(crate) fn from_weights(weights: &[u64]) -> Schedule {
        let g = weights.iter().copied().fold(0, gcd).max(1);
        let weights: Vec<i64> = weights.iter().map(|&w| (w / g) as i64).collect();
        let total: u64 = weights.iter().map(|&w| w as u64).sum();
        let n = weights.len() as u64;
        if total == 0 || total > MAX_PERIOD || total.saturating_mul(n) > MAX_STEPS {
            return Schedule::Random;
        }
        let total = total as i64;
        let mut score = vec![0i64; weights.len()];
        let mut order = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                score[i] += w;
                if score[i] > score[best] {
                    best = i;
                }
            }
            score[best] -= total;
            order.push(best as u32);
        }
        Schedule::Smooth(order)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

pub(crate) fn pick(snapshot: &Snapshot, ctx: &mut PickCtx<'_>) -> Option<usize> {
    if snapshot.equal_weights {
        return round_robin::pick(snapshot, ctx);
    }
    match snapshot.schedule() {
        Schedule::Smooth(order) if !order.is_empty() => {
            // As in round robin: a miss consumes a turn, then scan.
            let len = order.len();
            let mut start = 0;
            for _ in 0..8.min(len) {
                start = ctx.cursor.fetch_add(1, Relaxed) % len;
                let i = order[start] as usize;
                if ctx.available(&snapshot.endpoints[i]) {
                    return Some(i);
                }
            }
            for k in 1..len {
                let i = order[(start + k) % len] as usize;
                if ctx.available(&snapshot.endpoints[i]) {
                    return Some(i);
                }
            }
            // Only reachable if some endpoint never appears in the order.
            next_available(snapshot, ctx, 0)
        }
        _ => random::pick(snapshot, ctx),
    }
}
