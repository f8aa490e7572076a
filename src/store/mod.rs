//! Where keys live: the [`KeyStore`] trait a layer reads from, the optional [`KeyStoreAdmin`]
//! side for stores that can write, and the in-memory [`MemoryStore`].
//!
//! A store is small on purpose. [`KeyStore::get`] returns the record for a key id, `Ok(None)` when
//! there is none, and `Err` when it cannot tell. The layer never lets a request through on an
//! error: it answers 503 `KEY_STORE_UNAVAILABLE`.
//!
//! # Writing a store
//!
//! ```
//! use std::collections::HashMap;
//! use tower_api_key::{async_trait, KeyRecord, KeyStore, StoreError};
//!
//! /// Keys loaded once from configuration.
//! struct StaticStore(HashMap<String, KeyRecord>);
//!
//! #[async_trait]
//! impl KeyStore for StaticStore {
//!     async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
//!         Ok(self.0.get(id).cloned())
//!     }
//! }
//! ```

mod memory;
mod record;

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

pub use memory::MemoryStore;
pub use record::{KeyRecord, KeyState};

/// A source of key records, looked up by public key id.
///
/// Implementations are `Send + Sync + 'static` and are called only on a cache miss.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The record for key id `id`, or `None` when there is no such key.
    ///
    /// # Errors
    /// When the store cannot tell (unreachable, timed out, corrupt). The request is refused with
    /// 503, and nothing is cached.
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;
}

/// The writing side of a store, for stores that can change their keys.
///
/// Use it through [`KeyManager`](crate::KeyManager), which also clears the layer's cache.
#[async_trait]
pub trait KeyStoreAdmin: KeyStore {
    /// Adds a new key.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when a key with this id exists; any other error of the backend.
    async fn create(&self, record: KeyRecord) -> Result<(), StoreError>;

    /// Marks key `id` revoked at `at`. Returns whether such a key exists. Revoking twice keeps
    /// the first time.
    ///
    /// # Errors
    /// When the backend fails.
    async fn revoke(&self, id: &str, at: SystemTime) -> Result<bool, StoreError>;

    /// Removes key `id`. Returns whether it existed.
    ///
    /// # Errors
    /// When the backend fails.
    async fn delete(&self, id: &str) -> Result<bool, StoreError>;

    /// Every key, ordered by creation time then id. Records hold digests, never secrets.
    ///
    /// # Errors
    /// When the backend fails.
    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError>;
}

/// The error of a store.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not answer: unreachable, timed out, failed.
    Unavailable(Box<dyn StdError + Send + Sync>),
    /// A key with this id already exists.
    Conflict(String),
}

impl StoreError {
    /// A [`StoreError::Unavailable`] from any error.
    pub fn unavailable(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        StoreError::Unavailable(error.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(e) => write!(f, "key store unavailable: {e}"),
            StoreError::Conflict(id) => write!(f, "a key with id `{id}` already exists"),
        }
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            StoreError::Unavailable(e) => Some(&**e),
            StoreError::Conflict(_) => None,
        }
    }
}

#[async_trait]
impl<T: KeyStore + ?Sized> KeyStore for Arc<T> {
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        (**self).get(id).await
    }
}

#[async_trait]
impl<T: KeyStoreAdmin + ?Sized> KeyStoreAdmin for Arc<T> {
    async fn create(&self, record: KeyRecord) -> Result<(), StoreError> {
        (**self).create(record).await
    }
    async fn revoke(&self, id: &str, at: SystemTime) -> Result<bool, StoreError> {
        (**self).revoke(id, at).await
    }
    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        (**self).delete(id).await
    }
    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        (**self).list().await
    }
}
