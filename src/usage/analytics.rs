//! [`Analytics`]: usage over time per key, per owner and for the whole service, in memory.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use foldhash::fast::RandomState;
use thread_local::ThreadLocal;

use super::bucket::{Bucket, Sample};
use super::flusher::{Flush, Flusher};
use super::report::{ranked, Point, Resolution, Subject, UsageReport};
use super::run::{Run, Whose};
use super::series::Series;
use super::{UsageEvent, UsageSink};
use crate::clock::unix_seconds;
use crate::store::{StoreError, UsageArchive, UsageRange, UsageRow};

/// How [`Analytics`] keeps usage.
///
/// ```
/// use tower_api_key::usage::{Analytics, AnalyticsConfig};
///
/// // A service with few routes, whose reports rank the top 5.
/// let mut config = AnalyticsConfig::default();
/// config.max_endpoints = 16;
/// config.top = 5;
/// let analytics = Analytics::with_config(config);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AnalyticsConfig {
    /// How many endpoints a bucket names; requests to others count as `other`. 64 by default.
    pub max_endpoints: usize,
    /// How many endpoints and countries a report ranks. 10 by default.
    pub top: usize,
    /// How long a bucket stays in memory once its time is over and a [`flush`](Analytics::flush)
    /// has written it: 1 hour by default. A key idle since a day that ended that long ago is
    /// then forgotten altogether. Reports across replicas read the rest from the store;
    /// [`usage`](Analytics::usage), from memory only, covers what is kept. `Duration::MAX`
    /// keeps every bucket for its resolution's retention, and every key.
    pub keep_flushed: Duration,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            max_endpoints: 64,
            top: 10,
            keep_flushed: Duration::from_secs(3_600),
        }
    }
}

/// Usage analytics: a [`UsageSink`] that keeps time series per key and for the requests whose
/// key was not verified, per minute (kept 24 hours), hour (30 days) and day (13 months), and
/// answers [`usage`](Analytics::usage) for a key, an owner or the whole service: requests by
/// outcome and status, the error rate, latency percentiles (p50, p95, p99), top endpoints and
/// countries.
///
/// A request is counted in its thread's *run*: consecutive requests of one key (or of no
/// verified key) in one minute, counted under the run's uncontended lock without a map lookup.
/// A run ends, and is merged into its key's series, when its thread records another key or
/// minute, and whenever usage is read or flushed: a report counts every request recorded before
/// it began. A run's first request goes to the key's series at once (one map read, the series'
/// lock), so requests that change key every time cost no more than without runs. When a minute
/// ends its bucket is merged into its hour and day. Requests whose key was not verified share a
/// few series (sharded by thread), so made-up keys grow nothing.
///
/// Memory (`benches/memory.rs`): a key's first bucket about 600 bytes with the key's series,
/// each further bucket about 450, plus 24 bytes per endpoint and country it names; latencies
/// are the sketch's non-zero bins, 16 bytes each. A key idle for a period holds no bucket for
/// it. Without a store, a key busy every minute holds at most 1,440 + 720 + 396 buckets. With
/// one ([`flush`](Analytics::flush), [`spawn_flusher`](Analytics::spawn_flusher)), a bucket
/// leaves memory once it is written and its time has been over for
/// [`keep_flushed`](AnalyticsConfig::keep_flushed) (an hour): a key busy every minute then
/// holds about 60 + 2 + 2, plus what is not written yet, and a key idle since a day that
/// ended that long ago holds nothing: its series is forgotten (a request for it, even one
/// begun before, makes it again; the flush then adds to the store's rows rather than writing
/// over them). Memory is then bounded by the keys used in the last day or so, not by every key
/// ever used. Without a store, every key used keeps at least its newest minute. Each thread
/// that records keeps its run: a bucket's worth, and a dense count of the latencies it saw (8
/// bytes a bin, at most 16 KiB).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_api_key::usage::{Analytics, Resolution, Subject};
/// use tower_api_key::{ApiKeyLayer, MemoryStore};
///
/// let analytics = Analytics::new();
/// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
///     .usage_sink(analytics.clone())
///     .build()?;
/// // Later, in an admin handler: the last hour, minute by minute.
/// let now = SystemTime::now();
/// let report = analytics.usage(
///     Subject::All,
///     now - Duration::from_secs(3_600)..now,
///     Resolution::Minute,
/// );
/// // One point per minute that overlaps the range: 60, or 61 when it starts mid-minute.
/// assert!(matches!(report.series.len(), 60 | 61));
/// let json = serde_json::to_string(&report)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Analytics {
    inner: Arc<Inner>,
}

