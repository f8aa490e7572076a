//! The response future of [`ApiKeyService`](crate::ApiKeyService) and
//! [`RequireScope`](crate::RequireScope): a small state machine (look the key up, count it against
//! its limits, then wait for the inner service), in the manner of tower's `filter`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use pin_project::pin_project;
use tower::Service;

use crate::body::ResponseBody;
use crate::cache::{CachedKey, LoadError};
use crate::key::{Environment, SecretDigest};
use crate::layer::{add_limit_headers, Shared};
use crate::limit::{Decision, LimitCheck, LimiterError};
use crate::principal::Principal;
use crate::reject::Rejection;
use crate::trace;
use crate::usage::Outcome;
use crate::verify::verify;

type LookupResult = (Result<Option<Arc<CachedKey>>, Arc<LoadError>>, String);
type Lookup = Pin<Box<dyn Future<Output = LookupResult> + Send>>;
type PendingLimit = Pin<Box<dyn Future<Output = Result<Decision, LimiterError>> + Send>>;

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
    /// Waiting for a limiter that decides asynchronously.
    Limit {
        check: PendingLimit,
        verified: Option<Verified<S, ReqBody>>,
    },
    /// Waiting for the inner service.
    Inner {
        #[pin]
        future: S::Future,
        after: Option<After>,
    },
}

/// A request whose key was read and hashed, waiting for its verification.
pub(crate) struct Pending<S, ReqBody> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) request: Request<ReqBody>,
    pub(crate) inner: S,
    pub(crate) digest: SecretDigest,
    pub(crate) environment: Option<Environment>,
}

/// A request whose key was verified, before its limits are counted.
struct Verified<S, ReqBody> {
    shared: Arc<Shared>,
    request: Request<ReqBody>,
    inner: S,
    principal: Principal,
}

/// What to do with the inner service's response: limit headers, usage.
struct After {
    shared: Arc<Shared>,
    principal: Principal,
    started: Option<Instant>,
    decision: Option<Decision>,
}

/// What a state hands on.
enum Step<S: Service<Request<ReqBody>>, ReqBody> {
    Reply(Response<Bytes>),
    Next(State<S, ReqBody>),
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
            state: State::Inner {
                future,
                after: None,
            },
        }
    }

    /// Waits for the cache (and maybe the store) before verifying.
    pub(crate) fn lookup(pending: Pending<S, ReqBody>, id: String) -> Self {
        let cache = pending.shared.clone();
        let lookup: Lookup = Box::pin(async move {
            let result = cache.cache.lookup(&id).await;
            (result, id)
        });
        ResponseFuture {
            state: State::Lookup {
                lookup,
                pending: Some(pending),
            },
        }
    }

    /// Verifies a key the front cache had, at once: the hot path.
    pub(crate) fn cached(
        pending: Pending<S, ReqBody>,
        key: Arc<CachedKey>,
        now: SystemTime,
    ) -> Self {
        let state = match pending.verified(Ok(Some(key)), "", now) {
            Step::Next(state) => state,
            Step::Reply(response) => State::Rejected {
                response: Some(response),
            },
        };
        ResponseFuture { state }
    }
}

