//! Endpoint selection cost: one pick (snapshot load, strategy, endpoint handle) per
//! iteration, for each strategy over 2, 100 and 10,000 endpoints. Nothing is sent.
//!
//! `cargo bench -p axum-reverse-proxy --bench balance`

use axum::body::Body;
use axum_reverse_proxy::{BalancedProxy, HashKey, LoadBalancingStrategy};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::Request;

const SIZES: [usize; 3] = [2, 100, 10_000];

fn targets(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("http://10.{}.{}.{}:8080", i >> 16, (i >> 8) & 255, i & 255))
        .collect()
}

fn selection(c: &mut Criterion) {
    let strategies = [
        ("round_robin", LoadBalancingStrategy::RoundRobin),
        (
            "weighted_round_robin",
            LoadBalancingStrategy::WeightedRoundRobin,
        ),
        ("p2c_pending", LoadBalancingStrategy::P2cPendingRequests),
        ("p2c_peak_ewma", LoadBalancingStrategy::P2cPeakEwma),
        ("least_request", LoadBalancingStrategy::LeastRequest),
        ("random", LoadBalancingStrategy::Random),
        ("consistent_hash", LoadBalancingStrategy::ConsistentHash),
    ];
    // Distinct keys, so consistent hashing reads different slots.
    let requests: Vec<Request<Body>> = (0..1024)
        .map(|i| {
            Request::builder()
                .uri("/")
                .header("x-user", format!("user-{i}"))
                .body(Body::empty())
                .unwrap()
        })
        .collect();
    let mut group = c.benchmark_group("select");
    for (name, strategy) in strategies {
        for n in SIZES {
            let proxy = BalancedProxy::new("/".to_string(), targets(n))
                .with_strategy(strategy)
                .with_hash_key(HashKey::header("x-user"))
                .with_weights((0..n).map(|i| (i % 5) as u32 + 1))
                .with_rng_seed(1);
            let mut i = 0usize;
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) & 1023;
                    assert!(proxy.__select_for_bench(&requests[i]));
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, selection);
criterion_main!(benches);
