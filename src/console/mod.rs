//! The operator's console (feature `console`): an axum [`Router`] to nest in your app, with
//!
//! - a JSON API under `api/` that creates, lists, shows, updates, rotates, revokes and deletes
//!   keys, reports their usage, and lists the changes made through it;
//! - its OpenAPI document at `openapi.json`;
//! - a web dashboard at the router's root: HTML, one script and one stylesheet embedded in the
//!   crate (no build step, nothing fetched from elsewhere), under a strict
//!   Content-Security-Policy.
//!
//! The API is behind this crate's own layer: requests carry an API key, and the console decides
//! what the key may do by its scopes.
//!
//! - A key with the **admin** scope (`admin` unless [`Console::admin_scope`] says otherwise)
//!   manages every key.
//! - A key with the **self-service** scope (`keys:self` by default, [`Console::self_service_scope`])
//!   manages the keys of its own owner only: it lists, creates, rotates, revokes, disables and
//!   deletes them, renames them and changes their scopes and metadata, the Mesh SDK's
//!   `generate_api_key(name=...)`. It grants no scope it does not hold, issues keys in its own
//!   environment on its own plan and limits, never enables a disabled key or moves an expiry (an
//!   admin's decisions), and sees another owner's key as it sees a key that does not exist (404).
//! - Any other key is refused with 403, no key with 401, as the layer refuses.
//!
//! The plaintext of a key is in the answer that issues it only (`Cache-Control: no-store`).
//! The dashboard keeps the key its operator signs in with in the tab's session storage and sends
//! it as the `Authorization` header: no cookie, so nothing for another site to ride on.
//!
//! | method and path | what it does |
//! |---|---|
//! | `GET api/me` | the caller: its role, the scopes it may grant, the plans, the most keys an owner may hold and the longest a key may live (if limited), whether keys' last use is recorded |
//! | `GET api/keys` | lists keys (`owner`, `environment`, `state`, `name`, `older_than`, `unused_for` where last use is recorded ([`Console::last_use_recorded`]), `expires_within`, `offset`, `limit`) |
//! | `POST api/keys` | issues a key: the plaintext, shown once, and the `export` line |
//! | `GET api/keys/{id}` | one key |
//! | `PATCH api/keys/{id}` | changes its name, scopes, expiry, plan, limits, metadata, or disables it: all or none ([`KeyManager::update`](crate::KeyManager::update)) |
//! | `POST api/keys/{id}/rotate` | issues its successor; it works for the grace period (`24h`) more |
//! | `POST api/keys/{id}/revoke` | revokes it |
//! | `DELETE api/keys/{id}` | deletes it |
//! | `GET api/usage` | usage of a key, an owner or the service ([`Analytics`] across replicas) |
//! | `GET api/audit` | the changes made through the console (and the command line tool), newest first, from the store's trail ([`AuditArchive`]: every replica's, kept across restarts), as [`AuditEvent`](crate::manage::AuditEvent)s |
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use axum::Router;
//! use tower_api_key::console::Console;
//! use tower_api_key::usage::Analytics;
//! use tower_api_key::{ApiKeyLayer, MemoryStore};
//!
//! let store = MemoryStore::new();
//! let analytics = Analytics::new();
//! let layer = ApiKeyLayer::builder("mesh", store.clone())
//!     .usage_sink(analytics.clone())
//!     .build()?;
//! let console = Console::new(&layer, store).analytics(analytics);
//! // The dashboard at /admin, the API at /admin/api/...
//! let app: Router = Router::new().nest("/admin", console.router());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod access;
mod api;
mod assets;
mod error;
mod openapi;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::layer::{ApiKeyHandle, ApiKeyLayer};
use crate::store::{AuditArchive, KeyStoreAdmin, UsageArchive};
use crate::usage::Analytics;
use crate::KeyManager;

use access::Access;

/// The largest request body the API reads: a key's description is far smaller.
const MAX_BODY: usize = 64 * 1024;

/// The console of the keys in one store, behind one layer. See [the module](self).
#[must_use]
pub struct Console<A> {
    inner: Inner<A>,
    layer: ApiKeyLayer,
}

/// What the handlers share.
pub(crate) struct Inner<A> {
    keys: KeyManager<A>,
    handle: ApiKeyHandle,
    analytics: Option<Analytics>,
    access: Access,
    /// The variable of the `export` line shown with a new key: `MESH_API_KEY`.
    env_var: String,
    /// Whether keys' last use reaches the store (`last_used_at`), so they can be listed by it.
    last_use_recorded: bool,
}

impl<A> fmt::Debug for Console<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Console")
            .field("access", &self.inner.access)
            .field("analytics", &self.inner.analytics.is_some())
            .field("last_use_recorded", &self.inner.last_use_recorded)
            .finish_non_exhaustive()
    }
}

impl<A: KeyStoreAdmin + UsageArchive + AuditArchive + Clone> Console<A> {
    /// The console of the keys in `store`, authenticated by `layer` (whose cache it clears
    /// after every change, and whose key format it issues keys in). `store` is the store the
    /// layer reads.
    pub fn new(layer: &ApiKeyLayer, store: A) -> Self {
        let handle = layer.handle();
        let env_var = format!("{}_API_KEY", handle.format().prefix().to_uppercase());
        let last_use_recorded = handle.records_last_use();
        Console {
            inner: Inner {
                keys: KeyManager::new(store).with_cache(handle.clone()),
                handle,
                analytics: None,
                access: Access {
                    admin: "admin".into(),
                    self_service: "keys:self".into(),
                    scopes: vec!["read".into(), "write".into(), "admin".into()],
                },
                env_var,
                last_use_recorded,
            },
            layer: layer.clone(),
        }
    }

