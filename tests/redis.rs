//! The Redis store and limiter against a real server: `.ci/run` starts one and sets
//! `TOWER_API_KEY_REDIS_URL` (and the commands that stop and start it).

#[cfg(not(feature = "redis"))]
#[test]
#[ignore = "the Redis store needs `--features redis` (run by .ci/run)"]
fn redis_suite_needs_the_redis_feature() {}

#[cfg(feature = "redis")]
mod common;
#[cfg(feature = "redis")]
#[path = "common/conformance.rs"]
mod conformance;
#[cfg(feature = "redis")]
#[path = "common/replicas.rs"]
mod replicas;
#[cfg(all(feature = "redis", feature = "analytics"))]
#[path = "common/usage_replicas.rs"]
mod usage_replicas;

#[cfg(feature = "redis")]
mod redis {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use tower_api_key::{
        clock::ManualClock, key::KeyFormat, limit::Costs, limit::Limits, limit::NamedLimit,
        limit::RedisLimiter, store::KeyStoreAdmin, ApiKeyLayer, KeyManager, MemoryStore, NewKey,
        RedisStore,
    };

    use crate::common::{
        api_key, app, serve, server_client, server_env, unique, FreezingProxy, HttpClient, Reply,
    };
    use crate::{conformance, replicas};

    fn url() -> String {
        server_env("TOWER_API_KEY_REDIS_URL")
    }

    async fn store(prefix: &str) -> RedisStore {
        RedisStore::connect_with_prefix(&url(), prefix)
            .await
            .unwrap()
    }

    /// A service whose Redis keys are under a prefix of its own: the tool's `--redis-prefix`
    /// manages them there, and the default prefix does not hold them.
    #[cfg(feature = "cli")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn the_tool_manages_keys_under_the_services_prefix() {
        use tower_api_key::store::KeyStore;

        use crate::common::run_tool;

