//! With the `sqlite` feature: keys in a SQLite file, the embedded persistent store, with every
//! change written to a table of changes that other processes on the file read.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use tokio::task::JoinHandle;

use super::sql::{migrate, not_opened, sql_store, unavailable, Queries};
use super::{relay_payload, KeyChanges, StoreError};

/// How often [`SqliteStore::spawn_listener`] reads the changes that other processes made: a
/// revoke made through the `tower-api-key` tool reaches a running service within this time.
pub const SQLITE_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How many changes the table of changes keeps: a listener that falls further behind (a process
/// stopped for that long) clears its whole cache instead.
pub const SQLITE_CHANGES_KEPT: i64 = 10_000;

/// Keys in a SQLite database file, created (with its table) on first use.
///
/// One file serves one machine, and every process on it may write: the `tower-api-key` tool, a
/// console, the service itself. SQLite has no notifications, so every create, revoke, delete and
/// update also adds the key's id to a table of changes (`<table>_changes`, the newest
/// [`SQLITE_CHANGES_KEPT`]), and [`spawn_listener`](Self::spawn_listener) reads it every
/// [`SQLITE_POLL_INTERVAL`] and drops each changed key from a layer's cache. Without a
/// listener, processes sharing a file see each other's changes after the cache TTL. For several
/// machines, use PostgreSQL or Redis.
///
/// [`connect`](Self::connect) puts a database file in SQLite's write-ahead-log mode (a setting
/// the file keeps), so that no process's read, however long (an `export`, a report), holds up
/// another's revoke, and no write holds up the service's reads. The file then has two companions
/// while it is open, `keys.db-wal` and `keys.db-shm`: back it up with `sqlite3 keys.db ".backup
/// copy.db"` (or `VACUUM INTO`), not by copying `keys.db` alone, and keep it on a local disk (WAL
/// needs shared memory between the processes; not a network file system). A store on a pool of
/// your own ([`from_pool`](Self::from_pool)) keeps the journal mode you set.
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
    changes: Arc<ChangeQueries>,
}

/// The table of changes' statements.
struct ChangeQueries {
    /// Its table and the trigger that keeps it to [`SQLITE_CHANGES_KEPT`] rows.
    schema: String,
    /// Adds a change: `$1` the key's id (or an owner's payload).
    insert: String,
    /// The newest change's number, 0 if none.
    newest: String,
    /// Up to `$2` changes after number `$1`, oldest first.
    after: String,
}

impl ChangeQueries {
    fn new(table: &str) -> Self {
        let t = format!("{table}_changes");
        ChangeQueries {
            schema: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                    seq INTEGER PRIMARY KEY AUTOINCREMENT, key_id TEXT NOT NULL);
                 CREATE TRIGGER IF NOT EXISTS {t}_kept AFTER INSERT ON {t} BEGIN
                    DELETE FROM {t} WHERE seq <= NEW.seq - {SQLITE_CHANGES_KEPT};
                 END;"
            ),
            insert: format!("INSERT INTO {t} (key_id) VALUES ($1)"),
            newest: format!("SELECT COALESCE(MAX(seq), 0) FROM {t}"),
            after: format!("SELECT seq, key_id FROM {t} WHERE seq > $1 ORDER BY seq LIMIT $2"),
        }
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("table", &self.sql.table)
            .finish_non_exhaustive()
    }
}

