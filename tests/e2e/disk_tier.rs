//! The disk tier (`cache.disk`) as a client and the origin see it: objects survive a restart
//! (SIGTERM or `kill -9`) byte for byte with their `Age` carrying on, a corrupted record is a
//! miss and never garbage, ranges are served from disk, the disk budget holds while filling
//! eight times over, a purge before a restart still holds after it (with the index checkpoint
//! too), and a one-time sweep does not push the warm set off disk (`min_uses`).

use crate::support::metrics::{metric_eventually, sum_eventually};
use crate::support::{
    fetch, fetch_with, Cache, Config, Got, Metrics, Origin, Pool, Route, RouteCache, Verge,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A verge caching everything for 300 s, with 1 MiB of memory over `disk` (`cache.disk`).
fn config(origin: SocketAddr, disk: &str) -> Config {
    Config::new()
        .cache(
            Cache::new()
                .memory(1 << 20)
                .max_object_size("512KiB")
                .set("disk", disk),
        )
        .pool(Pool::new("p", &[origin]))
        .route(Route::to("p").cache(RouteCache::new().default_ttl("300s")))
        .purge_allow(&["127.0.0.1/32"])
}

/// Every stored object goes to disk (`min_uses: 1`): these tests are about what the disk tier
/// does with what reaches it; [`a_one_time_sweep_does_not_push_the_warm_set_off_disk`] is
/// about the default admission.
pub(crate) const DISK: &str = "{path: disk, size: 16MiB, segment_size: 1MiB, min_uses: 1}";

/// Wait until the disk tier holds `n` objects (written behind the memory tier).
pub(crate) async fn disk_objects(v: &Verge, n: usize) {
    metric_eventually(
        v,
        Duration::from_secs(10),
        "verge_cache_disk_objects",
        &[],
        |x| x == Some(n as f64),
    )
    .await;
}

/// Wait until the index rebuild after a start is done.
pub(crate) async fn rebuilt(v: &Verge) {
    metric_eventually(
        v,
        Duration::from_secs(10),
        "verge_cache_disk_rebuild_progress",
        &[],
        |x| x == Some(1.0),
    )
    .await;
}

pub(crate) fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join("disk"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

pub(crate) fn disk_usage(dir: &Path) -> u64 {
    segments(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn purge() -> reqwest::Method {
    reqwest::Method::from_bytes(b"PURGE").expect("method")
}

fn age(got: &crate::support::Got) -> u64 {
    got.age.unwrap_or(0)
}

#[tokio::test]
async fn objects_come_back_from_disk_after_sigterm_and_kill_9_byte_identical_with_age() {
    let o = Origin::start("o").await;
    o.set_body_size(300_000); // two checksummed chunks each
    let mut v = Verge::start(&config(o.addr, DISK)).await;
    let paths: Vec<String> = (0..4).map(|i| format!("/d/{i}")).collect();
    let mut first = Vec::new();
    for p in &paths {
        let got = fetch(&v, p, &[]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.cache_status, "verge; fwd=uri-miss; stored", "{p}");
        first.push(got);
    }
    disk_objects(&v, paths.len()).await;
    // the passing of time is what Age is about
    tokio::time::sleep(Duration::from_millis(2100)).await;
    v.restart_graceful().await;
    rebuilt(&v).await;
    for (p, before) in paths.iter().zip(&first) {
        let got = fetch(&v, p, &[]).await;
        assert_same_hit(&got, before, p);
        assert_eq!(got.header("content-type"), before.header("content-type"));
        assert!(
            age(&got) >= age(before) + 2,
            "{p}: Age carries on: {:?}",
            got.age
        );
        assert_eq!(o.hits(p), 1, "{p}: the origin was asked once");
    }
    let m = v.metrics().await;
    let disk_hits = m.value("verge_cache_disk_hits_total", &[]);
    assert!(disk_hits >= Some(paths.len() as f64));
    // read whole from disk, each was promoted to memory (three of these fit in 1 MiB): the
    // last one read is a memory hit now
    let (p, before) = (&paths[3], &first[3]);
    let got = fetch(&v, p, &[]).await;
    assert!(
        got.cache_status.starts_with("verge; hit"),
        "{p}: {}",
        got.cache_status
    );
    assert_eq!(got.body, before.body, "{p}");
    let m = v.metrics().await;
    assert_eq!(
        m.value("verge_cache_disk_hits_total", &[]),
        disk_hits,
        "from memory"
    );
    assert_eq!(m.value("verge_cache_objects", &[]), Some(3.0));

    // more objects, then kill -9 once they are on disk: every one comes back whole
    let more: Vec<String> = (0..4).map(|i| format!("/k/{i}")).collect();
    let mut bodies = Vec::new();
    for p in &more {
        bodies.push(fetch(&v, p, &[]).await.body);
    }
    disk_objects(&v, paths.len() + more.len()).await;
    v.restart().await; // SIGKILL
    rebuilt(&v).await;
    for (p, body) in more.iter().zip(&bodies) {
        let got = fetch(&v, p, &[]).await;
        assert!(
            got.cache_status.starts_with("verge; hit"),
            "{p}: {}",
            got.cache_status
        );
        assert_eq!(&got.body, body, "{p}");
        assert_eq!(o.hits(p), 1, "{p}");
    }
}

/// The scrape in which the hit lane's answers reach `n`: the lane counts an answer after its
/// last byte is written, so a scrape right after the response may not show it yet.
async fn lane_hits_reach(v: &Verge, n: f64) -> Metrics {
    sum_eventually(
        v,
        Duration::from_secs(10),
        "verge_cache_fast_hits_total",
        &[],
        |x| x == n,
    )
    .await
}

/// `got` (for `what`) is a `200` hit with `first`'s body, byte for byte, and its `ETag`.
fn assert_same_hit(got: &Got, first: &Got, what: &str) {
    assert_eq!(got.status, 200, "{what}");
    assert!(
        got.cache_status.starts_with("verge; hit"),
        "{what}: {}",
        got.cache_status
    );
    assert_eq!(got.body, first.body, "{what}: byte-identical");
    assert_eq!(got.header("etag"), first.header("etag"), "{what}");
}

/// A plain request for a fresh object on disk (and in the page cache) is answered by the
/// front door's hit lane, which reads the record whole, verifies it and moves it to memory;
/// a range still goes Pingora's way and seeks on disk; a stale object on disk is never the
/// lane's (it revalidates on the full path).
#[tokio::test]
async fn the_hit_lane_answers_a_disk_hit_and_moves_it_to_memory() {
    let o = Origin::start("o").await;
    o.set_body_size(300_000); // two checksummed chunks
    o.set_etag("/stale", "\"s1\"");
    o.set_headers_stale("/stale", &[("cache-control", "max-age=60")]);
    let mut v = Verge::start(&config(o.addr, DISK)).await;
    let first = fetch(&v, "/lane", &[]).await;
    let ranged = fetch(&v, "/ranged", &[]).await;
    fetch(&v, "/stale", &[]).await;
    disk_objects(&v, 3).await;
    o.set_headers("/stale", &[("cache-control", "max-age=60")]);
    v.restart_graceful().await;
    rebuilt(&v).await;
    let lane_hits = |m: &Metrics| m.sum("verge_cache_fast_hits_total", &[]);
    let disk_hits = |m: &Metrics| m.sum("verge_cache_disk_hits_total", &[]);

    let got = fetch(&v, "/lane", &[]).await;
    assert_same_hit(&got, &first, "/lane");
    let m = lane_hits_reach(&v, 1.0).await;
    assert_eq!(
        (lane_hits(&m), disk_hits(&m)),
        (1.0, 1.0),
        "the lane's disk hit"
    );
    let got = fetch(&v, "/lane", &[]).await;
    assert_eq!(got.body, first.body);
    let m = lane_hits_reach(&v, 2.0).await;
    assert_eq!(
        (lane_hits(&m), disk_hits(&m)),
        (2.0, 1.0),
        "then from memory"
    );

    // a range is Pingora's to answer: it seeks within the disk object
    let got = fetch(&v, "/ranged", &[("range", "bytes=262140-262149")]).await;
    assert_eq!(got.status, 206);
    assert_eq!(got.body, ranged.body[262_140..262_150]);
    let m = v.metrics().await;
    assert_eq!((lane_hits(&m), disk_hits(&m)), (2.0, 2.0));

    // stale on disk: revalidated (a 304) on the full path, not answered by the lane
    let got = fetch(&v, "/stale", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(o.not_modified("/stale"), 1, "revalidated with the origin");
    let m = v.metrics().await;
    assert_eq!(lane_hits(&m), 2.0, "a stale object is not the lane's");
    assert_eq!(
        (o.hits("/lane"), o.hits("/ranged")),
        (1, 1),
        "the origin was asked once for each"
    );
}

/// A disk hit the memory tier's admission turns away (its TinyLFU: memory is full of objects
/// asked for more often) is still the lane's: answered from the record it read, which is read
/// once, not thrown away and read again on Pingora's path.
#[tokio::test]
async fn the_hit_lane_answers_a_disk_hit_the_memory_tier_turns_away() {
    let o = Origin::start("o").await;
    o.set_body_size(300_000); // three fit in the 1 MiB memory tier, four do not
    let v = Verge::start(&config(o.addr, DISK)).await;
    let cold = fetch(&v, "/cold", &[]).await;
    // three hot objects, each asked for five times: the fourth pushes /cold out of memory
    for hot in ["/h1", "/h2", "/h3"] {
        for _ in 0..5 {
            fetch(&v, hot, &[]).await;
        }
    }
    disk_objects(&v, 4).await;
    let m = lane_hits_reach(&v, 12.0).await; // four of each hot object's five
    let lane_hits = |m: &Metrics| m.sum("verge_cache_fast_hits_total", &[]);
    let disk_reads = |m: &Metrics| m.sum("verge_cache_disk_read_seconds_count", &[]);
    let refused = |m: &Metrics| m.sum("verge_cache_admission_rejections_total", &[]);
    let disk_hits = |m: &Metrics| m.sum("verge_cache_disk_hits_total", &[]);
    let before = (lane_hits(&m), disk_reads(&m), refused(&m), disk_hits(&m));

    let got = fetch(&v, "/cold", &[]).await;
    assert_same_hit(&got, &cold, "/cold");
    let m = lane_hits_reach(&v, 13.0).await;
    assert_eq!(
        refused(&m) - before.2,
        1.0,
        "the memory tier's admission turned /cold away"
    );
    assert_eq!(
        (lane_hits(&m) - before.0, disk_hits(&m) - before.3),
        (1.0, 1.0),
        "answered by the lane, one disk hit"
    );
    assert_eq!(disk_reads(&m) - before.1, 1.0, "the record was read once");
    assert_eq!(o.hits("/cold"), 1, "never fetched again");
}

/// Flip one byte in the middle of every segment's data.
fn corrupt_segments(dir: &Path) {
    for seg in segments(dir) {
        let mut bytes = std::fs::read(&seg).expect("read segment");
        let at = bytes.len() / 2;
        bytes[at] ^= 0x55;
        std::fs::write(&seg, bytes).expect("write segment");
    }
}

#[tokio::test]
async fn a_corrupted_record_is_a_miss_not_garbage() {
    let o = Origin::start("o").await;
    o.set_body_size(5000);
    let mut v = Verge::start(&config(o.addr, DISK)).await;
    let first = fetch(&v, "/c", &[]).await;
    disk_objects(&v, 1).await;
    v.stop_graceful();
    corrupt_segments(v.dir());
    v.start_again().await;
    rebuilt(&v).await;
    let got = fetch(&v, "/c", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.cache_status, "verge; fwd=uri-miss; stored", "a miss");
    assert_eq!(o.hits("/c"), 2, "fetched again");
    assert_ne!(
        got.body, first.body,
        "the origin's new answer (it counts requests)"
    );
    assert!(got.body.starts_with("origin=o uri=/c n=2"), "not garbage");
    metric_eventually(
        &v,
        Duration::from_secs(5),
        "verge_cache_disk_corrupt_total",
        &[],
        |x| x == Some(1.0),
    )
    .await;
}

#[tokio::test]
async fn a_range_is_served_from_a_disk_object() {
    let o = Origin::start("o").await;
    o.set_body_size(400_000);
    let mut v = Verge::start(&config(o.addr, DISK)).await;
    let whole = fetch(&v, "/r", &[]).await.body;
    disk_objects(&v, 1).await;
    v.restart_graceful().await;
    rebuilt(&v).await;
    for (start, end) in [(300_000usize, 300_099usize), (262_100, 262_199), (0, 9)] {
        let range = format!("bytes={start}-{end}");
        let got = fetch(&v, "/r", &[("range", &range)]).await;
        assert_eq!(got.status, 206, "{range}");
        assert_eq!(got.body, &whole[start..=end], "{range}");
        assert!(
            got.cache_status.starts_with("verge; hit"),
            "{}",
            got.cache_status
        );
    }
    assert_eq!(o.hits("/r"), 1);
    let m = v.metrics().await;
    assert!(m.value("verge_cache_disk_hits_total", &[]) >= Some(3.0));
}

#[tokio::test]
async fn the_disk_budget_holds_while_filling_eight_times_over() {
    const BUDGET: u64 = 4 << 20;
    let o = Origin::start("o").await;
    o.set_body_size(64 << 10);
    let v = Verge::start(&config(
        o.addr,
        "{path: disk, size: 4MiB, segment_size: 256KiB, min_uses: 1}",
    ))
    .await;
    let dir = v.dir().to_path_buf();
    let (done_tx, mut done) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(async move {
        let mut most = 0;
        loop {
            most = most.max(disk_usage(&dir));
            if *done.borrow() {
                return most;
            }
            tokio::select! {
                _ = done.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    });
    let objects = 8 * BUDGET / (64 << 10);
    for i in 0..objects {
        let got = fetch(&v, &format!("/f/{i}"), &[]).await;
        assert_eq!(got.status, 200);
    }
    metric_eventually(
        &v,
        Duration::from_secs(10),
        "verge_cache_disk_evictions_total",
        &[],
        |x| x.is_some_and(|n| n > 0.0),
    )
    .await;
    let _ = done_tx.send(true);
    let most = watcher.await.expect("watcher");
    assert!(most > BUDGET / 2, "the disk tier was used: {most}");
    assert!(most <= BUDGET, "never over the budget: {most} > {BUDGET}");
    let m = v.metrics().await;
    assert!(m.value("verge_cache_disk_bytes", &[]) <= Some(BUDGET as f64));
    assert_eq!(
        m.value("verge_cache_disk_capacity_bytes", &[]),
        Some(BUDGET as f64)
    );
}

#[tokio::test]
async fn a_url_purged_before_a_restart_is_not_served_after_it() {
    let o = Origin::start("o").await;
    let mut v = Verge::start(&config(o.addr, DISK)).await;
    for p in ["/p", "/q"] {
        fetch(&v, p, &[]).await;
    }
    disk_objects(&v, 2).await;
    let purged = fetch_with(&v, purge(), "/p", &[]).await;
    assert_eq!(purged.status, 200);
    disk_objects(&v, 1).await;
    v.restart_graceful().await;
    rebuilt(&v).await;
    let got = fetch(&v, "/p", &[]).await;
    assert_eq!(
        got.cache_status, "verge; fwd=uri-miss; stored",
        "purged for good"
    );
    assert_eq!(o.hits("/p"), 2);
    assert!(fetch(&v, "/q", &[])
        .await
        .cache_status
        .starts_with("verge; hit"));
    assert_eq!(o.hits("/q"), 1);
    // a kill -9 right after a purge: the purge is on disk too
    fetch_with(&v, purge(), "/q", &[]).await;
    disk_objects(&v, 1).await; // only /p (stored again) is left
    v.restart().await;
    rebuilt(&v).await;
    assert_eq!(
        fetch(&v, "/q", &[]).await.cache_status,
        "verge; fwd=uri-miss; stored"
    );
}

/// The index checkpoint a clean stop wrote, and a purge made after it: a `kill -9` leaves the
/// checkpoint, which still lists the object, and the purge's tombstone after it. The purge
/// wins: the restart scans what followed the checkpoint.
#[tokio::test]
async fn a_purge_made_after_the_index_checkpoint_holds_after_a_kill_9() {
    let o = Origin::start("o").await;
    let mut v = Verge::start(&config(o.addr, DISK).raw(TIME_TO_STOP)).await;
    for p in ["/p", "/q"] {
        fetch(&v, p, &[]).await;
    }
    disk_objects(&v, 2).await;
    v.restart_graceful().await;
    rebuilt(&v).await;
    let checkpoint = v.dir().join("disk").join("index.ckpt");
    assert!(checkpoint.exists(), "written when the node stopped");
    // only on disk: the purge finds it there, removes it and says so
    let purged = fetch_with(&v, purge(), "/p", &[]).await;
    assert_eq!(purged.status, 200, "a disk-only object was purged");
    disk_objects(&v, 1).await;
    v.restart().await;
    rebuilt(&v).await;
    assert_eq!(
        fetch(&v, "/p", &[]).await.cache_status,
        "verge; fwd=uri-miss; stored",
        "purged after the checkpoint, not served from it"
    );
    assert_eq!(o.hits("/p"), 2);
    assert!(fetch(&v, "/q", &[])
        .await
        .cache_status
        .starts_with("verge; hit"));
    assert_eq!(o.hits("/q"), 1, "the checkpoint's other object is served");
}

pub(crate) async fn site(v: &Verge, path: &str) -> crate::support::Got {
    crate::support::get(v, "site.test", path).await
}

/// A control plane, and a node of it with [`DISK`] that keeps its snapshot in a state file,
/// serving `o` for every host with a TTL of 300 s.
pub(crate) async fn controlled_node_with_disk(
    o: &Origin,
) -> (crate::support::control_plane::Cp, Verge) {
    controlled_node_with_disk_and(o, |c| c).await
}

/// The server block of a node given time to stop: with the tests' `grace_period: 0s`, pingora
/// may shut the background runtime down before the disk tier's flush service has started to
/// close the tier (and write the index checkpoint) at SIGTERM.
const TIME_TO_STOP: &str = "server: {threads: 2, grace_period: 1s, graceful_shutdown_timeout: 5s, \
                            pid_file: \"{dir}/verge.pid\", upgrade_sock: \"{dir}/upgrade.sock\"}";

/// [`controlled_node_with_disk`], its config changed by `with`.
async fn controlled_node_with_disk_and(
    o: &Origin,
    with: impl FnOnce(Config) -> Config,
) -> (crate::support::control_plane::Cp, Verge) {
    use crate::support::config::Control;
    use crate::support::control_plane::{policy, Cp};
    use serde_json::json;
    let cp = Cp::start().await;
    let control = Control::new(
        &format!("http://{}", cp.addr),
        "disk-node",
        &cp.dir.path().join("node.token"),
    )
    .state_file("{dir}/snapshot.json")
    .wait("5s");
    let config = Config::new()
        .cache(
            Cache::new()
                .memory(1 << 20)
                .max_object_size("512KiB")
                .set("disk", DISK),
        )
        .control(control);
    let v = Verge::start(&with(config)).await;
    cp.put_policy(policy(o, json!({"default_ttl": "300s"})), 0)
        .await;
    assert!(cp.converged(1).await);
    (cp, v)
}

/// A control-plane purge the node applied is on disk with the node's snapshot
/// (`control.state_file`) and its sweep removes the disk copy: after a restart with the control
/// plane down, the object fetched before the purge is not served.
#[tokio::test]
async fn a_control_plane_purge_applied_before_a_restart_holds_after_it() {
    use serde_json::json;
    let o = Origin::start("o").await;
    let (mut cp, mut v) = controlled_node_with_disk(&o).await;
    assert_eq!(site(&v, "/i").await.status, 200);
    assert!(site(&v, "/kept").await.cache_status.ends_with("stored"));
    disk_objects(&v, 2).await;
    cp.purge(json!({"kind": "url", "target": "site.test/i"}))
        .await;
    assert!(cp.converged(1).await);
    // the purge's sweep takes the old object out of memory and off disk
    disk_objects(&v, 1).await;

    cp.kill();
    v.restart_graceful().await;
    purged_i_refetched_and_kept_served(&v, &o).await;
}

/// After the restart: `/i`, purged before it, is fetched again, not served from disk; `/kept`
/// is a hit.
async fn purged_i_refetched_and_kept_served(v: &Verge, o: &Origin) {
    rebuilt(v).await;
    let got = site(v, "/i").await;
    assert_eq!(got.status, 200);
    assert!(
        !got.cache_status.starts_with("verge; hit"),
        "{}",
        got.cache_status
    );
    assert_eq!(o.hits("/i"), 2, "fetched again, not served from disk");
    assert!(site(v, "/kept")
        .await
        .cache_status
        .starts_with("verge; hit"));
    assert_eq!(o.hits("/kept"), 1);
}

/// A control-plane purge applied after the index checkpoint (written at a clean stop), then a
/// `kill -9` with the control plane down: the object the checkpoint still lists is not served.
#[tokio::test]
async fn a_control_plane_purge_after_the_index_checkpoint_holds_after_a_kill_9() {
    use serde_json::json;
    let o = Origin::start("o").await;
    let (mut cp, mut v) = controlled_node_with_disk_and(&o, |c| c.raw(TIME_TO_STOP)).await;
    assert_eq!(site(&v, "/i").await.status, 200);
    assert!(site(&v, "/kept").await.cache_status.ends_with("stored"));
    disk_objects(&v, 2).await;
    v.restart_graceful().await;
    rebuilt(&v).await;
    assert!(v.dir().join("disk").join("index.ckpt").exists());
    assert!(cp.converged(1).await);
    cp.purge(json!({"kind": "url", "target": "site.test/i"}))
        .await;
    assert!(cp.converged(1).await);
    disk_objects(&v, 1).await;

    cp.kill();
    v.restart().await;
    purged_i_refetched_and_kept_served(&v, &o).await;
}

/// A stale object that only the disk tier holds is revalidated once: the 304's headers are
/// written to disk with the same body, so after another restart it is fresh, without the origin.
#[tokio::test]
async fn a_304_for_a_disk_object_is_kept_on_disk() {
    let o = Origin::start("o").await;
    o.set_etag("/e", "\"v1\"");
    o.set_headers_stale("/e", &[("cache-control", "max-age=60")]);
    let mut v = Verge::start(&config(o.addr, DISK)).await;
    let first = fetch(&v, "/e", &[]).await;
    disk_objects(&v, 1).await;
    o.set_headers("/e", &[("cache-control", "max-age=60")]);
    v.restart_graceful().await;
    rebuilt(&v).await;
    let got = fetch(&v, "/e", &[]).await;
    assert_eq!(got.body, first.body, "the stored body, revalidated");
    assert_eq!(o.not_modified("/e"), 1, "revalidated with the origin");
    v.restart_graceful().await;
    rebuilt(&v).await;
    let got = fetch(&v, "/e", &[]).await;
    assert!(
        got.cache_status.starts_with("verge; hit"),
        "{}",
        got.cache_status
    );
    assert_eq!(got.body, first.body);
    assert_eq!(
        (o.hits("/e"), o.not_modified("/e")),
        (2, 1),
        "fresh from disk"
    );
}

/// Poll the admin listener at `admin` until `holds` is true of a scrape.
async fn admin_metric(admin: SocketAddr, name: &str, holds: impl Fn(Option<f64>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // the admin listener is not up at first, and moves to the new process in an upgrade
        let text = match crate::support::client()
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let last = Metrics::parse(&text).value(name, &[]);
        if holds(last) {
            return;
        }
        assert!(Instant::now() < deadline, "{name}: {last:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `verge upgrade` with clients reading cached objects all through it: no request fails or
/// gets a wrong body, the new process takes the disk tier over once the old one has let it go,
/// and from then on every object is a hit again, without the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_hands_the_disk_tier_over_with_requests_in_flight() {
    use crate::binary_upgrade::{signal, upgrade, Reaper};
    use crate::support::fetch::send;
    use crate::support::process::{Launch, TestConfig};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let o = Origin::start("o").await;
    o.set_body_size(20_000);
    let cfg = TestConfig::write(&config(o.addr, DISK).raw(
        "server: {threads: 2, grace_period: 1s, graceful_shutdown_timeout: 1s, \
         pid_file: \"{dir}/verge.pid\", upgrade_sock: \"{dir}/upgrade.sock\"}",
    ));
    let mut node = Reaper {
        child: Launch::verge().spawn(&cfg.path),
        pid_file: cfg.dir.path().join("verge.pid"),
    };
    let (http, admin) = (cfg.http, cfg.admin);
    admin_metric(admin, "verge_cache_disk_rebuild_progress", |x| {
        x == Some(1.0)
    })
    .await;
    let paths: Vec<String> = (0..20).map(|i| format!("/u/{i}")).collect();
    for p in &paths {
        assert_eq!(
            send(http, reqwest::Method::GET, None, p, &[]).await.status,
            200
        );
    }
    admin_metric(admin, "verge_cache_disk_objects", |x| x == Some(20.0)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for t in 0..4 {
        let (stop, ok, bad, paths) = (stop.clone(), ok.clone(), bad.clone(), paths.clone());
        load.push(tokio::spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let p = &paths[i % paths.len()];
                let got = send(http, reqwest::Method::GET, None, p, &[]).await;
                let whole = got.status == 200
                    && got.body.len() == 20_000
                    && got.body.starts_with(&format!("origin=o uri={p} n="));
                let counter = if whole { &ok } else { &bad };
                counter.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = upgrade(&cfg.path).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the old process did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the new process has taken the directory over and rebuilt its index
    admin_metric(admin, "verge_cache_disk_rebuild_progress", |x| {
        x == Some(1.0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "every answer whole and right"
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
    // every object is on disk again (some refetched during the handover), and served from it
    admin_metric(admin, "verge_cache_disk_objects", |x| x == Some(20.0)).await;
    let asked: Vec<u64> = paths.iter().map(|p| o.hits(p)).collect();
    for p in &paths {
        let got = send(http, reqwest::Method::GET, None, p, &[]).await;
        assert!(
            got.cache_status.starts_with("verge; hit"),
            "{p}: {}",
            got.cache_status
        );
    }
    let after: Vec<u64> = paths.iter().map(|p| o.hits(p)).collect();
    assert_eq!(asked, after, "no origin request once handed over");
    let m = Metrics::scrape(admin).await;
    assert_eq!(m.value("verge_cache_disk_corrupt_total", &[]), Some(0.0));
    let new: u32 = std::fs::read_to_string(&node.pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert!(signal("0", new), "the new process runs");
}

/// `kill -9` while objects are being fetched and written behind: after the restart every
/// answer is a whole, right body (from disk or fetched again), never a torn one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_kill_9_in_the_middle_of_fills_only_whole_objects_are_served() {
    let o = Origin::start("o").await;
    o.set_body_size(400_000);
    let mut v = Verge::start(&config(
        o.addr,
        "{path: disk, size: 64MiB, segment_size: 4MiB, min_uses: 1}",
    ))
    .await;
    let paths: Vec<String> = (0..40).map(|i| format!("/m/{i}")).collect();
    let http = v.http;
    let mut fills = Vec::new();
    for p in paths.clone() {
        // the kill cuts some of these: their errors are expected
        fills.push(tokio::spawn(async move {
            let url = format!("http://{http}{p}");
            let sent = crate::support::client()
                .get(url)
                .header("host", "c.test")
                .send()
                .await;
            if let Ok(r) = sent {
                let _ = r.bytes().await;
            }
        }));
    }
    // some are on disk, some being written, some still arriving
    metric_eventually(
        &v,
        Duration::from_secs(10),
        "verge_cache_disk_objects",
        &[],
        |x| x.is_some_and(|n| n >= 5.0),
    )
    .await;
    v.restart().await; // SIGKILL
    for f in fills {
        let _ = f.await;
    }
    rebuilt(&v).await;
    let mut from_disk = 0;
    for p in &paths {
        let got = fetch(&v, p, &[]).await;
        assert_eq!(got.status, 200, "{p}");
        assert_eq!(got.body.len(), 400_000, "{p}: whole");
        assert!(got.body.starts_with(&format!("origin=o uri={p} n=")), "{p}");
        assert!(
            got.body[60..].bytes().all(|b| b == b'.'),
            "{p}: its own padding"
        );
        if got.cache_status.starts_with("verge; hit") {
            from_disk += 1;
        }
    }
    assert!(
        from_disk >= 5,
        "objects written before the kill are hits: {from_disk}"
    );
    let m = v.metrics().await;
    assert_eq!(m.value("verge_cache_disk_corrupt_total", &[]), Some(0.0));
}

/// Two clients stream a response while its origin still sends it (the fetching one and one
/// collapsed onto the fill); once whole it is written to disk, and after a restart it is a hit
/// from disk with the same bytes.
#[tokio::test]
async fn a_streamed_fill_reaches_the_disk_once_whole() {
    use crate::support::{RawOrigin, Step};
    let o = RawOrigin::start().await;
    let pieces: Vec<Vec<u8>> = (0..3u8).map(|i| vec![b'a' + i; 100_000]).collect();
    let body: Vec<u8> = pieces.concat();
    let mut steps = vec![Step::Write(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 300000\r\n\r\n".to_vec(),
    )];
    steps.push(Step::Piece(pieces[0].clone()));
    steps.push(Step::Gate);
    steps.extend(pieces[1..].iter().map(|p| Step::Piece(p.clone())));
    o.set("/s", steps);
    let mut v = Verge::start(&config(o.addr, DISK)).await;
    let get = || {
        crate::support::client()
            .get(v.url("/s"))
            .header("host", "c.test")
            .send()
    };
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut r = get().await.expect("response head");
        let first = r.chunk().await.expect("read").expect("first bytes");
        readers.push((r, first.to_vec()));
    }
    let m = v.metrics().await;
    assert_eq!(
        m.value("verge_cache_disk_objects", &[]),
        Some(0.0),
        "not whole yet"
    );
    o.open_gate();
    for (mut r, mut got) in readers {
        while let Some(b) = r.chunk().await.expect("read") {
            got.extend_from_slice(&b);
        }
        assert_eq!(got, body, "each reader got the whole body");
    }
    assert_eq!(o.hits("/s"), 1);
    disk_objects(&v, 1).await;
    v.restart_graceful().await;
    rebuilt(&v).await;
    let got = fetch(&v, "/s", &[]).await;
    assert!(
        got.cache_status.starts_with("verge; hit"),
        "{}",
        got.cache_status
    );
    assert_eq!(got.body.as_bytes(), &body[..]);
    assert_eq!(o.hits("/s"), 1, "from disk");
}

/// Fill the warm set (each path asked twice), then sweep `sweep` other paths once each, restart,
/// and return how many of the warm paths the origin was asked for again.
async fn warm_refetched_after_a_sweep(disk: &str, sweep: u64) -> u64 {
    let o = Origin::start("o").await;
    o.set_body_size(64 << 10);
    let mut v = Verge::start(&config(o.addr, disk)).await;
    let warm: Vec<String> = (0..4).map(|i| format!("/w/{i}")).collect();
    for p in &warm {
        for _ in 0..2 {
            assert_eq!(fetch(&v, p, &[]).await.status, 200);
        }
    }
    disk_objects(&v, warm.len()).await;
    for i in 0..sweep {
        assert_eq!(fetch(&v, &format!("/s/{i}"), &[]).await.status, 200);
    }
    v.restart_graceful().await;
    rebuilt(&v).await;
    for p in &warm {
        assert_eq!(fetch(&v, p, &[]).await.status, 200);
    }
    // the last swept path was asked once, once the disk was full: with the default admission
    // it never reached disk
    let last = format!("/s/{}", sweep - 1);
    assert_eq!(fetch(&v, &last, &[]).await.status, 200);
    let swept_refetched = o.hits(&last) == 2;
    let refetched = warm.iter().filter(|p| o.hits(p) > 1).count() as u64;
    let through = disk.contains("min_uses: 1");
    assert_eq!(
        swept_refetched, !through,
        "a path asked once when the disk is full reaches disk only with min_uses: 1"
    );
    // the first swept path was asked once while the disk had free room: written at once
    // whatever min_uses says, and kept (with the default admission nothing came after it to
    // push it out; written through, the rest of the sweep did)
    assert_eq!(fetch(&v, "/s/0", &[]).await.status, 200);
    assert_eq!(
        o.hits("/s/0"),
        if through { 2 } else { 1 },
        "a path asked once while the disk had room is on disk"
    );
    refetched
}

#[tokio::test]
async fn a_one_time_sweep_does_not_push_the_warm_set_off_disk() {
    // 4 MiB of disk, and a sweep of 6 MiB of 64 KiB objects asked for once each
    let sweep = 6 * (1 << 20) / (64 << 10);
    // the default, min_uses 2: the sweep reaches disk only while the disk has free room (its
    // first objects), never once the disk is full, and the warm set is all there
    let default = "{path: disk, size: 4MiB, segment_size: 256KiB}";
    assert_eq!(warm_refetched_after_a_sweep(default, sweep).await, 0);
    // every object written through: the sweep pushes the oldest segments, warm set included, out
    let through = "{path: disk, size: 4MiB, segment_size: 256KiB, min_uses: 1}";
    assert_eq!(warm_refetched_after_a_sweep(through, sweep).await, 4);
}

/// With `server.grace_period: 0s` and `graceful_shutdown_timeout: 0s`, Pingora stops its
/// runtimes right after SIGTERM, dropping the disk tier's flush service before (or while) it
/// closes the tier: the close runs at exit anyway, so the index checkpoint is written, and a
/// restart serves every object from disk.
#[tokio::test]
async fn sigterm_without_grace_still_closes_the_disk_tier_with_a_checkpoint() {
    let o = Origin::start("o").await;
    o.set_body_size(16 << 10);
    let no_grace = "server: {threads: 2, grace_period: 0s, graceful_shutdown_timeout: 0s, \
                    pid_file: \"{dir}/verge.pid\", upgrade_sock: \"{dir}/upgrade.sock\"}";
    let mut v = Verge::start(&config(o.addr, DISK).raw(no_grace)).await;
    let paths: Vec<String> = (0..20).map(|i| format!("/g/{i}")).collect();
    for p in &paths {
        assert_eq!(fetch(&v, p, &[]).await.status, 200);
    }
    disk_objects(&v, paths.len()).await;
    let checkpoint = v.dir().join("disk").join("index.ckpt");
    assert!(!checkpoint.exists(), "no checkpoint yet (none is due)");
    v.stop_graceful();
    assert!(checkpoint.exists(), "the checkpoint written at close");
    v.start_again().await;
    rebuilt(&v).await;
    for p in &paths {
        let got = fetch(&v, p, &[]).await;
        assert!(
            got.cache_status.starts_with("verge; hit"),
            "{p}: {}",
            got.cache_status
        );
        assert_eq!(o.hits(p), 1, "{p} from disk");
    }
}
