//! Usage analytics over real HTTP on 127.0.0.1: a mix of keys, endpoints, statuses, countries
//! (from a trusted header) and rejections, and what `Analytics::usage` then reports; replicas
//! flushing to one store; flushes held open, failing and racing requests.

#[cfg(not(feature = "analytics"))]
#[test]
#[ignore = "usage analytics need the `analytics` feature (on by default)"]
fn analytics_suite_needs_its_feature() {}

#[cfg(feature = "analytics")]
mod common;
#[cfg(all(feature = "analytics", feature = "axum", feature = "geoip"))]
#[path = "common/mmdb.rs"]
mod mmdb;
#[cfg(feature = "analytics")]
#[path = "common/usage_replicas.rs"]
mod usage_replicas;

#[cfg(feature = "analytics")]
mod analytics {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use axum::extract::Path;
    use axum::routing::get;
    use http::StatusCode;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use tower::{Layer, ServiceExt};
    use tower_api_key::store::{StoreError, UsageArchive, UsageRange, UsageRow};
    use tower_api_key::usage::{
        Analytics, AnalyticsConfig, CountryHeader, Resolution, Subject, UsageReport,
    };
    use tower_api_key::{
        clock::ManualClock, limit::Limits, manage::CreatedKey, store::KeyStoreAdmin, ApiKeyLayer,
        MemoryStore, NewKey, RequireScopeLayer,
    };

    use super::common::{api_key, items, name_endpoints, serve, xorshift, HttpClient};
    use super::usage_replicas;

    /// 2026-11-23 12:00:00 UTC: a minute and an hour start here.
    const START: u64 = 20_780 * 86_400 + 12 * 3_600;

    struct Fixture {
        client: HttpClient,
        store: MemoryStore,
        clock: ManualClock,
        analytics: Analytics,
        layer: ApiKeyLayer,
    }

    impl Fixture {
        async fn new() -> Self {
            let store = MemoryStore::new();
            let clock = ManualClock::new(at(0));
            let analytics = Analytics::new();
            let layer = ApiKeyLayer::builder("mesh", store.clone())
                .clock(clock.clone())
                .usage_sink(analytics.clone())
                .country_resolver(CountryHeader::new("cf-ipcountry").unwrap())
                .build()
                .unwrap();
            let app = items()
                .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
                .route(
                    "/slow/{ms}",
                    get(|Path(ms): Path<u64>| async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }),
                )
                .route(
                    "/recommendations",
                    get(|| async { "[]" }).route_layer(RequireScopeLayer::all(["read"])),
                )
                .layer(layer.clone());
            Fixture {
                client: HttpClient::new(serve(name_endpoints(app)).await),
                store,
                clock,
                analytics,
                layer,
            }
        }

        async fn key(&self, owner: &str, scopes: &[&str]) -> CreatedKey {
            let created = NewKey::new("analytics")
                .owner(owner)
                .scopes(scopes.iter().copied())
                .generate(self.layer.format())
                .unwrap();
            self.store.create(created.record.clone()).await.unwrap();
            created
        }

        /// `GET path` with `key` (a header value, or none) from `country` (or none).
        async fn get(&self, key: Option<&str>, path: &str, country: Option<&str>) -> StatusCode {
            let mut headers = Vec::new();
            if let Some(key) = key {
                headers.push(("authorization", key));
            }
            if let Some(country) = country {
                headers.push(("cf-ipcountry", country));
            }
            self.client.get(path, &headers).await.status
        }

        /// The usage of `subject` over 60 buckets of `resolution` from the start.
        fn report(&self, subject: Subject<'_>, resolution: Resolution) -> UsageReport {
            let range = at(0)..at(60 * resolution.seconds());
            self.analytics.usage(subject, range, resolution)
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(START + secs)
    }

    fn header(key: &CreatedKey) -> String {
        api_key(key.key.expose_secret())
    }

