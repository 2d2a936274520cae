//! Consistent hashing with a Maglev lookup table (`ConsistentHash`).
//!
//! - **What**: each request's key (a header, a cookie, the path or the client IP; see
//!   [`HashKey`](crate::HashKey)) is hashed to a slot of a lookup table, and the slot
//!   names the endpoint. Each endpoint fills the table following its own permutation of
//!   the slots (an offset and a skip derived from two hashes of its URL); endpoints take
//!   turns, in proportion to their weights, until the table is full.
//! - **Why**: the same key reaches the same endpoint (caches, sessions), every endpoint
//!   gets an almost equal share of the slots, and adding or removing one of `N` endpoints
//!   moves only about `1/N` of the keys. Lookups are one array read.
//! - **Defaults**: the table has 65,537 slots (a prime), or 655,373 when there are more
//!   than 650 endpoints: about 100 slots per endpoint or more up to 6,500 endpoints (65
//!   at 10,000). Weights give proportional shares of the slots, up to a ratio of 64:1.
//!   The table is rebuilt when the endpoint set changes, never on the request path.
//! - **Unavailable endpoints**: a key whose endpoint is ejected or unhealthy walks on to
//!   the next slots until it finds an available endpoint, so its keys spread over the
//!   others and come back when it recovers. A request without the key is sent to a random
//!   endpoint.
//! - **Source**: Eisenbud et al., *Maglev: A Fast and Reliable Software Network Load
//!   Balancer*, NSDI 2016, §3.4. Our own implementation.

use std::sync::Arc;

use super::{PickCtx, random};
use crate::balance::endpoint::Endpoint;
use crate::balance::set::{Snapshot, stable_hash};

/// Table size for small sets.
pub(crate) const SMALL_TABLE: usize = 65_537;
/// Table size above [`SMALL_LIMIT`] endpoints.
pub(crate) const LARGE_TABLE: usize = 655_373;
const SMALL_LIMIT: usize = 650;

/// A filled Maglev lookup table: slot → endpoint index.
#[derive(Debug)]
pub(crate) struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    pub(crate) fn build(endpoints: &[Arc<Endpoint>]) -> Maglev {
        let names: Vec<(&str, u32)> = endpoints
            .iter()
            .map(|e| (e.target.as_str(), e.weight))
            .collect();
        Self::from_names(&names)
    }

    pub(crate) fn from_names(names: &[(&str, u32)]) -> Maglev {
        let n = names.len();
        if n == 0 {
            return Maglev { table: Vec::new() };
        }
        let m = if n > SMALL_LIMIT {
            LARGE_TABLE
        } else {
            SMALL_TABLE
        };
        let m64 = m as u64;
        let perms: Vec<(u64, u64)> = names
            .iter()
            .map(|(name, _)| {
                let offset = stable_hash(name.as_bytes(), 0x6d61_676c) % m64;
                let skip = stable_hash(name.as_bytes(), 0x736b_6970) % (m64 - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_weight = names.iter().map(|(_, w)| (*w).max(1)).max().unwrap_or(1);
        // Each round every endpoint earns weight / max weight of a slot; ratios beyond
        // 64:1 are compressed so that a tiny weight cannot make the build take m × n steps.
        let earn: Vec<f64> = names
            .iter()
            .map(|(_, w)| (f64::from((*w).max(1)) / f64::from(max_weight)).max(1.0 / 64.0))
            .collect();
        let mut credit = vec![0f64; n];
        let mut next = vec![0u64; n];
        let mut table = vec![u32::MAX; m];
        let mut filled = 0;
        while filled < m {
            for i in 0..n {
                credit[i] += earn[i];
                if credit[i] < 1.0 {
                    continue;
                }
                credit[i] -= 1.0;
                let (offset, skip) = perms[i];
                // The permutation visits every slot since m is prime: this ends.
                loop {
                    let slot = ((offset + next[i] * skip) % m64) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break;
                }
            }
        }
        Maglev { table }
    }

    /// The endpoint index of `hash`'s slot, and the slot.
    pub(crate) fn lookup(&self, hash: u64) -> Option<(usize, usize)> {
        if self.table.is_empty() {
            return None;
        }
        let slot = (hash % self.table.len() as u64) as usize;
        Some((self.table[slot] as usize, slot))
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn at(&self, slot: usize) -> usize {
        self.table[slot % self.table.len()] as usize
    }
}

pub(crate) fn pick(snapshot: &Snapshot, ctx: &mut PickCtx<'_>) -> Option<usize> {
    let Some(hash) = ctx.hash else {
        return random::pick(snapshot, ctx);
    };
    let table = snapshot.maglev();
    let (first, slot) = table.lookup(hash)?;
    if ctx.available(snapshot.endpoints.get(first)?) {
        return Some(first);
    }
    (1..table.len())
        .map(|k| table.at(slot + k))
        .find(|&i| snapshot.endpoints.get(i).is_some_and(|e| ctx.available(e)))
}
