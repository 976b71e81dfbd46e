//! Origins that misbehave (`support/raw_origin.rs`'s `Fault`s), seen from a client of verge.
//!
//! For every fault the suite checks four things:
//! 1. what the client gets: a complete `502`/`504` with verge's short plain-text body when the
//!    origin failed before its response head was usable, or, once a response head has gone out,
//!    a response the client can tell is cut (fewer bytes than `Content-Length`, or no last
//!    chunk) — never a complete-looking response that the origin did not fully send;
//! 2. that verge stays up and answers the next request;
//! 3. that nothing was stored: the same cacheable URL, asked again once the origin behaves,
//!    reaches the origin again (its request count goes up) and is then a hit;
//! 4. `verge_upstream_errors_total` names the failure.
//!
//! The cache lock is held up to 60 s in these configs (`lock_timeout`, `lock_wait`), so a
//! fault that left the lock of its URL taken would make the follow-up request outlast the
//! client's 10 s timeout and fail the test.
//!
//! Expectations per fault and why:
//! - close before any response, reset mid-head, garbage status line, a head over Pingora's
//!   1 MiB limit, 300 header fields (Pingora parses at most 256), two different
//!   `Content-Length`s: 502, since there is no usable response to pass on (RFC 9112 §6.3 makes
//!   conflicting lengths an unrecoverable framing error).
//! - a response head dripped slower than the route's read timeout, or no answer at all: 504.
//! - reset or clean close in the middle of a `Content-Length` body, a chunked body cut before
//!   its last chunk, a body dripped slower than the read timeout: the head has already been
//!   sent, so the client gets a truncated body and a closed connection.
//! - an invalid chunk size: 502 if verge had not sent the head yet, else a truncated body.
//! - `Content-Length` together with `Transfer-Encoding: chunked`: Pingora removes the
//!   `Content-Length` before any verge hook sees the head (RFC 9112 §6.3 lets a proxy do
//!   that), so verge forwards the chunked reading; the bytes after the last chunk (a
//!   well-formed `POISON` response) must never be served, not to this client and not on a
//!   reused upstream connection.
//! - a flood of `100 Continue` heads: verge gives up after a few informational heads with a
//!   502, instead of relaying them for as long as the origin keeps sending.
//! - a body on a `200` to `HEAD` (on a route that does not cache, so the origin sees `HEAD`):
//!   the client gets the head only, and the body (itself a complete response) is never read
//!   as the answer to a later request.
//! - with `stale-if-error`, a failure before the response head serves the stale copy instead;
//!   a failure after the origin's head went out cannot (the client sees that response cut
//!   short), and leaves the stale copy as it was. A flood of `100 Continue`s gets a 502 even
//!   then, because the first informational heads already went to the client.

use crate::support::raw_origin::assert_nothing_stored;
use crate::support::wire::{excerpt, exchange as send_raw, Parsed, Response};
use crate::support::{
    fetch, Cache, Config, Fault, Pool, RawOrigin, Route, RouteCache, Timeouts, Verge,
};
use std::time::Duration;

/// verge in front of `o`: host `c.test` caches (obeying the origin), host `n.test` does not;
/// upstream read timeout 1 s.
async fn verge_for(o: &RawOrigin) -> Verge {
    Verge::start(
        &Config::new()
            .cache(Cache::new().lock("60s", "60s"))
            .pool(Pool::new("bad", &[o.addr]).timeouts(Timeouts::new().read("1s")))
            .route(
                Route::to("bad")
                    .name("cached")
                    .hosts(&["c.test"])
                    .cache(RouteCache::new()),
            )
            .route(Route::to("bad").name("plain").hosts(&["n.test"])),
    )
    .await
}

/// One HTTP/1.1 response as a client reads it off the wire, until the connection closed.
enum Wire {
    /// The connection closed with what [`Parsed`] says (a response complete by its framing or
    /// cut short, no byte, or no response head).
    Closed(Parsed),
    /// The connection did not close within the deadline.
    StillOpen(String),
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wire::Closed(p) => p.fmt(f),
            Wire::StillOpen(t) => write!(f, "StillOpen({})", excerpt(t.as_bytes())),
        }
    }
}

impl Wire {
    fn response(&self) -> Option<&Response> {
        match self {
            Wire::Closed(p) => p.response(),
            Wire::StillOpen(_) => None,
        }
    }

    fn status(&self) -> Option<u16> {
        self.response().map(|r| r.status)
    }

    /// The response, when its framing says it is whole.
    fn complete(&self) -> Option<&Response> {
        self.response().filter(|r| r.complete)
    }

    /// The response, when it is cut short of what its framing announced.
    fn truncated(&self) -> Option<&Response> {
        self.response().filter(|r| !r.complete)
    }
}

