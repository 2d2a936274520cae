//! The server's metrics, kept for the life of the process (reloads do not reset them) and
//! exported at `/metrics` in the Prometheus/OpenMetrics text format.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `proxy_requests_total` | route, upstream, status_class | requests answered |
//! | `proxy_request_duration_seconds` | route, upstream | time to response headers |
//! | `proxy_retries_total` | upstream | attempts after the first |
//! | `proxy_open_connections` | listener | client connections open now |
//! | `proxy_connections_total` | listener | client connections accepted |
//! | `proxy_connections_refused_total` | listener | refused at `max_connections` |
//! | `proxy_idle_buffer_releases_total` | listener | idle HTTP/1.1 connections that gave back their buffers (`server.release_idle_buffers_after`) |
//! | `proxy_config_reloads_total` | result | reloads, `ok` or `error` |
//! | `proxy_upstream_endpoint_healthy` | pool, endpoint | 1 unless active health checks say down |
//! | `proxy_upstream_endpoint_ejected` | pool, endpoint | 1 while outlier detection ejects it |
//! | `proxy_upstream_endpoint_pending` | pool, endpoint | requests in flight |
//! | `proxy_upstream_endpoint_rtt_seconds` | pool, endpoint | peak-EWMA latency estimate |
//! | `proxy_upstream_endpoint_weight` | pool, endpoint | configured weight |
//! | `proxy_upgrades_open` | | upgraded connections (WebSockets…) open now |
//! | `proxy_upgrades_total` | | upgraded connections opened |
//! | `proxy_upgrade_bytes_total` | direction (`to_upstream`, `to_client`) | bytes carried by upgraded connections that have closed |
//!
//! The endpoint gauges are filled at scrape time from the active pools
//! ([`Metrics::refresh_endpoints`]), so they always show the endpoints of the running
//! configuration and nothing that a reload or discovery removed. The upgrade metrics are
//! read at scrape time from the process-wide `UpgradeTunnels` handle, which every pool
//! of every configuration generation counts its tunnels in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

use axum_reverse_proxy::UpgradeTunnels;

use super::histogram::LatencyHistogram;
use crate::upstream::BuiltPool;