/// Puts the database in write-ahead-log mode (kept by the file), where the service's reads
/// never wait for a write (the tool's, the usage flush's) and a commit syncs one file. A file
/// another process holds in the old mode at this moment, or one opened read-only, stays as it
/// is: the store works either way.
async fn write_ahead(pool: &SqlitePool) {
    let mode = sqlx::query_scalar::<_, String>("PRAGMA journal_mode = WAL")
        .fetch_one(pool)
        .await;
    if !matches!(&mode, Ok(mode) if mode.eq_ignore_ascii_case("wal")) {
        crate::trace::sqlite_journal_kept(&mode.map_err(|e| e.to_string()));
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`, such as `sqlite://keys.db` or
    /// `sqlite::memory:`, with keys in table `api_keys`; a file is put in write-ahead-log mode
    /// (above), unless another process holds it in another mode at this moment.
    ///
    /// # Errors
    /// [`StoreError::Config`] for a URL sqlx cannot read; when the file cannot be opened or the
    /// schema cannot be created.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_table(url, super::DEFAULT_TABLE).await
    }

    /// As [`connect`](Self::connect), with keys in table `table` (`a-z`, `0-9`, `_`).
    ///
    /// # Errors
    /// As [`connect`](Self::connect); [`StoreError::Config`] for an invalid table name (checked
    /// before the file is opened).
    pub async fn connect_with_table(url: &str, table: &str) -> Result<Self, StoreError> {
        // Before the file is created, so that a name mistyped creates no database.
        Queries::new(table)?;
        let options = SqliteConnectOptions::from_str(url)
            .map_err(not_opened)?
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
            .map_err(not_opened)?;
        if !in_memory {
            write_ahead(&pool).await;
        }
        Self::from_pool(pool, table).await
    }

    /// A store on an existing pool, with keys in table `table`; creates the table if needed.
    ///
    /// # Errors
    /// When the schema cannot be created; [`StoreError::Config`] for an invalid table name.
    pub async fn from_pool(pool: SqlitePool, table: &str) -> Result<Self, StoreError> {
        let sql = Queries::new(table)?;
        let changes = ChangeQueries::new(table);
        let mut tx = pool.begin().await.map_err(unavailable)?;
        migrate!(tx, sql).await?;
        sqlx::raw_sql(&changes.schema)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(SqliteStore {
            pool,
            sql: Arc::new(sql),
            changes: Arc::new(changes),
        })
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Adds key `id` (or an owner's payload) to the table of changes, once its change is
    /// written. A change left out of it is covered by the cache TTL, as a lost notification of
    /// PostgreSQL's is, so a failure here is not the change's failure.
    async fn changed(&self, id: &str) {
        let _ = sqlx::query(&self.changes.insert)
            .bind(id)
            .execute(&self.pool)
            .await;
    }

    /// Reads the changes that any process on the file makes, every [`SQLITE_POLL_INTERVAL`],
    /// and reports each changed key to `changes`, such as a layer's
    /// [`ApiKeyHandle`](crate::ApiKeyHandle). Runs until the returned task is aborted.
    ///
    /// Changes stay in the table until read, so a read that fails (the file locked for longer
    /// than the busy timeout) loses none: the next one gets them. Only a listener that falls
    /// more than [`SQLITE_CHANGES_KEPT`] changes behind misses some, and then it reports
    /// [`KeyChanges::all_changed`]; so does one that finds the changes numbered from the start
    /// again (the table made anew). A quiet file costs one read of the newest number a tick.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use tower_api_key::{ApiKeyLayer, SqliteStore};
    ///
    /// # let dir = std::env::temp_dir().join(format!("tower-api-key-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let url = format!("sqlite://{}", dir.join("keys.db").display());
    /// let store = SqliteStore::connect(&url).await?;
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// // A key revoked by `tower-api-key revoke` on the same file is refused within 250 ms.
    /// let listener = store.spawn_listener(layer.handle()).await?;
    /// # listener.abort();
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// When the table of changes cannot be read at the start.
    pub async fn spawn_listener(
        &self,
        changes: impl KeyChanges,
    ) -> Result<JoinHandle<()>, StoreError> {
        let mut last = self.newest_change().await.map_err(unavailable)?;
        let store = self.clone();
        Ok(tokio::spawn(async move {
            let mut every = tokio::time::interval(SQLITE_POLL_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                // A read that fails is tried at the next tick: the changes are still there.
                let Ok(newest) = store.newest_change().await else {
                    continue;
                };
                if newest < last {
                    // Numbered from the start again: the table was made anew (or the file
                    // replaced), so what changed meanwhile is unknown.
                    changes.all_changed();
                    last = newest;
                }
                while last < newest {
                    let Ok(read) = store.changes_after(last).await else {
                        break;
                    };
                    let before = last;
                    last = relay(&changes, last, read);
                    if last == before {
                        break;
                    }
                }
            }
        }))
    }

    /// The newest change's number, 0 if none.
    async fn newest_change(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(&self.changes.newest)
            .fetch_one(&self.pool)
            .await
    }

    /// Up to [`CHANGES_READ`] changes after number `last`, oldest first.
    async fn changes_after(&self, last: i64) -> Result<Vec<(i64, String)>, sqlx::Error> {
        sqlx::query_as(&self.changes.after)
            .bind(last)
            .bind(CHANGES_READ as i64)
            .fetch_all(&self.pool)
            .await
    }

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

/// How many changes one read of the table of changes takes at most.
const CHANGES_READ: usize = 512;

/// Reports `read`, the changes after number `last`, to `changes`, and returns the newest one's
/// number. Changes are numbered one after another, so a number skipped means changes were
/// dropped from the table before this listener read them: then every copy is forgotten.
fn relay(changes: &impl KeyChanges, last: i64, read: Vec<(i64, String)>) -> i64 {
    let mut expected = last + 1;
    let mut missed = false;
    for (seq, _) in &read {
        missed |= *seq != expected;
        expected = seq + 1;
    }
    if missed {
        changes.all_changed();
    } else {
        for (_, payload) in &read {
            relay_payload(changes, payload);
        }
    }
    expected - 1
}

sql_store!(SqliteStore, SqliteRow, sqlx::Sqlite);
