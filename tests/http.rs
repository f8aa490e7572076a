//! The layer over real HTTP on 127.0.0.1, every path a request can take.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use tower_api_key::{
    cache::CacheConfig, extract::KeySource, limit::Limits, manage::CreatedKey, reject::Rejection,
    store::KeyRecord, store::KeyStoreAdmin, ApiKeyLayer, ApiKeyLayerBuilder, Environment,
    KeyManager, MemoryStore, NewKey,
};

use common::{api_key, app, forge, serve, HttpClient, TestStore};

struct Fixture {
    client: HttpClient,
    store: TestStore,
    layer: ApiKeyLayer,
    keys: KeyManager<MemoryStore>,
    calls: Arc<AtomicUsize>,
}

impl Fixture {
    async fn new() -> Self {
        Fixture::with(|b| b).await
    }

    async fn with(configure: impl FnOnce(ApiKeyLayerBuilder) -> ApiKeyLayerBuilder) -> Self {
        let store = TestStore::default();
        let layer = configure(ApiKeyLayer::builder("mesh", store.clone()))
            .build()
            .unwrap();
        let keys = KeyManager::new(store.keys.clone()).with_cache(layer.handle());
        let calls = Arc::new(AtomicUsize::new(0));
        let addr = serve(app(layer.clone(), calls.clone())).await;
        Fixture {
            client: HttpClient::new(addr),
            store,
            layer,
            keys,
            calls,
        }
    }

