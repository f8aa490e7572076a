//! The response future of [`ApiKeyService`](crate::service::ApiKeyService) and
//! [`RequireScope`](crate::require::RequireScope): a small state machine (look the key up, count
//! it against its limits, then wait for the inner service), in the manner of tower's `filter`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::{Extensions, Request, Response};
use pin_project::pin_project;
use tower::Service;

use crate::body::ResponseBody;
use crate::cache::{LoadError, Loaded};
use crate::clock::unix_seconds;
use crate::limit::{Account, Charge, Cost, Decision, LimitCheck, LimiterError, Spend};
use crate::network::client_address;
use crate::principal::{Metered, Principal};
use crate::reject::Rejection;
use crate::shared::{Counted, Origin, Seen, Shared};
use crate::store::StoreError;
use crate::trace;
use crate::usage::Outcome;
use crate::verify::{verify, Credential, Presented};

type LookupResult = (Loaded, Presented<'static>);
type Lookup = Pin<Box<dyn Future<Output = LookupResult> + Send>>;
type PendingCheck = Pin<Box<dyn Future<Output = Checked> + Send>>;

/// What the limiter and the key's credits said of a request.
pub(crate) struct Checked {
    /// The limiter's decision, if the key has limits.
    decision: Option<Result<Decision, LimiterError>>,
    /// Spending the credits of the key and its owner, if either has some and the limiter let
    /// the request through.
    credits: Option<Result<Spend, StoreError>>,
}

/// The future of a response from [`ApiKeyService`](crate::service::ApiKeyService) or
/// [`RequireScope`](crate::require::RequireScope).
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
    // The states off the hot path keep their payload boxed, so the future stays small to move.
    /// Refused before the inner service was called.
    Rejected {
        response: Option<Box<Response<Bytes>>>,
    },
    /// Waiting for the cache (and maybe the store).
    Lookup {
        lookup: Lookup,
        pending: Option<Box<Pending<S, ReqBody>>>,
    },
    /// Waiting for a limiter that decides asynchronously.
    Limit {
        check: PendingCheck,
        waiting: Option<Box<Waiting<S, ReqBody>>>,
    },
    /// Waiting for the inner service. `after` is boxed: it is there only when the layer counts
    /// usage or limits, and inline it would add 96 bytes to every move of the future (measured:
    /// 180 more instructions per request for a layer that counts nothing, in `memcpy`).
    Inner {
        #[pin]
        future: S::Future,
        after: Option<Box<After>>,
    },
}

/// A request whose key was read and hashed, waiting for the cache (and maybe the store).
pub(crate) struct Pending<S, ReqBody> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) request: Request<ReqBody>,
    pub(crate) inner: S,
}

/// A request whose key was verified, waiting for a limiter that decides asynchronously.
struct Waiting<S, ReqBody> {
    shared: Arc<Shared>,
    request: Request<ReqBody>,
    inner: S,
    principal: Principal,
}

/// What to do with the inner service's response: limit headers, usage.
pub(crate) struct After {
    /// If usage is counted: the request's key, and when the inner service was called.
    started: Option<Started>,
    /// The limiter's decision, for the `RateLimit` headers.
    decision: Option<Decision>,
}

/// A request whose inner service was called, for the usage sink.
struct Started {
    /// Its key, through which the layer's sink is reached.
    principal: Principal,
    /// The request's time, as the layer read it.
    at: SystemTime,
    /// The layer's timer when the service was called, raw.
    raw: u64,
    origin: Origin,
}

/// Where a request stands once its key was looked up.
pub(crate) enum Verdict {
    /// Put the principal into the request, call the inner service, then finish with `After`.
    Go(Principal, Option<Box<After>>),
    /// Wait for the limiter.
    Wait(PendingCheck, Principal),
    /// Answer this instead. Boxed here already (the future keeps it boxed), so the verdict that
    /// travels back from the cache's entry on the hot path stays small.
    Reply(Box<Response<Bytes>>),
}

/// One request's key, with what the cache gave for it.
pub(crate) struct Attempt<'a> {
    /// What the request presented.
    pub(crate) presented: &'a Presented<'a>,
    /// The key the cache or the store has under the presented id.
    pub(crate) found: Result<Option<&'a Principal>, &'a LoadError>,
    pub(crate) now: SystemTime,
    /// The request: its headers for the rejection's shape (JSON or gRPC) and forwarded
    /// addresses, its extensions for the connection's address and a [`Cost`] set outside, its
    /// path for its cost.
    pub(crate) request: Seen<'a>,
}

