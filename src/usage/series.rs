//! One subject's usage over time (a key's, or the unauthenticated requests'): buckets per
//! minute, hour and day, each kept for its resolution's retention.
//!
//! A request is recorded in its minute's bucket only. The newest minute is open; every older one
//! has been merged into its hour and its day when the next minute began, and packed.
//! A request that arrives late, for a minute already merged, is recorded in all three.

use std::collections::VecDeque;

use super::bucket::{Bucket, Sample};
use super::report::Resolution;

/// Buckets of one resolution, oldest first, each with its index (seconds since 1970 divided by
/// the resolution's length).
#[derive(Debug, Default)]
struct Ring {
    buckets: VecDeque<(u64, Box<Bucket>)>,
    /// Every bucket before this index that is not kept was flushed and dropped (or never
    /// held a request): one made again is partial.
    dropped_before: u64,
}

impl Ring {
    /// The bucket of `index`, made if missing (in order); `None` if it is older than the first
    /// one kept and `oldest` says it is past retention.
    fn bucket(&mut self, index: u64, oldest: u64) -> Option<&mut Bucket> {
        if index < oldest {
            return None;
        }
        let at = match self.find(index) {
            Ok(at) => at,
            Err(at) => {
                let bucket = Bucket {
                    partial: index < self.dropped_before,
                    ..Bucket::default()
                };
                self.buckets.insert(at, (index, Box::new(bucket)));
                at
            }
        };
        self.buckets.get_mut(at).map(|(_, bucket)| &mut **bucket)
    }

    /// Drops the buckets older than `oldest`.
    fn prune(&mut self, oldest: u64) {
        while self.buckets.front().is_some_and(|(i, _)| *i < oldest) {
            self.buckets.pop_front();
        }
    }

    /// Drops the buckets before index `before` that are in the store (unchanged since
    /// written), oldest first, up to the first that is not; returns how many.
    fn drop_written(&mut self, before: u64) -> usize {
        let mut dropped = 0;
        while let Some((index, _)) = self
            .buckets
            .front()
            .filter(|(i, bucket)| *i < before && !bucket.dirty)
        {
            self.dropped_before = self.dropped_before.max(index + 1);
            self.buckets.pop_front();
            dropped += 1;
        }
        dropped
    }

    /// The bucket of `index`, if kept.
    fn get(&self, index: u64) -> Option<&Bucket> {
        let at = self.find(index).ok()?;
        self.buckets.get(at).map(|(_, bucket)| &**bucket)
    }

    fn get_mut(&mut self, index: u64) -> Option<&mut Bucket> {
        let at = self.find(index).ok()?;
        self.buckets.get_mut(at).map(|(_, bucket)| &mut **bucket)
    }

    /// Where the bucket of `index` is (`Ok`), or would go (`Err`).
    fn find(&self, index: u64) -> Result<usize, usize> {
        self.buckets.binary_search_by_key(&index, |(i, _)| *i)
    }
}

/// One subject's buckets.
#[derive(Debug, Default)]
pub(crate) struct Series {
    /// The owner of the key, as its latest request said.
    pub(crate) owner: Option<Box<str>>,
    minutes: Ring,
    hours: Ring,
    days: Ring,
}

/// The index of the bucket of `resolution` that holds second `secs`.
fn index(secs: u64, resolution: Resolution) -> u64 {
    secs / resolution.seconds()
}

/// The oldest index of `resolution` kept when the newest second seen is `secs`.
fn oldest(secs: u64, resolution: Resolution) -> u64 {
    index(
        secs.saturating_sub(resolution.retention().as_secs()),
        resolution,
    )
}

impl Series {
    /// A series made after the series of some keys were forgotten (dropped from memory with
    /// all their buckets written, each over by second `forgotten`; 0 if none was): each bucket
    /// over by then may have a row of this replica in the store, so one made is partial.
    pub(crate) fn after(forgotten: u64) -> Series {
        let ring = |resolution| Ring {
            buckets: VecDeque::new(),
            dropped_before: index(forgotten, resolution),
        };
        Series {
            owner: None,
            minutes: ring(Resolution::Minute),
            hours: ring(Resolution::Hour),
            days: ring(Resolution::Day),
        }
    }

