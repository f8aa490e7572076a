//! With the `redis` feature: one rate limit shared by every replica, counted in Redis.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use redis::aio::ConnectionManager;
use redis::Script;

use super::{Bucket, Decision, LimitCheck, LimitStatus, Limiter, LimiterError, Window};
use crate::clock::unix_seconds;

/// Every rate limit (GCRA) and both quotas of every bucket (a key's, its owner's), decided and
/// counted in one atomic step, all or nothing: nothing is counted for a refused request. The GCRA
/// runs on the server's clock (`TIME`), so the checks of every replica are on one timeline in the
/// order Redis runs them. The arithmetic is `gcra.rs`'s: a request costing `n` passes a rate when
/// `max(tat, now) + n·interval ≤ now + burst·interval`; a cost of 0 is checked as 1 and counted
/// as 0.
///
/// KEYS: per bucket, one GCRA state per rate, then the day counter and the month counter.
/// ARGV: cost, number of buckets, then per bucket: number of rates `r`, per rate: interval (ms),
/// burst, window (ms); then day quota (-1 for none), seconds left in the day, month quota (-1),
/// seconds left in the month.
/// Returns: allowed, the refusing bucket (1-based; 0 when allowed), the refusing limit in it
/// (1-based over rates, then day, then month), retry after (ms), then per bucket: day count,
/// month count, each rate's remaining.
static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.replicate_commands()
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local cost = tonumber(ARGV[1])
local need = math.max(cost, 1)
local nb = tonumber(ARGV[2])
local refused_in, refused, wait = 0, 0, 0
local a, k = 3, 1
local buckets = {}
for b = 1, nb do
  local r = tonumber(ARGV[a])
  a = a + 1
  local p = {r = r, k = k, tats = {}, remaining = {}}
  for i = 1, r do
    local interval, burst, window = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    a = a + 3
    local base = tonumber(redis.call('GET', KEYS[k + i - 1])) or now
    if base < now then base = now end
    local limit = now + burst * interval
    if interval <= 0 or need > burst then
      p.remaining[i] = 0
      if refused == 0 then refused_in, refused, wait = b, i, window end
    else
      local after = base + need * interval
      if after > limit then
        p.remaining[i] = math.floor((limit - base) / interval)
        if refused == 0 then refused_in, refused, wait = b, i, after - limit end
      else
        if cost > 0 then p.tats[i] = after else after = base end
        p.remaining[i] = math.floor((limit - after) / interval)
      end
    end
  end
  p.day_quota, p.day_left = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  p.month_quota, p.month_left = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  a = a + 4
  p.day = tonumber(redis.call('GET', KEYS[k + r]) or '0')
  p.month = tonumber(redis.call('GET', KEYS[k + r + 1]) or '0')
  if refused == 0 and p.day_quota >= 0 and p.day + need > p.day_quota then
    refused_in, refused, wait = b, r + 1, p.day_left * 1000
  end
  if refused == 0 and p.month_quota >= 0 and p.month + need > p.month_quota then
    refused_in, refused, wait = b, r + 2, p.month_left * 1000
  end
  k = k + r + 2
  buckets[b] = p
end
local reply = {0, refused_in, refused, math.ceil(wait)}
if refused == 0 then
  reply[1] = 1
  for b = 1, nb do
    local p = buckets[b]
    for i = 1, p.r do
      if p.tats[i] then
        redis.call('SET', KEYS[p.k + i - 1], string.format('%.3f', p.tats[i]), 'PX', math.max(1, math.ceil(p.tats[i] - now)))
      end
    end
    if cost > 0 and p.day_quota >= 0 then
      p.day = redis.call('INCRBY', KEYS[p.k + p.r], cost)
      redis.call('EXPIRE', KEYS[p.k + p.r], p.day_left + 60)
    end
    if cost > 0 and p.month_quota >= 0 then
      p.month = redis.call('INCRBY', KEYS[p.k + p.r + 1], cost)
      redis.call('EXPIRE', KEYS[p.k + p.r + 1], p.month_left + 60)
    end
  end
end
for b = 1, nb do
  local p = buckets[b]
  reply[#reply + 1] = p.day
  reply[#reply + 1] = p.month
  for i = 1, p.r do reply[#reply + 1] = p.remaining[i] end
end
return reply",
    )
});

/// Rate limits and quotas counted in Redis, so several replicas enforce one limit together.
/// Each check is one atomic server-side script (GCRA, as the in-memory limiter, plus the quota
/// counters); state expires by itself once it is as good as new. The rate limit runs on the Redis
/// server's clock, so every replica's checks fall on one timeline whatever the replicas' clocks say
/// or however late a request reaches Redis; the quota windows (UTC days and months) follow the
/// layer's clock, so replicas' clocks should agree (NTP) around midnight.
///
/// If Redis fails, the request is refused with 503 `RATE_LIMITER_UNAVAILABLE`, never let through.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_api_key::{ApiKeyLayer, MemoryStore, limit::RedisLimiter};
///
/// let limiter = RedisLimiter::connect("redis://127.0.0.1:6379").await?;
/// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new()).limiter(limiter).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisLimiter {
    conn: ConnectionManager,
    prefix: Arc<str>,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// Connects to `url`, with counters under the prefix `tower-api-key:`.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, LimiterError> {
        Self::connect_with_prefix(url, crate::store::DEFAULT_REDIS_PREFIX).await
    }

    /// As [`connect`](Self::connect), with counters under `prefix`.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, LimiterError> {
        let failed = |e: redis::RedisError| LimiterError(Box::new(e));
        let client = redis::Client::open(url).map_err(failed)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(failed)?;
        Ok(RedisLimiter {
            conn,
            prefix: prefix.into(),
        })
    }
}

