//! A tonic server behind the layer, with scopes per gRPC method. Needs no `protoc`: it serves the
//! standard health service from `tonic-health`.
//!
//! ```sh
//! cargo run --example grpc --features tonic     # PORT=50051 by default
//! ```
//!
//! `Check` needs a `read` key and `Watch` an `admin` key. At start the example issues one key of
//! each, prints them once, and calls the server with a tonic client to show what a client sees.

use std::net::{Ipv4Addr, SocketAddr};

use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::Request;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;
use tower_api_key::{
    scope::ScopeRequirement, ApiKeyLayer, KeyManager, MemoryStore, NewKey, RequireScopeLayer,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT must be a port number, not {port:?}"))?,
        Err(_) => 50051,
    };

    let store = MemoryStore::new();
    let auth = ApiKeyLayer::new("mesh", store.clone())?;
    let keys = KeyManager::new(store).with_cache(auth.handle());
    let read = keys
        .create(NewKey::new("grpc-read").scopes(["read"]))
        .await?;
    let admin = keys
        .create(NewKey::new("grpc-admin").scopes(["admin"]))
        .await?;

    let per_method = RequireScopeLayer::per_path(
        [
            (
                "/grpc.health.v1.Health/Check",
                ScopeRequirement::all(["read"]),
            ),
            (
                "/grpc.health.v1.Health/Watch",
                ScopeRequirement::all(["admin"]),
            ),
        ],
        ScopeRequirement::all(["admin"]),
    );
    let (_reporter, health) = tonic_health::server::health_reporter();

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e} (set PORT to another port)"))?;
    let server = tokio::spawn(
        Server::builder()
            .layer(ServiceBuilder::new().layer(auth).layer(per_method))
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    println!("gRPC health service on http://{addr}, behind tower-api-key\n");
    println!("  read  key: {}", read.key.expose_secret());
    println!("  admin key: {}\n", admin.key.expose_secret());

    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    for (what, key) in [
        ("Check with no key", None),
        ("Check with the read key", Some(read.key.expose_secret())),
        ("Watch with the read key", Some(read.key.expose_secret())),
    ] {
        let mut request = Request::new(HealthCheckRequest::default());
        if let Some(key) = key {
            request
                .metadata_mut()
                .insert("authorization", format!("ApiKey {key}").parse()?);
        }
        let outcome = if what.starts_with("Watch") {
            client
                .watch(request)
                .await
                .map(|_| "stream opened".to_owned())
        } else {
            client
                .check(request)
                .await
                .map(|r| format!("{:?}", r.into_inner().status()))
        };
        match outcome {
            Ok(ok) => println!("  {what}: {ok}"),
            Err(status) => println!("  {what}: {:?} {}", status.code(), status.message()),
        }
    }
    println!("\nServing until interrupted (Ctrl-C).");
    server.await??;
    Ok(())
}
