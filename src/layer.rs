//! [`ApiKeyLayer`], its builder, and the [`ApiKeyHandle`] that reaches its cache.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tower::Layer;

use crate::cache::{CacheConfig, CacheStats, KeyCache};
use crate::clock::{Clock, CoarseClock};
use crate::extract::{HideCredentials, KeySource};
use crate::key::{Environment, IdKey, InvalidPrefix, KeyFormat};
use crate::limit::{
    Bucket, Costs, InvalidLimit, LimitCheck, LimitRules, LimitStatus, Limiter, Limits,
    MemoryLimiter,
};
use crate::network::TrustedProxies;
use crate::principal::{Anonymous, Authority};
use crate::reject::{JsonRejection, RejectionResponder, Rejections};
use crate::scope::ScopeHierarchy;
use crate::service::ApiKeyService;
use crate::shared::Shared;
use crate::store::{KeyChanges, KeyStore};
use crate::usage::{CountryResolver, Recording, UsageSink};
use crate::verify::{Environments, KeyReading};

/// API-key authentication as a Tower layer.
///
/// Each request's key is read from the configured [`KeySource`]s, checked offline (format,
/// checksum), looked up by its public id through the cache and the [`KeyStore`], and its secret's
/// digest compared in constant time. On success the request carries a
/// [`Principal`](crate::Principal); otherwise it is answered with a
/// [`Rejection`](crate::reject::Rejection) and the inner service is not called.
///
/// Cloning is cheap and shares the cache.
///
/// ```
/// use axum::{routing::get, Extension, Router};
/// use tower::ServiceExt;
/// use tower_api_key::{ApiKeyLayer, MemoryStore, Principal};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let app = Router::new()
///     .route("/", get(|Extension(p): Extension<Principal>| async move { p.name().to_owned() }))
///     .layer(ApiKeyLayer::new("mesh", MemoryStore::new()).unwrap());
///
/// let response = app
///     .oneshot(http::Request::get("/").body(axum::body::Body::empty()).unwrap())
///     .await
///     .unwrap();
/// assert_eq!(response.status(), 401);
/// assert_eq!(response.headers()["www-authenticate"], "ApiKey realm=\"api\"");
/// # });
/// ```
#[derive(Clone)]
#[must_use]
pub struct ApiKeyLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for ApiKeyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ApiKeyLayer").field(&self.shared).finish()
    }
}

impl ApiKeyLayer {
    /// A layer with the defaults: keys `prefix_…` in `Authorization: ApiKey <key>`, the default
    /// [`CacheConfig`], `admin` ⊇ `write` ⊇ `read`, JSON rejections, a 5 s lookup timeout.
    ///
    /// # Errors
    /// [`ConfigError::InvalidPrefix`] for a prefix [`KeyFormat::new`] refuses.
    pub fn new(prefix: &str, store: impl KeyStore) -> Result<Self, ConfigError> {
        ApiKeyLayer::builder(prefix, store).build()
    }

    /// A builder for a layer that accepts keys starting with `prefix_` and reads them from
    /// `store`.
    pub fn builder(prefix: &str, store: impl KeyStore) -> ApiKeyLayerBuilder {
        ApiKeyLayerBuilder {
            prefix: prefix.to_owned(),
            store: Arc::new(store),
            sources: vec![KeySource::api_key_scheme()],
            allow_opaque: false,
            cache: CacheConfig::default(),
            hierarchy: ScopeHierarchy::default(),
            realm: "api".to_owned(),
            lookup_timeout: Some(Duration::from_secs(5)),
            retry_after: Duration::from_secs(5),
            responder: Arc::new(JsonRejection),
            environments: Environments::default(),
            rules: LimitRules::default(),
            limiter: None,
            usage: None,
            countries: None,
            clock: Arc::new(CoarseClock),
            hide: HideCredentials::default(),
            anonymous: false,
            proxies: None,
            costs: None,
            id_key: None,
        }
    }

    /// A handle on this layer's cache, for revocations to take effect at once.
    pub fn handle(&self) -> ApiKeyHandle {
        ApiKeyHandle {
            shared: self.shared.clone(),
        }
    }

    /// The format of the keys this layer accepts.
    pub fn format(&self) -> &KeyFormat {
        &self.shared.reading.format
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = ApiKeyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyService::new(inner, self.shared.clone())
    }
}

