//! [`MetricsSink`]: every request through the [`metrics`](https://docs.rs/metrics) facade, so a
//! Prometheus or OpenTelemetry exporter picks them up.

use std::sync::Arc;

use dashmap::DashMap;
use foldhash::fast::RandomState;
use metrics::{counter, histogram, SharedString};

use super::{status_class, UsageEvent, UsageSink};

/// The counter of requests: labels `outcome` (`ok` or a rejection code), `status` (`2xx` to
/// `5xx`) and `endpoint` (and `key_id` if asked for).
pub const REQUESTS: &str = "tower_api_key_requests_total";
/// The histogram of the service's time in seconds, for the requests that reached it: label
/// `endpoint` (and `key_id` if asked for).
pub const DURATION: &str = "tower_api_key_service_duration_seconds";

/// A [`UsageSink`] that counts every request through the `metrics` facade: a counter
/// ([`REQUESTS`]) by outcome, status class and endpoint, and a histogram of the service's time
/// ([`DURATION`]) by endpoint. Install any exporter as the recorder (the demo serves Prometheus
/// text at `/metrics`).
///
/// Label values are bounded: the endpoint is a route template or a gRPC method, at most
/// `max_endpoints` of them (64 by default), the rest `other`; a request without one is
/// `none`. Per-key labels multiply the series by the number of keys, so they are off unless
/// [`with_key_labels`](Self::with_key_labels) turns them on.
///
/// ```
/// use tower_api_key::{usage::MetricsSink, ApiKeyLayer, MemoryStore};
///
/// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
///     .usage_sink(MetricsSink::new())
///     .build()?;
/// # Ok::<(), tower_api_key::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct MetricsSink {
    endpoints: DashMap<Box<str>, SharedString, RandomState>,
    max_endpoints: usize,
    key_labels: bool,
}

impl Default for MetricsSink {
    fn default() -> Self {
        MetricsSink::new()
    }
}

impl MetricsSink {
    /// Labels by outcome, status class and endpoint, at most 64 endpoints.
    pub fn new() -> Self {
        MetricsSink {
            endpoints: DashMap::default(),
            max_endpoints: 64,
            key_labels: false,
        }
    }

    /// At most `max` endpoints as labels; others are `other`.
    pub fn max_endpoints(mut self, max: usize) -> Self {
        self.max_endpoints = max;
        self
    }

    /// Labels by the key's id too (`key_id`; empty when no key was verified). One series per
    /// key: for a few keys only.
    pub fn with_key_labels(mut self) -> Self {
        self.key_labels = true;
        self
    }

    /// The label of `endpoint`: shared, so a request does not allocate it.
    fn endpoint(&self, endpoint: Option<&str>) -> SharedString {
        let Some(endpoint) = endpoint else {
            return SharedString::const_str("none");
        };
        if let Some(label) = self.endpoints.get(endpoint) {
            return label.clone();
        }
        if self.endpoints.len() >= self.max_endpoints {
            return SharedString::const_str("other");
        }
        let label = SharedString::from(Arc::<str>::from(endpoint));
        self.endpoints
            .entry(endpoint.into())
            .or_insert(label)
            .clone()
    }
}

impl UsageSink for MetricsSink {
    fn record(&self, event: &UsageEvent<'_>) {
        let endpoint = self.endpoint(event.endpoint);
        let outcome = event.outcome.as_str();
        let status = event
            .status
            .and_then(|status| status_class(status.as_u16()));
        let status = status.unwrap_or("none");
        if self.key_labels {
            let key = event.key_id.unwrap_or_default().to_owned();
            counter!(REQUESTS, "outcome" => outcome, "status" => status, "endpoint" => endpoint.clone(), "key_id" => key.clone()).increment(1);
            if let Some(latency) = event.latency {
                histogram!(DURATION, "endpoint" => endpoint, "key_id" => key)
                    .record(latency.as_secs_f64());
            }
        } else {
            counter!(REQUESTS, "outcome" => outcome, "status" => status, "endpoint" => endpoint.clone()).increment(1);
            if let Some(latency) = event.latency {
                histogram!(DURATION, "endpoint" => endpoint).record(latency.as_secs_f64());
            }
        }
    }
}
