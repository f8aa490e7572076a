//! The service's response times of one bucket, as a DDSketch's bins (`sketches-ddsketch`):
//! the sketch's logarithmic mapping (`Config::key`, 1 % relative error) puts each latency in a
//! bin, and its quantiles are read from a `DDSketch` filled from the bins. The bins are kept
//! sparse, sorted by key, so a quiet key's minute holds a few of them rather than the crate's
//! dense store (1 KiB or more); they merge by adding counts, and they are what the store keeps.
//!
//! The crate's own binary decoder is not used on what a store hands back: on damaged bytes it
//! overflows and panics (found by this module's property test), and a length in the bytes
//! drives its loops. Bins read back here are checked first.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config, DDSketch};

/// The sketches' mapping: DDSketch's defaults, 1 % relative error.
static CONFIG: LazyLock<Config> = LazyLock::new(Config::defaults);

/// At most this many bins: the crate's default. With 1 % error they span a factor of e^40, so
/// real latencies never reach it; bins read back beyond it are refused.
const MAX_BINS: usize = 2048;

/// The sketch's bin of a latency of `ms` milliseconds; `None` for (about) zero, or not a number.
fn bin(ms: f64) -> Option<i32> {
    (ms > CONFIG.min_possible() && ms.is_finite()).then(|| CONFIG.key(ms))
}

/// Latencies in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Latencies {
    /// `(key, count)`, keys increasing, counts above 0.
    bins: Vec<(i32, u64)>,
    /// Latencies of (about) zero, which have no bin.
    #[serde(default)]
    zeros: u64,
}

impl Latencies {
    /// Adds one latency.
    pub(crate) fn add(&mut self, ms: f64) {
        match bin(ms) {
            Some(key) => self.add_to_bin(key, 1),
            None => self.zeros += 1,
        }
    }

    fn add_to_bin(&mut self, key: i32, count: u64) {
        match self.bins.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(at) => add(&mut self.bins[at].1, count),
            Err(at) if self.bins.len() < MAX_BINS => self.bins.insert(at, (key, count)),
            // Full: into the nearest bin below (the crate's store collapses its lowest bins).
            Err(at) => add(&mut self.bins[at.saturating_sub(1)].1, count),
        }
    }

    /// Adds `other`'s latencies.
    pub(crate) fn merge(&mut self, other: &Latencies) {
        for &(key, count) in &other.bins {
            self.add_to_bin(key, count);
        }
        add(&mut self.zeros, other.zeros);
    }

    /// How many latencies.
    pub(crate) fn count(&self) -> u64 {
        (self.bins.iter()).fold(self.zeros, |total, (_, count)| total.saturating_add(*count))
    }

    /// No latencies, keeping the bins' room.
    pub(crate) fn clear(&mut self) {
        self.bins.clear();
        self.zeros = 0;
    }

    /// Frees what the bins do not use.
    pub(crate) fn shrink(&mut self) {
        self.bins.shrink_to_fit();
    }

    /// The count and the quantiles `qs`, in milliseconds, if there are latencies.
    pub(crate) fn quantiles<const N: usize>(&self, qs: [f64; N]) -> Option<(u64, [f64; N])> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        // Counts scaled down if their total nears the sketch's own `u64` count (only corrupt or
        // centuries-long data can): the quantiles depend on proportions only.
        let shift = (u64::BITS - count.leading_zeros()).saturating_sub(62);
        let mut sketch = DDSketch::new(*CONFIG);
        for &(key, count) in &self.bins {
            sketch.add_with_count(CONFIG.value(key), count >> shift);
        }
        sketch.add_with_count(0.0, self.zeros >> shift);
        Some((
            count,
            qs.map(|q| sketch.quantile(q).ok().flatten().unwrap_or(0.0)),
        ))
    }

    /// These latencies if they are well formed (as read back from a store): at most
    /// [`MAX_BINS`] bins of keys a real latency has, each counted, a total that fits.
    pub(crate) fn checked(mut self) -> Result<Latencies, String> {
        // From a nanosecond to a year, in milliseconds.
        let keys = CONFIG.key(1e-6)..=CONFIG.key(3.2e10);
        if self.bins.len() > MAX_BINS {
            return Err(format!(
                "{} latency bins, at most {MAX_BINS}",
                self.bins.len()
            ));
        }
        if let Some((key, _)) = self.bins.iter().find(|(key, _)| !keys.contains(key)) {
            return Err(format!("latency bin {key} is out of range"));
        }
        let total =
            (self.bins.iter().map(|(_, count)| *count)).try_fold(self.zeros, u64::checked_add);
        if total.is_none() {
            return Err("latency counts overflow".into());
        }
        self.bins.sort_unstable_by_key(|(key, _)| *key);
        self.bins.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 += later.1;
            }
            same
        });
        self.bins.retain(|(_, count)| *count > 0);
        Ok(self)
    }
}

/// Latencies counted densely, by bin: adding one is an index into a slice rather than a search.
/// A thread's run of requests counts in one and hands the bins it touched to a bucket's
/// [`Latencies`] when it ends. It keeps its room from run to run: at most [`MAX_BINS`] counts.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// The key of `counts[0]`.
    first: i32,
    counts: Vec<u64>,
    /// The indexes of `counts` added to since it was last drained.
    touched: std::ops::Range<usize>,
    zeros: u64,
    /// Latencies too far from the others for `counts` to span them.
    far: Latencies,
}