/// Verifies the key a lookup gave and counts the request against the key's limits. It only reads
/// the request's headers: on the hot path it runs inside `call`, on the cache's entry, without
/// taking the request apart.
#[inline(always)]
pub(crate) fn authorize(shared: &Arc<Shared>, attempt: Attempt<'_>) -> Verdict {
    let Attempt {
        presented,
        found,
        now,
        request,
    } = attempt;
    let key = match found {
        Ok(Some(key)) => key,
        Ok(None) => {
            let id = Some(presented.id_text());
            return reply(shared.reject(Rejection::InvalidApiKey, id, None, request));
        }
        Err(error) => {
            let id = presented.id_text();
            trace::store_failed(id, &error);
            return reply(shared.reject(Rejection::KeyStoreUnavailable, Some(id), None, request));
        }
    };
    let environments = shared.reading.environments;
    let principal = match verify(key, presented, environments, now) {
        Ok(principal) => principal.clone(),
        Err(rejection) => {
            // Said only after the secret matched, so the key counts as its owner's.
            let verified = (rejection != Rejection::InvalidApiKey).then_some(key);
            return reply(shared.reject(rejection, Some(key.key_id()), verified, request));
        }
    };
    let Some(restrictions) = &key.check().restrictions else {
        return admit(shared, principal, None, request);
    };
    if !restrictions.networks.is_empty() {
        let client = client_address(request.extensions, request.headers, shared.proxies.as_ref());
        let allowed =
            client.is_some_and(|ip| restrictions.networks.iter().any(|n| n.contains(&ip)));
        if !allowed {
            let id = Some(principal.key_id());
            return reply(shared.reject(Rejection::IpNotAllowed, id, Some(&principal), request));
        }
    }
    let cost = cost(shared, request.extensions, request.uri.path());
    // The refill periods of now, for a key or owner with credits.
    let credits =
        (restrictions.credits.is_some() || restrictions.owner_credits.is_some()).then(|| {
            let secs = unix_seconds(now);
            let period = |metered: Option<Metered>| {
                metered.map(|m| m.refill.map_or(0, |every| every.index(secs)))
            };
            Periods {
                key: period(restrictions.credits),
                owner: period(restrictions.owner_credits),
            }
        });
    let limit = match (&restrictions.policy, &restrictions.owner_policy) {
        (None, None) => None,
        (Some(policy), None) | (None, Some(policy)) => {
            Some(shared.limiter.check(&[policy.as_bucket()], cost, now))
        }
        (Some(key), Some(owner)) => Some(shared.limiter.check(
            &[key.as_bucket(), owner.as_bucket()],
            cost,
            now,
        )),
    };
    match (limit, credits) {
        (None, None) => admit(shared, principal, None, request),
        // Decided at once, and nothing to spend: no credits, or refused by the limiter.
        (Some(LimitCheck::Ready(decision)), period)
            if period.is_none() || decision.as_ref().is_ok_and(|d| !d.allowed) =>
        {
            decide(
                shared,
                request,
                principal,
                Checked {
                    decision: Some(decision),
                    credits: None,
                },
            )
        }
        (limit, periods) => {
            let check = check(shared, principal.clone(), cost, limit, periods);
            Verdict::Wait(check, principal)
        }
    }
}

/// The refill periods of now of the credits of a key (`key`) and of its owner (`owner`), for
/// those that have credits.
#[derive(Clone, Copy)]
struct Periods {
    key: Option<u32>,
    owner: Option<u32>,
}

