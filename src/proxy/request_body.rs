//! A request body: counted against `max_body`, and on GET or HEAD handled per the route's
//! `get_body` policy.
//!
//! A shared cache keys GET and HEAD without their body, and RFC 9110 §9.3.1 gives such a body
//! no meaning; an origin that read it anyway could let one client's body decide what every
//! other client is served from cache. So by default the body is read (to keep the connection
//! in step) and thrown away, and the origin gets the request without it.

use super::context::RequestCtx;
use crate::config::GetBodyPolicy;
use crate::metrics::METRICS;
use bytes::Bytes;
use http::Method;
use pingora_error::{Error, ErrorType};

/// The action for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyAction {
    /// Pass the body (if any) to the origin as usual.
    Forward,
    /// Read and discard the body; send the origin `Content-Length: 0`.
    Drop,
    /// Answer 400 and close the connection.
    Reject,
}

/// Decide for a request with `method`, which carries a body when `has_body`.
pub fn action(method: &Method, has_body: bool, policy: GetBodyPolicy) -> BodyAction {
    if !has_body || !matches!(*method, Method::GET | Method::HEAD) {
        return BodyAction::Forward;
    }
    match policy {
        GetBodyPolicy::Drop => BodyAction::Drop,
        GetBodyPolicy::Reject => BodyAction::Reject,
        GetBodyPolicy::Forward => BodyAction::Forward,
    }
}

/// `request_body_filter`: count the body against `max_body` (over it: 413, and the connection
/// is not reused), and discard what arrives when the route drops GET/HEAD bodies.
pub fn count(
    ctx: &mut RequestCtx,
    body: &mut Option<Bytes>,
    max_body: u64,
) -> pingora_error::Result<()> {
    if let Some(b) = body {
        ctx.body_bytes += b.len() as u64;
        if ctx.body_bytes > max_body {
            METRICS
                .rejected
                .with_label_values(&["body_too_large"])
                .inc();
            return Error::e_explain(
                ErrorType::HTTPStatus(413),
                format!("request body over {max_body} bytes"),
            );
        }
    }
    if ctx.drop_body {
        *body = None;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_bodies_are_touched() {
        use BodyAction::*;
        let drop = GetBodyPolicy::Drop;
        assert_eq!(action(&Method::GET, true, drop), Drop);
        assert_eq!(action(&Method::HEAD, true, drop), Drop);
        assert_eq!(action(&Method::GET, false, drop), Forward);
        assert_eq!(action(&Method::POST, true, drop), Forward);
        assert_eq!(action(&Method::GET, true, GetBodyPolicy::Reject), Reject);
        assert_eq!(action(&Method::HEAD, false, GetBodyPolicy::Reject), Forward);
        assert_eq!(action(&Method::GET, true, GetBodyPolicy::Forward), Forward);
    }
}