/// Send one request (`Connection: close`) on a new connection and read until verge closes it
/// or 15 s pass.
async fn exchange(v: &Verge, method: &str, host: &str, path: &str) -> Wire {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let c = send_raw(v.http, req.as_bytes(), Duration::from_secs(15)).await;
    if !c.closed {
        return Wire::StillOpen(String::from_utf8_lossy(&c.bytes).into_owned());
    }
    Wire::Closed(c.response(method == "HEAD"))
}

/// The response is verge's own plain-text error with `status`.
fn assert_plain_error(w: &Wire, status: u16) {
    match w.complete() {
        Some(r) if r.status == status => {
            let head = &r.head;
            assert!(
                r.header("content-type")
                    .is_some_and(|v| v.starts_with("text/plain")),
                "{head}"
            );
            assert!(r.headers("cache-control").contains(&"no-store"), "{head}");
            assert!(
                r.body.starts_with(b"verge: "),
                "{}",
                String::from_utf8_lossy(&r.body)
            );
        }
        _ => panic!("expected verge's own {status}, got {w:?}"),
    }
}

/// A 200 the client can tell is cut short, whose body bytes are all `filler` (what the origin
/// sent): nothing of verge's own was mixed into it.
fn assert_truncated(w: &Wire, filler: u8) {
    match w.truncated() {
        Some(r) if r.status == 200 => assert!(
            r.body.iter().all(|b| *b == filler),
            "only the origin's bytes: {w:?}"
        ),
        _ => panic!("expected a 200 the client can tell is cut short, got {w:?}"),
    }
}