/// Raise `counter` to `to` (never lower it).
fn advance(counter: &Counter, to: u64) {
    let now = counter.get();
    if to > now {
        counter.inc_by(to - now);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) route: String,
    pub(crate) upstream: String,
    pub(crate) status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub(crate) route: String,
    pub(crate) upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamLabels {
    pub(crate) upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointLabels {
    pub(crate) pool: String,
    pub(crate) endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabels {
    pub(crate) listener: String,
}

/// One listener's connection metrics.
#[derive(Debug, Clone)]
pub(crate) struct ListenerMetrics {
    pub(crate) open: Gauge,
    pub(crate) accepted: Counter,
    pub(crate) refused: Counter,
    pub(crate) idle_releases: Counter,
    pub(crate) parked: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabels {
    pub(crate) direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub(crate) result: &'static str,
}

type HistogramFamily<L> = Family<L, LatencyHistogram, fn() -> LatencyHistogram>;

fn latency_histogram() -> LatencyHistogram {
    // 1 ms to ~33 s in doublings.
    LatencyHistogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The request metrics of one route and pool, resolved once: recording a request is then
/// two atomic adds on the counter and three on the histogram, with no label hashing, no
/// allocation and no lock.
#[derive(Clone, Debug)]
pub(crate) struct RouteMetrics {
    /// `proxy_requests_total` by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    by_class: [Counter; 5],
    duration: LatencyHistogram,
}

impl RouteMetrics {
    /// Record one answered request.
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        self.by_class[status_class_index(status)].inc();
        self.duration.observe(elapsed);
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// All metrics, and the registry that encodes them.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) duration: HistogramFamily<RouteLabels>,
    retries: Family<UpstreamLabels, Counter>,
    open_connections: Family<ListenerLabels, Gauge>,
    connections: Family<ListenerLabels, Counter>,
    refused: Family<ListenerLabels, Counter>,
    idle_releases: Family<ListenerLabels, Counter>,
    parked: Family<ListenerLabels, Gauge>,
    pub(crate) reloads: Family<ResultLabels, Counter>,
    endpoint_healthy: Family<EndpointLabels, Gauge>,
    endpoint_ejected: Family<EndpointLabels, Gauge>,
    endpoint_pending: Family<EndpointLabels, Gauge>,
    endpoint_rtt: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    endpoint_weight: Family<EndpointLabels, Gauge>,
    upgrades_open: Gauge,
    upgrades_total: Counter,
    upgrade_bytes: Family<DirectionLabels, Counter>,
    /// The handles of requests no route took (`route="none"`), made at the first one.
    unrouted: OnceLock<RouteMetrics>,
    /// Serialises scrapes, so two of them never interleave clearing and filling the
    /// endpoint gauges. Only the admin listener takes it.
    scrape: Mutex<()>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = HistogramFamily::<RouteLabels>::new_with_constructor(latency_histogram);
        let retries = Family::<UpstreamLabels, Counter>::default();
        let open_connections = Family::<ListenerLabels, Gauge>::default();
        let connections = Family::<ListenerLabels, Counter>::default();
        let refused = Family::<ListenerLabels, Counter>::default();
        let idle_releases = Family::<ListenerLabels, Counter>::default();
        let parked = Family::<ListenerLabels, Gauge>::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "proxy_requests",
            "Requests answered, by route, upstream pool and status class",
            requests.clone(),
        );
        registry.register(
            "proxy_request_duration_seconds",
            "Time from request to response headers",
            duration.clone(),
        );
        registry.register(
            "proxy_retries",
            "Upstream attempts after the first, by pool",
            retries.clone(),
        );
        registry.register(
            "proxy_open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        registry.register(
            "proxy_connections",
            "Client connections accepted",
            connections.clone(),
        );
        registry.register(
            "proxy_connections_refused",
            "Client connections refused at server.max_connections",
            refused.clone(),
        );
        registry.register(
            "proxy_idle_buffer_releases",
            "Idle HTTP/1.1 client connections that gave back their buffers",
            idle_releases.clone(),
        );
        registry.register(
            "proxy_parked_connections",
            "Idle HTTP/1.1 client connections waiting for their next request with no task \
             and no buffer",
            parked.clone(),
        );
        registry.register(
            "proxy_config_reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        let endpoint_healthy = Family::<EndpointLabels, Gauge>::default();
        let endpoint_ejected = Family::<EndpointLabels, Gauge>::default();
        let endpoint_pending = Family::<EndpointLabels, Gauge>::default();
        let endpoint_rtt = Family::<EndpointLabels, Gauge<f64, AtomicU64>>::default();
        let endpoint_weight = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "proxy_upstream_endpoint_healthy",
            "1 unless active health checks consider the endpoint down",
            endpoint_healthy.clone(),
        );
        registry.register(
            "proxy_upstream_endpoint_ejected",
            "1 while passive outlier detection keeps the endpoint out of rotation",
            endpoint_ejected.clone(),
        );
        registry.register(
            "proxy_upstream_endpoint_pending",
            "Requests in flight to the endpoint",
            endpoint_pending.clone(),
        );
        registry.register(
            "proxy_upstream_endpoint_rtt_seconds",
            "Peak-EWMA round-trip estimate of the endpoint",
            endpoint_rtt.clone(),
        );
        registry.register(
            "proxy_upstream_endpoint_weight",
            "Configured weight of the endpoint",
            endpoint_weight.clone(),
        );
        let upgrades_open = Gauge::default();
        let upgrades_total = Counter::default();
        let upgrade_bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "proxy_upgrades_open",
            "Upgraded connections (WebSockets and other Upgrade tunnels) open now",
            upgrades_open.clone(),
        );
        registry.register(
            "proxy_upgrades",
            "Upgraded connections opened",
            upgrades_total.clone(),
        );
        registry.register(
            "proxy_upgrade_bytes",
            "Bytes carried by upgraded connections that have closed, by direction",
            upgrade_bytes.clone(),
        );
        Metrics {
            registry,
            upgrades_open,
            upgrades_total,
            upgrade_bytes,
            endpoint_healthy,
            endpoint_ejected,
            endpoint_pending,
            endpoint_rtt,
            endpoint_weight,
            unrouted: OnceLock::new(),
            scrape: Mutex::new(()),
            requests,
            duration,
            retries,
            open_connections,
            connections,
            refused,
            idle_releases,
            parked,
            reloads,
        }
    }

    /// The per-listener handles, resolved once when the listener starts.
    pub(crate) fn listener(&self, name: &str) -> ListenerMetrics {
        let labels = ListenerLabels {
            listener: name.to_owned(),
        };
        ListenerMetrics {
            open: self.open_connections.get_or_create(&labels).clone(),
            accepted: self.connections.get_or_create(&labels).clone(),
            refused: self.refused.get_or_create(&labels).clone(),
            idle_releases: self.idle_releases.get_or_create(&labels).clone(),
            parked: self.parked.get_or_create(&labels).clone(),
        }
    }

    /// The retry counter of one pool (shared handle).
    pub(crate) fn retries_for(&self, pool: &str) -> Counter {
        self.retries
            .get_or_create(&UpstreamLabels {
                upstream: pool.to_owned(),
            })
            .clone()
    }

    /// The handles of requests refused or answered 404 before any route took them.
    pub(crate) fn unrouted(&self) -> &RouteMetrics {
        self.unrouted.get_or_init(|| self.route("none", "none"))
    }

    /// The handles of `route` and `upstream`, for [`RouteMetrics::record`]. Creating them
    /// makes the series appear (at zero) in the exposition.
    pub(crate) fn route(&self, route: &str, upstream: &str) -> RouteMetrics {
        let by_class = STATUS_CLASSES.map(|status_class| {
            self.requests
                .get_or_create(&RequestLabels {
                    route: route.to_owned(),
                    upstream: upstream.to_owned(),
                    status_class,
                })
                .clone()
        });
        let duration = self
            .duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                upstream: upstream.to_owned(),
            })
            .clone();
        RouteMetrics { by_class, duration }
    }

    /// The text exposition, with the endpoint gauges of `pools` and the tunnel counts of
    /// `tunnels` as they are now.
    pub(crate) fn encode_with(
        &self,
        pools: &BTreeMap<String, Arc<BuiltPool>>,
        tunnels: &UpgradeTunnels,
    ) -> String {
        let _scrape = self
            .scrape
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.refresh_endpoints(pools);
        self.refresh_upgrades(tunnels);
        self.encode()
    }

    /// Bring the upgrade metrics up to `tunnels`' counters. The counters only grow, so
    /// each is advanced by what it lacks (scrapes are serialised by the caller).
    fn refresh_upgrades(&self, tunnels: &UpgradeTunnels) {
        self.upgrades_open
            .set(i64::try_from(tunnels.active()).unwrap_or(i64::MAX));
        advance(&self.upgrades_total, tunnels.total());
        let bytes = |direction| {
            self.upgrade_bytes
                .get_or_create(&DirectionLabels { direction })
                .clone()
        };
        advance(&bytes("to_upstream"), tunnels.bytes_to_upstream());
        advance(&bytes("to_client"), tunnels.bytes_to_client());
    }

    /// Replace the endpoint gauges by the state of `pools`' endpoints now.
    fn refresh_endpoints(&self, pools: &BTreeMap<String, Arc<BuiltPool>>) {
        self.endpoint_healthy.clear();
        self.endpoint_ejected.clear();
        self.endpoint_pending.clear();
        self.endpoint_rtt.clear();
        self.endpoint_weight.clear();
        for (pool, built) in pools {
            for e in built.endpoints() {
                let labels = EndpointLabels {
                    pool: pool.clone(),
                    endpoint: crate::admin::without_userinfo(&e.url).unwrap_or(e.url),
                };
                let (healthy, ejected, pending, rtt) = match &e.stats {
                    Some(s) => (
                        s.healthy,
                        s.ejected_until.is_some(),
                        i64::try_from(s.pending).unwrap_or(i64::MAX),
                        s.rtt_ewma.as_secs_f64(),
                    ),
                    None => (true, false, 0, 0.0),
                };
                self.endpoint_healthy
                    .get_or_create(&labels)
                    .set(i64::from(healthy));
                self.endpoint_ejected
                    .get_or_create(&labels)
                    .set(i64::from(ejected));
                self.endpoint_weight
                    .get_or_create(&labels)
                    .set(i64::from(e.weight));
                if e.stats.is_some() {
                    self.endpoint_pending.get_or_create(&labels).set(pending);
                    self.endpoint_rtt.get_or_create(&labels).set(rtt);
                }
            }
        }
    }

    /// The text exposition.
    fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
