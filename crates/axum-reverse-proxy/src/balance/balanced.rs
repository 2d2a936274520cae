//! [`BalancedProxy`]: a fixed list of endpoints behind one mount path.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;

use super::LoadBalancingStrategy;
use super::endpoint::{Clock, Endpoint, EndpointStats};
use super::health::HealthCheck;
use super::key::HashKey;
use super::outlier::OutlierDetection;
use super::shared::{Config, Shared, endpoints_from};
use crate::client::{self, ProxyConnector, Transport};
use crate::error::InvalidTarget;
use crate::policy::ProxyPolicy;
use crate::proxy::{Forwarder, Settings};

/// A reverse proxy that spreads requests over a fixed list of upstream targets.
///
/// Round robin by default; see [`LoadBalancingStrategy`] for the others. Passive outlier
/// detection is on ([`OutlierDetection`]); active health checks are opt-in
/// ([`with_health_check`](Self::with_health_check)). Clones share endpoints, metrics
/// and counters. With no targets every request is answered 503.
///
/// ```
/// use axum::Router;
/// use axum_reverse_proxy::{BalancedProxy, LoadBalancingStrategy};
///
/// let proxy = BalancedProxy::new("/api", vec!["http://127.0.0.1:3001", "http://127.0.0.1:3002"])
///     .with_strategy(LoadBalancingStrategy::P2cPeakEwma);
/// let app: Router = Router::new().merge(proxy);
/// ```
pub struct BalancedProxy<C = ProxyConnector> {
    shared: Arc<Shared<C>>,
}

/// [`BalancedProxy`] over the default connector.
pub type StandardBalancedProxy = BalancedProxy<ProxyConnector>;

