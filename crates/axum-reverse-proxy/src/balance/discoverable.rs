//! [`DiscoverableBalancedProxy`]: endpoints that come and go with a
//! `tower::discover::Discover` stream.

// The docs link `DnsEndpoint` and `with_tls_config`, absent from a build without `dns`/`tls`.
#![cfg_attr(
    not(all(feature = "dns", feature = "tls")),
    allow(rustdoc::broken_intra_doc_links)
)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{Future, poll_fn};
use std::hash::Hash;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;
use tower::discover::{Change, Discover};

use super::LoadBalancingStrategy;
use super::endpoint::{Clock, Endpoint, EndpointStats};
use super::health::HealthCheck;
use super::key::HashKey;
use super::outlier::OutlierDetection;
use super::shared::{AbortOnDrop, Config, Shared};
use crate::client::{self, ProxyConnector, Transport};
use crate::discover::describe;
use crate::policy::ProxyPolicy;
use crate::proxy::{Forwarder, Settings};
use crate::uri::Target;

/// A reverse proxy over endpoints found by service discovery.
///
/// `D` is any [`Discover`] whose services are URLs (`D::Service: Into<String>`), such as
/// a stream of `Result<Change<K, String>, E>`. Nothing is discovered until
/// [`start_discovery`](Self::start_discovery): it spawns a task that applies each change
/// to an immutable endpoint snapshot, swapped atomically, and stops when the last clone
/// of the proxy is dropped. Until then, and whenever the set is empty, requests are
/// answered 503.
///
/// Discovery changes:
/// - `Insert(key, endpoint)` adds an endpoint. For a key already present with the **same
///   endpoint** (URL, name and weight) the endpoint and its metrics are kept (discovery
///   sources often repeat themselves); otherwise it is replaced by a fresh endpoint. An
///   invalid URL removes the key and is logged.
/// - `Remove(key)` removes it. Requests already sent to it finish normally.
/// - Errors are logged; repeated errors back off (100 ms doubling to 5 s) instead of
///   spinning. The end of the stream stops discovery and keeps the last set.
///
/// What an endpoint value brings:
///
/// | value | weight | `Host` and TLS name |
/// |---|---|---|
/// | [`WeightedUrl`](crate::discover::WeightedUrl) (file, etcd, your own) | its weight | the URL's host |
/// | [`DnsEndpoint`](crate::discover::DnsEndpoint) (`DnsDiscovery::endpoints()`, `DnsEndpointDiscovery`) | from SRV weights, else 1 | the DNS name |
/// | any other `Into<String>` (`String`, `DnsDiscovery`'s URLs) | 1 | the URL's host |
///
/// Weights are used by every strategy but plain round robin (see
/// [`LoadBalancingStrategy`]). For a [`DnsEndpoint`](crate::discover::DnsEndpoint) the
/// proxy connects to its address and sends its DNS name as `Host` (`name:port` when the
/// port is not the scheme's default; the client's own `Host` with
/// [`HostBehaviour::Preserve`](crate::HostBehaviour::Preserve)) and, for `https`, as the
/// TLS server name, verifying the certificate against it. Connections are pooled per
/// address and name. A client given to [`new_with_client`](Self::new_with_client) dials
/// by URI, so through it TLS names (and verifies) the address: use
/// [`with_tls_config`](Self::with_tls_config) to trust a private CA instead.
///
/// ```
/// use axum_reverse_proxy::DiscoverableBalancedProxy;
/// use tower::discover::Change;
///
/// # async fn run() {
/// let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Change<u32, String>, std::io::Error>>();
/// let stream = futures_util::stream::unfold(rx, |mut rx| async move {
///     rx.recv().await.map(|item| (item, rx))
/// });
/// let proxy = DiscoverableBalancedProxy::new("/", stream);
/// proxy.start_discovery().await;
/// tx.send(Ok(Change::Insert(1, "http://127.0.0.1:3001".to_string()))).unwrap();
/// # }
/// ```
pub struct DiscoverableBalancedProxy<C, D> {
    shared: Arc<Shared<C>>,
    discover: Arc<Mutex<Option<D>>>,
}

/// [`DiscoverableBalancedProxy`] over the default connector.
pub type StandardDiscoverableBalancedProxy<D> = DiscoverableBalancedProxy<ProxyConnector, D>;

impl<C, D> Clone for DiscoverableBalancedProxy<C, D> {
    fn clone(&self) -> Self {
        DiscoverableBalancedProxy {
            shared: Arc::clone(&self.shared),
            discover: Arc::clone(&self.discover),
        }
    }
}

impl<C, D> std::fmt::Debug for DiscoverableBalancedProxy<C, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoverableBalancedProxy")
            .field("path", &self.shared.path)
            .field("strategy", &self.shared.config.strategy)
            .field("endpoints", &self.shared.set.load().len())
            .finish_non_exhaustive()
    }
}

