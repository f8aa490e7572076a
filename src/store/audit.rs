//! Where the audit trail is kept (the changes made through the console and the command line
//! tool, as [`AuditEvent`](crate::manage::AuditEvent)s), so that it survives restarts and every
//! replica shows every change: [`AuditArchive`], implemented by every store of this crate, and
//! its rows, [`AuditRow`].

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;

use super::StoreError;

/// How many rows the memory and Redis stores keep, newest first; older ones are dropped. The SQL
/// stores keep every row until [pruned](AuditArchive::prune_audit).
pub const AUDIT_KEPT: usize = 10_000;

/// One change in the audit trail. The store keeps `data` as text and never reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditRow {
    /// Unique: random, chosen by the writer.
    pub id: String,
    /// When, in Unix microseconds.
    pub at: u64,
    /// The key changed (empty for a change to an owner's settings).
    pub key: String,
    /// That key's owner, if it has one.
    pub owner: Option<String>,
    /// The change, as [`KeyManager::record_change`](crate::KeyManager::record_change) encodes
    /// it (JSON).
    pub data: String,
}

impl AuditRow {
    /// A row of change `id` at `at` (Unix microseconds) to `key` of `owner`, holding `data`.
    ///
    /// ```
    /// use tower_api_key::store::AuditRow;
    /// let row = AuditRow::new("5f1c", 1_800_000_000_000_000, "3kTMd9Qx2bLp", Some("acme"), "{}");
    /// assert_eq!(row.owner.as_deref(), Some("acme"));
    /// ```
    pub fn new(id: &str, at: u64, key: &str, owner: Option<&str>, data: impl Into<String>) -> Self {
        AuditRow {
            id: id.to_owned(),
            at,
            key: key.to_owned(),
            owner: owner.map(str::to_owned),
            data: data.into(),
        }
    }
}

/// Which rows to read: the newest `limit`, of one key or one owner if given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditQuery<'a> {
    /// Only this key's rows.
    pub key: Option<&'a str>,
    /// Only the rows of this owner's keys.
    pub owner: Option<&'a str>,
    /// At most this many.
    pub limit: usize,
}

impl<'a> AuditQuery<'a> {
    /// The newest `limit` rows.
    pub fn newest(limit: usize) -> Self {
        AuditQuery {
            key: None,
            owner: None,
            limit,
        }
    }

    /// Only `key`'s rows.
    #[must_use]
    pub fn key(mut self, key: &'a str) -> Self {
        self.key = Some(key);
        self
    }

    /// Only the rows of `owner`'s keys.
    #[must_use]
    pub fn owner(mut self, owner: &'a str) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Whether `row` is one the query selects, its limit aside.
    fn selects(&self, row: &AuditRow) -> bool {
        self.key.is_none_or(|key| row.key == key)
            && (self.owner).is_none_or(|owner| row.owner.as_deref() == Some(owner))
    }

    /// The rows of `rows` the query selects, newest first (by time, then id), at most `limit`.
    pub(crate) fn newest_of<'r>(
        &self,
        rows: impl IntoIterator<Item = &'r AuditRow>,
    ) -> Vec<AuditRow> {
        let selected = rows.into_iter().filter(|r| self.selects(r));
        let mut selected: Vec<AuditRow> = selected.cloned().collect();
        selected.sort_by(|a, b| (b.at, &b.id).cmp(&(a.at, &a.id)));
        selected.truncate(self.limit);
        selected
    }
}

/// Where the audit trail is kept ([`KeyManager::record_change`](crate::KeyManager::record_change)
/// writes it, the [console](crate::console) and the command line tool through it). The SQLite and
/// PostgreSQL stores keep rows in a table `<table>_audit`, every row; the Redis store in one
/// list (`<prefix>audit`) and the memory store in memory, the newest [`AUDIT_KEPT`] rows.
#[async_trait]
pub trait AuditArchive: Send + Sync + 'static {
    /// Adds `row`.
    async fn append_audit(&self, row: &AuditRow) -> Result<(), StoreError>;

    /// The rows `query` selects, newest first (by time, then id).
    async fn read_audit(&self, query: &AuditQuery<'_>) -> Result<Vec<AuditRow>, StoreError>;

    /// Removes the rows older than `before` (Unix microseconds); returns how many it removed.
    async fn prune_audit(&self, before: u64) -> Result<u64, StoreError>;

    /// Adds the rows of `rows` whose ids the trail does not hold, each id once: a trail moved
    /// from another store (`tower-api-key export --audit`, then `import`), so that a move run
    /// again adds nothing twice. Returns how many it added; the memory and Redis stores then
    /// keep the newest [`AUDIT_KEPT`] by time, as they do.
    ///
    /// The stores of this crate add them in one step (SQL: one transaction; Redis: one
    /// script). This default reads the whole trail first, then appends the rows one by one: a
    /// store of your own that can skip a known id on insert should do so instead.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use tower_api_key::store::{AuditArchive, AuditQuery, AuditRow};
    /// use tower_api_key::MemoryStore;
    ///
    /// let store = MemoryStore::new();
    /// let rows = [
    ///     AuditRow::new("5f1c", 1_800_000_000_000_000, "3kTMd9Qx2bLp", Some("acme"), "{}"),
    ///     AuditRow::new("77a0", 1_800_000_060_000_000, "3kTMd9Qx2bLp", Some("acme"), "{}"),
    /// ];
    /// assert_eq!(store.import_audit(&rows).await?, 2);
    /// assert_eq!(store.import_audit(&rows).await?, 0); // run again: nothing twice
    /// assert_eq!(store.read_audit(&AuditQuery::newest(10)).await?.len(), 2);
    /// # Ok::<(), tower_api_key::store::StoreError>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// When the store fails: the rows added before may stay; run it again.
    async fn import_audit(&self, rows: &[AuditRow]) -> Result<u64, StoreError> {
        let held = self.read_audit(&AuditQuery::newest(usize::MAX)).await?;
        let mut ids: HashSet<&str> = held.iter().map(|row| row.id.as_str()).collect();
        let mut added = 0;
        for row in rows {
            if ids.insert(&row.id) {
                self.append_audit(row).await?;
                added += 1;
            }
        }
        Ok(added)
    }
}

#[async_trait]
impl<T: AuditArchive + ?Sized> AuditArchive for Arc<T> {
    async fn append_audit(&self, row: &AuditRow) -> Result<(), StoreError> {
        (**self).append_audit(row).await
    }

    async fn read_audit(&self, query: &AuditQuery<'_>) -> Result<Vec<AuditRow>, StoreError> {
        (**self).read_audit(query).await
    }

    async fn prune_audit(&self, before: u64) -> Result<u64, StoreError> {
        (**self).prune_audit(before).await
    }

    async fn import_audit(&self, rows: &[AuditRow]) -> Result<u64, StoreError> {
        (**self).import_audit(rows).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[tokio::test]
    async fn the_memory_store_keeps_the_newest_rows_only() {
        let store = MemoryStore::new();
        for i in 0..AUDIT_KEPT + 5 {
            let row = AuditRow::new(&format!("{i:06}"), i as u64, "k", None, "{}");
            store.append_audit(&row).await.unwrap();
        }
        let all = store.read_audit(&AuditQuery::newest(usize::MAX)).await;
        let all = all.unwrap();
        assert_eq!(all.len(), AUDIT_KEPT);
        assert_eq!(all[0].id, format!("{:06}", AUDIT_KEPT + 4));
        assert_eq!(all[AUDIT_KEPT - 1].id, "000005");
    }
}
