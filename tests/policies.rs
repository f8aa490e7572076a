//! The layer's policies over real HTTP on 127.0.0.1: anonymous requests, hidden credentials and the
//! production preset.

mod common;

use axum::routing::get;
use axum::{Extension, Json, Router};
use http::{HeaderMap, StatusCode, Uri};
use serde_json::{json, Value};
use tower_api_key::{
    extract::HideCredentials, extract::KeySource, manage::CreatedKey, ApiKeyLayer,
    ApiKeyLayerBuilder, Environment, KeyManager, MemoryStore, NewKey, Principal, RequireScopeLayer,
};

use common::{api_key, serve, HttpClient};

/// What the inner service saw: its key's name, if any, and the credentials left in the request,
/// each by its scheme (first word) and length: a reply never holds a key, which
/// `.ci/scan_output.py` would find in the logged suite.
async fn echo(
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    uri: Uri,
) -> Json<Value> {
    let values = |name: &str| -> Vec<Value> {
        headers
            .get_all(name)
            .iter()
            .map(|v| credential(v.to_str().unwrap(), v.is_sensitive()))
            .collect()
    };
    Json(json!({
        "principal": principal.map(|Extension(p)| p.name().to_owned()),
        "authorization": values("authorization"),
        "x-api-key": values("x-api-key"),
        "uri": uri.to_string(),
    }))
}

/// How [`echo`] shows a header value.
fn credential(value: &str, sensitive: bool) -> Value {
    json!({
        "scheme": value.split(' ').next(),
        "length": value.len(),
        "sensitive": sensitive,
    })
}

struct Fixture {
    client: HttpClient,
    keys: KeyManager<MemoryStore>,
}

impl Fixture {
    async fn with(configure: impl FnOnce(ApiKeyLayerBuilder) -> ApiKeyLayerBuilder) -> Self {
        let store = MemoryStore::new();
        let layer = configure(ApiKeyLayer::builder("mesh", store.clone()))
            .build()
            .unwrap();
        let keys = KeyManager::new(store).with_cache(layer.handle());
        let app = Router::new()
            .route("/public", get(echo))
            .route(
                "/private",
                get(echo).route_layer(RequireScopeLayer::all(["read"])),
            )
            .layer(layer);
        Fixture {
            client: HttpClient::new(serve(app).await),
            keys,
        }
    }

    async fn key(&self, environment: Environment) -> CreatedKey {
        self.keys
            .create(
                NewKey::new("policy key")
                    .scopes(["read"])
                    .environment(environment),
            )
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_requests_reach_public_routes_and_keys_are_still_checked() {
    let f = Fixture::with(|b| b.allow_anonymous(true)).await;
    let key = f.key(Environment::Live).await;
    let header = api_key(key.key.expose_secret());

    let anonymous = f.client.get("/public", &[]).await;
    assert_eq!(anonymous.status, StatusCode::OK, "{anonymous:?}");
    assert_eq!(anonymous.json()["principal"], Value::Null);
    // An empty credential is no key, as everywhere.
    let empty = f
        .client
        .get("/public", &[("authorization", "ApiKey ")])
        .await;
    assert_eq!(empty.status, StatusCode::OK, "{empty:?}");

    let known = f.client.get("/public", &[("authorization", &header)]).await;
    assert_eq!(known.json()["principal"], "policy key");

    // A key that is there but wrong is refused, never taken as anonymous.
    for bad in ["ApiKey mesh_live_garbage", "ApiKey not-a-key"] {
        let reply = f.client.get("/public", &[("authorization", bad)]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
        assert_eq!(reply.code(), "INVALID_API_KEY");
    }
    f.keys.revoke(&key.record.id).await.unwrap();
    let revoked = f.client.get("/public", &[("authorization", &header)]).await;
    assert_eq!(revoked.code(), "API_KEY_REVOKED");

    // A route with a scope check is private: 401 with the layer's challenge, not 500.
    let private = f.client.get("/private", &[]).await;
    assert_eq!(private.status, StatusCode::UNAUTHORIZED, "{private:?}");
    assert_eq!(private.code(), "MISSING_API_KEY");
    assert_eq!(private.headers["www-authenticate"], "ApiKey realm=\"api\"");
    assert_eq!(private.headers["cache-control"], "no-store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_allow_anonymous_a_request_without_a_key_is_refused() {
    let f = Fixture::with(|b| b).await;
    let reply = f.client.get("/public", &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.code(), "MISSING_API_KEY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_never_sees_the_key_by_default() {
    let f = Fixture::with(|b| {
        b.sources([
            KeySource::api_key_scheme(),
            KeySource::header(http::HeaderName::from_static("x-api-key")),
            KeySource::query("api_key"),
        ])
    })
    .await;
    let key = f.key(Environment::Live).await;
    let secret = key.key.expose_secret();
    let header = api_key(secret);

    let by_header = f
        .client
        .get(
            "/private?page=2",
            &[("authorization", &header), ("x-api-key", secret)],
        )
        .await;
    assert_eq!(by_header.status, StatusCode::OK, "{by_header:?}");
    let seen = by_header.json();
    assert_eq!(seen["principal"], "policy key");
    assert_eq!(seen["authorization"], json!([]));
    assert_eq!(seen["x-api-key"], json!([]));
    assert_eq!(seen["uri"], "/private?page=2");
    assert!(!by_header.body.contains(secret));

    let by_query = f
        .client
        .get(&format!("/private?page=2&api_key={secret}&sort=asc"), &[])
        .await;
    assert_eq!(by_query.status, StatusCode::OK, "{by_query:?}");
    assert_eq!(by_query.json()["uri"], "/private?page=2&sort=asc");
    assert!(!by_query.body.contains(secret));

    // Another scheme's credential in the same header is not the layer's to take.
    let basic = "Basic dXNlcjpwdw==";
    let mixed = f
        .client
        .get(
            "/private",
            &[("authorization", basic), ("x-api-key", secret)],
        )
        .await;
    assert_eq!(
        mixed.json()["authorization"],
        json!([credential(basic, false)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marked_credentials_reach_the_service_as_sensitive_and_kept_ones_as_sent() {
    for (mode, sensitive) in [
        (HideCredentials::MarkSensitive, true),
        (HideCredentials::Keep, false),
    ] {
        let f = Fixture::with(|b| b.hide_credentials(mode)).await;
        let key = f.key(Environment::Live).await;
        let header = api_key(key.key.expose_secret());
        let reply = f
            .client
            .get("/private", &[("authorization", &header)])
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(
            reply.json()["authorization"],
            json!([credential(&header, sensitive)]),
            "{mode:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_preset_takes_live_keys_only() {
    let f = Fixture::with(ApiKeyLayerBuilder::production).await;
    let live = f.key(Environment::Live).await;
    let reply = f
        .client
        .get(
            "/private",
            &[("authorization", &api_key(live.key.expose_secret()))],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    for environment in [Environment::Test, Environment::Dev] {
        let key = f.key(environment).await;
        let reply = f
            .client
            .get(
                "/private",
                &[("authorization", &api_key(key.key.expose_secret()))],
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{environment:?}");
        assert_eq!(reply.code(), "API_KEY_ENVIRONMENT_NOT_ALLOWED");
    }
    // The default takes test keys too.
    let f = Fixture::with(|b| b).await;
    let test = f.key(Environment::Test).await;
    let reply = f
        .client
        .get(
            "/private",
            &[("authorization", &api_key(test.key.expose_secret()))],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}
