//! The response future of [`ApiKeyService`](crate::ApiKeyService) and
//! [`RequireScope`](crate::RequireScope): a small state machine (look the key up, then wait for
//! the inner service), in the manner of tower's `filter`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response};
use pin_project::pin_project;
use tower::Service;

use crate::body::ResponseBody;
use crate::cache::{CachedKey, LoadError};
use crate::key::{Environment, SecretDigest};
use crate::layer::Shared;
use crate::reject::Rejection;
use crate::trace;
use crate::verify::verify;

type LookupResult = (Result<Option<Arc<CachedKey>>, Arc<LoadError>>, String);
type Lookup = Pin<Box<dyn Future<Output = LookupResult> + Send>>;

/// The future of a response from [`ApiKeyService`](crate::ApiKeyService) or
/// [`RequireScope`](crate::RequireScope).
#[pin_project]
pub struct ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    #[pin]
    state: State<S, ReqBody>,
}

#[pin_project(project = StateProjection)]
enum State<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    /// Refused before the inner service was called.
    Rejected { response: Option<Response<Bytes>> },
    /// Waiting for the cache (and maybe the store).
    Lookup {
        lookup: Lookup,
        pending: Option<Pending<S, ReqBody>>,
    },
    /// Waiting for the inner service.
    Inner {
        #[pin]
        future: S::Future,
    },
}

/// What a lookup needs once it is done.
struct Pending<S, ReqBody> {
    shared: Arc<Shared>,
    request: Request<ReqBody>,
    inner: S,
    digest: SecretDigest,
    environment: Option<Environment>,
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn rejected(response: Response<Bytes>) -> Self {
        ResponseFuture {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }

    pub(crate) fn inner(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Inner { future },
        }
    }

    pub(crate) fn lookup(
        shared: Arc<Shared>,
        id: String,
        digest: SecretDigest,
        environment: Option<Environment>,
        request: Request<ReqBody>,
        inner: S,
    ) -> Self {
        let cache = shared.clone();
        let lookup: Lookup = Box::pin(async move {
            let result = cache.cache.lookup(&id).await;
            (result, id)
        });
        ResponseFuture {
            state: State::Lookup {
                lookup,
                pending: Some(Pending {
                    shared,
                    request,
                    inner,
                    digest,
                    environment,
                }),
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProjection::Rejected { response } => {
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok(response.map(ResponseBody::full)));
                }
                StateProjection::Lookup { lookup, pending } => {
                    let (result, id) = ready!(lookup.as_mut().poll(cx));
                    let Pending {
                        shared,
                        mut request,
                        mut inner,
                        digest,
                        environment,
                    } = pending.take().expect("polled after completion");
                    let verdict = match result {
                        Ok(Some(key)) => {
                            verify(&key, &digest, environment, SystemTime::now()).cloned()
                        }
                        Ok(None) => Err(Rejection::InvalidApiKey),
                        Err(error) => {
                            trace::store_failed(&id, &error);
                            Err(Rejection::KeyStoreUnavailable)
                        }
                    };
                    match verdict {
                        Ok(principal) => {
                            trace::accepted(&id);
                            request.extensions_mut().insert(principal);
                            let future = inner.call(request);
                            state.set(State::Inner { future });
                        }
                        Err(rejection) => {
                            trace::rejected(Some(&id), rejection);
                            let response = shared.rejections.response(rejection, request.headers());
                            state.set(State::Rejected { response: None });
                            return Poll::Ready(Ok(response.map(ResponseBody::full)));
                        }
                    }
                }
                StateProjection::Inner { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
            }
        }
    }
}

impl<S, ReqBody> fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Rejected { .. } => "rejected",
            State::Lookup { .. } => "lookup",
            State::Inner { .. } => "inner",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
