//! The in-process limiter: GCRA from `governor` per bucket, atomic quota counters, idle buckets
//! dropped.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use governor::clock::Clock as GovernorClock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;

use super::{Decision, LimitCheck, LimitStatus, Limiter, Limits, Window};
use crate::clock::{unix_seconds, Clock, SystemClock};

/// Buckets are swept for idle ones once every this many checks.
const SWEEP_EVERY: u64 = 4096;

/// Rate limits and quotas counted in this process's memory.
///
/// Each bucket (a key, or an owner's keys) has its own GCRA state from the `governor` crate,
/// updated with one atomic compare-and-swap, so a limit of N admits exactly N however many threads
/// race; quota counters are atomic too. A bucket is dropped once it is idle long enough to be as
/// good as new (its burst refilled, its quota windows over), so memory follows the keys in use.
///
/// Every replica counts on its own: N replicas admit up to N times a limit. Use a shared limiter
/// for one limit across replicas.
///
/// ```
/// use std::time::SystemTime;
/// use tower_api_key::{limit::Limiter, limit::LimitCheck, limit::Limits, limit::MemoryLimiter};
///
/// let limiter = MemoryLimiter::new();
/// let limits = Limits::per_minute(2);
/// let allowed = |check| match check {
///     LimitCheck::Ready(Ok(decision)) => decision.allowed,
///     _ => unreachable!("the memory limiter decides at once"),
/// };
/// let now = SystemTime::now();
/// assert!(allowed(limiter.check("key:a", &limits, now)));
/// assert!(allowed(limiter.check("key:a", &limits, now)));
/// assert!(!allowed(limiter.check("key:a", &limits, now)));
/// assert!(allowed(limiter.check("key:b", &limits, now)), "buckets are apart");
/// ```
pub struct MemoryLimiter {
    buckets: DashMap<Box<str>, Arc<Bucket>>,
    checks: AtomicU64,
    clock: WallClock,
}

impl fmt::Debug for MemoryLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLimiter")
            .field("buckets", &self.buckets.len())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        MemoryLimiter::new()
    }
}

impl MemoryLimiter {
    /// A limiter on the system clock.
    pub fn new() -> Self {
        MemoryLimiter::with_clock(Arc::new(SystemClock))
    }

    /// A limiter whose rate limits follow `clock` (the layer gives its own clock to its default
    /// limiter, so tests can move time).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemoryLimiter {
            buckets: DashMap::new(),
            checks: AtomicU64::new(0),
            clock: WallClock(clock),
        }
    }

    /// How many buckets are held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The bucket `name`, counting under `limits`. A key's bucket whose limits changed (a new
    /// plan) starts over. A bucket shared by an owner's keys takes the stricter of each limit of
    /// every key that used it, and keeps its counts: alternating between keys with different
    /// limits can never reset it.
    fn bucket(&self, name: &str, limits: &Limits) -> Arc<Bucket> {
        if let Some(bucket) = self.buckets.get(name) {
            if bucket.limits == *limits
                || (limits.shared_by_owner && bucket.limits == bucket.limits.capped_by(*limits))
            {
                return bucket.clone();
            }
        }
        let mut entry = self
            .buckets
            .entry(name.into())
            .or_insert_with(|| Arc::new(Bucket::new(*limits, self.clock.clone())));
        if entry.limits != *limits {
            *entry = if limits.shared_by_owner {
                Arc::new(entry.stricter(*limits, self.clock.clone()))
            } else {
                Arc::new(Bucket::new(*limits, self.clock.clone()))
            };
        }
        entry.clone()
    }

    /// Drops the buckets that are as good as new at `secs`.
    fn sweep(&self, secs: u64) {
        self.buckets.retain(|_, bucket| !bucket.is_fresh(secs));
    }
}

impl Limiter for MemoryLimiter {
    fn check(&self, bucket: &str, limits: &Limits, now: SystemTime) -> LimitCheck {
        let secs = unix_seconds(now);
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(secs);
        }
        let bucket = self.bucket(bucket, limits);
        LimitCheck::Ready(Ok(bucket.count(secs, &self.clock)))
    }
}

type Gcra = governor::RateLimiter<NotKeyed, InMemoryState, WallClock, StateInformationMiddleware>;

struct Bucket {
    limits: Limits,
    gcra: Option<Arc<Gcra>>,
    /// Seconds a burst takes to refill completely.
    refill: u64,
    day: AtomicU64,
    month: AtomicU64,
    last_seen: AtomicU64,
}

