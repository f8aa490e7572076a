//! The in-memory store: the embedded default, for demos, tests and small fixed key sets.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use ipnet::IpNet;

use crate::limit::{Credits, Limits, Spend};

use super::{KeyRecord, KeyStore, KeyStoreAdmin, StoreError, UsageUpdate};

/// Keys held in this process's memory. Cloning shares the same keys.
///
/// Nothing survives a restart. `Debug` prints only the number of keys.
///
/// ```
/// # tokio_test_block(async {
/// use tower_api_key::{Environment, store::KeyRecord, store::KeyStore, store::KeyStoreAdmin, MemoryStore, key::SecretDigest};
///
/// let store = MemoryStore::new();
/// store.create(KeyRecord::new("id1", SecretDigest::of(b"s"), "ci", Environment::Live)).await?;
/// assert_eq!(store.get("id1").await?.unwrap().name, "ci");
/// assert!(store.get("nope").await?.is_none());
/// # Ok::<(), tower_api_key::store::StoreError>(())
/// # });
/// # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    keys: Arc<RwLock<HashMap<String, KeyRecord>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, KeyRecord>> {
        // A panic while holding the lock cannot leave a map half-written (every write is one
        // insert or remove), so a poisoned lock is still consistent.
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, KeyRecord>> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes key `id`'s record with `change`; whether the key exists.
    fn update(&self, id: &str, change: impl FnOnce(&mut KeyRecord)) -> Result<bool, StoreError> {
        Ok(self.write().get_mut(id).map(change).is_some())
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.read().len())
            .finish()
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.read().get(id).cloned())
    }

    async fn spend_credits(&self, id: &str, cost: u32, period: u32) -> Result<Spend, StoreError> {
        let mut keys = self.write();
        let Some(credits) = keys.get_mut(id).and_then(|r| r.credits.as_mut()) else {
            return Ok(Spend::NoCredits);
        };
        let (remaining, period) = credits.as_of_period(period);
        if remaining < u64::from(cost.max(1)) {
            return Ok(Spend::Exhausted);
        }
        credits.remaining = remaining - u64::from(cost);
        credits.period = period;
        Ok(Spend::Spent {
            remaining: credits.remaining,
        })
    }
}

#[async_trait]
impl KeyStoreAdmin for MemoryStore {
    async fn create(&self, record: KeyRecord) -> Result<(), StoreError> {
        let mut keys = self.write();
        if keys.contains_key(&record.id) {
            return Err(StoreError::Conflict(record.id));
        }
        keys.insert(record.id.clone(), record);
        Ok(())
    }

    async fn revoke(&self, id: &str, at: SystemTime) -> Result<bool, StoreError> {
        self.update(id, |record| {
            record.revoked_at.get_or_insert(at);
        })
    }

    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.write().remove(id).is_some())
    }

    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut all: Vec<KeyRecord> = self.read().values().cloned().collect();
        all.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(all)
    }

    async fn set_scopes(&self, id: &str, scopes: &[String]) -> Result<bool, StoreError> {
        self.update(id, |record| record.scopes = scopes.to_vec())
    }

    async fn set_expiry(&self, id: &str, at: Option<SystemTime>) -> Result<bool, StoreError> {
        self.update(id, |record| record.expires_at = at)
    }

    async fn set_disabled(&self, id: &str, disabled: bool) -> Result<bool, StoreError> {
        self.update(id, |record| record.disabled = disabled)
    }

    async fn set_credits(&self, id: &str, credits: Option<&Credits>) -> Result<bool, StoreError> {
        self.update(id, |record| record.credits = credits.cloned())
    }

    async fn add_credits(&self, id: &str, amount: u64) -> Result<Option<u64>, StoreError> {
        Ok(self
            .write()
            .get_mut(id)
            .and_then(|record| record.credits.as_mut())
            .map(|credits| {
                credits.remaining = credits.remaining.saturating_add(amount);
                credits.remaining
            }))
    }

    async fn set_limits(&self, id: &str, limits: Option<&Limits>) -> Result<bool, StoreError> {
        self.update(id, |record| record.limits = limits.cloned())
    }

    async fn set_allowed_networks(&self, id: &str, networks: &[IpNet]) -> Result<bool, StoreError> {
        self.update(id, |record| record.allowed_networks = networks.to_vec())
    }

    async fn record_usage(&self, batch: &[UsageUpdate]) -> Result<(), StoreError> {
        let mut keys = self.write();
        for update in batch {
            if let Some(record) = keys.get_mut(&update.id) {
                record.requests += update.requests;
                record.last_used_at = record.last_used_at.max(Some(update.last_used_at));
            }
        }
        Ok(())
    }
}
