//! The demo: an axum server on 127.0.0.1 whose routes need `read`, `write` and `admin` keys.
//!
//! ```sh
//! cargo run --example server                      # PORT=3000 by default
//! cargo run --example server --features console   # and the web console at /admin
//! ```
//!
//! Keys live in the store `DATABASE_URL` names (`sqlite://…`, `postgres://…`, `redis://…`,
//! `memory:`); by default the SQLite file `tower-api-key.db` in the current directory, which the
//! `tower-api-key` command line tool uses too. When the store has no keys, the demo issues one per
//! scope and prints each once, with the curl command that uses it.
//!
//! Usage analytics are flushed to the same store every 10 seconds, and once more when the demo
//! stops (Ctrl-C or SIGTERM, after the requests in flight are answered), so `GET /usage` (admin
//! key) shows every replica's requests, by endpoint among others. Built with
//! `--features metrics`, `GET /metrics` (admin key) serves them as Prometheus text. `COUNTRY_HEADER=cf-ipcountry` counts requests by the country
//! a CDN in front names in that header.
//!
//! Built with `--features console`, the operator's console is at `/admin`: open
//! `http://127.0.0.1:3000/admin` and sign in with the admin key the demo printed. Its API is at
//! `/admin/api/...`, its OpenAPI document at `/admin/openapi.json`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Query, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

use tower_api_key::usage::{Analytics, CountryHeader, Endpoint, Resolution, StoreUsage, Subject};
use tower_api_key::{
    store::KeyStoreAdmin, AnyStore, ApiKeyHandle, ApiKeyLayer, KeyManager, NewKey, Principal,
    RequireScopeLayer,
};

async fn recommendations(Extension(principal): Extension<Principal>) -> Json<Value> {
    Json(json!({
        "recommendations": [{"offer": "rust-in-action", "score": 0.97}],
        "for_key": principal.key_id(),
        "environment": principal.environment(),
    }))
}

async fn tracking(Extension(principal): Extension<Principal>) -> Json<Value> {
    Json(json!({"recorded": true, "by": principal.name()}))
}

async fn offers(Extension(principal): Extension<Principal>) -> Json<Value> {
    Json(json!({"updated": true, "by": principal.name()}))
}

/// Names each request's endpoint by its route template, for usage analytics. (With its `axum`
/// feature the crate reads axum's `MatchedPath` itself; the demo runs without it.)
async fn name_endpoint(matched: Option<MatchedPath>, mut request: Request, next: Next) -> Response {
    if let Some(matched) = matched {
        let endpoint = Endpoint::new(matched.as_str());
        request.extensions_mut().insert(endpoint);
    }
    next.run(request).await
}

/// What `GET /usage` reports: the whole service, one key (`?key=<id>`) or one owner
/// (`?owner=<owner>`), over the last `hours` (1 by default), per `resolution` (`minute` by
/// default, `hour`, `day`).
#[derive(Deserialize)]
struct UsageQuery {
    key: Option<String>,
    owner: Option<String>,
    #[serde(default = "one_hour")]
    hours: u64,
    #[serde(default = "by_minute")]
    resolution: Resolution,
}

fn one_hour() -> u64 {
    1
}

fn by_minute() -> Resolution {
    Resolution::Minute
}