struct Inner {
    config: AnalyticsConfig,
    /// This process's name in the store's rows.
    replica: Box<str>,
    /// Held by a flush: two at once could write an older copy of a bucket after a newer one.
    flushing: tokio::sync::Mutex<()>,
    /// Held by a report while it reads the store and memory, and by a flush while it changes
    /// which buckets memory holds whole: a report counts each bucket once, from one or the
    /// other.
    holding: tokio::sync::RwLock<()>,
    /// Keyed by verified keys only (foldhash, seeded per map): a client cannot choose the ids.
    keys: DashMap<Box<str>, Mutex<Series>, RandomState>,
    /// The latest second by which every bucket of a series a flush forgot was over: a series
    /// made since starts each bucket over by then as partial. 0: no series was forgotten.
    forgotten_before: AtomicU64,
    unauthenticated: [Mutex<Series>; SHARDS],
    /// Each thread's run of requests, not yet in its series: one per thread however many there
    /// are, so a thread's run is ended only by its own requests (or a report). A thread that
    /// ends leaves its run to the next thread given its place.
    runs: ThreadLocal<OwnRun>,
}

/// A thread's run, its lock on a cache line of its own (threads do not share one), and the
/// thread's shard of the unauthenticated series.
#[repr(align(128))]
struct OwnRun {
    shard: usize,
    run: Mutex<Run>,
}

/// How many shards the unauthenticated series are spread over, by thread.
const SHARDS: usize = 8;

/// The shard of the unauthenticated series this thread records in.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        // Set on the thread's first request; a constant start, so reading it is one load.
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|shard| {
        if shard.get() == usize::MAX {
            shard.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        shard.get()
    })
}

/// A series or a run, even if a thread panicked while holding it: a count cut short is still a
/// count.
fn lock<T>(series: &Mutex<T>) -> MutexGuard<'_, T> {
    series.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The buckets a flush took to write: marked changed again when dropped before the write
/// succeeded (on an error, or when the flush is cancelled), so the next flush writes them.
struct Unwritten<'a> {
    analytics: &'a Analytics,
    /// Each bucket's series, resolution and start.
    from: Vec<(Source, Resolution, u64)>,
}

impl Drop for Unwritten<'_> {
    fn drop(&mut self) {
        for (source, resolution, start) in self.from.drain(..) {
            self.analytics.with_series(borrowed(&source), |series| {
                series.mark_dirty(resolution, start);
            });
        }
    }
}

/// A series of [`Analytics`]: a key's, or an unauthenticated shard's.
type Source = Result<Box<str>, usize>;

/// `source`, borrowed.
fn borrowed(source: &Source) -> Result<&str, usize> {
    source.as_deref().map_err(|&shard| shard)
}

/// A [`Flusher`]'s job: `analytics` to `archive`.
struct FlushTo<A> {
    analytics: Analytics,
    archive: A,
}

impl<A: UsageArchive> Flush for FlushTo<A> {
    async fn flush(&self) -> Result<usize, StoreError> {
        self.analytics.flush(&self.archive).await
    }
}

impl fmt::Debug for Analytics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Analytics")
            .field("config", &self.inner.config)
            .field("keys", &self.inner.keys.len())
            .finish_non_exhaustive()
    }
}

impl Analytics {
    /// No usage yet, the default configuration.
    pub fn new() -> Self {
        Analytics::with_config(AnalyticsConfig::default())
    }

    /// No usage yet, configured by `config`.
    pub fn with_config(config: AnalyticsConfig) -> Self {
        let mut random = [0u8; 8];
        // Without randomness, the time: unique enough for a replica's name.
        if getrandom::fill(&mut random).is_err() {
            random = unix_seconds(SystemTime::now()).to_le_bytes();
        }
        Analytics {
            inner: Arc::new(Inner {
                config,
                replica: hex::encode(random).into(),
                flushing: tokio::sync::Mutex::new(()),
                holding: tokio::sync::RwLock::new(()),
                keys: DashMap::default(),
                forgotten_before: AtomicU64::new(0),
                unauthenticated: Default::default(),
                runs: ThreadLocal::new(),
            }),
        }
    }

    /// How many keys have usage kept in memory (with a flusher, the keys idle since a day
    /// that ended over [`keep_flushed`](AnalyticsConfig::keep_flushed) ago are not).
    pub fn keys(&self) -> usize {
        self.settle();
        self.inner.keys.len()
    }

    /// How many buckets are kept, of every key and resolution: what memory use grows with.
    pub fn buckets(&self) -> usize {
        self.settle();
        let keys: usize = self
            .inner
            .keys
            .iter()
            .map(|series| lock(&series).len())
            .sum();
        let unauthenticated: usize = self
            .inner
            .unauthenticated
            .iter()
            .map(|s| lock(s).len())
            .sum();
        keys + unauthenticated
    }

