//! [`NewKey`](crate::NewKey) and [`KeyManager`](crate::KeyManager), at the crate's root.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::{
    is_hidden_control, is_valid_name, keeps, CreatedKey, InvalidKey, KeyInfo, ManageError,
    MAX_METADATA_ENTRIES, MAX_METADATA_LEN,
};
use ipnet::IpNet;

use crate::clock::unix_seconds;
use crate::key::{Environment, KeyFormat};
use crate::layer::ApiKeyHandle;
use crate::limit::{Credits, Limits};
use crate::scope::validate_scope;
use crate::store::{
    KeyChanges, KeyFilter, KeyRecord, KeyState, KeyStoreAdmin, KeyUpdate, OwnerRecord, StoreError,
};

/// A key to be issued: its name, environment, scopes and the rest of its record.
///
/// ```
/// use tower_api_key::{Environment, key::KeyFormat, NewKey};
///
/// let created = NewKey::new("production-server")
///     .environment(Environment::Live)
///     .scopes(["read", "write"])
///     .generate(&KeyFormat::new("mesh")?)?;
/// assert!(created.key.expose_secret().starts_with("mesh_live_"));
/// assert_eq!(created.record.scopes, ["read", "write"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct NewKey {
    name: String,
    environment: Environment,
    scopes: Vec<String>,
    owner: Option<String>,
    expires_at: Option<SystemTime>,
    metadata: BTreeMap<String, String>,
    plan: Option<String>,
    limits: Option<Limits>,
    allowed_networks: Vec<IpNet>,
    credits: Option<Credits>,
}

impl NewKey {
    /// A `live` key named `name` with no scopes.
    pub fn new(name: impl Into<String>) -> Self {
        NewKey {
            name: name.into(),
            environment: Environment::Live,
            scopes: Vec::new(),
            owner: None,
            expires_at: None,
            metadata: BTreeMap::new(),
            plan: None,
            limits: None,
            allowed_networks: Vec::new(),
            credits: None,
        }
    }

    /// The environment; default `live`.
    pub fn environment(mut self, environment: Environment) -> Self {
        self.environment = environment;
        self
    }

    /// The scopes granted.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Who the key belongs to.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// When the key stops working.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Adds a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The key's plan, such as `free` or `pro` (see [`Limits`]).
    pub fn plan(mut self, plan: impl Into<String>) -> Self {
        self.plan = Some(plan.into());
        self
    }

    /// The key's own limits, which take precedence over its plan's.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// The key's credits: a budget of requests, each spending its cost, refilled if they say
    /// so. A key with too few left is refused with 429 `USAGE_EXCEEDED`.
    pub fn credits(mut self, credits: Credits) -> Self {
        self.credits = Some(credits);
        self
    }

    /// The networks the key may be used from (IPv4 and IPv6 CIDRs); none: anywhere. A request
    /// from elsewhere is refused with 403 `IP_NOT_ALLOWED`; see [`crate::network`] for where the
    /// address comes from.
    ///
    /// ```
    /// use tower_api_key::{key::KeyFormat, network::parse_network, NewKey};
    ///
    /// let created = NewKey::new("office")
    ///     .allowed_networks([parse_network("203.0.113.0/24")?, parse_network("2001:db8::1")?])
    ///     .generate(&KeyFormat::new("mesh")?)?;
    /// assert_eq!(created.record.allowed_networks.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn allowed_networks(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.allowed_networks = networks.into_iter().collect();
        self
    }

    /// Generates the key offline: the plaintext and the record to store, for people with a store
    /// of their own.
    ///
    /// # Errors
    /// [`InvalidKey`] for an empty or over-long name or a malformed scope.
    pub fn generate(self, format: &KeyFormat) -> Result<CreatedKey, InvalidKey> {
        let generated = format.generate(self.environment);
        let mut record =
            KeyRecord::new(generated.id, generated.digest, self.name, self.environment);
        record.scopes = self.scopes;
        record.owner = self.owner;
        record.expires_at = self.expires_at;
        record.metadata = self.metadata;
        record.plan = self.plan;
        record.limits = self.limits;
        record.allowed_networks = self.allowed_networks;
        record.credits = self
            .credits
            .map(|credits| credits.starting(unix_seconds(crate::clock::now())));
        validate_record(&record)?;
        Ok(CreatedKey {
            key: generated.key,
            record,
        })
    }
}

/// Creates, revokes, deletes and lists keys in a store. Given a layer's cache
/// ([`with_cache`](Self::with_cache)), it clears the changed key from it after each change, so
/// the change holds for every request on this replica that starts after the call returned (see
/// [the cache's guarantee](crate::cache)). Without one (a CLI, a separate admin process), it
/// needs a [`format`](Self::format) to issue keys in.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, NewKey};
///
/// let store = MemoryStore::new();
/// let layer = ApiKeyLayer::new("mesh", store.clone())?;
/// let keys = KeyManager::new(store).with_cache(layer.handle());
///
/// let created = keys.create(NewKey::new("ci").scopes(["read"])).await?;
/// println!("your key, shown once: {}", created.key.expose_secret());
/// assert_eq!(keys.list().await?.len(), 1);
/// assert!(keys.revoke(&created.record.id).await?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct KeyManager<A> {
    pub(super) store: A,
    pub(super) format: Option<KeyFormat>,
    cache: Option<ApiKeyHandle>,
    pub(super) max_keys_per_owner: Option<u32>,
    max_key_lifetime: Option<Duration>,
}

impl<A: KeyStoreAdmin> KeyManager<A> {
    /// A manager of the keys in `store`, with no cache to clear and no key format yet.
    ///
    /// ```
    /// use tower_api_key::{key::KeyFormat, KeyManager, MemoryStore};
    ///
    /// // An admin tool with no layer: it only needs the format of the keys it issues.
    /// let keys = KeyManager::new(MemoryStore::new()).format(KeyFormat::new("mesh")?);
    /// # Ok::<(), tower_api_key::key::InvalidPrefix>(())
    /// ```
    pub fn new(store: A) -> Self {
        KeyManager {
            store,
            format: None,
            cache: None,
            max_keys_per_owner: None,
            max_key_lifetime: None,
        }
    }

    /// Clears changed keys from the cache of the layer behind `handle`, and issues keys in that
    /// layer's format (unless [`format`](Self::format) set another).
    pub fn with_cache(mut self, handle: ApiKeyHandle) -> Self {
        if self.format.is_none() {
            self.format = Some(handle.format().clone());
        }
        self.cache = Some(handle);
        self
    }

