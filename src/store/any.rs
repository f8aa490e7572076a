//! [`AnyStore`]: a store chosen at run time by URL, for programs configured with `DATABASE_URL`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use async_trait::async_trait;
use ipnet::IpNet;

use crate::limit::{Charge, Credits, Limits, Spend};

use super::{
    AuditArchive, AuditQuery, AuditRow, KeyChanges, KeyFilter, KeyRecord, KeyStore, KeyStoreAdmin,
    KeyUpdate, KeyWithOwner, Listing, MemoryStore, OwnerRecord, StoreError, UsageArchive,
    UsageRange, UsageRow, UsageUpdate,
};

/// Any of the crate's stores, chosen by URL: `memory:`, `sqlite://…`, `postgres://…`,
/// `redis://…`. The backends of disabled features answer with an error naming the feature.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tower_api_key::AnyStore;
///
/// let store = AnyStore::connect("memory:").await?;
/// assert_eq!(store.kind(), "memory");
/// let error = AnyStore::connect("mysql://db").await.unwrap_err();
/// assert!(error.to_string().contains("sqlite://, postgres://, redis:// or memory:"));
/// # Ok::<(), tower_api_key::store::StoreError>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AnyStore {
    /// In this process's memory.
    Memory(MemoryStore),
    /// A SQLite file.
    #[cfg(feature = "sqlite")]
    Sqlite(super::SqliteStore),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(super::PostgresStore),
    /// Redis.
    #[cfg(feature = "redis")]
    Redis(super::RedisStore),
}

macro_rules! each {
    ($self:expr, $store:ident => $body:expr) => {
        match $self {
            AnyStore::Memory($store) => $body,
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite($store) => $body,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres($store) => $body,
            #[cfg(feature = "redis")]
            AnyStore::Redis($store) => $body,
        }
    };
}

fn disabled(feature: &str, url: &str) -> StoreError {
    let scheme = url.split(':').next().unwrap_or_default();
    StoreError::config(format!(
        "{scheme}:// needs the `{feature}` feature of tower-api-key"
    ))
}

/// Where in its database a store keeps its keys, if not where it does by default.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place<'a> {
    Default,
    Table(&'a str),
    Prefix(&'a str),
}

impl<'a> Place<'a> {
    /// The table of a SQL store; an error for a Redis key prefix.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    fn table(self) -> Result<&'a str, StoreError> {
        match self {
            Place::Default => Ok(super::DEFAULT_TABLE),
            Place::Table(table) => Ok(table),
            Place::Prefix(_) => Err(misplaced("a key prefix", "redis://")),
        }
    }

    /// The key prefix of a Redis store; an error for a table.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn prefix(self) -> Result<&'a str, StoreError> {
        match self {
            Place::Default => Ok(super::DEFAULT_REDIS_PREFIX),
            Place::Prefix(prefix) => Ok(prefix),
            Place::Table(_) => Err(misplaced("a table", "sqlite:// and postgres://")),
        }
    }
}

fn misplaced(what: &str, urls: &str) -> StoreError {
    StoreError::config(format!("{what} is for {urls} stores only"))
}

