//! The console's JSON API: keys (list, create, show, update, rotate, revoke, delete), usage,
//! the audit trail, and who the caller is. Every handler takes the key the layer verified and
//! checks what it may do before it reads or changes anything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Deserializer, Serialize};

use crate::limit::Limits;
use crate::manage::{AuditEvent, CreatedKey, KeyInfo, ManageError};
use crate::store::{
    self, AuditArchive, KeyFilter, KeyRecord, KeyState, KeyStoreAdmin, KeyUpdate, Listing,
    UsageArchive,
};
use crate::usage::{Resolution, Subject, UsageReport};
use crate::{Environment, NewKey, Principal};

use super::access::{Caller, Role};
use super::error::ApiError;
use super::Inner;

/// What the console needs of a store: to manage keys, to read other replicas' usage, and to
/// keep the audit trail.
pub(crate) trait Store: KeyStoreAdmin + UsageArchive + AuditArchive + Clone {}

impl<A: KeyStoreAdmin + UsageArchive + AuditArchive + Clone> Store for A {}

/// The state of every handler.
pub(crate) type ConsoleState<A> = State<Arc<Inner<A>>>;

/// The key the layer put into the request; none when the layer lets requests without a key
/// through as anonymous, which the console does not.
pub(crate) type Key = Option<Extension<Principal>>;

/// How many keys a page lists unless asked.
const PAGE: usize = 50;
/// The most a page lists.
const MAX_PAGE: usize = 500;
/// The grace period of a rotation unless asked: a day, as the CLI's.
const GRACE: Duration = Duration::from_secs(24 * 3_600);

/// A key to create. Only `name` is required.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
    /// A name to recognise it by, 1 to 128 bytes.
    name: String,
    /// Its scopes, among those the console knows (`read`, `write`, `admin` by default).
    #[serde(default)]
    scopes: Vec<String>,
    /// `live` (the default), `test` or `dev`.
    environment: Option<Environment>,
    /// Its owner: an admin may set any; a self-service key's keys are its own owner's.
    owner: Option<String>,
    /// When it expires, as a duration from now: `30d`, `12h`.
    expires_in: Option<String>,
    /// When it expires, in Unix seconds.
    expires_at: Option<u64>,
    /// A plan the layer defines (`free`, `pro`, `enterprise`, …). Admin only.
    plan: Option<String>,
    /// Limits of its own, in place of its plan's. Admin only.
    #[schema(value_type = Option<Object>)]
    limits: Option<Limits>,
    /// Up to 32 entries, each key and value at most 512 bytes.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// Changes to a key; fields left out stay as they are, `null` clears.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateKey {
    name: Option<String>,
    scopes: Option<Vec<String>>,
    /// `true` disables it (refused with `API_KEY_DISABLED`), `false` enables it again.
    disabled: Option<bool>,
    /// A new expiry as a duration from now.
    expires_in: Option<String>,
    /// A new expiry in Unix seconds; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    expires_at: Option<Option<u64>>,
    /// A plan the layer defines; `null` clears it. Admin only.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    plan: Option<Option<String>>,
    /// Limits of its own; `null` clears them. Admin only.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    limits: Option<Option<Limits>>,
    /// Replaces the metadata.
    metadata: Option<BTreeMap<String, String>>,
}

/// A field that is present (even as `null`) is `Some`; one left out stays `None` by default.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A rotation.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateKey {
    /// How long the old key keeps working: `24h` (the default), `7d`, `0s`.
    grace: Option<String>,
}

/// A key just issued: the plaintext is in this answer only.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Issued<'a> {
    /// The whole key. It is shown once: it is not kept, and no other answer holds it.
    key: &'a str,
    /// The line that puts it into the environment: `export MESH_API_KEY=…`.
    export: String,
    /// The reference's warning, to show with it.
    warning: &'static str,
    /// The key as the console lists it.
    record: KeyInfo,
}

