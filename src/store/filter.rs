//! Which keys a listing wants ([`KeyFilter`]) and one page of them ([`Listing`]): what the
//! console's key list asks of a store, so that a store with an index answers it without reading
//! every key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::clock::LATEST_UNIX_SECONDS;
use crate::key::Environment;

use super::{KeyRecord, KeyState};

/// The keys a listing wants: every filter that is set must hold.
///
/// ```
/// use std::time::SystemTime;
/// use tower_api_key::{Environment, key::SecretDigest};
/// use tower_api_key::store::{KeyFilter, KeyRecord, KeyState};
///
/// let mut record = KeyRecord::new("3kTMd9Qx2bLp", SecretDigest::of(b"s"), "CI deploys", Environment::Live);
/// record.owner = Some("acme".into());
/// let now = SystemTime::now();
/// let filter = KeyFilter::new().owner("acme").state(KeyState::Active).name("deploy");
/// assert!(filter.matches(&record, now));
/// assert!(!filter.environment(Environment::Test).matches(&record, now));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyFilter {
    /// Keys of this owner only.
    pub owner: Option<String>,
    /// Keys of this environment only.
    pub environment: Option<Environment>,
    /// Keys in this state at the listing's time only.
    pub state: Option<KeyState>,
    /// Keys whose name contains this, whatever the case: both are compared lowercased, as
    /// [`str::to_lowercase`] lowercases them.
    pub name: Option<String>,
    /// Keys created before this time only: keys due for rotation.
    pub created_before: Option<SystemTime>,
    /// Keys with no request since this time only (`last_used_at` before it, or never): keys to
    /// delete. The last use is what [`StoreUsage`](crate::usage::StoreUsage) flushed to the
    /// store; without it every key counts as never used.
    pub unused_since: Option<SystemTime>,
    /// Keys not expired at the listing's time that expire before this time only: keys about
    /// to expire, whose holders need a successor.
    pub expiring_before: Option<SystemTime>,
}

impl KeyFilter {
    /// Every key.
    pub fn new() -> Self {
        KeyFilter::default()
    }

    /// Keys of `owner` only.
    #[must_use]
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Keys of `environment` only.
    #[must_use]
    pub fn environment(mut self, environment: Environment) -> Self {
        self.environment = Some(environment);
        self
    }

    /// Keys in `state` only.
    #[must_use]
    pub fn state(mut self, state: KeyState) -> Self {
        self.state = Some(state);
        self
    }

    /// Keys whose name contains `part`, whatever the case.
    #[must_use]
    pub fn name(mut self, part: impl Into<String>) -> Self {
        self.name = Some(part.into());
        self
    }

    /// Keys created before `at` only.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use tower_api_key::store::KeyFilter;
    ///
    /// // Keys older than 90 days, due for rotation.
    /// let ninety_days = Duration::from_secs(90 * 86_400);
    /// let due = KeyFilter::new().created_before(SystemTime::now() - ninety_days);
    /// assert!(due.created_before.is_some());
    /// ```
    #[must_use]
    pub fn created_before(mut self, at: SystemTime) -> Self {
        self.created_before = Some(at);
        self
    }

    /// Keys created longer than `by` before `now` only: [`created_before`](Self::created_before)
    /// `now - by`, or 1970 at most.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use tower_api_key::store::KeyFilter;
    ///
    /// let now = SystemTime::now();
    /// let due = KeyFilter::new().created_longer_ago(now, Duration::from_secs(90 * 86_400));
    /// assert!(due.created_before < Some(now));
    /// ```
    #[must_use]
    pub fn created_longer_ago(self, now: SystemTime, by: Duration) -> Self {
        self.created_before(back(now, by))
    }

    /// Keys that got no request through for `by` before `now` only:
    /// [`unused_since`](Self::unused_since) `now - by`, or 1970 at most.
    #[must_use]
    pub fn unused_for(self, now: SystemTime, by: Duration) -> Self {
        self.unused_since(back(now, by))
    }

    /// Keys that got no request through since `at` only: last used before it, or never. Last
    /// use is recorded by [`StoreUsage`](crate::usage::StoreUsage): without it in the layer's
    /// sinks, every key counts as never used.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime, UNIX_EPOCH};
    /// use tower_api_key::{Environment, key::SecretDigest};
    /// use tower_api_key::store::{KeyFilter, KeyRecord};
    ///
    /// let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    /// let month_ago = now - Duration::from_secs(30 * 86_400);
    /// let mut record = KeyRecord::new("3kTMd9Qx2bLp", SecretDigest::of(b"s"), "ci", Environment::Live);
    /// let idle = KeyFilter::new().unused_since(month_ago);
    /// assert!(idle.matches(&record, now), "never used");
    /// record.last_used_at = Some(now - Duration::from_secs(86_400));
    /// assert!(!idle.matches(&record, now), "used yesterday");
    /// ```
    #[must_use]
    pub fn unused_since(mut self, at: SystemTime) -> Self {
        self.unused_since = Some(at);
        self
    }

