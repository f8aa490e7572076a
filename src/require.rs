//! The route-level layer that requires scopes of the authenticated key.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::body::ResponseBody;
use crate::future::ResponseFuture;
use crate::principal::{Anonymous, Principal};
use crate::reject::{Rejection, RejectionResponder, Rejections};
use crate::scope::ScopeRequirement;

/// Requires scopes of the key that [`ApiKeyLayer`](crate::ApiKeyLayer) authenticated; answers
/// 403 `INSUFFICIENT_PERMISSIONS` otherwise.
///
/// Put it on the routes that need it (axum's `route_layer`), inside the `ApiKeyLayer`. A request
/// that reaches it without a [`Principal`] (the `ApiKeyLayer` is missing) is answered 500
/// `API_KEY_LAYER_MISSING`: it fails closed. Behind a layer that
/// [allows anonymous requests](crate::ApiKeyLayerBuilder::allow_anonymous), it makes a route
/// private: a request without a key is answered 401 `MISSING_API_KEY`, whatever the requirement.
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
#[derive(Clone)]
#[must_use]
pub struct RequireScopeLayer {
    rule: Arc<Rule>,
    /// Its own responder; by default, the one of the layer that authenticated the request.
    responder: Option<Arc<dyn RejectionResponder>>,
}

impl std::fmt::Debug for RequireScopeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireScopeLayer")
            .field("rule", &self.rule)
            .field("own_responder", &self.responder.is_some())
            .finish()
    }
}

impl ScopeRequirement {
    /// Whether `principal` meets this requirement.
    ///
    /// ```
    /// use axum::{body::Body, routing::get, Extension, Router};
    /// use tower::ServiceExt;
    /// use tower_api_key::scope::ScopeRequirement;
    /// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, NewKey, Principal};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let store = MemoryStore::new();
    /// let layer = ApiKeyLayer::new("mesh", store.clone())?;
    /// let writer = KeyManager::new(store)
    ///     .with_cache(layer.handle())
    ///     .create(NewKey::new("writer").scopes(["write"]))
    ///     .await?;
    /// let app = Router::new()
    ///     .route("/", get(|Extension(principal): Extension<Principal>| async move {
    ///         // `admin` ⊇ `write` ⊇ `read`.
    ///         let reads = ScopeRequirement::all(["read"]).allows(&principal);
    ///         let administers = ScopeRequirement::all(["admin"]).allows(&principal);
    ///         format!("{reads} {administers}")
    ///     }))
    ///     .layer(layer);
    /// let request = http::Request::get("/")
    ///     .header("authorization", format!("ApiKey {}", writer.key.expose_secret()))
    ///     .body(Body::empty())?;
    /// let body = app.oneshot(request).await?.into_body();
    /// assert_eq!(axum::body::to_bytes(body, 64).await?, "true false");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn allows(&self, principal: &Principal) -> bool {
        self.met_by(|scope| principal.has_scope(scope))
    }
}

/// One requirement for every request, or one per request path.
#[derive(Debug)]
enum Rule {
    Everywhere(ScopeRequirement),
    PerPath {
        paths: HashMap<Box<str>, ScopeRequirement>,
        otherwise: ScopeRequirement,
    },
}

impl Rule {
    fn for_path(&self, path: &str) -> &ScopeRequirement {
        match self {
            Rule::Everywhere(requirement) => requirement,
            Rule::PerPath { paths, otherwise } => paths
                .get(path)
                .or_else(|| {
                    // `/package.Service/Method` falls back to `/package.Service/`.
                    let service = &path[..path.rfind('/').map_or(0, |at| at + 1)];
                    paths.get(service)
                })
                .unwrap_or(otherwise),
        }
    }
}

impl RequireScopeLayer {
    /// Requires every one of `scopes`.
    pub fn all<I: IntoIterator<Item = S>, S: AsRef<str>>(scopes: I) -> Self {
        Self::new(ScopeRequirement::all(scopes))
    }

    /// Requires at least one of `scopes` (none given: nothing passes).
    pub fn any<I: IntoIterator<Item = S>, S: AsRef<str>>(scopes: I) -> Self {
        Self::new(ScopeRequirement::any(scopes))
    }

