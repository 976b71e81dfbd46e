//! Background refreshes of stored responses: stale-while-revalidate for HTTP/2 clients (the
//! refresh subrequest is built from the client's head), and XFetch early refresh of fresh hits.

use crate::support::fetch::{cache_status_of, send};
use crate::support::{eventually, get, Config, Listener, Origin, Pool, Route, RouteCache, Verge};
use std::time::Duration;

/// verge with an h2c-capable plain listener and one caching catch-all route.
async fn h2c_cached_verge(o: &Origin, route_cache: RouteCache) -> Verge {
    Verge::start(
        &Config::new()
            .listener(Listener::new().h2c())
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p").cache(route_cache)),
    )
    .await
}

fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// (status, Cache-Status, body, HTTP version) of a GET over h2c.
async fn h2_get(v: &Verge, path: &str) -> (u16, String, String, reqwest::Version) {
    let r = h2c_client()
        .get(v.url(path))
        .send()
        .await
        .expect("h2c request");
    let status = r.status().as_u16();
    let version = r.version();
    let cs = cache_status_of(r.headers());
    (status, cs, r.text().await.unwrap_or_default(), version)
}

#[tokio::test]
async fn stale_while_revalidate_refreshes_once_for_http2_clients() {
    let o = Origin::start("o").await;
    o.set_headers(
        "/swr2",
        &[("cache-control", "max-age=1, stale-while-revalidate=60")],
    );
    let v = h2c_cached_verge(&o, RouteCache::new()).await;
    let (status, _, first, version) = h2_get(&v, "/swr2").await;
    assert_eq!((status, version), (200, reqwest::Version::HTTP_2));
    assert_eq!(o.hits("/swr2"), 1);
    // what the refresh will get: fresh for long enough that the next request is a plain hit
    // (with max-age=1 and Date's one-second resolution it could be stale on arrival)
    o.set_headers(
        "/swr2",
        &[("cache-control", "max-age=60, stale-while-revalidate=60")],
    );
    // wait until the entry is stale (the ttl in Cache-Status says so; no timing asserted)
    let stale = eventually(Duration::from_secs(10), || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        o.hits("/swr2") == 1 && {
            let (_, cs, body, _) = h2_get(&v, "/swr2").await;
            cs.contains("fwd=stale") && body == first
        }
    })
    .await;
    assert!(stale, "a stale answer was served to the h2 client");
    let refreshed = eventually(Duration::from_secs(5), || async { o.hits("/swr2") == 2 }).await;
    assert!(refreshed, "the background refresh reached the origin");
    // the refreshed entry is fresh again: served as a hit, with the new body, no more fetches
    // (the origin counts the refresh before verge has stored its answer: until then the
    // stale entry is still what there is)
    let (status, cs, body, _) = crate::support::assert_eventually(
        Duration::from_secs(5),
        "the refreshed entry stored",
        || h2_get(&v, "/swr2"),
        |(_, cs, _, _)| !cs.contains("fwd=stale"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(cs.contains("hit") && !cs.contains("fwd="), "{cs}");
    assert_ne!(body, first, "the refreshed body is served");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(o.hits("/swr2"), 2, "exactly one refresh");
    // verge is still up and answering over h1 too
    assert_eq!(get(&v, "x.test", "/other").await.status, 200);
}

/// A route whose fresh hits refresh early with near certainty: XFetch refreshes when
/// `delta · beta · −ln(rand) ≥ time left`; with delta 1 h, beta 1000 and 60 s left, a draw
/// misses only when −ln(rand) < 1.7e-5, i.e. about once in 60,000 hits.
fn eager() -> RouteCache {
    RouteCache::new().set("early_refresh", "{beta: 1000, delta: 1h}")
}

/// (Cache-Status, body) of a GET over HTTP/1.1 with extra request headers (the same host as
/// [`h2_get`]'s, so both use one cache key).
async fn h1_get_with(v: &Verge, path: &str, headers: &[(&str, &str)]) -> (String, String) {
    let g = send(v.http, reqwest::Method::GET, None, path, headers).await;
    assert_eq!(g.status, 200);
    (g.cache_status, g.body)
}

async fn h1_get(v: &Verge, path: &str) -> (String, String) {
    h1_get_with(v, path, &[]).await
}

/// Send GETs for `path` (with `headers`) until one says it started an early refresh; at most 3,
/// so a one-in-60,000 draw cannot fail a test. Each must be a hit with `body`.
async fn trigger_early_refresh(v: &Verge, path: &str, headers: &[(&str, &str)], body: &str) {
    for _ in 0..3 {
        let (cs, got) = h1_get_with(v, path, headers).await;
        assert!(cs.starts_with("verge; hit; ttl="), "{cs}");
        assert_eq!(got, body, "the stored body, not waiting for the origin");
        if cs.ends_with("; detail=early-refresh") {
            return;
        }
    }
    panic!("no fresh hit started an early refresh");
}

#[tokio::test]
async fn early_refresh_serves_the_hit_and_refreshes_once_in_the_background() {
    let o = Origin::start("o").await;
    o.set_headers("/er", &[("cache-control", "max-age=60")]);
    let v = h2c_cached_verge(&o, eager()).await;
    let (cs, first) = h1_get(&v, "/er").await;
    assert!(cs.contains("fwd=uri-miss; stored"), "{cs}");
    assert_eq!(o.hits("/er"), 1);
    // the origin is slow from now on, so the refresh stays in flight for a while
    o.set_delay_ms(3000);
    // A fresh hit, from an HTTP/2 client: answered from the entry at once, and it starts the
    // refresh. Up to 3 tries, so a one-in-60,000 draw cannot fail the test.
    let mut triggered = false;
    for _ in 0..3 {
        let (status, cs, body, version) = h2_get(&v, "/er").await;
        assert_eq!((status, version), (200, reqwest::Version::HTTP_2));
        assert!(cs.starts_with("verge; hit; ttl="), "{cs}");
        assert_eq!(body, first, "the stored body, not waiting for the origin");
        if cs.ends_with("; detail=early-refresh") {
            triggered = true;
            break;
        }
    }
    assert!(triggered, "a fresh hit started an early refresh");
    // While it runs, more hits of the same key are served from the entry and start no other.
    let concurrent = futures::future::join_all((0..10).map(|_| h1_get(&v, "/er"))).await;
    for (cs, body) in &concurrent {
        assert!(cs.starts_with("verge; hit"), "{cs}");
        assert!(
            !cs.contains("early-refresh"),
            "one refresh per key at a time: {cs}"
        );
        assert_eq!(body, &first);
    }
    let refreshed = eventually(Duration::from_secs(10), || async { o.hits("/er") == 2 }).await;
    assert!(refreshed, "the early refresh reached the origin");
    let counted = v
        .metrics()
        .await
        .sum("verge_cache_early_refreshes_total", &[]);
    assert_eq!(counted, 1.0, "verge_cache_early_refreshes_total");
    // the refreshed entry is served; the next fresh hit may start the next refresh
    o.set_delay_ms(0);
    let stored = eventually(Duration::from_secs(5), || async {
        let (cs, body) = h1_get(&v, "/er").await;
        cs.starts_with("verge; hit") && body != first
    })
    .await;
    assert!(stored, "the refresh replaced the stored response");
    assert!(o.hits("/er") <= 4, "one refresh per triggering hit");
}

#[tokio::test]
async fn without_early_refresh_fresh_hits_never_reach_the_origin() {
    let o = Origin::start("o").await;
    o.set_headers("/off", &[("cache-control", "max-age=60")]);
    o.set_headers("/default", &[("cache-control", "max-age=600")]);
    let off = h2c_cached_verge(&o, RouteCache::new()).await;
    // beta 1 and the measured fetch time (about a millisecond here): with 10 min left the
    // chance of a refresh is e^(−600/0.001), nil
    let measured = h2c_cached_verge(&o, RouteCache::new().set("early_refresh", "{}")).await;
    h1_get(&off, "/off").await;
    h1_get(&measured, "/default").await;
    for _ in 0..20 {
        let (cs, _) = h1_get(&off, "/off").await;
        assert!(
            cs.starts_with("verge; hit") && !cs.contains("detail"),
            "{cs}"
        );
        let (cs, _) = h1_get(&measured, "/default").await;
        assert!(
            cs.starts_with("verge; hit") && !cs.contains("detail"),
            "{cs}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((o.hits("/off"), o.hits("/default")), (1, 1));
}

#[tokio::test]
async fn an_early_refresh_fetches_even_when_the_client_said_only_if_cached() {
    // the refresh copies the client's head, but not its directives: it must reach the origin
    let o = Origin::start("o").await;
    o.set_headers("/oic", &[("cache-control", "max-age=60")]);
    let v = h2c_cached_verge(&o, eager()).await;
    let (_, first) = h1_get(&v, "/oic").await;
    trigger_early_refresh(&v, "/oic", &[("cache-control", "only-if-cached")], &first).await;
    let refreshed = eventually(Duration::from_secs(5), || async { o.hits("/oic") == 2 }).await;
    assert!(refreshed, "the early refresh reached the origin");
}