    /// This process's name in the store's rows: random, drawn when the analytics were made, so
    /// a restarted process never overwrites the rows of the one before it.
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// The usage of `subject` in `range` as this process saw it, from memory, one point per
    /// bucket of `resolution` that overlaps it. A range longer than the resolution's retention
    /// starts at the retention's start; a range that is empty gives no points. Buckets that a
    /// flush wrote and dropped ([`keep_flushed`](AnalyticsConfig::keep_flushed)) are not in
    /// it: for them, and for the whole service across replicas, see
    /// [`usage_across`](Self::usage_across).
    pub fn usage(
        &self,
        subject: Subject<'_>,
        range: Range<SystemTime>,
        resolution: Resolution,
    ) -> UsageReport {
        let window = Window::of(&range, resolution);
        let mut buckets = window.buckets();
        self.settle();
        self.add_local(subject, &window, &mut buckets);
        self.report(subject, &window, &buckets)
    }

    /// As [`usage`](Self::usage), every replica's usage: the rows the others flushed to
    /// `archive`, and this process's own from memory (fresher than its rows), or from its rows
    /// where a flush dropped them from memory. A flush waits to drop buckets until the reports
    /// reading meanwhile are done, so each request is counted once.
    ///
    /// # Errors
    /// When the store fails, or holds a row that does not read back.
    pub async fn usage_across<A: UsageArchive + ?Sized>(
        &self,
        archive: &A,
        subject: Subject<'_>,
        range: Range<SystemTime>,
        resolution: Resolution,
    ) -> Result<UsageReport, StoreError> {
        let _held = self.inner.holding.read().await;
        let window = Window::of(&range, resolution);
        let mut wanted = window.rows();
        match subject {
            Subject::All => {}
            Subject::Key(id) => wanted = wanted.key(id),
            Subject::Owner(owner) => wanted = wanted.owner(owner),
        }
        let mut buckets = window.buckets();
        for row in archive.read_usage(&wanted).await? {
            self.add_row(&row, &window, &mut buckets)?;
        }
        self.settle();
        self.add_local(subject, &window, &mut buckets);
        Ok(self.report(subject, &window, &buckets))
    }

    /// As [`usage_across`](Self::usage_across) for each of `keys`, in their order, from one
    /// read of the store: a page of keys, each with its recent usage (the console's key list
    /// shows each key's last 24 hours this way). A key with no usage gets a report of zeros.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::time::{Duration, SystemTime};
    /// use tower_api_key::usage::{Analytics, Resolution};
    /// use tower_api_key::MemoryStore;
    ///
    /// let (analytics, store) = (Analytics::new(), MemoryStore::new());
    /// let now = SystemTime::now();
    /// let day = now - Duration::from_secs(86_400)..now;
    /// let reports = analytics
    ///     .usage_across_keys(&store, &["aBQOE0BWltyb", "Zx81kTqwEr0p"], day, Resolution::Hour)
    ///     .await?;
    /// assert_eq!(reports.len(), 2);
    /// assert_eq!(reports[1].id.as_deref(), Some("Zx81kTqwEr0p"));
    /// assert_eq!(reports[1].totals.requests, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// When the store fails, or holds a row that does not read back.
    pub async fn usage_across_keys<A: UsageArchive + ?Sized>(
        &self,
        archive: &A,
        keys: &[&str],
        range: Range<SystemTime>,
        resolution: Resolution,
    ) -> Result<Vec<UsageReport>, StoreError> {
        let _held = self.inner.holding.read().await;
        let window = Window::of(&range, resolution);
        let wanted = window.rows();
        let mut buckets: Vec<Vec<Bucket>> = keys.iter().map(|_| window.buckets()).collect();
        if !keys.is_empty() {
            // Each key's first place; a key named twice gets the same report twice.
            let mut index: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
            for (n, key) in keys.iter().enumerate() {
                index.entry(key).or_insert(n);
            }
            for row in archive.read_usage(&wanted.keys(keys)).await? {
                // A store that does not narrow by keys gives others too.
                if let Some(&n) = index.get(row.key.as_str()) {
                    self.add_row(&row, &window, &mut buckets[n])?;
                }
            }
            for (n, key) in keys.iter().enumerate() {
                if index[key] != n {
                    buckets[n] = buckets[index[key]].clone();
                }
            }
        }
        self.settle();
        Ok(keys
            .iter()
            .zip(&mut buckets)
            .map(|(key, buckets)| {
                let subject = Subject::Key(key);
                self.add_local(subject, &window, buckets);
                self.report(subject, &window, buckets)
            })
            .collect())
    }

    /// Adds `row`, read from the store, to its bucket among `buckets` of `window`, unless this
    /// process wrote it and holds the bucket whole in memory (fresher).
    fn add_row(
        &self,
        row: &UsageRow,
        window: &Window,
        buckets: &mut [Bucket],
    ) -> Result<(), StoreError> {
        if self.holds(row, window.resolution) {
            return Ok(());
        }
        let bucket = decode(row)?;
        let length = window.resolution.seconds();
        if let Some(slot) = window.slot(buckets, row.start / length) {
            slot.merge(&bucket, self.inner.config.max_endpoints);
        }
        Ok(())
    }

