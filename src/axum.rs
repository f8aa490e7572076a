//! With the `axum` feature: [`Principal`] as an axum extractor.

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use crate::principal::Principal;
use crate::reject::{JsonRejection, Rejection, RejectionResponder};

/// The error of extracting a [`Principal`] from a request that has none: the handler runs without
/// an [`ApiKeyLayer`](crate::ApiKeyLayer) in front of it. Answered 500
/// `API_KEY_LAYER_MISSING`, so a misconfigured route fails closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingPrincipal;

impl std::fmt::Display for MissingPrincipal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no Principal in the request extensions: is ApiKeyLayer applied to this route?")
    }
}

impl std::error::Error for MissingPrincipal {}

impl IntoResponse for MissingPrincipal {
    fn into_response(self) -> Response {
        JsonRejection
            .respond(&Rejection::LayerMissing, &http::HeaderMap::new())
            .map(axum_core::body::Body::from)
    }
}

/// ```
/// use axum::{routing::get, Router};
/// use tower_api_key::Principal;
///
/// async fn me(principal: Principal) -> String {
///     principal.key_id().to_owned()
/// }
/// // `Option<Principal>` for routes where the key is optional.
/// async fn maybe(principal: Option<Principal>) -> &'static str {
///     if principal.is_some() { "known" } else { "anonymous" }
/// }
/// let app: Router = Router::new().route("/me", get(me)).route("/maybe", get(maybe));
/// ```
impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = MissingPrincipal;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(MissingPrincipal)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}
