//! A latency histogram the request path updates with atomic adds only.
//!
//! `prometheus_client`'s `Histogram` takes a mutex on every observation, which every
//! request of a route would contend on across worker threads. This one keeps a counter
//! per bucket (not cumulative: one add per observation), the count, and the sum in
//! nanoseconds; the scrape adds the buckets up. A scrape that runs during observations
//! may see a count one ahead of the buckets, as any lock-free histogram can; the next
//! scrape is exact again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A shared handle: clones observe into the same histogram.
#[derive(Clone, Debug)]
pub(crate) struct LatencyHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds in seconds, ascending; an implicit `+Inf` bucket follows.
    bounds: Box<[f64]>,
    /// Observations per bucket (`bounds.len() + 1` of them), not cumulative.
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// A histogram with these upper bounds (seconds, ascending).
    pub(crate) fn new(bounds: impl IntoIterator<Item = f64>) -> LatencyHistogram {
        let bounds: Box<[f64]> = bounds.into_iter().collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        LatencyHistogram {
            inner: Arc::new(Inner {
                bounds,
                counts,
                count: AtomicU64::new(0),
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Record one duration.
    pub(crate) fn observe(&self, elapsed: Duration) {
        let inner = &*self.inner;
        let seconds = elapsed.as_secs_f64();
        // The first bucket whose bound is not below the value (`le` semantics).
        let bucket = inner.bounds.partition_point(|bound| *bound < seconds);
        inner.counts[bucket].fetch_add(1, Ordering::Relaxed);
        inner.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far (for tests).
    #[cfg(test)]
    fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let inner = &*self.inner;
        // The encoder adds the buckets up itself; the last bound stands for +Inf.
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = inner.count.load(Ordering::Relaxed);
        let sum = inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    #[test]
    fn buckets_are_le_and_cumulative_in_the_text() {
        let histogram = LatencyHistogram::new([0.001, 0.01, 0.1]);
        for ms in [0, 1, 2, 10, 50, 5000] {
            histogram.observe(Duration::from_millis(ms));
        }
        assert_eq!(histogram.count(), 6);
        let mut registry = Registry::default();
        registry.register("latency_seconds", "test", histogram.clone());
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "latency_seconds_bucket{le=\"0.001\"} 2",
            "latency_seconds_bucket{le=\"0.01\"} 4",
            "latency_seconds_bucket{le=\"0.1\"} 5",
            "latency_seconds_bucket{le=\"+Inf\"} 6",
            "latency_seconds_count 6",
            "latency_seconds_sum 5.063",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
