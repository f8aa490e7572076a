//! [`Flusher`]: a task that writes pending usage to the store every period, and once more when
//! stopped.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::store::StoreError;
use crate::trace;

/// What a [`Flusher`] runs: one flush of pending usage to its store.
pub(crate) trait Flush: Send + Sync + 'static {
    /// Writes what is pending; on an error (or if cancelled) it stays pending.
    fn flush(&self) -> impl Future<Output = Result<usize, StoreError>> + Send;
}

/// A task that flushes pending usage to the store every period, made by
/// [`Analytics::spawn_flusher`](super::Analytics::spawn_flusher) or
/// [`StoreUsage::spawn_flusher`](super::StoreUsage::spawn_flusher).
///
/// A failed flush is logged (`tracing`, as `usage_flush_failed`) and retried at the next period;
/// what it tried to write stays pending. At shutdown, once the server has answered its last
/// request, [`stop`](Flusher::stop) it: it flushes one last time (tried again for about a
/// second and a half if the store fails), so a restart (a deploy) loses none of what the
/// process counted. Dropping a `Flusher` leaves its task flushing until the runtime shuts down,
/// and whatever it counted since its last flush is then lost.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use tower_api_key::usage::StoreUsage;
/// use tower_api_key::{ApiKeyLayer, MemoryStore};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let last_use = Arc::new(StoreUsage::new());
/// let layer = ApiKeyLayer::builder("mesh", store.clone()).usage_sink(last_use.clone()).build()?;
/// let flusher = last_use.spawn_flusher(store.clone(), Duration::from_secs(10));
/// // axum::serve(listener, app).with_graceful_shutdown(signal).await?;
/// let written = flusher.stop().await?; // how many keys the last flush updated
/// assert_eq!(written, 0); // no request was served here
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct Flusher {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<usize, StoreError>>,
}

impl fmt::Debug for Flusher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flusher")
            .field("finished", &self.task.is_finished())
            .finish_non_exhaustive()
    }
}

impl Flusher {
    /// Runs `job` every `period` on a task of its own. Needs a Tokio runtime.
    pub(crate) fn spawn(job: impl Flush, period: Duration) -> Flusher {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                match tokio::time::timeout(period, &mut stopped).await {
                    // The period is over.
                    Err(_) => flush_logged(&job).await,
                    // Stopped: one last flush, its result the caller's.
                    Ok(Ok(())) => return last_flush(&job).await,
                    // The `Flusher` was dropped: flush every period from now on.
                    Ok(Err(_)) => loop {
                        tokio::time::sleep(period).await;
                        flush_logged(&job).await;
                    },
                }
            }
        });
        Flusher { stop, task }
    }

    /// Stops the periodic flushes and flushes once more: what was counted before this call is
    /// written to the store when it returns `Ok` (how many rows or keys the last flush wrote).
    /// A flush already running finishes first. A last flush that fails (a store failing over
    /// while the process stops) is logged and tried again after 0.1, 0.3 and 0.9 seconds.
    ///
    /// # Errors
    /// When the last flush fails four times: what it tried to write is still pending, for a
    /// flush of your own (`Analytics::flush`, `StoreUsage::flush`) to retry.
    ///
    /// # Panics
    /// If a flush panicked, with its panic.
    pub async fn stop(self) -> Result<usize, StoreError> {
        // Fails only if the task is over, which the join below reports.
        let _ = self.stop.send(());
        match self.task.await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // The runtime is shutting down and cancelled the task.
            Err(error) => Err(StoreError::unavailable(error)),
        }
    }
}

/// How long the last flush waits before each retry after a failure.
const LAST_FLUSH_RETRIES: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(900),
];

/// The last flush, tried again a few times if it fails: the process is about to stop, and no
/// later period would retry it.
async fn last_flush(job: &impl Flush) -> Result<usize, StoreError> {
    let mut result = job.flush().await;
    for wait in LAST_FLUSH_RETRIES {
        let Err(error) = &result else {
            break;
        };
        trace::usage_flush_failed(error);
        tokio::time::sleep(wait).await;
        result = job.flush().await;
    }
    result
}

async fn flush_logged(job: &impl Flush) {
    if let Err(error) = job.flush().await {
        trace::usage_flush_failed(&error);
    }
}
