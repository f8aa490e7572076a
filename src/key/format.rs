//! The key format: `<prefix>_<env>_<id>_<secret><checksum>`, its parser and its generator.

use std::fmt;

use super::id_key::ID_TAG_LEN;
use super::{Environment, IdKey, PlaintextKey, SecretDigest};

/// The longest key, in bytes, that is even looked at; anything longer is refused unread.
pub const MAX_KEY_LEN: usize = 512;
/// The longest prefix a [`KeyFormat`] accepts.
pub const MAX_PREFIX_LEN: usize = 16;
/// Length of the public key id, in base62 characters (about 71 bits).
pub const ID_LEN: usize = 12;
/// Length of the secret, in base62 characters (about 190 bits of entropy from the OS generator).
pub const SECRET_LEN: usize = 32;
/// Length of the CRC32 checksum, in base62 characters.
pub const CHECKSUM_LEN: usize = 6;

pub(crate) const BASE62: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The shape of the keys one service issues: a fixed prefix such as `mesh`.
///
/// A key reads `<prefix>_<env>_<id>_<secret><checksum>`, for example
/// `mesh_live_3kTMd9Qx2bLp_<32 secret characters><6 checksum characters>`:
///
/// | part | rule |
/// |---|---|
/// | prefix | 1 to 16 of `a-z0-9`, starting with a letter; tells people and secret scanners whose key it is |
/// | env | `live`, `test` or `dev` ([`Environment`]) |
/// | id | 12 base62 characters (`0-9A-Za-z`), random; public, safe to log, the store's lookup key |
/// | secret | 32 base62 characters from the OS generator (about 190 bits) |
/// | checksum | 6 base62 characters: CRC32 of everything before it, big-endian, zero-padded |
///
/// The checksum lets a mistyped or made-up key be refused with no cache or store access, as
/// GitHub's tokens do. It is not a secret and proves nothing about who made the key; the secret
/// does that. Only the secret's digest, bound to the prefix ([`SecretDigest::of_key`]), is ever
/// stored.
///
/// ```
/// use tower_api_key::{Environment, key::KeyFormat};
///
/// let format = KeyFormat::new("mesh")?;
/// let generated = format.generate(Environment::Test);
/// let text = generated.key.expose_secret();
/// assert!(text.starts_with("mesh_test_"));
///
/// let parsed = format.parse(text)?;
/// assert_eq!(parsed.id(), generated.id);
/// assert_eq!(parsed.environment(), Environment::Test);
/// assert_eq!(parsed.digest(), generated.digest);
///
/// // One changed character breaks the checksum: refused offline.
/// let mut typo = text.to_owned();
/// typo.replace_range(20..21, if &text[20..21] == "A" { "B" } else { "A" });
/// assert!(format.parse(&typo).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFormat {
    prefix: Box<str>,
    /// Signs the ids this format issues, if set.
    id_key: Option<IdKey>,
}

/// A freshly generated key: the plaintext, shown once, and what to store.
#[derive(Debug)]
#[non_exhaustive]
pub struct GeneratedKey {
    /// The whole key, to show its owner once.
    pub key: PlaintextKey,
    /// The public key id (lookup key of the store).
    pub id: String,
    /// The digest of the secret, the only form of it to store.
    pub digest: SecretDigest,
    /// The key's environment.
    pub environment: Environment,
}

