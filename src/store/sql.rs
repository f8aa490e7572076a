//! What the SQLite and PostgreSQL stores share: the schema, its migrations, and the queries,
//! written once for both by a macro (sqlx's per-database types make a generic version all bounds).
//!
//! Migrations are kept in a table of their own, `<table>_schema`, rather than sqlx's
//! `_sqlx_migrations`, so they never collide with the migrations of the application that shares
//! the database.

use super::{AuditQuery, KeyFilter, KeyState, StoreError};

/// The schema, version by version. `{t}` is the table name.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE IF NOT EXISTS {t} (
        id TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        name TEXT NOT NULL,
        owner TEXT,
        environment TEXT NOT NULL,
        scopes TEXT NOT NULL,
        metadata TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        revoked_at BIGINT,
        disabled BOOLEAN NOT NULL DEFAULT FALSE,
        plan TEXT,
        limits TEXT,
        last_used_at BIGINT,
        requests BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS {t}_owner ON {t} (owner);",
    ),
    (2, "ALTER TABLE {t} ADD COLUMN allowed_networks TEXT;"),
    (
        3,
        "ALTER TABLE {t} ADD COLUMN credits_remaining BIGINT;
        ALTER TABLE {t} ADD COLUMN credits_refill_amount BIGINT;
        ALTER TABLE {t} ADD COLUMN credits_refill_period TEXT;
        ALTER TABLE {t} ADD COLUMN credits_period BIGINT;",
    ),
    (
        4,
        "CREATE TABLE IF NOT EXISTS {t}_owners (
        owner TEXT PRIMARY KEY,
        limits TEXT,
        credits_remaining BIGINT,
        credits_refill_amount BIGINT,
        credits_refill_period TEXT,
        credits_period BIGINT
    );",
    ),
    (
        5,
        "CREATE TABLE IF NOT EXISTS {t}_usage (
        resolution BIGINT NOT NULL,
        start BIGINT NOT NULL,
        key_id TEXT NOT NULL,
        replica TEXT NOT NULL,
        owner TEXT,
        data TEXT NOT NULL,
        PRIMARY KEY (resolution, start, key_id, replica)
    );
    CREATE INDEX IF NOT EXISTS {t}_usage_owner ON {t}_usage (owner, resolution, start);",
    ),
    // Pages of the key list, in its order, without sorting every key.
    (
        6,
        "CREATE INDEX IF NOT EXISTS {t}_created ON {t} (created_at, id);",
    ),
    (
        7,
        "CREATE TABLE IF NOT EXISTS {t}_audit (
        id TEXT PRIMARY KEY,
        at BIGINT NOT NULL,
        key_id TEXT NOT NULL,
        owner TEXT,
        data TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS {t}_audit_at ON {t}_audit (at, id);
    CREATE INDEX IF NOT EXISTS {t}_audit_key ON {t}_audit (key_id, at, id);
    CREATE INDEX IF NOT EXISTS {t}_audit_owner ON {t}_audit (owner, at, id);",
    ),
];

/// The queries for table `t`.
pub(crate) struct Queries {
    pub(crate) table: String,
    pub(crate) get: String,
    pub(crate) insert: String,
    pub(crate) revoke: String,
    pub(crate) delete: String,
    pub(crate) list: String,
    /// How many keys of an owner are in circulation (neither revoked nor expired) at a time.
    pub(crate) count_held: String,
    pub(crate) set_scopes: String,
    pub(crate) set_name: String,
    pub(crate) set_plan: String,
    pub(crate) set_metadata: String,
    pub(crate) set_expiry: String,
    pub(crate) set_disabled: String,
    pub(crate) set_allowed_networks: String,
    pub(crate) set_limits: String,
    pub(crate) set_credits: String,
    /// A key's credits.
    pub(crate) key_credits: CreditQueries,
    /// An owner's credits.
    pub(crate) owner_credits: CreditQueries,
    pub(crate) owner_get: String,
    /// Every owner with a row.
    pub(crate) owners: String,
    /// A key's row and its owner's, in one query.
    pub(crate) get_with_owner: String,
    pub(crate) owner_set_limits: String,
    pub(crate) owner_set_credits: String,
    pub(crate) record_usage: String,
    /// Usage analytics' rows.
    pub(crate) usage: UsageQueries,
    pub(crate) audit_insert: String,
    /// `audit_insert`, skipping a row whose id the table holds.
    pub(crate) audit_import: String,
    pub(crate) audit_prune: String,
    pub(crate) schema_table: String,
    pub(crate) schema_version: String,
    pub(crate) schema_insert: String,
}

/// The queries on the credits of the rows of one table.
pub(crate) struct CreditQueries {
    /// Refilled first when a refill period began; spent only if enough is left; one statement,
    /// so concurrent spends on any number of replicas never overspend.
    pub(crate) spend: String,
    pub(crate) add: String,
    /// What is left (`NULL`: no credits).
    pub(crate) remaining: String,
}

impl CreditQueries {
    /// The queries on table `t`, whose rows are found by column `by`.
    fn new(t: &str, by: &str) -> Self {
        let refilled = "credits_refill_amount IS NOT NULL AND credits_period < $1";
        CreditQueries {
            spend: format!(
                "UPDATE {t} SET \
                 credits_remaining = (CASE WHEN {refilled} THEN credits_refill_amount \
                   ELSE credits_remaining END) - $2, \
                 credits_period = CASE WHEN {refilled} THEN $1 ELSE credits_period END \
                 WHERE {by} = $4 AND credits_remaining IS NOT NULL \
                 AND (CASE WHEN {refilled} THEN credits_refill_amount \
                   ELSE credits_remaining END) >= $3 \
                 RETURNING credits_remaining"
            ),
            add: format!(
                "UPDATE {t} SET credits_remaining = credits_remaining + $1 \
                 WHERE {by} = $2 AND credits_remaining IS NOT NULL RETURNING credits_remaining"
            ),
            remaining: format!("SELECT credits_remaining FROM {t} WHERE {by} = $1"),
        }
    }
}

