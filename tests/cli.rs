//! The `tower-api-key` binary, end to end, on the SQLite file a service reads.

#[cfg(not(feature = "cli"))]
#[test]
#[ignore = "the command line tool needs `--features cli` (run by .ci/run)"]
fn cli_suite_needs_the_cli_feature() {}

#[cfg(feature = "cli")]
mod common;

#[cfg(feature = "cli")]
mod cli {
    use crate::common;

    use std::path::PathBuf;
    use std::process::{Command, Output};
    use std::time::{Duration, SystemTime};

    use http::StatusCode;
    use tower::{service_fn, Layer, ServiceExt};
    use tower_api_key::store::AuditQuery;
    use tower_api_key::usage::Analytics;
    use tower_api_key::{
        clock::ManualClock, key::SecretDigest, reject::Rejection, ApiKeyLayer, ApiKeyLayerBuilder,
        KeyManager, SqliteStore,
    };

    struct Tool {
        dir: PathBuf,
        url: String,
        outputs: Vec<(String, String)>,
        /// More environment for the tool.
        env: Vec<(String, String)>,
    }

    impl Tool {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(common::unique("tower-api-key-cli"));
            std::fs::create_dir_all(&dir).unwrap();
            let url = format!("sqlite://{}", dir.join("keys.db").display());
            Tool {
                dir,
                url,
                outputs: Vec::new(),
                env: Vec::new(),
            }
        }

