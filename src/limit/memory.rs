//! The in-process limiter: per bucket, every smooth rate limit (GCRA) and both quota counters
//! behind one small lock, checked all or nothing; idle buckets dropped.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use super::{
    Bucket, Decision, LimitCheck, LimitStatus, Limiter, LimiterError, Limits, Rate, Window,
};
use crate::clock::unix_seconds;

/// Buckets are swept for idle ones once every this many checks.
const SWEEP_EVERY: u64 = 4096;

/// Rate limits and quotas counted in this process's memory.
///
/// Each bucket (a key, or an owner's keys) keeps its limits' state behind one lock of its own,
/// held for a few comparisons: a request is checked against every limit and counted in all of
/// them or, refused, in none, so a limit of N admits exactly N however many threads race, and a
/// refusal by one limit never spends another. A request counted in two buckets (its key's and
/// its owner's) holds both locks, taken in one global order, so it too is all or nothing. (The `governor` crate, used here before, checks one
/// limit at a time and cannot check without consuming; named limits and costs need both.) A
/// bucket is dropped once it is idle long enough to be as good as new (its bursts refilled, its
/// quota windows over), so memory follows the keys in use.
///
/// Every replica counts on its own: N replicas admit up to N times a limit. Use a shared limiter
/// for one limit across replicas.
///
/// ```
/// use std::time::SystemTime;
/// use tower_api_key::limit::{Bucket, Limiter, LimitCheck, Limits, MemoryLimiter};
///
/// let limiter = MemoryLimiter::new();
/// let limits = Limits::per_minute(2);
/// let allowed = |check| match check {
///     LimitCheck::Ready(Ok(decision)) => decision.allowed,
///     _ => unreachable!("the memory limiter decides at once"),
/// };
/// let now = SystemTime::now();
/// let (a, b) = ([Bucket::new("key:a", &limits)], [Bucket::new("key:b", &limits)]);
/// assert!(allowed(limiter.check(&a, 1, now)));
/// assert!(allowed(limiter.check(&a, 1, now)));
/// assert!(!allowed(limiter.check(&a, 1, now)));
/// assert!(allowed(limiter.check(&b, 1, now)), "buckets are apart");
/// ```
pub struct MemoryLimiter {
    buckets: DashMap<Box<str>, Arc<Counter>>,
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

    /// The counter of bucket `name`.
    fn counter(&self, name: &str) -> Arc<Counter> {
        if let Some(counter) = self.buckets.get(name) {
            return counter.clone();
        }
        self.buckets
            .entry(name.into())
            .or_insert_with(|| Arc::new(Counter::default()))
            .clone()
    }

