//! Memory: bytes per cached key at 1,000,000 keys, from the resident set size before and after
//! the cache is filled (the store is filled first, so only the cache is counted). With the
//! `analytics` feature (on by default), also what usage analytics keep per active key: 100,000
//! keys each sending a request through a layer with `Analytics`, less the same through a layer
//! without; then again a minute later (the first minute closed into its hour and day).
//!
//! `cargo bench --bench memory` prints its lines; BENCHMARKS.md reports them.

use std::convert::Infallible;

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_api_key::{
    cache::CacheConfig, key::KeyFormat, store::KeyRecord, store::KeyStoreAdmin, ApiKeyLayer,
    Environment, MemoryStore,
};

type Body = http_body_util::Empty<bytes::Bytes>;

const KEYS: usize = 1_000_000;

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// One request with each of `headers` through `layer`, each answered 200.
async fn send_each(layer: &ApiKeyLayer, headers: &[HeaderValue]) {
    let mut service = layer.layer(service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::new()))
    }));
    for header in headers {
        let mut request = Request::new(Body::new());
        request.headers_mut().insert(AUTHORIZATION, header.clone());
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return; // `cargo bench -- --list` and test discovery
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = MemoryStore::new();
    let format = KeyFormat::new("mesh").unwrap();
    let mut headers = Vec::with_capacity(KEYS);
    runtime.block_on(async {
        for _ in 0..KEYS {
            let generated = format.generate(Environment::Live);
            let record = KeyRecord::new(generated.id, generated.digest, "bench", Environment::Live);
            store.create(record).await.unwrap();
            headers.push(
                HeaderValue::from_str(&format!("ApiKey {}", generated.key.expose_secret()))
                    .unwrap(),
            );
        }
    });
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .cache(CacheConfig {
            capacity: KEYS as u64,
            ttl: std::time::Duration::from_secs(3600),
            ..CacheConfig::default()
        })
        .build()
        .unwrap();
    let before = resident_bytes();
    runtime.block_on(send_each(&layer, &headers));
    let after = resident_bytes();
    println!(
        "memory/cached_key: {} bytes per key ({} keys, resident set {:.1} MiB -> {:.1} MiB)",
        (after.saturating_sub(before)) / KEYS as u64,
        KEYS,
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    #[cfg(feature = "analytics")]
    analytics(&runtime, store, &headers[..KEYS / 10]);
}

/// What `Analytics` keep per active key: the resident set grown by a layer with analytics, less
/// that grown by one without, over the same keys; then a minute later; then how many buckets a
/// flush two hours later leaves in memory, and how many keys a flush a day later.
#[cfg(feature = "analytics")]
fn analytics(runtime: &tokio::runtime::Runtime, store: MemoryStore, headers: &[HeaderValue]) {
    use tower_api_key::{clock::ManualClock, usage::Analytics};

    let clock = ManualClock::new(std::time::SystemTime::now());
    let layer = |analytics: Option<Analytics>| {
        let builder = ApiKeyLayer::builder("mesh", store.clone()).clock(clock.clone());
        match analytics {
            Some(analytics) => builder.usage_sink(analytics),
            None => builder,
        }
        .build()
        .unwrap()
    };
    let grown = |layer: &ApiKeyLayer| {
        let before = resident_bytes();
        runtime.block_on(send_each(layer, headers));
        resident_bytes().saturating_sub(before)
    };
    let plain = grown(&layer(None));
    let analytics = Analytics::new();
    let counted = layer(Some(analytics.clone()));
    let with = grown(&counted);
    let n = headers.len() as u64;
    println!(
        "memory/analytics_first_minute: {} bytes per active key ({} keys, {} buckets)",
        with.saturating_sub(plain) / n,
        n,
        analytics.buckets()
    );
    clock.advance(std::time::Duration::from_secs(61));
    let later = grown(&counted);
    println!(
        "memory/analytics_a_minute_later: {} more bytes per active key ({} buckets)",
        later / n,
        analytics.buckets()
    );
    // Two hours later, a request each and a flush: what is written and over for an hour
    // (`AnalyticsConfig::keep_flushed`) leaves memory.
    clock.advance(std::time::Duration::from_secs(2 * 3_600));
    grown(&counted);
    let held = analytics.buckets();
    let written = runtime
        .block_on(analytics.flush(&MemoryStore::new()))
        .unwrap();
    println!(
        "memory/analytics_flushed_two_hours_later: {} buckets held, {} after a flush of {} rows",
        held,
        analytics.buckets(),
        written
    );
    // A day later, one key used and a flush: the others, idle since a day that is over, are
    // forgotten.
    clock.advance(std::time::Duration::from_secs(86_400));
    let keys = analytics.keys();
    runtime.block_on(send_each(&counted, &headers[..1]));
    runtime
        .block_on(analytics.flush(&MemoryStore::new()))
        .unwrap();
    println!(
        "memory/analytics_a_day_later: {} keys kept, {} after a flush ({} buckets)",
        keys,
        analytics.keys(),
        analytics.buckets()
    );
}
