//! One time bucket of usage: requests by outcome and status, latency as a mergeable sketch
//! (DDSketch, 1 % relative error), endpoints and countries. Buckets merge, so an hour is its
//! minutes merged and the service is its keys merged.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config, DDSketch};

use super::{Country, Outcome};

/// One request, as a bucket records it.
pub(crate) struct Sample<'a> {
    pub(crate) outcome: Outcome,
    /// The status of the answer, if known.
    pub(crate) status: Option<u16>,
    pub(crate) endpoint: Option<&'a str>,
    pub(crate) country: Option<Country>,
    /// The service's time, in milliseconds.
    pub(crate) latency_ms: Option<f64>,
}

/// Usage in one bucket of time.
#[derive(Clone, Debug, Default)]
pub(crate) struct Bucket {
    /// Requests by outcome, in the order first seen: a bucket sees few of them.
    pub(crate) outcomes: Vec<(Outcome, u64)>,
    /// Requests by status code, in the order first seen.
    pub(crate) statuses: Vec<(u16, u64)>,
    /// Requests by endpoint, at most the configured number; the rest in `other_endpoints`.
    pub(crate) endpoints: Vec<(Arc<str>, u64)>,
    pub(crate) other_endpoints: u64,
    pub(crate) countries: Vec<(Country, u64)>,
    pub(crate) latency: Sketch,
    /// Changed since it was last written to the store.
    pub(crate) dirty: bool,
}

/// Latencies: none yet; the first few as they came; a sketch being written; or one packed for
/// keeping. A live sketch holds its bins densely, 1 KiB or more; packed, only the non-zero
/// bins, tens of bytes; so most buckets, of keys with a few requests a minute, never hold one.
#[derive(Clone, Default)]
pub(crate) enum Sketch {
    #[default]
    Empty,
    /// Up to [`RAW`] values, in milliseconds.
    Raw(Vec<f32>),
    Live(Box<DDSketch>),
    Packed(Box<[u8]>),
}

/// How many latencies a bucket keeps as they came before it builds a sketch.
const RAW: usize = 32;

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sketch::Empty => f.write_str("Empty"),
            Sketch::Raw(values) => write!(f, "Raw({} values)", values.len()),
            Sketch::Live(sketch) => write!(f, "Live({} values)", sketch.count()),
            Sketch::Packed(bytes) => write!(f, "Packed({} bytes)", bytes.len()),
        }
    }
}

/// The sketches' configuration: DDSketch's defaults, 1 % relative error. A packed sketch reads
/// back with these.
fn config() -> Config {
    Config::defaults()
}

impl Sketch {
    fn live(&mut self) -> &mut DDSketch {
        if !matches!(self, Sketch::Live(_)) {
            let sketch = self.unpacked().unwrap_or_else(|| DDSketch::new(config()));
            *self = Sketch::Live(Box::new(sketch));
        }
        match self {
            Sketch::Live(sketch) => sketch,
            _ => unreachable!("made live above"),
        }
    }

    /// A copy as a sketch, if it has any values. A packed sketch that does not read back (it
    /// never happens but through memory corruption) counts as empty.
    pub(crate) fn unpacked(&self) -> Option<DDSketch> {
        match self {
            Sketch::Empty => None,
            Sketch::Raw(values) => {
                let mut sketch = DDSketch::new(config());
                values.iter().for_each(|ms| sketch.add(f64::from(*ms)));
                Some(sketch)
            }
            Sketch::Live(sketch) => Some((**sketch).clone()),
            Sketch::Packed(bytes) => DDSketch::from_java_bytes(bytes).ok(),
        }
    }

    fn merge(&mut self, other: &Sketch) {
        if let Some(other) = other.unpacked() {
            // Both have `config()`, so the merge cannot fail.
            let _ = self.live().merge(&other);
        }
    }

    /// Adds one latency in milliseconds.
    fn add(&mut self, ms: f64) {
        match self {
            Sketch::Empty => *self = Sketch::Raw(vec![ms as f32]),
            Sketch::Raw(values) if values.len() < RAW => values.push(ms as f32),
            _ => self.live().add(ms),
        }
    }

    fn pack(&mut self) {
        if matches!(self, Sketch::Raw(_) | Sketch::Live(_)) {
            if let Some(sketch) = self.unpacked() {
                *self = Sketch::Packed(sketch.to_java_bytes().into_boxed_slice());
            }
        }
    }

    /// The values' count and quantiles `qs`, in the sketch's unit.
    pub(crate) fn quantiles<const N: usize>(&self, qs: [f64; N]) -> Option<(u64, [f64; N])> {
        let sketch = self.unpacked()?;
        let count = sketch.count() as u64;
        (count > 0).then(|| {
            (
                count,
                qs.map(|q| sketch.quantile(q).ok().flatten().unwrap_or(0.0)),
            )
        })
    }
}

