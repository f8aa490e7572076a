//! What [`Analytics::usage`](super::Analytics::usage) answers: a subject's usage over a range of
//! time, per bucket of a resolution, ready to serialise to JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bucket::Bucket;
use super::status_class;
use crate::limit::LimitStatus;

/// The length of a bucket of a time series, and how long buckets of that length are kept.
#[cfg_attr(feature = "console", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// A minute, kept 24 hours.
    Minute,
    /// An hour, kept 30 days.
    Hour,
    /// A day (UTC), kept 13 months (396 days).
    Day,
}

impl Resolution {
    /// A bucket's length in seconds.
    ///
    /// ```
    /// use tower_api_key::usage::Resolution;
    /// assert_eq!(Resolution::Hour.seconds(), 3_600);
    /// ```
    pub const fn seconds(self) -> u64 {
        match self {
            Resolution::Minute => 60,
            Resolution::Hour => 3_600,
            Resolution::Day => 86_400,
        }
    }

    /// How long its buckets are kept.
    pub const fn retention(self) -> Duration {
        match self {
            Resolution::Minute => Duration::from_secs(24 * 3_600),
            Resolution::Hour => Duration::from_secs(30 * 86_400),
            Resolution::Day => Duration::from_secs(396 * 86_400),
        }
    }
}

/// Whose usage a report is of.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_api_key::usage::{Analytics, Resolution, Subject};
///
/// let analytics = Analytics::new();
/// let now = SystemTime::now();
/// // All of an owner's keys, day by day, over the last week.
/// let report = analytics.usage(Subject::Owner("acme"), now - Duration::from_secs(7 * 86_400)..now, Resolution::Day);
/// assert_eq!(report.totals.requests, 0);
/// assert_eq!(Resolution::Day.seconds(), 86_400);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject<'a> {
    /// The whole service: every key, and the requests whose key was not verified.
    All,
    /// One key, by id.
    Key(&'a str),
    /// Every key of one owner.
    Owner(&'a str),
}

/// A subject's usage over a range of time.
#[cfg_attr(feature = "console", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct UsageReport {
    /// `all`, `key` or `owner`.
    #[cfg_attr(feature = "console", schema(value_type = String))]
    pub subject: &'static str,
    /// The key's id or the owner, for `key` and `owner`.
    pub id: Option<String>,
    /// The buckets' length.
    pub resolution: Resolution,
    /// Unix seconds of the first bucket's start.
    pub from: u64,
    /// Unix seconds of the last bucket's end.
    pub to: u64,
    /// The whole range in one.
    pub totals: Point,
    /// One point per bucket, oldest first, buckets with no requests included.
    pub series: Vec<Point>,
    /// The endpoints with the most requests, most first; `other` for those past the bound on
    /// endpoints named per bucket.
    pub top_endpoints: Vec<Ranked>,
    /// The countries with the most requests, most first.
    pub top_countries: Vec<Ranked>,
    /// Where the key stands against its limits now, if given
    /// ([`with_limits`](Self::with_limits)).
    pub limits: Vec<Standing>,
}

impl UsageReport {
    /// The report with where its key stands against its limits now, as
    /// [`ApiKeyHandle::standing`](crate::ApiKeyHandle::standing) tells.
    pub fn with_limits(mut self, limits: &[LimitStatus]) -> Self {
        self.limits = limits
            .iter()
            .map(|status| Standing {
                policy: status.policy.to_string(),
                quota: status.quota,
                window_secs: status.window,
                remaining: status.remaining,
                reset_secs: status.reset,
            })
            .collect();
        self
    }
}

/// Where a key stands against one of its limits (or its owner's, `owner.` first).
#[cfg_attr(feature = "console", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Standing {
    /// The limit: `minute`, `day`, `month`, a named limit, or the same of the owner's.
    pub policy: String,
    /// Its quota in its window.
    pub quota: u32,
    /// Its window in seconds.
    pub window_secs: u64,
    /// What is left of it.
    pub remaining: u32,
    /// Seconds until it is restored.
    pub reset_secs: u64,
}

/// Usage in one bucket (or the whole range).
#[cfg_attr(feature = "console", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Point {
    /// Unix seconds of the bucket's start.
    pub start: u64,
    /// Requests in all.
    pub requests: u64,
    /// Requests by outcome: `ok` and rejection codes; outcomes never seen are left out.
    #[cfg_attr(feature = "console", schema(value_type = Object))]
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Requests by the class of the answer's status: `2xx` to `5xx`.
    #[cfg_attr(feature = "console", schema(value_type = Object))]
    pub status_classes: BTreeMap<&'static str, u64>,
    /// Requests by the answer's status.
    #[cfg_attr(feature = "console", schema(value_type = Object))]
    pub statuses: BTreeMap<u16, u64>,
    /// Requests answered 4xx or 5xx, by the service or by this crate's rejections.
    pub errors: u64,
    /// `errors / requests`, 0 with no requests.
    pub error_rate: f64,
    /// The service's response times, for the requests that reached it.
    pub latency: Option<Latency>,
}

/// Percentiles of the service's response time, from a DDSketch: each within 1 % of the true
/// value, the percentile `q` of `n` requests being the value of rank `⌊q·(n−1)⌋` (from 0).
#[cfg_attr(feature = "console", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Latency {
    /// Requests measured.
    pub count: u64,
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// 95th percentile, in milliseconds.
    pub p95_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
}

/// An endpoint or a country, and its requests.
#[cfg_attr(feature = "console", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Ranked {
    /// The endpoint's route or the country's code.
    pub name: String,
    /// Requests.
    pub requests: u64,
}

impl Point {
    pub(crate) fn of(start: u64, bucket: &Bucket) -> Point {
        let outcomes = (bucket.outcomes.iter())
            .map(|(outcome, count)| (outcome.as_str(), *count))
            .collect();
        let mut status_classes = BTreeMap::new();
        let mut statuses = BTreeMap::new();
        let mut errors = 0;
        for &(status, count) in &bucket.statuses {
            let class = status_class(status).unwrap_or("other");
            let class = status_classes.entry(class).or_insert(0_u64);
            *class = class.saturating_add(count);
            let exact = statuses.entry(status).or_insert(0_u64);
            *exact = exact.saturating_add(count);
            if (400..600).contains(&status) {
                errors = count.saturating_add(errors);
            }
        }
        let requests = bucket.requests();
        let latency =
            bucket
                .latency
                .quantiles([0.5, 0.95, 0.99])
                .map(|(count, [p50_ms, p95_ms, p99_ms])| Latency {
                    count,
                    p50_ms,
                    p95_ms,
                    p99_ms,
                });
        Point {
            start,
            requests,
            outcomes,
            status_classes,
            statuses,
            errors,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            latency,
        }
    }
}

/// The `top` names with the most requests, most first (ties by name).
pub(crate) fn ranked<'a>(counts: impl Iterator<Item = (&'a str, u64)>, top: usize) -> Vec<Ranked> {
    let mut all: Vec<Ranked> = counts
        .filter(|(_, requests)| *requests > 0)
        .map(|(name, requests)| Ranked {
            name: name.to_owned(),
            requests,
        })
        .collect();
    all.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then_with(|| a.name.cmp(&b.name))
    });
    all.truncate(top);
    all
}
