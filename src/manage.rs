//! Issuing and withdrawing keys: [`NewKey`] describes a key, [`KeyManager`] creates, revokes,
//! deletes and lists them in a [`KeyStoreAdmin`] and keeps the layer's cache in step.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use crate::key::{Environment, KeyFormat, PlaintextKey};
use crate::layer::ApiKeyHandle;
use crate::limit::Limits;
use crate::scope::{validate_scope, InvalidScope};
use crate::store::{KeyRecord, KeyStoreAdmin, StoreError};

/// The longest key name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// A key to be issued: its name, environment, scopes and the rest of its record.
///
/// ```
/// use tower_api_key::{Environment, KeyFormat, NewKey};
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
pub struct NewKey {
    name: String,
    environment: Environment,
    scopes: Vec<String>,
    owner: Option<String>,
    expires_at: Option<SystemTime>,
    metadata: BTreeMap<String, String>,
    plan: Option<String>,
    limits: Option<Limits>,
}

/// A key just issued: the plaintext to show once, and its stored record.
#[derive(Debug)]
#[non_exhaustive]
pub struct CreatedKey {
    /// The whole key: show it to its owner once.
    pub key: PlaintextKey,
    /// What the store keeps.
    pub record: KeyRecord,
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

    /// Generates the key offline: the plaintext and the record to store, for people with a store
    /// of their own.
    ///
    /// # Errors
    /// [`InvalidKey`] for an empty or over-long name or a malformed scope.
    pub fn generate(self, format: &KeyFormat) -> Result<CreatedKey, InvalidKey> {
        if self.name.trim().is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(InvalidKey::Name);
        }
        for scope in &self.scopes {
            validate_scope(scope).map_err(InvalidKey::Scope)?;
        }
        let generated = format.generate(self.environment);
        let mut record =
            KeyRecord::new(generated.id, generated.digest, self.name, self.environment);
        record.scopes = self.scopes;
        record.owner = self.owner;
        record.expires_at = self.expires_at;
        record.metadata = self.metadata;
        record.plan = self.plan;
        record.limits = self.limits;
        Ok(CreatedKey {
            key: generated.key,
            record,
        })
    }
}

/// What makes a [`NewKey`] invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidKey {
    /// The name is empty or longer than [`MAX_NAME_LEN`].
    Name,
    /// A scope is malformed.
    Scope(InvalidScope),
}

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidKey::Name => write!(f, "a key name is 1 to {MAX_NAME_LEN} bytes, not blank"),
            InvalidKey::Scope(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for InvalidKey {}

/// The error of a [`KeyManager`] operation.
#[derive(Debug)]
#[non_exhaustive]
pub enum ManageError {
    /// The key description was invalid.
    Invalid(InvalidKey),
    /// The store failed.
    Store(StoreError),
}

impl fmt::Display for ManageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManageError::Invalid(e) => e.fmt(f),
            ManageError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ManageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ManageError::Invalid(e) => Some(e),
            ManageError::Store(e) => Some(e),
        }
    }
}

impl From<StoreError> for ManageError {
    fn from(error: StoreError) -> Self {
        ManageError::Store(error)
    }
}

/// Creates, revokes, deletes and lists keys in a store, and clears the layer's cache after each
/// change, so a revoke takes effect on this replica's very next request.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, NewKey};
///
/// let store = MemoryStore::new();
/// let layer = ApiKeyLayer::new("mesh", store.clone())?;
/// let keys = KeyManager::new(store, layer.handle());
///
/// let created = keys.create(NewKey::new("ci").scopes(["read"])).await?;
/// println!("your key, shown once: {}", created.key.expose_secret());
/// assert_eq!(keys.list().await?.len(), 1);
/// assert!(keys.revoke(&created.record.id).await?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct KeyManager<A> {
    store: A,
    handle: ApiKeyHandle,
}

impl<A: KeyStoreAdmin> KeyManager<A> {
    /// A manager of the keys in `store`, clearing the cache of the layer behind `handle`.
    pub fn new(store: A, handle: ApiKeyHandle) -> Self {
        KeyManager { store, handle }
    }

    /// Issues a key in the layer's format and stores its record.
    ///
    /// # Errors
    /// [`ManageError::Invalid`] for a bad name or scope; [`ManageError::Store`] when the store
    /// fails.
    pub async fn create(&self, new: NewKey) -> Result<CreatedKey, ManageError> {
        let created = new
            .generate(self.handle.format())
            .map_err(ManageError::Invalid)?;
        self.store.create(created.record.clone()).await?;
        self.handle.invalidate(&created.record.id).await;
        Ok(created)
    }

    /// Revokes key `id`; returns whether it exists.
    ///
    /// # Errors
    /// When the store fails; the cache is cleared all the same.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let result = self.store.revoke(id, SystemTime::now()).await;
        self.handle.invalidate(id).await;
        result
    }

    /// Deletes key `id`; returns whether it existed.
    ///
    /// # Errors
    /// When the store fails; the cache is cleared all the same.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let result = self.store.delete(id).await;
        self.handle.invalidate(id).await;
        result
    }

    /// Every key's record: digests, never secrets.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.store.list().await
    }
}
