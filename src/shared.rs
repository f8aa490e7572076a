//! What every service of one [`ApiKeyLayer`](crate::ApiKeyLayer) shares, by concern: reading
//! the key, looking it up, limiting it, and answering. The layer builds it; the service and the
//! response future read it. It depends on none of the three.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Extensions, HeaderMap, Method, Request, Response, StatusCode, Uri};

use crate::cache::KeyCache;
use crate::clock::Clock;
use crate::limit::{Costs, Limiter};
use crate::network::{client_address, TrustedProxies};
use crate::principal::{Anonymous, Authority, Principal};
use crate::reject::Rejection;
use crate::trace;
use crate::usage::{Country, CountryResolver, Outcome, Recording, Route, UsageEvent};
use crate::verify::KeyReading;

/// What every service of one layer shares.
pub(crate) struct Shared {
    /// Reading the key: where from, in which format, which environments.
    pub(crate) reading: KeyReading,
    /// Looking it up: the cache and the store behind it.
    pub(crate) cache: KeyCache,
    /// Limiting it.
    pub(crate) limiter: Arc<dyn Limiter>,
    /// Where the client's country is read from, for the usage sink.
    pub(crate) countries: Option<Arc<dyn CountryResolver>>,
    /// Answering and counting: the scope hierarchy, the rejections and the usage sink, shared
    /// with every principal.
    pub(crate) authority: Arc<Authority>,
    /// What requests cost, by path, if not 1 each.
    pub(crate) costs: Option<Costs>,
    /// The proxies whose forwarding header gives the client's address, if any.
    pub(crate) proxies: Option<TrustedProxies>,
    /// Set when requests without a key go on as anonymous: the mark they get.
    pub(crate) anonymous: Option<Anonymous>,
    pub(crate) clock: Arc<dyn Clock>,
}

/// The parts of a request that answering and counting it read.
#[derive(Clone, Copy)]
pub(crate) struct Seen<'a> {
    pub(crate) method: &'a Method,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) extensions: &'a Extensions,
    pub(crate) uri: &'a Uri,
    /// The time the layer read for it, if it read one.
    pub(crate) at: Option<SystemTime>,
}

impl<'a> Seen<'a> {
    pub(crate) fn of<B>(request: &'a Request<B>, at: Option<SystemTime>) -> Self {
        Seen {
            method: request.method(),
            headers: request.headers(),
            extensions: request.extensions(),
            uri: request.uri(),
            at,
        }
    }
}

/// What the usage sink is told of a request besides its key and outcome, kept from the request
/// until its response.
#[derive(Default)]
pub(crate) struct Origin {
    route: Option<Route>,
    country: Option<Country>,
}

/// One request, for the usage sink.
pub(crate) struct Counted<'a> {
    /// The key, if its secret was verified.
    pub(crate) key: Option<&'a Principal>,
    pub(crate) outcome: Outcome,
    pub(crate) status: StatusCode,
    /// How long the inner service took, if it was called.
    pub(crate) latency: Option<Duration>,
    pub(crate) origin: &'a Origin,
    /// When it was answered.
    pub(crate) at: SystemTime,
}

impl Counted<'_> {
    /// Tells `recording`'s sink.
    pub(crate) fn record(&self, recording: &Recording) {
        recording.sink.record(&UsageEvent {
            key_id: self.key.map(Principal::key_id),
            owner: self.key.and_then(Principal::owner),
            outcome: self.outcome,
            status: Some(self.status),
            latency: self.latency,
            endpoint: self.origin.route.as_ref().map(Route::as_str),
            country: self.origin.country,
            at: self.at,
        });
    }
}

impl Shared {
    /// Where this layer counts requests, if it does.
    pub(crate) fn recording(&self) -> Option<&Recording> {
        self.authority.recording.as_ref()
    }

    /// What the usage sink is told of `request`'s origin; nothing is read without a sink.
    pub(crate) fn origin(&self, request: Seen<'_>) -> Origin {
        if self.recording().is_none() {
            return Origin::default();
        }
        let country = self.countries.as_ref().and_then(|resolver| {
            let client = resolver
                .needs_client()
                .then(|| client_address(request.extensions, request.headers, self.proxies.as_ref()))
                .flatten();
            resolver.country(client, request.headers)
        });
        Origin {
            route: Route::of(
                request.method,
                request.headers,
                request.extensions,
                request.uri,
            ),
            country,
        }
    }

    /// The response for a refused request; traces it with the id it `presented` and counts it for
    /// the key whose secret was `verified`.
    pub(crate) fn reject(
        &self,
        rejection: Rejection,
        presented: Option<&str>,
        verified: Option<&Principal>,
        request: Seen<'_>,
    ) -> Response<Bytes> {
        let response = self
            .authority
            .rejections
            .response(rejection, request.headers);
        self.refused(rejection, presented, verified, request, &response);
        response
    }

    /// The 429 for a request of `key` over its limit named `limit` (if the limiter said).
    pub(crate) fn reject_limited(
        &self,
        limit: Option<&str>,
        key: &Principal,
        request: Seen<'_>,
    ) -> Response<Bytes> {
        let rejection = Rejection::RateLimitExceeded;
        let response = self
            .authority
            .rejections
            .response_over_limit(limit, request.headers);
        self.refused(rejection, Some(key.key_id()), Some(key), request, &response);
        response
    }

    /// Traces a refusal answered with `response`, and counts it.
    fn refused(
        &self,
        rejection: Rejection,
        presented: Option<&str>,
        verified: Option<&Principal>,
        request: Seen<'_>,
        response: &Response<Bytes>,
    ) {
        trace::rejected(presented, rejection);
        if let Some(recording) = self.recording() {
            Counted {
                key: verified,
                outcome: Outcome::Rejected(rejection),
                status: response.status(),
                latency: None,
                origin: &self.origin(request),
                at: request.at.unwrap_or_else(|| self.clock.now()),
            }
            .record(recording);
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("reading", &self.reading)
            .field("cache", &self.cache)
            .field("authority", &self.authority)
            .field("usage", &self.recording().is_some())
            .field("anonymous", &self.anonymous.is_some())
            .finish_non_exhaustive()
    }
}