/// The queries on the usage rows of analytics.
pub(crate) struct UsageQueries {
    /// Writes a row, replacing the same replica's row of the same key and bucket.
    pub(crate) upsert: String,
    pub(crate) expire: String,
    /// Rows of one resolution in a range of starts: of every key, of one key, of one owner.
    pub(crate) read_all: String,
    pub(crate) read_key: String,
    pub(crate) read_owner: String,
}

impl UsageQueries {
    fn new(t: &str) -> Self {
        let read = format!(
            "SELECT replica, key_id, owner, resolution, start, data FROM {t}_usage \
             WHERE resolution = $1 AND start >= $2 AND start < $3"
        );
        UsageQueries {
            upsert: format!(
                "INSERT INTO {t}_usage (resolution, start, key_id, replica, owner, data) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (resolution, start, key_id, replica) \
                 DO UPDATE SET owner = excluded.owner, data = excluded.data"
            ),
            expire: format!("DELETE FROM {t}_usage WHERE resolution = $1 AND start < $2"),
            read_key: format!("{read} AND key_id = $4"),
            read_owner: format!("{read} AND owner = $4"),
            read_all: read,
        }
    }

    /// `read` (one of the reads above, with `bound` parameters) narrowed to `keys` more keys,
    /// bound after them.
    pub(crate) fn of_keys(read: &str, bound: usize, keys: usize) -> String {
        let mut sql = format!("{read} AND key_id IN (");
        for n in 0..keys {
            let comma = if n == 0 { "" } else { ", " };
            sql.push_str(&format!("{comma}${}", bound + 1 + n));
        }
        sql.push(')');
        sql
    }
}

/// The columns of the owners table.
const OWNER_COLUMNS: &str = "owner, limits, credits_remaining, credits_refill_amount, \
                             credits_refill_period, credits_period";

const COLUMNS: &str = "id, digest, name, owner, environment, scopes, metadata, created_at, \
                       expires_at, revoked_at, disabled, plan, limits, last_used_at, requests, \
                       allowed_networks, credits_remaining, credits_refill_amount, \
                       credits_refill_period, credits_period";

impl Queries {
    /// The queries for `table`.
    ///
    /// # Errors
    /// When `table` is not a plain SQL identifier (`[a-z_][a-z0-9_]*`, at most 48 characters).
    pub(crate) fn new(table: &str) -> Result<Self, StoreError> {
        let valid = !table.is_empty()
            && table.len() <= 48
            && table.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && table
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(StoreError::config(format!(
                "invalid table name {table:?}: use a-z, 0-9 and _"
            )));
        }
        let t = table;
        let audit_insert = format!(
            "INSERT INTO {t}_audit (id, at, key_id, owner, data) VALUES ($1, $2, $3, $4, $5)"
        );
        Ok(Queries {
            table: t.to_owned(),
            get: format!("SELECT {COLUMNS} FROM {t} WHERE id = $1"),
            insert: format!(
                "INSERT INTO {t} ({COLUMNS}) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
                 $19, $20)"
            ),
            revoke: format!("UPDATE {t} SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2"),
            delete: format!("DELETE FROM {t} WHERE id = $1"),
            list: format!("SELECT {COLUMNS} FROM {t} ORDER BY created_at, id"),
            count_held: format!(
                "SELECT COUNT(*) FROM {t} WHERE owner = $1 AND revoked_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > $2)"
            ),
            set_scopes: format!("UPDATE {t} SET scopes = $1 WHERE id = $2"),
            set_name: format!("UPDATE {t} SET name = $1 WHERE id = $2"),
            set_plan: format!("UPDATE {t} SET plan = $1 WHERE id = $2"),
            set_metadata: format!("UPDATE {t} SET metadata = $1 WHERE id = $2"),
            set_expiry: format!("UPDATE {t} SET expires_at = $1 WHERE id = $2"),
            set_disabled: format!("UPDATE {t} SET disabled = $1 WHERE id = $2"),
            set_allowed_networks: format!("UPDATE {t} SET allowed_networks = $1 WHERE id = $2"),
            set_limits: format!("UPDATE {t} SET limits = $1 WHERE id = $2"),
            set_credits: format!(
                "UPDATE {t} SET credits_remaining = $1, credits_refill_amount = $2, \
                 credits_refill_period = $3, credits_period = $4 WHERE id = $5"
            ),
            key_credits: CreditQueries::new(t, "id"),
            owner_credits: CreditQueries::new(&format!("{t}_owners"), "owner"),
            owner_get: format!("SELECT {OWNER_COLUMNS} FROM {t}_owners WHERE owner = $1"),
            owners: format!("SELECT {OWNER_COLUMNS} FROM {t}_owners"),
            get_with_owner: {
                let key = COLUMNS
                    .split(',')
                    .map(|c| format!("k.{}", c.trim()))
                    .collect::<Vec<_>>()
                    .join(", ");
                let owner = OWNER_COLUMNS
                    .split(',')
                    .map(|c| format!("o.{0} AS o_{0}", c.trim()))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "SELECT {key}, {owner} FROM {t} k LEFT JOIN {t}_owners o \
                     ON o.owner = k.owner WHERE k.id = $1"
                )
            },
            owner_set_limits: format!(
                "INSERT INTO {t}_owners (owner, limits) VALUES ($1, $2) \
                 ON CONFLICT (owner) DO UPDATE SET limits = excluded.limits"
            ),
            owner_set_credits: format!(
                "INSERT INTO {t}_owners ({OWNER_COLUMNS}) VALUES ($1, NULL, $2, $3, $4, $5) \
                 ON CONFLICT (owner) DO UPDATE SET credits_remaining = excluded.credits_remaining, \
                 credits_refill_amount = excluded.credits_refill_amount, \
                 credits_refill_period = excluded.credits_refill_period, \
                 credits_period = excluded.credits_period"
            ),
            record_usage: format!(
                "UPDATE {t} SET requests = requests + $1, \
                 last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $2 \
                 THEN $3 ELSE last_used_at END WHERE id = $4"
            ),
            usage: UsageQueries::new(t),
            audit_prune: format!("DELETE FROM {t}_audit WHERE at < $1"),
            audit_import: format!("{audit_insert} ON CONFLICT (id) DO NOTHING"),
            audit_insert,
            schema_table: format!(
                "CREATE TABLE IF NOT EXISTS {t}_schema (version BIGINT PRIMARY KEY)"
            ),
            schema_version: format!("SELECT COALESCE(MAX(version), 0) FROM {t}_schema"),
            schema_insert: format!("INSERT INTO {t}_schema (version) VALUES ($1)"),
        })
    }

    /// The migrations above `version`, with the table name filled in.
    pub(crate) fn migrations_after(
        &self,
        version: i64,
    ) -> impl Iterator<Item = (i64, String)> + '_ {
        MIGRATIONS
            .iter()
            .filter(move |(v, _)| *v > version)
            .map(|(v, sql)| (*v, sql.replace("{t}", &self.table)))
    }
}

