//! Rate limits, quotas, environments and usage over real HTTP, on a clock moved by hand.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use tower_api_key::{
    clock::ManualClock, limit::Bucket, limit::Costs, limit::LimitCheck, limit::Limiter,
    limit::Limits, limit::MemoryLimiter, limit::NamedLimit, manage::CreatedKey, store::KeyRecord,
    store::KeyStoreAdmin, usage::MemoryUsage, ApiKeyLayer, ApiKeyLayerBuilder, Environment,
    KeyManager, NewKey,
};

use common::{api_key, app, serve, xorshift, HttpClient, Reply, TestStore};

/// 2026-11-22 23:59:00 UTC.
const START: u64 = 20_779 * 86_400 + 86_340;

struct Fixture {
    client: HttpClient,
    store: TestStore,
    clock: ManualClock,
    usage: Arc<MemoryUsage>,
    layer: ApiKeyLayer,
}

impl Fixture {
    async fn with(configure: impl FnOnce(ApiKeyLayerBuilder) -> ApiKeyLayerBuilder) -> Self {
        let store = TestStore::default();
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(START));
        let usage = Arc::new(MemoryUsage::new());
        let builder = ApiKeyLayer::builder("mesh", store.clone())
            .clock(clock.clone())
            .usage_sink(usage.clone());
        let layer = configure(builder).build().unwrap();
        let addr = serve(app(layer.clone(), Arc::new(AtomicUsize::new(0)))).await;
        Fixture {
            client: HttpClient::new(addr),
            store,
            clock,
            usage,
            layer,
        }
    }

    async fn new() -> Self {
        Fixture::with(|b| b).await
    }

    /// A `read` key with `limits` (or none) in `environment`.
    async fn key(&self, environment: Environment, limits: Option<Limits>) -> CreatedKey {
        let mut created = NewKey::new("limited")
            .environment(environment)
            .scopes(["read"])
            .generate(self.layer.format())
            .unwrap();
        created.record.limits = limits;
        self.store
            .keys
            .create(created.record.clone())
            .await
            .unwrap();
        created
    }

    /// Sends `method path` with `header` as the key.
    async fn send(&self, header: &str, method: Method, path: &str) -> Reply {
        self.client
            .send(method, path, &[("authorization", header)])
            .await
    }

    async fn get(&self, key: &CreatedKey) -> Reply {
        self.client
            .get(
                "/recommendations",
                &[("authorization", &api_key(key.key.expose_secret()))],
            )
            .await
    }

    /// How many of `n` sequential requests got through.
    async fn admitted(&self, key: &CreatedKey, n: usize) -> usize {
        let mut ok = 0;
        for _ in 0..n {
            if self.get(key).await.status == StatusCode::OK {
                ok += 1;
            }
        }
        ok
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_n_admits_exactly_n_under_concurrency() {
    let f = Fixture::new().await;
    let key = f.key(Environment::Live, Some(Limits::per_minute(50))).await;
    let header = api_key(key.key.expose_secret());
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..400)
        .map(|_| {
            let client = f.client.clone();
            let header = header.clone();
            let (ok, limited) = (ok.clone(), limited.clone());
            tokio::spawn(async move {
                let reply = client
                    .get("/recommendations", &[("authorization", &header)])
                    .await;
                match reply.status {
                    StatusCode::OK => ok.fetch_add(1, Ordering::SeqCst),
                    StatusCode::TOO_MANY_REQUESTS => limited.fetch_add(1, Ordering::SeqCst),
                    other => panic!("unexpected {other}"),
                };
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(ok.load(Ordering::SeqCst), 50);
    assert_eq!(limited.load(Ordering::SeqCst), 350);
}

#[test]
fn the_memory_limiter_is_exact_with_threads_on_both_cores() {
    // An hour before midnight: the minute after is the same day.
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(START - 3600));
    let limiter = Arc::new(MemoryLimiter::new());
    let limits = Limits::per_minute(1000).daily(1500);
    let run = |limiter: Arc<MemoryLimiter>, now: std::time::SystemTime| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (limiter, limits) = (limiter.clone(), limits.clone());
                std::thread::spawn(move || {
                    (0..2000)
                        .filter(
                            |_| match limiter.check(&[Bucket::new("key:x", &limits)], 1, now) {
                                LimitCheck::Ready(Ok(decision)) => decision.allowed,
                                _ => panic!("the memory limiter decides at once"),
                            },
                        )
                        .count()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum::<usize>()
    };
    use tower_api_key::clock::Clock;
    assert_eq!(
        run(limiter.clone(), clock.now()),
        1000,
        "the burst, exactly"
    );
    clock.advance(Duration::from_secs(60));
    // The burst is back, but the day has only 500 left.
    assert_eq!(run(limiter, clock.now()), 500, "the daily quota, exactly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_double_burst_across_a_minute_boundary() {
    let f = Fixture::new().await;
    let key = f.key(Environment::Live, Some(Limits::per_minute(30))).await;
    assert_eq!(f.admitted(&key, 40).await, 30);
    // 23:59:00 -> 00:00:04: a fixed window would allow a fresh 30 here.
    f.clock.advance(Duration::from_secs(64));
    assert_eq!(
        f.admitted(&key, 40).await,
        30,
        "a full minute later, a full burst"
    );
    f.clock.advance(Duration::from_secs(4));
    assert_eq!(
        f.admitted(&key, 40).await,
        2,
        "four seconds later, two (one per two seconds)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_reset_at_utc_midnight_and_at_the_month_start() {
    let f = Fixture::new().await;
    let key = f
        .key(
            Environment::Live,
            Some(Limits::UNLIMITED.daily(5).monthly(8)),
        )
        .await;
    assert_eq!(f.admitted(&key, 7).await, 5);
    let reply = f.get(&key).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.headers["retry-after"], "60", "seconds to midnight");
    f.clock.advance(Duration::from_secs(59));
    assert_eq!(
        f.admitted(&key, 1).await,
        0,
        "23:59:59 is still the same day"
    );
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(
        f.admitted(&key, 5).await,
        3,
        "a new day, but the month has 3 left"
    );
    f.clock.advance(Duration::from_secs(86_400));
    assert_eq!(f.admitted(&key, 1).await, 0, "still November");
    f.clock
        .set(UNIX_EPOCH + Duration::from_secs(20_788 * 86_400)); // 2026-12-01 00:00 UTC
    assert_eq!(f.admitted(&key, 6).await, 5, "December");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_has_the_reference_body_naming_the_limit_and_the_ietf_headers() {
    let f = Fixture::new().await;
    let key = f.key(Environment::Live, Some(Limits::FREE)).await;
    let reply = f.get(&key).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers["ratelimit-policy"],
        "\"minute\";q=100;w=60, \"day\";q=10000;w=86400, \"month\";q=100000;w=2592000"
    );
    assert_eq!(
        reply.headers["ratelimit"],
        "\"minute\";r=99;t=1, \"day\";r=9999;t=60, \"month\";r=99999;t=691260"
    );
    assert_eq!(f.admitted(&key, 99).await, 99);
    let calls_before = f.usage.key(&key.record.id).unwrap().outcomes["ok"];
    let reply = f.get(&key).await;
    assert_eq!(
        reply.body,
        r#"{"error":"Rate limit exceeded","code":"RATE_LIMIT_EXCEEDED","status":429,"limit":"minute"}"#,
        "the reference's three fields, then the limit that was hit"
    );
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(
        reply.headers["ratelimit"],
        "\"minute\";r=0;t=1, \"day\";r=9900;t=60, \"month\";r=99900;t=691260",
        "the refusal spent nothing"
    );
    assert_eq!(
        reply.headers["ratelimit-policy"],
        "\"minute\";q=100;w=60, \"day\";q=10000;w=86400, \"month\";q=100000;w=2592000"
    );
    assert_eq!(
        f.usage.key(&key.record.id).unwrap().outcomes["ok"],
        calls_before,
        "the limited request did not reach the service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_come_from_the_layer_and_unknown_plans_fail_closed() {
    let f = Fixture::with(|b| b.plan("tiny", Limits::per_minute(3))).await;
    let mut tiny = f.key(Environment::Live, None).await;
    tiny.record.plan = Some("tiny".into());
    f.store.keys.delete(&tiny.record.id).await.unwrap();
    f.store.keys.create(tiny.record.clone()).await.unwrap();
    assert_eq!(f.admitted(&tiny, 5).await, 3);

    let mut unknown = f.key(Environment::Live, None).await;
    unknown.record.plan = Some("platinum".into());
    f.store.keys.delete(&unknown.record.id).await.unwrap();
    f.store.keys.create(unknown.record.clone()).await.unwrap();
    let reply = f.get(&unknown).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.code(), "KEY_STORE_UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_shared_by_owner_count_every_key_of_the_owner() {
    let f = Fixture::new().await;
    let shared = Limits::per_minute(4).shared_by_owner();
    let mut keys = Vec::new();
    for _ in 0..2 {
        let mut created = f.key(Environment::Live, Some(shared.clone())).await;
        created.record.owner = Some("acme".into());
        f.store.keys.delete(&created.record.id).await.unwrap();
        f.store.keys.create(created.record.clone()).await.unwrap();
        keys.push(created);
    }
    let first = f.admitted(&keys[0], 3).await;
    let second = f.admitted(&keys[1], 3).await;
    assert_eq!((first, second), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owners_keys_share_one_bucket_whatever_their_environments_or_plans() {
    let f = Fixture::new().await;
    let shared = Limits::per_minute(2).shared_by_owner();
    // A live key, a test key (capped by the test limits, so its effective limits differ) and a
    // live key with other limits, all of one owner.
    let mut keys = Vec::new();
    for (environment, limits) in [
        (Environment::Live, shared.clone()),
        (Environment::Test, shared),
        (
            Environment::Live,
            Limits::per_minute(3).daily(500).shared_by_owner(),
        ),
    ] {
        let mut created = f.key(environment, Some(limits)).await;
        created.record.owner = Some("acme".into());
        f.store.keys.delete(&created.record.id).await.unwrap();
        f.store.keys.create(created.record.clone()).await.unwrap();
        keys.push(created);
    }
    // One count for all three; each request is checked against its own key's limits on it.
    let mut admitted = Vec::new();
    for _round in 0..4 {
        for (i, key) in keys.iter().enumerate() {
            if f.get(key).await.status == StatusCode::OK {
                admitted.push(i);
            }
        }
    }
    assert_eq!(
        admitted,
        [0, 1, 2],
        "two counted for the 2-a-minute keys, the third only by the 3-a-minute key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_test_keys_are_capped_and_dev_keys_need_enabling() {
    let f = Fixture::new().await;
    let dev = f.key(Environment::Dev, Some(Limits::per_minute(1))).await;
    let reply = f.get(&dev).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.code(), "API_KEY_ENVIRONMENT_NOT_ALLOWED");
    assert_eq!(f.store.gets(), 0, "refused from the key's text alone");

    let test = f.key(Environment::Test, Some(Limits::PRO)).await;
    assert_eq!(f.admitted(&test, 70).await, 60, "the test cap of 60/min");
    let reply = f.get(&test).await;
    assert_eq!(
        reply.headers["ratelimit-policy"],
        "\"minute\";q=60;w=60, \"day\";q=1000;w=86400, \"month\";q=1000000;w=2592000",
        "every limit, the stricter of the key's and the test cap"
    );

    let production = Fixture::with(|b| b.environments([Environment::Live])).await;
    let test = production.key(Environment::Test, None).await;
    assert_eq!(
        production.get(&test).await.code(),
        "API_KEY_ENVIRONMENT_NOT_ALLOWED"
    );
    let live = production.key(Environment::Live, None).await;
    assert_eq!(production.get(&live).await.status, StatusCode::OK);
    assert!(!production
        .get(&live)
        .await
        .headers
        .contains_key("ratelimit"));

    // The README's development deployment: production keys are refused there.
    let development =
        Fixture::with(|b| b.environments([Environment::Test, Environment::Dev])).await;
    let live = development.key(Environment::Live, None).await;
    assert_eq!(
        development.get(&live).await.code(),
        "API_KEY_ENVIRONMENT_NOT_ALLOWED"
    );
    let dev = development
        .key(Environment::Dev, Some(Limits::per_minute(1)))
        .await;
    assert_eq!(
        development.admitted(&dev, 20).await,
        20,
        "dev keys are unlimited"
    );
    let reply = development.get(&dev).await;
    assert_eq!(reply.json()["environment"], "dev");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opaque_key_of_a_refused_environment_is_refused_after_lookup() {
    let f = Fixture::with(|b| b.allow_opaque_keys(true).environments([Environment::Live])).await;
    let mut record = KeyRecord::opaque("legacy-test-key-123", "old", Environment::Test);
    record.scopes = vec!["read".into()];
    f.store.keys.create(record).await.unwrap();
    let reply = f
        .client
        .get(
            "/recommendations",
            &[("authorization", "ApiKey legacy-test-key-123")],
        )
        .await;
    assert_eq!(reply.code(), "API_KEY_ENVIRONMENT_NOT_ALLOWED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_are_exact_after_a_mixed_load() {
    let f = Fixture::new().await;
    let keys = KeyManager::new(f.store.keys.clone()).with_cache(f.layer.handle());
    let limited = f.key(Environment::Live, Some(Limits::per_minute(10))).await;
    let reader = keys
        .create(NewKey::new("reader").scopes(["read"]))
        .await
        .unwrap();
    let revoked = keys
        .create(NewKey::new("revoked").scopes(["read"]))
        .await
        .unwrap();
    keys.revoke(&revoked.record.id).await.unwrap();

    let mut tasks = Vec::new();
    let spawn = |path: &'static str, method: Method, header: String| {
        let client = f.client.clone();
        tokio::spawn(async move {
            let headers: Vec<(&str, &str)> = if header.is_empty() {
                vec![]
            } else {
                vec![("authorization", header.as_str())]
            };
            client.send(method, path, &headers).await.status
        })
    };
    for _ in 0..30 {
        tasks.push(spawn(
            "/recommendations",
            Method::GET,
            api_key(limited.key.expose_secret()),
        ));
    }
    for _ in 0..25 {
        tasks.push(spawn(
            "/recommendations",
            Method::GET,
            api_key(reader.key.expose_secret()),
        ));
        tasks.push(spawn(
            "/tracking",
            Method::POST,
            api_key(reader.key.expose_secret()),
        ));
    }
    for _ in 0..15 {
        tasks.push(spawn(
            "/recommendations",
            Method::GET,
            api_key(revoked.key.expose_secret()),
        ));
        tasks.push(spawn(
            "/recommendations",
            Method::GET,
            api_key("mesh_live_invalid"),
        ));
        tasks.push(spawn("/recommendations", Method::GET, String::new()));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let snapshot = f.usage.snapshot();
    let limited_usage = &snapshot.keys[&limited.record.id];
    assert_eq!(limited_usage.outcomes["ok"], 10);
    assert_eq!(limited_usage.outcomes["RATE_LIMIT_EXCEEDED"], 20);
    assert_eq!(limited_usage.requests, 30);
    assert_eq!(limited_usage.latency.count, 10);

    let reader_usage = &snapshot.keys[&reader.record.id];
    assert_eq!(reader_usage.outcomes["ok"], 25);
    assert_eq!(reader_usage.outcomes["INSUFFICIENT_PERMISSIONS"], 25);
    assert_eq!(
        reader_usage.latency.count, 50,
        "the scope check is behind the layer"
    );
    assert_eq!(reader_usage.last_used, Some(START));

    assert_eq!(
        snapshot.keys[&revoked.record.id].outcomes["API_KEY_REVOKED"],
        15
    );
    assert_eq!(snapshot.unauthenticated.outcomes["INVALID_API_KEY"], 15);
    assert_eq!(snapshot.unauthenticated.outcomes["MISSING_API_KEY"], 15);
    assert_eq!(snapshot.unauthenticated.requests, 30);
    assert_eq!(snapshot.keys.len(), 3);
    let total: u64 =
        snapshot.keys.values().map(|k| k.requests).sum::<u64>() + snapshot.unauthenticated.requests;
    assert_eq!(total, 30 + 50 + 45, "none lost");
}

/// Two named limits, and routes of three costs: 3 for `POST /tracking`, 0 for `PUT /offers`
/// (checked, not counted), 1 for the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_limits_are_each_enforced_and_a_route_costs_what_the_layer_says() {
    let f =
        Fixture::with(|b| b.costs(Costs::per_path([("/tracking", 3), ("/offers", 0)], 1))).await;
    let created = NewKey::new("named")
        .scopes(["admin"])
        .limits(
            Limits::UNLIMITED
                .with(NamedLimit::new("burst", 5, 1).unwrap())
                .with(NamedLimit::new("hour", 8, 3600).unwrap()),
        )
        .generate(f.layer.format())
        .unwrap();
    f.store.keys.create(created.record.clone()).await.unwrap();
    let header = api_key(created.key.expose_secret());
    let send = |method: Method, path: &'static str| f.send(&header, method, path);
    let track = || send(Method::POST, "/tracking");
    let read = || send(Method::GET, "/recommendations");
    let free = || send(Method::PUT, "/offers");

    let reply = track().await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        reply.headers["ratelimit-policy"],
        "\"burst\";q=5;w=1, \"hour\";q=8;w=3600"
    );
    assert!(reply.headers["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"burst\";r=2;"));
    let refused = track().await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.json()["limit"],
        "burst",
        "3 do not fit in the 2 left"
    );
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(read().await.status, StatusCode::OK, "1 fits");
    let checked = free().await;
    assert_eq!(
        checked.status,
        StatusCode::OK,
        "a cost of 0 passes while 1 is left"
    );
    assert!(checked.headers["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"burst\";r=1;"));
    assert_eq!(read().await.status, StatusCode::OK);
    let spent = free().await;
    assert_eq!(
        spent.status,
        StatusCode::TOO_MANY_REQUESTS,
        "and is refused once none is"
    );
    assert_eq!(spent.json()["limit"], "burst");

    // The burst refills; the hour has 8 - 5 = 3 left.
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(track().await.status, StatusCode::OK);
    let over = read().await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.json()["limit"], "hour");
    assert_eq!(over.code(), "RATE_LIMIT_EXCEEDED");
}

/// What a request costing `cost` in `buckets` spent: its cost if admitted, else nothing.
fn spent_on(limiter: &MemoryLimiter, buckets: &[Bucket<'_>], cost: u32, now: SystemTime) -> u64 {
    match limiter.check(buckets, cost, now) {
        LimitCheck::Ready(Ok(d)) if d.allowed => u64::from(cost),
        LimitCheck::Ready(Ok(_)) => 0,
        _ => panic!("the memory limiter decides at once"),
    }
}

/// Eight threads spend random costs (0 to 4) on three limits at once. Exactly the tightest limit
/// is spent, and the other two by exactly as much: no check ever counted in one limit and not
/// another.
#[test]
fn concurrent_costs_spend_every_limit_alike_and_the_tightest_exactly() {
    use tower_api_key::clock::Clock;

    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(START - 3600));
    let now = clock.now();
    let limiter = Arc::new(MemoryLimiter::new());
    let limits = Limits::UNLIMITED
        .with(NamedLimit::new("a", 60, 3600).unwrap())
        .with(NamedLimit::new("b", 100, 3600).unwrap())
        .daily(200);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (limiter, limits) = (limiter.clone(), limits.clone());
            std::thread::spawn(move || {
                let mut seed = t * 7919 + 1;
                let mut spent = 0u64;
                for _ in 0..500 {
                    let cost = (xorshift(&mut seed) % 5) as u32;
                    spent += spent_on(&limiter, &[Bucket::new("key:x", &limits)], cost, now);
                }
                spent
            })
        })
        .collect();
    let spent: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(spent, 60, "the tightest limit, exactly");
    let LimitCheck::Ready(Ok(after)) = limiter.check(&[Bucket::new("key:x", &limits)], 0, now)
    else {
        panic!("decided at once");
    };
    assert_eq!(after.refused_by.as_deref(), Some("a"));
    let remaining: Vec<(String, u32)> = after
        .limits
        .iter()
        .map(|s| (s.policy.to_string(), s.remaining))
        .collect();
    assert_eq!(
        remaining,
        [("a".into(), 0), ("b".into(), 40), ("day".into(), 140)]
    );
}

/// Eight threads spend random costs through four keys of one owner, each request counted in its
/// key's bucket and the owner's at once. The owner's limit is spent exactly, and it counted
/// exactly what the keys counted together: no request was counted in one bucket and not the
/// other, and no two checks deadlocked.
#[test]
fn key_and_owner_buckets_are_counted_together_under_threads() {
    use tower_api_key::clock::Clock;

    let now = ManualClock::new(UNIX_EPOCH + Duration::from_secs(START - 3600)).now();
    let limiter = Arc::new(MemoryLimiter::new());
    let key = Limits::UNLIMITED.daily(40);
    let owner = Limits::UNLIMITED.daily(100).shared_by_owner();
    let ids = ["key:a", "key:b", "key:c", "key:d"];
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (limiter, key, owner) = (limiter.clone(), key.clone(), owner.clone());
            std::thread::spawn(move || {
                let mut seed = t * 104_729 + 7;
                let mut spent = 0u64;
                for _ in 0..1000 {
                    let seed = xorshift(&mut seed);
                    let buckets = [
                        Bucket::new(ids[(seed >> 8) as usize % 4], &key),
                        Bucket::new("owner-policy:acme", &owner).labelled("owner."),
                    ];
                    spent += spent_on(&limiter, &buckets, (seed % 4) as u32, now);
                }
                spent
            })
        })
        .collect();
    let spent: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(spent, 100, "the owner's limit, exactly");
    let used_by_keys: u32 = ids
        .iter()
        .map(|id| {
            let LimitCheck::Ready(Ok(d)) = limiter.check(&[Bucket::new(id, &key)], 0, now) else {
                panic!("decided at once");
            };
            40 - d.limits[0].remaining
        })
        .sum();
    assert_eq!(used_by_keys, 100, "the keys counted what the owner counted");
}

/// Credits over HTTP: spent by each request's cost in the store, refused with the reference's
/// body once spent, refilled at UTC midnight, topped up; a rate-limit refusal spends none, and a
/// store failure fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_are_spent_by_cost_refused_when_spent_and_refilled() {
    use tower_api_key::limit::{Credits, RefillPeriod};
    use tower_api_key::store::KeyStore;

    let f =
        Fixture::with(|b| b.costs(Costs::per_path([("/tracking", 3), ("/offers", 0)], 1))).await;
    let keys = KeyManager::new(f.store.keys.clone()).with_cache(f.layer.handle());
    let mut created = NewKey::new("metered")
        .scopes(["admin"])
        .credits(Credits::refilled(7, RefillPeriod::Daily).unwrap())
        .limits(Limits::UNLIMITED.with(NamedLimit::new("burst", 10, 60).unwrap()))
        .generate(f.layer.format())
        .unwrap();
    // Issued on the fixture's day (the manager would take the wall clock's).
    created.record.credits.as_mut().unwrap().period = RefillPeriod::Daily.index(START);
    f.store.keys.create(created.record.clone()).await.unwrap();
    let id = created.record.id.clone();
    let header = api_key(created.key.expose_secret());
    let send = |method: Method, path: &'static str| f.send(&header, method, path);
    // What the store holds (the manager shows credits as of the wall clock, not the fixture's).
    let left = || async {
        let record = f.store.keys.get(&id).await.unwrap().unwrap();
        record.credits.unwrap().remaining
    };

    assert_eq!(send(Method::POST, "/tracking").await.status, StatusCode::OK);
    assert_eq!(left().await, 4, "7 - 3");
    assert_eq!(send(Method::POST, "/tracking").await.status, StatusCode::OK);
    assert_eq!(left().await, 1);
    let spent = send(Method::POST, "/tracking").await;
    assert_eq!(spent.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        spent.body,
        r#"{"error":"Usage limit exceeded","code":"USAGE_EXCEEDED","status":429}"#
    );
    assert_eq!(spent.headers["cache-control"], "no-store");
    assert_eq!(left().await, 1, "a refusal spends no credit");
    let free = send(Method::PUT, "/offers").await;
    assert_eq!(free.status, StatusCode::OK, "a cost of 0 with 1 left");
    assert_eq!(
        send(Method::GET, "/recommendations").await.status,
        StatusCode::OK
    );
    assert_eq!(left().await, 0);
    // The burst (10 a minute) is used up too: the limiter answers first, and spends no credit.
    assert_eq!(
        send(Method::GET, "/recommendations").await.code(),
        "RATE_LIMIT_EXCEEDED"
    );
    assert_eq!(
        send(Method::PUT, "/offers").await.code(),
        "RATE_LIMIT_EXCEEDED"
    );
    f.clock.advance(Duration::from_secs(30)); // 23:59:30: half the burst back
    let none_left = send(Method::PUT, "/offers").await;
    assert_eq!(
        none_left.code(),
        "USAGE_EXCEEDED",
        "a cost of 0 with none left"
    );

    // Past midnight: refilled to 7.
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(send(Method::POST, "/tracking").await.status, StatusCode::OK);
    assert_eq!(left().await, 4);
    assert_eq!(keys.top_up(&id, 10).await.unwrap(), Some(14));

    f.store.fail(true);
    let down = send(Method::POST, "/tracking").await;
    assert_eq!(
        down.code(),
        "KEY_STORE_UNAVAILABLE",
        "never let through unmetered"
    );
    f.store.fail(false);
    assert_eq!(left().await, 14);
}

/// A key of owner `owner` in `environment`, with no limits of its own.
async fn owned_key(f: &Fixture, owner: &str, environment: Environment) -> CreatedKey {
    let created = NewKey::new("owned")
        .environment(environment)
        .owner(owner)
        .scopes(["read"])
        .generate(f.layer.format())
        .unwrap();
    f.store.keys.create(created.record.clone()).await.unwrap();
    created
}

/// Limits set on an owner over HTTP: counted for all of its keys together, besides each key's
/// own; the 429 and the headers name the owner's limit; another owner's keys and the owner's dev
/// keys are not counted; a change through the manager holds at once, cached keys and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_set_on_an_owner_count_all_of_its_keys_together() {
    let f =
        Fixture::with(|b| b.environments([Environment::Live, Environment::Test, Environment::Dev]))
            .await;
    let keys = KeyManager::new(f.store.keys.clone()).with_cache(f.layer.handle());
    let a = owned_key(&f, "acme", Environment::Live).await;
    let b = owned_key(&f, "acme", Environment::Test).await;
    let dev = owned_key(&f, "acme", Environment::Dev).await;
    let other = owned_key(&f, "globex", Environment::Live).await;
    // Cached before the owner has limits.
    assert_eq!(f.get(&a).await.status, StatusCode::OK);
    let first = f.get(&a).await;
    assert!(first.headers.get("ratelimit").is_none(), "no limits yet");

    keys.set_owner_limits("acme", Some(Limits::per_minute(5)))
        .await
        .unwrap();
    let counted = f.get(&a).await;
    assert_eq!(
        counted.status,
        StatusCode::OK,
        "the manager's change holds at once"
    );
    assert_eq!(
        counted.headers["ratelimit-policy"],
        "\"owner.minute\";q=5;w=60"
    );
    // The test key also has the layer's test cap (60 a minute) as its own limits.
    let capped = f.get(&b).await;
    assert_eq!(
        capped.headers["ratelimit-policy"],
        "\"minute\";q=60;w=60, \"day\";q=1000;w=86400, \"owner.minute\";q=5;w=60"
    );
    assert_eq!(
        f.admitted(&a, 2).await + f.admitted(&b, 5).await,
        3,
        "5 for both"
    );
    let refused = f.get(&b).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.body,
        r#"{"error":"Rate limit exceeded","code":"RATE_LIMIT_EXCEEDED","status":429,"limit":"owner.minute"}"#
    );
    assert_eq!(refused.headers["retry-after"], "12");
    assert_eq!(f.admitted(&dev, 3).await, 3, "dev keys are never limited");
    assert_eq!(f.admitted(&other, 8).await, 8, "another owner's keys");

    // Raised: the owner's count goes on, and more fit.
    keys.set_owner_limits("acme", Some(Limits::per_minute(7)))
        .await
        .unwrap();
    assert_eq!(f.admitted(&a, 4).await, 2);
    keys.set_owner_limits("acme", None).await.unwrap();
    assert_eq!(f.admitted(&a, 4).await, 4, "cleared");
    assert_eq!(keys.owner("acme").await.unwrap(), None);
}