    /// Issues keys in `format`.
    pub fn format(mut self, format: KeyFormat) -> Self {
        self.format = Some(format);
        self
    }

    /// The format it issues keys in, if it has one.
    ///
    /// ```
    /// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore};
    ///
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let keys = KeyManager::new(store).with_cache(layer.handle());
    /// assert_eq!(keys.key_format().map(|f| f.prefix()), Some("mesh"));
    /// # Ok::<(), tower_api_key::ConfigError>(())
    /// ```
    pub fn key_format(&self) -> Option<&KeyFormat> {
        self.format.as_ref()
    }

    /// Issues no key to an owner that already has `max` keys in circulation (neither revoked
    /// nor expired: [`KeyRecord::in_circulation`]; disabled keys count), as the reference
    /// advises: "limit the number of API keys in circulation". [`create`](Self::create) then
    /// answers [`ManageError::TooManyKeys`]. The store counts and adds in one step (see
    /// [`KeyStoreAdmin::create_within`]), so creations at once, on any replica, never pass
    /// `max`. Keys without an owner are not counted. A [rotation](Self::rotate) may take an
    /// owner one key over `max`, since its successor replaces a key that ends with its grace
    /// period, but no further: a second rotation during that grace is refused. Moving an
    /// expired key's expiry later ([`set_expiry`](Self::set_expiry), [`update`](Self::update))
    /// brings it back into circulation, and is refused the same way
    /// ([`KeyStoreAdmin::update_key_within`]).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use tower_api_key::{key::KeyFormat, manage::ManageError, KeyManager, MemoryStore, NewKey};
    ///
    /// let keys = KeyManager::new(MemoryStore::new())
    ///     .format(KeyFormat::new("mesh")?)
    ///     .max_keys_per_owner(2);
    /// let ci = keys.create(NewKey::new("ci").owner("acme")).await?;
    /// keys.create(NewKey::new("deploys").owner("acme")).await?;
    /// let refused = keys.create(NewKey::new("one more").owner("acme")).await;
    /// assert!(matches!(refused, Err(ManageError::TooManyKeys(2))));
    /// keys.revoke(&ci.record.id).await?;
    /// keys.create(NewKey::new("one more").owner("acme")).await?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn max_keys_per_owner(mut self, max: u32) -> Self {
        self.max_keys_per_owner = Some(max);
        self
    }

    /// The most keys in circulation an owner may hold, if [limited](Self::max_keys_per_owner).
    #[cfg(feature = "console")]
    pub(crate) fn owner_cap(&self) -> Option<u32> {
        self.max_keys_per_owner
    }

    /// Lets no key live longer than `max` from now, as the reference advises ("rotate keys
    /// regularly"): a key issued without an expiry expires `max` after it was issued; an
    /// expiry later than `max` from now, or none at all, is refused with
    /// [`ManageError::LifetimeTooLong`] when a key is created or its expiry set. A
    /// [rotation](Self::rotate) keeps the old key's expiry, brought within `max` of now (so
    /// rotating a key issued before the limit gives one that obeys it), and ends the old key's
    /// grace period within `max` of now too. Keys already stored are not changed: find those
    /// expiring late, or never, with [`list_matching`](Self::list_matching).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use std::time::{Duration, SystemTime};
    /// use tower_api_key::{key::KeyFormat, manage::ManageError, KeyManager, MemoryStore, NewKey};
    ///
    /// let ninety_days = Duration::from_secs(90 * 24 * 3_600);
    /// let keys = KeyManager::new(MemoryStore::new())
    ///     .format(KeyFormat::new("mesh")?)
    ///     .max_key_lifetime(ninety_days);
    /// let created = keys.create(NewKey::new("ci")).await?;
    /// let expires = created.record.expires_at.expect("an expiry, at the longest");
    /// assert!(expires <= SystemTime::now() + ninety_days);
    ///
    /// let in_a_year = SystemTime::now() + Duration::from_secs(365 * 24 * 3_600);
    /// let refused = keys.create(NewKey::new("deploys").expires_at(in_a_year)).await;
    /// assert!(matches!(refused, Err(ManageError::LifetimeTooLong(max)) if max == ninety_days));
    /// let refused = keys.set_expiry(&created.record.id, None).await;
    /// assert!(matches!(refused, Err(ManageError::LifetimeTooLong(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn max_key_lifetime(mut self, max: Duration) -> Self {
        self.max_key_lifetime = Some(max);
        self
    }

    /// The longest a key may live, if [limited](Self::max_key_lifetime).
    #[cfg(feature = "console")]
    pub(crate) fn lifetime_cap(&self) -> Option<Duration> {
        self.max_key_lifetime
    }

    /// The latest expiry a key may be given now, with [a longest lifetime](Self::max_key_lifetime)
    /// (`None` without one, or when it reaches past what a record keeps). On the precise clock:
    /// an expiry a caller computed as "now plus the longest" a moment before is never refused.
    pub(super) fn latest_expiry(&self) -> Option<(SystemTime, Duration)> {
        let max = self.max_key_lifetime?;
        let latest = SystemTime::now().checked_add(max).filter(|at| keeps(*at))?;
        Some((latest, max))
    }

    /// Refuses expiry `at` (`None`: never) if it is past [the latest](Self::latest_expiry).
    fn check_lifetime(&self, at: Option<SystemTime>) -> Result<(), ManageError> {
        match self.latest_expiry() {
            Some((latest, max)) if at.is_none_or(|at| at > latest) => {
                Err(ManageError::LifetimeTooLong(max))
            }
            _ => Ok(()),
        }
    }

    /// The store.
    pub fn store(&self) -> &A {
        &self.store
    }

    pub(super) fn changed(&self, id: &str) {
        if let Some(cache) = &self.cache {
            cache.key_changed(id);
        }
    }

    fn owner_changed(&self, owner: &str) {
        if let Some(cache) = &self.cache {
            cache.owner_changed(owner);
        }
    }

    /// Issues a key in the manager's format and stores its record. An id the store already has
    /// (signed ids have 8 random characters: about one chance in 400 of any collision among a
    /// million keys) is drawn again, up to four times in all.
    ///
    /// # Errors
    /// [`ManageError::Invalid`] for a bad name or scope, or when the manager has no key format;
    /// [`ManageError::TooManyKeys`] when the key's owner holds
    /// [the most keys](Self::max_keys_per_owner) already; [`ManageError::LifetimeTooLong`] for
    /// an expiry past [the longest lifetime](Self::max_key_lifetime); [`ManageError::Store`]
    /// when the store fails.
    pub async fn create(&self, new: NewKey) -> Result<CreatedKey, ManageError> {
        self.issue(new, 0).await
    }

    /// Issues `new`; with [a most keys per owner](Self::max_keys_per_owner), within that many
    /// and `over` more of its owner's keys.
    async fn issue(&self, mut new: NewKey, over: u32) -> Result<CreatedKey, ManageError> {
        let format = self
            .format
            .as_ref()
            .ok_or(ManageError::Invalid(InvalidKey::NoFormat))?;
        if new.expires_at.is_none() {
            new.expires_at = self.latest_expiry().map(|(latest, _)| latest);
        }
        self.check_lifetime(new.expires_at)?;
        let mut attempts = 1;
        loop {
            let created = new.clone().generate(format).map_err(ManageError::Invalid)?;
            let record = created.record.clone();
            let most = self.max_keys_per_owner.filter(|_| record.owner.is_some());
            let added = match most {
                Some(most) => {
                    let (within, now) = (most.saturating_add(over), crate::clock::now());
                    self.store.create_within(record, within, now).await
                }
                None => self.store.create(record).await.map(|()| true),
            };
            match added {
                Ok(true) => {
                    self.changed(&created.record.id);
                    return Ok(created);
                }
                // Only `create_within` refuses, so `most` is set.
                Ok(false) => return Err(ManageError::TooManyKeys(most.unwrap_or_default())),
                Err(StoreError::Conflict(_)) if attempts < 4 => attempts += 1,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Revokes key `id`; returns whether it exists.
    ///
    /// # Errors
    /// When the store fails; the cache is cleared all the same.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let result = self.store.revoke(id, SystemTime::now()).await;
        self.changed(id);
        result
    }

    /// Deletes key `id`; returns whether it existed.
    ///
    /// # Errors
    /// When the store fails; the cache is cleared all the same.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let result = self.store.delete(id).await;
        self.changed(id);
        result
    }

    /// Disables key `id` (refused with `API_KEY_DISABLED` until enabled again), or with `false`
    /// enables it; returns whether it exists. A revoked key stays revoked.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, NewKey};
    ///
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let keys = KeyManager::new(store).with_cache(layer.handle());
    /// let created = keys.create(NewKey::new("ci")).await?;
    /// assert!(keys.set_disabled(&created.record.id, true).await?);
    /// assert_eq!(keys.show(&created.record.id).await?.unwrap().state, "disabled");
    /// assert!(keys.set_disabled(&created.record.id, false).await?);
    /// assert_eq!(keys.show(&created.record.id).await?.unwrap().state, "active");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// When the store fails; the cache is cleared all the same.
    pub async fn set_disabled(&self, id: &str, disabled: bool) -> Result<bool, StoreError> {
        let result = self.store.set_disabled(id, disabled).await;
        self.changed(id);
        result
    }

    /// Replaces (or, with `None`, clears) key `id`'s credits: a reset or a new budget; returns
    /// whether it exists.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use tower_api_key::{limit::{Credits, RefillPeriod}, ApiKeyLayer, KeyManager, MemoryStore, NewKey};
    ///
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let keys = KeyManager::new(store).with_cache(layer.handle());
    /// let created = keys.create(NewKey::new("trial").credits(Credits::once(10))).await?;
    /// let monthly = Credits::refilled(1_000, RefillPeriod::Monthly { day: 1 })?;
    /// assert!(keys.set_credits(&created.record.id, Some(monthly)).await?);
    /// assert_eq!(keys.top_up(&created.record.id, 500).await?, Some(1_500));
    /// assert_eq!(keys.show(&created.record.id).await?.unwrap().credits.unwrap().remaining, 1_500);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// When the store fails; the cache is cleared all the same.
    pub async fn set_credits(
        &self,
        id: &str,
        credits: Option<Credits>,
    ) -> Result<bool, StoreError> {
        let credits = credits.map(|c| c.starting(unix_seconds(crate::clock::now())));
        let result = self.store.set_credits(id, credits.as_ref()).await;
        self.changed(id);
        result
    }

    /// Adds `amount` to key `id`'s credits in one atomic step; returns what is left now, or
    /// `None` when the key has no credits (or does not exist).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn top_up(&self, id: &str, amount: u64) -> Result<Option<u64>, StoreError> {
        self.store.add_credits(id, amount).await
    }

    /// Replaces (or, with `None`, clears) key `id`'s own limits, which take the place of its
    /// plan's; returns whether it exists.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use tower_api_key::{limit::{Limits, NamedLimit}, ApiKeyLayer, KeyManager, MemoryStore, NewKey};
    ///
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let keys = KeyManager::new(store).with_cache(layer.handle());
    /// let created = keys.create(NewKey::new("ci").plan("free")).await?;
    /// let burst = Limits::FREE.with(NamedLimit::new("burst", 10, 1)?);
    /// assert!(keys.set_limits(&created.record.id, Some(burst.clone())).await?);
    /// assert_eq!(keys.show(&created.record.id).await?.unwrap().limits, Some(burst));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`ManageError::Invalid`] for two named limits of one name; [`ManageError::Store`] when
    /// the store fails (the cache is cleared all the same).
    pub async fn set_limits(&self, id: &str, limits: Option<Limits>) -> Result<bool, ManageError> {
        validate_limits(limits.as_ref()).map_err(ManageError::Invalid)?;
        let result = self.store.set_limits(id, limits.as_ref()).await;
        self.changed(id);
        Ok(result?)
    }

    /// Replaces (or, with `None`, clears) the limits set on owner `owner`, counted for all of its
    /// keys together, besides each key's own limits: a request any of its keys makes is counted
    /// in both, and refused (429, the limit named `owner.minute`, `owner.day`, `owner.<name>`)
    /// when either is spent. Its `dev` keys are never limited.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use tower_api_key::{limit::Limits, ApiKeyLayer, KeyManager, MemoryStore, NewKey};
    ///
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let keys = KeyManager::new(store).with_cache(layer.handle());
    /// keys.create(NewKey::new("ci").owner("acme")).await?;
    /// keys.set_owner_limits("acme", Some(Limits::per_minute(1_000).daily(50_000))).await?;
    /// let acme = keys.owner("acme").await?.unwrap();
    /// assert_eq!(acme.limits, Some(Limits::per_minute(1_000).daily(50_000)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`ManageError::Invalid`] for two named limits of one name; [`ManageError::Store`] when
    /// the store fails (the cache is cleared all the same).
    pub async fn set_owner_limits(
        &self,
        owner: &str,
        limits: Option<Limits>,
    ) -> Result<(), ManageError> {
        validate_limits(limits.as_ref()).map_err(ManageError::Invalid)?;
        let result = self.store.set_owner_limits(owner, limits.as_ref()).await;
        self.owner_changed(owner);
        Ok(result?)
    }

    /// Replaces (or, with `None`, clears) the credits set on owner `owner`, spent by every
    /// request of any of its keys (besides the key's own credits, if it has some; too few in
    /// either and the request is refused with 429 `USAGE_EXCEEDED`, spending neither).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use tower_api_key::{limit::{Credits, RefillPeriod}, ApiKeyLayer, KeyManager, MemoryStore};
    ///
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let keys = KeyManager::new(store).with_cache(layer.handle());
    /// let monthly = Credits::refilled(100_000, RefillPeriod::Monthly { day: 1 })?;
    /// keys.set_owner_credits("acme", Some(monthly)).await?;
    /// assert_eq!(keys.top_up_owner("acme", 5_000).await?, Some(105_000));
    /// assert_eq!(keys.owner("acme").await?.unwrap().credits.unwrap().remaining, 105_000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// When the store fails; the cache is cleared all the same.
    pub async fn set_owner_credits(
        &self,
        owner: &str,
        credits: Option<Credits>,
    ) -> Result<(), StoreError> {
        let credits = credits.map(|c| c.starting(unix_seconds(crate::clock::now())));
        let result = self.store.set_owner_credits(owner, credits.as_ref()).await;
        self.owner_changed(owner);
        result
    }

    /// Adds `amount` to owner `owner`'s credits in one atomic step; returns what is left now,
    /// or `None` when the owner has no credits.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn top_up_owner(&self, owner: &str, amount: u64) -> Result<Option<u64>, StoreError> {
        self.store.add_owner_credits(owner, amount).await
    }

    /// What is set on owner `owner`, with its credits as of now (refilled if a refill period
    /// began since they were last spent), or `None` when nothing is.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn owner(&self, owner: &str) -> Result<Option<OwnerRecord>, StoreError> {
        let now = crate::clock::now();
        Ok(self.store.owner(owner).await?.map(|mut record| {
            record.credits = record.credits.map(|credits| credits.refilled_by(now));
            record
        }))
    }

    /// Replaces the networks key `id` may be used from (empty: anywhere); returns whether it
    /// exists.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, NewKey, network::parse_network};
    ///
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let keys = KeyManager::new(store).with_cache(layer.handle());
    /// let created = keys.create(NewKey::new("ci")).await?;
    /// let office = parse_network("203.0.113.0/24")?;
    /// assert!(keys.set_allowed_networks(&created.record.id, &[office]).await?);
    /// assert_eq!(keys.show(&created.record.id).await?.unwrap().allowed_networks, ["203.0.113.0/24"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// When the store fails; the cache is cleared all the same.
    pub async fn set_allowed_networks(
        &self,
        id: &str,
        networks: &[IpNet],
    ) -> Result<bool, StoreError> {
        let result = self.store.set_allowed_networks(id, networks).await;
        self.changed(id);
        result
    }

    /// Every key, as shown to operators: never the secret or its digest.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, StoreError> {
        self.list_matching(&KeyFilter::new()).await
    }

    /// The keys `filter` lets through now (owner, environment, state, name, age, last use), as
    /// [`list`](Self::list) shows them. The SQL stores filter in the database.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use tower_api_key::store::{KeyFilter, KeyState};
    /// use tower_api_key::{key::KeyFormat, KeyManager, MemoryStore, NewKey};
    ///
    /// let keys = KeyManager::new(MemoryStore::new()).format(KeyFormat::new("mesh")?);
    /// let ci = keys.create(NewKey::new("ci").owner("acme")).await?;
    /// keys.create(NewKey::new("billing").owner("globex")).await?;
    /// keys.revoke(&ci.record.id).await?;
    /// let revoked = keys.list_matching(&KeyFilter::new().owner("acme").state(KeyState::Revoked)).await?;
    /// assert_eq!(revoked.len(), 1);
    /// assert_eq!(revoked[0].name, "ci");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// When the store fails.
    pub async fn list_matching(&self, filter: &KeyFilter) -> Result<Vec<KeyInfo>, StoreError> {
        let now = crate::clock::now();
        let listing = self.store.list_page(filter, now, 0, usize::MAX).await?;
        Ok((listing.records.iter())
            .map(|record| KeyInfo::new(record, self.format.as_ref(), now))
            .collect())
    }

    /// Key `id` as shown to operators, or `None`.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn show(&self, id: &str) -> Result<Option<KeyInfo>, StoreError> {
        let record = self.store.get(id).await?;
        Ok(record.map(|r| KeyInfo::new(&r, self.format.as_ref(), crate::clock::now())))
    }

    /// Renames key `id`; returns whether it exists.
    ///
    /// # Errors
    /// [`ManageError::Invalid`] for an empty or over-long name; [`ManageError::Store`] when the
    /// store fails.
    pub async fn rename(&self, id: &str, name: &str) -> Result<bool, ManageError> {
        validate_name(name).map_err(ManageError::Invalid)?;
        let result = self.store.set_name(id, name).await;
        self.changed(id);
        Ok(result?)
    }

    /// Puts key `id` on plan `plan` (a plan the layer defines, or a key answers 503 until it
    /// does), or with `None` on none; returns whether it exists.
    ///
    /// # Errors
    /// When the store fails; the cache is cleared all the same.
    pub async fn set_plan(&self, id: &str, plan: Option<&str>) -> Result<bool, StoreError> {
        let result = self.store.set_plan(id, plan).await;
        self.changed(id);
        result
    }

    /// Replaces key `id`'s metadata; returns whether it exists.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::collections::BTreeMap;
    /// use std::time::Duration;
    /// use tower_api_key::manage::{ManageError, MAX_METADATA_ENTRIES};
    /// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, NewKey};
    ///
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let keys = KeyManager::new(store).with_cache(layer.handle());
    /// let id = keys.create(NewKey::new("ci")).await?.record.id;
    /// let full: BTreeMap<String, String> =
    ///     (0..MAX_METADATA_ENTRIES).map(|i| (format!("k{i}"), "v".into())).collect();
    /// assert!(keys.set_metadata(&id, &full).await?);
    /// // A rotation still adds `rotated_from` to a key whose metadata is full.
    /// let next = keys.rotate(&id, Duration::ZERO).await?.unwrap();
    /// assert_eq!(next.record.metadata.len(), MAX_METADATA_ENTRIES + 1);
    /// let mut over = full;
    /// over.insert("one-more".into(), "v".into());
    /// assert!(matches!(keys.set_metadata(&id, &over).await, Err(ManageError::Invalid(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`ManageError::Invalid`] for metadata past [`MAX_METADATA_ENTRIES`] or
    /// [`MAX_METADATA_LEN`]; [`ManageError::Store`] when the store fails.
    pub async fn set_metadata(
        &self,
        id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<bool, ManageError> {
        validate_metadata(metadata).map_err(ManageError::Invalid)?;
        let result = self.store.set_metadata(id, metadata).await;
        self.changed(id);
        Ok(result?)
    }

    /// Sets key `id`'s expiry, or with `None` clears it; returns whether it exists. A key past a
    /// new expiry answers `API_KEY_EXPIRED`; one whose expiry moved later works again.
    ///
    /// # Errors
    /// [`ManageError::Invalid`] for a time past the year 9999; [`ManageError::LifetimeTooLong`]
    /// for a time (or, with `None`, no expiry) past [the longest lifetime](Self::max_key_lifetime);
    /// [`ManageError::TooManyKeys`] for a later expiry of an expired key whose owner holds
    /// [the most keys](Self::max_keys_per_owner) already; [`ManageError::Store`] when the store
    /// fails.
    pub async fn set_expiry(&self, id: &str, at: Option<SystemTime>) -> Result<bool, ManageError> {
        validate_expiry(at).map_err(ManageError::Invalid)?;
        self.check_lifetime(at)?;
        self.change(id, &KeyUpdate::new().expires_at(at)).await
    }

    /// With [a longest lifetime](Self::max_key_lifetime), brings every key in circulation
    /// (neither revoked nor expired) that would outlive it within it: keys issued before the
    /// limit was set, or by other means. Each one that expires later, or never, now expires at
    /// the latest time allowed (the lifetime from now), the same for all; keys that expire
    /// sooner keep their expiry. Returns the records changed, as they were, and that time.
    /// Without a longest lifetime, changes nothing.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use std::time::{Duration, SystemTime};
    /// use tower_api_key::{key::KeyFormat, KeyManager, MemoryStore, NewKey};
    ///
    /// let store = MemoryStore::new();
    /// let format = KeyFormat::new("mesh")?;
    /// // Issued while keys could live for ever.
    /// let old = KeyManager::new(store.clone()).format(format.clone());
    /// let legacy = old.create(NewKey::new("legacy")).await?;
    ///
    /// let ninety_days = Duration::from_secs(90 * 24 * 3_600);
    /// let keys = KeyManager::new(store).format(format).max_key_lifetime(ninety_days);
    /// let (changed, at) = keys.bring_within_lifetime().await?.expect("a longest lifetime");
    /// assert_eq!(changed[0].id, legacy.record.id);
    /// assert!(at <= SystemTime::now() + ninety_days);
    /// let shown = keys.show(&legacy.record.id).await?.unwrap();
    /// assert!(shown.expires_at.is_some());
    /// assert!(keys.bring_within_lifetime().await?.unwrap().0.is_empty(), "done once");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`ManageError::Store`] when the store fails; the keys changed before it failed keep
    /// their new expiry (to record each change as it is made, as the console and the
    /// `tower-api-key` tool do in their audit trail, take
    /// [`outliving_lifetime`](Self::outliving_lifetime) and [`set_expiry`](Self::set_expiry)
    /// one key at a time).
    pub async fn bring_within_lifetime(
        &self,
    ) -> Result<Option<(Vec<KeyRecord>, SystemTime)>, ManageError> {
        let Some((outliving, latest)) = self.outliving_lifetime().await? else {
            return Ok(None);
        };
        let mut changed = Vec::new();
        for record in outliving {
            if self.set_expiry(&record.id, Some(latest)).await? {
                changed.push(record);
            }
        }
        Ok(Some((changed, latest)))
    }

    /// With [a longest lifetime](Self::max_key_lifetime), the keys in circulation that would
    /// outlive it (they expire later, or never), and the latest expiry a key may be given now:
    /// what [`bring_within_lifetime`](Self::bring_within_lifetime) changes. `None` without a
    /// longest lifetime.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn outliving_lifetime(
        &self,
    ) -> Result<Option<(Vec<KeyRecord>, SystemTime)>, StoreError> {
        let Some((latest, _)) = self.latest_expiry() else {
            return Ok(None);
        };
        let now = crate::clock::now();
        let filter = KeyFilter::new();
        let mut listing = self.store.list_page(&filter, now, 0, usize::MAX).await?;
        listing
            .records
            .retain(|record| outlives(record, now, latest));
        Ok(Some((listing.records, latest)))
    }

    /// Replaces key `id`'s scopes; returns whether it exists.
    ///
    /// # Errors
    /// [`ManageError::Invalid`] for a malformed scope; [`ManageError::Store`] when the store
    /// fails.
    pub async fn update_scopes(&self, id: &str, scopes: &[String]) -> Result<bool, ManageError> {
        validate_scopes(scopes).map_err(ManageError::Invalid)?;
        let result = self.store.set_scopes(id, scopes).await;
        self.changed(id);
        Ok(result?)
    }

    /// Makes every change of `update` to key `id`, all or none (see
    /// [`KeyStoreAdmin::update_key`]); returns whether it exists. Everything is checked before
    /// anything is written, as each setter checks its own.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use tower_api_key::{manage::ManageError, store::KeyUpdate, ApiKeyLayer, KeyManager, MemoryStore, NewKey};
    ///
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let keys = KeyManager::new(store).with_cache(layer.handle());
    /// let id = keys.create(NewKey::new("ci")).await?.record.id;
    /// assert!(keys.update(&id, &KeyUpdate::new().name("deploy").scopes(["read"])).await?);
    /// // A bad scope refuses the whole update: the name is not changed either.
    /// let bad = KeyUpdate::new().name("other").scopes(["bad scope"]);
    /// assert!(matches!(keys.update(&id, &bad).await, Err(ManageError::Invalid(_))));
    /// assert_eq!(keys.show(&id).await?.unwrap().name, "deploy");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`ManageError::Invalid`], [`ManageError::LifetimeTooLong`] or [`ManageError::TooManyKeys`]
    /// for a change a setter would refuse; [`ManageError::Store`] when the store fails (the cache
    /// is cleared all the same).
    pub async fn update(&self, id: &str, update: &KeyUpdate) -> Result<bool, ManageError> {
        validate_update(update).map_err(ManageError::Invalid)?;
        if let Some(at) = update.expires_at {
            self.check_lifetime(at)?;
        }
        self.change(id, update).await
    }

    /// Makes `update`'s changes to key `id`; with [a most keys per owner](Self::max_keys_per_owner),
    /// none that brings an expired key back into circulation while its owner holds the most
    /// ([`KeyStoreAdmin::update_key_within`]).
    async fn change(&self, id: &str, update: &KeyUpdate) -> Result<bool, ManageError> {
        let result = match (self.max_keys_per_owner, update.expires_at) {
            (Some(most), Some(_)) => {
                let now = crate::clock::now();
                match self.store.update_key_within(id, update, most, now).await {
                    Ok(Some(false)) => return Err(ManageError::TooManyKeys(most)),
                    result => result.map(|done| done.is_some()),
                }
            }
            _ => self.store.update_key(id, update).await,
        };
        self.changed(id);
        Ok(result?)
    }

    /// Rotates key `id`: issues a new key with every setting of the old one (name, scopes,
    /// environment, owner, plan, limits, allowed networks, expiry, metadata, plus
    /// `rotated_from`), and lets the old one work for `grace` more, after which it answers
    /// `API_KEY_EXPIRED` (an earlier expiry it had stays; with
    /// [a longest lifetime](Self::max_key_lifetime), both keys' expiries are brought within
    /// it). Returns the new key, or `None` when there is no key `id`. Only an active key can be
    /// rotated: rotating a revoked, disabled or expired key would bring it back.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use tower_api_key::{ApiKeyLayer, KeyManager, manage::ManageError, MemoryStore, NewKey};
    ///
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let keys = KeyManager::new(store).with_cache(layer.handle());
    /// let old = keys.create(NewKey::new("ci").scopes(["read"])).await?;
    /// let new = keys.rotate(&old.record.id, Duration::from_secs(24 * 3600)).await?.unwrap();
    /// assert_eq!(new.record.scopes, ["read"]);
    /// assert_eq!(new.record.metadata["rotated_from"], old.record.id);
    /// assert!(keys.show(&old.record.id).await?.unwrap().expires_at.is_some());
    ///
    /// keys.revoke(&new.record.id).await?;
    /// let refused = keys.rotate(&new.record.id, Duration::ZERO).await;
    /// assert!(matches!(refused, Err(ManageError::NotActive(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`ManageError::NotActive`] for a key that is not active; [`ManageError::Invalid`] for a
    /// grace period past the year 9999; [`ManageError::TooManyKeys`] when the owner is already
    /// one key over [its most](Self::max_keys_per_owner) (a rotation's grace period still
    /// running); [`ManageError::Store`] when the store fails. If it fails
    /// after the new key was stored, while ending the old one, the new key is deleted again and
    /// the old one works as before: a rotation that fails leaves no live key whose secret no
    /// one was shown (unless the store fails that delete too, which the `tracing` feature
    /// reports as an error event naming the key).
    pub async fn rotate(
        &self,
        id: &str,
        grace: Duration,
    ) -> Result<Option<CreatedKey>, ManageError> {
        let Some(old) = self.store.get(id).await? else {
            return Ok(None);
        };
        let now = crate::clock::now();
        match old.state(now) {
            KeyState::Active => {}
            state => return Err(ManageError::NotActive(state)),
        }
        let grace_ends = now
            .checked_add(grace)
            .filter(|at| keeps(*at))
            .ok_or(ManageError::Invalid(InvalidKey::TimeOutOfRange))?;
        let mut new = NewKey::new(old.name.clone())
            .environment(old.environment)
            .scopes(old.scopes.clone());
        new.owner = old.owner.clone();
        new.metadata = old.metadata.clone();
        new.metadata.insert("rotated_from".into(), old.id.clone());
        new.plan = old.plan.clone();
        new.limits.clone_from(&old.limits);
        new.allowed_networks = old.allowed_networks.clone();
        // What the old key had left, as of now; it keeps its own through the grace period.
        new.credits = old.credits.clone().map(|credits| credits.refilled_by(now));
        // Within the longest lifetime from now, if there is one (without an expiry, `issue`
        // gives the successor the longest); the old key's grace ends within it too.
        let latest = self.latest_expiry().map(|(latest, _)| latest);
        let within = |at: SystemTime| latest.map_or(at, |latest| at.min(latest));
        new.expires_at = old.expires_at.map(within);
        // The successor replaces the old key, which works on through its grace period: one key
        // over the owner's most, no more (else rotations with long graces would pile up keys).
        let created = self.issue(new, 1).await?;
        let expires = within(old.expires_at.map_or(grace_ends, |at| at.min(grace_ends)));
        let result = self.store.set_expiry(id, Some(expires)).await;
        self.changed(id);
        if let Err(error) = result {
            // The old key keeps working as it did; its successor, whose secret no one will
            // see, is taken back (if the store lets it) rather than left live.
            let successor = &created.record.id;
            if let Err(left) = self.store.delete(successor).await {
                crate::trace::rotation_left_key(successor, &left);
            }
            self.changed(successor);
            return Err(error.into());
        }
        Ok(Some(created))
    }
}

