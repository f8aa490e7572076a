//! The environment a key belongs to: `live`, `test` or `dev`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which kind of deployment a key is for, written into the key itself
/// (`mesh_live_…`, `mesh_test_…`, `mesh_dev_…`).
///
/// These are the reference documents' production, test and development keys. The environment is
/// part of the key's text, of its stored record and of the [`Principal`](crate::Principal), so a
/// handler can send test keys to sandbox data.
///
/// ```
/// use tower_api_key::Environment;
///
/// let env: Environment = "test".parse().unwrap();
/// assert_eq!(env, Environment::Test);
/// assert_eq!(env.as_str(), "test");
/// assert!("staging".parse::<Environment>().is_err());
/// ```
#[cfg_attr(feature = "console", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Production keys (`live`): full limits, real data.
    Live,
    /// Test keys (`test`): sandbox data.
    Test,
    /// Development keys (`dev`): local development only.
    Dev,
}

impl Environment {
    /// Every environment, in the order `live`, `test`, `dev`.
    pub const ALL: [Environment; 3] = [Environment::Live, Environment::Test, Environment::Dev];

    /// The marker as it appears in a key: `live`, `test` or `dev`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
            Environment::Dev => "dev",
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an [`Environment`] from text that is not `live`, `test` or `dev`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownEnvironment;

impl fmt::Display for UnknownEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown key environment: expected `live`, `test` or `dev`")
    }
}

impl std::error::Error for UnknownEnvironment {}

impl FromStr for Environment {
    type Err = UnknownEnvironment;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "live" => Ok(Environment::Live),
            "test" => Ok(Environment::Test),
            "dev" => Ok(Environment::Dev),
            _ => Err(UnknownEnvironment),
        }
    }
}
