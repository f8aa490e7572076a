//! The PostgreSQL store against a real server: `.ci/run` starts one and sets
//! `TOWER_API_KEY_POSTGRES_URL` (and the commands that stop and start it).

#[cfg(not(feature = "postgres"))]
#[test]
#[ignore = "the PostgreSQL store needs `--features postgres` (run by .ci/run)"]
fn postgres_suite_needs_the_postgres_feature() {}

#[cfg(feature = "postgres")]
mod common;
#[cfg(feature = "postgres")]
#[path = "common/conformance.rs"]
mod conformance;
#[cfg(feature = "postgres")]
#[path = "common/replicas.rs"]
mod replicas;
#[cfg(all(feature = "postgres", feature = "analytics"))]
#[path = "common/usage_replicas.rs"]
mod usage_replicas;

#[cfg(feature = "postgres")]
mod postgres {
    use tower_api_key::PostgresStore;

    use crate::common::{run_server_command, server_client, server_env, unique, FreezingProxy};
    use crate::{conformance, replicas};

    /// Runs `sql` with the server's own client.
    fn psql(sql: &str) -> String {
        let url = server_env("TOWER_API_KEY_POSTGRES_URL");
        server_client("psql", &[&url, "-Atc", sql])
    }

    /// Revokes key `id` behind the store's back: no NOTIFY.
    fn revoke_by_hand(table: &str, id: &str) {
        psql(&format!(
            "UPDATE {table} SET revoked_at = 1 WHERE id = '{id}'"
        ));
    }

    async fn store(table: &str) -> PostgresStore {
        PostgresStore::connect_with_table(&server_env("TOWER_API_KEY_POSTGRES_URL"), table)
            .await
            .unwrap()
    }

