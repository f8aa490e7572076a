//! Who made an authenticated request: the [`Principal`] in the request's extensions.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::key::{Environment, SecretDigest};
use crate::limit::{Policy, RefillPeriod};
use crate::reject::Rejections;
use crate::scope::ScopeHierarchy;
use crate::store::{KeyRecord, KeyState, OwnerRecord};
use crate::usage::Recording;

/// The authenticated key behind a request, put into the request's extensions by
/// [`ApiKeyLayer`](crate::ApiKeyLayer).
///
/// Cloning is one reference-count increment. It holds no secret, and its `Debug` shows neither the
/// digest it is checked against nor an opaque key's whole id, so it is safe
/// to log.
///
/// ```
/// use axum::{routing::get, Extension, Router};
/// use tower_api_key::Principal;
///
/// async fn whoami(Extension(principal): Extension<Principal>) -> String {
///     format!("{} ({}) may read: {}", principal.name(), principal.key_id(), principal.has_scope("read"))
/// }
/// let app: Router = Router::new().route("/whoami", get(whoami));
/// ```
#[derive(Clone)]
pub struct Principal(Arc<Inner>);

/// The layer that vouched for a principal: how its scopes imply each other, how refusals are
/// answered (so [`RequireScopeLayer`](crate::RequireScopeLayer) answers as the layer does), and
/// where its requests are counted (so a response is counted through the principal it carries,
/// with no other reference to the layer kept per request).
pub(crate) struct Authority {
    pub(crate) hierarchy: ScopeHierarchy,
    pub(crate) rejections: Rejections,
    pub(crate) recording: Option<Recording>,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("hierarchy", &self.hierarchy)
            .field("rejections", &self.rejections)
            .field("recording", &self.recording.is_some())
            .finish()
    }
}

/// The mark a layer that allows anonymous requests leaves on a request that carried no key, so
/// the scope check and the extractor behind it answer `MISSING_API_KEY` as the layer would,
/// rather than "no layer in front".
#[derive(Clone, Debug)]
pub(crate) struct Anonymous(pub(crate) Arc<Authority>);

/// A key's id: inline when it is short (up to 23 bytes; a structured key's id is 12
/// characters), so that a lookup compares it without reading another allocation, a cached key
/// costs one allocation fewer, and reading it as text costs no UTF-8 check (`smol_str`).
pub(crate) type KeyId = smol_str::SmolStr;

/// What verification needs of a cached key, kept in the principal itself: one allocation per
/// cached key, and the hot path reads it where it takes the principal. In declaration order
/// (`repr(C)`), after the key's id, so that a lookup's reads (the reference count, the id, the
/// digest, the state) fall in the allocation's first two cache lines.
#[repr(C)]
pub(crate) struct KeyCheck {
    pub(crate) digest: SecretDigest,
    revoked: bool,
    disabled: bool,
    expires_at: Option<SystemTime>,
    /// What only some keys have; `None` (and no allocation) for a key with none of it.
    pub(crate) restrictions: Option<Box<Restrictions>>,
}

/// A key's restrictions beyond its state and scopes.
pub(crate) struct Restrictions {
    /// Its rate limits and quotas, and the bucket they are counted in.
    pub(crate) policy: Option<Policy>,
    /// The limits set on its owner, counted for all of the owner's keys.
    pub(crate) owner_policy: Option<Policy>,
    /// The networks it may be used from; empty: anywhere.
    pub(crate) networks: Box<[IpNet]>,
    /// Set when the key has credits, spent in the store by every admitted request.
    pub(crate) credits: Option<Metered>,
    /// Set when its owner has credits, spent by every admitted request of any of its keys.
    pub(crate) owner_credits: Option<Metered>,
    /// The name of its plan, if it has one (for handlers: the request path does not read it).
    plan: Option<Box<str>>,
}

/// A key with credits: how its refill periods are counted, if they are refilled.
#[derive(Clone, Copy)]
pub(crate) struct Metered {
    pub(crate) refill: Option<RefillPeriod>,
}

