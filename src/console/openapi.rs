//! The OpenAPI document of the console's API (`utoipa`), served at `openapi.json` with the
//! console's mount point as its server.

use axum::extract::OriginalUri;
use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::{Modify, OpenApi};

use super::api::{
    Applied, AuditPage, AuditQuery, CreateKey, Issued, KeyPage, ListQuery, Me, RotateKey,
    UpdateKey, UsageQuery,
};
use super::error::ErrorBody;
use crate::manage::KeyInfo;
use crate::usage::UsageReport;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tower-api-key console",
        description = "Manage API keys and read their usage. Send a key with the `admin` scope \
                       (every key) or the self-service scope (its owner's keys) as \
                       `Authorization: ApiKey <key>`. Errors are `{error, code, status}`."
    ),
    paths(me, list, create, show, update, rotate, revoke, outliving, apply_lifetime, delete, usage, audit),
    modifiers(&Security),
    security(("api_key" = [])),
    tags((name = "keys", description = "Issue, change and withdraw keys"))
)]
struct ApiDoc;

/// The `ApiKey` scheme of the reference.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`ApiKey <key>` (or `Bearer <key>`)",
            ))),
        );
    }
}

/// `GET openapi.json`: the document, its server the console's mount point.
pub(crate) async fn document(OriginalUri(uri): OriginalUri) -> Json<utoipa::openapi::OpenApi> {
    let mut document = ApiDoc::openapi();
    let base = uri.path().strip_suffix("/openapi.json").unwrap_or_default();
    document.servers = Some(vec![Server::new(if base.is_empty() { "/" } else { base })]);
    Json(document)
}

// The operations, for the document only: the handlers are in `api`.

/// Who the caller is: its role, the scopes it may grant, the plans.
#[utoipa::path(get, path = "/api/me", tag = "keys",
    responses((status = 200, body = Me), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[allow(dead_code)]
fn me() {}

/// Lists the keys the caller manages, oldest first; with `requests_hours`, each key's requests
/// per hour too (404 `USAGE_NOT_RECORDED` where the console has no usage analytics). 400
/// `LAST_USE_NOT_RECORDED` for `unused_for` where keys' last use is not recorded
/// (`last_use_recorded` in `api/me`).
#[utoipa::path(get, path = "/api/keys", tag = "keys", params(ListQuery),
    responses((status = 200, body = KeyPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn list() {}

/// Issues a key. The plaintext is in this answer only. 409 `KEY_LIMIT_REACHED` when its owner
/// already has the most keys in circulation the console allows (`max_keys_per_owner` in
/// `api/me`); 400 `EXPIRY_TOO_LATE` for an expiry later than the longest lifetime the console
/// allows (`max_key_lifetime_secs` in `api/me`; a key asked without an expiry gets that long).
#[utoipa::path(post, path = "/api/keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, body = Issued), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
#[allow(dead_code)]
fn create() {}

/// One key.
#[utoipa::path(get, path = "/api/keys/{id}", tag = "keys", params(("id" = String, Path, description = "The key id")),
    responses((status = 200, body = KeyInfo), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn show() {}

/// Changes a key; fields left out stay, `null` clears. Every field is checked before the first
/// is written: a 400 changes nothing (`EXPIRY_TOO_LATE` for an expiry, or none, later than the
/// longest lifetime the console allows), nor does a 409 `KEY_LIMIT_REACHED` (a later expiry of
/// an expired key whose owner holds the most keys in circulation the console allows). A 503 may leave the fields written before the store failed,
/// and names them in the audit trail.
#[utoipa::path(patch, path = "/api/keys/{id}", tag = "keys", params(("id" = String, Path, description = "The key id")),
    request_body = UpdateKey,
    responses((status = 200, body = KeyInfo), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn update() {}

/// Issues the key's successor, with every setting of it; the old key works for the grace more.
#[utoipa::path(post, path = "/api/keys/{id}/rotate", tag = "keys", params(("id" = String, Path, description = "The key id")),
    request_body(content = Option<RotateKey>),
    responses((status = 201, body = Issued), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[allow(dead_code)]
fn rotate() {}

/// Revokes a key: it never works again.
#[utoipa::path(post, path = "/api/keys/{id}/revoke", tag = "keys", params(("id" = String, Path, description = "The key id")),
    responses((status = 200, body = KeyInfo), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn revoke() {}

/// Brings every key in circulation that would outlive the longest lifetime the console allows
/// (`max_key_lifetime_secs` in `api/me`) within it: keys that expire later, or never (issued
/// before the limit was set), now expire that long from now, each change in the audit trail.
/// Admin only; 400 `NO_KEY_LIFETIME` when the console sets no longest lifetime.
#[utoipa::path(post, path = "/api/apply-lifetime", tag = "keys",
    responses((status = 200, body = Applied), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn apply_lifetime() {}

/// The keys in circulation that would outlive the longest lifetime the console allows, and the
/// expiry `POST` would give them: what it would change now. Admin only; 400 `NO_KEY_LIFETIME`
/// when the console sets no longest lifetime.
#[utoipa::path(get, path = "/api/apply-lifetime", tag = "keys",
    responses((status = 200, body = Applied), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn outliving() {}

/// Deletes a key.
#[utoipa::path(delete, path = "/api/keys/{id}", tag = "keys", params(("id" = String, Path, description = "The key id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn delete() {}

/// Usage over time of a key, an owner, or (admin) the whole service.
#[utoipa::path(get, path = "/api/usage", tag = "keys", params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn usage() {}

/// The changes made through the console and the command line tool that the caller may see,
/// newest first, from the store's trail (every replica's changes, kept across restarts).
#[utoipa::path(get, path = "/api/audit", tag = "keys", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn audit() {}
