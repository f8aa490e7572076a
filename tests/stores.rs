//! The stores that need no server: the in-memory store and SQLite; stale-if-error; batched usage.

mod common;
#[path = "common/conformance.rs"]
mod conformance;
#[cfg(feature = "sqlite")]
#[path = "common/replicas.rs"]
#[allow(dead_code)] // the outage test needs a server to stop
mod replicas;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tower_api_key::{
    cache::CacheConfig, key::KeyFormat, manage::ManageError, store::KeyStore, store::KeyStoreAdmin,
    store::StoreError, usage::StoreUsage, ApiKeyLayer, Environment, KeyManager, MemoryStore,
    NewKey,
};

use common::{api_key, app, serve, FaultyStore, HttpClient, TestStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_passes_the_conformance_suite() {
    conformance::conformance(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_lists_pages_as_the_filter_says() {
    conformance::listings_page_as_the_filter_says(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_updates_every_field_or_none() {
    conformance::updates_write_every_field_or_none(MemoryStore::new(), 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_keeps_the_audit_trail() {
    conformance::the_audit_trail_is_kept_newest_first(MemoryStore::new()).await;
    conformance::a_moved_trail_is_taken_once(MemoryStore::new()).await;
    conformance::a_moved_trail_leaves_the_newest(MemoryStore::new(), true).await;
}

/// The trait's own `owners`, for stores of your own: the owners of the stored keys that have
/// settings; an owner without keys is missed (the stores of this crate list it: conformance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_your_own_lists_the_owners_of_its_keys() {
    let store = FaultyStore::default();
    let keys = KeyManager::new(store.clone()).format(KeyFormat::new("mesh").unwrap());
    keys.create(NewKey::new("a").owner("acme")).await.unwrap();
    keys.create(NewKey::new("b").owner("globex")).await.unwrap();
    let limits = tower_api_key::limit::Limits::per_minute(5);
    for owner in ["acme", "keyless"] {
        store.set_owner_limits(owner, Some(&limits)).await.unwrap();
    }
    let owners = store.owners().await.unwrap();
    let names: Vec<&str> = owners.iter().map(|owner| owner.owner.as_str()).collect();
    assert_eq!(names, ["acme"]);
}

/// The trait's own `import_audit`, for stores of your own (the test's store wraps the memory
/// store's trail and takes the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_your_own_takes_a_moved_trail_once() {
    conformance::a_moved_trail_is_taken_once(FaultyStore::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_never_overspends_credits() {
    let store = MemoryStore::new();
    conformance::credits_are_never_overspent(store.clone(), store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_keeps_owners_within_their_most_keys() {
    let store = MemoryStore::new();
    conformance::owners_never_hold_more_keys_than_allowed(store.clone(), store).await;
    let store = MemoryStore::new();
    conformance::expired_keys_come_back_only_within_the_most(store.clone(), store.clone()).await;
    conformance::expired_keys_brought_back_at_once_stop_at_the_most(store.clone(), store).await;
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use crate::common::temp_db;
    use tower_api_key::store::KeyStoreAdmin;
    use tower_api_key::SqliteStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sqlite_store_passes_the_conformance_suite() {
        let (dir, url) = temp_db("conformance");
        conformance::conformance(SqliteStore::connect(&url).await.unwrap()).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sqlite_store_lists_pages_as_the_filter_says() {
        let (dir, url) = temp_db("listing");
        let store = SqliteStore::connect(&url).await.unwrap();
        conformance::listings_page_as_the_filter_says(store).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sqlite_store_updates_every_field_or_none() {
        let (dir, url) = temp_db("update");
        let store = SqliteStore::connect(&url).await.unwrap();
        conformance::updates_write_every_field_or_none(store, 300).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sqlite_store_keeps_the_audit_trail() {
        let (dir, url) = temp_db("audit");
        let store = SqliteStore::connect(&url).await.unwrap();
        conformance::the_audit_trail_is_kept_newest_first(store.clone()).await;
        conformance::a_moved_trail_is_taken_once(store).await;
        let in_memory = SqliteStore::connect("sqlite::memory:").await.unwrap();
        conformance::a_moved_trail_leaves_the_newest(in_memory, false).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Revokes key `id` in the file behind `pool` by hand: no change is written to the table of
    /// changes, so only a listener that clears its cache can notice.
    async fn revoke_by_hand(pool: sqlx::SqlitePool, id: String) {
        sqlx::query("UPDATE api_keys SET revoked_at = 1 WHERE id = $1")
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    }

    /// Two pools on one new file, as two processes would have, and the file's folder.
    async fn two_pools(name: &str) -> (std::path::PathBuf, SqliteStore, SqliteStore) {
        let (dir, url) = temp_db(name);
        let a = SqliteStore::connect(&url).await.unwrap();
        let b = SqliteStore::connect(&url).await.unwrap();
        (dir, a, b)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sqlite_store_never_overspends_credits() {
        let (dir, a, b) = two_pools("credits").await;
        conformance::credits_are_never_overspent(a, b).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sqlite_store_keeps_owners_within_their_most_keys() {
        let (dir, a, b) = two_pools("most-keys").await;
        conformance::owners_never_hold_more_keys_than_allowed(a, b).await;
        std::fs::remove_dir_all(dir).unwrap();
        let (dir, a, b) = two_pools("expired-back").await;
        conformance::expired_keys_come_back_only_within_the_most(a.clone(), b.clone()).await;
        conformance::expired_keys_brought_back_at_once_stop_at_the_most(a, b).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A second process on the file (a pool of its own) revokes a key and sets an owner's
    /// limits; the first process's listener reads both from the table of changes, although its
    /// cache would keep the key for an hour.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoke_reaches_the_other_process_through_the_table_of_changes() {
        let (dir, a, b) = two_pools("changes").await;
        let elapsed =
            crate::replicas::a_revoke_reaches_the_other_replica(a, b, |b, handle| async move {
                b.spawn_listener(handle).await
            })
            .await;
        eprintln!("SQLite table of changes propagation: {elapsed:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Changes dropped from the table before the listener read them (more than it keeps, while
    /// the process was stopped) leave a gap in their numbers: the listener clears the cache, and
    /// a key revoked by hand (no change written) is refused although it was cached for an hour.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listener_that_missed_changes_clears_the_cache() {
        let (dir, a, b) = two_pools("missed").await;
        let listening = a.clone();
        let pool = b.pool().clone();
        crate::replicas::a_killed_listener_reconnects_and_clears_the_cache(
            a,
            |handle| async move { listening.spawn_listener(handle).await },
            move |id| revoke_by_hand(pool, id),
            || async move {
                // The next change is numbered as if 100 before it had been dropped.
                sqlx::query(
                    "INSERT INTO api_keys_changes (seq, key_id) \
                     SELECT MAX(seq) + 101, 'someone-else' FROM api_keys_changes",
                )
                .execute(b.pool())
                .await
                .unwrap();
            },
        )
        .await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The table of changes made anew (dropped, then created again by the next process to open
    /// the file) numbers its changes from the start again: the listener cannot know what it
    /// missed, and clears the cache.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_table_of_changes_made_anew_clears_the_cache() {
        let (dir, url) = temp_db("anew");
        let a = SqliteStore::connect(&url).await.unwrap();
        let listening = a.clone();
        let pool = a.pool().clone();
        crate::replicas::a_killed_listener_reconnects_and_clears_the_cache(
            a,
            |handle| async move { listening.spawn_listener(handle).await },
            move |id| revoke_by_hand(pool, id),
            || async move {
                sqlx::raw_sql("DROP TABLE api_keys_changes")
                    .execute(&SqliteStore::connect(&url).await.unwrap().pool().clone())
                    .await
                    .unwrap();
                SqliteStore::connect(&url).await.unwrap();
            },
        )
        .await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// While the table of changes cannot be read, the listener's reads fail; a change written
    /// meanwhile is not lost: the first read that works relays it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_made_while_the_listener_cannot_read_is_relayed_later() {
        let (dir, a, b) = two_pools("unreadable").await;
        let layer = ApiKeyLayer::builder("mesh", a.clone())
            .cache(CacheConfig {
                ttl: Duration::from_secs(3600),
                ..CacheConfig::default()
            })
            .build()
            .unwrap();
        let listener = a.spawn_listener(layer.handle()).await.unwrap();
        let other = KeyManager::new(b.clone()).format(KeyFormat::new("mesh").unwrap());
        let created = other.create(NewKey::new("listened")).await.unwrap();
        let key = created.key.expose_secret();
        let status = |layer: ApiKeyLayer| async move {
            let service = tower::Layer::layer(
                &layer,
                tower::service_fn(|_: http::Request<()>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
                }),
            );
            let request = http::Request::get("/")
                .header("authorization", api_key(key))
                .body(())
                .unwrap();
            tower::ServiceExt::oneshot(service, request)
                .await
                .unwrap()
                .status()
        };
        // Cached once the create's own change has been read.
        tokio::time::sleep(tower_api_key::store::SQLITE_POLL_INTERVAL * 3).await;
        assert_eq!(status(layer.clone()).await, StatusCode::OK);

        sqlx::raw_sql("ALTER TABLE api_keys_changes RENAME TO hidden_changes")
            .execute(b.pool())
            .await
            .unwrap();
        other.revoke(&created.record.id).await.unwrap();
        // The revoke's change could not be written either: write it where the table now is.
        sqlx::query("INSERT INTO hidden_changes (key_id) VALUES ($1)")
            .bind(&created.record.id)
            .execute(b.pool())
            .await
            .unwrap();
        tokio::time::sleep(tower_api_key::store::SQLITE_POLL_INTERVAL * 4).await;
        assert_eq!(
            status(layer.clone()).await,
            StatusCode::OK,
            "cached: the listener could not read the change"
        );
        sqlx::raw_sql("ALTER TABLE hidden_changes RENAME TO api_keys_changes")
            .execute(b.pool())
            .await
            .unwrap();
        let started = std::time::Instant::now();
        while status(layer.clone()).await != StatusCode::UNAUTHORIZED {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the change was never relayed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!listener.is_finished(), "the listener keeps running");
        listener.abort();
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Four writers on two pools (two processes) change ten keys at random while the listener
    /// reads: every change is relayed exactly once, in no order the test depends on, and no
    /// writer's change, however they interleave, looks like a gap (the cache is never cleared
    /// whole).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_changes_are_each_relayed_once() {
        use std::collections::HashMap;
        use std::sync::Mutex;
        use tower_api_key::store::KeyChanges;

        #[derive(Clone, Default)]
        struct Recorder(Arc<(Mutex<HashMap<String, usize>>, AtomicUsize)>);
        impl KeyChanges for Recorder {
            fn key_changed(&self, id: &str) {
                *self.0 .0.lock().unwrap().entry(id.to_owned()).or_default() += 1;
            }
            fn all_changed(&self) {
                self.0 .1.fetch_add(1, Ordering::SeqCst);
            }
        }

        let (dir, a, b) = two_pools("writers").await;
        let format = KeyFormat::new("mesh").unwrap();
        let mut ids = Vec::new();
        for i in 0..10 {
            let created = NewKey::new(format!("key-{i}")).generate(&format).unwrap();
            a.create(created.record.clone()).await.unwrap();
            ids.push(created.record.id);
        }
        let recorder = Recorder::default();
        let listener = a.spawn_listener(recorder.clone()).await.unwrap();
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                let store = if w % 2 == 0 { a.clone() } else { b.clone() };
                let ids = ids.clone();
                tokio::spawn(async move {
                    let mut made: HashMap<String, usize> = HashMap::new();
                    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (w + 1);
                    for _ in 0..50 {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let id = &ids[(state % 10) as usize];
                        if state & 1024 == 0 {
                            store.set_disabled(id, state & 2048 == 0).await.unwrap();
                        } else {
                            let scopes = vec![format!("scope-{}", state % 7)];
                            store.set_scopes(id, &scopes).await.unwrap();
                        }
                        *made.entry(id.clone()).or_default() += 1;
                    }
                    made
                })
            })
            .collect();
        let mut made: HashMap<String, usize> = HashMap::new();
        for writer in writers {
            for (id, n) in writer.await.unwrap() {
                *made.entry(id).or_default() += n;
            }
        }
        let started = std::time::Instant::now();
        while *recorder.0 .0.lock().unwrap() != made {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "relayed {:?}, made {made:?}",
                recorder.0 .0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(recorder.0 .1.load(Ordering::SeqCst), 0, "no gap was seen");
        listener.abort();
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The table of changes keeps the newest `SQLITE_CHANGES_KEPT`, numbered one after another.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_table_of_changes_keeps_the_newest() {
        use tower_api_key::store::SQLITE_CHANGES_KEPT;
        let (dir, url) = temp_db("kept");
        let store = SqliteStore::connect(&url).await.unwrap();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
             INSERT INTO api_keys_changes (key_id) SELECT 'k' || i FROM n",
        )
        .bind(SQLITE_CHANGES_KEPT + 25)
        .execute(store.pool())
        .await
        .unwrap();
        let (count, first, last): (i64, i64, i64) =
            sqlx::query_as("SELECT COUNT(*), MIN(seq), MAX(seq) FROM api_keys_changes")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(count, SQLITE_CHANGES_KEPT);
        assert_eq!(last - first + 1, SQLITE_CHANGES_KEPT);
        assert_eq!(last, SQLITE_CHANGES_KEPT + 25);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_survive_a_restart_and_the_schema_is_created_once() {
        let (dir, url) = temp_db("restart");
        let store = SqliteStore::connect(&url).await.unwrap();
        let layer = ApiKeyLayer::new("mesh", store.clone()).unwrap();
        let created = KeyManager::new(store.clone())
            .with_cache(layer.handle())
            .create(NewKey::new("persisted"))
            .await
            .unwrap();
        store.pool().close().await;
        let reopened = SqliteStore::connect(&url).await.unwrap();
        let record = reopened.get(&created.record.id).await.unwrap().unwrap();
        assert_eq!(record.name, "persisted");
        let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM api_keys_schema")
            .fetch_one(reopened.pool())
            .await
            .unwrap();
        assert_eq!(version, 7);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A database written by the first schema (no `allowed_networks`) is migrated in place: its
    /// keys keep working, unrestricted, and can then be restricted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_first_schema_database_is_migrated_and_its_keys_kept() {
        let (dir, url) = temp_db("migrate");
        let created = NewKey::new("old")
            .generate(&tower_api_key::key::KeyFormat::new("mesh").unwrap())
            .unwrap();
        {
            let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
            let pool = sqlx::SqlitePool::connect_with(options.create_if_missing(true))
                .await
                .unwrap();
            sqlx::raw_sql(
                "CREATE TABLE api_keys_schema (version BIGINT PRIMARY KEY);
                 INSERT INTO api_keys_schema (version) VALUES (1);
                 CREATE TABLE api_keys (
                    id TEXT PRIMARY KEY, digest TEXT NOT NULL, name TEXT NOT NULL, owner TEXT,
                    environment TEXT NOT NULL, scopes TEXT NOT NULL, metadata TEXT NOT NULL,
                    created_at BIGINT NOT NULL, expires_at BIGINT, revoked_at BIGINT,
                    disabled BOOLEAN NOT NULL DEFAULT FALSE, plan TEXT, limits TEXT,
                    last_used_at BIGINT, requests BIGINT NOT NULL DEFAULT 0);",
            )
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO api_keys (id, digest, name, environment, scopes, metadata, created_at)
                 VALUES ($1, $2, 'old', 'live', '[\"read\"]', '{}', 1700000000)",
            )
            .bind(&created.record.id)
            .bind(created.record.digest.to_hex())
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = SqliteStore::connect(&url).await.unwrap();
        let record = store.get(&created.record.id).await.unwrap().unwrap();
        assert_eq!(record.scopes, ["read"]);
        assert!(record.allowed_networks.is_empty());
        let office = vec!["203.0.113.0/24".parse().unwrap()];
        assert!(store
            .set_allowed_networks(&created.record.id, &office)
            .await
            .unwrap());
        let record = store.get(&created.record.id).await.unwrap().unwrap();
        assert_eq!(record.allowed_networks, office);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A read held open by another process (a long `export`, a report, a backup) does not
    /// stop a revoke: the database is in write-ahead-log mode, where a write never waits for a
    /// reader. In the old journal mode the revoke waited out the busy timeout (5 s) and failed
    /// with "database is locked".
    #[tokio::test]
    async fn a_revoke_is_written_while_another_process_reads() {
        let (dir, url) = temp_db("wal");
        let keys = KeyManager::new(SqliteStore::connect(&url).await.unwrap())
            .format(tower_api_key::key::KeyFormat::new("mesh").unwrap());
        let created = keys.create(NewKey::new("ci")).await.unwrap();

        let other = sqlx::SqlitePool::connect(&url).await.unwrap();
        const ACTIVE: &str = "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL";
        let mut reading = other.begin().await.unwrap();
        let active = sqlx::query_scalar::<_, i64>(ACTIVE);
        assert_eq!(active.fetch_one(&mut *reading).await.unwrap(), 1);

        let revoke = tokio::time::timeout(Duration::from_secs(2), keys.revoke(&created.record.id));
        let revoked = revoke.await.expect("the revoke waited for the reader");
        assert!(revoked.unwrap());
        // The reader still sees the database as it was when its read began; a new read, the
        // revoke.
        let active = sqlx::query_scalar::<_, i64>(ACTIVE);
        assert_eq!(active.fetch_one(&mut *reading).await.unwrap(), 1);
        reading.commit().await.unwrap();
        let active = sqlx::query_scalar::<_, i64>(ACTIVE);
        assert_eq!(active.fetch_one(&other).await.unwrap(), 0);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&other)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        other.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_bad_table_name_is_refused() {
        let error = SqliteStore::connect_with_table("sqlite::memory:", "keys; DROP TABLE x")
            .await
            .unwrap_err();
        assert!(error.to_string().contains("invalid table name"), "{error}");
        assert!(matches!(error, StoreError::Config(_)), "{error:?}");
        // Refused before the file is opened: a name mistyped creates no database.
        let dir = std::env::temp_dir().join(format!("tak-bad-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys.db");
        let url = format!("sqlite://{}", file.display());
        let error = SqliteStore::connect_with_table(&url, "api-keys")
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Config(_)), "{error:?}");
        assert!(!file.exists(), "the database file was created");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_url_sqlx_cannot_read_is_the_configuration_a_file_not_there_the_store() {
        let error = SqliteStore::connect("sqlite://keys.db?mode=sideways")
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Config(_)), "{error:?}");
        let error = SqliteStore::connect("sqlite:///nonexistent-directory/keys.db")
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    }
}

#[cfg(not(feature = "sqlite"))]
#[test]
#[ignore = "the SQLite store needs `--features sqlite` (run by .ci/run)"]
fn the_sqlite_store_passes_the_conformance_suite() {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_keeps_cached_keys_working_within_its_bound() {
    let store = TestStore::default();
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .cache(CacheConfig {
            ttl: Duration::from_millis(200),
            stale_if_error: Some(Duration::from_millis(1500)),
            ..CacheConfig::default()
        })
        .build()
        .unwrap();
    let keys = KeyManager::new(store.keys.clone()).with_cache(layer.handle());
    let cached = keys
        .create(NewKey::new("cached").scopes(["read"]))
        .await
        .unwrap();
    let unseen = keys
        .create(NewKey::new("unseen").scopes(["read"]))
        .await
        .unwrap();
    let client = HttpClient::new(serve(app(layer, Arc::new(AtomicUsize::new(0)))).await);
    let get = |key: &tower_api_key::key::PlaintextKey| {
        let client = client.clone();
        let header = api_key(key.expose_secret());
        async move {
            client
                .get("/recommendations", &[("authorization", &header)])
                .await
        }
    };
    assert_eq!(get(&cached.key).await.status, StatusCode::OK);

    store.fail(true);
    tokio::time::sleep(Duration::from_millis(400)).await; // past the TTL
    assert_eq!(
        get(&cached.key).await.status,
        StatusCode::OK,
        "served stale"
    );
    assert_eq!(
        get(&unseen.key).await.code(),
        "KEY_STORE_UNAVAILABLE",
        "never seen: 503"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await; // past TTL + bound
    assert_eq!(
        get(&cached.key).await.code(),
        "KEY_STORE_UNAVAILABLE",
        "the bound holds"
    );

    store.fail(false);
    assert_eq!(
        get(&cached.key).await.status,
        StatusCode::OK,
        "recovers by itself"
    );
    assert_eq!(get(&unseen.key).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_can_be_turned_off() {
    let store = TestStore::default();
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .cache(CacheConfig {
            ttl: Duration::from_millis(100),
            stale_if_error: None,
            ..CacheConfig::default()
        })
        .build()
        .unwrap();
    let keys = KeyManager::new(store.keys.clone()).with_cache(layer.handle());
    let key = keys
        .create(NewKey::new("k").scopes(["read"]))
        .await
        .unwrap();
    let client = HttpClient::new(serve(app(layer, Arc::new(AtomicUsize::new(0)))).await);
    let header = api_key(key.key.expose_secret());
    assert_eq!(
        client
            .get("/recommendations", &[("authorization", &header)])
            .await
            .status,
        200
    );
    store.fail(true);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let reply = client
        .get("/recommendations", &[("authorization", &header)])
        .await;
    assert_eq!(reply.code(), "KEY_STORE_UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_is_not_undone_by_a_stale_copy() {
    let store = TestStore::default();
    let layer = ApiKeyLayer::new("mesh", store.clone()).unwrap();
    let keys = KeyManager::new(store.keys.clone()).with_cache(layer.handle());
    let key = keys
        .create(NewKey::new("k").scopes(["read"]))
        .await
        .unwrap();
    let client = HttpClient::new(serve(app(layer, Arc::new(AtomicUsize::new(0)))).await);
    let header = api_key(key.key.expose_secret());
    assert_eq!(
        client
            .get("/recommendations", &[("authorization", &header)])
            .await
            .status,
        200
    );
    keys.revoke(&key.record.id).await.unwrap();
    store.fail(true);
    let reply = client
        .get("/recommendations", &[("authorization", &header)])
        .await;
    assert_eq!(
        reply.code(),
        "KEY_STORE_UNAVAILABLE",
        "the stale copy went with the revoke"
    );
}

/// A layer whose `StoreUsage` sink counts each key's requests for `store`, and a manager of
/// `store` that clears its cache.
fn counted_for<S: KeyStoreAdmin + Clone>(
    store: &S,
) -> (Arc<StoreUsage>, ApiKeyLayer, KeyManager<S>) {
    let pending = Arc::new(StoreUsage::new());
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .usage_sink(pending.clone())
        .build()
        .unwrap();
    let keys = KeyManager::new(store.clone()).with_cache(layer.handle());
    (pending, layer, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_flushed_to_the_store_in_batches() {
    let store = MemoryStore::new();
    let (pending, layer, keys) = counted_for(&store);
    let a = keys
        .create(NewKey::new("a").scopes(["read"]))
        .await
        .unwrap();
    let b = keys
        .create(
            NewKey::new("b")
                .scopes(["read"])
                .environment(Environment::Test),
        )
        .await
        .unwrap();
    let client = HttpClient::new(serve(app(layer, Arc::new(AtomicUsize::new(0)))).await);
    for (key, n) in [(&a, 5), (&b, 3)] {
        let header = api_key(key.key.expose_secret());
        for _ in 0..n {
            assert_eq!(
                client
                    .get("/recommendations", &[("authorization", &header)])
                    .await
                    .status,
                200
            );
        }
    }
    client
        .get(
            "/recommendations",
            &[("authorization", "ApiKey mesh_live_bad")],
        )
        .await;
    assert_eq!(
        store.get(&a.record.id).await.unwrap().unwrap().requests,
        0,
        "not yet flushed"
    );
    assert_eq!(pending.flush(&store).await.unwrap(), 2);
    assert_eq!(pending.flush(&store).await.unwrap(), 0, "nothing twice");
    let a_now = store.get(&a.record.id).await.unwrap().unwrap();
    assert_eq!(a_now.requests, 5);
    assert!(a_now.last_used_at.is_some());
    assert_eq!(store.get(&b.record.id).await.unwrap().unwrap().requests, 3);
}

/// Last use is written by a flush that may be cancelled inside the store (a timeout around it),
/// or stopped at shutdown: neither loses a request, and a stopped flusher writes what was counted
/// before it stopped, whatever its period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_use_survives_a_cancelled_flush_and_a_stopped_flusher_writes_the_rest() {
    let store = FaultyStore::default();
    let (pending, layer, keys) = counted_for(&store);
    let key = keys
        .create(NewKey::new("a").scopes(["read"]))
        .await
        .unwrap();
    let header = api_key(key.key.expose_secret());
    let client = HttpClient::new(serve(app(layer, Arc::new(AtomicUsize::new(0)))).await);
    let send = |n: usize| {
        let (client, header) = (&client, &header);
        async move {
            for _ in 0..n {
                let reply = client
                    .get("/recommendations", &[("authorization", header)])
                    .await;
                assert_eq!(reply.status, 200);
            }
        }
    };
    let requests = || async { store.get(&key.record.id).await.unwrap().unwrap().requests };

    send(3).await;
    store.usage_hangs.store(true, Ordering::SeqCst);
    let cut_short = tokio::time::timeout(Duration::from_millis(50), pending.flush(&store)).await;
    assert!(cut_short.is_err(), "the store held the flush open");
    store.usage_hangs.store(false, Ordering::SeqCst);
    assert_eq!(requests().await, 0);

    let flusher = pending.spawn_flusher(store.clone(), Duration::from_secs(3_600));
    send(2).await;
    assert_eq!(flusher.stop().await.unwrap(), 1, "one key updated");
    assert_eq!(
        requests().await,
        5,
        "the cancelled flush's 3 and the 2 after"
    );
    assert!(store
        .get(&key.record.id)
        .await
        .unwrap()
        .unwrap()
        .last_used_at
        .is_some());
}

/// A new key's id that the store already has is drawn again (signed ids have 8 random
/// characters), up to four times; then the conflict is the caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_id_is_drawn_again() {
    let store = FaultyStore::default();
    let keys = KeyManager::new(store.clone()).format(KeyFormat::new("mesh").unwrap());
    store.conflicts.store(3, Ordering::SeqCst);
    let created = keys.create(NewKey::new("fourth try")).await.unwrap();
    assert!(store.keys.get(&created.record.id).await.unwrap().is_some());
    store.conflicts.store(4, Ordering::SeqCst);
    assert!(matches!(
        keys.create(NewKey::new("never")).await,
        Err(ManageError::Store(StoreError::Conflict(_)))
    ));
    assert_eq!(store.keys.list().await.unwrap().len(), 1);
}

/// A rotation whose store fails while ending the old key leaves the old key as it was, and no
/// live successor whose secret no one was shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_that_fails_part_way_leaves_no_orphan_key() {
    let store = FaultyStore::default();
    let keys = KeyManager::new(store.clone()).format(KeyFormat::new("mesh").unwrap());
    let old = keys.create(NewKey::new("rotated")).await.unwrap().record;
    store.fail_after_writes(0);
    assert!(matches!(
        keys.rotate(&old.id, Duration::from_secs(60)).await,
        Err(ManageError::Store(StoreError::Unavailable(_)))
    ));
    *store.writes_left.lock().unwrap() = None;
    let left = store.keys.list().await.unwrap();
    assert_eq!(left.len(), 1, "the successor was taken back");
    assert_eq!(
        (left[0].id.as_str(), left[0].expires_at),
        (old.id.as_str(), None)
    );
    let new = keys.rotate(&old.id, Duration::from_secs(60)).await.unwrap();
    assert!(new.is_some(), "the old key can still be rotated");
}

/// The trait's own `update_key_within` (a store that does not override it) keeps the rule one
/// call at a time: it reads, counts, then updates, so only calls at once may both pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_brings_expired_keys_back_within_the_most() {
    let store = FaultyStore::default();
    conformance::expired_keys_come_back_only_within_the_most(store.clone(), store).await;
}
