//! With the `redis` feature: keys in Redis, changes announced to every replica by pub/sub.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::StreamExt;
use ipnet::IpNet;

use crate::limit::{Charge, Credits, Limits, Spend};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tokio::task::JoinHandle;

use super::codec::{secs, secs_up, CreditFields, Fields, OwnerFields};
use super::listener::{reconnect, LISTENER_KEEPALIVE, LISTENER_PING_TIMEOUT};
use super::{
    owner_payload, to_json as json, AuditArchive, AuditQuery, AuditRow, KeyChanges, KeyFilter,
    KeyRecord, KeyStore, KeyStoreAdmin, KeyUpdate, KeyWithOwner, Listing, OwnerRecord, Revival,
    StoreError, UsageArchive, UsageRange, UsageRow, UsageUpdate, AUDIT_KEPT,
};

/// Keys in Redis: one hash per key (`<prefix>key:<id>`), a set of ids (`<prefix>ids`), the ids
/// ordered by creation (`<prefix>created`, and per owner `<prefix>owner-keys:<owner>`, sorted
/// sets whose scores are the creation times, so the console's pages read only their own keys),
/// one hash per owner with limits or credits set (`<prefix>owner:<owner>`), and a channel
/// (`<prefix>changes`) on which every change is published, so
/// [`spawn_listener`](Self::spawn_listener) can drop the changed key from each replica's cache at
/// once. Every update is one server-side script, so concurrent admins cannot lose each other's
/// changes.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_api_key::{ApiKeyLayer, RedisStore};
///
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let layer = ApiKeyLayer::new("mesh", store.clone())?;
/// store.spawn_listener(layer.handle()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: Arc<str>,
    /// Whether the creation indexes are known to hold every key (see `index`).
    indexed: Arc<AtomicBool>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(error: redis::RedisError) -> StoreError {
    StoreError::unavailable(error)
}

/// Adds a key, its fields from ARGV[`first`] on, unless its id exists (0). The end of
/// `CREATE` and `CREATE_WITHIN`.
const ADD_KEY: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, first))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
if KEYS[4] then redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1]) end
return 1";

/// Creates a key unless its id exists. KEYS: hash, id set, creation index, [its owner's
/// creation index]. ARGV: id, creation time, then field/value pairs.
static CREATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("local first = 3{ADD_KEY}")));

/// As `CREATE`, for a key with an owner, unless that owner's creation index (KEYS[4]) holds
/// ARGV[3] keys in circulation at ARGV[4] (Unix seconds): neither revoked nor expired (-1).
/// ARGV: id, creation time, the most keys, now, the prefix of key hashes (named by the index,
/// so not in KEYS: a single server, as `DELETE`), then field/value pairs.
static CREATE_WITHIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{HOLDS_MOST}
if holds_most(KEYS[4], ARGV[5], tonumber(ARGV[4]), tonumber(ARGV[3])) then return -1 end
local first = 6{ADD_KEY}"
    ))
});

/// `holds_most(index, prefix, now, most)`: whether `most` of the keys in the creation index
/// `index` (whose hashes are named `prefix` and the id), or more, are in circulation at `now`
/// (Unix seconds): neither revoked nor expired. Counting stops once it reaches `most`.
const HOLDS_MOST: &str = r"
local function holds_most(index, prefix, now, most)
  if most <= 0 then return true end
  local count = 0
  for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local f = redis.call('HMGET', prefix .. id, 'created_at', 'revoked_at', 'expires_at')
    local expires = f[3] and tonumber(f[3])
    if f[1] and not f[2] and not (expires and expires <= now) then count = count + 1 end
    if count >= most then return true end
  end
  return false
end";

/// Removes the audit rows older than ARGV[1] (Unix microseconds) from the list KEYS[1], whose
/// entries are JSON arrays `[id, at, key, owner, data]`, and keeps the others in order (an entry
/// it cannot read is kept). Returns how many were removed.
static PRUNE_AUDIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local before = tonumber(ARGV[1])
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local kept = {}
for _, entry in ipairs(entries) do
  local ok, row = pcall(cjson.decode, entry)
  local at = ok and type(row) == 'table' and tonumber(row[2])
  if not (at and at < before) then kept[#kept + 1] = entry end
end
local removed = #entries - #kept
if removed > 0 then
  redis.call('DEL', KEYS[1])
  for i = 1, #kept, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(kept, i, math.min(i + 999, #kept)))
  end
end
return removed",
    )
});

/// Adds to the audit list KEYS[1] the entries ARGV[2], ARGV[3]… (JSON arrays `[id, at, key,
/// owner, data]`, as in `PRUNE_AUDIT`) whose ids it does not hold, each once, and keeps the
/// newest ARGV[1] of the list by time, then id, newest first (an entry it cannot read counts
/// as the oldest). Returns how many it added.
static IMPORT_AUDIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local function read(entry)
  local ok, row = pcall(cjson.decode, entry)
  if ok and type(row) == 'table' and type(row[1]) == 'string' and tonumber(row[2]) then
    return row[1], tonumber(row[2])
  end
