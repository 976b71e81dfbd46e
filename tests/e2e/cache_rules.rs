//! The cache's RFC 9111 details and per-route rules, as a client and the origin see them:
//! revalidation with validators, client conditionals and ranges from cache, request directives,
//! negative caching, invalidation by unsafe methods, key rules, Set-Cookie stripping, variant caps.

use crate::support::Origin;
use crate::support::{cached_verge, fetch, fetch_with, Config, Pool, Route, RouteCache, Verge};
use reqwest::Method;

#[tokio::test]
async fn a_stale_entry_is_revalidated_and_a_304_serves_the_stored_body() {
    let o = Origin::start("o").await;
    // max-age=2: stored already stale (an Age over its lifetime), and, the 304 carrying no
    // Age, still fresh for ≥1 s after it even though Date has one-second resolution
    o.set_headers_stale("/e", &[("cache-control", "max-age=2")]);
    o.set_etag("/e", "\"v1\"");
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let first = fetch(&v, "/e", &[]).await;
    assert_eq!(first.status, 200);
    o.set_headers("/e", &[("cache-control", "max-age=2")]);
    let second = fetch(&v, "/e", &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body, first.body, "the stored body, not a new one");
    assert!(
        second
            .cache_status
            .starts_with("verge; fwd=stale; fwd-status=304"),
        "{}",
        second.cache_status
    );
    assert_eq!(
        (o.hits("/e"), o.not_modified("/e")),
        (2, 1),
        "1 full + 1 conditional"
    );
    let seen = o.seen_for("/e");
    assert_eq!(seen[0].header("if-none-match"), None);
    assert_eq!(seen[1].header("if-none-match"), Some("\"v1\""));
    // the 304 refreshed the entry: fresh again, no origin contact
    let third = fetch(&v, "/e", &[]).await;
    assert!(third.cache_status.contains("hit"), "{}", third.cache_status);
    assert_eq!(o.hits("/e"), 2);
}

