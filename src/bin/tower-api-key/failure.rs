//! How a command fails: the message and the exit code.

use tower_api_key::{manage::ManageError, store::StoreError};

/// A failure, with its exit code.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
    /// Lines that follow the message, one item each (such as the lines of a file refused).
    pub(crate) details: Vec<String>,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        match error {
            // The options or the URL given: the user's to mend, as any bad input.
            StoreError::Config(_) => invalid(error.to_string()),
            _ => Failure::new(4, format!("the key store failed: {error}")),
        }
    }
}

impl From<ManageError> for Failure {
    fn from(error: ManageError) -> Self {
        match error {
            ManageError::Store(e) => e.into(),
            ManageError::Invalid(_)
            | ManageError::NotActive(_)
            | ManageError::TooManyKeys(_)
            | ManageError::LifetimeTooLong(_)
            | ManageError::IdTaken(_) => invalid(error.to_string()),
            other => Failure::new(4, other.to_string()),
        }
    }
}

/// Bad input: exit code 2.
pub(crate) fn invalid(message: impl Into<String>) -> Failure {
    Failure::new(2, message)
}

/// No key `id`: exit code 3.
pub(crate) fn not_found(id: &str) -> Failure {
    Failure::new(3, format!("no key with id `{id}`"))
}