/// What [`rename`](KeyManager::rename), [`update_scopes`](KeyManager::update_scopes),
/// [`set_metadata`](KeyManager::set_metadata), [`set_expiry`](KeyManager::set_expiry) and
/// [`set_limits`](KeyManager::set_limits) would refuse of `update`'s changes.
fn validate_update(update: &KeyUpdate) -> Result<(), InvalidKey> {
    update.name.as_deref().map_or(Ok(()), validate_name)?;
    validate_scopes(update.scopes.as_deref().unwrap_or_default())?;
    update.metadata.as_ref().map_or(Ok(()), validate_metadata)?;
    validate_expiry(update.expires_at.flatten())?;
    validate_limits(update.limits.as_ref().and_then(Option::as_ref))
}

/// Whether `record` is in circulation at `now` and expires after `latest`, or never: a key
/// past the longest lifetime, which [`KeyManager::bring_within_lifetime`] and
/// [`KeyManager::import`] bring within it.
pub(super) fn outlives(record: &KeyRecord, now: SystemTime, latest: SystemTime) -> bool {
    record.in_circulation(now) && record.expires_at.is_none_or(|at| at > latest)
}

/// Refuses a record with a field [`KeyManager::create`] refuses: its name, owner, scopes,
/// metadata or limits, or a time past the year 9999.
pub(super) fn validate_record(record: &KeyRecord) -> Result<(), InvalidKey> {
    validate_name(&record.name)?;
    let owner = record.owner.as_deref();
    if owner.is_some_and(|owner| !is_valid_name(owner)) {
        return Err(InvalidKey::Owner);
    }
    validate_scopes(&record.scopes)?;
    validate_metadata(&record.metadata)?;
    validate_limits(record.limits.as_ref())?;
    let times = [record.expires_at, record.revoked_at, record.last_used_at];
    [Some(record.created_at)]
        .into_iter()
        .chain(times)
        .try_for_each(validate_expiry)
}

