//! Hostile input, faults and floods: nothing crashes the layer, nothing but an issued key gets
//! through, a failing store never opens the door, and floods stay bounded.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode};
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};
use tower_api_key::{
    async_trait, cache::CacheConfig, extract::KeySource, key::KeyFormat, key::SecretDigest,
    reject::Rejection, service::ResponseBody, store::KeyRecord, store::KeyStore,
    store::KeyStoreAdmin, store::StoreError, ApiKeyLayer, Environment, KeyManager, MemoryStore,
    NewKey,
};

use common::TestStore;

/// A layer with every key source, one issued key, and a counter of inner calls.
struct Target {
    layer: ApiKeyLayer,
    key: String,
    calls: Arc<AtomicUsize>,
    runtime: tokio::runtime::Runtime,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = MemoryStore::new();
        let layer = ApiKeyLayer::builder("mesh", store.clone())
            .sources([
                KeySource::api_key_scheme(),
                KeySource::bearer(),
                KeySource::header(http::HeaderName::from_static("x-api-key")),
                KeySource::query("api_key"),
            ])
            .allow_opaque_keys(true)
            .build()
            .unwrap();
        let created = runtime
            .block_on(
                KeyManager::new(store)
                    .with_cache(layer.handle())
                    .create(NewKey::new("issued")),
            )
            .unwrap();
        Target {
            layer,
            key: created.key.expose_secret().to_owned(),
            calls: Arc::new(AtomicUsize::new(0)),
            runtime,
        }
    })
}

/// Sends `request` through the layer; returns the status and whether the inner service ran.
fn send(request: Request<()>) -> (StatusCode, bool) {
    let target = target();
    let calls = target.calls.clone();
    let service = target.layer.layer(service_fn(move |_: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    }));
    let before = target.calls.load(Ordering::SeqCst);
    let response = target.runtime.block_on(service.oneshot(request)).unwrap();
    (
        response.status(),
        target.calls.load(Ordering::SeqCst) > before,
    )
}

/// `layer`'s answer to `Authorization: ApiKey <key>`, around a service that answers 200.
async fn answer(layer: &ApiKeyLayer, key: &str) -> Response<ResponseBody<String>> {
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let request = Request::get("/")
        .header("authorization", format!("ApiKey {key}"))
        .body(())
        .unwrap();
    service.oneshot(request).await.unwrap()
}

fn refused(status: StatusCode, called: bool) -> bool {
    !called && (status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_parser_never_panics_and_accepts_only_well_formed_keys(text in ".{0,600}") {
        let format = KeyFormat::new("mesh").unwrap();
        if let Ok(parsed) = format.parse(&text) {
            // Anything it accepts has the exact shape and a matching checksum.
            prop_assert_eq!(text.len(), "mesh_live_".len() + 12 + 1 + 38);
            prop_assert!(text.starts_with("mesh_"));
            prop_assert_eq!(parsed.id().len(), 12);
        }
    }

    #[test]
    fn near_misses_of_an_issued_key_are_refused(position in 0usize..61, byte in 0x21u8..0x7f) {
        let key = &target().key;
        let mut bytes = key.as_bytes().to_vec();
        prop_assume!(bytes[position] != byte);
        bytes[position] = byte;
        let changed = String::from_utf8(bytes).unwrap();
        let request = Request::get("/")
            .header("authorization", format!("ApiKey {changed}"))
            .body(())
            .unwrap();
        let (status, called) = send(request);
        prop_assert!(refused(status, called), "{} -> {}", changed, status);
    }

    #[test]
    fn arbitrary_header_bytes_never_panic_and_never_pass(
        values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 1..4),
        scheme in "(?i:apikey|bearer|basic|apikeyx)",
        header in prop_oneof![Just("authorization"), Just("x-api-key"), Just("cookie")],
    ) {
        let mut request = Request::get("/").body(()).unwrap();
        for value in &values {
            let mut bytes = format!("{scheme} ").into_bytes();
            bytes.extend_from_slice(value);
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                request.headers_mut().append(header, value);
            }
        }
        let (status, called) = send(request);
        prop_assert!(refused(status, called), "{}", status);
    }

    #[test]
    fn arbitrary_query_strings_never_panic_and_never_pass(query in "[ -~]{0,300}") {
        let encoded: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let Ok(request) = Request::get(format!("/?api_key={encoded}&x=1")).body(()) else {
            return Ok(());
        };
        let (status, called) = send(request);
        prop_assert!(refused(status, called), "{}", status);
    }
}

