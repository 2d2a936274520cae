//! Building a pool's service: [`build_upstream`] is the one place where a `[pools.NAME]`
//! table becomes a `tower` service.
//!
//! - One static target and no health settings: a plain [`ReverseProxy`] (the fastest
//!   path: no endpoint bookkeeping per request). A single endpoint is never ejected, so
//!   default outlier detection would change nothing.
//! - Several static targets, or one with `health_check` / `outlier_detection` tables: a
//!   [`BalancedProxy`] with the pool's strategy, weights, hash key, outlier detection (on
//!   by default) and active health checks (started at once).
//! - `discovery.dns` / `discovery.etcd`: a [`DiscoverableBalancedProxy`] over that source,
//!   with the same settings, discovery started at once. DNS endpoints are
//!   [`DnsEndpoint`](axum_reverse_proxy::discover::DnsEndpoint)s: the proxy connects to
//!   each address and sends the DNS name (the SRV target for `record = "srv"`) as `Host`
//!   and TLS server name; SRV weights and etcd `weight`s are the endpoints' weights.
//!
//! Every kind is wrapped in a [`RetryLayer`] when retries are configured, and keeps a
//! handle that `/upstreams` and `/metrics` read endpoint state from. Every kind proxies
//! WebSockets and other upgrades, with the pool's `websocket_connect_timeout` and
//! `upgrade_idle_timeout`, and counts its tunnels in the server's one [`UpgradeTunnels`]
//! handle (given to [`build_upstream`]), so that `/metrics` and shutdown see them all.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum_reverse_proxy::discover::{
    DnsDiscoverySettings, DnsEndpointDiscovery, DnsRecordTypes, EtcdDiscovery,
    EtcdDiscoveryConfig as LibEtcdConfig,
};
use axum_reverse_proxy::{
    BalancedProxy, DiscoverableBalancedProxy, DnsDiscoveryConfig as LibDnsConfig, EndpointStats,
    HashKey, HealthCheck, HostBehaviour, LoadBalancingStrategy, OutlierDetection, ProxyPolicy,
    RetryLayer, ReverseProxy, TrustedProxies, UpgradeTunnels, XForwardedFor,
};
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::proto::xfer::Protocol;
use http::{Request, Response};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

use crate::admin::metrics::Metrics;
use crate::config::{
    DiscoveryConfig, DnsDiscoveryConfig, DnsRecord, EtcdDiscoveryConfig, HealthCheckConfig,
    HostMode, OutlierConfig, PoolConfig, ServerConfig, Strategy, TrustedProxiesConfig,
    XForwardedMode, parse_status_range,
};

/// What a route calls. It never fails: errors are responses.
///
/// Pools without retries are called in place: the proxy's future is part of the
/// request's, with no clone of a boxed service, no box for its future and no `Oneshot`
/// (through `BoxCloneSyncService` those cost three allocations per request, one of them
/// the proxy's 3.6 KiB future, copied into its box).
#[derive(Clone)]
pub(crate) enum UpstreamService {
    /// One target.
    Single(ReverseProxy),
    /// Static targets behind a balancer.
    Balanced(BalancedProxy),
    /// Discovered endpoints, or any pool with retries: the retry layer over the counted
    /// proxy, boxed.
    Boxed(BoxedService),
}

/// A cloneable, shareable service that never fails.
pub(crate) type BoxedService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

