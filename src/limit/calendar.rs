//! UTC calendar windows for quotas: which day and month a time falls in, and when they end.

/// A quota window: a UTC calendar day or month.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Window {
    Day,
    Month,
}

const DAY: u64 = 86_400;

impl Window {
    /// The window's number for a time `secs` seconds after 1970: days since 1970, or months since
    /// year 0.
    pub(crate) fn index(self, secs: u64) -> u32 {
        let days = secs / DAY;
        match self {
            Window::Day => days as u32,
            Window::Month => {
                let (year, month, _) = civil_from_days(days as i64);
                (year * 12 + i64::from(month) - 1) as u32
            }
        }
    }

    /// Seconds from `secs` to the end of its window (at least 1).
    pub(crate) fn seconds_left(self, secs: u64) -> u64 {
        (self.end(secs) - secs).max(1)
    }

    /// The window's length in seconds, for the one `secs` falls in.
    pub(crate) fn length(self, secs: u64) -> u64 {
        self.end(secs) - self.start(secs)
    }

    fn start(self, secs: u64) -> u64 {
        let days = secs / DAY;
        match self {
            Window::Day => days * DAY,
            Window::Month => {
                let (year, month, _) = civil_from_days(days as i64);
                days_from_civil(year, month, 1) as u64 * DAY
            }
        }
    }

    fn end(self, secs: u64) -> u64 {
        let days = secs / DAY;
        match self {
            Window::Day => (days + 1) * DAY,
            Window::Month => {
                let (year, month, _) = civil_from_days(days as i64);
                let (year, month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                days_from_civil(year, month, 1) as u64 * DAY
            }
        }
    }
}

// Howard Hinnant's algorithms (public domain): the proleptic Gregorian calendar to and from days
// since 1970-01-01.

pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip_and_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(days_from_civil(2026, 11, 22), 20_779);
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn windows_end_at_utc_midnight_and_month_start() {
        let nov_22_2026_noon = 20_779 * DAY + 12 * 3600;
        assert_eq!(Window::Day.seconds_left(nov_22_2026_noon), 12 * 3600);
        assert_eq!(Window::Day.length(nov_22_2026_noon), DAY);
        // November has 30 days; 8.5 days are left after noon on the 22nd.
        assert_eq!(
            Window::Month.seconds_left(nov_22_2026_noon),
            8 * DAY + 12 * 3600
        );
        assert_eq!(Window::Month.length(nov_22_2026_noon), 30 * DAY);
        let feb_2024 = days_from_civil(2024, 2, 10) as u64 * DAY;
        assert_eq!(Window::Month.length(feb_2024), 29 * DAY);
        let last_second_of_2026 = days_from_civil(2027, 1, 1) as u64 * DAY - 1;
        assert_eq!(
            Window::Month.index(last_second_of_2026) + 1,
            Window::Month.index(last_second_of_2026 + 1)
        );
        assert_eq!(
            Window::Day.index(last_second_of_2026) + 1,
            Window::Day.index(last_second_of_2026 + 1)
        );
    }
}
