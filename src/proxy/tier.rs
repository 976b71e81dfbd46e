//! The tier ring in Pingora's phases: a miss on a node that does not own the key goes to the
//! key's owner (once, with a hop marker and `CDN-Loop`), an owner that fails hands the request
//! to the origin, and a verified hop is served by its owner, which never forwards it again.

use super::context::RequestCtx;
use super::peer::{build_peer, clamp_connect};
use crate::cache::cache_status::CACHE_NAME;
use crate::cache::rfc9111;
use crate::config::RouteTimeouts;
use crate::http_syntax::path_and_query;
use crate::metrics::METRICS;
use crate::snapshot::Snapshot;
use crate::upstream::hop_marker::{self, Hop, Signed, CDN_LOOP_FIELD, CDN_TOKEN, HOP_FIELD};
use crate::upstream::tier::{Owner, Ring};
use pingora_cache::key::CacheHashKey;
use pingora_cache::CacheMeta;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// A request whose `CDN-Loop` names verge this many times is not sent to an owner again: two
/// entries mean it already went through a verge hop behind another verge (a loop, or layers
/// deeper than the tier allows); it goes to the origin.
pub const LOOP_LIMIT: usize = 2;

/// What one request has to do with the tier ring.
#[derive(Debug, Default)]
pub struct TierState {
    /// A verified hop: this node is the key's owner for it and never forwards it.
    pub hop: Option<Hop>,
    /// This node's `Cache-Status` identifier when it answers a hop (`verge/<id>`).
    pub owner_name: Option<String>,
    /// A hop from a member ahead of this node's invalidation position: a stored copy is served
    /// to it only if fetched after this node heard of that position ([`stored_copy_too_old`]).
    pub behind: bool,
    /// The owner the current attempt goes to.
    pub owner: Option<(Arc<Ring>, SocketAddr)>,
    /// The owner's response head arrived.
    pub answered: bool,
    /// The owner failed: every further attempt goes to the origin.
    pub gave_up: bool,
    /// The owner's `Cache-Status`, put before this node's own.
    pub owner_status: Option<String>,
}

impl TierState {
    /// The `Cache-Status` identifier for this node's entry.
    pub fn cache_name(&self) -> &str {
        self.owner_name.as_deref().unwrap_or(CACHE_NAME)
    }
}

fn unix_secs() -> u64 {
    crate::unix_time::unix_ms(SystemTime::now()) / 1000
}

/// First thing in `request_filter`: take any hop marker off the request (no client's marker
/// reaches an origin or a filter), and trust it only when it verifies against this node's ring.
/// A verified hop whose sender has applied invalidations this node has not is marked `behind`.
pub fn receive(req: &mut RequestHeader, ctx: &mut RequestCtx, snapshot: &Snapshot) {
    let Some(value) = req.remove_header(HOP_FIELD) else {
        return;
    };
    let Some(ring) = snapshot.tier.as_ref() else {
        METRICS
            .tier_hops_received
            .with_label_values(&["no_ring"])
            .inc();
        return;
    };
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let verified = value
        .to_str()
        .map_err(|_| hop_marker::Refused::Malformed)
        .and_then(|v| {
            ring.key.verify(
                v,
                (req.method.as_str(), host, path_and_query(&req.uri)),
                unix_secs(),
                ring.window_secs(),
                |id| ring.is_other_member(id),
            )
        });
    match verified {
        Ok(hop) => {
            METRICS
                .tier_hops_received
                .with_label_values(&["verified"])
                .inc();
            let applied = snapshot.control.position.seq;
            if hop.seq > applied {
                METRICS.tier_owner_behind.inc();
                ring.learned.learn(hop.seq, applied, SystemTime::now());
                ctx.tier.behind = true;
            }
            ctx.tier.owner_name = Some(format!("{CACHE_NAME}/{}", ring.self_id));
            ctx.tier.hop = Some(hop);
        }
        Err(why) => {
            log::debug!("{}: ignoring a hop marker: {why:?}", ctx.host);
            METRICS
                .tier_hops_received
                .with_label_values(&[why.as_str()])
                .inc();
        }
    }
}

/// `cache_hit_filter`, for a hop from a member ahead of this node's invalidations: whether the
/// stored copy may predate one of the invalidations that member applied (its fetch started
/// before this node heard of that member's position), so it must be fetched anew. The first
/// such hop refetches; the hops that wait on that fetch find a copy new enough.
pub fn stored_copy_too_old(ctx: &RequestCtx, meta: &CacheMeta, snapshot: &Snapshot) -> bool {
    let (Some(hop), true) = (ctx.tier.hop.as_ref(), ctx.tier.behind) else {
        return false;
    };
    let Some(ring) = snapshot.tier.as_ref() else {
        return true;
    };
    let fetched = rfc9111::fetched_at(meta.headers()).unwrap_or_else(|| meta.created());
    !ring.learned.covers(hop.seq, fetched)
}

