//! [`Rejection`]: why a request was refused, with its status, code and message. Below both the
//! JSON and the gRPC answers; [`crate::reject`] is its public home.

use std::fmt;

use http::StatusCode;
use serde::Serialize;

/// Why a request was refused.
///
/// Every rejection response carries its `Rejection` in its extensions, for a layer outside to
/// read:
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tower::{Layer, ServiceExt};
/// use tower_api_key::{reject::Rejection, ApiKeyLayer, MemoryStore};
///
/// let service = ApiKeyLayer::new("mesh", MemoryStore::new())?.layer(tower::service_fn(
///     |_: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(())) },
/// ));
/// let request = http::Request::get("/").header("authorization", "ApiKey mesh_live_nonsense").body(())?;
/// let response = service.oneshot(request).await?;
/// let rejection = response.extensions().get::<Rejection>().copied();
/// assert_eq!(rejection, Some(Rejection::InvalidApiKey));
/// assert_eq!(response.status(), Rejection::InvalidApiKey.status());
/// assert_eq!(Rejection::InvalidApiKey.code(), "INVALID_API_KEY");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// No key in any configured source.
    MissingApiKey,
    /// Malformed, bad checksum, unknown id, or wrong secret: nothing more is said.
    InvalidApiKey,
    /// Two different keys in one request.
    MultipleApiKeys,
    /// The key was revoked.
    ApiKeyRevoked,
    /// The key has expired.
    ApiKeyExpired,
    /// The key is disabled.
    ApiKeyDisabled,
    /// The key lacks a required scope.
    InsufficientPermissions,
    /// The key's credits are spent (they refill at the start of its next refill period, or when
    /// topped up).
    UsageExceeded,
    /// The request comes from outside the networks the key is restricted to (or from an address
    /// the layer cannot know).
    IpNotAllowed,
    /// The key's environment (`test`, `dev`) is not accepted by this layer.
    EnvironmentNotAllowed,
    /// Over the key's rate limit or quota.
    RateLimitExceeded,
    /// The store failed or timed out.
    KeyStoreUnavailable,
    /// The rate limiter failed.
    LimiterUnavailable,
    /// A scope check ran without an `ApiKeyLayer` before it: a server misconfiguration.
    LayerMissing,
}

impl Rejection {
    /// Every rejection.
    pub const ALL: [Rejection; 14] = [
        Rejection::MissingApiKey,
        Rejection::InvalidApiKey,
        Rejection::MultipleApiKeys,
        Rejection::ApiKeyRevoked,
        Rejection::ApiKeyExpired,
        Rejection::ApiKeyDisabled,
        Rejection::EnvironmentNotAllowed,
        Rejection::RateLimitExceeded,
        Rejection::InsufficientPermissions,
        Rejection::KeyStoreUnavailable,
        Rejection::LimiterUnavailable,
        Rejection::LayerMissing,
        Rejection::IpNotAllowed,
        Rejection::UsageExceeded,
    ];

    /// Its position in [`Rejection::ALL`].
    pub(crate) const fn index(self) -> usize {
        match self {
            Rejection::MissingApiKey => 0,
            Rejection::InvalidApiKey => 1,
            Rejection::MultipleApiKeys => 2,
            Rejection::ApiKeyRevoked => 3,
            Rejection::ApiKeyExpired => 4,
            Rejection::ApiKeyDisabled => 5,
            Rejection::EnvironmentNotAllowed => 6,
            Rejection::RateLimitExceeded => 7,
            Rejection::InsufficientPermissions => 8,
            Rejection::KeyStoreUnavailable => 9,
            Rejection::LimiterUnavailable => 10,
            Rejection::LayerMissing => 11,
            Rejection::IpNotAllowed => 12,
            Rejection::UsageExceeded => 13,
        }
    }

