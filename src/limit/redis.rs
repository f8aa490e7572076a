//! With the `redis` feature: one rate limit shared by every replica, counted in Redis.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use redis::aio::ConnectionManager;
use redis::Script;

use super::{Decision, LimitCheck, LimitStatus, Limiter, LimiterError, Limits, Window};
use crate::clock::unix_seconds;

/// GCRA and both quotas, decided and counted in one atomic step. Nothing is counted for a refused
/// request. The GCRA runs on the server's clock (`TIME`), so the checks of every replica are on
/// one timeline in the order Redis runs them: a request that reached one replica a moment before
/// another's cannot be judged "earlier" than a check already counted.
///
/// KEYS: GCRA state, day counter, month counter.
/// ARGV: interval (ms, 0 for no rate limit), burst, day quota (-1 for none), seconds
/// left in the day, month quota (-1), seconds left in the month.
/// Returns: allowed, refused policy (1 minute, 2 day, 3 month), retry after (ms), rate remaining,
/// day count, month count.
static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.replicate_commands()
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local day_quota = tonumber(ARGV[3])
local month_quota = tonumber(ARGV[5])
local new_tat = now
local remaining = -1
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1])) or now
  if tat < now then tat = now end
  local tolerance = interval * (burst - 1)
  if tat - now > tolerance then
    return {0, 1, math.ceil(tat - now - tolerance), 0, 0, 0}
  end
  new_tat = tat + interval
  remaining = math.floor((burst * interval - (new_tat - now)) / interval)
end
local day = tonumber(redis.call('GET', KEYS[2]) or '0')
if day_quota >= 0 and day >= day_quota then
  return {0, 2, tonumber(ARGV[4]) * 1000, remaining, day, 0}
end
local month = tonumber(redis.call('GET', KEYS[3]) or '0')
if month_quota >= 0 and month >= month_quota then
  return {0, 3, tonumber(ARGV[6]) * 1000, remaining, day, month}
end
if interval > 0 then
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
end
if day_quota >= 0 then
  day = redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]) + 60)
end
if month_quota >= 0 then
  month = redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]) + 60)
end
return {1, 0, 0, remaining, day, month}",
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
    fn check(&self, bucket: &str, limits: &Limits, now: SystemTime) -> LimitCheck {
        let limits = *limits;
        if limits.per_minute == Some(0) {
            let wait = Duration::from_secs(60);
            return LimitCheck::Ready(Ok(Decision {
                allowed: false,
                retry_after: Some(wait),
                limits: vec![minute_status(0, 0, 0.0, 0, wait)],
            }));
        }
        let secs = unix_seconds(now);
        let rate = limits.per_minute.unwrap_or(0);
        let burst = limits.effective_burst().unwrap_or(0);
        let interval_ms = if rate > 0 {
            60_000.0 / f64::from(rate)
        } else {
            0.0
        };
        let (day_left, month_left) = (
            Window::Day.seconds_left(secs),
            Window::Month.seconds_left(secs),
        );
        let base = format!("{}limit:{bucket}", self.prefix);
        let keys = [
            format!("{base}:gcra"),
            format!("{base}:d:{}", Window::Day.index(secs)),
            format!("{base}:m:{}", Window::Month.index(secs)),
        ];
        let quota = |q: Option<u32>| q.map_or(-1, i64::from);
        let mut conn = self.conn.clone();
        LimitCheck::Pending(Box::pin(async move {
            let mut invocation = CHECK.key(&keys[0]);
            invocation
                .key(&keys[1])
                .key(&keys[2])
                .arg(interval_ms)
                .arg(burst)
                .arg(quota(limits.daily))
                .arg(day_left)
                .arg(quota(limits.monthly))
                .arg(month_left);
            let reply: (i64, i64, i64, i64, i64, i64) = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(|e| LimiterError(Box::new(e)))?;
            let (allowed, refused_by, retry_ms, remaining, day, month) = reply;
            let mut statuses = Vec::with_capacity(3);
            let retry = Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0));
            if rate > 0 {
                let remaining = u32::try_from(remaining.max(0)).unwrap_or(0);
                statuses.push(minute_status(rate, burst, interval_ms, remaining, retry));
            }
            let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
            for (q, used, window, left, policy) in [
                (limits.daily, day, Window::Day, day_left, "day"),
                (limits.monthly, month, Window::Month, month_left, "month"),
            ] {
                if let Some(q) = q {
                    statuses.push(LimitStatus {
                        policy,
                        quota: q,
                        window: window.length(secs),
                        remaining: q.saturating_sub(count(used)),
                        reset: left,
                    });
                }
            }
            if allowed == 1 {
                return Ok(Decision {
                    allowed: true,
                    retry_after: None,
                    limits: statuses,
                });
            }
            let policy =
                ["minute", "day", "month"][usize::try_from(refused_by - 1).unwrap_or(0).min(2)];
            for status in statuses.iter_mut().filter(|s| s.policy == policy) {
                status.remaining = 0;
            }
            Ok(Decision {
                allowed: false,
                retry_after: Some(retry.max(Duration::from_secs(1))),
                limits: statuses,
            })
        }))
    }
}

fn minute_status(
    rate: u32,
    burst: u32,
    interval_ms: f64,
    remaining: u32,
    wait: Duration,
) -> LimitStatus {
    let refill = f64::from(burst.saturating_sub(remaining)) * interval_ms / 1000.0;
    LimitStatus {
        policy: "minute",
        quota: rate,
        window: 60,
        remaining,
        reset: if wait > Duration::ZERO {
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        } else {
            refill.ceil() as u64
        },
    }
}
