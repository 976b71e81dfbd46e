//! Eviction with admission as a client and the origin see it: a hot set warmed by repeated
//! requests stays cached through a one-time sweep of cold URLs, within `cache.memory`.

use crate::cache::fetch;
use crate::harness::{eventually, Verge};
use crate::origin::Origin;
use std::time::Duration;

const BUDGET: u64 = 1 << 20;
const BODY: u64 = 16 * 1024;

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

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
    let v = Verge::start(&format!(
        "cache: {{memory: {BUDGET}, max_object_size: 64KiB}}\npools: {{p: {{backends: [\"{}\"]}}}}\nroutes: [{{hosts: [\"*\"], pool: p, cache: {{default_ttl: 300s}}}}]\n",
        o.addr
    ))
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
    let within_budget = eventually(Duration::from_secs(5), || async {
        let (_, text) = v.admin_get("/metrics").await;
        metric(&text, "verge_cache_bytes").is_some_and(|b| b > 0 && b <= BUDGET)
    })
    .await;
    let (_, last) = v.admin_get("/metrics").await;
    assert!(within_budget, "verge_cache_bytes over {BUDGET}:\n{last}");
    let objects = metric(&last, "verge_cache_objects").expect("objects");
    let evicted = metric(&last, "verge_cache_evictions").expect("evictions");
    let rejected = metric(&last, "verge_cache_admission_rejections").expect("rejections");
    assert!(objects > 10 && objects < BUDGET / BODY, "{objects} objects");
    assert_eq!(
        evicted + rejected + objects,
        hot.len() as u64 + cold,
        "every stored object is still held, evicted or rejected"
    );
}
