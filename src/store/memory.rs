//! The in-memory store: the embedded default, for demos, tests and small fixed key sets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use ipnet::IpNet;

use crate::limit::{Charge, Credits, Limits, Spend};

use super::{
    AuditArchive, AuditQuery, AuditRow, KeyRecord, KeyStore, KeyStoreAdmin, KeyUpdate, OwnerRecord,
    StoreError, UsageArchive, UsageRange, UsageRow, UsageUpdate, AUDIT_KEPT,
};

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
    data: Arc<RwLock<Data>>,
}

/// The keys, and what is set on owners, under one lock: spending a key's and its owner's credits
/// is one step.
#[derive(Default)]
struct Data {
    keys: HashMap<String, KeyRecord>,
    owners: HashMap<String, OwnerRecord>,
    /// Usage rows by resolution, start, key and replica.
    usage: BTreeMap<(u32, u64, String, String), UsageRow>,
    /// The console's audit trail, oldest first, at most `AUDIT_KEPT` rows.
    audit: VecDeque<AuditRow>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Data> {
        // A panic while holding the lock cannot leave a map half-written (every write is one
        // insert or remove, or checks everything before it writes), so a poisoned lock is still
        // consistent.
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Data> {
        self.data.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes key `id`'s record with `change`; whether the key exists.
    fn update(&self, id: &str, change: impl FnOnce(&mut KeyRecord)) -> Result<bool, StoreError> {
        Ok(self.write().keys.get_mut(id).map(change).is_some())
    }

    /// Changes what is set on `owner` with `change`, dropping a record left empty.
    fn update_owner(&self, owner: &str, change: impl FnOnce(&mut OwnerRecord)) {
        let mut data = self.write();
        let record = data
            .owners
            .entry(owner.to_owned())
            .or_insert_with(|| OwnerRecord::new(owner));
        change(record);
        if record.is_empty() {
            data.owners.remove(owner);
        }
    }
}

/// Adds `amount` to `credits`, if there are any: what is left now.
fn top_up(credits: Option<&mut Credits>, amount: u64) -> Option<u64> {
    credits.map(|credits| {
        credits.remaining = credits.remaining.saturating_add(amount);
        credits.remaining
    })
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.read().keys.len())
            .finish()
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.read().keys.get(id).cloned())
    }

    async fn owner(&self, owner: &str) -> Result<Option<OwnerRecord>, StoreError> {
        Ok(self.read().owners.get(owner).cloned())
    }

    async fn spend_credits(&self, charge: &Charge<'_>) -> Result<Spend, StoreError> {
        let mut data = self.write();
        let Data { keys, owners, .. } = &mut *data;
        let key = charge.key.and_then(|account| {
            let credits = keys.get_mut(account.id)?.credits.as_mut()?;
            Some((credits, account.period))
        });
        let owner = charge.owner.and_then(|account| {
            let credits = owners.get_mut(account.id)?.credits.as_mut()?;
            Some((credits, account.period))
        });
        let mut accounts: Vec<_> = key.into_iter().chain(owner).collect();
        // Everything checked before anything is spent.
        let mut after = Vec::with_capacity(accounts.len());
        for (credits, period) in &accounts {
            match credits.after_spending(*period, charge.cost) {
                Some(left) => after.push(left),
                None => return Ok(Spend::Exhausted),
            }
        }
        let mut fewest = None;
        for ((credits, _), (remaining, period)) in accounts.iter_mut().zip(after) {
            credits.remaining = remaining;
            credits.period = period;
            fewest = Some(fewest.map_or(remaining, |f: u64| f.min(remaining)));
        }
        Ok(fewest.map_or(Spend::NoCredits, |remaining| Spend::Spent { remaining }))
    }
}

/// Whether `owner` has `max` keys in circulation at `now` among `keys`, or more.
fn full(keys: &HashMap<String, KeyRecord>, owner: &str, max: u32, now: SystemTime) -> bool {
    let held = (keys.values())
        .filter(|key| key.owner.as_deref() == Some(owner) && key.in_circulation(now))
        .count();
    held >= usize::try_from(max).unwrap_or(usize::MAX)
}

/// Adds `record` to `keys`, unless its id is taken.
fn add(keys: &mut HashMap<String, KeyRecord>, record: KeyRecord) -> Result<(), StoreError> {
    if keys.contains_key(&record.id) {
        return Err(StoreError::Conflict(record.id));
    }
    keys.insert(record.id.clone(), record);
    Ok(())
}

#[async_trait]
impl KeyStoreAdmin for MemoryStore {
    async fn create(&self, record: KeyRecord) -> Result<(), StoreError> {
        add(&mut self.write().keys, record)
    }

    /// Counts and adds under the store's lock.
    async fn create_within(
        &self,
        record: KeyRecord,
        max: u32,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let keys = &mut self.write().keys;
        if record
            .owner
            .as_ref()
            .is_some_and(|owner| full(keys, owner, max, now))
        {
            return Ok(false);
        }
        add(keys, record).map(|()| true)
    }

    /// Checks and changes under the store's lock.
    async fn update_key_within(
        &self,
        id: &str,
        update: &KeyUpdate,
        max: u32,
        now: SystemTime,
    ) -> Result<Option<bool>, StoreError> {
        let keys = &mut self.write().keys;
        let Some(record) = keys.get(id) else {
            return Ok(None);
        };
        let back = update.brings_back(record, now);
        if let (true, Some(owner)) = (back, record.owner.clone()) {
            if full(keys, &owner, max, now) {
                return Ok(Some(false));
            }
        }
        if let Some(record) = keys.get_mut(id) {
            update.apply_to(record);
        }
        Ok(Some(true))
    }

