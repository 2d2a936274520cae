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
//! | `proxy_config_reloads_total` | result | reloads, `ok` or `error` |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
pub(crate) struct ListenerLabels {
    pub(crate) listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub(crate) result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to ~33 s in doublings.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// All metrics, and the registry that encodes them.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) duration: HistogramFamily<RouteLabels>,
    retries: Family<UpstreamLabels, Counter>,
    pub(crate) open_connections: Family<ListenerLabels, Gauge>,
    pub(crate) connections: Family<ListenerLabels, Counter>,
    pub(crate) refused: Family<ListenerLabels, Counter>,
    pub(crate) reloads: Family<ResultLabels, Counter>,
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
            "proxy_config_reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            retries,
            open_connections,
            connections,
            refused,
            reloads,
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

    /// Record one answered request.
    pub(crate) fn record(&self, route: &str, upstream: &str, status: u16, seconds: f64) {
        let status_class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                upstream: upstream.to_owned(),
                status_class,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                upstream: upstream.to_owned(),
            })
            .observe(seconds);
    }

    /// The text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
