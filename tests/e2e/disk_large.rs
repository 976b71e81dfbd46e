//! Objects larger than the memory tier's `max_object_size` live on the disk tier under its own
//! cap (`cache.disk.max_object_size`): the fetch streams to disk as the body arrives while its
//! client is served, later requests are disk hits (ranges seek), a restart keeps them, and a
//! body over the disk tier's cap is served whole and stored nowhere. A request that arrives
//! while such an object streams to disk attaches to that fetch (one origin request), even after
//! the start of the body left memory: it reads that from the `.part` file.

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

/// Pieces of 512 KiB the scripted origin sends before its gate: 8 MiB, twice the fill's lag
/// window (`max(64 KiB, 4 MiB)`), so the start of the body is no longer in memory, plus a piece
/// that leaves a chunk on disk unfinished.
const BEFORE_GATE: usize = 16;
const PIECE: usize = 512 << 10;
const ODD_PIECE: usize = 100_000;
/// Pieces after the gate.
const AFTER_GATE: usize = 8;

/// A verge that streams objects of up to 16 MiB to disk (64 KiB in memory), purges allowed.
fn attach_config(origin: SocketAddr) -> Config {
    Config::new()
        .cache(Cache::new().memory(1 << 20).max_object_size("64KiB").set(
            "disk",
            "{path: disk, size: 64MiB, segment_size: 1MiB, max_object_size: 16MiB, min_uses: 1}",
        ))
        .pool(Pool::new("p", &[origin]))
        .route(Route::to("p").cache(RouteCache::new().default_ttl("300s")))
        .purge_allow(&["127.0.0.1/32"])
}

/// The large body: no two 512 KiB pieces alike, no byte alike to its neighbours.
fn large_body() -> Vec<u8> {
    let len = (BEFORE_GATE + AFTER_GATE) * PIECE + ODD_PIECE;
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ (i / PIECE) as u8)
        .collect()
}

/// The scripted answer for `body` (with `Content-Length`): everything up to the gate, then
/// the rest, or (`fail`) one more piece and a reset.
fn gated_steps(body: &[u8], fail: bool) -> Vec<crate::support::Step> {
    use crate::support::Step;
    let head = format!(
        "HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut steps = vec![Step::Write(head.into_bytes())];
    let split = BEFORE_GATE * PIECE + ODD_PIECE;
    let (before, after) = body.split_at(split);
    steps.extend(before.chunks(PIECE).map(|p| Step::Piece(p.to_vec())));
    steps.push(Step::Gate);
    if fail {
        steps.push(Step::Piece(after[..PIECE].to_vec()));
        steps.push(Step::Sleep(std::time::Duration::from_millis(200)));
        steps.push(Step::Reset);
    } else {
        steps.extend(after.chunks(PIECE).map(|p| Step::Piece(p.to_vec())));
    }
    steps
}

/// Start a GET of `path` and read its body to the end in a task of its own (a client that
/// keeps up with the fill).
async fn read_in_background(
    v: &Verge,
    path: &str,
    headers: &[(&str, &str)],
) -> (
    u16,
    tokio::task::JoinHandle<Result<Vec<u8>, reqwest::Error>>,
) {
    let mut req = crate::support::client()
        .get(v.url(path))
        .header("host", "c.test");
    for (k, val) in headers {
        req = req.header(*k, *val);
    }
    let mut r = req.send().await.expect("response head");
    let status = r.status().as_u16();
    let task = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(b) = r.chunk().await? {
            got.extend_from_slice(&b);
        }
        Ok(got)
    });
    (status, task)
}

/// Start a GET of `path` and read its first bytes: the request is attached (or went to the
/// origin) once this returns.
async fn first_bytes(v: &Verge, path: &str) -> (Vec<u8>, reqwest::Response) {
    let mut r = crate::support::client()
        .get(v.url(path))
        .header("host", "c.test")
        .send()
        .await
        .expect("response head");
    assert_eq!(r.status(), 200);
    let first = r
        .chunk()
        .await
        .expect("read")
        .expect("first bytes")
        .to_vec();
    (first, r)
}

async fn read_rest(mut r: reqwest::Response, mut got: Vec<u8>) -> Result<Vec<u8>, reqwest::Error> {
    while let Some(b) = r.chunk().await? {
        got.extend_from_slice(&b);
    }
    Ok(got)
}