#[test]
fn the_issued_key_passes_through_every_source_and_mixed_case_schemes() {
    let key = target().key.clone();
    for (name, value) in [
        ("authorization", format!("ApiKey {key}")),
        ("authorization", format!("APIKEY {key}")),
        ("authorization", format!("bEaReR {key}")),
        ("x-api-key", key.clone()),
    ] {
        let request = Request::get("/").header(name, &value).body(()).unwrap();
        assert_eq!(send(request), (StatusCode::OK, true), "{name}: {value}");
    }
    let request = Request::get(format!("/?api_key={key}")).body(()).unwrap();
    assert_eq!(send(request), (StatusCode::OK, true));
}

/// A store whose record for every id has another secret's digest.
struct WrongDigestStore(MemoryStore);

#[async_trait]
impl KeyStore for WrongDigestStore {
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.0.get(id).await?.map(|mut record| {
            record.digest = SecretDigest::of(b"somebody else's secret");
            record
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_another_digest_is_invalid() {
    let store = MemoryStore::new();
    let created = NewKey::new("k")
        .generate(&KeyFormat::new("mesh").unwrap())
        .unwrap();
    store.create(created.record.clone()).await.unwrap();
    let layer = ApiKeyLayer::new("mesh", WrongDigestStore(store)).unwrap();
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let request = Request::get("/")
        .header(
            "authorization",
            format!("ApiKey {}", created.key.expose_secret()),
        )
        .body(())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(
        response.extensions().get::<Rejection>(),
        Some(&Rejection::InvalidApiKey)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_issued_under_one_prefix_never_opens_a_layer_with_another() {
    // Two services on one store (the default table and Redis prefix are the same).
    let store = MemoryStore::new();
    let mesh = ApiKeyLayer::new("mesh", store.clone()).unwrap();
    let shop = ApiKeyLayer::new("shop", store.clone()).unwrap();
    let issued = KeyManager::new(store.clone())
        .with_cache(mesh.handle())
        .create(NewKey::new("mesh key").scopes(["read"]))
        .await
        .unwrap();
    let text = issued.key.expose_secret();
    // mesh_live_<id>_<secret><checksum>: swap the prefix, recompute the public checksum.
    let rest = text.strip_prefix("mesh_live_").unwrap();
    let (id, secret) = (&rest[..12], &rest[13..13 + 32]);
    let swapped = common::forge("shop", "live", id, secret);
    assert!(
        KeyFormat::new("shop").unwrap().parse(&swapped).is_ok(),
        "well-formed"
    );
    assert_eq!(answer(&mesh, text).await.status(), StatusCode::OK);
    let refused = answer(&shop, &swapped).await;
    assert_eq!(
        (
            refused.status(),
            refused.extensions().get::<Rejection>().copied()
        ),
        (StatusCode::UNAUTHORIZED, Some(Rejection::InvalidApiKey))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_store_does_not_stop_other_keys_and_nothing_is_cached_from_it() {
    let store = TestStore::default();
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .lookup_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let keys = KeyManager::new(store.keys.clone()).with_cache(layer.handle());
    let cached = keys.create(NewKey::new("cached")).await.unwrap();
    let other = keys.create(NewKey::new("other")).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = layer.layer(service_fn(move |_: Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    }));
    let send = |key: &tower_api_key::key::PlaintextKey| {
        let request = Request::get("/")
            .header("authorization", format!("ApiKey {}", key.expose_secret()))
            .body(())
            .unwrap();
        service.clone().oneshot(request)
    };
    assert_eq!(send(&cached.key).await.unwrap().status(), 200);
    store.hang(true);
    let started = Instant::now();
    let hung = tokio::spawn(send(&other.key));
    for _ in 0..100 {
        assert_eq!(
            send(&cached.key).await.unwrap().status(),
            200,
            "other keys keep being served"
        );
    }
    let response = hung.await.unwrap().unwrap();
    assert_eq!(
        response.extensions().get::<Rejection>(),
        Some(&Rejection::KeyStoreUnavailable)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "within the lookup timeout"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        101,
        "the inner service never saw the hung request"
    );
    store.hang(false);
    assert_eq!(
        send(&other.key).await.unwrap().status(),
        200,
        "nothing cached from the failure"
    );
}

fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_unknown_ids_and_bad_checksums_stay_bounded() {
    const FLOOD: usize = 100_000;
    const NEGATIVE_CAPACITY: u64 = 1_000;
    let store = TestStore::default();
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .cache(CacheConfig {
            negative_capacity: NEGATIVE_CAPACITY,
            ..CacheConfig::default()
        })
        .build()
        .unwrap();
    let valid = KeyManager::new(store.keys.clone())
        .with_cache(layer.handle())
        .create(NewKey::new("valid"))
        .await
        .unwrap();
    let format = KeyFormat::new("mesh").unwrap();
    let before = resident_mib();
    let mut peak = before;
    for i in 0..FLOOD {
        let unknown = format.generate(Environment::Live);
        let status = answer(&layer, unknown.key.expose_secret()).await.status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        if i % 1000 == 0 {
            assert_eq!(
                answer(&layer, valid.key.expose_secret()).await.status(),
                200
            );
            peak = peak.max(resident_mib());
        }
    }
    let stats = layer.handle().stats().await;
    eprintln!(
        "flood of {FLOOD} unknown ids: {} store calls, {} unknown ids cached (capacity {NEGATIVE_CAPACITY}), resident set {before:.1} MiB -> peak {peak:.1} MiB",
        store.gets(),
        stats.unknown_ids,
    );
    assert!(store.gets() <= FLOOD + 1, "at most one store call per id");
    assert!(stats.unknown_ids <= NEGATIVE_CAPACITY, "{stats:?}");

    let calls_before = store.gets();
    let key = valid.key.expose_secret().to_owned();
    for i in 0..FLOOD {
        // A valid-looking key with its last checksum character changed.
        let mut bad = key.clone();
        bad.pop();
        bad.push(if i % 2 == 0 { '!' } else { 'Z' });
        if bad == key {
            continue;
        }
        let status = answer(&layer, &bad).await.status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        store.gets(),
        calls_before,
        "bad checksums never reach the store"
    );
}

/// With an id key, the same flood of made-up keys (each with a valid checksum, which anyone can
/// compute) costs the store nothing: their ids carry no tag. Keys the manager issued under the
/// layer's id key work; keys issued without it, or under another id key, are refused offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_id_key_made_up_ids_never_reach_the_store() {
    use tower_api_key::key::IdKey;

    const FLOOD: usize = 100_000;
    let id_key = IdKey::new(&[7; 32]).unwrap();
    let store = TestStore::default();
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .id_key(id_key.clone())
        .build()
        .unwrap();
    let issued = KeyManager::new(store.keys.clone())
        .with_cache(layer.handle())
        .create(NewKey::new("signed"))
        .await
        .unwrap();
    assert!(layer.format().issued(&issued.record.id));
    let unsigned = KeyManager::new(store.keys.clone())
        .format(KeyFormat::new("mesh").unwrap())
        .create(NewKey::new("issued before the id key"))
        .await
        .unwrap();
    let other_key = KeyManager::new(store.keys.clone())
        .format(
            KeyFormat::new("mesh")
                .unwrap()
                .with_id_key(IdKey::new(&[8; 32]).unwrap()),
        )
        .create(NewKey::new("another service's id key"))
        .await
        .unwrap();
    assert_eq!(
        answer(&layer, issued.key.expose_secret()).await.status(),
        200
    );
    assert_eq!(store.gets(), 1, "one lookup, then the cache");
    for refused in [&unsigned, &other_key] {
        let response = answer(&layer, refused.key.expose_secret()).await;
        assert_eq!(
            response.extensions().get::<Rejection>(),
            Some(&Rejection::InvalidApiKey)
        );
    }
    let format = KeyFormat::new("mesh").unwrap();
    for _ in 0..FLOOD {
        let made_up = format.generate(Environment::Live);
        let status = answer(&layer, made_up.key.expose_secret()).await.status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // A made-up id passes its tag with odds of one in 14.8 million: over 100,000 the expected
    // number of lookups is 0.007.
    eprintln!(
        "flood of {FLOOD} made-up ids with an id key: {} store calls",
        store.gets() - 1
    );
    assert!(store.gets() <= 2, "{} store calls", store.gets());
    assert_eq!(
        answer(&layer, issued.key.expose_secret()).await.status(),
        200
    );
}
