//! Where keys live: the [`KeyStore`] trait a layer reads from, the optional [`KeyStoreAdmin`]
//! side for stores that can write, and the in-memory [`MemoryStore`].
//!
//! A store is small on purpose. [`KeyStore::get`] returns the record for a key id, `Ok(None)` when
//! there is none, and `Err` when it cannot tell. The layer never lets a request through on an
//! error: it answers 503 `KEY_STORE_UNAVAILABLE`.
//!
//! # Writing a store
//!
//! ```
//! use std::collections::HashMap;
//! use tower_api_key::{async_trait, store::KeyRecord, store::KeyStore, store::StoreError};
//!
//! /// Keys loaded once from configuration.
//! struct StaticStore(HashMap<String, KeyRecord>);
//!
//! #[async_trait]
//! impl KeyStore for StaticStore {
//!     async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
//!         Ok(self.0.get(id).cloned())
//!     }
//! }
//! ```

pub(crate) mod any;
mod archive;
mod audit;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
mod codec;
mod filter;
#[cfg(any(feature = "postgres", feature = "redis"))]
mod listener;
pub(crate) mod memory;
mod owner;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
mod record;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
mod update;

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use ipnet::IpNet;

use crate::limit::{Charge, Credits, Limits, Spend};

pub use archive::{UsageArchive, UsageRange, UsageRow};
pub use audit::{AuditArchive, AuditQuery, AuditRow, AUDIT_KEPT};
pub use filter::{KeyFilter, Listing};
#[cfg(any(feature = "postgres", feature = "redis"))]
pub use listener::{LISTENER_CONNECT_TIMEOUT, LISTENER_KEEPALIVE, LISTENER_PING_TIMEOUT};
pub(crate) use memory::MemoryStore;
pub use owner::OwnerRecord;
#[cfg(feature = "postgres")]
pub(crate) use postgres::PostgresStore;
pub use record::{KeyRecord, KeyState};
#[cfg(feature = "redis")]
pub(crate) use redis::RedisStore;
#[cfg(feature = "sqlite")]
pub(crate) use sqlite::SqliteStore;
#[cfg(feature = "sqlite")]
pub use sqlite::{SQLITE_CHANGES_KEPT, SQLITE_POLL_INTERVAL};
pub use update::KeyUpdate;

/// The table the SQLite and PostgreSQL stores keep keys in unless given another
/// (`connect_with_table`; the tool's `--table`).
pub const DEFAULT_TABLE: &str = "api_keys";

/// The prefix of every Redis key the Redis store and limiter write unless given another
/// (`connect_with_prefix`; the tool's `--redis-prefix`).
pub const DEFAULT_REDIS_PREFIX: &str = "tower-api-key:";