end
local all, held = {}, {}
for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local id, at = read(entry)
  if id then held[id] = true end
  all[#all + 1] = {at or -1, id or '', entry}
end
local added = 0
for i = 2, #ARGV do
  local id, at = read(ARGV[i])
  if id and not held[id] then
    held[id] = true
    added = added + 1
    all[#all + 1] = {at, id, ARGV[i]}
  end
end
if added > 0 then
  table.sort(all, function(a, b)
    if a[1] ~= b[1] then return a[1] > b[1] end
    return a[2] > b[2]
  end)
  local kept = math.min(#all, tonumber(ARGV[1]))
  redis.call('DEL', KEYS[1])
  for i = 1, kept, 1000 do
    local chunk = {}
    for j = i, math.min(i + 999, kept) do chunk[#chunk + 1] = all[j][3] end
    redis.call('RPUSH', KEYS[1], unpack(chunk))
  end
end
return added",
    )
});

/// Marks the creation indexes complete if there are no keys. KEYS: id set, marker.
static NEW_INDEXES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SET', KEYS[2], 1) end
return 1",
    )
});

/// Deletes a key, and its id from the set and the creation indexes. KEYS: hash, id set,
/// creation index. ARGV: id, the prefix of owners' creation indexes (named by the record, so
/// not in KEYS: a single server, as `GET_WITH_OWNER`). Returns whether it existed.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local owner = redis.call('HGET', KEYS[1], 'owner')
local deleted = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if owner then redis.call('ZREM', ARGV[2] .. owner, ARGV[1]) end
return deleted",
    )
});

/// Sets a field of an existing key, or (with no value) removes it. KEYS: hash. ARGV: field,
/// [value], [`nx` to keep an existing value].
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] == nil then redis.call('HDEL', KEYS[1], ARGV[1])
elseif ARGV[3] == 'nx' then redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
else redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1",
    )
});

/// Sets and removes fields of an existing key in one step. KEYS: hash. ARGV: n, then n
/// field/value pairs to set, then the fields to remove.
static UPDATE_KEY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local base = 0{SET_FIELDS}"
    ))
});

/// As `UPDATE_KEY`, unless the key is expired (not revoked) and its new expiry brings it back
/// into circulation while its owner holds the most keys already (-1). KEYS: hash, its owner's
/// creation index. ARGV: now, the most, the hashes' prefix, the new expiry (Unix seconds,
/// `none`, or empty when unchanged), then `UPDATE_KEY`'s.
static UPDATE_KEY_WITHIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{HOLDS_MOST}
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local now, after = tonumber(ARGV[1]), ARGV[4]
local f = redis.call('HMGET', KEYS[1], 'revoked_at', 'expires_at')
local expires = f[2] and tonumber(f[2])
local expired = expires and expires <= now
local back = after == 'none' or (after ~= '' and tonumber(after) > now)
if not f[1] and expired and back and holds_most(KEYS[2], ARGV[3], now, tonumber(ARGV[2])) then
  return -1
end
local base = 4{SET_FIELDS}"
    ))
});

/// The end of `UPDATE_KEY` and `UPDATE_KEY_WITHIN`: from ARGV[`base` + 1], n, then n field/value
/// pairs to set, then the fields to remove, of KEYS[1].
const SET_FIELDS: &str = r"
local n = tonumber(ARGV[base + 1])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, base + 2, base + 1 + 2 * n)) end
if #ARGV > base + 1 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, base + 2 + 2 * n)) end
return 1";

/// Spends credits from every hash (a key's, its owner's) that has some, all or nothing, each
/// refilled first when a refill period began. KEYS: the hashes. ARGV: cost, then per hash the
/// refill period of now. Returns {0} without credits, {1} exhausted (nothing spent), {2, the
/// fewest remaining} spent.
static SPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cost = tonumber(ARGV[1])
local spent = {}
for i = 1, #KEYS do
  local c = redis.call('HMGET', KEYS[i], 'credits_remaining', 'credits_refill_amount', 'credits_period')
  if c[1] then
    local remaining, amount, period = tonumber(c[1]), tonumber(c[2]), tonumber(c[3] or '0')
    local now_period = tonumber(ARGV[i + 1])
    if amount and period < now_period then remaining, period = amount, now_period end
    if remaining < math.max(cost, 1) then return {1} end
    spent[#spent + 1] = {KEYS[i], remaining - cost, period}
  end
end
if #spent == 0 then return {0} end
local fewest = nil
for _, s in ipairs(spent) do
  redis.call('HSET', s[1], 'credits_remaining', s[2], 'credits_period', s[3])
  if fewest == nil or s[2] < fewest then fewest = s[2] end
end
return {2, fewest}",
    )
});

