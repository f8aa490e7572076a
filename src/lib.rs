//! API-key authentication for [axum] and [tonic] services as one Tower layer.
//!
//! [`ApiKeyLayer`] reads a key from the request (by default `Authorization: ApiKey <key>`),
//! checks its format and checksum offline, looks it up by its public id through a [cache] in
//! front of a pluggable async [`KeyStore`](store::KeyStore), compares the SHA-256 digest of its
//! secret in constant time, and puts the key's [`Principal`] (id, name, owner, environment,
//! scopes) into the request's extensions. Otherwise it answers with a JSON rejection, such as
//! `{"error": "Invalid API key", "code": "INVALID_API_KEY", "status": 401}`, and never calls your
//! service. [`RequireScopeLayer`] checks scopes per route. A request that starts after a key was
//! revoked is refused, whatever lookups were in flight (see [the cache's guarantee][cache]).
//!
//! ```
//! use axum::{body::Body, routing::get, Extension, Router};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, NewKey, Principal, RequireScopeLayer};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let auth = ApiKeyLayer::new("mesh", store.clone())?;
//! let keys = KeyManager::new(store).with_cache(auth.handle());
//! let reader = keys.create(NewKey::new("dashboard").scopes(["read"])).await?;
//!
//! let app = Router::new()
//!     .route("/offers", get(|Extension(p): Extension<Principal>| async move { format!("hello {}", p.name()) }))
//!     .route_layer(RequireScopeLayer::all(["read"]))
//!     .layer(auth);
//!
//! let request = Request::get("/offers")
//!     .header("authorization", format!("ApiKey {}", reader.key.expose_secret()))
//!     .body(Body::empty())?;
//! assert_eq!(app.clone().oneshot(request).await?.status(), StatusCode::OK);
//!
//! let request = Request::get("/offers").header("authorization", "ApiKey mesh_live_nope").body(Body::empty())?;
//! let response = app.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Where things are
//!
//! The root holds what a first program names. Everything else is in the module of its concept:
//!
//! | module | what is in it |
//! |---|---|
//! | [`key`] | the key format, its parser and generator, the stored digest |
//! | [`extract`] | where keys are read from ([`KeySource`](extract::KeySource)), and what becomes of them ([`HideCredentials`](extract::HideCredentials)) |
//! | [`network`] | where a request comes from: the client's address, trusted proxies |
//! | [`cache`] | the cache in front of the store, and its guarantee on revocation |
//! | [`store`] | the [`KeyStore`](store::KeyStore) trait and what stores share |
//! | [`manage`] | what [`KeyManager`] gives and refuses |
//! | [`scope`], [`require`] | scopes, their hierarchy, and the scope-checking service |
//! | [`limit`] | rate limits, quotas, plans and limiters |
//! | [`usage`] | usage counting, analytics over time, metrics |
//! | [`reject`] | rejections and how they are answered |
//! | [`service`] | the service the layer wraps around yours, its future and body |
//! | [`client`] | the client-side layer that adds a key to requests |
//! | `console` | the operator's console: key-management API, OpenAPI, web dashboard (feature `console`) |
//! | [`clock`] | where the layer reads the time |
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `axum` | [`Principal`] as an axum extractor; the client address from axum's `ConnectInfo`; the route template as usage's endpoint |
//! | `tonic` | gRPC and gRPC-Web status codes for rejections, `tonic::Status` conversions; the client address from tonic's `TcpConnectInfo` |
//! | `sqlite` | [`SqliteStore`](store) |
//! | `postgres` | [`PostgresStore`](store), with `LISTEN/NOTIFY` revocation |
//! | `redis` | [`RedisStore`](store) with pub/sub revocation, and `RedisLimiter` |
//! | `cli` | the `tower-api-key` command line tool (implies `sqlite` and `analytics`) |
//! | `tracing` | events with the key id and the outcome (never the secret) |
//! | `analytics` | usage over time per key, owner and service, across replicas (`usage::Analytics`) |
//! | `metrics` | requests and latency through the `metrics` facade (`usage::MetricsSink`) |
//! | `console` | `console::Console`: an axum router with the key-management API (admin and self-service), its OpenAPI document and the web dashboard (implies `axum`, `analytics`) |
//! | `geoip` | the client's country from a MaxMind-format database (`usage::GeoIpCountry`) |
//! | `secret-scanning` | `secret_scanning::SecretScanning`: an axum router for GitHub's secret scanning partner program, revoking keys found in public code (implies `axum`) |
//!
//! `sqlite` and `analytics` are on by default, so a first program, the demo and the CLI keep keys
//! in a file with no server, and the demo reports usage; `default-features = false` leaves them
//! out.
//!
//! [axum]: https://docs.rs/axum
//! [tonic]: https://docs.rs/tonic
//! [cache]: crate::cache

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
pub mod axum;
mod body;
pub mod cache;
pub mod client;
pub mod clock;
#[cfg(feature = "console")]
pub mod console;
pub mod extract;
mod future;
#[cfg(feature = "tonic")]
pub mod grpc;
pub mod key;
mod layer;
pub mod limit;
pub mod manage;
pub mod network;
mod principal;
pub mod reject;
mod rejection;
pub mod require;
pub mod scope;
#[cfg(feature = "secret-scanning")]
pub mod secret_scanning;
pub mod service;
mod shared;
pub mod store;
mod trace;
pub mod usage;
mod verify;

// What a first program names; everything else is in its module, each item at one path.
pub use async_trait::async_trait;

pub use crate::key::environment::Environment;
pub use crate::layer::{ApiKeyHandle, ApiKeyLayer, ApiKeyLayerBuilder, ConfigError};
pub use crate::manage::manager::{KeyManager, NewKey};
pub use crate::principal::Principal;
pub use crate::require::RequireScopeLayer;
pub use crate::store::any::AnyStore;
pub use crate::store::memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use crate::store::postgres::PostgresStore;
#[cfg(feature = "redis")]
pub use crate::store::redis::RedisStore;
#[cfg(feature = "sqlite")]
pub use crate::store::sqlite::SqliteStore;
pub use crate::trace::log_id;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