    /// Keys that have not expired at the listing's time and expire before `at` only.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tower_api_key::{Environment, key::SecretDigest};
    /// use tower_api_key::store::KeyFilter;
    /// use tower_api_key::store::KeyRecord;
    ///
    /// let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    /// let day = Duration::from_secs(86_400);
    /// let soon = KeyFilter::new().expiring_before(now + 7 * day);
    /// let mut record = KeyRecord::new("3kTMd9Qx2bLp", SecretDigest::of(b"s"), "ci", Environment::Live);
    /// assert!(!soon.matches(&record, now), "never expires");
    /// record.expires_at = Some(now + 2 * day);
    /// assert!(soon.matches(&record, now), "in two days");
    /// record.expires_at = Some(now - day);
    /// assert!(!soon.matches(&record, now), "expired already");
    /// ```
    #[must_use]
    pub fn expiring_before(mut self, at: SystemTime) -> Self {
        self.expiring_before = Some(at);
        self
    }

    /// Keys that have not expired at `now` and expire within `by` of it only:
    /// [`expiring_before`](Self::expiring_before) `now + by`, or, past the year 9999 (the
    /// latest expiry a record keeps), every key that expires.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use tower_api_key::store::KeyFilter;
    ///
    /// let now = SystemTime::now();
    /// let week = KeyFilter::new().expiring_within(now, Duration::from_secs(7 * 86_400));
    /// assert!(week.expiring_before.is_some());
    /// let ever = KeyFilter::new().expiring_within(now, Duration::MAX);
    /// assert!(ever.expiring_before.is_some());
    /// ```
    #[must_use]
    pub fn expiring_within(self, now: SystemTime, by: Duration) -> Self {
        let end = UNIX_EPOCH + Duration::from_secs(LATEST_UNIX_SECONDS + 1);
        self.expiring_before(now.checked_add(by).map_or(end, |at| at.min(end)))
    }

    /// Whether `record` passes every filter at `now`.
    pub fn matches(&self, record: &KeyRecord, now: SystemTime) -> bool {
        self.matcher(now)(record)
    }

    /// [`matches`](Self::matches) at `now`, for many records: the searched-for part of the
    /// name is lowercased once.
    pub(crate) fn matcher(&self, now: SystemTime) -> impl Fn(&KeyRecord) -> bool + '_ {
        let name = self.name_matcher();
        move |record| {
            (self.owner.is_none() || record.owner == self.owner)
                && self.environment.is_none_or(|e| record.environment == e)
                && self.state.is_none_or(|s| record.state(now) == s)
                && self.created_before.is_none_or(|at| record.created_at < at)
                && self
                    .unused_since
                    .is_none_or(|at| record.last_used_at.is_none_or(|used| used < at))
                && self.expiring_before.is_none_or(|at| {
                    (record.expires_at).is_some_and(|expires| now < expires && expires < at)
                })
                && name(&record.name)
        }
    }

    /// Whether a name passes the name filter, the searched-for part lowercased once.
    pub(crate) fn name_matcher(&self) -> impl Fn(&str) -> bool {
        let part = self.name.as_deref().map(str::to_lowercase);
        move |name| (part.as_deref()).is_none_or(|part| name.to_lowercase().contains(part))
    }
}

/// `by` before `now`, or 1970 if that is earlier.
fn back(now: SystemTime, by: Duration) -> SystemTime {
    now.checked_sub(by).unwrap_or(UNIX_EPOCH).max(UNIX_EPOCH)
}

/// One page of a listing: the keys from an offset, and how many match in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listing {
    /// The page's keys, ordered as [`KeyStoreAdmin::list`](super::KeyStoreAdmin::list) orders
    /// them: by creation time, then id.
    pub records: Vec<KeyRecord>,
    /// How many keys match, on every page.
    pub total: usize,
}

impl Listing {
    /// The page of `matching` (every key that matches, in order) from `offset`, at most `limit`
    /// keys.
    ///
    /// ```
    /// use tower_api_key::{Environment, key::SecretDigest, store::{KeyRecord, Listing}};
    ///
    /// let keys: Vec<KeyRecord> = (0..5)
    ///     .map(|i| KeyRecord::new(format!("id{i}"), SecretDigest::of(b"s"), "k", Environment::Live))
    ///     .collect();
    /// let page = Listing::page(keys, 3, 10);
    /// assert_eq!((page.records.len(), page.total), (2, 5));
    /// ```
    pub fn page(matching: Vec<KeyRecord>, offset: usize, limit: usize) -> Self {
        let total = matching.len();
        let records = matching.into_iter().skip(offset).take(limit).collect();
        Listing { records, total }
    }

    /// The page of `records` (in order) that `filter` lets through at `now`, from `offset`, at
    /// most `limit` keys.
    pub(crate) fn filtered(
        records: Vec<KeyRecord>,
        filter: &KeyFilter,
        now: SystemTime,
        offset: usize,
        limit: usize,
    ) -> Self {
        let matches = filter.matcher(now);
        let matching = records.into_iter().filter(|r| matches(r)).collect();
        Listing::page(matching, offset, limit)
    }
}
