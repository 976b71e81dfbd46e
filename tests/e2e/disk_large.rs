//! Objects larger than the memory tier's `max_object_size` live on the disk tier under its own
//! cap (`cache.disk.max_object_size`): the fetch streams to disk as the body arrives while its
//! client is served, later requests are disk hits (ranges seek), a restart keeps them, and a
//! body over the disk tier's cap is served whole and stored nowhere.

use crate::disk_tier::{disk_objects, rebuilt};
use crate::support::{fetch, Cache, Config, Origin, Pool, Route, RouteCache, Verge};
use std::net::SocketAddr;

/// 64 KiB objects in memory; up to 4 MiB on disk.
fn config(origin: SocketAddr, min_uses: u32) -> Config {
    config_sized(origin, min_uses, "32MiB", "4MiB")
}

/// [`config`] with `size` of disk and objects up to `max` on it.
fn config_sized(origin: SocketAddr, min_uses: u32, size: &str, max: &str) -> Config {
    Config::new()
        .cache(Cache::new().memory(1 << 20).max_object_size("64KiB").set(
            "disk",
            &format!(
                "{{path: disk, size: {size}, segment_size: 1MiB, max_object_size: {max}, \
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

/// With the default admission (`min_uses: 2`), a large object goes to disk at its first fetch
/// while the disk has free room, and at its second once the disk is full.
#[tokio::test]
async fn a_large_object_reaches_disk_at_its_second_fetch_once_the_disk_is_full() {
    let o = Origin::start("o").await;
    o.set_body_size(300_000);
    // 4 MiB of disk in 1 MiB segments: full (within a segment of the budget) past 3 MiB
    let v = Verge::start(&config_sized(o.addr, 2, "4MiB", "1MiB")).await;
    let fill = 11;
    for i in 0..fill {
        assert_eq!(fetch(&v, &format!("/once/{i}"), &[]).await.status, 200);
    }
    // each asked once, all written: the disk had room
    disk_objects(&v, fill).await;
    assert!(
        is_hit(&fetch(&v, "/once/0", &[]).await.cache_status),
        "on disk after one fetch"
    );
    let first = fetch(&v, "/twice", &[]).await;
    assert_eq!(first.status, 200);
    let second = fetch(&v, "/twice", &[]).await;
    assert!(
        !is_hit(&second.cache_status),
        "not stored at its first fetch"
    );
    assert_eq!(o.hits("/twice"), 2);
    disk_objects(&v, fill + 1).await;
    let third = fetch(&v, "/twice", &[]).await;
    assert!(is_hit(&third.cache_status), "{}", third.cache_status);
    assert_eq!(third.body, second.body);
    assert_eq!(o.hits("/twice"), 2);
}

/// Bytes in the disk tier's directory that are not whole segments yet: objects streaming in.
fn streaming_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("disk"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A chunked response (no `Content-Length`) outgrows the memory tier while its client streams
/// it: its bytes are on disk before the origin has sent the rest, the client gets it whole, and
/// the next request is a disk hit, after a restart too (a streaming reader of a fill that goes
/// to disk).
#[tokio::test]
async fn a_large_fill_streams_to_disk_while_its_client_reads_it() {
    use crate::support::{RawOrigin, Step};
    let o = RawOrigin::start().await;
    let pieces: Vec<Vec<u8>> = (0..6u8).map(|i| vec![b'a' + i; 500_000]).collect();
    let body: Vec<u8> = pieces.concat();
    let chunk = |p: &[u8]| {
        let mut framed = format!("{:x}\r\n", p.len()).into_bytes();
        framed.extend_from_slice(p);
        framed.extend_from_slice(b"\r\n");
        framed
    };
    let mut steps = vec![Step::Write(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec(),
    )];
    steps.extend(pieces[..3].iter().map(|p| Step::Piece(chunk(p))));
    steps.push(Step::Gate);
    steps.extend(pieces[3..].iter().map(|p| Step::Piece(chunk(p))));
    steps.push(Step::Write(b"0\r\n\r\n".to_vec()));
    o.set("/s", steps);
    let mut v = Verge::start(&config(o.addr, 1)).await;
    let mut r = crate::support::client()
        .get(v.url("/s"))
        .header("host", "c.test")
        .send()
        .await
        .expect("response head");
    let mut got = r
        .chunk()
        .await
        .expect("read")
        .expect("first bytes")
        .to_vec();
    // half the body has arrived: it is on disk already (not whole, so not in the index)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while streaming_bytes(v.dir()) < 1_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            streaming_bytes(v.dir())
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let m = v.metrics().await;
    assert_eq!(m.value("verge_cache_disk_objects", &[]), Some(0.0));
    o.open_gate();
    while let Some(b) = r.chunk().await.expect("read") {
        got.extend_from_slice(&b);
    }
    assert_eq!(got, body, "the client got the whole body");
    disk_objects(&v, 1).await;
    assert_eq!(streaming_bytes(v.dir()), 0, "the object is a segment now");
    let hit = fetch(&v, "/s", &[]).await;
    assert!(is_hit(&hit.cache_status), "{}", hit.cache_status);
    assert_eq!(hit.body.as_bytes(), &body[..]);
    v.restart_graceful().await;
    rebuilt(&v).await;
    // (without a Content-Length, pingora answers a range with the whole body, as for an
    // object in memory)
    let hit = fetch(&v, "/s", &[]).await;
    assert!(is_hit(&hit.cache_status), "{}", hit.cache_status);
    assert_eq!(hit.body.as_bytes(), &body[..]);
    assert_eq!(o.hits("/s"), 1, "fetched once");
}
