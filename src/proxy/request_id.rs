//! Request ids (`routes[].request_id`): each request on such a route carries an
//! `X-Request-Id`, kept from the client only where the route trusts it, and the same id goes to
//! the origin, back to the client, into verge's own answers and into the access log.

use super::context::RequestCtx;
use crate::config::RequestIdSpec;
use once_cell::sync::Lazy;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// The field that carries the id, both ways.
pub const HEADER: &str = "x-request-id";

/// Longest id kept from a client.
const MAX_LEN: usize = 128;

/// Keys drawn at random once per process: ids are not guessable from one another.
static KEYS: Lazy<std::collections::hash_map::RandomState> =
    Lazy::new(std::collections::hash_map::RandomState::new);

/// Ids made so far: each one hashes a different number, so no two are alike.
static MADE: AtomicU64 = AtomicU64::new(0);

/// A new id: 32 lowercase hex digits (128 bits).
pub fn generate() -> String {
    let n = MADE.fetch_add(1, Ordering::Relaxed);
    let (a, b) = (KEYS.hash_one((n, 0u8)), KEYS.hash_one((n, 1u8)));
    format!("{a:016x}{b:016x}")
}

/// Whether a client's id may be kept: 1 to 128 letters, digits and `-_.:+/=@`. Pure.
pub fn well_formed(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(b))
}

/// The id of a request: the client's own when the route trusts it and it is well formed,
/// otherwise a new one.
pub fn for_request(spec: &RequestIdSpec, sent: Option<&http::HeaderValue>) -> String {
    match sent {
        Some(v) if spec.trust_client && well_formed(v.as_bytes()) => {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        }
        _ => generate(),
    }
}

/// Give the origin the request's id (replacing whatever the client sent).
pub fn set_upstream(upstream: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    if let Some(id) = &ctx.request_id {
        upstream.insert_header(HEADER, id.as_str())?;
    }
    Ok(())
}

/// Give the client the request's id.
pub fn set_response(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    if let Some(id) = &ctx.request_id {
        resp.insert_header(HEADER, id.as_str())?;
    }
    Ok(())
}

/// The text of an answer verge writes itself for a request with `id`: the id named on a line
/// of its own.
pub fn on_local_answer(text: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{text}\nrequest id: {id}"),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_new_unless_a_trusted_client_sent_a_good_one() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 32);
        assert!(well_formed(a.as_bytes()));
        assert_ne!(a, b);
        let sent = http::HeaderValue::from_static("abc-123");
        let trusted = RequestIdSpec { trust_client: true };
        assert_eq!(for_request(&trusted, Some(&sent)), "abc-123");
        assert_ne!(
            for_request(&RequestIdSpec::default(), Some(&sent)),
            "abc-123"
        );
        let bad = http::HeaderValue::from_static("a b");
        assert_ne!(for_request(&trusted, Some(&bad)), "a b");
        assert!(!well_formed(b""));
        assert!(!well_formed(&[b'a'; 129]));
        assert!(!well_formed(b"x;y"));
        assert!(well_formed(b"Root=1-5e8f:ab/cd+ef"));
    }

    #[test]
    fn local_answers_name_the_id() {
        assert_eq!(
            on_local_answer("verge: forbidden", Some("r1")),
            "verge: forbidden\nrequest id: r1"
        );
        assert_eq!(on_local_answer("x", None), "x");
    }
}
