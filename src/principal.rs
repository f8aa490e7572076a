//! Who made an authenticated request: the [`Principal`] in the request's extensions.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::key::Environment;
use crate::scope::ScopeHierarchy;
use crate::store::KeyRecord;

/// The authenticated key behind a request, put into the request's extensions by
/// [`ApiKeyLayer`](crate::ApiKeyLayer).
///
/// Cloning is one reference-count increment. It holds no secret and no digest, so `Debug` is safe
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
#[derive(Clone, Debug)]
pub struct Principal(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    key_id: Box<str>,
    name: Box<str>,
    owner: Option<Box<str>>,
    environment: Environment,
    scopes: Box<[Box<str>]>,
    metadata: BTreeMap<String, String>,
    hierarchy: Arc<ScopeHierarchy>,
}

impl Principal {
    pub(crate) fn from_record(record: &KeyRecord, hierarchy: Arc<ScopeHierarchy>) -> Self {
        Principal(Arc::new(Inner {
            key_id: record.id.as_str().into(),
            name: record.name.as_str().into(),
            owner: record.owner.as_deref().map(Into::into),
            environment: record.environment,
            scopes: record.scopes.iter().map(|s| s.as_str().into()).collect(),
            metadata: record.metadata.clone(),
            hierarchy,
        }))
    }

    /// The key's public id.
    pub fn key_id(&self) -> &str {
        &self.0.key_id
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

    /// Whether the key may do what needs `required`, through wildcards and the layer's
    /// [`ScopeHierarchy`].
    pub fn has_scope(&self, required: &str) -> bool {
        self.0
            .scopes
            .iter()
            .any(|granted| self.0.hierarchy.grants(granted, required))
    }
}
