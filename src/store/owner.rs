//! What a store keeps about one owner: limits and credits shared by all of its keys.

use crate::limit::{Credits, Limits};

/// The limits and credits set on an owner (the [`KeyRecord::owner`](super::KeyRecord::owner) of
/// its keys), which apply to all of its keys together: every request of any of them counts
/// against the owner's limits (besides its key's own), and spends the owner's credits (besides
/// its key's own, if it has some).
///
/// ```
/// use tower_api_key::{limit::{Credits, Limits}, store::OwnerRecord};
///
/// let mut acme = OwnerRecord::new("acme");
/// acme.limits = Some(Limits::per_minute(1_000).daily(100_000));
/// acme.credits = Some(Credits::once(50_000));
/// assert!(!acme.is_empty());
/// assert!(OwnerRecord::new("nobody").is_empty());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OwnerRecord {
    /// The owner, as its keys name it.
    pub owner: String,
    /// Limits counted for all of its keys together.
    pub limits: Option<Limits>,
    /// Credits spent by all of its keys together.
    pub credits: Option<Credits>,
}

impl OwnerRecord {
    /// `owner`, with nothing set.
    pub fn new(owner: impl Into<String>) -> Self {
        OwnerRecord {
            owner: owner.into(),
            limits: None,
            credits: None,
        }
    }

    /// Whether nothing is set on the owner.
    pub fn is_empty(&self) -> bool {
        self.limits.as_ref().is_none_or(Limits::is_unlimited) && self.credits.is_none()
    }
}