impl Bucket {
    fn new(limits: Limits, clock: WallClock) -> Self {
        let rate = limits.per_minute.and_then(NonZeroU32::new);
        let burst = limits.effective_burst().and_then(NonZeroU32::new);
        let gcra = rate.zip(burst).map(|(rate, burst)| {
            governor::RateLimiter::direct_with_clock(
                Quota::per_minute(rate).allow_burst(burst),
                clock,
            )
            .with_middleware::<StateInformationMiddleware>()
        });
        let gcra = gcra.map(Arc::new);
        let refill = match (rate, burst) {
            (Some(rate), Some(burst)) => {
                (60 * u64::from(burst.get())).div_ceil(u64::from(rate.get()))
            }
            _ => 60,
        };
        Bucket {
            limits,
            gcra,
            refill,
            day: AtomicU64::new(0),
            month: AtomicU64::new(0),
            last_seen: AtomicU64::new(0),
        }
    }

    /// This bucket under the stricter of its limits and `limits`, with its counts: the rate
    /// state too, unless the rate or burst changed.
    fn stricter(&self, limits: Limits, clock: WallClock) -> Bucket {
        let merged = self.limits.capped_by(limits);
        let mut bucket = Bucket::new(merged, clock);
        if (merged.per_minute, merged.effective_burst())
            == (self.limits.per_minute, self.limits.effective_burst())
        {
            bucket.gcra.clone_from(&self.gcra);
        }
        for (to, from) in [
            (&bucket.day, &self.day),
            (&bucket.month, &self.month),
            (&bucket.last_seen, &self.last_seen),
        ] {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        bucket
    }

    fn is_fresh(&self, secs: u64) -> bool {
        let last = self.last_seen.load(Ordering::Relaxed);
        let window_over =
            |quota: Option<u32>, w: Window| quota.is_none() || w.index(last) < w.index(secs);
        last + self.refill < secs
            && window_over(self.limits.daily, Window::Day)
            && window_over(self.limits.monthly, Window::Month)
    }

    fn count(&self, secs: u64, clock: &WallClock) -> Decision {
        self.last_seen.fetch_max(secs, Ordering::Relaxed);
        let mut statuses = Vec::with_capacity(3);
        if let Some(rate) = self.limits.per_minute {
            let burst = self.limits.effective_burst().unwrap_or(rate);
            let per_request = 60.0 / f64::from(rate.max(1));
            let refused = |wait: Duration| LimitStatus {
                policy: "minute",
                quota: rate,
                window: 60,
                remaining: 0,
                reset: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            };
            match &self.gcra {
                Some(gcra) => match gcra.check() {
                    Ok(snapshot) => {
                        let remaining = snapshot.remaining_burst_capacity();
                        let missing = f64::from(burst.saturating_sub(remaining));
                        statuses.push(LimitStatus {
                            policy: "minute",
                            quota: rate,
                            window: 60,
                            remaining,
                            reset: (missing * per_request).ceil() as u64,
                        });
                    }
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(clock.now());
                        return refuse(statuses, refused(wait), wait);
                    }
                },
                // A limit of zero: nothing passes.
                None => {
                    return refuse(
                        statuses,
                        refused(Duration::from_secs(60)),
                        Duration::from_secs(60),
                    )
                }
            }
        }
        let quotas = [
            (self.limits.daily, Window::Day, &self.day, "day"),
            (self.limits.monthly, Window::Month, &self.month, "month"),
        ];
        let mut counted: Vec<(&AtomicU64, u32)> = Vec::new();
        for (quota, window, counter, policy) in quotas {
            let Some(quota) = quota else { continue };
            let index = window.index(secs);
            let reset = window.seconds_left(secs);
            let status = |remaining| LimitStatus {
                policy,
                quota,
                window: window.length(secs),
                remaining,
                reset,
            };
            match increment(counter, index, quota) {
                Some(count) => {
                    counted.push((counter, index));
                    statuses.push(status(quota - count));
                }
                None => {
                    for (counter, index) in counted {
                        decrement(counter, index);
                    }
                    let wait = Duration::from_secs(reset);
                    return refuse(statuses, status(0), wait);
                }
            }
        }
        Decision {
            allowed: true,
            retry_after: None,
            limits: statuses,
        }
    }
}

fn refuse(mut statuses: Vec<LimitStatus>, failed: LimitStatus, wait: Duration) -> Decision {
    statuses.push(failed);
    Decision {
        allowed: false,
        retry_after: Some(wait.max(Duration::from_secs(1))),
        limits: statuses,
    }
}

/// Counts one request in window `index` unless `quota` is reached; returns the new count.
/// The counter packs the window in its high half and the count in its low half.
fn increment(counter: &AtomicU64, index: u32, quota: u32) -> Option<u32> {
    let mut current = counter.load(Ordering::Acquire);
    loop {
        let (window, count) = ((current >> 32) as u32, current as u32);
        // A stored window newer than ours (the clock stepped back) keeps its count.
        let (window, count) = if window >= index {
            (window, count)
        } else {
            (index, 0)
        };
        if count >= quota {
            return None;
        }
        let next = (u64::from(window) << 32) | u64::from(count + 1);
        match counter.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(count + 1),
            Err(actual) => current = actual,
        }
    }
}

