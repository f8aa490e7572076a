//! Credits: a key's budget of requests, spent by each request's cost in the store itself (so
//! several replicas never overspend) and refilled on a schedule.

use serde::{Deserialize, Serialize};

use super::calendar::civil_from_days;

/// A key's credits: what is left, and how it is refilled. Each admitted request spends its cost
/// ([`Costs`](super::Costs)) in one atomic step in the store; a key with too few left is refused
/// with 429 `USAGE_EXCEEDED`.
///
/// ```
/// use tower_api_key::{limit::{Credits, RefillPeriod}, NewKey};
///
/// // 1,000 requests, back to 1,000 on the 1st of each month (UTC).
/// let trial = NewKey::new("trial").credits(Credits::refilled(1_000, RefillPeriod::Monthly { day: 1 })?);
/// // 50 requests, once.
/// let once = NewKey::new("demo").credits(Credits::once(50));
/// # Ok::<(), tower_api_key::limit::InvalidLimit>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Credits {
    /// What is left.
    pub remaining: u64,
    /// How it is refilled, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
    /// The refill period `remaining` belongs to ([`RefillPeriod::index`]); the store moves it
    /// when it refills.
    #[serde(default)]
    pub period: u32,
}

/// Refilling credits to `amount` at the start of each period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Refill {
    /// What `remaining` is set to.
    pub amount: u64,
    /// When.
    pub every: RefillPeriod,
}

/// When credits are refilled: each UTC day, or each month on a given day (1 to 28, so every
/// month has it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefillPeriod {
    /// At 00:00 UTC.
    Daily,
    /// At 00:00 UTC on `day` of each month.
    Monthly {
        /// 1 to 28.
        day: u8,
    },
}

impl Credits {
    /// `amount` credits, never refilled.
    pub fn once(amount: u64) -> Self {
        Credits {
            remaining: amount,
            refill: None,
            period: 0,
        }
    }

    /// `amount` credits, refilled to `amount` every `period`.
    ///
    /// # Errors
    /// [`InvalidLimit::RefillDay`](super::InvalidLimit::RefillDay) for a monthly day that is
    /// not 1 to 28.
    pub fn refilled(amount: u64, every: RefillPeriod) -> Result<Self, super::InvalidLimit> {
        every.validate()?;
        Ok(Credits {
            remaining: amount,
            refill: Some(Refill { amount, every }),
            period: 0,
        })
    }

    /// What is left, and the period it belongs to, in refill period `period`: refilled if
    /// that period is later than theirs.
    pub(crate) fn as_of_period(&self, period: u32) -> (u64, u32) {
        match self.refill {
            Some(refill) if period > self.period => (refill.amount, period),
            _ => (self.remaining, self.period),
        }
    }

    /// These credits as of `at`: refilled if a refill period began since they were last spent.
    pub(crate) fn refilled_by(self, at: std::time::SystemTime) -> Self {
        let Some(refill) = self.refill else {
            return self;
        };
        let (remaining, period) =
            self.as_of_period(refill.every.index(crate::clock::unix_seconds(at)));
        Credits {
            remaining,
            period,
            ..self
        }
    }

    /// These credits as a store should first keep them at `secs` (Unix seconds): counted in
    /// the refill period of that time, so a later top-up is not lost to a refill.
    pub(crate) fn starting(mut self, secs: u64) -> Self {
        if let Some(refill) = self.refill {
            self.period = refill.every.index(secs);
        }
        self
    }
}

impl RefillPeriod {
    /// The number of the refill period `secs` (Unix seconds) falls in: days since 1970, or
    /// months since year 0 counted from `day`.
    pub fn index(self, secs: u64) -> u32 {
        let days = secs / 86_400;
        match self {
            RefillPeriod::Daily => u32::try_from(days).unwrap_or(u32::MAX),
            RefillPeriod::Monthly { day } => {
                let (year, month, dom) = civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
                let months = year * 12 + i64::from(month) - 1;
                let months = if dom < u32::from(day) {
                    months - 1
                } else {
                    months
                };
                u32::try_from(months.max(0)).unwrap_or(u32::MAX)
            }
        }
    }

    pub(crate) fn validate(self) -> Result<(), super::InvalidLimit> {
        match self {
            RefillPeriod::Monthly { day } if !(1..=28).contains(&day) => {
                Err(super::InvalidLimit::RefillDay(day))
            }
            _ => Ok(()),
        }
    }

    /// `daily` or `monthly:D`, as stores and the command line tool write it.
    pub fn to_text(self) -> String {
        match self {
            RefillPeriod::Daily => "daily".to_owned(),
            RefillPeriod::Monthly { day } => format!("monthly:{day}"),
        }
    }

