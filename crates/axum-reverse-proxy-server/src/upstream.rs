//! Building a pool's service: [`build_upstream`] is the one place where a `[pools.NAME]`
//! table becomes a `tower` service.
//!
//! Today a pool with one static target becomes a [`ReverseProxy`] (with the pool's
//! policy, wrapped in a [`RetryLayer`] when retries are configured). Pools that need the
//! balancing, health or discovery modules (several targets, a discovery source, active
//! health checks, outlier detection) are refused with a clear error until those land;
//! wiring them in is a change to this file only.

use std::convert::Infallible;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum_reverse_proxy::{
    HostBehaviour, ProxyPolicy, RetryLayer, ReverseProxy, TrustedProxies, XForwardedFor,
};
use http::{Request, Response};
use serde::Serialize;
use tower::Layer;
use tower::util::BoxCloneSyncService;

use crate::admin::metrics::Metrics;
use crate::config::{
    HostMode, PoolConfig, ServerConfig, Strategy, TrustedProxiesConfig, XForwardedMode,
};

/// What every route calls: a cloneable, shareable service that never fails (errors are
/// responses).
pub(crate) type UpstreamService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// The message for pools that need the balancing module.
pub(crate) const NEEDS_BALANCER: &str =
    "load-balanced pools need the balancing module (not merged yet)";

/// A pool that could not be built, with the place in the file to blame.
#[derive(Debug)]
pub(crate) struct BuildError {
    pub(crate) span: Range<usize>,
    pub(crate) key: String,
    pub(crate) message: String,
    pub(crate) hint: String,
}

/// A built pool: the service and what `/upstreams` shows about it.
pub(crate) struct BuiltPool {
    /// The configuration it was built from (with the server-wide body limit), to decide
    /// on reload whether it can be kept as is.
    pub(crate) config: PoolConfig,
    pub(crate) server_body_limit: Option<u64>,
    pub(crate) service: UpstreamService,
    pub(crate) endpoints: Vec<EndpointInfo>,
    pub(crate) strategy: Strategy,
}

impl BuiltPool {
    /// Whether this pool serves `config` unchanged (so it, and its endpoint state, is kept).
    pub(crate) fn serves(&self, config: &PoolConfig, server: &ServerConfig) -> bool {
        self.config == *config && self.server_body_limit == server.max_body_bytes.map(|b| b.0)
    }
}

/// One endpoint as `/upstreams` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EndpointInfo {
    pub(crate) url: String,
    pub(crate) weight: u32,
    /// `static`: a fixed target, not health-checked (health checks need the health module).
    pub(crate) state: &'static str,
}

/// Build the service for the pool `name`.
pub(crate) fn build_upstream(
    name: &str,
    pool: &PoolConfig,
    server: &ServerConfig,
    metrics: &Arc<Metrics>,
) -> Result<BuiltPool, BuildError> {
    let key = format!("pools.{name}");
    if let Some(d) = &pool.discovery {
        return Err(BuildError {
            span: d.span(),
            key: format!("{key}.discovery"),
            message: format!("{NEEDS_BALANCER}; discovery sources feed a balanced pool"),
            hint: "until then, list one static target: targets = [\"http://HOST:PORT\"]".to_owned(),
        });
    }
    if pool.targets.len() > 1 {
        return Err(BuildError {
            span: pool.targets[1].span(),
            key: format!("{key}.targets"),
            message: format!(
                "{NEEDS_BALANCER}; this pool lists {} targets",
                pool.targets.len()
            ),
            hint: "until then, keep one target per pool".to_owned(),
        });
    }
    if let Some(hc) = &pool.health_check {
        return Err(BuildError {
            span: hc.span(),
            key: format!("{key}.health_check"),
            message: "active health checks need the health module (not merged yet)".to_owned(),
            hint: "remove [pools.NAME.health_check] for now".to_owned(),
        });
    }
    if let Some(od) = &pool.outlier_detection {
        return Err(BuildError {
            span: od.span(),
            key: format!("{key}.outlier_detection"),
            message: "outlier detection needs the health module (not merged yet)".to_owned(),
            hint: "remove [pools.NAME.outlier_detection] for now".to_owned(),
        });
    }
    let Some(target) = pool.targets.first() else {
        return Err(BuildError {
            span: 0..0,
            key: format!("{key}.targets"),
            message: "the pool has no targets".to_owned(),
            hint: "add targets = [\"http://127.0.0.1:3000\"]".to_owned(),
        });
    };
    let t = target.get_ref();
    let proxy = ReverseProxy::try_new("/", t.url.clone()).map_err(|err| BuildError {
        span: target.span(),
        key: format!("{key}.targets[0]"),
        message: err.to_string(),
        hint: "write an absolute http:// or https:// URL with a host".to_owned(),
    })?;
    let proxy = proxy.with_policy(policy(pool, server));
    let counted = CountAttempts {
        inner: proxy,
        retries: metrics.retries_for(name),
    };
    let service = match &pool.retry {
        None => BoxCloneSyncService::new(counted),
        Some(retry) => BoxCloneSyncService::new(retry_layer(retry.get_ref()).layer(counted)),
    };
    Ok(BuiltPool {
        config: pool.clone(),
        server_body_limit: server.max_body_bytes.map(|b| b.0),
        service,
        endpoints: vec![EndpointInfo {
            url: t.url.clone(),
            weight: t.weight,
            state: "static",
        }],
        strategy: *pool.strategy.get_ref(),
    })
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
    retries: prometheus_client::metrics::counter::Counter,
}

impl<S> tower::Service<Request<Body>> for CountAttempts<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if let Some(attempts) = req.extensions().get::<Attempts>()
            && attempts.0.fetch_add(1, Ordering::Relaxed) > 0
        {
            self.retries.inc();
        }
        Box::pin(self.inner.call(req))
    }
}
