//! The front door's hit lane (`src/proxy/hit_lane.rs`): a plain GET or HEAD for a fresh stored
//! response is answered without Pingora's phases, with what the full path would send (and the
//! stored `Date`); everything else still goes the full way.

use crate::support::fetch::send;
use crate::support::wire::{exchange, Conn};
use crate::support::{
    cached_verge, eventually, fetch, fetch_with, Config, Got, Limits, Listener, Origin, Pool,
    Route, RouteCache, Verge,
};
use std::time::{Duration, SystemTime};

async fn fast_hits(v: &Verge) -> f64 {
    v.metrics().await.sum("verge_cache_fast_hits_total", &[])
}

/// (fast hits, hit lookups, collapsed lock waits) in one scrape.
async fn counts(v: &Verge) -> (f64, f64, f64) {
    let m = v.metrics().await;
    (
        m.sum("verge_cache_fast_hits_total", &[]),
        m.sum("verge_cache_lookups_total", &[("result", "hit")]),
        m.sum("verge_cache_lock_waits_total", &[("outcome", "collapsed")]),
    )
}

/// Metrics are counted after each response goes out: wait until `want` shows.
async fn wait_for(v: &Verge, want_fast: f64, want_hits: f64) {
    crate::support::assert_eventually(
        Duration::from_secs(5),
        &format!("(fast hits, hits, collapsed), want fast {want_fast} and hits {want_hits}"),
        || counts(v),
        |(fast, hits, _)| *fast == want_fast && *hits == want_hits,
    )
    .await;
}

#[tokio::test]
async fn a_plain_hit_is_answered_by_the_front_door_as_the_full_path_would() {
    let o = Origin::start("o").await;
    let origin_date = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(100));
    o.set_headers(
        "/d",
        &[
            ("cache-control", "max-age=600"),
            ("date", &origin_date),
            ("surrogate-key", "t1"),
            ("x-extra", "yes"),
        ],
    );
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let miss = fetch(&v, "/d", &[]).await;
    assert!(
        miss.cache_status.contains("fwd=uri-miss"),
        "{}",
        miss.cache_status
    );
    let fast = fetch(&v, "/d", &[]).await;
    wait_for(&v, 1.0, 1.0).await;
    // a precondition that does not match: still a 200 hit, through Pingora's phases
    let full = fetch(&v, "/d", &[("if-none-match", "\"other\"")]).await;
    wait_for(&v, 1.0, 2.0).await;
    assert_eq!(o.hits("/d"), 1);

    for got in [&fast, &full] {
        assert_eq!(got.status, 200);
        assert_eq!(got.body, miss.body);
        assert!(
            got.cache_status.starts_with("verge; hit; ttl="),
            "{}",
            got.cache_status
        );
        assert!(
            got.age.is_some_and(|a| a >= 100),
            "Age counts the origin's Date: {:?}",
            got.age
        );
        assert_eq!(got.header("accept-ranges"), Some("bytes"));
        assert_eq!(got.header("x-extra"), Some("yes"));
        assert_eq!(got.header("surrogate-key"), None, "tags stay private");
        assert_eq!(got.header("connection"), Some("keep-alive"));
    }
    let names = |h: &reqwest::header::HeaderMap| {
        let mut n: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&fast.headers), names(&full.headers));
    // RFC 9111 §4: the stored Date goes out; the full path's writer stamps the time of sending
    assert_eq!(fast.header("date"), Some(origin_date.as_str()));

    // HEAD: the same head, no body
    let head = fetch_with(&v, reqwest::Method::HEAD, "/d", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), fast.header("content-length"));
    wait_for(&v, 2.0, 3.0).await;
    assert_eq!(o.hits("/d"), 1);

    // request directives decide as on the full path: these leave the fresh entry as it is
    let plain = fetch(
        &v,
        "/d",
        &[("cache-control", "max-age=3600"), ("pragma", "x")],
    )
    .await;
    assert!(
        plain.cache_status.starts_with("verge; hit"),
        "{}",
        plain.cache_status
    );
    wait_for(&v, 3.0, 4.0).await;
    // and this one refuses it (Age ≥ 100 > 10): the full path fetches it again
    let refused = fetch(&v, "/d", &[("cache-control", "max-age=10")]).await;
    assert!(
        refused.cache_status.contains("fwd=request"),
        "{}",
        refused.cache_status
    );
    assert_eq!(o.hits("/d"), 2);
    assert_eq!(fast_hits(&v).await, 3.0);
}

/// Read one whole response off `c` and take it off the connection's bytes; returns its head,
/// lowercased.
async fn read_response(c: &mut Conn) -> String {
    let got = c.read_response(Duration::from_secs(5), false).await;
    let r = got.response().filter(|r| r.complete).expect("an answer");
    assert!(r.header("content-length").is_some(), "{}", r.head);
    assert_eq!(c.bytes.len(), r.len, "nothing after the response");
    let head = r.head.to_lowercase();
    c.bytes.clear();
    head
}

