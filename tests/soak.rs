//! Soak: a million requests through a real HTTP server on 127.0.0.1, at high concurrency, with a
//! mix of valid, invalid, revoked, missing and under-scoped keys. Every response must have its
//! expected status, none may be lost, and the usage counters must add up exactly.
//!
//! Marked ignored (it takes a while): `.ci/run` runs it in release mode,
//! `cargo test --release --test soak -- --ignored --nocapture`; `SOAK_REQUESTS` changes the count.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tower_api_key::{
    usage::MemoryUsage, ApiKeyLayer, Environment, KeyManager, MemoryStore, NewKey,
};

use common::{api_key, app, serve, HttpClient};

/// One kind of request in the mix, and the status it must get.
struct Kind {
    method: http::Method,
    path: &'static str,
    header: Option<String>,
    expected: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak test: a million requests; run in release by .ci/run"]
async fn a_million_mixed_requests_all_answered_as_expected() {
    let total: u64 = std::env::var("SOAK_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    const TASKS: u64 = 64;

    let store = MemoryStore::new();
    let usage = Arc::new(MemoryUsage::new());
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .usage_sink(usage.clone())
        .build()
        .unwrap();
    let keys = KeyManager::new(store).with_cache(layer.handle());
    let valid = keys
        .create(NewKey::new("valid").scopes(["read"]))
        .await
        .unwrap();
    let scoped = keys
        .create(NewKey::new("reader").scopes(["read"]))
        .await
        .unwrap();
    let revoked = keys
        .create(NewKey::new("revoked").scopes(["read"]))
        .await
        .unwrap();
    keys.revoke(&revoked.record.id).await.unwrap();
    let unknown = layer.format().generate(Environment::Live);
    let calls = Arc::new(AtomicUsize::new(0));
    let client = HttpClient::new(serve(app(layer, calls.clone())).await);

    // (method, path, authorization header, expected status)
    let kind = |method, path, key: Option<&str>, expected| Kind {
        method,
        path,
        header: key.map(api_key),
        expected,
    };
    let kinds = Arc::new(vec![
        kind(
            http::Method::GET,
            "/recommendations",
            Some(valid.key.expose_secret()),
            200,
        ),
        kind(
            http::Method::GET,
            "/recommendations",
            Some(unknown.key.expose_secret()),
            401,
        ),
        kind(
            http::Method::GET,
            "/recommendations",
            Some(revoked.key.expose_secret()),
            401,
        ),
        kind(
            http::Method::POST,
            "/tracking",
            Some(scoped.key.expose_secret()),
            403,
        ),
        kind(http::Method::GET, "/recommendations", None, 401),
    ]);
    let counts: Arc<Vec<AtomicU64>> =
        Arc::new((0..kinds.len()).map(|_| AtomicU64::new(0)).collect());
    let wrong = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (client, kinds, counts, wrong) =
                (client.clone(), kinds.clone(), counts.clone(), wrong.clone());
            tokio::spawn(async move {
                let mut i = task;
                while i < total {
                    let kind = (i % kinds.len() as u64) as usize;
                    let Kind {
                        method,
                        path,
                        header,
                        expected,
                    } = &kinds[kind];
                    let headers: Vec<(&str, &str)> = header
                        .iter()
                        .map(|h| ("authorization", h.as_str()))
                        .collect();
                    let reply = client.send(method.clone(), path, &headers).await;
                    if reply.status.as_u16() != *expected {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    counts[kind].fetch_add(1, Ordering::Relaxed);
                    i += TASKS;
                }
            })
        })
        .collect();
    let all = async {
        for task in tasks {
            task.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(20 * 60), all)
        .await
        .expect("the soak finished within 20 minutes");
    let elapsed = started.elapsed();
    let counts: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    eprintln!(
        "soak: {total} requests in {elapsed:?} ({:.0} requests/s), by kind {counts:?}",
        total as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "every response had its expected status"
    );
    assert_eq!(counts.iter().sum::<u64>(), total, "none lost");

    let snapshot = usage.snapshot();
    assert_eq!(snapshot.keys[&valid.record.id].outcomes["ok"], counts[0]);
    assert_eq!(
        snapshot.keys[&revoked.record.id].outcomes["API_KEY_REVOKED"],
        counts[2]
    );
    assert_eq!(
        snapshot.keys[&scoped.record.id].outcomes["INSUFFICIENT_PERMISSIONS"],
        counts[3]
    );
    assert_eq!(
        snapshot.unauthenticated.outcomes["INVALID_API_KEY"],
        counts[1]
    );
    assert_eq!(
        snapshot.unauthenticated.outcomes["MISSING_API_KEY"],
        counts[4]
    );
    let recorded: u64 =
        snapshot.keys.values().map(|k| k.requests).sum::<u64>() + snapshot.unauthenticated.requests;
    assert_eq!(recorded, total, "the usage counters add up");
    assert_eq!(
        calls.load(Ordering::SeqCst) as u64,
        counts[0],
        "only valid requests ran"
    );
}
