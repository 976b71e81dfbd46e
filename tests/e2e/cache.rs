//! The shared cache as a client and the origin see it: what is stored, for how long, what is
//! never stored, variants, miss collapsing, stale serving, and `Cache-Status`/`Age`.

use crate::support::fetch::cache_status_of;
use crate::support::metrics::sum_eventually;
use crate::support::{
    cached_verge, client, eventually, fetch, fetch_with, get, Cache, Config, Origin, Pool, Route,
    RouteCache, Verge,
};
use std::time::Duration;

#[tokio::test]
async fn fresh_response_is_served_from_cache_with_age_and_cache_status() {
    let o = Origin::start("o").await;
    o.set_headers("/a", &[("cache-control", "public, max-age=60")]);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let first = fetch(&v, "/a", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache_status, "verge; fwd=uri-miss; stored");
    let second = fetch(&v, "/a", &[]).await;
    assert!(
        second.cache_status.starts_with("verge; hit; ttl="),
        "{}",
        second.cache_status
    );
    assert_eq!(second.body, first.body);
    assert!(second.age.is_some(), "Age on a hit");
    assert_eq!(o.hits("/a"), 1);
    // HEAD shares GET's entry
    let head = fetch_with(&v, reqwest::Method::HEAD, "/a", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(o.hits("/a"), 1);
    // another host is another key
    let other = get(&v, "other.test", "/a").await;
    assert_eq!(other.status, 200);
    assert_eq!(o.hits("/a"), 2);
    let m = v.metrics().await;
    assert!(m.any_with_label("result", "hit"), "{}", m.text);
    assert_eq!(m.value("verge_cache_objects", &[]), Some(2.0), "{}", m.text);
}

#[tokio::test]
async fn personal_or_forbidden_responses_are_never_stored() {
    let o = Origin::start("o").await;
    o.set_headers(
        "/cookie",
        &[
            ("cache-control", "max-age=60"),
            ("set-cookie", "sid=secret"),
        ],
    );
    o.set_headers("/private", &[("cache-control", "private, max-age=60")]);
    o.set_headers("/nostore", &[("cache-control", "no-store")]);
    o.set_headers(
        "/vary-star",
        &[("cache-control", "max-age=60"), ("vary", "*")],
    );
    o.set_headers("/none", &[]);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    for path in ["/cookie", "/private", "/nostore", "/vary-star", "/none"] {
        for _ in 0..2 {
            let g = fetch(&v, path, &[]).await;
            assert_eq!(g.status, 200);
            assert!(
                !g.cache_status.contains("stored"),
                "{path}: {}",
                g.cache_status
            );
        }
        assert_eq!(o.hits(path), 2, "{path} went to the origin both times");
    }
}

#[tokio::test]
async fn credentials_bypass_the_cache_unless_the_route_is_public() {
    let o = Origin::start("o").await;
    o.set_headers("/p", &[("cache-control", "max-age=60")]);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    fetch(&v, "/p", &[]).await;
    let g = fetch(&v, "/p", &[("cookie", "sid=1")]).await;
    assert_eq!(g.cache_status, "verge; fwd=bypass; detail=cookie");
    // credentials: the stored response is not marked for sharing, so the origin answers
    let g = fetch(&v, "/p", &[("authorization", "Bearer x")]).await;
    assert_eq!(g.cache_status, "verge; fwd=request");
    assert_eq!(o.hits("/p"), 3);
    let public = cached_verge(o.addr, RouteCache::new().public()).await;
    fetch(&public, "/p", &[("cookie", "sid=1")]).await;
    let g = fetch(&public, "/p", &[("cookie", "sid=2")]).await;
    assert!(g.cache_status.contains("hit"), "{}", g.cache_status);
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let o = Origin::start("o").await;
    o.set_headers(
        "/v",
        &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
    );
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let en = fetch(&v, "/v", &[("accept-language", "en")]).await;
    let fr = fetch(&v, "/v", &[("accept-language", "fr")]).await;
    assert_ne!(en.body, fr.body);
    assert_eq!(o.hits("/v"), 2);
    let en2 = fetch(&v, "/v", &[("accept-language", "en")]).await;
    let fr2 = fetch(&v, "/v", &[("accept-language", "fr")]).await;
    assert_eq!((en2.body, fr2.body), (en.body, fr.body));
    assert_eq!(o.hits("/v"), 2);
}

#[tokio::test]
async fn expired_entries_are_fetched_again_and_default_ttl_applies() {
    let o = Origin::start("o").await;
    o.set_headers("/short", &[("cache-control", "max-age=1")]);
    o.set_headers("/plain", &[]);
    let v = cached_verge(o.addr, RouteCache::new().default_ttl("60s")).await;
    fetch(&v, "/short", &[]).await;
    fetch(&v, "/short", &[]).await;
    assert_eq!(o.hits("/short"), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    fetch(&v, "/short", &[]).await;
    assert_eq!(o.hits("/short"), 2);
    fetch(&v, "/plain", &[]).await;
    let g = fetch(&v, "/plain", &[]).await;
    assert!(
        g.cache_status.contains("hit"),
        "default_ttl stores it: {}",
        g.cache_status
    );
    assert_eq!(o.hits("/plain"), 1);
}

#[tokio::test]
async fn concurrent_misses_cause_one_origin_fetch() {
    let o = Origin::start("o").await;
    o.set_headers("/cold", &[("cache-control", "max-age=60")]);
    o.set_delay_ms(300);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    concurrent_cache_statuses(&v, "/cold", 50).await;
    assert_eq!(
        o.hits("/cold"),
        1,
        "one origin fetch for 50 concurrent misses"
    );
}

#[tokio::test]
async fn an_uncacheable_answer_releases_waiters() {
    let o = Origin::start("o").await;
    o.set_headers("/priv", &[("cache-control", "private")]);
    o.set_delay_ms(200);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let started = std::time::Instant::now();
    concurrent_cache_statuses(&v, "/priv", 10).await;
    // waiters are released when the first answer turns out uncacheable; nobody waits for the
    // lock timeout (10 s)
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Send `n` GETs for `path` at once; each must get a 200. Returns their `Cache-Status` values.
async fn concurrent_cache_statuses(v: &Verge, path: &str, n: usize) -> Vec<String> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = v.url(path);
            tokio::spawn(async move {
                let r = client().get(url).header("host", "c.test").send().await?;
                assert_eq!(r.status(), 200);
                let status = cache_status_of(r.headers());
                r.bytes().await.map(|_| status)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("join").expect("request"));
    }
    statuses
}

#[tokio::test]
async fn collapsed_waiters_are_told_and_counted() {
    let o = Origin::start("o").await;
    o.set_headers("/c", &[("cache-control", "max-age=60")]);
    o.set_delay_ms(400);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let statuses = concurrent_cache_statuses(&v, "/c", 20).await;
    assert_eq!(o.hits("/c"), 1);
    let fetched = statuses
        .iter()
        .filter(|s| s.contains("fwd=uri-miss"))
        .count();
    let collapsed = statuses
        .iter()
        .filter(|s| s.contains("; hit") && s.contains("detail=collapsed"))
        .count();
    assert_eq!(fetched, 1, "{statuses:#?}");
    assert!(collapsed >= 1, "{statuses:#?}");
    // the rest arrived after the fill and are plain hits
    assert_eq!(
        statuses.iter().filter(|s| s.contains("; hit")).count(),
        19,
        "{statuses:#?}"
    );
    let waits = "verge_cache_lock_waits_total";
    let m = sum_eventually(
        &v,
        Duration::from_secs(5),
        waits,
        &[("outcome", "collapsed")],
        |n| n == collapsed as f64,
    )
    .await;
    assert_eq!(m.sum(waits, &[("outcome", "timeout")]), 0.0);
}

#[tokio::test]
async fn waiters_give_up_after_lock_wait_and_fetch_for_themselves() {
    let o = Origin::start("o").await;
    o.set_headers("/slow", &[("cache-control", "max-age=60")]);
    o.set_delay_ms(2500);
    let v = Verge::start(
        &Config::new()
            .cache(Cache::new().lock_wait("500ms"))
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p").cache(RouteCache::new())),
    )
    .await;
    let statuses = concurrent_cache_statuses(&v, "/slow", 4).await;
    let timed_out = statuses
        .iter()
        .filter(|s| s.contains("fwd=uri-miss") && s.contains("detail=lock-timeout"))
        .count();
    assert_eq!(timed_out, 3, "{statuses:#?}");
    assert_eq!(
        o.hits("/slow"),
        4,
        "each waiter that gave up fetched for itself"
    );
    sum_eventually(
        &v,
        Duration::from_secs(5),
        "verge_cache_lock_waits_total",
        &[("outcome", "timeout")],
        |n| n == 3.0,
    )
    .await;
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_in_background() {
    let o = Origin::start("o").await;
    o.set_headers_stale(
        "/swr",
        &[("cache-control", "max-age=1, stale-while-revalidate=30")],
    );
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let first = fetch(&v, "/swr", &[]).await;
    // an origin slow enough that waiting for it could not go unnoticed, even on a busy machine
    o.set_delay_ms(3000);
    let started = std::time::Instant::now();
    let stale = fetch(&v, "/swr", &[]).await;
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "served without waiting for the origin"
    );
    assert_eq!(stale.body, first.body);
    assert!(
        stale.cache_status.contains("fwd=stale"),
        "{}",
        stale.cache_status
    );
    let refreshed = eventually(Duration::from_secs(10), || async { o.hits("/swr") == 2 }).await;
    assert!(refreshed, "background refresh reached the origin");
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_origin_is_down() {
    let o = Origin::start("o").await;
    o.set_headers_stale("/sie", &[("cache-control", "max-age=1, stale-if-error=60")]);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let first = fetch(&v, "/sie", &[]).await;
    o.stop();
    let g = fetch(&v, "/sie", &[]).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.body, first.body);
}

#[tokio::test]
async fn purge_method_is_off_by_default_and_limited_to_allowed_clients() {
    let o = Origin::start("o").await;
    o.set_headers("/p", &[("cache-control", "max-age=300")]);
    async fn purge(v: &Verge) -> u16 {
        let method = reqwest::Method::from_bytes(b"PURGE").expect("method");
        fetch_with(v, method, "/p", &[]).await.status
    }
    let config = Config::new()
        .pool(Pool::new("p", &[o.addr]))
        .route(Route::to("p").cache(RouteCache::new()));
    let off = Verge::start(&config).await;
    assert_eq!(purge(&off).await, 405);
    let elsewhere = Verge::start(&config.clone().purge_allow(&["10.0.0.0/8"])).await;
    assert_eq!(purge(&elsewhere).await, 403);

    let v = Verge::start(&config.purge_allow(&["127.0.0.1/32", "::1"])).await;
    fetch(&v, "/p", &[]).await;
    assert_eq!(
        fetch(&v, "/p", &[]).await.cache_status.split(';').nth(1),
        Some(" hit")
    );
    assert_eq!(o.hits("/p"), 1);
    assert_eq!(purge(&v).await, 200);
    assert_eq!(purge(&v).await, 404, "nothing left to purge");
    let after = fetch(&v, "/p", &[]).await;
    assert!(
        after.cache_status.contains("fwd=uri-miss"),
        "{}",
        after.cache_status
    );
    assert_eq!(o.hits("/p"), 2, "the purged URL was fetched again");
}

#[tokio::test]
async fn byte_offload_latency_and_budget_are_measured() {
    let o = Origin::start("o").await;
    o.set_body_size(3000);
    o.set_headers("/b", &[("cache-control", "public, max-age=60")]);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    for _ in 0..3 {
        let got = fetch(&v, "/b", &[]).await;
        assert_eq!((got.status, got.body.len()), (200, 3000));
    }
    let not_routed = get(&v, "bad host", "/b").await;
    assert_eq!(not_routed.status, 400);
    assert_eq!(o.hits("/b"), 1);
    // a request is counted when it is logged, just after its response went out
    let count = "verge_request_duration_seconds_count";
    sum_eventually(&v, Duration::from_secs(5), count, &[], |n| n >= 4.0).await;
    let m = v.metrics().await;
    let bytes = "verge_response_body_bytes_total";
    assert_eq!(m.sum(bytes, &[("source", "origin")]), 3000.0);
    assert_eq!(m.sum(bytes, &[("source", "cache")]), 6000.0);
    assert!(m.sum(bytes, &[("source", "local")]) > 0.0);
    assert_eq!(m.sum(count, &[]), 4.0, "{}", m.text);
    assert!(m.sum("verge_request_duration_seconds_sum", &[]) > 0.0);
    assert!(m.sum("verge_cache_capacity_bytes", &[]) > 0.0);
}

#[tokio::test]
async fn uncacheable_urls_are_remembered_and_skip_the_lock_until_they_turn_cacheable() {
    let o = Origin::start("o").await;
    o.set_headers("/hfp", &[("cache-control", "private")]);
    // a 503 with freshness of its own would be stored (briefly); this one may not be
    o.set_headers("/err", &[("cache-control", "private, max-age=60")]);
    o.set_status("/err", 503);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let first = fetch(&v, "/hfp", &[]).await;
    assert_eq!(first.cache_status, "verge; fwd=uri-miss");
    // now known as uncacheable: concurrent requests all go straight to the origin, none waits
    // on a miss lock behind another
    let all = futures::future::join_all((0..8).map(|_| fetch(&v, "/hfp", &[]))).await;
    for g in &all {
        assert_eq!(g.status, 200);
        assert_eq!(g.cache_status, "verge; fwd=bypass; detail=hit-for-pass");
    }
    assert_eq!(o.hits("/hfp"), 9);
    // the origin changes its mind: the next response is stored and the URL forgotten
    o.set_headers("/hfp", &[("cache-control", "public, max-age=60")]);
    let stored = fetch(&v, "/hfp", &[]).await;
    assert_eq!(stored.cache_status, "verge; fwd=uri-miss; stored");
    let hit = fetch(&v, "/hfp", &[]).await;
    assert!(
        hit.cache_status.starts_with("verge; hit"),
        "{}",
        hit.cache_status
    );
    assert_eq!(o.hits("/hfp"), 10);
    // an error or a request with credentials says nothing lasting about the URL
    assert_eq!(fetch(&v, "/err", &[]).await.status, 503);
    assert_eq!(
        fetch(&v, "/err", &[]).await.cache_status,
        "verge; fwd=uri-miss"
    );
    let mut authed = fetch(&v, "/auth", &[("authorization", "Bearer x")]).await;
    assert_eq!(authed.status, 200);
    authed = fetch(&v, "/auth", &[]).await;
    assert!(
        !authed.cache_status.contains("hit-for-pass"),
        "{}",
        authed.cache_status
    );
}