/// A source of key records, looked up by public key id.
///
/// Implementations are `Send + Sync + 'static` and are called only on a cache miss.
///
/// A store in front of another, as tower-sessions' caching store is one: it refuses the keys of
/// owners under investigation, and forwards the rest (owners and credits too, so their limits and
/// credits keep working).
///
/// ```
/// use tower_api_key::limit::{Charge, Spend};
/// use tower_api_key::store::{KeyRecord, KeyStore, OwnerRecord, StoreError};
/// use tower_api_key::{async_trait, ApiKeyLayer, MemoryStore};
///
/// struct Quarantine<S> {
///     inner: S,
///     owners: Vec<String>,
/// }
///
/// #[async_trait]
/// impl<S: KeyStore> KeyStore for Quarantine<S> {
///     async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
///         let record = self.inner.get(id).await?;
///         // `None`: the layer answers 401 INVALID_API_KEY, as for a key that never was.
///         Ok(record.filter(|r| !r.owner.as_ref().is_some_and(|o| self.owners.contains(o))))
///     }
///
///     async fn owner(&self, owner: &str) -> Result<Option<OwnerRecord>, StoreError> {
///         self.inner.owner(owner).await
///     }
///
///     async fn spend_credits(&self, charge: &Charge<'_>) -> Result<Spend, StoreError> {
///         self.inner.spend_credits(charge).await
///     }
/// }
///
/// let store = Quarantine { inner: MemoryStore::new(), owners: vec!["acme".into()] };
/// let layer = ApiKeyLayer::new("mesh", store)?;
/// # Ok::<(), tower_api_key::ConfigError>(())
/// ```
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The record for key id `id`, or `None` when there is no such key.
    ///
    /// # Errors
    /// When the store cannot tell (unreachable, timed out, corrupt). The request is refused with
    /// 503, and nothing is cached.
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;

    /// What is set on owner `owner` (limits and credits for all of its keys), or `None` when
    /// nothing is. The cache asks on a miss of a key that has an owner.
    ///
    /// The default keeps no owners: `Ok(None)`.
    ///
    /// # Errors
    /// When the store cannot tell. The request is refused with 503, and nothing is cached.
    async fn owner(&self, owner: &str) -> Result<Option<OwnerRecord>, StoreError> {
        let _ = owner;
        Ok(None)
    }

    /// The record for key id `id` with what is set on its owner: [`get`](Self::get), then
    /// [`owner`](Self::owner) for a key that has one. The cache calls this on a miss; a store
    /// may answer it in one round trip (the SQL stores join the owners table; the Redis store runs
    /// one script).
    ///
    /// # Errors
    /// As `get` and `owner`.
    async fn get_with_owner(&self, id: &str) -> Result<Option<KeyWithOwner>, StoreError> {
        let Some(record) = self.get(id).await? else {
            return Ok(None);
        };
        let owner = match &record.owner {
            Some(owner) => self.owner(owner).await?,
            None => None,
        };
        Ok(Some((record, owner)))
    }

    /// Spends one request's [`Charge`] in one atomic step: its cost from the key's credits and
    /// from its owner's, each refilled first when its record's refill period is older than the
    /// account's `period`, all or nothing. A cost of 0 spends nothing but is
    /// [`Spend::Exhausted`] when none are left. The layer calls it only for keys whose record,
    /// or whose owner's, has credits.
    ///
    /// The default fails: a store that keeps no credits refuses a key that has some (503)
    /// rather than let it through unmetered. The stores of this crate all keep them.
    ///
    /// # Errors
    /// When the backend fails.
    async fn spend_credits(&self, charge: &Charge<'_>) -> Result<Spend, StoreError> {
        let _ = charge;
        Err(StoreError::unavailable("this key store keeps no credits"))
    }
}

