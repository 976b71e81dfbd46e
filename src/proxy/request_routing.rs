//! The start of `request_filter`: refuse a method, target or host the router and the origin
//! could read differently, route by canonical host and path, answer `PURGE`, and apply the
//! route's rule for bodies on GET and HEAD. What is left goes on to user filters and the cache.
//!
//! HTTP/1 requests were already held to the same rules in the front door
//! ([`crate::ingress::scan_head`]); these checks are the ones HTTP/2 requests get, after the
//! field rules only HTTP/2 needs ([`h2_request`]).

use super::context::{client_ip, RequestCtx};
use super::error_page::answer;
use super::{purge, request_body};
use crate::cache::CacheEngine;
use crate::http_syntax::host::request_host;
use crate::http_syntax::{h2_request, path_and_query, request_line, target};
use crate::metrics::METRICS;
use crate::snapshot::SharedSnapshot;
use pingora_error::Result;
use pingora_proxy::Session;

/// Route the request into `ctx`; `true` when verge answered it here (a refusal, `PURGE`, no
/// route) and it goes no further.
pub async fn answered_before_routing(
    session: &mut Session,
    ctx: &mut RequestCtx,
    snapshot: &SharedSnapshot,
    engine: &CacheEngine,
) -> Result<bool> {
    let req = session.req_header();
    if session.is_http2() {
        let values = req.headers.values().map(|v| v.as_bytes());
        if let Err(bad) = h2_request::check(req.uri.scheme_str(), values) {
            METRICS.rejected.with_label_values(&[bad.reason()]).inc();
            answer(session, ctx, 400, "verge: malformed HTTP/2 request", &[]).await?;
            return Ok(true);
        }
    }
    let method = req.method.as_str().as_bytes();
    if !request_line::method_allowed(method) {
        METRICS.rejected.with_label_values(&["bad_method"]).inc();
        answer(session, ctx, 400, "verge: method refused", &[]).await?;
        return Ok(true);
    }
    let target = path_and_query(&req.uri).as_bytes();
    if let Err(bad) = target::check_target(method, target) {
        METRICS.rejected.with_label_values(&[bad.reason()]).inc();
        answer(session, ctx, 400, "verge: request target refused", &[]).await?;
        return Ok(true);
    }
    let Some(host) = request_host(req) else {
        METRICS.rejected.with_label_values(&["bad_host"]).inc();
        answer(session, ctx, 400, "verge: missing or invalid Host", &[]).await?;
        return Ok(true);
    };
    let current = snapshot.load();
    let route = current.table.lookup(&host, req.uri.path()).cloned();
    let awaiting = current.control.awaiting;
    ctx.host = host;
    let purge = purge::decide(
        req.method.as_str(),
        current.config.purge.as_ref(),
        client_ip(session),
    );
    drop(current);
    if purge != purge::PurgeDecision::NotPurge {
        return purge::answer(engine, session, purge, route.as_deref(), &ctx.host).await;
    }
    let Some(route) = route else {
        if awaiting {
            // A node still waiting for its control plane does not know its routes yet.
            let text = "verge: not ready: no snapshot from the control plane yet";
            answer(session, ctx, 503, text, &[]).await?;
            return Ok(true);
        }
        let text = format!("verge: no route for host {:?}", ctx.host);
        answer(session, ctx, 404, &text, &[]).await?;
        return Ok(true);
    };
    let has_body = !session.is_body_empty();
    let method = &session.req_header().method;
    match request_body::action(method, has_body, route.spec.get_body) {
        request_body::BodyAction::Reject => {
            METRICS.rejected.with_label_values(&["get_body"]).inc();
            let text = "verge: no body allowed with GET or HEAD";
            answer(session, ctx, 400, text, &[]).await?;
            return Ok(true);
        }
        request_body::BodyAction::Drop => ctx.drop_body = true,
        request_body::BodyAction::Forward => {}
    }
    ctx.route = Some(route);
    Ok(false)
}
