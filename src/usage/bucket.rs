//! One time bucket of usage: requests by outcome and status, latencies as a mergeable sketch's
//! bins (DDSketch, 1 % relative error), endpoints and countries. Buckets merge, so an hour is its
//! minutes merged and the service is its keys merged.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::latency::Latencies;
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
    pub(crate) latency: Latencies,
    /// Changed since it was last written to the store.
    pub(crate) dirty: bool,
    /// Made after this bucket's time had been flushed and dropped from memory (a late
    /// request): the store's row of this replica holds the rest, which the next flush adds
    /// before it writes.
    pub(crate) partial: bool,
}

/// Adds `by` to the count of `item` in `counts`, a short list searched from the start.
fn add<T: PartialEq + ?Sized, O: std::borrow::Borrow<T>>(
    counts: &mut Vec<(O, u64)>,
    item: &T,
    by: u64,
    new: impl FnOnce() -> Option<O>,
) -> bool {
    if let Some((_, count)) = counts.iter_mut().find(|(name, _)| name.borrow() == item) {
        *count = count.saturating_add(by);
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
        self.add_outcome(sample.outcome, 1);
        self.record_answer(sample, max_endpoints);
        if let Some(ms) = sample.latency_ms {
            self.latency.add(ms);
        }
    }

    /// Adds `by` requests of `outcome`.
    pub(crate) fn add_outcome(&mut self, outcome: Outcome, by: u64) {
        self.dirty = true;
        add(&mut self.outcomes, &outcome, by, || Some(outcome));
    }

    /// Records `sample`'s status, endpoint and country (not its outcome or latency).
    pub(crate) fn record_answer(&mut self, sample: &Sample<'_>, max_endpoints: usize) {
        self.dirty = true;
        if let Some(status) = sample.status {
            add(&mut self.statuses, &status, 1, || Some(status));
        }
        if let Some(endpoint) = sample.endpoint {
            self.add_endpoint(endpoint, 1, max_endpoints);
        }
        if let Some(country) = sample.country {
            add(&mut self.countries, &country, 1, || Some(country));
        }
    }

    fn add_endpoint(&mut self, endpoint: &str, by: u64, max_endpoints: usize) {
        let room = self.endpoints.len() < max_endpoints;
        if !add(&mut self.endpoints, endpoint, by, || {
            room.then(|| endpoint.into())
        }) {
            self.other_endpoints = self.other_endpoints.saturating_add(by);
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
        self.other_endpoints = self.other_endpoints.saturating_add(other.other_endpoints);
        for &(country, count) in &other.countries {
            add(&mut self.countries, &country, count, || Some(country));
        }
        self.latency.merge(&other.latency);
    }

    /// Packs the bucket for keeping (its sketch, and its lists to their length): it will be read,
    /// and merged from, but rarely written again.
    pub(crate) fn pack(&mut self) {
        self.latency.shrink();
        self.outcomes.shrink_to_fit();
        self.statuses.shrink_to_fit();
        self.endpoints.shrink_to_fit();
        self.countries.shrink_to_fit();
    }

    /// Empties the bucket, keeping its lists' room for the next requests.
    pub(crate) fn clear(&mut self) {
        self.outcomes.clear();
        self.statuses.clear();
        self.endpoints.clear();
        self.other_endpoints = 0;
        self.countries.clear();
        self.latency.clear();
        self.dirty = false;
    }

    /// Requests in all.
    pub(crate) fn requests(&self) -> u64 {
        (self.outcomes.iter()).fold(0, |total, (_, count)| total.saturating_add(*count))
    }
}

/// A bucket as the store keeps it: JSON, outcomes by code, the latencies' bins.
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
    latency: Option<Latencies>,
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
            latency: (self.latency.count() > 0).then(|| self.latency.clone()),
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
            bucket.latency = latency.checked()?;
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
    fn buckets_merge_latencies_and_all() {
        let mut a = Bucket::default();
        let mut b = Bucket::default();
        for ms in 1..=100 {
            a.record(&sample("/a", f64::from(ms)), 10);
            b.record(&sample("/b", f64::from(ms + 100)), 10);
        }
        b.pack();
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
            r#"{"latency":{"bins":[[2147483647,1]]}}"#,
            r#"{"latency":{"bins":[[100,18446744073709551615]],"zeros":1}}"#,
            r#"{"outcomes":{"ok":-1}}"#,
        ] {
            assert!(Bucket::decode(corrupt).is_err(), "{corrupt}");
        }
    }

    proptest::proptest! {
        /// Whatever a store hands back, reading it is a value or an error, never a panic, and
        /// what reads back gives percentiles.
        #[test]
        fn any_stored_text_reads_back_or_is_an_error(
            bins in proptest::collection::vec(
                (proptest::prelude::any::<i32>(), proptest::prelude::any::<u64>()),
                0..16,
            ),
            small in proptest::collection::vec((-300i32..2_000, 0u64..1_000), 0..16),
            zeros in proptest::prelude::any::<u64>(),
            text in ".{0,64}",
        ) {
            for bins in [bins, small] {
                let latency = serde_json::json!({"bins": bins, "zeros": zeros});
                let stored = serde_json::json!({"latency": latency}).to_string();
                if let Ok(bucket) = Bucket::decode(&stored) {
                    // Merged with itself (counts near the limit meet), then reported.
                    let mut twice = bucket.clone();
                    twice.merge(&bucket, 10);
                    let _ = crate::usage::Point::of(0, &twice);
                }
            }
            let _ = Bucket::decode(&text);
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
