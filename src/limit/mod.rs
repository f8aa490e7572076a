//! Per-key rate limits and quotas: [`Limits`] on a key (or its plan), the [`Limiter`] that
//! enforces them, and the IETF `RateLimit` headers that report them.
//!
//! A rate limit is smooth (GCRA, as in the `governor` crate: a burst, then one request per
//! interval), so no client gets twice its limit across a window boundary. Daily and monthly
//! quotas count requests in UTC calendar days and months. Over either, the answer is 429
//! `RATE_LIMIT_EXCEEDED` with `Retry-After`, and the service is not called. Every response of a
//! limited key carries `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers):
//!
//! ```text
//! RateLimit-Policy: "minute";q=100;w=60, "day";q=10000;w=86400
//! RateLimit: "minute";r=99;t=1, "day";r=9999;t=43200
//! ```
//!
//! Limits come from, in order: the key record's own `limits`, its `plan` looked up in the
//! layer's plans (`free`, `pro`, `enterprise` are built in), the layer's default (unlimited).
//! `test` keys are capped by the layer's test limits (60/min and 1,000/day by default); `dev`
//! keys are never limited.
//!
//! ```
//! use tower_api_key::{ApiKeyLayer, limit::Limits, MemoryStore};
//!
//! let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
//!     .plan("startup", Limits::per_minute(200).daily(20_000))
//!     .default_limits(Limits::FREE)
//!     .build()?;
//! # Ok::<(), tower_api_key::ConfigError>(())
//! ```

mod calendar;
mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use memory::MemoryLimiter;
#[cfg(feature = "redis")]
pub use redis::RedisLimiter;

pub(crate) use calendar::Window;

/// What one key (or one owner's keys together) may use.
///
/// ```
/// use tower_api_key::limit::Limits;
///
/// let limits = Limits::per_minute(100).burst(20).daily(10_000).monthly(100_000);
/// assert_eq!(limits.per_minute, Some(100));
/// assert!(!limits.is_unlimited());
/// assert!(Limits::UNLIMITED.is_unlimited());
/// assert_eq!(Limits::FREE, Limits::per_minute(100).daily(10_000).monthly(100_000));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Limits {
    /// Requests per minute, smoothed; `None`: no rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u32>,
    /// How many requests may come at once before the per-minute pace applies; default the
    /// per-minute limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Requests per UTC calendar day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<u32>,
    /// Requests per UTC calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<u32>,
    /// Count all keys of the record's owner together, in one bucket whatever their environments
    /// or plans (keys without an owner count alone). Where the keys' limits differ, each request
    /// is checked against its own key's limits on the shared counts ([`RedisLimiter`]), or the
    /// bucket takes the stricter of each limit ([`MemoryLimiter`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_by_owner: bool,
}

impl Limits {
    /// No limits.
    pub const UNLIMITED: Limits = Limits {
        per_minute: None,
        burst: None,
        daily: None,
        monthly: None,
        shared_by_owner: false,
    };
    /// The reference's Free plan: 100/minute, 10,000/day, 100,000/month.
    pub const FREE: Limits = Limits::plan(100, Some(10_000), Some(100_000));
    /// The reference's Pro plan: 500/minute, 50,000/day, 1,000,000/month.
    pub const PRO: Limits = Limits::plan(500, Some(50_000), Some(1_000_000));
    /// The reference's Enterprise plan: 1,000/minute, no quotas.
    pub const ENTERPRISE: Limits = Limits::plan(1000, None, None);

    const fn plan(per_minute: u32, daily: Option<u32>, monthly: Option<u32>) -> Limits {
        Limits {
            per_minute: Some(per_minute),
            burst: None,
            daily,
            monthly,
            shared_by_owner: false,
        }
    }

    /// A rate limit of `n` requests per minute, nothing else.
    pub const fn per_minute(n: u32) -> Limits {
        Limits::plan(n, None, None)
    }

    /// With a burst of `n`.
    pub const fn burst(mut self, n: u32) -> Limits {
        self.burst = Some(n);
        self
    }

    /// With a daily quota of `n`.
    pub const fn daily(mut self, n: u32) -> Limits {
        self.daily = Some(n);
        self
    }

    /// With a monthly quota of `n`.
    pub const fn monthly(mut self, n: u32) -> Limits {
        self.monthly = Some(n);
        self
    }

    /// Counted for all keys of the owner together.
    pub const fn shared_by_owner(mut self) -> Limits {
        self.shared_by_owner = true;
        self
    }

    /// Whether nothing is limited.
    pub const fn is_unlimited(&self) -> bool {
        self.per_minute.is_none() && self.daily.is_none() && self.monthly.is_none()
    }

    /// The stricter of `self` and `cap`, limit by limit.
    pub fn capped_by(self, cap: Limits) -> Limits {
        fn min(a: Option<u32>, b: Option<u32>) -> Option<u32> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        Limits {
            per_minute: min(self.per_minute, cap.per_minute),
            burst: min(self.burst, cap.burst),
            daily: min(self.daily, cap.daily),
            monthly: min(self.monthly, cap.monthly),
            shared_by_owner: self.shared_by_owner,
        }
    }

    /// The burst actually allowed.
    pub(crate) fn effective_burst(&self) -> Option<u32> {
        self.per_minute.map(|rate| self.burst.unwrap_or(rate))
    }
}

