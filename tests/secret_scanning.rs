//! GitHub's secret scanning partner program over real HTTP on 127.0.0.1: alerts signed with a
//! P-256 key as GitHub signs them, the keys they name revoked at once (and in the audit
//! trail), false positives told apart, unsigned, forged and malformed alerts refused.

#[cfg(not(feature = "secret-scanning"))]
#[test]
#[ignore = "needs the `secret-scanning` feature (run by .ci/run with --all-features)"]
fn secret_scanning_suite_needs_its_feature() {}

#[cfg(feature = "secret-scanning")]
mod common;

#[cfg(feature = "secret-scanning")]
mod secret_scanning {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use base64::Engine as _;
    use http::{Method, StatusCode};
    use p256::ecdsa::signature::Signer as _;
    use p256::ecdsa::{DerSignature, SigningKey};
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};
    use tower_api_key::key::SecretDigest;
    use tower_api_key::secret_scanning::{GitHubKeys, SecretScanning};
    use tower_api_key::store::AuditQuery;
    use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, NewKey};

    use crate::common::{self, api_key, app, serve, HttpClient};

    const PATH: &str = "/github/secret-scanning";

    /// A signing key as GitHub holds one, and the keys document it publishes, naming it `id`.
    fn github_key(seed: u8, id: &str) -> (SigningKey, String) {
        let signing = SigningKey::from_slice(&[seed; 32]).unwrap();
        let pem = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let document = serde_json::json!({
            "public_keys": [{ "key_identifier": id, "key": pem, "is_current": true }]
        });
        (signing, document.to_string())
    }

    /// Base64 of `key`'s DER signature of `body`, as in `Github-Public-Key-Signature`.
    fn sign(key: &SigningKey, body: &str) -> String {
        let signature: DerSignature = key.sign(body.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(signature.as_bytes())
    }

    struct Fixture {
        client: HttpClient,
        keys: KeyManager<MemoryStore>,
        github: SigningKey,
        scanning: SecretScanning<MemoryStore>,
    }

    impl Fixture {
        async fn new() -> Self {
            let store = MemoryStore::new();
            let layer = ApiKeyLayer::new("mesh", store.clone()).unwrap();
            let keys = KeyManager::new(store).with_cache(layer.handle());
            let (github, published) = github_key(7, "k1");
            let github_keys = GitHubKeys::from_json(&published).unwrap();
            let scanning = SecretScanning::new(keys.clone(), github_keys).unwrap();
            // The service behind its key layer, and the endpoint outside it.
            let service = app(layer, Arc::new(AtomicUsize::new(0)));
            let router = service.nest(PATH, scanning.clone().router());
            Fixture {
                client: HttpClient::new(serve(router).await),
                keys,
                github,
                scanning,
            }
        }

        /// Posts `body` signed by `key` as GitHub's key `id`.
        async fn alert(&self, body: &str, id: &str, key: &SigningKey) -> common::Reply {
            let signature = sign(key, body);
            let headers = [
                ("content-type", "application/json"),
                ("github-public-key-identifier", id),
                ("github-public-key-signature", signature.as_str()),
            ];
            // GitHub's answer names leaked keys by their SHA-256: kept out of the suite's log.
            let hidden = ["token_hash"];
            self.client
                .send_hiding(Method::POST, PATH, &headers, body, &hidden)
                .await
        }

        /// What the service answers a request with `key`.
        async fn call(&self, key: &str) -> common::Reply {
            let header = api_key(key);
            let headers = [("authorization", header.as_str())];
            self.client.get("/recommendations", &headers).await
        }

        async fn status(&self, key: &str) -> StatusCode {
            self.call(key).await.status
        }
    }

    fn matches(tokens: &[&str]) -> String {
        let found: Vec<_> = (tokens.iter().enumerate())
            .map(|(n, token)| {
                serde_json::json!({
                    "token": token,
                    "type": "mesh_api_key",
                    "url": format!("https://github.com/octocat/leaky/blob/main/file{n}.env"),
                    "source": "content",
                })
            })
            .collect();
        serde_json::to_string(&found).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leaked_key_is_revoked_at_once_and_false_positives_are_told_apart() {
        let f = Fixture::new().await;
        let leaked = f
            .keys
            .create(NewKey::new("ci").owner("acme").scopes(["read"]))
            .await
            .unwrap();
        let other = f
            .keys
            .create(NewKey::new("prod").scopes(["read"]))
            .await
            .unwrap();
        let (leaked_key, other_key) = (leaked.key.expose_secret(), other.key.expose_secret());
        assert_eq!(
            f.status(leaked_key).await,
            StatusCode::OK,
            "cached before the alert"
        );

        // The same id with another secret, and its checksum made right: not the key.
        let id = &leaked.record.id;
        let forged = crate::common::forge("mesh", "live", id, &"Z".repeat(32));
        let tokens = [
            leaked_key,
            forged.as_str(),
            "mesh_live_notakey",
            "ghp_somebodyelses",
            leaked_key,
        ];
        let reply = f.alert(&matches(&tokens), "k1", &f.github).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        let feedback = reply.json();
        let labels: Vec<&str> = (feedback.as_array().unwrap().iter())
            .map(|f| f["label"].as_str().unwrap())
            .collect();
        assert_eq!(
            labels,
            [
                "true_positive",
                "false_positive",
                "false_positive",
                "false_positive",
                "true_positive"
            ]
        );
        for (entry, token) in feedback.as_array().unwrap().iter().zip(tokens) {
            let hash = SecretDigest::of(token.as_bytes()).to_hex();
            assert_eq!(entry["token_hash"], hash.as_str());
            assert_eq!(entry["token_type"], "mesh_api_key");
            assert!(entry.get("token_raw").is_none(), "never the token back");
            assert_eq!(entry.as_object().unwrap().len(), 3);
        }
        assert!(!reply.body.contains(leaked_key), "no secret in the answer");

        // Refused at once on this replica, the cache notwithstanding; the other key works.
        let reply = f.call(leaked_key).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.code(), "API_KEY_REVOKED");
        assert_eq!(f.status(other_key).await, StatusCode::OK);
        let shown = f.keys.show(id).await.unwrap().unwrap();
        assert_eq!(shown.state.to_string(), "revoked");

        // In the audit trail once (the second match found it revoked), by GitHub, with where.
        let trail = f
            .keys
            .audit_trail(&AuditQuery::newest(10).key(id))
            .await
            .unwrap();
        let revokes: Vec<_> = trail.iter().filter(|e| e.action == "revoke").collect();
        assert_eq!(revokes.len(), 1, "{trail:?}");
        assert_eq!(revokes[0].actor, "github-secret-scanning");
        assert_eq!(revokes[0].owner.as_deref(), Some("acme"));
        assert_eq!(
            revokes[0].detail,
            ["found in public at https://github.com/octocat/leaky/blob/main/file0.env"]
        );

        // Sent again (GitHub retries): still a true positive, nothing changed.
        let again = f.alert(&matches(&[leaked_key]), "k1", &f.github).await;
        assert_eq!(again.json()[0]["label"], "true_positive");
        let trail = f
            .keys
            .audit_trail(&AuditQuery::newest(10).key(id))
            .await
            .unwrap();
        assert_eq!(trail.iter().filter(|e| e.action == "revoke").count(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unsigned_forged_and_malformed_alerts_revoke_nothing() {
        let f = Fixture::new().await;
        let created = f
            .keys
            .create(NewKey::new("ci").scopes(["read"]))
            .await
            .unwrap();
        let key = created.key.expose_secret();
        let body = matches(&[key]);
        let refused = |reply: &common::Reply, status: StatusCode, code: &str| {
            assert_eq!(reply.status, status, "{reply:?}");
            assert_eq!(reply.json()["code"], code, "{reply:?}");
            assert!(!reply.body.contains(key), "{reply:?}");
        };

        // No signature headers.
        let headers = [("content-type", "application/json")];
        let reply = f
            .client
            .send_body(Method::POST, PATH, &headers, &body)
            .await;
        refused(&reply, StatusCode::UNAUTHORIZED, "INVALID_SIGNATURE");
        // Signed by a key GitHub did not publish, under its identifier or another.
        let (stranger, _) = github_key(9, "k1");
        refused(
            &f.alert(&body, "k1", &stranger).await,
            StatusCode::UNAUTHORIZED,
            "INVALID_SIGNATURE",
        );
        refused(
            &f.alert(&body, "k2", &f.github).await,
            StatusCode::UNAUTHORIZED,
            "INVALID_SIGNATURE",
        );
        // GitHub's signature of another body.
        let signature = sign(&f.github, "[]");
        let headers = [
            ("github-public-key-identifier", "k1"),
            ("github-public-key-signature", signature.as_str()),
        ];
        let reply = f
            .client
            .send_body(Method::POST, PATH, &headers, &body)
            .await;
        refused(&reply, StatusCode::UNAUTHORIZED, "INVALID_SIGNATURE");
        // A signature that is not base64, or not DER.
        for signature in ["%%%", "AAAA"] {
            let headers = [
                ("github-public-key-identifier", "k1"),
                ("github-public-key-signature", signature),
            ];
            let reply = f
                .client
                .send_body(Method::POST, PATH, &headers, &body)
                .await;
            refused(&reply, StatusCode::UNAUTHORIZED, "INVALID_SIGNATURE");
        }
        // Signed, but not an alert.
        let quoted = serde_json::to_string(key).unwrap(); // a token, not in an array
        for not_an_alert in ["{\"token\": 1}", "[{\"type\": \"x\"}]", "not json", &quoted] {
            let reply = f.alert(not_an_alert, "k1", &f.github).await;
            refused(&reply, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
        }
        assert_eq!(f.status(key).await, StatusCode::OK, "nothing revoked");

        // GitHub rotates its key: refused until the new keys are given, then handled.
        let (rotated, published) = github_key(11, "k2");
        refused(
            &f.alert(&body, "k2", &rotated).await,
            StatusCode::UNAUTHORIZED,
            "INVALID_SIGNATURE",
        );
        f.scanning
            .set_github_keys(GitHubKeys::from_json(&published).unwrap());
        let reply = f.alert(&body, "k2", &rotated).await;
        assert_eq!(reply.json()[0]["label"], "true_positive", "{reply:?}");
        assert_eq!(f.status(key).await, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn githubs_keys_document_is_checked() {
        let (_, published) = github_key(7, "k1");
        assert!(GitHubKeys::from_json(&published).is_ok());
        for bad in [
            "",
            "{}",
            r#"{"public_keys": [{"key_identifier": "k1"}]}"#,
            r#"{"public_keys": [{"key_identifier": "k1", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}]}"#,
        ] {
            let error = GitHubKeys::from_json(bad).unwrap_err();
            assert!(
                error
                    .to_string()
                    .starts_with("invalid GitHub secret scanning keys"),
                "{error}"
            );
        }
        let manager = KeyManager::new(MemoryStore::new());
        let refused = SecretScanning::new(manager, GitHubKeys::default());
        assert!(refused.unwrap_err().to_string().contains("no key format"));
    }
}
