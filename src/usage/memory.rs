//! [`MemoryUsage`]: every key's requests by outcome, its last use and its latency, counted in
//! memory with a few atomic additions per request.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use foldhash::fast::RandomState;
use serde::Serialize;

use super::{Outcome, UsageEvent, UsageSink, OUTCOMES};
use crate::clock::unix_seconds;

/// Usage counted in memory, per key.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use tower::{Layer, ServiceExt};
/// use tower_api_key::usage::MemoryUsage;
/// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, NewKey};
///
/// let store = MemoryStore::new();
/// let usage = Arc::new(MemoryUsage::new());
/// let layer = ApiKeyLayer::builder("mesh", store.clone()).usage_sink(usage.clone()).build()?;
/// let created = KeyManager::new(store).with_cache(layer.handle()).create(NewKey::new("ci")).await?;
/// let service = layer.layer(tower::service_fn(|_: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// }));
/// let request = http::Request::get("/")
///     .header("authorization", format!("ApiKey {}", created.key.expose_secret()))
///     .body(())?;
/// service.oneshot(request).await?;
/// let counted = usage.key(&created.record.id).unwrap();
/// assert_eq!((counted.requests, counted.outcomes["ok"]), (1, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Default)]
pub struct MemoryUsage {
    keys: DashMap<Box<str>, Counters, RandomState>,
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
        for outcome in Outcome::all() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reject::Rejection;
    use std::time::{Duration, SystemTime};

    #[test]
    fn counts_by_key_and_outcome() {
        let usage = MemoryUsage::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let event = |key_id, outcome, latency| UsageEvent {
            key_id,
            outcome,
            latency,
            at,
            ..UsageEvent::new(at)
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