impl AnyStore {
    /// Opens the store `url` names, with its keys where that store keeps them by default
    /// ([`DEFAULT_TABLE`](super::DEFAULT_TABLE), [`DEFAULT_REDIS_PREFIX`](super::DEFAULT_REDIS_PREFIX)).
    ///
    /// # Errors
    /// [`StoreError::Config`] for an unknown scheme, a backend whose feature is off, or a URL
    /// the backend cannot read; [`StoreError::Unavailable`] for a backend that cannot be
    /// reached.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, Place::Default).await
    }

    /// As [`connect`](Self::connect), with the keys of a SQLite or PostgreSQL store in table
    /// `table` (`a-z`, `0-9`, `_`): the store a service opened with `connect_with_table`.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use tower_api_key::AnyStore;
    ///
    /// let error = AnyStore::connect_with_table("memory:", "mesh_keys").await.unwrap_err();
    /// assert!(error.to_string().contains("is for sqlite://, postgres:// and redis:// stores only"));
    /// assert!(matches!(error, tower_api_key::store::StoreError::Config(_)));
    /// # #[cfg(feature = "sqlite")] {
    /// let store = AnyStore::connect_with_table("sqlite::memory:", "mesh_keys").await?;
    /// assert_eq!(store.kind(), "sqlite");
    /// # }
    /// # Ok::<(), tower_api_key::store::StoreError>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// As [`connect`](Self::connect); [`StoreError::Config`] for an invalid table name, or a URL
    /// of a store without tables.
    pub async fn connect_with_table(url: &str, table: &str) -> Result<Self, StoreError> {
        Self::open(url, Place::Table(table)).await
    }

    /// As [`connect`](Self::connect), with every key of a Redis store under `prefix`: the store
    /// a service opened with `RedisStore::connect_with_prefix`.
    ///
    /// # Errors
    /// As [`connect`](Self::connect); [`StoreError::Config`] for a URL of another store.
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, StoreError> {
        Self::open(url, Place::Prefix(prefix)).await
    }

    async fn open(url: &str, place: Place<'_>) -> Result<Self, StoreError> {
        if url == "memory:" || url.starts_with("memory://") {
            if place != Place::Default {
                return Err(misplaced(
                    "a table or key prefix",
                    "sqlite://, postgres:// and redis://",
                ));
            }
            return Ok(AnyStore::Memory(MemoryStore::new()));
        }
        if url.starts_with("sqlite:") {
            #[cfg(feature = "sqlite")]
            return Ok(AnyStore::Sqlite(
                super::SqliteStore::connect_with_table(url, place.table()?).await?,
            ));
            #[cfg(not(feature = "sqlite"))]
            return Err(disabled("sqlite", url));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            return Ok(AnyStore::Postgres(
                super::PostgresStore::connect_with_table(url, place.table()?).await?,
            ));
            #[cfg(not(feature = "postgres"))]
            return Err(disabled("postgres", url));
        }
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            #[cfg(feature = "redis")]
            return Ok(AnyStore::Redis(
                super::RedisStore::connect_with_prefix(url, place.prefix()?).await?,
            ));
            #[cfg(not(feature = "redis"))]
            return Err(disabled("redis", url));
        }
        let _ = disabled;
        Err(StoreError::config(
            "unknown database URL: use sqlite://, postgres://, redis:// or memory:",
        ))
    }

    /// `memory`, `sqlite`, `postgres` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyStore::Memory(_) => "memory",
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(_) => "postgres",
            #[cfg(feature = "redis")]
            AnyStore::Redis(_) => "redis",
        }
    }

    /// For SQLite, PostgreSQL and Redis, starts the listener that brings other processes' and
    /// replicas' changes into `changes`, such as a layer's [`ApiKeyHandle`](crate::ApiKeyHandle)
    /// (see `PostgresStore::spawn_listener`, `SqliteStore::spawn_listener`); the memory store
    /// has no other process to hear from and returns `None`.
    ///
    /// # Errors
    /// When the listener cannot connect.
    pub async fn spawn_listener(
        &self,
        changes: impl KeyChanges,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, StoreError> {
        let _ = &changes;
        match self {
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite(store) => store.spawn_listener(changes).await.map(Some),
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(store) => store.spawn_listener(changes).await.map(Some),
            #[cfg(feature = "redis")]
            AnyStore::Redis(store) => store.spawn_listener(changes).await.map(Some),
            _ => Ok(None),
        }
    }
}