#[tokio::test]
async fn a_client_conditional_is_answered_304_from_cache() {
    let o = Origin::start("o").await;
    o.set_headers("/c", &[("cache-control", "max-age=60")]);
    o.set_etag("/c", "\"abc\"");
    let v = cached_verge(o.addr, RouteCache::new()).await;
    fetch(&v, "/c", &[]).await;
    let g = fetch(&v, "/c", &[("if-none-match", "\"abc\"")]).await;
    assert_eq!(g.status, 304);
    assert!(g.body.is_empty());
    assert_eq!(g.header("etag"), Some("\"abc\""));
    let g = fetch(&v, "/c", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(g.status, 200);
    assert_eq!(o.hits("/c"), 1, "origin not contacted again");
}

#[tokio::test]
async fn a_range_of_a_cached_object_is_served_from_cache() {
    let o = Origin::start("o").await;
    o.set_headers("/r", &[("cache-control", "max-age=60")]);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let full = fetch(&v, "/r", &[]).await;
    let len = full.body.len();
    assert!(len > 10, "{}", full.body);
    let part = fetch(&v, "/r", &[("range", "bytes=2-5")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, full.body[2..=5]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 2-5/{len}").as_str())
    );
    let tail = fetch(&v, "/r", &[("range", "bytes=-3")]).await;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, full.body[len - 3..]);
    assert_eq!(o.hits("/r"), 1);
}

#[tokio::test]
async fn only_if_cached_gets_504_and_never_reaches_the_origin() {
    let o = Origin::start("o").await;
    o.set_headers("/oic", &[("cache-control", "max-age=60")]);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let g = fetch(&v, "/oic", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(g.status, 504);
    assert_eq!(o.hits("/oic"), 0);
    // a bypassed request (Cookie on a non-public route) has nothing stored either
    let g = fetch(
        &v,
        "/oic",
        &[("cache-control", "only-if-cached"), ("cookie", "a=1")],
    )
    .await;
    assert_eq!(g.status, 504);
    assert_eq!(o.hits("/oic"), 0);
    let stored = fetch(&v, "/oic", &[]).await;
    let g = fetch(&v, "/oic", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.body, stored.body);
    assert_eq!(o.hits("/oic"), 1);
}

#[tokio::test]
async fn request_max_age_zero_and_no_cache_revalidate_with_the_origin() {
    let o = Origin::start("o").await;
    o.set_headers("/m", &[("cache-control", "max-age=60")]);
    o.set_etag("/m", "\"m1\"");
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let first = fetch(&v, "/m", &[]).await;
    let g = fetch(&v, "/m", &[("cache-control", "max-age=0")]).await;
    assert_eq!((g.status, g.body.as_str()), (200, first.body.as_str()));
    assert_eq!((o.hits("/m"), o.not_modified("/m")), (2, 1));
    assert_eq!(o.seen_for("/m")[1].header("if-none-match"), Some("\"m1\""));
    // a max-age the entry satisfies is served from cache
    let g = fetch(&v, "/m", &[("cache-control", "max-age=30")]).await;
    assert!(g.cache_status.contains("hit"), "{}", g.cache_status);
    assert_eq!(o.hits("/m"), 2);
    fetch(&v, "/m", &[("cache-control", "no-cache")]).await;
    assert_eq!(o.hits("/m"), 3);
    fetch(&v, "/m", &[("pragma", "no-cache")]).await;
    assert_eq!(o.hits("/m"), 4);
    // min-fresh beyond what is left revalidates too
    fetch(&v, "/m", &[("cache-control", "min-fresh=120")]).await;
    assert_eq!((o.hits("/m"), o.not_modified("/m")), (5, 4));
    let g = fetch(&v, "/m", &[]).await;
    assert!(g.cache_status.contains("hit"), "{}", g.cache_status);
    assert_eq!(o.hits("/m"), 5);
}

#[tokio::test]
async fn a_route_can_ignore_client_revalidation() {
    let o = Origin::start("o").await;
    o.set_headers("/n", &[("cache-control", "max-age=60")]);
    let v = cached_verge(
        o.addr,
        RouteCache::new().set("client_revalidation", "false"),
    )
    .await;
    fetch(&v, "/n", &[]).await;
    for h in [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("pragma", "no-cache"),
    ] {
        let g = fetch(&v, "/n", &[h]).await;
        assert!(g.cache_status.contains("hit"), "{h:?}: {}", g.cache_status);
    }
    assert_eq!(o.hits("/n"), 1);
}

#[tokio::test]
async fn max_stale_serves_a_stale_entry_without_the_origin() {
    let o = Origin::start("o").await;
    o.set_headers_stale("/ms", &[("cache-control", "max-age=1")]);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let first = fetch(&v, "/ms", &[]).await;
    let g = fetch(&v, "/ms", &[("cache-control", "max-stale=60")]).await;
    assert_eq!(g.body, first.body);
    assert_eq!(o.hits("/ms"), 1);
    let g = fetch(&v, "/ms", &[]).await;
    assert_ne!(g.body, first.body, "without max-stale it is fetched again");
    assert_eq!(o.hits("/ms"), 2);
}

#[tokio::test]
async fn negative_ttl_caches_404_but_explicit_freshness_wins() {
    let o = Origin::start("o").await;
    o.set_status("/missing", 404);
    o.set_status("/gone-now", 404);
    o.set_headers("/gone-now", &[("cache-control", "max-age=0")]);
    let v = cached_verge(o.addr, RouteCache::new().negative_ttl("60s")).await;
    for _ in 0..3 {
        assert_eq!(fetch(&v, "/missing", &[]).await.status, 404);
        assert_eq!(fetch(&v, "/gone-now", &[]).await.status, 404);
    }
    assert_eq!(o.hits("/missing"), 1, "404 stored for negative_ttl");
    assert_eq!(o.hits("/gone-now"), 3, "max-age=0 from the origin wins");
    let plain = cached_verge(o.addr, RouteCache::new()).await;
    fetch(&plain, "/missing", &[]).await;
    fetch(&plain, "/missing", &[]).await;
    assert_eq!(o.hits("/missing"), 3, "no negative_ttl: not stored");
}

#[tokio::test]
async fn a_successful_post_invalidates_the_url_every_variant_and_its_location() {
    let o = Origin::start("o").await;
    o.set_headers(
        "/item",
        &[
            ("cache-control", "max-age=60"),
            ("vary", "accept-language"),
            ("location", "/list"),
        ],
    );
    o.set_headers("/list", &[("cache-control", "max-age=60")]);
    o.set_headers("/keep", &[("cache-control", "max-age=60")]);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let fill = || async {
        fetch(&v, "/item", &[("accept-language", "en")]).await;
        fetch(&v, "/item", &[("accept-language", "fr")]).await;
        fetch(&v, "/list", &[]).await;
        fetch(&v, "/keep", &[]).await;
    };
    fill().await;
    fill().await;
    assert_eq!(
        (o.hits("/item"), o.hits("/list"), o.hits("/keep")),
        (2, 1, 1)
    );
    let post = fetch_with(&v, Method::POST, "/item", &[]).await;
    assert_eq!(post.status, 200);
    assert_eq!(o.hits("/item"), 3);
    fill().await;
    assert_eq!(
        (o.hits("/item"), o.hits("/list"), o.hits("/keep")),
        (5, 2, 1),
        "both variants and the Location refetched, the rest kept"
    );
    // a failed unsafe request invalidates nothing
    o.set_status("/item", 500);
    fetch_with(&v, Method::DELETE, "/item", &[]).await;
    o.set_status("/item", 200);
    fill().await;
    assert_eq!((o.hits("/item"), o.hits("/list")), (6, 2));
}

#[tokio::test]
async fn sorted_and_ignored_query_keys_share_entries_while_the_origin_sees_the_query() {
    let o = Origin::start("o").await;
    for p in ["/s", "/i", "/d", "/a"] {
        o.set_headers(p, &[("cache-control", "max-age=60")]);
    }
    let route = |path: &str, key: &str| {
        Route::to("p")
            .path(path)
            .cache(RouteCache::new().set("key", key))
    };
    let v = Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[o.addr]))
            .route(route("/s", "{query: sorted}"))
            .route(route("/i", "{query: ignore}"))
            .route(route("/d", "{query: {deny: [utm_source]}}"))
            .route(route("/a", "{query: {allow: [id]}, headers: [x-device]}")),
    )
    .await;
    let a = fetch(&v, "/s?b=1&a=2", &[]).await;
    let b = fetch(&v, "/s?a=2&b=1", &[]).await;
    assert_eq!(a.body, b.body);
    assert_eq!(o.hits("/s"), 1);
    assert_eq!(
        o.seen_for("/s")[0].uri,
        "/s?b=1&a=2",
        "origin gets the query as sent"
    );
    fetch(&v, "/s?a=3&b=1", &[]).await;
    assert_eq!(o.hits("/s"), 2, "other values are another entry");

    fetch(&v, "/i?x=1", &[]).await;
    fetch(&v, "/i?x=2", &[]).await;
    fetch(&v, "/i", &[]).await;
    assert_eq!(o.hits("/i"), 1);
    assert_eq!(o.seen_for("/i")[0].uri, "/i?x=1");

    fetch(&v, "/d?id=1&utm_source=a", &[]).await;
    fetch(&v, "/d?id=1&utm_source=b", &[]).await;
    fetch(&v, "/d?id=2", &[]).await;
    assert_eq!(o.hits("/d"), 2);

    // allow-list plus a key header: the header selects a variant
    fetch(&v, "/a?id=1&x=1", &[("x-device", "mobile")]).await;
    fetch(&v, "/a?id=1&x=2", &[("x-device", "mobile")]).await;
    assert_eq!(o.hits("/a"), 1);
    fetch(&v, "/a?id=1", &[("x-device", "desktop")]).await;
    assert_eq!(o.hits("/a"), 2);
    fetch(&v, "/a?id=1", &[("x-device", "desktop")]).await;
    assert_eq!(o.hits("/a"), 2);
}

