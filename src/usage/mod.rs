//! Usage monitoring: every request's outcome, per key, through a [`UsageSink`].
//!
//! - [`MemoryUsage`] counts each key's requests by outcome, its last use and its latency, in
//!   memory, and gives a [`UsageSnapshot`] to serve as JSON.
//! - [`StoreUsage`] batches last-used times and request counts for the key store.
//! - With the `analytics` feature, [`Analytics`] keeps time series per key and for the whole
//!   service (per minute, hour and day), with latency percentiles, status classes, top
//!   endpoints and countries, and answers [`Analytics::usage`] queries: what the reference's
//!   dashboard shows.
//! - With the `metrics` feature, [`MetricsSink`] counts requests through the `metrics` facade,
//!   for Prometheus or OpenTelemetry exporters.
//! - A tuple of sinks gives every event to each: `(Analytics, MetricsSink)`.
//!
//! A sink is told of each request the key (when its secret was verified) and its owner, the
//! outcome, the status of the answer, the time the service behind the layer took, the endpoint
//! (an [`Endpoint`] the application names, axum's route template, or a gRPC method; never the
//! raw URI) and, when the layer has a [`CountryResolver`], the client's country.
//!
//! Recording holds no lock across an await: `MemoryUsage` adds a few atomics on a sharded map,
//! `Analytics` counts in its thread's run of the key's requests, under that run's lock. The
//! service's time is read from the CPU's counter (`quanta`), twice per request, only when the
//! layer has a sink. Requests whose key was not
//! verified (no key, malformed, unknown id, wrong secret, store down) count as unauthenticated,
//! so a flood of made-up keys cannot grow either.
//!
//! ```
//! use std::sync::Arc;
//! use tower_api_key::{ApiKeyLayer, MemoryStore, usage::MemoryUsage};
//!
//! let usage = Arc::new(MemoryUsage::new());
//! let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
//!     .usage_sink(usage.clone())
//!     .build()?;
//! // Later, in an admin handler:
//! let json = serde_json::to_string(&usage.snapshot()).unwrap();
//! assert!(json.contains("unauthenticated"));
//! # Ok::<(), tower_api_key::ConfigError>(())
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;

use crate::reject::Rejection;

#[cfg(feature = "analytics")]
mod analytics;
#[cfg(feature = "analytics")]
mod bucket;
mod country;
mod flusher;
#[cfg(feature = "analytics")]
mod latency;
mod memory;
#[cfg(feature = "metrics")]
mod metrics_sink;
#[cfg(feature = "analytics")]
mod report;
mod route;
#[cfg(feature = "analytics")]
mod run;
#[cfg(feature = "analytics")]
mod series;
mod store;

#[cfg(feature = "analytics")]
pub use analytics::{Analytics, AnalyticsConfig};
#[cfg(feature = "geoip")]
pub use country::GeoIpCountry;
pub use country::{Country, CountryHeader, CountryResolver};
pub use flusher::Flusher;
pub use memory::{KeyUsage, LatencySummary, MemoryUsage, UsageSnapshot};
#[cfg(feature = "metrics")]
pub use metrics_sink::{MetricsSink, DURATION, REQUESTS};
#[cfg(feature = "analytics")]
pub use report::{Latency, Point, Ranked, Resolution, Standing, Subject, UsageReport};
pub use route::Endpoint;
pub(crate) use route::Route;
pub use store::StoreUsage;

/// How a request ended, as far as this crate is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Authenticated and passed to the service (whatever the service answered).
    Ok,
    /// Refused by this crate's layers.
    Rejected(Rejection),
}

impl Outcome {
    /// `ok`, or the rejection's code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rejected(rejection) => rejection.code(),
        }
    }

    /// Every outcome, `ok` first, then the rejections in [`Rejection::ALL`]'s order.
    pub(crate) fn all() -> impl Iterator<Item = Outcome> {
        std::iter::once(Outcome::Ok).chain(Rejection::ALL.map(Outcome::Rejected))
    }

    /// Its position in [`Outcome::all`].
    pub(crate) fn index(self) -> usize {
        match self {
            Outcome::Ok => 0,
            Outcome::Rejected(rejection) => 1 + rejection.index(),
        }
    }
}

/// The class of a status, `1xx` to `5xx`; `None` outside 100 to 599.
#[cfg(any(feature = "analytics", feature = "metrics"))]
pub(crate) fn status_class(status: u16) -> Option<&'static str> {
    match status / 100 {
        1 => Some("1xx"),
        2 => Some("2xx"),
        3 => Some("3xx"),
        4 => Some("4xx"),
        5 => Some("5xx"),
        _ => None,
    }
}

/// How many outcomes there are.
pub(crate) const OUTCOMES: usize = 1 + Rejection::ALL.len();