impl KeyFormat {
    /// The format of keys that start with `prefix_`.
    ///
    /// # Errors
    /// When `prefix` is empty, longer than [`MAX_PREFIX_LEN`], or has a character other than
    /// `a-z0-9`, or does not start with a letter.
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let valid = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX_LEN
            && prefix.as_bytes()[0].is_ascii_lowercase()
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if valid {
            Ok(KeyFormat {
                prefix: prefix.into(),
                id_key: None,
            })
        } else {
            Err(InvalidPrefix)
        }
    }

    /// The prefix, without the `_` that follows it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// With the ids it issues signed by `id_key` ([`IdKey`]): 8 random characters and a
    /// 4-character tag instead of 12 random ones. A layer with the same id key refuses ids
    /// without the tag before looking them up; keys issued before keep working only where the
    /// layer has no id key.
    #[must_use]
    pub fn with_id_key(mut self, id_key: IdKey) -> Self {
        self.id_key = Some(id_key);
        self
    }

    /// Whether this format signs its ids.
    pub fn signs_ids(&self) -> bool {
        self.id_key.is_some()
    }

    /// Whether key id `id` may have been issued in this format: it carries its tag under the
    /// format's id key (always, for a format without one).
    pub fn issued(&self, id: &str) -> bool {
        self.issued_bytes(id.as_bytes())
    }

    /// [`issued`](Self::issued), for an id's bytes.
    pub(crate) fn issued_bytes(&self, id: &[u8]) -> bool {
        self.id_key
            .as_ref()
            .is_none_or(|key| key.signed(&self.prefix, id))
    }

    /// Whether `key` claims to be of this format (starts with `prefix_`).
    pub fn claims(&self, key: &str) -> bool {
        self.claims_bytes(key.as_bytes())
    }

    /// [`claims`](Self::claims), for bytes that may not be text.
    pub(crate) fn claims_bytes(&self, key: &[u8]) -> bool {
        key.len() > self.prefix.len()
            && key[self.prefix.len()] == b'_'
            && key.starts_with(self.prefix.as_bytes())
    }

    /// A new key for `environment`, with its id and secret from the operating system's
    /// random generator.
    ///
    /// # Panics
    /// If the operating system's random generator fails, which on supported platforms it does not;
    /// a key must never be made from weaker randomness.
    pub fn generate(&self, environment: Environment) -> GeneratedKey {
        let id = match &self.id_key {
            None => random_base62(ID_LEN),
            Some(id_key) => {
                let mut id = random_base62(ID_LEN - ID_TAG_LEN);
                let tag = id_key.tag(&self.prefix, id.as_bytes());
                id.push_str(std::str::from_utf8(&tag).expect("base62 is ASCII"));
                id
            }
        };
        let secret = zeroize::Zeroizing::new(random_base62(SECRET_LEN));
        let env = environment.as_str();
        let mut key = String::with_capacity(
            self.prefix.len() + env.len() + ID_LEN + SECRET_LEN + CHECKSUM_LEN + 3,
        );
        for part in [&*self.prefix, "_", env, "_", &id, "_", &secret] {
            key.push_str(part);
        }
        let checksum = encode_checksum(crc32fast::hash(key.as_bytes()));
        key.push_str(std::str::from_utf8(&checksum).expect("base62 is ASCII"));
        GeneratedKey {
            digest: SecretDigest::of_key(&self.prefix, secret.as_bytes()),
            key: PlaintextKey::new(key),
            id,
            environment,
        }
    }

    /// Parses `key` in this format, checking its checksum; no store is consulted.
    ///
    /// # Errors
    /// A [`ParseError`] saying which rule the text broke.
    pub fn parse<'k>(&self, key: &'k str) -> Result<ParsedKey<'k>, ParseError> {
        let parts = self.parse_bytes(key.as_bytes())?;
        // ASCII, so a slice of the text.
        let id = &key[id_range(key.as_bytes())];
        Ok(ParsedKey { id, parts })
    }

    /// [`parse`](Self::parse), for bytes as a header carries them: a key of this format is
    /// ASCII, and every byte is checked by the rules below (the prefix and the environment are
    /// compared whole, the rest must be base62), so the bytes are never checked as text first.
    /// The general text check runs only to name the error of a key that fails.
    #[inline(always)]
    pub(crate) fn parse_bytes<'k>(&self, key: &'k [u8]) -> Result<KeyParts<'k>, ParseError> {
        let fail = |error: ParseError| Err(check_text(key).err().unwrap_or(error));
        if key.len() > MAX_KEY_LEN || key.is_empty() {
            return fail(ParseError::Malformed);
        }
        if !self.claims_bytes(key) {
            return fail(ParseError::WrongPrefix);
        }
        let rest = &key[self.prefix.len() + 1..];
        let Some((environment, rest)) = Environment::ALL.into_iter().find_map(|env| {
            let rest = rest
                .strip_prefix(env.as_str().as_bytes())?
                .strip_prefix(b"_")?;
            Some((env, rest))
        }) else {
            return fail(if rest.contains(&b'_') {
                ParseError::UnknownEnvironment
            } else {
                ParseError::Malformed
            });
        };
        if rest.len() != ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN
            || rest[ID_LEN] != b'_'
            || !is_base62(&rest[..ID_LEN])
            || !is_base62(&rest[ID_LEN + 1..])
        {
            return fail(ParseError::Malformed);
        }
        let (secret, checksum) = rest[ID_LEN + 1..].split_at(SECRET_LEN);
        let signed = &key[..key.len() - CHECKSUM_LEN];
        if decode_checksum(checksum) != Some(crc32fast::hash(signed)) {
            return Err(ParseError::ChecksumMismatch);
        }
        Ok(KeyParts {
            prefix: &key[..self.prefix.len()],
            environment,
            secret,
        })
    }
}

/// Whether every byte is `0-9A-Za-z`: two range checks per byte (a letter's case bit set, then
/// one range for both cases), branch-free and with no early exit.
#[inline(always)]
fn is_base62(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &b| {
        ok & ((b.wrapping_sub(b'0') < 10) | ((b | 0x20).wrapping_sub(b'a') < 26))
    })
}

