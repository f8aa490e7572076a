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
//! A key (or plan) may also carry named limits, each a smooth limit of its own
//! ([`NamedLimit`]: `"burst"` 10 per second, `"hour"` 2,000 per hour…), and every one is enforced;
//! the headers and the 429 body name the limit that was hit. A request costs 1 unless the layer
//! says otherwise for its path ([`Costs`]); a cost of 0 checks the limits without consuming
//! them. A check is all or nothing: a request a limit refuses consumes no limit at all.
//!
//! A key may also have [`Credits`]: a budget kept and spent in the store (one atomic step, so
//! replicas never overspend), refilled daily or monthly, spent by the same cost once the limits
//! let the request through; spent out, the answer is 429 `USAGE_EXCEEDED`.
//!
//! Limits come from, in order: the key record's own `limits`, its `plan` looked up in the
//! layer's plans (`free`, `pro`, `enterprise` are built in), the layer's default (unlimited).
//! `test` keys are capped by the layer's test limits (60/min and 1,000/day by default); `dev`
//! keys are never limited.
//!
//! Limits and credits may also be set on an owner
//! ([`KeyManager::set_owner_limits`](crate::KeyManager::set_owner_limits),
//! [`set_owner_credits`](crate::KeyManager::set_owner_credits)): they apply to all of its keys
//! together, besides each key's own. A request is counted in its key's [`Bucket`] and its owner's
//! at once, all or nothing (the owner's limits are named `owner.minute`, `owner.day`,
//! `owner.<name>`), and spends its key's and its owner's credits in one store step
//! ([`Charge`]).
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
mod cost;
mod credits;
mod gcra;
mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use cost::{Cost, Costs};
pub use credits::{Account, Charge, Credits, Refill, RefillPeriod, Spend};
pub use memory::MemoryLimiter;
#[cfg(feature = "redis")]
pub use redis::RedisLimiter;

pub(crate) use calendar::Window;
pub(crate) use gcra::Rate;

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
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// is checked against its own key's limits on the shared counts. To set limits on the owner
    /// itself, besides each key's own, see
    /// [`KeyManager::set_owner_limits`](crate::KeyManager::set_owner_limits).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_by_owner: bool,
    /// Limits of its own name, each enforced beside the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named: Vec<NamedLimit>,
}

/// A limit with a name of its own: `limit` requests per `window` seconds, smooth (a burst of
/// `limit` at once, then one request every `window / limit`), as `"burst"` 10 per second or
/// `"hour"` 2,000 per hour. The name is what `RateLimit` headers and the 429 body call it.
///
/// ```
/// use tower_api_key::limit::{Limits, NamedLimit};
///
/// let limits = Limits::UNLIMITED
///     .with(NamedLimit::new("burst", 10, 1)?)
///     .with(NamedLimit::new("hour", 2_000, 3_600)?);
/// assert_eq!(limits.named.len(), 2);
/// assert!(NamedLimit::new("Bad Name", 1, 1).is_err());
/// assert!(NamedLimit::new("minute", 1, 60).is_err(), "the built-in names are taken");
/// # Ok::<(), tower_api_key::limit::InvalidLimit>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawNamedLimit")]
pub struct NamedLimit {
    name: Box<str>,
    limit: u32,
    window: u64,
}

/// A named limit as stored, checked by [`NamedLimit::new`] when read.
#[derive(Deserialize)]
struct RawNamedLimit {
    name: String,
    limit: u32,
    window: u64,
}

impl TryFrom<RawNamedLimit> for NamedLimit {
    type Error = InvalidLimit;

    fn try_from(raw: RawNamedLimit) -> Result<Self, InvalidLimit> {
        NamedLimit::new(&raw.name, raw.limit, raw.window)
    }
}

/// The longest window of a named limit: 31 days.
pub const MAX_WINDOW_SECONDS: u64 = 31 * 86_400;

