//! The console's key list, timed the same way on every store: a page of 25 through
//! `KeyStoreAdmin::list_page`, against every key read through `list` and paged in memory.

use std::time::SystemTime;

use criterion::Criterion;
use tokio::runtime::Runtime;
use tower_api_key::store::{KeyFilter, KeyState, KeyStoreAdmin};

/// Times the pages of `store`, which holds `keys` keys of owners `owner0`… (at least 25 of
/// `owner7` past `owner_offset`), as criterion group `group`.
pub fn pages<S: KeyStoreAdmin>(
    c: &mut Criterion,
    group: &str,
    runtime: &Runtime,
    store: &S,
    keys: usize,
    owner_offset: usize,
) {
    let now = SystemTime::now();
    let page = |filter: KeyFilter, offset: usize| {
        let listing = runtime
            .block_on(store.list_page(&filter, now, offset, 25))
            .unwrap();
        assert!(!listing.records.is_empty());
        listing
    };
    assert_eq!(page(KeyFilter::new(), 0).total, keys);

    let mut group = c.benchmark_group(group);
    group.sample_size(10);
    group.bench_function("list_then_page", |b| {
        b.iter(|| {
            let all = runtime.block_on(store.list()).unwrap();
            all.into_iter().skip(50).take(25).count()
        })
    });
    group.bench_function("list_page", |b| b.iter(|| page(KeyFilter::new(), 50)));
    group.bench_function("list_page_of_an_owner", |b| {
        b.iter(|| page(KeyFilter::new().owner("owner7"), owner_offset))
    });
    // Keys due for rotation: every key was created before `now`.
    group.bench_function("list_page_created_before", |b| {
        b.iter(|| page(KeyFilter::new().created_before(now), 50))
    });
    group.bench_function("list_page_active_last_page", |b| {
        b.iter(|| page(KeyFilter::new().state(KeyState::Active), keys - 10))
    });
    group.finish();
}
