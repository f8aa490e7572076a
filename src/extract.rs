//! Where a request's key comes from: the `Authorization` header, a named header, or (opt-in) a
//! query parameter.
//!
//! The default is the reference documents' scheme, `Authorization: ApiKey <key>`. Sources are
//! tried in the configured order; every one is read, and a request that carries two *different*
//! keys is refused (`MULTIPLE_API_KEYS`) rather than guessed between. The same key twice is fine.
//! Scheme names are matched case-insensitively. An empty credential (`Authorization: ApiKey`, an
//! empty `X-API-Key`) counts as no key, so a client whose environment variable is unset hears
//! `MISSING_API_KEY`.
//!
//! Once a key is verified, the credential is taken out of the request before your service sees
//! it ([`HideCredentials::Remove`], the default), so a service or a layer inside that logs headers
//! or URLs never records a key. The rest of an `Authorization` header (another scheme's value)
//! and every other query parameter stay as they were.
//!
//! ```
//! use tower_api_key::{ApiKeyLayer, extract::KeySource, MemoryStore};
//!
//! let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
//!     .sources([
//!         KeySource::api_key_scheme(),
//!         KeySource::bearer(),
//!         KeySource::header(http::HeaderName::from_static("x-api-key")),
//!     ])
//!     .build()?;
//! # Ok::<(), tower_api_key::ConfigError>(())
//! ```

use std::borrow::Cow;
use std::fmt;

use http::header::{Entry, AUTHORIZATION};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};

use crate::rejection::Rejection;

/// One place a key may be read from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// `Authorization: <scheme> <key>`, the scheme compared case-insensitively.
    Authorization {
        /// The scheme name, such as `ApiKey` or `Bearer`.
        scheme: Box<str>,
    },
    /// A header of its own whose whole value is the key, such as `X-API-Key`.
    Header(HeaderName),
    /// A query parameter, such as `?api_key=…`. URLs end up in access logs, proxies and browser
    /// history, so this is never on by default: enable it only for clients that can do nothing
    /// else.
    Query(Box<str>),
}

impl KeySource {
    /// `Authorization: ApiKey <key>`, the default.
    pub fn api_key_scheme() -> Self {
        KeySource::authorization("ApiKey")
    }

    /// `Authorization: Bearer <key>`.
    pub fn bearer() -> Self {
        KeySource::authorization("Bearer")
    }

    /// `Authorization: <scheme> <key>` with a scheme of your own.
    pub fn authorization(scheme: &str) -> Self {
        KeySource::Authorization {
            scheme: scheme.into(),
        }
    }

    /// A named header, such as `X-API-Key`.
    pub fn header(name: HeaderName) -> Self {
        KeySource::Header(name)
    }

    /// A query parameter. See [`KeySource::Query`] for why this is opt-in.
    pub fn query(name: &str) -> Self {
        KeySource::Query(name.into())
    }
}

/// How a client sends a key this way, as the `MISSING_API_KEY` answer's hint shows it:
/// `Authorization: ApiKey <key>`, `x-api-key: <key>`, `?api_key=<key>`.
///
/// ```
/// use tower_api_key::extract::KeySource;
///
/// assert_eq!(KeySource::bearer().to_string(), "Authorization: Bearer <key>");
/// assert_eq!(KeySource::query("api_key").to_string(), "?api_key=<key>");
/// ```
impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Authorization { scheme } => write!(f, "Authorization: {scheme} <key>"),
            KeySource::Header(name) => write!(f, "{name}: <key>"),
            KeySource::Query(name) => write!(f, "?{name}=<key>"),
        }
    }
}

/// What happens to the credential that carried a verified key before the inner service gets the
/// request.
///
/// ```
/// use tower_api_key::{ApiKeyLayer, extract::HideCredentials, MemoryStore};
///
/// // A gateway that forwards the request, key and all, to a backend that checks it again.
/// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
///     .hide_credentials(HideCredentials::MarkSensitive)
///     .build()?;
/// # Ok::<(), tower_api_key::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HideCredentials {
    /// Removed: the `Authorization` values of the configured schemes, the configured key headers,
    /// and the configured query parameter. The default.
    #[default]
    Remove,
    /// Kept, for services that pass the request on with its key: header values are marked
    /// sensitive ([`HeaderValue::set_sensitive`]: never indexed by HTTP/2's HPACK, and shown as
    /// `Sensitive` by the `Debug` of `HeaderValue`). A query parameter cannot be marked and stays.
    MarkSensitive,
    /// Left exactly as they came.
    Keep,
}