/// Whether `id` has the shape of the id a key of this crate's format carries: [`ID_LEN`] base62
/// characters.
pub(crate) fn is_key_id(id: &str) -> bool {
    id.len() == ID_LEN && is_base62(id.as_bytes())
}

/// Checks the rules every presented key obeys, structured or opaque: 1 to [`MAX_KEY_LEN`] bytes of
/// visible ASCII (`!` to `~`, so no spaces or control bytes).
pub(crate) fn check_text(key: &[u8]) -> Result<(), ParseError> {
    if key.is_empty() {
        return Err(ParseError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ParseError::TooLong);
    }
    if !key.iter().all(u8::is_ascii_graphic) {
        return Err(ParseError::InvalidCharacter);
    }
    Ok(())
}

/// Where the id of a key that [`KeyFormat::parse_bytes`] parsed sits in it: at a fixed place from
/// its end.
pub(crate) fn id_range(key: &[u8]) -> std::ops::Range<usize> {
    let at = key.len() - (ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN);
    at..at + ID_LEN
}

/// What verifying a key parsed from bytes ([`KeyFormat::parse_bytes`]) needs besides its id
/// ([`id_range`]): the id stays bytes, since the layer compares it as bytes, and checking it as
/// UTF-8 would cost as much as the rest of the parse's bookkeeping.
#[derive(Clone, Copy)]
pub(crate) struct KeyParts<'k> {
    prefix: &'k [u8],
    pub(crate) environment: Environment,
    secret: &'k [u8],
}

impl KeyParts<'_> {
    /// The digest of the secret part bound to the key's prefix ([`SecretDigest::of_key`]), to
    /// compare with the stored one.
    pub(crate) fn digest(&self) -> SecretDigest {
        SecretDigest::of_prefixed(self.prefix, self.secret)
    }
}

/// A key that parsed and whose checksum holds; not yet verified against any store.
///
/// `Debug` shows the environment and id, never the secret.
#[derive(Clone, Copy)]
pub struct ParsedKey<'k> {
    parts: KeyParts<'k>,
    id: &'k str,
}

impl<'k> ParsedKey<'k> {
    /// The environment marker.
    pub fn environment(&self) -> Environment {
        self.parts.environment
    }