async fn usage(
    Extension((analytics, store, auth)): Extension<(Analytics, AnyStore, ApiKeyHandle)>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    // Errors in the reference's shape: `{error, code, status}`.
    let error = |status: StatusCode, code: &str, message: String| {
        let body = json!({"error": message, "code": code, "status": status.as_u16()});
        (status, Json(body))
    };
    let Query(query) =
        query.map_err(|e| error(StatusCode::BAD_REQUEST, "INVALID_QUERY", e.body_text()))?;
    let subject = match (&query.key, &query.owner) {
        (Some(key), _) => Subject::Key(key),
        (None, Some(owner)) => Subject::Owner(owner),
        (None, None) => Subject::All,
    };
    let now = SystemTime::now();
    let since = now - Duration::from_secs(query.hours.min(24 * 400) * 3_600);
    let unavailable = |e: &dyn std::fmt::Display| {
        let message = e.to_string();
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "KEY_STORE_UNAVAILABLE",
            message,
        )
    };
    let mut report = analytics
        .usage_across(&store, subject, since..now, query.resolution)
        .await
        .map_err(|e| unavailable(&e))?;
    if let Some(key) = &query.key {
        // Where the key stands against its rate limits and quotas now.
        if let Some(standing) = auth.standing(key).await.map_err(|e| unavailable(&e))? {
            report = report.with_limits(&standing);
        }
    }
    Ok(Json(json!(report)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT must be a port number, not {port:?}"))?,
        Err(_) => 3000,
    };

    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://tower-api-key.db".into());
    let store = AnyStore::connect(&url)
        .await
        .map_err(|e| format!("cannot open the key store {url}: {e}"))?;
    let analytics = Analytics::new();
    // Each key's request count and last use, for the store (and the console's "last used").
    let last_used = Arc::new(StoreUsage::new());
    let sinks = (analytics.clone(), last_used.clone());
    let mut builder = ApiKeyLayer::builder("mesh", store.clone());
    if let Ok(header) = std::env::var("COUNTRY_HEADER") {
        builder = builder.country_resolver(CountryHeader::new(&header)?);
    }
    #[cfg(feature = "metrics")]
    let (builder, prometheus) = (
        builder.usage_sink((sinks, tower_api_key::usage::MetricsSink::new())),
        metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?,
    );
    #[cfg(not(feature = "metrics"))]
    let builder = builder.usage_sink(sinks);
    let auth = builder.build()?;
    // Written to the store every 10 seconds (what a failed flush took stays pending for the
    // next), and once more at shutdown.
    let flushers = [
        analytics.spawn_flusher(store.clone(), Duration::from_secs(10)),
        last_used.spawn_flusher(store.clone(), Duration::from_secs(10)),
    ];
    // Other processes' revocations reach this one's cache at once: other replicas' (PostgreSQL,
    // Redis), and on SQLite the `tower-api-key` tool's (within 250 ms).
    store.spawn_listener(auth.handle()).await?;
    let existing = store.list().await?.len();
    let keys = KeyManager::new(store.clone()).with_cache(auth.handle());

    let app = Router::new()
        .route(
            "/recommendations",
            get(recommendations).route_layer(RequireScopeLayer::all(["read"])),
        )
        .route(
            "/tracking",
            post(tracking).route_layer(RequireScopeLayer::all(["write"])),
        )
        .route(
            "/offers",
            put(offers).route_layer(RequireScopeLayer::all(["admin"])),
        )
        .route(
            "/usage",
            get(usage).route_layer(RequireScopeLayer::all(["admin"])),
        );
    #[cfg(feature = "metrics")]
    let app = app.route(
        "/metrics",
        get(move || std::future::ready(prometheus.render()))
            .route_layer(RequireScopeLayer::all(["admin"])),
    );
    let app = app
        .layer(Extension((analytics.clone(), store.clone(), auth.handle())))
        .layer(auth.clone());
    // The console runs behind the same layer itself: its page loads without a key, its API
    // needs an admin key (or a `keys:self` key, for its owner's keys).
    #[cfg(feature = "console")]
    let app = app.nest(
        "/admin",
        tower_api_key::console::Console::new(&auth, store.clone())
            .analytics(analytics)
            .scopes(["read", "write", "admin", "keys:self"])
            // "Limit the number of API keys in circulation": 25 per owner.
            .max_keys_per_owner(25)
            // "Rotate keys regularly": none lives longer than a year.
            .max_key_lifetime(std::time::Duration::from_secs(365 * 24 * 3_600))
            .router(),
    );
    let app = app.layer(middleware::from_fn(name_endpoint));

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e} (set PORT to another port)"))?;

    println!(
        "tower-api-key demo on http://{addr}, keys in {} ({url})\n",
        store.kind()
    );
    if existing > 0 {
        println!("The store has {existing} keys already; make more with the command line tool:");
        println!(
            "  cargo run --features cli --bin tower-api-key -- create --name demo --scopes read\n"
        );
    } else {
        issue_demo_keys(&keys, addr).await?;
    }
    println!("Usage over the last hour, for an admin key: GET http://{addr}/usage");
    println!("  (?key=<id> or ?owner=<owner>, &hours=24, &resolution=minute|hour|day)");
    if cfg!(feature = "metrics") {
        println!("Prometheus metrics, for an admin key: GET http://{addr}/metrics");
    } else {
        println!("Prometheus metrics at /metrics: run with --features metrics");
    }
    if cfg!(feature = "console") {
        println!("The web console: open http://{addr}/admin and sign in with the admin key");
    } else {
        println!("The web console at /admin: run with --features console");
    }
    println!("Without a key, or with a read key on /offers, you get the JSON rejection:");
    println!("        curl -i http://{addr}/recommendations\n");

    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // Every request has been answered: write what was counted since the last flush, so a
    // restart (a deploy) loses no usage.
    for flusher in flushers {
        if let Err(error) = flusher.stop().await {
            eprintln!("usage counted since the last flush was not written: {error}");
        }
    }
    println!("Stopped; usage written to the store.");
    Ok(())
}

/// Ctrl-C, or SIGTERM (what a container runtime or systemd sends to stop a service).
async fn shutdown_signal() {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => drop(terminate.recv().await),
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    println!("\nShutting down: answering the requests in flight, then writing usage to the store.");
}

/// Issues one key per scope and prints each once.
async fn issue_demo_keys(
    keys: &KeyManager<AnyStore>,
    addr: SocketAddr,
) -> Result<(), Box<dyn std::error::Error>> {
    println!("Three keys were issued. Each is shown once; copy it now.\n");
    for (scope, method, path) in [
        ("read", "GET", "/recommendations"),
        ("write", "POST", "/tracking"),
        ("admin", "PUT", "/offers"),
    ] {
        // The read key is on the reference's Free plan: 100/minute, 10,000/day, 100,000/month.
        let plan = if scope == "read" { "free" } else { "pro" };
        let created = keys
            .create(
                NewKey::new(format!("demo-{scope}"))
                    .scopes([scope])
                    .plan(plan),
            )
            .await?;
        let key = created.key.expose_secret();
        println!("  {scope:<5} key (id {}): {key}", created.record.id);
        println!("        curl -X {method} -H 'Authorization: ApiKey {key}' http://{addr}{path}\n");
    }
    Ok(())
}
