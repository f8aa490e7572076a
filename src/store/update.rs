//! Several changes to one key, written together: [`KeyUpdate`], which
//! [`KeyStoreAdmin::update_key`](super::KeyStoreAdmin::update_key) writes all or none of (the
//! console's update of a key, `KeyManager::update`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::limit::Limits;

use super::KeyRecord;

/// Changes to one key's record; a field left `None` is not changed.
///
/// ```
/// use tower_api_key::{limit::Limits, store::KeyUpdate};
///
/// let update = KeyUpdate::new()
///     .name("deploy bot")
///     .scopes(["read"])
///     .limits(Some(Limits::per_minute(60)))
///     .disabled(true);
/// assert_eq!(update.fields(), ["name", "scopes", "limits", "disabled"]);
/// assert!(KeyUpdate::new().is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct KeyUpdate {
    /// A new name.
    pub name: Option<String>,
    /// New scopes (they replace the old).
    pub scopes: Option<Vec<String>>,
    /// New metadata (it replaces the old).
    pub metadata: Option<BTreeMap<String, String>>,
    /// A new expiry, or `Some(None)` to clear it.
    pub expires_at: Option<Option<SystemTime>>,
    /// A new plan, or `Some(None)` for none.
    pub plan: Option<Option<String>>,
    /// New limits of the key's own, or `Some(None)` to clear them (its plan's apply again).
    pub limits: Option<Option<Limits>>,
    /// Disabled (`true`) or enabled (`false`).
    pub disabled: Option<bool>,
}

impl KeyUpdate {
    /// No change yet.
    pub fn new() -> Self {
        KeyUpdate::default()
    }

    /// Renames the key.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Replaces its scopes.
    #[must_use]
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// Replaces its metadata.
    #[must_use]
    pub fn metadata(mut self, metadata: BTreeMap<String, String>) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Sets its expiry, or with `None` clears it.
    #[must_use]
    pub fn expires_at(mut self, at: Option<SystemTime>) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Puts it on plan `plan`, or with `None` on none.
    #[must_use]
    pub fn plan(mut self, plan: Option<&str>) -> Self {
        self.plan = Some(plan.map(str::to_owned));
        self
    }

    /// Gives it limits of its own, or with `None` clears them.
    #[must_use]
    pub fn limits(mut self, limits: Option<Limits>) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Disables (`true`) or enables (`false`) it.
    #[must_use]
    pub fn disabled(mut self, disabled: bool) -> Self {
        self.disabled = Some(disabled);
        self
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.fields().is_empty()
    }

    /// The fields it changes, as the audit trail names them: `name`, `scopes`, `metadata`,
    /// `expires_at`, `plan`, `limits`, and `disabled` or `enabled`.
    pub fn fields(&self) -> Vec<&'static str> {
        let enabled = |disabled: bool| if disabled { "disabled" } else { "enabled" };
        [
            self.name.as_ref().map(|_| "name"),
            self.scopes.as_ref().map(|_| "scopes"),
            self.metadata.as_ref().map(|_| "metadata"),
            self.expires_at.as_ref().map(|_| "expires_at"),
            self.plan.as_ref().map(|_| "plan"),
            self.limits.as_ref().map(|_| "limits"),
            self.disabled.map(enabled),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Whether these changes bring `record` back into circulation at `now`: it is out of it (an
    /// expired key, not revoked) and would be in it after them (a later expiry, or none).
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use tower_api_key::{key::KeyFormat, store::KeyUpdate, NewKey};
    ///
    /// let now = SystemTime::now();
    /// let expired = NewKey::new("ci").expires_at(now - Duration::from_secs(60));
    /// let record = expired.generate(&KeyFormat::new("mesh")?)?.record;
    /// assert!(KeyUpdate::new().expires_at(None).brings_back(&record, now));
    /// assert!(!KeyUpdate::new().name("renamed").brings_back(&record, now));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn brings_back(&self, record: &KeyRecord, now: SystemTime) -> bool {
        if record.in_circulation(now) {
            return false;
        }
        let mut after = record.clone();
        self.apply_to(&mut after);
        after.in_circulation(now)
    }

    /// Makes the changes to `record`.
    pub fn apply_to(&self, record: &mut KeyRecord) {
        if let Some(name) = &self.name {
            record.name.clone_from(name);
        }
        if let Some(scopes) = &self.scopes {
            record.scopes.clone_from(scopes);
        }
        if let Some(metadata) = &self.metadata {
            record.metadata.clone_from(metadata);
        }
        if let Some(at) = self.expires_at {
            record.expires_at = at;
        }
        if let Some(plan) = &self.plan {
            record.plan.clone_from(plan);
        }
        if let Some(limits) = &self.limits {
            record.limits.clone_from(limits);
        }
        if let Some(disabled) = self.disabled {
            record.disabled = disabled;
        }
    }

    /// The fields it changes that differ between `before` and `after`: what was written of it
    /// when a store that writes field by field failed part way. Times are compared in whole
    /// seconds, as the SQL and Redis stores keep them.
    #[cfg(feature = "console")]
    pub(crate) fn written(&self, before: &KeyRecord, after: &KeyRecord) -> Vec<&'static str> {
        let mut expected = before.clone();
        self.apply_to(&mut expected);
        let second = |at: Option<SystemTime>| at.map(crate::clock::unix_seconds);
        let enabled = if after.disabled {
            "disabled"
        } else {
            "enabled"
        };
        [
            (
                "name",
                before.name != after.name,
                after.name == expected.name,
            ),
            (
                "scopes",
                before.scopes != after.scopes,
                after.scopes == expected.scopes,
            ),
            (
                "metadata",
                before.metadata != after.metadata,
                after.metadata == expected.metadata,
            ),
            (
                "expires_at",
                second(before.expires_at) != second(after.expires_at),
                second(after.expires_at) == second(expected.expires_at),
            ),
            (
                "plan",
                before.plan != after.plan,
                after.plan == expected.plan,
            ),
            (
                "limits",
                before.limits != after.limits,
                after.limits == expected.limits,
            ),
            (
                enabled,
                before.disabled != after.disabled,
                after.disabled == expected.disabled,
            ),
        ]
        .into_iter()
        // A field it sets was written if it changed, to the new value.
        .filter_map(|(field, changed, new)| (changed && new).then_some(field))
        .collect()
    }
}

#[cfg(all(test, feature = "console"))]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::{key::KeyFormat, NewKey};

    #[test]
    fn what_was_written_is_what_changed_to_the_new_value() {
        let format = KeyFormat::new("mesh").unwrap();
        let before = NewKey::new("ci").generate(&format).unwrap().record;
        let at = UNIX_EPOCH + Duration::from_millis(1_800_000_000_250);
        let update = KeyUpdate::new()
            .name("deploy")
            .scopes(["read"])
            .expires_at(Some(at))
            .disabled(true);
        let mut after = before.clone();
        after.name = "deploy".into();
        // Kept in whole seconds, as the SQL and Redis stores keep times.
        after.expires_at = Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        // Changed, but not to this update's value: another writer's.
        after.scopes = vec!["write".into()];
        assert_eq!(update.written(&before, &after), ["name", "expires_at"]);
        assert!(update.written(&before, &before).is_empty());
        let mut all = before.clone();
        update.apply_to(&mut all);
        assert_eq!(update.written(&before, &all), update.fields());
    }
}