impl UpstreamService {
    /// Forward `req`, from the client at `peer`, to the pool. Called in place, the proxy
    /// is given the peer directly; through the box, in the request's `ConnectInfo` (which
    /// the retry layer copies into every attempt).
    pub(crate) async fn call(&self, peer: SocketAddr, mut req: Request<Body>) -> Response<Body> {
        let answered = match self {
            UpstreamService::Single(proxy) => proxy.proxy_request_from(peer, req).await,
            UpstreamService::Balanced(proxy) => proxy.proxy_request_from(peer, req).await,
            UpstreamService::Boxed(service) => {
                req.extensions_mut().insert(ConnectInfo(peer));
                service.clone().oneshot(req).await
            }
        };
        match answered {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// A pool that could not be built, with the place in the file to blame.
#[derive(Debug)]
pub(crate) struct BuildError {
    pub(crate) span: Range<usize>,
    pub(crate) key: String,
    pub(crate) message: String,
    pub(crate) hint: String,
}

/// A built pool: the service and where its endpoint state is read from.
pub(crate) struct BuiltPool {
    /// The configuration it was built from (with the server-wide body limit), to decide
    /// on reload whether it can be kept as is.
    pub(crate) config: PoolConfig,
    pub(crate) server_body_limit: Option<u64>,
    pub(crate) service: UpstreamService,
    pub(crate) endpoints: EndpointSource,
    pub(crate) strategy: Strategy,
}

impl BuiltPool {
    /// Whether this pool serves `config` unchanged (so it, and its endpoint state, is kept).
    pub(crate) fn serves(&self, config: &PoolConfig, server: &ServerConfig) -> bool {
        self.config == *config && self.server_body_limit == server.max_body_bytes.map(|b| b.0)
    }

    /// `"single"` (one target, no balancer), `"balanced"`, `"dns"` or `"etcd"`.
    pub(crate) fn kind(&self) -> &'static str {
        match &self.endpoints {
            EndpointSource::Single { .. } => "single",
            EndpointSource::Balanced { kind, .. } => kind,
        }
    }

    /// The endpoints now, with their state.
    pub(crate) fn endpoints(&self) -> Vec<EndpointView> {
        match &self.endpoints {
            EndpointSource::Single { url, weight } => vec![EndpointView {
                url: url.clone(),
                weight: *weight,
                stats: None,
            }],
            EndpointSource::Balanced { read, .. } => read()
                .into_iter()
                .map(|s| EndpointView {
                    url: s.url.clone(),
                    weight: s.weight,
                    stats: Some(s),
                })
                .collect(),
        }
    }
}

/// Where `/upstreams` and `/metrics` read a pool's endpoints from.
pub(crate) enum EndpointSource {
    /// A plain proxy to one target: no per-endpoint state is kept.
    Single { url: String, weight: u32 },
    /// A balancer: live state from its `endpoints()`.
    Balanced {
        kind: &'static str,
        read: Arc<dyn Fn() -> Vec<EndpointStats> + Send + Sync>,
    },
}

/// One endpoint as the admin pages see it; `stats` is `None` for a single-target pool.
pub(crate) struct EndpointView {
    pub(crate) url: String,
    pub(crate) weight: u32,
    pub(crate) stats: Option<EndpointStats>,
}

/// Build the service for the pool `name`.
pub(crate) fn build_upstream(
    name: &str,
    pool: &PoolConfig,
    server: &ServerConfig,
    metrics: &Arc<Metrics>,
    tunnels: &UpgradeTunnels,
) -> Result<BuiltPool, BuildError> {
    let key = format!("pools.{name}");
    let retries = metrics.retries_for(name);
    let policy = policy(pool, server).with_upgrade_tunnels(tunnels.clone());
    let (service, endpoints) = if let Some(d) = &pool.discovery {
        discovered(&key, d, pool, policy, retries)?
    } else if pool.targets.len() == 1
        && pool.health_check.is_none()
        && pool.outlier_detection.is_none()
    {
        single(&key, pool, policy, retries)?
    } else {
        balanced(&key, pool, policy, retries)?
    };
    Ok(BuiltPool {
        config: pool.clone(),
        server_body_limit: server.max_body_bytes.map(|b| b.0),
        service,
        endpoints,
        strategy: *pool.strategy.get_ref(),
    })
}

type Built = (UpstreamService, EndpointSource);

/// The pool's service, counted and wrapped in its retry layer.
fn finish<S>(inner: S, pool: &PoolConfig, retries: Counter) -> BoxedService
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let counted = CountAttempts { inner, retries };
    match &pool.retry {
        None => BoxCloneSyncService::new(counted),
        Some(retry) => BoxCloneSyncService::new(retry_layer(retry.get_ref()).layer(counted)),
    }
}

type Counter = prometheus_client::metrics::counter::Counter;

fn single(
    key: &str,
    pool: &PoolConfig,
    policy: ProxyPolicy,
    retries: Counter,
) -> Result<Built, BuildError> {
    let Some(target) = pool.targets.first() else {
        return Err(no_targets(key));
    };
    let t = target.get_ref();
    let proxy = ReverseProxy::try_new("/", t.url.clone()).map_err(|err| BuildError {
        span: target.span(),
        key: format!("{key}.targets[0]"),
        message: err.to_string(),
        hint: "write an absolute http:// or https:// URL with a host".to_owned(),
    })?;
    let proxy = proxy.with_policy(policy);
    Ok((
        match pool.retry {
            None => UpstreamService::Single(proxy),
            Some(_) => UpstreamService::Boxed(finish(proxy, pool, retries)),
        },
        EndpointSource::Single {
            url: t.url.clone(),
            weight: t.weight,
        },
    ))
}

fn no_targets(key: &str) -> BuildError {
    BuildError {
        span: 0..0,
        key: format!("{key}.targets"),
        message: "the pool has no targets".to_owned(),
        hint: "add targets = [\"http://127.0.0.1:3000\"]".to_owned(),
    }
}

/// Apply the settings every balancer shares (both kinds have the same builders).
macro_rules! configure {
    ($proxy:expr, $pool:expr, $policy:expr) => {{
        let pool: &PoolConfig = $pool;
        let mut proxy = $proxy
            .with_strategy(strategy(*pool.strategy.get_ref()))
            .with_policy($policy)
            .with_outlier_detection(outliers(
                pool.outlier_detection.as_ref().map(|o| o.get_ref()),
            ));
        if let Some(k) = &pool.hash_key {
            proxy = proxy.with_hash_key(hash_key(k.get_ref()));
        }
        if let Some(hc) = &pool.health_check {
            proxy = proxy.with_health_check(health_check(hc.get_ref()));
        }
        proxy
    }};
}

fn balanced(
    key: &str,
    pool: &PoolConfig,
    policy: ProxyPolicy,
    retries: Counter,
) -> Result<Built, BuildError> {
    if pool.targets.is_empty() {
        return Err(no_targets(key));
    }
    // Validation checked every URL; name the first one the balancer refuses anyway.
    for (i, t) in pool.targets.iter().enumerate() {
        if let Err(err) = ReverseProxy::try_new("/", t.get_ref().url.clone()) {
            return Err(BuildError {
                span: t.span(),
                key: format!("{key}.targets[{i}]"),
                message: err.to_string(),
                hint: "write an absolute http:// or https:// URL with a host".to_owned(),
            });
        }
    }
    let urls: Vec<String> = pool
        .targets
        .iter()
        .map(|t| t.get_ref().url.clone())
        .collect();
    let proxy = BalancedProxy::try_new("/".to_owned(), urls).map_err(|err| BuildError {
        span: pool.targets[0].span(),
        key: format!("{key}.targets"),
        message: err.to_string(),
        hint: "write absolute http:// or https:// URLs with a host".to_owned(),
    })?;
    let proxy = proxy.with_weights(pool.targets.iter().map(|t| t.get_ref().weight));
    let proxy = configure!(proxy, pool, policy);
    proxy.start_health_checks();
    let read = {
        let proxy = proxy.clone();
        Arc::new(move || proxy.endpoints())
    };
    Ok((
        match pool.retry {
            None => UpstreamService::Balanced(proxy),
            Some(_) => UpstreamService::Boxed(finish(proxy, pool, retries)),
        },
        EndpointSource::Balanced {
            kind: "balanced",
            read,
        },
    ))
}

fn discovered(
    key: &str,
    d: &toml::Spanned<DiscoveryConfig>,
    pool: &PoolConfig,
    policy: ProxyPolicy,
    retries: Counter,
) -> Result<Built, BuildError> {
    let dkey = format!("{key}.discovery");
    let failed = |k: String, message: String, hint: &str| BuildError {
        span: d.span(),
        key: k,
        message,
        hint: hint.to_owned(),
    };
    match (&d.get_ref().dns, &d.get_ref().etcd) {
        (Some(dns), None) => {
            let source = DnsEndpointDiscovery::new(dns_settings(dns)).map_err(|err| {
                failed(
                    format!("{dkey}.dns"),
                    format!("cannot start DNS discovery: {err}"),
                    "list name servers with servers = [\"10.0.0.2:53\"] if the system has no resolver configuration",
                )
            })?;
            Ok(start_discovery(source, "dns", pool, policy, retries))
        }
        (None, Some(etcd)) => {
            if etcd.username.is_some() || etcd.password.is_some() {
                return Err(failed(
                    format!("{dkey}.etcd.username"),
                    "etcd authentication is not supported yet".to_owned(),
                    "remove username and password and reach etcd over a trusted network",
                ));
            }
            let source = EtcdDiscovery::new(etcd_config(etcd)).map_err(|err| {
                failed(
                    format!("{dkey}.etcd"),
                    format!("cannot start etcd discovery: {err}"),
                    "write endpoints = [\"http://127.0.0.1:2379\"]",
                )
            })?;
            Ok(start_discovery(source, "etcd", pool, policy, retries))
        }
        _ => Err(failed(
            dkey,
            "name exactly one discovery source".to_owned(),
            "write either [pools.NAME.discovery.dns] or [pools.NAME.discovery.etcd]",
        )),
    }
}

fn start_discovery<D>(
    source: D,
    kind: &'static str,
    pool: &PoolConfig,
    policy: ProxyPolicy,
    retries: Counter,
) -> Built
where
    D: tower::discover::Discover + Send + 'static,
    D::Key: std::hash::Hash + Eq + Clone + std::fmt::Debug + Send + Sync,
    D::Service: Into<String> + Send,
    D::Error: std::fmt::Debug + Send,
{
    let proxy = DiscoverableBalancedProxy::new("/", source);
    let proxy = configure!(proxy, pool, policy);
    // `start_discovery` only spawns its task (it never waits), so one poll completes it;
    // this keeps pool building synchronous.
    let started = {
        let mut start = std::pin::pin!(proxy.start_discovery());
        start
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    };
    if !started && let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let proxy = proxy.clone();
        runtime.spawn(async move { proxy.start_discovery().await });
    }
    proxy.start_health_checks();
    let read = {
        let proxy = proxy.clone();
        Arc::new(move || proxy.endpoints())
    };
    (
        UpstreamService::Boxed(finish(proxy, pool, retries)),
        EndpointSource::Balanced { kind, read },
    )
}