/// Takes back one request counted in window `index`, if that window is still the counter's.
fn decrement(counter: &AtomicU64, index: u32) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
        let (window, count) = ((current >> 32) as u32, current as u32);
        (window == index && count > 0).then(|| current - 1)
    });
}

/// The layer's clock as `governor` sees it: nanoseconds since 1970.
#[derive(Clone)]
struct WallClock(Arc<dyn Clock>);

impl GovernorClock for WallClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        let since = self.0.now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Nanos::from(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn decide(
        limiter: &MemoryLimiter,
        bucket: &str,
        limits: &Limits,
        clock: &ManualClock,
    ) -> Decision {
        match limiter.check(bucket, limits, clock.now()) {
            LimitCheck::Ready(Ok(decision)) => decision,
            _ => unreachable!(),
        }
    }

    fn setup() -> (MemoryLimiter, ManualClock) {
        // 2026-11-22 23:59:00 UTC
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(20_779 * 86_400 + 86_340));
        (MemoryLimiter::with_clock(Arc::new(clock.clone())), clock)
    }

    #[test]
    fn a_burst_then_the_pace_and_no_double_at_a_boundary() {
        let (limiter, clock) = setup();
        let limits = Limits::per_minute(60);
        let admitted = (0..200)
            .filter(|_| decide(&limiter, "k", &limits, &clock).allowed)
            .count();
        assert_eq!(admitted, 60, "the burst");
        // Across what a fixed window would call a boundary, only the pace refills.
        clock.advance(Duration::from_secs(2));
        let admitted = (0..200)
            .filter(|_| decide(&limiter, "k", &limits, &clock).allowed)
            .count();
        assert_eq!(admitted, 2, "one a second, not a fresh 60");
        let refused = decide(&limiter, "k", &limits, &clock);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(1)));
        assert_eq!(refused.limits[0].remaining, 0);
    }

    #[test]
    fn quotas_reset_at_utc_midnight_and_month_start() {
        let (limiter, clock) = setup();
        let limits = Limits::UNLIMITED.daily(3).monthly(5);
        for _ in 0..3 {
            assert!(decide(&limiter, "k", &limits, &clock).allowed);
        }
        let refused = decide(&limiter, "k", &limits, &clock);
        assert!(!refused.allowed);
        assert_eq!(
            refused.retry_after,
            Some(Duration::from_secs(60)),
            "until midnight"
        );
        clock.advance(Duration::from_secs(60)); // 2026-11-23 00:00:00
        assert!(decide(&limiter, "k", &limits, &clock).allowed);
        assert!(decide(&limiter, "k", &limits, &clock).allowed);
        let refused = decide(&limiter, "k", &limits, &clock);
        assert!(!refused.allowed, "the month's 5 are used");
        assert_eq!(refused.limits.last().unwrap().policy, "month");
        // The day counter was given back: the refusal did not spend a daily request.
        clock.advance(Duration::from_secs(8 * 86_400)); // 2026-12-01
        for _ in 0..3 {
            assert!(decide(&limiter, "k", &limits, &clock).allowed);
        }
    }

    #[test]
    fn statuses_report_remaining_and_reset() {
        let (limiter, clock) = setup();
        let decision = decide(&limiter, "k", &Limits::FREE, &clock);
        assert!(decision.allowed);
        let (policy, state) = decision.headers();
        assert_eq!(
            policy,
            "\"minute\";q=100;w=60, \"day\";q=10000;w=86400, \"month\";q=100000;w=2592000"
        );
        assert_eq!(
            state,
            "\"minute\";r=99;t=1, \"day\";r=9999;t=60, \"month\";r=99999;t=691260"
        );
    }

    #[test]
    fn idle_buckets_are_dropped_once_as_good_as_new() {
        let (limiter, clock) = setup();
        clock.advance(Duration::from_secs(60 + 12 * 3600)); // 2026-11-23 12:00
        decide(&limiter, "minute-only", &Limits::per_minute(10), &clock);
        decide(&limiter, "daily", &Limits::UNLIMITED.daily(10), &clock);
        assert_eq!(limiter.len(), 2);
        clock.advance(Duration::from_secs(30));
        limiter.sweep(unix_seconds(clock.now()));
        assert_eq!(limiter.len(), 2, "the minute bucket is still refilling");
        clock.advance(Duration::from_secs(31));
        limiter.sweep(unix_seconds(clock.now()));
        assert_eq!(
            limiter.len(),
            1,
            "the minute bucket refilled; the day is not over"
        );
        clock.advance(Duration::from_secs(12 * 3600));
        limiter.sweep(unix_seconds(clock.now()));
        assert!(limiter.is_empty());
    }

    #[test]
    fn a_limit_of_zero_refuses_everything() {
        let (limiter, clock) = setup();
        assert!(!decide(&limiter, "k", &Limits::per_minute(0), &clock).allowed);
        assert!(!decide(&limiter, "q", &Limits::UNLIMITED.daily(0), &clock).allowed);
    }
}
