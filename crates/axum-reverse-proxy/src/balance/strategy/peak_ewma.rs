//! Power of two choices by peak-EWMA latency (`P2cPeakEwma`).
//!
//! - **What**: draw two distinct available endpoints and send to the lower
//!   `cost = rtt_estimate × (pending + 1) / weight`. The RTT estimate is a *peak*
//!   exponentially weighted moving average of the time to response headers:
//!   - a sample above the estimate replaces it at once, so a slowdown is seen on the
//!     first slow response;
//!   - a sample below it is mixed in with weight `1 − e^(−Δt/τ)`, where `Δt` is the time
//!     since the last update: the estimate falls back over about `τ` of wall time;
//!   - with no samples the estimate decays towards zero with the same time constant, so
//!     an endpoint that looked slow a while ago is tried again.
//! - **Defaults**: `τ` = 10 s; a new endpoint starts at 30 ms (linkerd's default RTT), so
//!   it is not flooded before its first answer. A failed request (5xx or gateway
//!   failure) counts as an RTT of at least 1 s, so an endpoint that answers errors
//!   quickly does not look fast.
//! - **Why**: it reacts to latency, not only to concurrency, which suits endpoints of
//!   different speed or a fleet where one instance is degraded.
//! - **Source**: Finagle's `PeakEwma` load metric (Twitter), as used by linkerd and
//!   tower's `load::PeakEwma`. Our own implementation, on per-endpoint atomics.

use super::{PickCtx, cheaper, two_choices};
use crate::balance::set::Snapshot;

pub(crate) fn pick(snapshot: &Snapshot, ctx: &mut PickCtx<'_>) -> Option<usize> {
    let choices = two_choices(snapshot, ctx)?;
    if choices.1.is_none() {
        return Some(choices.0);
    }
    let now = ctx.now_ms();
    let decay = ctx.decay;
    Some(cheaper(snapshot, choices, |e| {
        e.rtt_estimate(now, decay) * (e.pending() as f64 + 1.0) / f64::from(e.weight)
    }))
}