fn dns_settings(dns: &DnsDiscoveryConfig) -> DnsDiscoverySettings {
    let mut config = LibDnsConfig::new(dns.name.get_ref().clone(), dns.port.unwrap_or(0))
        .with_refresh_interval(dns.refresh.0)
        .with_https(dns.scheme.get_ref() == "https");
    if !dns.servers.is_empty() {
        let servers: Vec<NameServerConfig> = dns
            .servers
            .iter()
            .map(|s| NameServerConfig::new(*s.get_ref(), Protocol::Udp))
            .collect();
        config = config.with_resolver_config(ResolverConfig::from_parts(None, vec![], servers));
    }
    let (srv, types) = match dns.record {
        DnsRecord::A => (false, DnsRecordTypes::A),
        DnsRecord::Aaaa => (false, DnsRecordTypes::Aaaa),
        DnsRecord::AAndAaaa => (false, DnsRecordTypes::Both),
        DnsRecord::Srv => (true, DnsRecordTypes::Both),
    };
    config.with_srv(srv).with_record_types(types)
}

fn etcd_config(etcd: &EtcdDiscoveryConfig) -> LibEtcdConfig {
    LibEtcdConfig::new(
        etcd.endpoints.iter().map(|e| e.get_ref().clone()),
        etcd.prefix.get_ref().clone(),
    )
}

