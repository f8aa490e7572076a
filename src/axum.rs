//! With the `axum` feature: [`Principal`] as an axum extractor.

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::HeaderMap;

use crate::principal::{Anonymous, Principal};
use crate::reject::{no_store, JsonRejection, Rejection, RejectionResponder};

/// The error of extracting a [`Principal`] from a request that has none.
///
/// Either the handler runs without an [`ApiKeyLayer`](crate::ApiKeyLayer) in front of it:
/// answered 500 `API_KEY_LAYER_MISSING`, so a misconfigured route fails closed, with the JSON
/// default (with no layer in front there is no layer's responder to use). Or the layer
/// [allows anonymous requests](crate::ApiKeyLayerBuilder::allow_anonymous) and this one carried
/// no key: answered 401 `MISSING_API_KEY` as the layer answers it, so a handler that takes a
/// `Principal` is private.
#[derive(Clone, Debug)]
pub struct MissingPrincipal {
    /// Set for an anonymous request: the layer's mark, and the request's headers (a custom
    /// responder may answer by them).
    anonymous: Option<(Anonymous, Box<HeaderMap>)>,
}

impl MissingPrincipal {
    /// Whether the request went through a layer that allows anonymous requests without a key
    /// (rather than through no layer at all).
    pub fn is_anonymous(&self) -> bool {
        self.anonymous.is_some()
    }
}

impl std::fmt::Display for MissingPrincipal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_anonymous() {
            f.write_str("the request carried no API key")
        } else {
            f.write_str(
                "no Principal in the request extensions: is ApiKeyLayer applied to this route?",
            )
        }
    }
}

impl std::error::Error for MissingPrincipal {}

impl IntoResponse for MissingPrincipal {
    fn into_response(self) -> Response {
        let response = match self.anonymous {
            Some((anonymous, headers)) => anonymous
                .0
                .rejections
                .response(Rejection::MissingApiKey, &headers),
            None => {
                let mut response =
                    JsonRejection.respond(&Rejection::LayerMissing, &HeaderMap::new());
                no_store(response.headers_mut());
                response
            }
        };
        response.map(axum_core::body::Body::from)
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
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        Err(MissingPrincipal {
            anonymous: parts
                .extensions
                .get::<Anonymous>()
                .map(|anonymous| (anonymous.clone(), Box::new(parts.headers.clone()))),
        })
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

#[cfg(test)]
mod tests {
    use axum::{body::Body, routing::get, Router};
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    use crate::{ApiKeyLayer, KeyManager, MemoryStore, NewKey, Principal};

    async fn me(principal: Principal) -> String {
        principal.name().to_owned()
    }

    async fn maybe(principal: Option<Principal>) -> String {
        principal.map_or_else(|| "anonymous".to_owned(), |p| p.name().to_owned())
    }

    async fn body(response: axum::response::Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_extractor_gives_the_principal_behind_the_layer() {
        let store = MemoryStore::new();
        let layer = ApiKeyLayer::new("mesh", store.clone()).unwrap();
        let created = KeyManager::new(store)
            .with_cache(layer.handle())
            .create(NewKey::new("extracted"))
            .await
            .unwrap();
        let app = Router::new().route("/me", get(me)).layer(layer);
        let request = Request::get("/me")
            .header(
                "authorization",
                format!("ApiKey {}", created.key.expose_secret()),
            )
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await, "extracted");
    }

    #[tokio::test]
    async fn behind_a_layer_that_allows_anonymous_requests_a_principal_handler_is_private() {
        let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
            .realm("shop")
            .allow_anonymous(true)
            .build()
            .unwrap();
        let app = Router::new()
            .route("/me", get(me))
            .route("/maybe", get(maybe))
            .layer(layer);
        let response = app
            .clone()
            .oneshot(Request::get("/me").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()["www-authenticate"],
            "ApiKey realm=\"shop\""
        );
        assert!(body(response).await.contains("MISSING_API_KEY"));
        let response = app
            .oneshot(Request::get("/maybe").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await, "anonymous");
    }

    #[tokio::test]
    async fn without_the_layer_the_extractor_fails_closed_and_says_why() {
        let app = Router::new()
            .route("/me", get(me))
            .route("/maybe", get(maybe));
        let response = app
            .clone()
            .oneshot(Request::get("/me").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert!(body(response).await.contains("API_KEY_LAYER_MISSING"));
        let missing = super::MissingPrincipal { anonymous: None };
        assert!(missing.to_string().contains("ApiKeyLayer"));
        assert!(!missing.is_anonymous());
        let response = app
            .oneshot(Request::get("/maybe").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(body(response).await, "anonymous");
    }
}