#[tokio::test]
async fn the_keep_alive_limit_and_connection_close_hold_on_the_hit_lane() {
    let o = Origin::start("o").await;
    o.set_headers("/k", &[("cache-control", "max-age=600")]);
    let v = Verge::start(
        &Config::new()
            .listener(Listener::new().limits(Limits::new().keepalive_requests(3)))
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p").cache(RouteCache::new())),
    )
    .await;
    fetch(&v, "/k", &[]).await;
    let one = "GET /k HTTP/1.1\r\nHost: c.test\r\n\r\n";
    // four requests written at once would be pipelined; the lane answers only a head that
    // arrived alone, so send them one by one on one connection
    let mut c = Conn::open(v.http, None).await;
    let mut heads = Vec::new();
    for _ in 0..3 {
        c.send(one.as_bytes()).await;
        heads.push(read_response(&mut c).await);
    }
    assert!(heads[0].contains("connection: keep-alive"), "{}", heads[0]);
    assert!(heads[1].contains("connection: keep-alive"), "{}", heads[1]);
    assert!(
        heads[2].contains("connection: close"),
        "the third of 3: {}",
        heads[2]
    );
    assert!(
        c.read_to_close(Duration::from_secs(5)).await && c.bytes.is_empty(),
        "closed after the limit"
    );

    // a client that asks to close gets that
    let c = exchange(
        v.http,
        b"GET /k HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let text = String::from_utf8_lossy(&c.bytes).to_lowercase();
    assert!(c.closed && text.contains("connection: close"), "{text}");
    wait_for(&v, 4.0, 4.0).await;
    assert_eq!(o.hits("/k"), 1);
}

#[tokio::test]
async fn what_the_lane_cannot_answer_exactly_goes_the_full_way() {
    let o = Origin::start("o").await;
    o.set_headers("/e", &[("cache-control", "max-age=600")]);
    o.set_headers(
        "/v",
        &[("cache-control", "max-age=600"), ("vary", "accept")],
    );
    o.set_headers_stale(
        "/s",
        &[("cache-control", "max-age=1, stale-while-revalidate=60")],
    );
    let v = Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[o.addr]))
            .route(
                Route::to("p")
                    .path("/e")
                    .cache(RouteCache::new())
                    .set("response_headers", "{set: {x-edge: on}}"),
            )
            .route(Route::to("p").cache(RouteCache::new())),
    )
    .await;
    for path in ["/e", "/v", "/s"] {
        fetch(&v, path, &[]).await;
    }
    // a route that edits response headers
    let edited = fetch(&v, "/e", &[]).await;
    assert!(
        edited.cache_status.starts_with("verge; hit"),
        "{}",
        edited.cache_status
    );
    assert_eq!(edited.header("x-edge"), Some("on"));
    // a response with Vary
    let varied = fetch(&v, "/v", &[]).await;
    assert!(
        varied.cache_status.starts_with("verge; hit"),
        "{}",
        varied.cache_status
    );
    // a stale entry, served while it is refreshed
    let stale = fetch(&v, "/s", &[]).await;
    assert!(
        stale.cache_status.contains("fwd=stale"),
        "{}",
        stale.cache_status
    );
    // a cookie on a route that is not `public`: bypass
    let cookie = fetch(&v, "/v", &[("cookie", "a=1")]).await;
    assert!(
        cookie.cache_status.contains("detail=cookie"),
        "{}",
        cookie.cache_status
    );
    assert_eq!(fast_hits(&v).await, 0.0);
}

/// GET `path` (host `c.test`) on a task of its own, and once the origin has seen it (that fetch
/// is in flight, its request the cache lock's writer), `n` more GETs of it at once. Returns the
/// first request's (status, body) task and what the others got.
async fn a_fetch_then_requests_during_it(
    v: &Verge,
    o: &Origin,
    path: &str,
    n: usize,
) -> (tokio::task::JoinHandle<(u16, String)>, Vec<Got>) {
    let (addr, owned_path) = (v.http, path.to_string());
    let first = tokio::spawn(async move {
        let g = send(addr, reqwest::Method::GET, Some("c.test"), &owned_path, &[]).await;
        (g.status, g.body)
    });
    assert!(eventually(Duration::from_secs(5), || async { o.hits(path) == 1 }).await);
    let during = (0..n).map(|_| fetch(v, path, &[]));
    (first, futures::future::join_all(during).await)
}

#[tokio::test]
async fn requests_that_arrive_during_a_fetch_wait_in_the_lane_and_are_answered_there() {
    let o = Origin::start("o").await;
    o.set_headers("/w", &[("cache-control", "max-age=600")]);
    o.set_delay_ms(1500);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let (leader, got) = a_fetch_then_requests_during_it(&v, &o, "/w", 10).await;
    let (_, body) = leader.await.expect("leader");
    for g in &got {
        assert_eq!(g.status, 200);
        assert_eq!(g.body, body);
        assert!(
            g.cache_status.starts_with("verge; hit") && g.cache_status.contains("detail=collapsed"),
            "{}",
            g.cache_status
        );
    }
    assert_eq!(o.hits("/w"), 1);
    // each waiter is answered by the lane from the stored entry, or, when it wakes to the
    // response still streaming in, handed to Pingora to stream it: collapsed either way
    crate::support::assert_eventually(
        Duration::from_secs(5),
        "(fast hits, hits, collapsed), want 10 hits and 10 collapsed",
        || counts(&v),
        |(_, hits, collapsed)| *collapsed == 10.0 && *hits == 10.0,
    )
    .await;
    // waiters held in Pingora's lock (no lane) could never be answered by the lane
    assert!(fast_hits(&v).await >= 1.0, "the lane answered none of them");
}

#[tokio::test]
async fn a_lane_waiter_for_an_uncacheable_answer_goes_to_the_origin_itself() {
    let o = Origin::start("o").await;
    o.set_headers("/n", &[("cache-control", "no-store")]);
    o.set_delay_ms(800);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let (first, got) = a_fetch_then_requests_during_it(&v, &o, "/n", 3).await;
    assert_eq!(first.await.expect("first").0, 200);
    for g in &got {
        assert_eq!(g.status, 200);
        assert!(!g.cache_status.contains("; hit"), "{}", g.cache_status);
    }
    assert_eq!(o.hits("/n"), 4, "nothing stored: each waiter fetched");
    assert_eq!(fast_hits(&v).await, 0.0);
}
