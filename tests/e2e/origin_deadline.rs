//! The whole-response deadline (`timeouts.total`) against an origin that drips: one byte every
//! 100 ms, far inside the 5 s read timeout, forever. Without the deadline such an origin holds
//! a request (and its URL's cache lock) as long as it likes.
//!
//! - dripping before its response head is complete: the client gets verge's own 504 (or the
//!   stale copy, within stale-if-error), counted as `kind="timeout"`;
//! - dripping its body (with `Content-Length`, or close-delimited): the head has gone out, so
//!   the client sees the response cut and the connection closed; nothing is stored (a
//!   close-delimited body cut by the deadline would otherwise look complete);
//! - a route's `timeouts.total` overrides its pool's; a well-behaved origin is unaffected.

use crate::support::raw_origin::{assert_nothing_stored, cacheable_head, Script};
use crate::support::wire::{exchange as send_raw, Conn, Response};
use crate::support::{
    fetch, get, Cache, Config, Fault, Pool, RawOrigin, Route, RouteCache, Step, Timeouts, Verge,
};
use std::time::Duration;

const DRIP_EVERY: Duration = Duration::from_millis(100);

/// The status line, then a header value one byte per drip, never finishing the head.
fn drip_head() -> Script {
    vec![
        Step::Write(b"HTTP/1.1 200 OK\r\nX-Slow: ".to_vec()),
        Step::Repeat {
            bytes: b"h".to_vec(),
            every: DRIP_EVERY,
        },
    ]
    .into()
}

/// A cacheable 200 head at once (with `Content-Length: 100000`, or without, so the body ends
/// when the connection closes), then the body one byte per drip.
fn drip_body(content_length: bool) -> Script {
    Script::new(move |asked| {
        let framing = if content_length {
            "Content-Length: 100000\r\n"
        } else {
            "Connection: close\r\n"
        };
        vec![
            Step::Write(cacheable_head(asked, framing).into_bytes()),
            Step::Repeat {
                bytes: b"z".to_vec(),
                every: DRIP_EVERY,
            },
        ]
    })
}

/// verge in front of `o`: pool `drip` (read timeout 5 s, whole-response deadline 60 s);
/// host `c.test` caches and lowers the deadline to 1 s on its route, host `n.test` does not
/// cache and has the same 1 s.
async fn verge_for(o: &RawOrigin) -> Verge {
    let second = || Timeouts::new().total("1s");
    Verge::start(
        &Config::new()
            .cache(Cache::new().lock("60s", "60s"))
            .pool(Pool::new("drip", &[o.addr]).timeouts(Timeouts::new().read("5s").total("60s")))
            .route(
                Route::to("drip")
                    .name("cached")
                    .hosts(&["c.test"])
                    .cache(RouteCache::new())
                    .timeouts(second()),
            )
            .route(
                Route::to("drip")
                    .name("plain")
                    .hosts(&["n.test"])
                    .timeouts(second()),
            ),
    )
    .await
}

/// What came back for one request, read until verge closed the connection (at most 20 s):
/// the response as it stands, and whether the connection closed.
async fn exchange(v: &Verge, host: &str, path: &str) -> (Response, bool) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let c = send_raw(v.http, req.as_bytes(), Duration::from_secs(20)).await;
    let r = c
        .response(false)
        .response()
        .cloned()
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&c.bytes)));
    (r, c.closed)
}

/// `verge_upstream_errors_total{pool="drip"}` for `kind` (every kind: `None`).
async fn upstream_errors(v: &Verge, kind: Option<&str>) -> f64 {
    let m = v.metrics().await;
    match kind {
        Some(k) => m.sum(
            "verge_upstream_errors_total",
            &[("pool", "drip"), ("kind", k)],
        ),
        None => m.sum("verge_upstream_errors_total", &[("pool", "drip")]),
    }
}

async fn timeouts_counted(v: &Verge) -> f64 {
    upstream_errors(v, Some("timeout")).await
}