    #[tokio::test]
    async fn a_mixed_load_gives_exact_counts_per_bucket_endpoint_status_and_country() {
        let f = Fixture::new().await;
        let reader_key = f.key("acme", &["read"]).await;
        let reader = header(&reader_key);
        let writer = header(&f.key("acme", &[]).await);
        let other = header(&f.key("globex", &["read"]).await);

        // Minute 0.
        for id in 1..=5 {
            let path = format!("/items/{id}");
            assert_eq!(f.get(Some(&reader), &path, Some("de")).await, 200);
        }
        for _ in 0..3 {
            assert_eq!(f.get(Some(&reader), "/items/x", Some("FR")).await, 200);
        }
        for _ in 0..2 {
            assert_eq!(f.get(Some(&reader), "/fail", Some("DE")).await, 500);
        }
        for _ in 0..4 {
            assert_eq!(f.get(Some(&writer), "/recommendations", None).await, 403);
        }
        assert_eq!(f.get(Some(&other), "/items/1", Some("US")).await, 200);
        let made_up = api_key("mesh_live_notakey_0000000000000000000000000000000000000000");
        assert_eq!(f.get(Some(&made_up), "/items/1", None).await, 401);
        assert_eq!(f.get(None, "/items/1", None).await, 401);
        // Minute 1.
        f.clock.advance(Duration::from_secs(61));
        assert_eq!(f.get(Some(&reader), "/items/9", Some("DE")).await, 200);

        let key = f.report(Subject::Key(&reader_key.record.id), Resolution::Minute);
        let first = &key.series[0];
        assert_eq!(first.start, START);
        assert_eq!(first.requests, 10);
        assert_eq!(first.outcomes["ok"], 10);
        assert_eq!(first.status_classes["2xx"], 8);
        assert_eq!(first.status_classes["5xx"], 2);
        assert_eq!(first.statuses[&500], 2);
        assert_eq!(first.errors, 2);
        assert!((first.error_rate - 0.2).abs() < 1e-9);
        assert_eq!(first.latency.unwrap().count, 10);
        assert_eq!(key.series[1].requests, 1);
        assert!(key.series[2..].iter().all(|point| point.requests == 0));
        assert_eq!(key.series.len(), 60);
        let endpoints: Vec<_> = key
            .top_endpoints
            .iter()
            .map(|r| (r.name.as_str(), r.requests))
            .collect();
        assert_eq!(endpoints, [("/items/{id}", 9), ("/fail", 2)]);
        let countries: Vec<_> = key
            .top_countries
            .iter()
            .map(|r| (r.name.as_str(), r.requests))
            .collect();
        assert_eq!(countries, [("DE", 8), ("FR", 3)]);

        let owner = f.report(Subject::Owner("acme"), Resolution::Hour);
        assert_eq!(owner.totals.requests, 15);
        assert_eq!(owner.totals.outcomes["INSUFFICIENT_PERMISSIONS"], 4);
        assert_eq!(owner.totals.status_classes["4xx"], 4);
        assert_eq!(
            owner.series[0].requests, 15,
            "the open minute is in its hour"
        );

        let all = f.report(Subject::All, Resolution::Day);
        assert_eq!(all.series[0].requests, 18);
        assert_eq!(all.totals.outcomes["INVALID_API_KEY"], 1);
        assert_eq!(all.totals.outcomes["MISSING_API_KEY"], 1);
        assert_eq!(all.totals.errors, 2 + 4 + 2);
        let json = serde_json::to_value(&all).unwrap();
        assert_eq!(json["totals"]["requests"], 18);
        assert_eq!(json["resolution"], "day");
        assert_eq!(json["top_countries"][0]["name"], "DE");
    }

    #[tokio::test]
    async fn a_keys_limit_standing_is_reported_without_counting_a_request() {
        let f = Fixture::new().await;
        let mut created = NewKey::new("limited")
            .owner("acme")
            .scopes(["read"])
            .generate(f.layer.format())
            .unwrap();
        created.record.limits = Some(Limits::per_minute(10));
        f.store.create(created.record.clone()).await.unwrap();
        f.store
            .set_owner_limits("acme", Some(&Limits::UNLIMITED.daily(100)))
            .await
            .unwrap();
        let key = header(&created);
        for _ in 0..3 {
            assert_eq!(f.get(Some(&key), "/items/1", None).await, 200);
        }
        let handle = f.layer.handle();
        for _ in 0..2 {
            let standing = handle.standing(&created.record.id).await.unwrap().unwrap();
            let report = f
                .report(Subject::Key(&created.record.id), Resolution::Minute)
                .with_limits(&standing);
            let limits: Vec<_> = (report.limits.iter())
                .map(|s| (s.policy.as_str(), s.quota, s.remaining))
                .collect();
            assert_eq!(limits, [("minute", 10, 7), ("owner.day", 100, 97)]);
            assert_eq!(report.totals.requests, 3);
        }
        assert_eq!(handle.standing("nope").await.unwrap(), None);
    }