/// Which keys to list.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only this owner's keys.
    owner: Option<String>,
    /// Only keys of this environment.
    environment: Option<Environment>,
    /// Only keys in this state: `active`, `revoked`, `expired` or `disabled`.
    state: Option<String>,
    /// Only keys whose name contains this, ignoring case.
    name: Option<String>,
    /// Only keys created longer ago than this (`90d`): keys due for rotation.
    older_than: Option<String>,
    /// Only keys that got no request through for this long (`30d`), or never: keys to delete.
    /// Last use is what the layer's `StoreUsage` sink flushed: where nothing records it
    /// (`last_use_recorded` false in `api/me`), 400 `LAST_USE_NOT_RECORDED`.
    unused_for: Option<String>,
    /// Only keys not expired yet that expire within this long (`7d`): keys whose holders need
    /// a successor soon.
    expires_within: Option<String>,
    /// Skip this many keys (of those that match).
    #[serde(default)]
    offset: usize,
    /// List at most this many (50 by default, 500 at most).
    limit: Option<usize>,
    /// With each key, its requests per hour over the last this many hours (1 to 168), read with
    /// the page: the key list's sparklines, without a request per key. Where the console has
    /// no usage analytics, 404 `USAGE_NOT_RECORDED`.
    requests_hours: Option<u64>,
}

/// A page of keys, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct KeyPage {
    keys: Vec<ListedKey>,
    /// How many keys match, on every page.
    total: usize,
    offset: usize,
    /// The offset of the next page, if there is one.
    next_offset: Option<usize>,
}

/// A key in a page: what is known of it, and its recent requests if they were asked for.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ListedKey {
    #[serde(flatten)]
    info: KeyInfo,
    /// Its requests per hour, oldest first, the current hour last (`requests_hours` hours, or
    /// one more when the range starts within an hour): with `requests_hours` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    requests_by_hour: Option<Vec<u64>>,
}

/// Whose usage, over how long.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageQuery {
    /// One key's usage (with where it stands against its limits).
    key: Option<String>,
    /// One owner's keys' usage.
    owner: Option<String>,
    /// Over the last this many hours: 1 by default, at most 9,504 (396 days).
    hours: Option<u64>,
    /// `minute` (the default), `hour` or `day`.
    #[param(value_type = Option<String>)]
    resolution: Option<Resolution>,
}

/// Which changes to list.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Only the changes of this key.
    key: Option<String>,
    /// At most this many, newest first (100 by default, 1,000 at most).
    limit: Option<usize>,
}

/// The keys brought (or, asked with `GET`, to be brought) within the longest lifetime, and the
/// expiry each now has (or would have).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Applied {
    /// The expiry, in Unix seconds: the longest lifetime from now.
    expires_at: u64,
    /// Their ids; none if no key in circulation outlives the longest lifetime.
    keys: Vec<String>,
}

/// The changes made through the console and the command line tool, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AuditPage {
    events: Vec<AuditEvent>,
}

/// The caller, and what the console offers it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Me {
    /// The caller's key id.
    id: String,
    name: String,
    owner: Option<String>,
    environment: Environment,
    /// `admin` or `self-service`.
    role: &'static str,
    scopes: Vec<String>,
    /// The scopes the caller may give a key.
    grantable_scopes: Vec<String>,
    /// The plans keys may be put on (an admin sets them).
    plans: Vec<String>,
    /// Whether usage is recorded (the usage endpoint answers).
    usage: bool,
    /// The variable of the `export` line shown with a new key.
    env_var: String,
    /// The most keys in circulation (neither revoked nor expired) an owner may hold, if
    /// limited: issuing one more answers 409 `KEY_LIMIT_REACHED`.
    max_keys_per_owner: Option<u32>,
    /// The longest a key may live, in seconds from when it is issued or its expiry set, if
    /// limited: a key issued without an expiry gets this long; a later expiry, or none, answers
    /// 400 `EXPIRY_TOO_LATE`.
    max_key_lifetime_secs: Option<u64>,
    /// Whether keys' last use is recorded in the store (a `StoreUsage` sink): without it, keys
    /// show no last use and cannot be listed by it (`unused_for`).
    last_use_recorded: bool,
}

