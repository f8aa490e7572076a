//! What a store keeps about one key.

use std::collections::BTreeMap;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::key::{Environment, SecretDigest};
use crate::limit::{Credits, Limits};

/// Everything a store keeps about one key: never the key itself, only the digest of its secret.
///
/// `Debug` is safe to print: the digest prints as `SecretDigest(..)`. Times serialise as Unix
/// seconds.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_api_key::{Environment, store::KeyRecord, store::KeyState, key::SecretDigest};
///
/// let mut record = KeyRecord::new("3kTMd9Qx2bLp", SecretDigest::of(b"secret"), "ci", Environment::Live);
/// record.scopes = vec!["read".into()];
/// let now = SystemTime::now();
/// assert_eq!(record.state(now), KeyState::Active);
/// record.expires_at = Some(now - Duration::from_secs(1));
/// assert_eq!(record.state(now), KeyState::Expired);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KeyRecord {
    /// The public key id: the lookup key. For an opaque (migrated) key, the hex of its digest.
    pub id: String,
    /// SHA-256 of the key's secret part (of the whole key, for an opaque key).
    pub digest: SecretDigest,
    /// A human-readable name, such as `production-server`.
    pub name: String,
    /// Who the key belongs to (a user, a team, an account id), if anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The environment the key was issued for.
    pub environment: Environment,
    /// The permission scopes granted, such as `read` or `offers:write`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Free-form data a service wants in the [`Principal`](crate::Principal).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// When the key was created.
    #[serde(with = "unix_seconds")]
    pub created_at: SystemTime,
    /// When the key stops working, if ever.
    #[serde(
        default,
        with = "unix_seconds_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<SystemTime>,
    /// When the key was revoked, if it was. A revoked key never works again.
    #[serde(
        default,
        with = "unix_seconds_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub revoked_at: Option<SystemTime>,
    /// A disabled key is refused until it is enabled again.
    #[serde(default)]
    pub disabled: bool,
    /// The name of the key's plan (`free`, `pro`, `enterprise`, or one the layer defines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// The key's own limits; they take precedence over its plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// The networks requests with the key may come from (IPv4 and IPv6 CIDRs); empty: anywhere.
    /// A request from elsewhere is refused with 403 `IP_NOT_ALLOWED`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_networks: Vec<IpNet>,
    /// The key's credits, if it has a budget of requests: spent by each request's cost in the
    /// store ([`KeyStore::spend_credits`](super::KeyStore::spend_credits)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<Credits>,
    /// When a request last got through with the key, as last flushed to the store.
    #[serde(
        default,
        with = "unix_seconds_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_used_at: Option<SystemTime>,
    /// Requests that got through with the key, as last flushed to the store.
    #[serde(default)]
    pub requests: u64,
}

/// Whether a key may be used now.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_api_key::{key::KeyFormat, store::{KeyRecord, KeyState}, Environment};
///
/// let generated = KeyFormat::new("mesh")?.generate(Environment::Live);
/// let mut record = KeyRecord::new(generated.id.clone(), generated.digest, "ci", Environment::Live);
/// let now = SystemTime::now();
/// assert_eq!(record.state(now), KeyState::Active);
/// record.expires_at = Some(now - Duration::from_secs(1));
/// assert_eq!(record.state(now).as_str(), "expired");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// The key works.
    Active,
    /// Disabled by its owner or an operator.
    Disabled,
    /// Revoked: it never works again.
    Revoked,
    /// Past its expiry time.
    Expired,
}

impl KeyState {
    /// `active`, `disabled`, `revoked` or `expired`.
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Disabled => "disabled",
            KeyState::Revoked => "revoked",
            KeyState::Expired => "expired",
        }
    }

    /// The state of a key revoked or not, disabled or not, with expiry `expires_at`, at `now`:
    /// revoked first, then disabled, then expired.
    pub(crate) fn of(
        revoked: bool,
        disabled: bool,
        expires_at: Option<SystemTime>,
        now: SystemTime,
    ) -> KeyState {
        if revoked {
            KeyState::Revoked
        } else if disabled {
            KeyState::Disabled
        } else if expires_at.is_some_and(|at| at <= now) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }
}

impl KeyRecord {
    /// A record for a key created now, with no scopes, owner, metadata or expiry.
    pub fn new(
        id: impl Into<String>,
        digest: SecretDigest,
        name: impl Into<String>,
        environment: Environment,
    ) -> Self {
        KeyRecord {
            id: id.into(),
            digest,
            name: name.into(),
            owner: None,
            environment,
            scopes: Vec::new(),
            metadata: BTreeMap::new(),
            created_at: SystemTime::now(),
            expires_at: None,
            revoked_at: None,
            disabled: false,
            plan: None,
            limits: None,
            allowed_networks: Vec::new(),
            credits: None,
            last_used_at: None,
            requests: 0,
        }
    }

