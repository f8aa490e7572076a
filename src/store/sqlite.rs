//! With the `sqlite` feature: keys in a SQLite file, the embedded persistent store.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};

use super::sql::{migrate, sql_store, unavailable, Queries};
use super::StoreError;

/// Keys in a SQLite database file, created (with its table) on first use.
///
/// One file serves one machine: processes sharing it see each other's changes after the cache TTL
/// (there is no change notification in SQLite). For several replicas, use PostgreSQL or Redis.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tower_api_key::{ApiKeyLayer, KeyManager, NewKey, SqliteStore};
///
/// let store = SqliteStore::connect("sqlite::memory:").await?;
/// let layer = ApiKeyLayer::new("mesh", store.clone())?;
/// let created = KeyManager::new(store).with_cache(layer.handle())
///     .create(NewKey::new("ci").scopes(["read"]))
///     .await?;
/// assert!(created.key.expose_secret().starts_with("mesh_live_"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    sql: Arc<Queries>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("table", &self.sql.table)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`, such as `sqlite://keys.db` or
    /// `sqlite::memory:`, with keys in table `api_keys`.
    ///
    /// # Errors
    /// When the file cannot be opened or the schema cannot be created.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_table(url, "api_keys").await
    }

    /// As [`connect`](Self::connect), with keys in table `table` (`a-z`, `0-9`, `_`).
    ///
    /// # Errors
    /// As [`connect`](Self::connect), or for an invalid table name.
    pub async fn connect_with_table(url: &str, table: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(unavailable)?
            .create_if_missing(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = SqlitePoolOptions::new()
            // An in-memory database lives as long as its one connection.
            .max_connections(if in_memory { 1 } else { 8 })
            .min_connections(u32::from(in_memory))
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        Self::from_pool(pool, table).await
    }

    /// A store on an existing pool, with keys in table `table`; creates the table if needed.
    ///
    /// # Errors
    /// When the schema cannot be created, or for an invalid table name.
    pub async fn from_pool(pool: SqlitePool, table: &str) -> Result<Self, StoreError> {
        let sql = Queries::new(table)?;
        let mut tx = pool.begin().await.map_err(unavailable)?;
        migrate!(tx, sql).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(SqliteStore {
            pool,
            sql: Arc::new(sql),
        })
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn changed(&self, _id: &str) {}

    /// A transaction that holds the database's write lock from its start (`BEGIN IMMEDIATE`),
    /// so what it counts of an owner's keys stays true until it commits.
    async fn begin_owner(
        &self,
        _owner: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)
    }
}

sql_store!(SqliteStore, SqliteRow, sqlx::Sqlite);