/// The writing side of a store, for stores that can change their keys.
///
/// Use it through [`KeyManager`](crate::KeyManager), which also clears the layer's cache.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::SystemTime;
/// use tower_api_key::store::{KeyState, KeyStore, KeyStoreAdmin};
/// use tower_api_key::{key::KeyFormat, KeyManager, MemoryStore, NewKey};
///
/// let store = MemoryStore::new();
/// // Without a layer (a tool of its own), the manager is told the keys' format.
/// let keys = KeyManager::new(store.clone()).format(KeyFormat::new("mesh")?);
/// let created = keys.create(NewKey::new("ci")).await?;
/// keys.revoke(&created.record.id).await?;
/// // Reading needs no manager.
/// let listed = store.list().await?;
/// assert_eq!(listed[0].state(SystemTime::now()), KeyState::Revoked);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait KeyStoreAdmin: KeyStore {
    /// Adds a new key.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when a key with this id exists; any other error of the backend.
    async fn create(&self, record: KeyRecord) -> Result<(), StoreError>;

    /// Adds a new key unless its owner already has `max` keys in circulation at `now` (neither
    /// revoked nor expired: [`KeyRecord::in_circulation`]). Returns whether it was added. A key
    /// with no owner is always added.
    ///
    /// The memory, SQLite, PostgreSQL and Redis stores count and add in one step (under the
    /// store's lock, in one transaction holding the owner's lock, in one script), so requests
    /// at once, on any number of replicas, never take an owner past `max`. The default counts
    /// the owner's keys with [`list_page`](Self::list_page), then calls
    /// [`create`](Self::create): two calls at once may both pass.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use std::time::SystemTime;
    /// use tower_api_key::store::KeyStoreAdmin;
    /// use tower_api_key::{key::KeyFormat, MemoryStore, NewKey};
    ///
    /// let store = MemoryStore::new();
    /// let format = KeyFormat::new("mesh")?;
    /// let key = |name| NewKey::new(name).owner("acme").generate(&format);
    /// let now = SystemTime::now();
    /// assert!(store.create_within(key("ci")?.record, 2, now).await?);
    /// assert!(store.create_within(key("deploys")?.record, 2, now).await?);
    /// assert!(!store.create_within(key("one too many")?.record, 2, now).await?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when a key with this id exists; any other error of the backend.
    async fn create_within(
        &self,
        record: KeyRecord,
        max: u32,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        if let Some(owner) = &record.owner {
            if holds_the_most(self, owner, max, now).await? {
                return Ok(false);
            }
        }
        self.create(record).await.map(|()| true)
    }

    /// Marks key `id` revoked at `at`. Returns whether such a key exists. Revoking twice keeps
    /// the first time.
    ///
    /// # Errors
    /// When the backend fails.
    async fn revoke(&self, id: &str, at: SystemTime) -> Result<bool, StoreError>;

    /// Removes key `id`. Returns whether it existed.
    ///
    /// # Errors
    /// When the backend fails.
    async fn delete(&self, id: &str) -> Result<bool, StoreError>;

    /// Every key, ordered by creation time then id. Records hold digests, never secrets.
    ///
    /// # Errors
    /// When the backend fails.
    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// The keys `filter` lets through at `now`, in [`list`](Self::list)'s order, from `offset`,
    /// at most `limit` of them, with how many match in all: a page of the console's key list.
    ///
    /// The default filters [`list`](Self::list) in memory. The SQL stores filter and count in
    /// the database (by owner through its index) and read only the page, unless the filter
    /// has a name (names are compared lowercased as Rust lowercases them, which SQL's `lower`
    /// does not match). The Redis store reads the page of all keys, or of one owner's, from
    /// sorted sets by creation time, and with other filters that owner's keys (or every key).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use std::time::SystemTime;
    /// use tower_api_key::store::{KeyFilter, KeyStoreAdmin, KeyState};
    /// use tower_api_key::{key::KeyFormat, KeyManager, MemoryStore, NewKey};
    ///
    /// let store = MemoryStore::new();
    /// let keys = KeyManager::new(store.clone()).format(KeyFormat::new("mesh")?);
    /// for name in ["ci", "deploys", "billing"] {
    ///     keys.create(NewKey::new(name).owner("acme")).await?;
    /// }
    /// let filter = KeyFilter::new().owner("acme").state(KeyState::Active);
    /// let page = store.list_page(&filter, SystemTime::now(), 0, 2).await?;
    /// assert_eq!((page.records.len(), page.total), (2, 3));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// When the backend fails.
    async fn list_page(
        &self,
        filter: &KeyFilter,
        now: SystemTime,
        offset: usize,
        limit: usize,
    ) -> Result<Listing, StoreError> {
        let all = self.list().await?;
        Ok(Listing::filtered(all, filter, now, offset, limit))
    }

    /// Every owner with limits or credits set (none [empty](OwnerRecord::is_empty)), by name:
    /// what `tower-api-key export` carries, so that an owner set up before its first key, or
    /// whose keys are gone, moves too.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use tower_api_key::limit::Limits;
    /// use tower_api_key::store::KeyStoreAdmin;
    /// use tower_api_key::MemoryStore;
    ///
    /// let store = MemoryStore::new();
    /// store.set_owner_limits("acme", Some(&Limits::per_minute(100))).await?;
    /// let owners = store.owners().await?;
    /// assert_eq!(owners.len(), 1);
    /// assert_eq!(owners[0].owner, "acme");
    /// # Ok::<(), tower_api_key::store::StoreError>(())
    /// # }).unwrap();
    /// ```
    ///
    /// The default asks [`owner`](KeyStore::owner) about the owner of each key
    /// [`list`](Self::list) gives, so it misses an owner without keys; the stores of this crate
    /// read every owner they keep.
    ///
    /// # Errors
    /// When the backend fails.
    async fn owners(&self) -> Result<Vec<OwnerRecord>, StoreError> {
        let names: std::collections::BTreeSet<String> = (self.list().await?.into_iter())
            .filter_map(|record| record.owner)
            .collect();
        let mut owners = Vec::new();
        for name in names {
            owners.extend(self.owner(&name).await?.filter(|owner| !owner.is_empty()));
        }
        Ok(owners)
    }

    /// Replaces key `id`'s scopes. Returns whether it exists.
    ///
    /// # Errors
    /// When the backend fails.
    async fn set_scopes(&self, id: &str, scopes: &[String]) -> Result<bool, StoreError>;

    /// Renames key `id`. Returns whether it exists.
    ///
    /// # Errors
    /// When the backend fails.
    async fn set_name(&self, id: &str, name: &str) -> Result<bool, StoreError>;

    /// Puts key `id` on plan `plan` (or, with `None`, on none). Returns whether it exists.
    ///
    /// # Errors
    /// When the backend fails.
    async fn set_plan(&self, id: &str, plan: Option<&str>) -> Result<bool, StoreError>;

    /// Replaces key `id`'s metadata. Returns whether it exists.
    ///
    /// # Errors
    /// When the backend fails.
    async fn set_metadata(
        &self,
        id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError>;

    /// Sets (or, with `None`, clears) key `id`'s expiry. Returns whether it exists.
    ///
    /// # Errors
    /// When the backend fails.
    async fn set_expiry(&self, id: &str, at: Option<SystemTime>) -> Result<bool, StoreError>;

    /// Disables (`true`) or enables (`false`) key `id`. Returns whether it exists.
    ///
    /// # Errors
    /// When the backend fails.
    async fn set_disabled(&self, id: &str, disabled: bool) -> Result<bool, StoreError>;

    /// Replaces (or, with `None`, clears) key `id`'s credits. Returns whether it exists.
    ///
    /// # Errors
    /// When the backend fails.
    async fn set_credits(&self, id: &str, credits: Option<&Credits>) -> Result<bool, StoreError>;

    /// Adds `amount` to key `id`'s remaining credits in one atomic step. Returns what is left
    /// now, or `None` when the key has no credits (or no record).
    ///
    /// # Errors
    /// When the backend fails.
    async fn add_credits(&self, id: &str, amount: u64) -> Result<Option<u64>, StoreError>;

    /// Replaces (or, with `None`, clears) key `id`'s own limits. Returns whether it exists.
    ///
    /// # Errors
    /// When the backend fails.
    async fn set_limits(&self, id: &str, limits: Option<&Limits>) -> Result<bool, StoreError>;

    /// Replaces the networks key `id` may be used from (empty: anywhere). Returns whether it
    /// exists.
    ///
    /// # Errors
    /// When the backend fails.
    async fn set_allowed_networks(&self, id: &str, networks: &[IpNet]) -> Result<bool, StoreError>;

    /// Makes every change of `update` to key `id`, all or none: a reader sees the key before
    /// or after, never part way, and a store that fails writes none of it. Returns whether the
    /// key exists. Every store of this crate does so (one transaction on SQLite and PostgreSQL,
    /// one script on Redis, one lock in memory). The default, for stores of your own, calls the
    /// setters one by one: a failure part way leaves the earlier changes written.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use tower_api_key::store::{KeyStore, KeyStoreAdmin, KeyUpdate};
    /// use tower_api_key::{key::KeyFormat, MemoryStore, NewKey};
    ///
    /// let store = MemoryStore::new();
    /// let created = NewKey::new("ci").generate(&KeyFormat::new("mesh")?)?;
    /// let id = created.record.id.clone();
    /// store.create(created.record).await?;
    /// let update = KeyUpdate::new().name("deploy").scopes(["read"]).disabled(true);
    /// assert!(store.update_key(&id, &update).await?);
    /// let now = store.get(&id).await?.unwrap();
    /// assert_eq!((&*now.name, &*now.scopes, now.disabled), ("deploy", &["read".to_owned()][..], true));
    /// assert!(!store.update_key("no-such-id", &update).await?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// When the backend fails.
    async fn update_key(&self, id: &str, update: &KeyUpdate) -> Result<bool, StoreError> {
        if update.is_empty() {
            return Ok(self.get(id).await?.is_some());
        }
        let mut found = true;
        if let Some(name) = &update.name {
            found &= self.set_name(id, name).await?;
        }
        if let Some(scopes) = &update.scopes {
            found &= self.set_scopes(id, scopes).await?;
        }
        if let Some(metadata) = &update.metadata {
            found &= self.set_metadata(id, metadata).await?;
        }
        if let Some(at) = update.expires_at {
            found &= self.set_expiry(id, at).await?;
        }
        if let Some(plan) = &update.plan {
            found &= self.set_plan(id, plan.as_deref()).await?;
        }
        if let Some(limits) = &update.limits {
            found &= self.set_limits(id, limits.as_ref()).await?;
        }
        if let Some(disabled) = update.disabled {
            found &= self.set_disabled(id, disabled).await?;
        }
        Ok(found)
    }

    /// Makes `update`'s changes to key `id`, as [`update_key`](Self::update_key) does, unless
    /// they bring the key back into circulation at `now` (an expired key given a later expiry,
    /// or none: [`KeyUpdate::brings_back`]) while its owner has `max` keys in circulation
    /// already. Returns `None` when there is no key `id`, else whether the changes were made.
    ///
    /// The memory, SQLite, PostgreSQL and Redis stores check and change in one step, as they
    /// do for [`create_within`](Self::create_within). The default reads the key and counts the
    /// owner's keys with [`list_page`](Self::list_page), then calls
    /// [`update_key`](Self::update_key): two calls at once may both pass.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use std::time::{Duration, SystemTime};
    /// use tower_api_key::store::{KeyStoreAdmin, KeyUpdate};
    /// use tower_api_key::{key::KeyFormat, MemoryStore, NewKey};
    ///
    /// let store = MemoryStore::new();
    /// let format = KeyFormat::new("mesh")?;
    /// let now = SystemTime::now();
    /// let old = NewKey::new("old").owner("acme").expires_at(now - Duration::from_secs(60));
    /// let old = old.generate(&format)?.record;
    /// let id = old.id.clone();
    /// store.create(old).await?;
    /// store.create(NewKey::new("ci").owner("acme").generate(&format)?.record).await?;
    /// let back = KeyUpdate::new().expires_at(None);
    /// assert_eq!(store.update_key_within(&id, &back, 1, now).await?, Some(false));
    /// assert_eq!(store.update_key_within(&id, &back, 2, now).await?, Some(true));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// When the backend fails.
    async fn update_key_within(
        &self,
        id: &str,
        update: &KeyUpdate,
        max: u32,
        now: SystemTime,
    ) -> Result<Option<bool>, StoreError> {
        match Revival::of(self, id, update, now).await? {
            Revival::NoKey => return Ok(None),
            Revival::Owner(owner) if holds_the_most(self, &owner, max, now).await? => {
                return Ok(Some(false));
            }
            Revival::Owner(_) | Revival::Uncounted => {}
        }
        Ok(self.update_key(id, update).await?.then_some(true))
    }

    /// Replaces (or, with `None`, clears) the limits set on owner `owner`, counted for all of
    /// its keys together.
    ///
    /// # Errors
    /// When the backend fails.
    async fn set_owner_limits(
        &self,
        owner: &str,
        limits: Option<&Limits>,
    ) -> Result<(), StoreError>;

    /// Replaces (or, with `None`, clears) the credits set on owner `owner`, spent by all of its
    /// keys together.
    ///
    /// # Errors
    /// When the backend fails.
    async fn set_owner_credits(
        &self,
        owner: &str,
        credits: Option<&Credits>,
    ) -> Result<(), StoreError>;

    /// Adds `amount` to owner `owner`'s remaining credits in one atomic step. Returns what is
    /// left now, or `None` when the owner has no credits.
    ///
    /// # Errors
    /// When the backend fails.
    async fn add_owner_credits(&self, owner: &str, amount: u64) -> Result<Option<u64>, StoreError>;

    /// Adds a batch of usage: per key, requests to add and the latest time it was used. Unknown
    /// ids are skipped; `last_used_at` only moves forward.
    ///
    /// # Errors
    /// When the backend fails.
    async fn record_usage(&self, batch: &[UsageUpdate]) -> Result<(), StoreError>;
}

