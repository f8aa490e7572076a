//! A run of requests: consecutive requests of one key (or of no verified key) in one minute,
//! recorded by one thread, counted apart and merged into the key's series when the run ends. A
//! hot key's requests then cost a few counts under the thread's uncontended lock, not a map
//! lookup and its series' lock each.
//!
//! A run ends when its thread records a request of another key, owner or minute, and whenever
//! the usage is read or flushed, so nothing read is ever missing a request already recorded.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::bucket::{Bucket, Sample};
use super::latency::Tally;
use super::{Outcome, UsageEvent, OUTCOMES};
use crate::clock::unix_seconds;

/// Whose requests a run counts, and how many of them.
#[derive(Debug)]
pub(crate) struct Run {
    /// The key's id; empty, with `verified` false, for requests whose key was not verified.
    key: String,
    verified: bool,
    /// The owner's id, if `owned`. Both strings keep their room from run to run.
    owner: String,
    owned: bool,
    /// Its minute, from its first instant to the next minute's: a request's time is compared
    /// with them, not turned into seconds since 1970 (a checked subtraction, on every request).
    from: SystemTime,
    until: SystemTime,
    /// The latest time of its requests.
    latest: SystemTime,
    /// Its requests' counts, empty until the run's second request (the first is recorded in its
    /// series straight away, so a thread that never sees a key twice in a row pays little
    /// more): by outcome and latency here, densely; the rest in `counts`, which the others join
    /// when the run is drained.
    outcomes: [u64; OUTCOMES],
    latency: Tally,
    counts: Bucket,
    /// Whether the run counted a request since it was last drained.
    pending: bool,
}

impl Default for Run {
    /// No run: its minute is empty, so no request continues it.
    fn default() -> Self {
        Run {
            key: String::new(),
            verified: false,
            owner: String::new(),
            owned: false,
            from: UNIX_EPOCH,
            until: UNIX_EPOCH,
            latest: UNIX_EPOCH,
            outcomes: [0; OUTCOMES],
            latency: Tally::default(),
            counts: Bucket::default(),
            pending: false,
        }
    }
}

/// Who an event is of: its key's id (if verified) and owner.
pub(crate) struct Whose<'a> {
    pub(crate) key: Option<&'a str>,
    pub(crate) owner: Option<&'a str>,
}

impl<'a> Whose<'a> {
    pub(crate) fn of(event: &UsageEvent<'a>) -> Self {
        Whose {
            key: event.key_id,
            owner: event.owner,
        }
    }
}

impl Run {
    /// Whether a request of `whose` at `at` continues this run.
    pub(crate) fn continues(&self, whose: &Whose<'_>, at: SystemTime) -> bool {
        self.from <= at
            && at < self.until
            && self.verified == whose.key.is_some()
            && self.key == whose.key.unwrap_or("")
            && self.owned == whose.owner.is_some()
            && self.owner == whose.owner.unwrap_or("")
    }

    /// Counts `sample`, of a request at `at`, in this run.
    pub(crate) fn record(&mut self, sample: &Sample<'_>, at: SystemTime, max_endpoints: usize) {
        self.outcomes[sample.outcome.index()] += 1;
        if let Some(ms) = sample.latency_ms {
            self.latency.add(ms);
        }
        self.counts.record_answer(sample, max_endpoints);
        self.latest = self.latest.max(at);
        self.pending = true;
    }

    /// Hands what the run counted, if anything, to `into` (whose, the latest second, the
    /// counts), and empties it; the run goes on for the same key and minute.
    pub(crate) fn drain(&mut self, into: impl FnOnce(&Whose<'_>, u64, &Bucket)) {
        if std::mem::take(&mut self.pending) {
            for (outcome, count) in Outcome::all().zip(&mut self.outcomes) {
                if *count > 0 {
                    self.counts.add_outcome(outcome, std::mem::take(count));
                }
            }
            self.latency.drain_into(&mut self.counts.latency);
            let whose = Whose {
                key: self.verified.then_some(&*self.key),
                owner: self.owned.then_some(&*self.owner),
            };
            into(&whose, unix_seconds(self.latest), &self.counts);
            self.counts.clear();
        }
    }

    /// Starts a run of `whose` in `minute`, empty. Call it after [`drain`](Self::drain).
    pub(crate) fn start(&mut self, whose: &Whose<'_>, minute: u64) {
        debug_assert!(!self.pending, "a run was started over one not taken");
        self.key.clear();
        self.key.push_str(whose.key.unwrap_or(""));
        self.verified = whose.key.is_some();
        self.owner.clear();
        self.owner.push_str(whose.owner.unwrap_or(""));
        self.owned = whose.owner.is_some();
        // Past what the clock holds (no request's time is), the span stays empty.
        self.from = UNIX_EPOCH
            .checked_add(Duration::from_secs(minute.saturating_mul(60)))
            .unwrap_or(UNIX_EPOCH);
        self.until = self
            .from
            .checked_add(Duration::from_secs(60))
            .unwrap_or(self.from);
        self.latest = self.from;
        // The counts are empty already: `drain` empties them.
    }
}
