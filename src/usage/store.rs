//! [`StoreUsage`]: each key's request count and last use, batched for the key store.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use foldhash::fast::RandomState;

use super::flusher::{Flush, Flusher};
use super::{Outcome, UsageEvent, UsageSink};
use crate::clock::unix_seconds;
use crate::store::{KeyStoreAdmin, StoreError, UsageUpdate};

/// Collects each key's requests and last use, for [`flush`](StoreUsage::flush) to write to the
/// store in one batch (`last_used_at` and `requests` of [`KeyRecord`](crate::store::KeyRecord)), off the request path.
///
/// Flush it every few seconds, off the request path, and once more at shutdown:
///
/// ```no_run
/// # async fn run(store: tower_api_key::MemoryStore) -> Result<(), tower_api_key::store::StoreError> {
/// use std::{sync::Arc, time::Duration};
/// use tower_api_key::usage::StoreUsage;
///
/// let pending = Arc::new(StoreUsage::new());
/// // ApiKeyLayer::builder(...).usage_sink(pending.clone())
/// let flusher = pending.spawn_flusher(store, Duration::from_secs(10)); // counts stay pending if the store fails
/// // Serve until shutdown, then:
/// flusher.stop().await?;
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct StoreUsage {
    pending: DashMap<Box<str>, Pending, RandomState>,
}

#[derive(Default)]
struct Pending {
    requests: AtomicU64,
    last_used: AtomicU64,
}

impl fmt::Debug for StoreUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreUsage")
            .field("keys", &self.pending.len())
            .finish()
    }
}

impl StoreUsage {
    /// Nothing pending.
    pub fn new() -> Self {
        StoreUsage::default()
    }

    /// Writes what is pending to `store` in one batch; returns how many keys it updated. On an
    /// error, or if the flush is cancelled (a timeout around it), the counts stay pending for
    /// the next flush.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn flush<A: KeyStoreAdmin + ?Sized>(&self, store: &A) -> Result<usize, StoreError> {
        let mut unwritten = Unwritten {
            usage: self,
            batch: self
                .pending
                .iter()
                .filter_map(|entry| {
                    let requests = entry.requests.swap(0, Ordering::AcqRel);
                    (requests > 0).then(|| UsageUpdate {
                        id: entry.key().to_string(),
                        requests,
                        last_used_at: std::time::UNIX_EPOCH
                            + Duration::from_secs(entry.last_used.load(Ordering::Relaxed)),
                    })
                })
                .collect(),
        };
        if unwritten.batch.is_empty() {
            return Ok(0);
        }
        store.record_usage(&unwritten.batch).await?;
        let written = unwritten.batch.len();
        unwritten.batch.clear();
        Ok(written)
    }

    /// Flushes to `store` every `period` on a task of its own, and once more when stopped
    /// ([`Flusher::stop`], at shutdown); a failed flush is retried at the next period.
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    ///
    /// # Examples
    /// See [`Flusher`].
    pub fn spawn_flusher<A: KeyStoreAdmin>(
        self: &Arc<Self>,
        store: A,
        period: Duration,
    ) -> Flusher {
        Flusher::spawn(
            FlushTo {
                usage: Arc::clone(self),
                store,
            },
            period,
        )
    }
}

/// The counts a flush took to write: added back when dropped before the write succeeded (on an
/// error, or when the flush is cancelled), so the next flush writes them.
struct Unwritten<'a> {
    usage: &'a StoreUsage,
    batch: Vec<UsageUpdate>,
}

impl Drop for Unwritten<'_> {
    fn drop(&mut self) {
        for update in &self.batch {
            if let Some(entry) = self.usage.pending.get(update.id.as_str()) {
                entry.requests.fetch_add(update.requests, Ordering::AcqRel);
            }
        }
    }
}

/// A [`Flusher`]'s job: `usage` to `store`.
struct FlushTo<A> {
    usage: Arc<StoreUsage>,
    store: A,
}

impl<A: KeyStoreAdmin> Flush for FlushTo<A> {
    async fn flush(&self) -> Result<usize, StoreError> {
        self.usage.flush(&self.store).await
    }
}

impl UsageSink for StoreUsage {
    fn record(&self, event: &UsageEvent<'_>) {
        let (Some(id), Outcome::Ok) = (event.key_id, event.outcome) else {
            return;
        };
        let count = |pending: &Pending| {
            pending.requests.fetch_add(1, Ordering::AcqRel);
            pending
                .last_used
                .fetch_max(unix_seconds(event.at), Ordering::Relaxed);
        };
        match self.pending.get(id) {
            Some(pending) => count(&pending),
            None => count(&self.pending.entry(id.into()).or_default()),
        }
    }

    /// Its [`flush`](StoreUsage::flush) writes each key's last use.
    fn records_last_use(&self) -> bool {
        true
    }
}
