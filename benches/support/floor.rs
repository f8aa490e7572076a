//! The floor as a service, shared by `benches/per_request.rs` and `examples/bench_driver.rs`: the
//! unavoidable steps of a cached request and nothing else, built from the parts the layer uses.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use tower::Service;
use tower_api_key::clock::{Clock, CoarseClock};
use tower_api_key::{key::KeyFormat, key::SecretDigest, Environment};

type Body = http_body_util::Empty<bytes::Bytes>;

/// What the floor service keeps per key: the digest, an expiry, and a principal behind an `Arc`
/// (as the layer's `Principal` is).
struct FloorEntry {
    digest: SecretDigest,
    expires_at: SystemTime,
    principal: Arc<str>,
}

type FloorMap = dashmap::DashMap<Box<str>, FloorEntry, foldhash::fast::RandomState>;

/// The floor as a service: the first `STEPS` of the unavoidable steps of a cached request, then
/// the inner service. 1 read the `Authorization` header and strip the scheme; 2 parse the key and
/// check its CRC32; 3 SHA-256 of the secret; 4 read the hash map; 5 compare the digests in
/// constant time; 6 read the clock and check the expiry; 7 insert the principal into the
/// request's extensions. A failed step answers 401 without calling the inner service. `STEPS`
/// 8 is the seven with the layer's default clock ([`CoarseClock`]) in step 6, where the floor of
/// the issue reads the precise one (`SystemTime::now`).
#[derive(Clone)]
pub struct Floor<const STEPS: u8, S> {
    inner: S,
    format: Arc<KeyFormat>,
    map: Arc<FloorMap>,
}

impl<const STEPS: u8, S> Floor<STEPS, S> {
    fn check(&self, request: &mut Request<Body>) -> Option<()> {
        let value = request.headers().get(AUTHORIZATION)?.as_bytes();
        let key = value.strip_prefix(b"ApiKey ")?;
        let key = std::str::from_utf8(key).ok()?;
        if STEPS < 2 {
            black_box(key);
            return Some(());
        }
        let parsed = self.format.parse(key).ok()?;
        if STEPS < 3 {
            black_box(&parsed);
            return Some(());
        }
        let digest = parsed.digest();
        if STEPS < 4 {
            black_box(&digest);
            return Some(());
        }
        let entry = self.map.get(parsed.id())?;
        if STEPS < 5 {
            black_box((&digest, entry));
            return Some(());
        }
        if !bool::from(entry.digest.ct_eq(&digest)) {
            return None;
        }
        if STEPS < 6 {
            black_box(entry);
            return Some(());
        }
        let now = if STEPS > 7 {
            CoarseClock.now()
        } else {
            SystemTime::now()
        };
        if now >= entry.expires_at {
            return None;
        }
        if STEPS < 7 {
            black_box(entry);
            return Some(());
        }
        request.extensions_mut().insert(entry.principal.clone());
        Some(())
    }
}

impl<const STEPS: u8, S> Service<Request<Body>> for Floor<STEPS, S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = FloorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        match self.check(&mut request) {
            Some(()) => FloorFuture::Inner(self.inner.call(request)),
            None => {
                let mut response = Response::new(Body::new());
                *response.status_mut() = http::StatusCode::UNAUTHORIZED;
                FloorFuture::Rejected(Some(response))
            }
        }
    }
}

/// The inner service's future, or a rejection: the least a layer's future can be.
#[pin_project::pin_project(project = FloorProjection)]
pub enum FloorFuture<F> {
    Inner(#[pin] F),
    Rejected(Option<Response<Body>>),
}

impl<F, E> Future for FloorFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FloorProjection::Inner(future) => future.poll(cx),
            FloorProjection::Rejected(response) => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

/// A floor service of `STEPS` steps around `inner`, holding one key; returns it and the key's
/// `Authorization` header.
pub fn floor<const STEPS: u8, S>(inner: S) -> (Floor<STEPS, S>, HeaderValue) {
    let format = KeyFormat::new("mesh").unwrap();
    let generated = format.generate(Environment::Live);
    let map = FloorMap::with_hasher(foldhash::fast::RandomState::default());
    map.insert(
        generated.id.clone().into(),
        FloorEntry {
            digest: generated.digest,
            expires_at: SystemTime::now() + Duration::from_secs(86_400),
            principal: generated.id.as_str().into(),
        },
    );
    let header =
        HeaderValue::from_str(&format!("ApiKey {}", generated.key.expose_secret())).unwrap();
    let service = Floor {
        inner,
        format: Arc::new(format),
        map: Arc::new(map),
    };
    (service, header)
}
