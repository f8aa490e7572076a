//! What the integration tests share: a real server on 127.0.0.1, a real HTTP client, and stores
//! that count, fail or hang on demand.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use axum::routing::{get, post, put};
use axum::{Extension, Router};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower_api_key::{
    async_trait, limit::Credits, limit::Limits, network::IpNet, store::KeyRecord, store::KeyStore,
    store::KeyStoreAdmin, store::StoreError, store::UsageArchive, store::UsageRange,
    store::UsageRow, store::UsageUpdate, ApiKeyLayer, MemoryStore, Principal, RequireScopeLayer,
};

/// The variable that turns on [`log_everything`]; `.ci/run` sets it for the whole-suite run whose
/// output `.ci/scan_output.py` then searches for secrets.
pub const LOG_VARIABLE: &str = "TOWER_API_KEY_TEST_LOG";

fn logging() -> bool {
    std::env::var_os(LOG_VARIABLE).is_some()
}

/// The events of this test binary, as text: every `tracing` event at every level, from this crate
/// and from the database clients. With `TOWER_API_KEY_TEST_LOG` set they also go to the test's
/// output.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        if logging() {
            print!("{}", String::from_utf8_lossy(buf));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per test binary) the subscriber that captures every event, and returns it.
pub fn captured_events() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        captured
    })
}

/// With `TOWER_API_KEY_TEST_LOG` set, every event goes to the test's output and [`HttpClient`]
/// prints every reply it gets: with `--nocapture`, the suite's whole output is then what an
/// operator's logs would hold.
pub fn log_everything() {
    if logging() {
        captured_events();
    }
}

/// Serves `app` on an ephemeral port of 127.0.0.1 until the test's runtime ends.
pub async fn serve(app: Router) -> SocketAddr {
    log_everything();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A real HTTP/1 client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
}

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    /// The `code` of a JSON rejection body.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap().to_owned()
    }
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> Self {
        log_everything();
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
            addr,
        }
    }

    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send_body(method, path, headers, "").await
    }

    /// Sends `body` (JSON, if not empty) and logs the reply.
    pub async fn send_body(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let reply = self.exchange(method, path, headers, body).await;
        log_reply(&reply);
        reply
    }

    /// As [`send_body`](Self::send_body), for the one answer that may hold a key's plaintext (a
    /// console's new key): it is logged with its `key` and `export` fields hidden.
    pub async fn send_issuing(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        self.send_hiding(method, path, headers, body, &["key", "export"])
            .await
    }

    /// As [`send_body`](Self::send_body), for an answer meant for its one recipient only (a
    /// console's new key, secret scanning's hashes of leaked keys for GitHub): it is logged
    /// with `fields` hidden, in its objects and in those of its arrays.
    pub async fn send_hiding(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
        fields: &[&str],
    ) -> Reply {
        fn hide(json: &mut serde_json::Value, fields: &[&str]) {
            match json {
                serde_json::Value::Object(object) => {
                    for (name, value) in object.iter_mut() {
                        if fields.contains(&name.as_str()) {
                            *value = "<for its recipient only: hidden from the log>".into();
                        }
                    }
                }
                serde_json::Value::Array(items) => items.iter_mut().for_each(|i| hide(i, fields)),
                _ => {}
            }
        }
        let reply = self.exchange(method, path, headers, body).await;
        if logging() {
            let mut shown = Reply {
                status: reply.status,
                headers: reply.headers.clone(),
                body: reply.body.clone(),
            };
            if let Ok(mut json) = serde_json::from_str::<serde_json::Value>(&reply.body) {
                hide(&mut json, fields);
                shown.body = json.to_string();
            }
            log_reply(&shown);
        }
        reply
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        if !body.is_empty() {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = Full::new(Bytes::copy_from_slice(body.as_bytes()));
        let response = self
            .client
            .request(request.body(body).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers).await
    }
}

/// Prints `reply` when the suite is logged: the reply only, as the request carries the key
/// (and the path may, in a query).
fn log_reply(reply: &Reply) {
    if logging() {
        println!("reply: {reply:?}");
    }
}

/// `Authorization: ApiKey <key>`.
pub fn api_key(key: &str) -> String {
    format!("ApiKey {key}")
}