    /// Reads [`to_text`](Self::to_text)'s form.
    ///
    /// # Errors
    /// [`InvalidLimit::Malformed`](super::InvalidLimit::Malformed) or
    /// [`InvalidLimit::RefillDay`](super::InvalidLimit::RefillDay).
    pub fn from_text(text: &str) -> Result<Self, super::InvalidLimit> {
        let period = match text.trim() {
            "daily" => RefillPeriod::Daily,
            "monthly" => RefillPeriod::Monthly { day: 1 },
            other => {
                let day = other
                    .strip_prefix("monthly:")
                    .and_then(|d| d.parse().ok())
                    .ok_or_else(|| super::InvalidLimit::Malformed(text.to_owned()))?;
                RefillPeriod::Monthly { day }
            }
        };
        period.validate()?;
        Ok(period)
    }
}

/// What spending credits came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spend {
    /// Spent; this many are left (the fewer, of a key's and its owner's).
    Spent {
        /// Credits left.
        remaining: u64,
    },
    /// Too few left: nothing was spent.
    Exhausted,
    /// Neither the key nor its owner has credits (any more), or there is no record.
    NoCredits,
}

/// The credits one request spends, in one atomic step: its cost, from its key's credits and its
/// owner's, all or nothing (too few in either, and neither is spent). An account named here that
/// has no credits (any more) is passed over.
///
/// ```
/// use tower_api_key::limit::{Account, Charge};
///
/// let charge = Charge {
///     cost: 2,
///     key: Some(Account { id: "3kTMd9Qx2bLp", period: 0 }),
///     owner: Some(Account { id: "acme", period: 20_779 }),
/// };
/// assert_eq!(charge.accounts().count(), 2);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge<'a> {
    /// What the request costs ([`Costs`](super::Costs)). A cost of 0 spends nothing, but is
    /// [`Spend::Exhausted`] where none are left.
    pub cost: u32,
    /// The key's credits, when its record has some.
    pub key: Option<Account<'a>>,
    /// Its owner's credits, when the owner's record has some.
    pub owner: Option<Account<'a>>,
}

/// Whose credits to spend: a key id or an owner, and the
/// [`RefillPeriod::index`] of now for its credits' refill (0 for credits never refilled); credits
/// of an earlier period are refilled first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account<'a> {
    /// The key id, or the owner.
    pub id: &'a str,
    /// The refill period of now.
    pub period: u32,
}

impl<'a> Charge<'a> {
    /// The key's account, then the owner's, of those named.
    pub fn accounts(&self) -> impl Iterator<Item = Account<'a>> {
        self.key.into_iter().chain(self.owner)
    }
}

impl Credits {
    /// What is left, and the period it belongs to, once `cost` is spent in refill period
    /// `period`; `None` when too few are left (a cost of 0 needs 1).
    pub(crate) fn after_spending(&self, period: u32, cost: u32) -> Option<(u64, u32)> {
        let (remaining, period) = self.as_of_period(period);
        (remaining >= u64::from(cost.max(1))).then(|| (remaining - u64::from(cost), period))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    /// 2026-11-22 00:00:00 UTC.
    const NOV_22: u64 = 20_779 * DAY;

    #[test]
    fn a_daily_period_is_a_utc_day() {
        let period = RefillPeriod::Daily;
        assert_eq!(period.index(NOV_22), period.index(NOV_22 + DAY - 1));
        assert_eq!(period.index(NOV_22) + 1, period.index(NOV_22 + DAY));
    }

    #[test]
    fn a_monthly_period_starts_on_its_day() {
        let on_15 = RefillPeriod::Monthly { day: 15 };
        // Nov 22 and Dec 14 are in one period; Dec 15 starts the next.
        let dec_14 = NOV_22 + 22 * DAY;
        assert_eq!(on_15.index(NOV_22), on_15.index(dec_14));
        assert_eq!(on_15.index(NOV_22) + 1, on_15.index(dec_14 + DAY));
        let on_1 = RefillPeriod::Monthly { day: 1 };
        assert_eq!(
            on_1.index(NOV_22) + 1,
            on_1.index(NOV_22 + 9 * DAY),
            "Dec 1"
        );
    }

    #[test]
    fn credits_refill_once_a_period_began() {
        let mut credits = Credits::refilled(10, RefillPeriod::Daily).unwrap();
        credits.remaining = 2;
        credits.period = RefillPeriod::Daily.index(NOV_22);
        let today = credits.period;
        assert_eq!(credits.as_of_period(today), (2, today));
        assert_eq!(credits.as_of_period(today + 1), (10, today + 1));
        assert_eq!(Credits::once(5).as_of_period(today), (5, 0));
        let started = Credits::refilled(10, RefillPeriod::Daily)
            .unwrap()
            .starting(NOV_22 + 60);
        assert_eq!(started.period, today);
    }

    #[test]
    fn periods_read_back_from_text_and_bad_days_are_refused() {
        for period in [RefillPeriod::Daily, RefillPeriod::Monthly { day: 28 }] {
            assert_eq!(RefillPeriod::from_text(&period.to_text()), Ok(period));
        }
        assert!(RefillPeriod::from_text("monthly:29").is_err());
        assert!(RefillPeriod::from_text("monthly:0").is_err());
        assert!(RefillPeriod::from_text("weekly").is_err());
        assert!(Credits::refilled(1, RefillPeriod::Monthly { day: 31 }).is_err());
    }
}
