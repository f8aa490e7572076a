//! The endpoint a request went to, as usage is counted by: an [`Endpoint`] put into the request,
//! axum's route template, or a gRPC method's path. Never the raw URI: a path with ids in it
//! would make every request its own endpoint.

use std::sync::Arc;

use http::header::CONTENT_TYPE;
use http::uri::PathAndQuery;
use http::{Extensions, HeaderMap, Method, Uri};

/// The endpoint a request goes to, named for usage: put it into the request's extensions, in
/// front of the layer, when the layer cannot read your framework's own. The layer reads axum's
/// route template itself with the `axum` feature, and a gRPC method's path always.
///
/// Name routes, not paths: `/users/{id}`, never `/users/42`.
///
/// ```
/// use tower_api_key::usage::Endpoint;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(Endpoint::new("/users/{id}"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint(Arc<str>);

impl Endpoint {
    /// The endpoint named `name`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Endpoint(name.into())
    }

    /// Its name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The endpoint of a request, kept until its response for the usage sink.
#[derive(Clone, Debug)]
pub(crate) enum Route {
    /// Named by the application.
    Named(Endpoint),
    /// axum's route template, when the layer runs inside the router.
    #[cfg(feature = "axum")]
    Template(::axum::extract::MatchedPath),
    /// A gRPC request's path: `/package.Service/Method`.
    Grpc(PathAndQuery),
}

impl Route {
    /// The endpoint of a request with these parts, if it has one a sink may count by.
    pub(crate) fn of(
        method: &Method,
        headers: &HeaderMap,
        extensions: &Extensions,
        uri: &Uri,
    ) -> Option<Route> {
        if let Some(endpoint) = extensions.get::<Endpoint>() {
            return Some(Route::Named(endpoint.clone()));
        }
        #[cfg(feature = "axum")]
        if let Some(matched) = extensions.get::<::axum::extract::MatchedPath>() {
            return Some(Route::Template(matched.clone()));
        }
        // gRPC calls are POSTs: other requests skip the header lookup.
        let grpc = method == Method::POST
            && headers
                .get(CONTENT_TYPE)
                .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            return uri.path_and_query().cloned().map(Route::Grpc);
        }
        None
    }

    /// The endpoint's name.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Route::Named(endpoint) => endpoint.as_str(),
            #[cfg(feature = "axum")]
            Route::Template(matched) => matched.as_str(),
            Route::Grpc(path) => path.path(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_method_is_its_path_and_a_plain_request_has_none() {
        let mut headers = HeaderMap::new();
        let uri: Uri = "/users/42?full=1".parse().unwrap();
        let post = Method::POST;
        assert!(Route::of(&post, &headers, &Extensions::new(), &uri).is_none());
        headers.insert(CONTENT_TYPE, "application/grpc+proto".parse().unwrap());
        let uri: Uri = "/mesh.Keys/List".parse().unwrap();
        assert!(Route::of(&Method::GET, &headers, &Extensions::new(), &uri).is_none());
        let route = Route::of(&post, &headers, &Extensions::new(), &uri).unwrap();
        assert_eq!(route.as_str(), "/mesh.Keys/List");
        // An endpoint the application names comes first.
        let mut named = Extensions::new();
        named.insert(Endpoint::new("/keys/list"));
        let route = Route::of(&post, &headers, &named, &uri).unwrap();
        assert_eq!(route.as_str(), "/keys/list");
        let route = Route::of(&post, &headers, &Extensions::new(), &uri).unwrap();
        assert_eq!(route.as_str(), "/mesh.Keys/List");
    }
}