#[tokio::test]
async fn set_cookie_strip_stores_the_response_without_the_cookie_for_everyone() {
    let o = Origin::start("o").await;
    o.set_headers(
        "/sc",
        &[
            ("cache-control", "max-age=60"),
            ("set-cookie", "sid=secret"),
        ],
    );
    let v = cached_verge(o.addr, RouteCache::new().set("set_cookie", "strip")).await;
    let first = fetch(&v, "/sc", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache_status, "verge; fwd=uri-miss; stored");
    assert_eq!(first.header("set-cookie"), None);
    let second = fetch(&v, "/sc", &[]).await;
    assert!(
        second.cache_status.contains("hit"),
        "{}",
        second.cache_status
    );
    assert_eq!(second.header("set-cookie"), None);
    assert_eq!(o.hits("/sc"), 1);
    // a private response keeps its cookie and is not stored
    o.set_headers(
        "/priv",
        &[("cache-control", "private"), ("set-cookie", "sid=mine")],
    );
    let p = fetch(&v, "/priv", &[]).await;
    assert_eq!(p.header("set-cookie"), Some("sid=mine"));
    fetch(&v, "/priv", &[]).await;
    assert_eq!(o.hits("/priv"), 2);
}

#[tokio::test]
async fn variants_beyond_max_variants_are_served_but_not_stored() {
    let o = Origin::start("o").await;
    o.set_headers(
        "/mv",
        &[("cache-control", "max-age=60"), ("vary", "accept-language")],
    );
    let v = cached_verge(o.addr, RouteCache::new().max_variants(2)).await;
    for lang in ["en", "fr", "de", "de", "en", "fr"] {
        let g = fetch(&v, "/mv", &[("accept-language", lang)]).await;
        assert_eq!(g.status, 200);
    }
    assert_eq!(o.hits("/mv"), 4, "en and fr stored, de fetched each time");
}

#[tokio::test]
async fn force_ttl_overrides_a_short_origin_lifetime() {
    let o = Origin::start("o").await;
    o.set_headers("/f", &[("cache-control", "max-age=0")]);
    let v = cached_verge(o.addr, RouteCache::new().force_ttl("60s")).await;
    fetch(&v, "/f", &[]).await;
    let g = fetch(&v, "/f", &[]).await;
    assert!(g.cache_status.contains("hit"), "{}", g.cache_status);
    assert_eq!(o.hits("/f"), 1);
}

