//! The audit trail: who changed which key, how, and when. Kept in the key store's
//! [`AuditArchive`], so it survives restarts and every replica, the console and the command
//! line tool alike, writes to and reads one trail. Never a secret: the actor and the key are
//! public ids.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::manager::KeyManager;
use crate::store::{AuditArchive, AuditQuery, AuditRow, KeyStoreAdmin, StoreError};
use crate::trace;

/// One change to a key (or to an owner's settings) in the audit trail.
///
/// ```
/// use tower_api_key::manage::AuditEvent;
///
/// let event = AuditEvent::new("cli:alice", "update", "3kTMd9Qx2bLp")
///     .owner(Some("acme"))
///     .detail(["scopes"]);
/// assert_eq!(event.detail, ["scopes"]);
/// assert!(event.at > 0);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "console", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub struct AuditEvent {
    /// When (Unix seconds).
    pub at: u64,
    /// Who made the change: the id of the console's key that made it, or the command line
    /// tool's actor (`cli:<user>`, or its `--actor`).
    pub actor: String,
    /// `create`, `update`, `rotate`, `revoke`, `delete`, `owner` (an owner's limits or
    /// credits), or `prune` (older changes removed from the trail).
    pub action: String,
    /// The id of the key changed (for `rotate`, the old key; the new one is in `detail`); empty
    /// for a change to an owner's settings and for `prune`.
    pub key_id: String,
    /// That key's owner, if it has one; the owner changed, for `owner`.
    pub owner: Option<String>,
    /// What changed: the fields of an update, the new key of a rotation.
    pub detail: Vec<String>,
    /// When, in Unix microseconds: the trail's order.
    #[serde(skip)]
    micros: u64,
}

impl AuditEvent {
    /// `actor` made change `action` to key `key_id`, now.
    pub fn new(actor: &str, action: &str, key_id: &str) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        AuditEvent {
            at: now.as_secs(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            key_id: key_id.to_owned(),
            owner: None,
            detail: Vec::new(),
            micros: u64::try_from(now.as_micros()).unwrap_or(u64::MAX),
        }
    }

    /// The changed key's owner (or the owner changed).
    #[must_use]
    pub fn owner(mut self, owner: Option<&str>) -> Self {
        self.owner = owner.map(str::to_owned);
        self
    }

    /// What changed.
    #[must_use]
    pub fn detail<I: IntoIterator<Item = S>, S: Into<String>>(mut self, detail: I) -> Self {
        self.detail = detail.into_iter().map(Into::into).collect();
        self
    }

    /// Its row in the store: a random id, the time, the key, the owner, the event as JSON.
    fn to_row(&self) -> AuditRow {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).expect("the operating system's random generator failed");
        let data = serde_json::to_string(self).expect("an audit event is JSON");
        let key = &self.key_id;
        AuditRow::new(
            &hex::encode(id),
            self.micros,
            key,
            self.owner.as_deref(),
            data,
        )
    }

    /// The event `row` holds.
    fn from_row(row: &AuditRow) -> Result<Self, StoreError> {
        let mut event: AuditEvent = serde_json::from_str(&row.data)
            .map_err(|_| StoreError::unavailable(format!("corrupt audit row {:?}", row.id)))?;
        event.micros = row.at;
        Ok(event)
    }
}

/// The trail, for a manager whose store keeps one (every store of this crate does).
impl<A: KeyStoreAdmin + AuditArchive> KeyManager<A> {
    /// Writes `event` to the store's audit trail, and traces it. Call it once the change is
    /// made: the console and the command line tool do, for every change they make.
    ///
    /// ```
    /// use tower_api_key::{manage::AuditEvent, store::AuditQuery, KeyManager, MemoryStore};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let keys = KeyManager::new(MemoryStore::new());
    /// keys.record_change(&AuditEvent::new("ops-bot", "revoke", "3kTMd9Qx2bLp")).await?;
    /// let trail = keys.audit_trail(&AuditQuery::newest(10)).await?;
    /// assert_eq!(trail[0].actor, "ops-bot");
    /// # Ok::<(), tower_api_key::store::StoreError>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// When the store cannot write it (also traced as an error event): the change itself was
    /// made already, so tell the operator rather than undo it.
    pub async fn record_change(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let (actor, action, key) = (&*event.actor, &*event.action, &*event.key_id);
        trace::key_changed(actor, action, key);
        let written = self.store().append_audit(&event.to_row()).await;
        if let Err(error) = &written {
            trace::audit_failed(actor, action, key, error);
        }
        written
    }

    /// The newest events `query` selects, newest first.
    ///
    /// # Errors
    /// When the store fails, or holds a row that is not an event.
    pub async fn audit_trail(&self, query: &AuditQuery<'_>) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = self.store().read_audit(query).await?;
        rows.iter().map(AuditEvent::from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn an_event_reads_back_as_it_was_written() {
        let keys = KeyManager::new(MemoryStore::new());
        let first = AuditEvent::new("cli:alice", "update", "3kTMd9Qx2bLp")
            .owner(Some("acme"))
            .detail(["scopes", "limits"]);
        let mut second = AuditEvent::new("cli:alice", "owner", "").owner(Some("acme"));
        // Later than the first, even within one microsecond.
        second.micros = first.micros + 1;
        keys.record_change(&first).await.unwrap();
        keys.record_change(&second).await.unwrap();
        let trail = keys.audit_trail(&AuditQuery::newest(10)).await.unwrap();
        assert_eq!(trail, [second.clone(), first.clone()]);
        let of_key = keys
            .audit_trail(&AuditQuery::newest(10).key("3kTMd9Qx2bLp"))
            .await
            .unwrap();
        assert_eq!(of_key, [first]);
    }

    #[tokio::test]
    async fn a_row_that_is_not_an_event_is_an_error() {
        let store = MemoryStore::new();
        let row = AuditRow::new("0badc0de", 1, "3kTMd9Qx2bLp", None, "not json");
        store.append_audit(&row).await.unwrap();
        let keys = KeyManager::new(store);
        let error = keys.audit_trail(&AuditQuery::newest(10)).await.unwrap_err();
        assert!(error.to_string().contains("corrupt audit row"), "{error}");
    }
}
