//! What the PostgreSQL and Redis change listeners share: how often a quiet connection is checked,
//! and reconnecting however long it takes.

use std::future::Future;
use std::time::Duration;

/// A listening connection quiet for this long is pinged.
pub const LISTENER_KEEPALIVE: Duration = Duration::from_secs(5);
/// A ping unanswered for this long means the connection is dead: the listener reconnects and then
/// clears the cache.
pub const LISTENER_PING_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest one connection attempt of a listener may take before it is tried again. After a
/// dead connection the first attempt may take all of it (a pooled connection on the same dead path
/// waits for the pool's own timeout).
pub const LISTENER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls `connect` until it succeeds, waiting 100 ms after the first failure and doubling up to
/// 5 s. No attempt is cut short but by its own [`LISTENER_CONNECT_TIMEOUT`].
pub(crate) async fn reconnect<T, E, F, Fut>(mut connect: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        if let Ok(Ok(connected)) = tokio::time::timeout(LISTENER_CONNECT_TIMEOUT, connect()).await {
            return connected;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}
