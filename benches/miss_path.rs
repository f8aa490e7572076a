//! The miss path: the first request of a key, through the in-memory store, and 1,000 concurrent
//! first requests of one key (one store call), as total time.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use tower::{service_fn, Layer, ServiceExt};
use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, NewKey};

type Body = http_body_util::Empty<bytes::Bytes>;

async fn inner(_: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::new()))
}

fn miss_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = MemoryStore::new();
    let layer = ApiKeyLayer::new("mesh", store.clone()).unwrap();
    let handle = layer.handle();
    let created = runtime
        .block_on(
            KeyManager::new(store)
                .with_cache(layer.handle())
                .create(NewKey::new("bench")),
        )
        .unwrap();
    let header = format!("ApiKey {}", created.key.expose_secret());
    let id = created.record.id.clone();
    let service = layer.layer(service_fn(inner));
    let request = || {
        Request::get("/")
            .header("authorization", &header)
            .body(Body::new())
            .unwrap()
    };

    let mut group = c.benchmark_group("miss_path");
    group.bench_function("first_request", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    handle.invalidate(&id).await; // not timed
                    let request = request();
                    let started = Instant::now();
                    let response = service.clone().oneshot(request).await.unwrap();
                    total += started.elapsed();
                    assert_eq!(response.status(), 200);
                }
                total
            })
        })
    });
    group.sample_size(20);
    group.bench_function("1000_concurrent_first_requests", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                runtime.block_on(handle.invalidate(&id));
                let requests: Vec<_> = (0..1000).map(|_| request()).collect();
                let started = Instant::now();
                runtime.block_on(async {
                    let tasks: Vec<_> = requests
                        .into_iter()
                        .map(|request| tokio::spawn(service.clone().oneshot(request)))
                        .collect();
                    for task in tasks {
                        assert_eq!(task.await.unwrap().unwrap().status(), 200);
                    }
                });
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, miss_path);
criterion_main!(benches);
