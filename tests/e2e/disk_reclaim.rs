//! Hard invalidations and the disk tier: a purge by prefix, tag, host or URL removes the disk
//! copies too (never served again, not even after a restart with the control plane down), and
//! their space comes back: segments left dead are deleted, one left mostly dead is compacted
//! (its live object copied forward, byte for byte), so `verge_cache_disk_bytes` falls.

use crate::disk_tier::{controlled_node_with_disk, disk_objects, disk_usage, rebuilt, segments};
use crate::support::metrics::metric_eventually;
use crate::support::{get, Origin, Verge};
use serde_json::json;
use std::time::Duration;

/// One record of a 300 kB body on disk (head, meta, body, checksums): three fill a 1 MiB
/// segment.
const BODY: u64 = 300_000;
const RECORD_MAX: f64 = 301_500.0;

fn is_hit(status: &str) -> bool {
    status.starts_with("verge; hit")
}

/// Wait until `verge_cache_disk_bytes` is at most `most`.
async fn disk_bytes_at_most(v: &Verge, most: f64) {
    metric_eventually(
        v,
        Duration::from_secs(10),
        "verge_cache_disk_bytes",
        &[],
        |x| x.is_some_and(|b| b <= most),
    )
    .await;
}

#[tokio::test]
async fn hard_invalidations_of_every_kind_free_the_disk_copies_and_their_space() {
    let o = Origin::start("o").await;
    o.set_body_size(BODY);
    for i in 0..3 {
        o.set_headers(&format!("/t/{i}"), &[("surrogate-key", "sale")]);
    }
    let (mut cp, mut v) = controlled_node_with_disk(&o).await;
    // written in this order, three to a segment: /x (a prefix), /t (a tag), other.test's /h
    // (a host), /k (two of three purged by URL), /z (kept)
    let groups: [(&str, &str); 5] = [
        ("site.test", "/x/"),
        ("site.test", "/t/"),
        ("other.test", "/h/"),
        ("site.test", "/k/"),
        ("site.test", "/z/"),
    ];
    let mut first = std::collections::HashMap::new();
    for (host, dir) in groups {
        for i in 0..3 {
            let path = format!("{dir}{i}");
            let got = get(&v, host, &path).await;
            assert_eq!(got.status, 200, "{path}");
            first.insert(path, got.body);
        }
    }
    disk_objects(&v, 15).await;
    assert_eq!(segments(v.dir()).len(), 5, "three objects to a segment");

    cp.purge(json!({"kind": "prefix", "target": "site.test/x"}))
        .await;
    disk_objects(&v, 12).await;
    cp.purge(json!({"kind": "tag", "target": "sale"})).await;
    disk_objects(&v, 9).await;
    cp.purge(json!({"kind": "host", "target": "other.test"}))
        .await;
    disk_objects(&v, 6).await;
    for i in [1, 2] {
        cp.purge(json!({"kind": "url", "target": format!("site.test/k/{i}")}))
            .await;
    }
    disk_objects(&v, 4).await;
    assert!(cp.converged(1).await);
    // what is left: /k/0 and the three /z objects, with the tombstones of the purges
    disk_bytes_at_most(&v, 4.0 * RECORD_MAX + 4096.0).await;
    assert_eq!(segments(v.dir()).len(), 2, "the dead segments are gone");
    let on_disk = disk_usage(v.dir()) as f64;
    assert!(on_disk <= 4.0 * RECORD_MAX + 4096.0, "{on_disk}");

    // after a restart with the control plane down, only the kept objects are on disk, the
    // compacted /k/0 among them; then every purged URL is fetched again, once
    cp.kill();
    v.restart_graceful().await;
    rebuilt(&v).await;
    disk_objects(&v, 4).await;
    for (host, dir) in groups {
        for i in 0..3 {
            let path = format!("{dir}{i}");
            let got = get(&v, host, &path).await;
            assert_eq!(got.status, 200, "{path}");
            if dir == "/z/" || path == "/k/0" {
                assert!(is_hit(&got.cache_status), "{path}: {}", got.cache_status);
                assert_eq!(got.body, first[&path], "{path}: the stored body");
                assert_eq!(o.hits(&path), 1, "{path}");
            } else {
                assert!(!is_hit(&got.cache_status), "{path}: {}", got.cache_status);
                assert_eq!(o.hits(&path), 2, "{path}: fetched again");
            }
        }
    }
}