#[async_trait]
impl KeyStore for AnyStore {
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        each!(self, store => store.get(id).await)
    }
    async fn owner(&self, owner: &str) -> Result<Option<OwnerRecord>, StoreError> {
        each!(self, store => store.owner(owner).await)
    }
    async fn get_with_owner(&self, id: &str) -> Result<Option<KeyWithOwner>, StoreError> {
        each!(self, store => store.get_with_owner(id).await)
    }
    async fn spend_credits(&self, charge: &Charge<'_>) -> Result<Spend, StoreError> {
        each!(self, store => store.spend_credits(charge).await)
    }
}

#[async_trait]
impl KeyStoreAdmin for AnyStore {
    async fn create(&self, record: KeyRecord) -> Result<(), StoreError> {
        each!(self, store => store.create(record).await)
    }
    async fn create_within(
        &self,
        record: KeyRecord,
        max: u32,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        each!(self, store => store.create_within(record, max, now).await)
    }
    async fn update_key_within(
        &self,
        id: &str,
        update: &KeyUpdate,
        max: u32,
        now: SystemTime,
    ) -> Result<Option<bool>, StoreError> {
        each!(self, store => store.update_key_within(id, update, max, now).await)
    }
    async fn revoke(&self, id: &str, at: SystemTime) -> Result<bool, StoreError> {
        each!(self, store => store.revoke(id, at).await)
    }
    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        each!(self, store => store.delete(id).await)
    }
    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        each!(self, store => store.list().await)
    }
    async fn list_page(
        &self,
        filter: &KeyFilter,
        now: SystemTime,
        offset: usize,
        limit: usize,
    ) -> Result<Listing, StoreError> {
        each!(self, store => store.list_page(filter, now, offset, limit).await)
    }
    async fn owners(&self) -> Result<Vec<OwnerRecord>, StoreError> {
        each!(self, store => store.owners().await)
    }
    async fn set_scopes(&self, id: &str, scopes: &[String]) -> Result<bool, StoreError> {
        each!(self, store => store.set_scopes(id, scopes).await)
    }
    async fn set_name(&self, id: &str, name: &str) -> Result<bool, StoreError> {
        each!(self, store => store.set_name(id, name).await)
    }
    async fn set_plan(&self, id: &str, plan: Option<&str>) -> Result<bool, StoreError> {
        each!(self, store => store.set_plan(id, plan).await)
    }
    async fn set_metadata(
        &self,
        id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError> {
        each!(self, store => store.set_metadata(id, metadata).await)
    }
    async fn set_expiry(&self, id: &str, at: Option<SystemTime>) -> Result<bool, StoreError> {
        each!(self, store => store.set_expiry(id, at).await)
    }
    async fn set_disabled(&self, id: &str, disabled: bool) -> Result<bool, StoreError> {
        each!(self, store => store.set_disabled(id, disabled).await)
    }
    async fn set_credits(&self, id: &str, credits: Option<&Credits>) -> Result<bool, StoreError> {
        each!(self, store => store.set_credits(id, credits).await)
    }
    async fn add_credits(&self, id: &str, amount: u64) -> Result<Option<u64>, StoreError> {
        each!(self, store => store.add_credits(id, amount).await)
    }
    async fn set_owner_limits(
        &self,
        owner: &str,
        limits: Option<&Limits>,
    ) -> Result<(), StoreError> {
        each!(self, store => store.set_owner_limits(owner, limits).await)
    }
    async fn set_owner_credits(
        &self,
        owner: &str,
        credits: Option<&Credits>,
    ) -> Result<(), StoreError> {
        each!(self, store => store.set_owner_credits(owner, credits).await)
    }
    async fn add_owner_credits(&self, owner: &str, amount: u64) -> Result<Option<u64>, StoreError> {
        each!(self, store => store.add_owner_credits(owner, amount).await)
    }
    async fn set_limits(&self, id: &str, limits: Option<&Limits>) -> Result<bool, StoreError> {
        each!(self, store => store.set_limits(id, limits).await)
    }
    async fn set_allowed_networks(&self, id: &str, networks: &[IpNet]) -> Result<bool, StoreError> {
        each!(self, store => store.set_allowed_networks(id, networks).await)
    }
    async fn update_key(&self, id: &str, update: &KeyUpdate) -> Result<bool, StoreError> {
        each!(self, store => store.update_key(id, update).await)
    }
    async fn record_usage(&self, batch: &[UsageUpdate]) -> Result<(), StoreError> {
        each!(self, store => store.record_usage(batch).await)
    }
}

