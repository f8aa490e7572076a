//! [`SecretScanning`]: the endpoint of GitHub's secret scanning partner program, which revokes
//! this service's keys found in public code.
//!
//! GitHub scans public repositories, gists, issues and npm packages for the patterns its partners
//! register, and posts each match to the partner's endpoint, signed with ECDSA P-256 (the
//! `Github-Public-Key-Identifier` and `Github-Public-Key-Signature` headers). This module checks
//! the signature against GitHub's published keys, looks each match up as a key of this service
//! (its format and checksum, its id, its secret's digest compared in constant time), revokes
//! the keys that are real, writes each revocation to the audit trail (actor
//! `github-secret-scanning`, with where the key was found), and answers GitHub's feedback
//! format: each token's SHA-256 (never the token itself) with `true_positive` or
//! `false_positive`.
//!
//! To join, email GitHub (secret-scanning@github.com) the pattern of your keys, such as
//! `\bmesh_(live|test|dev)_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}\b` for the prefix `mesh`: the
//! prefix, environment, id and secret with its CRC32 checksum, which makes false matches rare.

use std::fmt;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::{Deserialize, Serialize};

use crate::key::{KeyFormat, SecretDigest};
use crate::manage::{AuditEvent, InvalidKey, ManageError};
use crate::store::{AuditArchive, KeyStoreAdmin, StoreError};
use crate::KeyManager;

/// Where GitHub publishes the keys it signs secret scanning alerts with: the JSON that
/// [`GitHubKeys::from_json`] reads.
pub const GITHUB_KEYS_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";

/// The actor that revocations from GitHub's alerts are written to the audit trail as.
pub const ACTOR: &str = "github-secret-scanning";

/// The largest alert accepted: GitHub may post many matches at once.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// GitHub's public keys for secret scanning alerts, by identifier.
#[derive(Clone, Default)]
pub struct GitHubKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl fmt::Debug for GitHubKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("GitHubKeys").field("ids", &ids).finish()
    }
}

/// The document GitHub publishes at [`GITHUB_KEYS_URL`].
#[derive(Deserialize)]
struct Published {
    public_keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    key_identifier: String,
    /// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    key: String,
}

/// GitHub's keys could not be read.
#[derive(Debug)]
pub struct InvalidGitHubKeys(String);

impl fmt::Display for InvalidGitHubKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid GitHub secret scanning keys: {}", self.0)
    }
}

impl std::error::Error for InvalidGitHubKeys {}

impl GitHubKeys {
    /// The keys in `json`, the body of [`GITHUB_KEYS_URL`]: `{"public_keys": [{"key_identifier",
    /// "key" (PEM), "is_current"}]}`. Fetch it with the HTTP client of your choice, at start and
    /// again when an alert names a key identifier it does not know
    /// ([`SecretScanning::set_github_keys`]).
    ///
    /// # Errors
    /// When the JSON is not that document, or a key is not a P-256 public key in PEM.
    pub fn from_json(json: &str) -> Result<Self, InvalidGitHubKeys> {
        let published: Published =
            serde_json::from_str(json).map_err(|e| InvalidGitHubKeys(e.to_string()))?;
        let keys = (published.public_keys.into_iter())
            .map(|key| {
                let verifying = VerifyingKey::from_public_key_pem(&key.key)
                    .map_err(|e| InvalidGitHubKeys(format!("key {}: {e}", key.key_identifier)))?;
                Ok((key.key_identifier, verifying))
            })
            .collect::<Result<_, InvalidGitHubKeys>>()?;
        Ok(GitHubKeys { keys })
    }

    /// Checks `signature` (base64 of a DER ECDSA signature) of `body` by the key `identifier`.
    fn verify(&self, identifier: &str, signature: &str, body: &[u8]) -> Result<(), ScanError> {
        let (_, key) = (self.keys.iter())
            .find(|(id, _)| id == identifier)
            .ok_or(ScanError::UnknownKeyIdentifier)?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| ScanError::BadSignature)?;
        let signature =
            DerSignature::try_from(der.as_slice()).map_err(|_| ScanError::BadSignature)?;
        key.verify(body, &signature)
            .map_err(|_| ScanError::BadSignature)
    }
}