/// What a listing query selects.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Select {
    /// One page of the rows that match.
    Page,
    /// Every row that matches.
    All,
    /// How many rows match.
    Count,
}

/// Whether a listing by `state` compares expiries with now.
pub(crate) fn needs_now(state: Option<KeyState>) -> bool {
    matches!(state, Some(KeyState::Active | KeyState::Expired))
}

impl Queries {
    /// The query of the keys that `filter` lets through, its name aside (compared in Rust:
    /// SQL's `lower` is not Rust's). Its parameters, in order: the owner, the environment,
    /// now's Unix seconds ([`needs_now`]), the creation bound, the last-use bound, and now's
    /// Unix seconds again with the expiry bound, each only if the filter has it, then for a
    /// page the limit and the offset. Ordered as `list`.
    pub(crate) fn listing(&self, filter: &KeyFilter, select: Select) -> String {
        let t = &self.table;
        let mut parameters = 0;
        let mut next = || {
            parameters += 1;
            format!("${parameters}")
        };
        let mut conditions = Vec::new();
        if filter.owner.is_some() {
            conditions.push(format!("owner = {}", next()));
        }
        if filter.environment.is_some() {
            conditions.push(format!("environment = {}", next()));
        }
        let live = "revoked_at IS NULL AND NOT disabled";
        match filter.state {
            None => {}
            Some(KeyState::Revoked) => conditions.push("revoked_at IS NOT NULL".to_owned()),
            Some(KeyState::Disabled) => {
                conditions.push("revoked_at IS NULL AND disabled".to_owned())
            }
            Some(KeyState::Expired) => {
                conditions.push(format!("{live} AND expires_at <= {}", next()))
            }
            Some(KeyState::Active) => conditions.push(format!(
                "{live} AND (expires_at IS NULL OR expires_at > {})",
                next()
            )),
        }
        if filter.created_before.is_some() {
            conditions.push(format!("created_at < {}", next()));
        }
        if filter.unused_since.is_some() {
            conditions.push(format!(
                "(last_used_at IS NULL OR last_used_at < {})",
                next()
            ));
        }
        if filter.expiring_before.is_some() {
            let (now, before) = (next(), next());
            conditions.push(format!("expires_at > {now} AND expires_at < {before}"));
        }
        let mut sql = match select {
            Select::Count => format!("SELECT COUNT(*) FROM {t}"),
            Select::Page | Select::All => format!("SELECT {COLUMNS} FROM {t}"),
        };
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        if select != Select::Count {
            sql.push_str(" ORDER BY created_at, id");
        }
        if select == Select::Page {
            sql.push_str(&format!(" LIMIT {} OFFSET {}", next(), next()));
        }
        sql
    }
}

impl Queries {
    /// The query of the audit rows of `query`, newest first. Its parameters, in order: the key,
    /// the owner (each only if the query has it), then the limit.
    pub(crate) fn audit(&self, query: &AuditQuery<'_>) -> String {
        let t = &self.table;
        let mut sql = format!("SELECT id, at, key_id, owner, data FROM {t}_audit");
        match (query.key, query.owner) {
            (Some(_), Some(_)) => sql.push_str(" WHERE key_id = $1 AND owner = $2"),
            (Some(_), None) => sql.push_str(" WHERE key_id = $1"),
            (None, Some(_)) => sql.push_str(" WHERE owner = $1"),
            (None, None) => {}
        }
        let limit = 1 + usize::from(query.key.is_some()) + usize::from(query.owner.is_some());
        sql.push_str(&format!(" ORDER BY at DESC, id DESC LIMIT ${limit}"));
        sql
    }
}

pub(crate) fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::unavailable(Box::new(error) as Box<dyn std::error::Error + Send + Sync>)
}

/// The error of opening a pool: a URL sqlx cannot read is the store's configuration, anything
/// else (a server not there, a file that cannot be opened) the store unavailable.
pub(crate) fn not_opened(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Configuration(e) => StoreError::Config(e),
        other => unavailable(other),
    }
}

/// The query `sql` with the five fields of audit row `row` bound, in the table's order.
macro_rules! audit_row {
    ($sql:expr, $row:expr) => {{
        let row: &$crate::store::AuditRow = $row;
        sqlx::query($sql)
            .bind(&row.id)
            .bind($crate::store::sql::bigint(row.at))
            .bind(&row.key)
            .bind(&row.owner)
            .bind(&row.data)
    }};
}

