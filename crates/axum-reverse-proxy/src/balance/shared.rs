//! The state every balanced proxy shares between its clones: the endpoint set, the
//! forwarding path, the configuration, and the background tasks it owns.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper_util::client::legacy::connect::Connect;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::LoadBalancingStrategy;
use super::endpoint::{Clock, Endpoint, EndpointStats, InFlight, Outcome};
use super::health::{self, HealthCheck};
use super::key::HashKey;
use super::outlier::OutlierDetection;
use super::set::EndpointSet;
use super::strategy::{self, PickCtx};
use crate::error::{InvalidTarget, Kind, ProxyError};
use crate::proxy::{Forwarder, mounted_path_and_query};
use crate::retry::Tried;
use crate::uri::{self, Target};

/// Peak-EWMA time constant.
pub(crate) const DEFAULT_DECAY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) strategy: LoadBalancingStrategy,
    pub(crate) hash_key: HashKey,
    pub(crate) outlier: OutlierDetection,
    pub(crate) health: Option<HealthCheck>,
    pub(crate) decay: Duration,
}

impl Config {
    pub(crate) fn new(strategy: LoadBalancingStrategy) -> Self {
        Config {
            strategy,
            hash_key: HashKey::ClientIp,
            outlier: OutlierDetection::default(),
            health: None,
            decay: DEFAULT_DECAY,
        }
    }
}

/// Aborts its task when dropped: background tasks live exactly as long as their proxy.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) struct Shared<C> {
    pub(crate) path: String,
    base: String,
    pub(crate) forwarder: Forwarder<C>,
    pub(crate) config: Config,
    pub(crate) set: EndpointSet,
    health_task: OnceLock<AbortOnDrop>,
    pub(crate) discovery_task: OnceLock<AbortOnDrop>,
}

/// Parse targets into endpoints.
pub(crate) fn endpoints_from<S: Into<String>>(
    targets: Vec<S>,
    clock: &Clock,
) -> Result<Vec<Arc<Endpoint>>, InvalidTarget> {
    targets
        .into_iter()
        .map(|t| {
            let target = Target::parse(&t.into())?;
            Ok(Arc::new(Endpoint::new(target, 1, clock)))
        })
        .collect()
}

