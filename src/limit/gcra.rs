//! One smooth rate limit (GCRA, the generic cell rate algorithm) as the in-memory limiter checks
//! it; the Redis limiter runs the same arithmetic in its script.
//!
//! A limit of `quota` per `window` lets `burst` requests through at once, then one every
//! `interval = window / quota`. Its whole state is one time, the theoretical arrival time (`tat`):
//! a request costing `n` is let through when `max(tat, now) + n·interval ≤ now + burst·interval`,
//! and moves `tat` to that left side.

use std::sync::Arc;

use super::LimitStatus;

const NANOS: u64 = 1_000_000_000;

/// One smooth rate limit, ready to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rate {
    pub(crate) name: Arc<str>,
    /// Requests per window.
    pub(crate) quota: u32,
    /// Seconds.
    pub(crate) window: u64,
    /// Requests at once.
    pub(crate) burst: u32,
    /// Nanoseconds between two requests at the steady pace; 0 for a quota of 0.
    pub(crate) interval: u64,
}

impl Rate {
    pub(crate) fn new(name: Arc<str>, quota: u32, window: u64, burst: u32) -> Rate {
        let interval = if quota == 0 {
            0
        } else {
            // At least a nanosecond: a huge quota is a fast pace, never a quota of 0.
            (window.saturating_mul(NANOS) / u64::from(quota)).max(1)
        };
        Rate {
            name,
            quota,
            window,
            burst,
            interval,
        }
    }

    /// Checks a request costing `cost` at `now` (nanoseconds) against `tat`: the new `tat` to
    /// store, or how many nanoseconds until it would pass. A cost of 0 is checked as 1 and leaves
    /// `tat` as it was.
    pub(crate) fn check(&self, tat: u64, now: u64, cost: u32) -> Result<u64, u64> {
        let never = self.window.saturating_mul(NANOS);
        let need = u64::from(cost.max(1));
        if self.interval == 0 || need > u64::from(self.burst) {
            return Err(never);
        }
        let base = tat.max(now);
        let after = base.saturating_add(need.saturating_mul(self.interval));
        let limit = now.saturating_add(u64::from(self.burst).saturating_mul(self.interval));
        if after > limit {
            return Err(after - limit);
        }
        Ok(if cost == 0 { tat } else { after })
    }

    /// Where this limit stands at `now` with `tat`; `wait` for a refused request.
    pub(crate) fn status(&self, tat: u64, now: u64, wait: Option<u64>) -> LimitStatus {
        let used = tat.saturating_sub(now);
        let capacity = u64::from(self.burst).saturating_mul(self.interval);
        let remaining = match (wait, self.interval) {
            (Some(_), _) | (_, 0) => 0,
            (None, interval) => capacity.saturating_sub(used) / interval,
        };
        let reset = wait.unwrap_or(used);
        LimitStatus {
            policy: Arc::clone(&self.name),
            quota: self.quota,
            window: self.window,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset: reset.div_ceil(NANOS),
        }
    }

    /// Seconds a spent burst takes to refill.
    pub(crate) fn refill_seconds(&self) -> u64 {
        u64::from(self.burst)
            .saturating_mul(self.interval)
            .div_ceil(NANOS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(quota: u32, window: u64, burst: u32) -> Rate {
        Rate::new("r".into(), quota, window, burst)
    }

    #[test]
    fn a_burst_then_the_pace() {
        let r = rate(10, 1, 10); // 10 per second: one every 100 ms
        let mut tat = 0;
        let now = 5 * NANOS;
        for _ in 0..10 {
            tat = r.check(tat, now, 1).unwrap();
        }
        assert_eq!(r.check(tat, now, 1), Err(100_000_000));
        assert_eq!(r.status(tat, now, None).remaining, 0);
        assert!(r.check(tat, now + 100_000_000, 1).is_ok());
    }

    #[test]
    fn a_cost_takes_that_many_and_zero_takes_none() {
        let r = rate(10, 1, 10);
        let now = NANOS;
        let tat = r.check(0, now, 7).unwrap();
        assert_eq!(r.status(tat, now, None).remaining, 3);
        assert_eq!(
            r.check(tat, now, 0),
            Ok(tat),
            "a cost of 0 consumes nothing"
        );
        assert!(r.check(tat, now, 4).is_err(), "4 do not fit in 3");
        let tat = r.check(tat, now, 3).unwrap();
        assert!(r.check(tat, now, 0).is_err(), "exhausted: 0 is refused too");
        assert_eq!(
            r.check(0, now, 11),
            Err(NANOS),
            "more than the burst never passes"
        );
    }

    #[test]
    fn a_huge_quota_is_a_fast_pace() {
        let r = rate(u32::MAX, 1, u32::MAX);
        assert_eq!(r.interval, 1);
        assert!(r.check(0, NANOS, 1).is_ok());
    }

    #[test]
    fn a_quota_of_zero_refuses_everything() {
        let r = rate(0, 60, 0);
        assert_eq!(r.check(0, NANOS, 1), Err(60 * NANOS));
        assert_eq!(r.check(0, NANOS, 0), Err(60 * NANOS));
    }
}
