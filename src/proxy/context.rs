//! What one request carries between Pingora's phases, and what the hit lane hands over with a
//! request it passes on.

use super::deadline::ResponseDeadline;
use super::filter::FilterState;
use crate::cache::request_directives::RequestDirectives;
use crate::cache::rfc9111::Bypass;
use crate::config::{ErrorPage, ErrorPages};
use crate::http_syntax::path_and_query;
use crate::snapshot::Route;
use pingora_http::{RequestHeader, ResponseHeader};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the proxy knows about the listener a request came in on.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// The listener's name (metrics label).
    pub name: String,
    /// Whether it terminates TLS (the scheme in cache keys and `X-Forwarded-Proto`).
    pub tls: bool,
    /// Largest request body accepted; a streamed (chunked) body over it fails with 413.
    pub max_body: u64,
    /// Longest an HTTP/2 stream may go without being able to send the client more of its
    /// response (HTTP/1 clients have the front door's body guard for this).
    pub send_timeout: Duration,
    /// Longest wait for the next piece of an HTTP/2 request body (HTTP/1: the body guard).
    pub body_timeout: Duration,
    /// Slowest average pace of an HTTP/2 request body, bytes per second (0: none).
    pub body_min_rate: u64,
}

/// How long the hit lane waited for another request's fetch before handing a request to
/// Pingora (passed through the session's connection context; the cache lock's wait is
/// shortened by it).
#[derive(Debug, Clone, Copy)]
pub struct LaneWaited(pub Duration);

/// Per-request state carried between phases.
#[derive(Default)]
pub struct RequestCtx {
    /// Canonical host (lowercase, no port).
    pub host: String,
    /// The matched route (with a filter's pool override applied).
    pub route: Option<Arc<Route>>,
    /// Backends tried so far (in order); the last one is the current one.
    pub tried: Vec<SocketAddr>,
    /// When the request was sent upstream (for the origin latency).
    pub upstream_sent_at: Option<Instant>,
    /// When the origin request was sent (wall clock): the stored entry's `created`, which
    /// invalidations are compared against.
    pub fetch_started: Option<std::time::SystemTime>,
    /// When the request arrived (for the access log's total time).
    pub started: Option<Instant>,
    /// From sending upstream to the response header, in milliseconds.
    pub origin_ms: Option<f64>,
    /// Request body bytes read so far.
    pub body_bytes: u64,
    /// Why verge answered with an error itself, for the response body.
    pub failure: Option<String>,
    /// Why a cached route skipped the cache for this request.
    pub bypass: Option<Bypass>,
    /// The response was admitted to the cache.
    pub stored: bool,
    /// The request's cache directives (only read on routes that cache).
    pub directives: RequestDirectives,
    /// The origin's 304 while revalidating, for the fields that refresh the stored header.
    pub not_modified: Option<Box<ResponseHeader>>,
    /// Informational (1xx) heads received from the origin for this request.
    pub informational: usize,
    /// The request body (sent with GET or HEAD) is read and discarded, never forwarded.
    pub drop_body: bool,
    /// What user filters keep for this request (selection, extensions, cache-key parts).
    pub filters: FilterState,
    /// The client's HTTP/2 head was rewritten as HTTP/1.1 so a background refresh can be
    /// built from it (`refresh.rs`); its version is put back before the response goes out.
    pub h2_head_downgraded: bool,
    /// A fresh stored response was found, but the request's own directives sent it to the
    /// origin (`Cache-Status: fwd=request`).
    pub request_forced: bool,
    /// This fresh hit started an early (XFetch) refresh of its entry.
    pub early_refresh: bool,
    /// When the response head went to the client: the instant its `Cache-Status` speaks of,
    /// and the served-staleness metrics measure at.
    pub served_at: Option<std::time::SystemTime>,
    /// The whole-response deadline (`timeouts.total`), from the first connect attempt.
    pub deadline: Option<ResponseDeadline>,
    /// Origin fields the stored form of this response leaves out (`Age`, fields named by
    /// `no-cache="…"`/`private="…"`, a stripped `Set-Cookie`): the fetching client, which
    /// pingora serves from the stored head as the body streams into the cache, gets them back.
    pub unstored_fields: Vec<(http::HeaderName, http::HeaderValue)>,
    /// This request is the cache lock's writer: the hit lane's waiters wait on it.
    pub pending_fetch: Option<crate::cache::pending::PendingFetch>,
    /// How long the hit lane already waited for another request's fetch before handing this
    /// request over; taken off the cache lock's wait.
    pub lane_waited: Option<Duration>,
    /// This request's `X-Request-Id`, on routes that give one (`request_id.rs`).
    pub request_id: Option<String>,
    /// A route's edge rule answered the request (403, 429, a redirect): no cache lookup.
    pub edge_answered: bool,
    /// The path and query after the route's `rewrite.path`: what the upstream is asked for and
    /// the cache key reads (`None`: the request's own).
    pub rewritten: Option<String>,
    /// The listener's error pages (`listeners[].error_pages`), for answers verge writes itself.
    pub listener_pages: Option<ErrorPages>,
    /// Bodies compressed on their way into the cache or decoded for the client
    /// (`routes[].compression`).
    pub transcoding: super::compression::Transcoding,
    /// The tier ring's part in this request: a verified hop, or the owner a miss went to.
    pub tier: super::tier::TierState,
    /// The snapshot whose invalidations the hit decision read (the freshness check judges the
    /// answer by the same ones).
    pub decided_with: Option<Arc<crate::snapshot::Snapshot>>,
}

impl RequestCtx {
    /// The matched route's name (empty before routing).
    pub fn route_name(&self) -> &str {
        self.route.as_ref().map_or("", |r| r.spec.name.as_str())
    }

    /// The path and query the cache and the upstream read: the rewritten one, or `req`'s.
    pub fn target<'a>(&'a self, req: &'a RequestHeader) -> &'a str {
        self.rewritten
            .as_deref()
            .unwrap_or_else(|| path_and_query(&req.uri))
    }

    /// The error page for `status`: the route's, then the listener's.
    pub fn error_page(&self, status: u16) -> Option<&ErrorPage> {
        self.route
            .as_ref()
            .and_then(|r| r.spec.error_pages.get(status))
            .or_else(|| self.listener_pages.as_ref()?.get(status))
    }
}

/// Whether this request waited for another request's fetch: on the cache lock (`locked`), or
/// in the hit lane before it was handed over (it then reads that fetch's response as it
/// streams in).
pub fn waited_on_fetch(locked: bool, ctx: &RequestCtx) -> bool {
    locked || ctx.lane_waited.is_some()
}

/// The client's IP address, when it came over TCP.
pub fn client_ip(session: &pingora_proxy::Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}
