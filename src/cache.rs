//! The cache in front of the store: one entry per key id, whose invalidations always win.
//!
//! Each id has one entry in one sharded map (`dashmap`): the key the store returned (or
//! "unknown"), the time until which it is fresh (it may stand in for a failing store for
//! stale-if-error longer), the cache's generation when it was loaded, and the load in flight, if
//! any. The hot path reads an entry synchronously, in place, under its shard's read lock (one
//! uncontended atomic): no future, no allocation.
//!
//! # The guarantee
//!
//! **A request that starts after [`ApiKeyHandle::invalidate`](crate::ApiKeyHandle::invalidate)
//! or [`invalidate_all`](crate::ApiKeyHandle::invalidate_all) returned, and so after
//! [`KeyManager`](crate::KeyManager)'s `revoke`, `delete`, `rotate`, `disable`, scope change or
//! `update` returned, or after a change notification was processed, is answered from the store
//! as it is after that change — whatever loads were in flight.**
//!
//! It holds because a load works like a lease (memcache's, from "Scaling Memcache at Facebook"):
//! a miss first puts an entry holding a fresh lease number into the map, and only then asks the
//! store. Its result is installed in one atomic step (under the shard's write lock) that succeeds
//! only while the entry still holds that same lease. Invalidating an id removes its entry (so any lease taken
//! before is void), and invalidating everything moves the cache to a new generation (entries of
//! an older generation are never read). A load that read the store before a revoke can still
//! answer the requests that were already waiting for it, which started before the revoke, but it
//! can never be installed for later ones.
//!
//! Concurrent misses of one id make one store call; errors are never cached; a "not found"
//! replaces the stale copy, so a deleted key never comes back during a later outage. Misses that
//! need the store are bounded ([`CacheConfig::max_concurrent_loads`]): a flood of made-up ids
//! waits its turn and then gets 503, while keys already known refresh without waiting.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::{ApiKeyLayer, cache::CacheConfig, MemoryStore};
//!
//! let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
//!     .cache(CacheConfig {
//!         capacity: 100_000,
//!         ttl: Duration::from_secs(30),
//!         ..CacheConfig::default()
//!     })
//!     .build()?;
//! # Ok::<(), tower_api_key::ConfigError>(())
//! ```

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::mapref::entry::Entry as Slot;
use dashmap::DashMap;
use tokio::sync::{OnceCell, Semaphore};

use crate::clock::Clock;
use crate::limit::{KeyLimits, LimitRules, UnknownPlan};
use crate::principal::{Authority, Principal};
use crate::store::{KeyStore, StoreError};

/// Sizes and lifetimes of the layer's cache.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::{cache::CacheConfig, ApiKeyLayer, MemoryStore};
///
/// // A million keys; without a listener, a change made elsewhere seen within 10 s; and no stale
/// // copies while the store fails (every failed lookup is 503).
/// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
///     .cache(CacheConfig {
///         capacity: 1_000_000,
///         ttl: Duration::from_secs(10),
///         stale_if_error: None,
///         ..CacheConfig::default()
///     })
///     .build()?;
/// # Ok::<(), tower_api_key::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// How many known keys to keep. Default 10,000.
    pub capacity: u64,
    /// How long a known key is trusted before the store is asked again: the longest a change
    /// made elsewhere (a revoke on another replica without a listener) takes to be seen.
    /// Default 60 s.
    pub ttl: Duration,
    /// How many unknown ids to remember. They never push known keys out. Default 10,000.
    pub negative_capacity: u64,
    /// How long an unknown id is remembered: the longest a key created elsewhere may be refused.
    /// Default 5 s.
    pub negative_ttl: Duration,
    /// Stale-if-error: while the store fails, a key that was valid in the cache keeps working for
    /// up to this long past its TTL; `None` turns it off (every failed lookup is 503). Unknown
    /// keys always get 503 while the store fails, and a key the store said it no longer has, or
    /// that was invalidated, has no stale copy. Default 5 minutes.
    pub stale_if_error: Option<Duration>,
    /// How many store lookups of ids the cache holds no key for may run at once; the rest wait
    /// up to [`load_queue_timeout`](Self::load_queue_timeout), then get 503. Refreshes of keys the
    /// cache already holds do not wait. Default 32.
    pub max_concurrent_loads: usize,
    /// How long a lookup waits for one of the
    /// [`max_concurrent_loads`](Self::max_concurrent_loads) places. Default 100 ms.
    pub load_queue_timeout: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: 10_000,
            ttl: Duration::from_secs(60),
            negative_capacity: 10_000,
            negative_ttl: Duration::from_secs(5),
            stale_if_error: Some(Duration::from_secs(300)),
            max_concurrent_loads: 32,
            load_queue_timeout: Duration::from_millis(100),
        }
    }
}

