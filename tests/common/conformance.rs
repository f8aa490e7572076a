//! The suite every store runs unchanged: the memory store, SQLite, PostgreSQL and Redis.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tower_api_key::{
    key::KeyFormat, limit::Account, limit::Charge, limit::Credits, limit::Limits,
    limit::RefillPeriod, limit::Spend, store::AuditArchive, store::AuditQuery, store::AuditRow,
    store::KeyFilter, store::KeyRecord, store::KeyState, store::KeyStoreAdmin, store::KeyUpdate,
    store::Listing, store::StoreError, store::UsageUpdate, store::AUDIT_KEPT, ApiKeyLayer,
    Environment, KeyManager, NewKey,
};

use crate::common::{api_key, app, serve, HttpClient};

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A full record, with times in whole seconds (what every store keeps).
fn record(name: &str, created: u64) -> KeyRecord {
    let mut created_key = NewKey::new(name)
        .environment(Environment::Test)
        .scopes(["read", "offers:write"])
        .owner("acme")
        .metadata("team", "growth")
        .plan("pro")
        .limits(Limits::FREE.burst(10))
        .expires_at(at(4_000_000_000))
        .generate(&KeyFormat::new("mesh").unwrap())
        .unwrap()
        .record;
    created_key.created_at = at(created);
    created_key
}

/// Spends `cost` of key `id`'s credits in refill period `period`.
async fn spend<S: KeyStoreAdmin>(store: &S, id: &str, cost: u32, period: u32) -> Spend {
    let key = Some(Account { id, period });
    store
        .spend_credits(&Charge {
            cost,
            key,
            owner: None,
        })
        .await
        .unwrap()
}

/// What is left of key `id`'s credits, as the store holds them.
async fn left<S: KeyStoreAdmin>(store: &S, id: &str) -> u64 {
    let record = store.get(id).await.unwrap().unwrap();
    record.credits.unwrap().remaining
}

/// Limits and credits set on an owner: kept, spent together with a key's, all or nothing.
async fn owners<S: KeyStoreAdmin>(store: &S, key: &str) {
    assert_eq!(store.owner("acme").await.unwrap(), None, "nothing set yet");
    let (record, owner) = store.get_with_owner(key).await.unwrap().unwrap();
    assert_eq!((record.id.as_str(), owner), (key, None));
    assert!(store.get_with_owner("nope").await.unwrap().is_none());
    let limits = Limits::per_minute(50).daily(1_000);
    store.set_owner_limits("acme", Some(&limits)).await.unwrap();
    let (record, with_key) = store.get_with_owner(key).await.unwrap().unwrap();
    assert_eq!(record, store.get(key).await.unwrap().unwrap());
    assert_eq!(
        with_key,
        store.owner("acme").await.unwrap(),
        "one round trip, the same"
    );
    let owner = store.owner("acme").await.unwrap().unwrap();
    assert_eq!(
        (owner.owner.as_str(), owner.limits.as_ref()),
        ("acme", Some(&limits))
    );
    assert_eq!(owner.credits, None);
    let mut credits = Credits::refilled(4, RefillPeriod::Monthly { day: 1 }).unwrap();
    credits.period = 300;
    store
        .set_owner_credits("acme", Some(&credits))
        .await
        .unwrap();
    let owner = store.owner("acme").await.unwrap().unwrap();
    assert_eq!(owner.credits.as_ref(), Some(&credits));
    let (_, with_key) = store.get_with_owner(key).await.unwrap().unwrap();
    assert_eq!(
        with_key.as_ref(),
        Some(&owner),
        "credits and limits, with the key"
    );
    assert_eq!(
        owner.limits.as_ref(),
        Some(&limits),
        "credits leave the limits alone"
    );
    store
        .set_credits(key, Some(&Credits::once(10)))
        .await
        .unwrap();
    let both = |cost| Charge {
        cost,
        key: Some(Account { id: key, period: 0 }),
        owner: Some(Account {
            id: "acme",
            period: 300,
        }),
    };
    assert_eq!(
        store.spend_credits(&both(3)).await.unwrap(),
        Spend::Spent { remaining: 1 },
        "the fewer of the key's 7 and the owner's 1"
    );
    assert_eq!(
        store.spend_credits(&both(2)).await.unwrap(),
        Spend::Exhausted,
        "the owner has 1"
    );
    assert_eq!(
        left(store, key).await,
        7,
        "the owner's refusal spent nothing of the key's"
    );
    let refilled = Charge {
        owner: Some(Account {
            id: "acme",
            period: 301,
        }),
        ..both(2)
    };
    assert_eq!(
        store.spend_credits(&refilled).await.unwrap(),
        Spend::Spent { remaining: 2 },
        "next month: the owner's refilled to 4"
    );
    assert_eq!(store.add_owner_credits("acme", 5).await.unwrap(), Some(7));
    assert_eq!(store.add_owner_credits("nobody", 5).await.unwrap(), None);
    let owner_only = Charge {
        cost: 7,
        key: None,
        owner: Some(Account {
            id: "acme",
            period: 301,
        }),
    };
    assert_eq!(
        store.spend_credits(&owner_only).await.unwrap(),
        Spend::Spent { remaining: 0 }
    );
    assert_eq!(
        store.spend_credits(&both(0)).await.unwrap(),
        Spend::Exhausted,
        "none left of the owner's"
    );
    store.set_owner_credits("acme", None).await.unwrap();
    assert_eq!(
        store.spend_credits(&both(1)).await.unwrap(),
        Spend::Spent { remaining: 4 },
        "the owner's credits are gone: only the key's are spent"
    );
    assert_eq!(store.owner("acme").await.unwrap().unwrap().credits, None);
    store.set_owner_limits("acme", None).await.unwrap();
    assert_eq!(
        store.owner("acme").await.unwrap(),
        None,
        "nothing set any more"
    );
    store.set_credits(key, None).await.unwrap();
}