        let prefix = format!("{}:", unique("tool"));
        let url = url();
        let on_prefix = |args: &[&str]| {
            run_tool(&[&["--database-url", &url, "--redis-prefix", &prefix], args].concat())
        };
        let created: serde_json::Value =
            serde_json::from_str(&on_prefix(&["--json", "create", "--name", "ci"])).unwrap();
        let id = created["info"]["id"].as_str().unwrap();
        let record = store(&prefix).await.get(id).await.unwrap().unwrap();
        assert_eq!(record.name, "ci");
        assert!(RedisStore::connect(&url)
            .await
            .unwrap()
            .get(id)
            .await
            .unwrap()
            .is_none());
        on_prefix(&["revoke", id]);
        let record = store(&prefix).await.get(id).await.unwrap().unwrap();
        assert!(record.revoked_at.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn passes_the_conformance_suite() {
        conformance::conformance(store(&unique("conformance")).await).await;
    }

    /// A prefix holding Redis's glob characters lists its own owners, and only those: not a
    /// neighbour's whose prefix the unescaped pattern would match.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn owners_are_listed_under_a_prefix_of_glob_characters() {
        let base = unique("glob");
        let globbed = store(&format!("{base}[*]?:")).await;
        let neighbour = store(&format!("{base}[x]y:")).await;
        let limits = tower_api_key::limit::Limits::per_minute(7);
        neighbour
            .set_owner_limits("globex", Some(&limits))
            .await
            .unwrap();
        assert!(globbed.owners().await.unwrap().is_empty());
        conformance::owners_are_listed(&globbed).await;
        globbed
            .set_owner_limits("acme", Some(&limits))
            .await
            .unwrap();
        let owners = globbed.owners().await.unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].owner, "acme");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn updates_every_field_or_none() {
        let store = store(&unique("update")).await;
        conformance::updates_write_every_field_or_none(store, 300).await;
    }

    /// Keys stored before the creation indexes existed are listed once they are filled; a key
    /// whose record is gone while the indexes still name it (a delete that raced the filling)
    /// is never listed nor counted; a delete leaves no trace in them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn pages_come_from_creation_indexes_filled_for_older_keys() {
        use tower_api_key::store::{KeyFilter, Listing};

        let prefix = unique("index");
        let keys = KeyManager::new(store(&prefix).await).format(KeyFormat::new("mesh").unwrap());
        let mut ids = Vec::new();
        for i in 0..12 {
            let owner = if i % 2 == 0 { "acme" } else { "globex" };
            let new = NewKey::new(format!("k{i}")).owner(owner);
            ids.push(keys.create(new).await.unwrap().record.id);
        }
        let client = ::redis::Client::open(url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let run = |args: Vec<String>| {
            let mut conn = conn.clone();
            async move {
                let _: i64 = ::redis::cmd(&args[0])
                    .arg(&args[1..])
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        };
        // As a store of an earlier build left them: no indexes, no marker.
        let names = ["created", "owner-keys:acme", "owner-keys:globex", "indexed"];
        let mut del = vec!["DEL".to_owned()];
        del.extend(names.map(|name| format!("{prefix}{name}")));
        run(del).await;

        let store = store(&prefix).await;
        let now = SystemTime::now();
        let all = store.list().await.unwrap();
        for filter in [KeyFilter::new(), KeyFilter::new().owner("acme")] {
            let matching: Vec<_> = all
                .iter()
                .filter(|r| filter.matches(r, now))
                .cloned()
                .collect();
            for (offset, limit) in [(0, 100), (0, 5), (5, 5), (10, 5), (3, 0)] {
                let listed = store.list_page(&filter, now, offset, limit).await.unwrap();
                assert_eq!(
                    listed,
                    Listing::page(matching.clone(), offset, limit),
                    "{filter:?}"
                );
            }
        }

        // Two of acme's records gone behind the indexes' back.
        for gone in [&ids[0], &ids[2]] {
            run(vec!["DEL".into(), format!("{prefix}key:{gone}")]).await;
            run(vec!["SREM".into(), format!("{prefix}ids"), gone.clone()]).await;
        }
        let listed = |filter: KeyFilter| {
            let store = store.clone();
            async move { store.list_page(&filter, now, 0, 100).await.unwrap() }
        };
        let every = listed(KeyFilter::new()).await;
        assert_eq!((every.records.len(), every.total), (10, 10));
        let acme = listed(KeyFilter::new().owner("acme")).await;
        assert_eq!((acme.records.len(), acme.total), (4, 4));
        assert!(!acme
            .records
            .iter()
            .any(|r| r.id == ids[0] || r.id == ids[2]));

        assert!(keys.delete(&ids[1]).await.unwrap());
        let globex = listed(KeyFilter::new().owner("globex")).await;
        assert_eq!((globex.records.len(), globex.total), (5, 5));
        let cards: (usize, usize) = ::redis::pipe()
            .zcard(format!("{prefix}created"))
            .zcard(format!("{prefix}owner-keys:globex"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(cards, (9, 5));
    }

    /// A prune of a long trail keeps the rest in order (the script pushes them back in chunks).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn a_long_trail_is_pruned_in_order() {
        use tower_api_key::store::{AuditArchive, AuditQuery, AuditRow};

        let prefix = unique("prune");
        let store = store(&prefix).await;
        for i in 0..2_500u64 {
            // Old and new rows alternate, as two replicas' clocks might.
            let at = if i % 2 == 0 { 1_000 + i } else { 1_000_000 + i };
            let row = AuditRow::new(&format!("{i:05}"), at, "k", None, "{}");
            store.append_audit(&row).await.unwrap();
        }
        assert_eq!(store.prune_audit(500_000).await.unwrap(), 1_250);
        let left = store.read_audit(&AuditQuery::newest(5_000)).await.unwrap();
        let ids: Vec<u64> = left.iter().map(|row| row.id.parse().unwrap()).collect();
        let expected: Vec<u64> = (0..2_500).rev().filter(|i| i % 2 == 1).collect();
        assert_eq!(ids, expected);
        // The list itself keeps the order it was pushed in (newest first), not only the reading.
        let client = ::redis::Client::open(url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let entries: Vec<String> = ::redis::cmd("LRANGE")
            .arg(format!("{prefix}audit"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        let listed: Vec<u64> = (entries.iter())
            .map(|entry| {
                let row: serde_json::Value = serde_json::from_str(entry).unwrap();
                row[0].as_str().unwrap().parse().unwrap()
            })
            .collect();
        assert_eq!(listed, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn keeps_the_audit_trail() {
        conformance::the_audit_trail_is_kept_newest_first(store(&unique("audit")).await).await;
        conformance::a_moved_trail_is_taken_once(store(&unique("moved")).await).await;
        conformance::a_moved_trail_leaves_the_newest(store(&unique("newest")).await, true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn lists_pages_as_the_filter_says() {
        conformance::listings_page_as_the_filter_says(store(&unique("listing")).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn two_replicas_keep_owners_within_their_most_keys() {
        let prefix = unique("most_keys");
        conformance::owners_never_hold_more_keys_than_allowed(
            store(&prefix).await,
            store(&prefix).await,
        )
        .await;
        let prefix = unique("expired_back");
        conformance::expired_keys_come_back_only_within_the_most(
            store(&prefix).await,
            store(&prefix).await,
        )
        .await;
        conformance::expired_keys_brought_back_at_once_stop_at_the_most(
            store(&prefix).await,
            store(&prefix).await,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn two_replicas_never_overspend_credits() {
        let prefix = unique("credits");
        conformance::credits_are_never_overspent(store(&prefix).await, store(&prefix).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn a_revoke_reaches_every_replica_by_pub_sub() {
        let prefix = unique("replicas");
        let elapsed = replicas::a_revoke_reaches_the_other_replica(
            store(&prefix).await,
            store(&prefix).await,
            |b, handle| async move { b.spawn_listener(handle).await },
        )
        .await;
        eprintln!("Redis pub/sub propagation: {elapsed:?}");
    }

    /// A key with `limits` in a fresh store, and one HTTP client per replica: each replica is a
    /// layer with its own `RedisLimiter` connection (all under one prefix) and its own clock.
    /// `POST /tracking` costs 3, `PUT /offers` 0, the rest 1.
    async fn replicas_sharing_a_limiter(
        limits: Limits,
        clocks: Vec<ManualClock>,
    ) -> (String, Vec<HttpClient>) {
        let prefix = unique("limits");
        let store = MemoryStore::new();
        let created = NewKey::new("shared")
            .scopes(["admin"])
            .limits(limits)
            .generate(&tower_api_key::key::KeyFormat::new("mesh").unwrap())
            .unwrap();
        store.create(created.record.clone()).await.unwrap();
        let mut clients = Vec::new();
        for clock in clocks {
            let limiter = RedisLimiter::connect_with_prefix(&url(), &prefix)
                .await
                .unwrap();
            let layer = ApiKeyLayer::builder("mesh", store.clone())
                .limiter(limiter)
                .clock(clock)
                .costs(Costs::per_path([("/tracking", 3), ("/offers", 0)], 1))
                .build()
                .unwrap();
            clients.push(HttpClient::new(
                serve(app(layer, Arc::new(AtomicUsize::new(0)))).await,
            ));
        }
        (api_key(created.key.expose_secret()), clients)
    }

    /// The replies to `n` requests to `/recommendations` sent at once, alternating between the
    /// `clients` (replicas) and then between the `headers`.
    async fn at_once(clients: &[HttpClient], headers: &[String], n: usize) -> Vec<Reply> {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let client = clients[i % clients.len()].clone();
                let header = headers[(i / clients.len()) % headers.len()].clone();
                tokio::spawn(async move {
                    client
                        .get("/recommendations", &[("authorization", &header)])
                        .await
                })
            })
            .collect();
        let mut replies = Vec::with_capacity(n);
        for task in tasks {
            replies.push(task.await.unwrap());
        }
        replies
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn two_replicas_enforce_one_shared_limit() {
        let now = ManualClock::new(SystemTime::now());
        let (header, clients) = replicas_sharing_a_limiter(
            Limits::per_minute(1).burst(20).daily(25),
            vec![now.clone(), now],
        )
        .await;
        let mut ok = 0;
        let mut limited = 0;
        for reply in at_once(&clients, &[header], 60).await {
            match reply.status.as_u16() {
                200 => {
                    ok += 1;
                    assert!(reply.headers.contains_key("ratelimit"));
                }
                429 => {
                    limited += 1;
                    assert_eq!(reply.code(), "RATE_LIMIT_EXCEEDED");
                    assert!(reply.headers.contains_key("retry-after"));
                }
                other => panic!("unexpected {other}: {reply:?}"),
            }
        }
        assert_eq!(
            (ok, limited),
            (20, 40),
            "one burst of 20 across both replicas"
        );
    }

    /// A named limit and a quota, counted in cost across two replicas: exact, and a refusal by
    /// one spends nothing of the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn two_replicas_share_named_limits_counted_in_cost() {
        let now = ManualClock::new(SystemTime::now());
        let limits = Limits::UNLIMITED
            .with(NamedLimit::new("writes", 30, 3600).unwrap())
            .daily(1000);
        let (header, clients) =
            replicas_sharing_a_limiter(limits, vec![now.clone(), now.clone()]).await;
        let burst = |clients: Vec<HttpClient>, header: String, n: usize| async move {
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let (client, header) = (clients[i % 2].clone(), header.clone());
                    tokio::spawn(async move {
                        let reply = client
                            .send(
                                http::Method::POST,
                                "/tracking",
                                &[("authorization", &header)],
                            )
                            .await;
                        (reply.status.as_u16(), reply.body)
                    })
                })
                .collect();
            let mut admitted = 0;
            for task in tasks {
                let (status, body) = task.await.unwrap();
                match status {
                    200 => admitted += 1,
                    429 => assert!(body.contains(r#""limit":"writes""#), "{body}"),
                    other => panic!("unexpected {other}: {body}"),
                }
            }
            admitted
        };
        assert_eq!(
            burst(clients.clone(), header.clone(), 40).await,
            10,
            "30 in requests of 3"
        );
        // Spent: a cost of 0 is refused too, and names the limit.
        let checked = clients[1]
            .send(http::Method::PUT, "/offers", &[("authorization", &header)])
            .await;
        assert_eq!(checked.status, 429);
        assert_eq!(checked.json()["limit"], "writes");

        // The day quota, in cost too: 25 a day is 8 requests of 3.
        let limits = Limits::UNLIMITED.daily(25);
        let (header, clients) = replicas_sharing_a_limiter(limits, vec![now.clone(), now]).await;
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let (client, header) = (clients[i % 2].clone(), header.clone());
                tokio::spawn(async move {
                    client
                        .send(
                            http::Method::POST,
                            "/tracking",
                            &[("authorization", &header)],
                        )
                        .await
                })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            let reply = task.await.unwrap();
            match reply.status.as_u16() {
                200 => admitted += 1,
                429 => assert_eq!(reply.json()["limit"], "day"),
                other => panic!("unexpected {other}: {reply:?}"),
            }
        }
        assert_eq!(admitted, 8);
        // One unit is left: a request of 1 fits.
        let last = clients[0]
            .get("/recommendations", &[("authorization", &header)])
            .await;
        assert_eq!(last.status, 200, "{last:?}");
    }

    /// Limits set on an owner, across two replicas sharing a `RedisLimiter`: the requests of both
    /// of its keys are counted together, exactly, each besides its key's own limits, in one
    /// script (a refusal by either spends nothing of the other).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn two_replicas_count_an_owners_keys_together() {
        let prefix = unique("owner-limits");
        let store = MemoryStore::new();
        let keys = tower_api_key::KeyManager::new(store.clone())
            .format(tower_api_key::key::KeyFormat::new("mesh").unwrap());
        let mut headers = Vec::new();
        for name in ["a", "b"] {
            let created = keys
                .create(
                    NewKey::new(name)
                        .owner("acme")
                        .scopes(["read"])
                        .limits(Limits::per_minute(1).burst(20)),
                )
                .await
                .unwrap();
            headers.push(api_key(created.key.expose_secret()));
        }
        keys.set_owner_limits("acme", Some(Limits::UNLIMITED.daily(25)))
            .await
            .unwrap();
        let mut clients = Vec::new();
        for _ in 0..2 {
            let limiter = RedisLimiter::connect_with_prefix(&url(), &prefix)
                .await
                .unwrap();
            let layer = ApiKeyLayer::builder("mesh", store.clone())
                .limiter(limiter)
                .build()
                .unwrap();
            clients.push(HttpClient::new(
                serve(app(layer, Arc::new(AtomicUsize::new(0)))).await,
            ));
        }
        let mut admitted = 0;
        for reply in at_once(&clients, &headers, 60).await {
            match reply.status.as_u16() {
                200 => {
                    admitted += 1;
                    let policy = reply.headers["ratelimit-policy"].to_str().unwrap();
                    assert!(policy.ends_with("\"owner.day\";q=25;w=86400"), "{policy}");
                }
                429 => {
                    let limit = reply.json()["limit"].as_str().unwrap().to_owned();
                    assert!(["owner.day", "minute"].contains(&limit.as_str()), "{limit}");
                }
                other => panic!("unexpected {other}: {reply:?}"),
            }
        }
        assert_eq!(
            admitted, 25,
            "the owner's day, exactly, across both keys and replicas"
        );
    }

    /// The rate limit runs on the Redis server's clock: a replica whose clock is minutes ahead (or
    /// behind) neither gets a fresh burst nor loses one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn replicas_with_skewed_clocks_share_one_rate_limit() {
        let on_time = ManualClock::new(SystemTime::now());
        let ahead = ManualClock::new(SystemTime::now() + Duration::from_secs(300));
        let behind = ManualClock::new(SystemTime::now() - Duration::from_secs(300));
        let (header, clients) = replicas_sharing_a_limiter(
            Limits::per_minute(1).burst(2),
            vec![on_time, ahead, behind],
        )
        .await;
        let status = |replica: usize| {
            let client = clients[replica].clone();
            let header = header.clone();
            async move {
                client
                    .get("/recommendations", &[("authorization", &header)])
                    .await
                    .status
                    .as_u16()
            }
        };
        assert_eq!(
            status(2).await,
            200,
            "the slow clock's replica is not starved"
        );
        assert_eq!(status(0).await, 200);
        for replica in [1, 0, 2, 1] {
            assert_eq!(
                status(replica).await,
                429,
                "replica {replica}: the burst of 2 is spent, whatever its clock says"
            );
        }
    }

    /// Runs a command with the server's own client.
    fn redis_cli(args: &[&str]) -> String {
        server_client("redis-cli", &[&["-u", &url()], args].concat())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn a_listener_whose_connection_is_killed_clears_the_cache_once_back() {
        let prefix = unique("killed");
        let key_prefix = prefix.clone();
        let listening = store(&prefix).await;
        replicas::a_killed_listener_reconnects_and_clears_the_cache(
            store(&prefix).await,
            |handle| async move { listening.spawn_listener(handle).await },
            |id| async move {
                // Revoked by hand: nothing published.
                redis_cli(&["HSET", &format!("{key_prefix}key:{id}"), "revoked_at", "1"]);
            },
            || async {
                let killed = redis_cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
                assert_ne!(killed.trim(), "0", "no subscribed connection found");
            },
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn a_half_open_subscription_is_noticed_and_the_cache_cleared() {
        let prefix = unique("halfopen");
        let key_prefix = prefix.clone();
        let server = url().trim_start_matches("redis://").to_owned();
        let proxy = FreezingProxy::start(server).await;
        // Only the listener goes through the proxy.
        let listening =
            RedisStore::connect_with_prefix(&format!("redis://127.0.0.1:{}", proxy.port), &prefix)
                .await
                .unwrap();
        let elapsed = replicas::a_killed_listener_reconnects_and_clears_the_cache(
            store(&prefix).await,
            |handle| async move { listening.spawn_listener(handle).await },
            |id| async move {
                redis_cli(&["HSET", &format!("{key_prefix}key:{id}"), "revoked_at", "1"]);
            },
            || async { proxy.freeze() },
        )
        .await;
        replicas::assert_noticed_by_the_ping(elapsed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn a_corrupt_record_is_refused_with_503_never_a_panic() {
        let prefix = unique("corrupt");
        let store = store(&prefix).await;
        let layer = ApiKeyLayer::new("mesh", store.clone()).unwrap();
        let keys = tower_api_key::KeyManager::new(store).with_cache(layer.handle());
        let client = HttpClient::new(serve(app(layer, Arc::new(AtomicUsize::new(0)))).await);
        for (field, value) in [
            ("expires_at", "18446744073709551615"),
            ("revoked_at", "99999999999999999999"),
            ("created_at", "yesterday"),
            ("digest", "not hex"),
            ("limits", "{"),
        ] {
            let created = keys
                .create(NewKey::new("corrupt").scopes(["read"]))
                .await
                .unwrap();
            redis_cli(&[
                "HSET",
                &format!("{prefix}key:{}", created.record.id),
                field,
                value,
            ]);
            let header = api_key(created.key.expose_secret());
            for _ in 0..2 {
                let reply = client
                    .get("/recommendations", &[("authorization", &header)])
                    .await;
                assert_eq!(reply.code(), "KEY_STORE_UNAVAILABLE", "{field}: {reply:?}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run (stops and restarts the server)"]
    async fn survives_the_server_stopping_and_recovers() {
        replicas::an_outage_is_survived(
            store(&unique("outage")).await,
            "TOWER_API_KEY_REDIS_STOP",
            "TOWER_API_KEY_REDIS_START",
        )
        .await;
    }

    #[cfg(feature = "analytics")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn two_replicas_report_the_combined_usage() {
        let prefix = unique("usage");
        crate::usage_replicas::two_replicas_report_the_combined_totals(
            store(&prefix).await,
            store(&prefix).await,
            "mesh",
        )
        .await;
    }

    #[cfg(feature = "analytics")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis: run through .ci/run"]
    async fn flushed_usage_leaves_memory_and_still_counts() {
        let prefix = unique("flushed");
        crate::usage_replicas::flushed_buckets_leave_memory_and_still_count(
            store(&prefix).await,
            store(&prefix).await,
            "mesh",
        )
        .await;
    }
}
