//! A small driver for instruction counts: `N` requests through one service, polled without a
//! runtime (every future here is ready at once), so `valgrind --tool=callgrind` counts the
//! request path and little else. Used by `bench/run.sh`.
//!
//! ```sh
//! cargo build --release --example bench_driver
//! valgrind --tool=callgrind ./target/release/examples/bench_driver layer 100000
//! ```
//!
//! Built with `--features analytics`, mode `analytics` runs the layer with an
//! [`Analytics`](tower_api_key::usage) sink (without the feature it is the plain layer).

#[path = "../benches/support/floor.rs"]
mod floor;

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use tower::{service_fn, Layer, Service};
use tower_api_key::{
    key::KeyFormat, store::KeyRecord, store::KeyStoreAdmin, ApiKeyLayer, Environment, MemoryStore,
};
use tower_http::validate_request::ValidateRequestHeaderLayer;

type Body = http_body_util::Empty<bytes::Bytes>;

async fn inner(_: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::new()))
}

/// Polls `future` to completion without a runtime.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

fn run<S>(mut service: S, header: &HeaderValue, n: u64)
where
    S: Service<Request<Body>>,
    S::Response: std::fmt::Debug,
    S::Error: std::fmt::Debug,
{
    for _ in 0..n {
        let mut request = Request::new(Body::new());
        request.headers_mut().insert(AUTHORIZATION, header.clone());
        ready(std::future::poll_fn(|cx| service.poll_ready(cx))).unwrap();
        black_box(ready(service.call(request)).unwrap());
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "layer".into());
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A runtime is entered for the warm-up lookup (moka and the store are async); the measured
    // loop is polled by hand.
    let _guard = runtime.enter();
    let store = MemoryStore::new();
    let generated = KeyFormat::new("mesh").unwrap().generate(Environment::Live);
    let record = KeyRecord::new(generated.id, generated.digest, "driver", Environment::Live);
    runtime.block_on(store.create(record)).unwrap();
    let header =
        HeaderValue::from_str(&format!("ApiKey {}", generated.key.expose_secret())).unwrap();
    match mode.as_str() {
        "bare" => run(service_fn(inner), &header, n),
        #[allow(deprecated)]
        "bearer" => run(
            ValidateRequestHeaderLayer::bearer("mesh_live_statictoken").layer(service_fn(inner)),
            &HeaderValue::from_static("Bearer mesh_live_statictoken"),
            n,
        ),
        "sizes" => {
            let service = ApiKeyLayer::new("mesh", store)
                .unwrap()
                .layer(service_fn(inner));
            fn size_of_future<S: Service<Request<Body>>>(_: &S) -> usize {
                std::mem::size_of::<S::Future>()
            }
            eprintln!(
                "request {} response {} future {}",
                std::mem::size_of::<Request<Body>>(),
                std::mem::size_of::<Response<Body>>(),
                size_of_future(&service)
            );
        }
        // The floor as a service (`benches/support/floor.rs`): every unavoidable step, nothing else.
        "floor" => {
            let (service, header) = floor::floor::<7, _>(service_fn(inner));
            run(service, &header, n)
        }
        "layer" | "analytics" => {
            let builder = ApiKeyLayer::builder("mesh", store);
            #[cfg(feature = "analytics")]
            let builder = match mode.as_str() {
                "analytics" => builder.usage_sink(tower_api_key::usage::Analytics::new()),
                _ => builder,
            };
            let mut service = builder.build().unwrap().layer(service_fn(inner));
            // Warm the cache with one request through the runtime.
            let mut request = Request::new(Body::new());
            request.headers_mut().insert(AUTHORIZATION, header.clone());
            let response = runtime.block_on(service.call(request)).unwrap();
            assert_eq!(response.status(), 200);
            run(service, &header, n)
        }
        other => panic!("unknown mode {other}: bare, bearer, floor, layer or analytics"),
    }
}
