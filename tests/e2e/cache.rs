//! The shared cache as a client and the origin see it: what is stored, for how long, what is
//! never stored, variants, miss collapsing, stale serving, and `Cache-Status`/`Age`.

use crate::harness::{client, eventually, Verge};
use crate::origin::Origin;
use std::time::Duration;

/// verge with one catch-all route to `o` whose `cache:` block is `route_cache`.
pub(crate) async fn cached_verge(o: &Origin, route_cache: &str) -> Verge {
    Verge::start(&format!(
        "pools: {{p: {{backends: [\"{}\"]}}}}\nroutes: [{{hosts: [\"*\"], pool: p, cache: {route_cache}}}]\n",
        o.addr
    ))
    .await
}

/// What a client got from verge.
pub(crate) struct Got {
    pub status: u16,
    pub cache_status: String,
    pub age: Option<u64>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The `Cache-Status` a response carried (`""` when none).
pub(crate) fn cache_status_of(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// GET `path` for host `c.test` with extra request headers.
pub(crate) async fn fetch(v: &Verge, path: &str, headers: &[(&str, &str)]) -> Got {
    fetch_with(v, reqwest::Method::GET, path, headers).await
}

/// Send `method` for `path` to host `c.test` with extra request headers.
pub(crate) async fn fetch_with(
    v: &Verge,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut req = client()
        .request(method, v.url(path))
        .header("host", "c.test");
    for (k, val) in headers {
        req = req.header(*k, *val);
    }
    let r = req.send().await.expect("request");
    let h = r.headers();
    let cache_status = cache_status_of(h);
    let age = h
        .get("age")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let headers = h.clone();
    Got {
        status: r.status().as_u16(),
        cache_status,
        age,
        headers,
        body: r.text().await.unwrap_or_default(),
    }
}

#[tokio::test]
async fn fresh_response_is_served_from_cache_with_age_and_cache_status() {
    let o = Origin::start("o").await;
    o.set_headers("/a", &[("cache-control", "public, max-age=60")]);
    let v = cached_verge(&o, "{}").await;
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
    let head = client()
        .head(v.url("/a"))
        .header("host", "c.test")
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), 200);
    assert_eq!(o.hits("/a"), 1);
    // another host is another key
    let other = client()
        .get(v.url("/a"))
        .header("host", "other.test")
        .send()
        .await
        .expect("get");
    assert_eq!(other.status(), 200);
    assert_eq!(o.hits("/a"), 2);
    let (_, metrics) = v.admin_get("/metrics").await;
    assert!(metrics.contains("result=\"hit\""), "{metrics}");
    assert!(metrics.contains("verge_cache_objects 2"), "{metrics}");
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
    let v = cached_verge(&o, "{}").await;
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
    let v = cached_verge(&o, "{}").await;
    fetch(&v, "/p", &[]).await;
    let g = fetch(&v, "/p", &[("cookie", "sid=1")]).await;
    assert_eq!(g.cache_status, "verge; fwd=bypass; detail=cookie");
    // credentials: the stored response is not marked for sharing, so the origin answers
    let g = fetch(&v, "/p", &[("authorization", "Bearer x")]).await;
    assert_eq!(g.cache_status, "verge; fwd=request");
    assert_eq!(o.hits("/p"), 3);
    let public = cached_verge(&o, "{public: true}").await;
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
    let v = cached_verge(&o, "{}").await;
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
    let v = cached_verge(&o, "{default_ttl: 60s}").await;
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
    let v = cached_verge(&o, "{}").await;
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
    let v = cached_verge(&o, "{}").await;
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
    let v = cached_verge(&o, "{}").await;
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
    let counted = |outcome: &'static str| {
        let v = &v;
        async move {
            metric_sum(
                &v.admin_get("/metrics").await.1,
                "verge_cache_lock_waits_total",
                &[&format!("outcome=\"{outcome}\"")],
            )
        }
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            counted("collapsed").await == collapsed as f64
        })
        .await,
        "verge_cache_lock_waits_total{{outcome=collapsed}} = {} for {collapsed} collapsed answers",
        counted("collapsed").await
    );
    assert_eq!(counted("timeout").await, 0.0);
}