/// How much a layer's cache holds; from [`ApiKeyHandle::stats`](crate::ApiKeyHandle::stats).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tower_api_key::{ApiKeyLayer, MemoryStore};
///
/// let layer = ApiKeyLayer::new("mesh", MemoryStore::new())?;
/// let stats = layer.handle().stats().await;
/// assert_eq!((stats.keys, stats.unknown_ids), (0, 0));
/// # Ok::<(), tower_api_key::ConfigError>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Keys the store returned.
    pub keys: u64,
    /// Ids the store did not know (the negative cache).
    pub unknown_ids: u64,
}

/// Why a load did not produce a key.
pub(crate) enum LoadError {
    /// The store failed, timed out, or too many lookups were waiting.
    Store(StoreError),
    /// The record names a plan the layer does not define: refused, and no stale copy is used.
    Misconfigured(UnknownPlan),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Store(error) => error.fmt(f),
            LoadError::Misconfigured(error) => error.fmt(f),
        }
    }
}

/// What a lookup gives: the key, `None` for an id the store does not know, or why it failed.
pub(crate) type Loaded = Result<Option<Principal>, Arc<LoadError>>;

/// What an entry holds.
enum Value<'a> {
    /// Nothing yet: the first load of this id is in flight.
    Empty,
    /// A key the store returned: its principal, with what verification needs.
    Key(&'a Principal),
    /// The store has no key with this id.
    Unknown,
}

/// One store call, shared by every request that missed while it ran.
struct Load {
    /// The lease: the result is installed only while the entry still holds this number.
    lease: u64,
    result: OnceCell<Loaded>,
}

/// The one entry of an id: 32 bytes, so that with its map key a table slot is 48 (the table is
/// about a third of a cached key's memory).
#[derive(Clone)]
struct Entry {
    /// The key the store returned, if it returned one.
    key: Option<Principal>,
    /// The load in flight, if any.
    load: Option<Arc<Load>>,
    /// Answers requests until then, in nanoseconds since 1970. A key also stands in for a
    /// failing store until `fresh_until + stale_if_error` (derived, not kept).
    fresh_until: u64,
    /// The cache's generation when this entry was made; other generations are never read.
    generation: u32,
    /// The store has no key with this id (and `key` is `None`).
    unknown: bool,
}

impl Entry {
    /// A new entry whose first load `load` is in flight.
    fn loading(now: u64, generation: u32, load: &Arc<Load>) -> Entry {
        Entry {
            key: None,
            load: Some(Arc::clone(load)),
            fresh_until: now,
            generation,
            unknown: false,
        }
    }

    /// What the entry holds.
    fn held(&self) -> Value<'_> {
        match (&self.key, self.unknown) {
            (Some(key), _) => Value::Key(key),
            (None, true) => Value::Unknown,
            (None, false) => Value::Empty,
        }
    }

    /// Which capacity the entry counts against.
    fn kind(&self) -> Option<Kind> {
        match self.held() {
            Value::Empty => None,
            Value::Key(_) => Some(Kind::Key),
            Value::Unknown => Some(Kind::Unknown),
        }
    }

    /// The key this entry may still give while the store fails, at `now` in generation
    /// `current`, with stale-if-error `stale` (nanoseconds).
    fn stale_key(&self, now: u64, current: u32, stale: u64) -> Option<&Principal> {
        match &self.key {
            Some(key) if self.generation == current && now < self.stale_until(stale) => Some(key),
            _ => None,
        }
    }

    /// Whether the entry still answers requests at `now`. Compared as a `SystemTime`: turning
    /// `now` into nanoseconds takes a checked subtraction and a normalisation, twice what
    /// building the entry's time takes, on every request.
    fn fresh_at(&self, now: SystemTime) -> bool {
        UNIX_EPOCH
            .checked_add(Duration::from_nanos(self.fresh_until))
            .is_some_and(|until| now < until)
    }

    /// Until when this entry may stand in for a failing store.
    fn stale_until(&self, stale: u64) -> u64 {
        self.fresh_until.saturating_add(stale)
    }
}

