//! A key in plain text, as it is shown once when it is created.

use std::fmt;

use zeroize::Zeroizing;

/// A whole API key in plain text.
///
/// It exists only between generation and the one-time display to its owner. It has no
/// `Display`, its `Debug` prints `PlaintextKey(..)`, and its memory is zeroed when dropped.
/// Read it deliberately with [`expose_secret`](PlaintextKey::expose_secret).
///
/// ```
/// use tower_api_key::{Environment, key::KeyFormat};
///
/// let generated = KeyFormat::new("mesh").unwrap().generate(Environment::Live);
/// assert!(generated.key.expose_secret().starts_with("mesh_live_"));
/// assert_eq!(format!("{:?}", generated.key), "PlaintextKey(..)");
/// ```
#[derive(Clone)]
pub struct PlaintextKey(Zeroizing<String>);

impl PlaintextKey {
    pub(crate) fn new(key: String) -> Self {
        PlaintextKey(Zeroizing::new(key))
    }

    /// The key's text. Show it to its owner once; never log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PlaintextKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlaintextKey(..)")
    }
}
