//! Signed key ids: a server secret that marks every id it issues, so that a made-up id is
//! refused before it costs a store lookup.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::format::BASE62;

/// How many of an id's characters are its tag: 62⁴ (about 14.8 million) tags, so a made-up id
/// passes with odds of one in 14.8 million.
pub const ID_TAG_LEN: usize = 4;

/// The shortest id key, in bytes.
pub const MIN_ID_KEY_LEN: usize = 32;

/// A server secret that signs key ids: an id issued under it is 8 random characters and a
/// 4-character tag (HMAC-SHA256 of the prefix and the random part under this key), so a layer
/// that holds the same key refuses an id it did not issue without asking the store: anyone can
/// compute a key's public CRC32, nobody can compute the tag. Only lookups that miss the cache
/// check the tag; a cached key costs nothing more.
///
/// Keep it like any other server secret (an environment variable, a secrets manager). `Debug`
/// never shows it.
///
/// ```
/// use tower_api_key::{Environment, key::{IdKey, KeyFormat}};
///
/// let id_key = IdKey::from_hex(&"5e".repeat(32))?;
/// let format = KeyFormat::new("mesh")?.with_id_key(id_key);
/// let generated = format.generate(Environment::Live);
/// assert!(format.issued(&generated.id));
/// assert!(!format.issued("3kTMd9Qx2bLp"), "made up");
/// assert_eq!(format!("{:?}", IdKey::from_hex(&"5e".repeat(32))?), "IdKey(..)");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct IdKey(Arc<zeroize::Zeroizing<Vec<u8>>>);

/// What [`IdKey::new`] and [`IdKey::from_hex`] refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidIdKey {
    /// Fewer than [`MIN_ID_KEY_LEN`] bytes.
    TooShort,
    /// Not hexadecimal.
    NotHex,
}

impl fmt::Display for InvalidIdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidIdKey::TooShort => "an id key has at least 32 bytes (64 hex digits)",
            InvalidIdKey::NotHex => "an id key is written in hex digits",
        })
    }
}

impl std::error::Error for InvalidIdKey {}

impl IdKey {
    /// An id key of `secret`'s bytes.
    ///
    /// # Errors
    /// [`InvalidIdKey::TooShort`] under [`MIN_ID_KEY_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Result<Self, InvalidIdKey> {
        if secret.len() < MIN_ID_KEY_LEN {
            return Err(InvalidIdKey::TooShort);
        }
        Ok(IdKey(Arc::new(zeroize::Zeroizing::new(secret.to_vec()))))
    }

    /// An id key written in hex (at least 64 digits), as `openssl rand -hex 32` prints one.
    ///
    /// # Errors
    /// [`InvalidIdKey::NotHex`] or [`InvalidIdKey::TooShort`].
    pub fn from_hex(text: &str) -> Result<Self, InvalidIdKey> {
        let bytes =
            zeroize::Zeroizing::new(hex::decode(text.trim()).map_err(|_| InvalidIdKey::NotHex)?);
        IdKey::new(&bytes)
    }

    /// The tag of the id whose random part is `random`, under `prefix`.
    pub(crate) fn tag(&self, prefix: &str, random: &[u8]) -> [u8; ID_TAG_LEN] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(prefix.as_bytes());
        mac.update(b"_");
        mac.update(random);
        let bytes = mac.finalize().into_bytes();
        let mut n = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let mut tag = [b'0'; ID_TAG_LEN];
        for slot in tag.iter_mut().rev() {
            *slot = BASE62[(n % 62) as usize];
            n /= 62;
        }
        tag
    }

    /// Whether `id` (random part, then tag) carries its tag under `prefix`, compared in constant
    /// time.
    pub(crate) fn signed(&self, prefix: &str, id: &[u8]) -> bool {
        let Some(at) = id.len().checked_sub(ID_TAG_LEN) else {
            return false;
        };
        let (random, tag) = id.split_at(at);
        bool::from(self.tag(prefix, random).ct_eq(tag))
    }
}

impl PartialEq for IdKey {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.as_slice().ct_eq(other.0.as_slice()))
    }
}

impl Eq for IdKey {}

impl fmt::Debug for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_the_keys_and_the_prefixes() {
        let a = IdKey::new(&[1; 32]).unwrap();
        let b = IdKey::new(&[2; 32]).unwrap();
        let tag = a.tag("mesh", b"3kTMd9Qx");
        let id = [&b"3kTMd9Qx"[..], &tag].concat();
        assert!(a.signed("mesh", &id));
        assert!(!b.signed("mesh", &id), "another key");
        assert!(!a.signed("shop", &id), "another prefix");
        let mut forged = id.clone();
        forged[0] = if forged[0] == b'A' { b'B' } else { b'A' };
        assert!(!a.signed("mesh", &forged), "another random part");
        assert!(!a.signed("mesh", b"abc"), "too short");
        assert!(tag.iter().all(u8::is_ascii_alphanumeric));
    }

    #[test]
    fn short_or_malformed_keys_are_refused() {
        assert_eq!(IdKey::new(&[0; 31]).unwrap_err(), InvalidIdKey::TooShort);
        assert_eq!(IdKey::from_hex("zz").unwrap_err(), InvalidIdKey::NotHex);
        assert_eq!(
            IdKey::from_hex(&"ab".repeat(31)).unwrap_err(),
            InvalidIdKey::TooShort
        );
        assert!(IdKey::from_hex(&"AB".repeat(32)).is_ok());
    }
}