/// `at` in nanoseconds since 1970 (0 before), as entries keep their times.
fn nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, duration_nanos)
}

/// `d` in nanoseconds, at most `u64::MAX` (585 years).
fn duration_nanos(d: Duration) -> u64 {
    // In 64 bits: `as_nanos` is a 128-bit product, on every request.
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// What a finished load puts into its entry.
enum Install {
    Key(Principal),
    Unknown,
    /// Keep the entry's value (its stale copy) and let the next request try again.
    Failed,
    /// Drop the entry, stale copy and all.
    Drop,
}

/// Which entries count against which capacity.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Key,
    Unknown,
}

/// The map's key: the id, held by the key's principal itself once the store returned it, so a
/// lookup compares the id where it then reads the principal (one memory access fewer per
/// request than a separate string). Two thin pointers' worth (16 bytes): an id the store has not
/// answered for is boxed twice.
#[derive(Clone)]
enum CacheKey {
    Key(Principal),
    Id(Box<Box<str>>),
}

impl CacheKey {
    /// The id's bytes: what the map hashes and compares (a principal's id is kept inline).
    fn id(&self) -> &[u8] {
        match self {
            CacheKey::Key(principal) => principal.key_id_bytes(),
            CacheKey::Id(id) => id.as_bytes(),
        }
    }
}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id().hash(state);
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for CacheKey {}

impl std::borrow::Borrow<[u8]> for CacheKey {
    fn borrow(&self) -> &[u8] {
        self.id()
    }
}

/// The cache, with the store behind it.
pub(crate) struct KeyCache {
    /// Hashed with foldhash: SipHash would cost a tenth of the hot path, and an entry for a
    /// made-up id lives only until its load ends or, as "unknown", within its own capacity.
    /// A key's entry is keyed by its principal (see [`CacheKey`]).
    entries: DashMap<CacheKey, Entry, foldhash::fast::RandomState>,
    /// Moved on by `invalidate_all`.
    generation: AtomicU32,
    /// The next lease number.
    leases: AtomicU64,
    keys: AtomicI64,
    unknown: AtomicI64,
    /// Whether an eviction sweep is running.
    sweeping: AtomicBool,
    loads: Semaphore,
    config: CacheConfig,
    clock: Arc<dyn Clock>,
    store: Arc<dyn KeyStore>,
    authority: Arc<Authority>,
    rules: LimitRules,
    lookup_timeout: Option<Duration>,
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the entries: they hold digests.
        f.debug_struct("KeyCache")
            .field("keys", &self.keys.load(Ordering::Relaxed))
            .field("unknown_ids", &self.unknown.load(Ordering::Relaxed))
            .field("config", &self.config)
            .field("lookup_timeout", &self.lookup_timeout)
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    /// The store behind the cache.
    pub(crate) fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// The rules that turn a record into its limits: the plans, the default, the test cap.
    pub(crate) fn rules(&self) -> &LimitRules {
        &self.rules
    }

    /// How long a store call may take.
    pub(crate) fn lookup_timeout(&self) -> Option<Duration> {
        self.lookup_timeout
    }

