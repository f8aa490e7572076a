//! Usage monitoring: every request's outcome, per key, through a [`UsageSink`]; [`MemoryUsage`]
//! aggregates in memory and gives a [`UsageSnapshot`] to serve as JSON, like the reference's
//! dashboard; [`StoreUsage`] batches last-used times and request counts for the key store.
//!
//! Recording is a few atomic additions on a sharded map: no lock is held across an await and
//! nothing is allocated per request but a key's first entry. Requests whose key was not verified
//! (no key, malformed, unknown id, wrong secret, store down) count under `unauthenticated`, so a
//! flood of made-up keys cannot grow the map.
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

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use serde::Serialize;

use crate::clock::unix_seconds;
use crate::reject::Rejection;
use crate::store::{KeyStoreAdmin, StoreError, UsageUpdate};

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

    fn index(self) -> usize {
        match self {
            Outcome::Ok => 0,
            Outcome::Rejected(rejection) => 1 + rejection.index(),
        }
    }
}

const OUTCOMES: usize = 1 + Rejection::ALL.len();

/// One request, as a [`UsageSink`] sees it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct UsageEvent<'a> {
    /// The key's public id, when its secret was verified.
    pub key_id: Option<&'a str>,
    /// How it ended.
    pub outcome: Outcome,
    /// How long the inner service took, when it was called.
    pub latency: Option<Duration>,
    /// When it happened.
    pub at: SystemTime,
}

/// Receives every request's outcome. Called on the request's task: keep it to a few atomic
/// operations, and hand anything slow to a background task.
pub trait UsageSink: Send + Sync + 'static {
    /// Records one request.
    fn record(&self, event: &UsageEvent<'_>);
}

impl<T: UsageSink + ?Sized> UsageSink for Arc<T> {
    fn record(&self, event: &UsageEvent<'_>) {
        (**self).record(event);
    }
}

/// Usage counted in memory, per key.
#[derive(Default)]
pub struct MemoryUsage {
    keys: DashMap<Box<str>, Counters>,
    unauthenticated: Counters,
}

impl fmt::Debug for MemoryUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryUsage")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

struct Counters {
    outcomes: [AtomicU64; OUTCOMES],
    last_used: AtomicU64,
    latency_count: AtomicU64,
    latency_total_us: AtomicU64,
    latency_max_us: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            last_used: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
            latency_total_us: AtomicU64::new(0),
            latency_max_us: AtomicU64::new(0),
        }
    }
}

impl Counters {
    fn record(&self, event: &UsageEvent<'_>) {
        self.outcomes[event.outcome.index()].fetch_add(1, Ordering::Relaxed);
        if event.outcome == Outcome::Ok {
            self.last_used
                .fetch_max(unix_seconds(event.at), Ordering::Relaxed);
        }
        if let Some(latency) = event.latency {
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency_count.fetch_add(1, Ordering::Relaxed);
            self.latency_total_us.fetch_add(us, Ordering::Relaxed);
            self.latency_max_us.fetch_max(us, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> KeyUsage {
        let mut outcomes = BTreeMap::new();
        let mut requests = 0;
        let all = std::iter::once(Outcome::Ok).chain(Rejection::ALL.map(Outcome::Rejected));
        for outcome in all {
            let count = self.outcomes[outcome.index()].load(Ordering::Relaxed);
            if count > 0 {
                outcomes.insert(outcome.as_str(), count);
                requests += count;
            }
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let last_used = self.last_used.load(Ordering::Relaxed);
        KeyUsage {
            requests,
            outcomes,
            last_used: (last_used > 0).then_some(last_used),
            latency: LatencySummary {
                count,
                mean_us: self.latency_total_us.load(Ordering::Relaxed) / count.max(1),
                max_us: self.latency_max_us.load(Ordering::Relaxed),
            },
        }
    }
}

/// A copy of the counters at one moment, ready to serialise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UsageSnapshot {
    /// Per key id.
    pub keys: BTreeMap<String, KeyUsage>,
    /// Requests whose key was not verified.
    pub unauthenticated: KeyUsage,
}

/// One key's usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeyUsage {
    /// Requests in all.
    pub requests: u64,
    /// Requests by outcome: `ok` and rejection codes; outcomes never seen are left out.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Unix seconds of the last request that got through.
    pub last_used: Option<u64>,
    /// Time spent in the service behind the layer.
    pub latency: LatencySummary,
}

/// Latency of the inner service, in microseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Requests measured.
    pub count: u64,
    /// Mean.
    pub mean_us: u64,
    /// Maximum.
    pub max_us: u64,
}

impl MemoryUsage {
    /// No usage yet.
    pub fn new() -> Self {
        MemoryUsage::default()
    }

    /// The counters now.
    pub fn snapshot(&self) -> UsageSnapshot {
        UsageSnapshot {
            keys: self
                .keys
                .iter()
                .map(|entry| (entry.key().to_string(), entry.value().snapshot()))
                .collect(),
            unauthenticated: self.unauthenticated.snapshot(),
        }
    }