impl<A: Store> Inner<A> {
    /// The caller of a request, or 401 / 403.
    fn caller(&self, key: Key) -> Result<Caller, ApiError> {
        let Some(Extension(key)) = key else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "MISSING_API_KEY",
                "API key required",
            ));
        };
        self.access.caller(key)
    }

    /// Key `id`'s record, if `caller` manages it; 404 alike for a key that is not there and
    /// one of another owner.
    async fn record(&self, caller: &Caller, id: &str) -> Result<KeyRecord, ApiError> {
        match self.keys.store().get(id).await? {
            Some(record) if caller.manages(record.owner.as_deref()) => Ok(record),
            _ => Err(ApiError::no_key()),
        }
    }

    /// Records a change `caller` made to key `record` in the audit trail.
    async fn record_change(
        &self,
        caller: &Caller,
        action: &str,
        record: &KeyRecord,
        detail: Vec<String>,
    ) {
        let event = AuditEvent::new(caller.key.key_id(), action, &record.id)
            .owner(record.owner.as_deref())
            .detail(detail);
        // A trail that cannot be written is traced as an error: the change is made already.
        let _ = self.keys.record_change(&event).await;
    }

    /// The usage analytics, or 404 `USAGE_NOT_RECORDED` when the console was not given them.
    fn analytics(&self) -> Result<&crate::usage::Analytics, ApiError> {
        self.analytics.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "USAGE_NOT_RECORDED",
                "the console was not given the layer's usage analytics",
            )
        })
    }

    fn info(&self, record: &KeyRecord) -> KeyInfo {
        KeyInfo::new(record, Some(self.handle.format()), crate::clock::now())
    }

    /// Refuses a plan the layer does not define.
    fn check_plan(&self, plan: &str) -> Result<(), ApiError> {
        let known: Vec<String> = self.handle.plans().into_iter().map(|(n, _)| n).collect();
        if known.iter().any(|name| name == plan) {
            return Ok(());
        }
        Err(ApiError::bad(
            "UNKNOWN_PLAN",
            format!("unknown plan {plan:?}; known: {}", known.join(", ")),
        ))
    }

    /// The answer with a key just issued: 201, never cached.
    fn issued(&self, created: &CreatedKey) -> Response {
        let key = created.key.expose_secret();
        let body = Issued {
            export: format!("export {}={key}", self.env_var),
            key,
            warning: "This key is shown once and cannot be shown again. Copy it now and keep it \
                      in a secure place (a password manager or an environment variable); never \
                      commit it to source control.",
            record: self.info(&created.record),
        };
        (StatusCode::CREATED, Json(body)).into_response()
    }
}

/// An expiry from `expires_in` (a duration from now) or `expires_at` (Unix seconds): one or
/// neither.
fn expiry(
    expires_in: Option<&str>,
    expires_at: Option<u64>,
) -> Result<Option<SystemTime>, ApiError> {
    match (expires_in, expires_at) {
        (Some(_), Some(_)) => Err(both_expiries()),
        (Some(text), None) => Ok(Some(after(crate::clock::now(), duration(text)?)?)),
        (None, Some(secs)) => Ok(Some(after(
            SystemTime::UNIX_EPOCH,
            Duration::from_secs(secs),
        )?)),
        (None, None) => Ok(None),
    }
}

/// `start + by`, if a clock can hold it (the manager refuses what is past the year 9999).
fn after(start: SystemTime, by: Duration) -> Result<SystemTime, ApiError> {
    start
        .checked_add(by)
        .ok_or_else(|| ApiError::bad("INVALID_EXPIRY", "times after the year 9999 are not kept"))
}

fn both_expiries() -> ApiError {
    ApiError::bad("INVALID_EXPIRY", "give expires_in or expires_at, not both")
}