    /// Writes the buckets changed since the last flush to `archive`, each replacing this
    /// replica's row of the same key and bucket (so a flush retried after a failure counts
    /// nothing twice), and drops rows past their retention. Returns how many rows it wrote. On
    /// an error, or if the flush is cancelled (a timeout around it), what it tried to write
    /// stays pending for the next flush: nothing is lost. Flushes of one `Analytics` run one at
    /// a time, so an older copy of a bucket is never written after a newer one.
    ///
    /// Once written, buckets whose time has been over for
    /// [`keep_flushed`](AnalyticsConfig::keep_flushed) leave memory (the time is the newest
    /// request's), and so do the keys idle since a day that ended that long ago. A late
    /// request for one of them (a long request, recorded when it ends) starts the bucket
    /// anew in memory; the next flush reads the bucket's row and adds it before writing, so
    /// the row is added to, not written over.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn flush<A: UsageArchive + ?Sized>(&self, archive: &A) -> Result<usize, StoreError> {
        let _one_at_a_time = self.inner.flushing.lock().await;
        self.settle();
        self.complete_partial(archive).await?;
        let replica = &*self.inner.replica;
        let mut rows = Vec::new();
        // Where each row came from, marked changed again unless the write succeeds.
        let mut unwritten = Unwritten {
            analytics: self,
            from: Vec::new(),
        };
        let mut newest = 0;
        for entry in self.inner.keys.iter() {
            let mut series = lock(entry.value());
            newest = newest.max(series.newest().unwrap_or(0));
            let owner = series.owner.clone();
            for (resolution, start, bucket) in series.take_dirty() {
                let seconds = u32::try_from(resolution.seconds()).unwrap_or(u32::MAX);
                rows.push(UsageRow::new(
                    replica,
                    entry.key(),
                    owner.as_deref(),
                    seconds,
                    start,
                    bucket.encode(),
                ));
                unwritten
                    .from
                    .push((Ok(entry.key().clone()), resolution, start));
            }
        }
        for (shard, series) in self.inner.unauthenticated.iter().enumerate() {
            let mut series = lock(series);
            newest = newest.max(series.newest().unwrap_or(0));
            let replica = self.replica_of(Err(shard));
            for (resolution, start, bucket) in series.take_dirty() {
                let seconds = u32::try_from(resolution.seconds()).unwrap_or(u32::MAX);
                rows.push(UsageRow::new(
                    &replica,
                    "",
                    None,
                    seconds,
                    start,
                    bucket.encode(),
                ));
                unwritten.from.push((Err(shard), resolution, start));
            }
        }
        if rows.is_empty() {
            return Ok(0);
        }
        let expire = [Resolution::Minute, Resolution::Hour, Resolution::Day].map(|resolution| {
            let length = resolution.seconds();
            let before = newest.saturating_sub(resolution.retention().as_secs()) / length * length;
            (u32::try_from(length).unwrap_or(u32::MAX), before)
        });
        archive.write_usage(&rows, &expire).await?;
        unwritten.from.clear();
        let keep = self.inner.config.keep_flushed.as_secs();
        self.drop_written(newest.saturating_sub(keep)).await;
        Ok(rows.len())
    }

    /// Adds to each partial bucket (made by a late request after its time was flushed and
    /// dropped from memory) this replica's row of it, so that it is whole again and the flush
    /// writes it. A row that does not read back is written over (and logged).
    async fn complete_partial<A: UsageArchive + ?Sized>(
        &self,
        archive: &A,
    ) -> Result<(), StoreError> {
        let mut partial: HashMap<(Resolution, u64), Vec<Source>> = HashMap::new();
        for entry in self.inner.keys.iter() {
            for bucket in lock(entry.value()).partial() {
                partial
                    .entry(bucket)
                    .or_default()
                    .push(Ok(entry.key().clone()));
            }
        }
        for (shard, series) in self.inner.unauthenticated.iter().enumerate() {
            for bucket in lock(series).partial() {
                partial.entry(bucket).or_default().push(Err(shard));
            }
        }
        let max_endpoints = self.inner.config.max_endpoints;
        for ((resolution, start), sources) in partial {
            let keys: Vec<&str> = (sources.iter())
                .map(|source| source.as_deref().unwrap_or(""))
                .collect();
            let length = resolution.seconds();
            let seconds = u32::try_from(length).unwrap_or(u32::MAX);
            let range = UsageRange::new(seconds, start, start.saturating_add(length));
            let rows = archive.read_usage(&range.keys(&keys)).await?;
            let _no_report_meanwhile = self.inner.holding.write().await;
            for (source, key) in sources.iter().zip(&keys) {
                let source = borrowed(source);
                let replica = self.replica_of(source);
                let own = rows.iter().find(|row| {
                    (
                        row.replica.as_str(),
                        row.key.as_str(),
                        row.resolution,
                        row.start,
                    ) == (&*replica, *key, seconds, start)
                });
                let stored = match own.map(decode).transpose() {
                    Ok(stored) => stored,
                    // A row that does not read back would stop every flush: written over.
                    Err(error) => {
                        crate::trace::usage_row_replaced(&error);
                        None
                    }
                };
                self.with_series(source, |series| {
                    series.complete(resolution, start, stored.as_ref(), max_endpoints);
                });
            }
        }
        Ok(())
    }

    /// Drops from memory the buckets written to the store whose time ended before second
    /// `before`, and the series of the keys left with nothing else to keep (idle since a day
    /// that ended before it), with no report reading meanwhile.
    async fn drop_written(&self, before: u64) {
        if before == 0 {
            return;
        }
        let _no_report_meanwhile = self.inner.holding.write().await;
        let forgotten = &self.inner.forgotten_before;
        let keys = &self.inner.keys;
        // Each shard of the map locked in turn: a request of a key forgotten here makes its
        // series again once the shard is free, and sees the second it was forgotten before.
        keys.retain(|_, series| {
            let series = series.get_mut().unwrap_or_else(PoisonError::into_inner);
            series.drop_written(before);
            let forget = series.forgettable(before);
            if forget {
                forgotten.fetch_max(before, Ordering::Relaxed);
            }
            !forget
        });
        // The map gives back its room once mostly empty (a burst of keys gone idle).
        if keys.len() < keys.capacity() / 4 {
            keys.shrink_to_fit();
        }
        for series in &self.inner.unauthenticated {
            lock(series).drop_written(before);
        }
    }

    /// Runs `f` on the series of `source` (a key's id, or an unauthenticated shard), if it is
    /// kept.
    fn with_series(&self, source: Result<&str, usize>, f: impl FnOnce(&mut Series)) {
        match source {
            Ok(key) => {
                if let Some(series) = self.inner.keys.get(key) {
                    f(&mut lock(&series));
                }
            }
            Err(shard) => f(&mut lock(&self.inner.unauthenticated[shard])),
        }
    }

    /// The replica named in the store's rows of `source`: this process's name, and for an
    /// unauthenticated shard its number after it (each shard is a replica of its own).
    fn replica_of(&self, source: Result<&str, usize>) -> std::borrow::Cow<'_, str> {
        let replica = &*self.inner.replica;
        match source {
            Ok(_) => replica.into(),
            Err(shard) => format!("{replica}/{shard}").into(),
        }
    }

    /// Whether this process wrote `row` (of `resolution`) and holds its bucket whole in memory.
    fn holds(&self, row: &UsageRow, resolution: Resolution) -> bool {
        let mine = &*self.inner.replica;
        let Some(rest) = row.replica.strip_prefix(mine) else {
            return false;
        };
        let source = match rest.strip_prefix('/') {
            None if rest.is_empty() => Ok(row.key.as_str()),
            Some(shard) if row.key.is_empty() => match shard.parse() {
                Ok(shard) if shard < SHARDS => Err(shard),
                _ => return false,
            },
            _ => return false,
        };
        let mut holds = false;
        self.with_series(source, |series| {
            holds = series.holds(resolution, row.start);
        });
        holds
    }

    /// Flushes to `archive` every `period` on a task of its own, and once more when stopped
    /// ([`Flusher::stop`], at shutdown); a failed flush is retried at the next period.
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    pub fn spawn_flusher<A: UsageArchive>(&self, archive: A, period: Duration) -> Flusher {
        Flusher::spawn(
            FlushTo {
                analytics: self.clone(),
                archive,
            },
            period,
        )
    }

    /// Merges every thread's run into its series, so what is read next counts every request
    /// recorded before.
    fn settle(&self) {
        for own in self.inner.runs.iter() {
            self.end_run(own.shard, &mut lock(&own.run));
        }
    }

    /// Merges what `run` (of `shard`) counted into its series.
    fn end_run(&self, shard: usize, run: &mut Run) {
        let max_endpoints = self.inner.config.max_endpoints;
        run.drain(|whose, secs, counts| {
            self.add(shard, whose, |series| {
                series.merge(counts, secs, max_endpoints);
            });
        });
    }

    /// Adds to the series of `whose` with `add`: its key's (made on its first request), or the
    /// unauthenticated series of `shard`.
    fn add(&self, shard: usize, whose: &Whose<'_>, add: impl FnOnce(&mut Series)) {
        let Some(id) = whose.key else {
            return add(&mut lock(&self.inner.unauthenticated[shard]));
        };
        let record = |series: &Mutex<Series>| {
            let mut series = lock(series);
            if series.owner.as_deref() != whose.owner {
                series.owner = whose.owner.map(Box::from);
            }
            add(&mut series);
        };
        match self.inner.keys.get(id) {
            Some(series) => record(&series),
            None => {
                let forgotten = &self.inner.forgotten_before;
                let made = || Mutex::new(Series::after(forgotten.load(Ordering::Relaxed)));
                record(&self.inner.keys.entry(id.into()).or_insert_with(made));
            }
        }
    }

    /// Adds this process's buckets of `subject` in `window` to `buckets`.
    fn add_local(&self, subject: Subject<'_>, window: &Window, buckets: &mut [Bucket]) {
        let max_endpoints = self.inner.config.max_endpoints;
        let mut add = |series: &Mutex<Series>| {
            lock(series).add_to(window.resolution, window.start, buckets, max_endpoints);
        };
        match subject {
            Subject::All => {
                self.inner.keys.iter().for_each(|series| add(&series));
                self.inner.unauthenticated.iter().for_each(&mut add);
            }
            Subject::Key(id) => {
                if let Some(series) = self.inner.keys.get(id) {
                    add(&series);
                }
            }
            Subject::Owner(owner) => {
                for series in self.inner.keys.iter() {
                    if lock(&series).owner.as_deref() == Some(owner) {
                        add(&series);
                    }
                }
            }
        }
    }

    /// The report of `subject` from its `buckets` in `window`.
    fn report(&self, subject: Subject<'_>, window: &Window, buckets: &[Bucket]) -> UsageReport {
        let length = window.resolution.seconds();
        let mut total = Bucket::default();
        for bucket in buckets {
            total.merge(bucket, usize::MAX);
        }
        let endpoints = total
            .endpoints
            .iter()
            .map(|(name, count)| (&**name, *count))
            .chain(std::iter::once(("other", total.other_endpoints)));
        let top = self.inner.config.top;
        let (kind, id) = match subject {
            Subject::All => ("all", None),
            Subject::Key(id) => ("key", Some(id)),
            Subject::Owner(owner) => ("owner", Some(owner)),
        };
        UsageReport {
            subject: kind,
            id: id.map(str::to_owned),
            resolution: window.resolution,
            from: window.start * length,
            to: window.end * length,
            totals: Point::of(window.start * length, &total),
            series: (window.start..)
                .zip(buckets)
                .map(|(index, bucket)| Point::of(index * length, bucket))
                .collect(),
            top_endpoints: ranked(endpoints, top),
            top_countries: ranked(
                total
                    .countries
                    .iter()
                    .map(|(c, count)| (c.as_str(), *count)),
                top,
            ),
            limits: Vec::new(),
        }
    }
}

