//! The extractor and the whole layer on arbitrary header bytes: never a panic, never a pass (the
//! store holds one key, which the fuzzer cannot know).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tower::{service_fn, Layer, ServiceExt};
use tower_api_key::{ApiKeyLayer, KeyManager, extract::KeySource, MemoryStore, NewKey};

struct Target {
    runtime: tokio::runtime::Runtime,
    layer: ApiKeyLayer,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let store = MemoryStore::new();
        let layer = ApiKeyLayer::builder("mesh", store.clone())
            .sources([
                KeySource::api_key_scheme(),
                KeySource::bearer(),
                KeySource::header(http::HeaderName::from_static("x-api-key")),
                KeySource::query("api_key"),
            ])
            .allow_opaque_keys(true)
            .build()
            .unwrap();
        runtime
            .block_on(KeyManager::new(store).with_cache(layer.handle()).create(NewKey::new("fuzz")))
            .unwrap();
        Target { runtime, layer }
    })
}

fuzz_target!(|data: &[u8]| {
    let target = target();
    // The input is split at each newline: the first line is the query string (the layer reads
    // `?api_key=`), the others are header values.
    let mut lines = data.split(|&b| b == b'\n');
    let query = lines.next().unwrap_or_default();
    let uri = std::str::from_utf8(query)
        .ok()
        .and_then(|query| format!("/?{query}").parse::<http::Uri>().ok())
        .unwrap_or_else(|| http::Uri::from_static("/"));
    let mut request = http::Request::get(uri).body(()).unwrap();
    for (i, part) in lines.enumerate().take(8) {
        if let Ok(value) = http::HeaderValue::from_bytes(part) {
            let name = ["authorization", "x-api-key"][i % 2];
            request.headers_mut().append(name, value);
        }
    }
    let service = target.layer.layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(()))
    }));
    let response = target.runtime.block_on(service.oneshot(request)).unwrap();
    assert_ne!(response.status(), 200, "an unknown key passed");
});