/// The scheme the client used: a verified hop's (its sender's client), else the listener's.
pub fn scheme(ctx: &RequestCtx, listener: &'static str) -> &'static str {
    ctx.tier.hop.as_ref().map_or(listener, |h| h.scheme)
}

/// `upstream_peer`: the key's owner when this miss goes to it. Not on a route with
/// `cache.tier: false`, for a verified hop (an owner never forwards), after the owner failed,
/// for anything but a `GET`/`HEAD` the cache handles, when this node owns the key, or when
/// `CDN-Loop` shows a loop.
pub fn owner_peer(
    session: &Session,
    ctx: &mut RequestCtx,
    snapshot: &Snapshot,
) -> Option<Box<HttpPeer>> {
    let ring = snapshot.tier.as_ref()?;
    let route_opts_in = ctx
        .route
        .as_ref()
        .and_then(|r| r.spec.cache.as_ref())
        .is_some_and(|c| c.tier);
    if !route_opts_in || ctx.tier.hop.is_some() || ctx.tier.gave_up || !session.cache.enabled() {
        return None;
    }
    let req = session.req_header();
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        return None;
    }
    let key = session.cache.maybe_cache_key()?.primary_bin();
    let Owner::Peer(addr) = ring.owner(&key) else {
        return None;
    };
    let seen = hop_marker::cdn_loop_count(
        req.headers
            .get_all(CDN_LOOP_FIELD)
            .iter()
            .map(|v| v.as_bytes()),
    );
    if seen >= LOOP_LIMIT {
        METRICS.tier_requests.with_label_values(&["loop"]).inc();
        ctx.tier.gave_up = true;
        return None;
    }
    let mut peer = build_peer(&ring.pool.spec, &RouteTimeouts::default(), addr);
    if let Some(d) = ctx.deadline.as_ref() {
        clamp_connect(&mut peer, d.remaining(Instant::now()));
    }
    ctx.tier.owner = Some((ring.clone(), addr));
    Some(Box::new(peer))
}

/// `upstream_request_filter` for a request going to an owner: the client's request as it came
/// (the owner applies the route's rewrites, header rules and filters itself), for the canonical
/// host, with the hop marker and `CDN-Loop`.
pub fn hop_request(
    upstream: &mut RequestHeader,
    ctx: &RequestCtx,
    ring: &Ring,
    scheme: &str,
    seq: u64,
) -> Result<()> {
    if !ctx.host.is_empty() {
        upstream.insert_header(http::header::HOST, &ctx.host)?;
    }
    let target = path_and_query(&upstream.uri).to_string();
    let signed = Signed {
        node: &ring.self_id,
        at: unix_secs(),
        seq,
        scheme,
        method: upstream.method.as_str(),
        host: &ctx.host,
        target: &target,
    };
    let Some(marker) = ring.key.sign(&signed) else {
        return Error::e_explain(pingora_error::ErrorType::InternalError, "tier hop key");
    };
    upstream.insert_header(HOP_FIELD, marker)?;
    upstream.append_header(CDN_LOOP_FIELD, CDN_TOKEN)?;
    super::headers::body_framing(upstream, ctx)
}

/// `upstream_response_filter` for an owner's answer: counted, and its `Cache-Status` kept
/// aside (out of what this node stores) to go before this node's own entry.
pub fn owner_answered(upstream: &mut ResponseHeader, ctx: &mut RequestCtx) {
    if ctx.tier.owner.is_none() || ctx.tier.answered {
        return;
    }
    ctx.tier.answered = true;
    METRICS.tier_requests.with_label_values(&["answered"]).inc();
    if let Some((ring, addr)) = &ctx.tier.owner {
        // the owner's failure streak ends
        ring.pool.report_connect_success(addr);
    }
    let statuses: Vec<String> = upstream
        .headers
        .get_all("cache-status")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    upstream.remove_header("cache-status");
    if !statuses.is_empty() {
        ctx.tier.owner_status = Some(statuses.join(", "));
    }
}

/// `Cache-Status` for the client: the owner's entries (when this response came through one),
/// then this node's.
pub fn cache_status_chain(ctx: &RequestCtx, own: String) -> String {
    match &ctx.tier.owner_status {
        Some(owner) => format!("{owner}, {own}"),
        None => own,
    }
}

/// Whether the current attempt went to an owner that has not answered yet.
pub fn awaiting_owner(ctx: &RequestCtx) -> bool {
    ctx.tier.owner.is_some() && !ctx.tier.answered
}

/// A failure talking to the owner before its response head came (`connected`: after the
/// connect; see [`awaiting_owner`]): the owner is charged with it (passive ejection: after a
/// few in a row it is skipped for a while, and its keys go to the next member), and the request
/// goes on to the origin, once.
pub fn owner_failed(ctx: &mut RequestCtx, mut e: Box<Error>, connected: bool) -> Box<Error> {
    let Some((ring, addr)) = ctx.tier.owner.take() else {
        return e;
    };
    let outcome = if connected {
        "error"
    } else {
        "connect_failure"
    };
    METRICS.tier_requests.with_label_values(&[outcome]).inc();
    if ring.pool.report_connect_failure(&addr) {
        log::warn!("tier: skipping owner {addr} for a while after failures");
        METRICS
            .ejections
            .with_label_values(&[ring.pool.name(), &addr.to_string()])
            .inc();
    }
    log::debug!(
        "{}: owner {addr} failed ({e}); going to the origin",
        ctx.host
    );
    ctx.tier.gave_up = true;
    let expired = ctx
        .deadline
        .as_ref()
        .is_some_and(|d| d.expired(Instant::now()));
    e.set_retry(!expired);
    e
}

/// `logging`: a hop this node answered as the owner from its cache (a stored entry, or one a
/// fetch already under way filled) is an origin fetch the fleet did not make.
pub fn count_avoided_fetch(ctx: &RequestCtx, phase: pingora_cache::CachePhase) {
    use pingora_cache::CachePhase as P;
    if ctx.tier.hop.is_some() && matches!(phase, P::Hit | P::Stale | P::StaleUpdating) {
        METRICS.tier_fetches_avoided.inc();
    }
}

/// `connected_to_upstream`: true when the connection was an owner's. Its failure streak does
/// not end here but when it answers: an owner that accepts connections and then says nothing
/// is skipped like one that refuses them.
pub fn owner_connected(ctx: &RequestCtx) -> bool {
    ctx.tier.owner.is_some()
}