/// The bucket of the store's `row`.
fn decode(row: &UsageRow) -> Result<Bucket, StoreError> {
    Bucket::decode(&row.data).map_err(|error| {
        StoreError::unavailable(format!(
            "corrupt usage row (replica {}, resolution {}, start {}): {error}",
            row.replica, row.resolution, row.start
        ))
    })
}

/// The buckets a report covers: indexes `start..end` of `resolution`.
struct Window {
    resolution: Resolution,
    start: u64,
    end: u64,
}

impl Window {
    /// The buckets of `resolution` that overlap `range`, at most its retention's worth.
    fn of(range: &Range<SystemTime>, resolution: Resolution) -> Window {
        let length = resolution.seconds();
        // Up to the end's next whole second: a range that ends within a bucket covers it.
        let end_secs = range.end.duration_since(UNIX_EPOCH).map_or(0, |since| {
            since
                .as_secs()
                .saturating_add(u64::from(since.subsec_nanos() > 0))
        });
        let end = end_secs.div_ceil(length);
        let kept = resolution.retention().as_secs() / length + 1;
        let start = (unix_seconds(range.start) / length).max(end.saturating_sub(kept));
        Window {
            resolution,
            start: start.min(end),
            end,
        }
    }

    /// The store's rows of these buckets.
    fn rows<'a>(&self) -> UsageRange<'a> {
        let length = self.resolution.seconds();
        let seconds = u32::try_from(length).unwrap_or(u32::MAX);
        UsageRange::new(seconds, self.start * length, self.end * length)
    }