    /// Records `sample` of second `secs`; `max_endpoints` bounds each bucket's endpoints.
    pub(crate) fn record(&mut self, sample: &Sample<'_>, secs: u64, max_endpoints: usize) {
        self.add(secs, |bucket| bucket.record(sample, max_endpoints));
    }

    /// Adds `counts`, requests of the minute of second `secs` (a thread's run of them), as if
    /// each had been recorded.
    pub(crate) fn merge(&mut self, counts: &Bucket, secs: u64, max_endpoints: usize) {
        self.add(secs, |bucket| bucket.merge(counts, max_endpoints));
    }

    /// Adds to the buckets of second `secs` with `add`: its minute's, and its hour's and day's
    /// too when the minute was closed already.
    fn add(&mut self, secs: u64, mut add: impl FnMut(&mut Bucket)) {
        let minute = index(secs, Resolution::Minute);
        if self.minutes.buckets.is_empty() && minute < self.minutes.dropped_before {
            // The first request of a series made after its key was forgotten, for a minute
            // that may be in the store: a partial bucket, so not the open minute (whose hour
            // and day rows are written with it). An empty open minute where nothing can be
            // stored makes the request late.
            let open = self.minutes.dropped_before;
            self.minutes.buckets.push_back((open, Box::default()));
        }
        // Nearly always: a request of the open minute.
        if let Some((open, bucket)) = self.minutes.buckets.back_mut() {
            if *open == minute {
                return add(bucket);
            }
        }
        let open = self.minutes.buckets.back().map(|(i, _)| *i);
        if open.is_some_and(|open| minute > open) {
            self.close_minutes(secs);
        }
        // The newest second seen, which retention counts back from.
        let now = secs.max(open.map_or(0, |open| open * 60));
        if let Some(bucket) = self.minutes.bucket(minute, oldest(now, Resolution::Minute)) {
            add(bucket);
        }
        if open.is_some_and(|open| minute < open) {
            // Late: its minute is in its hour and day already.
            for (ring, resolution) in [
                (&mut self.hours, Resolution::Hour),
                (&mut self.days, Resolution::Day),
            ] {
                if let Some(bucket) = ring.bucket(index(secs, resolution), oldest(now, resolution))
                {
                    add(bucket);
                    bucket.pack();
                }
            }
        }
    }

    /// The newest minute is over (a request of a later second `secs` came): merges it into its
    /// hour and its day, packs it, and drops what is past retention.
    fn close_minutes(&mut self, secs: u64) {
        // An empty open minute (made after the key was forgotten) adds nothing.
        let counted = |(_, bucket): &&mut (u64, Box<Bucket>)| bucket.requests() > 0;
        if let Some((minute, bucket)) = self.minutes.buckets.back_mut().filter(counted) {
            let start = *minute * 60;
            for (ring, resolution) in [
                (&mut self.hours, Resolution::Hour),
                (&mut self.days, Resolution::Day),
            ] {
                let at = index(start, resolution);
                if let Some(target) = ring.bucket(at, 0) {
                    target.merge(bucket, usize::MAX);
                    // Kept packed: it grows by a merge a minute, not by a request.
                    target.pack();
                }
            }
            bucket.pack();
        }
        self.minutes.prune(oldest(secs, Resolution::Minute));
        self.hours.prune(oldest(secs, Resolution::Hour));
        self.days.prune(oldest(secs, Resolution::Day));
    }

    /// The buckets of `resolution` whose index is in `from..=to`, merged into `into` (a slot per
    /// index from `from`), the open minute included.
    pub(crate) fn add_to(
        &self,
        resolution: Resolution,
        from: u64,
        into: &mut [Bucket],
        max_endpoints: usize,
    ) {
        let mut add = |index: u64, bucket: &Bucket| {
            let slot = index
                .checked_sub(from)
                .and_then(|offset| usize::try_from(offset).ok())
                .and_then(|offset| into.get_mut(offset));
            if let Some(slot) = slot {
                slot.merge(bucket, max_endpoints);
            }
        };
        for (index, bucket) in &self.ring(resolution).buckets {
            add(*index, bucket);
        }
        // The open minute is in no hour or day yet.
        if resolution != Resolution::Minute {
            if let Some((minute, bucket)) = self.minutes.buckets.back() {
                add(index(minute * 60, resolution), bucket);
            }
        }
    }