/// Implements `KeyStore` and `KeyStoreAdmin` for a sqlx store with fields `pool` and `sql`
/// (`Queries`) and an async method `changed(&self, id)` called after every change.
macro_rules! sql_store {
    ($store:ty, $row:ty, $db:ty) => {
        impl $store {
            /// The statement that adds `record`.
            fn insert<'q>(
                sql: &'q $crate::store::sql::Queries,
                record: &$crate::store::KeyRecord,
            ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>> {
                let f = $crate::store::codec::Fields::of(record);
                sqlx::query(&sql.insert)
                    .bind(f.id)
                    .bind(f.digest)
                    .bind(f.name)
                    .bind(f.owner)
                    .bind(f.environment)
                    .bind(f.scopes)
                    .bind(f.metadata)
                    .bind(f.created_at)
                    .bind(f.expires_at)
                    .bind(f.revoked_at)
                    .bind(f.disabled)
                    .bind(f.plan)
                    .bind(f.limits)
                    .bind(f.last_used_at)
                    .bind(f.requests)
                    .bind(f.allowed_networks)
                    .bind(f.credits.remaining)
                    .bind(f.credits.refill_amount)
                    .bind(f.credits.refill_period)
                    .bind(f.credits.period)
            }

            /// What adding `record` came to: a taken id is a conflict.
            fn inserted<R>(
                result: Result<R, sqlx::Error>,
                record: &$crate::store::KeyRecord,
            ) -> Result<(), $crate::store::StoreError> {
                match result {
                    Ok(_) => Ok(()),
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        Err($crate::store::StoreError::Conflict(record.id.clone()))
                    }
                    Err(e) => Err($crate::store::sql::unavailable(e)),
                }
            }

            /// How many of `owner`'s keys are in circulation at `now`, counted in `tx`.
            async fn held(
                sql: &$crate::store::sql::Queries,
                tx: &mut sqlx::Transaction<'static, $db>,
                owner: &str,
                now: std::time::SystemTime,
            ) -> Result<i64, $crate::store::StoreError> {
                use sqlx::Row;
                use $crate::store::sql::unavailable;
                sqlx::query(&sql.count_held)
                    .bind(owner)
                    .bind($crate::store::codec::secs(now))
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(unavailable)?
                    .try_get(0)
                    .map_err(unavailable)
            }

            /// The statements that make `update`'s changes, each waiting for the key's id.
            fn update_queries<'q>(
                sql: &'q $crate::store::sql::Queries,
                update: &$crate::store::KeyUpdate,
            ) -> Vec<sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>> {
                use $crate::store::to_json;
                let mut queries = Vec::new();
                if let Some(name) = &update.name {
                    queries.push(sqlx::query(&sql.set_name).bind(name.clone()));
                }
                if let Some(scopes) = &update.scopes {
                    queries.push(sqlx::query(&sql.set_scopes).bind(to_json(scopes)));
                }
                if let Some(metadata) = &update.metadata {
                    queries.push(sqlx::query(&sql.set_metadata).bind(to_json(metadata)));
                }
                if let Some(at) = update.expires_at {
                    let at = at.map($crate::store::codec::secs);
                    queries.push(sqlx::query(&sql.set_expiry).bind(at));
                }
                if let Some(plan) = &update.plan {
                    queries.push(sqlx::query(&sql.set_plan).bind(plan.clone()));
                }
                if let Some(limits) = &update.limits {
                    let limits = limits.as_ref().map(to_json);
                    queries.push(sqlx::query(&sql.set_limits).bind(limits));
                }
                if let Some(disabled) = update.disabled {
                    queries.push(sqlx::query(&sql.set_disabled).bind(disabled));
                }
                queries
            }

            /// Runs `query`, a change of key `id`, announces it, and says whether the key
            /// existed.
            async fn change<'q>(
                &self,
                query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
                id: &str,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = query
                    .execute(&self.pool)
                    .await
                    .map_err($crate::store::sql::unavailable)?;
                self.changed(id).await;
                Ok(done.rows_affected() > 0)
            }

            /// Runs `sql` (`UPDATE … SET … = $1 WHERE id = $2`) with `value` for key `id`.
            async fn update<'q, T>(
                &self,
                sql: &'q str,
                value: T,
                id: &'q str,
            ) -> Result<bool, $crate::store::StoreError>
            where
                T: 'q + Send + sqlx::Encode<'q, $db> + sqlx::Type<$db>,
            {
                self.change(sqlx::query(sql).bind(value).bind(id), id).await
            }

            /// The four credits columns of `row`.
            /// The four credits columns of `row`, named with `prefix` first.
            fn credit_fields(
                row: &$row,
                prefix: &str,
            ) -> Result<$crate::store::codec::CreditFields, $crate::store::StoreError> {
                use sqlx::Row as _;
                use $crate::store::sql::unavailable;
                let column = |name: &str| format!("{prefix}{name}");
                Ok($crate::store::codec::CreditFields {
                    remaining: row
                        .try_get(&*column("credits_remaining"))
                        .map_err(unavailable)?,
                    refill_amount: row
                        .try_get(&*column("credits_refill_amount"))
                        .map_err(unavailable)?,
                    refill_period: row
                        .try_get(&*column("credits_refill_period"))
                        .map_err(unavailable)?,
                    period: row
                        .try_get(&*column("credits_period"))
                        .map_err(unavailable)?,
                })
            }

            /// What is set on an owner, from `row`'s owner columns named with `prefix` first:
            /// `None` when the row has no owner or nothing is set.
            fn owner_of(
                row: &$row,
                prefix: &str,
            ) -> Result<Option<$crate::store::OwnerRecord>, $crate::store::StoreError> {
                use sqlx::Row as _;
                use $crate::store::sql::unavailable;
                let owner: Option<String> = row
                    .try_get(&*format!("{prefix}owner"))
                    .map_err(unavailable)?;
                let Some(owner) = owner else { return Ok(None) };
                let record = $crate::store::codec::OwnerFields {
                    owner,
                    limits: row
                        .try_get(&*format!("{prefix}limits"))
                        .map_err(unavailable)?,
                    credits: Self::credit_fields(row, prefix)?,
                }
                .into_record()?;
                Ok((!record.is_empty()).then_some(record))
            }

            /// Spends `cost` of the credits `queries` reach under `id` in refill period
            /// `period`, on `conn`: `None` when there are none to spend from, `Some(None)` when
            /// too few are left, else what is left.
            async fn spend_on(
                conn: &mut <$db as sqlx::Database>::Connection,
                queries: &$crate::store::sql::CreditQueries,
                account: $crate::limit::Account<'_>,
                cost: u32,
            ) -> Result<Option<Option<u64>>, $crate::store::StoreError> {
                use $crate::store::sql::unavailable;
                let left: Option<i64> = sqlx::query_scalar(&queries.spend)
                    .bind(i64::from(account.period))
                    .bind(i64::from(cost))
                    .bind(i64::from(cost.max(1)))
                    .bind(account.id)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(unavailable)?;
                if let Some(left) = left {
                    return Ok(Some(Some(u64::try_from(left).unwrap_or(0))));
                }
                let credits: Option<Option<i64>> = sqlx::query_scalar(&queries.remaining)
                    .bind(account.id)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(unavailable)?;
                Ok(match credits {
                    Some(Some(_)) => Some(None),
                    _ => None,
                })
            }

            /// Spends `cost` from each of `accounts` that has credits, on `conn`, stopping at
            /// the first with too few.
            async fn spend_all(
                conn: &mut <$db as sqlx::Database>::Connection,
                accounts: &[Option<(
                    &$crate::store::sql::CreditQueries,
                    $crate::limit::Account<'_>,
                )>],
                cost: u32,
            ) -> Result<$crate::limit::Spend, $crate::store::StoreError> {
                use $crate::limit::Spend;
                let mut fewest: Option<u64> = None;
                for &(queries, account) in accounts.iter().flatten() {
                    match Self::spend_on(conn, queries, account, cost).await? {
                        None => {}
                        Some(None) => return Ok(Spend::Exhausted),
                        Some(Some(left)) => fewest = Some(fewest.map_or(left, |f| f.min(left))),
                    }
                }
                Ok(fewest.map_or(Spend::NoCredits, |remaining| Spend::Spent { remaining }))
            }

            /// Adds `amount` to the credits `queries` reach under `id`, if there are any: what
            /// is left now.
            async fn add_to(
                &self,
                queries: &$crate::store::sql::CreditQueries,
                id: &str,
                amount: u64,
            ) -> Result<Option<u64>, $crate::store::StoreError> {
                let left: Option<i64> = sqlx::query_scalar(&queries.add)
                    .bind($crate::store::codec::saturating_i64(amount))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::store::sql::unavailable)?;
                Ok(left.map(|n| u64::try_from(n).unwrap_or(0)))
            }

            /// Runs `query`, a change of what is set on `owner`, and announces it.
            async fn change_owner<'q>(
                &self,
                query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
                owner: &str,
            ) -> Result<(), $crate::store::StoreError> {
                query
                    .execute(&self.pool)
                    .await
                    .map_err($crate::store::sql::unavailable)?;
                self.changed(&$crate::store::owner_payload(owner)).await;
                Ok(())
            }

            fn record(row: &$row) -> Result<$crate::store::KeyRecord, $crate::store::StoreError> {
                use sqlx::Row as _;
                use $crate::store::sql::unavailable;
                $crate::store::codec::Fields {
                    id: row.try_get("id").map_err(unavailable)?,
                    digest: row.try_get("digest").map_err(unavailable)?,
                    name: row.try_get("name").map_err(unavailable)?,
                    owner: row.try_get("owner").map_err(unavailable)?,
                    environment: row.try_get("environment").map_err(unavailable)?,
                    scopes: row.try_get("scopes").map_err(unavailable)?,
                    metadata: row.try_get("metadata").map_err(unavailable)?,
                    created_at: row.try_get("created_at").map_err(unavailable)?,
                    expires_at: row.try_get("expires_at").map_err(unavailable)?,
                    revoked_at: row.try_get("revoked_at").map_err(unavailable)?,
                    disabled: row.try_get("disabled").map_err(unavailable)?,
                    plan: row.try_get("plan").map_err(unavailable)?,
                    limits: row.try_get("limits").map_err(unavailable)?,
                    last_used_at: row.try_get("last_used_at").map_err(unavailable)?,
                    requests: row.try_get("requests").map_err(unavailable)?,
                    allowed_networks: row.try_get("allowed_networks").map_err(unavailable)?,
                    credits: Self::credit_fields(row, "")?,
                }
                .into_record()
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::KeyStore for $store {
            async fn get(
                &self,
                id: &str,
            ) -> Result<Option<$crate::store::KeyRecord>, $crate::store::StoreError> {
                let row = sqlx::query(&self.sql.get)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::store::sql::unavailable)?;
                row.as_ref().map(Self::record).transpose()
            }

            async fn owner(
                &self,
                owner: &str,
            ) -> Result<Option<$crate::store::OwnerRecord>, $crate::store::StoreError> {
                let row = sqlx::query(&self.sql.owner_get)
                    .bind(owner)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::store::sql::unavailable)?;
                row.as_ref().map_or(Ok(None), |row| Self::owner_of(row, ""))
            }

            async fn get_with_owner(
                &self,
                id: &str,
            ) -> Result<Option<$crate::store::KeyWithOwner>, $crate::store::StoreError> {
                let row = sqlx::query(&self.sql.get_with_owner)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::store::sql::unavailable)?;
                let Some(row) = row else { return Ok(None) };
                Ok(Some((Self::record(&row)?, Self::owner_of(&row, "o_")?)))
            }

            async fn spend_credits(
                &self,
                charge: &$crate::limit::Charge<'_>,
            ) -> Result<$crate::limit::Spend, $crate::store::StoreError> {
                use $crate::limit::Spend;
                use $crate::store::sql::unavailable;
                let accounts = [
                    charge.key.map(|a| (&self.sql.key_credits, a)),
                    charge.owner.map(|a| (&self.sql.owner_credits, a)),
                ];
                let mut conn = self.pool.acquire().await.map_err(unavailable)?;
                if !accounts.iter().all(Option::is_some) {
                    // One account: one statement.
                    return Self::spend_all(&mut conn, &accounts, charge.cost).await;
                }
                // Two: one transaction, committed only when both were spent (else rolled back
                // as it is dropped).
                let mut tx = sqlx::Connection::begin(&mut *conn)
                    .await
                    .map_err(unavailable)?;
                let spend = Self::spend_all(&mut tx, &accounts, charge.cost).await?;
                if let Spend::Spent { .. } = spend {
                    tx.commit().await.map_err(unavailable)?;
                }
                Ok(spend)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::KeyStoreAdmin for $store {
            async fn create(
                &self,
                record: $crate::store::KeyRecord,
            ) -> Result<(), $crate::store::StoreError> {
                let result = Self::insert(&self.sql, &record).execute(&self.pool).await;
                Self::inserted(result, &record)?;
                self.changed(&record.id).await;
                Ok(())
            }

            /// Counts and adds in one transaction that holds the owner's lock
            /// (`begin_owner`): `BEGIN IMMEDIATE` on SQLite, an advisory lock on PostgreSQL.
            async fn create_within(
                &self,
                record: $crate::store::KeyRecord,
                max: u32,
                now: std::time::SystemTime,
            ) -> Result<bool, $crate::store::StoreError> {
                use $crate::store::sql::unavailable;
                let Some(owner) = &record.owner else {
                    return self.create(record).await.map(|()| true);
                };
                let mut tx = self.begin_owner(owner).await?;
                if Self::held(&self.sql, &mut tx, owner, now).await? >= i64::from(max) {
                    // Let the owner's lock go now, not when the connection is next used.
                    tx.rollback().await.map_err(unavailable)?;
                    return Ok(false);
                }
                let result = Self::insert(&self.sql, &record).execute(&mut *tx).await;
                Self::inserted(result, &record)?;
                tx.commit().await.map_err(unavailable)?;
                self.changed(&record.id).await;
                Ok(true)
            }

            async fn revoke(
                &self,
                id: &str,
                at: std::time::SystemTime,
            ) -> Result<bool, $crate::store::StoreError> {
                self.update(&self.sql.revoke, $crate::store::codec::secs(at), id)
                    .await
            }

            async fn delete(&self, id: &str) -> Result<bool, $crate::store::StoreError> {
                self.change(sqlx::query(&self.sql.delete).bind(id), id)
                    .await
            }

            async fn list(
                &self,
            ) -> Result<Vec<$crate::store::KeyRecord>, $crate::store::StoreError> {
                let rows = sqlx::query(&self.sql.list)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::store::sql::unavailable)?;
                rows.iter().map(Self::record).collect()
            }

            async fn owners(
                &self,
            ) -> Result<Vec<$crate::store::OwnerRecord>, $crate::store::StoreError> {
                let rows = sqlx::query(&self.sql.owners)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::store::sql::unavailable)?;
                let mut owners = Vec::new();
                for row in &rows {
                    // A row whose limits and credits were cleared is no owner set.
                    owners.extend(Self::owner_of(row, "")?);
                }
                // By name as Rust orders it, whatever the database's collation.
                owners.sort_by(|a, b| a.owner.cmp(&b.owner));
                Ok(owners)
            }

            async fn list_page(
                &self,
                filter: &$crate::store::KeyFilter,
                now: std::time::SystemTime,
                offset: usize,
                limit: usize,
            ) -> Result<$crate::store::Listing, $crate::store::StoreError> {
                use sqlx::Row as _;
                use $crate::store::sql::{needs_now, unavailable, Select};
                let now = $crate::store::codec::secs(now);
                // The filter's parameters, in `listing`'s order.
                let bound = |sql| {
                    let mut query = sqlx::query(sql);
                    if let Some(owner) = &filter.owner {
                        query = query.bind(owner.as_str());
                    }
                    if let Some(environment) = filter.environment {
                        query = query.bind(environment.as_str());
                    }
                    if needs_now(filter.state) {
                        query = query.bind(now);
                    }
                    for at in [filter.created_before, filter.unused_since]
                        .into_iter()
                        .flatten()
                    {
                        query = query.bind($crate::store::codec::secs_up(at));
                    }
                    if let Some(at) = filter.expiring_before {
                        query = query.bind(now).bind($crate::store::codec::secs_up(at));
                    }
                    query
                };
                use $crate::store::sql::bigint;
                let big = |n: usize| bigint(u64::try_from(n).unwrap_or(u64::MAX));
                if filter.name.is_some() {
                    let sql = self.sql.listing(filter, Select::All);
                    let rows = bound(&sql)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(unavailable)?;
                    let mut matching = Vec::new();
                    let named = filter.name_matcher();
                    for row in &rows {
                        let name: &str = row.try_get("name").map_err(unavailable)?;
                        if named(name) {
                            matching.push(Self::record(row)?);
                        }
                    }
                    return Ok($crate::store::Listing::page(matching, offset, limit));
                }
                let sql = self.sql.listing(filter, Select::Page);
                let rows = bound(&sql)
                    .bind(big(limit))
                    .bind(big(offset))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(unavailable)?;
                let records = rows
                    .iter()
                    .map(Self::record)
                    .collect::<Result<Vec<_>, _>>()?;
                // A page that is not full and not past the end tells the total; otherwise a
                // second statement counts (a key created between the two may be counted and
                // not listed, as on a page read a moment later).
                let total = if records.len() < limit && (offset == 0 || !records.is_empty()) {
                    offset + records.len()
                } else {
                    let count: i64 = bound(&self.sql.listing(filter, Select::Count))
                        .fetch_one(&self.pool)
                        .await
                        .map_err(unavailable)?
                        .try_get(0)
                        .map_err(unavailable)?;
                    usize::try_from(count).unwrap_or(0)
                };
                Ok($crate::store::Listing { records, total })
            }

            async fn set_scopes(
                &self,
                id: &str,
                scopes: &[String],
            ) -> Result<bool, $crate::store::StoreError> {
                let update = $crate::store::KeyUpdate::new().scopes(scopes);
                self.update_key(id, &update).await
            }

            async fn set_name(
                &self,
                id: &str,
                name: &str,
            ) -> Result<bool, $crate::store::StoreError> {
                let update = $crate::store::KeyUpdate::new().name(name);
                self.update_key(id, &update).await
            }

            async fn set_plan(
                &self,
                id: &str,
                plan: Option<&str>,
            ) -> Result<bool, $crate::store::StoreError> {
                let update = $crate::store::KeyUpdate::new().plan(plan);
                self.update_key(id, &update).await
            }

            async fn set_metadata(
                &self,
                id: &str,
                metadata: &std::collections::BTreeMap<String, String>,
            ) -> Result<bool, $crate::store::StoreError> {
                let update = $crate::store::KeyUpdate::new().metadata(metadata.clone());
                self.update_key(id, &update).await
            }

            async fn set_expiry(
                &self,
                id: &str,
                at: Option<std::time::SystemTime>,
            ) -> Result<bool, $crate::store::StoreError> {
                let update = $crate::store::KeyUpdate::new().expires_at(at);
                self.update_key(id, &update).await
            }

            async fn set_disabled(
                &self,
                id: &str,
                disabled: bool,
            ) -> Result<bool, $crate::store::StoreError> {
                let update = $crate::store::KeyUpdate::new().disabled(disabled);
                self.update_key(id, &update).await
            }

            async fn set_limits(
                &self,
                id: &str,
                limits: Option<&$crate::limit::Limits>,
            ) -> Result<bool, $crate::store::StoreError> {
                let update = $crate::store::KeyUpdate::new().limits(limits.cloned());
                self.update_key(id, &update).await
            }

            async fn set_credits(
                &self,
                id: &str,
                credits: Option<&$crate::limit::Credits>,
            ) -> Result<bool, $crate::store::StoreError> {
                let f = $crate::store::codec::CreditFields::of(credits);
                let query = sqlx::query(&self.sql.set_credits)
                    .bind(f.remaining)
                    .bind(f.refill_amount)
                    .bind(f.refill_period)
                    .bind(f.period)
                    .bind(id);
                self.change(query, id).await
            }

            async fn add_credits(
                &self,
                id: &str,
                amount: u64,
            ) -> Result<Option<u64>, $crate::store::StoreError> {
                self.add_to(&self.sql.key_credits, id, amount).await
            }

            async fn set_owner_limits(
                &self,
                owner: &str,
                limits: Option<&$crate::limit::Limits>,
            ) -> Result<(), $crate::store::StoreError> {
                let limits = limits.map($crate::store::to_json);
                let query = sqlx::query(&self.sql.owner_set_limits)
                    .bind(owner)
                    .bind(limits);
                self.change_owner(query, owner).await
            }

            async fn set_owner_credits(
                &self,
                owner: &str,
                credits: Option<&$crate::limit::Credits>,
            ) -> Result<(), $crate::store::StoreError> {
                let f = $crate::store::codec::CreditFields::of(credits);
                let query = sqlx::query(&self.sql.owner_set_credits)
                    .bind(owner)
                    .bind(f.remaining)
                    .bind(f.refill_amount)
                    .bind(f.refill_period)
                    .bind(f.period);
                self.change_owner(query, owner).await
            }

            async fn add_owner_credits(
                &self,
                owner: &str,
                amount: u64,
            ) -> Result<Option<u64>, $crate::store::StoreError> {
                self.add_to(&self.sql.owner_credits, owner, amount).await
            }

            async fn set_allowed_networks(
                &self,
                id: &str,
                networks: &[ipnet::IpNet],
            ) -> Result<bool, $crate::store::StoreError> {
                let networks = (!networks.is_empty()).then(|| $crate::store::to_json(&networks));
                self.update(&self.sql.set_allowed_networks, networks, id)
                    .await
            }

            /// Every change in one transaction, announced once; each field encoded here only (the
            /// setters of one field come through here).
            async fn update_key(
                &self,
                id: &str,
                update: &$crate::store::KeyUpdate,
            ) -> Result<bool, $crate::store::StoreError> {
                use $crate::store::sql::unavailable;
                let mut queries = Self::update_queries(&self.sql, update).into_iter();
                let first = match (queries.next(), queries.len()) {
                    (None, _) => {
                        return Ok($crate::store::KeyStore::get(self, id).await?.is_some());
                    }
                    // One statement is a transaction of its own.
                    (Some(only), 0) => return self.change(only.bind(id), id).await,
                    (Some(first), _) => first,
                };
                let mut tx = self.pool.begin().await.map_err(unavailable)?;
                let mut found = true;
                for query in std::iter::once(first).chain(queries) {
                    let done = query
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(unavailable)?;
                    found &= done.rows_affected() > 0;
                }
                tx.commit().await.map_err(unavailable)?;
                self.changed(id).await;
                Ok(found)
            }

            /// Reads the key's owner, then reads the key again, counts the owner's keys and
            /// changes it in one transaction holding the owner's lock.
            async fn update_key_within(
                &self,
                id: &str,
                update: &$crate::store::KeyUpdate,
                max: u32,
                now: std::time::SystemTime,
            ) -> Result<Option<bool>, $crate::store::StoreError> {
                use $crate::store::sql::unavailable;
                use $crate::store::Revival;
                let owner = match Revival::of(self, id, update, now).await? {
                    Revival::NoKey => return Ok(None),
                    Revival::Uncounted => {
                        return Ok(self.update_key(id, update).await?.then_some(true));
                    }
                    Revival::Owner(owner) => owner,
                };
                let mut tx = self.begin_owner(&owner).await?;
                let row = sqlx::query(&self.sql.get)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                let Some(record) = row.as_ref().map(Self::record).transpose()? else {
                    tx.rollback().await.map_err(unavailable)?;
                    return Ok(None);
                };
                if update.brings_back(&record, now)
                    && Self::held(&self.sql, &mut tx, &owner, now).await? >= i64::from(max)
                {
                    tx.rollback().await.map_err(unavailable)?;
                    return Ok(Some(false));
                }
                for query in Self::update_queries(&self.sql, update) {
                    query
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(unavailable)?;
                }
                tx.commit().await.map_err(unavailable)?;
                self.changed(id).await;
                Ok(Some(true))
            }

            async fn record_usage(
                &self,
                batch: &[$crate::store::UsageUpdate],
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::sql::unavailable;
                let mut tx = self.pool.begin().await.map_err(unavailable)?;
                for update in batch {
                    let at = $crate::store::codec::secs(update.last_used_at);
                    sqlx::query(&self.sql.record_usage)
                        .bind(i64::try_from(update.requests).unwrap_or(i64::MAX))
                        .bind(at)
                        .bind(at)
                        .bind(&update.id)
                        .execute(&mut *tx)
                        .await
                        .map_err(unavailable)?;
                }
                tx.commit().await.map_err(unavailable)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::UsageArchive for $store {
            async fn write_usage(
                &self,
                rows: &[$crate::store::UsageRow],
                expire: &[(u32, u64)],
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::sql::{bigint, unavailable};
                let mut tx = self.pool.begin().await.map_err(unavailable)?;
                for row in rows {
                    sqlx::query(&self.sql.usage.upsert)
                        .bind(i64::from(row.resolution))
                        .bind(bigint(row.start))
                        .bind(&row.key)
                        .bind(&row.replica)
                        .bind(&row.owner)
                        .bind(&row.data)
                        .execute(&mut *tx)
                        .await
                        .map_err(unavailable)?;
                }
                for &(resolution, before) in expire {
                    sqlx::query(&self.sql.usage.expire)
                        .bind(i64::from(resolution))
                        .bind(bigint(before))
                        .execute(&mut *tx)
                        .await
                        .map_err(unavailable)?;
                }
                tx.commit().await.map_err(unavailable)
            }

            async fn read_usage(
                &self,
                range: &$crate::store::UsageRange<'_>,
            ) -> Result<Vec<$crate::store::UsageRow>, $crate::store::StoreError> {
                use sqlx::Row as _;
                use $crate::store::sql::{bigint, unavailable};
                let usage = &self.sql.usage;
                let (sql, filter) = match (range.key, range.owner) {
                    (Some(key), _) => (&usage.read_key, Some(key)),
                    (None, Some(owner)) => (&usage.read_owner, Some(owner)),
                    (None, None) => (&usage.read_all, None),
                };
                let keys = range.keys.unwrap_or_default();
                let of_keys;
                let sql = match range.keys {
                    Some([]) => return Ok(Vec::new()),
                    Some(keys) => {
                        let bound = 3 + usize::from(filter.is_some());
                        of_keys = $crate::store::sql::UsageQueries::of_keys(sql, bound, keys.len());
                        &of_keys
                    }
                    None => sql,
                };
                let mut query = sqlx::query(sql)
                    .bind(i64::from(range.resolution))
                    .bind(bigint(range.from))
                    .bind(bigint(range.to));
                if let Some(filter) = filter {
                    query = query.bind(filter);
                }
                for key in keys {
                    query = query.bind(*key);
                }
                let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
                let mut found = Vec::with_capacity(rows.len());
                for row in &rows {
                    let resolution: i64 = row.try_get("resolution").map_err(unavailable)?;
                    let start: i64 = row.try_get("start").map_err(unavailable)?;
                    let corrupt = || {
                        $crate::store::StoreError::unavailable(format!(
                            "corrupt usage row: resolution {resolution}, start {start}"
                        ))
                    };
                    // The query selected the range already.
                    let row = $crate::store::UsageRow {
                        replica: row.try_get("replica").map_err(unavailable)?,
                        key: row.try_get("key_id").map_err(unavailable)?,
                        owner: row.try_get("owner").map_err(unavailable)?,
                        resolution: u32::try_from(resolution).map_err(|_| corrupt())?,
                        start: u64::try_from(start).map_err(|_| corrupt())?,
                        data: row.try_get("data").map_err(unavailable)?,
                    };
                    found.push(row);
                }
                Ok(found)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::AuditArchive for $store {
            async fn append_audit(
                &self,
                row: &$crate::store::AuditRow,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::sql::unavailable;
                let insert = $crate::store::sql::audit_row!(&self.sql.audit_insert, row);
                insert.execute(&self.pool).await.map_err(unavailable)?;
                Ok(())
            }

            async fn import_audit(
                &self,
                rows: &[$crate::store::AuditRow],
            ) -> Result<u64, $crate::store::StoreError> {
                use $crate::store::sql::unavailable;
                let mut tx = self.pool.begin().await.map_err(unavailable)?;
                let mut added = 0;
                for row in rows {
                    let insert = $crate::store::sql::audit_row!(&self.sql.audit_import, row);
                    let done = insert.execute(&mut *tx).await.map_err(unavailable)?;
                    added += done.rows_affected();
                }
                tx.commit().await.map_err(unavailable)?;
                Ok(added)
            }

            async fn read_audit(
                &self,
                query: &$crate::store::AuditQuery<'_>,
            ) -> Result<Vec<$crate::store::AuditRow>, $crate::store::StoreError> {
                use sqlx::Row as _;
                use $crate::store::sql::{bigint, unavailable};
                let sql = self.sql.audit(query);
                let mut select = sqlx::query(&sql);
                if let Some(key) = query.key {
                    select = select.bind(key);
                }
                if let Some(owner) = query.owner {
                    select = select.bind(owner);
                }
                let limit = u64::try_from(query.limit).unwrap_or(u64::MAX);
                let rows = (select.bind(bigint(limit)))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(unavailable)?;
                let mut found = Vec::with_capacity(rows.len());
                for row in &rows {
                    let id: String = row.try_get("id").map_err(unavailable)?;
                    let at: i64 = row.try_get("at").map_err(unavailable)?;
                    let at = u64::try_from(at).map_err(|_| {
                        $crate::store::StoreError::unavailable(format!(
                            "corrupt audit row {id:?}: time {at}"
                        ))
                    })?;
                    found.push($crate::store::AuditRow {
                        at,
                        key: row.try_get("key_id").map_err(unavailable)?,
                        owner: row.try_get("owner").map_err(unavailable)?,
                        data: row.try_get("data").map_err(unavailable)?,
                        id,
                    });
                }
                Ok(found)
            }

            async fn prune_audit(&self, before: u64) -> Result<u64, $crate::store::StoreError> {
                use $crate::store::sql::{bigint, unavailable};
                let done = sqlx::query(&self.sql.audit_prune)
                    .bind(bigint(before))
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(done.rows_affected())
            }
        }
    };
}

pub(crate) use audit_row;
pub(crate) use sql_store;

/// A number of seconds as an SQL `BIGINT`, saturating: no start of a bucket is anywhere near.
pub(crate) fn bigint(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Brings the table of `$sql` (`Queries`) to the newest schema inside transaction `$tx`; an async
/// block to await.
macro_rules! migrate {
    ($tx:expr, $sql:expr) => {
        async {
            use $crate::store::sql::unavailable;
            sqlx::query(&$sql.schema_table)
                .execute(&mut *$tx)
                .await
                .map_err(unavailable)?;
            let version: i64 = sqlx::query_scalar(&$sql.schema_version)
                .fetch_one(&mut *$tx)
                .await
                .map_err(unavailable)?;
            for (version, migration) in $sql.migrations_after(version) {
                sqlx::raw_sql(&migration)
                    .execute(&mut *$tx)
                    .await
                    .map_err(unavailable)?;
                sqlx::query(&$sql.schema_insert)
                    .bind(version)
                    .execute(&mut *$tx)
                    .await
                    .map_err(unavailable)?;
            }
            Ok::<(), $crate::store::StoreError>(())
        }
    };
}

pub(crate) use migrate;
