//! Unit tests of the balancing math: strategies over snapshots, endpoint metrics,
//! outlier decisions. No network.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::LoadBalancingStrategy as S;
use super::endpoint::{Clock, DEFAULT_RTT, Endpoint, FAILURE_PENALTY, InFlight, Outcome};
use super::outlier::OutlierDetection;
use super::set::EndpointSet;
use super::strategy::maglev::Maglev;
use super::strategy::weighted::Schedule;
use super::strategy::{self, PickCtx};
use crate::uri::Target;

const DECAY: Duration = Duration::from_secs(10);

fn endpoints(weights: &[u32], clock: &Clock) -> Vec<Arc<Endpoint>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let target =
                Target::parse(&format!("http://10.0.{}.{}:8080", i / 250, i % 250)).unwrap();
            Arc::new(Endpoint::new(target, w, clock))
        })
        .collect()
}

fn set(weights: &[u32], strategy: S, seed: u64) -> EndpointSet {
    let clock = Clock::new();
    let set = EndpointSet::new(endpoints(weights, &clock), clock, seed);
    set.prepare(strategy);
    set
}

fn pick(set: &EndpointSet, strategy: S, hash: Option<u64>) -> Option<usize> {
    let snapshot = set.load();
    let mut ctx = PickCtx::new(set, hash, DECAY);
    strategy::pick(strategy, &snapshot, &mut ctx)
}

fn counts(set: &EndpointSet, strategy: S, picks: usize) -> Vec<usize> {
    let mut counts = vec![0; set.load().len()];
    for _ in 0..picks {
        counts[pick(set, strategy, None).unwrap()] += 1;
    }
    counts
}

// ===== strategies =====

#[test]
fn round_robin_is_exact_and_starts_at_the_first() {
    let set = set(&[1, 1, 1], S::RoundRobin, 1);
    let order: Vec<usize> = (0..6)
        .map(|_| pick(&set, S::RoundRobin, None).unwrap())
        .collect();
    assert_eq!(order, [0, 1, 2, 0, 1, 2]);
}

#[test]
fn smooth_weighted_round_robin_matches_nginx_order() {
    let Schedule::Smooth(order) = Schedule::from_weights(&[5, 1, 1]) else {
        panic!("expected a smooth schedule");
    };
    assert_eq!(order, [0, 0, 1, 0, 2, 0, 0]);
    // Scaled weights give the same order.
    let Schedule::Smooth(scaled) = Schedule::from_weights(&[10, 2, 2]) else {
        panic!("expected a smooth schedule");
    };
    assert_eq!(scaled, order);

    let set = set(&[5, 1, 1], S::WeightedRoundRobin, 1);
    let picks: String = (0..14)
        .map(|_| (b'a' + pick(&set, S::WeightedRoundRobin, None).unwrap() as u8) as char)
        .collect();
    assert_eq!(picks, "aabacaaaabacaa");
}

#[test]
fn weighted_round_robin_falls_back_to_weighted_random_for_huge_periods() {
    assert!(matches!(
        Schedule::from_weights(&[1 << 21, 1]),
        Schedule::Random
    ));
    let set = set(&[1 << 21, (1 << 21) - 1], S::WeightedRoundRobin, 3);
    let c = counts(&set, S::WeightedRoundRobin, 10_000);
    assert!(c[0] > 4_500 && c[1] > 4_500, "{c:?}");
}

#[test]
fn random_distribution_with_a_fixed_seed() {
    let set = set(&[1, 1, 1, 1], S::Random, 42);
    let c = counts(&set, S::Random, 40_000);
    for n in &c {
        assert!((9_500..=10_500).contains(n), "{c:?}");
    }
    // Weighted: 3:1.
    let set2 = self::set(&[3, 1], S::Random, 42);
    let c = counts(&set2, S::Random, 40_000);
    assert!((29_000..=31_000).contains(&c[0]), "{c:?}");
}

#[test]
fn fixed_seeds_reproduce_the_same_picks() {
    for strategy in [S::Random, S::P2cPendingRequests, S::P2cPeakEwma] {
        // The same endpoints for the three sets: a peak-EWMA estimate starts at the
        // millisecond its endpoint is made, and endpoints made on both sides of a
        // millisecond boundary would compare differently from one set to the other.
        let clock = Clock::new();
        let shared = endpoints(&[1; 50], &clock);
        let seeded = |seed| {
            let set = EndpointSet::new(shared.clone(), clock, seed);
            set.prepare(strategy);
            set
        };
        let (a, b, c) = (seeded(7), seeded(7), seeded(8));
        let seq = |s: &EndpointSet| {
            (0..100)
                .map(|_| pick(s, strategy, None).unwrap())
                .collect::<Vec<_>>()
        };
        let (sa, sb, sc) = (seq(&a), seq(&b), seq(&c));
        assert_eq!(sa, sb, "{strategy:?}");
        assert_ne!(sa, sc, "{strategy:?}");
    }
}