    /// Counts a request in several buckets at once: every counter locked (in one global order,
    /// so two checks never wait for each other crosswise), every limit checked, then all counted
    /// or none.
    fn count_all(&self, buckets: &[Bucket<'_>], at: Instant, cost: u32) -> LimitCheck {
        let counters: Vec<Arc<Counter>> = buckets.iter().map(|b| self.counter(b.name)).collect();
        let mut order: Vec<usize> = (0..counters.len()).collect();
        order.sort_by_key(|&i| Arc::as_ptr(&counters[i]) as usize);
        if order
            .windows(2)
            .any(|w| Arc::ptr_eq(&counters[w[0]], &counters[w[1]]))
        {
            return LimitCheck::Ready(Err(LimiterError("one bucket is counted twice".into())));
        }
        let mut locked: Vec<Option<MutexGuard<'_, Cell>>> = counters.iter().map(|_| None).collect();
        for &i in &order {
            locked[i] = Some(counters[i].lock(&buckets[i], at));
        }
        let mut guards: Vec<MutexGuard<'_, Cell>> = locked.into_iter().flatten().collect();
        let mut cells: Vec<&mut Cell> = guards.iter_mut().map(|g| &mut **g).collect();
        LimitCheck::Ready(Ok(count_cells(&mut cells, at, cost)))
    }

    /// [`count_all`](Self::count_all) for two buckets (a key's and its owner's), without
    /// allocating for the locks.
    fn count_two(&self, a: &Bucket<'_>, b: &Bucket<'_>, at: Instant, cost: u32) -> LimitCheck {
        let (first, second) = (self.counter(a.name), self.counter(b.name));
        if Arc::ptr_eq(&first, &second) {
            return LimitCheck::Ready(Err(LimiterError("one bucket is counted twice".into())));
        }
        let (mut x, mut y) = if Arc::as_ptr(&first) < Arc::as_ptr(&second) {
            let x = first.lock(a, at);
            (x, second.lock(b, at))
        } else {
            let y = second.lock(b, at);
            (first.lock(a, at), y)
        };
        LimitCheck::Ready(Ok(count_cells(&mut [&mut *x, &mut *y], at, cost)))
    }

    /// Drops the buckets that are as good as new at `secs`.
    fn sweep(&self, secs: u64) {
        self.buckets.retain(|_, counter| !counter.is_fresh(secs));
    }
}

impl Limiter for MemoryLimiter {
    fn check(&self, buckets: &[Bucket<'_>], cost: u32, now: SystemTime) -> LimitCheck {
        let at = Instant::of(now);
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(at.secs);
        }
        match buckets {
            [] => LimitCheck::Ready(Ok(allow(Vec::new()))),
            [bucket] => {
                let counter = self.counter(bucket.name);
                let mut cell = counter.lock(bucket, at);
                LimitCheck::Ready(Ok(count_cells(&mut [&mut *cell], at, cost)))
            }
            [a, b] => self.count_two(a, b, at, cost),
            buckets => self.count_all(buckets, at, cost),
        }
    }
}

/// Counts a request in every one of `cells` (all locked), all or nothing: first every check, then
/// (all passed) every count, so nothing is written for a refusal. The statuses are every cell's,
/// in order.
fn count_cells(cells: &mut [&mut Cell], at: Instant, cost: u32) -> Decision {
    let count: usize = cells.iter().map(|c| c.rates.len() + c.quotas.len()).sum();
    let mut statuses = Vec::with_capacity(count);
    let refusal = cells
        .iter()
        .enumerate()
        .find_map(|(b, cell)| cell.refusal(at, cost).map(|r| (b, r)));
    if let Some((refused_in, refusal)) = refusal {
        for (b, cell) in cells.iter().enumerate() {
            let refused = (b == refused_in).then_some((refusal.at, refusal.wait));
            cell.statuses_into(&mut statuses, at, refused);
        }
        return refuse(statuses, refusal.by, refusal.wait);
    }
    for cell in cells.iter_mut() {
        cell.commit(at, cost);
        cell.statuses_into(&mut statuses, at, None);
    }
    allow(statuses)
}

/// One moment, as the counters read it.
#[derive(Clone, Copy)]
struct Instant {
    secs: u64,
    nanos: u64,
}

impl Instant {
    fn of(at: SystemTime) -> Self {
        Instant {
            secs: unix_seconds(at),
            nanos: at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        }
    }
}

/// Why a bucket refuses a request: which of its limits (rates first, then quotas), how long to
/// wait (nanoseconds), and the limit's name.
struct Refusal {
    at: usize,
    wait: u64,
    by: Arc<str>,
}

/// One bucket: its limits and their state behind one lock, and when it was last used.
#[derive(Default)]
struct Counter {
    cell: Mutex<Cell>,
    last_seen: AtomicU64,
    /// Seconds the slowest burst takes to refill completely, for the sweep.
    refill: AtomicU64,
    /// The window ends of the quotas, for the sweep: whether it counts days, and months.
    quotas: AtomicU64,
}

/// A bucket's limits, ready to check, and what it counts: per rate, its theoretical arrival
/// time (nanoseconds since 1970); per quota, its window's index and the count in it.
#[derive(Default)]
struct Cell {
    limits: Limits,
    label: Box<str>,
    rates: Box<[Rate]>,
    /// The quotas: limit, window, and the name in statuses.
    quotas: Box<[(u32, Window, Arc<str>)]>,
    tats: Vec<u64>,
    counts: Vec<(u32, u64)>,
}

impl Counter {
    /// The bucket's cell, under `bucket`'s limits from now on. A key's bucket whose limits
    /// changed (a new plan) starts over. A bucket shared by an owner's keys keeps what each of
    /// its limits had used, whichever key's copy of the limits comes: alternating between keys
    /// with different limits, or between copies of an owner's limits from before and after a
    /// change, can never reset it, and each request is checked against its own copy (as in
    /// [`RedisLimiter`](super::RedisLimiter)).
    fn lock(&self, bucket: &Bucket<'_>, at: Instant) -> MutexGuard<'_, Cell> {
        self.last_seen.fetch_max(at.secs, Ordering::Relaxed);
        // The state is written only once every check passed: a panic cannot leave it half done.
        let mut cell = self.cell.lock().unwrap_or_else(PoisonError::into_inner);
        // A bucket just made holds the default cell: unlimited, unlabelled, as `Cell::new` of
        // those would be.
        if cell.limits != *bucket.limits || *cell.label != *bucket.label {
            let next = Cell::new(bucket.limits, bucket.label);
            let next = if bucket.limits.shared_by_owner {
                next.carrying(&cell, at.nanos)
            } else {
                next
            };
            self.refill.store(next.refill_seconds(), Ordering::Relaxed);
            let days = next.quotas.iter().any(|q| q.1 == Window::Day);
            let months = next.quotas.iter().any(|q| q.1 == Window::Month);
            self.quotas
                .store(u64::from(days) | u64::from(months) << 1, Ordering::Relaxed);
            *cell = next;
        }
        cell
    }

    fn is_fresh(&self, secs: u64) -> bool {
        let last = self.last_seen.load(Ordering::Relaxed);
        let quotas = self.quotas.load(Ordering::Relaxed);
        let over =
            |window: Window, bit: u64| quotas & bit == 0 || window.index(last) < window.index(secs);
        last + self.refill.load(Ordering::Relaxed) < secs
            && over(Window::Day, 1)
            && over(Window::Month, 2)
    }
}

impl Cell {
    fn new(limits: &Limits, label: &str) -> Self {
        let rates: Box<[Rate]> = limits.rates(label).into();
        let quotas: Box<[(u32, Window, Arc<str>)]> = [
            (limits.daily, Window::Day, "day"),
            (limits.monthly, Window::Month, "month"),
        ]
        .into_iter()
        .filter_map(|(quota, window, name)| {
            quota.map(|q| (q, window, super::labelled(label, name)))
        })
        .collect();
        Cell {
            limits: limits.clone(),
            label: label.into(),
            tats: vec![0; rates.len()],
            counts: vec![(0, 0); quotas.len()],
            rates,
            quotas,
        }
    }

