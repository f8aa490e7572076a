//! The end-to-end benchmark's server: `bare`, `layer` (this crate, one hot key) or `bearer`
//! (tower-http's static token), on 127.0.0.1:PORT, one worker thread. It prints the header to
//! send on its first line. Used by `bench/run.sh`.

use axum::routing::get;
use axum::Router;
use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, NewKey};
use tower_http::validate_request::ValidateRequestHeaderLayer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "layer".into());
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(3100);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = Router::new().route("/", get(|| async { "ok" }));
        let (app, header) = match mode.as_str() {
            "bare" => (app, "ApiKey none".to_owned()),
            #[allow(deprecated)]
            "bearer" => (
                app.layer(ValidateRequestHeaderLayer::bearer("mesh_live_statictoken")),
                "Bearer mesh_live_statictoken".to_owned(),
            ),
            "layer" => {
                let store = MemoryStore::new();
                let layer = ApiKeyLayer::new("mesh", store.clone())?;
                let created = KeyManager::new(store)
                    .with_cache(layer.handle())
                    .create(NewKey::new("bench"))
                    .await?;
                (
                    app.layer(layer),
                    format!("ApiKey {}", created.key.expose_secret()),
                )
            }
            other => return Err(format!("unknown mode {other}: bare, layer or bearer").into()),
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("Authorization: {header}");
        axum::serve(listener, app).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