/// Adds `by` to the count of `item` in `counts`, a short list searched from the start.
fn add<T: PartialEq + ?Sized, O: std::borrow::Borrow<T>>(
    counts: &mut Vec<(O, u64)>,
    item: &T,
    by: u64,
    new: impl FnOnce() -> Option<O>,
) -> bool {
    if let Some((_, count)) = counts.iter_mut().find(|(name, _)| name.borrow() == item) {
        *count += by;
        return true;
    }
    match new() {
        Some(owned) => {
            counts.push((owned, by));
            true
        }
        None => false,
    }
}

impl Bucket {
    /// Records one request; `max_endpoints` bounds how many endpoints the bucket names.
    pub(crate) fn record(&mut self, sample: &Sample<'_>, max_endpoints: usize) {
        self.dirty = true;
        add(&mut self.outcomes, &sample.outcome, 1, || {
            Some(sample.outcome)
        });
        if let Some(status) = sample.status {
            add(&mut self.statuses, &status, 1, || Some(status));
        }
        if let Some(endpoint) = sample.endpoint {
            self.add_endpoint(endpoint, 1, max_endpoints);
        }
        if let Some(country) = sample.country {
            add(&mut self.countries, &country, 1, || Some(country));
        }
        if let Some(ms) = sample.latency_ms {
            self.latency.add(ms);
        }
    }

    fn add_endpoint(&mut self, endpoint: &str, by: u64, max_endpoints: usize) {
        let room = self.endpoints.len() < max_endpoints;
        if !add(&mut self.endpoints, endpoint, by, || {
            room.then(|| endpoint.into())
        }) {
            self.other_endpoints += by;
        }
    }

    /// Adds `other`'s counts to this one's.
    pub(crate) fn merge(&mut self, other: &Bucket, max_endpoints: usize) {
        self.dirty = true;
        for &(outcome, count) in &other.outcomes {
            add(&mut self.outcomes, &outcome, count, || Some(outcome));
        }
        for &(status, count) in &other.statuses {
            add(&mut self.statuses, &status, count, || Some(status));
        }
        for (endpoint, count) in &other.endpoints {
            self.add_endpoint(endpoint, *count, max_endpoints);
        }
        self.other_endpoints += other.other_endpoints;
        for &(country, count) in &other.countries {
            add(&mut self.countries, &country, count, || Some(country));
        }
        self.latency.merge(&other.latency);
    }

    /// Packs the bucket for keeping (its sketch, and its lists to their length): it will be read,
    /// and merged from, but rarely written again.
    pub(crate) fn pack(&mut self) {
        self.latency.pack();
        self.outcomes.shrink_to_fit();
        self.statuses.shrink_to_fit();
        self.endpoints.shrink_to_fit();
        self.countries.shrink_to_fit();
    }

    /// Requests in all.
    pub(crate) fn requests(&self) -> u64 {
        self.outcomes.iter().map(|(_, count)| count).sum()
    }
}

/// A bucket as the store keeps it: JSON, outcomes by code, the sketch in DDSketch's portable
/// binary format as hex.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    outcomes: BTreeMap<String, u64>,
    #[serde(default)]
    statuses: Vec<(u16, u64)>,
    #[serde(default)]
    endpoints: Vec<(String, u64)>,
    #[serde(default)]
    other_endpoints: u64,
    #[serde(default)]
    countries: Vec<(String, u64)>,
    #[serde(default)]
    latency: Option<String>,
}

