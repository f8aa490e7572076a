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
}

impl Ring {
    /// The bucket of `index`, made if missing (in order); `None` if it is older than the first
    /// one kept and `oldest` says it is past retention.
    fn bucket(&mut self, index: u64, oldest: u64) -> Option<&mut Bucket> {
        if index < oldest {
            return None;
        }
        let at = self.buckets.partition_point(|(i, _)| *i < index);
        if self.buckets.get(at).is_none_or(|(i, _)| *i != index) {
            self.buckets.insert(at, (index, Box::default()));
        }
        self.buckets.get_mut(at).map(|(_, bucket)| &mut **bucket)
    }

    /// Drops the buckets older than `oldest`.
    fn prune(&mut self, oldest: u64) {
        while self.buckets.front().is_some_and(|(i, _)| *i < oldest) {
            self.buckets.pop_front();
        }
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
        if let Some((minute, bucket)) = self.minutes.buckets.back_mut() {
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
    /// (Unix seconds), marked unchanged. The open minute is in no hour or day yet: when it
    /// changed, the rows of its hour and day are given with it merged in.
    pub(crate) fn take_dirty(&mut self) -> Vec<(Resolution, u64, Bucket)> {
        let open = self
            .minutes
            .buckets
            .back()
            .filter(|(_, bucket)| bucket.dirty)
            .map(|(minute, bucket)| (*minute, bucket.clone()));
        let mut taken = Vec::new();
        for (ring, resolution) in self.rings_mut() {
            for (index, bucket) in ring.buckets.iter_mut().filter(|(_, b)| b.dirty) {
                bucket.dirty = false;
                taken.push((
                    resolution,
                    *index * resolution.seconds(),
                    (**bucket).clone(),
                ));
            }
        }
        if let Some((minute, bucket)) = open {
            for resolution in [Resolution::Hour, Resolution::Day] {
                let start = index(minute * 60, resolution) * resolution.seconds();
                let row = taken
                    .iter()
                    .position(|(r, s, _)| (*r, *s) == (resolution, start));
                let row = match row {
                    Some(row) => row,
                    None => {
                        let kept = self.ring(resolution).buckets.iter();
                        let kept = kept.filter(|(i, _)| *i * resolution.seconds() == start);
                        let copy = kept.map(|(_, b)| (**b).clone()).next().unwrap_or_default();
                        taken.push((resolution, start, copy));
                        taken.len() - 1
                    }
                };
                taken[row].2.merge(&bucket, usize::MAX);
            }
        }
        taken
    }

    /// Marks the bucket of `resolution` from `start` changed again (its write failed); for an
    /// hour or day, the open minute too, whose rows carry it.
    pub(crate) fn mark_dirty(&mut self, resolution: Resolution, start: u64) {
        let at = start / resolution.seconds();
        if let Some((_, bucket)) = self
            .ring_mut(resolution)
            .buckets
            .iter_mut()
            .find(|(i, _)| *i == at)
        {
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
}