    /// The machine-readable code, such as `INVALID_API_KEY`.
    pub const fn code(self) -> &'static str {
        match self {
            Rejection::MissingApiKey => "MISSING_API_KEY",
            Rejection::InvalidApiKey => "INVALID_API_KEY",
            Rejection::MultipleApiKeys => "MULTIPLE_API_KEYS",
            Rejection::ApiKeyRevoked => "API_KEY_REVOKED",
            Rejection::ApiKeyExpired => "API_KEY_EXPIRED",
            Rejection::ApiKeyDisabled => "API_KEY_DISABLED",
            Rejection::InsufficientPermissions => "INSUFFICIENT_PERMISSIONS",
            Rejection::IpNotAllowed => "IP_NOT_ALLOWED",
            Rejection::UsageExceeded => "USAGE_EXCEEDED",
            Rejection::EnvironmentNotAllowed => "API_KEY_ENVIRONMENT_NOT_ALLOWED",
            Rejection::RateLimitExceeded => "RATE_LIMIT_EXCEEDED",
            Rejection::KeyStoreUnavailable => "KEY_STORE_UNAVAILABLE",
            Rejection::LimiterUnavailable => "RATE_LIMITER_UNAVAILABLE",
            Rejection::LayerMissing => "API_KEY_LAYER_MISSING",
        }
    }

    /// The HTTP status.
    pub const fn status(self) -> StatusCode {
        match self {
            Rejection::MissingApiKey
            | Rejection::InvalidApiKey
            | Rejection::ApiKeyRevoked
            | Rejection::ApiKeyExpired
            | Rejection::ApiKeyDisabled
            | Rejection::EnvironmentNotAllowed => StatusCode::UNAUTHORIZED,
            Rejection::MultipleApiKeys => StatusCode::BAD_REQUEST,
            Rejection::InsufficientPermissions | Rejection::IpNotAllowed => StatusCode::FORBIDDEN,
            Rejection::RateLimitExceeded | Rejection::UsageExceeded => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Rejection::KeyStoreUnavailable | Rejection::LimiterUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Rejection::LayerMissing => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The human-readable message, such as `Invalid API key`.
    pub const fn message(self) -> &'static str {
        match self {
            Rejection::MissingApiKey => "Missing API key",
            Rejection::InvalidApiKey => "Invalid API key",
            Rejection::MultipleApiKeys => "More than one API key in the request",
            Rejection::ApiKeyRevoked => "API key has been revoked",
            Rejection::ApiKeyExpired => "API key has expired",
            Rejection::ApiKeyDisabled => "API key is disabled",
            Rejection::InsufficientPermissions => "Insufficient permissions",
            Rejection::IpNotAllowed => "API key may not be used from this address",
            Rejection::UsageExceeded => "Usage limit exceeded",
            Rejection::EnvironmentNotAllowed => {
                "API keys of this environment are not accepted here"
            }
            Rejection::RateLimitExceeded => "Rate limit exceeded",
            Rejection::KeyStoreUnavailable => "Key store unavailable, try again later",
            Rejection::LimiterUnavailable => "Rate limiter unavailable, try again later",
            Rejection::LayerMissing => "API key authentication is not configured for this route",
        }
    }

    /// The default JSON body: `{"error": …, "code": …, "status": …}`.
    ///
    /// ```
    /// use tower_api_key::reject::Rejection;
    ///
    /// assert_eq!(
    ///     Rejection::InvalidApiKey.json_body(),
    ///     r#"{"error":"Invalid API key","code":"INVALID_API_KEY","status":401}"#
    /// );
    /// ```
    pub fn json_body(self) -> String {
        #[derive(Serialize)]
        struct Body {
            error: &'static str,
            code: &'static str,
            status: u16,
        }
        serde_json::to_string(&Body {
            error: self.message(),
            code: self.code(),
            status: self.status().as_u16(),
        })
        .expect("serialising three plain fields cannot fail")
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.code())
    }
}

impl std::error::Error for Rejection {}