/// Adds credits to a key that has some. KEYS: hash. ARGV: amount. Returns the new count, or -1.
static ADD_CREDITS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HEXISTS', KEYS[1], 'credits_remaining') == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], 'credits_remaining', ARGV[1])",
    )
});

/// Replaces the credits of a key or an owner (ARGV: `key` or `owner`, then remaining, refill
/// amount, refill period, period; empty for none), or with no more ARGV removes them. A key's
/// must exist; an owner's hash is made as needed. KEYS: hash. Returns whether the hash exists.
static SET_CREDITS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[1] == 'key' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[1], 'credits_remaining', 'credits_refill_amount', 'credits_refill_period', 'credits_period')
local fields = {'credits_remaining', 'credits_refill_amount', 'credits_refill_period', 'credits_period'}
for i = 2, #ARGV do
  if ARGV[i] ~= '' then redis.call('HSET', KEYS[1], fields[i - 1], ARGV[i]) end
end
return 1",
    )
});

/// A key's hash and, if it names an owner, the owner's hash, in one round trip. KEYS: the key's
/// hash. ARGV: the prefix of owners' hashes. Returns {} for no key, else {key's fields and
/// values} and, for a key with an owner, {owner's fields and values}. The owner's hash is named
/// by the key's record, so it cannot be declared in KEYS: the store is for a single Redis server
/// (or a primary with replicas), not a cluster.
static GET_WITH_OWNER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local key = redis.call('HGETALL', KEYS[1])
if #key == 0 then return {} end
for i = 1, #key, 2 do
  if key[i] == 'owner' then
    return {key, redis.call('HGETALL', ARGV[1] .. key[i + 1])}
  end
end
return {key}",
    )
});

/// Adds usage to an existing key. KEYS: hash. ARGV: requests, last used (unix seconds).
static USAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'requests', ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[1], 'last_used_at') or '0')
if tonumber(ARGV[2]) > last then redis.call('HSET', KEYS[1], 'last_used_at', ARGV[2]) end
return 1",
    )
});