/// A memory store whose next creates answer `Conflict` (as a store does when a new key's id is
/// taken), whose changes to keys fail once `writes_left` is down to 0 (unset: never), and whose
/// next change can first delete a key, as a concurrent delete would.
#[derive(Clone, Default)]
pub struct FaultyStore {
    pub keys: MemoryStore,
    pub conflicts: Arc<AtomicUsize>,
    pub writes_left: Arc<Mutex<Option<usize>>>,
    pub deleted_on_write: Arc<Mutex<Option<String>>>,
    /// Whether writing to the audit trail fails.
    pub audit_fails: Arc<std::sync::atomic::AtomicBool>,
    /// Whether writing keys' usage (`record_usage`, `write_usage`) never finishes.
    pub usage_hangs: Arc<std::sync::atomic::AtomicBool>,
}

impl FaultyStore {
    /// The next `n` changes to keys succeed, and every one after fails.
    pub fn fail_after_writes(&self, n: usize) {
        *self.writes_left.lock().unwrap() = Some(n);
    }

    /// The next change to a key first deletes key `id`.
    pub fn delete_on_next_write(&self, id: &str) {
        *self.deleted_on_write.lock().unwrap() = Some(id.to_owned());
    }

    /// Never finishes while `usage_hangs` is set.
    async fn usage_held(&self) {
        if self.usage_hangs.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    async fn write(&self) -> Result<(), StoreError> {
        let deleted = self.deleted_on_write.lock().unwrap().take();
        if let Some(id) = deleted {
            self.keys.delete(&id).await?;
        }
        match &mut *self.writes_left.lock().unwrap() {
            Some(0) => Err(StoreError::unavailable(
                "the test's store refuses writes now",
            )),
            Some(left) => {
                *left -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

#[async_trait]
impl KeyStore for FaultyStore {
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.keys.get(id).await
    }

    async fn owner(
        &self,
        owner: &str,
    ) -> Result<Option<tower_api_key::store::OwnerRecord>, StoreError> {
        self.keys.owner(owner).await
    }
}

#[async_trait]
impl KeyStoreAdmin for FaultyStore {
    async fn create(&self, record: KeyRecord) -> Result<(), StoreError> {
        let left = self.conflicts.load(Ordering::SeqCst);
        if left > 0 {
            self.conflicts.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::Conflict(record.id));
        }
        self.keys.create(record).await
    }
    async fn revoke(&self, id: &str, at: SystemTime) -> Result<bool, StoreError> {
        self.keys.revoke(id, at).await
    }
    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        self.keys.delete(id).await
    }
    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.keys.list().await
    }
    async fn set_scopes(&self, id: &str, scopes: &[String]) -> Result<bool, StoreError> {
        self.write().await?;
        self.keys.set_scopes(id, scopes).await
    }
    async fn set_name(&self, id: &str, name: &str) -> Result<bool, StoreError> {
        self.write().await?;
        self.keys.set_name(id, name).await
    }
    async fn set_plan(&self, id: &str, plan: Option<&str>) -> Result<bool, StoreError> {
        self.write().await?;
        self.keys.set_plan(id, plan).await
    }
    async fn set_metadata(
        &self,
        id: &str,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<bool, StoreError> {
        self.write().await?;
        self.keys.set_metadata(id, metadata).await
    }
    async fn set_expiry(&self, id: &str, at: Option<SystemTime>) -> Result<bool, StoreError> {
        self.write().await?;
        self.keys.set_expiry(id, at).await
    }
    async fn set_disabled(&self, id: &str, disabled: bool) -> Result<bool, StoreError> {
        self.write().await?;
        self.keys.set_disabled(id, disabled).await
    }
    async fn set_credits(&self, id: &str, credits: Option<&Credits>) -> Result<bool, StoreError> {
        self.write().await?;
        self.keys.set_credits(id, credits).await
    }
    async fn add_credits(&self, id: &str, amount: u64) -> Result<Option<u64>, StoreError> {
        self.keys.add_credits(id, amount).await
    }
    async fn set_limits(&self, id: &str, limits: Option<&Limits>) -> Result<bool, StoreError> {
        self.write().await?;
        self.keys.set_limits(id, limits).await
    }
    async fn set_allowed_networks(&self, id: &str, networks: &[IpNet]) -> Result<bool, StoreError> {
        self.write().await?;
        self.keys.set_allowed_networks(id, networks).await
    }
    async fn set_owner_limits(
        &self,
        owner: &str,
        limits: Option<&Limits>,
    ) -> Result<(), StoreError> {
        self.keys.set_owner_limits(owner, limits).await
    }
    async fn set_owner_credits(
        &self,
        owner: &str,
        credits: Option<&Credits>,
    ) -> Result<(), StoreError> {
        self.keys.set_owner_credits(owner, credits).await
    }
    async fn add_owner_credits(&self, owner: &str, amount: u64) -> Result<Option<u64>, StoreError> {
        self.keys.add_owner_credits(owner, amount).await
    }
    async fn record_usage(&self, batch: &[UsageUpdate]) -> Result<(), StoreError> {
        self.usage_held().await;
        self.keys.record_usage(batch).await
    }
}

#[async_trait]
impl tower_api_key::store::AuditArchive for FaultyStore {
    async fn append_audit(&self, row: &tower_api_key::store::AuditRow) -> Result<(), StoreError> {
        if self.audit_fails.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::unavailable(
                "the test's store refuses audit rows now",
            ));
        }
        self.keys.append_audit(row).await
    }