impl Bucket {
    /// The bucket as the store keeps it.
    pub(crate) fn encode(&self) -> String {
        let stored = Stored {
            outcomes: (self.outcomes.iter())
                .map(|(outcome, count)| (outcome.as_str().to_owned(), *count))
                .collect(),
            statuses: self.statuses.clone(),
            endpoints: (self.endpoints.iter())
                .map(|(name, count)| (name.to_string(), *count))
                .collect(),
            other_endpoints: self.other_endpoints,
            countries: (self.countries.iter())
                .map(|(country, count)| (country.to_string(), *count))
                .collect(),
            latency: self
                .latency
                .unpacked()
                .map(|sketch| hex::encode(sketch.to_java_bytes())),
        };
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// A bucket the store kept; what is wrong with it if it is not one.
    pub(crate) fn decode(text: &str) -> Result<Bucket, String> {
        let stored: Stored = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut bucket = Bucket::default();
        for (code, count) in stored.outcomes {
            let outcome = Outcome::all()
                .find(|outcome| outcome.as_str() == code)
                .ok_or_else(|| format!("unknown outcome {code:?}"))?;
            add(&mut bucket.outcomes, &outcome, count, || Some(outcome));
        }
        bucket.statuses = stored.statuses;
        bucket.endpoints = (stored.endpoints.into_iter())
            .map(|(name, count)| (Arc::from(name), count))
            .collect();
        bucket.other_endpoints = stored.other_endpoints;
        for (code, count) in stored.countries {
            let country = Country::new(&code).ok_or_else(|| format!("bad country {code:?}"))?;
            bucket.countries.push((country, count));
        }
        if let Some(latency) = stored.latency {
            let bytes = hex::decode(latency).map_err(|e| format!("latency: {e}"))?;
            let sketch = DDSketch::from_java_bytes(&bytes).map_err(|e| format!("latency: {e}"))?;
            if sketch.count() > 0 {
                bucket.latency = Sketch::Packed(sketch.to_java_bytes().into_boxed_slice());
            }
        }
        Ok(bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reject::Rejection;

    fn sample(endpoint: &str, latency_ms: f64) -> Sample<'_> {
        Sample {
            outcome: Outcome::Ok,
            status: Some(200),
            endpoint: Some(endpoint),
            country: Country::new("DE"),
            latency_ms: Some(latency_ms),
        }
    }

    #[test]
    fn a_packed_sketch_merges_with_a_live_one() {
        let mut a = Bucket::default();
        let mut b = Bucket::default();
        for ms in 1..=100 {
            a.record(&sample("/a", f64::from(ms)), 10);
            b.record(&sample("/b", f64::from(ms + 100)), 10);
        }
        b.pack();
        assert!(matches!(b.latency, Sketch::Packed(_)));
        a.merge(&b, 10);
        let (count, [p50, p99]) = a.latency.quantiles([0.5, 0.99]).unwrap();
        assert_eq!(count, 200);
        assert!((p50 - 100.0).abs() <= 100.0 * 0.02, "{p50}");
        assert!((p99 - 198.0).abs() <= 198.0 * 0.02, "{p99}");
        assert_eq!(a.requests(), 200);
        assert_eq!(a.endpoints.len(), 2);
        assert_eq!(a.countries, vec![(Country::new("DE").unwrap(), 200)]);
    }

    #[test]
    fn a_bucket_reads_back_from_the_store_and_corrupt_data_is_an_error() {
        let mut bucket = Bucket::default();
        for ms in 1..=50 {
            bucket.record(&sample("/a", f64::from(ms)), 10);
        }
        bucket.record(
            &Sample {
                outcome: Outcome::Rejected(Rejection::UsageExceeded),
                status: Some(429),
                endpoint: None,
                country: None,
                latency_ms: None,
            },
            10,
        );
        let back = Bucket::decode(&bucket.encode()).unwrap();
        let sorted = |b: &Bucket| {
            let mut outcomes: Vec<_> = b.outcomes.iter().map(|(o, n)| (o.as_str(), *n)).collect();
            outcomes.sort();
            outcomes
        };
        assert_eq!(sorted(&back), sorted(&bucket));
        assert_eq!(back.statuses, bucket.statuses);
        assert_eq!(back.endpoints, bucket.endpoints);
        assert_eq!(back.countries, bucket.countries);
        assert_eq!(
            back.latency.quantiles([0.5]),
            bucket.latency.quantiles([0.5])
        );
        assert!(Bucket::decode("{}").unwrap().requests() == 0);
        for corrupt in [
            "",
            "42",
            "null",
            r#"{"outcomes":{"NOT_A_CODE":1}}"#,
            r#"{"countries":[["Germany",1]]}"#,
            r#"{"latency":"zz"}"#,
            r#"{"outcomes":{"ok":-1}}"#,
        ] {
            assert!(Bucket::decode(corrupt).is_err(), "{corrupt}");
        }
    }

    #[test]
    fn endpoints_past_the_bound_count_as_other() {
        let mut bucket = Bucket::default();
        for endpoint in ["/a", "/b", "/c", "/a"] {
            bucket.record(&sample(endpoint, 1.0), 2);
        }
        assert_eq!(
            bucket.endpoints,
            vec![(Arc::from("/a"), 2), (Arc::from("/b"), 1)]
        );
        assert_eq!(bucket.other_endpoints, 1);
        bucket.record(
            &Sample {
                outcome: Outcome::Rejected(Rejection::InvalidApiKey),
                status: Some(401),
                endpoint: None,
                country: None,
                latency_ms: None,
            },
            2,
        );
        assert_eq!(
            bucket.outcomes[1],
            (Outcome::Rejected(Rejection::InvalidApiKey), 1)
        );
        assert_eq!(bucket.statuses, vec![(200, 4), (401, 1)]);
    }
}