    /// The buckets changed since they were last taken, each with its resolution and start
    /// (Unix seconds), marked unchanged; partial ones stay for later. The open minute is in no hour or day yet: when it
    /// changed, the rows of its hour and day are given with it merged in.
    pub(crate) fn take_dirty(&mut self) -> Vec<(Resolution, u64, Bucket)> {
        let open_changed = self.minutes.buckets.back().is_some_and(|(_, b)| b.dirty);
        let mut taken = Vec::new();
        for (ring, resolution) in self.rings_mut() {
            // A partial bucket waits until the store's rest is added: written alone, it
            // would replace the row that holds the rest.
            let whole_and_changed = |(_, b): &&mut (u64, Box<Bucket>)| b.dirty && !b.partial;
            for (index, bucket) in ring.buckets.iter_mut().filter(whole_and_changed) {
                bucket.dirty = false;
                taken.push((
                    resolution,
                    *index * resolution.seconds(),
                    (**bucket).clone(),
                ));
            }
        }
        // The rows of the open minute's hour and day carry it: written when it changed, or
        // when they did (a late request), with it merged in.
        if let Some((minute, bucket)) = self.minutes.buckets.back() {
            for resolution in [Resolution::Hour, Resolution::Day] {
                let at = index(minute * 60, resolution);
                let start = at * resolution.seconds();
                let row = taken
                    .iter()
                    .position(|(r, s, _)| (*r, *s) == (resolution, start));
                let row = match (row, self.ring(resolution).get(at)) {
                    (Some(row), _) => row,
                    (None, Some(kept)) if open_changed && !kept.partial => {
                        taken.push((resolution, start, kept.clone()));
                        taken.len() - 1
                    }
                    (None, None) if open_changed => {
                        taken.push((resolution, start, Bucket::default()));
                        taken.len() - 1
                    }
                    _ => continue,
                };
                taken[row].2.merge(bucket, usize::MAX);
            }
        }
        taken
    }

    /// Marks the bucket of `resolution` from `start` changed again (its write failed); for an
    /// hour or day, the open minute too, whose rows carry it.
    pub(crate) fn mark_dirty(&mut self, resolution: Resolution, start: u64) {
        let at = start / resolution.seconds();
        if let Some(bucket) = self.ring_mut(resolution).get_mut(at) {
            bucket.dirty = true;
        }
        if resolution != Resolution::Minute {
            if let Some((minute, bucket)) = self.minutes.buckets.back_mut() {
                if index(*minute * 60, resolution) == at {
                    bucket.dirty = true;
                }
            }
        }
    }

    /// Drops the buckets that are in the store and whose time ended before second `before`,
    /// except the open minute and the hour and day it will be merged into (their rows carry
    /// it); returns how many. One of them made again by a late request is partial.
    pub(crate) fn drop_written(&mut self, before: u64) -> usize {
        let open = self.newest();
        let mut dropped = 0;
        for (ring, resolution) in self.rings_mut() {
            let mut bound = index(before, resolution);
            if let Some(open) = open {
                bound = bound.min(index(open, resolution));
            }
            dropped += ring.drop_written(bound);
        }
        dropped
    }

    /// Whether it holds all of this replica's bucket of `resolution` from `start` (so the
    /// store's row of it, older, is not to be counted): kept and not partial, or, for an hour
    /// or a day, the one the open minute goes to (its row carries the open minute).
    pub(crate) fn holds(&self, resolution: Resolution, start: u64) -> bool {
        let at = start / resolution.seconds();
        if let Some(bucket) = self.ring(resolution).get(at) {
            return !bucket.partial;
        }
        resolution != Resolution::Minute
            && self
                .newest()
                .is_some_and(|open| index(open, resolution) == at)
    }