/// One match GitHub found.
#[derive(Deserialize)]
struct Match {
    token: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    url: String,
}

/// Whether a match was one of this service's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// A key of this service: it is revoked.
    TruePositive,
    /// Not a key of this service (another format, a made-up id, a wrong secret).
    FalsePositive,
}

/// What the endpoint answers GitHub for one match: the token's SHA-256, never the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Feedback {
    /// The SHA-256 of the token, in hex.
    pub token_hash: String,
    /// The match's type, as GitHub sent it.
    pub token_type: String,
    /// Whether it was a key of this service.
    pub label: Label,
}

/// Why an alert was refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum ScanError {
    /// No `Github-Public-Key-Identifier` or `Github-Public-Key-Signature` header.
    Unsigned,
    /// The alert names a key GitHub has not published (or that was not given yet).
    UnknownKeyIdentifier,
    /// The signature is not GitHub's signature of this body.
    BadSignature,
    /// The signed body is not a JSON array of matches (where it stops being one).
    BadBody(String),
    /// The store failed; the revocations made before stay made, and GitHub sends again.
    Store(StoreError),
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::Unsigned => f.write_str("the alert is not signed"),
            ScanError::UnknownKeyIdentifier => f.write_str("the alert names an unknown key"),
            ScanError::BadSignature => f.write_str("the alert's signature does not hold"),
            ScanError::BadBody(at) => {
                write!(f, "the alert is not a JSON array of matches ({at})")
            }
            ScanError::Store(e) => write!(f, "the key store failed: {e}"),
        }
    }
}

impl std::error::Error for ScanError {}

impl IntoResponse for ScanError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ScanError::Unsigned | ScanError::UnknownKeyIdentifier | ScanError::BadSignature => {
                (StatusCode::UNAUTHORIZED, "INVALID_SIGNATURE")
            }
            ScanError::BadBody(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            ScanError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
        };
        let body = serde_json::json!({
            "error": self.to_string(),
            "code": code,
            "status": status.as_u16(),
        });
        (status, Json(body)).into_response()
    }
}

/// The endpoint of GitHub's secret scanning partner program (see the [module](self)): checks
/// an alert's signature, revokes the keys of this service it names, and answers GitHub's
/// feedback.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use axum::Router;
/// use tower_api_key::secret_scanning::{GitHubKeys, SecretScanning};
/// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore};
///
/// let store = MemoryStore::new();
/// let layer = ApiKeyLayer::new("mesh", store.clone())?;
/// // The body of GITHUB_KEYS_URL, fetched at start (here, none yet).
/// let github = GitHubKeys::from_json(r#"{"public_keys": []}"#)?;
/// let scanning = SecretScanning::new(KeyManager::new(store).with_cache(layer.handle()), github)?;
/// // The URL you give GitHub; outside the key layer (GitHub sends no key).
/// let app: Router = Router::new().nest("/github/secret-scanning", scanning.router());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct SecretScanning<A> {
    inner: Arc<Inner<A>>,
}

struct Inner<A> {
    keys: KeyManager<A>,
    format: KeyFormat,
    github: RwLock<Arc<GitHubKeys>>,
}

impl<A> Clone for SecretScanning<A> {
    fn clone(&self) -> Self {
        SecretScanning {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<A> SecretScanning<A> {
    /// Replaces GitHub's keys (fetched again from [`GITHUB_KEYS_URL`], when GitHub rotates
    /// them: an alert then names a key identifier not known yet, and is refused until this).
    pub fn set_github_keys(&self, github: GitHubKeys) {
        let mut held = self.inner.github.write().unwrap_or_else(|e| e.into_inner());
        *held = Arc::new(github);
    }

    fn github(&self) -> Arc<GitHubKeys> {
        let held = self.inner.github.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&held)
    }
}

impl<A> fmt::Debug for SecretScanning<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretScanning")
            .field("prefix", &self.inner.format.prefix())
            .field("github", &self.github())
            .finish_non_exhaustive()
    }
}