/// `verge_upstream_errors_total{pool="bad",kind}` reached at least 1.
async fn assert_upstream_error_counted(v: &Verge, kind: &str) {
    let m = v.metrics().await;
    let labels = [("kind", kind), ("pool", "bad")];
    assert!(
        m.value("verge_upstream_errors_total", &labels)
            .is_some_and(|n| n != 0.0),
        "verge_upstream_errors_total{labels:?} missing in:\n{}",
        m.text
            .lines()
            .filter(|l| l.starts_with("verge_upstream"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Run `fault` on a cacheable URL and check the client sees verge's own `status`, nothing is
/// stored, and the failure is counted as `kind`.
async fn fault_gives_error(fault: Fault, status: u16, kind: &str) {
    let o = RawOrigin::start().await;
    let v = verge_for(&o).await;
    let path = "/f";
    o.set(path, fault);
    let w = exchange(&v, "GET", "c.test", path).await;
    assert_plain_error(&w, status);
    assert_eq!(
        o.hits(path),
        1,
        "one attempt, no retry after a sent request"
    );
    assert_upstream_error_counted(&v, kind).await;
    assert_nothing_stored(&v, &o, path).await;
}

/// Run `fault` on a cacheable URL and check the client sees a cut 200, nothing is stored, and
/// the failure is counted as `kind`.
async fn fault_gives_truncated(fault: Fault, filler: u8, kind: &str) {
    let o = RawOrigin::start().await;
    let v = verge_for(&o).await;
    let path = "/t";
    o.set(path, fault);
    let w = exchange(&v, "GET", "c.test", path).await;
    assert_truncated(&w, filler);
    assert_upstream_error_counted(&v, kind).await;
    assert_nothing_stored(&v, &o, path).await;
}

#[tokio::test]
async fn origin_closing_before_any_response_gives_502() {
    fault_gives_error(Fault::CloseBeforeResponse, 502, "closed").await;
}

#[tokio::test]
async fn origin_reset_mid_headers_gives_502() {
    fault_gives_error(Fault::ResetMidHeaders, 502, "reset").await;
}

#[tokio::test]
async fn garbage_status_line_gives_502() {
    fault_gives_error(Fault::Garbage, 502, "invalid_response").await;
}

#[tokio::test]
async fn response_head_over_the_size_limit_gives_502() {
    fault_gives_error(Fault::OversizedHead, 502, "invalid_response").await;
}

#[tokio::test]
async fn response_with_too_many_header_fields_gives_502() {
    fault_gives_error(Fault::ManyHeaders, 502, "invalid_response").await;
}

#[tokio::test]
async fn conflicting_content_lengths_give_502() {
    fault_gives_error(Fault::ConflictingContentLength, 502, "invalid_response").await;
}

#[tokio::test]
async fn response_head_dripped_slower_than_the_read_timeout_gives_504() {
    fault_gives_error(Fault::DripHead, 504, "timeout").await;
}

#[tokio::test]
async fn origin_that_never_answers_gives_504() {
    fault_gives_error(Fault::NeverRespond, 504, "timeout").await;
}

#[tokio::test]
async fn informational_flood_gives_502() {
    fault_gives_error(Fault::InformationalFlood, 502, "invalid_response").await;
}

#[tokio::test]
async fn reset_mid_body_is_seen_truncated_and_not_stored() {
    fault_gives_truncated(Fault::ResetMidBody, b'x', "reset").await;
}

#[tokio::test]
async fn short_body_then_close_is_seen_truncated_and_not_stored() {
    fault_gives_truncated(Fault::ShortBody, b'x', "closed").await;
}

#[tokio::test]
async fn chunked_body_cut_before_its_last_chunk_is_seen_truncated_and_not_stored() {
    fault_gives_truncated(Fault::ChunkedThenClose, b'y', "closed").await;
}

#[tokio::test]
async fn body_dripped_slower_than_the_read_timeout_is_seen_truncated_and_not_stored() {
    fault_gives_truncated(Fault::DripBody, b'z', "timeout").await;
}

#[tokio::test]
async fn invalid_chunk_size_is_an_error_or_truncated_and_not_stored() {
    let o = RawOrigin::start().await;
    let v = verge_for(&o).await;
    o.set("/c", Fault::BadChunkSize);
    let w = exchange(&v, "GET", "c.test", "/c").await;
    match w.status() {
        Some(502) => assert_plain_error(&w, 502),
        _ => assert_truncated(&w, b'h'),
    }
    assert_upstream_error_counted(&v, "invalid_response").await;
    assert_nothing_stored(&v, &o, "/c").await;
}

#[tokio::test]
async fn content_length_with_chunked_never_serves_what_follows_the_last_chunk() {
    let o = RawOrigin::start().await;
    let v = verge_for(&o).await;
    o.set("/cl-te", Fault::ContentLengthAndChunked);
    let w = exchange(&v, "GET", "c.test", "/cl-te").await;
    match w.complete().map(|r| r.status) {
        Some(502) => assert_plain_error(&w, 502),
        Some(200) => assert_eq!(
            w.complete().map(|r| r.body.as_slice()),
            Some(&b"hello"[..]),
            "the chunked reading, nothing after it"
        ),
        _ => panic!("unexpected {w:?}"),
    }
    // The next requests (same origin, maybe a pooled connection) never see the poison.
    for path in ["/next1", "/next2"] {
        let g = fetch(&v, path, &[]).await;
        assert_eq!(g.status, 200);
        assert_eq!(g.body, format!("good {path} #1\n"));
    }
}

#[tokio::test]
async fn body_on_a_head_response_is_never_read_as_the_next_response() {
    let o = RawOrigin::start().await;
    let v = verge_for(&o).await;
    o.set("/h", Fault::BodyOnHead);
    let w = exchange(&v, "HEAD", "n.test", "/h").await;
    match w.complete() {
        Some(r) if r.status == 200 => assert!(
            r.body.is_empty(),
            "no body on HEAD: {}",
            String::from_utf8_lossy(&r.body)
        ),
        _ => panic!("unexpected {w:?}"),
    }
    assert!(
        o.heads("/h")[0].starts_with("HEAD /h "),
        "the origin saw HEAD"
    );
    for path in ["/after1", "/after2"] {
        let g = crate::support::get(&v, "n.test", path).await;
        assert_eq!(g.status, 200);
        assert_eq!(g.body, format!("good {path} #1\n"));
        assert_eq!(
            o.connections(),
            2,
            "{path}: a new connection after the HEAD one, then that one reused"
        );
    }
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_copy_when_the_origin_misbehaves() {
    let o = RawOrigin::start().await;
    o.set_cache_control("max-age=1, stale-if-error=600");
    // stored already stale: an Age over its lifetime
    o.set_age(Some(2));
    let v = verge_for(&o).await;
    let first = fetch(&v, "/s", &[]).await;
    assert_eq!(first.body, "good /s #1\n");
    o.set_age(None);
    for fault in [
        Fault::CloseBeforeResponse,
        Fault::ResetMidHeaders,
        Fault::Garbage,
        Fault::ConflictingContentLength,
        Fault::DripHead,
        Fault::NeverRespond,
    ] {
        o.set("/s", fault);
        let before = o.hits("/s");
        let g = fetch(&v, "/s", &[]).await;
        assert_eq!(g.status, 200, "{fault:?}: {}", g.body);
        assert_eq!(g.body, first.body, "{fault:?}: the stale copy");
        // tried once; twice when the first try was on a pooled connection the origin closed
        // without a byte, which is retried once on a fresh one
        let tried = o.hits("/s") - before;
        let expected = if fault == Fault::CloseBeforeResponse {
            2
        } else {
            1
        };
        assert_eq!(tried, expected, "{fault:?}: the origin was tried");
    }
    // Once the origin's head has gone out, the stale copy can no longer be sent instead: the
    // client sees the new response cut short, and the stale copy stays, untouched.
    for (fault, filler) in [(Fault::ResetMidBody, b'x'), (Fault::ShortBody, b'x')] {
        o.set("/s", fault);
        assert_truncated(&exchange(&v, "GET", "c.test", "/s").await, filler);
    }
    o.set("/s", Fault::CloseBeforeResponse);
    let g = fetch(&v, "/s", &[]).await;
    assert_eq!((g.status, g.body), (200, first.body));
}
