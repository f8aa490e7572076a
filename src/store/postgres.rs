//! With the `postgres` feature: keys in PostgreSQL, with every change announced to every replica
//! by `LISTEN/NOTIFY`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use tokio::task::JoinHandle;

use super::listener::{reconnect, LISTENER_KEEPALIVE, LISTENER_PING_TIMEOUT};
use super::sql::{migrate, not_opened, sql_store, unavailable, Queries};
use super::{KeyChanges, StoreError};

/// Keys in a PostgreSQL table (created, with its index, on first use).
///
/// Every create, revoke, delete and update sends `NOTIFY <table>, '<key id>'`;
/// [`spawn_listener`](Self::spawn_listener) makes a replica's layer drop that key from its cache
/// as soon as the notification arrives, so a revoke reaches every replica in milliseconds. If the
/// listening connection drops, notifications sent meanwhile are lost: the listener then clears
/// the whole cache once it is connected again.
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
    /// [`StoreError::Config`] for a URL sqlx cannot read; when the database cannot be reached or
    /// the schema cannot be created.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_table(url, super::DEFAULT_TABLE).await
    }

    /// As [`connect`](Self::connect), with keys in table `table` (`a-z`, `0-9`, `_`), which is
    /// also the notification channel.
    ///
    /// # Errors
    /// As [`connect`](Self::connect); [`StoreError::Config`] for an invalid table name.
    pub async fn connect_with_table(url: &str, table: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(not_opened)?;
        Self::from_pool(pool, table).await
    }

    /// A store on an existing pool, with keys in table `table`; creates the table if needed.
    /// Replicas starting at once migrate one at a time (an advisory lock).
    ///
    /// # Errors
    /// When the schema cannot be created; [`StoreError::Config`] for an invalid table name.
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

    /// A transaction that holds the owner's advisory lock (on the table's name and the
    /// owner's), so what it counts of `owner`'s keys stays true until it commits, on every
    /// replica.
    async fn begin_owner(
        &self,
        owner: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
            .bind(&self.sql.table)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        Ok(tx)
    }

    /// A connection that listens on the table's channel.
    async fn listen(&self) -> Result<PgListener, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(unavailable)?;
        listener
            .listen(&self.sql.table)
            .await
            .map_err(unavailable)?;
        Ok(listener)
    }

    /// Listens for changes made through any replica's store and reports each changed key to
    /// `changes`, such as a layer's [`ApiKeyHandle`](crate::ApiKeyHandle). Runs until the
    /// returned task is aborted.
    ///
    /// Notifications sent while the listening connection is down are lost, so any disconnect,
    /// however long, ends with [`KeyChanges::all_changed`] once the listener is connected again.
    /// A connection that is quiet for [`LISTENER_KEEPALIVE`] is pinged, so a dead one (a half-open
    /// TCP connection, a server that was killed) is noticed within
    /// `LISTENER_KEEPALIVE + LISTENER_PING_TIMEOUT`, and the cache is cleared once a new
    /// connection is made (an attempt takes at most
    /// [`LISTENER_CONNECT_TIMEOUT`](super::LISTENER_CONNECT_TIMEOUT)).
    ///
    /// # Errors
    /// When the first connection or `LISTEN` fails.
    pub async fn spawn_listener(
        &self,
        changes: impl KeyChanges,
    ) -> Result<JoinHandle<()>, StoreError> {
        let mut listener = self.listen().await?;
        let store = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                relay(&mut listener, &changes).await;
                drop(listener);
                listener = reconnect(|| store.listen()).await;
                changes.all_changed();
            }
        }))
    }
}

/// Reports notifications to `changes` until the connection is lost or stops answering pings.
async fn relay(listener: &mut PgListener, changes: &impl KeyChanges) {
    loop {
        match tokio::time::timeout(LISTENER_KEEPALIVE, listener.try_recv()).await {
            Ok(Ok(Some(notification))) => super::relay_payload(changes, notification.payload()),
            Ok(Ok(None) | Err(_)) => return,
            Err(_quiet) => {
                let ping = sqlx::query("SELECT 1").execute(&mut *listener);
                if !matches!(
                    tokio::time::timeout(LISTENER_PING_TIMEOUT, ping).await,
                    Ok(Ok(_))
                ) {
                    return;
                }
            }
        }
    }
}

sql_store!(PostgresStore, PgRow, sqlx::Postgres);
