//! Random: each request goes to an endpoint drawn at random, in proportion to weight.
//!
//! - **What**: a uniform draw (a weighted draw over the running sums of the weights when
//!   weights differ), redrawn a few times past unavailable endpoints.
//! - **Why**: no shared cursor at all, and no correlation between proxies that start at
//!   the same time (a fleet of round-robin proxies restarted together hits endpoint 0
//!   together).
//! - **Randomness**: `fastrand`, seeded per pick from the proxy's seed; set it with
//!   `with_rng_seed` for reproducible tests.

use super::{PickCtx, next_available};
use crate::balance::set::Snapshot;

pub(crate) fn pick(snapshot: &Snapshot, ctx: &mut PickCtx<'_>) -> Option<usize> {
    let n = snapshot.len();
    if n == 0 {
        return None;
    }
    for _ in 0..4 {
        let i = draw(snapshot, ctx);
        if ctx.available(&snapshot.endpoints[i]) {
            return Some(i);
        }
    }
    let start = ctx.rng().usize(0..n);
    next_available(snapshot, ctx, start)
}

fn draw(snapshot: &Snapshot, ctx: &mut PickCtx<'_>) -> usize {
    let n = snapshot.len();
    if snapshot.equal_weights {
        return ctx.rng().usize(0..n);
    }
    let sums = snapshot.cumulative();
    let total = sums.last().copied().unwrap_or(0);
    if total == 0 {
        return ctx.rng().usize(0..n);
    }
    let r = ctx.rng().u64(0..total);
    // The first endpoint whose running sum exceeds r.
    sums.partition_point(|&s| s <= r).min(n - 1)
}
