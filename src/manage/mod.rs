//! Issuing and withdrawing keys: [`NewKey`](crate::NewKey) describes a key,
//! [`KeyManager`](crate::KeyManager) creates, revokes, deletes and lists them in a
//! [`KeyStoreAdmin`](crate::store::KeyStoreAdmin) and keeps the layer's cache in step, and
//! [`KeyManager::import`](crate::KeyManager::import) brings in keys issued elsewhere (another
//! store, keys issued before this crate). This module holds what they give and refuse, and the
//! [`AuditEvent`]s of the store's audit trail.

mod audit;
mod import;
pub(crate) mod manager;

pub use audit::AuditEvent;
pub use import::Imported;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::key::{Environment, KeyFormat, PlaintextKey};
use crate::limit::{Credits, InvalidLimit, Limits};
use crate::scope::InvalidScope;
use crate::store::{KeyRecord, KeyState, StoreError};

/// The longest key name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// The most metadata entries a key holds, besides the `rotated_from` a rotation adds.
pub const MAX_METADATA_ENTRIES: usize = 32;

/// The longest metadata key or value, in bytes.
pub const MAX_METADATA_LEN: usize = 512;

/// Whether `c` may not appear in a key's name, an owner or a metadata key: a control character
/// (an escape sequence in one could rewrite the terminal of an operator who lists keys), or a
/// bidirectional override or isolate (which reorders what a reader sees). Self-service keys
/// name keys too, so these names come from key holders, not only from operators.
///
/// ```
/// use tower_api_key::manage::is_hidden_control;
///
/// assert!(is_hidden_control('\u{1b}')); // ESC, which starts a terminal's escape sequence
/// assert!(is_hidden_control('\u{202e}')); // right-to-left override
/// assert!(!"Bob's key: café ☕".chars().any(is_hidden_control));
/// ```
#[must_use]
pub fn is_hidden_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether `name` is fit to name a key, an owner or an actor of the audit trail: not blank, at
/// most [`MAX_NAME_LEN`] bytes, and without a character [`is_hidden_control`] refuses.
///
/// ```
/// use tower_api_key::manage::is_valid_name;
///
/// assert!(is_valid_name("Production App"));
/// assert!(!is_valid_name("  "));
/// assert!(!is_valid_name("deploy\u{1b}[2J"));
/// ```
#[must_use]
pub fn is_valid_name(name: &str) -> bool {
    !name.trim().is_empty() && name.len() <= MAX_NAME_LEN && !name.chars().any(is_hidden_control)
}

/// A key just issued: the plaintext to show once, and its stored record.
#[derive(Debug)]
#[non_exhaustive]
pub struct CreatedKey {
    /// The whole key: show it to its owner once.
    pub key: PlaintextKey,
    /// What the store keeps.
    pub record: KeyRecord,
}

/// What makes a [`NewKey`](crate::NewKey) invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidKey {
    /// The name is blank, longer than [`MAX_NAME_LEN`], or holds a character
    /// [`is_hidden_control`] refuses.
    Name,
    /// The owner is blank, longer than [`MAX_NAME_LEN`], or holds a character
    /// [`is_hidden_control`] refuses.
    Owner,
    /// The metadata has more than [`MAX_METADATA_ENTRIES`] entries, an empty key, a key or
    /// value longer than [`MAX_METADATA_LEN`], or a key with a character [`is_hidden_control`]
    /// refuses (values may hold any).
    Metadata,
    /// A scope is malformed.
    Scope(InvalidScope),
    /// A time (an expiry, the end of a grace period) past the year 9999.
    TimeOutOfRange,
    /// The limits are malformed (two named limits with one name).
    Limits(InvalidLimit),
    /// The id is one the layer never looks up: neither [`ID_LEN`](crate::key::ID_LEN) base62
    /// characters (carrying the tag of the format's [`IdKey`](crate::key::IdKey), if it has
    /// one) nor, for an opaque key, the hex of its digest.
    Id,
    /// The manager has no key format: give it a layer's cache
    /// ([`KeyManager::with_cache`](crate::KeyManager::with_cache)) or a
    /// [`KeyManager::format`](crate::KeyManager::format).
    NoFormat,
}

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidKey::Name => write!(
                f,
                "a key name is 1 to {MAX_NAME_LEN} bytes, not blank, without control characters"
            ),
            InvalidKey::Owner => write!(
                f,
                "an owner is 1 to {MAX_NAME_LEN} bytes, not blank, without control characters"
            ),
            InvalidKey::Metadata => write!(
                f,
                "metadata is at most {MAX_METADATA_ENTRIES} entries, each key 1 to \
                 {MAX_METADATA_LEN} bytes without control characters and each value at most \
                 {MAX_METADATA_LEN}"
            ),
            InvalidKey::Scope(e) => e.fmt(f),
            InvalidKey::Limits(e) => e.fmt(f),
            InvalidKey::TimeOutOfRange => f.write_str("times after the year 9999 are not kept"),
            InvalidKey::Id => f.write_str(
                "a key id is 12 base62 characters (signed with the service's id key, if it has \
                 one), or an opaque key's digest in hex",
            ),
            InvalidKey::NoFormat => f.write_str(
                "the key manager has no key format to issue keys in: build it with \
                     `.with_cache(layer.handle())` or `.format(KeyFormat::new(prefix)?)`",
            ),
        }
    }
}

impl std::error::Error for InvalidKey {}

