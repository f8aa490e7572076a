//! From a request's headers to a verified key: extract, parse, look up, compare in constant time,
//! check the key's state.

use std::borrow::Cow;
use std::time::SystemTime;

use http::{HeaderMap, Uri};
use subtle::Choice;

use crate::cache::CachedKey;
use crate::extract::{extract, KeySource};
use crate::key::{check_text, Environment, KeyFormat, SecretDigest};
use crate::principal::Principal;
use crate::reject::Rejection;
use crate::store::KeyState;

/// What a request presented, reduced to what verification needs: the secret itself is hashed and
/// dropped here.
pub(crate) struct Presented {
    /// The id to look up.
    pub(crate) id: String,
    /// The digest of the presented secret.
    pub(crate) digest: SecretDigest,
    /// The environment written in the key (structured keys only).
    pub(crate) environment: Option<Environment>,
}

/// Reads the key from the request and checks what can be checked offline.
///
/// # Errors
/// `MissingApiKey`, `MultipleApiKeys`, or `InvalidApiKey` for anything malformed; no store or
/// cache is touched.
pub(crate) fn present(
    sources: &[KeySource],
    format: &KeyFormat,
    allow_opaque: bool,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Presented, Rejection> {
    let key: Cow<'_, str> = extract(sources, headers, uri)?.ok_or(Rejection::MissingApiKey)?;
    if format.claims(&key) {
        let parsed = format.parse(&key).map_err(|_| Rejection::InvalidApiKey)?;
        Ok(Presented {
            id: parsed.id().to_owned(),
            digest: parsed.digest(),
            environment: Some(parsed.environment()),
        })
    } else if allow_opaque {
        check_text(&key).map_err(|_| Rejection::InvalidApiKey)?;
        let digest = SecretDigest::of(key.as_bytes());
        Ok(Presented {
            id: digest.to_hex(),
            digest,
            environment: None,
        })
    } else {
        Err(Rejection::InvalidApiKey)
    }
}

/// Verifies a presented digest against the cached key. Whether the key is revoked, disabled or
/// expired is said only once the secret matched, so nobody learns the state of ids they guessed.
///
/// # Errors
/// `InvalidApiKey` when the secret (or the environment written in the key) does not match; then
/// the state's own rejection.
pub(crate) fn verify<'k>(
    key: &'k CachedKey,
    digest: &SecretDigest,
    environment: Option<Environment>,
    now: SystemTime,
) -> Result<&'k Principal, Rejection> {
    let same_environment = Choice::from(u8::from(environment.is_none_or(|e| e == key.environment)));
    if !bool::from(key.digest.ct_eq(digest) & same_environment) {
        return Err(Rejection::InvalidApiKey);
    }
    match key.state(now) {
        KeyState::Active => Ok(&key.principal),
        KeyState::Revoked => Err(Rejection::ApiKeyRevoked),
        KeyState::Disabled => Err(Rejection::ApiKeyDisabled),
        KeyState::Expired => Err(Rejection::ApiKeyExpired),
    }
}