impl<C> Clone for BalancedProxy<C> {
    fn clone(&self) -> Self {
        BalancedProxy {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C> std::fmt::Debug for BalancedProxy<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snapshot = self.shared.set.load();
        f.debug_struct("BalancedProxy")
            .field("path", &self.shared.path)
            .field("strategy", &self.shared.config.strategy)
            .field(
                "targets",
                &snapshot
                    .endpoints
                    .iter()
                    .map(|e| e.target.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl BalancedProxy<ProxyConnector> {
    /// A round-robin proxy mounted at `path` over `targets`, with its own connection pool.
    ///
    /// # Panics
    /// If a target is not a valid `http`/`https` URL with a host (use
    /// [`try_new`](Self::try_new) to get an error instead).
    pub fn new<S>(path: S, targets: Vec<S>) -> Self
    where
        S: Into<String> + Clone,
    {
        Self::try_new(path, targets).unwrap_or_else(|err| panic!("{err}"))
    }

    /// Like [`new`](Self::new), returning an error for an unusable target.
    pub fn try_new<S>(path: S, targets: Vec<S>) -> Result<Self, InvalidTarget>
    where
        S: Into<String> + Clone,
    {
        let clock = Clock::new();
        let endpoints = endpoints_from(targets, &clock)?;
        for endpoint in &endpoints {
            crate::proxy::check_tls(&endpoint.target)?;
        }
        Ok(Self::from_parts(
            path.into(),
            Transport::Pool(client::new_default_pool()),
            endpoints,
            clock,
        ))
    }
}

impl<C> BalancedProxy<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    /// A round-robin proxy that sends through `client` (one client for every target).
    ///
    /// # Panics
    /// If a target is not a valid `http`/`https` URL with a host.
    pub fn new_with_client<S>(path: S, targets: Vec<S>, client: Client<C, Body>) -> Self
    where
        S: Into<String> + Clone,
    {
        Self::try_new_with_client(path, targets, client).unwrap_or_else(|err| panic!("{err}"))
    }

    /// Like [`new_with_client`](Self::new_with_client), returning an error for an
    /// unusable target.
    pub fn try_new_with_client<S>(
        path: S,
        targets: Vec<S>,
        client: Client<C, Body>,
    ) -> Result<Self, InvalidTarget>
    where
        S: Into<String> + Clone,
    {
        let clock = Clock::new();
        let endpoints = endpoints_from(targets, &clock)?;
        Ok(Self::from_parts(
            path.into(),
            Transport::Client(Arc::new(client)),
            endpoints,
            clock,
        ))
    }

    fn from_parts(
        path: String,
        transport: Transport<C>,
        endpoints: Vec<Arc<Endpoint>>,
        clock: Clock,
    ) -> Self {
        let forwarder = Forwarder {
            transport,
            settings: Arc::new(Settings::new(ProxyPolicy::default())),
        };
        BalancedProxy {
            shared: Arc::new(Shared::new(
                path,
                forwarder,
                Config::new(LoadBalancingStrategy::RoundRobin),
                endpoints,
                clock,
            )),
        }
    }

    fn reconfigure(self, change: impl FnOnce(&mut Config, &mut Forwarder<C>)) -> Self {
        BalancedProxy {
            shared: Shared::reconfigure(self.shared, change),
        }
    }

    /// Use `strategy` to choose endpoints.
    pub fn with_strategy(self, strategy: LoadBalancingStrategy) -> Self {
        self.reconfigure(|config, _| config.strategy = strategy)
    }

    /// What [`ConsistentHash`](LoadBalancingStrategy::ConsistentHash) hashes (default:
    /// the client IP).
    pub fn with_hash_key(self, key: HashKey) -> Self {
        self.reconfigure(|config, _| config.hash_key = key)
    }

    /// Give the targets weights, in the order they were given (missing weights are 1; 0
    /// counts as 1). Used by every strategy except plain round robin: a weight-3 endpoint
    /// gets three times the share of a weight-1 endpoint (or, for the load-aware
    /// strategies, is allowed three times the load).
    ///
    /// Metrics start afresh: call it when building the proxy.
    pub fn with_weights(self, weights: impl IntoIterator<Item = u32>) -> Self {
        let mut weights = weights.into_iter();
        let clock = self.shared.set.clock;
        let endpoints: Vec<Arc<Endpoint>> = self
            .shared
            .set
            .load()
            .endpoints
            .iter()
            .map(|e| {
                Arc::new(Endpoint::new(
                    e.target.clone(),
                    weights.next().unwrap_or(1),
                    &clock,
                ))
            })
            .collect();
        let this = self.reconfigure(|_, _| {});
        this.shared.publish(endpoints);
        this
    }

    /// Replace the passive outlier detection settings
    /// ([`OutlierDetection::disabled`] turns it off).
    pub fn with_outlier_detection(self, outliers: OutlierDetection) -> Self {
        self.reconfigure(|config, _| config.outlier = outliers)
    }

    /// Check every endpoint actively; endpoints that fail are taken out of rotation.
    /// The checks start with the first request, or with
    /// [`start_health_checks`](Self::start_health_checks).
    pub fn with_health_check(self, check: HealthCheck) -> Self {
        self.reconfigure(|config, _| config.health = Some(check))
    }

    /// The time constant of the peak-EWMA latency estimate (default 10 s).
    pub fn with_ewma_decay(self, decay: Duration) -> Self {
        self.reconfigure(|config, _| config.decay = decay)
    }

    /// Seed the random choices (P2C, random, fallbacks), for reproducible tests. Also
    /// resets the round-robin position.
    pub fn with_rng_seed(self, seed: u64) -> Self {
        let this = self.reconfigure(|_, _| {});
        this.shared.set.reseed(seed);
        this
    }

    /// Replace the proxy's [`ProxyPolicy`] (header rules, timeouts, limits).
    pub fn with_policy(self, policy: ProxyPolicy) -> Self {
        self.reconfigure(|_, forwarder| forwarder.settings = Arc::new(Settings::new(policy)))
    }

    /// Speak TLS to `https` targets with rustls and `config` (its root certificates,
    /// client certificate, protocol versions), through a connection pool of the proxy's
    /// own; the proxy sets ALPN. This replaces the client given to `new_with_client`.
    #[cfg(feature = "tls")]
    pub fn with_tls_config(self, config: rustls::ClientConfig) -> Self {
        self.reconfigure(|_, forwarder| {
            forwarder.transport = Transport::Pool(client::new_rustls_pool(config));
        })
    }

    /// Start the active health checks now (needs a Tokio runtime) rather than with the
    /// first request. Does nothing without [`with_health_check`](Self::with_health_check)
    /// or when they already run.
    pub fn start_health_checks(&self) {
        self.shared.ensure_health_task();
    }

    /// The path the proxy is mounted at, as given.
    pub fn path(&self) -> &str {
        &self.shared.path
    }

    /// The strategy in use.
    pub fn strategy(&self) -> LoadBalancingStrategy {
        self.shared.config.strategy
    }

    /// The proxy's policy.
    pub fn policy(&self) -> &ProxyPolicy {
        self.shared.forwarder.policy()
    }

    /// The endpoints and their metrics, in order.
    pub fn endpoints(&self) -> Vec<EndpointStats> {
        self.shared.endpoints()
    }

    /// Choose an endpoint for `req` without sending anything; whether one was found.
    /// For the selection benchmarks: not part of the API, may change at any time.
    #[doc(hidden)]
    pub fn __select_for_bench(&self, req: &Request<Body>) -> bool {
        self.shared.choose(req, None).is_some()
    }

    /// Forward one request; for use inside ordinary handlers.
    pub async fn proxy_request(&self, req: Request<Body>) -> Result<Response<Body>, Infallible> {
        Ok(Arc::clone(&self.shared).handle(req, None).await)
    }

    /// Forward one request from the client at `client`, without axum's `ConnectInfo`
    /// extension (see [`ReverseProxy::proxy_request_from`](crate::ReverseProxy::proxy_request_from)).
    pub async fn proxy_request_from(
        &self,
        client: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, Infallible> {
        Ok(Arc::clone(&self.shared).handle(req, Some(client)).await)
    }
}

impl<C> tower::Service<Request<Body>> for BalancedProxy<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { Ok(shared.handle(req, None).await) })
    }
}
