//! Rejections: what the layer answers instead of calling the service, and how the answer's body is
//! built.
//!
//! The default body is the reference documents' JSON shape,
//! `{"error": "Invalid API key", "code": "INVALID_API_KEY", "status": 401}`, with
//! `content-type: application/json`; two answers add a field: `MISSING_API_KEY` a `hint` saying
//! how to send a key (`"Send the API key as 'Authorization: ApiKey <key>'"`, from the layer's
//! [sources](crate::extract::KeySource)), and `RATE_LIMIT_EXCEEDED` the `limit` that was hit.
//! Every rejection response also carries the typed [`Rejection`] in its extensions and
//! `Cache-Control: no-store`; 401s carry `WWW-Authenticate`, and 503s carry `Retry-After`.
//!
//! | code | status | when |
//! |---|---|---|
//! | `MISSING_API_KEY` | 401 | no key in any configured source (the body's `hint` says where to send it) |
//! | `INVALID_API_KEY` | 401 | malformed, bad checksum, unknown id, or wrong secret |
//! | `API_KEY_REVOKED` | 401 | revoked (said only after the secret matched) |
//! | `API_KEY_EXPIRED` | 401 | past its expiry (said only after the secret matched) |
//! | `API_KEY_DISABLED` | 401 | disabled (said only after the secret matched) |
//! | `MULTIPLE_API_KEYS` | 400 | two different keys in one request |
//! | `API_KEY_ENVIRONMENT_NOT_ALLOWED` | 401 | a `test` or `dev` key where the layer refuses them |
//! | `INSUFFICIENT_PERMISSIONS` | 403 | the key lacks a scope the route requires |
//! | `IP_NOT_ALLOWED` | 403 | from outside the key's networks (said only after the secret matched) |
//! | `RATE_LIMIT_EXCEEDED` | 429 | over the key's rate limit or quota (with `Retry-After`) |
//! | `USAGE_EXCEEDED` | 429 | the key's credits (or its owner's) are spent |
//! | `KEY_STORE_UNAVAILABLE` | 503 | the store failed or timed out; nothing is let through |
//! | `RATE_LIMITER_UNAVAILABLE` | 503 | the rate limiter failed; nothing is let through |
//! | `API_KEY_LAYER_MISSING` | 500 | a scope check ran with no `ApiKeyLayer` before it |
//!
//! With the `tonic` feature, gRPC requests get a gRPC status instead (see [`crate::grpc`]).
//!
//! A custom body: any `Fn(&Rejection, &HeaderMap) -> Response<Bytes>`.
//!
//! ```
//! use bytes::Bytes;
//! use http::{HeaderMap, Response};
//! use tower_api_key::{ApiKeyLayer, MemoryStore, reject::Rejection};
//!
//! let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
//!     .rejection_responder(|rejection: &Rejection, _request: &HeaderMap| {
//!         Response::builder()
//!             .status(rejection.status())
//!             .body(Bytes::from(rejection.code()))
//!             .unwrap()
//!     })
//!     .build()
//!     .unwrap();
//! ```

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde::Serialize;

use crate::extract::KeySource;
pub use crate::rejection::Rejection;