/// One request, as a [`UsageSink`] sees it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct UsageEvent<'a> {
    /// The key's public id, when its secret was verified.
    pub key_id: Option<&'a str>,
    /// The verified key's owner, if it has one.
    pub owner: Option<&'a str>,
    /// How it ended.
    pub outcome: Outcome,
    /// The status of the answer: the service's, or the rejection's. For gRPC this is the HTTP
    /// status (200 for a call that reached the service), not the `grpc-status`.
    pub status: Option<StatusCode>,
    /// How long the inner service took, when it was called.
    pub latency: Option<Duration>,
    /// The endpoint: axum's route template (`/users/{id}`, with the `axum` feature and the layer
    /// inside the router), or a gRPC request's method path (`/pkg.Service/Method`). Never the raw
    /// URI, so a sink can count by endpoint with bounded cardinality.
    pub endpoint: Option<&'a str>,
    /// The client's country, from the layer's [`CountryResolver`], if it has one.
    pub country: Option<Country>,
    /// When it happened.
    pub at: SystemTime,
}

#[cfg(test)]
impl UsageEvent<'_> {
    /// An event of `at` with nothing else known: no key, refused as `MISSING_API_KEY`.
    pub(crate) fn new(at: SystemTime) -> Self {
        UsageEvent {
            key_id: None,
            owner: None,
            outcome: Outcome::Rejected(Rejection::MissingApiKey),
            status: None,
            latency: None,
            endpoint: None,
            country: None,
            at,
        }
    }
}

/// Receives every request's outcome. Called on the request's task: keep it to a few atomic
/// operations, and hand anything slow to a background task.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use tower::{Layer, ServiceExt};
/// use tower_api_key::usage::{Outcome, UsageEvent, UsageSink};
/// use tower_api_key::{ApiKeyLayer, MemoryStore};
///
/// /// Counts the requests refused, whatever the reason.
/// #[derive(Default)]
/// struct Refusals(AtomicU64);
///
/// impl UsageSink for Refusals {
///     fn record(&self, event: &UsageEvent<'_>) {
///         if let Outcome::Rejected(_) = event.outcome {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
///
/// let refusals = Arc::new(Refusals::default());
/// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
///     .usage_sink(refusals.clone())
///     .build()?;
/// let service = layer.layer(tower::service_fn(|_: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// }));
/// let response = service.oneshot(http::Request::new(())).await?; // no key
/// assert_eq!(response.status(), 401);
/// assert_eq!(refusals.0.load(Ordering::Relaxed), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub trait UsageSink: Send + Sync + 'static {
    /// Records one request.
    fn record(&self, event: &UsageEvent<'_>);

    /// Whether this sink writes each key's last use to the key store
    /// ([`KeyRecord::last_used_at`](crate::store::KeyRecord::last_used_at)), as [`StoreUsage`]
    /// does; `false` unless a sink says so. The console asks the layer's sink: where nothing
    /// records last use, every key would count as never used, so it offers no "not used for"
    /// filter.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_api_key::usage::{MemoryUsage, StoreUsage, UsageSink};
    ///
    /// assert!(!MemoryUsage::new().records_last_use());
    /// assert!(Arc::new(StoreUsage::new()).records_last_use());
    /// assert!((MemoryUsage::new(), StoreUsage::new()).records_last_use());
    /// ```
    fn records_last_use(&self) -> bool {
        false
    }
}

impl<T: UsageSink + ?Sized> UsageSink for Arc<T> {
    fn record(&self, event: &UsageEvent<'_>) {
        (**self).record(event);
    }

    fn records_last_use(&self) -> bool {
        (**self).records_last_use()
    }
}

/// Where a layer counts its requests: its sink, and the CPU's counter the service's time is
/// measured on (read raw and scaled once per request: about 10 ns a read where
/// `std::time::Instant` takes 25).
pub(crate) struct Recording {
    pub(crate) sink: Arc<dyn UsageSink>,
    pub(crate) timer: quanta::Clock,
}

impl Recording {
    /// Made with the layer, not on the first request: the first calibrates the counter (about
    /// half a millisecond).
    pub(crate) fn new(sink: Arc<dyn UsageSink>) -> Self {
        Recording {
            sink,
            timer: quanta::Clock::new(),
        }
    }
}

/// Both sinks get every event: `(MemoryUsage, StoreUsage)` serves a dashboard and keeps the
/// store's counters.
impl<A: UsageSink, B: UsageSink> UsageSink for (A, B) {
    fn record(&self, event: &UsageEvent<'_>) {
        self.0.record(event);
        self.1.record(event);
    }

    fn records_last_use(&self) -> bool {
        self.0.records_last_use() || self.1.records_last_use()
    }
}
