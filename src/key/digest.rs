//! The SHA-256 digest of a key's secret: the only form in which a secret is stored.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// The SHA-256 digest of a key's secret part (or, for an opaque key, of the whole key).
///
/// Stores keep this, never the secret. Two digests are compared in constant time as four
/// 64-bit words with [`subtle`]; `==` on this type is that comparison. `Debug` does not show
/// the bytes (a digest of a weak legacy key could be brute-forced), and serde writes them as
/// lowercase hex.
///
/// ```
/// use tower_api_key::key::SecretDigest;
///
/// let a = SecretDigest::of(b"correct horse");
/// assert_eq!(a, SecretDigest::of(b"correct horse"));
/// assert_ne!(a, SecretDigest::of(b"correct horsf"));
/// assert_eq!(format!("{a:?}"), "SecretDigest(..)");
/// assert_eq!(SecretDigest::from_hex(&a.to_hex()).unwrap(), a);
/// ```
#[derive(Clone, Copy, Eq)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    /// The SHA-256 digest of `secret`.
    pub fn of(secret: &[u8]) -> Self {
        SecretDigest(Sha256::digest(secret).into())
    }

    /// The digest of a structured key's `secret`, bound to the `prefix` of the service that
    /// issued it: SHA-256 of `prefix`, `_` and the secret. A key issued under one prefix never
    /// matches under another, even when both services share one store and the prefix and the
    /// public checksum of a key are rewritten. It is what
    /// [`KeyFormat::generate`](crate::key::KeyFormat::generate) stores and what a parsed key is
    /// compared by; for a prefix of up to 16 characters it is still one SHA-256 block.
    ///
    /// ```
    /// use tower_api_key::key::SecretDigest;
    ///
    /// let secret = b"4GmQm9w2s0PqzJ8uYb3kRrV7xLcN1eTd";
    /// assert_ne!(SecretDigest::of_key("mesh", secret), SecretDigest::of_key("shop", secret));
    /// ```
    pub fn of_key(prefix: &str, secret: &[u8]) -> Self {
        Self::of_prefixed(prefix.as_bytes(), secret)
    }

    /// [`of_key`](Self::of_key), the prefix as the bytes of a presented key.
    pub(crate) fn of_prefixed(prefix: &[u8], secret: &[u8]) -> Self {
        SecretDigest(
            Sha256::new()
                .chain_update(prefix)
                .chain_update(b"_")
                .chain_update(secret)
                .finalize()
                .into(),
        )
    }

    /// A digest from its 32 raw bytes, as a store read them back.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretDigest(bytes)
    }

    /// The 32 raw bytes, for a store to write.
    pub const fn to_bytes(self) -> [u8; 32] {
        self.0
    }

    /// The digest as 64 lowercase hex digits.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// A digest from 64 hex digits.
    ///
    /// # Errors
    /// When `hex` is not exactly 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, InvalidDigest> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| InvalidDigest)?;
        Ok(SecretDigest(bytes))
    }

    /// Constant-time equality: the time taken does not depend on where the digests differ.
    pub fn ct_eq(&self, other: &SecretDigest) -> Choice {
        let mut equal = Choice::from(1);
        for (a, b) in self.0.chunks_exact(8).zip(other.0.chunks_exact(8)) {
            let a = u64::from_ne_bytes(a.try_into().expect("chunks of 8"));
            let b = u64::from_ne_bytes(b.try_into().expect("chunks of 8"));
            equal &= a.ct_eq(&b);
        }
        equal
    }
}

impl PartialEq for SecretDigest {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretDigest(..)")
    }
}

impl Serialize for SecretDigest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for SecretDigest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        SecretDigest::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// The error of reading a [`SecretDigest`] from text that is not 64 hex digits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidDigest;

impl fmt::Display for InvalidDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret digest is 64 hex digits (SHA-256)")
    }
}

impl std::error::Error for InvalidDigest {}