    /// Requires `requirement` of every request.
    pub fn new(requirement: ScopeRequirement) -> Self {
        Self::with(Rule::Everywhere(requirement))
    }

    /// A requirement per request path, for a gRPC server's methods above all: a path is a
    /// method's full name, `/package.Service/Method`, or a whole service's, `/package.Service/`.
    /// The exact path is looked up first, then its service; a path that is not listed needs
    /// `otherwise`.
    ///
    /// ```
    /// use tower_api_key::{RequireScopeLayer, scope::ScopeRequirement};
    ///
    /// let per_method = RequireScopeLayer::per_path(
    ///     [
    ///         ("/store.v1.Store/Get", ScopeRequirement::all(["read"])),
    ///         ("/store.v1.Store/Set", ScopeRequirement::all(["write"])),
    ///         ("/store.v1.Admin/", ScopeRequirement::all(["admin"])),
    ///     ],
    ///     ScopeRequirement::none(),
    /// );
    /// ```
    pub fn per_path<I, P>(paths: I, otherwise: ScopeRequirement) -> Self
    where
        I: IntoIterator<Item = (P, ScopeRequirement)>,
        P: AsRef<str>,
    {
        Self::with(Rule::PerPath {
            paths: paths
                .into_iter()
                .map(|(path, requirement)| (path.as_ref().into(), requirement))
                .collect(),
            otherwise,
        })
    }

    fn with(rule: Rule) -> Self {
        RequireScopeLayer {
            rule: Arc::new(rule),
            responder: None,
        }
    }

    /// Builds the responses (403, the 401 of a request with no key under
    /// [`allow_anonymous`](crate::layer::ApiKeyLayerBuilder::allow_anonymous), the 500 with no
    /// layer in front) with `responder` instead of the one the
    /// [`ApiKeyLayer`](crate::ApiKeyLayer) in front was given (or, with no layer in front, the
    /// JSON default). The headers every rejection gets (`WWW-Authenticate` with the layer's
    /// realm, `Retry-After`) stay the layer's.
    pub fn rejection_responder(mut self, responder: impl RejectionResponder) -> Self {
        self.responder = Some(Arc::new(responder));
        self
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
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, NewKey, RequireScopeLayer};
///
/// let store = MemoryStore::new();
/// let auth = ApiKeyLayer::new("mesh", store.clone())?;
/// let keys = KeyManager::new(store).with_cache(auth.handle());
/// let reader = keys.create(NewKey::new("reader").scopes(["read"])).await?;
/// let service = ServiceBuilder::new()
///     .layer(auth)
///     .layer(RequireScopeLayer::all(["write"])) // a `RequireScope` around the service
///     .service_fn(|_: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     });
/// let request = http::Request::post("/")
///     .header("authorization", format!("ApiKey {}", reader.key.expose_secret()))
///     .body(())?;
/// assert_eq!(service.oneshot(request).await?.status(), 403); // INSUFFICIENT_PERMISSIONS
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
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
        let principal = request.extensions().get::<Principal>();
        let anonymous = request.extensions().get::<Anonymous>();
        let rejection = match principal {
            Some(principal)
                if self
                    .layer
                    .rule
                    .for_path(request.uri().path())
                    .allows(principal) =>
            {
                return ResponseFuture::inner(self.inner.call(request));
            }
            Some(_) => Rejection::InsufficientPermissions,
            None if anonymous.is_some() => Rejection::MissingApiKey,
            None => Rejection::LayerMissing,
        };
        let default = Rejections::default();
        let layers = match (principal, anonymous) {
            (Some(principal), _) => principal.rejections(),
            (None, Some(anonymous)) => &anonymous.0.rejections,
            (None, None) => &default,
        };
        let response = match &self.layer.responder {
            Some(own) => Rejections {
                responder: Arc::clone(own),
                ..layers.clone()
            }
            .response(rejection, request.headers()),
            None => layers.response(rejection, request.headers()),
        };
        ResponseFuture::rejected(response)
    }
}
