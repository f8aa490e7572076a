//! The store's audit trail, as the tool writes its changes to it.

use tower_api_key::{manage::AuditEvent, store::KeyStore, AnyStore, KeyManager};

use crate::failure::{not_found, Failure};
use crate::shown::Shown;

/// The store's audit trail, and who this run's changes are by.
pub(crate) struct Trail<'a> {
    pub(crate) keys: &'a KeyManager<AnyStore>,
    pub(crate) actor: &'a str,
}

impl Trail<'_> {
    /// `action` on key `key_id` of `owner`, by this run's actor.
    pub(crate) fn event(&self, action: &str, key_id: &str, owner: Option<&str>) -> AuditEvent {
        AuditEvent::new(self.actor, action, key_id).owner(owner)
    }

    /// `action` on key `id`, whose owner is read first; exit 3 if there is no such key.
    pub(crate) async fn of_key(&self, action: &str, id: &str) -> Result<AuditEvent, Failure> {
        let record = self.keys.store().get(id).await?;
        let record = record.ok_or_else(|| not_found(id))?;
        Ok(self.event(action, id, record.owner.as_deref()))
    }

    /// Writes a change made; one the trail cannot keep is reported, not undone.
    pub(crate) async fn record(&self, event: AuditEvent) {
        if let Err(error) = self.keys.record_change(&event).await {
            eprintln!(
                "warning: the change is made, but the audit trail could not be written: {}",
                Shown(&error.to_string())
            );
        }
    }
}