/// `owners`: every owner with limits or credits set, by name, whether or not it has keys; an
/// owner whose settings were cleared is not one. Leaves none set.
pub async fn owners_are_listed<S: KeyStoreAdmin>(store: &S) {
    assert!(store.owners().await.unwrap().is_empty());
    let limits = Limits::per_minute(100);
    store
        .set_owner_limits("listed-b", Some(&limits))
        .await
        .unwrap();
    let credits = Credits::once(12);
    store
        .set_owner_credits("listed-a", Some(&credits))
        .await
        .unwrap();
    store
        .set_owner_limits("listed-c", Some(&limits))
        .await
        .unwrap();
    store.set_owner_limits("listed-c", None).await.unwrap();
    let owners = store.owners().await.unwrap();
    let names: Vec<&str> = owners.iter().map(|owner| owner.owner.as_str()).collect();
    assert_eq!(names, ["listed-a", "listed-b"]);
    assert_eq!(owners[0].credits.as_ref().map(|c| c.remaining), Some(12));
    assert_eq!(owners[1].limits, Some(limits));
    store.set_owner_credits("listed-a", None).await.unwrap();
    store.set_owner_limits("listed-b", None).await.unwrap();
    assert!(store.owners().await.unwrap().is_empty());
}

/// Runs every check against `store`, which must start empty.
pub async fn conformance<S: KeyStoreAdmin + Clone>(store: S) {
    assert!(store.get("nope").await.unwrap().is_none());
    assert!(store.list().await.unwrap().is_empty());
    owners_are_listed(&store).await;

    let a = record("alpha", 1_700_000_000);
    let mut b = record("beta", 1_700_000_100);
    b.owner = None;
    b.plan = None;
    b.limits = None;
    b.expires_at = None;
    b.scopes = vec![];
    b.metadata.clear();
    b.environment = Environment::Live;
    store.create(b.clone()).await.unwrap();
    store.create(a.clone()).await.unwrap();
    assert_eq!(
        store.get(&a.id).await.unwrap().as_ref(),
        Some(&a),
        "round trip"
    );
    assert_eq!(
        store.get(&b.id).await.unwrap().as_ref(),
        Some(&b),
        "empty fields"
    );
    match store.create(a.clone()).await {
        Err(StoreError::Conflict(id)) => assert_eq!(id, a.id),
        other => panic!("a second create must conflict, got {other:?}"),
    }
    let ids: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [a.id.clone(), b.id.clone()], "ordered by creation");

    let limits = tower_api_key::limit::Limits::per_minute(7)
        .with(tower_api_key::limit::NamedLimit::new("burst", 3, 1).unwrap());
    assert!(store.set_limits(&a.id, Some(&limits)).await.unwrap());
    assert_eq!(
        store.get(&a.id).await.unwrap().unwrap().limits,
        Some(limits)
    );
    assert!(store.set_limits(&a.id, None).await.unwrap());
    assert_eq!(store.get(&a.id).await.unwrap().unwrap().limits, None);
    assert!(!store.set_limits("nope", None).await.unwrap());

    // Credits: spent, refilled when a refill period began, topped up, removed.
    let monthly = Credits::refilled(5, RefillPeriod::Daily).unwrap();
    let mut credits = monthly.clone();
    credits.period = 100;
    assert!(store.set_credits(&a.id, Some(&credits)).await.unwrap());
    assert_eq!(
        store.get(&a.id).await.unwrap().unwrap().credits,
        Some(credits.clone())
    );
    assert_eq!(
        spend(&store, &a.id, 3, 100).await,
        Spend::Spent { remaining: 2 }
    );
    assert_eq!(
        spend(&store, &a.id, 3, 100).await,
        Spend::Exhausted,
        "3 do not fit in 2"
    );
    assert_eq!(
        spend(&store, &a.id, 0, 100).await,
        Spend::Spent { remaining: 2 },
        "a cost of 0 spends nothing"
    );
    assert_eq!(
        spend(&store, &a.id, 4, 101).await,
        Spend::Spent { remaining: 1 },
        "the next period refilled to 5 first"
    );
    assert_eq!(
        store
            .get(&a.id)
            .await
            .unwrap()
            .unwrap()
            .credits
            .unwrap()
            .period,
        101
    );
    assert_eq!(store.add_credits(&a.id, 10).await.unwrap(), Some(11));
    assert_eq!(
        spend(&store, &a.id, 11, 101).await,
        Spend::Spent { remaining: 0 }
    );
    assert_eq!(
        spend(&store, &a.id, 0, 101).await,
        Spend::Exhausted,
        "a cost of 0 is refused once none is left"
    );
    assert!(store.set_credits(&a.id, None).await.unwrap());
    assert_eq!(store.get(&a.id).await.unwrap().unwrap().credits, None);
    assert_eq!(spend(&store, &a.id, 1, 101).await, Spend::NoCredits);
    assert_eq!(spend(&store, "nope", 1, 101).await, Spend::NoCredits);
    assert_eq!(store.add_credits(&a.id, 1).await.unwrap(), None);
    assert!(!store.set_credits("nope", Some(&monthly)).await.unwrap());

    owners(&store, &a.id).await;

    let networks = vec![
        "203.0.113.0/24".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    assert!(store.set_allowed_networks(&a.id, &networks).await.unwrap());
    assert_eq!(
        store.get(&a.id).await.unwrap().unwrap().allowed_networks,
        networks
    );
    assert!(store.set_allowed_networks(&a.id, &[]).await.unwrap());
    assert!(store
        .get(&a.id)
        .await
        .unwrap()
        .unwrap()
        .allowed_networks
        .is_empty());
    assert!(!store.set_allowed_networks("nope", &networks).await.unwrap());

    let scopes = vec!["admin".to_owned()];
    assert!(store.set_scopes(&a.id, &scopes).await.unwrap());
    assert!(!store.set_scopes("nope", &scopes).await.unwrap());
    assert_eq!(store.get(&a.id).await.unwrap().unwrap().scopes, scopes);

    assert!(store.set_name(&a.id, "renamed").await.unwrap());
    assert!(!store.set_name("nope", "renamed").await.unwrap());
    assert!(store.set_plan(&a.id, Some("pro")).await.unwrap());
    assert!(!store.set_plan("nope", None).await.unwrap());
    let metadata = std::collections::BTreeMap::from([("team".to_owned(), "core \"é\"".to_owned())]);
    assert!(store.set_metadata(&a.id, &metadata).await.unwrap());
    assert!(!store.set_metadata("nope", &metadata).await.unwrap());
    let described = store.get(&a.id).await.unwrap().unwrap();
    assert_eq!(described.name, "renamed");
    assert_eq!(described.plan.as_deref(), Some("pro"));
    assert_eq!(described.metadata, metadata);
    assert!(store.set_plan(&a.id, None).await.unwrap());
    assert_eq!(store.get(&a.id).await.unwrap().unwrap().plan, None);

    assert!(store
        .set_expiry(&b.id, Some(at(1_800_000_000)))
        .await
        .unwrap());
    assert_eq!(
        store.get(&b.id).await.unwrap().unwrap().expires_at,
        Some(at(1_800_000_000))
    );
    assert!(store.set_expiry(&b.id, None).await.unwrap());
    assert_eq!(store.get(&b.id).await.unwrap().unwrap().expires_at, None);
    assert!(!store.set_expiry("nope", None).await.unwrap());

    assert!(store.revoke(&a.id, at(1_750_000_000)).await.unwrap());
    assert!(store.revoke(&a.id, at(1_760_000_000)).await.unwrap());
    assert_eq!(
        store.get(&a.id).await.unwrap().unwrap().revoked_at,
        Some(at(1_750_000_000)),
        "the first revocation stands"
    );
    assert!(!store.revoke("nope", at(1)).await.unwrap());

    let update = |id: &str, requests, last| UsageUpdate {
        id: id.to_owned(),
        requests,
        last_used_at: at(last),
    };
    store
        .record_usage(&[
            update(&a.id, 3, 1_700_000_500),
            update("nope", 1, 1),
            update(&b.id, 2, 1_700_000_400),
        ])
        .await
        .unwrap();
    store
        .record_usage(&[update(&a.id, 1, 1_700_000_200)])
        .await
        .unwrap();
    let a_now = store.get(&a.id).await.unwrap().unwrap();
    assert_eq!(a_now.requests, 4);
    assert_eq!(
        a_now.last_used_at,
        Some(at(1_700_000_500)),
        "last use only moves forward"
    );
    assert_eq!(store.get(&b.id).await.unwrap().unwrap().requests, 2);

    assert!(store.delete(&a.id).await.unwrap());
    assert!(!store.delete(&a.id).await.unwrap());
    assert!(store.get(&a.id).await.unwrap().is_none());
    assert_eq!(store.list().await.unwrap().len(), 1);

    // The same store behind the layer, over HTTP.
    let layer = ApiKeyLayer::new("mesh", store.clone()).unwrap();
    let keys = KeyManager::new(store.clone()).with_cache(layer.handle());
    let created = keys
        .create(NewKey::new("served").scopes(["read"]))
        .await
        .unwrap();
    let client = HttpClient::new(serve(app(layer, Arc::new(AtomicUsize::new(0)))).await);
    let header = api_key(created.key.expose_secret());
    let reply = client
        .get("/recommendations", &[("authorization", &header)])
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(keys.revoke(&created.record.id).await.unwrap());
    let reply = client
        .get("/recommendations", &[("authorization", &header)])
        .await;
    assert_eq!(reply.code(), "API_KEY_REVOKED");
    for record in store.list().await.unwrap() {
        assert_ne!(
            record.digest.to_hex(),
            created.key.expose_secret(),
            "no plaintext"
        );
    }
}