#[test]
fn p2c_pending_spreads_evenly_and_avoids_the_busy_endpoint() {
    let set = set(&[1; 4], S::P2cPendingRequests, 11);
    let c = counts(&set, S::P2cPendingRequests, 40_000);
    for n in &c {
        assert!((9_000..=11_000).contains(n), "{c:?}");
    }
    // Endpoint 0 has requests in flight: it only wins when drawn against... nobody, since
    // P2C draws two distinct endpoints and the other always has fewer.
    let busy = InFlight::start(Arc::clone(&set.load().endpoints[0]));
    let c = counts(&set, S::P2cPendingRequests, 10_000);
    assert_eq!(c[0], 0, "{c:?}");
    drop(busy);
    assert_eq!(set.load().endpoints[0].pending(), 0);
}

#[test]
fn peak_ewma_prefers_the_lower_latency() {
    let set = set(&[1, 1], S::P2cPeakEwma, 5);
    let now = set.clock.now_ms();
    let snap = set.load();
    snap.endpoints[0].observe_rtt(Duration::from_millis(200), now, DECAY);
    snap.endpoints[1].observe_rtt(Duration::from_millis(5), now, DECAY);
    let c = counts(&set, S::P2cPeakEwma, 1_000);
    assert_eq!(c, [0, 1_000]);
}

#[test]
fn peak_ewma_math() {
    let clock = Clock::new();
    let e = &endpoints(&[1], &clock)[0];
    let t0 = clock.now_ms();
    let est = |t| Duration::from_nanos(e.rtt_estimate(t, DECAY) as u64);
    // A new endpoint starts at the default RTT.
    assert_eq!(est(t0), DEFAULT_RTT);
    // A slower sample replaces the estimate at once.
    e.observe_rtt(Duration::from_millis(100), t0, DECAY);
    assert_eq!(est(t0), Duration::from_millis(100));
    // A faster sample right away barely moves it (weight 1 - e^0 = 0)...
    e.observe_rtt(Duration::from_millis(10), t0, DECAY);
    assert_eq!(est(t0), Duration::from_millis(100));
    // ...one time constant later it moves by 1 - 1/e of the gap.
    let t1 = t0 + 10_000;
    e.observe_rtt(Duration::from_millis(10), t1, DECAY);
    let expected = 100.0 / std::f64::consts::E + 10.0 * (1.0 - 1.0 / std::f64::consts::E);
    let got = est(t1).as_secs_f64() * 1000.0;
    assert!((got - expected).abs() < 0.01, "{got} vs {expected}");
    // Without samples it decays towards zero with the same constant.
    let later = est(t1 + 10_000).as_secs_f64() * 1000.0;
    assert!((later - got / std::f64::consts::E).abs() < 0.01, "{later}");
}

#[test]
fn fast_failures_are_penalised() {
    let clock = Clock::new();
    let e = &endpoints(&[1], &clock)[0];
    let now = clock.now_ms();
    e.record(Outcome::ServerError, Duration::from_micros(50), now, DECAY);
    assert!(e.rtt_estimate(now, DECAY) >= FAILURE_PENALTY.as_nanos() as f64);
    assert_eq!(e.stats(&clock, DECAY).failures, 1);
    // 500 is not a gateway failure: no consecutive count.
    assert_eq!(e.stats(&clock, DECAY).consecutive_failures, 0);
    assert_eq!(
        e.record(Outcome::GatewayFailure, Duration::ZERO, now, DECAY),
        1
    );
    assert_eq!(
        e.record(Outcome::GatewayFailure, Duration::ZERO, now, DECAY),
        2
    );
    assert_eq!(e.record(Outcome::Success, Duration::ZERO, now, DECAY), 0);
    assert_eq!(
        e.record(Outcome::NotTheEndpoint, Duration::ZERO, now, DECAY),
        0
    );
}