    pub(crate) fn new(
        config: &CacheConfig,
        store: Arc<dyn KeyStore>,
        authority: Arc<Authority>,
        rules: LimitRules,
        lookup_timeout: Option<Duration>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        KeyCache {
            entries: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            generation: AtomicU32::new(0),
            leases: AtomicU64::new(0),
            keys: AtomicI64::new(0),
            unknown: AtomicI64::new(0),
            sweeping: AtomicBool::new(false),
            loads: Semaphore::new(config.max_concurrent_loads.max(1)),
            config: config.clone(),
            clock,
            store,
            authority,
            rules,
            lookup_timeout,
        }
    }

    /// `f` of the entry for `id` if it is fresh at `now`: the key, or `None` for an id the store
    /// does not know. The hot path: the entry is used in place, without a reference count.
    pub(crate) fn peek_with<R>(
        &self,
        id: &[u8],
        now: SystemTime,
        f: impl FnOnce(Option<&Principal>) -> R,
    ) -> Option<R> {
        let entry = self.entries.get(id)?;
        if entry.generation != self.generation.load(Ordering::Acquire) || !entry.fresh_at(now) {
            return None;
        }
        match entry.held() {
            Value::Key(key) => Some(f(Some(key))),
            Value::Unknown => Some(f(None)),
            Value::Empty => None,
        }
    }

    /// The key with id `id`: from the cache, or loaded once however many ask at the same time.
    ///
    /// # Errors
    /// When the store failed, timed out or was too busy (and no stale copy may stand in), or the
    /// record is misconfigured; shared by every waiter of one load and never cached.
    pub(crate) async fn lookup(&self, id: &str) -> Loaded {
        let load = match self.join_or_start(id) {
            Ok(hit) => return Ok(hit),
            Err(load) => load,
        };
        let result = load
            .result
            .get_or_init(|| self.load(id, load.lease))
            .await
            .clone();
        match result {
            Err(error) if matches!(*error, LoadError::Store(_)) => {
                // Whatever stands in the entry now: an invalidation since has removed it.
                let now = nanos(self.clock.now());
                let current = self.generation.load(Ordering::Acquire);
                let entry = self.entries.get(id.as_bytes());
                match entry.and_then(|e| e.stale_key(now, current, self.stale_if_error()).cloned())
                {
                    Some(key) => Ok(Some(key)),
                    None => Err(error),
                }
            }
            result => result,
        }
    }

    /// A fresh answer for `id`, or the load to wait for: the one in flight, or a new one whose
    /// lease the entry now holds.
    fn join_or_start(&self, id: &str) -> Result<Option<Principal>, Arc<Load>> {
        let now = nanos(self.clock.now());
        let current = self.generation.load(Ordering::Acquire);
        let lease = self.leases.fetch_add(1, Ordering::Relaxed);
        let fresh = Arc::new(Load {
            lease,
            result: OnceCell::new(),
        });
        // The shard's lock is held from the look at the entry to the insert: one atomic step.
        match self.entries.entry(CacheKey::Id(Box::new(id.into()))) {
            Slot::Occupied(mut slot) => {
                let e = slot.get();
                if e.generation == current && now < e.fresh_until {
                    return match e.held() {
                        Value::Key(key) => Ok(Some(key.clone())),
                        Value::Unknown => Ok(None),
                        Value::Empty => Err(Self::in_flight(e)),
                    };
                }
                if e.generation == current && e.load.is_some() {
                    return Err(Self::in_flight(e));
                }
                // Expired, or of an older generation: a new load, keeping a stale key meanwhile.
                let next = if e.generation == current {
                    Entry {
                        load: Some(Arc::clone(&fresh)),
                        ..e.clone()
                    }
                } else {
                    Entry::loading(now, current, &fresh)
                };
                let old = slot.insert(next);
                self.adjust(old.kind(), -1);
                self.adjust(slot.get().kind(), 1);
            }
            Slot::Vacant(slot) => {
                slot.insert(Entry::loading(now, current, &fresh));
            }
        }
        Err(fresh)
    }

    fn in_flight(entry: &Entry) -> Arc<Load> {
        Arc::clone(entry.load.as_ref().expect("an empty entry has a load"))
    }

