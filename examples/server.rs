//! The demo: an axum server on 127.0.0.1 whose routes need `read`, `write` and `admin` keys.
//!
//! ```sh
//! cargo run --example server            # PORT=3000 by default
//! ```
//!
//! At start it issues one key per scope into an in-memory store and prints each once, with the
//! curl command that uses it.

use std::net::{Ipv4Addr, SocketAddr};

use std::sync::Arc;

use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use tower_api_key::{
    ApiKeyLayer, KeyManager, MemoryStore, MemoryUsage, NewKey, Principal, RequireScopeLayer,
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

    let store = MemoryStore::new();
    let usage_counts = Arc::new(MemoryUsage::new());
    let auth = ApiKeyLayer::builder("mesh", store.clone())
        .usage_sink(usage_counts.clone())
        .build()?;
    let keys = KeyManager::new(store, auth.handle());

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

    println!("tower-api-key demo on http://{addr}\n");
    println!("Three keys were issued into an in-memory store. Each is shown once; copy it now.\n");
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
    println!("Usage per key, for the admin key: GET http://{addr}/usage");
    println!("Without a key, or with the read key on /offers, you get the JSON rejection:");
    println!("        curl -i http://{addr}/recommendations\n");

    axum::serve(listener, app).await?;
    Ok(())
}