/// A key's record, and what is set on its owner (if it has one and anything is set).
pub type KeyWithOwner = (KeyRecord, Option<OwnerRecord>);

/// Where a store's change listener reports what changed: [`ApiKeyHandle`](crate::ApiKeyHandle)
/// implements it, so a layer's cache forgets a key as soon as another replica changes it.
///
/// The stores know nothing of the layer; anything that keeps copies of keys can listen.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tower_api_key::store::KeyChanges;
///
/// /// Collects the ids it is told about.
/// #[derive(Default)]
/// struct Seen(Mutex<Vec<String>>);
///
/// impl KeyChanges for Seen {
///     fn key_changed(&self, id: &str) {
///         self.0.lock().unwrap().push(id.to_owned());
///     }
///     fn all_changed(&self) {
///         self.0.lock().unwrap().push("*".to_owned());
///     }
/// }
///
/// let seen = Seen::default();
/// seen.key_changed("3kTMd9Qx2bLp");
/// assert_eq!(*seen.0.lock().unwrap(), ["3kTMd9Qx2bLp"]);
/// ```
pub trait KeyChanges: Send + Sync + 'static {
    /// Key `id` changed (created, revoked, deleted, updated): forget any copy of it.
    fn key_changed(&self, id: &str);
    /// What is set on owner `owner` changed: forget any copy of it, and of its keys. The
    /// default forgets everything.
    fn owner_changed(&self, owner: &str) {
        let _ = owner;
        self.all_changed();
    }
    /// Anything may have changed (the listener lost its connection for a while): forget every
    /// copy.
    fn all_changed(&self);
}