/// Where one limit stands after a request was counted (or refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitStatus {
    /// Which limit: `minute`, `day` or `month`.
    pub policy: &'static str,
    /// Its quota in its window.
    pub quota: u32,
    /// Its window in seconds.
    pub window: u64,
    /// What is left of it.
    pub remaining: u32,
    /// Seconds until it is restored.
    pub reset: u64,
}

/// The outcome of counting one request against a key's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go through.
    pub allowed: bool,
    /// When refused: how long until a request would be allowed.
    pub retry_after: Option<Duration>,
    /// Every limit that applies, for the `RateLimit` headers.
    pub limits: Vec<LimitStatus>,
}

impl Decision {
    /// Adds `RateLimit-Policy`, `RateLimit` and, when refused, `Retry-After` to `headers`.
    pub(crate) fn write_headers(&self, headers: &mut http::HeaderMap) {
        use http::HeaderValue;
        let (policy, state) = self.headers();
        if let Ok(policy) = HeaderValue::try_from(policy) {
            headers.insert("ratelimit-policy", policy);
        }
        if let Ok(state) = HeaderValue::try_from(state) {
            headers.insert("ratelimit", state);
        }
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
    }

    /// `RateLimit-Policy` and `RateLimit` header values.
    fn headers(&self) -> (String, String) {
        let mut policy = String::new();
        let mut state = String::new();
        for (i, limit) in self.limits.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(
                policy,
                "{sep}\"{}\";q={};w={}",
                limit.policy, limit.quota, limit.window
            );
            let _ = write!(
                state,
                "{sep}\"{}\";r={};t={}",
                limit.policy, limit.remaining, limit.reset
            );
        }
        (policy, state)
    }
}

/// A limiter's answer: at once, or after some I/O (a shared limiter in Redis, say).
pub enum LimitCheck {
    /// Decided already.
    Ready(Result<Decision, LimiterError>),
    /// To be awaited.
    Pending(Pin<Box<dyn Future<Output = Result<Decision, LimiterError>> + Send>>),
}

/// A limiter that could not decide. The request is refused (503), never let through.
#[derive(Debug)]
pub struct LimiterError(pub Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for LimiterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rate limiter unavailable: {}", self.0)
    }
}

impl std::error::Error for LimiterError {}

/// Counts requests against limits. [`MemoryLimiter`] is the in-process one; a shared one lets
/// several replicas enforce one limit.
pub trait Limiter: Send + Sync + 'static {
    /// Counts one request of `bucket` (a key id, or an owner) under `limits` at `now`.
    fn check(&self, bucket: &str, limits: &Limits, now: SystemTime) -> LimitCheck;
}

/// The layer's rules for turning a record into the limits that apply.
#[derive(Clone, Debug)]
pub(crate) struct LimitRules {
    pub(crate) plans: Vec<(String, Limits)>,
    pub(crate) default: Limits,
    pub(crate) test_cap: Limits,
}

impl Default for LimitRules {
    fn default() -> Self {
        LimitRules {
            plans: vec![
                ("free".into(), Limits::FREE),
                ("pro".into(), Limits::PRO),
                ("enterprise".into(), Limits::ENTERPRISE),
            ],
            default: Limits::UNLIMITED,
            test_cap: Limits::per_minute(60).daily(1000),
        }
    }
}

/// The limits of one key and the bucket they are counted in.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) bucket: Box<str>,
    pub(crate) limits: Limits,
}

/// A record names a plan the layer does not know.
#[derive(Debug)]
pub(crate) struct UnknownPlan(pub(crate) String);

impl std::fmt::Display for UnknownPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the key's plan `{}` is not configured", self.0)
    }
}

impl std::error::Error for UnknownPlan {}

/// What of a key decides its limits.
pub(crate) struct KeyLimits<'a> {
    pub(crate) id: &'a str,
    pub(crate) owner: Option<&'a str>,
    pub(crate) environment: crate::key::Environment,
    /// The key's own limits.
    pub(crate) limits: Option<Limits>,
    pub(crate) plan: Option<&'a str>,
}

impl LimitRules {
    /// The policy for a key, or `None` when it is unlimited.
    pub(crate) fn policy(&self, record: KeyLimits<'_>) -> Result<Option<Policy>, UnknownPlan> {
        use crate::key::Environment;
        let base = match (record.limits, record.plan) {
            (Some(limits), _) => limits,
            (None, Some(plan)) => self
                .plans
                .iter()
                .rev()
                .find(|(name, _)| name == plan)
                .map(|(_, limits)| *limits)
                .ok_or_else(|| UnknownPlan(plan.to_owned()))?,
            (None, None) => self.default,
        };
        let limits = match record.environment {
            Environment::Dev => return Ok(None),
            Environment::Test => base.capped_by(self.test_cap),
            Environment::Live => base,
        };
        if limits.is_unlimited() {
            return Ok(None);
        }
        // One bucket per owner, whatever its keys' environments or plans.
        let bucket = match (record.owner, limits.shared_by_owner) {
            (Some(owner), true) => format!("owner:{owner}"),
            _ => format!("key:{}", record.id),
        };
        Ok(Some(Policy {
            bucket: bucket.into(),
            limits,
        }))
    }
}
