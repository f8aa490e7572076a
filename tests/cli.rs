//! The `tower-api-key` binary, end to end, on the SQLite file a service reads.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use tower::{service_fn, Layer, ServiceExt};
use tower_api_key::{ApiKeyLayer, ManualClock, Rejection, SqliteStore};

struct Tool {
    dir: PathBuf,
    url: String,
    outputs: Vec<(String, String)>,
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
        }
    }

    /// Runs the tool with `args`; keeps what it printed under `command`.
    fn run(&mut self, args: &[&str]) -> Output {
        let output = Command::new(env!("CARGO_BIN_EXE_tower-api-key"))
            .args(args)
            .env("DATABASE_URL", &self.url)
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

    fn failure(&mut self, args: &[&str]) -> (i32, String) {
        let output = self.run(args);
        assert!(!output.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(!stderr.contains("panicked"), "{stderr}");
        (output.status.code().unwrap(), stderr)
    }

    /// What the service on the same database answers for `key`, at `clock`'s time.
    async fn status(&self, key: &str, clock: &ManualClock) -> (StatusCode, Option<Rejection>) {
        let store = SqliteStore::connect(&self.url).await.unwrap();
        let layer = ApiKeyLayer::builder("mesh", store)
            .clock(clock.clone())
            .build()
            .unwrap();
        let service = layer.layer(service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        }));
        let request = http::Request::get("/")
            .header("authorization", format!("ApiKey {key}"))
            .body(())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        (
            response.status(),
            response.extensions().get::<Rejection>().copied(),
        )
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
    let (code, message) = tool.failure(&["create", "--name", "x", "--scopes", "read,bad scope"]);
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

    let (code, message) = tool.failure(&[
        "--database-url",
        "postgres://nobody@127.0.0.1:1/nothing",
        "list",
    ]);
    assert_eq!(code, 4);
    assert!(message.contains("the key store failed"), "{message}");
    let (code, message) = tool.failure(&["--database-url", "mysql://x", "list"]);
    assert_eq!(code, 4);
    assert!(
        message.contains("sqlite://, postgres://, redis://"),
        "{message}"
    );
}