/// Reaches a layer's cache: what is invalidated here is asked of the store on the very next
/// request. [`KeyManager`](crate::KeyManager) uses it after every change.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore};
///
/// let store = MemoryStore::new();
/// let layer = ApiKeyLayer::new("mesh", store.clone())?;
/// // Cheap to clone: give one to whatever changes keys. A manager clears it after each change.
/// let _keys = KeyManager::new(store).with_cache(layer.handle());
/// // A key changed behind the store's back (a script, another service): ask the store again.
/// layer.handle().invalidate("3kTMd9Qx2bLp").await;
/// # Ok::<(), tower_api_key::ConfigError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct ApiKeyHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ApiKeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ApiKeyHandle").field(&self.shared).finish()
    }
}

impl ApiKeyHandle {
    /// Forgets what the cache holds for key `id`, found or unknown.
    pub async fn invalidate(&self, id: &str) {
        self.shared.cache.invalidate(id);
    }

    /// How many keys and unknown ids the cache holds, for monitoring: both stay within the
    /// capacities of [`CacheConfig`] whatever clients send.
    pub async fn stats(&self) -> CacheStats {
        self.shared.cache.stats()
    }

    /// Forgets every cached key.
    pub fn invalidate_all(&self) {
        self.shared.cache.invalidate_all();
    }

    /// Forgets what the cache holds of owner `owner`'s limits and credits: every cached key of
    /// that owner, and every lookup in flight (which may have read the owner before a change).
    pub fn invalidate_owner(&self, owner: &str) {
        self.shared.cache.invalidate_owner(owner);
    }

    /// The format of the layer's keys.
    pub fn format(&self) -> &KeyFormat {
        &self.shared.reading.format
    }

    /// The plans keys may name, each with its limits, in the order they were defined: the
    /// built-in `free`, `pro` and `enterprise` first (with the limits the layer gives them, if
    /// it redefined them), then the layer's own.
    ///
    /// ```
    /// use tower_api_key::{limit::Limits, ApiKeyLayer, MemoryStore};
    ///
    /// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
    ///     .plan("team", Limits::per_minute(1_000))
    ///     .build()?;
    /// let plans = layer.handle().plans();
    /// let names: Vec<&str> = plans.iter().map(|(name, _)| name.as_str()).collect();
    /// assert_eq!(names, ["free", "pro", "enterprise", "team"]);
    /// # Ok::<(), tower_api_key::ConfigError>(())
    /// ```
    pub fn plans(&self) -> Vec<(String, Limits)> {
        let mut plans: Vec<(String, Limits)> = Vec::new();
        for (name, limits) in &self.shared.cache.rules().plans {
            match plans.iter_mut().find(|(known, _)| known == name) {
                // A later definition wins, as it does for keys.
                Some(plan) => plan.1 = limits.clone(),
                None => plans.push((name.clone(), limits.clone())),
            }
        }
        plans
    }

    /// Whether the layer's usage sink writes each key's last use to the store
    /// ([`UsageSink::records_last_use`](crate::usage::UsageSink::records_last_use): a
    /// [`StoreUsage`](crate::usage::StoreUsage) among its sinks). Without one, no key's
    /// `last_used_at` moves, and every key looks never used.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_api_key::usage::{MemoryUsage, StoreUsage};
    /// use tower_api_key::{ApiKeyLayer, MemoryStore};
    ///
    /// let counted = ApiKeyLayer::builder("mesh", MemoryStore::new())
    ///     .usage_sink(Arc::new(MemoryUsage::new()))
    ///     .build()?;
    /// assert!(!counted.handle().records_last_use());
    /// let kept = ApiKeyLayer::builder("mesh", MemoryStore::new())
    ///     .usage_sink((Arc::new(MemoryUsage::new()), Arc::new(StoreUsage::new())))
    ///     .build()?;
    /// assert!(kept.handle().records_last_use());
    /// # Ok::<(), tower_api_key::ConfigError>(())
    /// ```
    pub fn records_last_use(&self) -> bool {
        self.shared
            .recording()
            .is_some_and(|recording| recording.sink.records_last_use())
    }

