//! What happens when an origin's response head arrives, before the cache decides on it: a
//! compressing route's coding is settled, the whole-response deadline ends where no body
//! follows, the body-size check is deferred for streamed bodies, hop-by-hop fields go, a 304 is
//! kept for the refresh, and the origin's latency is measured.

use super::context::RequestCtx;
use super::{compression, deadline, headers};
use crate::metrics::METRICS;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// An interim (1xx) head other than `101`: it passes through, and is counted against the
/// origin's budget for them.
pub fn is_interim(upstream: &ResponseHeader) -> bool {
    upstream.status.is_informational() && upstream.status != http::StatusCode::SWITCHING_PROTOCOLS
}

/// `upstream_response_filter` for a final head.
pub fn head_arrived(
    session: &mut Session,
    upstream: &mut ResponseHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    if let Some(route) = ctx.route.clone() {
        if let Some(spec) = route.spec.compression.as_ref() {
            // first: a compressed body has no Content-Length, so its size is checked as it
            // streams (below), like any body of unknown length
            let fills = session.cache.enabled();
            let req = session.req_header();
            compression::origin_head(req, upstream, spec, fills, &mut ctx.transcoding)?;
        }
    }
    // before pingora's cache write: a streamed body without Content-Length that outgrows
    // cache.max_object_size must reach the client whole (see the function's doc)
    crate::cache::defer_body_size_check(&mut session.cache, upstream);
    final_head(upstream, ctx);
    Ok(())
}

/// The part of [`head_arrived`] that needs no session (all of it for a route that neither
/// caches nor compresses: the pass lane's): the deadline, hop-by-hop fields, a kept 304 and
/// the origin's latency.
pub fn final_head(upstream: &mut ResponseHeader, ctx: &mut RequestCtx) {
    let tunnel = upstream.status == http::StatusCode::SWITCHING_PROTOCOLS;
    // a tunnel (101) has no end to wait for; a head without a body is the whole response
    if ctx.deadline.is_some() && (tunnel || !deadline::body_follows(upstream)) {
        ctx.deadline = None;
    }
    if !tunnel {
        headers::strip_connection_listed(upstream);
    }
    if upstream.status == http::StatusCode::NOT_MODIFIED {
        ctx.not_modified = Some(Box::new(upstream.clone()));
    }
    if let (Some(route), Some(at)) = (ctx.route.as_ref(), ctx.upstream_sent_at) {
        let elapsed = at.elapsed().as_secs_f64();
        ctx.origin_ms = Some(elapsed * 1000.0);
        // an owner in the tier ring answered: its time is the ring's, not the origin pool's
        let pool = match ctx.tier.owner {
            Some(_) => crate::config::TIER_POOL,
            None => route.pool.name(),
        };
        METRICS
            .upstream_latency
            .with_label_values(&[pool])
            .observe(elapsed);
    }
}