fn strategy(s: Strategy) -> LoadBalancingStrategy {
    match s {
        Strategy::RoundRobin => LoadBalancingStrategy::RoundRobin,
        Strategy::WeightedRoundRobin => LoadBalancingStrategy::WeightedRoundRobin,
        Strategy::P2cPendingRequests => LoadBalancingStrategy::P2cPendingRequests,
        Strategy::P2cPeakEwma => LoadBalancingStrategy::P2cPeakEwma,
        Strategy::LeastRequest => LoadBalancingStrategy::LeastRequest,
        Strategy::Random => LoadBalancingStrategy::Random,
        Strategy::ConsistentHash => LoadBalancingStrategy::ConsistentHash,
    }
}

/// `"path"`, `"client_ip"`, `"header:NAME"`, `"cookie:NAME"` (checked by validation; an
/// unknown key hashes the client IP).
fn hash_key(text: &str) -> HashKey {
    match text.split_once(':') {
        Some(("header", name)) => HashKey::header(name),
        Some(("cookie", name)) => HashKey::cookie(name),
        _ if text == "path" => HashKey::Path,
        _ => HashKey::ClientIp,
    }
}

/// The pool's outlier detection: the table's settings, or its defaults when absent.
fn outliers(config: Option<&OutlierConfig>) -> OutlierDetection {
    let default = OutlierConfig::default();
    let o = config.unwrap_or(&default);
    if !o.enabled {
        return OutlierDetection::disabled();
    }
    OutlierDetection::default()
        .with_consecutive_gateway_failures(*o.consecutive_failures.get_ref())
        .with_base_ejection_time(o.base_ejection_time.0)
        .with_max_ejection_time(o.max_ejection_time.get_ref().0)
        .with_max_ejection_percent(*o.max_ejection_percent.get_ref())
}

