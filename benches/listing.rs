//! The console's key list on SQLite with 100,000 keys (1,000 owners of 100): a page of 25 read
//! through `KeyStoreAdmin::list_page`, against every key read through `list` and paged in memory
//! (what the console did before `list_page`).

#[path = "support/listing.rs"]
mod listing;

use criterion::{criterion_group, criterion_main, Criterion};
use tower_api_key::SqliteStore;

const KEYS: u32 = 100_000;

fn listing(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("tower-api-key-listing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("keys.db").display());
    let store = runtime.block_on(async {
        let store = SqliteStore::connect(&url).await.unwrap();
        // Written in one statement: through `create`, one commit per key, this takes minutes.
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let insert = format!(
            "INSERT INTO api_keys (id, digest, name, owner, environment, scopes, metadata, \
             created_at) WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n \
             WHERE i < {}) SELECT printf('id%08d', i), lower(hex(randomblob(32))), 'key ' || i, \
             'owner' || (i % 1000), 'live', '[\"read\"]', '{{}}', 1700000000 + i FROM n",
            KEYS - 1
        );
        sqlx::raw_sql(&insert).execute(&pool).await.unwrap();
        pool.close().await;
        store
    });
    listing::pages(c, "listing_100k", &runtime, &store, KEYS as usize, 0);
    std::fs::remove_dir_all(dir).unwrap();
}

criterion_group!(benches, listing);
criterion_main!(benches);