impl<C> Shared<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    pub(crate) fn new(
        path: String,
        forwarder: Forwarder<C>,
        config: Config,
        endpoints: Vec<Arc<Endpoint>>,
        clock: Clock,
    ) -> Self {
        let set = EndpointSet::new(endpoints, clock, fastrand::u64(..));
        set.prepare(config.strategy);
        Shared {
            base: uri::normalize_base(&path).to_owned(),
            path,
            forwarder,
            config,
            set,
            health_task: OnceLock::new(),
            discovery_task: OnceLock::new(),
        }
    }

    /// Apply a builder change. A proxy that has not been cloned is changed in place; a
    /// shared one is copied (same endpoints and metrics, a snapshot of its own that
    /// discovery does not update). Background tasks restart lazily.
    pub(crate) fn reconfigure(
        this: Arc<Self>,
        change: impl FnOnce(&mut Config, &mut Forwarder<C>),
    ) -> Arc<Self> {
        let mut shared = match Arc::try_unwrap(this) {
            Ok(shared) => shared,
            Err(shared) => {
                let set = EndpointSet::new(
                    shared.set.load().endpoints.clone(),
                    shared.set.clock,
                    fastrand::u64(..),
                );
                Shared {
                    path: shared.path.clone(),
                    base: shared.base.clone(),
                    forwarder: shared.forwarder.clone(),
                    config: shared.config.clone(),
                    set,
                    health_task: OnceLock::new(),
                    discovery_task: OnceLock::new(),
                }
            }
        };
        change(&mut shared.config, &mut shared.forwarder);
        shared.set.prepare(shared.config.strategy);
        // A running health task checks with the old settings: restart it on next use.
        shared.health_task.take();
        Arc::new(shared)
    }

    pub(crate) fn endpoints(&self) -> Vec<EndpointStats> {
        self.set.stats(self.config.decay)
    }

    pub(crate) fn publish(&self, endpoints: Vec<Arc<Endpoint>>) {
        self.set.publish(endpoints, self.config.strategy);
    }

    /// Start the health-check task if one is configured and not running. Needs a Tokio
    /// runtime; without one it is retried on the next request.
    pub(crate) fn ensure_health_task(self: &Arc<Self>) {
        let Some(config) = &self.config.health else {
            return;
        };
        if self.health_task.get().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let config = config.clone();
        let _ = self.health_task.get_or_init(|| {
            AbortOnDrop(runtime.spawn(async move {
                let mut ticks = tokio::time::interval(config.interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    // Hold only what a round needs, so dropping the proxy stops the task.
                    let Some(shared) = weak.upgrade() else { return };
                    let snapshot = shared.set.load_full();
                    let transport = shared.forwarder.transport.clone();
                    drop(shared);
                    health::check_all(&config, &transport, &snapshot.endpoints).await;
                }
            }))
        });
    }

    /// Choose an endpoint for `req`.
    ///
    /// A retry (the retry layer shares a [`Tried`] list between a request's attempts)
    /// avoids the endpoints earlier attempts went to: if the strategy picks one of them,
    /// the next available endpoint after it that was not tried is taken instead, when
    /// there is one. Without this, a retry could land on the endpoint that just failed
    /// (round robin under concurrency, random, P2C), and an endpoint that cannot be
    /// ejected (`max_ejection_percent`) could fail a request on every attempt.
    pub(crate) fn choose(
        &self,
        req: &Request<Body>,
        client: Option<SocketAddr>,
    ) -> Option<Arc<Endpoint>> {
        let hash = match self.config.strategy {
            LoadBalancingStrategy::ConsistentHash => self.config.hash_key.hash(req, client),
            _ => None,
        };
        let snapshot = self.set.load();
        let mut ctx = PickCtx::new(&self.set, hash, self.config.decay);
        let index = strategy::pick(self.config.strategy, &snapshot, &mut ctx)?;
        let chosen = snapshot.endpoints.get(index)?;
        if let Some(tried) = req.extensions().get::<Tried>()
            && tried.contains(chosen.id)
        {
            let n = snapshot.len();
            let untried = (1..n)
                .map(|k| &snapshot.endpoints[(index + k) % n])
                .find(|e| !tried.contains(e.id) && ctx.available(e));
            if let Some(other) = untried {
                return Some(Arc::clone(other));
            }
        }
        Some(Arc::clone(chosen))
    }

    /// Forward `req`; the client's address is `client` when given, else the request's
    /// `ConnectInfo<SocketAddr>`.
    pub(crate) async fn handle(
        self: Arc<Self>,
        req: Request<Body>,
        client: Option<SocketAddr>,
    ) -> Response<Body> {
        self.ensure_health_task();
        let Some(endpoint) = self.choose(&req, client) else {
            tracing::debug!(path = %self.path, "no endpoint available");
            return ProxyError::new(Kind::NoEndpoint).into_response();
        };
        if let Some(tried) = req.extensions().get::<Tried>() {
            tried.add(endpoint.id);
        }
        let flight = InFlight::start(endpoint);
        let endpoint = Arc::clone(flight.endpoint());
        let path_and_query = mounted_path_and_query(&req, &self.base, &endpoint.target);
        let started = Instant::now();
        let response = self
            .forwarder
            .forward(&endpoint.target, req, path_and_query, client)
            .await;
        let finished = Instant::now();
        let outcome = Outcome::of(&response);
        let consecutive = endpoint.record(
            outcome,
            finished.saturating_duration_since(started),
            self.set.clock.ms_at(finished),
            self.config.decay,
        );
        if outcome == Outcome::GatewayFailure {
            self.config
                .outlier
                .on_failure(&self.set, &endpoint, consecutive);
        }
        flight.attach(response)
    }
}