/// Two replicas (two layers, each on its own connection to one store) spend one key's 30
/// credits with 80 concurrent requests: exactly 30 get through, the rest are refused with
/// `USAGE_EXCEEDED`, and a top-up lets exactly that many more through.
pub async fn credits_are_never_overspent<S: KeyStoreAdmin + Clone>(a: S, b: S) {
    use tower::{service_fn, Layer, ServiceExt};
    use tower_api_key::reject::Rejection;

    let replicas = [
        ApiKeyLayer::new("mesh", a.clone()).unwrap(),
        ApiKeyLayer::new("mesh", b).unwrap(),
    ];
    let keys = KeyManager::new(a).with_cache(replicas[0].handle());
    let created = keys
        .create(NewKey::new("metered").credits(Credits::once(30)))
        .await
        .unwrap();
    let header = api_key(created.key.expose_secret());
    // `n` requests at once, alternating between the replicas and then between `headers`.
    let burst = |headers: Vec<String>, n: usize| {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let layer = replicas[i % 2].clone();
                let header = headers[(i / 2) % headers.len()].clone();
                tokio::spawn(async move {
                    let service = layer.layer(service_fn(|_: http::Request<()>| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
                    }));
                    let request = http::Request::get("/")
                        .header("authorization", header)
                        .body(())
                        .unwrap();
                    let response = service.oneshot(request).await.unwrap();
                    response.extensions().get::<Rejection>().copied()
                })
            })
            .collect::<Vec<_>>();
        async move {
            let mut admitted = 0;
            for task in tasks {
                match task.await.unwrap() {
                    None => admitted += 1,
                    Some(Rejection::UsageExceeded) => {}
                    Some(other) => panic!("unexpected {other:?}"),
                }
            }
            admitted
        }
    };
    assert_eq!(
        burst(vec![header.clone()], 80).await,
        30,
        "the 30 credits, exactly"
    );
    let id = &created.record.id;
    assert_eq!(left(keys.store(), id).await, 0);
    assert_eq!(keys.top_up(id, 5).await.unwrap(), Some(5));
    assert_eq!(burst(vec![header], 20).await, 5, "the top-up, exactly");

    // Two keys of one owner with 12 credits, one of them with 8 of its own: the owner's 12
    // exactly, and the key's own spent by exactly the requests it made.
    let own = keys
        .create(
            NewKey::new("own credits")
                .owner("initech")
                .credits(Credits::once(8)),
        )
        .await
        .unwrap();
    let shared = keys
        .create(NewKey::new("owner's only").owner("initech"))
        .await
        .unwrap();
    keys.set_owner_credits("initech", Some(Credits::once(12)))
        .await
        .unwrap();
    let headers = vec![
        api_key(own.key.expose_secret()),
        api_key(shared.key.expose_secret()),
    ];
    assert_eq!(burst(vec![headers[0].clone()], 1).await, 1);
    let own_id = &own.record.id;
    assert_eq!(
        left(keys.store(), own_id).await,
        7,
        "its own, and the owner's"
    );
    assert_eq!(
        burst(headers.clone(), 60).await,
        11,
        "the owner's 11 left, exactly"
    );
    let owner = keys.owner("initech").await.unwrap().unwrap();
    assert_eq!(owner.credits.unwrap().remaining, 0);
    let own_left = left(keys.store(), own_id).await;
    // Spent out, the owner's credits refuse both keys; the one with its own credits left still
    // spends none of them.
    assert_eq!(burst(headers, 10).await, 0);
    assert_eq!(
        left(keys.store(), own_id).await,
        own_left,
        "refusals spend nothing"
    );
}

