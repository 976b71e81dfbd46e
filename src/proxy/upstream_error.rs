//! Names what went wrong with an origin after verge connected to it, for
//! `verge_upstream_errors_total{pool,kind}` (pure: looks only at the error), and refuses
//! response heads no client may see: a status outside 100–599, a 101 nobody asked for, a
//! flood of informational heads.

use super::context::RequestCtx;
use crate::metrics::METRICS;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::time::Instant;

/// The `kind` label for an upstream failure on an established connection, or `None` when the
/// error did not come from the origin (the client went away, or verge itself failed).
///
/// - `timeout`: no byte within the read (or write) timeout;
/// - `closed`: the origin closed the connection before the response (or its body) was whole;
/// - `reset`: an I/O error on the connection, typically a TCP reset;
/// - `invalid_response`: bytes that are not a valid HTTP response (status line, head size or
///   field count, framing, chunk sizes, too many informational responses);
/// - `other`: anything else the origin caused.
pub fn kind(e: &Error) -> Option<&'static str> {
    if e.esource() != &ErrorSource::Upstream {
        return None;
    }
    Some(match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
        ErrorType::ConnectionClosed | ErrorType::Custom("PrematureBodyEnd") => "closed",
        ErrorType::ReadError | ErrorType::WriteError => "reset",
        ErrorType::InvalidHTTPHeader
        | ErrorType::H1Error
        | ErrorType::H2Error
        | ErrorType::InvalidH2
        | ErrorType::Custom("InvalidChunk")
        | ErrorType::Custom(INFORMATIONAL_FLOOD) => "invalid_response",
        _ => "other",
    })
}

/// The error type of an origin that keeps sending informational (1xx) responses.
pub const INFORMATIONAL_FLOOD: &str = "InformationalFlood";

/// Informational (1xx) responses relayed per request; an origin sending more gets a 502, so it
/// cannot hold a request open forever with a trickle of `100 Continue`s.
pub const MAX_INFORMATIONAL: usize = 8;

/// Count one more informational head for a request (`seen` so far); an upstream error once
/// there were more than `MAX_INFORMATIONAL`.
pub fn count_informational(seen: &mut usize) -> Result<(), Box<Error>> {
    *seen += 1;
    if *seen <= MAX_INFORMATIONAL {
        return Ok(());
    }
    let mut e = Error::explain(
        ErrorType::Custom(INFORMATIONAL_FLOOD),
        format!("more than {MAX_INFORMATIONAL} informational responses"),
    );
    e.as_up();
    Err(e)
}

/// Refuse an origin's response head with an upstream error (the client gets a 502, nothing is
/// stored and no byte of it is relayed) when its status is outside 100–599 (RFC 9110 §15: `http`
/// parses anything up to 999), or when it is a `101` and the client's request was no upgrade
/// (`upgrade_requested`): its "tunnel" bytes would reach a client that expects a response.
pub fn refuse_status(head: &ResponseHeader, upgrade_requested: bool) -> Result<(), Box<Error>> {
    let status = head.status.as_u16();
    let why = if !(100..=599).contains(&status) {
        format!("origin status {status} is outside 100-599")
    } else if head.status == http::StatusCode::SWITCHING_PROTOCOLS && !upgrade_requested {
        "origin switched protocols on a request that asked for no upgrade".to_string()
    } else {
        return Ok(());
    };
    let mut e = Error::explain(ErrorType::InvalidHTTPHeader, why);
    e.as_up();
    Err(e)
}

/// `error_while_proxy`: count an origin failure by kind, turn a cut by the whole-response
/// deadline into a timeout, and retry only as Pingora's own policy allows: idempotent requests
/// whose body is still buffered, on a failed connection that was a reused one, never past the
/// deadline. Such a retry may go to the same backend, on another connection.
pub fn while_proxying(
    peer: &HttpPeer,
    session: &Session,
    e: Box<Error>,
    ctx: &mut RequestCtx,
    client_reused: bool,
) -> Box<Error> {
    // a retry resends the request body only while all of it is still buffered
    let resendable =
        session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated();
    while_proxying_for(peer, resendable, e, ctx, client_reused)
}

/// [`while_proxying`] for a request that could (`resendable`: idempotent, its body still
/// buffered) or could not be sent again.
pub fn while_proxying_for(
    peer: &HttpPeer,
    resendable: bool,
    e: Box<Error>,
    ctx: &mut RequestCtx,
    client_reused: bool,
) -> Box<Error> {
    // a connection cut by the whole-response deadline is a timeout, never retried
    let over_deadline = ctx.deadline.as_mut().and_then(|d| {
        d.disarm();
        d.expired(Instant::now()).then_some(d)
    });
    let e = match over_deadline {
        Some(d) => d.error(Some(e)),
        None => e,
    };
    if let (Some(kind), Some(route)) = (kind(&e), ctx.route.as_ref()) {
        log::debug!("pool {}: upstream {kind}: {e}", route.pool.name());
        METRICS
            .upstream_errors
            .with_label_values(&[route.pool.name(), kind])
            .inc();
    }
    let mut e = e.more_context(format!("Peer: {peer}"));
    if ctx
        .deadline
        .as_ref()
        .is_some_and(|d| d.expired(Instant::now()))
        || !resendable
    {
        e.set_retry(false);
    } else {
        e.retry.decide_reuse(client_reused);
        if client_reused && e.retry() {
            // A pooled connection the origin had closed (the race between its keep-alive
            // timeout and our next request) says nothing against the backend: the retry may
            // pick it again, and gets a fresh connection once the stale idle ones are used up.
            ctx.tried.pop();
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(t: ErrorType) -> Box<Error> {
        let mut e = Error::new(t);
        e.as_up();
        e
    }

    #[test]
    fn kinds() {
        assert_eq!(kind(&up(ErrorType::ReadTimedout)), Some("timeout"));
        assert_eq!(kind(&up(ErrorType::ConnectionClosed)), Some("closed"));
        assert_eq!(
            kind(&up(ErrorType::Custom("PrematureBodyEnd"))),
            Some("closed")
        );
        assert_eq!(kind(&up(ErrorType::ReadError)), Some("reset"));
        assert_eq!(
            kind(&up(ErrorType::InvalidHTTPHeader)),
            Some("invalid_response")
        );
        assert_eq!(
            kind(&up(ErrorType::Custom("InvalidChunk"))),
            Some("invalid_response")
        );
        assert_eq!(kind(&up(ErrorType::InternalError)), Some("other"));
        let mut seen = 0;
        for _ in 0..MAX_INFORMATIONAL {
            assert!(count_informational(&mut seen).is_ok());
        }
        let flood = count_informational(&mut seen).expect_err("one too many");
        assert_eq!(kind(&flood), Some("invalid_response"));
        let head = |status: u16| ResponseHeader::build(status, None).expect("head");
        for status in [100, 103, 200, 599] {
            assert!(refuse_status(&head(status), false).is_ok(), "{status}");
        }
        assert!(refuse_status(&head(101), true).is_ok());
        for (status, upgrade) in [(600, false), (999, true), (101, false)] {
            let refused = refuse_status(&head(status), upgrade).expect_err("refused");
            assert_eq!(kind(&refused), Some("invalid_response"), "{status}");
        }
        let mut down = Error::new(ErrorType::ReadError);
        down.as_down();
        assert_eq!(kind(&down), None);
    }
}
