//! The hit lane is a shortcut, never a second opinion: the same requests, sent to a verge with
//! the lane on and to one with `cache.hit_lane: false`, get the same bytes back, except `Date`
//! (the lane keeps the stored one, Pingora's writer stamps the time of sending), and the two
//! origins receive the same requests.

use crate::support::wire::Conn;
use crate::support::{Cache, Config, Origin, Pool, Route, RouteCache, Verge};
use std::time::Duration;

/// A verge with the lane on or off, in front of its own origin (each origin numbers its
/// responses itself, so both verges store the same bodies).
async fn verge(lane: bool) -> (Verge, Origin) {
    let o = Origin::start("o").await;
    for path in ["/p", "/p?b=2&a=1", "/pub/x", "/q"] {
        o.set_headers(
            path,
            &[("cache-control", "max-age=600"), ("etag", "\"v1\"")],
        );
    }
    let v = Verge::start(
        &Config::new()
            .cache(Cache::new().set("hit_lane", if lane { "true" } else { "false" }))
            .pool(Pool::new("p", &[o.addr]))
            .route(
                Route::to("p")
                    .name("public")
                    .path("/pub")
                    .cache(RouteCache::new().public()),
            )
            .route(Route::to("p").name("private").cache(RouteCache::new())),
    )
    .await;
    (v, o)
}

/// The raw response to `request` on a new connection, with its `Date` line taken out.
async fn exchange(v: &Verge, request: &str) -> String {
    let head_only = request.starts_with("HEAD ");
    let mut c = Conn::open(v.http, None).await;
    c.send(request.as_bytes()).await;
    let parsed = c.read_response(Duration::from_secs(5), head_only).await;
    assert!(parsed.is_complete(), "{request:?}: {parsed:?}");
    let text = String::from_utf8_lossy(&c.bytes).into_owned();
    text.split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// `text` with the digits of `Age` and of `ttl=` blanked: the only parts that depend on the
/// second at which each verge answered.
fn without_clock(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut after = "";
    for (i, ch) in text.char_indices() {
        if ch.is_ascii_digit() && (after.ends_with("Age: ") || after.ends_with("ttl=")) {
            continue;
        }
        out.push(ch);
        after = &text[i.saturating_sub(4)..=i];
    }
    out
}

#[tokio::test]
async fn hit_lane_parity() {
    let (on, on_origin) = verge(true).await;
    let (off, off_origin) = verge(false).await;
    let fill = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x.test\r\n\r\n");
    for path in ["/p", "/p?b=2&a=1", "/pub/x", "/q"] {
        let (a, b) = (
            exchange(&on, &fill(path)).await,
            exchange(&off, &fill(path)).await,
        );
        assert_eq!(a, b, "the fill of {path}");
        assert!(a.contains("fwd=uri-miss; stored"), "{a}");
    }
    let requests = [
        "GET /p HTTP/1.1\r\nHost: x.test\r\n\r\n",
        "HEAD /p HTTP/1.1\r\nHost: X.Test\r\n\r\n",
        "GET /p HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n",
        "GET /p?b=2&a=1 HTTP/1.1\r\nHost: x.test\r\nAccept: */*\r\n\r\n",
        // the cache rules both paths apply
        "GET /p HTTP/1.1\r\nHost: x.test\r\ncache-control: max-stale=30\r\n\r\n",
        "GET /p HTTP/1.1\r\nHost: x.test\r\nCache-Control: no-store\r\n\r\n",
        "GET /p HTTP/1.1\r\nHost: x.test\r\nCookie: s=1\r\n\r\n",
        "GET /p HTTP/1.1\r\nHost: x.test\r\nAuthorization: Basic eDp5\r\n\r\n",
        "GET /pub/x HTTP/1.1\r\nHost: x.test\r\nAuthorization: Basic eDp5\r\n\r\n",
        "GET /pub/x HTTP/1.1\r\nHost: x.test\r\nCookie: s=1\r\n\r\n",
        "GET /stale HTTP/1.1\r\nHost: x.test\r\nPragma: no-cache\r\n\r\n",
        // what changes the shape of the answer
        "GET /p HTTP/1.1\r\nHost: x.test\r\nIf-None-Match: \"v1\"\r\n\r\n",
        "GET /p HTTP/1.1\r\nHost: x.test\r\nRange: bytes=0-3\r\n\r\n",
    ];
    for request in requests {
        // Age and ttl count whole seconds on each verge's clock, from when each stored its
        // copy: a pair of answers that straddles a second is asked again, and on a loaded
        // machine the two copies can be a second apart for good, so after a few tries only
        // the clock may differ; any other difference fails at once.
        let mut tries = 0;
        loop {
            let (a, b) = (exchange(&on, request).await, exchange(&off, request).await);
            if a == b {
                break;
            }
            tries += 1;
            assert!(
                without_clock(&a) == without_clock(&b),
                "{request:?}\nlane on:\n{a}\nlane off:\n{b}"
            );
            if tries == 5 {
                break;
            }
        }
    }
    for path in ["/p", "/p?b=2&a=1", "/pub/x", "/q"] {
        assert_eq!(
            on_origin.hits(path),
            off_origin.hits(path),
            "{path} at the origin"
        );
    }
    let lane_on = on.metrics().await.sum("verge_cache_fast_hits_total", &[]);
    let lane_off = off.metrics().await.sum("verge_cache_fast_hits_total", &[]);
    assert!(
        lane_on >= 4.0,
        "the lane answered the plain hits: {lane_on}"
    );
    assert_eq!(lane_off, 0.0, "hit_lane: false");
}

#[test]
fn only_the_clock_is_blanked() {
    assert_eq!(
        without_clock("Age: 12\r\ncache-status: verge; hit; ttl=599\r\nX-N: 5"),
        "Age: \r\ncache-status: verge; hit; ttl=\r\nX-N: 5"
    );
}
