//! The console's audit trail: who changed which key, how, and when; kept in memory, newest
//! last, bounded. Never a secret: the actor and the key are public ids.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde::Serialize;

use crate::clock::unix_seconds;
use crate::trace;

/// How many changes the trail keeps; older ones are dropped first.
const KEPT: usize = 1_000;

/// One change made through the console.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

/// The trail.
#[derive(Debug, Default)]
pub(crate) struct Audit {
    events: Mutex<VecDeque<AuditEvent>>,
}

impl Audit {
    /// Records a change, and traces it.
    pub(crate) fn record(
        &self,
        actor: &str,
        action: &str,
        key_id: &str,
        owner: Option<&str>,
        detail: Vec<String>,
    ) {
        trace::console_changed(actor, action, key_id);
        let event = AuditEvent {
            at: unix_seconds(SystemTime::now()),
            actor: actor.to_owned(),
            action: action.to_owned(),
            key_id: key_id.to_owned(),
            owner: owner.map(str::to_owned),
            detail,
        };
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if events.len() == KEPT {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// The newest `limit` events that `visible` lets through, newest first.
    pub(crate) fn newest(
        &self,
        limit: usize,
        visible: impl Fn(&AuditEvent) -> bool,
    ) -> Vec<AuditEvent> {
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        events
            .iter()
            .rev()
            .filter(|event| visible(event))
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trail_is_bounded_and_newest_first() {
        let audit = Audit::default();
        for i in 0..KEPT + 5 {
            audit.record("admin", "revoke", &i.to_string(), None, Vec::new());
        }
        let all = audit.newest(usize::MAX, |_| true);
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].key_id, (KEPT + 4).to_string());
        assert_eq!(all[KEPT - 1].key_id, "5");
        let even = audit.newest(2, |e| e.key_id.ends_with('0'));
        let ids: Vec<&str> = even.iter().map(|e| e.key_id.as_str()).collect();
        assert_eq!(ids, ["1000", "990"]);
    }
}
