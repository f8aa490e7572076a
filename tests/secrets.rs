//! No secret is ever printed: not in `Debug` output, not in error messages, not in traces.

mod common;

use tower_api_key::{
    extract::KeySource, key::KeyFormat, store::KeyStoreAdmin, ApiKeyLayer, Environment, KeyManager,
    NewKey,
};

use common::{api_key, app, captured_events, serve, HttpClient, TestStore};

/// Every request path a key can take, and the text of every object and error involved.
/// Returns (all printed text, the secrets that must not be in it, the ids that may be).
async fn exercise() -> (String, Vec<String>, Vec<String>) {
    let store = TestStore::default();
    let builder = ApiKeyLayer::builder("mesh", store.clone()).sources([
        KeySource::api_key_scheme(),
        KeySource::header(http::HeaderName::from_static("x-api-key")),
    ]);
    let mut printed = vec![format!("{builder:?}")];
    let layer = builder.build().unwrap();
    let keys = KeyManager::new(store.keys.clone()).with_cache(layer.handle());
    let addr = serve(app(layer.clone(), Default::default())).await;
    let client = HttpClient::new(addr);

    let good = keys
        .create(NewKey::new("good").scopes(["read"]))
        .await
        .unwrap();
    let revoked = keys
        .create(NewKey::new("revoked").scopes(["read"]))
        .await
        .unwrap();
    keys.revoke(&revoked.record.id).await.unwrap();
    let unknown = layer.format().generate(Environment::Test);
    let mut wrong = good.key.expose_secret().to_owned();
    // Change the last checksum character to a different one (never the same: that
    // would leave the key valid one time in 62).
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'Q' { 'R' } else { 'Q' });

    let mut secrets = Vec::new();
    let mut ids = Vec::new();
    for key in [&good.key, &revoked.key, &unknown.key] {
        let text = key.expose_secret();
        secrets.push(text.to_owned());
        // The secret part alone: between the id and the checksum.
        secrets.push(text[text.len() - 38..text.len() - 6].to_owned());
    }
    for digest in [good.record.digest, revoked.record.digest, unknown.digest] {
        secrets.push(digest.to_hex());
    }
    ids.push(good.record.id.clone());
    ids.push(revoked.record.id.clone());

    for key in [
        good.key.expose_secret(),
        revoked.key.expose_secret(),
        unknown.key.expose_secret(),
        &wrong,
    ] {
        let reply = client
            .get("/recommendations", &[("authorization", &api_key(key))])
            .await;
        printed.push(format!("{reply:?}"));
        let reply = client.get("/offers", &[("x-api-key", key)]).await;
        printed.push(format!("{reply:?}"));
    }
    store.fail(true);
    layer.handle().invalidate_all();
    let reply = client
        .get(
            "/recommendations",
            &[("authorization", &api_key(good.key.expose_secret()))],
        )
        .await;
    assert_eq!(reply.status, 503);
    printed.push(format!("{reply:?}"));

    let format = KeyFormat::new("mesh").unwrap();
    let parsed = format.parse(good.key.expose_secret()).unwrap();
    printed.push(format!("{parsed:?}"));
    printed.push(format!("{good:?} {revoked:?} {unknown:?}"));
    printed.push(format!("{:?}", good.key));
    printed.push(format!("{layer:?} {:?} {keys:?}", layer.handle()));
    printed.push(format!("{:?}", store.keys));
    printed.push(format!("{:?}", store.keys.list().await.unwrap()));
    let error = format.parse(&wrong).unwrap_err();
    printed.push(format!("{error} {error:?}"));
    (printed.join("\n"), secrets, ids)
}

fn assert_no_secret(text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a secret was printed:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_output_and_errors_never_show_a_secret() {
    let (printed, secrets, ids) = exercise().await;
    assert!(printed.contains(&ids[0]), "the check reads real output");
    assert!(printed.contains("INVALID_API_KEY") && printed.contains("API_KEY_REVOKED"));
    assert_no_secret(&printed, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "tracing"),
    ignore = "the crate emits events only with `--features tracing` (run by .ci/run)"
)]
async fn traces_name_the_key_id_and_never_the_secret() {
    let captured = captured_events();
    let (_, secrets, ids) = exercise().await;
    let logs = captured.text();
    assert!(
        logs.contains(&ids[0]),
        "the accepted key's id is traced:\n{logs}"
    );
    assert!(
        logs.contains("API_KEY_REVOKED"),
        "outcomes are traced:\n{logs}"
    );
    assert!(logs.contains("key store lookup failed"), "{logs}");
    assert_no_secret(&logs, &secrets);
}