/// Refuses a name that [`is_valid_name`] refuses.
fn validate_name(name: &str) -> Result<(), InvalidKey> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(InvalidKey::Name)
    }
}

/// Refuses metadata with too many entries (`rotated_from`, which a rotation adds, not counted),
/// an entry too long, or a key with a character [`is_hidden_control`] refuses.
fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<(), InvalidKey> {
    let refused = |(key, value): (&String, &String)| {
        key.is_empty()
            || key.len() > MAX_METADATA_LEN
            || value.len() > MAX_METADATA_LEN
            || key.chars().any(is_hidden_control)
    };
    let entries = metadata.len() - usize::from(metadata.contains_key("rotated_from"));
    if entries > MAX_METADATA_ENTRIES || metadata.iter().any(refused) {
        return Err(InvalidKey::Metadata);
    }
    Ok(())
}

/// Refuses a malformed scope.
fn validate_scopes(scopes: &[String]) -> Result<(), InvalidKey> {
    for scope in scopes {
        validate_scope(scope).map_err(InvalidKey::Scope)?;
    }
    Ok(())
}

/// Refuses a time past the year 9999.
fn validate_expiry(at: Option<SystemTime>) -> Result<(), InvalidKey> {
    match at {
        Some(at) if !keeps(at) => Err(InvalidKey::TimeOutOfRange),
        _ => Ok(()),
    }
}