    #[tokio::test]
    async fn latency_percentiles_are_within_the_sketch_error_of_the_service_time() {
        let f = Fixture::new().await;
        let key = header(&f.key("acme", &["read"]).await);
        let slept: Vec<u64> = (5..=100).step_by(5).collect();
        for ms in &slept {
            let path = format!("/slow/{ms}");
            assert_eq!(f.get(Some(&key), &path, None).await, 200);
        }
        let report = f.report(Subject::All, Resolution::Minute);
        let latency = report.totals.latency.unwrap();
        assert_eq!(latency.count, 20);
        // The percentile q is the value of rank ⌊q·(n−1)⌋ (DDSketch's definition). The service
        // slept at least that long; the layer measures a little more (scheduling), and the
        // sketch is within 1 %.
        let expected = |q: f64| slept[(q * (slept.len() - 1) as f64) as usize] as f64;
        let near = |measured: f64, q: f64| {
            measured >= expected(q) * 0.99 && measured <= expected(q) * 1.01 + 40.0
        };
        assert!(near(latency.p50_ms, 0.5), "{latency:?}");
        assert!(near(latency.p95_ms, 0.95), "{latency:?}");
        assert!(near(latency.p99_ms, 0.99), "{latency:?}");
        assert_eq!(report.top_endpoints[0].name, "/slow/{ms}");
    }

