//! The authenticating service that [`ApiKeyLayer`](crate::ApiKeyLayer) wraps around yours, its
//! response future and its response body.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

pub use crate::body::ResponseBody;
pub use crate::future::ResponseFuture;
use crate::future::{authorize, Attempt, Pending, Verdict};
use crate::reject::Rejection;
use crate::shared::{Seen, Shared};
use crate::trace;

/// Authenticates each request by API key, then calls the inner service with the
/// [`Principal`](crate::Principal) in the request's extensions, or answers with a rejection
/// without calling it.
///
/// Its error type is the inner service's: a rejection is a response, so the service drops into
/// axum's `Router::layer` and tonic's `Server::layer` unchanged.
pub struct ApiKeyService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> ApiKeyService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        ApiKeyService { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone> Clone for ApiKeyService<S> {
    fn clone(&self) -> Self {
        ApiKeyService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for ApiKeyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyService")
            .field("inner", &self.inner)
            .field("config", &self.shared)
            .finish()
    }
}

impl<S: Clone> ApiKeyService<S> {
    /// The service that was polled ready, for a future to call later; a fresh clone stays behind
    /// (tower's "be careful when cloning inner services").
    fn take_ready(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKeyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let credential = shared.reading.take(&mut request);
        let presented = match shared.reading.present(&request, &credential) {
            Ok(presented) => presented,
            Err(rejection) => {
                if let (Rejection::MissingApiKey, Some(anonymous)) = (rejection, &shared.anonymous)
                {
                    trace::anonymous();
                    credential.restore(&mut request);
                    request.extensions_mut().insert(anonymous.clone());
                    return ResponseFuture::inner(self.inner.call(request));
                }
                return ResponseFuture::rejected(shared.reject(
                    rejection,
                    None,
                    None,
                    Seen::of(&request, None),
                ));
            }
        };
        let now = shared.clock.now();
        // The hot path: a key in the cache is verified on the cache's entry, here.
        let verdict = shared.cache.peek_with(&presented.id, now, |key| {
            authorize(
                shared,
                Attempt {
                    presented: &presented,
                    found: Ok(key),
                    now,
                    request: Seen::of(&request, Some(now)),
                },
            )
        });
        let Some(verdict) = verdict else {
            // A miss: an id this layer's id key did not sign is refused without a lookup.
            if presented.environment.is_some() && !shared.reading.format.issued_bytes(&presented.id)
            {
                let id = Some(presented.id_text());
                return ResponseFuture::rejected(shared.reject(
                    Rejection::InvalidApiKey,
                    id,
                    None,
                    Seen::of(&request, Some(now)),
                ));
            }
            let presented = presented.into_owned();
            let pending = Pending {
                shared: shared.clone(),
                request,
                inner: self.take_ready(),
            };
            return ResponseFuture::lookup(pending, presented);
        };
        drop(presented);
        match verdict {
            Verdict::Go(principal, after) => {
                shared.reading.admit(&mut request, principal, &credential);
                // The service that was polled ready is called here, as tower expects.
                ResponseFuture::inner_then(self.inner.call(request), after)
            }
            Verdict::Reply(response) => ResponseFuture::rejected_boxed(response),
            Verdict::Wait(check, principal) => {
                let shared = shared.clone();
                ResponseFuture::wait(check, shared, request, self.take_ready(), principal)
            }
        }
    }
}
