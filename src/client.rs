//! The calling side: [`AddApiKeyLayer`] adds the key to every outgoing request, on a tonic
//! `Channel`, a hyper client, or any Tower service of `http::Request`s.
//!
//! As the reference documents advise, the key comes from an environment variable; a missing,
//! empty or foreign key is a clear error at start-up rather than a 401 at the first call.
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_api_key::client::AddApiKeyLayer;
//!
//! # std::env::set_var("MESH_API_KEY_DOC", "mesh_live_3kTMd9Qx2bLp_example");
//! let layer = AddApiKeyLayer::builder()
//!     .expect_prefix("mesh")
//!     .from_env("MESH_API_KEY_DOC")?;
//! let client = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|request: http::Request<()>| async move {
//!         assert!(request.headers()["authorization"].is_sensitive());
//!         Ok::<_, std::convert::Infallible>(http::Response::new(()))
//!     });
//!
//! let error = AddApiKeyLayer::builder().expect_prefix("mesh").key("sk_live_123").unwrap_err();
//! assert_eq!(error.to_string(), "API keys for this service start with `mesh_`");
//! # Ok::<(), tower_api_key::client::ClientKeyError>(())
//! ```

use std::fmt;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Request};
use tower::{Layer, Service};
use zeroize::Zeroizing;

use crate::key::check_text;

/// Adds an API key to every request: `Authorization: ApiKey <key>` by default, or `Bearer`, or a
/// header of its own. The header value is marked sensitive, so HTTP/2 never indexes it and
/// well-behaved loggers hide it. `Debug` never shows the key.
#[derive(Clone)]
#[must_use]
pub struct AddApiKeyLayer {
    name: HeaderName,
    value: HeaderValue,
}

impl fmt::Debug for AddApiKeyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddApiKeyLayer")
            .field("header", &self.name)
            .finish_non_exhaustive()
    }
}

impl AddApiKeyLayer {
    /// Sends `key` as `Authorization: ApiKey <key>`.
    ///
    /// # Errors
    /// [`ClientKeyError::Invalid`] for a key that is empty, over 512 bytes, or not visible ASCII.
    pub fn new(key: &str) -> Result<Self, ClientKeyError> {
        AddApiKeyLayer::builder().key(key)
    }

    /// Sends the key in environment variable `var` as `Authorization: ApiKey <key>`.
    ///
    /// # Errors
    /// A [`ClientKeyError`] naming `var` when it is unset, empty or not Unicode, or when the key
    /// is malformed.
    pub fn from_env(var: &str) -> Result<Self, ClientKeyError> {
        AddApiKeyLayer::builder().from_env(var)
    }

    /// A builder, to choose where the key goes and which prefix it must have.
    pub fn builder() -> ClientKeyBuilder {
        ClientKeyBuilder {
            prefix: None,
            placement: Placement::Authorization("ApiKey".into()),
        }
    }
}

impl<S> Layer<S> for AddApiKeyLayer {
    type Service = AddApiKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AddApiKey {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`AddApiKeyLayer`].
#[derive(Clone)]
pub struct AddApiKey<S> {
    inner: S,
    layer: AddApiKeyLayer,
}

impl<S: fmt::Debug> fmt::Debug for AddApiKey<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddApiKey")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, B> Service<Request<B>> for AddApiKey<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request
            .headers_mut()
            .insert(self.layer.name.clone(), self.layer.value.clone());
        self.inner.call(request)
    }
}

#[derive(Clone, Debug)]
enum Placement {
    Authorization(Box<str>),
    Header(HeaderName),
}

/// Configures an [`AddApiKeyLayer`]; made by [`AddApiKeyLayer::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ClientKeyBuilder {
    prefix: Option<String>,
    placement: Placement,
}