    /// Reports usage from `analytics`: the layer's usage sink (and the store's rows of other
    /// replicas). Without it, `api/usage` answers 404.
    pub fn analytics(mut self, analytics: Analytics) -> Self {
        self.inner.analytics = Some(analytics);
        self
    }

    /// Issues no key to an owner that already has `max` keys in circulation (neither revoked
    /// nor expired), whoever asks: the reference's "limit the number of API keys in
    /// circulation", and a bound on what a self-service key can issue. One more answers 409
    /// `KEY_LIMIT_REACHED`; a rotation may go one key over while the old key's grace period runs. See
    /// [`KeyManager::max_keys_per_owner`](crate::KeyManager::max_keys_per_owner).
    ///
    /// ```
    /// use tower_api_key::console::Console;
    /// use tower_api_key::{ApiKeyLayer, MemoryStore};
    ///
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let console = Console::new(&layer, store).max_keys_per_owner(10);
    /// # Ok::<(), tower_api_key::ConfigError>(())
    /// ```
    pub fn max_keys_per_owner(mut self, max: u32) -> Self {
        self.inner.keys = self.inner.keys.max_keys_per_owner(max);
        self
    }

    /// Lets no key live longer than `max` from now, whoever asks: a key issued without an
    /// expiry expires `max` after it was issued, and an expiry later than that (or none) answers
    /// 400 `EXPIRY_TOO_LATE`. A rotation keeps the old key's expiry, brought within `max`, and
    /// ends the old key's grace period within `max` too. See
    /// [`KeyManager::max_key_lifetime`](crate::KeyManager::max_key_lifetime).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_api_key::console::Console;
    /// use tower_api_key::{ApiKeyLayer, MemoryStore};
    ///
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let year = Duration::from_secs(365 * 24 * 3_600);
    /// let console = Console::new(&layer, store).max_key_lifetime(year);
    /// # Ok::<(), tower_api_key::ConfigError>(())
    /// ```
    pub fn max_key_lifetime(mut self, max: Duration) -> Self {
        self.inner.keys = self.inner.keys.max_key_lifetime(max);
        self
    }

    /// Says whether each key's last use reaches the store (`last_used_at`). By default the
    /// console asks the layer ([`ApiKeyHandle::records_last_use`]): true with a
    /// [`StoreUsage`](crate::usage::StoreUsage) among its usage sinks. Set it when another
    /// service's layer writes the last use of the keys in this store, as the console's own layer
    /// does not. Where it is false, every key would look never used, so the key list refuses
    /// `unused_for` (400 `LAST_USE_NOT_RECORDED`) and the dashboard offers no such filter: an
    /// operator is never shown keys in use as keys to delete.
    ///
    /// ```
    /// use tower_api_key::console::Console;
    /// use tower_api_key::{ApiKeyLayer, MemoryStore};
    ///
    /// let store = MemoryStore::new();
    /// // The service's replicas, not this admin app, record last use into `store`.
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let console = Console::new(&layer, store).last_use_recorded(true);
    /// # Ok::<(), tower_api_key::ConfigError>(())
    /// ```
    pub fn last_use_recorded(mut self, recorded: bool) -> Self {
        self.inner.last_use_recorded = recorded;
        self
    }

    /// The scope that manages every key; default `admin`.
    pub fn admin_scope(mut self, scope: impl Into<String>) -> Self {
        self.inner.access.admin = scope.into();
        self
    }

    /// The scope that manages the keys of the key's own owner; default `keys:self`.
    pub fn self_service_scope(mut self, scope: impl Into<String>) -> Self {
        self.inner.access.self_service = scope.into();
        self
    }

    /// The scopes keys may be given through the console, as the dashboard offers them; default
    /// the reference's `read`, `write` and `admin`. The admin and self-service scopes are
    /// grantable when listed here.
    ///
    /// ```
    /// use tower_api_key::console::Console;
    /// use tower_api_key::{ApiKeyLayer, MemoryStore};
    ///
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let console = Console::new(&layer, store).scopes(["read", "write", "admin", "keys:self"]);
    /// # Ok::<(), tower_api_key::ConfigError>(())
    /// ```
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.inner.access.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The variable named in the `export` line shown with a new key; default the key prefix in
    /// capitals and `_API_KEY`: `MESH_API_KEY`.
    pub fn env_var(mut self, name: impl Into<String>) -> Self {
        self.inner.env_var = name.into();
        self
    }

    /// The router: the dashboard at its root, the API under `api/`, the OpenAPI document at
    /// `openapi.json`. Nest it (`Router::nest("/admin", ...)`); its API runs behind the layer
    /// given to [`Console::new`], so do not wrap it in that layer again (the dashboard's page
    /// must load without a key).
    pub fn router(self) -> Router {
        let Console { inner, layer } = self;
        let api = Router::new()
            .route("/api/me", get(api::me::<A>))
            .route("/api/keys", get(api::list::<A>).post(api::create::<A>))
            .route(
                "/api/keys/{id}",
                get(api::show::<A>)
                    .patch(api::update::<A>)
                    .delete(api::delete::<A>),
            )
            .route("/api/keys/{id}/rotate", post(api::rotate::<A>))
            .route("/api/keys/{id}/revoke", post(api::revoke::<A>))
            .route(
                "/api/apply-lifetime",
                get(api::outliving::<A>).post(api::apply_lifetime::<A>),
            )
            .route("/api/usage", get(api::usage::<A>))
            .route("/api/audit", get(api::audit::<A>))
            .with_state(Arc::new(inner))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .layer(layer);
        Router::new()
            .merge(api)
            .merge(assets::routes())
            .route("/openapi.json", get(openapi::document))
            .layer(axum::middleware::map_response(api::secure_headers))
    }
}
