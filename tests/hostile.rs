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

/// A time `secs` after 1970, where a `SystemTime` holds it.
fn at(secs: u64) -> Option<std::time::SystemTime> {
    std::time::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Seconds since 1970: this century, the last second of 9999, past it, and the end of time.
fn any_secs() -> impl Strategy<Value = u64> {
    prop_oneof![
        1_700_000_000u64..1_900_000_000,
        Just(253_402_300_799),
        253_402_300_800u64..(1 << 40),
        Just(i64::MAX as u64),
        0u64..10,
    ]
}

/// Limits as a store of one's own may hold them: any numbers, zero and the largest included.
fn any_limits() -> impl Strategy<Value = tower_api_key::limit::Limits> {
    use tower_api_key::limit::{Limits, NamedLimit};
    let count = || prop_oneof![Just(0u32), Just(1), 1u32..1_000, Just(u32::MAX)];
    let window = prop_oneof![Just(1u64), 1u64..100_000, Just(u64::MAX)];
    (
        proptest::option::of(count()),
        proptest::option::of(count()),
        proptest::option::of(count()),
        proptest::option::of(count()),
        any::<bool>(),
        proptest::option::of((count(), window)),
    )
        .prop_map(|(per_minute, burst, daily, monthly, shared, named)| {
            let mut limits = Limits::UNLIMITED;
            limits.per_minute = per_minute;
            limits.burst = burst;
            limits.daily = daily;
            limits.monthly = monthly;
            limits.shared_by_owner = shared;
            if let Some((limit, window)) = named {
                if let Ok(named) = NamedLimit::new("burst", limit, window) {
                    limits = limits.with(named);
                }
            }
            limits
        })
}

/// Credits as a store of one's own may hold them: any balance, period and refill, a monthly
/// day outside 1 to 28 included.
fn any_credits() -> impl Strategy<Value = tower_api_key::limit::Credits> {
    use tower_api_key::limit::{Credits, RefillPeriod};
    (
        prop_oneof![Just(0u64), 0u64..10, Just(u64::MAX)],
        any::<u32>(),
        proptest::option::of((
            any::<u64>(),
            prop_oneof![
                Just(RefillPeriod::Daily),
                any::<u8>().prop_map(|day| RefillPeriod::Monthly { day }),
            ],
        )),
    )
        .prop_map(|(remaining, period, refill)| {
            let mut credits = Credits::once(remaining);
            credits.period = period;
            if let Some((amount, every)) = refill {
                let mut refilled = Credits::refilled(amount, RefillPeriod::Daily).unwrap();
                refilled.remaining = remaining;
                refilled.period = period;
                if let Some(refill) = &mut refilled.refill {
                    refill.every = every;
                }
                credits = refilled;
            }
            credits
        })
}

/// What a record holds besides its id and digest, each field anything a store could return.
#[derive(Debug, Clone)]
struct Garbage {
    environment: Environment,
    scopes: Vec<String>,
    owner: Option<String>,
    created: u64,
    expires: Option<u64>,
    revoked: Option<u64>,
    disabled: bool,
    plan: Option<String>,
    limits: Option<tower_api_key::limit::Limits>,
    credits: Option<tower_api_key::limit::Credits>,
    networks: Vec<&'static str>,
}

fn any_record_fields() -> impl Strategy<Value = Garbage> {
    let environment = prop_oneof![
        Just(Environment::Live),
        Just(Environment::Test),
        Just(Environment::Dev)
    ];
    let scope = prop_oneof![
        Just("read".to_owned()),
        Just("*".to_owned()),
        "[a-z:*]{0,6}",
        ".{0,4}"
    ];
    let plan = prop_oneof![
        Just("free".to_owned()),
        Just("pro".to_owned()),
        Just("enterprise".to_owned()),
        ".{0,6}"
    ];
    let network = prop_oneof![
        Just("127.0.0.0/8"),
        Just("10.0.0.0/8"),
        Just("::/0"),
        Just("0.0.0.0/0"),
        Just("198.51.100.7/32"),
    ];
    (
        (
            environment,
            proptest::collection::vec(scope, 0..4),
            proptest::option::of(prop_oneof![Just("acme".to_owned()), ".{0,6}"]),
            any_secs(),
            proptest::option::of(any_secs()),
            proptest::option::of(any_secs()),
        ),
        (
            any::<bool>(),
            proptest::option::of(plan),
            proptest::option::of(any_limits()),
            proptest::option::of(any_credits()),
            proptest::collection::vec(network, 0..3),
        ),
    )
        .prop_map(
            |(
                (environment, scopes, owner, created, expires, revoked),
                (disabled, plan, limits, credits, networks),
            )| Garbage {
                environment,
                scopes,
                owner,
                created,
                expires,
                revoked,
                disabled,
                plan,
                limits,
                credits,
                networks,
            },
        )
}

/// The time the layer reads in `records_a_store_returns_never_panic_and_pass_only_when_active`.
const NOW: u64 = 1_800_000_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// Whatever a store returns for an issued key's id (with that key's digest), the layer answers
    /// with one of its statuses and never panics: no time, limit, credit balance or refill day
    /// can overflow it. And it lets a request through only for a key that is active now.
    #[test]
    fn records_a_store_returns_never_panic_and_pass_only_when_active(
        garbage in any_record_fields(),
    ) {
        use tower_api_key::clock::ManualClock;
        use tower_api_key::RequireScopeLayer;

        let format = KeyFormat::new("mesh").unwrap();
        let created = NewKey::new("k")
            .environment(Environment::Live)
            .generate(&format)
            .unwrap();
        let mut record = created.record.clone();
        record.environment = garbage.environment;
        record.scopes = garbage.scopes.clone();
        record.owner = garbage.owner.clone();
        record.created_at = at(garbage.created).unwrap_or(record.created_at);
        record.expires_at = garbage.expires.and_then(at);
        record.revoked_at = garbage.revoked.and_then(at);
        record.disabled = garbage.disabled;
        record.plan = garbage.plan.clone();
        record.limits = garbage.limits.clone();
        record.credits = garbage.credits.clone();
        record.allowed_networks = garbage.networks.iter().map(|n| n.parse().unwrap()).collect();
        let runtime = &target().runtime;
        let statuses = runtime.block_on(async {
            let store = MemoryStore::new();
            store.create(record.clone()).await.unwrap();
            let layer = ApiKeyLayer::builder("mesh", store)
                .clock(ManualClock::new(at(NOW).unwrap()))
                .build()
                .unwrap();
            let service = RequireScopeLayer::all(["read"]).layer(service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(String::new()))
            }));
            let service = layer.layer(service);
            let mut statuses = Vec::new();
            // Twice: the second request is answered from the cache, against the limits' counts.
            for _ in 0..2 {
                let mut request = Request::get("/")
                    .header("authorization", format!("ApiKey {}", created.key.expose_secret()))
                    .body(())
                    .unwrap();
                let peer: std::net::SocketAddr = "198.51.100.7:40000".parse().unwrap();
                request.extensions_mut().insert(peer);
                statuses.push(service.clone().oneshot(request).await.unwrap().status());
            }
            statuses
        });
        let active = record.revoked_at.is_none()
            && !record.disabled
            && record.expires_at.is_none_or(|end| end > at(NOW).unwrap());
        for status in statuses {
            prop_assert!(
                [200, 401, 403, 429, 503].contains(&status.as_u16()),
                "{status} for {garbage:?}"
            );
            prop_assert!(status != StatusCode::OK || active, "a key not active passed: {garbage:?}");
        }
    }
}
