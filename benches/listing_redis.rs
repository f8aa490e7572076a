//! The console's key list on Redis with 100,000 keys (1,000 owners of 100): a page of 25 read
//! through `KeyStoreAdmin::list_page` (from the creation indexes), against every key read
//! through `list` and paged in memory (what `list_page` did before them). Needs a Redis server
//! at `TOWER_API_KEY_REDIS_URL`: `bench/run.sh` starts one (`.ci/services.sh`).

#[path = "support/listing.rs"]
mod listing;

use criterion::{criterion_group, criterion_main, Criterion};
use tower_api_key::store::KeyStoreAdmin;
use tower_api_key::{key::KeyFormat, NewKey, RedisStore};

const KEYS: usize = 100_000;
const WRITERS: usize = 8;

fn listing(c: &mut Criterion) {
    let url = std::env::var("TOWER_API_KEY_REDIS_URL")
        .expect("TOWER_API_KEY_REDIS_URL names the Redis server to use (bench/run.sh starts one)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let prefix = format!("bench-listing-{}:", std::process::id());
    let store = runtime.block_on(async {
        let store = RedisStore::connect_with_prefix(&url, &prefix)
            .await
            .unwrap();
        let format = KeyFormat::new("mesh").unwrap();
        let writers = (0..WRITERS).map(|writer| {
            let (store, format) = (store.clone(), format.clone());
            tokio::spawn(async move {
                for i in (writer..KEYS).step_by(WRITERS) {
                    let new = NewKey::new(format!("key {i}")).owner(format!("owner{}", i % 1000));
                    store
                        .create(new.generate(&format).unwrap().record)
                        .await
                        .unwrap();
                }
            })
        });
        for writer in writers.collect::<Vec<_>>() {
            writer.await.unwrap();
        }
        store
    });
    listing::pages(c, "listing_redis_100k", &runtime, &store, KEYS, 25);
}

criterion_group!(benches, listing);
criterion_main!(benches);
