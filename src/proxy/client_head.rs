//! The final response head a client gets on the full path: what the origin sent the fetching
//! client but the cache does not store, no fields the client must not see, the coding it
//! accepts, the cache's fields, the route's header edits and the request id.

use super::context::RequestCtx;
use super::{caching, compression, edge, headers, request_id};
use crate::cache::rfc9111;
use crate::config::HeaderOps;
use crate::snapshot::SharedSnapshot;
use pingora_cache::CachePhase;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// `response_filter` for a final head, before the user filters see it.
pub fn prepare(
    session: &mut Session,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
    scheme: &str,
    snapshot: &SharedSnapshot,
) -> Result<()> {
    if !ctx.unstored_fields.is_empty() && session.cache.phase() == CachePhase::Miss {
        // this head is the stored one: give the fetching client what the origin sent
        headers::restore_fields(resp, std::mem::take(&mut ctx.unstored_fields))?;
    }
    hide_fields(resp);
    if let Some(route) = ctx.route.clone() {
        if route.spec.compression.is_some() {
            let req = session.req_header();
            compression::client_head(req, resp, &route.spec.name, &mut ctx.transcoding)?;
        }
        if let Some(rules) = route.spec.cache.as_ref() {
            ctx.served_at = Some(std::time::SystemTime::now());
            caching::response_fields(session, resp, ctx, rules)?;
        }
        if ctx.tier.hop.is_none() {
            // (a hop's answer goes to a member, which applies them for its client)
            let ops = &route.spec.response_headers;
            let vars = header_vars(session, ctx, scheme, snapshot, ops);
            headers::apply_response_ops(resp, ops, &vars)?;
        }
    }
    request_id::set_response(resp, ctx)
}

/// The fields no client sees (verge's own bookkeeping in stored heads).
pub fn hide_fields(resp: &mut ResponseHeader) {
    for name in &rfc9111::CLIENT_HIDDEN_HEADERS {
        resp.remove_header(name);
    }
}

/// The values `ops` may name for this request (the client address only when `ops` read it).
pub fn header_vars<'a>(
    session: &Session,
    ctx: &'a RequestCtx,
    scheme: &'a str,
    snapshot: &SharedSnapshot,
    ops: &HeaderOps,
) -> headers::HeaderVars<'a> {
    headers::HeaderVars {
        client_ip: ops
            .reads_client_ip()
            .then(|| edge::rule_client(session, snapshot))
            .flatten(),
        request_id: ctx.request_id.as_deref(),
        route: ctx.route_name(),
        scheme,
        host: &ctx.host,
    }
}