#[test]
fn least_request_is_exact_for_small_sets() {
    let set = set(&[1; 5], S::LeastRequest, 1);
    let snap = set.load_full();
    let _a = InFlight::start(Arc::clone(&snap.endpoints[0]));
    let _b = InFlight::start(Arc::clone(&snap.endpoints[1]));
    let _c = InFlight::start(Arc::clone(&snap.endpoints[1]));
    let c = counts(&set, S::LeastRequest, 300);
    assert_eq!(&c[..2], &[0, 0]);
    // Ties rotate.
    assert_eq!(&c[2..], &[100, 100, 100]);
    // Large sets: power of two choices still avoids the busy one.
    let big = self::set(&[1; 40], S::LeastRequest, 1);
    let _d = InFlight::start(Arc::clone(&big.load().endpoints[3]));
    assert_eq!(counts(&big, S::LeastRequest, 5_000)[3], 0);
}

#[test]
fn every_strategy_skips_unavailable_endpoints_and_none_means_none() {
    let all = [
        S::RoundRobin,
        S::WeightedRoundRobin,
        S::P2cPendingRequests,
        S::P2cPeakEwma,
        S::LeastRequest,
        S::Random,
        S::ConsistentHash,
    ];
    for strategy in all {
        let set = set(&[1, 2, 3, 1, 1], strategy, 9);
        let snap = set.load_full();
        snap.endpoints[1].healthy.store(false, Relaxed);
        snap.endpoints[3]
            .ejected_until
            .store(set.clock.now_ms() + 60_000, Relaxed);
        for i in 0..2_000u64 {
            let picked = pick(&set, strategy, Some(i.wrapping_mul(0x9e37_79b9))).unwrap();
            assert!(picked != 1 && picked != 3, "{strategy:?} picked {picked}");
        }
        for e in &snap.endpoints {
            e.healthy.store(false, Relaxed);
        }
        assert_eq!(pick(&set, strategy, Some(1)), None, "{strategy:?}");
        let empty = self::set(&[], strategy, 9);
        assert_eq!(pick(&empty, strategy, Some(1)), None, "{strategy:?}");
    }
}

// ===== Maglev =====

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("http://backend-{i}.internal:8080"))
        .collect()
}

fn refs(v: &[String]) -> Vec<(&str, u32)> {
    v.iter().map(|s| (s.as_str(), 1)).collect()
}

fn owner_of_keys(table: &Maglev, names: &[String], keys: u64) -> Vec<String> {
    (0..keys)
        .map(|k| names[table.lookup(super::set::mix(k)).unwrap().0].clone())
        .collect()
}

#[test]
fn maglev_is_balanced_and_moves_about_one_nth_on_add() {
    for n in [3usize, 10, 50] {
        let before_names = names(n);
        let after_names = names(n + 1);
        let before = Maglev::from_names(&refs(&before_names));
        let after = Maglev::from_names(&refs(&after_names));
        // Balance: every endpoint owns close to 1/N of the slots.
        let mut share: HashMap<usize, usize> = HashMap::new();
        for slot in 0..before.len() {
            *share.entry(before.at(slot)).or_default() += 1;
        }
        let ideal = before.len() as f64 / n as f64;
        for (&i, &s) in &share {
            assert!(
                (s as f64 - ideal).abs() / ideal < 0.02,
                "n={n} endpoint {i}: {s} vs {ideal}"
            );
        }
        // Adding one endpoint moves at most 1/(N+1) + 2 % of the keys.
        let keys = 100_000;
        let a = owner_of_keys(&before, &before_names, keys);
        let b = owner_of_keys(&after, &after_names, keys);
        let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count() as f64 / keys as f64;
        let bound = 1.0 / (n + 1) as f64 + 0.02;
        assert!(moved <= bound, "n={n}: moved {moved:.4} > {bound:.4}");
        assert!(
            moved >= 1.0 / (n + 1) as f64 * 0.8,
            "n={n}: moved {moved:.4}, suspiciously few"
        );
    }
}

#[test]
fn maglev_respects_weights_and_large_sets() {
    let table = Maglev::from_names(&[("a", 3), ("b", 1)]);
    let a = (0..table.len()).filter(|&s| table.at(s) == 0).count() as f64;
    assert!((a / table.len() as f64 - 0.75).abs() < 0.01, "{a}");
    // Extreme ratios are compressed to 64:1 and still build quickly.
    let skewed = Maglev::from_names(&[("a", 1), ("b", u32::MAX)]);
    let a = (0..skewed.len()).filter(|&s| skewed.at(s) == 0).count();
    assert!(a > skewed.len() / 100 && a < skewed.len() / 50, "{a}");
    let many = names(1_000);
    let refs: Vec<(&str, u32)> = many.iter().map(|s| (s.as_str(), 1)).collect();
    let big = Maglev::from_names(&refs);
    assert_eq!(big.len(), super::strategy::maglev::LARGE_TABLE);
}