    /// An empty bucket per index.
    fn buckets(&self) -> Vec<Bucket> {
        let slots = usize::try_from(self.end - self.start).unwrap_or(0);
        vec![Bucket::default(); slots]
    }

    /// The bucket of index `index` among `buckets`, if it is in the window.
    fn slot<'a>(&self, buckets: &'a mut [Bucket], index: u64) -> Option<&'a mut Bucket> {
        let offset = usize::try_from(index.checked_sub(self.start)?).ok()?;
        buckets.get_mut(offset)
    }
}

impl Default for Analytics {
    fn default() -> Self {
        Analytics::new()
    }
}

impl UsageSink for Analytics {
    fn record(&self, event: &UsageEvent<'_>) {
        let sample = Sample {
            outcome: event.outcome,
            status: event.status.map(|status| status.as_u16()),
            endpoint: event.endpoint,
            country: event.country,
            latency_ms: event.latency.map(|latency| latency.as_secs_f64() * 1_000.0),
        };
        let max_endpoints = self.inner.config.max_endpoints;
        let whose = Whose::of(event);
        let own = self.inner.runs.get_or(|| OwnRun {
            shard: shard(),
            run: Mutex::default(),
        });
        let shard = own.shard;
        let mut run = lock(&own.run);
        if run.continues(&whose, event.at) {
            return run.record(&sample, event.at, max_endpoints);
        }
        let secs = unix_seconds(event.at);
        let minute = secs / 60;
        self.end_run(shard, &mut run);
        // The first request of a run goes to its series at once: a thread whose requests change
        // key every time counts each once, as without runs.
        self.add(shard, &whose, |series| {
            series.record(&sample, secs, max_endpoints);
        });
        run.start(&whose, minute);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc::channel;
    use std::time::UNIX_EPOCH;

    use http::StatusCode;

    use super::*;
    use crate::reject::Rejection;
    use crate::usage::Outcome;
    use crate::MemoryStore;

    /// A midnight.
    const START: u64 = 1_800_000_000 - 1_800_000_000 % 86_400;

    /// A request of `key` (owned by `acme`), or of no verified key, at second `secs`.
    fn event(key: Option<&str>, secs: u64, ms: u64) -> UsageEvent<'_> {
        UsageEvent {
            key_id: key,
            owner: key.map(|_| "acme"),
            outcome: match key {
                Some(_) => Outcome::Ok,
                None => Outcome::Rejected(Rejection::InvalidApiKey),
            },
            status: Some(StatusCode::OK),
            latency: Some(Duration::from_millis(ms)),
            endpoint: Some("/items/{id}"),
            country: None,
            ..UsageEvent::new(UNIX_EPOCH + Duration::from_secs(secs))
        }
    }