#[async_trait]
impl UsageArchive for AnyStore {
    async fn write_usage(
        &self,
        rows: &[UsageRow],
        expire: &[(u32, u64)],
    ) -> Result<(), StoreError> {
        each!(self, store => store.write_usage(rows, expire).await)
    }

    async fn read_usage(&self, range: &UsageRange<'_>) -> Result<Vec<UsageRow>, StoreError> {
        each!(self, store => store.read_usage(range).await)
    }
}

#[async_trait]
impl AuditArchive for AnyStore {
    async fn append_audit(&self, row: &AuditRow) -> Result<(), StoreError> {
        each!(self, store => store.append_audit(row).await)
    }

    async fn read_audit(&self, query: &AuditQuery<'_>) -> Result<Vec<AuditRow>, StoreError> {
        each!(self, store => store.read_audit(query).await)
    }

    async fn prune_audit(&self, before: u64) -> Result<u64, StoreError> {
        each!(self, store => store.prune_audit(before).await)
    }

    async fn import_audit(&self, rows: &[AuditRow]) -> Result<u64, StoreError> {
        each!(self, store => store.import_audit(rows).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether opening `url` (in `table`, if given) fails as the store's configuration.
    async fn misconfigured(url: &str, table: Option<&str>) -> bool {
        let opened = match table {
            Some(table) => AnyStore::connect_with_table(url, table).await,
            None => AnyStore::connect(url).await,
        };
        matches!(opened, Err(StoreError::Config(_)))
    }

    #[tokio::test]
    async fn a_store_opened_wrongly_is_its_configuration_not_a_store_down() {
        assert!(misconfigured("mysql://127.0.0.1/keys", None).await);
        assert!(misconfigured("memory:", Some("mesh_keys")).await);
        assert!(matches!(
            AnyStore::connect_with_prefix("memory:", "mesh:").await,
            Err(StoreError::Config(_))
        ));
        for url in [
            "sqlite::memory:",
            "postgres://127.0.0.1:1/keys",
            "redis://127.0.0.1:1",
        ] {
            let enabled = match url.split(':').next() {
                Some("sqlite") => cfg!(feature = "sqlite"),
                Some("postgres") => cfg!(feature = "postgres"),
                _ => cfg!(feature = "redis"),
            };
            if !enabled {
                // A backend whose feature is off.
                assert!(misconfigured(url, None).await, "{url}");
            }
        }
        #[cfg(feature = "sqlite")]
        {
            assert!(misconfigured("sqlite::memory:", Some("api-keys")).await);
            assert!(matches!(
                AnyStore::connect_with_prefix("sqlite::memory:", "mesh:").await,
                Err(StoreError::Config(_))
            ));
        }
        #[cfg(feature = "postgres")]
        {
            assert!(misconfigured("postgres://127.0.0.1:notaport/keys", None).await);
            // Nothing listens on port 1: down, not misconfigured.
            let down = AnyStore::connect("postgres://nobody@127.0.0.1:1/keys").await;
            assert!(matches!(down, Err(StoreError::Unavailable(_))));
        }
        #[cfg(feature = "redis")]
        {
            assert!(misconfigured("redis://127.0.0.1:notaport", None).await);
            assert!(misconfigured("redis://127.0.0.1:1", Some("mesh_keys")).await);
            let down = AnyStore::connect("redis://127.0.0.1:1").await;
            assert!(matches!(down, Err(StoreError::Unavailable(_))));
        }
    }
}
