//! Least request (`LeastRequest`), after Envoy's `LEAST_REQUEST` policy.
//!
//! - **What**: with at most 16 endpoints, scan them all and send to the one with the
//!   fewest requests in flight per unit of weight (`(pending + 1) / weight`); endpoints
//!   tied at the minimum take turns. With more endpoints, a
//!   full scan per request costs too much: draw two at random and keep the better, as
//!   Envoy does with its default `choice_count` of 2.
//! - **Why**: exact where it is cheap (small pools, where one busy endpoint matters most),
//!   constant time where it is not.
//! - **Source**: Envoy, *Supported load balancers: weighted least request*.

use std::sync::atomic::Ordering::Relaxed;

use super::{PickCtx, cheaper, two_choices};
use crate::balance::set::Snapshot;

/// Up to this many endpoints the minimum is exact.
pub(crate) const EXACT_UP_TO: usize = 16;

pub(crate) fn pick(snapshot: &Snapshot, ctx: &mut PickCtx<'_>) -> Option<usize> {
    let n = snapshot.len();
    let cost = |i: usize| {
        let e = &snapshot.endpoints[i];
        (e.pending() as f64 + 1.0) / f64::from(e.weight)
    };
    if n <= EXACT_UP_TO {
        if n == 0 {
            return None;
        }
        // Two passes: the minimum cost, then the k-th endpoint at that cost, k rotating.
        let mut best = f64::INFINITY;
        let mut ties = 0usize;
        for i in 0..n {
            if !ctx.available(&snapshot.endpoints[i]) {
                continue;
            }
            let c = cost(i);
            if c < best {
                best = c;
                ties = 1;
            } else if c == best {
                ties += 1;
            }
        }
        if ties == 0 {
            return None;
        }
        let mut k = ctx.cursor.fetch_add(1, Relaxed) % ties;
        for i in 0..n {
            if ctx.available(&snapshot.endpoints[i]) && cost(i) == best {
                if k == 0 {
                    return Some(i);
                }
                k -= 1;
            }
        }
        return None;
    }
    let choices = two_choices(snapshot, ctx)?;
    Some(cheaper(snapshot, choices, |e| {
        (e.pending() as f64 + 1.0) / f64::from(e.weight)
    }))
}
