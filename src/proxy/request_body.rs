//! A request body: counted against `max_body`, and on GET or HEAD handled per the route's
//! `get_body` policy.
//!
//! A shared cache keys GET and HEAD without their body, and RFC 9110 §9.3.1 gives such a body
//! no meaning; an origin that read it anyway could let one client's body decide what every
//! other client is served from cache. So by default the body is read (to keep the connection
//! in step) and thrown away, and the origin gets the request without it.

use super::context::RequestCtx;
use crate::config::GetBodyPolicy;
use crate::http_syntax::chunked::BadChunk;
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

/// The time a body that sent `received` bytes may take in all under the listener's pace:
/// `idle` plus one second per `min_rate` bytes (Apache's `mod_reqtimeout` rule); `None` with no
/// minimum rate. The one rule behind HTTP/1's body guard and [`h2_pace`].
pub fn pace_allowance(
    received: u64,
    idle: std::time::Duration,
    min_rate: u64,
) -> Option<std::time::Duration> {
    let earned = received.saturating_mul(1000).checked_div(min_rate)?;
    Some(idle + std::time::Duration::from_millis(earned))
}

/// Whether an HTTP/2 request body keeps its listener's pace (the front door's body guard reads
/// HTTP/1 bodies only): `received` bytes `elapsed` after the request's head may take `idle` plus
/// one second per `min_rate` bytes (Apache's `mod_reqtimeout` rule, as for HTTP/1). The wait for
/// each next piece is bounded by Pingora (`Session::downstream_body_timeout`).
pub fn h2_pace(
    received: u64,
    elapsed: std::time::Duration,
    idle: std::time::Duration,
    min_rate: u64,
) -> Result<(), BodyRefusal> {
    match pace_allowance(received, idle, min_rate) {
        Some(allowed) if elapsed > allowed => Err(BodyRefusal::TooSlow),
        _ => Ok(()),
    }
}

/// [`h2_pace`] for the request in `ctx` (its body so far, since its head): a body too slow is
/// counted and refused with 408.
pub fn keeps_h2_pace(
    ctx: &RequestCtx,
    idle: std::time::Duration,
    min_rate: u64,
) -> pingora_error::Result<()> {
    let elapsed = ctx
        .started
        .map_or(std::time::Duration::ZERO, |s| s.elapsed());
    h2_pace(ctx.body_bytes, elapsed, idle, min_rate).or_else(|refusal| {
        METRICS
            .rejected
            .with_label_values(&[refusal.reason()])
            .inc();
        Error::e_explain(ErrorType::HTTPStatus(refusal.status()), refusal.to_string())
    })
}

/// Count an HTTP/2 request failed by Pingora's wait for the next piece of its body
/// (`Session::downstream_body_timeout`), as the body guard counts an idle HTTP/1 body.
pub fn count_h2_idle_body(e: &Error) {
    if e.esource() == &pingora_error::ErrorSource::Downstream
        && e.etype() == &ErrorType::ReadTimedout
    {
        METRICS
            .rejected
            .with_label_values(&[BodyRefusal::Idle.reason()])
            .inc();
    }
}

/// Why the front door stopped a request body as Pingora read it (`crate::ingress`'s body
/// guard): the client gets [`BodyRefusal::status`] unless a response has started, and the
/// connection closes either way. It travels to `fail_to_proxy` inside the read's I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyRefusal {
    /// Chunked framing that is not strictly RFC 9112's.
    #[error("chunked framing refused: {0}")]
    Framing(BadChunk),
    /// No body byte arrived for the listener's `body_timeout` while verge waited for one.
    #[error("request body idle past the body timeout")]
    Idle,
    /// The body fell below the listener's `body_min_rate`.
    #[error("request body slower than the minimum rate")]
    TooSlow,
}

impl BodyRefusal {
    /// The status answered when no response has started.
    pub fn status(self) -> u16 {
        match self {
            BodyRefusal::Framing(_) => 400,
            BodyRefusal::Idle | BodyRefusal::TooSlow => 408,
        }
    }

    /// The `verge_requests_rejected_total` reason label.
    pub fn reason(self) -> &'static str {
        match self {
            BodyRefusal::Framing(bad) => bad.reason(),
            BodyRefusal::Idle => "body_idle_timeout",
            BodyRefusal::TooSlow => "body_too_slow",
        }
    }

    /// The refusal behind a proxy error, if that is what it is.
    pub fn behind(e: &Error) -> Option<Self> {
        let io = e.root_cause().downcast_ref::<std::io::Error>()?;
        io.get_ref()?.downcast_ref::<Self>().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_body_earns_a_second_per_min_rate_bytes_after_the_idle_grace() {
        let s = std::time::Duration::from_secs;
        assert_eq!(h2_pace(0, s(1), s(1), 100), Ok(()));
        assert_eq!(h2_pace(0, s(2), s(1), 100), Err(BodyRefusal::TooSlow));
        assert_eq!(h2_pace(200, s(3), s(1), 100), Ok(()));
        assert_eq!(h2_pace(200, s(4), s(1), 100), Err(BodyRefusal::TooSlow));
        assert_eq!(h2_pace(0, s(3600), s(1), 0), Ok(()), "no minimum");
    }

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
