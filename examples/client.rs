//! A client of the demo server: reads its key from `MESH_API_KEY` and sends it on every request.
//!
//! ```sh
//! cargo run --example server                     # in one terminal; copy the read key
//! MESH_API_KEY=mesh_live_… cargo run --example client
//! ```
//!
//! `MESH_API_URL` changes the server (default `http://127.0.0.1:3000`).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_api_key::client::AddApiKeyLayer;

#[tokio::main]
async fn main() {
    if let Err(error) = run().await {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // A missing, empty or foreign key is an error here, not a 401 later.
    let with_key = AddApiKeyLayer::builder()
        .expect_prefix("mesh")
        .from_env("MESH_API_KEY")?;
    let base = std::env::var("MESH_API_URL").unwrap_or_else(|_| "http://127.0.0.1:3000".into());

    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut client = ServiceBuilder::new().layer(with_key).service(http);

    let request = http::Request::get(format!("{base}/recommendations")).body(Empty::new())?;
    let response = client.ready().await?.call(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!("GET /recommendations -> {status}");
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}