fn health_check(h: &HealthCheckConfig) -> HealthCheck {
    let (lo, hi) = parse_status_range(h.expected_status.get_ref()).unwrap_or((200, 399));
    HealthCheck::new(h.path.get_ref().clone())
        .with_interval(h.interval.0)
        .with_timeout(h.timeout.get_ref().0)
        .with_healthy_threshold(*h.healthy_threshold.get_ref())
        .with_unhealthy_threshold(*h.unhealthy_threshold.get_ref())
        .with_expected_statuses(lo..=hi)
}

fn policy(pool: &PoolConfig, server: &ServerConfig) -> ProxyPolicy {
    let mut policy = ProxyPolicy::new()
        .with_host_behaviour(match pool.host {
            HostMode::Replace => HostBehaviour::Replace,
            HostMode::Preserve => HostBehaviour::Preserve,
        })
        .with_x_forwarded_for(match pool.x_forwarded {
            XForwardedMode::Append => XForwardedFor::Append,
            XForwardedMode::Preserve => XForwardedFor::Preserve,
        })
        .with_forwarded(pool.forwarded)
        .with_h2c(pool.h2c);
    let trusted = match pool.trusted_proxies.get_ref() {
        TrustedProxiesConfig::All => TrustedProxies::All,
        TrustedProxiesConfig::None => TrustedProxies::None,
        // Checked by validation; an unparsable list trusts nobody rather than everybody.
        TrustedProxiesConfig::List(list) => {
            TrustedProxies::list(list).unwrap_or(TrustedProxies::None)
        }
    };
    policy = policy.with_trusted_proxies(trusted);
    if let Some(via) = &pool.via {
        policy = policy.with_via(via.clone());
    }
    if let Some(scheme) = &pool.public_scheme {
        policy = policy.with_public_scheme(scheme.get_ref().clone());
    }
    if let Some(timeout) = pool.timeout {
        policy = policy.with_upstream_timeout(timeout.0);
    }
    if let Some(timeout) = pool.websocket_connect_timeout {
        policy = policy.with_websocket_connect_timeout(timeout.0);
    }
    if let Some(timeout) = pool.upgrade_idle_timeout {
        policy = policy.with_upgrade_idle_timeout(timeout.0);
    }
    let limit = match (server.max_body_bytes, pool.max_body_bytes) {
        (Some(a), Some(b)) => Some(a.0.min(b.0)),
        (a, b) => a.or(b).map(|x| x.0),
    };
    if let Some(limit) = limit {
        policy = policy.with_max_request_body_bytes(limit);
    }
    policy
}

fn retry_layer(retry: &crate::config::RetryConfig) -> RetryLayer {
    let mut layer = RetryLayer::with_delay(*retry.attempts.get_ref() as usize, retry.delay.0)
        .with_jitter(retry.jitter)
        .with_idempotent_retries(retry.idempotent)
        .with_max_replay_body_bytes(
            usize::try_from(retry.max_replay_body_bytes.0).unwrap_or(usize::MAX),
        );
    if let Some(max) = retry.max_delay {
        layer = layer.with_max_delay(max.0);
    }
    if let Some(budget) = &retry.budget {
        let b = budget.get_ref();
        layer = layer.with_budget(b.ttl.get_ref().0, b.min_per_second, *b.ratio.get_ref());
    }
    layer
}

// ===== impl CountAttempts =====

/// Per-request attempt counter, put in the request's extensions by the handler. The retry
/// layer copies extensions into every attempt, so all attempts share one counter.
#[derive(Clone, Default)]
pub(crate) struct Attempts(pub(crate) Arc<AtomicU32>);

/// Sits under the retry layer and counts every attempt after the first as a retry.
#[derive(Clone)]
struct CountAttempts<S> {
    inner: S,
    retries: Counter,
}