/// A duration such as `24h` or `7d`.
fn duration(text: &str) -> Result<Duration, ApiError> {
    humantime::parse_duration(text).map_err(|e| {
        ApiError::bad(
            "INVALID_DURATION",
            format!("{text:?} is not a duration such as 24h or 7d: {e}"),
        )
    })
}

/// Lists the keys the caller manages that match the query.
pub(crate) async fn list<A: Store>(
    State(console): ConsoleState<A>,
    key: Key,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<KeyPage>, ApiError> {
    let caller = console.caller(key)?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad(
            "INVALID_QUERY",
            format!("limit is 1 to {MAX_PAGE}"),
        ));
    }
    let state = match query.state.as_deref() {
        None => None,
        Some("active") => Some(KeyState::Active),
        Some("revoked") => Some(KeyState::Revoked),
        Some("expired") => Some(KeyState::Expired),
        Some("disabled") => Some(KeyState::Disabled),
        Some(_) => {
            return Err(ApiError::bad(
                "INVALID_QUERY",
                "state is active, revoked, expired or disabled",
            ))
        }
    };
    // A self-service key lists its own owner's keys: asking for another owner's finds none.
    let (owner, none) = match (&caller.role, query.owner) {
        (Role::Admin, owner) => (owner, false),
        (Role::Owner(own), asked) => (Some(own.clone()), asked.is_some_and(|a| a != *own)),
    };
    if query.unused_for.is_some() && !console.last_use_recorded {
        return Err(ApiError::bad(
            "LAST_USE_NOT_RECORDED",
            "keys' last use is not recorded (the layer has no StoreUsage sink), \
             so every key would look unused",
        ));
    }
    let now = crate::clock::now();
    let mut filter = KeyFilter {
        owner,
        environment: query.environment,
        state,
        name: query.name,
        ..KeyFilter::new()
    };
    // Each duration given narrows the filter, counted from now.
    let bounds: [(_, fn(_, _, _) -> _); 3] = [
        (&query.older_than, KeyFilter::created_longer_ago),
        (&query.unused_for, KeyFilter::unused_for),
        (&query.expires_within, KeyFilter::expiring_within),
    ];
    for (text, narrow) in bounds {
        if let Some(text) = text {
            filter = narrow(filter, now, duration(text)?);
        }
    }
    let listing = if none {
        Listing::default()
    } else {
        let store = console.keys.store();
        (store.list_page(&filter, now, query.offset, limit)).await?
    };
    let mut by_hour = match query.requests_hours {
        None => None,
        Some(hours @ 1..=168) => {
            let ids: Vec<&str> = listing.records.iter().map(|r| r.id.as_str()).collect();
            let since = now - Duration::from_secs(hours * 3_600);
            let reports = console
                .analytics()?
                .usage_across_keys(console.keys.store(), &ids, since..now, Resolution::Hour)
                .await?;
            Some(reports.into_iter())
        }
        Some(_) => return Err(ApiError::bad("INVALID_QUERY", "requests_hours is 1 to 168")),
    };
    let keys: Vec<ListedKey> = (listing.records.iter())
        .map(|record| ListedKey {
            info: console.info(record),
            requests_by_hour: by_hour
                .as_mut()
                .and_then(Iterator::next)
                .map(|report| report.series.iter().map(|point| point.requests).collect()),
        })
        .collect();
    let end = query.offset.saturating_add(keys.len());
    Ok(Json(KeyPage {
        keys,
        total: listing.total,
        offset: query.offset,
        next_offset: (end < listing.total).then_some(end),
    }))
}

