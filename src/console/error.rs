//! The console API's errors, in the reference's shape: `{"error", "code", "status"}`.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::Serialize;

use crate::manage::{InvalidKey, ManageError};
use crate::store::StoreError;
use crate::trace;

/// A refused or failed console request.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// The body of every error the console answers, as the reference's rejections.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong, for a person.
    error: String,
    /// What went wrong, for a program: `INVALID_REQUEST`, `UNKNOWN_SCOPE`, `KEY_NOT_FOUND`, ….
    code: &'static str,
    /// The HTTP status.
    status: u16,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with `code`.
    pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 403: the caller's key may not do this.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "INSUFFICIENT_PERMISSIONS", message)
    }

    /// 404 for a key that does not exist, or that the caller may not see: the two answer alike,
    /// so an owner learns nothing of another owner's keys.
    pub(crate) fn no_key() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "KEY_NOT_FOUND", "no such key")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            code: self.code,
            status: self.status.as_u16(),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        // The store's own words may name its host or database: they go to the trace only.
        trace::console_store_failed(&error);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "KEY_STORE_UNAVAILABLE",
            "the key store is unavailable; try again",
        )
    }
}

impl From<InvalidKey> for ApiError {
    fn from(error: InvalidKey) -> Self {
        let code = match &error {
            InvalidKey::Name => "INVALID_NAME",
            InvalidKey::Owner => "INVALID_OWNER",
            InvalidKey::Metadata => "INVALID_METADATA",
            InvalidKey::Scope(_) => "INVALID_SCOPE",
            InvalidKey::TimeOutOfRange => "INVALID_EXPIRY",
            InvalidKey::Limits(_) => "INVALID_LIMITS",
            InvalidKey::Id => "INVALID_KEY_ID",
            InvalidKey::NoFormat => {
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "NO_KEY_FORMAT",
                    error.to_string(),
                )
            }
        };
        ApiError::bad(code, error.to_string())
    }
}

impl From<ManageError> for ApiError {
    fn from(error: ManageError) -> Self {
        match error {
            ManageError::Invalid(invalid) => invalid.into(),
            ManageError::Store(store) => store.into(),
            ManageError::NotActive(_) => {
                ApiError::new(StatusCode::CONFLICT, "KEY_NOT_ACTIVE", error.to_string())
            }
            ManageError::TooManyKeys(_) => {
                ApiError::new(StatusCode::CONFLICT, "KEY_LIMIT_REACHED", error.to_string())
            }
            ManageError::LifetimeTooLong(_) => ApiError::bad("EXPIRY_TOO_LATE", error.to_string()),
            ManageError::IdTaken(_) => {
                ApiError::new(StatusCode::CONFLICT, "KEY_ID_TAKEN", error.to_string())
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "the request body is larger than the console accepts",
            );
        }
        ApiError::bad("INVALID_REQUEST", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad("INVALID_QUERY", rejection.body_text())
    }
}
