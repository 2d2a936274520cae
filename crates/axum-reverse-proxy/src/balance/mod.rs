//! Load balancing: [`BalancedProxy`] over a fixed list of targets and
//! [`DiscoverableBalancedProxy`] over endpoints found by service discovery.
//!
//! Both keep their endpoints in an immutable snapshot that writers replace whole
//! (`arc-swap`); a request reads the snapshot, picks an endpoint with the configured
//! [`LoadBalancingStrategy`] using atomics only, and holds the endpoint (not an index)
//! until its response body ends. Every endpoint carries its own metrics — requests in
//! flight, a peak-EWMA latency estimate, request and failure counts, ejection and health
//! state — so they travel with it through discovery changes. [`endpoints`] gives a
//! read-only view of them ([`EndpointStats`]) for admin pages and metrics.
//!
//! | strategy | picks | reads per request |
//! |---|---|---|
//! | [`RoundRobin`] (default) | the next endpoint in order | one atomic cursor |
//! | [`WeightedRoundRobin`] | nginx's smooth weighted order | one atomic cursor |
//! | [`P2cPendingRequests`] | the less busy of two random endpoints | two counters |
//! | [`P2cPeakEwma`] | the lower `latency × (pending + 1)` of two | two counters, two estimates |
//! | [`LeastRequest`] | the least busy (exact up to 16 endpoints) | up to 16 counters |
//! | [`Random`] | a random endpoint, by weight | none |
//! | [`ConsistentHash`] | the endpoint owning the request's [`HashKey`] (Maglev) | one table slot |
//!
//! Failing endpoints are taken out of rotation by passive [`OutlierDetection`] (on by
//! default, Envoy's defaults) and, when configured, by active [`HealthCheck`]s. They come
//! back by themselves. With no endpoint available a request is answered 503 with a
//! [`ProxyError`](crate::ProxyError) for which `is_no_endpoint()` is true.
//!
//! ```
//! use std::time::Duration;
//! use axum::Router;
//! use axum_reverse_proxy::{BalancedProxy, HealthCheck, LoadBalancingStrategy};
//!
//! let proxy = BalancedProxy::new(
//!     "/api",
//!     vec!["http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080"],
//! )
//! .with_strategy(LoadBalancingStrategy::WeightedRoundRobin)
//! .with_weights([5, 1, 1])
//! .with_health_check(HealthCheck::new("/health").with_interval(Duration::from_secs(5)));
//!
//! for endpoint in proxy.endpoints() {
//!     println!("{} weight {} healthy {}", endpoint.url, endpoint.weight, endpoint.healthy);
//! }
//! let app: Router = Router::new().merge(proxy);
//! # let _ = app;
//! ```
//!
//! [`endpoints`]: BalancedProxy::endpoints
//! [`RoundRobin`]: LoadBalancingStrategy::RoundRobin
//! [`WeightedRoundRobin`]: LoadBalancingStrategy::WeightedRoundRobin
//! [`P2cPendingRequests`]: LoadBalancingStrategy::P2cPendingRequests
//! [`P2cPeakEwma`]: LoadBalancingStrategy::P2cPeakEwma
//! [`LeastRequest`]: LoadBalancingStrategy::LeastRequest
//! [`Random`]: LoadBalancingStrategy::Random
//! [`ConsistentHash`]: LoadBalancingStrategy::ConsistentHash

mod balanced;
mod discoverable;
mod endpoint;
mod health;
mod key;
mod outlier;
mod set;
mod shared;
pub mod strategy;

pub use balanced::{BalancedProxy, StandardBalancedProxy};
pub use discoverable::{DiscoverableBalancedProxy, StandardDiscoverableBalancedProxy};
pub use endpoint::EndpointStats;
pub use health::HealthCheck;
pub use key::HashKey;
pub use outlier::OutlierDetection;

/// How a balanced proxy chooses an endpoint for each request.
///
/// Each strategy's module under [`strategy`] documents its algorithm, defaults and
/// source. All of them skip
/// endpoints that are ejected or unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum LoadBalancingStrategy {
    /// Each endpoint in turn. The first request goes to the first endpoint.
    /// See [`strategy::round_robin`].
    #[default]
    RoundRobin,
    /// Power of two choices: of two random endpoints, the one with fewer requests in
    /// flight (counted until the response body ends), relative to its weight.
    /// See [`strategy::p2c`].
    P2cPendingRequests,
    /// Power of two choices by peak-EWMA cost, `rtt × (pending + 1) / weight`, as in
    /// Finagle and linkerd. The RTT estimate takes slower samples at once and decays
    /// with a 10 s time constant; new endpoints start at 30 ms; failures count as 1 s.
    /// See [`strategy::peak_ewma`].
    P2cPeakEwma,
    /// nginx's smooth weighted round robin: weights 5, 1, 1 give `a a b a c a a`.
    /// See [`strategy::weighted`].
    WeightedRoundRobin,
    /// Fewest requests in flight relative to weight: exact over up to 16 endpoints,
    /// the better of two random ones beyond (Envoy's least request).
    /// See [`strategy::least_request`].
    LeastRequest,
    /// A random endpoint, in proportion to weight. See [`strategy::random`].
    Random,
    /// Consistent hashing with a Maglev table over the request's
    /// [`HashKey`] (set with `with_hash_key`; the client IP by default): the same key
    /// reaches the same endpoint, and a change of one of `N` endpoints moves about `1/N`
    /// of the keys. See [`strategy::maglev`].
    ConsistentHash,
}

#[cfg(test)]
mod tests;