impl NamedLimit {
    /// `limit` requests per `window` seconds, called `name`.
    ///
    /// # Errors
    /// [`InvalidLimit`] for a name that is not 1 to 32 of `a-z`, `0-9`, `_`, `-` (or is one of
    /// the built-in `minute`, `day`, `month`), or a window that is not 1 s to 31 days.
    pub fn new(name: &str, limit: u32, window: u64) -> Result<Self, InvalidLimit> {
        let valid_name = (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && !["minute", "day", "month"].contains(&name);
        if !valid_name {
            return Err(InvalidLimit::Name(name.to_owned()));
        }
        if !(1..=MAX_WINDOW_SECONDS).contains(&window) {
            return Err(InvalidLimit::Window(window));
        }
        Ok(NamedLimit {
            name: name.into(),
            limit,
            window,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests allowed per window (and at once).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window, in seconds.
    pub fn window(&self) -> u64 {
        self.window
    }
}

impl std::fmt::Display for NamedLimit {
    /// `name=limit/windows`, as the command line tool takes it: `burst=10/1s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}/{}s", self.name, self.limit, self.window)
    }
}

impl std::str::FromStr for NamedLimit {
    type Err = InvalidLimit;

    /// `name=limit/window`, the window in seconds or with a unit: `burst=10/1s`,
    /// `hour=2000/3600`, `day-writes=500/1d` (units `s`, `m`, `h`, `d`).
    fn from_str(text: &str) -> Result<Self, InvalidLimit> {
        let malformed = || InvalidLimit::Malformed(text.to_owned());
        let (name, rest) = text.trim().split_once('=').ok_or_else(malformed)?;
        let (limit, window) = rest.split_once('/').ok_or_else(malformed)?;
        let limit: u32 = limit.trim().parse().map_err(|_| malformed())?;
        let window = window.trim();
        let (digits, unit) = match window.find(|c: char| !c.is_ascii_digit()) {
            Some(at) => window.split_at(at),
            None => (window, "s"),
        };
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(malformed()),
        };
        let count: u64 = digits.parse().map_err(|_| malformed())?;
        let window = count.checked_mul(scale).ok_or_else(malformed)?;
        NamedLimit::new(name.trim(), limit, window)
    }
}

/// What [`NamedLimit::new`] refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidLimit {
    /// Not 1 to 32 of `a-z0-9_-`, or a built-in name.
    Name(String),
    /// Not 1 s to 31 days.
    Window(u64),
    /// Not `name=limit/window`.
    Malformed(String),
    /// Two named limits with one name.
    Duplicate(String),
    /// A monthly refill day that is not 1 to 28.
    RefillDay(u8),
}

impl std::fmt::Display for InvalidLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InvalidLimit::Name(name) => write!(
                f,
                "invalid limit name `{name}`: use 1 to 32 of a-z, 0-9, _ and -, other than minute, day and month"
            ),
            InvalidLimit::Window(w) => {
                write!(f, "invalid limit window {w} s: from 1 s to 31 days")
            }
            InvalidLimit::Malformed(text) => write!(
                f,
                "`{text}` is not a limit: write name=limit/window, such as burst=10/1s"
            ),
            InvalidLimit::Duplicate(name) => write!(f, "two limits are named `{name}`"),
            InvalidLimit::RefillDay(day) => {
                write!(f, "invalid refill day {day}: from 1 to 28, which every month has")
            }
        }
    }
}

impl std::error::Error for InvalidLimit {}

impl Limits {
    /// No limits.
    pub const UNLIMITED: Limits = Limits {
        per_minute: None,
        burst: None,
        daily: None,
        monthly: None,
        shared_by_owner: false,
        named: Vec::new(),
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
            named: Vec::new(),
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

    /// With the named limit `limit` too (replacing one of the same name).
    #[must_use]
    pub fn with(mut self, limit: NamedLimit) -> Limits {
        self.named.retain(|l| l.name != limit.name);
        self.named.push(limit);
        self
    }

    /// Counted for all keys of the owner together.
    pub const fn shared_by_owner(mut self) -> Limits {
        self.shared_by_owner = true;
        self
    }

    /// Whether nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.per_minute.is_none()
            && self.daily.is_none()
            && self.monthly.is_none()
            && self.named.is_empty()
    }

    /// The stricter of `self` and `cap`, limit by limit: named limits of both, and of two with
    /// one name the one with the lower rate.
    pub fn capped_by(self, cap: &Limits) -> Limits {
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
            named: {
                let mut named = self.named;
                for limit in &cap.named {
                    // a/w < b/v  ⇔  a·v < b·w
                    let rate = |l: &NamedLimit| (u128::from(l.limit), u128::from(l.window));
                    match named.iter_mut().find(|l| l.name == limit.name) {
                        Some(mine) => {
                            let ((a, w), (b, v)) = (rate(limit), rate(mine));
                            if a * v < b * w || (a * v == b * w && limit.limit < mine.limit) {
                                *mine = limit.clone();
                            }
                        }
                        None => named.push(limit.clone()),
                    }
                }
                named
            },
        }
    }

    /// The smooth rate limits among these: `minute` first, then the named ones, each called
    /// `label` and its name.
    pub(crate) fn rates(&self, label: &str) -> Vec<Rate> {
        let minute = self.per_minute.map(|rate| {
            Rate::new(
                labelled(label, "minute"),
                rate,
                60,
                self.burst.unwrap_or(rate),
            )
        });
        minute
            .into_iter()
            .chain(
                self.named
                    .iter()
                    .map(|l| Rate::new(labelled(label, &l.name), l.limit, l.window, l.limit)),
            )
            .collect()
    }

    /// Refuses two named limits with one name.
    pub(crate) fn validate(&self) -> Result<(), InvalidLimit> {
        for (i, limit) in self.named.iter().enumerate() {
            if self.named[..i].iter().any(|l| l.name == limit.name) {
                return Err(InvalidLimit::Duplicate(limit.name.to_string()));
            }
        }
        Ok(())
    }
}

