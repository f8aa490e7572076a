//! From a request's headers to a verified key: extract, parse, look up, compare in constant time,
//! check the key's state.

use std::borrow::Cow;
use std::time::SystemTime;

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use subtle::Choice;

use crate::extract::{extract, hide, sole_authorization, HideCredentials, KeySource};
use crate::key::{check_text, id_range, Environment, KeyFormat, SecretDigest};
use crate::principal::Principal;
use crate::reject::Rejection;
use crate::store::KeyState;

/// The environments a layer accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Environments(u8);

impl Environments {
    pub(crate) fn new(accepted: impl IntoIterator<Item = Environment>) -> Self {
        Environments(
            accepted
                .into_iter()
                .fold(0, |set, env| set | Self::bit(env)),
        )
    }

    pub(crate) fn accepts(self, environment: Environment) -> bool {
        self.0 & Self::bit(environment) != 0
    }

    const fn bit(environment: Environment) -> u8 {
        match environment {
            Environment::Live => 1,
            Environment::Test => 2,
            Environment::Dev => 4,
        }
    }
}

impl Default for Environments {
    fn default() -> Self {
        Environments::new([Environment::Live, Environment::Test])
    }
}

/// What a request presented, reduced to what verification needs: the secret itself is hashed and
/// dropped here. The id borrows from the request when it can.
pub(crate) struct Presented<'r> {
    /// The id to look up: a structured key's is base62 and an opaque key's a hex digest, so it
    /// is text, kept as the bytes it was read as (the cache compares bytes).
    pub(crate) id: Cow<'r, [u8]>,
    /// The digest of the presented secret.
    pub(crate) digest: SecretDigest,
    /// The environment written in the key (structured keys only).
    pub(crate) environment: Option<Environment>,
}

/// How a layer reads keys: where from, in which format, which environments it accepts, and what
/// becomes of the credential once the key is verified.
#[derive(Debug)]
pub(crate) struct KeyReading {
    pub(crate) format: KeyFormat,
    sources: Box<[KeySource]>,
    allow_opaque: bool,
    pub(crate) environments: Environments,
    hide: HideCredentials,
    /// The scheme, when it is the one source and its credential is removed once verified (the
    /// default): then the credential is taken out of the request before it is read.
    sole_scheme: Option<Box<str>>,
}

/// Where a request's credential is while its key is read.
pub(crate) enum Credential {
    /// In the request: read there, and hidden once the key is admitted.
    InRequest,
    /// Taken out of it: the request's only `Authorization` value, if it had one.
    Taken(Option<HeaderValue>),
}

impl Credential {
    /// Puts a credential taken out back into `request`, which goes on without a key.
    pub(crate) fn restore<B>(self, request: &mut Request<B>) {
        if let Credential::Taken(Some(value)) = self {
            request.headers_mut().insert(AUTHORIZATION, value);
        }
    }
}

impl Presented<'_> {
    /// The id as text, which it always is (see [`Presented::id`]), for a lookup or a log line.
    pub(crate) fn id_text(&self) -> &str {
        std::str::from_utf8(&self.id).unwrap_or_default()
    }

    /// The same, owning its id, to wait for a lookup.
    pub(crate) fn into_owned(self) -> Presented<'static> {
        Presented {
            id: Cow::Owned(self.id.into_owned()),
            digest: self.digest,
            environment: self.environment,
        }
    }
}

impl KeyReading {
    pub(crate) fn new(
        format: KeyFormat,
        sources: Box<[KeySource]>,
        allow_opaque: bool,
        environments: Environments,
        hide: HideCredentials,
    ) -> Self {
        let sole_scheme = match (&*sources, hide) {
            ([KeySource::Authorization { scheme }], HideCredentials::Remove) => {
                Some(scheme.clone())
            }
            _ => None,
        };
        KeyReading {
            format,
            sources,
            allow_opaque,
            environments,
            hide,
            sole_scheme,
        }
    }

    /// Takes the credential out of `request` at once when this layer reads one `Authorization`
    /// scheme and removes the credential once verified (the default), and no header of the
    /// request has two values: the `Authorization` value is then the only one, and it is looked
    /// up once, not once to read it and again to remove it. A request refused drops it with the
    /// rest; one that goes on without a key gets it back ([`Credential::restore`]).
    #[inline]
    pub(crate) fn take<B>(&self, request: &mut Request<B>) -> Credential {
        let headers = request.headers_mut();
        if self.sole_scheme.is_some() && headers.len() == headers.keys_len() {
            Credential::Taken(headers.remove(AUTHORIZATION))
        } else {
            Credential::InRequest
        }
    }