    /// The day from `START`, by minute.
    fn day(analytics: &Analytics, subject: Subject<'_>) -> UsageReport {
        let from = UNIX_EPOCH + Duration::from_secs(START);
        let to = from + Duration::from_secs(86_400);
        analytics.usage(subject, from..to, Resolution::Minute)
    }

    /// A report read in the first second of a minute covers that minute's requests so far: the
    /// range's end counts with its fraction of a second.
    #[test]
    fn a_range_ending_within_a_bucket_covers_that_bucket() {
        let analytics = Analytics::new();
        let minute = UNIX_EPOCH + Duration::from_secs(START + 3_600);
        let mut request = event(Some("k1"), START + 3_600, 3);
        request.at = minute + Duration::from_millis(200);
        analytics.record(&request);
        let hour = Duration::from_secs(3_600);
        let read = |end: SystemTime, resolution| {
            let report = analytics.usage(Subject::All, end - hour..end, resolution);
            report.totals.requests
        };
        for read_at in [500, 1_000] {
            let end = minute + Duration::from_millis(read_at);
            for resolution in [Resolution::Minute, Resolution::Hour, Resolution::Day] {
                assert_eq!(read(end, resolution), 1, "{read_at} ms, {resolution:?}");
            }
        }
        // A range that ends where the minute begins does not reach into it.
        assert_eq!(read(minute, Resolution::Minute), 0);
    }

    #[test]
    fn a_run_held_open_on_its_thread_is_read_and_flushed() {
        let analytics = Analytics::new();
        let (to_main, from_thread) = channel();
        let (to_thread, from_main) = channel();
        std::thread::scope(|scope| {
            let analytics = &analytics;
            scope.spawn(move || {
                for _ in 0..5 {
                    analytics.record(&event(Some("k1"), START + 5, 3));
                }
                to_main.send(()).unwrap();
                // Its run of k1 stays open while the main thread reads (which, if it fails,
                // sends nothing more).
                let wait = || from_main.recv_timeout(Duration::from_secs(30));
                if wait().is_err() {
                    return;
                }
                for _ in 0..3 {
                    analytics.record(&event(Some("k1"), START + 6, 3));
                }
                to_main.send(()).unwrap();
                let _ = wait();
            });
            from_thread.recv().unwrap();
            assert_eq!(analytics.keys(), 1);
            assert_eq!(day(analytics, Subject::Key("k1")).totals.requests, 5);
            to_thread.send(()).unwrap();
            from_thread.recv().unwrap();
            let report = day(analytics, Subject::Owner("acme"));
            assert_eq!(report.totals.requests, 8);
            let latency = report.totals.latency.unwrap();
            assert_eq!(latency.count, 8);
            assert!((latency.p50_ms - 3.0).abs() <= 0.03, "{latency:?}");
            // A flush takes the open run too: another replica reads all 8 from the store.
            let store = MemoryStore::new();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            for _ in 0..2 {
                analytics.record(&event(Some("k1"), START + 7, 3));
            }
            assert!(runtime.block_on(analytics.flush(&store)).unwrap() > 0);
            let from = UNIX_EPOCH + Duration::from_secs(START);
            let other = Analytics::new();
            let across = runtime.block_on(other.usage_across(
                &store,
                Subject::Key("k1"),
                from..from + Duration::from_secs(3_600),
                Resolution::Hour,
            ));
            assert_eq!(across.unwrap().totals.requests, 10);
            to_thread.send(()).unwrap();
        });
    }