/// A record's field as JSON text, for the stores that keep JSON columns or hash fields.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("key records serialise to JSON")
}

/// The change notification of what is set on `owner`: `owner:` and the owner. Key ids are
/// letters and digits, so no key's notification looks like it.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
pub(crate) fn owner_payload(owner: &str) -> String {
    format!("owner:{owner}")
}

/// Reports change notification `payload` (a key id, or [`owner_payload`]'s) to `changes`.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
pub(crate) fn relay_payload(changes: &impl KeyChanges, payload: &str) {
    match payload.strip_prefix("owner:") {
        Some(owner) => changes.owner_changed(owner),
        None => changes.key_changed(payload),
    }
}

/// Usage of one key to add to its record, from [`KeyStoreAdmin::record_usage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageUpdate {
    /// The key id.
    pub id: String,
    /// Requests to add.
    pub requests: u64,
    /// When it was last used.
    pub last_used_at: SystemTime,
}

/// The error of a store.
///
/// ```
/// use tower_api_key::store::StoreError;
///
/// // In a store of your own: any error of the backend, kept as the source.
/// let error = StoreError::unavailable(std::io::Error::other("connection reset"));
/// assert_eq!(error.to_string(), "key store unavailable: connection reset");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not answer: unreachable, timed out, failed.
    Unavailable(Box<dyn StdError + Send + Sync>),
    /// A key with this id already exists.
    Conflict(String),
    /// The store was opened wrongly: a URL of no known store or of a backend whose feature is
    /// off, an invalid table name, a table given to Redis. Trying again will not help.
    Config(Box<dyn StdError + Send + Sync>),
}

