//! Round robin: each request goes to the next endpoint in order.
//!
//! - **What**: a shared atomic cursor; request `k` goes to endpoint `k mod n`, skipping
//!   endpoints that are unhealthy or ejected. The first request goes to the first
//!   endpoint, as in 1.3.
//! - **Why**: the default. Predictable, no state beyond the cursor, ideal when endpoints
//!   are alike and requests cost about the same.
//! - **Cost**: one atomic increment. An unavailable endpoint costs one more increment
//!   (so its turn passes to the next *pick*, and the endpoint after it does not get a
//!   double share); after eight misses in a row the pick scans for the next available
//!   endpoint.
//! - **Weights**: ignored (see
//!   [`WeightedRoundRobin`](crate::LoadBalancingStrategy::WeightedRoundRobin)).

use std::sync::atomic::Ordering::Relaxed;

use super::{PickCtx, next_available};
use crate::balance::set::Snapshot;

/// Cursor increments tried before scanning.
const TRIES: usize = 8;

pub(crate) fn pick(snapshot: &Snapshot, ctx: &mut PickCtx<'_>) -> Option<usize> {
    let n = snapshot.len();
    if n == 0 {
        return None;
    }
    let mut position = 0;
    for _ in 0..TRIES.min(n) {
        position = ctx.cursor.fetch_add(1, Relaxed) % n;
        if ctx.available(&snapshot.endpoints[position]) {
            return Some(position);
        }
    }
    next_available(snapshot, ctx, position)
}
