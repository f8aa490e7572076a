//! With the `postgres` feature: keys in PostgreSQL, with every change announced to every replica
//! by `LISTEN/NOTIFY`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use tokio::task::JoinHandle;

use super::sql::{migrate, sql_store, unavailable, Queries};
use super::StoreError;
use crate::layer::ApiKeyHandle;

/// Keys in a PostgreSQL table (created, with its index, on first use).
///
/// Every create, revoke, delete and update sends `NOTIFY <table>, '<key id>'`;
/// [`spawn_listener`](Self::spawn_listener) makes a replica's layer drop that key from its cache
/// as soon as the notification arrives, so a revoke reaches every replica in milliseconds. If the
/// listening connection drops, notifications sent meanwhile are lost: the listener then clears
/// the whole cache once it is connected again, and the cache TTL bounds the rest.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_api_key::{ApiKeyLayer, PostgresStore};
///
/// let store = PostgresStore::connect("postgres://app@127.0.0.1/app").await?;
/// let layer = ApiKeyLayer::new("mesh", store.clone())?;
/// store.spawn_listener(layer.handle()).await?; // revocations from other replicas
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    sql: Arc<Queries>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.sql.table)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…`), with keys in table `api_keys`.
    ///
    /// # Errors
    /// When the database cannot be reached or the schema cannot be created.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_table(url, "api_keys").await
    }

    /// As [`connect`](Self::connect), with keys in table `table` (`a-z`, `0-9`, `_`), which is
    /// also the notification channel.
    ///
    /// # Errors
    /// As [`connect`](Self::connect), or for an invalid table name.
    pub async fn connect_with_table(url: &str, table: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(unavailable)?;
        Self::from_pool(pool, table).await
    }

    /// A store on an existing pool, with keys in table `table`; creates the table if needed.
    /// Replicas starting at once migrate one at a time (an advisory lock).
    ///
    /// # Errors
    /// When the schema cannot be created, or for an invalid table name.
    pub async fn from_pool(pool: PgPool, table: &str) -> Result<Self, StoreError> {
        let sql = Queries::new(table)?;
        let mut tx = pool.begin().await.map_err(unavailable)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(&sql.table)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        migrate!(tx, sql).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(PostgresStore {
            pool,
            sql: Arc::new(sql),
        })
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Tells every listening replica that key `id` changed. A lost notification is covered by
    /// the cache TTL, so a failure here is not the change's failure.
    async fn changed(&self, id: &str) {
        let _ = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.sql.table)
            .bind(id)
            .execute(&self.pool)
            .await;
    }

    /// Listens for changes made through any replica's store and drops the changed keys from the
    /// cache behind `handle`. Runs until the returned task is aborted.
    ///
    /// # Errors
    /// When the first connection or `LISTEN` fails.
    pub async fn spawn_listener(&self, handle: ApiKeyHandle) -> Result<JoinHandle<()>, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(unavailable)?;
        listener
            .listen(&self.sql.table)
            .await
            .map_err(unavailable)?;
        let pool = self.pool.clone();
        Ok(tokio::spawn(async move {
            let mut lost = false;
            loop {
                // Waking every half second tells a reconnection (no error) from an outage.
                match tokio::time::timeout(Duration::from_millis(500), listener.try_recv()).await {
                    Ok(Ok(Some(notification))) => {
                        handle.invalidate(notification.payload()).await;
                    }
                    // The connection dropped: the next call reconnects.
                    Ok(Ok(None)) => lost = true,
                    Ok(Err(_)) => {
                        lost = true;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(_elapsed) => {
                        let reachable = || sqlx::query("SELECT 1").execute(&pool);
                        if lost && reachable().await.is_ok() {
                            // Connected again: what was said meanwhile is unknown.
                            handle.invalidate_all();
                            lost = false;
                        }
                    }
                }
            }
        }))
    }
}

sql_store!(PostgresStore, PgRow);