    /// The README's move from the demo's SQLite file to PostgreSQL, with the tool: `export`
    /// there, `import --table` here. The key works on a layer over PostgreSQL, its owner's
    /// limits came too, and an import run again adds nothing.
    #[cfg(feature = "cli")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: run through .ci/run"]
    async fn the_tool_moves_keys_from_sqlite_to_postgres() {
        use tower::{Layer, ServiceExt};
        use tower_api_key::store::{AuditArchive, AuditQuery, KeyStore};
        use tower_api_key::ApiKeyLayer;

        use crate::common::{run_tool, temp_db};

        let (dir, sqlite) = temp_db("move");
        let on_sqlite = |args: &[&str]| run_tool(&[&["--database-url", &sqlite], args].concat());
        let created: serde_json::Value = serde_json::from_str(&on_sqlite(&[
            "--json", "create", "--name", "ci", "--owner", "acme", "--scopes", "read",
        ]))
        .unwrap();
        let (id, key) = (
            created["info"]["id"].as_str().unwrap(),
            created["key"].as_str().unwrap(),
        );
        on_sqlite(&["owner", "acme", "--per-minute", "100"]);
        let file = dir.join("keys.jsonl");
        std::fs::write(&file, on_sqlite(&["export", "--audit"])).unwrap();

        let table = unique("moved");
        let url = server_env("TOWER_API_KEY_POSTGRES_URL");
        let import = [
            "--database-url",
            &url,
            "--table",
            &table,
            "--json",
            "import",
            file.to_str().unwrap(),
        ];
        let imported: serde_json::Value = serde_json::from_str(&run_tool(&import)).unwrap();
        assert_eq!(imported["imported"], serde_json::json!([id]));
        assert_eq!(imported["owners"], serde_json::json!(["acme"]));
        assert_eq!(
            imported["audit_rows_added"], 2,
            "create and owner: {imported}"
        );

        let store = store(&table).await;
        let moved = (store.read_audit(&AuditQuery::newest(10)).await.unwrap()).len();
        assert_eq!(
            moved,
            2 + 2,
            "the trail moved, and the import's own two rows"
        );
        let layer = ApiKeyLayer::new("mesh", store.clone()).unwrap();
        let service = layer.layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        }));
        let request = http::Request::get("/")
            .header("authorization", format!("ApiKey {key}"))
            .body(())
            .unwrap();
        assert_eq!(
            service.oneshot(request).await.unwrap().status(),
            http::StatusCode::OK
        );
        let acme = store.owner("acme").await.unwrap().unwrap();
        assert_eq!(acme.limits.unwrap().per_minute, Some(100));

        let again: serde_json::Value = serde_json::from_str(&run_tool(&import)).unwrap();
        assert_eq!(again["imported"], serde_json::json!([]));
        assert_eq!(again["already_present"], serde_json::json!([id]));
        assert_eq!(again["audit_rows_already_present"], 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: run through .ci/run"]
    async fn passes_the_conformance_suite() {
        conformance::conformance(store(&unique("conformance")).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: run through .ci/run"]
    async fn updates_every_field_or_none() {
        let store = store(&unique("update")).await;
        conformance::updates_write_every_field_or_none(store, 300).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: run through .ci/run"]
    async fn keeps_the_audit_trail() {
        conformance::the_audit_trail_is_kept_newest_first(store(&unique("audit")).await).await;
        conformance::a_moved_trail_is_taken_once(store(&unique("moved")).await).await;
        conformance::a_moved_trail_leaves_the_newest(store(&unique("newest")).await, false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: run through .ci/run"]
    async fn lists_pages_as_the_filter_says() {
        conformance::listings_page_as_the_filter_says(store(&unique("listing")).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: run through .ci/run"]
    async fn two_replicas_keep_owners_within_their_most_keys() {
        let table = unique("most_keys");
        conformance::owners_never_hold_more_keys_than_allowed(
            store(&table).await,
            store(&table).await,
        )
        .await;
        let table = unique("expired_back");
        conformance::expired_keys_come_back_only_within_the_most(
            store(&table).await,
            store(&table).await,
        )
        .await;
        conformance::expired_keys_brought_back_at_once_stop_at_the_most(
            store(&table).await,
            store(&table).await,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: run through .ci/run"]
    async fn two_replicas_never_overspend_credits() {
        let table = unique("credits");
        conformance::credits_are_never_overspent(store(&table).await, store(&table).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: run through .ci/run"]
    async fn a_revoke_reaches_every_replica_by_notify() {
        let table = unique("replicas");
        let elapsed = replicas::a_revoke_reaches_the_other_replica(
            store(&table).await,
            store(&table).await,
            |b, handle| async move { b.spawn_listener(handle).await },
        )
        .await;
        eprintln!("PostgreSQL LISTEN/NOTIFY propagation: {elapsed:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: run through .ci/run"]
    async fn a_listener_whose_connection_is_killed_clears_the_cache_once_back() {
        let table = unique("killed");
        let store = store(&table).await;
        let pool = store.pool().clone();
        let admin = pool.clone();
        let listening = store.clone();
        replicas::a_killed_listener_reconnects_and_clears_the_cache(
            store,
            |handle| async move { listening.spawn_listener(handle).await },
            |id| async move {
                // Revoked by hand: no NOTIFY.
                sqlx::query(&format!("UPDATE {table} SET revoked_at = 1 WHERE id = $1"))
                    .bind(id)
                    .execute(&pool)
                    .await
                    .unwrap();
            },
            || async move {
                let killed: Vec<bool> = sqlx::query_scalar(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE pid <> pg_backend_pid() AND datname = current_database() \
                     AND query ILIKE '%LISTEN%' OR query = 'SELECT 1'",
                )
                .fetch_all(&admin)
                .await
                .unwrap();
                assert!(killed.contains(&true), "no listening connection found");
            },
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: run through .ci/run"]
    async fn a_half_open_listener_connection_is_noticed_and_the_cache_cleared() {
        let url = server_env("TOWER_API_KEY_POSTGRES_URL");
        let table = unique("halfopen");
        let server = url
            .split('@')
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let proxy = FreezingProxy::start(server.clone()).await;
        let store = store(&table).await;
        // Only the listener goes through the proxy.
        let listening = PostgresStore::connect_with_table(
            &url.replace(&server, &format!("127.0.0.1:{}", proxy.port)),
            &table,
        )
        .await
        .unwrap();
        let elapsed = replicas::a_killed_listener_reconnects_and_clears_the_cache(
            store,
            |handle| async move { listening.spawn_listener(handle).await },
            |id| async move { revoke_by_hand(&table, &id) },
            || async { proxy.freeze() },
        )
        .await;
        replicas::assert_noticed_by_the_ping(elapsed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: run through .ci/run (stops and restarts the server)"]
    async fn a_listener_cut_off_for_seconds_clears_the_cache_once_back() {
        let table = unique("restarted");
        let store = store(&table).await;
        let listening = store.clone();
        replicas::a_killed_listener_reconnects_and_clears_the_cache(
            store,
            |handle| async move { listening.spawn_listener(handle).await },
            |id| async move { revoke_by_hand(&table, &id) },
            || async {
                // Longer than any timeout of the listener's own.
                run_server_command("TOWER_API_KEY_POSTGRES_STOP");
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                run_server_command("TOWER_API_KEY_POSTGRES_START");
            },
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: run through .ci/run (stops and restarts the server)"]
    async fn survives_the_server_stopping_and_recovers() {
        replicas::an_outage_is_survived(
            store(&unique("outage")).await,
            "TOWER_API_KEY_POSTGRES_STOP",
            "TOWER_API_KEY_POSTGRES_START",
        )
        .await;
    }

    #[cfg(feature = "analytics")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: run through .ci/run"]
    async fn two_replicas_report_the_combined_usage() {
        let table = unique("usage");
        crate::usage_replicas::two_replicas_report_the_combined_totals(
            store(&table).await,
            store(&table).await,
            "mesh",
        )
        .await;
    }

    #[cfg(feature = "analytics")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: run through .ci/run"]
    async fn flushed_usage_leaves_memory_and_still_counts() {
        let table = unique("flushed");
        crate::usage_replicas::flushed_buckets_leave_memory_and_still_count(
            store(&table).await,
            store(&table).await,
            "mesh",
        )
        .await;
    }
}
