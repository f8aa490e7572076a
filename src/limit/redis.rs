//! With the `redis` feature: one rate limit shared by every replica, counted in Redis.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use redis::aio::ConnectionManager;
use redis::Script;

use super::{Decision, LimitCheck, LimitStatus, Limiter, LimiterError, Limits, Window};
use crate::clock::unix_seconds;

/// Every rate limit (GCRA) and both quotas, decided and counted in one atomic step, all or
/// nothing: nothing is counted for a refused request. The GCRA runs on the server's clock
/// (`TIME`), so the checks of every replica are on one timeline in the order Redis runs them.
/// The arithmetic is `gcra.rs`'s: a request costing `n` passes a rate when
/// `max(tat, now) + n·interval ≤ now + burst·interval`; a cost of 0 is checked as 1 and counted
/// as 0.
///
/// KEYS: one GCRA state per rate, then the day counter and the month counter.
/// ARGV: cost, number of rates `r`, then per rate: interval (ms), burst, window (ms); then day
/// quota (-1 for none), seconds left in the day, month quota (-1), seconds left in the month.
/// Returns: allowed, the refusing limit (1-based over rates, then day, then month; 0 when
/// allowed), retry after (ms), day count, month count, then each rate's remaining.
static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.replicate_commands()
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local cost = tonumber(ARGV[1])
local need = math.max(cost, 1)
local r = tonumber(ARGV[2])
local refused, wait = 0, 0
local tats, remaining = {}, {}
for i = 1, r do
  local interval = tonumber(ARGV[3 * i])
  local burst = tonumber(ARGV[3 * i + 1])
  local window = tonumber(ARGV[3 * i + 2])
  local base = tonumber(redis.call('GET', KEYS[i])) or now
  if base < now then base = now end
  local limit = now + burst * interval
  if interval <= 0 or need > burst then
    remaining[i] = 0
    if refused == 0 then refused, wait = i, window end
  else
    local after = base + need * interval
    if after > limit then
      remaining[i] = math.floor((limit - base) / interval)
      if refused == 0 then refused, wait = i, after - limit end
    else
      if cost > 0 then tats[i] = after else after = base end
      remaining[i] = math.floor((limit - after) / interval)
    end
  end
end
local q = 3 * r + 3
local day_quota, day_left = tonumber(ARGV[q]), tonumber(ARGV[q + 1])
local month_quota, month_left = tonumber(ARGV[q + 2]), tonumber(ARGV[q + 3])
local day = tonumber(redis.call('GET', KEYS[r + 1]) or '0')
local month = tonumber(redis.call('GET', KEYS[r + 2]) or '0')
if refused == 0 and day_quota >= 0 and day + need > day_quota then
  refused, wait = r + 1, day_left * 1000
end
if refused == 0 and month_quota >= 0 and month + need > month_quota then
  refused, wait = r + 2, month_left * 1000
end
local reply = {0, refused, math.ceil(wait), day, month}
if refused == 0 then
  reply[1] = 1
  for i = 1, r do
    if tats[i] then
      redis.call('SET', KEYS[i], string.format('%.3f', tats[i]), 'PX', math.max(1, math.ceil(tats[i] - now)))
    end
  end
  if cost > 0 and day_quota >= 0 then
    reply[4] = redis.call('INCRBY', KEYS[r + 1], cost)
    redis.call('EXPIRE', KEYS[r + 1], day_left + 60)
  end
  if cost > 0 and month_quota >= 0 then
    reply[5] = redis.call('INCRBY', KEYS[r + 2], cost)
    redis.call('EXPIRE', KEYS[r + 2], month_left + 60)
  end
end
for i = 1, r do reply[5 + i] = remaining[i] end
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
        Self::connect_with_prefix(url, "tower-api-key:").await
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

impl Limiter for RedisLimiter {
    fn check(&self, bucket: &str, limits: &Limits, cost: u32, now: SystemTime) -> LimitCheck {
        let secs = unix_seconds(now);
        let rates = limits.rates();
        let (day_left, month_left) = (
            Window::Day.seconds_left(secs),
            Window::Month.seconds_left(secs),
        );
        let base = format!("{}limit:{bucket}", self.prefix);
        let mut keys: Vec<String> = rates
            .iter()
            .map(|rate| {
                // The legacy minute limit keeps its key; a named one is keyed by its
                // parameters too, so a changed limit starts afresh.
                if &*rate.name == "minute" {
                    format!("{base}:gcra")
                } else {
                    format!(
                        "{base}:gcra:{}:{}:{}:{}",
                        rate.name, rate.quota, rate.window, rate.burst
                    )
                }
            })
            .collect();
        keys.push(format!("{base}:d:{}", Window::Day.index(secs)));
        keys.push(format!("{base}:m:{}", Window::Month.index(secs)));
        let quota = |q: Option<u32>| q.map_or(-1, i64::from);
        let (daily, monthly) = (limits.daily, limits.monthly);
        let mut conn = self.conn.clone();
        let mut invocation = CHECK.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        invocation.arg(cost).arg(rates.len());
        for rate in &rates {
            invocation
                .arg(rate.interval as f64 / 1e6)
                .arg(rate.burst)
                .arg(rate.window.saturating_mul(1000));
        }
        invocation
            .arg(quota(daily))
            .arg(day_left)
            .arg(quota(monthly))
            .arg(month_left);
        LimitCheck::Pending(Box::pin(async move {
            let reply: Vec<i64> = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(|e| LimiterError(Box::new(e)))?;
            let malformed = || LimiterError("malformed reply from the limit script".into());
            let [allowed, refused, retry_ms, day, month, ref remaining @ ..] = reply[..] else {
                return Err(malformed());
            };
            if remaining.len() != rates.len() {
                return Err(malformed());
            }
            let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
            let refused = usize::try_from(refused).unwrap_or(0);
            let wait = Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0));
            let reset_of = |i: usize| (refused == i + 1).then_some(wait);
            let mut statuses: Vec<LimitStatus> = rates
                .iter()
                .zip(remaining)
                .enumerate()
                .map(|(i, (rate, &left))| {
                    let left = if refused == i + 1 { 0 } else { count(left) };
                    let refill = u64::from(rate.burst.saturating_sub(left))
                        .saturating_mul(rate.interval)
                        .div_ceil(1_000_000_000);
                    LimitStatus {
                        policy: Arc::clone(&rate.name),
                        quota: rate.quota,
                        window: rate.window,
                        remaining: left,
                        reset: reset_of(i).map_or(refill, |w| w.as_secs().max(1)),
                    }
                })
                .collect();
            let r = rates.len();
            for (q, used, window, left, policy, at) in [
                (daily, day, Window::Day, day_left, "day", r + 1),
                (monthly, month, Window::Month, month_left, "month", r + 2),
            ] {
                if let Some(q) = q {
                    statuses.push(LimitStatus {
                        policy: policy.into(),
                        quota: q,
                        window: window.length(secs),
                        remaining: if refused == at {
                            0
                        } else {
                            q.saturating_sub(count(used))
                        },
                        reset: left,
                    });
                }
            }
            if allowed == 1 {
                return Ok(Decision {
                    allowed: true,
                    retry_after: None,
                    limits: statuses,
                    refused_by: None,
                });
            }
            let refused_by = match refused {
                0 => return Err(malformed()),
                i if i <= r => Arc::clone(&rates[i - 1].name),
                i if i == r + 1 => "day".into(),
                _ => "month".into(),
            };
            Ok(Decision {
                allowed: false,
                retry_after: Some(wait.max(Duration::from_secs(1))),
                limits: statuses,
                refused_by: Some(refused_by),
            })
        }))
    }
}