/// Checks that each of `pages` (offset, limit) of `store`'s listing by `filter` at `now` is
/// that page of `all` filtered in memory.
async fn pages_agree<S: KeyStoreAdmin>(
    store: &S,
    all: &[KeyRecord],
    filter: &KeyFilter,
    now: SystemTime,
    pages: &[(usize, usize)],
) {
    let matching: Vec<KeyRecord> = (all.iter())
        .filter(|r| filter.matches(r, now))
        .cloned()
        .collect();
    for &(offset, limit) in pages {
        let expected = Listing::page(matching.clone(), offset, limit);
        let listed = store.list_page(filter, now, offset, limit).await.unwrap();
        let ids = |l: &Listing| {
            let ids: Vec<String> = l.records.iter().map(|r| r.id.clone()).collect();
            (ids, l.total)
        };
        assert!(
            listed == expected,
            "{filter:?}, from {offset}, {limit}: {:?}, expected {:?}",
            ids(&listed),
            ids(&expected)
        );
    }
}

/// `list_page` against `list` filtered in memory, for every filter and several pages, at a
/// `now` half a second after an expiry (the stores keep whole seconds), on keys of two owners
/// and none, both environments, every state, names in mixed case (one not ASCII), and creation
/// times shared by several keys. `store` must start empty.
pub async fn listings_page_as_the_filter_says<S: KeyStoreAdmin>(store: S) {
    let now = at(2_000_000_000) + Duration::from_millis(500);
    let owners = [Some("acme"), Some("globex"), None];
    let names = ["Deploy bot", "CI", "ÄRGER deploy", "billing"];
    for i in 0..24u64 {
        let mut key = record(names[i as usize % 4], 1_700_000_000 + i / 3);
        key.owner = owners[i as usize % 3].map(str::to_owned);
        key.environment = if i % 2 == 0 {
            Environment::Live
        } else {
            Environment::Test
        };
        key.expires_at = match i % 5 {
            0 => None,
            1 => Some(at(2_000_000_000)), // expired at `now`
            2 => Some(at(2_000_000_001)), // not yet
            _ => Some(at(1_900_000_000)),
        };
        key.expires_at = key.expires_at.filter(|_| i % 7 != 3);
        key.disabled = i % 4 == 1;
        if i % 6 == 5 {
            key.revoked_at = Some(at(1_800_000_000));
        }
        key.last_used_at = match i % 4 {
            0 => None,
            1 => Some(at(1_750_000_000)),
            2 => Some(at(1_749_000_000)),
            _ => Some(at(1_760_000_000)),
        };
        store.create(key).await.unwrap();
    }
    let all = store.list().await.unwrap();
    assert_eq!(all.len(), 24);

    // A few counts worked out by hand, so that the comparisons below cannot all agree on a
    // wrong filter.
    let count = |filter: KeyFilter| all.iter().filter(|r| filter.matches(r, now)).count();
    assert_eq!(count(KeyFilter::new().owner("acme")), 8);
    assert_eq!(count(KeyFilter::new().environment(Environment::Test)), 12);
    assert_eq!(count(KeyFilter::new().state(KeyState::Revoked)), 4);
    assert_eq!(
        count(KeyFilter::new().name("deploy")),
        12,
        "either case, not ASCII too"
    );
    assert_eq!(count(KeyFilter::new().name("ärger")), 6);
    let half = Duration::from_millis(500);
    assert_eq!(
        count(KeyFilter::new().created_before(at(1_700_000_004))),
        12
    );
    assert_eq!(
        count(KeyFilter::new().created_before(at(1_700_000_004) + half)),
        15
    );
    let unused = |since| count(KeyFilter::new().unused_since(since));
    assert_eq!(unused(at(1_750_000_000)), 12, "never, or before");
    assert_eq!(unused(at(1_750_000_000) + half), 18);
    // Four keys expire at 2_000_000_001, after `now`; the others have expired or never do.
    let expiring = |before| count(KeyFilter::new().expiring_before(before));
    assert_eq!(expiring(at(2_000_000_001)), 0, "before it: none");
    assert_eq!(expiring(at(2_000_000_001) + half), 4);
    assert_eq!(
        expiring(at(4_000_000_000)),
        4,
        "expired keys are not about to"
    );
    let ever = KeyFilter::new().expiring_within(now, Duration::MAX);
    assert_eq!(count(ever), 4);
    let page = store
        .list_page(&KeyFilter::new().state(KeyState::Expired), now, 0, 100)
        .await
        .unwrap();
    assert!(
        page.records
            .iter()
            .any(|r| r.expires_at == Some(at(2_000_000_000))),
        "a key whose expiry is the second of now is expired"
    );
    assert!(page
        .records
        .iter()
        .all(|r| r.expires_at != Some(at(2_000_000_001))));

    let states = [
        None,
        Some(KeyState::Active),
        Some(KeyState::Disabled),
        Some(KeyState::Revoked),
        Some(KeyState::Expired),
    ];
    let pages = [(0, 100), (0, 3), (2, 3), (5, 100), (7, 1), (100, 10)];
    for owner in [None, Some("acme"), Some("globex"), Some("nobody")] {
        for environment in [None, Some(Environment::Live), Some(Environment::Test)] {
            for state in states {
                for name in [None, Some("DEPLOY"), Some("är")] {
                    let mut filter = KeyFilter::new();
                    filter.owner = owner.map(str::to_owned);
                    filter.environment = environment;
                    filter.state = state;
                    filter.name = name.map(str::to_owned);
                    pages_agree(&store, &all, &filter, now, &pages).await;
                }
            }
        }
    }

    // By age, last use and expiry (bounds on a stored second and half a second past it), with
    // the other filters.
    let bounds = |secs| [None, Some(at(secs)), Some(at(secs) + half)];
    let expiries = [
        None,
        Some(at(2_000_000_001)),
        Some(at(2_000_000_001) + half),
        Some(now + Duration::from_secs(8_000_000_000)),
    ];
    for created_before in bounds(1_700_000_004) {
        for unused_since in bounds(1_750_000_000) {
            for expiring_before in expiries {
                for owner in [None, Some("acme")] {
                    for state in states {
                        for name in [None, Some("DEPLOY")] {
                            let mut filter = KeyFilter::new();
                            filter.created_before = created_before;
                            filter.unused_since = unused_since;
                            filter.expiring_before = expiring_before;
                            filter.owner = owner.map(str::to_owned);
                            filter.state = state;
                            filter.name = name.map(str::to_owned);
                            pages_agree(&store, &all, &filter, now, &pages).await;
                        }
                    }
                }
            }
        }
    }
}

