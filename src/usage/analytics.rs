//! [`Analytics`]: usage over time per key, per owner and for the whole service, in memory.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use dashmap::DashMap;
use foldhash::fast::RandomState;

use super::bucket::{Bucket, Sample};
use super::report::{ranked, Point, Resolution, Subject, UsageReport};
use super::series::Series;
use super::{UsageEvent, UsageSink};
use crate::clock::unix_seconds;

/// How [`Analytics`] keeps usage.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AnalyticsConfig {
    /// How many endpoints a bucket names; requests to others count as `other`. 64 by default.
    pub max_endpoints: usize,
    /// How many endpoints and countries a report ranks. 10 by default.
    pub top: usize,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            max_endpoints: 64,
            top: 10,
        }
    }
}

/// Usage analytics: a [`UsageSink`] that keeps time series per key and for the requests whose
/// key was not verified, per minute (kept 24 hours), hour (30 days) and day (13 months), and
/// answers [`usage`](Analytics::usage) for a key, an owner or the whole service: requests by
/// outcome and status, the error rate, latency percentiles (p50, p95, p99), top endpoints and
/// countries.
///
/// A request is recorded in its minute's bucket, under the lock of its key's series: one map
/// read and one uncontended lock. When a minute ends its bucket is merged into its hour and day.
/// Requests whose key was not verified share a few series (sharded by thread), so made-up keys
/// grow nothing.
///
/// Memory: a bucket is about 200 bytes and 24 bytes per endpoint and country it names; its
/// latency sketch is 1 KiB or more while its minute (hour, day) is open, then packed to a few
/// bytes per distinct latency bucket (about 30 to 300 bytes). A key busy every minute holds at
/// most 1,440 + 720 + 396 buckets; a key idle for a period holds none for it.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_api_key::usage::{Analytics, Resolution, Subject};
/// use tower_api_key::{ApiKeyLayer, MemoryStore};
///
/// let analytics = Analytics::new();
/// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
///     .usage_sink(analytics.clone())
///     .build()?;
/// // Later, in an admin handler: the last hour, minute by minute.
/// let now = SystemTime::now();
/// let report = analytics.usage(
///     Subject::All,
///     now - Duration::from_secs(3_600)..now,
///     Resolution::Minute,
/// );
/// assert_eq!(report.series.len(), 60);
/// let json = serde_json::to_string(&report)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct Analytics {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    config: AnalyticsConfig,
    /// Keyed by verified keys only (foldhash, seeded per map): a client cannot choose the ids.
    keys: DashMap<Box<str>, Mutex<Series>, RandomState>,
    unauthenticated: [Mutex<Series>; SHARDS],
}

/// How many series the unauthenticated requests are spread over.
const SHARDS: usize = 8;

/// The unauthenticated series this thread records in.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

/// The series, even if a thread panicked while holding it: a count cut short is still a count.
fn lock(series: &Mutex<Series>) -> MutexGuard<'_, Series> {
    series.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for Analytics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Analytics")
            .field("config", &self.inner.config)
            .field("keys", &self.inner.keys.len())
            .finish_non_exhaustive()
    }
}

impl Analytics {
    /// No usage yet, the default configuration.
    pub fn new() -> Self {
        Analytics::default()
    }

    /// No usage yet, configured by `config`.
    pub fn with_config(config: AnalyticsConfig) -> Self {
        Analytics {
            inner: Arc::new(Inner {
                config,
                ..Inner::default()
            }),
        }
    }

    /// How many keys have usage kept.
    pub fn keys(&self) -> usize {
        self.inner.keys.len()
    }

    /// How many buckets are kept, of every key and resolution: what memory use grows with.
    pub fn buckets(&self) -> usize {
        let keys: usize = self
            .inner
            .keys
            .iter()
            .map(|series| lock(&series).len())
            .sum();
        let unauthenticated: usize = self
            .inner
            .unauthenticated
            .iter()
            .map(|s| lock(s).len())
            .sum();
        keys + unauthenticated
    }

    /// The usage of `subject` in `range`, one point per bucket of `resolution` that overlaps
    /// it. A range longer than the resolution's retention starts at the retention's start; a
    /// range that is empty gives no points.
    pub fn usage(
        &self,
        subject: Subject<'_>,
        range: Range<SystemTime>,
        resolution: Resolution,
    ) -> UsageReport {
        let length = resolution.seconds();
        let end = unix_seconds(range.end).div_ceil(length);
        let kept = resolution.retention().as_secs() / length + 1;
        let start = (unix_seconds(range.start) / length).max(end.saturating_sub(kept));
        let slots = usize::try_from(end.saturating_sub(start)).unwrap_or(0);
        let mut buckets = vec![Bucket::default(); slots];
        let config = &self.inner.config;
        let mut add = |series: &Mutex<Series>| {
            lock(series).add_to(resolution, start, &mut buckets, config.max_endpoints);
        };
        let id = match subject {
            Subject::All => {
                self.inner.keys.iter().for_each(|series| add(&series));
                self.inner.unauthenticated.iter().for_each(&mut add);
                None
            }
            Subject::Key(id) => {
                if let Some(series) = self.inner.keys.get(id) {
                    add(&series);
                }
                Some(id)
            }
            Subject::Owner(owner) => {
                for series in self.inner.keys.iter() {
                    if lock(&series).owner.as_deref() == Some(owner) {
                        add(&series);
                    }
                }
                Some(owner)
            }
        };
        let mut total = Bucket::default();
        for bucket in &buckets {
            total.merge(bucket, usize::MAX);
        }
        let endpoints = total
            .endpoints
            .iter()
            .map(|(name, count)| (&**name, *count))
            .chain(std::iter::once(("other", total.other_endpoints)));
        UsageReport {
            subject: match subject {
                Subject::All => "all",
                Subject::Key(_) => "key",
                Subject::Owner(_) => "owner",
            },
            id: id.map(str::to_owned),
            resolution,
            from: start * length,
            to: end * length,
            totals: Point::of(start * length, &total),
            series: (start..)
                .zip(&buckets)
                .map(|(index, bucket)| Point::of(index * length, bucket))
                .collect(),
            top_endpoints: ranked(endpoints, config.top),
            top_countries: ranked(
                total
                    .countries
                    .iter()
                    .map(|(c, count)| (c.as_str(), *count)),
                config.top,
            ),
        }
    }
}

impl UsageSink for Analytics {
    fn record(&self, event: &UsageEvent<'_>) {
        let sample = Sample {
            outcome: event.outcome,
            status: event.status.map(|status| status.as_u16()),
            endpoint: event.endpoint,
            country: event.country,
            latency_ms: event.latency.map(|latency| latency.as_secs_f64() * 1_000.0),
        };
        let secs = unix_seconds(event.at);
        let max_endpoints = self.inner.config.max_endpoints;
        let Some(id) = event.key_id else {
            let series = &self.inner.unauthenticated[shard()];
            return lock(series).record(&sample, secs, max_endpoints);
        };
        let record = |series: &Mutex<Series>| {
            let mut series = lock(series);
            if series.owner.as_deref() != event.owner {
                series.owner = event.owner.map(Box::from);
            }
            series.record(&sample, secs, max_endpoints);
        };
        match self.inner.keys.get(id) {
            Some(series) => record(&series),
            None => record(&self.inner.keys.entry(id.into()).or_default()),
        }
    }
}
