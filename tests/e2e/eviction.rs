//! Eviction with admission as a client and the origin see it: a hot set warmed by repeated
//! requests stays cached through a one-time sweep of cold URLs, within `cache.memory`.

use crate::support::metrics::metric_eventually;
use crate::support::{fetch, Cache, Config, Origin, Pool, Route, RouteCache, Verge};
use std::time::Duration;

const BUDGET: u64 = 1 << 20;
const BODY: u64 = 16 * 1024;

/// GET `path` through verge; checks the whole body came back and returns `Cache-Status`.
async fn get_cache_status(v: &Verge, path: &str) -> String {
    let got = fetch(v, path, &[]).await;
    assert_eq!(got.status, 200, "{path}");
    assert!(got.body.len() as u64 >= BODY, "{path}: whole body");
    got.cache_status
}

#[tokio::test]
async fn hot_set_survives_a_sweep_of_cold_urls_within_the_memory_budget() {
    let o = Origin::start("o").await;
    o.set_body_size(BODY);
    let v = Verge::start(
        &Config::new()
            .cache(Cache::new().memory(BUDGET).max_object_size("64KiB"))
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p").cache(RouteCache::new().default_ttl("300s"))),
    )
    .await;
    // about 60 objects of 16 KiB fit in 1 MiB; 10 hot ones, each asked for 4 times
    let hot: Vec<String> = (0..10).map(|i| format!("/hot/{i}")).collect();
    for _ in 0..4 {
        for path in &hot {
            get_cache_status(&v, path).await;
        }
    }
    for path in &hot {
        assert_eq!(o.hits(path), 1, "{path} warmed once");
    }
    // a sweep of 4× the capacity, each URL once
    let cold = 256;
    for i in 0..cold {
        let status = get_cache_status(&v, &format!("/cold/{i}")).await;
        assert!(status.starts_with("verge; fwd=uri-miss"), "{status}");
    }
    assert_eq!(o.total(), hot.len() as u64 + cold);
    for path in &hot {
        let status = get_cache_status(&v, path).await;
        assert!(
            status.starts_with("verge; hit"),
            "{path} after the sweep: {status}"
        );
        assert_eq!(o.hits(path), 1, "{path} still served from cache");
    }
    // evicted and rejected objects are purged from storage asynchronously
    let budget = BUDGET as f64;
    let last = metric_eventually(&v, Duration::from_secs(5), "verge_cache_bytes", &[], |b| {
        b.is_some_and(|b| b > 0.0 && b <= budget)
    })
    .await;
    let count = |name: &str| last.value(name, &[]).map(|n| n as u64);
    let objects = count("verge_cache_objects").expect("objects");
    let evicted = count("verge_cache_evictions_total").expect("evictions");
    let rejected = count("verge_cache_admission_rejections_total").expect("rejections");
    assert!(objects > 10 && objects < BUDGET / BODY, "{objects} objects");
    assert_eq!(
        evicted + rejected + objects,
        hot.len() as u64 + cold,
        "every stored object is still held, evicted or rejected"
    );
}