/// The audit trail: rows read back newest first (by time, then id), by key, by owner, within a
/// limit, every field kept. `store` must start empty.
pub async fn the_audit_trail_is_kept_newest_first<S: AuditArchive>(store: S) {
    assert!(store
        .read_audit(&AuditQuery::newest(10))
        .await
        .unwrap()
        .is_empty());
    let rows = [
        AuditRow::new(
            "a1",
            1_800_000_000_000_001,
            "k1",
            Some("acme"),
            r#"{"n":1}"#,
        ),
        AuditRow::new("a3", 1_800_000_000_000_003, "k2", None, r#"{"n":3}"#),
        // Two rows of one microsecond: the greater id first.
        AuditRow::new(
            "b2",
            1_800_000_000_000_002,
            "k1",
            Some("acme"),
            r#"{"n":2}"#,
        ),
        AuditRow::new("c2", 1_800_000_000_000_002, "k3", Some("globex"), "{}"),
    ];
    for row in &rows {
        store.append_audit(row).await.unwrap();
    }
    let ids = |found: Vec<AuditRow>| -> Vec<String> { found.into_iter().map(|r| r.id).collect() };
    let all = store.read_audit(&AuditQuery::newest(10)).await.unwrap();
    assert_eq!(all[0], rows[1], "every field kept");
    assert_eq!(all[3], rows[0]);
    assert_eq!(ids(all), ["a3", "c2", "b2", "a1"]);
    let newest = store.read_audit(&AuditQuery::newest(2)).await.unwrap();
    assert_eq!(ids(newest), ["a3", "c2"]);
    let of_key = store.read_audit(&AuditQuery::newest(10).key("k1")).await;
    assert_eq!(ids(of_key.unwrap()), ["b2", "a1"]);
    let of_owner = store
        .read_audit(&AuditQuery::newest(10).owner("acme"))
        .await;
    assert_eq!(ids(of_owner.unwrap()), ["b2", "a1"]);
    let of_both = AuditQuery::newest(1).key("k1").owner("acme");
    assert_eq!(ids(store.read_audit(&of_both).await.unwrap()), ["b2"]);
    let other_owner = AuditQuery::newest(10).key("k1").owner("globex");
    assert!(store.read_audit(&other_owner).await.unwrap().is_empty());

    // Pruned: the rows older than the time given, not those of that time; then nothing more.
    // A row written late with an older time (another replica's clock) is pruned too.
    let late = AuditRow::new("z0", 1_800_000_000_000_000, "k9", None, "{}");
    store.append_audit(&late).await.unwrap();
    assert_eq!(store.prune_audit(1_800_000_000_000_002).await.unwrap(), 2);
    let left = store.read_audit(&AuditQuery::newest(10)).await.unwrap();
    assert_eq!(ids(left), ["a3", "c2", "b2"]);
    assert_eq!(store.prune_audit(1_800_000_000_000_002).await.unwrap(), 0);
    assert_eq!(store.prune_audit(u64::MAX / 2).await.unwrap(), 3);
    assert!(store
        .read_audit(&AuditQuery::newest(10))
        .await
        .unwrap()
        .is_empty());
}

/// A trail moved from another store (`import_audit`): each row whose id the store lacks added
/// once, whatever it holds and however often the move runs, every field kept, in time order
/// among the rows it held. `store` must start empty.
pub async fn a_moved_trail_is_taken_once<S: AuditArchive>(store: S) {
    let ids = |found: Vec<AuditRow>| -> Vec<String> { found.into_iter().map(|r| r.id).collect() };
    let here = AuditRow::new(
        "h2",
        1_800_000_000_000_002,
        "k1",
        Some("acme"),
        r#"{"n":2}"#,
    );
    store.append_audit(&here).await.unwrap();
    let first = AuditRow::new(
        "m1",
        1_800_000_000_000_001,
        "k1",
        Some("acme"),
        r#"{"n":1}"#,
    );
    let moved = [
        first.clone(),
        // The store's own row, as a move run again after a failure would bring it.
        here.clone(),
        AuditRow::new(
            "m3",
            1_800_000_000_000_003,
            "",
            Some("globex"),
            r#"{"n":3}"#,
        ),
        // Twice in one move.
        first,
    ];
    assert_eq!(store.import_audit(&moved).await.unwrap(), 2);
    assert_eq!(store.import_audit(&moved).await.unwrap(), 0, "run again");
    assert_eq!(store.import_audit(&[]).await.unwrap(), 0);
    let all = store.read_audit(&AuditQuery::newest(10)).await.unwrap();
    assert_eq!(all[0], moved[2], "every field kept");
    assert_eq!(all[2], moved[0]);
    assert_eq!(ids(all), ["m3", "h2", "m1"]);
    let of_owner = AuditQuery::newest(10).owner("acme");
    assert_eq!(
        ids(store.read_audit(&of_owner).await.unwrap()),
        ["h2", "m1"]
    );
}

/// A trail moved in (`import_audit`) to a store that keeps the newest [`AUDIT_KEPT`] rows
/// (`capped`) leaves the newest by time, not by when they came; another store keeps every row.
/// `store` must start empty.
pub async fn a_moved_trail_leaves_the_newest<S: AuditArchive>(store: S, capped: bool) {
    let old: Vec<AuditRow> = (1..=3)
        .map(|n| {
            AuditRow::new(
                &format!("m{n}"),
                1_800_000_000_000_000 + n,
                "k1",
                None,
                "{}",
            )
        })
        .collect();
    assert_eq!(store.import_audit(&old).await.unwrap(), 3);

    // A trail as long as a capped store keeps, all newer than the rows it holds, comes in
    // in pieces: a capped store keeps the newest, and drops the three it held.
    let newer: Vec<AuditRow> = (0..AUDIT_KEPT as u64)
        .map(|n| {
            AuditRow::new(
                &format!("n{n:05}"),
                1_900_000_000_000_000 + n,
                "k2",
                None,
                "{}",
            )
        })
        .collect();
    let mut added = 0;
    for piece in newer.chunks(2_500) {
        added += store.import_audit(piece).await.unwrap();
    }
    assert_eq!(added, AUDIT_KEPT as u64);
    let kept = store
        .read_audit(&AuditQuery::newest(usize::MAX))
        .await
        .unwrap();
    let expected = if capped { AUDIT_KEPT } else { AUDIT_KEPT + 3 };
    assert_eq!(kept.len(), expected);
    assert_eq!(kept[0].id, format!("n{:05}", AUDIT_KEPT - 1));
    assert_eq!(kept.iter().any(|row| row.id == "m3"), !capped);
    // An older row that comes now is behind the newest in a capped store: not kept.
    let old = AuditRow::new("o0", 1_700_000_000_000_000, "k3", None, "{}");
    assert_eq!(store.import_audit(&[old]).await.unwrap(), 1);
    let of_old_key = AuditQuery::newest(10).key("k3");
    let found = store.read_audit(&of_old_key).await.unwrap();
    assert_eq!(found.len(), usize::from(!capped));
}

/// `update_key`: every field of an update written, or (for a missing key) none; a field cleared
/// by `Some(None)`; and never a record part way, seen by a reader while two writers race
/// `rounds` updates each (many for a store in memory, whose writes leave a reader a far
/// shorter window).
pub async fn updates_write_every_field_or_none<S: KeyStoreAdmin + Clone>(store: S, rounds: usize) {
    let mut expected = record("before", 1_800_000_000);
    let id = expected.id.clone();
    store.create(expected.clone()).await.unwrap();
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("team".to_owned(), "platform".to_owned());
    let update = KeyUpdate::new()
        .name("after")
        .scopes(["write"])
        .metadata(metadata)
        .expires_at(Some(at(4_100_000_000)))
        .plan(Some("enterprise"))
        .limits(Some(Limits::per_minute(7)))
        .disabled(true);
    assert!(store.update_key(&id, &update).await.unwrap());
    update.apply_to(&mut expected);
    assert_eq!(store.get(&id).await.unwrap().unwrap(), expected);

    let clear = KeyUpdate::new()
        .expires_at(None)
        .plan(None)
        .limits(None)
        .disabled(false);
    assert!(store.update_key(&id, &clear).await.unwrap());
    clear.apply_to(&mut expected);
    let now = store.get(&id).await.unwrap().unwrap();
    assert_eq!(now, expected);
    assert_eq!((now.expires_at, now.plan, now.limits), (None, None, None));

    assert!(store.update_key(&id, &KeyUpdate::new()).await.unwrap());
    assert!(!store.update_key("nope", &KeyUpdate::new()).await.unwrap());
    assert!(!store.update_key("nope", &update).await.unwrap());
    assert_eq!(store.get("nope").await.unwrap(), None, "no record made");

    // Two writers, each writing its own name, scopes and metadata; a reader meanwhile.
    let writer = |who: &'static str| {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move {
            for round in 0..rounds {
                let mark = format!("{who}{round}");
                let mut metadata = std::collections::BTreeMap::new();
                metadata.insert("mark".to_owned(), mark.clone());
                let update = KeyUpdate::new()
                    .name(mark.clone())
                    .scopes([mark])
                    .metadata(metadata);
                assert!(store.update_key(&id, &update).await.unwrap());
            }
        })
    };
    let writers = [writer("a"), writer("b")];
    let mut reads = 0;
    while !writers.iter().all(tokio::task::JoinHandle::is_finished) || reads == 0 {
        let now = store.get(&id).await.unwrap().unwrap();
        if now.name != "after" {
            assert_eq!(
                now.scopes,
                std::slice::from_ref(&now.name),
                "part way: {now:?}"
            );
            assert_eq!(now.metadata["mark"], now.name, "part way: {now:?}");
        }
        reads += 1;
        tokio::task::yield_now().await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let last = store.get(&id).await.unwrap().unwrap();
    let ends = [format!("a{}", rounds - 1), format!("b{}", rounds - 1)];
    assert!(ends.contains(&last.name), "{}", last.name);
    assert_eq!(last.scopes, std::slice::from_ref(&last.name));
}