/// What the limiter sends for one bucket, and reads back.
struct Counted {
    rates: Vec<super::Rate>,
    daily: Option<u32>,
    monthly: Option<u32>,
    day: Arc<str>,
    month: Arc<str>,
}

impl Limiter for RedisLimiter {
    fn check(&self, buckets: &[Bucket<'_>], cost: u32, now: SystemTime) -> LimitCheck {
        let secs = unix_seconds(now);
        let (day_left, month_left) = (
            Window::Day.seconds_left(secs),
            Window::Month.seconds_left(secs),
        );
        let quota = |q: Option<u32>| q.map_or(-1, i64::from);
        let mut invocation = CHECK.prepare_invoke();
        invocation.arg(cost).arg(buckets.len());
        let mut counted = Vec::with_capacity(buckets.len());
        for bucket in buckets {
            let limits = bucket.limits;
            let rates = limits.rates(bucket.label);
            let base = format!("{}limit:{}", self.prefix, bucket.name);
            for (i, rate) in rates.iter().enumerate() {
                // The minute limit keeps its key; a named one is keyed by its parameters too, so
                // a changed limit starts afresh.
                if i == 0 && limits.per_minute.is_some() {
                    invocation.key(format!("{base}:gcra"));
                } else {
                    invocation.key(format!(
                        "{base}:gcra:{}:{}:{}:{}",
                        rate.name, rate.quota, rate.window, rate.burst
                    ));
                }
            }
            invocation.key(format!("{base}:d:{}", Window::Day.index(secs)));
            invocation.key(format!("{base}:m:{}", Window::Month.index(secs)));
            invocation.arg(rates.len());
            for rate in &rates {
                invocation
                    .arg(rate.interval as f64 / 1e6)
                    .arg(rate.burst)
                    .arg(rate.window.saturating_mul(1000));
            }
            invocation
                .arg(quota(limits.daily))
                .arg(day_left)
                .arg(quota(limits.monthly))
                .arg(month_left);
            counted.push(Counted {
                rates,
                daily: limits.daily,
                monthly: limits.monthly,
                day: super::labelled(bucket.label, "day"),
                month: super::labelled(bucket.label, "month"),
            });
        }
        let mut conn = self.conn.clone();
        LimitCheck::Pending(Box::pin(async move {
            let reply: Vec<i64> = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(|e| LimiterError(Box::new(e)))?;
            decision(&reply, &counted, secs, day_left, month_left)
                .ok_or_else(|| LimiterError("malformed reply from the limit script".into()))
        }))
    }
}

/// The decision the script's `reply` gives for `counted`; `None` for a malformed reply.
fn decision(
    reply: &[i64],
    counted: &[Counted],
    secs: u64,
    day_left: u64,
    month_left: u64,
) -> Option<Decision> {
    let [allowed, refused_in, refused, retry_ms, ref rest @ ..] = reply[..] else {
        return None;
    };
    let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    let refused_in = usize::try_from(refused_in).ok()?;
    let refused = usize::try_from(refused).ok()?;
    let wait = Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0));
    let mut rest = rest.iter().copied();
    let mut statuses = Vec::new();
    let mut refused_by = None;
    for (b, bucket) in counted.iter().enumerate() {
        let (day, month) = (rest.next()?, rest.next()?);
        let here = |i: usize| refused_in == b + 1 && refused == i + 1;
        for (i, rate) in bucket.rates.iter().enumerate() {
            let left = count(rest.next()?);
            let left = if here(i) { 0 } else { left };
            if here(i) {
                refused_by = Some(Arc::clone(&rate.name));
            }
            let refill = u64::from(rate.burst.saturating_sub(left))
                .saturating_mul(rate.interval)
                .div_ceil(1_000_000_000);
            statuses.push(LimitStatus {
                policy: Arc::clone(&rate.name),
                quota: rate.quota,
                window: rate.window,
                remaining: left,
                reset: if here(i) {
                    wait.as_secs().max(1)
                } else {
                    refill
                },
            });
        }
        let r = bucket.rates.len();
        for (q, used, window, left, name, at) in [
            (bucket.daily, day, Window::Day, day_left, &bucket.day, r),
            (
                bucket.monthly,
                month,
                Window::Month,
                month_left,
                &bucket.month,
                r + 1,
            ),
        ] {
            if here(at) {
                refused_by = Some(Arc::clone(name));
            }
            if let Some(q) = q {
                statuses.push(LimitStatus {
                    policy: Arc::clone(name),
                    quota: q,
                    window: window.length(secs),
                    remaining: if here(at) {
                        0
                    } else {
                        q.saturating_sub(count(used))
                    },
                    reset: left,
                });
            }
        }
    }
    if rest.next().is_some() {
        return None;
    }
    match (allowed, refused_by) {
        (1, _) => Some(Decision {
            allowed: true,
            retry_after: None,
            limits: statuses,
            refused_by: None,
        }),
        (_, Some(by)) => Some(Decision {
            allowed: false,
            retry_after: Some(wait.max(Duration::from_secs(1))),
            limits: statuses,
            refused_by: Some(by),
        }),
        _ => None,
    }
}
