//! Keys: their text format, generation, parsing, and the digest that is stored instead of them.
//!
//! ```
//! use tower_api_key::{Environment, key::KeyFormat, key::SecretDigest};
//!
//! let format = KeyFormat::new("mesh")?;
//! let generated = format.generate(Environment::Live);
//! // Store `generated.id` and `generated.digest`; show `generated.key` once.
//! let presented = format.parse(generated.key.expose_secret())?;
//! assert_eq!(presented.digest(), generated.digest);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod digest;
pub(crate) mod environment;
mod format;
mod id_key;
mod plaintext;

pub use digest::{InvalidDigest, SecretDigest};
pub(crate) use environment::Environment;
pub use environment::UnknownEnvironment;
pub(crate) use format::{check_text, id_range, is_key_id};
pub use format::{
    GeneratedKey, InvalidPrefix, KeyFormat, ParseError, ParsedKey, CHECKSUM_LEN, ID_LEN,
    MAX_KEY_LEN, MAX_PREFIX_LEN, SECRET_LEN,
};
pub use id_key::{IdKey, InvalidIdKey, ID_TAG_LEN, MIN_ID_KEY_LEN};
pub use plaintext::PlaintextKey;