impl StoreError {
    /// A [`StoreError::Unavailable`] from any error.
    pub fn unavailable(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        StoreError::Unavailable(error.into())
    }

    /// A [`StoreError::Config`] from any error.
    ///
    /// ```
    /// use tower_api_key::store::StoreError;
    ///
    /// let error = StoreError::config("give the store a URL");
    /// assert_eq!(error.to_string(), "key store misconfigured: give the store a URL");
    /// assert!(matches!(error, StoreError::Config(_)));
    /// ```
    pub fn config(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        StoreError::Config(error.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(e) => write!(f, "key store unavailable: {e}"),
            StoreError::Conflict(id) => write!(f, "a key with id `{id}` already exists"),
            StoreError::Config(e) => write!(f, "key store misconfigured: {e}"),
        }
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            StoreError::Unavailable(e) | StoreError::Config(e) => Some(&**e),
            StoreError::Conflict(_) => None,
        }
    }
}

/// Whether `owner` holds `max` keys in circulation at `now` in `store`, or more, counted through
/// [`list_page`](KeyStoreAdmin::list_page): the trait's defaults of `create_within` and
/// `update_key_within`.
async fn holds_the_most<S: KeyStoreAdmin + ?Sized>(
    store: &S,
    owner: &str,
    max: u32,
    now: SystemTime,
) -> Result<bool, StoreError> {
    let filter = KeyFilter::new().owner(owner);
    let keys = store.list_page(&filter, now, 0, usize::MAX).await?.records;
    let held = keys.iter().filter(|key| key.in_circulation(now)).count();
    Ok(held >= usize::try_from(max).unwrap_or(usize::MAX))
}

