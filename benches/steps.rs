//! The steps a cached request cannot avoid, each alone, to set the floor BENCHMARKS.md compares
//! the layer with: read the header, parse the key (checksum included), SHA-256 of the secret, read
//! the clock, a hash-map read, the constant-time compare, the extensions insert.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use tower_api_key::{key::KeyFormat, key::SecretDigest, Environment};

fn steps(c: &mut Criterion) {
    let format = KeyFormat::new("mesh").unwrap();
    let generated = format.generate(Environment::Live);
    let key = generated.key.expose_secret().to_owned();
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("ApiKey {key}")).unwrap(),
    );
    let secret = key[key.len() - 38..key.len() - 6].to_owned();
    let map: dashmap::DashMap<Box<str>, u64, foldhash::fast::RandomState> =
        dashmap::DashMap::with_hasher(foldhash::fast::RandomState::default());
    map.insert(generated.id.clone().into(), 1);
    let (a, b) = (SecretDigest::of(b"a"), SecretDigest::of(b"b"));

    let mut group = c.benchmark_group("steps");
    group.bench_function("header_read", |bench| {
        bench.iter(|| {
            black_box(
                black_box(&headers)
                    .get(AUTHORIZATION)
                    .map(|v| v.as_bytes().len()),
            )
        })
    });
    group.bench_function("parse_with_crc32", |bench| {
        bench.iter(|| black_box(format.parse(black_box(&key)).is_ok()))
    });
    group.bench_function("sha256_of_secret", |bench| {
        bench.iter(|| black_box(SecretDigest::of(black_box(secret.as_bytes()))))
    });
    group.bench_function("clock_read", |bench| {
        bench.iter(|| black_box(std::time::SystemTime::now()))
    });
    group.bench_function("front_map_read", |bench| {
        bench.iter(|| black_box(map.get(black_box(generated.id.as_str())).map(|v| *v)))
    });
    group.bench_function("constant_time_compare", |bench| {
        bench.iter(|| black_box(bool::from(black_box(&a).ct_eq(black_box(&b)))))
    });
    group.bench_function("extensions_insert", |bench| {
        bench.iter(|| {
            let mut extensions = http::Extensions::new();
            extensions.insert(black_box(std::sync::Arc::new(1u64)));
            black_box(extensions)
        })
    });
    group.finish();
}

criterion_group!(benches, steps);
criterion_main!(benches);