impl ClientKeyBuilder {
    /// Refuses a key that does not start with `prefix_`, such as `mesh_`: the reference
    /// documents' first troubleshooting step, done before the first request.
    pub fn expect_prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(format!("{prefix}_"));
        self
    }

    /// Sends `Authorization: Bearer <key>`.
    pub fn bearer(self) -> Self {
        self.scheme("Bearer")
    }

    /// Sends `Authorization: <scheme> <key>`.
    pub fn scheme(mut self, scheme: &str) -> Self {
        self.placement = Placement::Authorization(scheme.into());
        self
    }

    /// Sends the key alone in header `name`, such as `x-api-key`.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.placement = Placement::Header(name);
        self
    }

    /// The layer, sending `key`. Spaces and line ends around it (as pasted into a `.env` file)
    /// are dropped.
    ///
    /// # Errors
    /// [`ClientKeyError::Invalid`] for a key that is empty, over 512 bytes, or not visible ASCII;
    /// [`ClientKeyError::WrongPrefix`] when a prefix is expected and the key lacks it.
    pub fn key(self, key: &str) -> Result<AddApiKeyLayer, ClientKeyError> {
        let key = key.trim();
        check_text(key.as_bytes()).map_err(|_| ClientKeyError::Invalid)?;
        if let Some(prefix) = &self.prefix {
            if !key.starts_with(prefix.as_str()) {
                return Err(ClientKeyError::WrongPrefix {
                    prefix: prefix.clone(),
                });
            }
        }
        let (name, text) = match self.placement {
            Placement::Authorization(scheme) => {
                (AUTHORIZATION, Zeroizing::new(format!("{scheme} {key}")))
            }
            Placement::Header(name) => (name, Zeroizing::new(key.to_owned())),
        };
        let mut value = HeaderValue::from_str(&text).map_err(|_| ClientKeyError::Invalid)?;
        value.set_sensitive(true);
        Ok(AddApiKeyLayer { name, value })
    }

    /// The layer, sending the key in environment variable `var`.
    ///
    /// # Errors
    /// [`ClientKeyError::Unset`], [`ClientKeyError::Empty`] or [`ClientKeyError::NotUnicode`]
    /// naming `var`; otherwise as [`key`](Self::key).
    pub fn from_env(self, var: &str) -> Result<AddApiKeyLayer, ClientKeyError> {
        let value = match std::env::var(var) {
            Ok(value) => Zeroizing::new(value),
            Err(std::env::VarError::NotPresent) => {
                return Err(ClientKeyError::Unset { var: var.into() })
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(ClientKeyError::NotUnicode { var: var.into() })
            }
        };
        if value.trim().is_empty() {
            return Err(ClientKeyError::Empty { var: var.into() });
        }
        self.key(&value)
    }
}

/// Why a client-side key was refused. No variant holds or prints the key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientKeyError {
    /// The environment variable is not set.
    Unset {
        /// The variable's name.
        var: String,
    },
    /// The environment variable is set but empty.
    Empty {
        /// The variable's name.
        var: String,
    },
    /// The environment variable is not valid Unicode.
    NotUnicode {
        /// The variable's name.
        var: String,
    },
    /// The key does not start with the expected prefix.
    WrongPrefix {
        /// The expected prefix, with its `_`.
        prefix: String,
    },
    /// Empty, longer than 512 bytes, or not visible ASCII.
    Invalid,
}

impl fmt::Display for ClientKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKeyError::Unset { var } => write!(
                f,
                "the environment variable {var} is not set: set it to your API key \
                 (export {var}=...)"
            ),
            ClientKeyError::Empty { var } => write!(
                f,
                "the environment variable {var} is empty: set it to your API key"
            ),
            ClientKeyError::NotUnicode { var } => {
                write!(f, "the environment variable {var} is not valid text")
            }
            ClientKeyError::WrongPrefix { prefix } => {
                write!(f, "API keys for this service start with `{prefix}`")
            }
            ClientKeyError::Invalid => f.write_str(
                "the API key must be 1 to 512 characters of visible ASCII, without spaces",
            ),
        }
    }
}

impl std::error::Error for ClientKeyError {}