impl<D> DiscoverableBalancedProxy<ProxyConnector, D>
where
    D: Discover + Send + 'static,
    D::Key: Hash + Eq + Clone + Debug + Send + Sync,
    D::Service: Into<String> + Send,
    D::Error: Debug + Send,
{
    /// A round-robin proxy at `path` over what `discover` finds, with its own connection
    /// pool. `discover` need not be `Clone`.
    pub fn new<S: Into<String>>(path: S, discover: D) -> Self {
        Self::new_with_strategy(path, discover, LoadBalancingStrategy::default())
    }

    /// Like [`new`](Self::new), with `strategy`.
    pub fn new_with_strategy<S: Into<String>>(
        path: S,
        discover: D,
        strategy: LoadBalancingStrategy,
    ) -> Self {
        Self::from_parts(
            path.into(),
            Transport::Pool(client::new_default_pool()),
            discover,
            strategy,
        )
    }
}

impl<C, D> DiscoverableBalancedProxy<C, D>
where
    C: Connect + Clone + Send + Sync + 'static,
    D: Discover + Send + 'static,
    D::Key: Hash + Eq + Clone + Debug + Send + Sync,
    D::Service: Into<String> + Send,
    D::Error: Debug + Send,
{
    /// A round-robin proxy that sends through `client`.
    pub fn new_with_client<S: Into<String>>(path: S, client: Client<C, Body>, discover: D) -> Self {
        Self::new_with_client_and_strategy(path, client, discover, LoadBalancingStrategy::default())
    }

    /// A proxy that sends through `client` and chooses endpoints with `strategy`.
    pub fn new_with_client_and_strategy<S: Into<String>>(
        path: S,
        client: Client<C, Body>,
        discover: D,
        strategy: LoadBalancingStrategy,
    ) -> Self {
        Self::from_parts(
            path.into(),
            Transport::Client(Arc::new(client)),
            discover,
            strategy,
        )
    }

    fn from_parts(
        path: String,
        transport: Transport<C>,
        discover: D,
        strategy: LoadBalancingStrategy,
    ) -> Self {
        let forwarder = Forwarder {
            transport,
            settings: Arc::new(Settings::new(ProxyPolicy::default())),
        };
        DiscoverableBalancedProxy {
            shared: Arc::new(Shared::new(
                path,
                forwarder,
                Config::new(strategy),
                Vec::new(),
                Clock::new(),
            )),
            discover: Arc::new(Mutex::new(Some(discover))),
        }
    }

    fn reconfigure(self, change: impl FnOnce(&mut Config, &mut Forwarder<C>)) -> Self {
        DiscoverableBalancedProxy {
            shared: Shared::reconfigure(self.shared, change),
            discover: self.discover,
        }
    }

    /// Start discovery: spawn the task that follows `D`. Returns at once. Idempotent:
    /// later calls, on this proxy or a clone, do nothing. Needs a Tokio runtime.
    ///
    /// The task stops when the last clone of the proxy is dropped. Call the `with_*`
    /// builders before this: a proxy reconfigured afterwards no longer follows discovery.
    pub async fn start_discovery(&self) {
        let taken = self
            .discover
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Some(discover) = taken else { return };
        let weak = Arc::downgrade(&self.shared);
        let task = tokio::spawn(run_discovery(weak, discover));
        let _ = self.shared.discovery_task.set(AbortOnDrop(task));
        self.shared.ensure_health_task();
    }

    /// The number of endpoints currently known (available or not). `async` for
    /// compatibility with 1.3; it never waits.
    pub async fn service_count(&self) -> usize {
        self.shared.set.load().len()
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

    /// Replace the passive outlier detection settings.
    pub fn with_outlier_detection(self, outliers: OutlierDetection) -> Self {
        self.reconfigure(|config, _| config.outlier = outliers)
    }

    /// Check every endpoint actively. The checks start with `start_discovery` or the
    /// first request.
    pub fn with_health_check(self, check: HealthCheck) -> Self {
        self.reconfigure(|config, _| config.health = Some(check))
    }

    /// The time constant of the peak-EWMA latency estimate (default 10 s).
    pub fn with_ewma_decay(self, decay: Duration) -> Self {
        self.reconfigure(|config, _| config.decay = decay)
    }

    /// Seed the random choices, for reproducible tests.
    pub fn with_rng_seed(self, seed: u64) -> Self {
        let this = self.reconfigure(|_, _| {});
        this.shared.set.reseed(seed);
        this
    }

    /// Replace the proxy's [`ProxyPolicy`].
    pub fn with_policy(self, policy: ProxyPolicy) -> Self {
        self.reconfigure(|_, forwarder| forwarder.settings = Arc::new(Settings::new(policy)))
    }

    /// Speak TLS to `https` endpoints with rustls and `config` (its root certificates,
    /// client certificate, protocol versions), through a connection pool of the proxy's
    /// own; the proxy sets ALPN. This replaces the client given to `new_with_client`.
    /// Certificates are verified against each endpoint's name: the DNS name of a
    /// [`DnsEndpoint`](crate::discover::DnsEndpoint), else the URL's host.
    #[cfg(feature = "tls")]
    pub fn with_tls_config(self, config: rustls::ClientConfig) -> Self {
        self.reconfigure(|_, forwarder| {
            forwarder.transport = Transport::Pool(client::new_rustls_pool(config));
        })
    }

    /// Start the active health checks now rather than with discovery or the first
    /// request.
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

    /// The current endpoints and their metrics, in order of arrival.
    pub fn endpoints(&self) -> Vec<EndpointStats> {
        self.shared.endpoints()
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

impl<C, D> tower::Service<Request<Body>> for DiscoverableBalancedProxy<C, D>
where
    C: Connect + Clone + Send + Sync + 'static,
    D: Discover + Send + 'static,
    D::Key: Hash + Eq + Clone + Debug + Send + Sync,
    D::Service: Into<String> + Send,
    D::Error: Debug + Send,
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

// ===== discovery task =====

/// Changes applied per snapshot at most: a burst is applied in one swap.
const MAX_BATCH: usize = 1024;

async fn run_discovery<C, D>(weak: Weak<Shared<C>>, discover: D)
where
    C: Connect + Clone + Send + Sync + 'static,
    D: Discover + Send + 'static,
    D::Key: Hash + Eq + Clone + Debug + Send + Sync,
    D::Service: Into<String> + Send,
    D::Error: Debug + Send,
{
    let mut discover = Box::pin(discover);
    let mut endpoints: HashMap<D::Key, Arc<Endpoint>> = HashMap::new();
    let mut errors_in_a_row: u32 = 0;
    let mut ended = false;
    while !ended {
        let batch = poll_fn(|cx| {
            let mut batch = Vec::new();
            loop {
                match discover.as_mut().poll_discover(cx) {
                    Poll::Ready(Some(item)) => {
                        batch.push(item);
                        if batch.len() >= MAX_BATCH {
                            return Poll::Ready((batch, false));
                        }
                    }
                    Poll::Ready(None) => return Poll::Ready((batch, true)),
                    Poll::Pending if batch.is_empty() => return Poll::Pending,
                    Poll::Pending => return Poll::Ready((batch, false)),
                }
            }
        })
        .await;
        ended = batch.1;
        let Some(shared) = weak.upgrade() else { return };
        let mut changed = false;
        let mut errors = 0;
        for item in batch.0 {
            match item {
                Ok(Change::Insert(key, service)) => {
                    let found = describe(service);
                    let target = Target::parse(&found.url).and_then(|target| {
                        match found.server_name.as_deref() {
                            Some(name) => target.with_server_name(name),
                            None => Ok(target),
                        }
                    });
                    match target {
                        Ok(target) => {
                            if endpoints.get(&key).is_some_and(|e| {
                                e.target.as_str() == target.as_str()
                                    && e.target.server_name() == target.server_name()
                                    && e.weight == found.weight
                            }) {
                                continue;
                            }
                            let endpoint = Endpoint::new(target, found.weight, &shared.set.clock);
                            endpoints.insert(key, Arc::new(endpoint));
                            changed = true;
                        }
                        Err(err) => {
                            // The URL may carry a token in its query: log only why it failed.
                            tracing::warn!(
                                ?key,
                                reason = err.reason,
                                "discovered endpoint ignored"
                            );
                            changed |= endpoints.remove(&key).is_some();
                        }
                    }
                }
                Ok(Change::Remove(key)) => {
                    changed |= endpoints.remove(&key).is_some();
                }
                Err(err) => {
                    errors += 1;
                    if errors_in_a_row == 0 {
                        tracing::warn!(error = ?err, "service discovery error");
                    } else {
                        tracing::debug!(error = ?err, "service discovery error");
                    }
                }
            }
        }
        if changed {
            let mut list: Vec<Arc<Endpoint>> = endpoints.values().cloned().collect();
            list.sort_by_key(|e| e.id);
            shared.publish(list);
        }
        drop(shared);
        if errors > 0 && !changed {
            let backoff = Duration::from_millis(100)
                .saturating_mul(1 << errors_in_a_row.min(6))
                .min(Duration::from_secs(5));
            errors_in_a_row = errors_in_a_row.saturating_add(1);
            tokio::time::sleep(backoff).await;
        } else {
            errors_in_a_row = 0;
        }
    }
    tracing::debug!("service discovery stream ended");
}