impl<A> SecretScanning<A>
where
    A: KeyStoreAdmin + AuditArchive + Clone + Send + Sync + 'static,
{
    /// Revokes through `keys` (built [`with_cache`](KeyManager::with_cache) of the service's
    /// layer, so the revocation holds at once on this replica; the others follow as for any
    /// revocation) the keys that alerts signed with one of `github` name.
    ///
    /// # Errors
    /// When `keys` has no key format to read the matches in.
    pub fn new(keys: KeyManager<A>, github: GitHubKeys) -> Result<Self, ManageError> {
        let format = keys
            .key_format()
            .cloned()
            .ok_or(ManageError::Invalid(InvalidKey::NoFormat))?;
        Ok(SecretScanning {
            inner: Arc::new(Inner {
                keys,
                format,
                github: RwLock::new(Arc::new(github)),
            }),
        })
    }

    /// An axum router answering `POST /` with [`alert`](Self::alert): 200 and the feedback, 401
    /// when the signature does not hold, 400 for a body that is not an alert, 503 when the
    /// store fails (GitHub sends again). Alerts up to 8 MiB.
    pub fn router(self) -> Router {
        async fn receive<A>(
            State(scanning): State<SecretScanning<A>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response
        where
            A: KeyStoreAdmin + AuditArchive + Clone + Send + Sync + 'static,
        {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let signed =
                header("github-public-key-identifier").zip(header("github-public-key-signature"));
            let Some((identifier, signature)) = signed else {
                return ScanError::Unsigned.into_response();
            };
            match scanning.alert(identifier, signature, &body).await {
                Ok(feedback) => Json(feedback).into_response(),
                Err(error) => error.into_response(),
            }
        }
        Router::new()
            .route("/", post(receive::<A>))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self)
    }

    /// Handles one alert: `body` as posted, signed by GitHub's key `identifier` with
    /// `signature` (the two headers). Each match that is a key of this service is revoked
    /// (once; a key revoked already stays as it is) and written to the audit trail; the answer
    /// labels every match, in order.
    ///
    /// # Errors
    /// When the signature does not hold, the body is not an alert, or the store fails.
    pub async fn alert(
        &self,
        identifier: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<Vec<Feedback>, ScanError> {
        self.github().verify(identifier, signature, body)?;
        // Where it failed, not serde's message, which may quote a token.
        let matches: Vec<Match> = serde_json::from_slice(body)
            .map_err(|e| ScanError::BadBody(format!("line {}, column {}", e.line(), e.column())))?;
        let mut feedback = Vec::with_capacity(matches.len());
        for found in matches {
            let label = self
                .revoke_if_ours(&found)
                .await
                .map_err(ScanError::Store)?;
            feedback.push(Feedback {
                token_hash: SecretDigest::of(found.token.as_bytes()).to_hex(),
                token_type: found.kind,
                label,
            });
        }
        Ok(feedback)
    }

    /// Revokes the key `found` is, if it is one of this service's (its secret checked).
    async fn revoke_if_ours(&self, found: &Match) -> Result<Label, StoreError> {
        let Ok(parsed) = self.inner.format.parse(&found.token) else {
            return Ok(Label::FalsePositive);
        };
        let keys = &self.inner.keys;
        let Some(record) = keys.store().get(parsed.id()).await? else {
            return Ok(Label::FalsePositive);
        };
        if !bool::from(record.digest.ct_eq(&parsed.digest())) {
            return Ok(Label::FalsePositive);
        }
        if record.revoked_at.is_none() && keys.revoke(&record.id).await? {
            let place = match found.url.as_str() {
                "" => "GitHub secret scanning (no URL given)".to_owned(),
                url => format!("found in public at {url}"),
            };
            let event = AuditEvent::new(ACTOR, "revoke", &record.id)
                .owner(record.owner.as_deref())
                .detail([place]);
            // The key is revoked; a trail that cannot be written is traced, not undone.
            let _ = keys.record_change(&event).await;
        }
        Ok(Label::TruePositive)
    }
}
