//! The route-level layer that requires scopes of the authenticated key.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::body::ResponseBody;
use crate::future::ResponseFuture;
use crate::principal::Principal;
use crate::reject::{Rejection, RejectionResponder, Rejections};

/// Requires scopes of the key that [`ApiKeyLayer`](crate::ApiKeyLayer) authenticated; answers
/// 403 `INSUFFICIENT_PERMISSIONS` otherwise.
///
/// Put it on the routes that need it (axum's `route_layer`), inside the `ApiKeyLayer`. A request
/// that reaches it without a [`Principal`] (the `ApiKeyLayer` is missing) is answered 500
/// `API_KEY_LAYER_MISSING`: it fails closed.
///
/// ```
/// use axum::{routing::{get, put}, Router};
/// use tower_api_key::{ApiKeyLayer, MemoryStore, RequireScopeLayer};
///
/// let app: Router = Router::new()
///     .route("/offers", put(|| async { "updated" }))
///     .route_layer(RequireScopeLayer::all(["admin"]))
///     .route("/recommendations", get(|| async { "[]" }).route_layer(RequireScopeLayer::all(["read"])))
///     .layer(ApiKeyLayer::new("mesh", MemoryStore::new()).unwrap());
/// ```
#[derive(Clone, Debug)]
pub struct RequireScopeLayer {
    requirement: Arc<Requirement>,
    rejections: Arc<Rejections>,
}

#[derive(Debug)]
enum Requirement {
    All(Box<[Box<str>]>),
    Any(Box<[Box<str>]>),
}

impl RequireScopeLayer {
    /// Requires every one of `scopes`.
    pub fn all<I: IntoIterator<Item = S>, S: AsRef<str>>(scopes: I) -> Self {
        Self::with(Requirement::All(collect(scopes)))
    }

    /// Requires at least one of `scopes` (none given: nothing passes).
    pub fn any<I: IntoIterator<Item = S>, S: AsRef<str>>(scopes: I) -> Self {
        Self::with(Requirement::Any(collect(scopes)))
    }

    fn with(requirement: Requirement) -> Self {
        RequireScopeLayer {
            requirement: Arc::new(requirement),
            rejections: Arc::new(Rejections::default()),
        }
    }

    /// Builds the 403 and 500 responses with `responder` instead of the JSON default.
    pub fn rejection_responder(mut self, responder: impl RejectionResponder) -> Self {
        self.rejections = Arc::new(Rejections {
            responder: Arc::new(responder),
            ..Rejections::default()
        });
        self
    }
}

fn collect<I: IntoIterator<Item = S>, S: AsRef<str>>(scopes: I) -> Box<[Box<str>]> {
    scopes.into_iter().map(|s| s.as_ref().into()).collect()
}

impl Requirement {
    fn allows(&self, principal: &Principal) -> bool {
        match self {
            Requirement::All(scopes) => scopes.iter().all(|s| principal.has_scope(s)),
            Requirement::Any(scopes) => scopes.iter().any(|s| principal.has_scope(s)),
        }
    }
}

impl<S> Layer<S> for RequireScopeLayer {
    type Service = RequireScope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScope {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`RequireScopeLayer`].
#[derive(Clone, Debug)]
pub struct RequireScope<S> {
    inner: S,
    layer: RequireScopeLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireScope<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let rejection = match request.extensions().get::<Principal>() {
            Some(principal) if self.layer.requirement.allows(principal) => {
                return ResponseFuture::inner(self.inner.call(request));
            }
            Some(_) => Rejection::InsufficientPermissions,
            None => Rejection::LayerMissing,
        };
        ResponseFuture::rejected(self.layer.rejections.response(rejection, request.headers()))
    }
}