    /// This cell with `old`'s counts: what a rate had used at `now` (in requests) is used of
    /// the same name's rate here, and a quota's count carries to the same window's quota.
    fn carrying(mut self, old: &Cell, now: u64) -> Cell {
        for (i, rate) in self.rates.iter().enumerate() {
            if let Some(j) = old.rates.iter().position(|r| r.name == rate.name) {
                let used = match old.rates[j].interval {
                    0 => 0,
                    interval => old.tats[j].saturating_sub(now).div_ceil(interval),
                };
                self.tats[i] = now.saturating_add(used.saturating_mul(rate.interval));
            }
        }
        for (i, (_, window, _)) in self.quotas.iter().enumerate() {
            if let Some(j) = old.quotas.iter().position(|(_, w, _)| w == window) {
                self.counts[i] = old.counts[j];
            }
        }
        self
    }

    /// Seconds the slowest burst takes to refill completely.
    fn refill_seconds(&self) -> u64 {
        self.rates
            .iter()
            .map(Rate::refill_seconds)
            .max()
            .unwrap_or(60)
    }

    /// The first of this bucket's limits that refuses a request costing `cost`, if any.
    fn refusal(&self, at: Instant, cost: u32) -> Option<Refusal> {
        let need = u64::from(cost.max(1));
        for (i, rate) in self.rates.iter().enumerate() {
            if let Err(wait) = rate.check(self.tats[i], at.nanos, cost) {
                let by = Arc::clone(&rate.name);
                return Some(Refusal { at: i, wait, by });
            }
        }
        for (i, (quota, window, name)) in self.quotas.iter().enumerate() {
            let (_, count) = current(self.counts[i], window.index(at.secs));
            if count + need > u64::from(*quota) {
                let wait = window.seconds_left(at.secs).saturating_mul(1_000_000_000);
                let by = Arc::clone(name);
                return Some(Refusal {
                    at: self.rates.len() + i,
                    wait,
                    by,
                });
            }
        }
        None
    }