/// A key of `owner` (none if empty), created at `created`.
fn owned(owner: &str, created: u64) -> KeyRecord {
    let mut key = record("owned", created);
    key.owner = (!owner.is_empty()).then(|| owner.to_owned());
    key.expires_at = None;
    key
}

/// `KeyStoreAdmin::create_within` on stores `a` and `b` (two replicas of one store, or the same
/// store twice): an owner's keys in circulation (neither revoked nor expired; disabled ones
/// count) never pass the most allowed, whether creations come one by one, all at once on both
/// replicas, or interleaved with revocations.
pub async fn owners_never_hold_more_keys_than_allowed<S: KeyStoreAdmin + Clone>(a: S, b: S) {
    let now = at(1_800_000_000);
    let first = owned("acme", 1_700_000_000);
    let second = owned("acme", 1_700_000_001);
    assert!(a.create_within(first.clone(), 2, now).await.unwrap());
    assert!(b.create_within(second.clone(), 2, now).await.unwrap());
    let third = owned("acme", 1_700_000_002);
    assert!(!a.create_within(third.clone(), 2, now).await.unwrap());
    assert_eq!(a.get(&third.id).await.unwrap(), None, "refused: not stored");
    assert!(!a.create_within(third.clone(), 0, now).await.unwrap());
    assert!(
        a.create_within(owned("initech", 1_700_000_003), 2, now)
            .await
            .unwrap(),
        "another owner's keys are not counted"
    );
    assert!(
        a.create_within(owned("", 1_700_000_004), 0, now)
            .await
            .unwrap(),
        "a key with no owner is not counted"
    );
    assert!(a.set_disabled(&first.id, true).await.unwrap());
    assert!(
        !a.create_within(third.clone(), 2, now).await.unwrap(),
        "a disabled key counts: it can be enabled again"
    );
    assert!(a.revoke(&first.id, now).await.unwrap());
    assert!(
        b.create_within(third.clone(), 2, now).await.unwrap(),
        "a revoked key does not count"
    );
    let fourth = owned("acme", 1_700_000_005);
    assert!(!a.create_within(fourth.clone(), 2, now).await.unwrap());
    // Expiring exactly now is expired (as `KeyRecord::state` says); a second later is not.
    assert!(a.set_expiry(&second.id, Some(now)).await.unwrap());
    assert!(
        a.create_within(fourth.clone(), 2, now).await.unwrap(),
        "an expired key does not count"
    );
    let fifth = owned("acme", 1_700_000_006);
    assert!(a
        .set_expiry(&second.id, Some(at(1_800_000_001)))
        .await
        .unwrap());
    assert!(
        !a.create_within(fifth.clone(), 3, now).await.unwrap(),
        "a key expiring later counts"
    );
    match a.create_within(fourth.clone(), 4, now).await {
        Err(StoreError::Conflict(id)) => assert_eq!(id, fourth.id),
        other => panic!("a taken id must conflict, got {other:?}"),
    }
    // How many of `owner`'s keys are in circulation at `now`.
    let held = |store: S, owner: &'static str, now: SystemTime| async move {
        let filter = KeyFilter::new().owner(owner);
        let page = store.list_page(&filter, now, 0, usize::MAX).await.unwrap();
        page.records
            .iter()
            .filter(|key| key.in_circulation(now))
            .count()
    };
    assert_eq!(held(a.clone(), "acme", now).await, 3);

    // All at once, alternating between the replicas: exactly the most allowed.
    const MOST: u32 = 5;
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let key = owned("crowd", 1_700_000_000 + i);
                store
                    .create_within(key, MOST, SystemTime::now())
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        created += u32::from(task.await.unwrap());
    }
    assert_eq!(created, MOST, "a burst stops at the most allowed, exactly");
    assert_eq!(
        held(a.clone(), "crowd", SystemTime::now()).await,
        MOST as usize
    );

    // Creations and revocations interleaved on four workers: after every step, no more than
    // the most allowed are in circulation, and what is left is what was created and not
    // revoked.
    let live: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let filter = KeyFilter::new().owner("crowd");
    for key in a
        .list_page(&filter, SystemTime::now(), 0, 100)
        .await
        .unwrap()
        .records
    {
        live.lock().unwrap().push(key.id);
    }
    let seed = std::process::id() as usize * 7919 + 1;
    eprintln!("seed {seed}");
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let store = if worker % 2 == 0 {
                a.clone()
            } else {
                b.clone()
            };
            let live = live.clone();
            tokio::spawn(async move {
                let mut x = seed ^ ((worker + 1) * 104_729);
                let (mut created, mut revoked) = (0, 0);
                for step in 0..40 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let victim = (x % 3 == 0)
                        .then(|| {
                            let mut live = live.lock().unwrap();
                            let count = live.len();
                            (count > 0).then(|| live.swap_remove(x % count))
                        })
                        .flatten();
                    if let Some(id) = victim {
                        assert!(store.revoke(&id, SystemTime::now()).await.unwrap());
                        revoked += 1;
                    } else {
                        let key = owned("crowd", 1_700_001_000 + worker as u64 * 100 + step);
                        let id = key.id.clone();
                        if store
                            .create_within(key, MOST, SystemTime::now())
                            .await
                            .unwrap()
                        {
                            live.lock().unwrap().push(id);
                            created += 1;
                        }
                    }
                    let now_held = held(store.clone(), "crowd", SystemTime::now()).await;
                    assert!(
                        now_held <= MOST as usize,
                        "{now_held} keys in circulation, past {MOST} (seed {seed})"
                    );
                }
                (created, revoked)
            })
        })
        .collect();
    let (mut created, mut revoked) = (MOST as usize, 0);
    for worker in workers {
        let (c, r) = worker.await.unwrap();
        created += c;
        revoked += r;
    }
    assert!(revoked > 0 && created > MOST as usize, "both interleaved");
    assert_eq!(held(a, "crowd", SystemTime::now()).await, created - revoked);
}

