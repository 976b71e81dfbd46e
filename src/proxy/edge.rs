//! A route's edge rules in `request_filter`, after routing and before the cache: the request
//! id first, then access rules (403), the rate limit (429), then redirects (`https_redirect`,
//! `redirect`), then the path rewrite. Each answer is verge's own, and carries the request id.

use super::client_address::client_address;
use super::context::{client_ip, RequestCtx};
use super::rate_limit::{self, Verdict};
use super::redirect::{redirect_for, RequestParts};
use super::request_id;
use super::rewrite;
use crate::config::RateKey;
use crate::http_syntax::scheme;
use crate::metrics::METRICS;
use crate::snapshot::SharedSnapshot;
use pingora_error::Result;
use pingora_proxy::Session;
use std::time::Instant;

/// The listener's part of a request, before routing: its error pages for the request's answers,
/// and its access rules (`listeners[].allow`/`deny`); `true` when verge refused the request here
/// (403).
pub async fn refused_by_listener(
    session: &mut Session,
    ctx: &mut RequestCtx,
    listener: &str,
    snapshot: &SharedSnapshot,
) -> Result<bool> {
    let refused = {
        let current = snapshot.load();
        let Some(spec) = current.config.listener(listener) else {
            return Ok(false);
        };
        ctx.listener_pages = (!spec.error_pages.is_empty()).then(|| spec.error_pages.clone());
        spec.has_access_rules() && spec.refuses(client_of(session, &current.config))
    };
    if refused {
        answer(session, ctx, 403, "verge: forbidden", &[]).await?;
    }
    Ok(refused)
}

/// Apply the routed request's edge rules; `true` when verge answered it here. `tls`: the
/// listener terminates TLS. The client address is the connection's, or the one trusted proxies
/// name (`server.client_ip`, in `snapshot`'s config).
pub async fn answered(
    session: &mut Session,
    ctx: &mut RequestCtx,
    tls: bool,
    snapshot: &SharedSnapshot,
) -> Result<bool> {
    let Some(route) = ctx.route.clone() else {
        return Ok(false);
    };
    let edge = &route.spec.edge;
    if let Some(spec) = &edge.request_id {
        let sent = session.req_header().headers.get(request_id::HEADER);
        ctx.request_id = Some(request_id::for_request(spec, sent));
    }
    // a verified tier hop: the member that forwarded it applied the access rules, the rate
    // limit and the redirects to its client (here the client is that member); only the rewrite,
    // which decides what the upstream is asked for, applies again
    let hop = ctx.tier.hop.is_some();
    let reads_client = !hop
        && (!edge.deny.is_empty()
            || !edge.allow.is_empty()
            || edge.rate_limit.as_ref().map(|r| &r.key) == Some(&RateKey::ClientIp));
    let client = if reads_client {
        rule_client(session, snapshot)
    } else {
        None
    };
    if !hop && edge.refuses(client) {
        answer(session, ctx, 403, "verge: forbidden", &[]).await?;
        return Ok(true);
    }
    if let Some(spec) = edge.rate_limit.as_ref().filter(|_| !hop) {
        let mut buf = [0; 16];
        let headers = &session.req_header().headers;
        let key = rate_limit::bucket_key(&spec.key, client, headers, &mut buf);
        let verdict = rate_limit::limiter(&route.spec.name, spec).check(key, Instant::now());
        if let Verdict::Deny(wait) = verdict {
            METRICS
                .rate_limited
                .with_label_values(&[route.spec.name.as_str()])
                .inc();
            let secs = rate_limit::retry_after_secs(wait).to_string();
            let text = "verge: too many requests";
            answer(session, ctx, 429, text, &[("retry-after", &secs)]).await?;
            return Ok(true);
        }
    }
    let uri = &session.req_header().uri;
    let parts = RequestParts {
        scheme: scheme(tls),
        host: &ctx.host,
        path: uri.path(),
        query: uri.query(),
    };
    if let Some((status, location)) = redirect_for(edge, &parts).filter(|_| !hop) {
        let text = format!("verge: moved to {location}");
        answer(session, ctx, status, &text, &[("location", &location)]).await?;
        return Ok(true);
    }
    if let Some(rule) = &edge.rewrite.path {
        let req = session.req_header();
        let (method, path, query) = (req.method.as_str(), req.uri.path(), req.uri.query());
        match rewrite::rewritten_target(rule, method, path, query) {
            None => {}
            Some(Ok(target)) => ctx.rewritten = Some(target),
            Some(Err(rewrite::Refused)) => {
                METRICS
                    .rejected
                    .with_label_values(&["rewritten_target"])
                    .inc();
                answer(session, ctx, 400, "verge: rewritten target refused", &[]).await?;
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The client address a route's rules read: the connection's, or the one trusted proxies name
/// (`server.client_ip`, in `snapshot`'s config).
pub fn rule_client(session: &Session, snapshot: &SharedSnapshot) -> Option<std::net::IpAddr> {
    client_of(session, &snapshot.load().config)
}

/// [`rule_client`] under `config`.
fn client_of(session: &Session, config: &crate::config::Config) -> Option<std::net::IpAddr> {
    let trusted = config.server.client_ip.as_ref();
    client_address(client_ip(session), &session.req_header().headers, trusted)
}

/// Write verge's own answer (a custom page, or the text), with the request id when there is
/// one.
async fn answer(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    text: &str,
    fields: &[(&'static str, &str)],
) -> Result<()> {
    ctx.edge_answered = true;
    super::error_page::answer(session, ctx, status, text, fields).await
}