    /// The partial buckets: each one's resolution and start.
    pub(crate) fn partial(&self) -> Vec<(Resolution, u64)> {
        let mut partial = Vec::new();
        for resolution in [Resolution::Minute, Resolution::Hour, Resolution::Day] {
            for (at, bucket) in &self.ring(resolution).buckets {
                if bucket.partial {
                    partial.push((resolution, at * resolution.seconds()));
                }
            }
        }
        partial
    }

    /// Adds `stored`, this replica's row of the partial bucket of `resolution` from `start`
    /// (`None`: it has none), to the bucket, which is then whole.
    pub(crate) fn complete(
        &mut self,
        resolution: Resolution,
        start: u64,
        stored: Option<&Bucket>,
        max_endpoints: usize,
    ) {
        let at = start / resolution.seconds();
        if let Some(bucket) = self.ring_mut(resolution).get_mut(at) {
            if bucket.partial {
                if let Some(stored) = stored {
                    bucket.merge(stored, max_endpoints);
                    bucket.pack();
                }
                bucket.partial = false;
            }
        }
    }

    /// Whether it can be forgotten once its buckets over before second `before` were dropped:
    /// every bucket it holds is written and whole, and the day of its newest minute ended by
    /// `before` (so a series made later starts every bucket it held as partial).
    pub(crate) fn forgettable(&self, before: u64) -> bool {
        let written =
            |ring: &Ring| (ring.buckets.iter()).all(|(_, bucket)| !bucket.dirty && !bucket.partial);
        let day = Resolution::Day.seconds();
        self.newest()
            .is_some_and(|open| (index(open, Resolution::Day) + 1).saturating_mul(day) <= before)
            && written(&self.minutes)
            && written(&self.hours)
            && written(&self.days)
    }

    /// The start of the newest minute it holds (Unix seconds).
    pub(crate) fn newest(&self) -> Option<u64> {
        self.minutes.buckets.back().map(|(minute, _)| minute * 60)
    }

    fn ring(&self, resolution: Resolution) -> &Ring {
        match resolution {
            Resolution::Minute => &self.minutes,
            Resolution::Hour => &self.hours,
            Resolution::Day => &self.days,
        }
    }

    fn ring_mut(&mut self, resolution: Resolution) -> &mut Ring {
        match resolution {
            Resolution::Minute => &mut self.minutes,
            Resolution::Hour => &mut self.hours,
            Resolution::Day => &mut self.days,
        }
    }

    fn rings_mut(&mut self) -> [(&mut Ring, Resolution); 3] {
        [
            (&mut self.minutes, Resolution::Minute),
            (&mut self.hours, Resolution::Hour),
            (&mut self.days, Resolution::Day),
        ]
    }

    /// How many buckets it holds, of every resolution.
    pub(crate) fn len(&self) -> usize {
        self.minutes.buckets.len() + self.hours.buckets.len() + self.days.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Outcome;

    fn ok(ms: f64) -> Sample<'static> {
        Sample {
            outcome: Outcome::Ok,
            status: Some(200),
            endpoint: Some("/a"),
            country: None,
            latency_ms: Some(ms),
        }
    }

    fn total(series: &Series, resolution: Resolution, from: u64, slots: usize) -> Vec<u64> {
        let mut into = vec![Bucket::default(); slots];
        series.add_to(resolution, from, &mut into, 10);
        into.iter().map(Bucket::requests).collect()
    }

    const DAY: u64 = 86_400;

    #[test]
    fn minutes_roll_into_hours_and_days_late_requests_included() {
        let mut series = Series::default();
        let start = 100 * DAY; // midnight
        series.record(&ok(1.0), start + 5, 10);
        series.record(&ok(1.0), start + 65, 10);
        series.record(&ok(1.0), start + 3_600, 10); // the next hour
        series.record(&ok(1.0), start + 30, 10); // late: minute 0 is closed
        assert_eq!(total(&series, Resolution::Minute, start / 60, 3), [2, 1, 0]);
        assert_eq!(total(&series, Resolution::Hour, start / 3_600, 2), [3, 1]);
        assert_eq!(total(&series, Resolution::Day, start / DAY, 1), [4]);
    }