    async fn key(&self, scopes: &[&str]) -> CreatedKey {
        self.keys
            .create(NewKey::new("test key").scopes(scopes.iter().copied()))
            .await
            .unwrap()
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn assert_rejected(reply: &common::Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.headers["cache-control"], "no-store", "{reply:?}");
    let body = reply.json();
    assert_eq!(body["code"], code, "{reply:?}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    // A missing key's answer says how to send one; the others are the reference's three fields.
    let hint = body["hint"].as_str();
    let fields = match code {
        "MISSING_API_KEY" => {
            assert!(
                hint.is_some_and(|h| h.starts_with("Send the API key as '")),
                "{reply:?}"
            );
            4
        }
        _ => 3,
    };
    assert_eq!(
        body.as_object().unwrap().len(),
        fields,
        "exactly error, code, status (and a missing key's hint)"
    );
}

/// The `hint` of a `MISSING_API_KEY` answer.
fn hint(reply: &common::Reply) -> String {
    reply.json()["hint"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_key_reaches_the_handler_with_its_principal() {
    let f = Fixture::new().await;
    let created = f.key(&["read"]).await;
    let reply = f
        .client
        .get(
            "/recommendations",
            &[("authorization", &api_key(created.key.expose_secret()))],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["key_id"], created.record.id);
    assert_eq!(body["name"], "test key");
    assert_eq!(body["environment"], "live");
    assert_eq!(f.calls(), 1);
}

/// A handler reads the key's plan and expiry from its principal: a limited plan, an unlimited
/// one, a development key's (unlimited too), and none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_sees_the_keys_plan_and_expiry() {
    let f = Fixture::with(|b| {
        b.plan("pro", Limits::per_minute(100))
            .plan("internal", Limits::UNLIMITED)
            .environments([Environment::Live, Environment::Dev])
    })
    .await;
    let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_800); // 2100
    let cases = [
        ("pro", Some("pro"), Environment::Live),
        ("internal", Some("internal"), Environment::Live),
        ("dev", Some("pro"), Environment::Dev),
        ("none", None, Environment::Live),
    ];
    for (name, plan, environment) in cases {
        let mut new = NewKey::new(name).environment(environment).scopes(["read"]);
        if let Some(plan) = plan {
            new = new.plan(plan);
        }
        if name == "pro" {
            new = new.expires_at(expires);
        }
        let created = f.keys.create(new).await.unwrap();
        let header = api_key(created.key.expose_secret());
        let reply = f
            .client
            .get("/recommendations", &[("authorization", &header)])
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{name}: {reply:?}");
        let body = reply.json();
        assert_eq!(body["plan"].as_str(), plan, "{name}");
        let expiry = (name == "pro").then_some(4_102_444_800u64);
        assert_eq!(body["expires_at"].as_u64(), expiry, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_is_missing_with_a_challenge() {
    let f = Fixture::new().await;
    let reply = f.client.get("/recommendations", &[]).await;
    assert_rejected(&reply, StatusCode::UNAUTHORIZED, "MISSING_API_KEY");
    assert_eq!(reply.headers["www-authenticate"], "ApiKey realm=\"api\"");
    assert_eq!(f.store.gets(), 0);
    assert_eq!(f.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_is_exactly_the_reference_shape() {
    let f = Fixture::new().await;
    let reply = f
        .client
        .get("/recommendations", &[("authorization", "ApiKey nonsense")])
        .await;
    assert_eq!(
        reply.body,
        r#"{"error":"Invalid API key","code":"INVALID_API_KEY","status":401}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_configured_source_is_read() {
    let f = Fixture::with(|b| {
        b.sources([
            KeySource::api_key_scheme(),
            KeySource::bearer(),
            KeySource::header(http::HeaderName::from_static("x-api-key")),
            KeySource::query("api_key"),
        ])
        .realm("mesh")
    })
    .await;
    let created = f.key(&["read"]).await;
    let key = created.key.expose_secret();
    for (path, headers) in [
        (
            "/recommendations".to_owned(),
            vec![("authorization", format!("ApiKey {key}"))],
        ),
        (
            "/recommendations".to_owned(),
            vec![("authorization", format!("apikey {key}"))],
        ),
        (
            "/recommendations".to_owned(),
            vec![("authorization", format!("Bearer {key}"))],
        ),
        (
            "/recommendations".to_owned(),
            vec![("x-api-key", key.to_owned())],
        ),
        (format!("/recommendations?api_key={key}"), vec![]),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply = f.client.get(&path, &headers).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{path} {headers:?}: {reply:?}"
        );
    }
    assert_eq!(f.calls(), 5);
    let reply = f.client.get("/recommendations", &[]).await;
    assert_eq!(
        reply.headers["www-authenticate"],
        "ApiKey realm=\"mesh\", Bearer realm=\"mesh\""
    );
    assert_eq!(
        hint(&reply),
        "Send the API key as 'Authorization: ApiKey <key>', 'Authorization: Bearer <key>', \
         'x-api-key: <key>' or '?api_key=<key>'"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_that_are_not_configured_are_not_read() {
    let f = Fixture::new().await;
    let created = f.key(&["read"]).await;
    let key = created.key.expose_secret();
    for headers in [
        vec![("x-api-key", key)],
        vec![("authorization", &*format!("Bearer {key}"))],
        vec![("authorization", "Basic dXNlcjpwYXNz")],
    ] {
        let reply = f.client.get("/recommendations", &headers).await;
        assert_rejected(&reply, StatusCode::UNAUTHORIZED, "MISSING_API_KEY");
        // A client that sent its key the wrong way is told the right one (and never sees it).
        assert_eq!(
            hint(&reply),
            "Send the API key as 'Authorization: ApiKey <key>'"
        );
        assert!(!reply.body.contains(key), "{reply:?}");
    }
    let reply = f
        .client
        .get(&format!("/recommendations?api_key={key}"), &[])
        .await;
    assert_rejected(&reply, StatusCode::UNAUTHORIZED, "MISSING_API_KEY");
    assert_eq!(f.store.gets(), 0);
    assert_eq!(f.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_bad_checksum_keys_never_reach_the_store() {
    let f = Fixture::new().await;
    let created = f.key(&["read"]).await;
    let key = created.key.expose_secret();
    let mut bad_checksum = key.to_owned();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'a' { 'b' } else { 'a' });
    let too_long = format!("mesh_live_{}", "a".repeat(600));
    for presented in [
        "mesh_live_short",
        &bad_checksum,
        &key[..key.len() - 1],
        &key.replacen("live", "prod", 1),
        &too_long,
        "not-a-mesh-key",
    ] {
        let reply = f
            .client
            .get(
                "/recommendations",
                &[("authorization", &api_key(presented))],
            )
            .await;
        assert_rejected(&reply, StatusCode::UNAUTHORIZED, "INVALID_API_KEY");
    }
    assert_eq!(f.store.gets(), 0, "refused offline");
    assert_eq!(f.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_asks_the_store_once_then_the_negative_cache() {
    let f = Fixture::new().await;
    let unknown = f.layer.format().generate(Environment::Live);
    let header = api_key(unknown.key.expose_secret());
    for _ in 0..3 {
        let reply = f
            .client
            .get("/recommendations", &[("authorization", &header)])
            .await;
        assert_rejected(&reply, StatusCode::UNAUTHORIZED, "INVALID_API_KEY");
    }
    assert_eq!(f.store.gets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_through_the_manager_clears_its_negative_entry() {
    let f = Fixture::new().await;
    let created = f.layer.format().generate(Environment::Live);
    let header = api_key(created.key.expose_secret());
    let reply = f
        .client
        .get("/recommendations", &[("authorization", &header)])
        .await;
    assert_rejected(&reply, StatusCode::UNAUTHORIZED, "INVALID_API_KEY");
    // The record appears (written by another process, say), then the cache is told.
    let mut record = KeyRecord::new(
        created.id.clone(),
        created.digest,
        "late",
        Environment::Live,
    );
    record.scopes = vec!["read".into()];
    f.store.keys.create(record).await.unwrap();
    f.layer.handle().invalidate(&created.id).await;
    let reply = f
        .client
        .get("/recommendations", &[("authorization", &header)])
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_for_a_real_id_is_invalid_whatever_the_keys_state() {
    let f = Fixture::new().await;
    let created = f.key(&["read"]).await;
    let forged = forge("mesh", "live", &created.record.id, &"x".repeat(32));
    let header = api_key(&forged);
    let reply = f
        .client
        .get("/recommendations", &[("authorization", &header)])
        .await;
    assert_rejected(&reply, StatusCode::UNAUTHORIZED, "INVALID_API_KEY");
    // Revoked: still nothing but INVALID for a wrong secret, so ids cannot be probed.
    f.keys.revoke(&created.record.id).await.unwrap();
    let reply = f
        .client
        .get("/recommendations", &[("authorization", &header)])
        .await;
    assert_rejected(&reply, StatusCode::UNAUTHORIZED, "INVALID_API_KEY");
    assert_eq!(f.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_written_in_the_key_must_match_the_record() {
    let f = Fixture::new().await;
    let created = f.key(&["read"]).await;
    let key = created.key.expose_secret();
    let secret = &key[key.len() - 38..key.len() - 6];
    let as_test = forge("mesh", "test", &created.record.id, secret);
    let reply = f
        .client
        .get("/recommendations", &[("authorization", &api_key(&as_test))])
        .await;
    assert_rejected(&reply, StatusCode::UNAUTHORIZED, "INVALID_API_KEY");
    let as_live = forge("mesh", "live", &created.record.id, secret);
    assert_eq!(as_live, key, "the forge helper builds real keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_expired_and_disabled_keys_say_so_after_the_secret_matched() {
    let f = Fixture::new().await;
    let revoked = f.key(&["read"]).await;
    f.keys.revoke(&revoked.record.id).await.unwrap();

    let expired = f
        .keys
        .create(
            NewKey::new("old")
                .scopes(["read"])
                .expires_at(common::an_hour_ago()),
        )
        .await
        .unwrap();

    let disabled = f.layer.format().generate(Environment::Live);
    let mut record = KeyRecord::new(
        disabled.id.clone(),
        disabled.digest,
        "off",
        Environment::Live,
    );
    record.disabled = true;
    record.scopes = vec!["read".into()];
    f.store.keys.create(record).await.unwrap();

    for (key, code) in [
        (revoked.key.expose_secret(), "API_KEY_REVOKED"),
        (expired.key.expose_secret(), "API_KEY_EXPIRED"),
        (disabled.key.expose_secret(), "API_KEY_DISABLED"),
    ] {
        let reply = f
            .client
            .get("/recommendations", &[("authorization", &api_key(key))])
            .await;
        assert_rejected(&reply, StatusCode::UNAUTHORIZED, code);
        assert!(reply.headers.contains_key("www-authenticate"));
    }
    assert_eq!(f.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_are_checked_per_route_with_admin_over_write_over_read() {
    let f = Fixture::new().await;
    let read = f.key(&["read"]).await;
    let write = f.key(&["write"]).await;
    let admin = f.key(&["admin"]).await;
    let cases = [
        (&read, Method::GET, "/recommendations", StatusCode::OK),
        (&read, Method::POST, "/tracking", StatusCode::FORBIDDEN),
        (&read, Method::PUT, "/offers", StatusCode::FORBIDDEN),
        (&write, Method::GET, "/recommendations", StatusCode::OK),
        (&write, Method::POST, "/tracking", StatusCode::OK),
        (&write, Method::PUT, "/offers", StatusCode::FORBIDDEN),
        (&admin, Method::GET, "/recommendations", StatusCode::OK),
        (&admin, Method::POST, "/tracking", StatusCode::OK),
        (&admin, Method::PUT, "/offers", StatusCode::OK),
    ];
    for (key, method, path, status) in cases {
        let header = api_key(key.key.expose_secret());
        let reply = f
            .client
            .send(method.clone(), path, &[("authorization", &header)])
            .await;
        if status == StatusCode::OK {
            assert_eq!(reply.status, status, "{method} {path}");
        } else {
            assert_rejected(&reply, status, "INSUFFICIENT_PERMISSIONS");
            assert!(!reply.headers.contains_key("www-authenticate"));
        }
    }
    assert_eq!(f.calls(), 6, "only the allowed requests reached a handler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_keys_are_refused() {
    let f = Fixture::with(|b| {
        b.sources([
            KeySource::api_key_scheme(),
            KeySource::header(http::HeaderName::from_static("x-api-key")),
        ])
    })
    .await;
    let a = f.key(&["read"]).await;
    let b = f.key(&["read"]).await;
    let reply = f
        .client
        .get(
            "/recommendations",
            &[
                ("authorization", &api_key(a.key.expose_secret())),
                ("x-api-key", b.key.expose_secret()),
            ],
        )
        .await;
    assert_rejected(&reply, StatusCode::BAD_REQUEST, "MULTIPLE_API_KEYS");
    let reply = f
        .client
        .get(
            "/recommendations",
            &[
                ("authorization", &api_key(a.key.expose_secret())),
                ("x-api-key", a.key.expose_secret()),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "the same key twice is fine");
    assert_eq!(f.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_error_answers_503_and_caches_nothing() {
    let f = Fixture::with(|b| b.retry_after(Duration::from_millis(1500))).await;
    let created = f.key(&["read"]).await;
    let header = api_key(created.key.expose_secret());
    f.store.fail(true);
    for _ in 0..2 {
        let reply = f
            .client
            .get("/recommendations", &[("authorization", &header)])
            .await;
        assert_rejected(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "KEY_STORE_UNAVAILABLE",
        );
        assert_eq!(reply.headers["retry-after"], "2");
    }
    assert_eq!(f.store.gets(), 2, "an error is not cached");
    assert_eq!(f.calls(), 0, "the inner service is never called");
    f.store.fail(false);
    let reply = f
        .client
        .get("/recommendations", &[("authorization", &header)])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_answers_503_within_the_lookup_timeout() {
    let f = Fixture::with(|b| b.lookup_timeout(Some(Duration::from_millis(200)))).await;
    let created = f.key(&["read"]).await;
    f.store.hang(true);
    let header = api_key(created.key.expose_secret());
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        f.client
            .get("/recommendations", &[("authorization", &header)]),
    )
    .await
    .expect("answered, not hung");
    assert_rejected(
        &reply,
        StatusCode::SERVICE_UNAVAILABLE,
        "KEY_STORE_UNAVAILABLE",
    );
    assert_eq!(f.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_first_requests_make_one_store_call() {
    let f = Fixture::new().await;
    let created = f.key(&["read"]).await;
    f.store.delay(100);
    let header = api_key(created.key.expose_secret());
    let requests = (0..500).map(|_| {
        let client = f.client.clone();
        let header = header.clone();
        tokio::spawn(async move {
            client
                .get("/recommendations", &[("authorization", &header)])
                .await
                .status
        })
    });
    for status in futures_join(requests).await {
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(f.store.gets(), 1);
    assert_eq!(f.calls(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_requests_for_an_unknown_id_make_one_store_call() {
    let f = Fixture::new().await;
    f.store.delay(100);
    let unknown = f.layer.format().generate(Environment::Live);
    let header = api_key(unknown.key.expose_secret());
    let requests = (0..500).map(|_| {
        let client = f.client.clone();
        let header = header.clone();
        tokio::spawn(async move {
            client
                .get("/recommendations", &[("authorization", &header)])
                .await
                .status
        })
    });
    for status in futures_join(requests).await {
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(f.store.gets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_through_the_handle_refuses_the_very_next_request() {
    let f = Fixture::with(|b| {
        b.cache(CacheConfig {
            ttl: Duration::from_secs(3600),
            ..CacheConfig::default()
        })
    })
    .await;
    let created = f.key(&["read"]).await;
    let header = api_key(created.key.expose_secret());
    let reply = f
        .client
        .get("/recommendations", &[("authorization", &header)])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(f.keys.revoke(&created.record.id).await.unwrap());
    let reply = f
        .client
        .get("/recommendations", &[("authorization", &header)])
        .await;
    assert_rejected(&reply, StatusCode::UNAUTHORIZED, "API_KEY_REVOKED");

    let other = f.key(&["read"]).await;
    let header = api_key(other.key.expose_secret());
    assert_eq!(
        f.client
            .get("/recommendations", &[("authorization", &header)])
            .await
            .status,
        200
    );
    assert!(f.keys.delete(&other.record.id).await.unwrap());
    let reply = f
        .client
        .get("/recommendations", &[("authorization", &header)])
        .await;
    assert_rejected(&reply, StatusCode::UNAUTHORIZED, "INVALID_API_KEY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_elsewhere_is_seen_after_the_ttl() {
    let f = Fixture::with(|b| {
        b.cache(CacheConfig {
            ttl: Duration::from_millis(300),
            ..CacheConfig::default()
        })
    })
    .await;
    let created = f.key(&["read"]).await;
    let header = api_key(created.key.expose_secret());
    assert_eq!(
        f.client
            .get("/recommendations", &[("authorization", &header)])
            .await
            .status,
        200
    );
    // Revoked behind the layer's back: no invalidation.
    f.store
        .keys
        .revoke(&created.record.id, std::time::SystemTime::now())
        .await
        .unwrap();
    assert_eq!(
        f.client
            .get("/recommendations", &[("authorization", &header)])
            .await
            .status,
        200,
        "still cached"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reply = f
        .client
        .get("/recommendations", &[("authorization", &header)])
        .await;
    assert_rejected(&reply, StatusCode::UNAUTHORIZED, "API_KEY_REVOKED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_keys_work_only_when_allowed() {
    let legacy = "legacy-7f3a9c2e1b4d5a6f";
    let allowed = Fixture::with(|b| b.allow_opaque_keys(true)).await;
    let mut record = KeyRecord::opaque(legacy, "old client", Environment::Live);
    record.scopes = vec!["read".into()];
    allowed.store.keys.create(record.clone()).await.unwrap();
    let reply = allowed
        .client
        .get("/recommendations", &[("authorization", &api_key(legacy))])
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json()["name"], "old client");
    let reply = allowed
        .client
        .get(
            "/recommendations",
            &[("authorization", &api_key("legacy-wrong"))],
        )
        .await;
    assert_rejected(&reply, StatusCode::UNAUTHORIZED, "INVALID_API_KEY");

    let refused = Fixture::new().await;
    refused.store.keys.create(record).await.unwrap();
    let reply = refused
        .client
        .get("/recommendations", &[("authorization", &api_key(legacy))])
        .await;
    assert_rejected(&reply, StatusCode::UNAUTHORIZED, "INVALID_API_KEY");
    assert_eq!(refused.store.gets(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_rejection_is_in_the_response_extensions() {
    use tower::ServiceExt;
    let store = MemoryStore::new();
    let layer = ApiKeyLayer::new("mesh", store).unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "hi" }))
        .layer(layer);
    let response = app
        .oneshot(
            http::Request::get("/")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        response.extensions().get::<Rejection>(),
        Some(&Rejection::MissingApiKey)
    );
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layers_responder_answers_for_the_scope_check_too() {
    let f = Fixture::with(|b| {
        b.realm("offers")
            .rejection_responder(|rejection: &Rejection, _: &http::HeaderMap| {
                http::Response::builder()
                    .status(rejection.status())
                    .header("content-type", "text/plain")
                    .body(bytes::Bytes::from(format!("refused: {}", rejection.code())))
                    .unwrap()
            })
    })
    .await;
    let reader = f.key(&["read"]).await;
    // The layer's own refusal and the route's scope check answer alike.
    let missing = f.client.get("/recommendations", &[]).await;
    assert_eq!(missing.body, "refused: MISSING_API_KEY");
    assert_eq!(
        missing.headers["www-authenticate"],
        "ApiKey realm=\"offers\""
    );
    let header = api_key(reader.key.expose_secret());
    let forbidden = f
        .client
        .send(Method::PUT, "/offers", &[("authorization", &header)])
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(forbidden.headers["content-type"], "text/plain");
    assert_eq!(forbidden.body, "refused: INSUFFICIENT_PERMISSIONS");
    for reply in [&missing, &forbidden] {
        assert_eq!(reply.headers["cache-control"], "no-store", "{reply:?}");
    }
    assert_eq!(f.calls(), 0);
}

/// A page on another origin calls the API: tower-http's `CorsLayer` outside the layer answers
/// the browser's preflight (which carries no key) and puts its headers on the layer's refusals
/// too, so the page's script can read a 401's body. The other way round, the layer refuses the
/// preflight and the browser never sends the request.
#[tokio::test]
async fn a_cors_layer_outside_answers_preflights_and_marks_refusals() {
    use http::{header, HeaderName, HeaderValue};
    use tower_http::cors::CorsLayer;

    let store = MemoryStore::new();
    let layer = ApiKeyLayer::new("mesh", store.clone()).unwrap();
    let keys = KeyManager::new(store).with_cache(layer.handle());
    let created = keys.create(NewKey::new("web app")).await.unwrap();
    let cors = CorsLayer::new()
        .allow_origin(HeaderValue::from_static("https://app.example"))
        .allow_methods([Method::GET])
        .allow_headers([header::AUTHORIZATION])
        .expose_headers([header::RETRY_AFTER, HeaderName::from_static("ratelimit")]);
    let routes = || axum::Router::new().route("/items", axum::routing::get(|| async { "[]" }));
    let right = HttpClient::new(serve(routes().layer(layer.clone()).layer(cors.clone())).await);
    let wrong = HttpClient::new(serve(routes().layer(cors).layer(layer)).await);

    let origin = ("origin", "https://app.example");
    let preflight = [
        origin,
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "authorization"),
    ];
    let allowed = right.send(Method::OPTIONS, "/items", &preflight).await;
    assert_eq!(allowed.status, StatusCode::OK, "{allowed:?}");
    assert_eq!(
        allowed.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let headers = allowed.headers["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(headers.contains("authorization"), "{headers}");
    let refused = wrong.send(Method::OPTIONS, "/items", &preflight).await;
    assert_rejected(&refused, StatusCode::UNAUTHORIZED, "MISSING_API_KEY");

    let refused = right.get("/items", &[origin]).await;
    assert_rejected(&refused, StatusCode::UNAUTHORIZED, "MISSING_API_KEY");
    assert_eq!(
        refused.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let auth = api_key(created.key.expose_secret());
    let ok = right
        .get("/items", &[origin, ("authorization", &auth)])
        .await;
    assert_eq!((ok.status, ok.body.as_str()), (StatusCode::OK, "[]"));
    assert_eq!(
        ok.headers["access-control-allow-origin"],
        "https://app.example"
    );
}
