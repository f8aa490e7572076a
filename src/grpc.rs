//! With the `tonic` feature: rejections that gRPC clients understand.
//!
//! A request whose `content-type` is `application/grpc` (or `application/grpc+proto` and the like)
//! is answered with a trailers-only gRPC response: HTTP 200, `content-type: application/grpc`,
//! `grpc-status` and `grpc-message` in the headers, no body. `grpc-message` is the same code as the
//! JSON body's (`INVALID_API_KEY`), so a client can match on it. Other requests to the same
//! server still get the JSON body.
//!
//! | rejection | gRPC status |
//! |---|---|
//! | 401s, `MULTIPLE_API_KEYS` | `UNAUTHENTICATED` (16) |
//! | `INSUFFICIENT_PERMISSIONS` | `PERMISSION_DENIED` (7) |
//! | `RATE_LIMIT_EXCEEDED` | `RESOURCE_EXHAUSTED` (8) |
//! | `KEY_STORE_UNAVAILABLE`, `RATE_LIMITER_UNAVAILABLE` | `UNAVAILABLE` (14) |
//! | `API_KEY_LAYER_MISSING` | `INTERNAL` (13) |
//!
//! A tonic handler finds the authenticated key in the request's extensions, and a server checks
//! scopes per method with [`RequireScopeLayer::per_path`](crate::RequireScopeLayer::per_path):
//!
//! ```
//! use tower_api_key::{Principal, RequireScopeLayer, scope::ScopeRequirement};
//!
//! // Inside a `#[tonic::async_trait]` service implementation:
//! fn caller(request: &tonic::Request<()>) -> Option<&str> {
//!     request.extensions().get::<Principal>().map(Principal::name)
//! }
//!
//! let per_method = RequireScopeLayer::per_path(
//!     [
//!         ("/kv.v1.Store/Get", ScopeRequirement::all(["read"])),
//!         ("/kv.v1.Store/Set", ScopeRequirement::all(["write"])),
//!     ],
//!     ScopeRequirement::all(["admin"]),
//! );
//! // tonic::transport::Server::builder()
//! //     .layer(tower::ServiceBuilder::new().layer(api_key_layer).layer(per_method))
//! ```
//!
//! ```
//! use tower_api_key::reject::Rejection;
//!
//! let status = tonic::Status::from(Rejection::InsufficientPermissions);
//! assert_eq!(status.code(), tonic::Code::PermissionDenied);
//! assert_eq!(status.message(), "INSUFFICIENT_PERMISSIONS");
//! ```

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response};

use crate::rejection::Rejection;

/// Whether the request is gRPC: its content type is `application/grpc` with or without a suffix.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value.len() >= 16
            && value[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(value.get(16), None | Some(b'+' | b';'))
    })
}

/// The trailers-only gRPC response for `rejection`.
pub(crate) fn response(rejection: Rejection) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(
        "grpc-status",
        HeaderValue::from(rejection.grpc_code() as i32),
    );
    headers.insert("grpc-message", HeaderValue::from_static(rejection.code()));
    response
}

impl Rejection {
    /// The gRPC status code of this rejection.
    pub const fn grpc_code(self) -> tonic::Code {
        match self {
            Rejection::MissingApiKey
            | Rejection::InvalidApiKey
            | Rejection::MultipleApiKeys
            | Rejection::ApiKeyRevoked
            | Rejection::ApiKeyExpired
            | Rejection::ApiKeyDisabled
            | Rejection::EnvironmentNotAllowed => tonic::Code::Unauthenticated,
            Rejection::InsufficientPermissions => tonic::Code::PermissionDenied,
            Rejection::RateLimitExceeded => tonic::Code::ResourceExhausted,
            Rejection::KeyStoreUnavailable | Rejection::LimiterUnavailable => {
                tonic::Code::Unavailable
            }
            Rejection::LayerMissing => tonic::Code::Internal,
        }
    }
}

impl From<Rejection> for tonic::Status {
    fn from(rejection: Rejection) -> Self {
        tonic::Status::new(rejection.grpc_code(), rejection.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types_are_recognised() {
        for (value, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc+json", true),
            ("Application/GRPC", true),
            ("application/grpc;charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/json", false),
            ("application/grp", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_grpc(&headers), grpc, "{value}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn the_response_is_trailers_only() {
        let response = response(Rejection::KeyStoreUnavailable);
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(response.headers()["grpc-message"], "KEY_STORE_UNAVAILABLE");
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert!(response.body().is_empty());
    }
}
