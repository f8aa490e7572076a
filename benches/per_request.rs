//! Per-request cost, in process, one run, same inner service: bare; this crate's layer on a hot
//! key, on a random key among 10,000 and among 1,000,000 cached keys; and tower-http's static
//! bearer check (no lookup) as the lower reference. BENCHMARKS.md reports the overhead over bare.
//! The hot key also runs with the credential left in place (`HideCredentials::Keep`, the floor's
//! behaviour) and restricted to a network (the peer address in the request's extensions).
//!
//! Each random key also runs as the harness alone (`harness_random_of_10k`, `…_of_1m`): the same
//! choice of header, the same request, the header's bytes read, the bare service. Among many
//! keys the header itself is in no CPU cache (a server's parser has just written it, so there it
//! is), and the layer's own cost on a random key is the difference between the two.
//!
//! Beside them, the floor as a service: `Floor` (`support/floor.rs`) does the unavoidable steps of
//! a cached request and nothing else, built from the same parts the layer uses, with the steps
//! added one at a time (`floor_1_header` … `floor_7_extensions`). Each step's cost is then
//! measured where it runs, in a service, and what the layer costs above `floor_7_extensions` is
//! the layer's own structure. `floor_7_coarse_clock` is the same floor reading the layer's
//! default clock (`CoarseClock`) instead of `SystemTime::now`.

#[path = "support/floor.rs"]
mod floor;

use std::convert::Infallible;
use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_api_key::{
    cache::CacheConfig, extract::HideCredentials, key::KeyFormat, limit::Limits, limit::NamedLimit,
    store::KeyRecord, store::KeyStoreAdmin, ApiKeyLayer, ApiKeyLayerBuilder, Environment,
    MemoryStore, NewKey,
};
use tower_http::validate_request::ValidateRequestHeaderLayer;

type Body = http_body_util::Empty<bytes::Bytes>;

/// A usage sink that does nothing: what telling any sink of a request costs.
struct EmptySink;

impl tower_api_key::usage::UsageSink for EmptySink {
    fn record(&self, event: &tower_api_key::usage::UsageEvent<'_>) {
        black_box(event);
    }
}

/// Sets up a layer's builder further.
type ApiKeyLayerBuilderFn = fn(ApiKeyLayerBuilder) -> ApiKeyLayerBuilder;

fn request(value: &HeaderValue) -> Request<Body> {
    let mut request = Request::new(Body::new());
    request.headers_mut().insert(AUTHORIZATION, value.clone());
    request
}

/// A random index below `len` (xorshift on `seed`): a random key each time, at almost no cost.
fn pick(seed: &mut u64, len: usize) -> usize {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    (*seed % len as u64) as usize
}

async fn inner(_: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::new()))
}