    /// Where key `id` stands against its rate limits and quotas, and its owner's, now: each
    /// limit's quota, what is left, and when it is restored (the `RateLimit` header's figures).
    /// Nothing is counted. `Ok(None)` for a key the store does not have; an empty list for a
    /// key with no limits.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use tower_api_key::{limit::Limits, ApiKeyLayer, KeyManager, MemoryStore, NewKey};
    ///
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let keys = KeyManager::new(store).with_cache(layer.handle());
    /// let created = keys.create(NewKey::new("ci").limits(Limits::per_minute(100))).await?;
    /// let standing = layer.handle().standing(&created.record.id).await?.unwrap();
    /// assert_eq!((standing[0].quota, standing[0].remaining), (100, 100));
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// When the store or the limiter fails.
    pub async fn standing(
        &self,
        id: &str,
    ) -> Result<Option<Vec<LimitStatus>>, Box<dyn std::error::Error + Send + Sync>> {
        let Some(key) = self
            .shared
            .cache
            .lookup(id)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let restrictions = key.check().restrictions.as_deref();
        let buckets: Vec<Bucket<'_>> = restrictions
            .into_iter()
            .flat_map(|r| [&r.policy, &r.owner_policy])
            .flatten()
            .map(|policy| policy.as_bucket())
            .collect();
        if buckets.is_empty() {
            return Ok(Some(Vec::new()));
        }
        // A request of cost 0 reads the counters without moving them.
        let decision = match self
            .shared
            .limiter
            .check(&buckets, 0, self.shared.clock.now())
        {
            LimitCheck::Ready(decision) => decision,
            LimitCheck::Pending(pending) => pending.await,
        }?;
        Ok(Some(decision.limits))
    }
}

impl KeyChanges for ApiKeyHandle {
    fn key_changed(&self, id: &str) {
        self.shared.cache.invalidate(id);
    }

    fn all_changed(&self) {
        self.shared.cache.invalidate_all();
    }

    fn owner_changed(&self, owner: &str) {
        self.shared.cache.invalidate_owner(owner);
    }
}

/// Configures an [`ApiKeyLayer`]; made by [`ApiKeyLayer::builder`].
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::{extract::KeySource, limit::Limits, ApiKeyLayer, MemoryStore};
///
/// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
///     // Clients that send `Bearer` too.
///     .sources([KeySource::api_key_scheme(), KeySource::bearer()])
///     // Keys that name neither limits nor a plan get the Free plan's.
///     .default_limits(Limits::FREE)
///     // A store that takes longer than 2 s answers 503.
///     .lookup_timeout(Some(Duration::from_secs(2)))
///     .realm("recommendations")
///     .build()?;
/// # Ok::<(), tower_api_key::ConfigError>(())
/// ```
#[must_use]
pub struct ApiKeyLayerBuilder {
    prefix: String,
    store: Arc<dyn KeyStore>,
    sources: Vec<KeySource>,
    allow_opaque: bool,
    cache: CacheConfig,
    hierarchy: ScopeHierarchy,
    realm: String,
    lookup_timeout: Option<Duration>,
    retry_after: Duration,
    responder: Arc<dyn RejectionResponder>,
    environments: Environments,
    rules: LimitRules,
    limiter: Option<Arc<dyn Limiter>>,
    usage: Option<Arc<dyn UsageSink>>,
    countries: Option<Arc<dyn CountryResolver>>,
    clock: Arc<dyn Clock>,
    hide: HideCredentials,
    anonymous: bool,
    proxies: Option<TrustedProxies>,
    costs: Option<Costs>,
    id_key: Option<IdKey>,
}

impl fmt::Debug for ApiKeyLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyLayerBuilder")
            .field("prefix", &self.prefix)
            .field("sources", &self.sources)
            .field("allow_opaque", &self.allow_opaque)
            .field("cache", &self.cache)
            .field("realm", &self.realm)
            .field("lookup_timeout", &self.lookup_timeout)
            .field("environments", &self.environments)
            .field("limits", &self.rules)
            .field("hide", &self.hide)
            .field("anonymous", &self.anonymous)
            .field("proxies", &self.proxies)
            .field("signs_ids", &self.id_key.is_some())
            .finish_non_exhaustive()
    }
}