impl RedisStore {
    /// Connects to `url` (`redis://…`), with keys under the prefix `tower-api-key:`.
    ///
    /// # Errors
    /// [`StoreError::Config`] for a URL that is not Redis's; when Redis cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_prefix(url, super::DEFAULT_REDIS_PREFIX).await
    }

    /// As [`connect`](Self::connect), with every Redis key under `prefix`.
    ///
    /// # Errors
    /// [`StoreError::Config`] for a URL that is not Redis's; when Redis cannot be reached.
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, StoreError> {
        // Reads the URL only: its error is the store's configuration.
        let client = redis::Client::open(url).map_err(StoreError::config)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(unavailable)?;
        let store = RedisStore {
            client,
            conn,
            prefix: prefix.into(),
            indexed: Arc::new(AtomicBool::new(false)),
        };
        // A store with no keys yet has nothing to add to the creation indexes.
        let mut conn = store.conn.clone();
        let _: i64 = NEW_INDEXES
            .key(store.ids())
            .key(store.indexed())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(store)
    }

    fn key(&self, id: &str) -> String {
        format!("{}key:{id}", self.prefix)
    }

    fn owner(&self, owner: &str) -> String {
        format!("{}owner:{owner}", self.prefix)
    }

    /// `SET_CREDITS`'s arguments after the kind: `credits`' four fields, or none to remove them.
    fn credit_args(credits: Option<&Credits>) -> Vec<String> {
        let Some(credits) = credits else {
            return Vec::new();
        };
        CreditFields::of(Some(credits))
            .into_hash()
            .into_iter()
            .map(|(_, value)| value.unwrap_or_default())
            .collect()
    }

    /// The hash of the usage rows of one bucket: a field per replica and key.
    fn usage(&self, resolution: u32, start: u64) -> String {
        format!("{}usage:{resolution}:{start}", self.prefix)
    }

    /// The list of the console's audit trail, newest first.
    fn audit(&self) -> String {
        format!("{}audit", self.prefix)
    }

    fn ids(&self) -> String {
        format!("{}ids", self.prefix)
    }

    /// The ids of every key, by creation time, then id.
    fn created(&self) -> String {
        format!("{}created", self.prefix)
    }

    /// Set once the creation indexes hold every key.
    fn indexed(&self) -> String {
        format!("{}indexed", self.prefix)
    }

    /// The ids of `owner`'s keys, by creation time, then id.
    fn owner_keys(&self, owner: &str) -> String {
        format!("{}owner-keys:{owner}", self.prefix)
    }

    /// Runs `script`, `CREATE` or (with the most keys and now) `CREATE_WITHIN`, for `record`:
    /// whether it was added (not if its owner had `max`); a conflict if its id exists.
    async fn add(
        &self,
        script: &Script,
        record: KeyRecord,
        within: Option<(u32, SystemTime)>,
    ) -> Result<bool, StoreError> {
        let fields = Fields::of(&record).into_hash();
        let mut invocation = script.key(self.key(&record.id));
        invocation.key(self.ids()).key(self.created());
        if let Some(owner) = &record.owner {
            invocation.key(self.owner_keys(owner));
        }
        invocation.arg(&record.id).arg(secs(record.created_at));
        if let Some((max, now)) = within {
            invocation.arg(max).arg(secs(now)).arg(self.key(""));
        }
        for (name, value) in &fields {
            invocation.arg(*name).arg(value);
        }
        let mut conn = self.conn.clone();
        let added: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match added {
            0 => Err(StoreError::Conflict(record.id)),
            -1 => Ok(false),
            _ => {
                self.changed(&record.id).await;
                Ok(true)
            }
        }
    }

    /// Makes sure the creation indexes hold every key: keys stored before they existed are
    /// added once (marked by `<prefix>indexed`), which `create` keeps up from then on. Two
    /// replicas doing it at once only add the same entries twice.
    async fn index(&self) -> Result<(), StoreError> {
        if self.indexed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let marker = self.indexed();
        let done: Option<String> = conn.get(&marker).await.map_err(unavailable)?;
        if done.is_none() {
            let ids: Vec<String> = conn.smembers(self.ids()).await.map_err(unavailable)?;
            for chunk in ids.chunks(1_000) {
                let mut read = redis::pipe();
                for id in chunk {
                    read.hmget(self.key(id), &["created_at", "owner"]);
                }
                let found: Vec<(Option<i64>, Option<String>)> =
                    read.query_async(&mut conn).await.map_err(unavailable)?;
                let mut add = redis::pipe();
                for (id, (created, owner)) in chunk.iter().zip(found) {
                    // A key deleted meanwhile has no creation time: it is not added. (One
                    // deleted after this read is, and `list_page` takes it out again.)
                    let Some(created) = created else { continue };
                    add.zadd(self.created(), id, created).ignore();
                    if let Some(owner) = owner {
                        add.zadd(self.owner_keys(&owner), id, created).ignore();
                    }
                }
                if add.cmd_iter().next().is_some() {
                    let () = add.query_async(&mut conn).await.map_err(unavailable)?;
                }
            }
            let () = conn.set(&marker, 1).await.map_err(unavailable)?;
        }
        self.indexed.store(true, Ordering::Release);
        Ok(())
    }

    /// The records of `ids`, in that order, and the ids whose keys are gone.
    async fn read(&self, ids: &[String]) -> Result<(Vec<KeyRecord>, Vec<String>), StoreError> {
        if ids.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(self.key(id));
        }
        let all: Vec<HashMap<String, String>> =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let (mut records, mut gone) = (Vec::with_capacity(ids.len()), Vec::new());
        for (id, fields) in ids.iter().zip(all) {
            if fields.is_empty() {
                gone.push(id.clone());
            } else {
                records.push(Fields::from_hash(id, fields)?.into_record()?);
            }
        }
        Ok((records, gone))
    }

    fn channel(&self) -> String {
        format!("{}changes", self.prefix)
    }

    async fn changed(&self, id: &str) {
        let mut conn = self.conn.clone();
        // A lost message is covered by the cache TTL.
        let _: Result<i64, _> = conn.publish(self.channel(), id).await;
    }

    async fn update(&self, id: &str, args: &[&str]) -> Result<bool, StoreError> {
        self.change(&UPDATE, id, args).await
    }

    /// Runs `script` (which answers 1 when the key exists) on key `id`'s hash with `args`, then
    /// announces the change.
    async fn change(&self, script: &Script, id: &str, args: &[&str]) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = script.key(self.key(id));
        for arg in args {
            invocation.arg(*arg);
        }
        let done: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        self.changed(id).await;
        Ok(done == 1)
    }

    /// Adds `amount` to the credits of `hash` (a key's or an owner's), if it has some.
    async fn add_to(&self, hash: String, amount: u64) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn.clone();
        let left: i64 = ADD_CREDITS
            .key(hash)
            .arg(super::codec::saturating_i64(amount))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(left).ok())
    }

    /// A connection subscribed to the change channel.
    async fn subscribe(&self) -> Result<redis::aio::PubSub, StoreError> {
        let mut pubsub = self.client.get_async_pubsub().await.map_err(unavailable)?;
        pubsub
            .subscribe(self.channel())
            .await
            .map_err(unavailable)?;
        Ok(pubsub)
    }

    /// Listens for changes made through any replica's store and reports each changed key to
    /// `changes`, such as a layer's [`ApiKeyHandle`](crate::ApiKeyHandle). Runs until the
    /// returned task is aborted.
    ///
    /// Messages published while the subscription is down are lost, so any disconnect, however
    /// long, ends with [`KeyChanges::all_changed`] once the listener is subscribed again. A
    /// subscription quiet for [`LISTENER_KEEPALIVE`] is pinged, so a dead connection (half-open,
    /// or killed by `CLIENT KILL`) is noticed within `LISTENER_KEEPALIVE + LISTENER_PING_TIMEOUT`,
    /// and the cache is cleared once it is subscribed again (an attempt takes at most
    /// [`LISTENER_CONNECT_TIMEOUT`](super::LISTENER_CONNECT_TIMEOUT)).
    ///
    /// # Errors
    /// When the first subscription fails.
    pub async fn spawn_listener(
        &self,
        changes: impl KeyChanges,
    ) -> Result<JoinHandle<()>, StoreError> {
        let mut pubsub = self.subscribe().await?;
        let store = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                relay(pubsub, &changes).await;
                pubsub = reconnect(|| store.subscribe()).await;
                changes.all_changed();
            }
        }))
    }
}

