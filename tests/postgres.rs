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

#[cfg(feature = "postgres")]
mod postgres {
    use tower_api_key::PostgresStore;

    use crate::common::{server_env, unique};
    use crate::{conformance, replicas};

    async fn store(table: &str) -> PostgresStore {
        PostgresStore::connect_with_table(&server_env("TOWER_API_KEY_POSTGRES_URL"), table)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: run through .ci/run"]
    async fn passes_the_conformance_suite() {
        conformance::conformance(store(&unique("conformance")).await).await;
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
    #[ignore = "needs PostgreSQL: run through .ci/run (stops and restarts the server)"]
    async fn survives_the_server_stopping_and_recovers() {
        replicas::an_outage_is_survived(
            store(&unique("outage")).await,
            "TOWER_API_KEY_POSTGRES_STOP",
            "TOWER_API_KEY_POSTGRES_START",
        )
        .await;
    }
}
