//! The layer's policies over real HTTP on 127.0.0.1: anonymous requests, hidden credentials, the
//! production preset, and keys restricted to networks (the address from the connection, and
//! through trusted and untrusted proxies).

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

    /// `GET /private` with `key`.
    async fn private(&self, key: &CreatedKey) -> common::Reply {
        let header = api_key(key.key.expose_secret());
        self.client
            .get("/private", &[("authorization", &header)])
            .await
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

    // Another scheme's credential, and an empty one of the layer's, reach the service as sent.
    for other in ["Basic dXNlcjpwdw==", "Bearer not-ours"] {
        let reply = f.client.get("/public", &[("authorization", other)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.json()["principal"], Value::Null);
        assert_eq!(
            reply.json()["authorization"],
            json!([credential(other, false)])
        );
    }
    assert_eq!(empty.json()["authorization"][0]["scheme"], "ApiKey");

    // The first request of a key (a lookup) and the next (the cache) both lose the credential.
    for _ in 0..2 {
        let known = f.client.get("/public", &[("authorization", &header)]).await;
        assert_eq!(known.json()["principal"], "policy key");
        assert_eq!(known.json()["authorization"], json!([]));
    }

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

/// A private route's 401 under `allow_anonymous` says what the layer would have said: its
/// challenge and its hint, even when the scope check builds the body with a responder of its
/// own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_checks_401_keeps_the_layers_challenge_and_hint() {
    let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
        .allow_anonymous(true)
        .sources([KeySource::bearer()])
        .realm("shop")
        .build()
        .unwrap();
    let plain = |rejection: &tower_api_key::reject::Rejection, _: &HeaderMap| {
        http::Response::builder()
            .status(rejection.status())
            .body(bytes::Bytes::from(format!("refused: {}", rejection.code())))
            .unwrap()
    };
    let app = Router::new()
        .route(
            "/private",
            get(echo).route_layer(RequireScopeLayer::all(["read"])),
        )
        .route(
            "/own",
            get(echo).route_layer(RequireScopeLayer::all(["read"]).rejection_responder(plain)),
        )
        .layer(layer);
    let client = HttpClient::new(serve(app).await);
    let private = client.get("/private", &[]).await;
    assert_eq!(private.code(), "MISSING_API_KEY");
    assert_eq!(
        private.json()["hint"],
        "Send the API key as 'Authorization: Bearer <key>'"
    );
    let own = client.get("/own", &[]).await;
    assert_eq!(own.body, "refused: MISSING_API_KEY");
    for reply in [&private, &own] {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
        assert_eq!(reply.headers["www-authenticate"], "Bearer realm=\"shop\"");
        assert_eq!(reply.headers["cache-control"], "no-store");
    }
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
async fn two_authorization_values_under_the_default_source_are_each_read() {
    let f = Fixture::with(|b| b).await;
    let (a, b) = (
        f.key(Environment::Live).await,
        f.key(Environment::Live).await,
    );
    let (a, b) = (
        api_key(a.key.expose_secret()),
        api_key(b.key.expose_secret()),
    );
    let basic = "Basic dXNlcjpwdw==";

    // Another scheme's value beside the key stays, in either order; the key's goes.
    for pair in [[basic, &a], [&a, basic]] {
        let reply = f
            .client
            .get(
                "/private",
                &[("authorization", pair[0]), ("authorization", pair[1])],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.json()["principal"], "policy key");
        assert_eq!(
            reply.json()["authorization"],
            json!([credential(basic, false)])
        );
    }
    // Two different keys are refused, the same key twice is one key.
    let two = f
        .client
        .get("/private", &[("authorization", &a), ("authorization", &b)])
        .await;
    assert_eq!(two.status, StatusCode::BAD_REQUEST, "{two:?}");
    assert_eq!(two.code(), "MULTIPLE_API_KEYS");
    let same = f
        .client
        .get("/private", &[("authorization", &a), ("authorization", &a)])
        .await;
    assert_eq!(same.status, StatusCode::OK, "{same:?}");
    assert_eq!(same.json()["authorization"], json!([]));
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
    let reply = f.private(&live).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    for environment in [Environment::Test, Environment::Dev] {
        let key = f.key(environment).await;
        let reply = f.private(&key).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{environment:?}");
        assert_eq!(reply.code(), "API_KEY_ENVIRONMENT_NOT_ALLOWED");
    }
    // The default takes test keys too.
    let f = Fixture::with(|b| b).await;
    let test = f.key(Environment::Test).await;
    let reply = f.private(&test).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}

/// A key restricted to `networks`, and a server that knows each connection's address the way
/// `peer` says.
mod networks {
    use std::net::SocketAddr;

    use super::*;
    use tower_api_key::network::{parse_network, TrustedProxies};

    /// How the server tells the layer the connection's address.
    #[derive(Clone, Copy)]
    enum Peer {
        /// axum's `ConnectInfo<SocketAddr>` (`axum` feature).
        #[cfg(feature = "axum")]
        ConnectInfo,
        /// A plain `SocketAddr` in the extensions, as any server may insert.
        SocketAddr,
        /// Not at all.
        Unknown,
    }

    struct Restricted {
        client: HttpClient,
        keys: KeyManager<MemoryStore>,
    }

    async fn server(peer: Peer, proxies: Option<TrustedProxies>) -> Restricted {
        let store = MemoryStore::new();
        let mut builder = ApiKeyLayer::builder("mesh", store.clone());
        if let Some(proxies) = proxies {
            builder = builder.trusted_proxies(proxies);
        }
        let layer = builder.build().unwrap();
        let keys = KeyManager::new(store).with_cache(layer.handle());
        let app = Router::new().route("/", get(echo)).layer(layer);
        common::log_everything();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        match peer {
            #[cfg(feature = "axum")]
            Peer::ConnectInfo => {
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            }
            Peer::SocketAddr => {
                // What a server without axum's ConnectInfo does: the peer as a `SocketAddr`.
                let app = app.layer(axum::middleware::from_fn(
                    |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
                     mut request: axum::extract::Request,
                     next: axum::middleware::Next| async move {
                        request.extensions_mut().insert(peer);
                        next.run(request).await
                    },
                ));
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            }
            Peer::Unknown => {
                tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            }
        }
        Restricted {
            client: HttpClient::new(addr),
            keys,
        }
    }

    impl Restricted {
        async fn key(&self, networks: &[&str]) -> String {
            let created = self
                .keys
                .create(
                    NewKey::new("restricted")
                        .allowed_networks(networks.iter().map(|n| parse_network(n).unwrap())),
                )
                .await
                .unwrap();
            api_key(created.key.expose_secret())
        }

        /// The status and code for `key` with `headers` added.
        async fn answer(&self, key: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
            let mut all = vec![("authorization", key)];
            all.extend_from_slice(headers);
            let reply = self.client.get("/", &all).await;
            let code = if reply.status == StatusCode::OK {
                String::new()
            } else {
                reply.code().to_owned()
            };
            (reply.status, code)
        }
    }

    fn ok() -> (StatusCode, String) {
        (StatusCode::OK, String::new())
    }

    fn refused() -> (StatusCode, String) {
        (StatusCode::FORBIDDEN, "IP_NOT_ALLOWED".to_owned())
    }

    async fn the_connection_address_decides(peer: Peer) {
        let s = server(peer, None).await;
        let loopback = s.key(&["127.0.0.0/8", "::1"]).await;
        let elsewhere = s.key(&["10.0.0.0/8"]).await;
        let anywhere = s.key(&[]).await;
        assert_eq!(s.answer(&loopback, &[]).await, ok());
        assert_eq!(s.answer(&anywhere, &[]).await, ok());
        assert_eq!(s.answer(&elsewhere, &[]).await, refused());
        // With no trusted proxy, what the client writes is not believed.
        for forged in [
            ("x-forwarded-for", "10.1.1.1"),
            ("forwarded", "for=10.1.1.1"),
        ] {
            assert_eq!(s.answer(&elsewhere, &[forged]).await, refused());
        }
        // The secret is checked first: a wrong one is just invalid.
        let (kept, last) = elsewhere.split_at(elsewhere.len() - 1);
        let wrong = format!("{kept}{}", if last == "x" { "y" } else { "x" });
        let (status, code) = s.answer(&wrong, &[]).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::UNAUTHORIZED, "INVALID_API_KEY")
        );
    }

    #[cfg(feature = "axum")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_address_comes_from_axum_connect_info() {
        the_connection_address_decides(Peer::ConnectInfo).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_address_comes_from_a_socket_addr_extension() {
        the_connection_address_decides(Peer::SocketAddr).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_no_known_address_a_restricted_key_is_refused() {
        let s = server(Peer::Unknown, None).await;
        let restricted = s.key(&["0.0.0.0/0", "::/0"]).await;
        assert_eq!(s.answer(&restricted, &[]).await, refused());
        let anywhere = s.key(&[]).await;
        assert_eq!(s.answer(&anywhere, &[]).await, ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn behind_a_trusted_proxy_the_forwarded_address_decides() {
        let proxy = vec![parse_network("127.0.0.1").unwrap()];
        let s = server(
            Peer::SocketAddr,
            Some(TrustedProxies::x_forwarded_for(proxy.clone())),
        )
        .await;
        let customer = s.key(&["203.0.113.0/24"]).await;
        let xff = |value| [("x-forwarded-for", value)];
        assert_eq!(s.answer(&customer, &xff("203.0.113.5")).await, ok());
        assert_eq!(s.answer(&customer, &xff("198.51.100.1")).await, refused());
        // The client forged the left part; the proxy appended what it saw.
        assert_eq!(
            s.answer(&customer, &xff("203.0.113.5, 198.51.100.1")).await,
            refused()
        );
        assert_eq!(
            s.answer(&customer, &xff("198.51.100.1, 203.0.113.5")).await,
            ok()
        );
        // A chain of trusted proxies is walked past.
        assert_eq!(
            s.answer(&customer, &xff("203.0.113.5, 127.0.0.1")).await,
            ok()
        );
        // Garbage from the proxy: the address is unknown.
        assert_eq!(s.answer(&customer, &xff("unknown")).await, refused());
        // No header: the proxy itself is the client.
        assert_eq!(s.answer(&customer, &[]).await, refused());
        // The other header is not read.
        let forwarded = [("forwarded", "for=203.0.113.5")];
        assert_eq!(s.answer(&customer, &forwarded).await, refused());

        let s = server(Peer::SocketAddr, Some(TrustedProxies::forwarded(proxy))).await;
        let customer = s.key(&["203.0.113.0/24", "2001:db8::/32"]).await;
        for (value, expected) in [
            ("for=203.0.113.5;proto=https", ok()),
            ("for=\"[2001:db8::7]:443\"", ok()),
            ("for=203.0.113.5, for=198.51.100.1", refused()),
            ("for=_hidden", refused()),
        ] {
            assert_eq!(
                s.answer(&customer, &[("forwarded", value)]).await,
                expected,
                "{value}"
            );
        }
        assert_eq!(s.answer(&customer, &xff("203.0.113.5")).await, refused());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_proxy_header_from_an_untrusted_peer_is_ignored() {
        let elsewhere = vec![parse_network("10.0.0.0/8").unwrap()];
        let s = server(
            Peer::SocketAddr,
            Some(TrustedProxies::x_forwarded_for(elsewhere)),
        )
        .await;
        let customer = s.key(&["203.0.113.0/24"]).await;
        let forged = [("x-forwarded-for", "203.0.113.5")];
        assert_eq!(s.answer(&customer, &forged).await, refused());
        let loopback = s.key(&["127.0.0.1"]).await;
        assert_eq!(s.answer(&loopback, &forged).await, ok());
    }
}