/// `KeyStoreAdmin::update_key_within` on stores `a` and `b` (two replicas of one store, or the
/// same store twice): an expired key comes back into circulation (a later expiry, or none) only
/// while its owner holds fewer keys than the most; changes that do not bring a key back always
/// pass.
pub async fn expired_keys_come_back_only_within_the_most<S: KeyStoreAdmin + Clone>(a: S, b: S) {
    let now = at(1_800_000_000);
    let expired = |owner: &str, created| {
        let mut key = owned(owner, created);
        key.expires_at = Some(at(1_799_999_000));
        key
    };
    let (one, two) = (
        owned("umbrella", 1_700_000_000),
        owned("umbrella", 1_700_000_001),
    );
    let old = expired("umbrella", 1_700_000_002);
    for key in [&one, &two, &old] {
        a.create(key.clone()).await.unwrap();
    }
    let within = |store: &S, id: &str, update: KeyUpdate, max| {
        let (store, id) = (store.clone(), id.to_owned());
        async move {
            store
                .update_key_within(&id, &update, max, now)
                .await
                .unwrap()
        }
    };
    let back = KeyUpdate::new()
        .expires_at(Some(at(1_900_000_000)))
        .name("back");
    assert_eq!(within(&a, &old.id, back.clone(), 2).await, Some(false));
    let kept = a.get(&old.id).await.unwrap().unwrap();
    assert_eq!(
        (kept.name.as_str(), kept.expires_at),
        ("owned", old.expires_at),
        "refused: nothing changed"
    );
    let forever = KeyUpdate::new().expires_at(None);
    assert_eq!(
        within(&b, &old.id, forever.clone(), 2).await,
        Some(false),
        "no expiry brings it back too"
    );
    // What does not bring a key back passes at the most: a rename, an earlier expiry, a new
    // expiry of a key in circulation, any change of a revoked key (which stays revoked).
    let renamed = KeyUpdate::new().name("still old");
    assert_eq!(within(&a, &old.id, renamed, 2).await, Some(true));
    let earlier = KeyUpdate::new().expires_at(Some(at(1_700_000_100)));
    assert_eq!(within(&b, &old.id, earlier, 2).await, Some(true));
    assert_eq!(within(&a, &one.id, forever.clone(), 2).await, Some(true));
    assert_eq!(within(&a, "no-such-key", forever.clone(), 2).await, None);
    assert!(b.revoke(&two.id, now).await.unwrap());
    assert_eq!(within(&a, &two.id, forever.clone(), 1).await, Some(true));
    assert!(a.get(&two.id).await.unwrap().unwrap().revoked_at.is_some());
    // With room again (the revoked key no longer counts), it comes back.
    assert_eq!(within(&b, &old.id, back, 2).await, Some(true));
    let kept = a.get(&old.id).await.unwrap().unwrap();
    assert_eq!(kept.name, "back");
    assert!(kept.in_circulation(now));
}

