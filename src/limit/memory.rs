//! The in-process limiter: per bucket, every smooth rate limit (GCRA) and both quota counters
//! behind one small lock, checked all or nothing; idle buckets dropped.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use super::{Decision, LimitCheck, LimitStatus, Limiter, Limits, Rate, Window};
use crate::clock::unix_seconds;

/// Buckets are swept for idle ones once every this many checks.
const SWEEP_EVERY: u64 = 4096;

/// Rate limits and quotas counted in this process's memory.
///
/// Each bucket (a key, or an owner's keys) keeps its limits' state behind one lock of its own,
/// held for a few comparisons: a request is checked against every limit and counted in all of
/// them or, refused, in none, so a limit of N admits exactly N however many threads race, and a
/// refusal by one limit never spends another. (The `governor` crate, used here before, checks one
/// limit at a time and cannot check without consuming; named limits and costs need both.) A
/// bucket is dropped once it is idle long enough to be as good as new (its bursts refilled, its
/// quota windows over), so memory follows the keys in use.
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
/// assert!(allowed(limiter.check("key:a", &limits, 1, now)));
/// assert!(allowed(limiter.check("key:a", &limits, 1, now)));
/// assert!(!allowed(limiter.check("key:a", &limits, 1, now)));
/// assert!(allowed(limiter.check("key:b", &limits, 1, now)), "buckets are apart");
/// ```
pub struct MemoryLimiter {
    buckets: DashMap<Box<str>, Arc<Bucket>>,
    checks: AtomicU64,
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
    /// An empty limiter. Time is what each [`check`](Limiter::check) is given: the layer's clock.
    pub fn new() -> Self {
        MemoryLimiter {
            buckets: DashMap::new(),
            checks: AtomicU64::new(0),
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
    fn bucket(&self, name: &str, limits: &Limits, now: u64) -> Arc<Bucket> {
        if let Some(bucket) = self.buckets.get(name) {
            if bucket.limits == *limits
                || (limits.shared_by_owner
                    && bucket.limits == bucket.limits.clone().capped_by(limits))
            {
                return bucket.clone();
            }
        }
        let mut entry = self
            .buckets
            .entry(name.into())
            .or_insert_with(|| Arc::new(Bucket::new(limits.clone())));
        if entry.limits != *limits {
            *entry = if limits.shared_by_owner {
                Arc::new(entry.stricter(limits, now))
            } else {
                Arc::new(Bucket::new(limits.clone()))
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
    fn check(&self, bucket: &str, limits: &Limits, cost: u32, now: SystemTime) -> LimitCheck {
        let secs = unix_seconds(now);
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(secs);
        }
        let bucket = self.bucket(bucket, limits, nanos_of(now));
        LimitCheck::Ready(Ok(bucket.count(now, cost)))
    }
}

struct Bucket {
    limits: Limits,
    rates: Box<[Rate]>,
    /// The quotas: limit, window, and the name in statuses.
    quotas: Box<[(u32, Window, Arc<str>)]>,
    /// Seconds the slowest burst takes to refill completely.
    refill: u64,
    state: Mutex<State>,
    last_seen: AtomicU64,
}

/// What a bucket counts: per rate, its theoretical arrival time (nanoseconds since 1970); per
/// quota, its window's index and the count in it.
#[derive(Clone, Default)]
struct State {
    tats: Vec<u64>,
    counts: Vec<(u32, u64)>,
}

impl Bucket {
    fn new(limits: Limits) -> Self {
        let rates: Box<[Rate]> = limits.rates().into();
        let quotas: Box<[(u32, Window, Arc<str>)]> = [
            (limits.daily, Window::Day, "day"),
            (limits.monthly, Window::Month, "month"),
        ]
        .into_iter()
        .filter_map(|(quota, window, name)| quota.map(|q| (q, window, Arc::from(name))))
        .collect();
        let refill = rates.iter().map(Rate::refill_seconds).max().unwrap_or(60);
        let state = State {
            tats: vec![0; rates.len()],
            counts: vec![(0, 0); quotas.len()],
        };
        Bucket {
            limits,
            rates,
            quotas,
            refill,
            state: Mutex::new(state),
            last_seen: AtomicU64::new(0),
        }
    }

    /// This bucket under the stricter of its limits and `limits`, with its counts: what a rate
    /// had used at `now` (in requests) is used of the same name's stricter rate.
    fn stricter(&self, limits: &Limits, now: u64) -> Bucket {
        let bucket = Bucket::new(self.limits.clone().capped_by(limits));
        let old = self.lock().clone();
        {
            let mut state = bucket.lock();
            for (i, rate) in bucket.rates.iter().enumerate() {
                if let Some(j) = self.rates.iter().position(|r| r.name == rate.name) {
                    let was = &self.rates[j];
                    let used = match was.interval {
                        0 => 0,
                        interval => old.tats[j].saturating_sub(now).div_ceil(interval),
                    };
                    state.tats[i] = now.saturating_add(used.saturating_mul(rate.interval));
                }
            }
            for (i, (_, window, _)) in bucket.quotas.iter().enumerate() {
                if let Some(j) = self.quotas.iter().position(|(_, w, _)| w == window) {
                    state.counts[i] = old.counts[j];
                }
            }
        }
        bucket
            .last_seen
            .store(self.last_seen.load(Ordering::Relaxed), Ordering::Relaxed);
        bucket
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is written only once every check passed: a panic cannot leave it half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_fresh(&self, secs: u64) -> bool {
        let last = self.last_seen.load(Ordering::Relaxed);
        last + self.refill < secs
            && self
                .quotas
                .iter()
                .all(|(_, window, _)| window.index(last) < window.index(secs))
    }

    fn count(&self, now: SystemTime, cost: u32) -> Decision {
        let secs = unix_seconds(now);
        let nanos = nanos_of(now);
        self.last_seen.fetch_max(secs, Ordering::Relaxed);
        let need = u64::from(cost.max(1));
        let mut state = self.lock();
        // First every check, then (all passed) every count: nothing is written for a refusal,
        // and nothing is allocated to hold the new state in between.
        for (i, rate) in self.rates.iter().enumerate() {
            if let Err(wait) = rate.check(state.tats[i], nanos, cost) {
                let statuses = self.statuses(&state, nanos, secs, Some((i, wait)));
                return refuse(statuses, Arc::clone(&rate.name), Duration::from_nanos(wait));
            }
        }
        for (i, (quota, window, name)) in self.quotas.iter().enumerate() {
            let (_, count) = current(state.counts[i], window.index(secs));
            if count + need > u64::from(*quota) {
                let at = self.rates.len() + i;
                let wait = window.seconds_left(secs);
                let statuses = self.statuses(&state, nanos, secs, Some((at, wait * 1_000_000_000)));
                return refuse(statuses, Arc::clone(name), Duration::from_secs(wait));
            }
        }
        for (i, rate) in self.rates.iter().enumerate() {
            state.tats[i] = rate
                .check(state.tats[i], nanos, cost)
                .unwrap_or(state.tats[i]);
        }
        for (i, (_, window, _)) in self.quotas.iter().enumerate() {
            let (index, count) = current(state.counts[i], window.index(secs));
            state.counts[i] = (index, count + u64::from(cost));
        }
        Decision {
            allowed: true,
            retry_after: None,
            limits: self.statuses(&state, nanos, secs, None),
            refused_by: None,
        }
    }

    /// Every limit's status in `state`; the one at `refused` (rates first, then quotas) is
    /// reported as refused with its wait in nanoseconds.
    fn statuses(
        &self,
        state: &State,
        nanos: u64,
        secs: u64,
        refused: Option<(usize, u64)>,
    ) -> Vec<LimitStatus> {
        let wait_of = |at: usize| refused.and_then(|(i, wait)| (i == at).then_some(wait));
        let mut statuses: Vec<LimitStatus> = self
            .rates
            .iter()
            .enumerate()
            .map(|(i, rate)| rate.status(state.tats[i], nanos, wait_of(i)))
            .collect();
        for (i, (quota, window, name)) in self.quotas.iter().enumerate() {
            let (index, count) = state.counts[i];
            let used = if index == window.index(secs) {
                count
            } else {
                0
            };
            let refused_here = wait_of(self.rates.len() + i).is_some();
            statuses.push(LimitStatus {
                policy: Arc::clone(name),
                quota: *quota,
                window: window.length(secs),
                remaining: if refused_here {
                    0
                } else {
                    u32::try_from(u64::from(*quota).saturating_sub(used)).unwrap_or(u32::MAX)
                },
                reset: window.seconds_left(secs),
            });
        }
        statuses
    }
}

/// A quota counter `(window, count)` as of window `index`: a later window starts at 0, and a
/// stored window newer than `index` (the clock stepped back) keeps its count.
fn current((stored, count): (u32, u64), index: u32) -> (u32, u64) {
    if stored >= index {
        (stored, count)
    } else {
        (index, 0)
    }
}

/// Nanoseconds since 1970 (0 before).
fn nanos_of(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn refuse(statuses: Vec<LimitStatus>, by: Arc<str>, wait: Duration) -> Decision {
    Decision {
        allowed: false,
        retry_after: Some(wait.max(Duration::from_secs(1))),
        limits: statuses,
        refused_by: Some(by),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn decide(
        limiter: &MemoryLimiter,
        bucket: &str,
        limits: &Limits,
        clock: &ManualClock,
    ) -> Decision {
        match limiter.check(bucket, limits, 1, clock.now()) {
            LimitCheck::Ready(Ok(decision)) => decision,
            _ => unreachable!(),
        }
    }

    fn setup() -> (MemoryLimiter, ManualClock) {
        // 2026-11-22 23:59:00 UTC
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(20_779 * 86_400 + 86_340));
        (MemoryLimiter::new(), clock)
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
        assert_eq!(&*refused.limits.last().unwrap().policy, "month");
        assert_eq!(refused.refused_by.as_deref(), Some("month"));
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

    fn check(limiter: &MemoryLimiter, limits: &Limits, cost: u32, clock: &ManualClock) -> Decision {
        match limiter.check("k", limits, cost, clock.now()) {
            LimitCheck::Ready(Ok(decision)) => decision,
            _ => unreachable!(),
        }
    }

    fn named(name: &str, limit: u32, window: u64) -> super::super::NamedLimit {
        super::super::NamedLimit::new(name, limit, window).unwrap()
    }

    #[test]
    fn every_named_limit_is_enforced_and_a_refusal_spends_none() {
        let (limiter, clock) = setup();
        let limits = Limits::UNLIMITED
            .with(named("burst", 3, 1))
            .with(named("hour", 5, 3600))
            .daily(100);
        for _ in 0..3 {
            assert!(check(&limiter, &limits, 1, &clock).allowed);
        }
        let refused = check(&limiter, &limits, 1, &clock);
        assert_eq!(refused.refused_by.as_deref(), Some("burst"));
        let (policy, state) = refused.headers();
        assert_eq!(
            policy,
            "\"burst\";q=3;w=1, \"hour\";q=5;w=3600, \"day\";q=100;w=86400"
        );
        assert!(
            state.starts_with("\"burst\";r=0;t=1, \"hour\";r=2;"),
            "{state}"
        );
        assert!(
            state.ends_with("\"day\";r=97;t=60"),
            "the refusal spent no day quota: {state}"
        );
        clock.advance(Duration::from_secs(1));
        assert!(
            check(&limiter, &limits, 2, &clock).allowed,
            "the burst is back; 2 of the hour's 5 left"
        );
        let refused = check(&limiter, &limits, 1, &clock);
        assert_eq!(refused.refused_by.as_deref(), Some("hour"));
        // The burst's one remaining request was not spent by the hour's refusal.
        assert_eq!(refused.limits[0].remaining, 1);
    }

    #[test]
    fn a_cost_counts_that_many_and_a_cost_of_zero_counts_none() {
        let (limiter, clock) = setup();
        let limits = Limits::UNLIMITED.with(named("burst", 10, 1)).daily(12);
        assert!(check(&limiter, &limits, 7, &clock).allowed);
        let free = check(&limiter, &limits, 0, &clock);
        assert!(free.allowed);
        assert_eq!(free.limits[0].remaining, 3, "nothing consumed");
        assert_eq!(free.limits[1].remaining, 5, "nothing consumed");
        assert_eq!(
            check(&limiter, &limits, 4, &clock).refused_by.as_deref(),
            Some("burst")
        );
        assert!(check(&limiter, &limits, 3, &clock).allowed);
        let exhausted = check(&limiter, &limits, 0, &clock);
        assert_eq!(
            exhausted.refused_by.as_deref(),
            Some("burst"),
            "0 is refused once spent"
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            check(&limiter, &limits, 3, &clock).refused_by.as_deref(),
            Some("day")
        );
        assert!(
            check(&limiter, &limits, 2, &clock).allowed,
            "the day's last 2"
        );
    }

    #[test]
    fn an_owner_bucket_takes_the_stricter_named_limit_and_keeps_its_counts() {
        let (limiter, clock) = setup();
        let loose = Limits::UNLIMITED
            .with(named("burst", 4, 1))
            .shared_by_owner();
        let strict = Limits::UNLIMITED
            .with(named("burst", 2, 1))
            .shared_by_owner();
        assert!(check(&limiter, &loose, 1, &clock).allowed);
        assert!(check(&limiter, &strict, 1, &clock).allowed);
        // Now 2 per second for both keys, and 2 were used.
        assert!(!check(&limiter, &loose, 1, &clock).allowed);
        assert!(!check(&limiter, &strict, 1, &clock).allowed);
    }

    #[test]
    fn a_limit_of_zero_refuses_everything() {
        let (limiter, clock) = setup();
        assert!(!decide(&limiter, "k", &Limits::per_minute(0), &clock).allowed);
        assert!(!decide(&limiter, "q", &Limits::UNLIMITED.daily(0), &clock).allowed);
    }
}