    /// A record for an existing opaque key (any string your service issued before), so it keeps
    /// working when the layer is built with
    /// [`allow_opaque_keys`](crate::ApiKeyLayerBuilder::allow_opaque_keys). Its id is the hex of
    /// its digest, which is how the layer looks it up; so this id is not for logs: this crate's
    /// events name it by [`log_id`](crate::log_id), its first 12 characters. A digest cannot be
    /// turned back into the key, but a weak legacy key can be guessed from any hash of it: replace
    /// opaque keys with issued ones ([`KeyManager::rotate`](crate::KeyManager::rotate)).
    ///
    /// ```
    /// use tower_api_key::{Environment, store::KeyRecord, key::SecretDigest};
    ///
    /// let record = KeyRecord::opaque("old-key-7f3a9c", "legacy client", Environment::Live);
    /// assert_eq!(record.id, SecretDigest::of(b"old-key-7f3a9c").to_hex());
    /// ```
    pub fn opaque(key: &str, name: impl Into<String>, environment: Environment) -> Self {
        KeyRecord::opaque_digest(SecretDigest::of(key.as_bytes()), name, environment)
    }

    /// A record for an existing opaque key known only by its SHA-256 digest (a system that
    /// stored the hash of the keys it issued, not the keys): as [`opaque`](Self::opaque), without
    /// the key.
    ///
    /// ```
    /// use tower_api_key::{Environment, store::KeyRecord, key::SecretDigest};
    ///
    /// // The hex of SHA-256("old-key-7f3a9c"), as the old system kept it.
    /// let digest = SecretDigest::from_hex(&SecretDigest::of(b"old-key-7f3a9c").to_hex())?;
    /// let record = KeyRecord::opaque_digest(digest, "legacy client", Environment::Live);
    /// let from_key = KeyRecord::opaque("old-key-7f3a9c", "legacy client", Environment::Live);
    /// assert_eq!((record.id, record.digest), (from_key.id, from_key.digest));
    /// # Ok::<(), tower_api_key::key::InvalidDigest>(())
    /// ```
    pub fn opaque_digest(
        digest: SecretDigest,
        name: impl Into<String>,
        environment: Environment,
    ) -> Self {
        KeyRecord::new(digest.to_hex(), digest, name, environment)
    }

    /// Whether this is an opaque key's record: its id is the hex of its digest, which is how the
    /// layer looks opaque keys up ([`opaque`](Self::opaque), [`opaque_digest`](Self::opaque_digest)).
    ///
    /// ```
    /// use tower_api_key::{key::KeyFormat, Environment, NewKey, store::KeyRecord};
    ///
    /// assert!(KeyRecord::opaque("old-key-7f3a9c", "legacy", Environment::Live).is_opaque());
    /// let issued = NewKey::new("ci").generate(&KeyFormat::new("mesh")?)?.record;
    /// assert!(!issued.is_opaque());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_opaque(&self) -> bool {
        self.id == self.digest.to_hex()
    }

    /// The key's state at `now`. A revoked key reads as revoked even if also expired.
    pub fn state(&self, now: SystemTime) -> KeyState {
        KeyState::of(
            self.revoked_at.is_some(),
            self.disabled,
            self.expires_at,
            now,
        )
    }

    /// Whether the key is in circulation at `now`: neither revoked nor expired. A disabled key
    /// is (it can be enabled again). What
    /// [`KeyManager::max_keys_per_owner`](crate::KeyManager::max_keys_per_owner) counts.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use tower_api_key::{key::KeyFormat, NewKey};
    ///
    /// let mut record = NewKey::new("ci").generate(&KeyFormat::new("mesh")?)?.record;
    /// let now = SystemTime::now();
    /// record.disabled = true;
    /// assert!(record.in_circulation(now));
    /// record.expires_at = Some(now - Duration::from_secs(1));
    /// assert!(!record.in_circulation(now));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn in_circulation(&self, now: SystemTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

mod unix_seconds {
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        let secs = time
            .duration_since(UNIX_EPOCH)
            .map_err(|_| serde::ser::Error::custom("time before 1970"))?
            .as_secs();
        serializer.serialize_u64(secs)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let secs = u64::deserialize(deserializer)?;
        crate::clock::from_unix_seconds(secs)
            .ok_or_else(|| serde::de::Error::custom("time out of range"))
    }
}

mod unix_seconds_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => super::unix_seconds::serialize(time, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::unix_seconds")] SystemTime);
        Ok(Option::<Wrap>::deserialize(deserializer)?.map(|Wrap(t)| t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn serialises_times_as_unix_seconds_and_digest_as_hex() {
        let mut record = KeyRecord::new("abc", SecretDigest::of(b"s"), "n", Environment::Test);
        record.created_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        record.expires_at = Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["created_at"], 1_700_000_000u64);
        assert_eq!(json["expires_at"], 1_800_000_000u64);
        assert_eq!(json["environment"], "test");
        assert_eq!(json["digest"], SecretDigest::of(b"s").to_hex());
        assert!(json.get("revoked_at").is_none());
        let back: KeyRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn revoked_wins_over_disabled_and_expired() {
        let now = SystemTime::now();
        let mut record = KeyRecord::new("a", SecretDigest::of(b"s"), "n", Environment::Live);
        record.disabled = true;
        assert_eq!(record.state(now), KeyState::Disabled);
        record.expires_at = Some(now);
        record.revoked_at = Some(now);
        assert_eq!(record.state(now), KeyState::Revoked);
    }
}