impl<S> tower::Service<Request<Body>> for CountAttempts<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    // The inner future as it is: the service box above boxes it once (a box here too
    // cost an allocation and a pointer chase per request).
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if let Some(attempts) = req.extensions().get::<Attempts>()
            && attempts.0.fetch_add(1, Ordering::Relaxed) > 0
        {
            self.retries.inc();
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config;

    fn build(pool: &str) -> Result<BuiltPool, BuildError> {
        let toml = format!(
            "[listeners.web]\naddress = \"127.0.0.1:0\"\n[[routes]]\nprefix = \"/\"\npool = \"p\"\n[pools.p]\n{pool}"
        );
        let loaded = config::parse("t.toml", toml, ".".into(), false).unwrap();
        let cfg = &loaded.config;
        let (_, p) = cfg.pools.iter().next().unwrap();
        build_upstream(
            "p",
            p,
            &cfg.server,
            &Arc::new(Metrics::new()),
            &UpgradeTunnels::new(),
        )
    }

    #[tokio::test]
    async fn the_kind_follows_the_configuration() {
        let one = build("targets = [\"http://127.0.0.1:1\"]\n").unwrap();
        assert_eq!(one.kind(), "single");
        assert!(one.endpoints()[0].stats.is_none());

        let two = build(
            "targets = [\"http://127.0.0.1:1\", { url = \"http://127.0.0.1:2\", weight = 4 }]\nstrategy = \"random\"\n",
        )
        .unwrap();
        assert_eq!(two.kind(), "balanced");
        let eps = two.endpoints();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[1].weight, 4);
        assert!(
            eps.iter()
                .all(|e| e.stats.as_ref().is_some_and(|s| s.healthy))
        );

        // Health settings on one target need the balancer to take effect.
        let checked =
            build("targets = [\"http://127.0.0.1:1\"]\n[pools.p.health_check]\npath = \"/h\"\n")
                .unwrap();
        assert_eq!(checked.kind(), "balanced");

        let dns = build(
            "[pools.p.discovery.dns]\nname = \"api.test\"\nport = 80\nservers = [\"127.0.0.1:9\"]\n",
        )
        .unwrap();
        assert_eq!(dns.kind(), "dns");
        assert!(dns.endpoints().is_empty());

        let etcd = build(
            "[pools.p.discovery.etcd]\nendpoints = [\"http://127.0.0.1:9\"]\nprefix = \"/svc/\"\n",
        )
        .unwrap();
        assert_eq!(etcd.kind(), "etcd");
    }

    /// The policy built for pool `p` with `keys` in its table.
    fn policy_for(keys: &str) -> ProxyPolicy {
        let toml = format!(
            "[listeners.web]\naddress = \"127.0.0.1:0\"\n[[routes]]\nprefix = \"/\"\npool = \"p\"\n[pools.p]\ntargets = [\"http://127.0.0.1:1\"]\n{keys}"
        );
        let loaded = config::parse("t.toml", toml, ".".into(), false).unwrap();
        let cfg = &loaded.config;
        let (_, p) = cfg.pools.iter().next().unwrap();
        policy(p, &cfg.server)
    }

    #[test]
    fn upgrade_settings_reach_the_policy() {
        let set = policy_for("websocket_connect_timeout = \"3s\"\nupgrade_idle_timeout = \"5m\"\n");
        assert_eq!(set.websocket_connect_timeout, Duration::from_secs(3));
        assert_eq!(set.upgrade_idle_timeout, Some(Duration::from_secs(300)));
        let unset = policy_for("");
        assert_eq!(
            unset.websocket_connect_timeout,
            ProxyPolicy::new().websocket_connect_timeout
        );
        assert_eq!(unset.upgrade_idle_timeout, None);
    }

    #[test]
    fn settings_map_to_the_library() {
        assert_eq!(outliers(None), {
            OutlierDetection::default()
                .with_consecutive_gateway_failures(5)
                .with_base_ejection_time(std::time::Duration::from_secs(30))
                .with_max_ejection_time(std::time::Duration::from_secs(300))
                .with_max_ejection_percent(50)
        });
        let off = OutlierConfig {
            enabled: false,
            ..OutlierConfig::default()
        };
        assert_eq!(outliers(Some(&off)), OutlierDetection::disabled());
        assert_eq!(hash_key("header:X-User"), HashKey::header("x-user"));
        assert_eq!(hash_key("cookie:sid"), HashKey::cookie("sid"));
        assert_eq!(hash_key("path"), HashKey::Path);
        assert_eq!(hash_key("client_ip"), HashKey::ClientIp);
        let hc = health_check(&HealthCheckConfig::default());
        assert_eq!(
            hc,
            HealthCheck::new("/health")
                .with_interval(std::time::Duration::from_secs(10))
                .with_timeout(std::time::Duration::from_secs(2))
                .with_healthy_threshold(2)
                .with_unhealthy_threshold(3)
                .with_expected_statuses(200..=399)
        );
        for (i, name) in Strategy::NAMES.iter().enumerate() {
            let s: Strategy = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(s.name(), *name, "{i}");
            let _ = strategy(s);
        }
    }
}
