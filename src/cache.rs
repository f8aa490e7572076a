//! The cache in front of the store: found keys, unknown ids, and coalesced loads.
//!
//! Two moka `future::Cache`s: one of keys the store knows, one of ids it does not (the negative
//! cache, with its own shorter TTL and capacity, so a flood of made-up ids cannot push real keys
//! out). A load goes through moka's `try_get_with`, so any number of concurrent first requests for
//! one id make exactly one store call; errors are handed to every waiter and never cached.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::{ApiKeyLayer, CacheConfig, MemoryStore};
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
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use moka::future::Cache;
use moka::notification::RemovalCause;

use crate::clock::Clock;
use crate::key::{Environment, SecretDigest};
use crate::limit::{LimitRules, Policy};
use crate::principal::Principal;
use crate::scope::ScopeHierarchy;
use crate::store::{KeyRecord, KeyState, KeyStore, StoreError};

/// Sizes and lifetimes of the layer's cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// How many known keys to keep. Default 10,000.
    pub capacity: u64,
    /// How long a known key is trusted before the store is asked again: the longest a change
    /// made elsewhere (a revoke on another replica) takes to be seen. Default 60 s.
    pub ttl: Duration,
    /// How many unknown ids to remember. Default 10,000.
    pub negative_capacity: u64,
    /// How long an unknown id is remembered: the longest a key created elsewhere may be refused.
    /// Default 5 s.
    pub negative_ttl: Duration,
    /// Stale-if-error: while the store fails, a key that was valid in the cache keeps working for
    /// up to this long past its TTL; `None` turns it off (every failed lookup is 503). Unknown
    /// keys always get 503 while the store fails. Default 5 minutes.
    pub stale_if_error: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: 10_000,
            ttl: Duration::from_secs(60),
            negative_capacity: 10_000,
            negative_ttl: Duration::from_secs(5),
            stale_if_error: Some(Duration::from_secs(300)),
        }
    }
}

/// How much a layer's cache holds; from [`ApiKeyHandle::stats`](crate::ApiKeyHandle::stats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Keys the store returned.
    pub keys: u64,
    /// Ids the store did not know (the negative cache).
    pub unknown_ids: u64,
}

/// What the cache keeps of a found key: what verification needs, and the ready principal.
pub(crate) struct CachedKey {
    pub(crate) digest: SecretDigest,
    pub(crate) environment: Environment,
    revoked: bool,
    disabled: bool,
    expires_at: Option<SystemTime>,
    pub(crate) principal: Principal,
    /// The key's rate limits and quotas; `None` when it has none.
    pub(crate) policy: Option<Policy>,
    /// Loaded time plus the TTL: after it, the front map no longer answers for this key.
    fresh_until: SystemTime,
}

impl CachedKey {
    fn new(
        record: &KeyRecord,
        hierarchy: Arc<ScopeHierarchy>,
        policy: Option<Policy>,
        fresh_until: SystemTime,
    ) -> Self {
        CachedKey {
            policy,
            fresh_until,
            digest: record.digest,
            environment: record.environment,
            revoked: record.revoked_at.is_some(),
            disabled: record.disabled,
            expires_at: record.expires_at,
            principal: Principal::from_record(record, hierarchy),
        }
    }

    /// The key's state at `now`, in the same order as [`KeyRecord::state`].
    pub(crate) fn state(&self, now: SystemTime) -> KeyState {
        KeyState::of(self.revoked, self.disabled, self.expires_at, now)
    }
}

/// Why a load did not produce a key.
pub(crate) enum LoadError {
    NotFound,
    Store(StoreError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::NotFound => f.write_str("no such key"),
            LoadError::Store(error) => error.fmt(f),
        }
    }
}

