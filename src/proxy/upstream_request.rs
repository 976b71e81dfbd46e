//! The request head sent upstream: to the key's owner in the tier ring as a signed hop, or to
//! the origin with verge's forwarding fields, the route's header edits, the request id and the
//! codings a compressing route asks for.

use super::client_head::header_vars;
use super::context::{client_ip, RequestCtx};
use super::{compression, headers, request_id, tier};
use crate::snapshot::{Route, SharedSnapshot};
use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::net::IpAddr;
use std::time::{Instant, SystemTime};

/// `upstream_request_filter`, before the user filters. `true`: the head goes to the origin,
/// and the route's filters get their turn at it before it is [`sent`]; `false`: it is a tier
/// hop (sent as it is) or unrouted.
pub fn prepare(
    session: &Session,
    upstream: &mut RequestHeader,
    ctx: &mut RequestCtx,
    snapshot: &SharedSnapshot,
    scheme: &'static str,
    trust: &headers::ForwardingTrust,
) -> Result<bool> {
    let Some(route) = ctx.route.clone() else {
        return Ok(false);
    };
    if let Some((ring, _)) = ctx.tier.owner.clone() {
        let seq = ring.known_position(snapshot.load().control.position.seq);
        tier::hop_request(upstream, ctx, &ring, scheme, seq)?;
        request_id::set_upstream(upstream, ctx)?;
        sent(ctx);
        return Ok(false);
    }
    let client = client_ip(session);
    let vars = header_vars(session, ctx, scheme, snapshot, &route.spec.request_headers);
    to_origin(upstream, (&route, ctx), client, &vars, trust)?;
    let compression = route.spec.compression.as_ref();
    compression::upstream_request(upstream, compression, session.cache.enabled())?;
    Ok(true)
}

/// The part of [`prepare`] for a head going to the origin that needs no session: the
/// forwarding fields for `client` (those `trust` lets its hop set kept), the route's edits and
/// the request id. The pass lane calls it for the routes it takes (no compression, no tier).
pub fn to_origin(
    upstream: &mut RequestHeader,
    (route, ctx): (&Route, &RequestCtx),
    client: Option<IpAddr>,
    vars: &headers::HeaderVars<'_>,
    trust: &headers::ForwardingTrust,
) -> Result<()> {
    let trusted = trust.fields_for(client);
    headers::prepare_upstream(upstream, route, ctx, client, vars, trusted)?;
    request_id::set_upstream(upstream, ctx)
}

/// The head is on its way: the origin's latency and the fetch time count from here.
pub fn sent(ctx: &mut RequestCtx) {
    ctx.upstream_sent_at = Some(Instant::now());
    ctx.fetch_started = Some(SystemTime::now());
}