    /// Asks the store for `id`, then installs the answer if the lease still holds.
    async fn load(&self, id: &str, lease: u64) -> Loaded {
        let (install, result) = match self.fetch(id).await {
            Ok(Some(key)) => (Install::Key(key.clone()), Ok(Some(key))),
            Ok(None) => (Install::Unknown, Ok(None)),
            Err(error @ LoadError::Store(_)) => (Install::Failed, Err(Arc::new(error))),
            Err(error @ LoadError::Misconfigured(_)) => (Install::Drop, Err(Arc::new(error))),
        };
        self.install(id, lease, install);
        result
    }

    /// The store's answer for `id`, within the lookup timeout and the bound on concurrent loads.
    async fn fetch(&self, id: &str) -> Result<Option<Principal>, LoadError> {
        let known = {
            self.entries
                .get(id.as_bytes())
                .is_some_and(|e| e.key.is_some())
        };
        let _permit = if known {
            None
        } else {
            let wait = self.config.load_queue_timeout;
            match tokio::time::timeout(wait, self.loads.acquire()).await {
                Ok(Ok(permit)) => Some(permit),
                _ => {
                    return Err(LoadError::Store(StoreError::unavailable(format!(
                        "more than {} key lookups waiting for the store for {wait:?}",
                        self.config.max_concurrent_loads
                    ))))
                }
            }
        };
        let lookup = self.store.get_with_owner(id);
        let result = match self.lookup_timeout {
            Some(limit) => match tokio::time::timeout(limit, lookup).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::unavailable(format!(
                    "lookup timed out after {limit:?}"
                ))),
            },
            None => lookup.await,
        };
        match result {
            Ok(Some((record, owner))) if record.id == id => match self.rules.policy(KeyLimits {
                id: &record.id,
                owner: record.owner.as_deref(),
                environment: record.environment,
                limits: record.limits.clone(),
                plan: record.plan.as_deref(),
            }) {
                Ok(policy) => Ok(Some(Principal::from_record(
                    &record,
                    Arc::clone(&self.authority),
                    policy,
                    owner.as_ref(),
                ))),
                Err(unknown) => Err(LoadError::Misconfigured(unknown)),
            },
            Ok(Some(_)) => Err(LoadError::Store(StoreError::unavailable(
                "the store returned a record with another id",
            ))),
            Ok(None) => Ok(None),
            Err(error) => Err(LoadError::Store(error)),
        }
    }

    /// Puts a load's answer into the entry of `id`, in one atomic step that succeeds only
    /// while the entry holds lease `lease`.
    fn install(&self, id: &str, lease: u64, install: Install) {
        let now = nanos(self.clock.now());
        let config = &self.config;
        // The map's key: the principal's own id where there is one.
        let key = match &install {
            Install::Key(principal) => CacheKey::Key(principal.clone()),
            _ => CacheKey::Id(Box::new(id.into())),
        };
        // The shard's lock is held from the lease check to the insert: one atomic step.
        if let Slot::Occupied(slot) = self.entries.entry(key) {
            let e = slot.get();
            if e.load.as_ref().is_some_and(|load| load.lease == lease) {
                let loaded = |key: Option<Principal>, fresh_for: Duration| Entry {
                    unknown: key.is_none(),
                    key,
                    load: None,
                    fresh_until: now.saturating_add(duration_nanos(fresh_for)),
                    generation: e.generation,
                };
                let next = match &install {
                    Install::Key(key) => Some(loaded(Some(key.clone()), config.ttl)),
                    Install::Unknown => Some(loaded(None, config.negative_ttl)),
                    Install::Failed if matches!(e.held(), Value::Empty) => None,
                    Install::Failed => Some(Entry {
                        load: None,
                        ..e.clone()
                    }),
                    Install::Drop => None,
                };
                match next {
                    Some(next) => {
                        let kind = next.kind();
                        // A key's entry is keyed by its principal from now on.
                        let (_, old) = slot.replace_entry(next);
                        self.adjust(old.kind(), -1);
                        self.adjust(kind, 1);
                    }
                    None => {
                        let (_, old) = slot.remove_entry();
                        self.adjust(old.kind(), -1);
                    }
                }
            }
        }
        self.evict_over(Kind::Key, config.capacity, now);
        self.evict_over(Kind::Unknown, config.negative_capacity, now);
    }

    fn adjust(&self, kind: Option<Kind>, by: i64) {
        match kind {
            Some(Kind::Key) => self.keys.fetch_add(by, Ordering::Relaxed),
            Some(Kind::Unknown) => self.unknown.fetch_add(by, Ordering::Relaxed),
            None => 0,
        };
    }

    /// Keeps the entries of `kind` near `capacity`: once they pass it by a tenth, one sweep (one
    /// at a time) removes those whose stale copy has run out, then others (in the map's order,
    /// which its random hash makes arbitrary), down to nine tenths. Amortized, that is a few
    /// entries visited per insert, and no memory per entry.
    fn evict_over(&self, kind: Kind, capacity: u64, now: u64) {
        let counter = match kind {
            Kind::Key => &self.keys,
            Kind::Unknown => &self.unknown,
        };
        let capacity = i64::try_from(capacity).unwrap_or(i64::MAX);
        let slack = (capacity / 10).max(1);
        if counter.load(Ordering::Relaxed) <= capacity.saturating_add(slack)
            || self.sweeping.swap(true, Ordering::Acquire)
        {
            return;
        }
        let stale = self.stale_if_error();
        let evictable = |e: &Entry| e.kind() == Some(kind) && e.load.is_none();
        let (mut expired, mut others) = (Vec::new(), Vec::new());
        for item in self.entries.iter().filter(|item| evictable(item.value())) {
            if item.value().stale_until(stale) <= now {
                expired.push(item.key().clone());
            } else {
                others.push(item.key().clone());
            }
        }
        let target = capacity - slack;
        for key in expired.into_iter().chain(others) {
            if counter.load(Ordering::Relaxed) <= target {
                break;
            }
            if let Some((_, old)) = self.entries.remove_if(key.id(), |_, e| evictable(e)) {
                self.adjust(old.kind(), -1);
            }
        }
        self.sweeping.store(false, Ordering::Release);
    }

    /// How long a key may stand in for a failing store past its TTL, in nanoseconds.
    fn stale_if_error(&self) -> u64 {
        duration_nanos(self.config.stale_if_error.unwrap_or(Duration::ZERO))
    }

    /// How many keys and unknown ids are cached.
    pub(crate) fn stats(&self) -> CacheStats {
        let count =
            |counter: &AtomicI64| u64::try_from(counter.load(Ordering::Relaxed)).unwrap_or(0);
        CacheStats {
            keys: count(&self.keys),
            unknown_ids: count(&self.unknown),
        }
    }

    /// Forgets what is cached about `id`, found or not, and voids any load of it in flight: the
    /// next request asks the store.
    pub(crate) fn invalidate(&self, id: &str) {
        if let Some((_, old)) = self.entries.remove(id.as_bytes()) {
            self.adjust(old.kind(), -1);
        }
    }

    /// Forgets what is cached of owner `owner`: the entries of its keys, and every load in
    /// flight (whose key's owner is not known yet, and which may have read the owner's record
    /// before the change), so the next request of any of its keys asks the store.
    pub(crate) fn invalidate_owner(&self, owner: &str) {
        self.entries.retain(|_, e| {
            let forget =
                e.load.is_some() || e.key.as_ref().is_some_and(|key| key.owner() == Some(owner));
            if forget {
                self.adjust(e.kind(), -1);
            }
            !forget
        });
    }

    /// Forgets everything: no entry made before this call is read again, and no load started
    /// before it is installed.
    pub(crate) fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.retain(|_, old| {
            self.adjust(old.kind(), -1);
            false
        });
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::{CacheKey, Entry};

    #[test]
    fn a_table_slot_is_48_bytes() {
        // The table is about a third of a cached key's memory (BENCHMARKS.md, section 3).
        assert_eq!(std::mem::size_of::<Entry>(), 32);
        assert_eq!(std::mem::size_of::<CacheKey>(), 16);
    }
}