/// Where one limit stands after a request was counted (or refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitStatus {
    /// Which limit: `minute`, `day`, `month`, or a [`NamedLimit`]'s name.
    pub policy: Arc<str>,
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
    /// When refused: the name of the limit that refused it.
    pub refused_by: Option<Arc<str>>,
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

/// `label` and `name` as one name: `owner.` and `minute` make `owner.minute`.
pub(crate) fn labelled(label: &str, name: &str) -> Arc<str> {
    if label.is_empty() {
        name.into()
    } else {
        format!("{label}{name}").into()
    }
}

/// One set of limits a request is counted in: a key's (or its plan's) in the key's bucket, or the
/// limits set on its owner in the owner's.
///
/// ```
/// use tower_api_key::limit::{Bucket, Limits};
///
/// let key = Limits::per_minute(100);
/// let owner = Limits::UNLIMITED.daily(10_000);
/// let buckets = [
///     Bucket::new("key:3kTMd9Qx2bLp", &key),
///     Bucket::new("owner-policy:acme", &owner).labelled("owner."),
/// ];
/// assert_eq!(buckets[1].label, "owner.");
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Bucket<'a> {
    /// Where the limits are counted: requests with one bucket name share their counts.
    pub name: &'a str,
    /// What is counted.
    pub limits: &'a Limits,
    /// Put before each limit's name in the statuses, the `RateLimit` headers and the 429 body
    /// (`owner.` for an owner's limits, so `owner.minute` is told from the key's `minute`).
    pub label: &'a str,
}

impl<'a> Bucket<'a> {
    /// `limits` counted in bucket `name`, with no label.
    pub fn new(name: &'a str, limits: &'a Limits) -> Self {
        Bucket {
            name,
            limits,
            label: "",
        }
    }

    /// With `label` before each limit's name.
    #[must_use]
    pub fn labelled(mut self, label: &'a str) -> Self {
        self.label = label;
        self
    }
}

/// Counts requests against limits. [`MemoryLimiter`] is the in-process one; a shared one lets
/// several replicas enforce one limit.
pub trait Limiter: Send + Sync + 'static {
    /// Counts one request costing `cost` at `now` in every one of `buckets` (a key's limits, its
    /// owner's): all of their limits or none, so a request one limit refuses spends nothing of
    /// another. A cost of 0 is checked as a cost of 1 (refused where that would be) and consumes
    /// nothing. The decision's statuses are every bucket's, in order.
    fn check(&self, buckets: &[Bucket<'_>], cost: u32, now: SystemTime) -> LimitCheck;
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

/// The limits of one key (or of its owner) and the bucket they are counted in.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) bucket: Box<str>,
    pub(crate) limits: Limits,
    /// Before each limit's name: `owner.` for an owner's limits.
    pub(crate) label: &'static str,
}

impl Policy {
    /// What the limiter counts.
    pub(crate) fn as_bucket(&self) -> Bucket<'_> {
        Bucket::new(&self.bucket, &self.limits).labelled(self.label)
    }

    /// The limits set on `owner`, for its keys in `environment`: counted together for all of
    /// its keys, named `owner.…`; `None` for a dev key (never limited) or no limits.
    pub(crate) fn of_owner(
        owner: &str,
        limits: Option<&Limits>,
        environment: crate::key::Environment,
    ) -> Option<Policy> {
        let limits = limits.filter(|l| !l.is_unlimited())?;
        if environment == crate::key::Environment::Dev {
            return None;
        }
        Some(Policy {
            bucket: format!("owner-policy:{owner}").into(),
            // Shared: a limiter keeps one bucket's counts whatever its keys' copies say.
            limits: limits.clone().shared_by_owner(),
            label: "owner.",
        })
    }
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
                .map(|(_, limits)| limits.clone())
                .ok_or_else(|| UnknownPlan(plan.to_owned()))?,
            (None, None) => self.default.clone(),
        };
        let limits = match record.environment {
            Environment::Dev => return Ok(None),
            Environment::Test => base.capped_by(&self.test_cap),
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
            label: "",
        }))
    }
}