/// A layer over `n` keys, every one already in its cache; returns the layer and each key's header.
fn cached_keys(runtime: &tokio::runtime::Runtime, n: usize) -> (ApiKeyLayer, Vec<HeaderValue>) {
    let store = MemoryStore::new();
    let format = KeyFormat::new("mesh").unwrap();
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .cache(CacheConfig {
            capacity: n as u64 + 1000,
            ttl: std::time::Duration::from_secs(3600),
            ..CacheConfig::default()
        })
        .build()
        .unwrap();
    let mut headers = Vec::with_capacity(n);
    runtime.block_on(async {
        for _ in 0..n {
            let generated = format.generate(Environment::Live);
            let record = KeyRecord::new(generated.id, generated.digest, "bench", Environment::Live);
            store.create(record).await.unwrap();
            headers.push(
                HeaderValue::from_str(&format!("ApiKey {}", generated.key.expose_secret()))
                    .unwrap(),
            );
        }
        let mut service = layer.layer(service_fn(inner));
        for header in &headers {
            let response = service
                .ready()
                .await
                .unwrap()
                .call(request(header))
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    });
    (layer, headers)
}

/// A layer hiding credentials as `hide`, with one key restricted to `networks` and `limits`, in
/// its cache.
fn one_cached_key(
    runtime: &tokio::runtime::Runtime,
    hide: HideCredentials,
    networks: &[tower_api_key::network::IpNet],
    limits: Option<Limits>,
) -> (ApiKeyLayer, HeaderValue) {
    owned_cached_key(runtime, hide, networks, limits, None, |builder| builder)
}

/// As [`one_cached_key`], the key's owner (`acme`) having `owner_limits` if given, the layer
/// further set up by `configure`.
fn owned_cached_key(
    runtime: &tokio::runtime::Runtime,
    hide: HideCredentials,
    networks: &[tower_api_key::network::IpNet],
    limits: Option<Limits>,
    owner_limits: Option<Limits>,
    configure: impl FnOnce(ApiKeyLayerBuilder) -> ApiKeyLayerBuilder,
) -> (ApiKeyLayer, HeaderValue) {
    let store = MemoryStore::new();
    let layer = configure(ApiKeyLayer::builder("mesh", store.clone()).hide_credentials(hide))
        .build()
        .unwrap();
    let mut key = NewKey::new("bench")
        .owner("acme")
        .allowed_networks(networks.iter().copied());
    if let Some(limits) = limits {
        key = key.limits(limits);
    }
    let created = key.generate(layer.format()).unwrap();
    let header = HeaderValue::from_str(&format!("ApiKey {}", created.key.expose_secret())).unwrap();
    runtime.block_on(async {
        store.create(created.record).await.unwrap();
        if let Some(owner_limits) = owner_limits {
            store
                .set_owner_limits("acme", Some(&owner_limits))
                .await
                .unwrap();
        }
        let mut request = request(&header);
        request
            .extensions_mut()
            .insert(std::net::SocketAddr::from(([203, 0, 113, 7], 1)));
        let response = layer
            .layer(service_fn(inner))
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    });
    (layer, header)
}

/// Benchmarks `service` on requests that all carry `header`: a clone of the service per request,
/// driven by `oneshot`, the response checked (in debug builds) and kept from the optimizer.
fn one_key<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    service: S,
    header: &HeaderValue,
) where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        b.to_async(runtime).iter(|| {
            let service = service.clone();
            let request = request(header);
            async move {
                let response = service.oneshot(request).await.unwrap();
                debug_assert_eq!(response.status(), 200);
                black_box(response)
            }
        })
    });
}