impl KeyCheck {
    /// The key's state at `now`, in the same order as [`KeyRecord::state`].
    pub(crate) fn state(&self, now: SystemTime) -> KeyState {
        KeyState::of(self.revoked, self.disabled, self.expires_at, now)
    }
}

/// In declaration order (`repr(C)`): what a lookup reads first.
#[repr(C)]
struct Inner {
    /// The cache's map compares it as its key.
    key_id: KeyId,
    check: KeyCheck,
    environment: Environment,
    name: Box<str>,
    owner: Option<Box<str>>,
    scopes: Box<[Box<str>]>,
    metadata: BTreeMap<String, String>,
    authority: Arc<Authority>,
}

impl Principal {
    /// The principal of `record`, with the limits `policy` and what is set on its `owner`.
    pub(crate) fn from_record(
        record: &KeyRecord,
        authority: Arc<Authority>,
        policy: Option<Policy>,
        owner: Option<&OwnerRecord>,
    ) -> Self {
        let metered = |credits: &crate::limit::Credits| Metered {
            refill: credits.refill.map(|r| r.every),
        };
        let owner_policy =
            owner.and_then(|o| Policy::of_owner(&o.owner, o.limits.as_ref(), record.environment));
        let owner_credits = owner.and_then(|o| o.credits.as_ref()).map(metered);
        Principal(Arc::new(Inner {
            check: KeyCheck {
                digest: record.digest,
                revoked: record.revoked_at.is_some(),
                disabled: record.disabled,
                expires_at: record.expires_at,
                restrictions: (policy.is_some()
                    || owner_policy.is_some()
                    || !record.allowed_networks.is_empty()
                    || record.credits.is_some()
                    || owner_credits.is_some()
                    || record.plan.is_some())
                .then(|| {
                    Box::new(Restrictions {
                        policy,
                        owner_policy,
                        networks: record.allowed_networks.as_slice().into(),
                        credits: record.credits.as_ref().map(metered),
                        owner_credits,
                        plan: record.plan.as_deref().map(Box::from),
                    })
                }),
            },
            key_id: KeyId::new(&record.id),
            name: record.name.as_str().into(),
            owner: record.owner.as_deref().map(Into::into),
            environment: record.environment,
            scopes: record.scopes.iter().map(|s| s.as_str().into()).collect(),
            metadata: record.metadata.clone(),
            authority,
        }))
    }

    /// The key's id, as the store knows it. For a structured key this is its public id, safe to
    /// log. For an opaque key ([`KeyRecord::opaque`]) it is the SHA-256 digest of the key, which
    /// is what the store holds instead of the key: log [`Principal::log_id`] instead.
    pub fn key_id(&self) -> &str {
        self.0.key_id.as_str()
    }

    /// The key's id as bytes, without the check that they are text: what the cache compares.
    pub(crate) fn key_id_bytes(&self) -> &[u8] {
        self.0.key_id.as_bytes()
    }

    /// The key's id as this crate's events name it, safe to log: the public id of a structured
    /// key; for an opaque key, the first 12 hex characters of its digest (enough to find the
    /// record, not the digest the store holds).
    ///
    /// ```
    /// use tower_api_key::{Environment, store::KeyRecord};
    ///
    /// let record = KeyRecord::opaque("sk_legacy_4f9a2c", "old client", Environment::Live);
    /// assert_eq!(record.id.len(), 64, "the digest, in hex");
    /// assert_eq!(tower_api_key::log_id(&record.id), &record.id[..12]);
    /// assert_eq!(tower_api_key::log_id("3kTMd9Qx2bLp"), "3kTMd9Qx2bLp");
    /// ```
    pub fn log_id(&self) -> &str {
        crate::trace::log_id(self.key_id())
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Who the key belongs to, if the record says.
    pub fn owner(&self) -> Option<&str> {
        self.0.owner.as_deref()
    }

    /// The key's environment: route `test` keys to sandbox data.
    pub fn environment(&self) -> Environment {
        self.0.environment
    }

    /// The scopes granted to the key, as stored.
    pub fn scopes(&self) -> impl ExactSizeIterator<Item = &str> {
        self.0.scopes.iter().map(|s| &**s)
    }

    /// The record's metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.0.metadata
    }