/// Hides the credentials of `sources` in `request`, a request admitted on a key read from them,
/// as `mode` says.
pub(crate) fn hide<B>(sources: &[KeySource], mode: HideCredentials, request: &mut Request<B>) {
    if mode == HideCredentials::Keep {
        return;
    }
    let remove = mode == HideCredentials::Remove;
    for source in sources {
        match source {
            KeySource::Authorization { scheme } => {
                let headers = request.headers_mut();
                if let ([_], true) = (sources, remove) {
                    // The one source, and the request was admitted on a key read from it: a
                    // sole `Authorization` value is that key's (the usual request), and goes.
                    if let Entry::Occupied(entry) = headers.entry(AUTHORIZATION) {
                        if entry.iter().nth(1).is_none() {
                            entry.remove();
                            return;
                        }
                    }
                }
                // A value of the scheme is the credential, whether it is text or not.
                hide_values(headers, &AUTHORIZATION, remove, |value| {
                    after_scheme(value.as_bytes(), scheme.as_bytes()).is_some()
                });
            }
            KeySource::Header(name) => {
                hide_values(request.headers_mut(), name, remove, |_| true);
            }
            KeySource::Query(name) if remove => {
                if let Some(uri) = without_parameter(request.uri(), name) {
                    *request.uri_mut() = uri;
                }
            }
            KeySource::Query(_) => {}
        }
    }
}

/// Removes (or marks sensitive) the values of header `name` that are `credential`s.
fn hide_values(
    headers: &mut HeaderMap,
    name: &HeaderName,
    remove: bool,
    credential: impl Fn(&HeaderValue) -> bool,
) {
    let Entry::Occupied(mut entry) = headers.entry(name) else {
        return;
    };
    if !remove {
        for value in entry.iter_mut().filter(|value| credential(value)) {
            value.set_sensitive(true);
        }
        return;
    }
    if entry.iter().all(&credential) {
        entry.remove();
        return;
    }
    // Another scheme's value shares the header: keep it, in order.
    let kept: Vec<HeaderValue> = entry.iter().filter(|v| !credential(v)).cloned().collect();
    let mut values = kept.into_iter();
    if let Some(first) = values.next() {
        entry.insert(first);
        values.for_each(|value| entry.append(value));
    }
}

/// `uri` without query parameter `name` (every occurrence), the other parameters byte for byte;
/// `None` if it has no such parameter.
fn without_parameter(uri: &Uri, name: &str) -> Option<Uri> {
    let query = uri.query()?;
    let is_key = |pair: &&str| {
        let raw = pair.split('=').next().unwrap_or_default();
        form_urlencoded::parse(raw.as_bytes())
            .next()
            .is_some_and(|(decoded, _)| decoded == name)
    };
    if !query.split('&').any(|pair| is_key(&pair)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|pair| !is_key(pair)).collect();
    let path = uri.path();
    let path_and_query = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// The key a request carries, if any, read from `sources` in order: its bytes, which the key's
/// parse checks one by one (a key is visible ASCII, so bytes that are not text are refused there).
///
/// # Errors
/// `MultipleApiKeys` for two different keys.
pub(crate) fn extract<'r>(
    sources: &[KeySource],
    headers: &'r HeaderMap,
    uri: &'r Uri,
) -> Result<Option<Cow<'r, [u8]>>, Rejection> {
    // The default configuration, one `Authorization` scheme, and one `Authorization` value: read
    // it without the general bookkeeping. Two values take the general path, which compares them.
    if let [KeySource::Authorization { scheme }] = sources {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let first = values.next();
        if values.next().is_none() {
            return Ok(sole_authorization(first, scheme).map(Cow::Borrowed));
        }
    }
    let mut found: Option<Cow<'r, [u8]>> = None;
    let mut accept = |key: Cow<'r, [u8]>| -> Result<(), Rejection> {
        if key.is_empty() {
            return Ok(());
        }
        match &found {
            None => found = Some(key),
            Some(previous) if *previous == key => {}
            Some(_) => return Err(Rejection::MultipleApiKeys),
        }
        Ok(())
    };
    for source in sources {
        match source {
            KeySource::Authorization { scheme } => {
                for value in headers.get_all(AUTHORIZATION) {
                    if let Some(credential) = after_scheme(value.as_bytes(), scheme.as_bytes()) {
                        accept(Cow::Borrowed(credential))?;
                    }
                }
            }
            KeySource::Header(name) => {
                for value in headers.get_all(name) {
                    accept(Cow::Borrowed(trim_bytes(value.as_bytes())))?;
                }
            }
            KeySource::Query(name) => {
                if let Some(query) = uri.query() {
                    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
                        if key == **name {
                            accept(match value {
                                Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
                                Cow::Owned(text) => Cow::Owned(text.into_bytes()),
                            })?;
                        }
                    }
                }
            }
        }
    }
    Ok(found)
}