#[tokio::test]
async fn a_304_updates_the_stored_headers_for_every_later_hit() {
    let o = Origin::start("o").await;
    o.set_headers_stale("/u", &[("cache-control", "max-age=1"), ("x-version", "1")]);
    o.set_etag("/u", "\"v1\"");
    let v = cached_verge(o.addr, RouteCache::new()).await;
    assert_eq!(fetch(&v, "/u", &[]).await.header("x-version"), Some("1"));
    o.set_headers(
        "/u",
        &[
            ("cache-control", "max-age=60"),
            ("x-version", "2"),
            ("connection", "x-hop"),
            ("x-hop", "for verge only"),
        ],
    );
    let revalidated = fetch(&v, "/u", &[]).await;
    assert!(
        revalidated.cache_status.contains("fwd-status=304"),
        "{}",
        revalidated.cache_status
    );
    assert_eq!(revalidated.header("x-version"), Some("2"));
    let hit = fetch(&v, "/u", &[]).await;
    assert!(
        hit.cache_status.starts_with("verge; hit"),
        "{}",
        hit.cache_status
    );
    assert_eq!(hit.header("x-version"), Some("2"));
    assert_eq!(hit.header("x-hop"), None);
    assert_eq!((o.hits("/u"), o.not_modified("/u")), (2, 1));
}

#[tokio::test]
async fn fields_listed_in_connection_never_reach_the_client() {
    let o = Origin::start("o").await;
    o.set_headers(
        "/c",
        &[
            ("cache-control", "max-age=60"),
            ("connection", "x-a, x-b"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-c", "3"),
        ],
    );
    let v = cached_verge(o.addr, RouteCache::new()).await;
    for _ in 0..2 {
        let got = fetch(&v, "/c", &[]).await;
        assert_eq!((got.header("x-a"), got.header("x-b")), (None, None));
        assert_eq!(got.header("x-c"), Some("3"));
    }
    assert_eq!(o.hits("/c"), 1);
}

#[tokio::test]
async fn surrogate_control_governs_and_is_not_forwarded() {
    let o = Origin::start("o").await;
    o.set_headers(
        "/s",
        &[
            ("cache-control", "no-store"),
            ("surrogate-control", "max-age=60"),
        ],
    );
    o.set_headers(
        "/n",
        &[
            ("cache-control", "max-age=60"),
            ("surrogate-control", "no-store"),
        ],
    );
    let v = cached_verge(o.addr, RouteCache::new()).await;
    for _ in 0..2 {
        let s = fetch(&v, "/s", &[]).await;
        assert_eq!(s.header("surrogate-control"), None);
        assert_eq!(s.header("cache-control"), Some("no-store"));
        fetch(&v, "/n", &[]).await;
    }
    assert_eq!((o.hits("/s"), o.hits("/n")), (1, 2));
}

#[tokio::test]
async fn a_stale_if_error_answer_says_connection_close() {
    let o = Origin::start("o").await;
    o.set_headers_stale("/sie", &[("cache-control", "max-age=1, stale-if-error=60")]);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    fetch(&v, "/sie", &[]).await;
    o.set_status("/sie", 503);
    let stale = fetch(&v, "/sie", &[]).await;
    assert_eq!(stale.status, 200);
    assert!(
        stale.cache_status.contains("fwd=stale"),
        "{}",
        stale.cache_status
    );
    assert_eq!(stale.header("connection"), Some("close"));
    // and the next request on a new connection is served as usual
    assert_eq!(fetch(&v, "/sie", &[]).await.status, 200);
}

#[tokio::test]
async fn the_fetching_client_gets_the_fields_the_stored_response_leaves_out() {
    let o = Origin::start("o").await;
    o.set_headers(
        "/u",
        &[
            ("cache-control", "max-age=600, no-cache=\"x-private\""),
            ("age", "30"),
            ("x-private", "1"),
        ],
    );
    let v = cached_verge(o.addr, RouteCache::new()).await;
    // the first client is answered from the stored head while the body streams into the cache
    let first = fetch(&v, "/u", &[]).await;
    assert!(
        first.cache_status.contains("stored"),
        "{}",
        first.cache_status
    );
    assert_eq!(first.age, Some(30), "the origin's Age passes through");
    assert_eq!(first.header("x-private"), Some("1"));
    let hit = fetch(&v, "/u", &[]).await;
    assert!(
        hit.cache_status.starts_with("verge; hit"),
        "{}",
        hit.cache_status
    );
    assert!(hit.age.is_some_and(|a| a >= 30), "{:?}", hit.age);
    assert_eq!(
        hit.header("x-private"),
        None,
        "no-cache=\"x-private\" is not reused"
    );
    assert_eq!(o.hits("/u"), 1);
}