    async fn revoke(&self, id: &str, at: SystemTime) -> Result<bool, StoreError> {
        self.update(id, |record| {
            record.revoked_at.get_or_insert(at);
        })
    }

    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.write().keys.remove(id).is_some())
    }

    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut all: Vec<KeyRecord> = self.read().keys.values().cloned().collect();
        all.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(all)
    }

    async fn owners(&self) -> Result<Vec<OwnerRecord>, StoreError> {
        // An owner left with nothing set is dropped (`update_owner`).
        let mut owners: Vec<OwnerRecord> = self.read().owners.values().cloned().collect();
        owners.sort_by(|a, b| a.owner.cmp(&b.owner));
        Ok(owners)
    }

    async fn set_scopes(&self, id: &str, scopes: &[String]) -> Result<bool, StoreError> {
        self.update(id, |record| record.scopes = scopes.to_vec())
    }

    async fn set_name(&self, id: &str, name: &str) -> Result<bool, StoreError> {
        self.update(id, |record| name.clone_into(&mut record.name))
    }

    async fn set_plan(&self, id: &str, plan: Option<&str>) -> Result<bool, StoreError> {
        self.update(id, |record| record.plan = plan.map(str::to_owned))
    }

    async fn set_metadata(
        &self,
        id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError> {
        self.update(id, |record| metadata.clone_into(&mut record.metadata))
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
        Ok(top_up(
            self.write()
                .keys
                .get_mut(id)
                .and_then(|r| r.credits.as_mut()),
            amount,
        ))
    }

    async fn set_limits(&self, id: &str, limits: Option<&Limits>) -> Result<bool, StoreError> {
        self.update(id, |record| record.limits = limits.cloned())
    }

    async fn set_owner_limits(
        &self,
        owner: &str,
        limits: Option<&Limits>,
    ) -> Result<(), StoreError> {
        self.update_owner(owner, |record| record.limits = limits.cloned());
        Ok(())
    }

    async fn set_owner_credits(
        &self,
        owner: &str,
        credits: Option<&Credits>,
    ) -> Result<(), StoreError> {
        self.update_owner(owner, |record| record.credits = credits.cloned());
        Ok(())
    }

    async fn add_owner_credits(&self, owner: &str, amount: u64) -> Result<Option<u64>, StoreError> {
        Ok(top_up(
            self.write()
                .owners
                .get_mut(owner)
                .and_then(|r| r.credits.as_mut()),
            amount,
        ))
    }

    async fn set_allowed_networks(&self, id: &str, networks: &[IpNet]) -> Result<bool, StoreError> {
        self.update(id, |record| record.allowed_networks = networks.to_vec())
    }

    async fn update_key(&self, id: &str, update: &KeyUpdate) -> Result<bool, StoreError> {
        self.update(id, |record| update.apply_to(record))
    }

    async fn record_usage(&self, batch: &[UsageUpdate]) -> Result<(), StoreError> {
        let keys = &mut self.write().keys;
        for update in batch {
            if let Some(record) = keys.get_mut(&update.id) {
                record.requests += update.requests;
                record.last_used_at = record.last_used_at.max(Some(update.last_used_at));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl AuditArchive for MemoryStore {
    async fn append_audit(&self, row: &AuditRow) -> Result<(), StoreError> {
        let mut data = self.write();
        if data.audit.len() == AUDIT_KEPT {
            data.audit.pop_front();
        }
        data.audit.push_back(row.clone());
        Ok(())
    }

    async fn read_audit(&self, query: &AuditQuery<'_>) -> Result<Vec<AuditRow>, StoreError> {
        let data = self.read();
        Ok(query.newest_of(&data.audit))
    }

    async fn prune_audit(&self, before: u64) -> Result<u64, StoreError> {
        let audit = &mut self.write().audit;
        let kept = audit.len();
        audit.retain(|row| row.at >= before);
        Ok((kept - audit.len()) as u64)
    }

    async fn import_audit(&self, rows: &[AuditRow]) -> Result<u64, StoreError> {
        let audit = &mut self.write().audit;
        let mut ids: std::collections::HashSet<String> =
            audit.iter().map(|row| row.id.clone()).collect();
        let mut added = 0;
        for row in rows {
            if ids.insert(row.id.clone()) {
                audit.push_back(row.clone());
                added += 1;
            }
        }
        // Oldest first, as appended rows are, so that the oldest leave first.
        (audit.make_contiguous()).sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
        while audit.len() > AUDIT_KEPT {
            audit.pop_front();
        }
        Ok(added)
    }
}

#[async_trait]
impl UsageArchive for MemoryStore {
    async fn write_usage(
        &self,
        rows: &[UsageRow],
        expire: &[(u32, u64)],
    ) -> Result<(), StoreError> {
        let mut data = self.write();
        for row in rows {
            let at = (
                row.resolution,
                row.start,
                row.key.clone(),
                row.replica.clone(),
            );
            data.usage.insert(at, row.clone());
        }
        for &(resolution, before) in expire {
            data.usage
                .retain(|(r, start, ..), _| *r != resolution || *start >= before);
        }
        Ok(())
    }

    async fn read_usage(&self, range: &UsageRange<'_>) -> Result<Vec<UsageRow>, StoreError> {
        let from = (range.resolution, range.from, String::new(), String::new());
        let to = (range.resolution, range.to, String::new(), String::new());
        Ok(self
            .read()
            .usage
            .range(from..to)
            .map(|(_, row)| row)
            .filter(|row| range.contains(row))
            .cloned()
            .collect())
    }
}