/// The key in `value`, a request's only `Authorization` value (if it has one), when `scheme` is
/// the one source: its bytes, which the key's parse checks one by one (a key is ASCII).
#[inline]
pub(crate) fn sole_authorization<'v>(
    value: Option<&'v HeaderValue>,
    scheme: &str,
) -> Option<&'v [u8]> {
    after_scheme(value?.as_bytes(), scheme.as_bytes()).filter(|key| !key.is_empty())
}

/// The bytes after the scheme of an `Authorization` value (spaces trimmed) if its scheme is
/// `scheme`, in any case.
#[inline]
fn after_scheme<'v>(value: &'v [u8], scheme: &[u8]) -> Option<&'v [u8]> {
    // The shape nearly every client sends, `<scheme> <credential>` with one space and no space
    // around, is read with no scan for spaces; anything else takes the general path below.
    if let (Some((name, rest)), Some(&last)) = (value.split_at_checked(scheme.len()), value.last())
    {
        if let [b' ', first, ..] = rest {
            if !is_space_byte(*first) && !is_space_byte(last) && same_scheme(name, scheme) {
                return Some(&rest[1..]);
            }
        }
    }
    let value = trim_bytes(value);
    let (name, rest) = match value.iter().copied().position(is_space_byte) {
        Some(at) => value.split_at(at),
        None => (value, &[][..]),
    };
    same_scheme(name, scheme).then(|| trim_bytes(rest))
}

/// Whether `name` is the scheme `scheme`, in any case (RFC 9110): the exact spelling, which nearly
/// every client sends, is compared first, as one `memcmp`.
#[inline]
fn same_scheme(name: &[u8], scheme: &[u8]) -> bool {
    name == scheme || name.eq_ignore_ascii_case(scheme)
}