    /// One key's counters now, if it was seen.
    pub fn key(&self, id: &str) -> Option<KeyUsage> {
        self.keys.get(id).map(|counters| counters.snapshot())
    }
}

impl UsageSink for MemoryUsage {
    fn record(&self, event: &UsageEvent<'_>) {
        match event.key_id {
            None => self.unauthenticated.record(event),
            Some(id) => match self.keys.get(id) {
                Some(counters) => counters.record(event),
                None => self.keys.entry(id.into()).or_default().record(event),
            },
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
}

/// Collects each key's requests and last use, for [`flush`](StoreUsage::flush) to write to the
/// store in one batch (`last_used_at` and `requests` of [`KeyRecord`](crate::store::KeyRecord)), off the request path.
///
/// Flush it every few seconds from a task of your own:
///
/// ```no_run
/// # async fn run(store: tower_api_key::MemoryStore) {
/// use std::{sync::Arc, time::Duration};
/// use tower_api_key::usage::StoreUsage;
///
/// let pending = Arc::new(StoreUsage::new());
/// // ApiKeyLayer::builder(...).usage_sink(pending.clone())
/// tokio::spawn(async move {
///     loop {
///         tokio::time::sleep(Duration::from_secs(10)).await;
///         let _ = pending.flush(&store).await; // counts stay pending if the store fails
///     }
/// });
/// # }
/// ```
#[derive(Default)]
pub struct StoreUsage {
    pending: DashMap<Box<str>, Pending>,
}

#[derive(Default)]
struct Pending {
    requests: AtomicU64,
    last_used: AtomicU64,
}

impl fmt::Debug for StoreUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreUsage")
            .field("keys", &self.pending.len())
            .finish()
    }
}

impl StoreUsage {
    /// Nothing pending.
    pub fn new() -> Self {
        StoreUsage::default()
    }

    /// Writes what is pending to `store` in one batch; returns how many keys it updated. On an
    /// error the counts stay pending for the next flush.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn flush<A: KeyStoreAdmin + ?Sized>(&self, store: &A) -> Result<usize, StoreError> {
        let batch: Vec<UsageUpdate> = self
            .pending
            .iter()
            .filter_map(|entry| {
                let requests = entry.requests.swap(0, Ordering::AcqRel);
                (requests > 0).then(|| UsageUpdate {
                    id: entry.key().to_string(),
                    requests,
                    last_used_at: std::time::UNIX_EPOCH
                        + Duration::from_secs(entry.last_used.load(Ordering::Relaxed)),
                })
            })
            .collect();
        if batch.is_empty() {
            return Ok(0);
        }
        match store.record_usage(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(error) => {
                for update in &batch {
                    if let Some(entry) = self.pending.get(update.id.as_str()) {
                        entry.requests.fetch_add(update.requests, Ordering::AcqRel);
                    }
                }
                Err(error)
            }
        }
    }
}

impl UsageSink for StoreUsage {
    fn record(&self, event: &UsageEvent<'_>) {
        let (Some(id), Outcome::Ok) = (event.key_id, event.outcome) else {
            return;
        };
        let count = |pending: &Pending| {
            pending.requests.fetch_add(1, Ordering::AcqRel);
            pending
                .last_used
                .fetch_max(unix_seconds(event.at), Ordering::Relaxed);
        };
        match self.pending.get(id) {
            Some(pending) => count(&pending),
            None => count(&self.pending.entry(id.into()).or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_key_and_outcome() {
        let usage = MemoryUsage::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let event = |key_id, outcome, latency| UsageEvent {
            key_id,
            outcome,
            latency,
            at,
        };
        usage.record(&event(
            Some("a"),
            Outcome::Ok,
            Some(Duration::from_micros(10)),
        ));
        usage.record(&event(
            Some("a"),
            Outcome::Ok,
            Some(Duration::from_micros(30)),
        ));
        usage.record(&event(
            Some("a"),
            Outcome::Rejected(Rejection::RateLimitExceeded),
            None,
        ));
        usage.record(&event(
            None,
            Outcome::Rejected(Rejection::InvalidApiKey),
            None,
        ));
        let snapshot = usage.snapshot();
        let a = &snapshot.keys["a"];
        assert_eq!(a.requests, 3);
        assert_eq!(a.outcomes["ok"], 2);
        assert_eq!(a.outcomes["RATE_LIMIT_EXCEEDED"], 1);
        assert_eq!(a.last_used, Some(1_000));
        assert_eq!(
            a.latency,
            LatencySummary {
                count: 2,
                mean_us: 20,
                max_us: 30
            }
        );
        assert_eq!(snapshot.unauthenticated.outcomes["INVALID_API_KEY"], 1);
        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(json["keys"]["a"]["outcomes"]["ok"], 2);
    }
}
