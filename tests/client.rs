//! The client-side layer: the key arrives as sent, marked sensitive, read from the environment.

mod common;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use axum::routing::get;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_api_key::{
    client::AddApiKeyLayer, client::ClientKeyError, ApiKeyLayer, KeyManager, MemoryStore, NewKey,
};

/// Sends one GET through `layer` over real HTTP and returns the status and body.
async fn get_through(
    layer: AddApiKeyLayer,
    addr: std::net::SocketAddr,
    path: &str,
) -> (u16, String) {
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut client = ServiceBuilder::new().layer(layer).service(http);
    let request = http::Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// A server that echoes the headers a key could be in.
async fn echo_server() -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/echo",
        get(|headers: HeaderMap| async move {
            let show = |name: &str| {
                headers
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            format!("{}|{}", show("authorization"), show("x-api-key"))
        }),
    );
    common::serve(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_arrives_as_sent() {
    let addr = echo_server().await;
    let key = "mesh_live_3kTMd9Qx2bLp_notarealsecret";
    for (layer, expected) in [
        (AddApiKeyLayer::new(key).unwrap(), format!("ApiKey {key}|")),
        (
            AddApiKeyLayer::builder().bearer().key(key).unwrap(),
            format!("Bearer {key}|"),
        ),
        (
            AddApiKeyLayer::builder()
                .header(http::HeaderName::from_static("x-api-key"))
                .key(&format!("  {key}\n"))
                .unwrap(),
            format!("|{key}"),
        ),
    ] {
        assert_eq!(get_through(layer, addr, "/echo").await, (200, expected));
    }
}

#[tokio::test]
async fn the_header_is_marked_sensitive_and_replaces_any_other() {
    let layer = AddApiKeyLayer::new("mesh_live_abc").unwrap();
    let service = ServiceBuilder::new().layer(layer).service(service_fn(
        |request: http::Request<()>| async move {
            let values: Vec<_> = request
                .headers()
                .get_all("authorization")
                .iter()
                .cloned()
                .collect();
            Ok::<_, std::convert::Infallible>(values)
        },
    ));
    let request = http::Request::get("/")
        .header("authorization", "Basic c3RhbGU=")
        .body(())
        .unwrap();
    let values = service.oneshot(request).await.unwrap();
    assert_eq!(values.len(), 1);
    assert_eq!(values[0], "ApiKey mesh_live_abc");
    assert!(values[0].is_sensitive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_from_a_dotenv_file_authenticates_against_the_layer() {
    let store = MemoryStore::new();
    let auth = ApiKeyLayer::new("mesh", store.clone()).unwrap();
    let created = KeyManager::new(store)
        .with_cache(auth.handle())
        .create(NewKey::new("from .env").scopes(["read"]))
        .await
        .unwrap();
    let addr = common::serve(common::app(auth, Arc::new(AtomicUsize::new(0)))).await;

    let dir = std::env::temp_dir().join(format!("tower-api-key-dotenv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(".env");
    std::fs::write(
        &file,
        format!(
            "# written by the test\nOTHER=1\nMESH_DOTENV_TEST_KEY={}\n",
            created.key.expose_secret()
        ),
    )
    .unwrap();
    dotenvy::from_path(&file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let layer = AddApiKeyLayer::builder()
        .expect_prefix("mesh")
        .from_env("MESH_DOTENV_TEST_KEY")
        .unwrap();
    let (status, body) = get_through(layer, addr, "/recommendations").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("from .env"), "{body}");

    let wrong =
        AddApiKeyLayer::new(&created.key.expose_secret().replacen("_live_", "_test_", 1)).unwrap();
    assert_eq!(get_through(wrong, addr, "/recommendations").await.0, 401);
}

#[test]
fn environment_errors_name_the_variable_and_never_the_key() {
    std::env::remove_var("MESH_UNSET_TEST_KEY");
    let error = AddApiKeyLayer::from_env("MESH_UNSET_TEST_KEY").unwrap_err();
    assert_eq!(
        error,
        ClientKeyError::Unset {
            var: "MESH_UNSET_TEST_KEY".into()
        }
    );
    assert!(error.to_string().contains("MESH_UNSET_TEST_KEY is not set"));

    std::env::set_var("MESH_EMPTY_TEST_KEY", "  ");
    let error = AddApiKeyLayer::from_env("MESH_EMPTY_TEST_KEY").unwrap_err();
    assert!(
        error.to_string().contains("MESH_EMPTY_TEST_KEY is empty"),
        "{error}"
    );

    std::env::set_var("MESH_FOREIGN_TEST_KEY", "sk_live_supersecretvalue");
    let error = AddApiKeyLayer::builder()
        .expect_prefix("mesh")
        .from_env("MESH_FOREIGN_TEST_KEY")
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "API keys for this service start with `mesh_`"
    );
    assert!(!format!("{error:?}").contains("supersecret"));

    for bad in ["with space", "tab\there", &"a".repeat(513), "ünïcode"] {
        assert_eq!(
            AddApiKeyLayer::new(bad).unwrap_err(),
            ClientKeyError::Invalid,
            "{bad:?}"
        );
    }
}

#[test]
fn debug_never_shows_the_key() {
    let layer = AddApiKeyLayer::new("mesh_live_supersecretvalue").unwrap();
    let service = tower::Layer::layer(&layer, ());
    for text in [format!("{layer:?}"), format!("{service:?}")] {
        assert!(!text.contains("supersecret"), "{text}");
        assert!(text.contains("authorization"), "{text}");
    }
}
