//! The demo: an axum server on 127.0.0.1 whose routes need `read`, `write` and `admin` keys.
//!
//! ```sh
//! cargo run --example server            # PORT=3000 by default
//! ```
//!
//! Keys live in the store `DATABASE_URL` names (`sqlite://…`, `postgres://…`, `redis://…`,
//! `memory:`); by default the SQLite file `tower-api-key.db` in the current directory, which the
//! `tower-api-key` command line tool uses too. When the store has no keys, the demo issues one per
//! scope and prints each once, with the curl command that uses it.

use std::net::{Ipv4Addr, SocketAddr};

use std::sync::Arc;

use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use tower_api_key::{
    store::KeyStoreAdmin, usage::MemoryUsage, AnyStore, ApiKeyLayer, KeyManager, NewKey, Principal,
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

async fn usage(Extension(usage): Extension<Arc<MemoryUsage>>) -> Json<Value> {
    Json(json!(usage.snapshot()))
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
    let usage_counts = Arc::new(MemoryUsage::new());
    let auth = ApiKeyLayer::builder("mesh", store.clone())
        .usage_sink(usage_counts.clone())
        .build()?;
    // Other processes' revocations (PostgreSQL, Redis) reach this one's cache at once.
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
        )
        .layer(Extension(usage_counts))
        .layer(auth);

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
    println!("Usage per key, for an admin key: GET http://{addr}/usage");
    println!("Without a key, or with a read key on /offers, you get the JSON rejection:");
    println!("        curl -i http://{addr}/recommendations\n");

    axum::serve(listener, app).await?;
    Ok(())
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
