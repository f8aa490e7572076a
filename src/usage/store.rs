//! [`StoreUsage`]: each key's request count and last use, batched for the key store.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use foldhash::fast::RandomState;

use super::{Outcome, UsageEvent, UsageSink};
use crate::clock::unix_seconds;
use crate::store::{KeyStoreAdmin, StoreError, UsageUpdate};

/// Collects each key's requests and last use, for [`flush`](StoreUsage::flush) to write to the
/// store in one batch (`last_used_at` and `requests` of [`KeyRecord`](crate::store::KeyRecord)), off the request path.
///
/// Flush it every few seconds from a task of your own:
///
/// ```no_run
/// # async fn run(store: tower_api_key::MemoryStore) {
/// use std::{sync::Arc, time::Duration};
/// use tower_api_key::usage::StoreUsage;
///
/// let pending = Arc::new(StoreUsage::new());
/// // ApiKeyLayer::builder(...).usage_sink(pending.clone())
/// tokio::spawn(async move {
///     loop {
///         tokio::time::sleep(Duration::from_secs(10)).await;
///         let _ = pending.flush(&store).await; // counts stay pending if the store fails
///     }
/// });
/// # }
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
    /// error the counts stay pending for the next flush.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn flush<A: KeyStoreAdmin + ?Sized>(&self, store: &A) -> Result<usize, StoreError> {
        let batch: Vec<UsageUpdate> = self
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
            .collect();
        if batch.is_empty() {
            return Ok(0);
        }
        match store.record_usage(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(error) => {
                for update in &batch {
                    if let Some(entry) = self.pending.get(update.id.as_str()) {
                        entry.requests.fetch_add(update.requests, Ordering::AcqRel);
                    }
                }
                Err(error)
            }
        }
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
