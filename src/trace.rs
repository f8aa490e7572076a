//! Structured events with the `tracing` feature: the key id and the outcome, never the secret nor
//! the digest (an opaque key's id is its digest, so it is shortened: [`log_id`](crate::log_id)).

use crate::reject::Rejection;

/// A key id as it may be logged: a structured key's id unchanged; an opaque key's id (the 64 hex
/// characters of its digest) cut to its first 12. See [`Principal::log_id`](crate::Principal::log_id).
///
/// ```
/// use tower_api_key::{log_id, key::SecretDigest};
///
/// let opaque_id = SecretDigest::of(b"sk_legacy_4f9a2c").to_hex();
/// assert_eq!(log_id(&opaque_id).len(), 12);
/// assert_eq!(log_id("3kTMd9Qx2bLp"), "3kTMd9Qx2bLp");
/// ```
pub fn log_id(id: &str) -> &str {
    const SHOWN: usize = 12;
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        &id[..SHOWN]
    } else {
        id
    }
}

/// A SQLite database could not be put in write-ahead-log mode: the journal mode it answered,
/// or the error.
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite_journal_kept(mode: &Result<String, String>) {
    #[cfg(feature = "tracing")]
    tracing::info!(target: "tower_api_key", ?mode, "sqlite database kept in its journal mode");
    #[cfg(not(feature = "tracing"))]
    let _ = mode;
}

/// A request was authenticated as key `key_id`.
#[inline]
pub(crate) fn accepted(key_id: &str) {
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "tower_api_key", key_id = log_id(key_id), outcome = "ok", "api key accepted");
    #[cfg(not(feature = "tracing"))]
    let _ = key_id;
}

/// A request with no key went on as anonymous.
#[inline]
pub(crate) fn anonymous() {
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "tower_api_key", outcome = "anonymous", "no api key: anonymous");
}

/// A request was refused; `key_id` is the public id it presented, if it got that far.
#[inline]
pub(crate) fn rejected(key_id: Option<&str>, rejection: Rejection) {
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "tower_api_key", key_id = key_id.map(log_id), outcome = rejection.code(), "api key refused");
    #[cfg(not(feature = "tracing"))]
    let _ = (key_id, rejection);
}

/// Usage (analytics, or keys' last use) could not be written to the store; it stays pending
/// for the next flush.
#[inline]
pub(crate) fn usage_flush_failed(error: &dyn std::fmt::Display) {
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "tower_api_key", error = %error, "usage flush failed; will retry");
    #[cfg(not(feature = "tracing"))]
    let _ = error;
}

/// This replica's usage row of a bucket did not read back when a late request's count was to
/// be added to it: the flush writes the bucket over it.
#[cfg(feature = "analytics")]
pub(crate) fn usage_row_replaced(error: &dyn std::fmt::Display) {
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "tower_api_key", error = %error, "corrupt usage row written over");
    #[cfg(not(feature = "tracing"))]
    let _ = error;
}

/// The store failed while looking up `key_id`.
#[inline]
pub(crate) fn store_failed(key_id: &str, error: &dyn std::fmt::Display) {
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "tower_api_key", key_id = log_id(key_id), error = %error, "key store lookup failed");
    #[cfg(not(feature = "tracing"))]
    let _ = (key_id, error);
}

/// A rotation failed after it stored its new key `key_id`, and deleting that key failed too: it
/// stays in the store, live, its secret shown to no one. Delete it when the store is back.
pub(crate) fn rotation_left_key(key_id: &str, error: &dyn std::fmt::Display) {
    #[cfg(feature = "tracing")]
    tracing::error!(target: "tower_api_key", key_id = log_id(key_id), error = %error, "rotation failed, and its new key could not be deleted");
    #[cfg(not(feature = "tracing"))]
    let _ = (key_id, error);
}

/// The console's store call failed.
#[cfg(feature = "console")]
pub(crate) fn console_store_failed(error: &dyn std::fmt::Display) {
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "tower_api_key", error = %error, "console: key store failed");
    #[cfg(not(feature = "tracing"))]
    let _ = error;
}

/// Key `key_id` (or, for `owner`, an owner's settings) was changed by `actor` (a console's key, or
/// the command line tool): `action` is `create`, `update`, `rotate`, `revoke`, `delete`, `owner`
/// or `prune`.
pub(crate) fn key_changed(actor: &str, action: &str, key_id: &str) {
    #[cfg(feature = "tracing")]
    tracing::info!(target: "tower_api_key", actor = log_id(actor), action, key_id = log_id(key_id), "key changed");
    #[cfg(not(feature = "tracing"))]
    let _ = (actor, action, key_id);
}

/// A change was made but could not be written to the store's audit trail.
pub(crate) fn audit_failed(actor: &str, action: &str, key_id: &str, error: &dyn std::fmt::Display) {
    #[cfg(feature = "tracing")]
    tracing::error!(target: "tower_api_key", actor = log_id(actor), action, key_id = log_id(key_id), error = %error, "key changed, but the audit trail could not be written");
    #[cfg(not(feature = "tracing"))]
    let _ = (actor, action, key_id, error);
}
