//! A route's edge rules in `request_filter`, after routing and before the cache: access rules
//! (403), then redirects (`https_redirect`, `redirect`). Each answer is verge's own.

use super::context::{client_ip, RequestCtx};
use super::error_page::respond_local;
use super::redirect::{redirect_for, RequestParts};
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
    if edge.refuses(client_ip(session)) {
        respond_local(session, 403, "verge: forbidden", &[]).await?;
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
        respond_local(session, status, &text, &[("location", &location)]).await?;
        return Ok(true);
    }
    Ok(false)
}