/// Issues a key; its plaintext is in this answer only.
pub(crate) async fn create<A: Store>(
    State(console): ConsoleState<A>,
    key: Key,
    body: Result<Json<CreateKey>, JsonRejection>,
) -> Result<Response, ApiError> {
    let caller = console.caller(key)?;
    let Json(body) = body?;
    console.access.check_grant(&caller, &body.scopes)?;
    let environment = body.environment.unwrap_or(match caller.role {
        Role::Admin => Environment::Live,
        Role::Owner(_) => caller.key.environment(),
    });
    caller.check_environment(environment)?;
    let mut new = NewKey::new(body.name)
        .environment(environment)
        .scopes(body.scopes);
    for (name, value) in body.metadata {
        new = new.metadata(name, value);
    }
    if let Some(at) = expiry(body.expires_in.as_deref(), body.expires_at)? {
        // A key born expired is a mistake in the request.
        if at <= crate::clock::now() {
            return Err(ApiError::bad(
                "INVALID_EXPIRY",
                "the expiry is not in the future",
            ));
        }
        new = new.expires_at(at);
    }
    match &caller.role {
        Role::Admin => {
            if let Some(plan) = body.plan {
                console.check_plan(&plan)?;
                new = new.plan(plan);
            }
            if let Some(limits) = body.limits {
                new = new.limits(limits);
            }
            if let Some(owner) = body.owner {
                new = new.owner(owner);
            }
        }
        Role::Owner(own) => {
            if body.plan.is_some() || body.limits.is_some() {
                caller.admin_only("a plan or limits")?;
            }
            if body.owner.as_ref().is_some_and(|owner| owner != own) {
                return Err(ApiError::forbidden(
                    "a self-service key issues keys for its own owner only",
                ));
            }
            // The new key is on the caller's own plan and limits: self-service never raises them.
            let mine = console.record(&caller, caller.key.key_id()).await?;
            new = new.owner(own.clone());
            if let Some(plan) = mine.plan {
                new = new.plan(plan);
            }
            if let Some(limits) = mine.limits {
                new = new.limits(limits);
            }
        }
    }
    let created = console.keys.create(new).await?;
    console
        .record_change(&caller, "create", &created.record, Vec::new())
        .await;
    Ok(console.issued(&created))
}

/// One key.
pub(crate) async fn show<A: Store>(
    State(console): ConsoleState<A>,
    key: Key,
    Path(id): Path<String>,
) -> Result<Json<KeyInfo>, ApiError> {
    let caller = console.caller(key)?;
    let record = console.record(&caller, &id).await?;
    Ok(Json(console.info(&record)))
}