    /// Counts a request costing `cost` that every limit let through.
    fn commit(&mut self, at: Instant, cost: u32) {
        for (i, rate) in self.rates.iter().enumerate() {
            self.tats[i] = rate
                .check(self.tats[i], at.nanos, cost)
                .unwrap_or(self.tats[i]);
        }
        for (i, (_, window, _)) in self.quotas.iter().enumerate() {
            let (index, count) = current(self.counts[i], window.index(at.secs));
            self.counts[i] = (index, count + u64::from(cost));
        }
    }

    /// Adds every limit's status to `statuses`; the one at `refused` (rates first, then quotas)
    /// is reported as refused with its wait in nanoseconds.
    fn statuses_into(
        &self,
        statuses: &mut Vec<LimitStatus>,
        at: Instant,
        refused: Option<(usize, u64)>,
    ) {
        let wait_of = |i: usize| refused.and_then(|(r, wait)| (r == i).then_some(wait));
        statuses.extend(
            self.rates
                .iter()
                .enumerate()
                .map(|(i, rate)| rate.status(self.tats[i], at.nanos, wait_of(i))),
        );
        for (i, (quota, window, name)) in self.quotas.iter().enumerate() {
            let (index, count) = self.counts[i];
            let used = if index == window.index(at.secs) {
                count
            } else {
                0
            };
            let refused_here = wait_of(self.rates.len() + i).is_some();
            statuses.push(LimitStatus {
                policy: Arc::clone(name),
                quota: *quota,
                window: window.length(at.secs),
                remaining: if refused_here {
                    0
                } else {
                    u32::try_from(u64::from(*quota).saturating_sub(used)).unwrap_or(u32::MAX)
                },
                reset: window.seconds_left(at.secs),
            });
        }
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

/// Refused by limit `by`, which lets a request through in `wait` nanoseconds.
fn refuse(statuses: Vec<LimitStatus>, by: Arc<str>, wait: u64) -> Decision {
    Decision {
        allowed: false,
        retry_after: Some(Duration::from_nanos(wait).max(Duration::from_secs(1))),
        limits: statuses,
        refused_by: Some(by),
    }
}

fn allow(statuses: Vec<LimitStatus>) -> Decision {
    Decision {
        allowed: true,
        retry_after: None,
        limits: statuses,
        refused_by: None,
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
        match limiter.check(&[Bucket::new(bucket, limits)], 1, clock.now()) {
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
        match limiter.check(&[Bucket::new("k", limits)], cost, clock.now()) {
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
    fn a_shared_bucket_checks_each_copy_of_its_limits_on_one_count() {
        let (limiter, clock) = setup();
        let loose = Limits::UNLIMITED
            .with(named("burst", 4, 1))
            .daily(10)
            .shared_by_owner();
        let strict = Limits::UNLIMITED
            .with(named("burst", 2, 1))
            .daily(10)
            .shared_by_owner();
        assert!(check(&limiter, &loose, 1, &clock).allowed);
        assert!(check(&limiter, &strict, 1, &clock).allowed);
        // 2 used: the strict copy refuses, the loose one has 2 more; switching resets nothing.
        assert!(!check(&limiter, &strict, 1, &clock).allowed);
        assert!(check(&limiter, &loose, 1, &clock).allowed);
        assert!(check(&limiter, &loose, 1, &clock).allowed);
        let refused = check(&limiter, &loose, 1, &clock);
        assert_eq!(refused.refused_by.as_deref(), Some("burst"));
        assert_eq!(
            refused.limits[1].remaining, 6,
            "the day counted 4 across both copies"
        );
    }

    #[test]
    fn a_key_bucket_whose_limits_changed_starts_over() {
        let (limiter, clock) = setup();
        assert!(check(&limiter, &Limits::per_minute(1), 1, &clock).allowed);
        assert!(!check(&limiter, &Limits::per_minute(1), 1, &clock).allowed);
        assert!(
            check(&limiter, &Limits::per_minute(2), 1, &clock).allowed,
            "a new plan"
        );
    }

    fn check_both(
        limiter: &MemoryLimiter,
        key: &Limits,
        owner: &Limits,
        clock: &ManualClock,
    ) -> Decision {
        let buckets = [
            Bucket::new("key:a", key),
            Bucket::new("owner-policy:acme", owner).labelled("owner."),
        ];
        match limiter.check(&buckets, 1, clock.now()) {
            LimitCheck::Ready(Ok(decision)) => decision,
            _ => unreachable!(),
        }
    }

    #[test]
    fn two_buckets_are_counted_all_or_nothing_and_named_apart() {
        let (limiter, clock) = setup();
        let key = Limits::per_minute(5);
        let owner = Limits::per_minute(3).shared_by_owner();
        for _ in 0..3 {
            assert!(check_both(&limiter, &key, &owner, &clock).allowed);
        }
        let refused = check_both(&limiter, &key, &owner, &clock);
        assert_eq!(refused.refused_by.as_deref(), Some("owner.minute"));
        let (policy, state) = refused.headers();
        assert_eq!(policy, "\"minute\";q=5;w=60, \"owner.minute\";q=3;w=60");
        assert!(
            state.starts_with("\"minute\";r=2;"),
            "the key's 2 are left: {state}"
        );
        // The owner's limit raised: it counts on from its 3, the key from its own.
        let raised = Limits::per_minute(4).shared_by_owner();
        assert!(check_both(&limiter, &key, &raised, &clock).allowed);
        let refused = check_both(&limiter, &key, &raised, &clock);
        assert_eq!(refused.refused_by.as_deref(), Some("owner.minute"));
        // The key's own limit refuses before the owner's is spent.
        let big = Limits::per_minute(100).shared_by_owner();
        assert!(check_both(&limiter, &key, &big, &clock).allowed);
        let refused = check_both(&limiter, &key, &big, &clock);
        assert_eq!(refused.refused_by.as_deref(), Some("minute"));
        assert_eq!(
            refused.limits[1].remaining, 95,
            "the owner's count did not move"
        );
        let twice = [Bucket::new("k", &key), Bucket::new("k", &key)];
        assert!(matches!(
            limiter.check(&twice, 1, clock.now()),
            LimitCheck::Ready(Err(_))
        ));
        let thrice = [twice[0], Bucket::new("j", &key), twice[1]];
        assert!(matches!(
            limiter.check(&thrice, 1, clock.now()),
            LimitCheck::Ready(Err(_))
        ));
    }

    #[test]
    fn three_buckets_are_counted_all_or_nothing_too() {
        let (limiter, clock) = setup();
        let (two, three, four) = (
            Limits::per_minute(2),
            Limits::per_minute(3),
            Limits::per_minute(4),
        );
        let buckets = [
            Bucket::new("c", &four),
            Bucket::new("a", &three),
            Bucket::new("b", &two).labelled("team."),
        ];
        let decide = || match limiter.check(&buckets, 1, clock.now()) {
            LimitCheck::Ready(Ok(decision)) => decision,
            _ => unreachable!(),
        };
        assert!(decide().allowed);
        assert!(decide().allowed);
        let refused = decide();
        assert_eq!(refused.refused_by.as_deref(), Some("team.minute"));
        let remaining: Vec<u32> = refused.limits.iter().map(|s| s.remaining).collect();
        assert_eq!(
            remaining,
            [2, 1, 0],
            "the others spent nothing for the refusal"
        );
    }

    #[test]
    fn a_limit_of_zero_refuses_everything() {
        let (limiter, clock) = setup();
        assert!(!decide(&limiter, "k", &Limits::per_minute(0), &clock).allowed);
        assert!(!decide(&limiter, "q", &Limits::UNLIMITED.daily(0), &clock).allowed);
    }
}
