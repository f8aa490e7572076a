//! Who may do what through the console: an admin key manages every key; a self-service key
//! manages only the keys of its own owner, and grants no more than it holds.

use crate::principal::Principal;
use crate::Environment;

use super::error::ApiError;

/// The scopes that open the console, and the scopes keys may be given through it.
#[derive(Clone, Debug)]
pub(crate) struct Access {
    /// Manages every key.
    pub(crate) admin: String,
    /// Manages the keys of its own owner.
    pub(crate) self_service: String,
    /// The scopes a key may be given; anything else is `UNKNOWN_SCOPE`.
    pub(crate) scopes: Vec<String>,
}

/// The key a console request came with, and what it may do.
pub(crate) struct Caller {
    pub(crate) key: Principal,
    pub(crate) role: Role,
}

/// What a caller manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Every key.
    Admin,
    /// The keys of this owner.
    Owner(String),
}

impl Access {
    /// What `key` may do, or 403 if it may not use the console.
    pub(crate) fn caller(&self, key: Principal) -> Result<Caller, ApiError> {
        let role = if key.has_scope(&self.admin) {
            Role::Admin
        } else if key.has_scope(&self.self_service) {
            let owner = key.owner().ok_or_else(|| {
                ApiError::forbidden("a self-service key needs an owner to manage the keys of")
            })?;
            Role::Owner(owner.to_owned())
        } else {
            return Err(ApiError::forbidden(format!(
                "the console needs a key with the {:?} or {:?} scope",
                self.admin, self.self_service
            )));
        };
        Ok(Caller { key, role })
    }

    /// Refuses scopes the console does not know, or that `caller` may not grant.
    pub(crate) fn check_grant(&self, caller: &Caller, scopes: &[String]) -> Result<(), ApiError> {
        for scope in scopes {
            if !self.scopes.contains(scope) {
                return Err(ApiError::bad(
                    "UNKNOWN_SCOPE",
                    format!("unknown scope {scope:?}; known: {}", self.scopes.join(", ")),
                ));
            }
            if !caller.may_grant(scope) {
                return Err(ApiError::forbidden(format!(
                    "a self-service key grants only scopes it holds, not {scope:?}"
                )));
            }
        }
        Ok(())
    }

    /// The known scopes `caller` may grant.
    pub(crate) fn grantable(&self, caller: &Caller) -> Vec<String> {
        (self.scopes.iter())
            .filter(|scope| caller.may_grant(scope))
            .cloned()
            .collect()
    }
}

impl Caller {
    /// Whether the caller manages a key of `owner`.
    pub(crate) fn manages(&self, owner: Option<&str>) -> bool {
        match &self.role {
            Role::Admin => true,
            Role::Owner(own) => owner == Some(own.as_str()),
        }
    }

    /// Whether the caller may give a key `scope`: an admin any, a self-service key only what
    /// its own scopes grant.
    pub(crate) fn may_grant(&self, scope: &str) -> bool {
        self.role == Role::Admin || self.key.has_scope(scope)
    }

    /// Refuses what only an admin may do: `what` names it.
    pub(crate) fn admin_only(&self, what: &str) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Owner(_) => Err(ApiError::forbidden(format!(
                "only an admin key may set {what}"
            ))),
        }
    }

    /// Refuses an environment a self-service key may not issue keys in (any but its own).
    pub(crate) fn check_environment(&self, environment: Environment) -> Result<(), ApiError> {
        if self.role == Role::Admin || environment == self.key.environment() {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "a self-service key issues keys in its own environment ({}) only",
            self.key.environment()
        )))
    }

    /// `admin` or `self-service`.
    pub(crate) fn role_name(&self) -> &'static str {
        match self.role {
            Role::Admin => "admin",
            Role::Owner(_) => "self-service",
        }
    }
}
