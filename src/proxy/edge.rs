//! A route's edge rules in `request_filter`, after routing and before the cache: the request
//! id first, then access rules (403), then redirects (`https_redirect`, `redirect`). Each
//! answer is verge's own, and carries the request id.

use super::context::{client_ip, RequestCtx};
use super::error_page::respond_local;
use super::redirect::{redirect_for, RequestParts};
use super::request_id;
use crate::http_syntax::scheme;
use pingora_error::Result;
use pingora_proxy::Session;

/// Apply the routed request's edge rules; `true` when verge answered it here. `tls`: the
/// listener terminates TLS.
pub async fn answered(session: &mut Session, ctx: &mut RequestCtx, tls: bool) -> Result<bool> {
    let Some(route) = ctx.route.clone() else {
        return Ok(false);
    };
    let edge = &route.spec.edge;
    if let Some(spec) = &edge.request_id {
        let sent = session.req_header().headers.get(request_id::HEADER);
        ctx.request_id = Some(request_id::for_request(spec, sent));
    }
    if edge.refuses(client_ip(session)) {
        answer(session, ctx, 403, "verge: forbidden", &[]).await?;
        return Ok(true);
    }
    let uri = &session.req_header().uri;
    let parts = RequestParts {
        scheme: scheme(tls),
        host: &ctx.host,
        path: uri.path(),
        query: uri.query(),
    };
    if let Some((status, location)) = redirect_for(edge, &parts) {
        let text = format!("verge: moved to {location}");
        answer(session, ctx, status, &text, &[("location", &location)]).await?;
        return Ok(true);
    }
    Ok(false)
}

/// Write verge's own answer, with the request id when there is one.
async fn answer(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    text: &str,
    fields: &[(&'static str, &str)],
) -> Result<()> {
    let (text, id_field) = request_id::on_local_answer(text, ctx.request_id.as_deref());
    let mut all = fields.to_vec();
    all.extend(id_field);
    respond_local(session, status, &text, &all).await
}