fn per_request(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("per_request");

    let (hot_layer, hot) = cached_keys(&runtime, 1);
    let hot = hot[0].clone();

    one_key(&mut group, &runtime, "bare", service_fn(inner), &hot);

    // Deprecated upstream as too basic for real use; it is here as the floor of a header check.
    #[allow(deprecated)]
    let bearer =
        ValidateRequestHeaderLayer::bearer("mesh_live_statictoken").layer(service_fn(inner));
    let bearer_header = HeaderValue::from_static("Bearer mesh_live_statictoken");
    one_key(
        &mut group,
        &runtime,
        "tower_http_bearer",
        bearer,
        &bearer_header,
    );

    let layered = hot_layer.layer(service_fn(inner));
    one_key(&mut group, &runtime, "api_key_hot_key", layered, &hot);

    let (keep_layer, keep) = one_cached_key(&runtime, HideCredentials::Keep, &[], None);
    let layered = keep_layer.layer(service_fn(inner));
    one_key(&mut group, &runtime, "api_key_hot_key_keep", layered, &keep);

    // Usage counting, in the same run: what a sink adds to the hot key (an empty one: what
    // telling any sink costs). With `--features
    // analytics` (as bench/run.sh runs it), the analytics sink; then a gRPC request with a
    // country header, without a sink and with analytics reading its endpoint and country.
    #[cfg_attr(not(feature = "analytics"), allow(unused_mut))]
    let mut sinks: Vec<(&str, ApiKeyLayerBuilderFn, HeaderValue)> = vec![
        (
            "api_key_hot_key_empty_sink",
            |builder| builder.usage_sink(EmptySink),
            HeaderValue::from_static(""),
        ),
        (
            "api_key_hot_key_memory_usage",
            |builder| builder.usage_sink(tower_api_key::usage::MemoryUsage::new()),
            HeaderValue::from_static(""),
        ),
    ];
    #[cfg(feature = "analytics")]
    {
        use tower_api_key::usage::{Analytics, CountryHeader};
        sinks.push((
            "api_key_hot_key_analytics",
            |builder| builder.usage_sink(Analytics::new()),
            HeaderValue::from_static(""),
        ));
        sinks.push((
            "api_key_hot_key_grpc_country_no_sink",
            |builder| builder,
            HeaderValue::from_static("application/grpc"),
        ));
        sinks.push((
            "api_key_hot_key_analytics_grpc_country",
            |builder| {
                builder
                    .usage_sink(Analytics::new())
                    .country_resolver(CountryHeader::new("cf-ipcountry").unwrap())
            },
            HeaderValue::from_static("application/grpc"),
        ));
    }
    for (name, configure, content_type) in sinks {
        let (layer, header) = owned_cached_key(
            &runtime,
            HideCredentials::default(),
            &[],
            None,
            None,
            configure,
        );
        let service = layer.layer(service_fn(inner));
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let service = service.clone();
                let mut request = request(&header);
                if !content_type.is_empty() {
                    *request.method_mut() = http::Method::POST;
                    *request.uri_mut() = http::Uri::from_static("/mesh.Recommendations/List");
                    let headers = request.headers_mut();
                    headers.insert(http::header::CONTENT_TYPE, content_type.clone());
                    headers.insert("cf-ipcountry", HeaderValue::from_static("DE"));
                }
                async move {
                    let response = service.oneshot(request).await.unwrap();
                    debug_assert_eq!(response.status(), 200);
                    black_box(response)
                }
            })
        });
    }

    let office = [
        "10.0.0.0/8".parse().unwrap(),
        "203.0.113.0/24".parse().unwrap(),
    ];
    let peer: std::net::SocketAddr = "203.0.113.7:40000".parse().unwrap();
    // Limits no request of the run can reach: what is measured is the counting.
    let two_named = Limits::UNLIMITED
        .with(NamedLimit::new("burst", u32::MAX, 1).unwrap())
        .with(NamedLimit::new("hour", u32::MAX, 3600).unwrap());
    let owner_day = Limits::UNLIMITED.daily(u32::MAX);
    for (name, limits, owner_limits) in [
        ("api_key_hot_key_allowlist", None, None),
        (
            "api_key_hot_key_allowlist_minute_limit",
            Some(Limits::per_minute(u32::MAX)),
            None,
        ),
        (
            "api_key_hot_key_allowlist_two_limits",
            Some(two_named.clone()),
            None,
        ),
        (
            "api_key_hot_key_allowlist_two_limits_and_owner",
            Some(two_named),
            Some(owner_day),
        ),
    ] {
        let (layer, header) = owned_cached_key(
            &runtime,
            HideCredentials::default(),
            &office,
            limits,
            owner_limits,
            |builder| builder,
        );
        let service = layer.layer(service_fn(inner));
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let service = service.clone();
                let mut request = request(&header);
                request.extensions_mut().insert(peer);
                async move {
                    let response = service.oneshot(request).await.unwrap();
                    debug_assert_eq!(response.status(), 200);
                    black_box(response)
                }
            })
        });
    }

    macro_rules! floor_step {
        ($steps:literal, $name:literal) => {{
            let (service, header) = floor::floor::<$steps, _>(service_fn(inner));
            one_key(&mut group, &runtime, $name, service, &header);
        }};
    }
    floor_step!(1, "floor_1_header");
    floor_step!(2, "floor_2_parse_crc32");
    floor_step!(3, "floor_3_sha256");
    floor_step!(4, "floor_4_map_read");
    floor_step!(5, "floor_5_compare");
    floor_step!(6, "floor_6_clock");
    floor_step!(7, "floor_7_extensions");
    floor_step!(8, "floor_7_coarse_clock");

    for (name, n) in [
        ("api_key_random_of_10k", 10_000),
        ("api_key_random_of_1m", 1_000_000),
    ] {
        let (layer, headers) = cached_keys(&runtime, n);
        // The harness alone: the same random header into the same request, its bytes read (as
        // a layer reads them), and the bare service. A server's parser has just written the
        // header, so its lines are in cache there; here they are not, and this is what that
        // costs, apart from the layer's own lookups.
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let harness = name.replace("api_key", "harness");
        group.bench_function(harness, |b| {
            b.to_async(&runtime).iter(|| {
                let request = request(&headers[pick(&mut seed, headers.len())]);
                let bytes = request.headers()[AUTHORIZATION].as_bytes();
                black_box((bytes.first().copied(), bytes.last().copied()));
                async move { black_box(service_fn(inner).oneshot(request).await.unwrap()) }
            })
        });
        let service = layer.layer(service_fn(inner));
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let request = request(&headers[pick(&mut seed, headers.len())]);
                let service = service.clone();
                async move { black_box(service.oneshot(request).await.unwrap()) }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_request);
criterion_main!(benches);