/// A hash's flat `field, value, …` list as a map.
fn pairs(flat: Vec<String>) -> HashMap<String, String> {
    let mut flat = flat.into_iter();
    let mut map = HashMap::new();
    while let (Some(field), Some(value)) = (flat.next(), flat.next()) {
        map.insert(field, value);
    }
    map
}

/// `text` in a `SCAN` pattern, matching itself only: Redis's glob characters escaped.
fn glob_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// What is set on `owner`, from its hash's fields: `None` when nothing is.
fn owner_of(
    owner: &str,
    fields: HashMap<String, String>,
) -> Result<Option<OwnerRecord>, StoreError> {
    let record = OwnerFields::from_hash(owner, fields)?.into_record()?;
    Ok((!record.is_empty()).then_some(record))
}

/// Reports published ids to `changes` until the subscription ends or stops answering pings.
async fn relay(pubsub: redis::aio::PubSub, changes: &impl KeyChanges) {
    let (mut sink, mut messages) = pubsub.split();
    loop {
        match tokio::time::timeout(LISTENER_KEEPALIVE, messages.next()).await {
            Ok(Some(message)) => {
                if let Ok(payload) = message.get_payload::<String>() {
                    super::relay_payload(changes, &payload);
                }
            }
            Ok(None) => return,
            Err(_quiet) => {
                let ping = tokio::time::timeout(LISTENER_PING_TIMEOUT, sink.ping::<()>()).await;
                if !matches!(ping, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }
}

#[async_trait]
impl KeyStore for RedisStore {
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> =
            conn.hgetall(self.key(id)).await.map_err(unavailable)?;
        if fields.is_empty() {
            return Ok(None);
        }
        Fields::from_hash(id, fields)?.into_record().map(Some)
    }

    async fn owner(&self, owner: &str) -> Result<Option<OwnerRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> =
            conn.hgetall(self.owner(owner)).await.map_err(unavailable)?;
        owner_of(owner, fields)
    }

    async fn get_with_owner(&self, id: &str) -> Result<Option<KeyWithOwner>, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Vec<Vec<String>> = GET_WITH_OWNER
            .key(self.key(id))
            .arg(format!("{}owner:", self.prefix))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut parts = reply.into_iter();
        let Some(key) = parts.next() else {
            return Ok(None);
        };
        let record = Fields::from_hash(id, pairs(key))?.into_record()?;
        let owner = match (&record.owner, parts.next()) {
            (Some(name), Some(fields)) => owner_of(name, pairs(fields))?,
            _ => None,
        };
        Ok(Some((record, owner)))
    }

    async fn spend_credits(&self, charge: &Charge<'_>) -> Result<Spend, StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = SPEND.prepare_invoke();
        invocation.arg(charge.cost);
        if let Some(key) = charge.key {
            invocation.key(self.key(key.id)).arg(key.period);
        }
        if let Some(owner) = charge.owner {
            invocation.key(self.owner(owner.id)).arg(owner.period);
        }
        let reply: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(match reply[..] {
            [2, left] => Spend::Spent {
                remaining: u64::try_from(left).unwrap_or(0),
            },
            [1] => Spend::Exhausted,
            _ => Spend::NoCredits,
        })
    }
}

#[async_trait]
impl KeyStoreAdmin for RedisStore {
    async fn create(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.add(&CREATE, record, None).await.map(|_| ())
    }

    /// Counts and adds in one script, after the creation indexes are complete.
    async fn create_within(
        &self,
        record: KeyRecord,
        max: u32,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        if record.owner.is_none() {
            return self.create(record).await.map(|()| true);
        }
        self.index().await?;
        self.add(&CREATE_WITHIN, record, Some((max, now))).await
    }