/// The limiter's decision (waited for if it is not ready), then, if it let the request through
/// and the key or its owner has credits, spending them in the store: the limiter first, so a
/// request it refuses spends no credit.
fn check(
    shared: &Arc<Shared>,
    principal: Principal,
    cost: u32,
    limit: Option<LimitCheck>,
    periods: Option<Periods>,
) -> PendingCheck {
    let store = Arc::clone(shared.cache.store());
    let timeout = shared.cache.lookup_timeout();
    Box::pin(async move {
        let decision = match limit {
            None => None,
            Some(LimitCheck::Ready(decision)) => Some(decision),
            Some(LimitCheck::Pending(pending)) => Some(pending.await),
        };
        let allowed = match &decision {
            None => true,
            Some(decision) => decision.as_ref().is_ok_and(|d| d.allowed),
        };
        let credits = match periods {
            Some(periods) if allowed => {
                let charge = Charge {
                    cost,
                    key: periods.key.map(|period| Account {
                        id: principal.key_id(),
                        period,
                    }),
                    owner: principal
                        .owner()
                        .zip(periods.owner)
                        .map(|(id, period)| Account { id, period }),
                };
                let spend = store.spend_credits(&charge);
                Some(match timeout {
                    None => spend.await,
                    Some(limit) => tokio::time::timeout(limit, spend)
                        .await
                        .unwrap_or_else(|_| {
                            Err(StoreError::unavailable("spending credits timed out"))
                        }),
                })
            }
            _ => None,
        };
        Checked { decision, credits }
    })
}

/// What the request costs: a [`Cost`] put into it outside, or the layer's [`Costs`](crate::limit::Costs)
/// for its path, or 1.
fn cost(shared: &Shared, extensions: &Extensions, path: &str) -> u32 {
    match extensions.get::<Cost>() {
        Some(cost) => cost.0,
        None => shared.costs.as_ref().map_or(1, |costs| costs.of(path)),
    }
}

/// Goes on with what the limiter and the credits said.
fn decide(
    shared: &Arc<Shared>,
    request: Seen<'_>,
    principal: Principal,
    checked: Checked,
) -> Verdict {
    let id = principal.key_id();
    let refuse = |rejection| shared.reject(rejection, Some(id), Some(&principal), request);
    let decision = match checked.decision {
        None => None,
        Some(Ok(decision)) if decision.allowed => Some(decision),
        Some(Ok(decision)) => {
            let limit = decision.refused_by.as_deref();
            let mut response = shared.reject_limited(limit, &principal, request);
            decision.write_headers(response.headers_mut());
            return reply(response);
        }
        Some(Err(error)) => {
            trace::store_failed(id, &error);
            return reply(refuse(Rejection::LimiterUnavailable));
        }
    };
    match checked.credits {
        None | Some(Ok(Spend::Spent { .. } | Spend::NoCredits)) => {
            admit(shared, principal, decision, request)
        }
        Some(Ok(Spend::Exhausted)) => {
            let mut response = refuse(Rejection::UsageExceeded);
            if let Some(decision) = decision {
                decision.write_headers(response.headers_mut());
            }
            reply(response)
        }
        Some(Err(error)) => {
            trace::store_failed(id, &error);
            reply(refuse(Rejection::KeyStoreUnavailable))
        }
    }
}

/// Answers `response` instead.
fn reply(response: Response<Bytes>) -> Verdict {
    Verdict::Reply(Box::new(response))
}