/// The error of a [`KeyManager`](crate::KeyManager) operation.
#[derive(Debug)]
#[non_exhaustive]
pub enum ManageError {
    /// The key description was invalid.
    Invalid(InvalidKey),
    /// The store failed.
    Store(StoreError),
    /// The key is revoked, disabled or expired, so it cannot be rotated.
    NotActive(KeyState),
    /// The key's owner already has this many keys in circulation, the most
    /// [`KeyManager::max_keys_per_owner`](crate::KeyManager::max_keys_per_owner) allows (or,
    /// for a rotation, one more): no key is issued, and no expired key brought back.
    TooManyKeys(u32),
    /// The expiry asked for (or none) is later than this long from now, the longest
    /// [`KeyManager::max_key_lifetime`](crate::KeyManager::max_key_lifetime) allows.
    LifetimeTooLong(Duration),
    /// Another key (with another digest) has this id already: nothing was imported.
    IdTaken(String),
}

impl fmt::Display for ManageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManageError::Invalid(e) => e.fmt(f),
            ManageError::Store(e) => e.fmt(f),
            ManageError::NotActive(state) => {
                write!(
                    f,
                    "only an active key can be rotated; this one is {}",
                    state.as_str()
                )
            }
            ManageError::TooManyKeys(max) => write!(
                f,
                "the owner already holds the most keys in use allowed ({max}, and one more while \
                 a rotated key's grace period runs): revoke or delete one first"
            ),
            ManageError::LifetimeTooLong(max) => write!(
                f,
                "keys may live at most {} from now: give an earlier expiry",
                Lifetime(*max)
            ),
            ManageError::IdTaken(id) => write!(
                f,
                "another key already has the id `{}`: nothing was imported",
                crate::log_id(id)
            ),
        }
    }
}

impl std::error::Error for ManageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ManageError::Invalid(e) => Some(e),
            ManageError::Store(e) => Some(e),
            ManageError::NotActive(_)
            | ManageError::TooManyKeys(_)
            | ManageError::LifetimeTooLong(_)
            | ManageError::IdTaken(_) => None,
        }
    }
}

impl From<StoreError> for ManageError {
    fn from(error: StoreError) -> Self {
        ManageError::Store(error)
    }
}

/// A longest lifetime as people say it: `90 days`, `12 hours`, `45 seconds`.
struct Lifetime(Duration);

impl fmt::Display for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let (count, unit) = match secs {
            0 => (0, "second"),
            _ if secs % 86_400 == 0 => (secs / 86_400, "day"),
            _ if secs % 3_600 == 0 => (secs / 3_600, "hour"),
            _ => (secs, "second"),
        };
        let plural = if count == 1 { "" } else { "s" };
        write!(f, "{count} {unit}{plural}")
    }
}

/// The last second of the year 9999 (Unix seconds): the latest time a key record holds, so that
/// every store, the CLI and JSON can write it.
pub const MAX_UNIX_SECONDS: u64 = crate::clock::LATEST_UNIX_SECONDS;

/// Whether a record can keep time `at` (no later than [`MAX_UNIX_SECONDS`]).
pub(crate) fn keeps(at: SystemTime) -> bool {
    crate::clock::unix_seconds(at) <= MAX_UNIX_SECONDS
}

/// A key as operators see it: everything but the secret and its digest. Serialises to JSON with
/// times as Unix seconds.
#[cfg_attr(feature = "console", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The public key id.
    pub id: String,
    /// The key's name.
    pub name: String,
    /// The key's public beginning, to recognise it: `mesh_live_3kTMd9Qx2bLp_…`.
    pub prefix: String,
    /// Its environment.
    pub environment: Environment,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Its owner.
    pub owner: Option<String>,
    /// Its plan.
    pub plan: Option<String>,
    /// When it was created (Unix seconds).
    pub created_at: u64,
    /// When a request last got through with it, as flushed to the store (Unix seconds).
    pub last_used_at: Option<u64>,
    /// When it expires (Unix seconds).
    pub expires_at: Option<u64>,
    /// `active`, `revoked`, `expired` or `disabled`.
    #[cfg_attr(feature = "console", schema(value_type = String))]
    pub state: &'static str,
    /// The networks it may be used from, as CIDRs; empty: anywhere.
    pub allowed_networks: Vec<String>,
    /// Its own limits (which take the place of its plan's), if it has any.
    #[cfg_attr(feature = "console", schema(value_type = Option<Object>))]
    pub limits: Option<Limits>,
    /// Its credits as of now (refilled if a refill period began), if it has any.
    #[cfg_attr(feature = "console", schema(value_type = Option<Object>))]
    pub credits: Option<Credits>,
    /// Its metadata (`rotated_from` names the key it replaced).
    pub metadata: BTreeMap<String, String>,
}

impl KeyInfo {
    pub(crate) fn new(record: &KeyRecord, format: Option<&KeyFormat>, now: SystemTime) -> Self {
        let secs = crate::clock::unix_seconds;
        let prefix = format.map_or("…", KeyFormat::prefix);
        KeyInfo {
            id: record.id.clone(),
            name: record.name.clone(),
            prefix: format!("{prefix}_{}_{}_…", record.environment, record.id),
            environment: record.environment,
            scopes: record.scopes.clone(),
            owner: record.owner.clone(),
            plan: record.plan.clone(),
            created_at: secs(record.created_at),
            last_used_at: record.last_used_at.map(secs),
            expires_at: record.expires_at.map(secs),
            state: record.state(now).as_str(),
            allowed_networks: record
                .allowed_networks
                .iter()
                .map(ToString::to_string)
                .collect(),
            limits: record.limits.clone(),
            credits: record
                .credits
                .clone()
                .map(|credits| credits.refilled_by(now)),
            metadata: record.metadata.clone(),
        }
    }
}