    async fn read_audit(
        &self,
        query: &tower_api_key::store::AuditQuery<'_>,
    ) -> Result<Vec<tower_api_key::store::AuditRow>, StoreError> {
        self.keys.read_audit(query).await
    }

    async fn prune_audit(&self, before: u64) -> Result<u64, StoreError> {
        self.keys.prune_audit(before).await
    }
}

#[async_trait]
impl UsageArchive for FaultyStore {
    async fn write_usage(
        &self,
        rows: &[UsageRow],
        expire: &[(u32, u64)],
    ) -> Result<(), StoreError> {
        self.usage_held().await;
        self.keys.write_usage(rows, expire).await
    }

    async fn read_usage(&self, range: &UsageRange<'_>) -> Result<Vec<UsageRow>, StoreError> {
        self.keys.read_usage(range).await
    }
}

/// A store that counts its lookups, and can be made to fail, to hang, or to be slow.
#[derive(Clone, Default)]
pub struct TestStore {
    pub keys: MemoryStore,
    pub gets: Arc<AtomicUsize>,
    pub failing: Arc<AtomicBool>,
    pub hanging: Arc<AtomicBool>,
    pub delay_ms: Arc<AtomicUsize>,
}

impl TestStore {
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }
    pub fn hang(&self, on: bool) {
        self.hanging.store(on, Ordering::SeqCst);
    }
    pub fn delay(&self, ms: usize) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
}

#[async_trait]
impl KeyStore for TestStore {
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        }
        if self.hanging.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("database is down"));
        }
        self.keys.get(id).await
    }

    async fn owner(
        &self,
        owner: &str,
    ) -> Result<Option<tower_api_key::store::OwnerRecord>, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("database is down"));
        }
        self.keys.owner(owner).await
    }

    async fn spend_credits(
        &self,
        charge: &tower_api_key::limit::Charge<'_>,
    ) -> Result<tower_api_key::limit::Spend, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("database is down"));
        }
        self.keys.spend_credits(charge).await
    }
}

/// The demo's routes: read, write and admin, each counting the calls that reach it.
pub fn app(layer: ApiKeyLayer, calls: Arc<AtomicUsize>) -> Router {
    let handler = move |Extension(principal): Extension<Principal>| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            serde_json::json!({
                // What a handler may show: an opaque key's id is its digest.
                "key_id": principal.log_id(),
                "name": principal.name(),
                "environment": principal.environment(),
                "plan": principal.plan(),
                "expires_at": principal.expires_at().map(|at| {
                    at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
                }),
            })
            .to_string()
        }
    };
    Router::new()
        .route(
            "/recommendations",
            get(handler.clone()).route_layer(RequireScopeLayer::all(["read"])),
        )
        .route(
            "/tracking",
            post(handler.clone()).route_layer(RequireScopeLayer::all(["write"])),
        )
        .route(
            "/offers",
            put(handler).route_layer(RequireScopeLayer::all(["admin"])),
        )
        .layer(layer)
}

/// A router with one route template, `GET /items/{id}` (answering the id), for tests that count
/// requests by endpoint.
pub fn items() -> Router {
    let item = |axum::extract::Path(id): axum::extract::Path<String>| async move { id };
    Router::new().route("/items/{id}", get(item))
}

/// A console's test bed: a layer with usage analytics over a memory store, `items()` behind it
/// at `/items/{id}`, and the console `configure` makes of it nested at `/admin`. Returns the app
/// and the plaintext of an admin key issued under `admin_name`.
#[cfg(feature = "console")]
pub async fn console_app(
    admin_name: &str,
    configure: impl FnOnce(
        tower_api_key::console::Console<MemoryStore>,
    ) -> tower_api_key::console::Console<MemoryStore>,
) -> (Router, tower_api_key::KeyManager<MemoryStore>, String) {
    use tower_api_key::{console::Console, usage::Analytics, KeyManager, NewKey};

    let store = MemoryStore::new();
    let analytics = Analytics::new();
    let layer = ApiKeyLayer::builder("mesh", store.clone())
        .usage_sink(analytics.clone())
        .build()
        .unwrap();
    let keys = KeyManager::new(store.clone()).with_cache(layer.handle());
    let admin = keys
        .create(NewKey::new(admin_name).scopes(["admin"]))
        .await
        .unwrap();
    let console = configure(Console::new(&layer, store).analytics(analytics));
    let app = Router::new()
        .nest("/admin", console.router())
        .merge(items().route_layer(layer));
    (app, keys, admin.key.expose_secret().to_owned())
}