/// Where [`KeyStoreAdmin::update_key_within`] stands for a key before anything is locked: an
/// update never changes a key's owner, so the owner read now is the one to lock and count.
pub(crate) enum Revival {
    /// There is no such key.
    NoKey,
    /// The update does not bring the key back into circulation, or the key has no owner:
    /// nothing to count.
    Uncounted,
    /// The update brings back a key of this owner: its keys are counted first.
    Owner(String),
}

impl Revival {
    /// Reads key `id` from `store` and sees what `update` does to it at `now`.
    pub(crate) async fn of<S: KeyStore + ?Sized>(
        store: &S,
        id: &str,
        update: &KeyUpdate,
        now: SystemTime,
    ) -> Result<Self, StoreError> {
        let Some(record) = store.get(id).await? else {
            return Ok(Revival::NoKey);
        };
        Ok(match (update.brings_back(&record, now), record.owner) {
            (true, Some(owner)) => Revival::Owner(owner),
            _ => Revival::Uncounted,
        })
    }
}

#[async_trait]
impl<T: KeyStore + ?Sized> KeyStore for Arc<T> {
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        (**self).get(id).await
    }
    async fn owner(&self, owner: &str) -> Result<Option<OwnerRecord>, StoreError> {
        (**self).owner(owner).await
    }
    async fn get_with_owner(&self, id: &str) -> Result<Option<KeyWithOwner>, StoreError> {
        (**self).get_with_owner(id).await
    }
    async fn spend_credits(&self, charge: &Charge<'_>) -> Result<Spend, StoreError> {
        (**self).spend_credits(charge).await
    }
}