#[tokio::test]
async fn waiters_give_up_after_lock_wait_and_fetch_for_themselves() {
    let o = Origin::start("o").await;
    o.set_headers("/slow", &[("cache-control", "max-age=60")]);
    o.set_delay_ms(2500);
    let v = Verge::start(&format!(
        "cache: {{lock_wait: 500ms}}\npools: {{p: {{backends: [\"{}\"]}}}}\n\
         routes: [{{hosts: [\"*\"], pool: p, cache: {{}}}}]\n",
        o.addr
    ))
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
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric_sum(
                &v.admin_get("/metrics").await.1,
                "verge_cache_lock_waits_total",
                &["outcome=\"timeout\""],
            ) == 3.0
        })
        .await
    );
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_in_background() {
    let o = Origin::start("o").await;
    o.set_headers(
        "/swr",
        &[("cache-control", "max-age=1, stale-while-revalidate=30")],
    );
    let v = cached_verge(&o, "{}").await;
    let first = fetch(&v, "/swr", &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
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
    o.set_headers("/sie", &[("cache-control", "max-age=1, stale-if-error=60")]);
    let v = cached_verge(&o, "{}").await;
    let first = fetch(&v, "/sie", &[]).await;
    o.stop();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let g = fetch(&v, "/sie", &[]).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.body, first.body);
}

#[tokio::test]
async fn purge_method_is_off_by_default_and_limited_to_allowed_clients() {
    let o = Origin::start("o").await;
    o.set_headers("/p", &[("cache-control", "max-age=300")]);
    let purge = |v: &Verge| {
        let url = v.url("/p");
        async move {
            client()
                .request(reqwest::Method::from_bytes(b"PURGE").unwrap(), url)
                .header("host", "c.test")
                .send()
                .await
                .expect("purge")
                .status()
                .as_u16()
        }
    };
    let body = |allow: &str| {
        format!(
            "{allow}pools: {{p: {{backends: [\"{}\"]}}}}\nroutes: [{{hosts: [\"*\"], pool: p, cache: {{}}}}]\n",
            o.addr
        )
    };
    let off = Verge::start(&body("")).await;
    assert_eq!(purge(&off).await, 405);
    let elsewhere = Verge::start(&body("purge: {allow: [\"10.0.0.0/8\"]}\n")).await;
    assert_eq!(purge(&elsewhere).await, 403);

    let v = Verge::start(&body("purge: {allow: [\"127.0.0.1/32\", \"::1\"]}\n")).await;
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

/// The sum of every sample of `name` whose labels contain all of `labels` (`key="value"`).
pub(crate) fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn byte_offload_latency_and_budget_are_measured() {
    let o = Origin::start("o").await;
    o.set_body_size(3000);
    o.set_headers("/b", &[("cache-control", "public, max-age=60")]);
    let v = cached_verge(&o, "{}").await;
    for _ in 0..3 {
        let got = fetch(&v, "/b", &[]).await;
        assert_eq!((got.status, got.body.len()), (200, 3000));
    }
    let not_routed = client()
        .get(v.url("/b"))
        .header("host", "bad host")
        .send()
        .await
        .expect("get");
    assert_eq!(not_routed.status(), 400);
    assert_eq!(o.hits("/b"), 1);
    // a request is counted when it is logged, just after its response went out
    let count = "verge_request_duration_seconds_count";
    let all_logged = eventually(Duration::from_secs(5), || async {
        metric_sum(&v.admin_get("/metrics").await.1, count, &[]) >= 4.0
    })
    .await;
    assert!(all_logged);
    let (_, metrics) = v.admin_get("/metrics").await;
    let bytes = "verge_response_body_bytes_total";
    assert_eq!(metric_sum(&metrics, bytes, &["source=\"origin\""]), 3000.0);
    assert_eq!(metric_sum(&metrics, bytes, &["source=\"cache\""]), 6000.0);
    assert!(metric_sum(&metrics, bytes, &["source=\"local\""]) > 0.0);
    assert_eq!(metric_sum(&metrics, count, &[]), 4.0, "{metrics}");
    assert!(metric_sum(&metrics, "verge_request_duration_seconds_sum", &[]) > 0.0);
    assert!(metric_sum(&metrics, "verge_cache_capacity_bytes", &[]) > 0.0);
}

#[tokio::test]
async fn uncacheable_urls_are_remembered_and_skip_the_lock_until_they_turn_cacheable() {
    let o = Origin::start("o").await;
    o.set_headers("/hfp", &[("cache-control", "private")]);
    // a 503 with freshness of its own would be stored (briefly); this one may not be
    o.set_headers("/err", &[("cache-control", "private, max-age=60")]);
    o.set_status("/err", 503);
    let v = cached_verge(&o, "{}").await;
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