impl ApiKeyLayerBuilder {
    /// The settings for a production service: only `live` keys are accepted (a `test` or `dev`
    /// key is refused with `API_KEY_ENVIRONMENT_NOT_ALLOWED` before any lookup). Everything else
    /// keeps its default, which is already the careful choice: keys only from
    /// `Authorization: ApiKey`, no opaque keys, credentials removed before your service sees the
    /// request, every store or limiter failure refused. Later calls may change any of it.
    ///
    /// ```
    /// use axum::{body::Body, routing::get, Router};
    /// use tower::ServiceExt;
    /// use tower_api_key::{ApiKeyLayer, Environment, KeyManager, MemoryStore, NewKey};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::builder("mesh", store.clone()).production().build()?;
    /// let test_key = KeyManager::new(store)
    ///     .with_cache(layer.handle())
    ///     .create(NewKey::new("sandbox").environment(Environment::Test))
    ///     .await?;
    /// let app = Router::new().route("/", get(|| async { "hello" })).layer(layer);
    /// let request = http::Request::get("/")
    ///     .header("authorization", format!("ApiKey {}", test_key.key.expose_secret()))
    ///     .body(Body::empty())?;
    /// let response = app.oneshot(request).await?;
    /// assert_eq!(response.status(), 401);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn production(self) -> Self {
        self.environments([Environment::Live])
    }

    /// Lets a request that carries no key at all through to the inner service, without a
    /// [`Principal`](crate::Principal); a request with a key is checked as ever, so a wrong,
    /// revoked or malformed key is still refused. For APIs with public and private routes under
    /// one layer: handlers take `Option<Principal>` (the `axum` feature), and a route with a
    /// [`RequireScopeLayer`](crate::RequireScopeLayer), or a handler that takes `Principal`,
    /// answers an anonymous request 401 `MISSING_API_KEY`. Off by default.
    ///
    /// ```
    /// use axum::{body::Body, routing::get, Router};
    /// use tower::ServiceExt;
    /// use tower_api_key::{ApiKeyLayer, MemoryStore, RequireScopeLayer};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new()).allow_anonymous(true).build()?;
    /// let app = Router::new()
    ///     .route("/private", get(|| async { "secret" }).route_layer(RequireScopeLayer::all(["read"])))
    ///     .route("/public", get(|| async { "hello" }))
    ///     .layer(layer);
    /// let get = |path| http::Request::get(path).body(Body::empty()).unwrap();
    /// assert_eq!(app.clone().oneshot(get("/public")).await?.status(), 200);
    /// assert_eq!(app.oneshot(get("/private")).await?.status(), 401);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.anonymous = allow;
        self
    }

    /// The reverse proxies in front of this service, whose forwarding header gives the client's
    /// address for keys restricted to networks (see [`crate::network`]). Default: none, the
    /// connection's peer is the client.
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.proxies = Some(proxies);
        self
    }

    /// What requests cost against their keys' limits, by path; default 1 each (see [`Costs`]).
    pub fn costs(mut self, costs: Costs) -> Self {
        self.costs = Some(costs);
        self
    }

    /// What becomes of the credential once the key is verified; default
    /// [`HideCredentials::Remove`]: the inner service never sees the key.
    pub fn hide_credentials(mut self, mode: HideCredentials) -> Self {
        self.hide = mode;
        self
    }

    /// The key environments accepted; keys of others are refused with
    /// `API_KEY_ENVIRONMENT_NOT_ALLOWED` (before any lookup, since the environment is written in
    /// the key). Default `live` and `test`: a service usually takes its customers' test traffic
    /// beside the live one (test keys are capped by
    /// [`test_key_limits`](Self::test_key_limits)), and `dev` keys, never limited, must be
    /// enabled explicitly. A production deployment that wants only production keys uses
    /// [`production`](Self::production).
    pub fn environments(mut self, accepted: impl IntoIterator<Item = Environment>) -> Self {
        self.environments = Environments::new(accepted);
        self
    }

    /// Defines (or redefines) plan `name`. `free`, `pro` and `enterprise` are built in, with the
    /// reference's limits ([`Limits::FREE`], [`Limits::PRO`], [`Limits::ENTERPRISE`]). A key whose
    /// record names a plan that is not defined is refused with 503 until it is (fail closed).
    pub fn plan(mut self, name: &str, limits: Limits) -> Self {
        self.rules.plans.push((name.to_owned(), limits));
        self
    }

    /// The limits of keys whose record has neither limits nor a plan; default none.
    pub fn default_limits(mut self, limits: Limits) -> Self {
        self.rules.default = limits;
        self
    }

    /// The cap on `test` keys' limits (each limit is the stricter of the key's and this);
    /// default 60 per minute and 1,000 per day. `dev` keys are never limited.
    pub fn test_key_limits(mut self, cap: Limits) -> Self {
        self.rules.test_cap = cap;
        self
    }

    /// Counts requests with `limiter` instead of a [`MemoryLimiter`] on the layer's clock.
    pub fn limiter(mut self, limiter: impl Limiter) -> Self {
        self.limiter = Some(Arc::new(limiter));
        self
    }

    /// Reports every request's outcome to `sink`, such as a shared
    /// [`MemoryUsage`](crate::usage::MemoryUsage) or
    /// [`Analytics`](crate::usage) (feature `analytics`).
    pub fn usage_sink(mut self, sink: impl UsageSink) -> Self {
        self.usage = Some(Arc::new(sink));
        self
    }

    /// Tells the usage sink each request's country, as `resolver` finds it (none by default):
    /// from a header a trusted proxy sets ([`CountryHeader`](crate::usage::CountryHeader)), or
    /// from the client's address (the connection's, or the one [trusted
    /// proxies](Self::trusted_proxies) forwarded). Read only when the layer has a usage sink.
    pub fn country_resolver(mut self, resolver: impl CountryResolver) -> Self {
        self.countries = Some(Arc::new(resolver));
        self
    }

    /// Reads the time from `clock` (expiry, quota windows, and the in-memory limiter's rate
    /// limits; a `RedisLimiter` keeps rate limits on the Redis server's clock): a
    /// [`ManualClock`](crate::clock::ManualClock) for tests, or
    /// [`SystemClock`](crate::clock::SystemClock) for the time to the nanosecond. The default is
    /// [`CoarseClock`]: the system's clock as of the kernel's last tick, which costs a request
    /// about 13 ns less on the machine of `BENCHMARKS.md`.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Signs the ids of the keys issued in this layer's format (through a
    /// [`KeyManager`](crate::KeyManager) given this layer's handle) with `id_key`, and refuses
    /// a key whose id it did not sign before looking it up: a flood of made-up keys (whose
    /// public CRC32 anyone can compute) then costs the store nothing. A key the cache holds is
    /// not checked again. Keys issued without this id key are refused: issue their successors
    /// first (a [`KeyFormat::with_id_key`] for the manager alone), then turn it on here.
    ///
    /// ```
    /// use tower_api_key::{key::IdKey, ApiKeyLayer, MemoryStore};
    ///
    /// let id_key = IdKey::from_hex(&std::env::var("MESH_ID_KEY").unwrap_or("5e".repeat(32)))?;
    /// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new()).id_key(id_key).build()?;
    /// assert!(layer.format().signs_ids());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn id_key(mut self, id_key: IdKey) -> Self {
        self.id_key = Some(id_key);
        self
    }

    /// Where keys are read from, in order. Default: `Authorization: ApiKey <key>` only.
    pub fn sources(mut self, sources: impl IntoIterator<Item = KeySource>) -> Self {
        self.sources = sources.into_iter().collect();
        self
    }

    /// Also accept keys that are not in this layer's format (any 1 to 512 visible ASCII
    /// characters), looked up by the hex of their SHA-256 digest: for keys issued before this
    /// crate. Store them with [`KeyRecord::opaque`](crate::store::KeyRecord::opaque). Off by
    /// default. A key that starts with this layer's `prefix_` is always parsed as structured.
    pub fn allow_opaque_keys(mut self, allow: bool) -> Self {
        self.allow_opaque = allow;
        self
    }

    /// Sizes and lifetimes of the cache.
    pub fn cache(mut self, cache: CacheConfig) -> Self {
        self.cache = cache;
        self
    }

    /// Which scope implies which; default `admin` ⊇ `write` ⊇ `read`.
    pub fn scope_hierarchy(mut self, hierarchy: ScopeHierarchy) -> Self {
        self.hierarchy = hierarchy;
        self
    }

    /// The realm in `WWW-Authenticate`; default `api`.
    pub fn realm(mut self, realm: &str) -> Self {
        self.realm = realm.to_owned();
        self
    }

    /// How long a store lookup may take before the request is answered 503; `None` waits for
    /// ever. Default 5 s.
    pub fn lookup_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// The `Retry-After` of a 503, rounded up to whole seconds; default 5 s.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    /// Builds rejection responses with `responder` instead of [`JsonRejection`].
    pub fn rejection_responder(mut self, responder: impl RejectionResponder) -> Self {
        self.responder = Arc::new(responder);
        self
    }

    /// The layer.
    ///
    /// # Errors
    /// A [`ConfigError`] naming what is wrong: the prefix, no sources, an `Authorization` scheme
    /// that is not an HTTP token, a realm with `"`, `\` or a control character, or limits with
    /// two named limits of one name.
    pub fn build(self) -> Result<ApiKeyLayer, ConfigError> {
        let mut format = KeyFormat::new(&self.prefix).map_err(ConfigError::InvalidPrefix)?;
        if let Some(id_key) = &self.id_key {
            format = format.with_id_key(id_key.clone());
        }
        let rules = &self.rules;
        for limits in rules
            .plans
            .iter()
            .map(|(_, limits)| limits)
            .chain([&rules.default, &rules.test_cap])
        {
            limits.validate().map_err(ConfigError::InvalidLimits)?;
        }
        if self.sources.is_empty() {
            return Err(ConfigError::NoSources);
        }
        if self
            .realm
            .bytes()
            .any(|b| !(b == b' ' || b.is_ascii_graphic()) || b == b'"' || b == b'\\')
        {
            return Err(ConfigError::InvalidRealm);
        }
        let mut challenges = Vec::new();
        for source in &self.sources {
            if let KeySource::Authorization { scheme } = source {
                let token = !scheme.is_empty()
                    && scheme
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !token {
                    return Err(ConfigError::InvalidScheme(scheme.to_string()));
                }
                challenges.push(format!("{scheme} realm=\"{}\"", self.realm));
            }
        }
        if challenges.is_empty() {
            challenges.push(format!("ApiKey realm=\"{}\"", self.realm));
        }
        let challenge =
            HeaderValue::try_from(challenges.join(", ")).map_err(|_| ConfigError::InvalidRealm)?;
        let retry_after = HeaderValue::from(
            self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0),
        );
        let authority = Arc::new(Authority {
            hierarchy: self.hierarchy,
            rejections: Rejections {
                responder: self.responder,
                challenge,
                retry_after,
                sources: self.sources.iter().cloned().collect(),
            },
            recording: self.usage.map(Recording::new),
        });
        let cache = KeyCache::new(
            &self.cache,
            self.store,
            Arc::clone(&authority),
            self.rules,
            self.lookup_timeout,
            self.clock.clone(),
        );
        let clock = self.clock;
        let limiter = self
            .limiter
            .unwrap_or_else(|| Arc::new(MemoryLimiter::new()));
        Ok(ApiKeyLayer {
            shared: Arc::new(Shared {
                reading: KeyReading::new(
                    format,
                    self.sources.into(),
                    self.allow_opaque,
                    self.environments,
                    self.hide,
                ),
                cache,
                anonymous: self.anonymous.then(|| Anonymous(Arc::clone(&authority))),
                proxies: self.proxies,
                costs: self.costs,
                authority,
                limiter,
                countries: self.countries,
                clock,
            }),
        })
    }
}

/// What [`ApiKeyLayerBuilder::build`] refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The key prefix is not 1 to 16 of `a-z0-9` starting with a letter.
    InvalidPrefix(InvalidPrefix),
    /// No key source was configured.
    NoSources,
    /// An `Authorization` scheme that is not an HTTP token.
    InvalidScheme(String),
    /// A realm with `"`, `\` or a control character.
    InvalidRealm,
    /// A plan's (or the default, or the test) limits are malformed.
    InvalidLimits(InvalidLimit),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::InvalidPrefix(e) => e.fmt(f),
            ConfigError::NoSources => f.write_str("no key source configured"),
            ConfigError::InvalidScheme(s) => {
                write!(f, "`{s}` is not a valid Authorization scheme name")
            }
            ConfigError::InvalidRealm => {
                f.write_str("the realm must be visible ASCII or spaces, without `\"` or `\\`")
            }
            ConfigError::InvalidLimits(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ConfigError {}
