//! Where usage analytics keep their time series, so that every replica's report shows the whole
//! service: [`UsageArchive`], implemented by every store of this crate, and its rows,
//! [`UsageRow`].
//!
//! Each replica writes only its own rows, each the replica's whole count for one key (or for the
//! requests with no verified key) in one bucket of time, replacing what it wrote before: a
//! flush that is retried counts nothing twice. A report reads every replica's rows and adds
//! them up.

use std::sync::Arc;

use async_trait::async_trait;

use super::StoreError;

/// One replica's usage of one key in one bucket of time. The store keeps `data` as text and
/// never reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageRow {
    /// The process that wrote it.
    pub replica: String,
    /// The key's id; empty for the requests whose key was not verified.
    pub key: String,
    /// The key's owner, if it has one.
    pub owner: Option<String>,
    /// The bucket's length in seconds: 60, 3,600 or 86,400.
    pub resolution: u32,
    /// Unix seconds of the bucket's start.
    pub start: u64,
    /// The counts, as the analytics encode them (JSON).
    pub data: String,
}

impl UsageRow {
    /// A row of `replica`, for `key` (empty: no verified key) of `owner`, in the bucket of
    /// `resolution` seconds from `start`, holding `data`.
    ///
    /// ```
    /// use tower_api_key::store::UsageRow;
    /// let row = UsageRow::new("r1", "3kTMd9Qx2bLp", Some("acme"), 60, 1_800_000_000, "{}");
    /// assert_eq!(row.owner.as_deref(), Some("acme"));
    /// ```
    pub fn new(
        replica: &str,
        key: &str,
        owner: Option<&str>,
        resolution: u32,
        start: u64,
        data: impl Into<String>,
    ) -> Self {
        UsageRow {
            replica: replica.to_owned(),
            key: key.to_owned(),
            owner: owner.map(str::to_owned),
            resolution,
            start,
            data: data.into(),
        }
    }
}

/// Which rows to read: those of one resolution whose start is in `from..to`, of every replica,
/// of one key, of some keys or of one owner if given (of all that are given).
///
/// ```
/// use tower_api_key::store::UsageRange;
///
/// // The hourly rows of the last day, of two keys: one read for a page of keys.
/// let ids = ["aBQOE0BWltyb", "Zx81kTqwEr0p"];
/// let range = UsageRange::new(3_600, 1_800_000_000 - 86_400, 1_800_000_000).keys(&ids);
/// assert_eq!(range.keys.map(<[_]>::len), Some(2));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageRange<'a> {
    /// The buckets' length in seconds.
    pub resolution: u32,
    /// Unix seconds: the first start included.
    pub from: u64,
    /// Unix seconds: the first start left out.
    pub to: u64,
    /// Only this key's rows.
    pub key: Option<&'a str>,
    /// Only the rows of this owner's keys.
    pub owner: Option<&'a str>,
    /// Only the rows of these keys (none given: no rows).
    pub keys: Option<&'a [&'a str]>,
}

impl<'a> UsageRange<'a> {
    /// Every row of `resolution` from `from` to `to`.
    pub fn new(resolution: u32, from: u64, to: u64) -> Self {
        UsageRange {
            resolution,
            from,
            to,
            key: None,
            owner: None,
            keys: None,
        }
    }

    /// Only `key`'s rows.
    pub fn key(mut self, key: &'a str) -> Self {
        self.key = Some(key);
        self
    }

    /// Only the rows of `owner`'s keys.
    pub fn owner(mut self, owner: &'a str) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Only the rows of `keys`.
    pub fn keys(mut self, keys: &'a [&'a str]) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Whether `row` is in the range: what the stores' queries select.
    pub(crate) fn contains(&self, row: &UsageRow) -> bool {
        row.resolution == self.resolution
            && (self.from..self.to).contains(&row.start)
            && self.key.is_none_or(|key| row.key == key)
            && self
                .keys
                .is_none_or(|keys| keys.contains(&row.key.as_str()))
            && self
                .owner
                .is_none_or(|owner| row.owner.as_deref() == Some(owner))
    }
}

/// Where [`Analytics`](crate::usage) flush their buckets and read other replicas' (feature
/// `analytics`). The SQLite and PostgreSQL stores keep rows in a table `<table>_usage`; the
/// Redis store in one hash per bucket (`<prefix>usage:<resolution>:<start>`) that expires with
/// its retention; the memory store in memory.
#[async_trait]
pub trait UsageArchive: Send + Sync + 'static {
    /// Writes `rows`, each replacing the row of the same replica, key, resolution and start, and
    /// drops the rows of each resolution in `expire` that start before its time: `(resolution,
    /// start)`.
    async fn write_usage(&self, rows: &[UsageRow], expire: &[(u32, u64)])
        -> Result<(), StoreError>;

    /// The rows in `range`, of every replica.
    async fn read_usage(&self, range: &UsageRange<'_>) -> Result<Vec<UsageRow>, StoreError>;
}

#[async_trait]
impl<T: UsageArchive + ?Sized> UsageArchive for Arc<T> {
    async fn write_usage(
        &self,
        rows: &[UsageRow],
        expire: &[(u32, u64)],
    ) -> Result<(), StoreError> {
        (**self).write_usage(rows, expire).await
    }

    async fn read_usage(&self, range: &UsageRange<'_>) -> Result<Vec<UsageRow>, StoreError> {
        (**self).read_usage(range).await
    }
}