/// The cache, with the store behind it.
///
/// In front of moka sits a lock-free map (`papaya`) of the same found keys, read synchronously on
/// the hot path: no future, no allocation, no lock. moka stays the cache of record: it loads
/// (coalesced), bounds the capacity and expires entries, and every entry it drops (evicted,
/// expired, invalidated) leaves the front map through its eviction listener. The front map also
/// checks each entry's own TTL, so it never answers for longer than moka would.
pub(crate) struct KeyCache {
    /// Hashed with foldhash: its entries are only keys the store returned, so lookups of made-up
    /// ids cannot flood it, and SipHash would cost a tenth of the hot path.
    front: Arc<papaya::HashMap<Box<str>, Arc<CachedKey>, foldhash::fast::RandomState>>,
    front_limit: usize,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    found: Cache<String, Arc<CachedKey>>,
    missing: Cache<String, ()>,
    /// The same keys kept `stale_if_error` longer, for when the store fails.
    stale: Option<Cache<String, Arc<CachedKey>>>,
    store: Arc<dyn KeyStore>,
    hierarchy: Arc<ScopeHierarchy>,
    rules: LimitRules,
    lookup_timeout: Option<Duration>,
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never moka's own Debug: it prints every entry.
        f.debug_struct("KeyCache")
            .field("front", &self.front.len())
            .field("found", &self.found.entry_count())
            .field("missing", &self.missing.entry_count())
            .field("lookup_timeout", &self.lookup_timeout)
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    pub(crate) fn new(
        config: &CacheConfig,
        store: Arc<dyn KeyStore>,
        hierarchy: Arc<ScopeHierarchy>,
        rules: LimitRules,
        lookup_timeout: Option<Duration>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let front = Arc::new(papaya::HashMap::with_hasher(
            foldhash::fast::RandomState::default(),
        ));
        let evicted = Arc::clone(&front);
        KeyCache {
            front,
            // Races between a load and an eviction can leave a few extra entries; past this, the
            // front map starts over (it is only a copy).
            front_limit: usize::try_from(config.capacity)
                .unwrap_or(usize::MAX)
                .saturating_mul(2)
                .max(1024),
            ttl: config.ttl,
            clock,
            found: Cache::builder()
                .max_capacity(config.capacity)
                .time_to_live(config.ttl)
                .eviction_listener(move |id: Arc<String>, _, cause| {
                    if cause != RemovalCause::Replaced {
                        evicted.pin().remove(id.as_str());
                    }
                })
                .build(),
            missing: Cache::builder()
                .max_capacity(config.negative_capacity)
                .time_to_live(config.negative_ttl)
                .build(),
            stale: config.stale_if_error.map(|bound| {
                Cache::builder()
                    .max_capacity(config.capacity)
                    .time_to_live(config.ttl + bound)
                    .build()
            }),
            store,
            hierarchy,
            rules,
            lookup_timeout,
        }
    }

    /// The key with id `id`: from the cache, or loaded once however many ask at the same time.
    ///
    /// # Errors
    /// When the store failed or timed out; the error is shared by every waiter and not cached.
    pub(crate) async fn lookup(&self, id: &str) -> Result<Option<Arc<CachedKey>>, Arc<LoadError>> {
        if self.missing.contains_key(id) {
            return Ok(None);
        }
        match self.found.try_get_with_by_ref(id, self.load(id)).await {
            Ok(key) => {
                self.remember(id, &key);
                Ok(Some(key))
            }
            Err(error) => match *error {
                LoadError::NotFound => Ok(None),
                LoadError::Store(_) => match &self.stale {
                    Some(stale) => match stale.get(id).await {
                        Some(key) => Ok(Some(key)),
                        None => Err(error),
                    },
                    None => Err(error),
                },
            },
        }
    }

    /// `f` of the key with id `id`, if the front map has it fresh at `now`: the hot path. The
    /// entry is used in place, without a reference count.
    pub(crate) fn peek_with<R>(
        &self,
        id: &str,
        now: SystemTime,
        f: impl FnOnce(&CachedKey) -> R,
    ) -> Option<R> {
        let front = self.front.pin();
        let key = front.get(id)?;
        (now < key.fresh_until).then(|| f(key))
    }

    /// Puts a key moka holds into the front map.
    fn remember(&self, id: &str, key: &Arc<CachedKey>) {
        if self.clock.now() >= key.fresh_until {
            return;
        }
        let front = self.front.pin();
        if front.len() >= self.front_limit {
            front.clear();
        }
        front.insert(id.into(), Arc::clone(key));
    }

    async fn load(&self, id: &str) -> Result<Arc<CachedKey>, LoadError> {
        let lookup = self.store.get(id);
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
            Ok(Some(record)) if record.id == id => match self.rules.policy(&record) {
                Ok(policy) => {
                    let fresh_until = self.clock.now() + self.ttl;
                    let key = Arc::new(CachedKey::new(
                        &record,
                        self.hierarchy.clone(),
                        policy,
                        fresh_until,
                    ));
                    if let Some(stale) = &self.stale {
                        stale.insert(id.to_owned(), key.clone()).await;
                    }
                    Ok(key)
                }
                Err(unknown) => Err(LoadError::Store(StoreError::unavailable(unknown))),
            },
            Ok(Some(_)) => Err(LoadError::Store(StoreError::unavailable(
                "the store returned a record with another id",
            ))),
            Ok(None) => {
                self.missing.insert(id.to_owned(), ()).await;
                Err(LoadError::NotFound)
            }
            Err(error) => Err(LoadError::Store(error)),
        }
    }

    /// How many keys and unknown ids are cached, once moka has applied its pending evictions.
    pub(crate) async fn stats(&self) -> CacheStats {
        self.found.run_pending_tasks().await;
        self.missing.run_pending_tasks().await;
        CacheStats {
            keys: self.found.entry_count(),
            unknown_ids: self.missing.entry_count(),
        }
    }

    /// Forgets what is cached about `id`, found or not: the next request asks the store.
    pub(crate) async fn invalidate(&self, id: &str) {
        self.front.pin().remove(id);
        self.found.invalidate(id).await;
        self.missing.invalidate(id).await;
        if let Some(stale) = &self.stale {
            stale.invalidate(id).await;
        }
    }

    /// Forgets everything.
    pub(crate) fn invalidate_all(&self) {
        self.front.pin().clear();
        self.found.invalidate_all();
        self.missing.invalidate_all();
        if let Some(stale) = &self.stale {
            stale.invalidate_all();
        }
    }
}