    /// The name of the key's plan, if it has one: what a handler offers by plan (the layer
    /// already counts the plan's limits).
    ///
    /// ```
    /// use axum::{http::StatusCode, routing::get, Extension, Router};
    /// use tower_api_key::Principal;
    ///
    /// async fn export(Extension(principal): Extension<Principal>) -> Result<String, StatusCode> {
    ///     match principal.plan() {
    ///         Some("enterprise") => Ok("report.csv".to_owned()),
    ///         _ => Err(StatusCode::PAYMENT_REQUIRED),
    ///     }
    /// }
    /// let app: Router = Router::new().route("/export", get(export));
    /// ```
    pub fn plan(&self) -> Option<&str> {
        let restrictions = self.0.check.restrictions.as_deref();
        restrictions.and_then(|r| r.plan.as_deref())
    }

    /// When the key expires, if it does: for a handler that warns of it (GitHub answers with a
    /// `github-authentication-token-expiration` header). The layer refuses the key from then on.
    ///
    /// ```
    /// use std::time::UNIX_EPOCH;
    /// use axum::{extract::Request, middleware::Next, response::Response};
    /// use tower_api_key::Principal;
    ///
    /// // Inside the key layer: `.layer(from_fn(warn_expiry)).layer(api_key_layer)`.
    /// async fn warn_expiry(request: Request, next: Next) -> Response {
    ///     let expires = (request.extensions().get::<Principal>())
    ///         .and_then(Principal::expires_at)
    ///         .and_then(|at| at.duration_since(UNIX_EPOCH).ok());
    ///     let mut response = next.run(request).await;
    ///     if let Some(since) = expires {
    ///         // Seconds since 1970.
    ///         response.headers_mut().insert("api-key-expires", since.as_secs().into());
    ///     }
    ///     response
    /// }
    /// ```
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.0.check.expires_at
    }

    /// Whether the key may do what needs `required`, through wildcards and the layer's
    /// [`ScopeHierarchy`].
    pub fn has_scope(&self, required: &str) -> bool {
        self.0
            .scopes
            .iter()
            .any(|granted| self.0.authority.hierarchy.grants(granted, required))
    }

    /// What verification needs.
    pub(crate) fn check(&self) -> &KeyCheck {
        &self.0.check
    }

    /// How the layer that authenticated this key answers refusals.
    pub(crate) fn rejections(&self) -> &Rejections {
        &self.0.authority.rejections
    }

    /// Where the layer that authenticated this key counts its requests, if it does.
    pub(crate) fn recording(&self) -> Option<&Recording> {
        self.0.authority.recording.as_ref()
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the digest nor the limits' bucket: what a handler may log.
        let inner = &self.0;
        f.debug_struct("Principal")
            .field("key_id", &self.log_id())
            .field("name", &inner.name)
            .field("owner", &inner.owner)
            .field("environment", &inner.environment)
            .field("scopes", &inner.scopes)
            .field("metadata", &inner.metadata)
            .field("plan", &self.plan())
            .field("expires_at", &inner.check.expires_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::KeyId;

    #[test]
    fn key_ids_read_back_inline_or_not() {
        for id in [
            "3kTMd9Qx2bLp",
            "",
            "é",
            &"a".repeat(23),
            &"b".repeat(24),
            &"f".repeat(64),
        ] {
            let key_id = KeyId::new(id);
            assert_eq!(key_id.as_str(), id);
            assert_eq!(key_id.as_bytes(), id.as_bytes());
            assert_eq!(!key_id.is_heap_allocated(), id.len() <= 23, "{id}");
        }
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<KeyId>(), 24);
    }
}