#[test]
fn consistent_hash_walks_on_when_the_owner_is_down() {
    let set = set(&[1; 5], S::ConsistentHash, 1);
    let first = pick(&set, S::ConsistentHash, Some(12345)).unwrap();
    assert_eq!(pick(&set, S::ConsistentHash, Some(12345)), Some(first));
    set.load().endpoints[first].healthy.store(false, Relaxed);
    let second = pick(&set, S::ConsistentHash, Some(12345)).unwrap();
    assert_ne!(second, first);
    set.load().endpoints[first].healthy.store(true, Relaxed);
    assert_eq!(pick(&set, S::ConsistentHash, Some(12345)), Some(first));
}

// ===== outlier detection =====

#[test]
fn ejection_caps() {
    let o = OutlierDetection::default();
    assert_eq!(o.max_ejected(1), 0);
    assert_eq!(o.max_ejected(2), 1);
    assert_eq!(o.max_ejected(5), 1);
    assert_eq!(o.max_ejected(20), 2);
    assert_eq!(o.max_ejected(100), 10);
    let all = OutlierDetection::default().with_max_ejection_percent(100);
    assert_eq!(all.max_ejected(4), 3);
}

fn fail(set: &EndpointSet, o: &OutlierDetection, i: usize, times: u32) -> bool {
    let e = Arc::clone(&set.load().endpoints[i]);
    let mut ejected = false;
    for _ in 0..times {
        let c = e.record(
            Outcome::GatewayFailure,
            Duration::ZERO,
            set.clock.now_ms(),
            DECAY,
        );
        ejected |= o.on_failure(set, &e, c);
    }
    ejected
}

#[tokio::test(start_paused = true)]
async fn outlier_ejection_and_recovery() {
    let o = OutlierDetection::default();
    let set = set(&[1, 1, 1], S::RoundRobin, 1);
    assert!(!fail(&set, &o, 0, 4), "four failures are not enough");
    assert!(fail(&set, &o, 0, 1), "the fifth ejects");
    let c = counts(&set, S::RoundRobin, 30);
    assert_eq!(c, [0, 15, 15]);
    // Only one of three may be out at once (10 %, at least one, never all).
    assert!(!fail(&set, &o, 1, 5));
    assert!(set.load().endpoints[0].is_ejected_at(set.clock.now_ms()));
    // 30 s later it is back by itself.
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(counts(&set, S::RoundRobin, 30)[0], 0);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(counts(&set, S::RoundRobin, 30), [10, 10, 10]);
    // Ejected again at once: 60 s this time.
    assert!(fail(&set, &o, 0, 5));
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(counts(&set, S::RoundRobin, 30)[0], 0);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(counts(&set, S::RoundRobin, 30)[0], 10);
    let stats = set.load().endpoints[0].stats(&set.clock, DECAY);
    assert_eq!(stats.times_ejected, 2);
    assert_eq!(stats.ejected_until, None);
}

#[tokio::test(start_paused = true)]
async fn ejection_time_is_capped_and_forgiven() {
    let o = OutlierDetection::default();
    let set = set(&[1, 1], S::RoundRobin, 1);
    let e = Arc::clone(&set.load().endpoints[0]);
    for round in 1..=12u64 {
        assert!(fail(&set, &o, 0, 5), "round {round}");
        let until = e.ejected_until.load(Relaxed);
        let expected = (30 * round).min(300) * 1000;
        assert_eq!(until - set.clock.now_ms(), expected, "round {round}");
        tokio::time::advance(Duration::from_millis(expected)).await;
    }
    // A long good spell forgives past ejections: each base period in rotation takes one
    // off, so after 12 periods the next ejection is a first one again.
    tokio::time::advance(Duration::from_secs(30 * 12)).await;
    assert!(fail(&set, &o, 0, 5));
    assert_eq!(e.ejected_until.load(Relaxed) - set.clock.now_ms(), 30_000);
}

#[test]
fn a_single_endpoint_is_never_ejected_and_disabled_never_ejects() {
    let o = OutlierDetection::default();
    let single = set(&[1], S::RoundRobin, 1);
    assert!(!fail(&single, &o, 0, 50));
    let two = set(&[1, 1], S::RoundRobin, 1);
    assert!(!fail(&two, &OutlierDetection::disabled(), 0, 50));
    // The other one is down by health checks: this one is the last that can serve.
    two.load().endpoints[1].healthy.store(false, Relaxed);
    assert!(!fail(&two, &o, 0, 50));
    two.load().endpoints[1].healthy.store(true, Relaxed);
    assert!(fail(&two, &o, 0, 5));
}