/// Changes a key: everything asked is checked before anything is changed.
pub(crate) async fn update<A: Store>(
    State(console): ConsoleState<A>,
    key: Key,
    Path(id): Path<String>,
    body: Result<Json<UpdateKey>, JsonRejection>,
) -> Result<Json<KeyInfo>, ApiError> {
    let caller = console.caller(key)?;
    let Json(body) = body?;
    let record = console.record(&caller, &id).await?;
    if let Some(scopes) = &body.scopes {
        console.access.check_grant(&caller, scopes)?;
    }
    if body.plan.is_some() || body.limits.is_some() {
        caller.admin_only("a plan or limits")?;
    }
    // A self-service key may disable its owner's keys, never undo what an admin did: enable a
    // disabled key, or move an expiry.
    if body.disabled == Some(false) {
        caller.admin_only("a key enabled again")?;
    }
    if body.expires_in.is_some() || body.expires_at.is_some() {
        caller.admin_only("an expiry")?;
    }
    if let Some(Some(plan)) = &body.plan {
        console.check_plan(plan)?;
    }
    let expires = match (body.expires_in.as_deref(), body.expires_at) {
        (None, None) => None,
        (Some(_), Some(_)) => return Err(both_expiries()),
        // `"expires_at": null` clears the expiry.
        (None, Some(None)) => Some(None),
        (text, at) => Some(expiry(text, at.flatten())?),
    };
    let update = KeyUpdate {
        name: body.name,
        scopes: body.scopes,
        metadata: body.metadata,
        expires_at: expires,
        plan: body.plan,
        limits: body.limits,
        disabled: body.disabled,
    };
    // Every change is checked before anything is written, and written all or none (a store of
    // your own may write field by field: then what it wrote before failing is audited).
    let result = console.keys.update(&id, &update).await;
    let written = match &result {
        Ok(true) => update.fields(),
        Err(ManageError::Store(_)) => match console.keys.store().get(&id).await {
            Ok(Some(after)) => update.written(&record, &after),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    if !written.is_empty() {
        let detail = written.into_iter().map(str::to_owned).collect();
        console
            .record_change(&caller, "update", &record, detail)
            .await;
    }
    if !result? {
        return Err(ApiError::no_key());
    }
    let record = console.record(&caller, &id).await?;
    Ok(Json(console.info(&record)))
}

/// Issues a key with every setting of this one, which works for the grace period more.
pub(crate) async fn rotate<A: Store>(
    State(console): ConsoleState<A>,
    key: Key,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = console.caller(key)?;
    // The body is optional: none rotates with the default grace.
    let body: RotateKey = if body.iter().all(u8::is_ascii_whitespace) {
        RotateKey::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad("INVALID_REQUEST", e.to_string()))?
    };
    let grace = body.grace.as_deref().map(duration).transpose()?;
    let record = console.record(&caller, &id).await?;
    let created = console
        .keys
        .rotate(&id, grace.unwrap_or(GRACE))
        .await?
        .ok_or_else(ApiError::no_key)?;
    let detail = vec![format!("new key {}", created.record.id)];
    console
        .record_change(&caller, "rotate", &record, detail)
        .await;
    Ok(console.issued(&created))
}

/// Revokes a key: it never works again.
pub(crate) async fn revoke<A: Store>(
    State(console): ConsoleState<A>,
    key: Key,
    Path(id): Path<String>,
) -> Result<Json<KeyInfo>, ApiError> {
    let caller = console.caller(key)?;
    let record = console.record(&caller, &id).await?;
    if !console.keys.revoke(&id).await? {
        return Err(ApiError::no_key());
    }
    console
        .record_change(&caller, "revoke", &record, Vec::new())
        .await;
    let record = console.record(&caller, &id).await?;
    Ok(Json(console.info(&record)))
}

/// The keys in circulation that expire later than the longest lifetime from now, or never: what
/// [`apply_lifetime`] would change (admin only; `KeyManager::outliving_lifetime`).
pub(crate) async fn outliving<A: Store>(
    State(console): ConsoleState<A>,
    key: Key,
) -> Result<Json<Applied>, ApiError> {
    let (_, outliving, at) = outliving_lifetime(&console, key).await?;
    Ok(Json(Applied {
        expires_at: crate::clock::unix_seconds(at),
        keys: outliving.into_iter().map(|record| record.id).collect(),
    }))
}

/// For an admin caller, the keys that outlive the console's longest lifetime and the latest
/// expiry allowed now; 403 for a key holder, 400 without a longest lifetime.
async fn outliving_lifetime<A: Store>(
    console: &Inner<A>,
    key: Key,
) -> Result<(Caller, Vec<KeyRecord>, SystemTime), ApiError> {
    let caller = console.caller(key)?;
    caller.admin_only("every key's expiry")?;
    let (outliving, at) = console.keys.outliving_lifetime().await?.ok_or_else(|| {
        ApiError::bad(
            "NO_KEY_LIFETIME",
            "this console sets no longest lifetime (Console::max_key_lifetime)",
        )
    })?;
    Ok((caller, outliving, at))
}

/// Brings every key in circulation that expires later than the longest lifetime from now, or
/// never, within it (admin only; `KeyManager::bring_within_lifetime`).
pub(crate) async fn apply_lifetime<A: Store>(
    State(console): ConsoleState<A>,
    key: Key,
) -> Result<Json<Applied>, ApiError> {
    let (caller, outliving, at) = outliving_lifetime(&console, key).await?;
    // Each change in the trail as it is made, should a later one fail.
    let mut keys = Vec::new();
    for record in outliving {
        if console.keys.set_expiry(&record.id, Some(at)).await? {
            let detail = vec!["expires_at".to_owned()];
            console
                .record_change(&caller, "update", &record, detail)
                .await;
            keys.push(record.id);
        }
    }
    Ok(Json(Applied {
        expires_at: crate::clock::unix_seconds(at),
        keys,
    }))
}

/// Deletes a key.
pub(crate) async fn delete<A: Store>(
    State(console): ConsoleState<A>,
    key: Key,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let caller = console.caller(key)?;
    let record = console.record(&caller, &id).await?;
    if !console.keys.delete(&id).await? {
        return Err(ApiError::no_key());
    }
    console
        .record_change(&caller, "delete", &record, Vec::new())
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The usage of a key, an owner, or (admin) the whole service, across replicas.
pub(crate) async fn usage<A: Store>(
    State(console): ConsoleState<A>,
    key: Key,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<UsageReport>, ApiError> {
    let caller = console.caller(key)?;
    let Query(query) = query?;
    let analytics = console.analytics()?;
    let hours = query.hours.unwrap_or(1);
    if hours == 0 || hours > 396 * 24 {
        return Err(ApiError::bad("INVALID_QUERY", "hours is 1 to 9504"));
    }
    let subject = match (&query.key, &query.owner, &caller.role) {
        (Some(_), Some(_), _) => {
            return Err(ApiError::bad(
                "INVALID_QUERY",
                "give key or owner, not both",
            ))
        }
        (Some(id), None, _) => {
            console.record(&caller, id).await?;
            Subject::Key(id)
        }
        (None, Some(owner), _) => {
            if !caller.manages(Some(owner)) {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "OWNER_NOT_FOUND",
                    "no such owner",
                ));
            }
            Subject::Owner(owner)
        }
        (None, None, Role::Admin) => Subject::All,
        (None, None, Role::Owner(own)) => Subject::Owner(own),
    };
    let now = SystemTime::now();
    let since = now - Duration::from_secs(hours * 3_600);
    let resolution = query.resolution.unwrap_or(Resolution::Minute);
    let mut report = analytics
        .usage_across(console.keys.store(), subject, since..now, resolution)
        .await?;
    if let Some(id) = &query.key {
        let standing = console.handle.standing(id).await.map_err(|error| {
            crate::trace::console_store_failed(&error);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "LIMITER_UNAVAILABLE",
                "the rate limiter is unavailable; try again",
            )
        })?;
        if let Some(standing) = standing {
            report = report.with_limits(&standing);
        }
    }
    Ok(Json(report))
}

