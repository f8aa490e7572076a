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
        #[cfg(feature = "analytics")]
        analytics: tower_api_key::usage::Analytics,
    }

    async fn fixture() -> Fixture {
        let store = TestStore::default();
        let builder = ApiKeyLayer::builder("mesh", store.clone());
        #[cfg(feature = "analytics")]
        let analytics = tower_api_key::usage::Analytics::new();
        #[cfg(feature = "analytics")]
        let builder = builder.usage_sink(analytics.clone());
        let auth = builder.build().unwrap();
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
                // The key is checked before tonic-web translates gRPC-Web, so the layer answers
                // gRPC-Web requests itself.
                .layer(
                    ServiceBuilder::new()
                        .layer(auth)
                        .layer(per_method)
                        .layer(tonic_web::GrpcWebLayer::new()),
                )
                .add_service(health)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        Fixture {
            addr,
            store,
            keys,
            #[cfg(feature = "analytics")]
            analytics,
        }
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

    #[cfg(feature = "analytics")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn usage_is_counted_by_grpc_method() {
        use std::time::{Duration, SystemTime};
        use tower_api_key::usage::{Resolution, Subject};

        let f = fixture().await;
        let read = f.key("read").await;
        for _ in 0..2 {
            f.check(Some(read.key.expose_secret())).await.unwrap();
        }
        assert_status(
            f.watch(Some(read.key.expose_secret())).await,
            Code::PermissionDenied,
            "INSUFFICIENT_PERMISSIONS",
        );
        let now = SystemTime::now();
        let report = f.analytics.usage(
            Subject::Key(&read.record.id),
            now - Duration::from_secs(3_600)..now + Duration::from_secs(60),
            Resolution::Hour,
        );
        let endpoints: Vec<_> = (report.top_endpoints.iter())
            .map(|r| (r.name.as_str(), r.requests))
            .collect();
        assert_eq!(endpoints, [(CHECK, 2), (WATCH, 1)]);
        assert_eq!(report.totals.outcomes["ok"], 2);
        assert_eq!(report.totals.outcomes["INSUFFICIENT_PERMISSIONS"], 1);
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

    /// tonic's server puts the connection's address in the request (`TcpConnectInfo`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_restricted_to_networks_is_checked_against_the_connection() {
        use tower_api_key::network::parse_network;

        let f = fixture().await;
        let restricted = |network: &str| {
            NewKey::new(format!("from {network}"))
                .scopes(["read"])
                .allowed_networks([parse_network(network).unwrap()])
        };
        let loopback = f.keys.create(restricted("127.0.0.0/8")).await.unwrap();
        let elsewhere = f.keys.create(restricted("10.0.0.0/8")).await.unwrap();
        assert_eq!(
            f.check(Some(loopback.key.expose_secret())).await.unwrap(),
            ServingStatus::Serving
        );
        assert_status(
            f.check(Some(elsewhere.key.expose_secret())).await,
            Code::PermissionDenied,
            "IP_NOT_ALLOWED",
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_whose_credits_are_spent_is_resource_exhausted() {
        use tower_api_key::limit::Credits;

        let f = fixture().await;
        let created = f
            .keys
            .create(
                NewKey::new("metered")
                    .scopes(["read"])
                    .credits(Credits::once(1)),
            )
            .await
            .unwrap();
        let key = created.key.expose_secret();
        assert!(f.check(Some(key)).await.is_ok());
        assert_status(
            f.check(Some(key)).await,
            Code::ResourceExhausted,
            "USAGE_EXCEEDED",
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_owners_limits_and_credits_hold_for_all_of_its_keys() {
        use tower_api_key::limit::{Credits, Limits};

        let f = fixture().await;
        let mut owned = Vec::new();
        for name in ["a", "b"] {
            let key = NewKey::new(name).owner("acme").scopes(["read"]);
            owned.push(f.keys.create(key).await.unwrap());
        }
        let (a, b) = (owned[0].key.expose_secret(), owned[1].key.expose_secret());
        f.keys
            .set_owner_limits("acme", Some(Limits::per_minute(2)))
            .await
            .unwrap();
        assert!(f.check(Some(a)).await.is_ok());
        assert!(f.check(Some(b)).await.is_ok());
        assert_status(
            f.check(Some(a)).await,
            Code::ResourceExhausted,
            "RATE_LIMIT_EXCEEDED",
        );
        f.keys.set_owner_limits("acme", None).await.unwrap();
        f.keys
            .set_owner_credits("acme", Some(Credits::once(1)))
            .await
            .unwrap();
        assert!(f.check(Some(b)).await.is_ok());
        assert_status(
            f.check(Some(a)).await,
            Code::ResourceExhausted,
            "USAGE_EXCEEDED",
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

    /// tonic-web's client over HTTP/1.1: the same answers as gRPC, in gRPC-Web's form.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_grpc_web_client_gets_grpc_web_statuses() {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;

        let f = fixture().await;
        let read = f.key("read").await;
        let http = Client::builder(TokioExecutor::new()).build_http();
        let web = ServiceBuilder::new()
            .layer(tonic_web::GrpcWebClientLayer::new())
            .service(http);
        let mut client =
            HealthClient::with_origin(web, format!("http://{}", f.addr).parse().unwrap());
        let key = read.key.expose_secret();
        let served = client.check(request(Some(key))).await.unwrap();
        assert_eq!(served.into_inner().status(), ServingStatus::Serving);
        assert_status(
            client.check(request(None)).await,
            Code::Unauthenticated,
            "MISSING_API_KEY",
        );
        assert_status(
            client.watch(request(Some(key))).await.map(|_| ()),
            Code::PermissionDenied,
            "INSUFFICIENT_PERMISSIONS",
        );
    }

    /// What a browser's gRPC-Web client reads: the status in the headers, exposed to scripts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_grpc_web_rejection_has_the_grpc_web_content_type_and_exposes_its_status() {
        let f = fixture().await;
        for (content_type, answered) in [
            ("application/grpc-web+proto", "application/grpc-web+proto"),
            (
                "application/grpc-web-text",
                "application/grpc-web-text+proto",
            ),
            ("application/grpc", "application/grpc"),
        ] {
            let reply = HttpClient::new(f.addr)
                .send(http::Method::POST, CHECK, &[("content-type", content_type)])
                .await;
            assert_eq!(reply.status, 200, "{reply:?}");
            assert_eq!(reply.headers["content-type"], answered);
            assert_eq!(reply.headers["grpc-status"], "16");
            assert_eq!(reply.headers["grpc-message"], "MISSING_API_KEY");
            assert_eq!(reply.headers["cache-control"], "no-store");
            assert_eq!(
                reply.headers.get("access-control-expose-headers").is_some(),
                answered != "application/grpc",
                "{reply:?}"
            );
            assert!(reply.body.is_empty());
        }
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