/// Wait until every whole chunk sent before the gate is in the `.part` file.
async fn before_gate_on_disk(v: &Verge) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while streaming_bytes(v.dir()) < (BEFORE_GATE * PIECE) as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "on disk: {}",
            streaming_bytes(v.dir())
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A request that arrives while a large object streams to disk, after the start of its body
/// left memory, attaches to that fill: the start comes from the `.part` file (read on after
/// the file became a segment), the rest as it arrives, byte-identical, and the origin is asked
/// once. Ranges attach too (the fill's reader seeks).
#[tokio::test]
async fn a_request_during_a_large_fill_attaches_to_it_instead_of_fetching_again() {
    let o = crate::support::RawOrigin::start().await;
    let body = large_body();
    o.set("/late", gated_steps(&body, false));
    let v = Verge::start(&attach_config(o.addr)).await;
    let (status, a) = read_in_background(&v, "/late", &[]).await;
    assert_eq!(status, 200);
    before_gate_on_disk(&v).await;
    let (first, b) = first_bytes(&v, "/late").await;
    assert_eq!(
        &first[..],
        &body[..first.len()],
        "the start, from the .part file"
    );
    assert_eq!(o.hits("/late"), 1, "b attached");
    // a range inside what is on disk, and one that waits for the rest of the body
    let (early_status, early) =
        read_in_background(&v, "/late", &[("range", "bytes=300000-300099")]).await;
    assert_eq!(early_status, 206);
    let early = early.await.expect("join").expect("early range");
    assert_eq!(&early[..], &body[300_000..300_100]);
    // (its head waits in verge's write buffer for the first bytes: the whole request runs in
    // a task of its own)
    let tail = format!("bytes={}-{}", body.len() - 100, body.len() - 1);
    let tail_read = tokio::spawn(
        crate::support::client()
            .get(v.url("/late"))
            .header("host", "c.test")
            .header("range", tail)
            .send(),
    );
    assert_eq!(o.hits("/late"), 1, "nobody went to the origin again yet");
    o.open_gate();
    let a = a.await.expect("join").expect("a reads the whole body");
    assert!(a == body, "a: byte-identical");
    // b has read only its first bytes: the .part file it reads from becomes a segment
    disk_objects(&v, 1).await;
    assert_eq!(streaming_bytes(v.dir()), 0, "renamed into a segment");
    let read_bytes = |m: &crate::support::Metrics| {
        m.value("verge_cache_disk_read_bytes_total", &[])
            .unwrap_or(0.0)
    };
    let before = read_bytes(&v.metrics().await);
    let b = read_rest(b, first).await.expect("b reads the whole body");
    assert!(
        b == body,
        "b: byte-identical ({} of {} bytes)",
        b.len(),
        body.len()
    );
    let after = read_bytes(&v.metrics().await);
    assert!(
        after > before,
        "b read on from the renamed file: {before} -> {after}"
    );
    let tail_got = tail_read.await.expect("join").expect("tail head");
    assert_eq!(tail_got.status(), 206);
    let tail_got = tail_got.bytes().await.expect("tail");
    assert_eq!(&tail_got[..], &body[body.len() - 100..]);
    assert_eq!(o.hits("/late"), 1, "one origin fetch for every client");
    disk_objects(&v, 1).await;
    let hit = crate::support::client()
        .get(v.url("/late"))
        .header("host", "c.test")
        .send()
        .await
        .expect("hit");
    let status = crate::support::fetch::cache_status_of(hit.headers());
    assert!(is_hit(&status), "{status}");
    assert!(
        hit.bytes().await.expect("body") == body,
        "the disk hit is whole"
    );
}

/// A fetch that fails mid-body fails the requests attached to it late too: an error, never a
/// body that ends as if it were whole.
#[tokio::test]
async fn a_late_reader_of_a_large_fill_that_fails_gets_an_error() {
    let o = crate::support::RawOrigin::start().await;
    let body = large_body();
    o.set("/cut", gated_steps(&body, true));
    let v = Verge::start(&attach_config(o.addr)).await;
    let (_, a) = read_in_background(&v, "/cut", &[]).await;
    before_gate_on_disk(&v).await;
    let (first, b) = first_bytes(&v, "/cut").await;
    assert_eq!(&first[..], &body[..first.len()]);
    assert_eq!(o.hits("/cut"), 1, "b attached");
    o.open_gate();
    let b = read_rest(b, first).await;
    assert!(
        b.is_err(),
        "b: an error, not {:?} bytes",
        b.map(|b| b.len())
    );
    assert!(a.await.expect("join").is_err(), "a: an error");
    assert_eq!(o.hits("/cut"), 1);
    let m = v.metrics().await;
    assert_eq!(m.value("verge_cache_disk_objects", &[]), Some(0.0));
}

