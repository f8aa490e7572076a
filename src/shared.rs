//! What every service of one [`ApiKeyLayer`](crate::ApiKeyLayer) shares, by concern: reading
//! the key, looking it up, limiting it, and answering. The layer builds it; the service and the
//! response future read it. It depends on none of the three.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response};

use crate::cache::KeyCache;
use crate::clock::Clock;
use crate::limit::{Costs, Limiter};
use crate::network::TrustedProxies;
use crate::principal::{Anonymous, Authority};
use crate::reject::Rejection;
use crate::trace;
use crate::usage::{Outcome, UsageEvent, UsageSink};
use crate::verify::KeyReading;

/// What every service of one layer shares.
pub(crate) struct Shared {
    /// Reading the key: where from, in which format, which environments.
    pub(crate) reading: KeyReading,
    /// Looking it up: the cache and the store behind it.
    pub(crate) cache: KeyCache,
    /// Limiting it.
    pub(crate) limiter: Arc<dyn Limiter>,
    /// Counting it, if the layer was given a sink.
    pub(crate) usage: Option<Arc<dyn UsageSink>>,
    /// Answering: the scope hierarchy and the rejections, shared with every principal.
    pub(crate) authority: Arc<Authority>,
    /// What requests cost, by path, if not 1 each.
    pub(crate) costs: Option<Costs>,
    /// The proxies whose forwarding header gives the client's address, if any.
    pub(crate) proxies: Option<TrustedProxies>,
    /// Set when requests without a key go on as anonymous: the mark they get.
    pub(crate) anonymous: Option<Anonymous>,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Shared {
    /// Records one request with the usage sink, if there is one.
    pub(crate) fn record(&self, key_id: Option<&str>, outcome: Outcome, latency: Option<Duration>) {
        if let Some(sink) = &self.usage {
            sink.record(&UsageEvent {
                key_id,
                outcome,
                latency,
                at: self.clock.now(),
            });
        }
    }

    /// Traces a refusal of a request that `presented` an id, and counts it for the key whose
    /// secret was `verified`.
    fn refused(&self, rejection: Rejection, presented: Option<&str>, verified: Option<&str>) {
        trace::rejected(presented, rejection);
        self.record(verified, Outcome::Rejected(rejection), None);
    }

    /// The response for a refused request; traces it with the id it `presented` and counts it for
    /// the key whose secret was `verified`.
    pub(crate) fn reject(
        &self,
        rejection: Rejection,
        presented: Option<&str>,
        verified: Option<&str>,
        request_headers: &HeaderMap,
    ) -> Response<Bytes> {
        self.refused(rejection, presented, verified);
        self.authority
            .rejections
            .response(rejection, request_headers)
    }

    /// The 429 for a request over the limit named `limit` (if the limiter said), of key `id`.
    pub(crate) fn reject_limited(
        &self,
        limit: Option<&str>,
        id: &str,
        request_headers: &HeaderMap,
    ) -> Response<Bytes> {
        self.refused(Rejection::RateLimitExceeded, Some(id), Some(id));
        self.authority
            .rejections
            .response_over_limit(limit, request_headers)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("reading", &self.reading)
            .field("cache", &self.cache)
            .field("authority", &self.authority)
            .field("usage", &self.usage.is_some())
            .field("anonymous", &self.anonymous.is_some())
            .finish_non_exhaustive()
    }
}
