//! The layer in front of a tonic server, called by a real tonic client over 127.0.0.1.

#[cfg(not(feature = "tonic"))]
#[test]
#[ignore = "gRPC status codes need `--features tonic` (run by .ci/run)"]
fn grpc_suite_needs_the_tonic_feature() {}

#[cfg(feature = "tonic")]
mod common;

#[cfg(feature = "tonic")]
mod grpc {
    use std::net::SocketAddr;

    use tonic::transport::server::TcpIncoming;
    use tonic::transport::{Channel, Server};
    use tonic::{Code, Request, Status};
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    use tower::ServiceBuilder;
    use tower_api_key::{
        manage::CreatedKey, scope::ScopeRequirement, ApiKeyLayer, KeyManager, MemoryStore, NewKey,
        RequireScopeLayer,
    };

    use crate::common::{HttpClient, TestStore};

    const CHECK: &str = "/grpc.health.v1.Health/Check";
    const WATCH: &str = "/grpc.health.v1.Health/Watch";

    struct Fixture {
        addr: SocketAddr,
        store: TestStore,
        keys: KeyManager<MemoryStore>,
    }

    async fn fixture() -> Fixture {
        let store = TestStore::default();
        let auth = ApiKeyLayer::new("mesh", store.clone()).unwrap();
        let keys = KeyManager::new(store.keys.clone()).with_cache(auth.handle());
        let per_method = RequireScopeLayer::per_path(
            [
                (CHECK, ScopeRequirement::all(["read"])),
                (WATCH, ScopeRequirement::all(["admin"])),
            ],
            ScopeRequirement::all(["admin"]),
        );
        let (_reporter, health) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            Server::builder()
                .accept_http1(true)
                .layer(ServiceBuilder::new().layer(auth).layer(per_method))
                .add_service(health)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        Fixture { addr, store, keys }
    }

    impl Fixture {
        async fn client(&self) -> HealthClient<Channel> {
            let channel = Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
                .unwrap();
            HealthClient::new(channel)
        }

        async fn key(&self, scope: &str) -> CreatedKey {
            self.keys
                .create(NewKey::new(format!("{scope} client")).scopes([scope]))
                .await
                .unwrap()
        }

        async fn check(&self, key: Option<&str>) -> Result<ServingStatus, Status> {
            let response = self.client().await.check(request(key)).await?;
            Ok(response.into_inner().status())
        }

        async fn watch(&self, key: Option<&str>) -> Result<(), Status> {
            self.client().await.watch(request(key)).await.map(|_| ())
        }
    }

    fn request(key: Option<&str>) -> Request<HealthCheckRequest> {
        let mut request = Request::new(HealthCheckRequest::default());
        if let Some(key) = key {
            request
                .metadata_mut()
                .insert("authorization", format!("ApiKey {key}").parse().unwrap());
        }
        request
    }

    fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, message: &str) {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), code, "{status:?}");
        assert_eq!(status.message(), message, "{status:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_valid_key_is_served() {
        let f = fixture().await;
        let read = f.key("read").await;
        assert_eq!(
            f.check(Some(read.key.expose_secret())).await.unwrap(),
            ServingStatus::Serving
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_keys_are_unauthenticated_with_the_code_as_message() {
        let f = fixture().await;
        let revoked = f.key("read").await;
        f.keys.revoke(&revoked.record.id).await.unwrap();
        assert_status(
            f.check(None).await,
            Code::Unauthenticated,
            "MISSING_API_KEY",
        );
        assert_status(
            f.check(Some("mesh_live_garbage")).await,
            Code::Unauthenticated,
            "INVALID_API_KEY",
        );
        assert_status(
            f.check(Some(revoked.key.expose_secret())).await,
            Code::Unauthenticated,
            "API_KEY_REVOKED",
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scopes_are_checked_per_method() {
        let f = fixture().await;
        let read = f.key("read").await;
        let admin = f.key("admin").await;
        assert_status(
            f.watch(Some(read.key.expose_secret())).await,
            Code::PermissionDenied,
            "INSUFFICIENT_PERMISSIONS",
        );
        f.watch(Some(admin.key.expose_secret())).await.unwrap();
        assert_eq!(
            f.check(Some(admin.key.expose_secret())).await.unwrap(),
            ServingStatus::Serving,
            "admin implies read"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_failure_is_unavailable() {
        let f = fixture().await;
        let read = f.key("read").await;
        f.store.fail(true);
        assert_status(
            f.check(Some(read.key.expose_secret())).await,
            Code::Unavailable,
            "KEY_STORE_UNAVAILABLE",
        );
        f.store.fail(false);
        assert!(f.check(Some(read.key.expose_secret())).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_its_limit_a_key_is_resource_exhausted() {
        use tower_api_key::{limit::Limits, store::KeyStoreAdmin};

        let f = fixture().await;
        let mut created = NewKey::new("limited")
            .scopes(["read"])
            .generate(&tower_api_key::key::KeyFormat::new("mesh").unwrap())
            .unwrap();
        created.record.limits = Some(Limits::per_minute(1));
        f.store.keys.create(created.record.clone()).await.unwrap();
        let key = created.key.expose_secret();
        assert!(f.check(Some(key)).await.is_ok());
        assert_status(
            f.check(Some(key)).await,
            Code::ResourceExhausted,
            "RATE_LIMIT_EXCEEDED",
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plain_http_request_to_the_same_server_gets_json() {
        let f = fixture().await;
        let reply = HttpClient::new(f.addr).get(CHECK, &[]).await;
        assert_eq!(reply.status, 401);
        assert_eq!(reply.headers["content-type"], "application/json");
        assert_eq!(reply.code(), "MISSING_API_KEY");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_client_layer_sends_the_key_on_a_tonic_channel() {
        use tower_api_key::client::AddApiKeyLayer;

        let f = fixture().await;
        let read = f.key("read").await;
        let channel = Channel::from_shared(format!("http://{}", f.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let with_key = AddApiKeyLayer::builder()
            .expect_prefix("mesh")
            .key(read.key.expose_secret())
            .unwrap();
        let mut client = HealthClient::new(ServiceBuilder::new().layer(with_key).service(channel));
        let response = client.check(HealthCheckRequest::default()).await.unwrap();
        assert_eq!(response.into_inner().status(), ServingStatus::Serving);
        let status = client
            .watch(HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
    }

    #[tokio::test]
    async fn a_tonic_handler_finds_the_principal_in_the_request_extensions() {
        use tower::{service_fn, Layer, ServiceExt};
        use tower_api_key::Principal;

        let store = MemoryStore::new();
        let auth = ApiKeyLayer::new("mesh", store.clone()).unwrap();
        let created = KeyManager::new(store)
            .with_cache(auth.handle())
            .create(NewKey::new("handler test"))
            .await
            .unwrap();
        let service = auth.layer(service_fn(|request: http::Request<()>| async move {
            // What a tonic handler receives.
            let request = tonic::Request::from_http(request);
            let name = request
                .extensions()
                .get::<Principal>()
                .map(|p| p.name().to_owned());
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from(name.unwrap_or_default()),
            )))
        }));
        let request = http::Request::post(CHECK)
            .header("content-type", "application/grpc")
            .header(
                "authorization",
                format!("ApiKey {}", created.key.expose_secret()),
            )
            .body(())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        use http_body_util::BodyExt;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "handler test");
    }
}
