//! The endpoint set: an immutable snapshot behind an `ArcSwap`, replaced whole by
//! writers (construction, discovery) and read without locks by every request.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

use super::LoadBalancingStrategy;
use super::endpoint::{Clock, Endpoint, EndpointStats};
use super::strategy::{maglev::Maglev, weighted::Schedule};

/// One immutable generation of the endpoint list, with tables derived from it. The
/// tables are built when the snapshot is published for a strategy that needs them, or
/// on first use otherwise.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    /// Every endpoint has the same weight.
    pub(crate) equal_weights: bool,
    schedule: OnceLock<Schedule>,
    maglev: OnceLock<Maglev>,
    cumulative: OnceLock<Vec<u64>>,
}

impl Snapshot {
    pub(crate) fn new(endpoints: Vec<Arc<Endpoint>>) -> Self {
        let equal_weights = endpoints.windows(2).all(|w| w[0].weight == w[1].weight);
        Snapshot {
            endpoints,
            equal_weights,
            schedule: OnceLock::new(),
            maglev: OnceLock::new(),
            cumulative: OnceLock::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub(crate) fn schedule(&self) -> &Schedule {
        self.schedule
            .get_or_init(|| Schedule::build(&self.endpoints))
    }

    pub(crate) fn maglev(&self) -> &Maglev {
        self.maglev.get_or_init(|| Maglev::build(&self.endpoints))
    }

    /// Running sums of the weights, for weighted random draws.
    pub(crate) fn cumulative(&self) -> &[u64] {
        self.cumulative.get_or_init(|| {
            let mut sum = 0u64;
            self.endpoints
                .iter()
                .map(|e| {
                    sum += u64::from(e.weight);
                    sum
                })
                .collect()
        })
    }

    /// Build the tables `strategy` reads, so that no request pays for them.
    fn prepare(&self, strategy: LoadBalancingStrategy) {
        match strategy {
            LoadBalancingStrategy::WeightedRoundRobin if !self.equal_weights => {
                self.schedule();
            }
            LoadBalancingStrategy::ConsistentHash => {
                self.maglev();
            }
            _ if !self.equal_weights => {
                self.cumulative();
            }
            _ => {}
        }
    }
}

/// The live endpoint set of one balanced proxy.
#[derive(Debug)]
pub(crate) struct EndpointSet {
    snapshot: ArcSwap<Snapshot>,
    pub(crate) clock: Clock,
    /// Shared position of the round-robin strategies.
    pub(crate) cursor: AtomicUsize,
    /// Seed source: each pick draws from an RNG seeded by the next value.
    rng: AtomicU64,
    /// Taken only to decide an ejection (rare), so that two racing ejections cannot
    /// exceed the ejection cap. Never taken on the request path.
    pub(crate) eject_lock: Mutex<()>,
}

/// The golden-ratio increment: spaces the per-pick seeds.
const SEED_STEP: u64 = 0x9e37_79b9_7f4a_7c15;

impl EndpointSet {
    pub(crate) fn new(endpoints: Vec<Arc<Endpoint>>, clock: Clock, seed: u64) -> Self {
        EndpointSet {
            snapshot: ArcSwap::from_pointee(Snapshot::new(endpoints)),
            clock,
            cursor: AtomicUsize::new(0),
            rng: AtomicU64::new(seed),
            eject_lock: Mutex::new(()),
        }
    }

    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    pub(crate) fn load_full(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replace the endpoint list, building what `strategy` needs before the swap.
    pub(crate) fn publish(&self, endpoints: Vec<Arc<Endpoint>>, strategy: LoadBalancingStrategy) {
        let snapshot = Snapshot::new(endpoints);
        snapshot.prepare(strategy);
        self.snapshot.store(Arc::new(snapshot));
    }

    pub(crate) fn prepare(&self, strategy: LoadBalancingStrategy) {
        self.snapshot.load().prepare(strategy);
    }

    pub(crate) fn reseed(&self, seed: u64) {
        self.rng.store(seed, Relaxed);
        self.cursor.store(0, Relaxed);
    }

    /// An RNG for one pick: lock-free, and reproducible when the set was seeded and
    /// picks happen in a fixed order.
    pub(crate) fn rng(&self) -> fastrand::Rng {
        fastrand::Rng::with_seed(self.rng.fetch_add(SEED_STEP, Relaxed))
    }

    pub(crate) fn stats(&self, decay: std::time::Duration) -> Vec<EndpointStats> {
        self.load()
            .endpoints
            .iter()
            .map(|e| e.stats(&self.clock, decay))
            .collect()
    }
}

// ===== hashing =====

/// A stable 64-bit hash (FNV-1a, then the SplitMix64 finaliser to spread the bits).
/// Stable across processes and Rust versions, so consistent hashing agrees between
/// replicas of the proxy.
pub(crate) fn stable_hash(bytes: &[u8], salt: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
