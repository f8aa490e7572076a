//! The cache's guarantee: a request that starts after a revoke (delete, rotate, scope change,
//! invalidation) returned is refused, whatever loads were in flight; a deleted key never comes
//! back from a stale copy; a flood of made-up ids cannot take every store connection.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http::{Request, StatusCode};
use tokio::sync::Notify;
use tower::ServiceExt;
use tower_api_key::{
    async_trait, cache::CacheConfig, limit::Limits, store::KeyChanges, store::KeyRecord,
    store::KeyStore, store::KeyStoreAdmin, store::KeyUpdate, store::OwnerRecord, store::StoreError,
    ApiKeyHandle, ApiKeyLayer, KeyManager, MemoryStore, NewKey,
};

use common::{app, TestStore};

/// A store whose next lookup, once armed, reads the record (the key's, or with `in_owner` its
/// owner's) and then waits to be released: a load held open across whatever the test does
/// meanwhile.
#[derive(Clone, Default)]
struct HeldStore {
    keys: MemoryStore,
    armed: Arc<AtomicBool>,
    in_owner: Arc<AtomicBool>,
    read: Arc<Notify>,
    release: Arc<Notify>,
}

impl HeldStore {
    fn hold_next(&self, in_owner: bool) {
        self.in_owner.store(in_owner, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Waits to be released if armed for this read.
    async fn hold(&self, owner_read: bool) {
        if self.in_owner.load(Ordering::SeqCst) == owner_read
            && self.armed.swap(false, Ordering::SeqCst)
        {
            self.read.notify_one();
            self.release.notified().await;
        }
    }
}

#[async_trait]
impl KeyStore for HeldStore {
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let record = self.keys.get(id).await;
        self.hold(false).await;
        record
    }

    async fn owner(&self, owner: &str) -> Result<Option<OwnerRecord>, StoreError> {
        let record = self.keys.owner(owner).await;
        self.hold(true).await;
        record
    }
}

async fn status(app: &Router, key: &str) -> StatusCode {
    let request = Request::get("/recommendations")
        .header("authorization", format!("ApiKey {key}"))
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(request).await.unwrap().status()
}

/// What an operator does to a key while a load of it is in flight.
#[derive(Clone, Copy, Debug)]
enum Change {
    Revoke,
    Delete,
    DropScopes,
    Disable,
    /// Several changes at once (`KeyManager::update`): renamed and disabled.
    Update,
    RotateWithoutGrace,
    /// Restricted to networks the request is not from.
    RestrictNetworks,
    /// A change made elsewhere, announced to this replica (as a listener does).
    Notified,
    /// A listener that reconnected clears everything.
    NotifiedAll,
    /// The key's owner is given limits that refuse everything, while the load has read the
    /// owner as unlimited.
    OwnerLimited,
    /// The same, made elsewhere and announced to this replica.
    OwnerNotified,
}

impl Change {
    /// Whether the load is held after reading the owner (else after reading the key).
    fn of_owner(self) -> bool {
        matches!(self, Change::OwnerLimited | Change::OwnerNotified)
    }
}

async fn change(change: Change, keys: &KeyManager<MemoryStore>, handle: &ApiKeyHandle, id: &str) {
    match change {
        Change::Revoke => assert!(keys.revoke(id).await.unwrap()),
        Change::Delete => assert!(keys.delete(id).await.unwrap()),
        Change::DropScopes => assert!(keys.update_scopes(id, &[]).await.unwrap()),
        Change::Disable => assert!(keys.set_disabled(id, true).await.unwrap()),
        Change::Update => {
            let update = KeyUpdate::new().name("renamed").disabled(true);
            assert!(keys.update(id, &update).await.unwrap());
        }
        Change::RotateWithoutGrace => {
            keys.rotate(id, Duration::ZERO).await.unwrap().unwrap();
        }
        Change::RestrictNetworks => {
            let elsewhere = ["10.0.0.0/8".parse().unwrap()];
            assert!(keys.set_allowed_networks(id, &elsewhere).await.unwrap());
        }
        Change::Notified | Change::NotifiedAll => {
            // Revoked through the store alone (another replica), then the notification arrives.
            keys.store()
                .revoke(id, std::time::SystemTime::now())
                .await
                .unwrap();
            if matches!(change, Change::Notified) {
                handle.invalidate(id).await;
            } else {
                handle.invalidate_all();
            }
        }
        Change::OwnerLimited => {
            let nothing = Limits::per_minute(0);
            keys.set_owner_limits("acme", Some(nothing)).await.unwrap();
        }
        Change::OwnerNotified => {
            let nothing = Limits::per_minute(0);
            keys.store()
                .set_owner_limits("acme", Some(&nothing))
                .await
                .unwrap();
            handle.owner_changed("acme");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_during_an_in_flight_load_is_never_undone() {
    for what in [
        Change::Revoke,
        Change::Delete,
        Change::DropScopes,
        Change::Disable,
        Change::Update,
        Change::RotateWithoutGrace,
        Change::RestrictNetworks,
        Change::Notified,
        Change::NotifiedAll,
        Change::OwnerLimited,
        Change::OwnerNotified,
    ] {
        let store = HeldStore::default();
        let layer = ApiKeyLayer::new("mesh", store.clone()).unwrap();
        let handle = layer.handle();
        let keys = KeyManager::new(store.keys.clone()).with_cache(handle.clone());
        let created = keys
            .create(NewKey::new("held").owner("acme").scopes(["read"]))
            .await
            .unwrap();
        let key = created.key.expose_secret().to_owned();
        let app = app(layer, Arc::new(AtomicUsize::new(0)));

        // A request misses; its lookup reads the key as active and is held there.
        store.hold_next(what.of_owner());
        let read = store.read.notified();
        let first = tokio::spawn({
            let (app, key) = (app.clone(), key.clone());
            async move { status(&app, &key).await }
        });
        read.await;

        change(what, &keys, &handle, &created.record.id).await;

        // Started after the change returned, while the old load is still open: refused for
        // what changed (not, say, for waiting on the old load until it timed out).
        let during = status(&app, &key).await;
        assert_ne!(during, StatusCode::OK, "{what:?}: during the load");
        assert_ne!(
            during,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what:?}: during the load"
        );
        // The old load finishes; the request that started before the change may pass.
        store.release.notify_one();
        let _ = first.await.unwrap();
        for _ in 0..3 {
            assert_ne!(
                status(&app, &key).await,
                StatusCode::OK,
                "{what:?}: after the load"
            );
        }
    }
}

/// A store whose every lookup yields a random number of times first, so loads interleave with
/// revokes and requests in many orders.
#[derive(Clone)]
struct ShuffledStore {
    keys: MemoryStore,
    seed: Arc<AtomicUsize>,
}

#[async_trait]
impl KeyStore for ShuffledStore {
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let yields = random(&self.seed) % 8;
        let record = self.keys.get(id).await;
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        record
    }
}

/// A small xorshift, so a failing run can be repeated with the same seed.
fn random(seed: &AtomicUsize) -> usize {
    let mut x = seed.load(Ordering::Relaxed).max(1);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    seed.store(x, Ordering::Relaxed);
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_interleavings_never_admit_a_key_after_its_revoke_returned() {
    const ROUNDS: usize = 1_500;
    const CLIENTS: usize = 4;
    let seed = std::env::var("REVOCATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as usize * 7919 + 1);
    eprintln!("seed {seed} (set REVOCATION_SEED to repeat)");
    let store = ShuffledStore {
        keys: MemoryStore::new(),
        seed: Arc::new(AtomicUsize::new(seed)),
    };
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .cache(CacheConfig {
            // Short, so that loads keep starting while keys are revoked.
            ttl: Duration::from_millis(1),
            ..CacheConfig::default()
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let keys = KeyManager::new(store.keys.clone()).with_cache(handle.clone());
    let app = app(layer, Arc::new(AtomicUsize::new(0)));
    let mut admitted_before = 0;
    let mut refused_after = 0;
    for round in 0..ROUNDS {
        let created = keys
            .create(NewKey::new("stress").scopes(["read"]))
            .await
            .unwrap();
        let key = Arc::<str>::from(created.key.expose_secret());
        let revoked = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let mut clients = Vec::new();
        for client in 0..CLIENTS {
            let (app, key, revoked, violations) = (
                app.clone(),
                key.clone(),
                revoked.clone(),
                violations.clone(),
            );
            let seed = Arc::new(AtomicUsize::new(seed ^ (round * 31 + client + 1)));
            clients.push(tokio::spawn(async move {
                let mut admitted = 0;
                for i in 0..(4 + random(&seed) % 8) {
                    let after_revoke = revoked.load(Ordering::SeqCst);
                    let status = status(&app, &key).await;
                    if status == StatusCode::OK {
                        if after_revoke {
                            violations.lock().unwrap().push(i);
                        } else {
                            admitted += 1;
                        }
                    }
                    for _ in 0..random(&seed) % 3 {
                        tokio::task::yield_now().await;
                    }
                }
                admitted
            }));
        }
        // Revoke at a random moment, sometimes with a stray invalidation of the key first.
        for _ in 0..random(&store.seed) % 16 {
            tokio::task::yield_now().await;
        }
        if random(&store.seed) % 4 == 0 {
            handle.invalidate(&created.record.id).await;
        }
        keys.revoke(&created.record.id).await.unwrap();
        revoked.store(true, Ordering::SeqCst);
        for client in clients {
            admitted_before += client.await.unwrap();
        }
        let violations = violations.lock().unwrap().clone();
        assert!(
            violations.is_empty(),
            "round {round} (seed {seed}): admitted after the revoke returned: requests {violations:?}"
        );
        assert_ne!(status(&app, &key).await, StatusCode::OK);
        refused_after += 1;
    }
    eprintln!("{ROUNDS} rounds: {admitted_before} requests admitted before their revoke, {refused_after} checks after");
    assert!(admitted_before > 0, "the keys worked before their revoke");
}

/// The layer reads the kernel's coarse clock (`CoarseClock`), up to a tick behind the precise
/// one: the manager ends a key rotated without grace on that same clock, so the request right
/// after is refused, never admitted for the rest of the tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_without_grace_is_refused_at_once() {
    let store = MemoryStore::new();
    let layer = ApiKeyLayer::new("mesh", store.clone()).unwrap();
    let keys = KeyManager::new(store).with_cache(layer.handle());
    let app = app(layer, Arc::new(AtomicUsize::new(0)));
    for round in 0..50 {
        let created = keys
            .create(NewKey::new("rotated").scopes(["read"]))
            .await
            .unwrap();
        let key = created.key.expose_secret();
        assert_eq!(status(&app, key).await, StatusCode::OK, "round {round}");
        keys.rotate(&created.record.id, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            status(&app, key).await,
            StatusCode::UNAUTHORIZED,
            "round {round}: the old key ended when rotate returned"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_does_not_come_back_during_a_later_outage() {
    let store = TestStore::default();
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .cache(CacheConfig {
            ttl: Duration::from_millis(100),
            stale_if_error: Some(Duration::from_secs(300)),
            ..CacheConfig::default()
        })
        .build()
        .unwrap();
    // The manager of another replica: this layer's cache is not told.
    let elsewhere = KeyManager::new(store.keys.clone())
        .format(tower_api_key::key::KeyFormat::new("mesh").unwrap());
    let created = elsewhere
        .create(NewKey::new("deleted elsewhere").scopes(["read"]))
        .await
        .unwrap();
    let key = created.key.expose_secret();
    let app = app(layer, Arc::new(AtomicUsize::new(0)));
    assert_eq!(status(&app, key).await, StatusCode::OK);

    assert!(elsewhere.delete(&created.record.id).await.unwrap());
    tokio::time::sleep(Duration::from_millis(150)).await; // past the TTL
    assert_eq!(
        status(&app, key).await,
        StatusCode::UNAUTHORIZED,
        "the store said: no such key"
    );
    store.fail(true);
    tokio::time::sleep(Duration::from_millis(5_100)).await; // past the negative TTL too
    assert_eq!(
        status(&app, key).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "no stale copy of a deleted key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_an_unknown_plan_gets_no_stale_copy() {
    let store = TestStore::default();
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .cache(CacheConfig {
            ttl: Duration::from_millis(100),
            ..CacheConfig::default()
        })
        .build()
        .unwrap();
    let elsewhere = KeyManager::new(store.keys.clone())
        .format(tower_api_key::key::KeyFormat::new("mesh").unwrap());
    let created = elsewhere
        .create(NewKey::new("planned").scopes(["read"]).plan("pro"))
        .await
        .unwrap();
    let key = created.key.expose_secret();
    let app = app(layer, Arc::new(AtomicUsize::new(0)));
    assert_eq!(status(&app, key).await, StatusCode::OK);

    // Another replica moves the key to a plan this layer does not define.
    let mut record = created.record.clone();
    record.plan = Some("gold".into());
    store.keys.delete(&record.id).await.unwrap();
    store.keys.create(record).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(status(&app, key).await, StatusCode::SERVICE_UNAVAILABLE);
    store.fail(true);
    assert_eq!(status(&app, key).await, StatusCode::SERVICE_UNAVAILABLE);
}

/// A slow store that remembers how many lookups it ever had at once.
#[derive(Clone, Default)]
struct SlowStore {
    keys: MemoryStore,
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

#[async_trait]
impl KeyStore for SlowStore {
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let at_once = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(at_once, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.keys.get(id).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_ids_is_bounded_and_known_keys_keep_working() {
    const BOUND: usize = 4;
    let store = SlowStore::default();
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .cache(CacheConfig {
            ttl: Duration::from_millis(50),
            max_concurrent_loads: BOUND,
            load_queue_timeout: Duration::from_millis(10),
            ..CacheConfig::default()
        })
        .build()
        .unwrap();
    let keys = KeyManager::new(store.keys.clone()).with_cache(layer.handle());
    let known = keys
        .create(NewKey::new("known").scopes(["read"]))
        .await
        .unwrap();
    let app = app(layer, Arc::new(AtomicUsize::new(0)));
    assert_eq!(
        status(&app, known.key.expose_secret()).await,
        StatusCode::OK
    );

    let format = tower_api_key::key::KeyFormat::new("mesh").unwrap();
    let flood: Vec<_> = (0..400)
        .map(|_| {
            let app = app.clone();
            let made_up = format.generate(tower_api_key::Environment::Live);
            tokio::spawn(async move { status(&app, made_up.key.expose_secret()).await })
        })
        .collect();
    // The known key's TTL runs out during the flood: its refresh does not queue behind it.
    let mut known_ok = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        if status(&app, known.key.expose_secret()).await == StatusCode::OK {
            known_ok += 1;
        }
    }
    let mut unauthorized = 0;
    let mut unavailable = 0;
    for request in flood {
        match request.await.unwrap() {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::SERVICE_UNAVAILABLE => unavailable += 1,
            other => panic!("a made-up id answered {other}"),
        }
    }
    let most = store.most.load(Ordering::SeqCst);
    eprintln!(
        "400 made-up ids: {unauthorized} answered 401, {unavailable} answered 503; {} store calls, at most {most} at once",
        store.calls.load(Ordering::SeqCst)
    );
    assert!(
        most <= BOUND + 1,
        "{most} lookups at once (bound {BOUND}, plus the known key's refresh)"
    );
    assert!(unavailable > 0, "the excess waited, then got 503");
    assert_eq!(known_ok, 10, "the known key answered 200 throughout");
}
