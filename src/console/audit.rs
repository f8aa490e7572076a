//! The console's audit trail: who changed which key, how, and when. Kept in the store
//! ([`AuditArchive`]), so it survives restarts and every replica's console shows every change.
//! Never a secret: the actor and the key are public ids.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::store::{AuditArchive, AuditQuery, AuditRow, StoreError};
use crate::trace;

/// One change made through the console.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct AuditEvent {
    /// When (Unix seconds).
    pub at: u64,
    /// The id of the key that made the change.
    pub actor: String,
    /// `create`, `update`, `rotate`, `revoke` or `delete`.
    pub action: String,
    /// The id of the key changed (for `rotate`, the old key; the new one is in `detail`).
    pub key_id: String,
    /// That key's owner, if it has one.
    pub owner: Option<String>,
    /// What changed: the fields of an update, the new key of a rotation.
    pub detail: Vec<String>,
}

/// Records a change in `store`'s trail, and traces it. A trail that cannot be written is
/// reported as a trace event (error): the change itself is made already.
pub(crate) async fn record(
    store: &impl AuditArchive,
    actor: &str,
    action: &str,
    key_id: &str,
    owner: Option<&str>,
    detail: Vec<String>,
) {
    trace::console_changed(actor, action, key_id);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let event = AuditEvent {
        at: now.as_secs(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        key_id: key_id.to_owned(),
        owner: owner.map(str::to_owned),
        detail,
    };
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).expect("the operating system's random generator failed");
    let data = serde_json::to_string(&event).expect("an audit event is JSON");
    let micros = u64::try_from(now.as_micros()).unwrap_or(u64::MAX);
    let row = AuditRow::new(&hex::encode(id), micros, key_id, owner, data);
    if let Err(error) = store.append_audit(&row).await {
        trace::audit_failed(actor, action, key_id, &error);
    }
}

/// The newest events `query` selects, newest first.
///
/// # Errors
/// When the store fails, or holds a row that is not an event.
pub(crate) async fn newest(
    store: &impl AuditArchive,
    query: &AuditQuery<'_>,
) -> Result<Vec<AuditEvent>, StoreError> {
    let rows = store.read_audit(query).await?;
    rows.iter()
        .map(|row| {
            serde_json::from_str(&row.data)
                .map_err(|_| StoreError::unavailable(format!("corrupt audit row {:?}", row.id)))
        })
        .collect()
}