        /// Runs the tool with `args`; keeps what it printed under `command`.
        fn run(&mut self, args: &[&str]) -> Output {
            let output = Command::new(env!("CARGO_BIN_EXE_tower-api-key"))
                .args(args)
                .env("DATABASE_URL", &self.url)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&self.dir)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            self.outputs
                .push((args[..2.min(args.len())].join(" "), text));
            output
        }

        fn ok_json(&mut self, args: &[&str]) -> serde_json::Value {
            let output = self.run(args);
            assert!(output.status.success(), "{args:?}: {output:?}");
            serde_json::from_slice(&output.stdout).unwrap()
        }

        /// Creates a key with `options` (after `--json create`): what the tool printed, the key's
        /// id and the key.
        fn create(&mut self, options: &[&str]) -> (serde_json::Value, String, String) {
            let created = self.ok_json(&[&["--json", "create"], options].concat());
            let id = created["info"]["id"].as_str().unwrap().to_owned();
            let key = created["key"].as_str().unwrap().to_owned();
            (created, id, key)
        }

        /// The names of the keys `list --json` prints with `filters`, sorted (keys created in
        /// the same second are listed in the order of their random ids).
        fn names(&mut self, filters: &[&str]) -> Vec<String> {
            let listed = self.ok_json(&[&["--json", "list"], filters].concat());
            let mut names: Vec<String> = (listed.as_array().unwrap().iter())
                .map(|key| key["name"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            names
        }

        fn failure(&mut self, args: &[&str]) -> (i32, String) {
            let output = self.run(args);
            assert!(!output.status.success(), "{args:?} should fail");
            let stderr = String::from_utf8(output.stderr).unwrap();
            assert!(!stderr.contains("panicked"), "{stderr}");
            (output.status.code().unwrap(), stderr)
        }

        /// What the service on the same database answers for `key`, at `clock`'s time, from
        /// 198.51.100.7.
        async fn status(&self, key: &str, clock: &ManualClock) -> (StatusCode, Option<Rejection>) {
            self.status_from(key, clock, Some("198.51.100.7:40000"))
                .await
        }

        /// What the service answers for `key` from `peer` (a connection's address, as a server
        /// puts it into the request's extensions), or from an unknown address.
        async fn status_from(
            &self,
            key: &str,
            clock: &ManualClock,
            peer: Option<&str>,
        ) -> (StatusCode, Option<Rejection>) {
            let store = SqliteStore::connect(&self.url).await.unwrap();
            answer(
                ApiKeyLayer::builder("mesh", store).clock(clock.clone()),
                key,
                peer,
            )
            .await
        }
    }

    /// What a service built by `builder` answers for `key` from `peer` (a connection's address,
    /// as a server puts it into the request's extensions), or from an unknown address.
    async fn answer(
        builder: ApiKeyLayerBuilder,
        key: &str,
        peer: Option<&str>,
    ) -> (StatusCode, Option<Rejection>) {
        let service = builder
            .build()
            .unwrap()
            .layer(service_fn(|_: http::Request<()>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            }));
        let mut request = http::Request::get("/")
            .header("authorization", format!("ApiKey {key}"))
            .body(())
            .unwrap();
        if let Some(peer) = peer {
            let peer: std::net::SocketAddr = peer.parse().unwrap();
            request.extensions_mut().insert(peer);
        }
        let response = service.oneshot(request).await.unwrap();
        (
            response.status(),
            response.extensions().get::<Rejection>().copied(),
        )
    }

    impl Tool {
        /// What one service on the same database answers to `n` requests, one with each of
        /// `keys` in turn, in order.
        async fn answers(&self, keys: &[&str], n: usize) -> Vec<StatusCode> {
            let store = SqliteStore::connect(&self.url).await.unwrap();
            let layer = ApiKeyLayer::new("mesh", store).unwrap();
            let service = layer.layer(service_fn(|_: http::Request<()>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            }));
            let mut answers = Vec::new();
            for i in 0..n {
                let key = keys[i % keys.len()];
                let request = http::Request::get("/")
                    .header("authorization", format!("ApiKey {key}"))
                    .body(())
                    .unwrap();
                answers.push(service.clone().oneshot(request).await.unwrap().status());
            }
            answers
        }
    }

    impl Drop for Tool {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_use_rotate_expire_revoke() {
        let mut tool = Tool::new();
        let clock = ManualClock::new(SystemTime::now());
        let created = tool.ok_json(&[
            "--json",
            "create",
            "--name",
            "production-server",
            "--scopes",
            "read,write",
            "--env",
            "live",
            "--expires-in",
            "90d",
            "--plan",
            "free",
        ]);
        let old_key = created["key"].as_str().unwrap().to_owned();
        let old_id = created["info"]["id"].as_str().unwrap().to_owned();
        assert!(old_key.starts_with("mesh_live_"));
        assert_eq!(
            created["info"]["scopes"],
            serde_json::json!(["read", "write"])
        );
        assert_eq!(
            tool.status(&old_key, &clock).await.0,
            StatusCode::OK,
            "works at once"
        );

        let rotated = tool.ok_json(&["--json", "rotate", &old_id, "--grace", "24h"]);
        let new_key = rotated["key"].as_str().unwrap().to_owned();
        assert_ne!(new_key, old_key);
        assert_eq!(tool.status(&new_key, &clock).await.0, StatusCode::OK);
        assert_eq!(
            tool.status(&old_key, &clock).await.0,
            StatusCode::OK,
            "during the grace"
        );
        clock.advance(Duration::from_secs(25 * 3600));
        assert_eq!(
            tool.status(&old_key, &clock).await.1,
            Some(Rejection::ApiKeyExpired),
            "after the grace"
        );
        assert_eq!(tool.status(&new_key, &clock).await.0, StatusCode::OK);

        let new_id = rotated["info"]["id"].as_str().unwrap().to_owned();
        let listed = tool.ok_json(&["--json", "list"]);
        assert_eq!(listed.as_array().unwrap().len(), 2);
        let shown = tool.ok_json(&["--json", "show", &new_id]);
        assert_eq!(shown["name"], "production-server");
        assert_eq!(shown["state"], "active");
        let scoped = tool.ok_json(&["--json", "set-scopes", &new_id, "read"]);
        assert_eq!(scoped["scopes"], serde_json::json!(["read"]));

        let revoked = tool.ok_json(&["--json", "revoke", &new_id]);
        assert_eq!(revoked["result"], "revoked");
        assert_eq!(
            tool.status(&new_key, &clock).await.1,
            Some(Rejection::ApiKeyRevoked)
        );
        assert_eq!(
            tool.ok_json(&["--json", "show", &new_id])["state"],
            "revoked"
        );
        tool.ok_json(&["--json", "delete", &new_id]);
        assert_eq!(
            tool.status(&new_key, &clock).await.1,
            Some(Rejection::InvalidApiKey)
        );

        // The human output: the key once, then how to keep it.
        let output = tool.run(&["create", "--name", "ci", "--var", "ADMESH_API_KEY"]);
        assert!(output.status.success());
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.contains("export ADMESH_API_KEY=mesh_live_"), "{text}");
        assert!(text.contains("shown once"), "{text}");
        let human_list = tool.run(&["list"]);
        assert!(String::from_utf8(human_list.stdout)
            .unwrap()
            .contains("production-server"));

        // The secret is printed by create, generate and rotate only.
        let generated = tool.ok_json(&["--json", "generate", "--name", "offline"]);
        assert!(generated["record"]["digest"].is_string());
        let secrets = [old_key.clone(), new_key.clone()];
        for (command, text) in &tool.outputs {
            let may_show = command.contains("create")
                || command.contains("rotate")
                || command.contains("generate");
            if !may_show {
                for secret in &secrets {
                    assert!(
                        !text.contains(secret.as_str()),
                        "`{command}` printed a secret"
                    );
                    let secret_part = &secret[secret.len() - 38..secret.len() - 6];
                    assert!(!text.contains(secret_part), "`{command}` printed a secret");
                }
            }
        }
    }

    /// A service running on the file, over HTTP, with the store's listener on (as the demo
    /// has): each change the tool makes reaches it within seconds (a read every 250 ms),
    /// although its cache would keep the key for an hour.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_service_sees_the_tools_changes_at_once() {
        let mut tool = Tool::new();
        let (_, id, key) = tool.create(&["--scopes", "read"]);
        let store = SqliteStore::connect(&tool.url).await.unwrap();
        let layer = ApiKeyLayer::builder("mesh", store.clone())
            .cache(tower_api_key::cache::CacheConfig {
                ttl: Duration::from_secs(3600),
                ..Default::default()
            })
            .build()
            .unwrap();
        let listener = store.spawn_listener(layer.handle()).await.unwrap();
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let client = common::HttpClient::new(common::serve(common::app(layer, calls)).await);
        let authorization = common::api_key(&key);
        let answer = || async {
            let reply = client
                .get("/recommendations", &[("authorization", &authorization)])
                .await;
            match reply.status {
                StatusCode::OK => "OK".to_owned(),
                _ => reply.code(),
            }
        };
        assert_eq!(answer().await, "OK");
        for (change, then) in [
            (
                &["set-scopes", &id, "billing"][..],
                "INSUFFICIENT_PERMISSIONS",
            ),
            (&["set-scopes", &id, "read"], "OK"),
            (&["disable", &id], "API_KEY_DISABLED"),
            (&["enable", &id], "OK"),
            (&["revoke", &id], "API_KEY_REVOKED"),
        ] {
            let output = tool.run(change);
            assert!(output.status.success(), "{change:?}: {output:?}");
            let started = std::time::Instant::now();
            loop {
                let now = answer().await;
                if now == then {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "after {change:?} the service still answers {now}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        listener.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotate_never_brings_back_a_revoked_or_disabled_key_and_copies_every_setting() {
        let mut tool = Tool::new();
        let clock = ManualClock::new(SystemTime::now());
        let (created, id, key) = tool.create(&[
            "--name",
            "worker",
            "--scopes",
            "read",
            "--owner",
            "acme",
            "--plan",
            "pro",
            "--expires-in",
            "30d",
            "--allow-ip",
            "198.51.100.0/24",
        ]);

        let disabled = tool.ok_json(&["--json", "disable", &id]);
        assert_eq!(disabled["state"], "disabled");
        assert_eq!(
            tool.status(&key, &clock).await.1,
            Some(Rejection::ApiKeyDisabled)
        );
        let (code, stderr) = tool.failure(&["rotate", &id]);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("only an active key can be rotated"),
            "{stderr}"
        );

        let enabled = tool.ok_json(&["--json", "enable", &id]);
        assert_eq!(enabled["state"], "active");
        assert_eq!(tool.status(&key, &clock).await.0, StatusCode::OK);
        let rotated = tool.ok_json(&["--json", "rotate", &id, "--grace", "1h"]);
        for field in [
            "name",
            "scopes",
            "owner",
            "plan",
            "environment",
            "expires_at",
            "allowed_networks",
        ] {
            assert_eq!(rotated["info"][field], created["info"][field], "{field}");
        }

        let new_id = rotated["info"]["id"].as_str().unwrap().to_owned();
        tool.ok_json(&["--json", "revoke", &new_id]);
        let (code, stderr) = tool.failure(&["rotate", &new_id]);
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(
            tool.ok_json(&["--json", "list"]).as_array().unwrap().len(),
            2,
            "no key was issued by the refused rotations"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn named_limits_are_set_shown_and_enforced() {
        let mut tool = Tool::new();
        let (created, id, key) = tool.create(&[
            "--name",
            "metered",
            "--limit",
            "burst=2/1h",
            "--limit",
            "hour=5/3600",
        ]);
        assert_eq!(
            created["info"]["limits"]["named"],
            serde_json::json!([
                {"name": "burst", "limit": 2, "window": 3600},
                {"name": "hour", "limit": 5, "window": 3600},
            ])
        );
        assert_eq!(
            tool.answers(&[&key], 3).await,
            [
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::TOO_MANY_REQUESTS
            ]
        );
        let shown = tool.run(&["show", &id]);
        let text = String::from_utf8(shown.stdout).unwrap();
        assert!(
            text.contains("limits:      burst=2/3600s, hour=5/3600s"),
            "{text}"
        );

        let set = tool.ok_json(&["--json", "set-limits", &id, "--limit", "burst=1/1d"]);
        assert_eq!(
            set["limits"]["named"],
            serde_json::json!([{"name": "burst", "limit": 1, "window": 86400}])
        );
        assert_eq!(
            tool.answers(&[&key], 2).await,
            [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]
        );
        let cleared = tool.ok_json(&["--json", "set-limits", &id, "--none"]);
        assert_eq!(cleared["limits"], serde_json::Value::Null);
        assert_eq!(tool.answers(&[&key], 3).await, [StatusCode::OK; 3]);

        for bad in [
            &["create", "--limit", "burst"][..],
            &["create", "--limit", "Burst=1/1s"],
            &["create", "--limit", "burst=1/0s"],
            &["set-limits", &id, "--limit", "x=1/1y"],
        ] {
            let (code, message) = tool.failure(bad);
            assert_eq!(code, 2, "{bad:?}: {message}");
            assert!(message.contains("limit"), "{message}");
        }
        let (code, message) = tool.failure(&["create", "--plan", "free", "--limit", "a=1/1s"]);
        assert_eq!(code, 2, "{message}");
        assert_eq!(tool.failure(&["set-limits", &id]).0, 2);
        assert_eq!(tool.failure(&["set-limits", "nope", "--none"]).0, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn credits_are_set_topped_up_shown_and_spent() {
        let mut tool = Tool::new();
        let (created, id, key) = tool.create(&[
            "--name",
            "trial",
            "--credits",
            "2",
            "--refill",
            "monthly:15",
        ]);
        assert_eq!(created["info"]["credits"]["remaining"], 2);
        assert_eq!(
            created["info"]["credits"]["refill"],
            serde_json::json!({"amount": 2, "every": {"monthly": {"day": 15}}})
        );
        assert_eq!(
            tool.answers(&[&key], 3).await,
            [
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::TOO_MANY_REQUESTS
            ]
        );
        let topped = tool.ok_json(&["--json", "credits", &id, "--top-up", "1"]);
        assert_eq!(topped["credits"]["remaining"], 1);
        assert_eq!(
            tool.answers(&[&key], 2).await,
            [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]
        );
        let output = tool.run(&["credits", &id, "--set", "5", "--refill", "daily"]);
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(
            text.contains("credits:     5 (refilled to 5 daily)"),
            "{text}"
        );
        let removed = tool.ok_json(&["--json", "credits", &id, "--none"]);
        assert_eq!(removed["credits"], serde_json::Value::Null);
        assert_eq!(
            tool.answers(&[&key], 3).await,
            [StatusCode::OK; 3],
            "not metered"
        );

        let (code, message) = tool.failure(&["credits", &id, "--top-up", "3"]);
        assert_eq!(code, 2, "{message}");
        assert!(message.contains("has no credits"), "{message}");
        for bad in [
            &["create", "--credits", "5", "--refill", "monthly:31"][..],
            &["create", "--credits", "5", "--refill", "weekly"],
            &["create", "--refill", "daily"],
            &["create", "--credits", "-1"],
            &["credits", &id],
            &["credits", &id, "--set", "1", "--none"],
        ] {
            assert_eq!(tool.failure(bad).0, 2, "{bad:?}");
        }
        assert_eq!(tool.failure(&["credits", "nope", "--set", "1"]).0, 3);
        assert_eq!(tool.failure(&["credits", "nope", "--top-up", "1"]).0, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn owner_limits_and_credits_are_set_shown_and_enforced() {
        use serde_json::Value::Null;
        use StatusCode as S;

        let mut tool = Tool::new();
        let (_, a_id, a) = tool.create(&["--name", "a", "--owner", "acme"]);
        let (_, b_id, b) = tool.create(&["--name", "b", "--owner", "acme"]);
        tool.create(&["--name", "c", "--owner", "globex"]);
        let nothing = tool.ok_json(&["--json", "owner", "acme"]);
        assert_eq!((&nothing["limits"], &nothing["credits"]), (&Null, &Null));
        // Listed by creation time, then id (both may be of one second): compared as sets.
        let mut listed: Vec<String> = serde_json::from_value(nothing["keys"].clone()).unwrap();
        listed.sort();
        let mut owned = vec![a_id.clone(), b_id.clone()];
        owned.sort();
        assert_eq!(listed, owned);

        let set = tool.ok_json(&[
            "--json",
            "owner",
            "acme",
            "--per-minute",
            "100",
            "--limit",
            "burst=3/1h",
        ]);
        assert_eq!(set["limits"]["per_minute"], 100);
        assert_eq!(set["limits"]["named"][0]["name"], "burst");
        assert_eq!(
            tool.answers(&[&a, &b], 5).await,
            [
                S::OK,
                S::OK,
                S::OK,
                S::TOO_MANY_REQUESTS,
                S::TOO_MANY_REQUESTS
            ],
            "3 for both keys"
        );
        let output = tool.run(&["owner", "acme", "--credits", "2", "--refill", "daily"]);
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(
            text.contains("limits:      100/minute (burst 100), burst=3/3600s"),
            "{text}"
        );
        assert!(
            text.contains("credits:     2 (refilled to 2 daily)"),
            "{text}"
        );
        assert!(
            text.lines().any(|line| line.starts_with("keys:")
                && line.contains(&a_id)
                && line.contains(&b_id)),
            "{text}"
        );
        let unlimited = tool.ok_json(&["--json", "owner", "acme", "--no-limits"]);
        assert_eq!(unlimited["limits"], Null);
        assert_eq!(unlimited["credits"]["remaining"], 2, "the credits stay");
        assert_eq!(
            tool.answers(&[&a, &b], 3).await,
            [S::OK, S::OK, S::TOO_MANY_REQUESTS],
            "2 credits for both keys"
        );
        let topped = tool.ok_json(&["--json", "owner", "acme", "--top-up", "1"]);
        assert_eq!(topped["credits"]["remaining"], 1);
        assert_eq!(
            tool.answers(&[&b, &a], 2).await,
            [S::OK, S::TOO_MANY_REQUESTS]
        );
        let removed = tool.ok_json(&["--json", "owner", "acme", "--no-credits"]);
        assert_eq!((&removed["limits"], &removed["credits"]), (&Null, &Null));
        assert_eq!(tool.answers(&[&a, &b], 4).await, [S::OK; 4], "nothing set");

        let (code, message) = tool.failure(&["owner", "acme", "--top-up", "3"]);
        assert_eq!(code, 2, "{message}");
        assert!(message.contains("has no credits"), "{message}");
        for bad in [
            &["owner", "acme", "--per-minute", "1", "--no-limits"][..],
            &["owner", "acme", "--credits", "1", "--no-credits"],
            &["owner", "acme", "--refill", "daily"],
            &["owner", "acme", "--credits", "-1"],
            &["owner", "acme", "--daily", "ten"],
            &["owner", "acme", "--limit", "x=1/1y"],
            &["owner", " "],
            &["owner"],
        ] {
            assert_eq!(tool.failure(bad).0, 2, "{bad:?}");
        }
        let daily = tool.ok_json(&["--json", "set-limits", &a_id, "--daily", "1"]);
        assert_eq!(
            daily["limits"]["daily"], 1,
            "set-limits takes the same limits"
        );
        assert_eq!(
            tool.failure(&["set-limits", &a_id, "--daily", "1", "--none"])
                .0,
            2
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_id_key_from_the_environment_signs_the_ids_the_tool_makes() {
        use tower_api_key::key::{IdKey, KeyFormat};

        let hex = "5e".repeat(32);
        let signed = KeyFormat::new("mesh")
            .unwrap()
            .with_id_key(IdKey::from_hex(&hex).unwrap());
        let mut tool = Tool::new();
        let (_, unsigned_id, _) = tool.create(&["--name", "before"]);
        assert!(!signed.issued(&unsigned_id), "no id key: a random id");
        tool.env.push(("TOWER_API_KEY_ID_KEY".into(), hex.clone()));
        let (_, id, key) = tool.create(&["--name", "after"]);
        assert!(signed.issued(&id), "{id}");
        let generated = tool.ok_json(&["--json", "generate"]);
        assert!(signed.issued(generated["record"]["id"].as_str().unwrap()));
        // A service with that id key takes it.
        let store = SqliteStore::connect(&tool.url).await.unwrap();
        let id_key = IdKey::from_hex(&hex).unwrap();
        let builder = ApiKeyLayer::builder("mesh", store).id_key(id_key);
        assert_eq!(answer(builder, &key, None).await.0, StatusCode::OK);
        // The secret is never echoed.
        let (code, message) = tool.failure(&["create", "--id-key", "not hex"]);
        assert_eq!(code, 2, "{message}");
        assert!(message.contains("hex"), "{message}");
        assert_eq!(tool.failure(&["create", "--id-key", &"ab".repeat(8)]).0, 2);
        let help = tool.run(&["--help"]);
        let help = String::from_utf8(help.stdout).unwrap();
        assert!(help.contains("TOWER_API_KEY_ID_KEY"), "{help}");
        assert!(!help.contains(&hex), "the id key is never shown");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn networks_are_set_shown_and_enforced() {
        let mut tool = Tool::new();
        let clock = ManualClock::new(SystemTime::now());
        let (created, id, key) = tool.create(&[
            "--name",
            "office",
            "--allow-ip",
            "203.0.113.0/24,2001:db8::1",
        ]);
        assert_eq!(
            created["info"]["allowed_networks"],
            serde_json::json!(["203.0.113.0/24", "2001:db8::1/128"])
        );
        let from = |peer| tool.status_from(&key, &clock, peer);
        assert_eq!(from(Some("203.0.113.9:5000")).await.0, StatusCode::OK);
        assert_eq!(from(Some("[2001:db8::1]:443")).await.0, StatusCode::OK);
        for outside in [Some("198.51.100.1:5000"), Some("[2001:db8::2]:443"), None] {
            assert_eq!(
                from(outside).await,
                (StatusCode::FORBIDDEN, Some(Rejection::IpNotAllowed)),
                "{outside:?}"
            );
        }

        let anywhere = tool.ok_json(&["--json", "set-networks", &id, "--anywhere"]);
        assert_eq!(anywhere["allowed_networks"], serde_json::json!([]));
        let from = |peer| tool.status_from(&key, &clock, peer);
        assert_eq!(from(Some("198.51.100.1:5000")).await.0, StatusCode::OK);

        let output = tool.run(&["set-networks", &id, "10.0.0.0/8"]);
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.contains("networks:    10.0.0.0/8"), "{text}");
        let from = |peer| tool.status_from(&key, &clock, peer);
        assert_eq!(from(Some("10.20.30.40:1")).await.0, StatusCode::OK);
        assert_eq!(from(Some("203.0.113.9:1")).await.0, StatusCode::FORBIDDEN);

        for bad in [
            &["create", "--allow-ip", "10.0.0.0/33"][..],
            &["set-networks", &id, "ten"],
        ] {
            let (code, message) = tool.failure(bad);
            assert_eq!(code, 2, "{message}");
            assert!(message.contains("is not a network"), "{message}");
        }
        let (code, message) = tool.failure(&["set-networks", &id]);
        assert_eq!(code, 2, "{message}");
        let (code, message) = tool.failure(&["set-networks", &id, "10.0.0.0/8", "--anywhere"]);
        assert_eq!(code, 2, "{message}");
        assert_eq!(tool.failure(&["set-networks", "nope", "10.0.0.0/8"]).0, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn far_future_times_never_panic() {
        let mut tool = Tool::new();
        let (code, stderr) =
            tool.failure(&["create", "--name", "forever", "--expires-in", "10000y"]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("9999"), "{stderr}");

        // A record written by something else, expiring after the year 9999.
        let store = SqliteStore::connect(&tool.url).await.unwrap();
        let far = tower_api_key::NewKey::new("far")
            .generate(&tower_api_key::key::KeyFormat::new("mesh").unwrap())
            .unwrap();
        let mut record = far.record;
        record.expires_at =
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400 * 1000));
        let id = record.id.clone();
        tower_api_key::store::KeyStoreAdmin::create(&store, record)
            .await
            .unwrap();
        let listed = tool.run(&["list"]);
        assert!(listed.status.success(), "{listed:?}");
        assert!(String::from_utf8_lossy(&listed.stdout).contains("after 9999-12-31"));
        let shown = tool.run(&["show", &id]);
        assert!(shown.status.success(), "{shown:?}");

        let created = tool.ok_json(&["--json", "create", "--name", "rotated"]);
        let id = created["info"]["id"].as_str().unwrap().to_owned();
        let (code, stderr) = tool.failure(&["rotate", &id, "--grace", "20000y"]);
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(
            tool.ok_json(&["--json", "list"]).as_array().unwrap().len(),
            2,
            "the refused rotation issued no key"
        );
    }

    #[test]
    fn list_prints_the_keys_its_filters_let_through() {
        let mut tool = Tool::new();
        tool.create(&["--name", "Deploy bot", "--owner", "acme"]);
        let (_, ci, _) = tool.create(&["--name", "ci", "--owner", "acme", "--env", "test"]);
        tool.create(&["--name", "deploys", "--owner", "globex"]);
        tool.ok_json(&["--json", "revoke", &ci]);
        assert_eq!(tool.names(&[]).len(), 3);
        assert_eq!(tool.names(&["--owner", "acme"]), ["Deploy bot", "ci"]);
        assert_eq!(tool.names(&["--env", "test"]), ["ci"]);
        assert_eq!(tool.names(&["--state", "revoked"]), ["ci"]);
        assert_eq!(
            tool.names(&["--state", "active", "--name", "DEPLOY"]),
            ["Deploy bot", "deploys"]
        );
        assert_eq!(
            tool.names(&["--owner", "acme", "--name", "deploy"]),
            ["Deploy bot"]
        );
        assert!(tool.names(&["--owner", "initech"]).is_empty());

        let none = tool.run(&["list", "--owner", "initech"]);
        assert!(none.status.success());
        assert_eq!(
            String::from_utf8(none.stdout).unwrap().trim(),
            "No keys match."
        );
        let (code, message) = tool.failure(&["list", "--state", "lost"]);
        assert_eq!(code, 2);
        assert!(
            message.contains("write active, disabled, revoked or expired"),
            "{message}"
        );
    }

    /// `create --max-per-owner N` issues no key to an owner with N keys in circulation.
    #[test]
    fn create_keeps_an_owner_within_its_most_keys() {
        let mut tool = Tool::new();
        let within = ["--owner", "acme", "--max-per-owner", "2"];
        let (_, first, _) = tool.create(&[&["--name", "one"], &within[..]].concat());
        let (_, two, _) = tool.create(&[&["--name", "two"], &within[..]].concat());
        let (code, message) = tool.failure(&[&["create", "--name", "three"], &within[..]].concat());
        assert_eq!(code, 2);
        assert!(
            message.contains("the most keys in use allowed (2"),
            "{message}"
        );
        assert_eq!(tool.names(&["--owner", "acme"]), ["one", "two"]);
        // Without the option, as before; another owner is not counted.
        tool.create(&["--name", "three", "--owner", "acme"]);
        tool.create(
            &[
                &["--name", "other"],
                &["--owner", "globex", "--max-per-owner", "1"][..],
            ]
            .concat(),
        );
        // Revoked keys no longer count.
        tool.ok_json(&["--json", "revoke", &first]);
        let (code, _) = tool.failure(&[&["create", "--name", "four"], &within[..]].concat());
        assert_eq!(
            code, 2,
            "three of acme's keys in circulation: two and three"
        );
        let wider = ["--owner", "acme", "--max-per-owner", "3"];
        let (_, four, _) = tool.create(&[&["--name", "four"], &wider[..]].concat());
        assert_eq!(
            tool.names(&["--owner", "acme", "--state", "active"]),
            ["four", "three", "two"]
        );
        // Set once in the environment, for every command; keys without an owner are not
        // counted.
        tool.env
            .push(("TOWER_API_KEY_MAX_PER_OWNER".into(), "3".into()));
        let (code, _) = tool.failure(&["create", "--name", "five", "--owner", "acme"]);
        assert_eq!(code, 2, "three in circulation: two, three and four");
        tool.create(&["--name", "no owner"]);
        tool.create(&["--name", "globex two", "--owner", "globex"]);
        let (code, message) = tool.failure(&["create", "--name", "x", "--max-per-owner", "many"]);
        assert_eq!(code, 2);
        assert!(message.contains("--max-per-owner"), "{message}");

        // A rotation may take the owner one over while the old key's grace period runs; a
        // second one during that grace is refused.
        let rotated = tool.ok_json(&["--json", "rotate", &four, "--grace", "1h"]);
        let successor = rotated["info"]["id"].as_str().unwrap().to_owned();
        let (code, message) = tool.failure(&["rotate", &successor, "--grace", "1h"]);
        assert_eq!(code, 2, "{message}");
        assert!(
            message.contains("the most keys in use allowed (3"),
            "{message}"
        );
        let active = tool.names(&["--owner", "acme", "--state", "active"]);
        assert_eq!(active, ["four", "four", "three", "two"]);

        // An expired key given a later expiry comes back into circulation: refused at the most
        // too. Ending "two" leaves three in circulation, the most.
        tool.ok_json(&["--json", "update", &two, "--expires-in", "0s"]);
        let (code, message) = tool.failure(&["update", &two, "--expires-in", "30d"]);
        assert_eq!(code, 2, "{message}");
        assert!(
            message.contains("the most keys in use allowed (3"),
            "{message}"
        );
        let shown = tool.ok_json(&["--json", "show", &two]);
        assert_eq!(shown["state"], "expired");
    }

    /// `--max-lifetime` (or `TOWER_API_KEY_MAX_LIFETIME`): a key created or generated without
    /// `--expires-in` gets it; a later expiry, or `--no-expiry`, is refused with exit code 2 and
    /// changes nothing; a rotation brings the old key's expiry within it.
    #[test]
    fn no_key_outlives_the_longest_lifetime() {
        let mut tool = Tool::new();
        let unix = common::unix_now;
        const MONTH: u64 = 30 * 86_400;
        let within = |at: &serde_json::Value, before: u64, after: u64| {
            let at = at.as_u64().unwrap_or_else(|| panic!("an expiry: {at}"));
            assert!(before + MONTH <= at && at <= after + MONTH, "{at}");
        };
        let limit = ["--max-lifetime", "30d"];
        let before = unix();
        let (created, id, _) = tool.create(&[&["--name", "ci"], &limit[..]].concat());
        within(&created["info"]["expires_at"], before, unix());
        let generated = tool.ok_json(&["--json", "generate", "--max-lifetime", "30d"]);
        within(&generated["record"]["expires_at"], before, unix());

        let too_late = |tool: &mut Tool, args: &[&str]| {
            let (code, message) = tool.failure(&[args, &limit[..]].concat());
            assert_eq!(code, 2, "{message}");
            assert!(message.contains("at most 30 days from now"), "{message}");
        };
        too_late(
            &mut tool,
            &["create", "--name", "late", "--expires-in", "31d"],
        );
        too_late(&mut tool, &["generate", "--expires-in", "1y"]);
        too_late(
            &mut tool,
            &["update", &id, "--no-expiry", "--name", "renamed"],
        );
        too_late(&mut tool, &["update", &id, "--expires-in", "60d"]);
        assert_eq!(tool.names(&[]), ["ci"]);
        let shown = tool.ok_json(&["--json", "show", &id]);
        assert_eq!(shown["expires_at"], created["info"]["expires_at"]);
        let moved =
            tool.ok_json(&[&["--json", "update", &id, "--expires-in", "7d"], &limit[..]].concat());
        let week = moved["expires_at"].as_u64().unwrap();
        assert!(week < before + MONTH, "{moved}");

        // A rotation keeps an expiry within the longest, and brings a key that never expires
        // (made without the limit) within it.
        let rotated = tool.ok_json(&[&["--json", "rotate", &id], &limit[..]].concat());
        assert_eq!(rotated["info"]["expires_at"], week);
        let (_, forever, _) = tool.create(&["--name", "forever"]);
        let before = unix();
        let rotated = tool.ok_json(&[&["--json", "rotate", &forever], &limit[..]].concat());
        within(&rotated["info"]["expires_at"], before, unix());

        // Set once in the environment, for every command.
        tool.env
            .push(("TOWER_API_KEY_MAX_LIFETIME".into(), "30d".into()));
        let (code, message) = tool.failure(&["create", "--name", "late", "--expires-in", "40d"]);
        assert_eq!(code, 2, "{message}");
        let (code, message) = tool.failure(&["create", "--name", "x", "--max-lifetime", "soon"]);
        assert_eq!(code, 2);
        assert!(message.contains("--max-lifetime"), "{message}");
    }

    /// `list --older-than` finds the keys due for rotation, `--unused-for` the keys nobody used
    /// lately (or ever), as the service's `StoreUsage` wrote their last use.
    #[tokio::test]
    async fn list_finds_old_unused_and_expiring_keys() {
        use tower_api_key::key::KeyFormat;
        use tower_api_key::store::KeyStoreAdmin;
        use tower_api_key::NewKey;

        let mut tool = Tool::new();
        let store = SqliteStore::connect(&tool.url).await.unwrap();
        let now = SystemTime::now();
        let days = |n: u64| Duration::from_secs(n * 86_400);
        let format = KeyFormat::new("mesh").unwrap();
        // name, created, last used (days ago), expires (days from now; negative: ago)
        for (name, created, used, expires) in [
            ("old-busy", 400, Some(1), Some(3)),
            ("old-idle", 200, Some(60), Some(-2)),
            ("old-never", 120, None, Some(20)),
            ("new-idle", 10, None, None),
            ("new-busy", 5, Some(0), Some(6)),
        ] {
            let mut record = NewKey::new(name).generate(&format).unwrap().record;
            record.created_at = now - days(created);
            record.last_used_at = used.map(|ago| now - days(ago));
            record.expires_at = expires.map(|n: i64| {
                let by = days(n.unsigned_abs());
                if n < 0 {
                    now - by
                } else {
                    now + by
                }
            });
            store.create(record).await.unwrap();
        }
        assert_eq!(
            tool.names(&["--expires-within", "7d"]),
            ["new-busy", "old-busy"]
        );
        assert_eq!(
            tool.names(&["--expires-within", "100000y"]),
            ["new-busy", "old-busy", "old-never"]
        );
        assert_eq!(
            tool.names(&["--older-than", "90d"]),
            ["old-busy", "old-idle", "old-never"]
        );
        assert_eq!(
            tool.names(&["--unused-for", "30d"]),
            ["new-idle", "old-idle", "old-never"]
        );
        assert_eq!(
            tool.names(&["--older-than", "90d", "--unused-for", "30d"]),
            ["old-idle", "old-never"]
        );
        assert!(tool.names(&["--older-than", "100000y"]).is_empty());
        assert_eq!(
            tool.names(&["--unused-for", "100000y"]),
            ["new-idle", "old-never"]
        );
        let (code, message) = tool.failure(&["list", "--unused-for", "a month"]);
        assert_eq!(code, 2);
        assert!(
            message.contains("write a duration such as 90d"),
            "{message}"
        );
    }

    /// Where no key has a recorded last use, most likely nothing records it (the service has no
    /// `StoreUsage`), and `--unused-for` would list keys in use: the tool warns, and stops
    /// warning once the service has written any key's last use.
    #[tokio::test]
    async fn list_by_last_use_warns_where_no_use_is_recorded() {
        use tower_api_key::store::{KeyStoreAdmin, UsageUpdate};

        let mut tool = Tool::new();
        let (_, busy, _) = tool.create(&["--name", "busy"]);
        tool.create(&["--name", "idle"]);
        let warned = |output: &Output| {
            assert!(output.status.success(), "{output:?}");
            String::from_utf8_lossy(&output.stderr)
                .contains("no key in this store has a recorded last use")
        };
        let listed = tool.run(&["list", "--unused-for", "30d"]);
        assert!(warned(&listed), "{listed:?}");
        let text = String::from_utf8_lossy(&listed.stdout);
        assert!(text.contains("busy") && text.contains("idle"), "{text}");
        let json = tool.run(&["--json", "list", "--unused-for", "30d"]);
        assert!(warned(&json), "on standard error, beside the JSON");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&json.stdout)
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert!(
            !warned(&tool.run(&["list", "--older-than", "30d"])),
            "only for --unused-for"
        );

        // The service's StoreUsage flushes the busy key's use: the list is right, no warning.
        let store = SqliteStore::connect(&tool.url).await.unwrap();
        let used = UsageUpdate {
            id: busy,
            requests: 3,
            last_used_at: SystemTime::now(),
        };
        store.record_usage(&[used]).await.unwrap();
        let listed = tool.run(&["list", "--unused-for", "30d"]);
        assert!(!warned(&listed), "{listed:?}");
        assert_eq!(tool.names(&["--unused-for", "30d"]), ["idle"]);
    }

    /// The trail as `audit --json` prints it with `args`: action, key, owner, actor, detail.
    fn trail(tool: &mut Tool, args: &[&str]) -> Vec<[String; 5]> {
        let events = tool.ok_json(&[&["--json", "audit"], args].concat());
        let text = |value: &serde_json::Value| value.as_str().unwrap_or("-").to_owned();
        (events.as_array().unwrap().iter())
            .map(|event| {
                let detail: Vec<String> = event["detail"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(text)
                    .collect();
                let fields =
                    ["action", "key_id", "owner", "actor"].map(|field| text(&event[field]));
                let [action, key, owner, actor] = fields;
                [action, key, owner, actor, detail.join(",")]
            })
            .collect()
    }

    fn row(action: &str, key: &str, owner: &str, actor: &str, detail: &str) -> [String; 5] {
        [action, key, owner, actor, detail].map(str::to_owned)
    }

    /// `apply-lifetime` brings the keys issued before a longest lifetime was set within it (and
    /// writes each change to the trail); keys that expire sooner, or are revoked, stay as they
    /// are; without the limit it is refused.
    #[test]
    fn apply_lifetime_brings_the_keys_issued_before_within_it() {
        let mut tool = Tool::new();
        let (_, old, _) = tool.create(&["--name", "old", "--owner", "acme"]);
        let (soon, soon_id, _) = tool.create(&["--name", "soon", "--expires-in", "1d"]);
        let (_, revoked, _) = tool.create(&["--name", "revoked"]);
        tool.ok_json(&["--json", "revoke", &revoked]);

        let (code, message) = tool.failure(&["apply-lifetime"]);
        assert_eq!(code, 2, "{message}");
        assert!(message.contains("--max-lifetime"), "{message}");

        let unix = common::unix_now;
        let before = unix();
        let applied = tool.ok_json(&[
            "--json",
            "--max-lifetime",
            "30d",
            "--actor",
            "ops",
            "apply-lifetime",
        ]);
        let at = applied["expires_at"].as_u64().unwrap();
        assert!(
            before + 30 * 86_400 <= at && at <= unix() + 30 * 86_400,
            "{applied}"
        );
        assert_eq!(applied["keys"], serde_json::json!([old]));
        assert_eq!(tool.ok_json(&["--json", "show", &old])["expires_at"], at);
        let shown = tool.ok_json(&["--json", "show", &soon_id]);
        assert_eq!(shown["expires_at"], soon["info"]["expires_at"]);
        assert_eq!(
            tool.ok_json(&["--json", "show", &revoked])["expires_at"],
            serde_json::Value::Null
        );
        let newest = trail(&mut tool, &["--limit", "1"]);
        assert_eq!(newest, [row("update", &old, "acme", "ops", "expires_at")]);

        let output = tool.run(&["--max-lifetime", "30d", "apply-lifetime"]);
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.contains("No key in circulation outlives"), "{text}");
    }

    #[tokio::test]
    async fn every_change_is_in_the_audit_trail_by_its_actor() {
        let mut tool = Tool::new();
        tool.env
            .push(("TOWER_API_KEY_ACTOR".into(), "ops-alice".into()));
        let (_, id, _) = tool.create(&["--name", "deploy", "--owner", "acme"]);
        tool.ok_json(&["--json", "set-scopes", &id, "read,write"]);
        tool.ok_json(&["--json", "disable", &id]);
        tool.ok_json(&["--json", "enable", &id]);
        tool.ok_json(&["--json", "set-limits", &id, "--daily", "100"]);
        tool.ok_json(&["--json", "credits", &id, "--set", "50"]);
        tool.ok_json(&["--json", "set-networks", &id, "10.0.0.0/8"]);
        let rotated = tool.ok_json(&["--json", "rotate", &id, "--grace", "1h"]);
        let new_id = rotated["info"]["id"].as_str().unwrap().to_owned();
        tool.ok_json(&[
            "--json",
            "owner",
            "acme",
            "--daily",
            "900",
            "--credits",
            "9",
        ]);
        tool.ok_json(&["--json", "revoke", &new_id]);
        tool.ok_json(&["--json", "--actor", "deploy-bot", "delete", &id]);
        let (_, other, _) = tool.create(&["--name", "other"]);
        // What fails changes nothing, and leaves nothing in the trail.
        assert_eq!(tool.failure(&["revoke", "nope"]).0, 3);
        assert_eq!(tool.failure(&["rotate", &new_id]).0, 2);
        assert_eq!(
            tool.failure(&["owner", "acme", "--top-up", "5", "--no-credits"])
                .0,
            2
        );

        let rotation = format!("new key {new_id}");
        let by = "ops-alice";
        let expected = [
            row("create", &other, "-", by, ""),
            row("delete", &id, "acme", "deploy-bot", ""),
            row("revoke", &new_id, "acme", by, ""),
            row("owner", "", "acme", by, "limits,credits"),
            row("rotate", &id, "acme", by, &rotation),
            row("update", &id, "acme", by, "allowed_networks"),
            row("update", &id, "acme", by, "credits"),
            row("update", &id, "acme", by, "limits"),
            row("update", &id, "acme", by, "enabled"),
            row("update", &id, "acme", by, "disabled"),
            row("update", &id, "acme", by, "scopes"),
            row("create", &id, "acme", by, ""),
        ];
        assert_eq!(trail(&mut tool, &[]), expected);
        assert_eq!(trail(&mut tool, &["--limit", "2"]), expected[..2]);
        assert_eq!(trail(&mut tool, &["--key", &new_id]), expected[2..3]);
        assert_eq!(trail(&mut tool, &["--owner", "acme"]), expected[1..]);
        assert!(trail(&mut tool, &["--owner", "globex"]).is_empty());

        // The library (and so the console, which reads it through the manager) sees one trail.
        let store = SqliteStore::connect(&tool.url).await.unwrap();
        let read = KeyManager::new(store)
            .audit_trail(&AuditQuery::newest(100))
            .await;
        let read = read.unwrap();
        assert_eq!(read.len(), expected.len());
        assert_eq!(
            (&*read[1].actor, &*read[1].action),
            ("deploy-bot", "delete")
        );

        let printed = tool.run(&["audit", "--limit", "3"]);
        let printed = String::from_utf8(printed.stdout).unwrap();
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), 4, "{printed}");
        assert!(
            lines[0].starts_with("WHEN") && lines[0].ends_with("DETAIL"),
            "{printed}"
        );
        assert!(lines[2].contains(&format!("delete   {id}")), "{printed}");
        assert!(lines[2].contains("deploy-bot"), "{printed}");
        let none = tool.run(&["audit", "--owner", "globex"]);
        assert_eq!(
            String::from_utf8(none.stdout).unwrap().trim(),
            "No changes."
        );
    }

    #[test]
    fn old_changes_are_pruned_from_the_trail_and_the_prune_is_in_it() {
        let mut tool = Tool::new();
        tool.env.push(("TOWER_API_KEY_ACTOR".into(), "ops".into()));
        let (_, id, _) = tool.create(&["--name", "ci"]);
        tool.ok_json(&["--json", "disable", &id]);
        tool.ok_json(&["--json", "revoke", &id]);
        let none = tool.ok_json(&["--json", "prune-audit", "--older-than", "1h"]);
        assert_eq!(none["removed"], 0);
        assert_eq!(trail(&mut tool, &[]).len(), 4);
        let kept = row("prune", "", "-", "ops", "older than 1h,0 removed");
        assert_eq!(trail(&mut tool, &[])[0], kept);

        let printed = tool.run(&["prune-audit", "--older-than", "0s"]);
        assert!(printed.status.success(), "{printed:?}");
        let printed = String::from_utf8(printed.stdout).unwrap();
        assert!(
            printed.starts_with("Removed 4 changes from the audit trail, every one before "),
            "{printed}"
        );
        let pruned = row("prune", "", "-", "ops", "older than 0s,4 removed");
        assert_eq!(trail(&mut tool, &[]), [pruned]);

        assert_eq!(tool.failure(&["prune-audit"]).0, 2);
        let (code, message) = tool.failure(&["prune-audit", "--older-than", "100000years"]);
        assert_eq!(code, 2);
        assert!(message.contains("before 1970"), "{message}");
        assert_eq!(
            trail(&mut tool, &[]).len(),
            1,
            "a refused prune changes nothing"
        );
    }

    #[test]
    fn the_actor_is_the_user_unless_given_and_a_bad_one_is_refused() {
        let mut tool = Tool::new();
        tool.env.push(("USER".into(), "carol".into()));
        let (_, id, _) = tool.create(&["--name", "mine"]);
        assert_eq!(
            trail(&mut tool, &[])[0],
            row("create", &id, "-", "cli:carol", "")
        );
        for bad in ["", "  ", "two\nlines", &"x".repeat(129)] {
            let (code, message) = tool.failure(&["--actor", bad, "revoke", &id]);
            assert_eq!(code, 2, "{bad:?}");
            assert!(message.contains("--actor: give a name"), "{message}");
        }
        // Refused before anything was changed.
        assert_eq!(trail(&mut tool, &[]).len(), 1);
        assert_eq!(tool.ok_json(&["--json", "show", &id])["state"], "active");
        assert_eq!(tool.failure(&["audit", "--limit", "0"]).0, 2);
    }

    #[tokio::test]
    async fn a_change_the_trail_cannot_keep_is_made_with_a_warning() {
        let mut tool = Tool::new();
        let (_, id, _) = tool.create(&["--name", "leaked"]);
        let store = SqliteStore::connect(&tool.url).await.unwrap();
        sqlx::query("DROP TABLE api_keys_audit")
            .execute(store.pool())
            .await
            .unwrap();
        let output = tool.run(&["revoke", &id]);
        assert!(output.status.success(), "{output:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            stderr.starts_with(
                "warning: the change is made, but the audit trail could not be written"
            ),
            "{stderr}"
        );
        assert_eq!(tool.ok_json(&["--json", "show", &id])["state"], "revoked");
        let (code, message) = tool.failure(&["audit"]);
        assert_eq!(code, 4, "{message}");
    }

    #[test]
    fn update_changes_several_fields_at_once_or_none() {
        let mut tool = Tool::new();
        tool.env.push(("TOWER_API_KEY_ACTOR".into(), "ops".into()));
        let (_, id, _) = tool.create(&[
            "--name",
            "ci",
            "--scopes",
            "read",
            "--metadata",
            "team=growth",
            "--metadata",
            "tier=1",
        ]);
        let shown = tool.ok_json(&["--json", "show", &id]);
        assert_eq!(
            shown["metadata"],
            serde_json::json!({"team": "growth", "tier": "1"})
        );

        let updated = tool.ok_json(&[
            "--json",
            "update",
            &id,
            "--name",
            "deploy",
            "--scopes",
            "read,write",
            "--plan",
            "pro",
            "--expires-in",
            "30d",
            "--metadata",
            "team=platform",
        ]);
        assert_eq!(
            (&updated["name"], &updated["scopes"], &updated["plan"]),
            (
                &"deploy".into(),
                &serde_json::json!(["read", "write"]),
                &"pro".into()
            )
        );
        assert_eq!(updated["metadata"], serde_json::json!({"team": "platform"}));
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expires = updated["expires_at"].as_u64().unwrap();
        assert!(expires.abs_diff(now + 30 * 86_400) < 60, "{expires}");
        let fields = "name,scopes,metadata,expires_at,plan";
        assert_eq!(
            trail(&mut tool, &["--limit", "1"]),
            [row("update", &id, "-", "ops", fields)]
        );

        // One refused change refuses them all: the name stays.
        let (code, message) =
            tool.failure(&["update", &id, "--name", "other", "--scopes", "bad scope"]);
        assert_eq!(code, 2);
        assert!(message.contains("invalid scope `bad scope`"), "{message}");
        assert_eq!(tool.ok_json(&["--json", "show", &id])["name"], "deploy");
        assert_eq!(trail(&mut tool, &[]).len(), 2, "nothing more in the trail");

        let cleared = tool.ok_json(&[
            "--json",
            "update",
            &id,
            "--no-plan",
            "--no-expiry",
            "--no-metadata",
            "--no-scopes",
        ]);
        assert_eq!(
            (
                &cleared["plan"],
                &cleared["expires_at"],
                &cleared["metadata"],
                &cleared["scopes"]
            ),
            (
                &serde_json::Value::Null,
                &serde_json::Value::Null,
                &serde_json::json!({}),
                &serde_json::json!([])
            )
        );
        let fields = "scopes,metadata,expires_at,plan";
        assert_eq!(
            trail(&mut tool, &["--limit", "1"]),
            [row("update", &id, "-", "ops", fields)]
        );
        let printed = tool.run(&["show", &id]);
        let printed = String::from_utf8(printed.stdout).unwrap();
        assert!(printed.contains("metadata:    -"), "{printed}");

        let (code, message) = tool.failure(&["update", &id]);
        assert_eq!(code, 2);
        assert!(message.contains("nothing to change"), "{message}");
        assert_eq!(
            tool.failure(&["update", &id, "--plan", "pro", "--no-plan"])
                .0,
            2
        );
        let both = ["update", &id, "--scopes", "read", "--no-scopes"];
        assert_eq!(tool.failure(&both).0, 2);
        assert_eq!(tool.failure(&["update", &id, "--plan", "no way"]).0, 2);
        let (code, message) = tool.failure(&["update", &id, "--metadata", "team"]);
        assert_eq!(code, 2);
        assert!(message.contains("write key=value"), "{message}");
        assert_eq!(tool.failure(&["update", "nope", "--name", "x"]).0, 3);
        let (code, message) = tool.failure(&["update", &id, "--expires-in", "10000y"]);
        assert_eq!(code, 2);
        assert!(message.contains("9999"), "{message}");
    }

    /// Text from the store reaches the operator's terminal escaped: a name, metadata or an audit
    /// row written with escape sequences by other means than this tool (older versions, a tool
    /// of your own) cannot rewrite it. The tool itself refuses such names.
    #[tokio::test]
    async fn control_characters_from_the_store_never_reach_the_terminal() {
        use tower_api_key::manage::AuditEvent;
        use tower_api_key::store::KeyStoreAdmin;

        let mut tool = Tool::new();
        let (code, message) = tool.failure(&["create", "--name", "red\u{1b}[31m"]);
        assert_eq!(code, 2);
        assert!(message.contains("without control characters"), "{message}");
        let (code, _) = tool.failure(&["create", "--name", "x", "--owner", "a\u{202e}b"]);
        assert_eq!(code, 2);

        let (_, id, _) = tool.create(&["--name", "plain", "--owner", "acme"]);
        let evil = "\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m\u{202e}";
        let store = SqliteStore::connect(&tool.url).await.unwrap();
        assert!(store.set_name(&id, &format!("name{evil}")).await.unwrap());
        let metadata = [(format!("key{evil}"), format!("value{evil}\nnext"))];
        assert!(store.set_metadata(&id, &metadata.into()).await.unwrap());
        let keys = KeyManager::new(store);
        let event = AuditEvent::new(&format!("actor{evil}"), "update", &id)
            .owner(Some(&format!("owner{evil}")))
            .detail([format!("detail{evil}")]);
        keys.record_change(&event).await.unwrap();

        let escaped = "\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{9b}31m\\u{202e}";
        for (args, shown) in [
            (&["list"][..], vec![format!("name{escaped}")]),
            (
                &["show", &id][..],
                vec![
                    format!("name:        name{escaped}"),
                    format!("key{escaped}=value{escaped}\\u{{a}}next"),
                ],
            ),
            (
                &["audit"][..],
                vec![
                    format!("actor{escaped}"),
                    format!("owner{escaped}"),
                    format!("detail{escaped}"),
                ],
            ),
        ] {
            let output = tool.run(args);
            assert!(output.status.success(), "{args:?}: {output:?}");
            let text = String::from_utf8(output.stdout).unwrap();
            let hidden: Vec<char> = text
                .chars()
                .filter(|&c| tower_api_key::manage::is_hidden_control(c) && c != '\n')
                .collect();
            assert!(hidden.is_empty(), "{args:?} printed {hidden:?}");
            for shown in shown {
                assert!(
                    text.contains(&shown),
                    "{args:?} printed {text}, not {shown}"
                );
            }
        }
        // JSON keeps the text as it is, escaped as JSON escapes it.
        let listed = tool.ok_json(&["--json", "show", &id]);
        assert_eq!(listed["name"], format!("name{evil}"));
    }

    /// `usage` reads what the service's replicas flushed to the store: every key's, one key's
    /// or one owner's, in JSON or as text; a bad resolution or two subjects are refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn usage_shows_what_the_replicas_flushed() {
        let mut tool = Tool::new();
        let (_, acme_id, acme) = tool.create(&["--name", "a", "--owner", "acme"]);
        let (_, _, globex) = tool.create(&["--name", "g", "--owner", "globex"]);
        // Two replicas on the file: acme 4 + 3, globex 4, and 2 with a made-up key.
        let made_up = "mesh_live_made_up".to_owned();
        let one = [&acme, &globex, &acme, &globex, &made_up].repeat(2);
        for keys in [one, vec![&acme; 3]] {
            let store = SqliteStore::connect(&tool.url).await.unwrap();
            let analytics = Analytics::new();
            let layer = ApiKeyLayer::builder("mesh", store.clone())
                .usage_sink(analytics.clone())
                .build()
                .unwrap();
            let app = common::name_endpoints(common::items().layer(layer));
            for (i, key) in keys.into_iter().enumerate() {
                let request = http::Request::get(format!("/items/{i}"))
                    .header("authorization", format!("ApiKey {key}"))
                    .body(axum::body::Body::empty())
                    .unwrap();
                app.clone().oneshot(request).await.unwrap();
            }
            assert!(analytics.flush(&store).await.unwrap() > 0);
        }

        let all = tool.ok_json(&["--json", "usage"]);
        assert_eq!(all["subject"], "all");
        assert_eq!(all["resolution"], "hour");
        assert_eq!(all["totals"]["requests"], 13);
        assert_eq!(all["totals"]["errors"], 2, "{all}");
        assert_eq!(all["totals"]["outcomes"]["INVALID_API_KEY"], 2);
        assert_eq!(all["top_endpoints"][0]["name"], "/items/{id}");
        let acme_only = tool.ok_json(&["--json", "usage", "--key", &acme_id, "--since", "2h"]);
        assert_eq!(acme_only["totals"]["requests"], 7);
        let by_minute = [
            "--json",
            "usage",
            "--owner",
            "globex",
            "--resolution",
            "minute",
        ];
        let globex_only = tool.ok_json(&by_minute);
        assert_eq!(globex_only["totals"]["requests"], 4);
        let minutes = globex_only["series"].as_array().unwrap().len();
        assert!((1_440..=1_441).contains(&minutes), "{minutes}");

        let output = tool.run(&["usage", "--key", &acme_id]);
        assert!(output.status.success());
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(
            text.starts_with(&format!("Usage of key {acme_id}, ")),
            "{text}"
        );
        assert!(
            text.contains("\nRequests 7, errors 0 (0.0 %), p50 "),
            "{text}"
        );
        assert!(text.contains("Outcomes: ok 7\n"), "{text}");
        assert!(text.contains("Top endpoints: /items/{id} 7\n"), "{text}");
        let row = text.lines().last().unwrap();
        assert!(
            row.contains("        7        0  p50 "),
            "one hour's row: {text}"
        );

        let (code, message) = tool.failure(&["usage", "--key", "nope"]);
        assert_eq!((code, message.trim()), (3, "error: no key with id `nope`"));
        // A deleted key's usage is still shown.
        tool.ok_json(&["--json", "delete", &acme_id]);
        let deleted = tool.ok_json(&["--json", "usage", "--key", &acme_id]);
        assert_eq!(deleted["totals"]["requests"], 7);
        let text = String::from_utf8(tool.run(&["usage"]).stdout).unwrap();
        assert!(text.starts_with("Usage of the whole service, "), "{text}");

        let (code, message) = tool.failure(&["usage", "--resolution", "week"]);
        assert_eq!(code, 2);
        assert!(
            message.contains("expected `minute`, `hour` or `day`"),
            "{message}"
        );
        let (code, _) = tool.failure(&["usage", "--key", &acme_id, "--owner", "acme"]);
        assert_eq!(code, 2);
        let (code, message) = tool.failure(&["usage", "--since", "forever"]);
        assert_eq!(code, 2);
        assert!(
            message.contains("write a duration such as 90d"),
            "{message}"
        );
    }

    /// `export` on one store and `import` on another move every key (state, scopes, metadata,
    /// networks, credits, plan, expiry) and the owners' settings: the keys work on the new
    /// store's service as on the old; an import run again adds and changes nothing; the
    /// longest lifetime applies to what comes in; no secret is printed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn export_and_import_move_the_keys_to_another_store() {
        let mut old = Tool::new();
        let (_, ci, ci_key) = old.create(&[
            "--name",
            "ci",
            "--owner",
            "acme",
            "--scopes",
            "read,write",
            "--metadata",
            "team=growth",
            "--allow-ip",
            "198.51.100.0/24",
            "--credits",
            "50",
            "--expires-in",
            "30d",
        ]);
        let (_, gone, gone_key) = old.create(&["--name", "gone", "--plan", "free"]);
        old.ok_json(&["--json", "revoke", &gone]);
        old.ok_json(&["--json", "owner", "acme", "--per-minute", "100"]);
        // Set up before its first key: moved too.
        old.ok_json(&["--json", "owner", "initech", "--credits", "500"]);
        let exported = old.run(&["export"]);
        assert!(exported.status.success(), "{exported:?}");
        let text = String::from_utf8(exported.stdout).unwrap();
        assert_eq!(
            text.lines().count(),
            4,
            "two owners' settings and two keys: {text}"
        );
        let of_initech = old.run(&["export", "--owner", "initech"]);
        let of_initech = String::from_utf8(of_initech.stdout).unwrap();
        assert_eq!(of_initech.lines().count(), 1, "{of_initech}");
        assert!(of_initech.contains(r#""owner":"initech""#), "{of_initech}");
        for key in [&ci_key, &gone_key] {
            assert!(
                !text.contains(&key[key.len() - 38..key.len() - 6]),
                "a secret exported"
            );
        }
        let file = old.dir.join("keys.jsonl");
        std::fs::write(&file, &text).unwrap();
        let file = file.to_str().unwrap();

        let mut new = Tool::new();
        let dry = new.ok_json(&["--json", "import", "--dry-run", file]);
        assert_eq!(dry["dry_run"], serde_json::json!(true));
        assert_eq!(dry["imported"].as_array().unwrap().len(), 2, "{dry}");
        assert_eq!(dry["owners"], serde_json::json!(["acme", "initech"]));
        assert_eq!(
            new.names(&[]),
            Vec::<String>::new(),
            "a dry run writes nothing"
        );
        assert!(trail(&mut new, &[]).is_empty(), "nor to the trail");
        let imported = new.ok_json(&["--json", "import", file]);
        let mut ids = [ci.as_str(), gone.as_str()];
        ids.sort_unstable();
        let mut added: Vec<&str> = (imported["imported"].as_array().unwrap().iter())
            .map(|id| id.as_str().unwrap())
            .collect();
        added.sort_unstable();
        assert_eq!(added, ids);
        assert_eq!(imported["owners"], serde_json::json!(["acme", "initech"]));
        assert_eq!(imported["expiry_brought_in"], serde_json::json!([]));
        let reads = [
            &["--json", "list"][..],
            &["--json", "owner", "acme"],
            &["--json", "owner", "initech"],
        ];
        for read in reads {
            assert_eq!(old.ok_json(read), new.ok_json(read), "{read:?}");
        }
        let clock = ManualClock::new(SystemTime::now());
        assert_eq!(new.status(&ci_key, &clock).await, (StatusCode::OK, None));
        assert_eq!(
            new.status(&gone_key, &clock).await.1,
            Some(Rejection::ApiKeyRevoked)
        );
        let trail_rows = trail(&mut new, &[]);
        let actions: Vec<&str> = trail_rows.iter().map(|row| row[0].as_str()).collect();
        assert_eq!(
            actions,
            ["import", "import", "owner", "owner"],
            "newest first"
        );

        // Run again: nothing added, nothing changed (the credits spent stay spent).
        let spent = new.ok_json(&["--json", "show", &ci])["credits"].clone();
        let again = new.ok_json(&["--json", "import", file]);
        assert_eq!(again["imported"], serde_json::json!([]));
        assert_eq!(again["already_present"].as_array().unwrap().len(), 2);
        let both = serde_json::json!(["acme", "initech"]);
        assert_eq!(again["owners_already_set"], both);
        assert_eq!(new.ok_json(&["--json", "show", &ci])["credits"], spent);
        assert_eq!(trail(&mut new, &[]).len(), 4, "nothing more in the trail");

        // Within the longest lifetime: the live key's 30 days come down to 10; the revoked
        // key keeps its state.
        let mut limited = Tool::new();
        let brought = limited.ok_json(&["--max-lifetime", "10d", "--json", "import", file]);
        assert_eq!(brought["expiry_brought_in"], serde_json::json!([ci]));
        let expires = limited.ok_json(&["--json", "show", &ci])["expires_at"]
            .as_u64()
            .unwrap();
        assert!(expires <= common::unix_now() + 10 * 86_400, "{expires}");
        let outputs = [&old.outputs, &new.outputs, &limited.outputs];
        for (command, text) in outputs.into_iter().flatten() {
            for key in [&ci_key, &gone_key] {
                let secret = &key[key.len() - 38..key.len() - 6];
                let may_show = command.contains("create");
                assert!(
                    may_show || !text.contains(secret),
                    "`{command}` printed a secret"
                );
            }
        }
    }

    /// An export whose output cannot be written (a full disk, here `/dev/full`) says so and
    /// exits 1, not 0: a file cut short would otherwise pass for the whole store.
    #[test]
    fn an_export_that_cannot_be_written_exits_1() {
        let mut tool = Tool::new();
        tool.create(&["--name", "ci"]);
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_tower-api-key"))
            .args(["export", "--audit"])
            .env("DATABASE_URL", &tool.url)
            .current_dir(&tool.dir)
            .stdout(full)
            .output()
            .unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("cannot write the export"), "{stderr}");
    }

    /// `export --audit` carries the audit trail (every row, or with filters those of the keys
    /// and owners exported), and `import` gives the new store the rows it lacks, each once:
    /// the trail reads the same there, with the import's own rows after it. A malformed audit
    /// line is named, and nothing is imported.
    #[test]
    fn the_audit_trail_moves_with_the_keys() {
        let mut old = Tool::new();
        let (_, ci, _) = old.create(&["--name", "ci", "--owner", "acme"]);
        let (_, other, _) = old.create(&["--name", "other", "--owner", "globex"]);
        old.ok_json(&["--json", "revoke", &other]);
        old.ok_json(&["--json", "owner", "acme", "--per-minute", "100"]);
        old.ok_json(&["--json", "update", &ci, "--name", "ci-2"]);
        let old_trail = trail(&mut old, &[]);
        assert_eq!(old_trail.len(), 5);

        let audit_lines = |text: &str| -> Vec<serde_json::Value> {
            (text.lines())
                .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
                .filter(|line| line["type"] == "audit")
                .collect()
        };
        let plain = old.run(&["export"]);
        assert!(audit_lines(&String::from_utf8(plain.stdout).unwrap()).is_empty());
        let of_acme = old.run(&["export", "--owner", "acme", "--audit"]);
        let of_acme = audit_lines(&String::from_utf8(of_acme.stdout).unwrap());
        let actions: Vec<&str> = (of_acme.iter())
            .map(|line| line["event"]["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            actions,
            ["create", "owner", "update"],
            "acme's, oldest first"
        );
        let exported = old.run(&["export", "--audit"]);
        assert!(exported.status.success(), "{exported:?}");
        let text = String::from_utf8(exported.stdout).unwrap();
        assert_eq!(audit_lines(&text).len(), 5, "every row: {text}");
        let file = old.dir.join("moved.jsonl");
        std::fs::write(&file, &text).unwrap();
        let file = file.to_str().unwrap();

        let mut new = Tool::new();
        let dry = new.ok_json(&["--json", "import", "--dry-run", file]);
        assert_eq!(dry["audit_rows_added"], 5, "{dry}");
        assert!(trail(&mut new, &[]).is_empty(), "a dry run writes no row");
        let imported = new.ok_json(&["--json", "import", file]);
        assert_eq!(imported["audit_rows_added"], 5, "{imported}");
        let new_trail = trail(&mut new, &[]);
        let made_here: Vec<&str> = (new_trail[..3].iter()).map(|row| row[0].as_str()).collect();
        assert_eq!(
            made_here,
            ["import", "import", "owner"],
            "the import's own, newest"
        );
        assert_eq!(new_trail[3..], old_trail[..], "the old trail, as it was");

        let again = new.ok_json(&["--json", "import", file]);
        assert_eq!(again["audit_rows_added"], 0);
        assert_eq!(again["audit_rows_already_present"], 5);
        assert_eq!(trail(&mut new, &[]).len(), 8, "nothing twice");
        let text_out = new.run(&["import", file]);
        let said = String::from_utf8(text_out.stdout).unwrap();
        assert!(
            said.contains("Audit trail: 0 row(s) added, 5 the store has already."),
            "{said}"
        );

        let good = text.lines().find(|line| line.contains(&ci)).unwrap();
        let row = audit_lines(&text)[0].clone();
        let with = |mut row: serde_json::Value, path: &[&str], value: serde_json::Value| {
            let mut at = &mut row;
            for step in &path[..path.len() - 1] {
                at = &mut at[*step];
            }
            at[path[path.len() - 1]] = value;
            row.to_string()
        };
        let bad = [
            with(row.clone(), &["id"], "a row".into()),
            with(row.clone(), &["at_us"], u64::MAX.into()),
            with(row.clone(), &["extra"], 1.into()),
            with(row.clone(), &["event", "actor"], "cli:\u{1b}[2J".into()),
            with(row.clone(), &["event", "key_id"], "not/an/id".into()),
            with(row, &["event", "detail"], serde_json::json!([""])),
        ];
        let file = new.dir.join("bad.jsonl");
        std::fs::write(&file, format!("{good}\n{}\n", bad.join("\n"))).unwrap();
        let mut third = Tool::new();
        let (code, message) = third.failure(&["import", file.to_str().unwrap()]);
        assert_eq!(code, 2, "{message}");
        for line in 2..=7 {
            assert!(message.contains(&format!("line {line}: ")), "{message}");
        }
        assert!(message.contains("unknown field `extra`"), "{message}");
        assert!(!message.contains('\u{1b}'), "{message}");
        assert!(third.names(&[]).is_empty(), "nothing imported");
        assert!(trail(&mut third, &[]).is_empty());
    }

    /// What a service on `store` answers for `key`, with opaque keys allowed or not.
    async fn answer_on(
        store: SqliteStore,
        key: &str,
        opaque_allowed: bool,
    ) -> (StatusCode, Option<Rejection>) {
        let builder = ApiKeyLayer::builder("mesh", store).allow_opaque_keys(opaque_allowed);
        answer(builder, key, None).await
    }

    /// What the service on `url` answers for `key`, with opaque keys allowed or not.
    async fn opaque_answer(url: &str, key: &str, allowed: bool) -> StatusCode {
        let store = SqliteStore::connect(url).await.unwrap();
        answer_on(store, key, allowed).await.0
    }

    /// A service that keeps its keys in a table of its own (`connect_with_table`): `--table`
    /// (or `TOWER_API_KEY_TABLE`) manages them there, and the service sees each change; the
    /// default table is another set of keys. An option for another kind of store is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn table_names_the_services_own_table() {
        let mut tool = Tool::new();
        let (_, id, key) = tool.create(&["--table", "mesh_keys", "--name", "ci"]);
        assert_eq!(tool.names(&[]), Vec::<String>::new(), "not in api_keys");
        assert_eq!(tool.names(&["--table", "mesh_keys"]), ["ci"]);
        let table = |url: String| async move {
            SqliteStore::connect_with_table(&url, "mesh_keys")
                .await
                .unwrap()
        };
        let answer = answer_on(table(tool.url.clone()).await, &key, false).await;
        assert_eq!(answer, (StatusCode::OK, None));
        let default_table = SqliteStore::connect(&tool.url).await.unwrap();
        let answer = answer_on(default_table, &key, false).await;
        assert_eq!(answer.1, Some(Rejection::InvalidApiKey));

        tool.env
            .push(("TOWER_API_KEY_TABLE".into(), "mesh_keys".into()));
        tool.ok_json(&["--json", "revoke", &id]);
        let answer = answer_on(table(tool.url.clone()).await, &key, false).await;
        assert_eq!(answer.1, Some(Rejection::ApiKeyRevoked));

        let (code, message) = tool.failure(&["--redis-prefix", "mesh:", "list"]);
        assert_eq!(code, 2, "{message}");
        assert!(message.contains("--table"), "both given: {message}");
        tool.env.clear();
        let (code, message) = tool.failure(&["--redis-prefix", "mesh:", "list"]);
        assert_eq!(code, 2, "{message}");
        assert!(
            message.contains("a key prefix is for redis:// stores"),
            "{message}"
        );
        let (code, message) = tool.failure(&["--table", "api-keys", "list"]);
        assert_eq!(code, 2, "{message}");
        assert!(message.contains("use a-z, 0-9 and _"), "{message}");
    }

    /// Keys issued before this crate come in by their SHA-256, or as they are (hashed as they
    /// are read, never printed), and work where the layer allows opaque keys. A malformed file
    /// imports nothing and names each bad line without quoting it; a line the store refuses
    /// (an id another key has) is named, and the others are imported.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_issued_before_come_in_and_bad_lines_are_named() {
        use serde_json::json;
        let mut tool = Tool::new();
        let by_hash = "sk_legacy_hashed_91c2";
        let as_is = "sk_legacy_plain_5d7e";
        let sha256 = SecretDigest::of(by_hash.as_bytes()).to_hex();
        let write = |tool: &Tool, lines: &[String]| {
            let file = tool.dir.join(common::unique("import"));
            std::fs::write(&file, lines.join("\n")).unwrap();
            file.to_str().unwrap().to_owned()
        };
        let line = |value: serde_json::Value| value.to_string();

        let bad = write(
            &tool,
            &[
                format!(r#"{{"opaque_key": "{as_is}", "name": "x""#),
                line(
                    json!({"opaque_key": as_is, "name": "x", "environment": "live", "scope": ["read"]}),
                ),
                line(json!({"opaque_key": as_is, "name": "x"})),
                line(
                    json!({"opaque_key": "mesh_live_made_up", "name": "x", "environment": "live"}),
                ),
                line(json!({"opaque_sha256": "abc", "name": "x", "environment": "live"})),
                line(
                    json!({"opaque_key": as_is, "name": "x", "environment": "live", "expires_at": "soon"}),
                ),
                line(
                    json!({"opaque_key": as_is, "opaque_sha256": sha256, "name": "x", "environment": "live"}),
                ),
                line(json!({"type": "team", "owner": "acme"})),
                line(json!([as_is])),
                String::new(),
                line(json!({"type": "owner", "owner": "acme", "limits": {"per_minute": "many"}})),
            ],
        );
        let (code, message) = tool.failure(&["import", &bad]);
        assert_eq!(code, 2, "{message}");
        for expected in [
            "10 line(s) refused, nothing was imported",
            "line 1: not JSON",
            "line 2: unknown field `scope`",
            "line 3: missing field `environment`",
            "line 4: `opaque_key` starts with `mesh_`",
            "line 5: `opaque_sha256` is 64 hex digits",
            "line 6: `expires_at` is not of the right type or form",
            "line 7: give `opaque_sha256` or `opaque_key`: not both",
            "line 8: `type` is \"owner\"",
            "line 9: not a JSON object",
            "line 11: `limits.per_minute` is not of the right type or form",
        ] {
            assert!(message.contains(expected), "{expected:?} in {message}");
        }
        assert!(
            !message.contains(as_is) && !message.contains("soon"),
            "{message}"
        );

        // Every line well formed, one that `create` would refuse: still nothing imported.
        let refused = write(
            &tool,
            &[
                line(json!({"opaque_sha256": sha256, "name": "billing", "environment": "live"})),
                line(json!({"id": "short", "digest": sha256, "name": "x", "environment": "live"})),
            ],
        );
        let (code, message) = tool.failure(&["import", &refused]);
        assert_eq!(code, 2);
        assert!(
            message.contains("line 2: a key id is 12 base62"),
            "{message}"
        );
        assert_eq!(
            tool.names(&[]),
            Vec::<String>::new(),
            "nothing was imported"
        );

        let good = write(
            &tool,
            &[
                line(
                    json!({"opaque_sha256": sha256.to_uppercase(), "name": "billing", "environment": "live", "scopes": ["read"]}),
                ),
                line(
                    json!({"opaque_key": as_is, "name": "reports", "environment": "live", "owner": "globex"}),
                ),
            ],
        );
        let output = tool.run(&["import", &good]);
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{printed}");
        assert!(printed.contains("Imported 2 key(s)"), "{printed}");
        assert!(printed.contains("2 opaque key(s)"), "{printed}");
        assert_eq!(tool.names(&[]), ["billing", "reports"]);
        for key in [by_hash, as_is] {
            assert_eq!(
                opaque_answer(&tool.url, key, true).await,
                StatusCode::OK,
                "{key}"
            );
            assert_eq!(
                opaque_answer(&tool.url, key, false).await,
                StatusCode::UNAUTHORIZED
            );
        }

        // An id another key holds: that line is named, the other imported.
        let (_, id, _) = tool.create(&["--name", "issued"]);
        let clash = write(
            &tool,
            &[
                line(
                    json!({"id": id, "digest": sha256, "name": "impostor", "environment": "live"}),
                ),
                line(
                    json!({"opaque_key": "sk_legacy_third_0a1b", "name": "third", "environment": "test"}),
                ),
            ],
        );
        let (code, message) = tool.failure(&["import", "--dry-run", &clash]);
        assert_eq!(code, 2);
        assert!(
            message.contains("nothing was imported (a dry run)"),
            "{message}"
        );
        assert!(message.contains(&format!("line 1: another key already has the id `{id}`")));
        assert_eq!(tool.names(&[]), ["billing", "issued", "reports"]);
        let (code, message) = tool.failure(&["import", &clash]);
        assert_eq!(code, 2);
        assert!(
            message.contains("1 line(s) refused, the other lines were imported"),
            "{message}"
        );
        assert!(
            message.contains(&format!("line 1: another key already has the id `{id}`")),
            "{message}"
        );
        assert_eq!(tool.names(&[]), ["billing", "issued", "reports", "third"]);

        // From standard input, as `export | import -` between two stores.
        let mut child = Command::new(env!("CARGO_BIN_EXE_tower-api-key"))
            .args(["import", "-"])
            .env("DATABASE_URL", &tool.url)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let fourth =
            json!({"opaque_key": "sk_legacy_fourth_9f8e", "name": "fourth", "environment": "live"});
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, line(fourth).as_bytes()).unwrap();
        drop(stdin);
        assert!(child.wait_with_output().unwrap().status.success());
        assert_eq!(
            tool.names(&[]),
            ["billing", "fourth", "issued", "reports", "third"]
        );
        for (command, text) in &tool.outputs {
            assert!(!text.contains(as_is), "`{command}` printed a key");
        }
    }

    #[test]
    fn bad_input_gets_a_clear_error_and_exit_code() {
        let mut tool = Tool::new();
        let (code, message) = tool.failure(&["show", "nope"]);
        assert_eq!((code, message.trim()), (3, "error: no key with id `nope`"));
        assert_eq!(tool.failure(&["revoke", "nope"]).0, 3);
        assert_eq!(tool.failure(&["rotate", "nope"]).0, 3);
        assert_eq!(tool.failure(&["delete", "nope"]).0, 3);

        let (code, message) = tool.failure(&["create", "--name", "x", "--expires-in", "ninety"]);
        assert_eq!(code, 2);
        assert!(
            message.contains("write a duration such as 90d"),
            "{message}"
        );
        let (code, message) =
            tool.failure(&["create", "--name", "x", "--scopes", "read,bad scope"]);
        assert_eq!(code, 2);
        assert!(message.contains("invalid scope `bad scope`"), "{message}");
        let (code, message) = tool.failure(&["create", "--env", "prod"]);
        assert_eq!(code, 2);
        assert!(
            message.contains("expected `live`, `test` or `dev`"),
            "{message}"
        );
        let (code, message) = tool.failure(&["--prefix", "Bad!", "list"]);
        assert_eq!(code, 2);
        assert!(message.contains("prefix"), "{message}");

        // A store that cannot be opened (its directory is not there) failed: exit 4.
        let (code, message) = tool.failure(&[
            "--database-url",
            "sqlite:///nonexistent-directory/keys.db",
            "list",
        ]);
        assert_eq!(code, 4, "{message}");
        assert!(message.contains("the key store failed"), "{message}");
        // A URL of no store this tool knows is the user's to mend: exit 2, as any bad input.
        let (code, message) = tool.failure(&["--database-url", "mysql://x", "list"]);
        assert_eq!(code, 2, "{message}");
        assert!(
            message.contains(
                "misconfigured: unknown database URL: use sqlite://, postgres://, redis://"
            ),
            "{message}"
        );
    }
}
