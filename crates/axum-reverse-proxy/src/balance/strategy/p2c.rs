//! Power of two choices by pending requests (`P2cPendingRequests`).
//!
//! - **What**: draw two distinct available endpoints at random and send to the one with
//!   fewer requests in flight (divided by its weight); ties go to the first draw.
//! - **Why**: nearly as good as "least loaded" while reading only two counters, and it
//!   avoids the herd effect of every proxy picking the single least-loaded endpoint.
//!   Mitzenmacher, *The Power of Two Choices in Randomized Load Balancing* (2001).
//! - **Pending** counts a request from selection until its response body ends (an RAII
//!   guard in the body), so long streams count as load. 1.3 stopped counting at the
//!   response headers.

use super::{PickCtx, cheaper, two_choices};
use crate::balance::set::Snapshot;

pub(crate) fn pick(snapshot: &Snapshot, ctx: &mut PickCtx<'_>) -> Option<usize> {
    let choices = two_choices(snapshot, ctx)?;
    Some(cheaper(snapshot, choices, |e| {
        (e.pending() as f64 + 1.0) / f64::from(e.weight)
    }))
}
