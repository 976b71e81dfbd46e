//! The hit lane is a shortcut, never a second opinion: the same requests, sent to a verge with
//! the lane on and to one with `cache.hit_lane: false`, get the same bytes back, except `Date`
//! (the lane keeps the stored one, Pingora's writer stamps the time of sending), and the two
//! origins receive the same requests.

use crate::support::wire::Conn;
use crate::support::{Cache, Config, Origin, Pool, Route, RouteCache, Verge};
use pingora_core::protocols::http::compression::Algorithm;
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
    // on a compressing route: a text verge compresses as it stores it (no length), one the
    // origin sent compressed (with its length), and one too small to compress
    let cached = [("cache-control", "max-age=600"), ("etag", "\"z1\"")];
    o.set_headers("/z/text", &cached);
    o.set_body("/z/text", page());
    let mut gzipped = cached.to_vec();
    gzipped.push(("content-encoding", "gzip"));
    o.set_headers("/z/gz", &gzipped);
    o.set_body("/z/gz", gzip(&page()));
    o.set_headers("/z/small", &cached);
    o.set_body("/z/small", "tiny");
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
            .route(
                Route::to("p")
                    .name("compressed")
                    .path("/z")
                    .cache(RouteCache::new())
                    .set("compression", "{}"),
            )
            .route(Route::to("p").name("private").cache(RouteCache::new())),
    )
    .await;
    (v, o)
}

/// A text body of about 20 KB that compresses well.
fn page() -> Vec<u8> {
    (0..400)
        .map(|i| format!("<p>line {i}: the quick brown fox jumps over the lazy dog</p>\n"))
        .collect::<String>()
        .into_bytes()
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = Algorithm::Gzip.compressor(6).expect("gzip");
    encoder.encode(body, true).expect("compressed").to_vec()
}

/// The raw response to `request` on a new connection: its head as text with the `Date` line
/// taken out, and its body's bytes as sent (compressed ones included).
async fn exchange(v: &Verge, request: &str) -> (String, Vec<u8>) {
    let head_only = request.starts_with("HEAD ");
    let mut c = Conn::open(v.http, None).await;
    c.send(request.as_bytes()).await;
    let parsed = c.read_response(Duration::from_secs(5), head_only).await;
    assert!(parsed.is_complete(), "{request:?}: {parsed:?}");
    let end = c
        .bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(c.bytes.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&c.bytes[..end])
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    (head, c.bytes[end..].to_vec())
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

/// Every path the test fills on both verges.
const FILLED: [&str; 7] = [
    "/p",
    "/p?b=2&a=1",
    "/pub/x",
    "/q",
    "/z/text",
    "/z/gz",
    "/z/small",
];

#[tokio::test]
async fn hit_lane_parity() {
    let (on, on_origin) = verge(true).await;
    let (off, off_origin) = verge(false).await;
    let fill = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x.test\r\n\r\n");
    for path in FILLED {
        let (a, b) = (
            exchange(&on, &fill(path)).await,
            exchange(&off, &fill(path)).await,
        );
        assert_eq!(a, b, "the fill of {path}");
        assert!(a.0.contains("fwd=uri-miss; stored"), "{}", a.0);
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
        // stored compressed: as stored to a client that takes the coding, decoded for others
        "GET /z/text HTTP/1.1\r\nHost: x.test\r\nAccept-Encoding: br\r\n\r\n",
        "GET /z/text HTTP/1.1\r\nHost: x.test\r\nAccept-Encoding: gzip, br;q=0.5\r\n\r\n",
        "HEAD /z/text HTTP/1.1\r\nHost: x.test\r\nAccept-Encoding: *\r\n\r\n",
        "GET /z/text HTTP/1.1\r\nHost: x.test\r\nAccept-Encoding: gzip\r\n\r\n",
        "GET /z/text HTTP/1.1\r\nHost: x.test\r\n\r\n",
        "GET /z/text HTTP/1.1\r\nHost: x.test\r\nAccept-Encoding: br\r\nRange: bytes=0-9\r\n\r\n",
        "GET /z/gz HTTP/1.1\r\nHost: x.test\r\nAccept-Encoding: gzip, deflate, br\r\n\r\n",
        "GET /z/gz HTTP/1.1\r\nHost: x.test\r\nAccept-Encoding: x-gzip\r\nConnection: close\r\n\r\n",
        "GET /z/gz HTTP/1.1\r\nHost: x.test\r\nAccept-Encoding: gzip;q=0, br\r\n\r\n",
        "GET /z/small HTTP/1.1\r\nHost: x.test\r\nAccept-Encoding: br\r\n\r\n",
        "GET /z/small HTTP/1.1\r\nHost: x.test\r\n\r\n",
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
                without_clock(&a.0) == without_clock(&b.0) && a.1 == b.1,
                "{request:?}\nlane on:\n{}{}\nlane off:\n{}{}",
                a.0,
                String::from_utf8_lossy(&a.1),
                b.0,
                String::from_utf8_lossy(&b.1)
            );
            if tries == 5 {
                break;
            }
        }
    }
    for path in FILLED {
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
    let coded = on
        .metrics()
        .await
        .sum("verge_cache_fast_hits_total", &[("route", "compressed")]);
    assert!(
        coded >= 7.0,
        "the lane answered the compressing route's hits, but for the decoded ones: {coded}"
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