    /// Reads the key from `credential`, or from `request` if it is still there, and checks what
    /// can be checked offline.
    ///
    /// # Errors
    /// `MissingApiKey`, `MultipleApiKeys`, or `InvalidApiKey` for anything malformed; no store
    /// or cache is touched.
    #[inline]
    pub(crate) fn present<'r, B>(
        &self,
        request: &'r Request<B>,
        credential: &'r Credential,
    ) -> Result<Presented<'r>, Rejection> {
        let key = match (credential, &self.sole_scheme) {
            (Credential::Taken(value), Some(scheme)) => {
                sole_authorization(value.as_ref(), scheme).map(Cow::Borrowed)
            }
            _ => extract(&self.sources, request.headers(), request.uri())?,
        };
        self.read(key.ok_or(Rejection::MissingApiKey)?)
    }

    /// Hands `request` on to the inner service as `principal`'s: the principal in its
    /// extensions, the credential hidden if it is still there.
    pub(crate) fn admit<B>(
        &self,
        request: &mut Request<B>,
        principal: Principal,
        credential: &Credential,
    ) {
        request.extensions_mut().insert(principal);
        if let Credential::InRequest = credential {
            hide(&self.sources, self.hide, request);
        }
    }

    /// Parses `key` in this layer's format, or as an opaque key if it allows them.
    #[inline]
    fn read<'r>(&self, key: Cow<'r, [u8]>) -> Result<Presented<'r>, Rejection> {
        let format = &self.format;
        let parsed = match format.parse_bytes(&key) {
            Ok(parsed) => parsed,
            Err(_) if self.allow_opaque && !format.claims_bytes(&key) => return opaque(&key),
            Err(_) => return Err(Rejection::InvalidApiKey),
        };
        // The environment is written in the key: refusing it reveals nothing and costs no lookup.
        if !self.environments.accepts(parsed.environment) {
            return Err(Rejection::EnvironmentNotAllowed);
        }
        let (digest, environment) = (parsed.digest(), Some(parsed.environment));
        let at = id_range(&key);
        let id = match key {
            Cow::Borrowed(text) => Cow::Borrowed(&text[at]),
            Cow::Owned(text) => Cow::Owned(text[at].to_vec()),
        };
        Ok(Presented {
            id,
            digest,
            environment,
        })
    }
}

/// What an opaque key presents: its digest, and the digest's hex as its id.
fn opaque(key: &[u8]) -> Result<Presented<'static>, Rejection> {
    check_text(key).map_err(|_| Rejection::InvalidApiKey)?;
    let digest = SecretDigest::of(key);
    Ok(Presented {
        id: Cow::Owned(digest.to_hex().into_bytes()),
        digest,
        environment: None,
    })
}

/// Verifies a presented digest against the cached key. Whether the key is revoked, disabled or
/// expired is said only once the secret matched, so nobody learns the state of ids they guessed.
///
/// # Errors
/// `InvalidApiKey` when the secret (or the environment written in the key) does not match; then
/// the state's own rejection, or `EnvironmentNotAllowed` for an opaque key of a refused
/// environment.
pub(crate) fn verify<'k>(
    key: &'k Principal,
    presented: &Presented<'_>,
    environments: Environments,
    now: SystemTime,
) -> Result<&'k Principal, Rejection> {
    let same_environment = Choice::from(u8::from(
        presented.environment.is_none_or(|e| e == key.environment()),
    ));
    let check = key.check();
    if !bool::from(check.digest.ct_eq(&presented.digest) & same_environment) {
        return Err(Rejection::InvalidApiKey);
    }
    if !environments.accepts(key.environment()) {
        return Err(Rejection::EnvironmentNotAllowed);
    }
    match check.state(now) {
        KeyState::Active => Ok(key),
        KeyState::Revoked => Err(Rejection::ApiKeyRevoked),
        KeyState::Disabled => Err(Rejection::ApiKeyDisabled),
        KeyState::Expired => Err(Rejection::ApiKeyExpired),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn reading(sources: Vec<KeySource>, allow_opaque: bool) -> KeyReading {
        KeyReading::new(
            KeyFormat::new("mesh").unwrap(),
            sources.into(),
            allow_opaque,
            Environments::default(),
            HideCredentials::Remove,
        )
    }

    /// What `reading` makes of a request with these headers: the id it would look up.
    fn presented(reading: &KeyReading, pairs: &[(&str, &[u8])]) -> Result<String, Rejection> {
        let mut request = Request::new(());
        for (name, value) in pairs {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        let credential = reading.take(&mut request);
        let presented = reading.present(&request, &credential);
        presented.map(|p| p.id_text().to_owned())
    }

    #[test]
    fn bytes_that_are_not_text_are_an_invalid_key_from_every_source() {
        let key = KeyFormat::new("mesh").unwrap().generate(Environment::Live);
        let text = format!("ApiKey {}", key.key.expose_secret());
        let sole = reading(vec![KeySource::api_key_scheme()], false);
        let header = KeySource::header(HeaderName::from_static("x-api-key"));
        let both = reading(vec![KeySource::api_key_scheme(), header], true);
        for reading in [&sole, &both] {
            // The issued key is read, by the shortcut and by the general path.
            assert_eq!(
                presented(reading, &[("authorization", text.as_bytes())]),
                Ok(key.id.clone())
            );
            for value in [
                &b"ApiKey \xff\xfe"[..],
                b"ApiKey mesh_live_\xc3",
                b"ApiKey mesh_\xff",
            ] {
                assert_eq!(
                    presented(reading, &[("authorization", value)]),
                    Err(Rejection::InvalidApiKey),
                    "{value:?}"
                );
            }
            // Another scheme's bytes are not a key at all.
            assert_eq!(
                presented(reading, &[("authorization", b"Basic \xff")]),
                Err(Rejection::MissingApiKey)
            );
        }
        assert_eq!(
            presented(&both, &[("x-api-key", b"\xc3")]),
            Err(Rejection::InvalidApiKey)
        );
        // Not the shortcut (two values): the same answers.
        let two = [
            ("authorization", &b"ApiKey \xff"[..]),
            ("authorization", b"Basic x"),
        ];
        assert_eq!(presented(&sole, &two), Err(Rejection::InvalidApiKey));
    }
}