/// `KeyStoreAdmin::update_key_within` on stores `a` and `b`, all at once: twelve expired keys
/// of an owner with two in circulation, brought back through both replicas with at most five:
/// exactly three come back.
pub async fn expired_keys_brought_back_at_once_stop_at_the_most<S: KeyStoreAdmin + Clone>(
    a: S,
    b: S,
) {
    let now = at(1_800_000_000);
    let forever = KeyUpdate::new().expires_at(None);
    const MOST: u32 = 5;
    for i in 0..2 {
        a.create(owned("horde", 1_700_000_000 + i)).await.unwrap();
    }
    let mut ids = Vec::new();
    for i in 0..12 {
        let mut key = owned("horde", 1_700_000_100 + i);
        key.expires_at = Some(at(1_799_999_000));
        ids.push(key.id.clone());
        b.create(key).await.unwrap();
    }
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (id, forever) = (id.clone(), forever.clone());
            tokio::spawn(async move {
                store
                    .update_key_within(&id, &forever, MOST, now)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut back = 0;
    for task in tasks {
        back += u32::from(task.await.unwrap() == Some(true));
    }
    assert_eq!(
        back, 3,
        "the expired keys brought back stop at the most, exactly"
    );
    let filter = KeyFilter::new().owner("horde");
    let page = a.list_page(&filter, now, 0, 100).await.unwrap();
    let held = page.records.iter().filter(|key| key.in_circulation(now));
    assert_eq!(held.count(), MOST as usize);
}
