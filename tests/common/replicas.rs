//! Behaviour across replicas and outages, run by every store that has a server.

use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use tokio::task::JoinHandle;
use tower::{service_fn, Layer, ServiceExt};
use tower_api_key::{
    cache::CacheConfig, reject::Rejection, store::KeyStoreAdmin, store::StoreError, ApiKeyHandle,
    ApiKeyLayer, KeyManager, NewKey,
};

use crate::common::{api_key, app, run_server_command, serve, HttpClient};

/// The status one replica's layer gives `key`, in process.
async fn status(layer: &ApiKeyLayer, key: &str) -> (StatusCode, Option<Rejection>) {
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    }));
    let request = Request::get("/")
        .header("authorization", api_key(key))
        .body(())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    (
        response.status(),
        response.extensions().get::<Rejection>().copied(),
    )
}

fn long_lived() -> CacheConfig {
    CacheConfig {
        ttl: Duration::from_secs(3600),
        ..CacheConfig::default()
    }
}

/// Two replicas on one database: a revoke through A reaches B's cache by notification (B's TTL is
/// an hour). Returns the time it took.
pub async fn a_revoke_reaches_the_other_replica<S, L, F>(a: S, b: S, listen: L) -> Duration
where
    S: KeyStoreAdmin + Clone,
    L: FnOnce(S, ApiKeyHandle) -> F,
    F: Future<Output = Result<JoinHandle<()>, StoreError>>,
{
    let replica_a = ApiKeyLayer::builder("mesh", a.clone())
        .cache(long_lived())
        .build()
        .unwrap();
    let replica_b = ApiKeyLayer::builder("mesh", b.clone())
        .cache(long_lived())
        .build()
        .unwrap();
    let listener = listen(b, replica_b.handle()).await.unwrap();
    let keys = KeyManager::new(a).with_cache(replica_a.handle());
    let created = keys.create(NewKey::new("replicated")).await.unwrap();
    let key = created.key.expose_secret();
    assert_eq!(
        status(&replica_b, key).await.0,
        StatusCode::OK,
        "cached in B"
    );
    assert_eq!(
        status(&replica_a, key).await.0,
        StatusCode::OK,
        "cached in A"
    );

    keys.revoke(&created.record.id).await.unwrap();
    let started = Instant::now();
    loop {
        if status(&replica_b, key).await.1 == Some(Rejection::ApiKeyRevoked) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the revoke never reached replica B"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    eprintln!("revocation reached the other replica in {elapsed:?}");

    // Limits set on an owner through A reach B's cached copies of the owner's keys too.
    let owned = keys
        .create(NewKey::new("owned").owner("umbrella"))
        .await
        .unwrap();
    let key = owned.key.expose_secret();
    assert_eq!(
        status(&replica_b, key).await.0,
        StatusCode::OK,
        "cached in B"
    );
    let nothing = tower_api_key::limit::Limits::per_minute(0);
    keys.set_owner_limits("umbrella", Some(nothing))
        .await
        .unwrap();
    let started = Instant::now();
    while status(&replica_b, key).await.1 != Some(Rejection::RateLimitExceeded) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the owner's change never reached replica B"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    listener.abort();
    elapsed
}

/// The server stops mid-test: cached keys keep working (stale-if-error), unknown ones get 503,
/// and everything recovers once it is back.
pub async fn an_outage_is_survived<S: KeyStoreAdmin + Clone>(store: S, stop: &str, start: &str) {
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .cache(CacheConfig {
            ttl: Duration::from_millis(300),
            stale_if_error: Some(Duration::from_secs(120)),
            ..CacheConfig::default()
        })
        .lookup_timeout(Some(Duration::from_secs(2)))
        .build()
        .unwrap();
    let keys = KeyManager::new(store).with_cache(layer.handle());
    let cached = keys
        .create(NewKey::new("cached").scopes(["read"]))
        .await
        .unwrap();
    let unseen = keys
        .create(NewKey::new("unseen").scopes(["read"]))
        .await
        .unwrap();
    let client = HttpClient::new(serve(app(layer, Arc::new(AtomicUsize::new(0)))).await);
    let get = |key: &tower_api_key::key::PlaintextKey| {
        let client = client.clone();
        let header = api_key(key.expose_secret());
        async move {
            client
                .get("/recommendations", &[("authorization", &header)])
                .await
        }
    };
    assert_eq!(get(&cached.key).await.status, StatusCode::OK);

    run_server_command(stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    assert_eq!(
        get(&cached.key).await.status,
        StatusCode::OK,
        "stale-if-error"
    );
    let reply = get(&unseen.key).await;
    assert_eq!(reply.code(), "KEY_STORE_UNAVAILABLE", "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered within the lookup timeout"
    );

    run_server_command(start);
    let started = Instant::now();
    loop {
        let reply = get(&unseen.key).await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert_eq!(reply.code(), "KEY_STORE_UNAVAILABLE");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "recovered {:?} after the server was back",
        started.elapsed()
    );
    assert_eq!(get(&cached.key).await.status, StatusCode::OK);
}

/// The listener's connection is cut (`kill`: killed server-side, the server stopped, or made
/// half-open) after a change it was never told about (a lost notification): once it notices and
/// reconnects it clears the cache, so the key is refused although its cache entry had an hour to
/// live. `listen` starts the listener (on a store of its own, if the test cuts only its
/// connection). Returns how long that took.
pub async fn a_killed_listener_reconnects_and_clears_the_cache<S, L, F, C, CF, K, KF>(
    store: S,
    listen: L,
    change_silently: C,
    kill: K,
) -> Duration
where
    S: KeyStoreAdmin + Clone,
    L: FnOnce(ApiKeyHandle) -> F,
    F: Future<Output = Result<JoinHandle<()>, StoreError>>,
    C: FnOnce(String) -> CF,
    CF: Future<Output = ()>,
    K: FnOnce() -> KF,
    KF: Future<Output = ()>,
{
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .cache(long_lived())
        .build()
        .unwrap();
    let listener = listen(layer.handle()).await.unwrap();
    let keys = KeyManager::new(store).with_cache(layer.handle());
    let created = keys.create(NewKey::new("listened")).await.unwrap();
    let key = created.key.expose_secret();
    // The create's own notification may arrive after the first request cached the key and clear
    // it: let it arrive, then cache the key.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&layer, key).await.0, StatusCode::OK);

    change_silently(created.record.id.clone()).await;
    assert_eq!(
        status(&layer, key).await.0,
        StatusCode::OK,
        "cached: nobody told the listener"
    );
    kill().await;
    let started = Instant::now();
    loop {
        if status(&layer, key).await.1 == Some(Rejection::ApiKeyRevoked) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the listener never cleared the cache after its connection was killed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    eprintln!("cache cleared {elapsed:?} after the listener's connection was killed");
    assert!(!listener.is_finished(), "the listener keeps running");
    listener.abort();
    elapsed
}

/// A half-open listener connection was noticed by the listener's own ping and the cache cleared:
/// within its keepalive and ping timeout, one connection attempt (a pooled connection on the dead
/// path may take all of it), and two seconds for the retry and the test's polling.
#[cfg(any(feature = "postgres", feature = "redis"))]
pub fn assert_noticed_by_the_ping(elapsed: Duration) {
    let bound = tower_api_key::store::LISTENER_KEEPALIVE
        + tower_api_key::store::LISTENER_PING_TIMEOUT
        + tower_api_key::store::LISTENER_CONNECT_TIMEOUT
        + Duration::from_secs(2);
    assert!(elapsed < bound, "noticed after {elapsed:?}");
}