    #[test]
    fn old_buckets_go_after_their_retention() {
        let mut series = Series::default();
        let start = 100 * DAY;
        series.record(&ok(1.0), start, 10);
        series.record(&ok(1.0), start + DAY + 120, 10);
        // The first minute is past 24 hours; its hour and day stay.
        assert_eq!(total(&series, Resolution::Minute, start / 60, 1), [0]);
        assert_eq!(total(&series, Resolution::Hour, start / 3_600, 1), [1]);
        series.record(&ok(1.0), start + 31 * DAY, 10);
        assert_eq!(total(&series, Resolution::Hour, start / 3_600, 1), [0]);
        assert_eq!(total(&series, Resolution::Day, start / DAY, 2), [1, 1]);
        // A request older than the minutes and hours kept counts in its day only.
        series.record(&ok(1.0), start, 10);
        assert_eq!(total(&series, Resolution::Minute, start / 60, 1), [0]);
        assert_eq!(total(&series, Resolution::Hour, start / 3_600, 1), [0]);
        assert_eq!(total(&series, Resolution::Day, start / DAY, 2), [2, 1]);
    }

    #[test]
    fn an_hours_row_carries_the_open_minute_when_only_a_late_request_changed_it() {
        let mut series = Series::default();
        let start = 100 * DAY + 14 * 3_600;
        series.record(&ok(1.0), start + 60, 10); // 14:01, open
        series.take_dirty();
        series.record(&ok(1.0), start, 10); // late: 14:00
        let rows = series.take_dirty();
        let requests = |resolution: Resolution| {
            let row = rows.iter().find(|(r, _, _)| *r == resolution);
            row.map(|(_, _, bucket)| bucket.requests())
        };
        assert_eq!(requests(Resolution::Minute), Some(1), "14:00");
        assert_eq!(
            requests(Resolution::Hour),
            Some(2),
            "14:00 and the open 14:01"
        );
        assert_eq!(requests(Resolution::Day), Some(2));
        assert!(series.take_dirty().is_empty());
    }

    #[test]
    fn a_series_is_forgettable_once_written_and_its_newest_day_is_over() {
        let mut series = Series::default();
        let noon = 100 * DAY + 12 * 3_600;
        series.record(&ok(1.0), noon, 10);
        assert!(!series.forgettable(102 * DAY), "not written");
        series.take_dirty();
        assert!(!series.forgettable(101 * DAY - 1), "its day is not over");
        assert!(series.forgettable(101 * DAY));
        series.record(&ok(1.0), noon + 60, 10);
        series.take_dirty();
        series.record(&ok(1.0), noon, 10); // late, for a closed minute
        assert!(!series.forgettable(102 * DAY), "changed since written");
        series.take_dirty();
        assert!(series.forgettable(102 * DAY));
    }

