//! Structured events with the `tracing` feature: the key id and the outcome, never the secret nor
//! the digest (an opaque key's id is its digest, so it is shortened: [`log_id`](crate::log_id)).

#[cfg(feature = "tracing")]
use crate::principal::log_id;
use crate::reject::Rejection;

/// A request was authenticated as key `key_id`.
#[inline]
pub(crate) fn accepted(key_id: &str) {
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "tower_api_key", key_id = log_id(key_id), outcome = "ok", "api key accepted");
    #[cfg(not(feature = "tracing"))]
    let _ = key_id;
}

/// A request was refused; `key_id` is the public id it presented, if it got that far.
#[inline]
pub(crate) fn rejected(key_id: Option<&str>, rejection: Rejection) {
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "tower_api_key", key_id = key_id.map(log_id), outcome = rejection.code(), "api key refused");
    #[cfg(not(feature = "tracing"))]
    let _ = (key_id, rejection);
}

/// The store failed while looking up `key_id`.
#[inline]
pub(crate) fn store_failed(key_id: &str, error: &dyn std::fmt::Display) {
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "tower_api_key", key_id = log_id(key_id), error = %error, "key store lookup failed");
    #[cfg(not(feature = "tracing"))]
    let _ = (key_id, error);
}