/// `router` with each request's endpoint named by its route template: by the layer itself with
/// the crate's `axum` feature, otherwise by a `usage::Endpoint` a middleware in front of the
/// layer puts into the request (as an application without the feature does, and the demo).
pub fn name_endpoints(router: Router) -> Router {
    if cfg!(feature = "axum") {
        return router;
    }
    router.layer(axum::middleware::from_fn(
        |matched: Option<axum::extract::MatchedPath>,
         mut request: axum::extract::Request,
         next: axum::middleware::Next| async move {
            if let Some(matched) = matched {
                let endpoint = tower_api_key::usage::Endpoint::new(matched.as_str());
                request.extensions_mut().insert(endpoint);
            }
            next.run(request).await
        },
    ))
}

/// Builds the text of a key with a given id and secret and a correct checksum: what an attacker
/// who knows an id could send.
pub fn forge(prefix: &str, env: &str, id: &str, secret: &str) -> String {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let body = format!("{prefix}_{env}_{id}_{secret}");
    let mut crc = crc32fast::hash(body.as_bytes());
    let mut checksum = [b'0'; 6];
    for slot in checksum.iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    format!("{body}{}", std::str::from_utf8(&checksum).unwrap())
}

/// One hour ago.
pub fn an_hour_ago() -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600)
}

/// A variable that `.ci/run` sets for the suites that need a server.
pub fn server_env(name: &str) -> String {
    // Every server test starts here: its events go to the output `.ci/run` scans.
    log_everything();
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run this suite through .ci/run, which starts the server")
    })
}

/// Runs the shell command in variable `name` (stopping or starting a server).
pub fn run_server_command(name: &str) {
    let command = server_env(name);
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{name} failed: {command}");
}

/// Runs a server's own client (`psql`, `redis-cli`, installed with the server by `.ci/run`) and
/// returns what it printed.
pub fn server_client(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (installed with the server by .ci/run)"));
    assert!(output.status.success(), "{program} {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs the `tower-api-key` tool with `args` and asserts that it succeeded; what it printed.
/// Its output may hold keys it created: never printed here.
#[cfg(feature = "cli")]
pub fn run_tool(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tower-api-key"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{:?} failed: {stderr}",
        &args[..2.min(args.len())]
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A fresh directory for a SQLite file (`keys.db`) and its `sqlite://` URL; the test removes the
/// directory when it is done.
pub fn temp_db(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(unique(&format!("tower-api-key-{name}")));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("keys.db").display());
    (dir, url)
}

/// The time now, in whole seconds since 1970.
pub fn unix_now() -> u64 {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
    now.unwrap().as_secs()
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// A TCP proxy on 127.0.0.1 in front of a server, whose connections can be made half-open: after
/// [`freeze`](Self::freeze), the connections open at that moment stay open but carry nothing more
/// either way (as when a network path dies without a reset); connections made later work.
pub struct FreezingProxy {
    pub port: u16,
    generation: Arc<AtomicUsize>,
}

impl FreezingProxy {
    /// A proxy to `target` (`host:port`), until the test's runtime ends.
    pub async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(AtomicUsize::new(0));
        let current = generation.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let born = current.load(Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (from, to) in [(client_read, server_write), (server_read, client_write)] {
                    let current = current.clone();
                    tokio::spawn(Self::pipe(from, to, born, current));
                }
            }
        });
        FreezingProxy { port, generation }
    }

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        born: usize,
        current: Arc<AtomicUsize>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let Ok(n) = from.read(&mut buffer).await else {
                return;
            };
            if n == 0 {
                return;
            }
            if current.load(Ordering::SeqCst) != born {
                // Frozen: hold both sockets open, forward nothing, for as long as the test runs.
                let _keep = (from, to);
                std::future::pending::<()>().await;
                return;
            }
            if to.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    }

    /// Makes every connection open now half-open.
    pub fn freeze(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// The next number of a small xorshift sequence (test data; `seed` not 0).
pub fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}