/// Builds the response for a rejection. Implemented by [`JsonRejection`] and by every
/// `Fn(&Rejection, &HeaderMap) -> Response<Bytes>`, which gets the request's headers (to answer
/// in the client's format, say).
///
/// Whatever it builds, the layer then adds the typed [`Rejection`] to the response's extensions,
/// and `Cache-Control: no-store`, `WWW-Authenticate` to a 401 and `Retry-After` to a 503 unless
/// the response has them.
///
/// ```
/// use bytes::Bytes;
/// use http::{HeaderMap, Response};
/// use tower_api_key::reject::{Rejection, RejectionResponder};
/// use tower_api_key::{ApiKeyLayer, MemoryStore};
///
/// /// Plain text, for clients that cannot read JSON; over a limit, names the limit.
/// struct PlainText;
///
/// impl RejectionResponder for PlainText {
///     fn respond(&self, rejection: &Rejection, _request: &HeaderMap) -> Response<Bytes> {
///         let mut response = Response::new(Bytes::from(rejection.message()));
///         *response.status_mut() = rejection.status();
///         response
///     }
///
///     fn respond_over_limit(&self, limit: &str, _request: &HeaderMap) -> Response<Bytes> {
///         let mut response = Response::new(Bytes::from(format!("Rate limit exceeded ({limit})")));
///         *response.status_mut() = Rejection::RateLimitExceeded.status();
///         response
///     }
/// }
///
/// let response = PlainText.respond_over_limit("minute", &HeaderMap::new());
/// assert_eq!(response.body(), "Rate limit exceeded (minute)");
/// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
///     .rejection_responder(PlainText)
///     .build()?;
/// # Ok::<(), tower_api_key::ConfigError>(())
/// ```
pub trait RejectionResponder: Send + Sync + 'static {
    /// The response for `rejection` of a request with `request_headers`.
    fn respond(&self, rejection: &Rejection, request_headers: &HeaderMap) -> Response<Bytes>;

    /// The response for a request over its key's limit named `limit` (`minute`, `day`, `month`
    /// or a [named limit](crate::limit::NamedLimit)'s name): `RATE_LIMIT_EXCEEDED`. By default,
    /// [`respond`](Self::respond)'s; [`JsonRejection`] names the limit in its body.
    fn respond_over_limit(&self, limit: &str, request_headers: &HeaderMap) -> Response<Bytes> {
        let _ = limit;
        self.respond(&Rejection::RateLimitExceeded, request_headers)
    }

    /// The response for a request that carried no key where the layer reads one, `sources`
    /// (as configured, at least one; each [displays](KeySource#impl-Display-for-KeySource) as
    /// a client sends it): `MISSING_API_KEY`. By default, [`respond`](Self::respond)'s;
    /// [`JsonRejection`] adds a `hint` naming the sources, for a client that sent its key the
    /// wrong way (`Bearer` where the layer reads `ApiKey`, say).
    ///
    /// ```
    /// use http::HeaderMap;
    /// use tower_api_key::extract::KeySource;
    /// use tower_api_key::reject::{JsonRejection, RejectionResponder};
    ///
    /// let sources = [KeySource::api_key_scheme(), KeySource::query("api_key")];
    /// let response = JsonRejection.respond_missing(&sources, &HeaderMap::new());
    /// let body: serde_json::Value = serde_json::from_slice(response.body())?;
    /// assert_eq!(body["code"], "MISSING_API_KEY");
    /// assert_eq!(
    ///     body["hint"],
    ///     "Send the API key as 'Authorization: ApiKey <key>' or '?api_key=<key>'"
    /// );
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    fn respond_missing(
        &self,
        sources: &[KeySource],
        request_headers: &HeaderMap,
    ) -> Response<Bytes> {
        let _ = sources;
        self.respond(&Rejection::MissingApiKey, request_headers)
    }
}

impl<F> RejectionResponder for F
where
    F: Fn(&Rejection, &HeaderMap) -> Response<Bytes> + Send + Sync + 'static,
{
    fn respond(&self, rejection: &Rejection, request_headers: &HeaderMap) -> Response<Bytes> {
        self(rejection, request_headers)
    }
}

/// The default responder: the reference documents' JSON body.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonRejection;

impl RejectionResponder for JsonRejection {
    fn respond(&self, rejection: &Rejection, _request_headers: &HeaderMap) -> Response<Bytes> {
        json_response(*rejection, rejection.json_body())
    }

    /// The reference's body with the limit that was hit:
    /// `{"error": "Rate limit exceeded", "code": "RATE_LIMIT_EXCEEDED", "status": 429,
    /// "limit": "burst"}`.
    fn respond_over_limit(&self, limit: &str, _request_headers: &HeaderMap) -> Response<Bytes> {
        let rejection = Rejection::RateLimitExceeded;
        json_response(rejection, Extended::of(rejection).limit(limit).to_json())
    }

    /// The reference's body with how to send a key:
    /// `{"error": "Missing API key", "code": "MISSING_API_KEY", "status": 401,
    /// "hint": "Send the API key as 'Authorization: ApiKey <key>'"}`; several sources are
    /// joined with `or`.
    fn respond_missing(
        &self,
        sources: &[KeySource],
        _request_headers: &HeaderMap,
    ) -> Response<Bytes> {
        let mut hint = String::from("Send the API key as ");
        for (n, source) in sources.iter().enumerate() {
            let or = match n {
                0 => "",
                _ if n + 1 == sources.len() => " or ",
                _ => ", ",
            };
            hint.push_str(&format!("{or}'{source}'"));
        }
        let rejection = Rejection::MissingApiKey;
        json_response(rejection, Extended::of(rejection).hint(&hint).to_json())
    }
}