#[tokio::test]
async fn a_head_dripped_past_the_deadline_gets_504() {
    let o = RawOrigin::start().await;
    let v = verge_for(&o).await;
    o.set("/h", drip_head());
    for host in ["c.test", "n.test"] {
        let (r, closed) = exchange(&v, host, "/h").await;
        assert!(closed, "{host}: verge closed the connection");
        assert_eq!(r.status, 504, "{host}: {}", r.head);
        assert!(
            r.body.starts_with(b"verge: "),
            "{host}: verge's own answer: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(o.hits("/h"), 2, "one attempt each, no retry");
    assert!(timeouts_counted(&v).await >= 2.0);
    // the URL's cache lock was released: the next request is served at once
    assert_nothing_stored(&v, &o, "/h").await;
}

#[tokio::test]
async fn a_body_dripped_past_the_deadline_is_cut_and_not_stored() {
    let o = RawOrigin::start().await;
    let v = verge_for(&o).await;
    for (path, content_length) in [("/b", true), ("/cd", false)] {
        o.set(path, drip_body(content_length));
        let (r, closed) = exchange(&v, "c.test", path).await;
        assert!(closed, "{path}: verge closed the connection");
        assert_eq!(r.status, 200, "{path}: the head had gone out: {}", r.head);
        if r.header("content-length").is_none() {
            assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{path}");
        }
        let (data, complete) = (&r.body, r.complete);
        assert!(!complete, "{path}: the client can tell the response is cut");
        assert!(!data.is_empty(), "{path}: some body had been relayed");
        assert!(
            data.iter().all(|b| *b == b'z'),
            "{path}: only the origin's bytes"
        );
        assert_nothing_stored(&v, &o, path).await;
    }
    assert!(timeouts_counted(&v).await >= 2.0);
}

#[tokio::test]
async fn a_stale_copy_is_served_when_the_deadline_passes_before_the_head() {
    let o = RawOrigin::start().await;
    o.set_cache_control("max-age=0, stale-if-error=600");
    let v = verge_for(&o).await;
    let first = fetch(&v, "/s", &[]).await;
    assert_eq!(first.body, "good /s #1\n");
    o.set("/s", drip_head());
    let g = fetch(&v, "/s", &[]).await;
    assert_eq!((g.status, g.body.as_str()), (200, first.body.as_str()));
    assert_eq!(o.hits("/s"), 2, "the origin was tried");
}

#[tokio::test]
async fn a_well_behaved_origin_is_unaffected() {
    let o = RawOrigin::start().await;
    let v = verge_for(&o).await;
    // several requests on pooled connections, each well inside the deadline
    for i in 1..=5 {
        let g = get(&v, "n.test", &format!("/ok{i}")).await;
        assert_eq!(g.status, 200);
        assert_eq!(g.body, format!("good /ok{i} #1\n"));
    }
    // and after the deadline has long passed for the first of them, the pooled connections
    // still work (no timer outlived its request)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let g = get(&v, "n.test", "/ok1").await;
    assert_eq!(g.status, 200);
    assert_eq!(g.body, "good /ok1 #2\n");
    assert_eq!(
        upstream_errors(&v, None).await,
        0.0,
        "no connection was cut"
    );
}

#[tokio::test]
async fn an_open_websocket_outlives_the_deadline() {
    // a tunnel has no "whole response": after the 101 the deadline no longer applies
    let o = RawOrigin::start().await;
    o.set("/ws", Fault::WebSocketEcho);
    let v = Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[o.addr]).timeouts(Timeouts::new().total("1s")))
            .route(Route::to("p")),
    )
    .await;
    let mut s = Conn::open(v.http, None).await;
    s.send(
        b"GET /ws HTTP/1.1\r\nHost: w.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    let headed = s
        .read_until(Duration::from_secs(10), |c| {
            crate::support::wire::head_end(&c.bytes).is_some()
        })
        .await;
    assert!(
        headed,
        "head in time, connection open: {}",
        String::from_utf8_lossy(&s.bytes)
    );
    assert!(
        s.bytes.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&s.bytes)
    );
    // well past the deadline, the tunnel still echoes
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let head_len = crate::support::wire::head_end(&s.bytes).unwrap_or(0);
    s.bytes.drain(..head_len);
    s.send(b"ping").await;
    let echoed = s
        .read_until(Duration::from_secs(10), |c| c.bytes.len() >= 4)
        .await;
    assert!(echoed, "echo in time");
    assert_eq!(&s.bytes[..4], b"ping");
}