impl Tally {
    /// Adds one latency.
    pub(crate) fn add(&mut self, ms: f64) {
        let Some(key) = bin(ms) else {
            self.zeros += 1;
            return;
        };
        let at = usize::try_from(i64::from(key) - i64::from(self.first)).ok();
        match at.and_then(|at| Some((at, self.counts.get_mut(at)?))) {
            Some((at, count)) => {
                *count += 1;
                self.touch(at);
            }
            None => self.add_outside(key),
        }
    }

    fn touch(&mut self, at: usize) {
        if self.touched.is_empty() {
            self.touched = at..at + 1;
        } else {
            self.touched = self.touched.start.min(at)..self.touched.end.max(at + 1);
        }
    }

    /// Adds a latency of bin `key`, outside the bins counted so far: they grow to span it, up
    /// to [`MAX_BINS`]; beyond, it is kept sparsely.
    #[cold]
    fn add_outside(&mut self, key: i32) {
        if self.counts.is_empty() {
            self.first = key;
        }
        let low = i64::from(self.first.min(key));
        let high = i64::from(self.first) + self.counts.len() as i64 - 1;
        let high = high.max(i64::from(key));
        if high - low >= MAX_BINS as i64 {
            return self.far.add_to_bin(key, 1);
        }
        let below = usize::try_from(i64::from(self.first) - low).unwrap_or(0);
        if below > 0 {
            self.counts.splice(0..0, std::iter::repeat_n(0, below));
            self.first = key;
            if !self.touched.is_empty() {
                self.touched = self.touched.start + below..self.touched.end + below;
            }
        }
        let span = usize::try_from(high - low + 1).unwrap_or(0);
        self.counts.resize(span, 0);
        let at = usize::try_from(i64::from(key) - i64::from(self.first)).unwrap_or(0);
        self.counts[at] += 1;
        self.touch(at);
    }

    /// Adds its latencies to `into` and empties it, keeping its room.
    pub(crate) fn drain_into(&mut self, into: &mut Latencies) {
        let touched = std::mem::take(&mut self.touched);
        for (at, count) in self.counts[touched.clone()].iter_mut().enumerate() {
            if *count > 0 {
                let key = i64::from(self.first) + (touched.start + at) as i64;
                into.add_to_bin(
                    i32::try_from(key).unwrap_or(i32::MAX),
                    std::mem::take(count),
                );
            }
        }
        add(&mut into.zeros, std::mem::take(&mut self.zeros));
        into.merge(&self.far);
        self.far.clear();
    }
}

/// Adds `by` to `count`, stopping at the largest count rather than wrapping.
fn add(count: &mut u64, by: u64) {
    *count = count.saturating_add(by);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_one_percent_and_bins_merge() {
        let mut a = Latencies::default();
        let mut b = Latencies::default();
        for ms in 1..=100 {
            a.add(f64::from(ms));
            b.add(f64::from(ms + 100));
        }
        b.add(0.0);
        a.merge(&b);
        let (count, [p50, p99]) = a.quantiles([0.5, 0.99]).unwrap();
        assert_eq!(count, 201);
        assert!((p50 - 100.0).abs() <= 100.0 * 0.01, "{p50}");
        assert!((p99 - 198.0).abs() <= 198.0 * 0.01, "{p99}");
        assert_eq!(Latencies::default().quantiles([0.5]), None);
        // A bin's value maps back to its bin.
        for ms in [0.001, 0.37, 1.0, 12.5, 999.0, 86_400_000.0] {
            let key = CONFIG.key(ms);
            assert_eq!(CONFIG.key(CONFIG.value(key)), key, "{ms}");
        }
    }

    #[test]
    fn bins_read_back_are_checked() {
        let bins = |bins: Vec<(i32, u64)>, zeros| Latencies { bins, zeros }.checked();
        assert!(bins(vec![(i32::MAX, 1)], 0).is_err());
        assert!(bins(vec![(CONFIG.key(1.0), u64::MAX)], 1).is_err());
        assert!(bins(vec![(0, 1); MAX_BINS + 1], 0).is_err());
        let key = CONFIG.key(5.0);
        let sorted = bins(vec![(key + 1, 2), (key, 1), (key, 3), (key + 2, 0)], 0).unwrap();
        assert_eq!(sorted.bins, [(key, 4), (key + 1, 2)]);
        // Each fits, together they would not: merged, they stop at the largest count.
        let mut huge = bins(vec![(key, u64::MAX - 1)], 0).unwrap();
        huge.merge(&bins(vec![(key, 5), (key + 9, u64::MAX - 10)], 0).unwrap());
        assert_eq!(huge.count(), u64::MAX);
        let (_, [p50]) = huge.quantiles([0.5]).unwrap();
        assert!(p50 > 0.0);
    }
}

#[cfg(test)]
mod tally_tests {
    use proptest::prelude::*;

    use super::*;

    /// Latencies of every kind: zero, tiny, usual, huge and not a number.
    fn latency() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            Just(f64::NAN),
            1e-12..1e-6f64,
            0.01..10.0f64,
            1.0..100_000.0f64,
            1e9..1e30f64,
        ]
    }

    proptest! {
        /// Counted in a tally and drained, run after run, latencies end up in the same bins as
        /// added one by one.
        #[test]
        fn a_tally_drains_into_the_bins_of_its_latencies(
            runs in prop::collection::vec(prop::collection::vec(latency(), 0..40), 1..6),
        ) {
            let mut tally = Tally::default();
            let mut drained = Latencies::default();
            let mut direct = Latencies::default();
            for run in &runs {
                for &ms in run {
                    tally.add(ms);
                    direct.add(ms);
                }
                tally.drain_into(&mut drained);
                prop_assert_eq!(&drained, &direct);
            }
            prop_assert!(tally.counts.len() <= MAX_BINS);
        }
    }
}
