//! Usage analytics across replicas, run on every store: two replicas (each its own layer,
//! analytics and HTTP server on 127.0.0.1) flush to one store, and each reports the combined
//! totals; a flush that fails, or whose acknowledgement is lost, loses and doubles nothing.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tower_api_key::usage::{Analytics, Resolution, Subject};
use tower_api_key::{
    async_trait,
    clock::ManualClock,
    store::{KeyStoreAdmin, StoreError, UsageArchive, UsageRange, UsageRow},
    ApiKeyLayer, NewKey,
};

use crate::common::{api_key, items, serve, HttpClient};

/// A store whose usage writes work, fail, or are made and then reported failed (a lost
/// acknowledgement), on demand.
#[derive(Clone)]
pub struct Flaky<S> {
    store: S,
    mode: Arc<AtomicU8>,
}

const WORKS: u8 = 0;
const DOWN: u8 = 1;
const ACK_LOST: u8 = 2;

impl<S> Flaky<S> {
    pub fn new(store: S) -> Self {
        Flaky {
            store,
            mode: Arc::new(AtomicU8::new(WORKS)),
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

#[async_trait]
impl<S: UsageArchive> UsageArchive for Flaky<S> {
    async fn write_usage(
        &self,
        rows: &[UsageRow],
        expire: &[(u32, u64)],
    ) -> Result<(), StoreError> {
        match self.mode.load(Ordering::SeqCst) {
            DOWN => Err(StoreError::unavailable("down")),
            ACK_LOST => {
                self.store.write_usage(rows, expire).await?;
                Err(StoreError::unavailable("written, but the answer was lost"))
            }
            _ => self.store.write_usage(rows, expire).await,
        }
    }

    async fn read_usage(&self, range: &UsageRange<'_>) -> Result<Vec<UsageRow>, StoreError> {
        self.store.read_usage(range).await
    }
}

/// One replica: its layer on `store`, its analytics, its server.
struct Replica<S> {
    analytics: Analytics,
    archive: Flaky<S>,
    client: HttpClient,
}

impl<S: KeyStoreAdmin + UsageArchive + Clone> Replica<S> {
    async fn new(store: S, prefix: &str) -> (Self, ApiKeyLayer) {
        Replica::with_clock(store, prefix, None).await
    }

    /// As [`new`](Self::new), its layer on `clock` if given.
    async fn with_clock(store: S, prefix: &str, clock: Option<ManualClock>) -> (Self, ApiKeyLayer) {
        let analytics = Analytics::new();
        let mut layer = ApiKeyLayer::builder(prefix, store.clone()).usage_sink(analytics.clone());
        if let Some(clock) = clock {
            layer = layer.clock(clock);
        }
        let layer = layer.build().unwrap();
        let app = items().layer(layer.clone());
        let replica = Replica {
            analytics,
            archive: Flaky::new(store),
            client: HttpClient::new(serve(app).await),
        };
        (replica, layer)
    }

    /// `n` requests with `key` (a header value, or none).
    async fn send(&self, key: Option<&str>, n: usize, status: u16) {
        for i in 0..n {
            let headers: Vec<_> = key.map(|key| ("authorization", key)).into_iter().collect();
            let reply = self.client.get(&format!("/items/{i}"), &headers).await;
            assert_eq!(reply.status, status);
        }
    }

    async fn flush(&self) -> Result<usize, StoreError> {
        self.analytics.flush(&self.archive).await
    }

    /// Requests of `subject` across replicas, in the last hour (and the next minute) at
    /// `resolution`.
    async fn total(&self, subject: Subject<'_>, resolution: Resolution) -> u64 {
        let report = self
            .analytics
            .usage_across(&self.archive, subject, last_hour(), resolution)
            .await
            .unwrap();
        assert_eq!(
            report.series.iter().map(|p| p.requests).sum::<u64>(),
            report.totals.requests
        );
        report.totals.requests
    }

    /// Asserts the requests this replica reports of each of `keys` (id, requests) across
    /// replicas, read all at once, at every resolution.
    async fn assert_keys(&self, keys: &[(&str, u64)]) {
        let ids: Vec<&str> = keys.iter().map(|(id, _)| *id).collect();
        for resolution in [Resolution::Minute, Resolution::Hour, Resolution::Day] {
            let reports = self
                .analytics
                .usage_across_keys(&self.archive, &ids, last_hour(), resolution)
                .await
                .unwrap();
            let got: Vec<(&str, u64)> = (reports.iter())
                .map(|r| (r.id.as_deref().unwrap(), r.totals.requests))
                .collect();
            assert_eq!(got, keys, "{resolution:?}");
        }
    }

    /// Asserts what this replica reports of the whole service, at every resolution.
    async fn assert_totals(&self, all: u64, key: (&str, u64), owner: (&str, u64)) {
        for resolution in [Resolution::Minute, Resolution::Hour, Resolution::Day] {
            assert_eq!(
                self.total(Subject::All, resolution).await,
                all,
                "{resolution:?}"
            );
            assert_eq!(self.total(Subject::Key(key.0), resolution).await, key.1);
            assert_eq!(
                self.total(Subject::Owner(owner.0), resolution).await,
                owner.1
            );
        }
    }
}

/// The last hour and the next minute.
fn last_hour() -> Range<SystemTime> {
    let now = SystemTime::now();
    now - Duration::from_secs(3_600)..now + Duration::from_secs(60)
}

/// Two replicas on `a` and `b` (two handles on one store) report the combined totals; failed
/// and half-failed flushes lose and double nothing. `prefix` keeps runs apart on a shared
/// server.
pub async fn two_replicas_report_the_combined_totals<S>(a: S, b: S, prefix: &str)
where
    S: KeyStoreAdmin + UsageArchive + Clone,
{
    let (one, layer) = Replica::new(a.clone(), prefix).await;
    let (two, _) = Replica::new(b, prefix).await;
    let mut headers = Vec::new();
    for owner in ["acme", "globex"] {
        let created = NewKey::new("usage")
            .owner(owner)
            .generate(layer.format())
            .unwrap();
        a.create(created.record.clone()).await.unwrap();
        headers.push((
            created.record.id.clone(),
            api_key(created.key.expose_secret()),
        ));
    }
    let (acme_id, acme) = &headers[0];
    let (globex_id, globex) = &headers[1];

    one.send(Some(acme), 6, 200).await;
    one.send(None, 2, 401).await;
    two.send(Some(acme), 4, 200).await;
    two.send(Some(globex), 3, 200).await;
    two.send(None, 1, 401).await;
    assert!(one.flush().await.unwrap() > 0);
    assert!(two.flush().await.unwrap() > 0);
    for replica in [&one, &two] {
        replica.assert_totals(16, (acme_id, 10), ("acme", 10)).await;
        let keys = [(globex_id.as_str(), 3), ("unused", 0), (acme_id, 10)];
        replica.assert_keys(&keys).await;
    }
    assert_eq!(
        one.flush().await.unwrap(),
        0,
        "nothing changed, nothing written"
    );

    // The store is down for one flush: the counts stay pending, and more come.
    one.archive.set(DOWN);
    one.send(Some(acme), 5, 200).await;
    assert!(one.flush().await.is_err());
    two.assert_totals(16, (acme_id, 10), ("acme", 10)).await;
    // The rows are written but the answer is lost: still pending (nothing came since the
    // failed flush), written again next time, counted once.
    one.archive.set(ACK_LOST);
    assert!(one.flush().await.is_err());
    two.assert_totals(21, (acme_id, 15), ("acme", 15)).await;
    one.archive.set(WORKS);
    one.send(Some(acme), 1, 200).await;
    assert!(one.flush().await.unwrap() > 0);
    two.send(Some(globex), 2, 200).await;
    assert!(two.flush().await.unwrap() > 0);
    for replica in [&one, &two] {
        replica.assert_totals(24, (acme_id, 16), ("acme", 16)).await;
        replica
            .assert_keys(&[(acme_id, 16), (globex_id, 5), (acme_id, 16)])
            .await;
        replica.assert_keys(&[]).await;
    }

    // The store itself narrows a read to the keys asked for, and to any other filter given.
    let secs = |at: SystemTime| at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let range = last_hour();
    let minutes = UsageRange::new(60, secs(range.start), secs(range.end));
    let (acme_id, globex_id) = (acme_id.as_str(), globex_id.as_str());
    let both = [acme_id, globex_id];
    for (range, want) in [
        (minutes.keys(&both[..1]), &both[..1]),
        (minutes.keys(&both), &both[..]),
        (minutes.keys(&both).owner("globex"), &both[1..]),
        (minutes.keys(&both).key(globex_id), &both[1..]),
        (minutes.keys(&[]), &[]),
    ] {
        let rows = a.read_usage(&range).await.unwrap();
        let keys: BTreeSet<&str> = rows.iter().map(|row| row.key.as_str()).collect();
        assert_eq!(keys, want.iter().copied().collect(), "{range:?}");
    }
}

/// A replica keeps in memory what is not yet in the store and the last hour of the rest:
/// buckets written and over for an hour leave memory, yet count in every replica's reports,
/// this one's included; a late request for one of them (begun then, recorded now) is added to
/// the bucket's row, not written over it, even when the write's answer is lost; and one for a
/// minute of the open minute's hour leaves the open minute in the hour's row. A key idle since
/// a day that is over is forgotten, still counted, and a late request for it is added to its
/// rows.
pub async fn flushed_buckets_leave_memory_and_still_count<S>(a: S, b: S, prefix: &str)
where
    S: KeyStoreAdmin + UsageArchive + Clone,
{
    // 2026-11-23 12:00:00 UTC: a minute and an hour start here.
    let noon = SystemTime::UNIX_EPOCH + Duration::from_secs(20_780 * 86_400 + 12 * 3_600);
    let at = |secs: u64| noon + Duration::from_secs(secs);
    let clock = ManualClock::new(at(0));
    let (one, layer) = Replica::with_clock(a.clone(), prefix, Some(clock.clone())).await;
    let (two, _) = Replica::new(b, prefix).await;
    let created = NewKey::new("usage").generate(layer.format()).unwrap();
    a.create(created.record.clone()).await.unwrap();
    let (id, key) = (&*created.record.id, api_key(created.key.expose_secret()));
    let afternoon = at(0)..at(3 * 3_600);
    let report = |replica: &Replica<S>, resolution: Resolution| {
        let (analytics, archive) = (replica.analytics.clone(), replica.archive.clone());
        let range = afternoon.clone();
        async move {
            let report = analytics
                .usage_across(&archive, Subject::Key(id), range, resolution)
                .await
                .unwrap();
            let minutes = |start: u64| {
                let at = |p: &&tower_api_key::usage::Point| p.start == start;
                report.series.iter().find(at).map_or(0, |p| p.requests)
            };
            let noon = noon
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            (report.totals.requests, minutes(noon))
        }
    };

    one.send(Some(&key), 3, 200).await;
    assert!(one.flush().await.unwrap() > 0);
    clock.set(at(2 * 3_600 + 60)); // 14:01
    one.send(Some(&key), 2, 200).await;
    let held = one.analytics.buckets();
    assert!(one.flush().await.unwrap() > 0);
    // 12:00 and its hour are written and over for more than an hour: they leave memory.
    assert_eq!(one.analytics.buckets(), held - 2);
    let local = one
        .analytics
        .usage(Subject::Key(id), afternoon.clone(), Resolution::Minute);
    assert_eq!(local.totals.requests, 2, "memory alone: 14:01 only");
    for replica in [&one, &two] {
        assert_eq!(report(replica, Resolution::Minute).await, (5, 3));
        assert_eq!(report(replica, Resolution::Hour).await, (5, 3));
        assert_eq!(report(replica, Resolution::Day).await.0, 5);
    }

    // A request that began at 12:00 is recorded now.
    clock.set(at(30));
    one.send(Some(&key), 1, 200).await;
    clock.set(at(2 * 3_600 + 60));
    assert_eq!(
        report(&one, Resolution::Minute).await,
        (6, 4),
        "its row and memory"
    );
    assert_eq!(
        report(&two, Resolution::Minute).await,
        (5, 3),
        "not flushed yet"
    );
    // Its flush writes the row whole (the row's 3 and the late 1), once, though the first
    // write's answer is lost.
    one.archive.set(ACK_LOST);
    assert!(one.flush().await.is_err());
    one.archive.set(WORKS);
    assert!(one.flush().await.unwrap() > 0);
    for replica in [&one, &two] {
        assert_eq!(report(replica, Resolution::Minute).await, (6, 4));
        assert_eq!(report(replica, Resolution::Hour).await, (6, 4));
        assert_eq!(report(replica, Resolution::Day).await.0, 6);
    }
    assert_eq!(one.analytics.buckets(), held - 2, "left memory again");

    // A request begun at 14:00, recorded now: the rows of its hour and day, written again,
    // still carry the open minute, 14:01.
    clock.set(at(2 * 3_600));
    one.send(Some(&key), 1, 200).await;
    clock.set(at(2 * 3_600 + 60));
    assert!(one.flush().await.unwrap() > 0);
    for replica in [&one, &two] {
        assert_eq!(report(replica, Resolution::Minute).await.0, 7);
        assert_eq!(report(replica, Resolution::Hour).await.0, 7);
        assert_eq!(report(replica, Resolution::Day).await.0, 7);
    }

    // 02:00 the next day (a request with no key moves time on): the key, idle since a day
    // that is over, is forgotten; its usage is the store's.
    clock.set(at(14 * 3_600));
    one.send(None, 1, 401).await;
    assert_eq!(one.analytics.keys(), 1);
    assert!(one.flush().await.unwrap() > 0);
    assert_eq!(one.analytics.keys(), 0, "forgotten");
    for replica in [&one, &two] {
        assert_eq!(report(replica, Resolution::Minute).await, (7, 4));
        assert_eq!(report(replica, Resolution::Day).await.0, 7);
    }
    // A request begun at 12:00 the day before, recorded now, makes it again: added to the
    // rows of its minute, hour and day, not written over them, though the answer is lost.
    clock.set(at(30));
    one.send(Some(&key), 1, 200).await;
    clock.set(at(14 * 3_600));
    assert_eq!(one.analytics.keys(), 1);
    assert_eq!(report(&one, Resolution::Minute).await, (8, 5));
    one.archive.set(ACK_LOST);
    assert!(one.flush().await.is_err());
    one.archive.set(WORKS);
    assert!(one.flush().await.unwrap() > 0);
    for replica in [&one, &two] {
        assert_eq!(report(replica, Resolution::Minute).await, (8, 5));
        assert_eq!(report(replica, Resolution::Hour).await, (8, 5));
        assert_eq!(report(replica, Resolution::Day).await.0, 8);
    }
    // Idle again, a day later: forgotten again, still counted.
    clock.set(at(38 * 3_600));
    one.send(None, 1, 401).await;
    assert!(one.flush().await.unwrap() > 0);
    assert_eq!(one.analytics.keys(), 0, "forgotten again");
    for replica in [&one, &two] {
        assert_eq!(report(replica, Resolution::Hour).await, (8, 5));
        assert_eq!(report(replica, Resolution::Day).await.0, 8);
    }
}