    /// The requests of `subject` in the day from `START` as its series hold them, without the
    /// runs still open (which a report would end first).
    fn in_series(analytics: &Analytics, subject: Subject<'_>) -> u64 {
        let from = UNIX_EPOCH + Duration::from_secs(START);
        let window = Window::of(
            &(from..from + Duration::from_secs(86_400)),
            Resolution::Minute,
        );
        let mut buckets = window.buckets();
        analytics.add_local(subject, &window, &mut buckets);
        analytics.report(subject, &window, &buckets).totals.requests
    }

    /// Sixteen threads at once, each recording its own key twice with all the others' requests
    /// in between: each thread's second request continues its own run, however many threads
    /// there are (no two share a run, so none ends another's).
    #[test]
    fn every_thread_keeps_a_run_of_its_own() {
        const THREADS: usize = 16;
        let analytics = Analytics::new();
        let ids: Vec<String> = (0..THREADS).map(|thread| format!("t{thread}")).collect();
        let barrier = std::sync::Barrier::new(THREADS);
        std::thread::scope(|scope| {
            for id in &ids {
                let (analytics, barrier) = (&analytics, &barrier);
                scope.spawn(move || {
                    analytics.record(&event(Some(id), START + 5, 3));
                    barrier.wait();
                    analytics.record(&event(Some(id), START + 5, 3));
                });
            }
        });
        for id in &ids {
            // The run's first request is in the series, the second still in the run.
            assert_eq!(in_series(&analytics, Subject::Key(id)), 1, "{id}");
        }
        // The threads have ended; a report still counts what their runs held.
        assert_eq!(
            day(&analytics, Subject::All).totals.requests,
            2 * THREADS as u64
        );
    }

    /// A small generator of test data (xorshift), seeded per thread.
    struct Xorshift(u64);

    impl Xorshift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn threads_recording_while_others_read_lose_and_double_nothing() {
        const THREADS: u64 = 4;
        const EACH: u64 = 20_000;
        const KEYS: [Option<&str>; 4] = [Some("k0"), Some("k1"), Some("k2"), None];
        let analytics = Analytics::new();
        // Requests whose recording has begun: a read never counts more.
        let begun = AtomicU64::new(0);
        let done = std::sync::atomic::AtomicBool::new(false);
        let expected = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut last = 0;
                let mut reads = 0;
                while !done.load(Ordering::Acquire) {
                    let seen = day(&analytics, Subject::All).totals.requests;
                    assert!(seen >= last, "{seen} after {last}");
                    assert!(seen <= begun.load(Ordering::Acquire), "{seen} counted");
                    last = seen;
                    reads += 1;
                }
                reads
            });
            let writers: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let (analytics, begun) = (&analytics, &begun);
                    scope.spawn(move || {
                        let mut random = Xorshift(0x9E37_79B9_7F4A_7C15 ^ (thread + 1));
                        let mut counts = HashMap::new();
                        for _ in 0..EACH {
                            // Runs of the same key, broken by others; seconds out of order
                            // over three minutes, so some requests come late.
                            let key = KEYS[usize::try_from(random.below(4)).unwrap()];
                            let secs = START + random.below(180);
                            for _ in 0..=random.below(3) {
                                begun.fetch_add(1, Ordering::AcqRel);
                                analytics.record(&event(key, secs, 1 + random.below(50)));
                                *counts.entry((key, secs / 60)).or_insert(0u64) += 1;
                            }
                        }
                        counts
                    })
                })
                .collect();
            let mut expected = HashMap::new();
            for writer in writers {
                for (at, count) in writer.join().unwrap() {
                    *expected.entry(at).or_insert(0) += count;
                }
            }
            done.store(true, Ordering::Release);
            assert!(reader.join().unwrap() > 0);
            expected
        });
        for key in KEYS {
            let report = match key {
                Some(id) => day(&analytics, Subject::Key(id)),
                None => {
                    let all = day(&analytics, Subject::All);
                    let keys: u64 = (KEYS.iter().flatten())
                        .map(|id| day(&analytics, Subject::Key(id)).totals.requests)
                        .sum();
                    assert_eq!(all.totals.latency.unwrap().count, all.totals.requests);
                    assert_eq!(all.totals.requests, begun.load(Ordering::Acquire));
                    // What no key's series holds is the unverified requests'.
                    let unverified = all.totals.requests - keys;
                    let want: u64 = (expected.iter())
                        .filter(|((k, _), _)| k.is_none())
                        .map(|(_, count)| count)
                        .sum();
                    assert_eq!(unverified, want);
                    continue;
                }
            };
            for minute in 0..3 {
                let want = expected.get(&(key, START / 60 + minute)).copied();
                let got = report.series[usize::try_from(minute).unwrap()].requests;
                assert_eq!(got, want.unwrap_or(0), "{key:?} minute {minute}");
            }
            assert_eq!(report.totals.latency.unwrap().count, report.totals.requests);
        }
    }
}