    #[tokio::test]
    async fn two_replicas_on_one_memory_store_report_the_combined_totals() {
        let store = MemoryStore::new();
        usage_replicas::two_replicas_report_the_combined_totals(store.clone(), store, "mesh").await;
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn two_replicas_on_one_sqlite_file_report_the_combined_totals() {
        let (dir, url) = super::common::temp_db("usage");
        let a = tower_api_key::SqliteStore::connect(&url).await.unwrap();
        let b = tower_api_key::SqliteStore::connect(&url).await.unwrap();
        usage_replicas::two_replicas_report_the_combined_totals(a, b, "mesh").await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn flushed_usage_leaves_memory_and_still_counts_on_a_memory_store() {
        let store = MemoryStore::new();
        usage_replicas::flushed_buckets_leave_memory_and_still_count(store.clone(), store, "mesh")
            .await;
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn flushed_usage_leaves_memory_and_still_counts_on_sqlite() {
        let (dir, url) = super::common::temp_db("flushed");
        let a = tower_api_key::SqliteStore::connect(&url).await.unwrap();
        let b = tower_api_key::SqliteStore::connect(&url).await.unwrap();
        usage_replicas::flushed_buckets_leave_memory_and_still_count(a, b, "mesh").await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    // The connection's address comes from axum's `ConnectInfo`: the `axum` feature.
    #[cfg(all(feature = "geoip", feature = "axum"))]
    #[tokio::test]
    async fn the_country_comes_from_a_maxmind_database_by_the_connection_or_a_trusted_proxy() {
        use std::net::SocketAddr;
        use tower_api_key::network::TrustedProxies;
        use tower_api_key::usage::{Country, CountryResolver, GeoIpCountry};

        let db = super::mmdb::country_database(&[
            ([127, 0, 0, 0], 8, "DE"),
            ([203, 0, 113, 0], 24, "FR"),
        ]);
        let geo = GeoIpCountry::from_bytes(db.clone()).unwrap();
        let country = |ip: &str| geo.country(Some(ip.parse().unwrap()), &http::HeaderMap::new());
        assert_eq!(country("203.0.113.9"), Country::new("FR"));
        assert_eq!(country("127.0.0.1"), Country::new("DE"));
        assert_eq!(country("192.0.2.1"), None);
        assert_eq!(country("2001:db8::1"), None);
        assert_eq!(geo.country(None, &http::HeaderMap::new()), None);
        assert!(GeoIpCountry::from_bytes(b"not a database".to_vec()).is_err());

        // Over HTTP from 127.0.0.1, saying it forwards for 203.0.113.9: believed only when
        // 127.0.0.0/8 is a trusted proxy.
        for (trusted, expected) in [(false, "DE"), (true, "FR")] {
            let store = MemoryStore::new();
            let analytics = Analytics::new();
            let mut builder = ApiKeyLayer::builder("mesh", store.clone())
                .usage_sink(analytics.clone())
                .country_resolver(GeoIpCountry::from_bytes(db.clone()).unwrap());
            if trusted {
                let local = "127.0.0.0/8".parse().unwrap();
                builder = builder.trusted_proxies(TrustedProxies::x_forwarded_for([local]));
            }
            let layer = builder.build().unwrap();
            let app = items().layer(layer.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            let created = NewKey::new("geo").generate(layer.format()).unwrap();
            store.create(created.record.clone()).await.unwrap();
            let key = header(&created);
            let headers = [
                ("authorization", key.as_str()),
                ("x-forwarded-for", "203.0.113.9"),
            ];
            let reply = HttpClient::new(addr).get("/items/1", &headers).await;
            assert_eq!(reply.status, 200);
            let now = SystemTime::now();
            let hour = Duration::from_secs(3_600);
            let report = analytics.usage(Subject::All, now - hour..now + hour, Resolution::Hour);
            let countries: Vec<_> = (report.top_countries.iter())
                .map(|r| (r.name.as_str(), r.requests))
                .collect();
            assert_eq!(countries, [(expected, 1)], "trusted: {trusted}");
        }
    }

    /// A store whose next usage write, or read once it has read, can be held open, and whose
    /// writes fail at random.
    #[derive(Clone, Default)]
    struct Gate {
        store: MemoryStore,
        held: Arc<std::sync::atomic::AtomicBool>,
        read_held: Arc<std::sync::atomic::AtomicBool>,
        entered: Arc<tokio::sync::Notify>,
        release: Arc<tokio::sync::Notify>,
        failing: Arc<std::sync::atomic::AtomicU32>,
        /// How many of the next writes fail, whatever `failing` says.
        fail_next: Arc<std::sync::atomic::AtomicU32>,
    }

    #[tower_api_key::async_trait]
    impl UsageArchive for Gate {
        async fn write_usage(
            &self,
            rows: &[UsageRow],
            expire: &[(u32, u64)],
        ) -> Result<(), StoreError> {
            if self.held.swap(false, Ordering::SeqCst) {
                self.entered.notify_one();
                self.release.notified().await;
            }
            let next = |n: u32| n.checked_sub(1);
            if self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, next)
                .is_ok()
            {
                return Err(StoreError::unavailable("down for a moment"));
            }
            // Fails (before or after writing) when the failure rate, in percent, says so.
            let roll = rand_percent();
            let failing = self.failing.load(Ordering::SeqCst);
            if roll < failing / 2 {
                return Err(StoreError::unavailable("down"));
            }
            self.store.write_usage(rows, expire).await?;
            if roll < failing {
                return Err(StoreError::unavailable("written, answer lost"));
            }
            Ok(())
        }

        async fn read_usage(&self, range: &UsageRange<'_>) -> Result<Vec<UsageRow>, StoreError> {
            let rows = self.store.read_usage(range).await;
            if self.read_held.swap(false, Ordering::SeqCst) {
                self.entered.notify_one();
                self.release.notified().await;
            }
            rows
        }
    }

    /// 0 to 99, from the clock's nanoseconds: enough to vary the failures between runs.
    fn rand_percent() -> u32 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        (nanos.wrapping_mul(2_654_435_761) >> 8) % 100
    }

    /// Requests the store's rows say `key` made, as another replica reads them.
    async fn stored(gate: &Gate) -> u64 {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let reader = Analytics::new();
        let report = reader
            .usage_across(gate, Subject::All, now - day..now + day, Resolution::Day)
            .await
            .unwrap();
        report.totals.requests
    }

    /// Flushes until one succeeds, the failures turned off.
    async fn flush_all(analytics: &Analytics, gate: &Gate) {
        gate.failing.store(0, Ordering::SeqCst);
        analytics.flush(gate).await.unwrap();
    }

    /// A key's requests through a layer recording into `analytics`: each call sends `n`, every
    /// one answered 200.
    async fn traffic(
        gate: &Gate,
        analytics: &Analytics,
    ) -> impl Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        traffic_on(gate, analytics, None).await
    }

    /// As [`traffic`], the layer on `clock` if given.
    async fn traffic_on(
        gate: &Gate,
        analytics: &Analytics,
        clock: Option<ManualClock>,
    ) -> impl Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let mut layer =
            ApiKeyLayer::builder("mesh", gate.store.clone()).usage_sink(analytics.clone());
        if let Some(clock) = clock {
            layer = layer.clock(clock);
        }
        let layer = layer.build().unwrap();
        let created = NewKey::new("stress").generate(layer.format()).unwrap();
        gate.store.create(created.record.clone()).await.unwrap();
        let key = header(&created);
        let service = layer.layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        }));
        move |n: usize| {
            let service = service.clone();
            let key = key.clone();
            Box::pin(async move {
                for _ in 0..n {
                    let request = http::Request::get("/").header("authorization", &key);
                    let response = service.clone().oneshot(request.body(()).unwrap()).await;
                    assert_eq!(response.unwrap().status(), 200);
                }
            })
        }
    }

    /// A flush on a task of its own, once it is inside the store's write, held there until
    /// `gate.release` is notified.
    async fn flush_held_open(
        gate: &Gate,
        analytics: &Analytics,
    ) -> tokio::task::JoinHandle<Result<usize, StoreError>> {
        gate.held.store(true, Ordering::SeqCst);
        let flushing = tokio::spawn({
            let (analytics, gate) = (analytics.clone(), gate.clone());
            async move { analytics.flush(&gate).await }
        });
        gate.entered.notified().await;
        flushing
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_flush_held_open_failing_or_racing_requests_loses_and_doubles_nothing() {
        let gate = Gate::default();
        let analytics = Analytics::new();
        let send = traffic(&gate, &analytics).await;

        // A flush held open inside the store's write while more requests come.
        send(5).await;
        let flushing = flush_held_open(&gate, &analytics).await;
        send(3).await;
        // A second flush waits for the first: it could otherwise write first, then be
        // overwritten by the older copy.
        let second = tokio::spawn({
            let (analytics, gate) = (analytics.clone(), gate.clone());
            async move { analytics.flush(&gate).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.release.notify_one();
        flushing.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(stored(&gate).await, 8);

        // Randomized: four tasks sending, a flusher failing half its writes (before or after
        // writing), until a last flush that works.
        gate.failing.store(50, Ordering::SeqCst);
        let senders: Vec<_> = (0..4).map(|_| tokio::spawn(send(250))).collect();
        let flusher = tokio::spawn({
            let (analytics, gate) = (analytics.clone(), gate.clone());
            async move {
                for _ in 0..40 {
                    let _ = analytics.flush(&gate).await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        for sender in senders {
            sender.await.unwrap();
        }
        flusher.await.unwrap();
        flush_all(&analytics, &gate).await;
        assert_eq!(stored(&gate).await, 8 + 4 * 250);
    }

    /// A flush cancelled while the store writes (a timeout around it, an aborted task) leaves
    /// what it took pending, for the next flush.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_cancelled_inside_the_store_loses_nothing() {
        let gate = Gate::default();
        let analytics = Analytics::new();
        let send = traffic(&gate, &analytics).await;
        send(5).await;
        let flushing = flush_held_open(&gate, &analytics).await;
        flushing.abort();
        assert!(flushing.await.unwrap_err().is_cancelled());
        assert_eq!(stored(&gate).await, 0, "the cancelled flush wrote nothing");
        // No request since: only the cancelled flush's buckets can make the next one write.
        flush_all(&analytics, &gate).await;
        assert_eq!(stored(&gate).await, 5);
    }

    /// A `Flusher` stopped at shutdown flushes once more, whatever its period, and tries again
    /// when the store fails for a moment; one whose last flush keeps failing says so, and what
    /// it tried stays pending.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_flusher_writes_what_was_counted_before_it_stopped() {
        let gate = Gate::default();
        let analytics = Analytics::new();
        let send = traffic(&gate, &analytics).await;
        let hour = Duration::from_secs(3_600);
        let flusher = analytics.spawn_flusher(gate.clone(), hour);
        send(4).await;
        assert_eq!(
            stored(&gate).await,
            0,
            "an hour's period: nothing flushed yet"
        );
        assert!(flusher.stop().await.unwrap() > 0);
        assert_eq!(stored(&gate).await, 4);

        let flusher = analytics.spawn_flusher(gate.clone(), hour);
        send(2).await;
        gate.fail_next.store(3, Ordering::SeqCst);
        assert!(flusher.stop().await.unwrap() > 0, "the fourth try");
        assert_eq!(gate.fail_next.load(Ordering::SeqCst), 0);
        assert_eq!(stored(&gate).await, 6);

        gate.failing.store(100, Ordering::SeqCst);
        let flusher = analytics.spawn_flusher(gate.clone(), hour);
        send(3).await;
        assert!(flusher.stop().await.is_err(), "the last flush failed");
        flush_all(&analytics, &gate).await;
        assert_eq!(stored(&gate).await, 9);
    }

    /// Dropping a `Flusher` does not stop it: it goes on flushing every period.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_flusher_goes_on_flushing() {
        let gate = Gate::default();
        let analytics = Analytics::new();
        let send = traffic(&gate, &analytics).await;
        drop(analytics.spawn_flusher(gate.clone(), Duration::from_millis(20)));
        send(3).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stored(&gate).await < 3 {
            assert!(tokio::time::Instant::now() < deadline, "never flushed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        send(2).await;
        while stored(&gate).await < 5 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "flushed once, then never again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Analytics that drop every bucket written and over: memory holds the least.
    fn dropping_at_once() -> Analytics {
        let mut config = AnalyticsConfig::default();
        config.keep_flushed = Duration::ZERO;
        Analytics::with_config(config)
    }

    /// Requests counted from noon for an hour, across replicas, as `analytics` reports them.
    async fn afternoon(analytics: &Analytics, gate: &Gate, resolution: Resolution) -> u64 {
        let report = analytics
            .usage_across(gate, Subject::All, at(0)..at(3_600), resolution)
            .await
            .unwrap();
        report.totals.requests
    }

    /// A report whose store read is held open while a flush writes buckets and drops them
    /// from memory counts each request once: the flush waits to drop them until it is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_report_held_open_across_a_flush_that_drops_buckets_counts_them_once() {
        let gate = Gate::default();
        let analytics = dropping_at_once();
        let clock = ManualClock::new(at(0));
        let send = traffic_on(&gate, &analytics, Some(clock.clone())).await;
        send(3).await;
        clock.set(at(120));
        send(2).await;

        // The report has read the store (nothing in it yet) and is held there.
        gate.read_held.store(true, Ordering::SeqCst);
        let report = tokio::spawn({
            let (analytics, gate) = (analytics.clone(), gate.clone());
            async move { afternoon(&analytics, &gate, Resolution::Minute).await }
        });
        gate.entered.notified().await;
        let held = analytics.buckets();
        let flush = tokio::spawn({
            let (analytics, gate) = (analytics.clone(), gate.clone());
            async move { analytics.flush(&gate).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(analytics.buckets(), held, "nothing dropped under a report");
        gate.release.notify_one();
        assert_eq!(report.await.unwrap(), 5);
        flush.await.unwrap().unwrap();
        assert!(
            analytics.buckets() < held,
            "dropped once the report was done"
        );
        assert_eq!(afternoon(&analytics, &gate, Resolution::Minute).await, 5);
    }

    /// Requests counted from noon for two days, across replicas, as `analytics` reports them.
    async fn two_days(analytics: &Analytics, gate: &Gate, resolution: Resolution) -> u64 {
        let range = at(0)..at(2 * 86_400);
        let report = analytics.usage_across(gate, Subject::All, range, resolution);
        report.await.unwrap().totals.requests
    }

    /// A report whose store read is held open while a flush forgets a key (idle since a day
    /// that is over) counts the key's requests once: the flush waits to forget it until the
    /// report is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_report_held_open_across_a_flush_that_forgets_a_key_counts_it_once() {
        let gate = Gate::default();
        let analytics = dropping_at_once();
        let clock = ManualClock::new(at(0));
        let idle = traffic_on(&gate, &analytics, Some(clock.clone())).await;
        let busy = traffic_on(&gate, &analytics, Some(clock.clone())).await;
        idle(3).await;
        analytics.flush(&gate).await.unwrap();
        clock.set(at(14 * 3_600)); // 02:00 the next day: the idle key's day is over
        busy(2).await;
        assert_eq!(analytics.keys(), 2);

        gate.read_held.store(true, Ordering::SeqCst);
        let report = tokio::spawn({
            let (analytics, gate) = (analytics.clone(), gate.clone());
            async move { two_days(&analytics, &gate, Resolution::Hour).await }
        });
        gate.entered.notified().await;
        let flush = tokio::spawn({
            let (analytics, gate) = (analytics.clone(), gate.clone());
            async move { analytics.flush(&gate).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(analytics.keys(), 2, "nothing forgotten under a report");
        gate.release.notify_one();
        assert_eq!(report.await.unwrap(), 5);
        flush.await.unwrap().unwrap();
        assert_eq!(analytics.keys(), 1, "forgotten once the report was done");
        for resolution in [Resolution::Hour, Resolution::Day] {
            assert_eq!(two_days(&analytics, &gate, resolution).await, 5);
        }
    }

    /// Randomized, over three days from a midnight: four senders, each with a key for each
    /// day, used that day and by late requests (begun that day, recorded up to a day later),
    /// so keys go idle, are forgotten and made again while a flusher fails a third of its
    /// writes and a reporter reads. Every report counts at least the requests answered before
    /// it began and at most those begun before it ended; the store ends with every request
    /// once; memory ends with the one key in use.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn keys_forgotten_and_made_again_by_late_requests_count_each_request_once() {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        const DAYS: u64 = 3;
        const EACH: u64 = 240;
        let midnight = 12 * 3_600;
        let gate = Gate::default();
        gate.failing.store(30, Ordering::SeqCst);
        let analytics = dropping_at_once();
        let (begun, answered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        // The keys (sender, day) that have had a request answered: each is kept unless
        // forgotten.
        let used = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let mut senders = Vec::new();
        for sender in 0..4u64 {
            let clock = ManualClock::new(at(midnight));
            let mut keys = Vec::new();
            for _ in 0..DAYS {
                keys.push(traffic_on(&gate, &analytics, Some(clock.clone())).await);
            }
            let (begun, answered, used) = (begun.clone(), answered.clone(), used.clone());
            senders.push(tokio::spawn(async move {
                let mut seed = sender * 7_919 + u64::from(rand_percent()) + 1;
                let mut below = |n: u64| xorshift(&mut seed) % n;
                for i in 0..EACH {
                    let now = i * DAYS * 86_400 / EACH + below(600);
                    let secs = if below(4) == 0 {
                        // Late: begun since the day before.
                        let from = (now / 86_400).saturating_sub(1) * 86_400;
                        from + below(now - from + 1)
                    } else {
                        now
                    };
                    clock.set(at(midnight + secs));
                    let day = usize::try_from(secs / 86_400).unwrap();
                    begun.fetch_add(1, Ordering::SeqCst);
                    keys[day](1).await;
                    answered.fetch_add(1, Ordering::SeqCst);
                    used.lock().unwrap().insert((sender, day));
                    // Slow enough for a flush every few requests.
                    if i % 4 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }));
        }
        let done = Arc::new(AtomicBool::new(false));
        let flusher = tokio::spawn({
            let (analytics, gate, done) = (analytics.clone(), gate.clone(), done.clone());
            async move {
                // Whether memory ever held fewer keys than had been used.
                let mut forgot = false;
                while !done.load(Ordering::SeqCst) {
                    let _ = analytics.flush(&gate).await;
                    let used = used.lock().unwrap().len();
                    forgot |= analytics.keys() < used;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                forgot
            }
        });
        let range = at(0)..at(midnight + (DAYS + 1) * 86_400);
        let reporter = tokio::spawn({
            let (analytics, gate, done) = (analytics.clone(), gate.clone(), done.clone());
            let (begun, answered, range) = (begun.clone(), answered.clone(), range.clone());
            async move {
                let mut n = 0;
                while !done.load(Ordering::SeqCst) {
                    let resolution = [Resolution::Hour, Resolution::Day][n % 2];
                    let before = answered.load(Ordering::SeqCst);
                    let report =
                        analytics.usage_across(&gate, Subject::All, range.clone(), resolution);
                    let counted = report.await.unwrap().totals.requests;
                    let after = begun.load(Ordering::SeqCst);
                    assert!(
                        (before..=after).contains(&counted),
                        "report {n}: {counted} counted, {before} answered before, {after} begun after"
                    );
                    n += 1;
                    tokio::task::yield_now().await;
                }
                n
            }
        });
        for sender in senders {
            sender.await.unwrap();
        }
        done.store(true, Ordering::SeqCst);
        assert!(
            flusher.await.unwrap(),
            "no key was forgotten while the senders ran"
        );
        assert!(reporter.await.unwrap() > 0);

        // A day after the last: one key in use, the rest forgotten by one flush.
        let clock = ManualClock::new(at(midnight + (DAYS + 1) * 86_400 + 3_600));
        traffic_on(&gate, &analytics, Some(clock)).await(1).await;
        flush_all(&analytics, &gate).await;
        assert_eq!(analytics.keys(), 1);
        let reader = Analytics::new();
        for resolution in [Resolution::Hour, Resolution::Day] {
            for analytics in [&reader, &analytics] {
                let report = analytics.usage_across(&gate, Subject::All, range.clone(), resolution);
                let counted = report.await.unwrap().totals.requests;
                assert_eq!(counted, 4 * EACH, "{resolution:?}");
            }
        }
    }

    /// A late request's bucket whose row in the store does not read back is written over,
    /// not left to stop every flush.
    #[tokio::test]
    async fn a_corrupt_row_under_a_late_request_is_written_over() {
        let gate = Gate::default();
        let analytics = dropping_at_once();
        let clock = ManualClock::new(at(0));
        let send = traffic_on(&gate, &analytics, Some(clock.clone())).await;
        send(3).await;
        clock.set(at(120));
        send(2).await;
        analytics.flush(&gate).await.unwrap();
        let noon = at(0).duration_since(UNIX_EPOCH).unwrap().as_secs();
        let minute = UsageRange::new(60, noon, noon + 60);
        let rows = gate.store.read_usage(&minute).await.unwrap();
        let [row] = &rows[..] else {
            panic!("one row of noon: {rows:?}")
        };
        let corrupt = UsageRow::new(analytics.replica(), &row.key, None, 60, noon, "{");
        gate.store.write_usage(&[corrupt], &[]).await.unwrap();
        let range = at(0)..at(3_600);
        let report = analytics.usage_across(&gate, Subject::All, range, Resolution::Minute);
        assert!(report.await.is_err(), "a report says the row is corrupt");

        clock.set(at(30));
        send(1).await;
        analytics.flush(&gate).await.unwrap();
        let minutes = afternoon(&analytics, &gate, Resolution::Minute).await;
        assert_eq!(minutes, 3, "the corrupt row's 3 are lost, the rest counted");
    }

    /// Randomized: four senders, each through a layer and clock of its own, record in the
    /// minute they are at and now and then late (in a minute flushed and dropped already);
    /// a flusher drops every bucket it writes, failing a third of its writes; a reporter
    /// reads. Every report counts at least the requests answered before it began and at most
    /// those begun before it ended, and the store ends with every request once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn reports_flushes_and_late_requests_in_any_order_count_each_request_once() {
        use std::sync::atomic::AtomicU64;
        let gate = Gate::default();
        gate.failing.store(30, Ordering::SeqCst);
        let analytics = dropping_at_once();
        let (begun, answered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut senders = Vec::new();
        for sender in 0..4u64 {
            let clock = ManualClock::new(at(0));
            let send = traffic_on(&gate, &analytics, Some(clock.clone())).await;
            let (begun, answered) = (begun.clone(), answered.clone());
            senders.push(tokio::spawn(async move {
                let mut seed = sender * 7_919 + u64::from(rand_percent()) + 1;
                let mut below = |n: u64| xorshift(&mut seed) % n;
                for i in 0..300u64 {
                    let minute = i / 15;
                    let late = below(5) == 0;
                    let minute = if late { below(minute + 1) } else { minute };
                    clock.set(at(minute * 60 + below(60)));
                    begun.fetch_add(1, Ordering::SeqCst);
                    send(1).await;
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        let flusher = tokio::spawn({
            let (analytics, gate) = (analytics.clone(), gate.clone());
            async move {
                for _ in 0..60 {
                    let _ = analytics.flush(&gate).await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        let reporter = tokio::spawn({
            let (analytics, gate) = (analytics.clone(), gate.clone());
            let (begun, answered) = (begun.clone(), answered.clone());
            async move {
                let resolutions = [Resolution::Minute, Resolution::Hour, Resolution::Day];
                for n in 0..150 {
                    let before = answered.load(Ordering::SeqCst);
                    let counted = afternoon(&analytics, &gate, resolutions[n % 3]).await;
                    let after = begun.load(Ordering::SeqCst);
                    assert!(
                        (before..=after).contains(&counted),
                        "report {n}: {counted} counted, {before} answered before, {after} begun after"
                    );
                    tokio::task::yield_now().await;
                }
            }
        });
        for sender in senders {
            sender.await.unwrap();
        }
        flusher.await.unwrap();
        reporter.await.unwrap();
        flush_all(&analytics, &gate).await;
        let reader = Analytics::new();
        for resolution in [Resolution::Minute, Resolution::Hour, Resolution::Day] {
            assert_eq!(
                afternoon(&reader, &gate, resolution).await,
                4 * 300,
                "{resolution:?}"
            );
            assert_eq!(afternoon(&analytics, &gate, resolution).await, 4 * 300);
        }
        assert!(
            analytics.buckets() <= 4 * 3,
            "each key keeps its open minute, its hour and day: {}",
            analytics.buckets()
        );
    }
}