fn is_space_byte(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_bytes(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| !is_space_byte(b));
    let end = bytes.iter().rposition(|&b| !is_space_byte(b));
    match (start, end) {
        (Some(s), Some(e)) => &bytes[s..=e],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    fn all_sources() -> Vec<KeySource> {
        vec![
            KeySource::api_key_scheme(),
            KeySource::bearer(),
            KeySource::header(HeaderName::from_static("x-api-key")),
            KeySource::query("api_key"),
        ]
    }

    #[test]
    fn the_single_source_fast_path_answers_as_the_general_path() {
        let one = [KeySource::api_key_scheme()];
        // The same source twice takes the general path, and a key read twice is one key.
        let general = [KeySource::api_key_scheme(), KeySource::api_key_scheme()];
        let uri: Uri = "/".parse().unwrap();
        let cases: &[&[(&str, &[u8])]] = &[
            &[],
            &[("authorization", b"ApiKey mesh_live_abc")],
            &[("authorization", b"apikey mesh_live_abc")],
            &[("authorization", b"ApiKey  mesh_live_abc ")],
            &[("authorization", b"ApiKey ")],
            &[("authorization", b"ApiKey")],
            &[("authorization", b"Bearer mesh_live_abc")],
            &[("authorization", b"ApiKey \xff\xfe")],
            &[
                ("authorization", b"ApiKey a"),
                ("authorization", b"ApiKey a"),
            ],
            &[
                ("authorization", b"ApiKey a"),
                ("authorization", b"ApiKey b"),
            ],
            &[
                ("authorization", b"Bearer a"),
                ("authorization", b"ApiKey b"),
            ],
            &[("x-api-key", b"mesh_live_abc")],
        ];
        for pairs in cases {
            let map = headers(pairs);
            let fast = extract(&one, &map, &uri).map(|k| k.map(Cow::into_owned));
            let slow = extract(&general, &map, &uri).map(|k| k.map(Cow::into_owned));
            assert_eq!(fast, slow, "{pairs:?}");
        }
    }

    fn run(pairs: &[(&str, &[u8])], uri: &str) -> Result<Option<String>, Rejection> {
        let map = headers(pairs);
        let uri: Uri = uri.parse().unwrap();
        extract(&all_sources(), &map, &uri)
            .map(|k| k.map(|k| String::from_utf8_lossy(&k).into_owned()))
    }

    #[test]
    fn the_usual_shape_and_every_other_spacing_read_the_same() {
        for (value, expected) in [
            (&b"ApiKey k1"[..], Some("k1")),
            (b"apikey k1", Some("k1")),
            (b"ApiKey  k1", Some("k1")),
            (b"ApiKey k1 ", Some("k1")),
            (b"ApiKey\tk1", Some("k1")),
            (b" ApiKey k1", Some("k1")),
            (b"ApiKey k1 k2", Some("k1 k2")),
            (b"ApiKey ", None),
            (b"ApiKey", None),
            (b"ApiKeyk1", None),
            (b"ApiKeys k1", None),
            (b"Api k1", None),
            (b"", None),
        ] {
            let header = HeaderValue::from_bytes(value).unwrap();
            let got = sole_authorization(Some(&header), "ApiKey");
            assert_eq!(
                got,
                expected.map(str::as_bytes),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        let header = HeaderValue::from_bytes(b"ApiKey \xff").unwrap();
        assert_eq!(
            sole_authorization(Some(&header), "ApiKey"),
            Some(&b"\xff"[..])
        );
        assert_eq!(sole_authorization(None, "ApiKey"), None);
    }

    #[test]
    fn reads_each_source() {
        assert_eq!(
            run(&[("authorization", b"ApiKey k1")], "/")
                .unwrap()
                .unwrap(),
            "k1"
        );
        assert_eq!(
            run(&[("authorization", b"apikey  k1 ")], "/")
                .unwrap()
                .unwrap(),
            "k1"
        );
        assert_eq!(
            run(&[("authorization", b"BEARER k2")], "/")
                .unwrap()
                .unwrap(),
            "k2"
        );
        assert_eq!(run(&[("x-api-key", b" k3")], "/").unwrap().unwrap(), "k3");
        assert_eq!(run(&[], "/x?a=1&api_key=k%2B4").unwrap().unwrap(), "k+4");
    }

    #[test]
    fn other_schemes_and_empty_credentials_are_no_key() {
        assert_eq!(
            run(&[("authorization", b"Basic dXNlcjpwdw==")], "/").unwrap(),
            None
        );
        assert_eq!(run(&[("authorization", b"ApiKeyX k")], "/").unwrap(), None);
        assert_eq!(run(&[("authorization", b"ApiKey")], "/").unwrap(), None);
        assert_eq!(run(&[("authorization", b"ApiKey   ")], "/").unwrap(), None);
        assert_eq!(run(&[("x-api-key", b"")], "/").unwrap(), None);
        assert_eq!(run(&[], "/?api_key=").unwrap(), None);
    }

    #[test]
    fn two_different_keys_are_refused_and_the_same_key_twice_is_not() {
        assert_eq!(
            run(&[("authorization", b"ApiKey a"), ("x-api-key", b"b")], "/"),
            Err(Rejection::MultipleApiKeys)
        );
        assert_eq!(
            run(
                &[
                    ("authorization", b"ApiKey a"),
                    ("authorization", b"Bearer b")
                ],
                "/"
            ),
            Err(Rejection::MultipleApiKeys)
        );
        assert_eq!(
            run(&[], "/?api_key=a&api_key=b"),
            Err(Rejection::MultipleApiKeys)
        );
        assert_eq!(
            run(
                &[("authorization", b"ApiKey a"), ("x-api-key", b"a")],
                "/?api_key=a"
            )
            .unwrap()
            .unwrap(),
            "a"
        );
    }

    #[test]
    fn values_that_are_not_text_are_read_as_bytes_for_the_parse_to_refuse() {
        assert_eq!(
            run(&[("authorization", b"ApiKey \xff\xfe")], "/"),
            Ok(Some("\u{fffd}\u{fffd}".into()))
        );
        assert_eq!(
            run(&[("x-api-key", b"\xc3")], "/"),
            Ok(Some("\u{fffd}".into()))
        );
        // Not a key source: ignored whatever its bytes.
        assert_eq!(run(&[("authorization", b"Basic \xff")], "/").unwrap(), None);
    }

    fn hidden(mode: HideCredentials, pairs: &[(&str, &[u8])], uri: &str) -> Request<()> {
        let mut request = Request::builder().uri(uri).body(()).unwrap();
        *request.headers_mut() = headers(pairs);
        hide(&all_sources(), mode, &mut request);
        request
    }

    #[test]
    fn removed_credentials_leave_everything_else() {
        let request = hidden(
            HideCredentials::Remove,
            &[
                ("authorization", b"ApiKey k1"),
                ("authorization", b"Basic dXNlcjpwdw=="),
                ("authorization", b"bearer k1"),
                ("x-api-key", b"k1"),
                ("accept", b"*/*"),
            ],
            "/a/b?x=1&api_key=k1&y=a%20b&api%5Fkey=k1&z",
        );
        let authorization: Vec<_> = request.headers().get_all(AUTHORIZATION).iter().collect();
        assert_eq!(authorization, ["Basic dXNlcjpwdw=="]);
        assert!(!request.headers().contains_key("x-api-key"));
        assert_eq!(request.headers()["accept"], "*/*");
        assert_eq!(request.uri(), "/a/b?x=1&y=a%20b&z");
        let only_key = hidden(HideCredentials::Remove, &[], "/p?api_key=k1");
        assert_eq!(only_key.uri(), "/p");
        let absolute = hidden(HideCredentials::Remove, &[], "http://h:1/p?api_key=k&q=2");
        assert_eq!(absolute.uri(), "http://h:1/p?q=2");
    }

    #[test]
    fn marked_credentials_stay_sensitive_and_kept_ones_stay_as_they_are() {
        let pairs: &[(&str, &[u8])] = &[
            ("authorization", b"ApiKey k1"),
            ("authorization", b"Basic dXNlcjpwdw=="),
            ("x-api-key", b"k1"),
        ];
        let marked = hidden(HideCredentials::MarkSensitive, pairs, "/?api_key=k1");
        let sensitive: Vec<bool> = marked
            .headers()
            .get_all(AUTHORIZATION)
            .iter()
            .map(HeaderValue::is_sensitive)
            .collect();
        assert_eq!(sensitive, [true, false]);
        assert!(marked.headers()["x-api-key"].is_sensitive());
        assert_eq!(marked.uri(), "/?api_key=k1");
        let kept = hidden(HideCredentials::Keep, pairs, "/?api_key=k1");
        assert_eq!(*kept.headers(), headers(pairs));
        assert!(!kept.headers()["x-api-key"].is_sensitive());
        assert_eq!(kept.uri(), "/?api_key=k1");
    }

    #[test]
    fn only_configured_sources_are_read() {
        let map = headers(&[("x-api-key", b"k")]);
        let uri: Uri = "/?api_key=q".parse().unwrap();
        let found = extract(&[KeySource::api_key_scheme()], &map, &uri).unwrap();
        assert_eq!(found, None);
    }
}
