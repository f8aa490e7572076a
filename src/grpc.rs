//! With the `tonic` feature: rejections that gRPC clients understand.
//!
//! A request whose `content-type` is `application/grpc` (or `application/grpc+proto` and the like)
//! is answered with a trailers-only gRPC response: HTTP 200, `content-type: application/grpc`,
//! `grpc-status` and `grpc-message` in the headers, no body. `grpc-message` is the same code as the
//! JSON body's (`INVALID_API_KEY`), so a client can match on it. Other requests to the same
//! server still get the JSON body.
//!
//! A gRPC-Web request (`application/grpc-web`, `application/grpc-web-text`, with or without
//! `+proto`) gets the same trailers-only answer in gRPC-Web's form: `content-type:
//! application/grpc-web+proto` (or `-text+proto`) and `access-control-expose-headers:
//! grpc-status, grpc-message`, so a browser client may read the status. So the layer can sit in
//! front of tonic-web's `GrpcWebLayer` as well as behind it.
//!
//! | rejection | gRPC status |
//! |---|---|
//! | 401s, `MULTIPLE_API_KEYS` | `UNAUTHENTICATED` (16) |
//! | `INSUFFICIENT_PERMISSIONS`, `IP_NOT_ALLOWED` | `PERMISSION_DENIED` (7) |
//! | `RATE_LIMIT_EXCEEDED`, `USAGE_EXCEEDED` | `RESOURCE_EXHAUSTED` (8) |
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
use http::header::{ACCESS_CONTROL_EXPOSE_HEADERS, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response};

use crate::rejection::Rejection;

/// Which gRPC protocol a request speaks, by its content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// `application/grpc`, with or without a suffix.
    Grpc,
    /// `application/grpc-web`, binary.
    GrpcWeb,
    /// `application/grpc-web-text`, base64.
    GrpcWebText,
}

/// The gRPC protocol of a request, if it speaks one: its content type is `application/grpc`,
/// `application/grpc-web` or `application/grpc-web-text`, each with or without a suffix
/// (`+proto`, `;charset=…`).
pub(crate) fn protocol(headers: &HeaderMap) -> Option<Protocol> {
    let value = headers.get(CONTENT_TYPE)?.as_bytes();
    let rest = strip_prefix_ignore_case(value, b"application/grpc")?;
    let (protocol, rest) = if let Some(rest) = strip_prefix_ignore_case(rest, b"-web-text") {
        (Protocol::GrpcWebText, rest)
    } else if let Some(rest) = strip_prefix_ignore_case(rest, b"-web") {
        (Protocol::GrpcWeb, rest)
    } else {
        (Protocol::Grpc, rest)
    };
    matches!(rest.first(), None | Some(b'+' | b';')).then_some(protocol)
}

fn strip_prefix_ignore_case<'v>(value: &'v [u8], prefix: &[u8]) -> Option<&'v [u8]> {
    let (head, rest) = value.split_at_checked(prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then_some(rest)
}

/// The trailers-only response for `rejection` in `protocol`.
pub(crate) fn response(rejection: Rejection, protocol: Protocol) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    let headers = response.headers_mut();
    let content_type = match protocol {
        Protocol::Grpc => "application/grpc",
        Protocol::GrpcWeb => "application/grpc-web+proto",
        Protocol::GrpcWebText => "application/grpc-web-text+proto",
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        "grpc-status",
        HeaderValue::from(rejection.grpc_code() as i32),
    );
    headers.insert("grpc-message", HeaderValue::from_static(rejection.code()));
    if protocol != Protocol::Grpc {
        headers.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("grpc-status, grpc-message"),
        );
    }
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
            Rejection::InsufficientPermissions | Rejection::IpNotAllowed => {
                tonic::Code::PermissionDenied
            }
            Rejection::RateLimitExceeded | Rejection::UsageExceeded => {
                tonic::Code::ResourceExhausted
            }
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
        use Protocol::{Grpc, GrpcWeb, GrpcWebText};
        for (value, expected) in [
            ("application/grpc", Some(Grpc)),
            ("application/grpc+proto", Some(Grpc)),
            ("application/grpc+json", Some(Grpc)),
            ("Application/GRPC", Some(Grpc)),
            ("application/grpc;charset=utf-8", Some(Grpc)),
            ("application/grpc-web", Some(GrpcWeb)),
            ("application/grpc-web+proto", Some(GrpcWeb)),
            ("Application/gRPC-Web+proto", Some(GrpcWeb)),
            ("application/grpc-web-text", Some(GrpcWebText)),
            ("application/grpc-web-text+proto", Some(GrpcWebText)),
            ("application/grpc-webx", None),
            ("application/grpc-web-textual", None),
            ("application/grpcx", None),
            ("application/json", None),
            ("application/grp", None),
            ("", None),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(protocol(&headers), expected, "{value}");
        }
        assert_eq!(protocol(&HeaderMap::new()), None);
    }

    #[test]
    fn the_response_is_trailers_only_in_the_request_s_protocol() {
        for (protocol, content_type, exposed) in [
            (Protocol::Grpc, "application/grpc", false),
            (Protocol::GrpcWeb, "application/grpc-web+proto", true),
            (
                Protocol::GrpcWebText,
                "application/grpc-web-text+proto",
                true,
            ),
        ] {
            let response = response(Rejection::KeyStoreUnavailable, protocol);
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["grpc-status"], "14");
            assert_eq!(response.headers()["grpc-message"], "KEY_STORE_UNAVAILABLE");
            assert_eq!(response.headers()["content-type"], content_type);
            assert_eq!(
                response
                    .headers()
                    .contains_key(ACCESS_CONTROL_EXPOSE_HEADERS),
                exposed
            );
            assert!(response.body().is_empty());
        }
    }
}