/// The changes made through the console and the command line tool that the caller may see,
/// newest first.
pub(crate) async fn audit<A: Store>(
    State(console): ConsoleState<A>,
    key: Key,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let caller = console.caller(key)?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100).min(1_000);
    let mut selected = store::AuditQuery::newest(limit);
    if let Role::Owner(own) = &caller.role {
        selected = selected.owner(own);
    }
    if let Some(key) = &query.key {
        selected = selected.key(key);
    }
    let events = console.keys.audit_trail(&selected).await?;
    Ok(Json(AuditPage { events }))
}

/// Who the caller is, and what the console offers it.
pub(crate) async fn me<A: Store>(
    State(console): ConsoleState<A>,
    key: Key,
) -> Result<Json<Me>, ApiError> {
    let caller = console.caller(key)?;
    let key = &caller.key;
    Ok(Json(Me {
        id: key.key_id().to_owned(),
        name: key.name().to_owned(),
        owner: key.owner().map(str::to_owned),
        environment: key.environment(),
        role: caller.role_name(),
        scopes: key.scopes().map(str::to_owned).collect(),
        grantable_scopes: console.access.grantable(&caller),
        plans: console.handle.plans().into_iter().map(|(n, _)| n).collect(),
        usage: console.analytics.is_some(),
        env_var: console.env_var.clone(),
        max_keys_per_owner: console.keys.owner_cap(),
        max_key_lifetime_secs: console.keys.lifetime_cap().map(|max| max.as_secs()),
        last_use_recorded: console.last_use_recorded,
    }))
}

/// The headers of every console answer: never cached (a new key's answer holds its secret),
/// never framed, never sniffed.
pub(crate) async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