#[async_trait]
impl<T: KeyStoreAdmin + ?Sized> KeyStoreAdmin for Arc<T> {
    async fn create(&self, record: KeyRecord) -> Result<(), StoreError> {
        (**self).create(record).await
    }
    async fn create_within(
        &self,
        record: KeyRecord,
        max: u32,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        (**self).create_within(record, max, now).await
    }
    async fn revoke(&self, id: &str, at: SystemTime) -> Result<bool, StoreError> {
        (**self).revoke(id, at).await
    }
    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        (**self).delete(id).await
    }
    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        (**self).list().await
    }
    async fn list_page(
        &self,
        filter: &KeyFilter,
        now: SystemTime,
        offset: usize,
        limit: usize,
    ) -> Result<Listing, StoreError> {
        (**self).list_page(filter, now, offset, limit).await
    }
    async fn owners(&self) -> Result<Vec<OwnerRecord>, StoreError> {
        (**self).owners().await
    }
    async fn set_scopes(&self, id: &str, scopes: &[String]) -> Result<bool, StoreError> {
        (**self).set_scopes(id, scopes).await
    }
    async fn set_name(&self, id: &str, name: &str) -> Result<bool, StoreError> {
        (**self).set_name(id, name).await
    }
    async fn set_plan(&self, id: &str, plan: Option<&str>) -> Result<bool, StoreError> {
        (**self).set_plan(id, plan).await
    }
    async fn set_metadata(
        &self,
        id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError> {
        (**self).set_metadata(id, metadata).await
    }
    async fn set_expiry(&self, id: &str, at: Option<SystemTime>) -> Result<bool, StoreError> {
        (**self).set_expiry(id, at).await
    }
    async fn set_disabled(&self, id: &str, disabled: bool) -> Result<bool, StoreError> {
        (**self).set_disabled(id, disabled).await
    }
    async fn set_allowed_networks(&self, id: &str, networks: &[IpNet]) -> Result<bool, StoreError> {
        (**self).set_allowed_networks(id, networks).await
    }
    async fn update_key(&self, id: &str, update: &KeyUpdate) -> Result<bool, StoreError> {
        (**self).update_key(id, update).await
    }
    async fn update_key_within(
        &self,
        id: &str,
        update: &KeyUpdate,
        max: u32,
        now: SystemTime,
    ) -> Result<Option<bool>, StoreError> {
        (**self).update_key_within(id, update, max, now).await
    }
    async fn set_limits(&self, id: &str, limits: Option<&Limits>) -> Result<bool, StoreError> {
        (**self).set_limits(id, limits).await
    }
    async fn set_credits(&self, id: &str, credits: Option<&Credits>) -> Result<bool, StoreError> {
        (**self).set_credits(id, credits).await
    }
    async fn set_owner_limits(
        &self,
        owner: &str,
        limits: Option<&Limits>,
    ) -> Result<(), StoreError> {
        (**self).set_owner_limits(owner, limits).await
    }
    async fn set_owner_credits(
        &self,
        owner: &str,
        credits: Option<&Credits>,
    ) -> Result<(), StoreError> {
        (**self).set_owner_credits(owner, credits).await
    }
    async fn add_owner_credits(&self, owner: &str, amount: u64) -> Result<Option<u64>, StoreError> {
        (**self).add_owner_credits(owner, amount).await
    }
    async fn add_credits(&self, id: &str, amount: u64) -> Result<Option<u64>, StoreError> {
        (**self).add_credits(id, amount).await
    }
    async fn record_usage(&self, batch: &[UsageUpdate]) -> Result<(), StoreError> {
        (**self).record_usage(batch).await
    }
}
