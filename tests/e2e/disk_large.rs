//! Objects larger than the memory tier's `max_object_size` live on the disk tier under its own
//! cap (`cache.disk.max_object_size`): the fetch streams to disk as the body arrives while its
//! client is served, later requests are disk hits (ranges seek), a restart keeps them, and a
//! body over the disk tier's cap is served whole and stored nowhere.

use crate::disk_tier::{disk_objects, rebuilt};
use crate::support::{fetch, Cache, Config, Origin, Pool, Route, RouteCache, Verge};
use std::net::SocketAddr;

/// 64 KiB objects in memory; up to 4 MiB on disk.
fn config(origin: SocketAddr, min_uses: u32) -> Config {
    Config::new()
        .cache(Cache::new().memory(1 << 20).max_object_size("64KiB").set(
            "disk",
            &format!(
                "{{path: disk, size: 32MiB, segment_size: 1MiB, max_object_size: 4MiB, \
                 min_uses: {min_uses}}}"
            ),
        ))
        .pool(Pool::new("p", &[origin]))
        .route(Route::to("p").cache(RouteCache::new().default_ttl("300s")))
}

fn is_hit(status: &str) -> bool {
    status.starts_with("verge; hit")
}

#[tokio::test]
async fn an_object_too_large_for_memory_streams_to_disk_and_is_served_from_there() {
    let o = Origin::start("o").await;
    o.set_body_size(2_000_000); // eight checksummed chunks, 30 times the memory tier's cap
    let mut v = Verge::start(&config(o.addr, 1)).await;
    let first = fetch(&v, "/big", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.body.len(),
        2_000_000,
        "the fetching client got it whole"
    );
    disk_objects(&v, 1).await;
    let again = fetch(&v, "/big", &[]).await;
    assert!(is_hit(&again.cache_status), "{}", again.cache_status);
    assert_eq!(again.body, first.body, "byte-identical from disk");
    for (start, end) in [(1_500_000usize, 1_500_099usize), (262_100, 262_199), (0, 9)] {
        let range = format!("bytes={start}-{end}");
        let got = fetch(&v, "/big", &[("range", &range)]).await;
        assert_eq!(got.status, 206, "{range}");
        assert_eq!(got.body, &first.body[start..=end], "{range}");
    }
    assert_eq!(o.hits("/big"), 1, "one fetch");
    let m = v.metrics().await;
    assert!(m.value("verge_cache_disk_hits_total", &[]) >= Some(4.0));

    v.restart_graceful().await;
    rebuilt(&v).await;
    let after = fetch(&v, "/big", &[]).await;
    assert!(is_hit(&after.cache_status), "{}", after.cache_status);
    assert_eq!(after.body, first.body);
    assert_eq!(o.hits("/big"), 1, "still one fetch after the restart");
}

#[tokio::test]
async fn a_body_over_the_disk_cap_is_served_whole_and_stored_nowhere() {
    let o = Origin::start("o").await;
    o.set_body_size(5_000_000);
    let v = Verge::start(&config(o.addr, 1)).await;
    for n in 1..=2 {
        let got = fetch(&v, "/huge", &[]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body.len(), 5_000_000);
        assert!(!is_hit(&got.cache_status), "{}", got.cache_status);
        assert_eq!(o.hits("/huge"), n);
    }
    let m = v.metrics().await;
    assert_eq!(m.value("verge_cache_disk_objects", &[]), Some(0.0));
    let parts = std::fs::read_dir(v.dir().join("disk"))
        .map(|d| d.filter_map(|e| e.ok()).count())
        .unwrap_or(0);
    assert!(parts <= 1, "only the lock file: {parts} entries");
}

/// With the default admission (`min_uses: 2`), a large object goes to disk at its second
/// fetch, not its first.
#[tokio::test]
async fn a_large_object_reaches_disk_at_its_second_fetch() {
    let o = Origin::start("o").await;
    o.set_body_size(300_000);
    let v = Verge::start(&config(o.addr, 2)).await;
    let first = fetch(&v, "/twice", &[]).await;
    assert_eq!(first.status, 200);
    let second = fetch(&v, "/twice", &[]).await;
    assert!(
        !is_hit(&second.cache_status),
        "not stored at its first fetch"
    );
    assert_eq!(o.hits("/twice"), 2);
    disk_objects(&v, 1).await;
    let third = fetch(&v, "/twice", &[]).await;
    assert!(is_hit(&third.cache_status), "{}", third.cache_status);
    assert_eq!(third.body, second.body);
    assert_eq!(o.hits("/twice"), 2);
}