/// Refuses `limits` with two named limits of one name.
fn validate_limits(limits: Option<&Limits>) -> Result<(), InvalidKey> {
    limits.map_or(Ok(()), |limits| {
        limits.validate().map_err(InvalidKey::Limits)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyStore;
    use crate::MemoryStore;

    /// A manager built without a layer or a format cannot issue keys, and says how to give it
    /// one; it still manages the keys that exist.
    #[tokio::test]
    async fn a_manager_without_a_format_says_how_to_give_it_one() {
        let store = MemoryStore::new();
        let keys = KeyManager::new(store.clone());
        let refused = keys.create(NewKey::new("ci")).await.unwrap_err();
        assert!(matches!(
            refused,
            ManageError::Invalid(InvalidKey::NoFormat)
        ));
        assert!(refused
            .to_string()
            .contains(".format(KeyFormat::new(prefix)?)"));
        let format = KeyFormat::new("mesh").unwrap();
        let created = KeyManager::new(store)
            .format(format)
            .create(NewKey::new("ci"))
            .await;
        assert!(keys.revoke(&created.unwrap().record.id).await.unwrap());
    }

    /// A name, an owner or a metadata key with a control character or a bidirectional override
    /// is refused wherever it is given; a metadata value may hold any text, and names may hold
    /// any other character.
    #[tokio::test]
    async fn names_with_control_characters_are_refused() {
        let format = KeyFormat::new("mesh").unwrap();
        let keys = KeyManager::new(MemoryStore::new()).format(format.clone());
        for bad in [
            "ops\u{1b}[31m",
            "bell\u{7}",
            "csi\u{9b}",
            "flip\u{202e}",
            "two\nlines",
        ] {
            let refused = NewKey::new(bad).generate(&format);
            assert_eq!(refused.unwrap_err(), InvalidKey::Name, "{bad:?}");
            let refused = NewKey::new("ok").owner(bad).generate(&format);
            assert_eq!(refused.unwrap_err(), InvalidKey::Owner, "{bad:?}");
            let refused = NewKey::new("ok").metadata(bad, "v").generate(&format);
            assert_eq!(refused.unwrap_err(), InvalidKey::Metadata, "{bad:?}");
        }
        let created = keys
            .create(
                NewKey::new("Bob's key: café ☕")
                    .owner("acme")
                    .metadata("note", "line one\nline two"),
            )
            .await
            .unwrap();
        let id = &created.record.id;
        let renamed = keys.rename(id, "tab\there").await;
        assert!(matches!(
            renamed,
            Err(ManageError::Invalid(InvalidKey::Name))
        ));
        let update = KeyUpdate::new().name("isolate\u{2066}");
        let updated = keys.update(id, &update).await;
        assert!(matches!(
            updated,
            Err(ManageError::Invalid(InvalidKey::Name))
        ));
        let shown = keys.show(id).await.unwrap().unwrap();
        assert_eq!(shown.name, "Bob's key: café ☕");
        assert_eq!(shown.metadata["note"], "line one\nline two");
    }

    const DAY: Duration = Duration::from_secs(24 * 3_600);

    /// With a longest lifetime, no key is issued, set or rotated to expire later than that
    /// from now, or never; a refused change changes nothing.
    #[tokio::test]
    async fn no_key_outlives_the_longest_lifetime() {
        let store = MemoryStore::new();
        let format = KeyFormat::new("mesh").unwrap();
        let unlimited = KeyManager::new(store.clone()).format(format);
        let keys = unlimited.clone().max_key_lifetime(30 * DAY);
        let too_long =
            |result| matches!(result, Err(ManageError::LifetimeTooLong(max)) if max == 30 * DAY);

        // Issued without an expiry: the longest.
        let before = SystemTime::now();
        let created = keys.create(NewKey::new("ci")).await.unwrap();
        let expires = created.record.expires_at.unwrap();
        assert!(before + 30 * DAY <= expires && expires <= SystemTime::now() + 30 * DAY);
        let id = &created.record.id;

        // The longest exactly passes; a second more is refused, and nothing is stored.
        let edge = SystemTime::now() + 30 * DAY;
        keys.create(NewKey::new("edge").expires_at(edge))
            .await
            .unwrap();
        let late =
            NewKey::new("late").expires_at(SystemTime::now() + 30 * DAY + Duration::from_secs(1));
        assert!(too_long(keys.create(late).await.map(|_| ())));
        assert_eq!(keys.list().await.unwrap().len(), 2);

        // Setting an expiry: never, or past the longest, is refused; within it passes.
        assert!(too_long(keys.set_expiry(id, None).await.map(|_| ())));
        assert!(too_long(
            keys.set_expiry(id, Some(SystemTime::now() + 31 * DAY))
                .await
                .map(|_| ())
        ));
        let update = KeyUpdate {
            name: Some("other".into()),
            expires_at: Some(None),
            ..KeyUpdate::new()
        };
        assert!(too_long(keys.update(id, &update).await.map(|_| ())));
        let shown = store.get(id).await.unwrap().unwrap();
        assert_eq!(
            (shown.name.as_str(), shown.expires_at),
            ("ci", Some(expires))
        );
        let soon = SystemTime::now() + DAY;
        assert!(keys.set_expiry(id, Some(soon)).await.unwrap());
        let update = KeyUpdate {
            expires_at: Some(Some(soon + DAY)),
            ..KeyUpdate::new()
        };
        assert!(keys.update(id, &update).await.unwrap());

        // A rotation keeps an expiry within the longest, and brings one past it (a key issued
        // before the limit, without an expiry) within it.
        let rotated = keys.rotate(id, Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(
            unix_seconds(rotated.record.expires_at.unwrap()),
            unix_seconds(soon + DAY)
        );
        let old = unlimited.create(NewKey::new("old")).await.unwrap();
        assert_eq!(old.record.expires_at, None);
        let before = SystemTime::now();
        let rotated = keys.rotate(&old.record.id, DAY).await.unwrap().unwrap();
        let expires = rotated.record.expires_at.unwrap();
        assert!(before + 30 * DAY <= expires && expires <= SystemTime::now() + 30 * DAY);
        // A grace period longer than the longest lifetime ends within it.
        let old = unlimited
            .create(NewKey::new("older"))
            .await
            .unwrap()
            .record
            .id;
        let before = SystemTime::now();
        keys.rotate(&old, 100 * DAY).await.unwrap().unwrap();
        let ended = store.get(&old).await.unwrap().unwrap().expires_at.unwrap();
        assert!(before + 30 * DAY <= ended && ended <= SystemTime::now() + 30 * DAY);

        // Without the limit, the same changes pass.
        assert!(unlimited.set_expiry(id, None).await.unwrap());
    }

    /// Keys that would outlive a longest lifetime set after they were issued are brought within
    /// it, each to the same latest expiry; keys that expire sooner, and keys out of circulation,
    /// are left as they are.
    #[tokio::test]
    async fn keys_issued_before_the_longest_lifetime_are_brought_within_it() {
        let store = MemoryStore::new();
        let unlimited = KeyManager::new(store.clone()).format(KeyFormat::new("mesh").unwrap());
        assert!(unlimited.bring_within_lifetime().await.unwrap().is_none());
        let now = SystemTime::now();
        let issue = |name: &'static str, expires_at: Option<SystemTime>| {
            let unlimited = unlimited.clone();
            async move {
                let mut new = NewKey::new(name);
                new.expires_at = expires_at;
                unlimited.create(new).await.unwrap().record.id
            }
        };
        let never = issue("never", None).await;
        let late = issue("late", Some(now + 365 * DAY)).await;
        let soon = issue("soon", Some(now + DAY)).await;
        let disabled = issue("disabled", None).await;
        unlimited.set_disabled(&disabled, true).await.unwrap();
        let revoked = issue("revoked", None).await;
        unlimited.revoke(&revoked).await.unwrap();
        let expired = issue("expired", Some(now + Duration::from_secs(1))).await;
        store.set_expiry(&expired, Some(now - DAY)).await.unwrap();

        let keys = unlimited.clone().max_key_lifetime(30 * DAY);
        let before = SystemTime::now();
        let (changed, at) = keys.bring_within_lifetime().await.unwrap().unwrap();
        assert!(before + 30 * DAY <= at && at <= SystemTime::now() + 30 * DAY);
        let mut ids: Vec<_> = changed.iter().map(|r| r.id.clone()).collect();
        ids.sort();
        let mut expected = vec![never.clone(), late.clone(), disabled.clone()];
        expected.sort();
        assert_eq!(ids, expected);
        assert_eq!(
            changed.iter().find(|r| r.id == late).unwrap().expires_at,
            Some(now + 365 * DAY),
            "as it was"
        );
        let expiry = |id: String| {
            let store = store.clone();
            async move {
                store
                    .get(&id)
                    .await
                    .unwrap()
                    .unwrap()
                    .expires_at
                    .map(unix_seconds)
            }
        };
        for id in [never, late, disabled] {
            assert_eq!(expiry(id).await, Some(unix_seconds(at)));
        }
        assert_eq!(expiry(soon).await, Some(unix_seconds(now + DAY)));
        assert_eq!(expiry(revoked).await, None);
        assert_eq!(expiry(expired).await, Some(unix_seconds(now - DAY)));
        assert!(keys
            .bring_within_lifetime()
            .await
            .unwrap()
            .unwrap()
            .0
            .is_empty());
    }

    /// How the refusal says the longest lifetime.
    #[test]
    fn the_longest_lifetime_is_said_in_days_hours_or_seconds() {
        let said = |secs| ManageError::LifetimeTooLong(Duration::from_secs(secs)).to_string();
        assert!(
            said(90 * 86_400).contains("at most 90 days from now"),
            "{}",
            said(90 * 86_400)
        );
        assert!(said(86_400).contains("at most 1 day from"));
        assert!(said(36 * 3_600).contains("at most 36 hours from"));
        assert!(said(90).contains("at most 90 seconds from"));
    }
}