/// Lets the request through.
#[inline(always)]
fn admit(
    shared: &Arc<Shared>,
    principal: Principal,
    decision: Option<Decision>,
    request: Seen<'_>,
) -> Verdict {
    trace::accepted(principal.key_id());
    let recording = shared.recording();
    if recording.is_none() && decision.is_none() {
        return Verdict::Go(principal, None);
    }
    let started = recording.map(|recording| Started {
        at: request.at.unwrap_or_else(|| shared.clock.now()),
        origin: shared.origin(request),
        principal: principal.clone(),
        raw: recording.timer.raw(),
    });
    Verdict::Go(principal, Some(Box::new(After { started, decision })))
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn rejected(response: Response<Bytes>) -> Self {
        Self::rejected_boxed(Box::new(response))
    }

    pub(crate) fn rejected_boxed(response: Box<Response<Bytes>>) -> Self {
        ResponseFuture {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }

    pub(crate) fn inner(future: S::Future) -> Self {
        Self::inner_then(future, None)
    }

    pub(crate) fn inner_then(future: S::Future, after: Option<Box<After>>) -> Self {
        ResponseFuture {
            state: State::Inner { future, after },
        }
    }

    /// Waits for the cache (and maybe the store) before verifying.
    pub(crate) fn lookup(pending: Pending<S, ReqBody>, presented: Presented<'static>) -> Self {
        let cache = pending.shared.clone();
        let lookup: Lookup = Box::pin(async move {
            let result = cache.cache.lookup(presented.id_text()).await;
            (result, presented)
        });
        ResponseFuture {
            state: State::Lookup {
                lookup,
                pending: Some(Box::new(pending)),
            },
        }
    }

    /// Waits for a limiter (and maybe the key's credits), then calls `inner`.
    pub(crate) fn wait(
        check: PendingCheck,
        shared: Arc<Shared>,
        request: Request<ReqBody>,
        inner: S,
        principal: Principal,
    ) -> Self {
        ResponseFuture {
            state: State::Limit {
                check,
                waiting: Some(Box::new(Waiting {
                    shared,
                    request,
                    inner,
                    principal,
                })),
            },
        }
    }

    /// The future for `verdict` on `request`, calling `inner` if it says go.
    fn after_verdict(
        verdict: Verdict,
        shared: Arc<Shared>,
        mut request: Request<ReqBody>,
        mut inner: S,
    ) -> Self {
        match verdict {
            Verdict::Go(principal, after) => {
                // The credential is hidden here if `call` did not take it out.
                shared
                    .reading
                    .admit(&mut request, principal, &Credential::InRequest);
                Self::inner_then(inner.call(request), after)
            }
            Verdict::Wait(check, principal) => Self::wait(check, shared, request, inner, principal),
            Verdict::Reply(response) => Self::rejected_boxed(response),
        }
    }
}

impl After {
    fn finish<B>(self, response: &mut Response<B>) {
        if let Some(decision) = &self.decision {
            decision.write_headers(response.headers_mut());
        }
        let Some(started) = self.started else {
            return;
        };
        // The layer's sink, reached through the key's principal: no other reference to the layer
        // is kept per request.
        if let Some(recording) = started.principal.recording() {
            let timer = &recording.timer;
            let latency = timer.delta(started.raw, timer.raw());
            let outcome = response
                .extensions()
                .get::<Rejection>()
                .map_or(Outcome::Ok, |rejection| Outcome::Rejected(*rejection));
            Counted {
                key: Some(&started.principal),
                outcome,
                status: response.status(),
                latency: Some(latency),
                origin: &started.origin,
                at: started.at + latency,
            }
            .record(recording);
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
        // The usual state, waiting for the inner service, is polled here without the others'
        // frame: they are polled in a function of their own.
        if let StateProjection::Inner { future, after } = state.as_mut().project() {
            return Self::poll_inner(future, after, cx);
        }
        Self::poll_steps(state, cx)
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    /// Polls the inner service, then finishes its response.
    #[inline(always)]
    fn poll_inner(
        future: Pin<&mut S::Future>,
        after: &mut Option<Box<After>>,
        cx: &mut Context<'_>,
    ) -> Poll<<Self as Future>::Output> {
        future.poll(cx).map_ok(|mut response| {
            if let Some(after) = after.take() {
                (*after).finish(&mut response);
            }
            response.map(ResponseBody::inner)
        })
    }

    /// Polls the states before the inner service's, then the inner service's once they are
    /// through.
    #[inline(never)]
    fn poll_steps(
        mut state: Pin<&mut State<S, ReqBody>>,
        cx: &mut Context<'_>,
    ) -> Poll<<Self as Future>::Output> {
        loop {
            let next = match state.as_mut().project() {
                StateProjection::Rejected { response } => {
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok((*response).map(ResponseBody::full)));
                }
                StateProjection::Lookup { lookup, pending } => {
                    let (result, presented) = ready!(lookup.as_mut().poll(cx));
                    let Pending {
                        shared,
                        request,
                        inner,
                    } = *pending.take().expect("polled after completion");
                    let now = shared.clock.now();
                    let attempt = Attempt {
                        presented: &presented,
                        found: match &result {
                            Ok(key) => Ok(key.as_ref()),
                            Err(error) => Err(&**error),
                        },
                        now,
                        request: Seen::of(&request, Some(now)),
                    };
                    let verdict = authorize(&shared, attempt);
                    Self::after_verdict(verdict, shared, request, inner).state
                }
                StateProjection::Limit { check, waiting } => {
                    let checked = ready!(check.as_mut().poll(cx));
                    let Waiting {
                        shared,
                        request,
                        inner,
                        principal,
                    } = *waiting.take().expect("polled after completion");
                    let verdict = decide(&shared, Seen::of(&request, None), principal, checked);
                    Self::after_verdict(verdict, shared, request, inner).state
                }
                StateProjection::Inner { future, after } => {
                    return Self::poll_inner(future, after, cx);
                }
            };
            state.set(next);
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