    /// The public key id.
    pub fn id(&self) -> &'k str {
        self.id
    }

    /// The digest of the secret part bound to the key's prefix ([`SecretDigest::of_key`]), to
    /// compare with the stored one.
    pub fn digest(&self) -> SecretDigest {
        self.parts.digest()
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("environment", &self.parts.environment)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a text is not a key of a [`KeyFormat`]. Every variant is answered as `INVALID_API_KEY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// The text is empty.
    Empty,
    /// Longer than [`MAX_KEY_LEN`] bytes.
    TooLong,
    /// A byte outside visible ASCII (`!` to `~`).
    InvalidCharacter,
    /// Does not start with this format's `prefix_`.
    WrongPrefix,
    /// The environment marker is not `live`, `test` or `dev`.
    UnknownEnvironment,
    /// The parts do not have their lengths or characters.
    Malformed,
    /// The checksum does not match: a typo, a truncated copy or a made-up key.
    ChecksumMismatch,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseError::Empty => "the key is empty",
            ParseError::TooLong => "the key is longer than 512 bytes",
            ParseError::InvalidCharacter => "the key has a character outside visible ASCII",
            ParseError::WrongPrefix => "the key does not start with this service's prefix",
            ParseError::UnknownEnvironment => "the key's environment is not live, test or dev",
            ParseError::Malformed => "the key's parts do not have the expected lengths",
            ParseError::ChecksumMismatch => "the key's checksum does not match",
        })
    }
}

impl std::error::Error for ParseError {}

/// The error of [`KeyFormat::new`] with a prefix it does not accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidPrefix;

impl fmt::Display for InvalidPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key prefix is 1 to 16 characters of a-z0-9 and starts with a letter")
    }
}

impl std::error::Error for InvalidPrefix {}

/// `len` characters of base62, uniformly distributed, from the operating system's generator.
fn random_base62(len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut buf = zeroize::Zeroizing::new([0u8; 64]);
    while out.len() < len {
        getrandom::fill(&mut *buf).expect("the operating system's random generator failed");
        // 248 = 4 * 62: dropping bytes at or above it keeps every character equally likely.
        for &b in buf.iter().filter(|&&b| b < 248).take(len - out.len()) {
            out.push(BASE62[usize::from(b % 62)] as char);
        }
    }
    out
}

fn encode_checksum(mut crc: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

fn decode_checksum(text: &[u8]) -> Option<u32> {
    let mut value: u64 = 0;
    for &b in text {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'A'..=b'Z' => b - b'A' + 10,
            b'a'..=b'z' => b - b'a' + 36,
            _ => return None,
        };
        value = value * 62 + u64::from(digit);
    }
    u32::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base62_is_exactly_ascii_letters_and_digits() {
        for b in 0..=u8::MAX {
            assert_eq!(is_base62(&[b]), b.is_ascii_alphanumeric(), "{b:#x}");
        }
        assert!(is_base62(b"09azAZ"));
        assert!(!is_base62(b"09az AZ"));
    }

    fn format() -> KeyFormat {
        KeyFormat::new("mesh").unwrap()
    }

    #[test]
    fn generated_keys_parse_back_with_their_id_env_and_digest() {
        for env in Environment::ALL {
            let generated = format().generate(env);
            let text = generated.key.expose_secret();
            assert_eq!(
                text.len(),
                4 + 1 + env.as_str().len() + 1 + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN
            );
            let parsed = format().parse(text).unwrap();
            assert_eq!(parsed.id(), generated.id);
            assert_eq!(parsed.environment(), env);
            assert_eq!(parsed.digest(), generated.digest);
        }
    }

    #[test]
    fn two_keys_differ() {
        let a = format().generate(Environment::Live);
        let b = format().generate(Environment::Live);
        assert_ne!(a.id, b.id);
        assert_ne!(a.key.expose_secret(), b.key.expose_secret());
        assert_ne!(a.digest, b.digest);
    }

    #[test]
    fn checksum_round_trips_at_the_extremes() {
        for crc in [0, 1, 61, 62, u32::MAX / 2, u32::MAX] {
            let encoded = encode_checksum(crc);
            assert_eq!(decode_checksum(&encoded), Some(crc));
        }
        assert_eq!(decode_checksum(b"zzzzzz"), None, "above u32::MAX");
    }

    #[test]
    fn every_single_character_change_is_caught() {
        let generated = format().generate(Environment::Live);
        let text = generated.key.expose_secret();
        let start = "mesh_live_".len();
        for i in start..text.len() {
            if text.as_bytes()[i] == b'_' {
                continue;
            }
            let mut bytes = text.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(bytes).unwrap();
            assert!(format().parse(&changed).is_err(), "position {i}");
        }
    }

    #[test]
    fn parse_errors_name_the_rule() {
        let f = format();
        let key = f.generate(Environment::Live);
        let text = key.key.expose_secret();
        assert_eq!(f.parse("").unwrap_err(), ParseError::Empty);
        assert_eq!(f.parse(&"a".repeat(513)).unwrap_err(), ParseError::TooLong);
        assert_eq!(
            f.parse("mesh_live_ab cd").unwrap_err(),
            ParseError::InvalidCharacter
        );
        assert_eq!(
            f.parse(&text.replacen("mesh", "mash", 1)).unwrap_err(),
            ParseError::WrongPrefix
        );
        assert_eq!(
            f.parse(&text.replacen("live", "prod", 1)).unwrap_err(),
            ParseError::UnknownEnvironment
        );
        assert_eq!(
            f.parse(&text[..text.len() - 1]).unwrap_err(),
            ParseError::Malformed
        );
        assert_eq!(f.parse("mesh_live").unwrap_err(), ParseError::Malformed);
        assert_eq!(f.parse("mesh_").unwrap_err(), ParseError::Malformed);
        assert_eq!(
            f.parse("mesh_prod_x").unwrap_err(),
            ParseError::UnknownEnvironment
        );
        assert_eq!(f.parse("meshy").unwrap_err(), ParseError::WrongPrefix);
    }

    #[test]
    fn a_key_for_another_prefix_does_not_parse() {
        let other = KeyFormat::new("acme").unwrap().generate(Environment::Live);
        assert_eq!(
            format().parse(other.key.expose_secret()).unwrap_err(),
            ParseError::WrongPrefix
        );
    }

    #[test]
    fn prefixes_are_validated() {
        for bad in ["", "Mesh", "1mesh", "me_sh", "mesh-x", "abcdefghijklmnopq"] {
            assert!(KeyFormat::new(bad).is_err(), "{bad:?}");
        }
        for good in ["m", "mesh", "sk2", "abcdefghijklmnop"] {
            assert!(KeyFormat::new(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn debug_of_a_parsed_key_hides_the_secret() {
        let generated = format().generate(Environment::Live);
        let text = generated.key.expose_secret();
        let parsed = format().parse(text).unwrap();
        let debug = format!("{parsed:?} {generated:?}");
        assert!(debug.contains(&generated.id));
        assert!(!debug.contains(&text["mesh_live_".len() + ID_LEN + 1..]));
    }
}