/// The reference's body with a field more.
#[derive(Serialize)]
struct Extended<'a> {
    error: &'static str,
    code: &'static str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'a str>,
}

impl<'a> Extended<'a> {
    fn of(rejection: Rejection) -> Self {
        Extended {
            error: rejection.message(),
            code: rejection.code(),
            status: rejection.status().as_u16(),
            limit: None,
            hint: None,
        }
    }

    fn limit(self, limit: &'a str) -> Self {
        Extended {
            limit: Some(limit),
            ..self
        }
    }

    fn hint(self, hint: &'a str) -> Self {
        Extended {
            hint: Some(hint),
            ..self
        }
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialising plain fields cannot fail")
    }
}

fn json_response(rejection: Rejection, body: String) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = rejection.status();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `Cache-Control: no-store`, unless the response says otherwise: a refusal depends on the key,
/// which a shared cache does not see, and must not be replayed to the next caller.
pub(crate) fn no_store(headers: &mut HeaderMap) {
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// A responder with the headers every rejection gets, and where the layer reads keys (for
/// `MISSING_API_KEY`'s answer).
#[derive(Clone)]
pub(crate) struct Rejections {
    pub(crate) responder: Arc<dyn RejectionResponder>,
    pub(crate) challenge: HeaderValue,
    pub(crate) retry_after: HeaderValue,
    pub(crate) sources: Arc<[KeySource]>,
}

impl Default for Rejections {
    fn default() -> Self {
        Rejections {
            responder: Arc::new(JsonRejection),
            challenge: HeaderValue::from_static("ApiKey realm=\"api\""),
            retry_after: HeaderValue::from_static("5"),
            sources: Arc::new([KeySource::api_key_scheme()]),
        }
    }
}

impl fmt::Debug for Rejections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejections")
            .field("challenge", &self.challenge)
            .field("retry_after", &self.retry_after)
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

impl Rejections {
    pub(crate) fn response(
        &self,
        rejection: Rejection,
        request_headers: &HeaderMap,
    ) -> Response<Bytes> {
        self.answer(rejection, request_headers, |responder| match rejection {
            Rejection::MissingApiKey => responder.respond_missing(&self.sources, request_headers),
            _ => responder.respond(&rejection, request_headers),
        })
    }

    /// The 429 for a request over the limit named `limit`, if the limiter named it.
    pub(crate) fn response_over_limit(
        &self,
        limit: Option<&str>,
        request_headers: &HeaderMap,
    ) -> Response<Bytes> {
        let rejection = Rejection::RateLimitExceeded;
        self.answer(rejection, request_headers, |responder| match limit {
            Some(limit) => responder.respond_over_limit(limit, request_headers),
            None => responder.respond(&rejection, request_headers),
        })
    }

    /// The answer to `rejection`: a gRPC one for a gRPC request, else what `respond` builds
    /// with the responder; then the headers every rejection gets.
    fn answer(
        &self,
        rejection: Rejection,
        request_headers: &HeaderMap,
        respond: impl FnOnce(&dyn RejectionResponder) -> Response<Bytes>,
    ) -> Response<Bytes> {
        #[cfg(feature = "tonic")]
        if let Some(protocol) = crate::grpc::protocol(request_headers) {
            let mut response = crate::grpc::response(rejection, protocol);
            no_store(response.headers_mut());
            response.extensions_mut().insert(rejection);
            return response;
        }
        #[cfg(not(feature = "tonic"))]
        let _ = request_headers;
        let mut response = respond(&*self.responder);
        let status = response.status();
        let headers = response.headers_mut();
        no_store(headers);
        if status == StatusCode::UNAUTHORIZED && !headers.contains_key(WWW_AUTHENTICATE) {
            headers.insert(WWW_AUTHENTICATE, self.challenge.clone());
        }
        if status == StatusCode::SERVICE_UNAVAILABLE && !headers.contains_key(RETRY_AFTER) {
            headers.insert(RETRY_AFTER, self.retry_after.clone());
        }
        response.extensions_mut().insert(rejection);
        response
    }
}