impl<S, ReqBody> Pending<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    /// Verifies the looked-up key (`id` is what was presented, for a key that was not found),
    /// then counts it against its limits.
    fn verified(
        self,
        result: Result<Option<Arc<CachedKey>>, Arc<LoadError>>,
        id: &str,
        now: SystemTime,
    ) -> Step<S, ReqBody> {
        let Pending {
            shared,
            request,
            inner,
            digest,
            environment,
        } = self;
        let key = match result {
            Ok(Some(key)) => key,
            Ok(None) => {
                let response =
                    shared.reject(Rejection::InvalidApiKey, Some(id), None, request.headers());
                return Step::Reply(response);
            }
            Err(error) => {
                trace::store_failed(id, &error);
                let response = shared.reject(
                    Rejection::KeyStoreUnavailable,
                    Some(id),
                    None,
                    request.headers(),
                );
                return Step::Reply(response);
            }
        };
        let principal = match verify(&key, &digest, environment, shared.environments, now) {
            Ok(principal) => principal.clone(),
            Err(rejection) => {
                let id = key.principal.key_id();
                // Said only after the secret matched, so the key counts as its owner's.
                let verified = (rejection != Rejection::InvalidApiKey).then_some(id);
                let response = shared.reject(rejection, Some(id), verified, request.headers());
                return Step::Reply(response);
            }
        };
        let check = key
            .policy
            .as_ref()
            .map(|policy| shared.limiter.check(&policy.bucket, &policy.limits, now));
        let verified = Verified {
            shared,
            request,
            inner,
            principal,
        };
        match check {
            None => verified.proceed(None),
            Some(LimitCheck::Ready(decision)) => verified.limited(decision),
            Some(LimitCheck::Pending(check)) => Step::Next(State::Limit {
                check,
                verified: Some(verified),
            }),
        }
    }
}

impl<S, ReqBody> Verified<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    /// Goes on with the limiter's decision.
    fn limited(self, decision: Result<Decision, LimiterError>) -> Step<S, ReqBody> {
        let id = self.principal.key_id();
        match decision {
            Ok(decision) if decision.allowed => self.proceed(Some(decision)),
            Ok(decision) => {
                let mut response = self.shared.reject(
                    Rejection::RateLimitExceeded,
                    Some(id),
                    Some(id),
                    self.request.headers(),
                );
                add_limit_headers(response.headers_mut(), &decision);
                Step::Reply(response)
            }
            Err(error) => {
                trace::store_failed(id, &error);
                Step::Reply(self.shared.reject(
                    Rejection::LimiterUnavailable,
                    Some(id),
                    Some(id),
                    self.request.headers(),
                ))
            }
        }
    }

    /// Calls the inner service with the principal in the request.
    fn proceed(self, decision: Option<Decision>) -> Step<S, ReqBody> {
        let Verified {
            shared,
            mut request,
            mut inner,
            principal,
        } = self;
        trace::accepted(principal.key_id());
        request.extensions_mut().insert(principal.clone());
        let after = (shared.usage.is_some() || decision.is_some()).then(|| After {
            started: shared.usage.is_some().then(Instant::now),
            shared,
            principal,
            decision,
        });
        let future = inner.call(request);
        Step::Next(State::Inner { future, after })
    }
}

impl After {
    fn finish<B>(self, response: &mut Response<B>) {
        if let Some(decision) = &self.decision {
            add_limit_headers(response.headers_mut(), decision);
        }
        if let Some(started) = self.started {
            let outcome = response
                .extensions()
                .get::<Rejection>()
                .map_or(Outcome::Ok, |rejection| Outcome::Rejected(*rejection));
            self.shared.record(
                Some(self.principal.key_id()),
                outcome,
                Some(started.elapsed()),
            );
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
            let step = match state.as_mut().project() {
                StateProjection::Rejected { response } => {
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok(response.map(ResponseBody::full)));
                }
                StateProjection::Lookup { lookup, pending } => {
                    let (result, id) = ready!(lookup.as_mut().poll(cx));
                    let pending = pending.take().expect("polled after completion");
                    let now = pending.shared.clock.now();
                    pending.verified(result, &id, now)
                }
                StateProjection::Limit { check, verified } => {
                    let decision = ready!(check.as_mut().poll(cx));
                    let verified = verified.take().expect("polled after completion");
                    verified.limited(decision)
                }
                StateProjection::Inner { future, after } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(after) = after.take() {
                        after.finish(&mut response);
                    }
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
            };
            match step {
                Step::Next(next) => state.set(next),
                Step::Reply(response) => {
                    state.set(State::Rejected { response: None });
                    return Poll::Ready(Ok(response.map(ResponseBody::full)));
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
            State::Limit { .. } => "limit",
            State::Inner { .. } => "inner",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