    async fn revoke(&self, id: &str, at: SystemTime) -> Result<bool, StoreError> {
        let at = secs(at).to_string();
        self.update(id, &["revoked_at", &at, "nx"]).await
    }

    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let deleted: i64 = DELETE
            .key(self.key(id))
            .key(self.ids())
            .key(self.created())
            .arg(id)
            .arg(self.owner_keys(""))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        self.changed(id).await;
        Ok(deleted > 0)
    }

    /// The owners' hashes, found by `SCAN` (each Redis key under `<prefix>owner:`), then read
    /// in one pipeline.
    async fn owners(&self) -> Result<Vec<OwnerRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let start = self.owner("");
        let pattern = format!("{}*", glob_escaped(&start));
        let mut names = Vec::new();
        let mut found = conn
            .scan_match::<_, String>(pattern)
            .await
            .map_err(unavailable)?;
        while let Some(key) = found.next_item().await {
            let key = key.map_err(unavailable)?;
            names.extend(key.strip_prefix(&start).map(str::to_owned));
        }
        drop(found);
        // A scan may give a key twice.
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.hgetall(self.owner(name));
        }
        let hashes: Vec<HashMap<String, String>> =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let mut owners = Vec::new();
        for (name, fields) in names.iter().zip(hashes) {
            owners.extend(owner_of(name, fields)?);
        }
        Ok(owners)
    }

    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn.smembers(self.ids()).await.map_err(unavailable)?;
        let (mut records, _) = self.read(&ids).await?;
        records.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(records)
    }

    /// From the creation index (the owner's, for an owner's keys), within the keys created
    /// before [`created_before`](KeyFilter::created_before) if it is set: with no other filter,
    /// the page's keys only and the index's count; else the keys the index holds in that range,
    /// filtered here.
    async fn list_page(
        &self,
        filter: &KeyFilter,
        now: SystemTime,
        offset: usize,
        limit: usize,
    ) -> Result<Listing, StoreError> {
        self.index().await?;
        let index = match &filter.owner {
            Some(owner) => self.owner_keys(owner),
            None => self.created(),
        };
        // The index's scores are creation times in whole seconds: one is before `at` exactly
        // when it is before `at` rounded up.
        let before = filter
            .created_before
            .map_or_else(|| "+inf".to_owned(), |at| format!("({}", secs_up(at)));
        // With no filter but the owner and the creation time, only the page is read, and the
        // index counts the keys.
        let paged = *filter
            == KeyFilter {
                owner: filter.owner.clone(),
                created_before: filter.created_before,
                ..KeyFilter::new()
            };
        let (offset_in_index, count) = match (paged, limit) {
            (true, 0) => (0, None),
            (true, _) => (offset, Some(limit)),
            (false, _) => (0, Some(usize::MAX)),
        };
        // Redis takes a negative count as "all of them".
        let count = count.map(|count| isize::try_from(count).unwrap_or(-1));
        let from = isize::try_from(offset_in_index).unwrap_or(isize::MAX);
        let mut conn = self.conn.clone();
        loop {
            let ids: Vec<String> = match count {
                None => Vec::new(),
                Some(count) => (conn.zrangebyscore_limit(&index, "-inf", &before, from, count))
                    .await
                    .map_err(unavailable)?,
            };
            let (records, gone) = self.read(&ids).await?;
            if !gone.is_empty() {
                // Keys deleted while the indexes were filled: taken out, and the page read again.
                let mut pipe = redis::pipe();
                pipe.zrem(&index, &gone)
                    .ignore()
                    .zrem(self.created(), &gone)
                    .ignore();
                let () = pipe.query_async(&mut conn).await.map_err(unavailable)?;
                continue;
            }
            if paged {
                let total: usize =
                    (conn.zcount(&index, "-inf", &before).await).map_err(unavailable)?;
                return Ok(Listing { records, total });
            }
            return Ok(Listing::filtered(records, filter, now, offset, limit));
        }
    }

    async fn set_scopes(&self, id: &str, scopes: &[String]) -> Result<bool, StoreError> {
        self.update_key(id, &KeyUpdate::new().scopes(scopes)).await
    }

    async fn set_name(&self, id: &str, name: &str) -> Result<bool, StoreError> {
        self.update_key(id, &KeyUpdate::new().name(name)).await
    }

    async fn set_plan(&self, id: &str, plan: Option<&str>) -> Result<bool, StoreError> {
        self.update_key(id, &KeyUpdate::new().plan(plan)).await
    }

    async fn set_metadata(
        &self,
        id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError> {
        let update = KeyUpdate::new().metadata(metadata.clone());
        self.update_key(id, &update).await
    }

    async fn set_expiry(&self, id: &str, at: Option<SystemTime>) -> Result<bool, StoreError> {
        self.update_key(id, &KeyUpdate::new().expires_at(at)).await
    }

    async fn set_disabled(&self, id: &str, disabled: bool) -> Result<bool, StoreError> {
        self.update_key(id, &KeyUpdate::new().disabled(disabled))
            .await
    }

    async fn set_credits(&self, id: &str, credits: Option<&Credits>) -> Result<bool, StoreError> {
        let fields = Self::credit_args(credits);
        let args: Vec<&str> = std::iter::once("key")
            .chain(fields.iter().map(String::as_str))
            .collect();
        self.change(&SET_CREDITS, id, &args).await
    }

    async fn set_owner_limits(
        &self,
        owner: &str,
        limits: Option<&Limits>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let hash = self.owner(owner);
        match limits {
            Some(limits) => conn.hset::<_, _, _, ()>(hash, "limits", json(limits)).await,
            None => conn.hdel::<_, _, ()>(hash, "limits").await,
        }
        .map_err(unavailable)?;
        self.changed(&owner_payload(owner)).await;
        Ok(())
    }

    async fn set_owner_credits(
        &self,
        owner: &str,
        credits: Option<&Credits>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = SET_CREDITS.key(self.owner(owner));
        invocation.arg("owner");
        for field in Self::credit_args(credits) {
            invocation.arg(field);
        }
        let _: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        self.changed(&owner_payload(owner)).await;
        Ok(())
    }

    async fn add_owner_credits(&self, owner: &str, amount: u64) -> Result<Option<u64>, StoreError> {
        self.add_to(self.owner(owner), amount).await
    }

    async fn add_credits(&self, id: &str, amount: u64) -> Result<Option<u64>, StoreError> {
        self.add_to(self.key(id), amount).await
    }

    async fn set_limits(&self, id: &str, limits: Option<&Limits>) -> Result<bool, StoreError> {
        self.update_key(id, &KeyUpdate::new().limits(limits.cloned()))
            .await
    }

    async fn set_allowed_networks(&self, id: &str, networks: &[IpNet]) -> Result<bool, StoreError> {
        if networks.is_empty() {
            self.update(id, &["allowed_networks"]).await
        } else {
            let networks = json(&networks);
            self.update(id, &["allowed_networks", &networks]).await
        }
    }

    /// Every change in one script, announced once; each field encoded here only (the setters of
    /// one field come through here).
    async fn update_key(&self, id: &str, update: &KeyUpdate) -> Result<bool, StoreError> {
        if update.is_empty() {
            return Ok(self.get(id).await?.is_some());
        }
        let args = update_args(update);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.change(&UPDATE_KEY, id, &args).await
    }

    /// Reads the key's owner, then checks and changes in one script.
    async fn update_key_within(
        &self,
        id: &str,
        update: &KeyUpdate,
        max: u32,
        now: SystemTime,
    ) -> Result<Option<bool>, StoreError> {
        let owner = match Revival::of(self, id, update, now).await? {
            Revival::NoKey => return Ok(None),
            Revival::Uncounted => return Ok(self.update_key(id, update).await?.then_some(true)),
            Revival::Owner(owner) => owner,
        };
        self.index().await?;
        let after = match update.expires_at {
            None => String::new(),
            Some(None) => "none".to_owned(),
            Some(Some(at)) => secs(at).to_string(),
        };
        let mut invocation = UPDATE_KEY_WITHIN.key(self.key(id));
        invocation.key(self.owner_keys(&owner));
        invocation
            .arg(secs(now))
            .arg(max)
            .arg(self.key(""))
            .arg(after);
        for arg in update_args(update) {
            invocation.arg(arg);
        }
        let mut conn = self.conn.clone();
        let done: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match done {
            0 => Ok(None),
            -1 => Ok(Some(false)),
            _ => {
                self.changed(id).await;
                Ok(Some(true))
            }
        }
    }

    async fn record_usage(&self, batch: &[UsageUpdate]) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        for update in batch {
            let _: i64 = USAGE
                .key(self.key(&update.id))
                .arg(update.requests)
                .arg(secs(update.last_used_at))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

/// `UPDATE_KEY`'s arguments for `update`: how many fields to set, the field/value pairs, then
/// the fields to remove.
fn update_args(update: &KeyUpdate) -> Vec<String> {
    let (mut set, mut remove) = (Vec::new(), Vec::new());
    let mut field = |name: &'static str, value: Option<String>| match value {
        Some(value) => set.extend([name.to_owned(), value]),
        None => remove.push(name.to_owned()),
    };
    if let Some(name) = &update.name {
        field("name", Some(name.clone()));
    }
    if let Some(scopes) = &update.scopes {
        field("scopes", Some(json(scopes)));
    }
    if let Some(metadata) = &update.metadata {
        field("metadata", Some(json(metadata)));
    }
    if let Some(at) = update.expires_at {
        field("expires_at", at.map(|at| secs(at).to_string()));
    }
    if let Some(plan) = &update.plan {
        field("plan", plan.clone());
    }
    if let Some(limits) = &update.limits {
        field("limits", limits.as_ref().map(json));
    }
    if let Some(disabled) = update.disabled {
        field(
            "disabled",
            Some(if disabled { "1" } else { "0" }.to_owned()),
        );
    }
    let pairs = (set.len() / 2).to_string();
    std::iter::once(pairs).chain(set).chain(remove).collect()
}

/// A usage row's field in its bucket's hash: `[replica, key]` as JSON; its value: `[owner,
/// data]`.
type UsageField = (String, String);
type UsageValue = (Option<String>, String);

#[async_trait]
impl UsageArchive for RedisStore {
    async fn write_usage(
        &self,
        rows: &[UsageRow],
        expire: &[(u32, u64)],
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for row in rows {
            let hash = self.usage(row.resolution, row.start);
            let field = json(&(&row.replica, &row.key));
            pipe.hset(&hash, field, json(&(&row.owner, &row.data)))
                .ignore();
            // The hash goes when its bucket leaves the retention given for its resolution.
            if let Some(&(_, before)) = expire.iter().find(|(r, _)| *r == row.resolution) {
                let left = row.start.saturating_sub(before) + u64::from(row.resolution);
                pipe.expire(&hash, i64::try_from(left).unwrap_or(i64::MAX))
                    .ignore();
            }
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    async fn read_usage(&self, range: &UsageRange<'_>) -> Result<Vec<UsageRow>, StoreError> {
        let step = u64::from(range.resolution.max(1));
        let starts: Vec<u64> = (range.from.div_ceil(step) * step..range.to)
            .step_by(usize::try_from(step).unwrap_or(usize::MAX))
            .collect();
        let mut pipe = redis::pipe();
        for start in &starts {
            pipe.hgetall(self.usage(range.resolution, *start));
        }
        let mut conn = self.conn.clone();
        let hashes: Vec<HashMap<String, String>> =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let mut rows = Vec::new();
        for (start, hash) in starts.into_iter().zip(hashes) {
            for (field, value) in hash {
                let corrupt = |what: &str| {
                    StoreError::unavailable(format!(
                        "corrupt usage row in {}: {what}",
                        self.usage(range.resolution, start)
                    ))
                };
                let (replica, key): UsageField =
                    serde_json::from_str(&field).map_err(|_| corrupt("field"))?;
                let (owner, data): UsageValue =
                    serde_json::from_str(&value).map_err(|_| corrupt("value"))?;
                let row = UsageRow {
                    replica,
                    key,
                    owner,
                    resolution: range.resolution,
                    start,
                    data,
                };
                if range.contains(&row) {
                    rows.push(row);
                }
            }
        }
        Ok(rows)
    }
}

/// An audit row as the Redis list keeps it: id, time, key, owner, data.
type AuditEntry = (String, u64, String, Option<String>, String);

/// `row` as the Redis list keeps it: [`AuditEntry`]'s JSON.
fn audit_entry(row: &AuditRow) -> String {
    let entry: (&str, u64, &str, Option<&str>, &str) =
        (&row.id, row.at, &row.key, row.owner.as_deref(), &row.data);
    json(&entry)
}

#[async_trait]
impl AuditArchive for RedisStore {
    async fn append_audit(&self, row: &AuditRow) -> Result<(), StoreError> {
        let kept = isize::try_from(AUDIT_KEPT).unwrap_or(isize::MAX);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .lpush(self.audit(), audit_entry(row))
            .ignore()
            .ltrim(self.audit(), 0, kept - 1)
            .ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    async fn read_audit(&self, query: &AuditQuery<'_>) -> Result<Vec<AuditRow>, StoreError> {
        let mut conn = self.conn.clone();
        let entries: Vec<String> = conn
            .lrange(self.audit(), 0, -1)
            .await
            .map_err(unavailable)?;
        let mut rows = Vec::with_capacity(entries.len());
        for entry in entries {
            let (id, at, key, owner, data): AuditEntry = serde_json::from_str(&entry)
                .map_err(|_| StoreError::unavailable(format!("corrupt row in {}", self.audit())))?;
            rows.push(AuditRow {
                id,
                at,
                key,
                owner,
                data,
            });
        }
        Ok(query.newest_of(&rows))
    }

    async fn prune_audit(&self, before: u64) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let removed: u64 = PRUNE_AUDIT
            .key(self.audit())
            .arg(before)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(removed)
    }

    async fn import_audit(&self, rows: &[AuditRow]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut import = IMPORT_AUDIT.key(self.audit());
        import.arg(AUDIT_KEPT);
        for row in rows {
            import.arg(audit_entry(row));
        }
        let mut conn = self.conn.clone();
        import.invoke_async(&mut conn).await.map_err(unavailable)
    }
}