/// Credits set on an owner over HTTP: spent by every request of any of its keys, with the key's
/// own credits in one step (too few in either: refused, neither spent); topped up through the
/// manager; a store failure fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_set_on_an_owner_are_spent_by_all_of_its_keys() {
    use tower_api_key::limit::Credits;

    let f = Fixture::new().await;
    let keys = KeyManager::new(f.store.keys.clone()).with_cache(f.layer.handle());
    let a = owned_key(&f, "acme", Environment::Live).await;
    let mut metered = NewKey::new("metered")
        .owner("acme")
        .scopes(["read"])
        .credits(Credits::once(2))
        .generate(f.layer.format())
        .unwrap();
    metered.record.credits.as_mut().unwrap().period = 0;
    f.store.keys.create(metered.record.clone()).await.unwrap();
    keys.set_owner_credits("acme", Some(Credits::once(5)))
        .await
        .unwrap();
    let left = || async {
        keys.owner("acme")
            .await
            .unwrap()
            .unwrap()
            .credits
            .unwrap()
            .remaining
    };

    assert_eq!(f.admitted(&metered, 3).await, 2, "the key's own 2");
    assert_eq!(left().await, 3, "each spent the owner's too");
    let spent = f.get(&metered).await;
    assert_eq!(spent.code(), "USAGE_EXCEEDED");
    assert_eq!(
        left().await,
        3,
        "a refusal by the key's credits spends none of the owner's"
    );
    assert_eq!(f.admitted(&a, 5).await, 3, "the owner's last 3");
    let refused = f.get(&a).await;
    assert_eq!(
        refused.body,
        r#"{"error":"Usage limit exceeded","code":"USAGE_EXCEEDED","status":429}"#
    );
    assert_eq!(keys.top_up_owner("acme", 4).await.unwrap(), Some(4));
    assert_eq!(
        keys.top_up_owner("globex", 4).await.unwrap(),
        None,
        "no credits"
    );
    assert_eq!(keys.top_up(&metered.record.id, 1).await.unwrap(), Some(1));
    assert_eq!(f.admitted(&metered, 1).await, 1);
    assert_eq!(left().await, 3);

    f.store.fail(true);
    let down = f.get(&a).await;
    assert_eq!(
        down.code(),
        "KEY_STORE_UNAVAILABLE",
        "never let through unmetered"
    );
    f.store.fail(false);
    assert_eq!(left().await, 3);
    keys.set_owner_credits("acme", None).await.unwrap();
    assert_eq!(f.admitted(&a, 4).await, 4, "no credits set any more");
}