    #[test]
    fn a_series_made_after_keys_were_forgotten_starts_older_buckets_partial() {
        let noon = 100 * DAY + 12 * 3_600;
        let forgotten = 101 * DAY + 3_600; // 01:00 the next day
        let mut series = Series::after(forgotten);

        // Its first request, late (begun at noon the day before): not the open minute, whose
        // hour and day rows would be written without the store's rest.
        series.record(&ok(1.0), noon, 10);
        assert_eq!(
            series.partial(),
            [
                (Resolution::Minute, noon),
                (Resolution::Hour, noon),
                (Resolution::Day, 100 * DAY)
            ]
        );
        assert_eq!(series.newest(), Some(forgotten), "an empty open minute");
        assert!(series.take_dirty().is_empty(), "nothing whole to write");
        assert!(!series.holds(Resolution::Day, 100 * DAY));
        assert!(
            series.holds(Resolution::Day, 101 * DAY),
            "nothing forgotten there"
        );

        // Late again, for a minute before `forgotten` in its day: the minute and hour may
        // have rows, the day had none.
        series.record(&ok(1.0), 101 * DAY + 1_800, 10);
        let partial = series.partial();
        assert!(partial.contains(&(Resolution::Minute, 101 * DAY + 1_800)));
        assert!(partial.contains(&(Resolution::Hour, 101 * DAY)));
        assert!(!partial.contains(&(Resolution::Day, 101 * DAY)));

        // Its next minute opens as usual; the empty one adds nothing to its hour.
        series.record(&ok(1.0), forgotten + 3_600, 10);
        let rows = series.take_dirty();
        let requests = |resolution: Resolution, start: u64| {
            let row = rows
                .iter()
                .find(|(r, s, _)| (*r, *s) == (resolution, start));
            row.map(|(_, _, bucket)| bucket.requests())
        };
        assert_eq!(requests(Resolution::Minute, forgotten + 3_600), Some(1));
        assert_eq!(requests(Resolution::Hour, forgotten + 3_600), Some(1));
        assert_eq!(
            requests(Resolution::Day, 101 * DAY),
            Some(2),
            "00:30 and 02:00"
        );
        assert_eq!(
            requests(Resolution::Hour, forgotten),
            None,
            "the empty minute's"
        );
        assert_eq!(
            rows.len(),
            3,
            "the partial 00:30 and its hour wait: {rows:?}"
        );
    }

    #[test]
    fn written_buckets_leave_and_one_made_again_waits_for_the_stores_rest() {
        let mut series = Series::default();
        let start = 100 * DAY + 12 * 3_600; // noon
        series.record(&ok(1.0), start, 10);
        series.record(&ok(1.0), start + 2 * 3_600 + 60, 10); // 14:01, the open minute
        let written = series.take_dirty();
        assert_eq!(
            written.len(),
            5,
            "12:00, 14:01, hour 12, and the open minute's hour and day"
        );
        series.record(&ok(1.0), start + 2 * 3_600 + 120, 10); // 14:02: 14:01 closes
        series.take_dirty();
        assert_eq!(
            series.len(),
            6,
            "minutes 12:00 14:01 14:02, hours 12 and 14, the day"
        );
        // Over before 13:01: minute 12:00 and hour 12 go; the open minute, its hour and day stay.
        assert_eq!(series.drop_written(start + 3_600 + 60), 2);
        assert!(!series.holds(Resolution::Minute, start));
        assert!(!series.holds(Resolution::Hour, start));
        assert!(series.holds(Resolution::Day, start - start % DAY));
        assert!(series.holds(Resolution::Minute, start + 2 * 3_600 + 120));
        // A changed bucket stays until written.
        series.record(&ok(1.0), start + 2 * 3_600 + 60, 10); // late, for 14:01
        assert_eq!(series.drop_written(start + 2 * 3_600 + 120), 0);

        // Late, for 12:00: made again, partial, and not written alone.
        series.record(&ok(1.0), start + 30, 10);
        assert_eq!(
            series.partial(),
            [(Resolution::Minute, start), (Resolution::Hour, start)]
        );
        assert!(!series.holds(Resolution::Minute, start));
        let rows = series.take_dirty();
        assert!(rows
            .iter()
            .all(|(r, s, _)| (*r, *s) != (Resolution::Minute, start)));
        assert!(rows
            .iter()
            .all(|(r, s, _)| (*r, *s) != (Resolution::Hour, start)));
        // The store's rest added: whole, and written with it.
        let mut stored = Bucket::default();
        stored.record(&ok(1.0), 10);
        series.complete(Resolution::Minute, start, Some(&stored), 10);
        series.complete(Resolution::Hour, start, Some(&stored), 10);
        assert!(series.partial().is_empty());
        assert!(series.holds(Resolution::Minute, start));
        let rows = series.take_dirty();
        let minute = rows
            .iter()
            .find(|(r, s, _)| (*r, *s) == (Resolution::Minute, start));
        assert_eq!(minute.map(|(_, _, bucket)| bucket.requests()), Some(2));
    }
}