/// A purge while a large object streams to disk: requests attached before it read on to the
/// end; a request after it does not attach (it goes to the origin), and nothing is kept.
#[tokio::test]
async fn after_a_purge_during_a_large_fill_new_requests_do_not_attach() {
    let o = crate::support::RawOrigin::start().await;
    let body = large_body();
    o.set("/purged", gated_steps(&body, false));
    let v = Verge::start(&attach_config(o.addr)).await;
    let (_, a) = read_in_background(&v, "/purged", &[]).await;
    before_gate_on_disk(&v).await;
    let (first, b) = first_bytes(&v, "/purged").await;
    assert_eq!(o.hits("/purged"), 1, "b attached");
    let purge = reqwest::Method::from_bytes(b"PURGE").expect("method");
    crate::support::fetch_with(&v, purge, "/purged", &[]).await;
    let (status, c) = read_in_background(&v, "/purged", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(o.hits("/purged"), 2, "c did not attach to the purged fill");
    o.open_gate();
    let b = read_rest(b, first).await.expect("b reads on");
    assert!(b == body, "b: byte-identical");
    assert!(a.await.expect("join").expect("a") == body);
    assert!(c.await.expect("join").expect("c") == body);
    assert_eq!(o.hits("/purged"), 2);
}

/// With `min_uses: 2` and the tier full, a large object is not streamed to disk at its first
/// fetch: a request during that fetch, once the start of the body left memory, fetches it
/// itself, as before (a guard: nothing attaches to a fill that nothing on disk backs).
#[tokio::test]
async fn a_request_during_a_first_fetch_not_admitted_to_disk_fetches_again() {
    use crate::support::raw_origin::Script;
    use crate::support::Step;
    let o = crate::support::RawOrigin::start().await;
    let body = large_body();
    let gated = gated_steps(&body, false);
    // the first fetch waits at the gate; any later one sends everything at once
    let ungated: Vec<Step> = gated
        .iter()
        .filter(|s| !matches!(s, Step::Gate))
        .cloned()
        .collect();
    o.set(
        "/twice",
        Script::new(move |asked| {
            if asked.n == 1 {
                gated.clone()
            } else {
                ungated.clone()
            }
        }),
    );
    // min_uses applies once the tier has no room for the object: 7 objects of 8 MiB leave
    // less than its 12 MiB of the 64 MiB
    let fillers = 7;
    for i in 0..fillers {
        let mut whole =
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 8388608\r\n\r\n"
                .to_vec();
        whole.extend(std::iter::repeat_n(b'f', 8 << 20));
        o.set(
            &format!("/filler/{i}"),
            Script::new(move |_| vec![Step::Write(whole.clone())]),
        );
    }
    let mut config = attach_config(o.addr);
    config = config.cache(Cache::new().memory(1 << 20).max_object_size("64KiB").set(
        "disk",
        "{path: disk, size: 64MiB, segment_size: 1MiB, max_object_size: 16MiB, min_uses: 2}",
    ));
    let v = Verge::start(&config).await;
    for i in 0..fillers {
        assert_eq!(fetch(&v, &format!("/filler/{i}"), &[]).await.status, 200);
    }
    disk_objects(&v, fillers).await;
    let (_, a) = read_in_background(&v, "/twice", &[]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while o.pieces_sent("/twice") < BEFORE_GATE + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the origin sent the start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        streaming_bytes(v.dir()),
        0,
        "not streamed at its first fetch"
    );
    let (status, b) = read_in_background(&v, "/twice", &[]).await;
    assert_eq!(status, 200);
    let b = b.await.expect("join").expect("b");
    assert!(b == body, "b: byte-identical");
    assert_eq!(o.hits("/twice"), 2, "b fetched it itself");
    o.open_gate();
    assert!(a.await.expect("join").expect("a") == body);
}
