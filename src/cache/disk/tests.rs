//! Unit tests of the disk tier: write, read back, seek, corruption, removal, budget, rebuild,
//! and requests that attach to an object streaming to disk.

use super::record::Head;
use super::*;
use crate::cache::stored_meta::StoredMeta;
use pingora_http::ResponseHeader;

fn settings(dir: &std::path::Path, size: u64, segment_size: u64) -> DiskSettings {
    DiskSettings {
        path: dir.to_path_buf(),
        size,
        max_object_size: size / 4,
        segment_size,
        min_uses: 1,
    }
}

async fn open(s: &DiskSettings) -> &'static DiskStore {
    let store = DiskStore::open(s.clone()).expect("open");
    for _ in 0..500 {
        if !store.is_loading() {
            return store;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the rebuild did not finish");
}

fn meta(tag: &str) -> Arc<StoredMeta> {
    let now = SystemTime::now();
    let mut h = ResponseHeader::build(200, None).expect("h");
    h.append_header("X-Tag", tag).expect("h");
    h.append_header("cache-control", "max-age=60").expect("h");
    let m = CacheMeta::new(
        now + Duration::from_secs(60),
        now - Duration::from_secs(3),
        1,
        2,
        h,
    );
    Arc::new(StoredMeta::from_meta(&m).expect("meta"))
}

fn key(name: &str) -> CacheKey {
    CacheKey::new(name.to_string(), "t")
}

fn put(store: &DiskStore, k: &CacheKey, body: &[u8]) {
    store.write(
        k.combined_bin(),
        k.primary_bin(),
        meta(k.primary_key_str().unwrap_or_default()),
        Bytes::copy_from_slice(body),
    );
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

async fn read_all(hit: &mut HitHandler) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(b) = hit.read_body().await? {
        out.extend_from_slice(&b);
    }
    Ok(out)
}

async fn get(store: &'static DiskStore, k: &CacheKey) -> Option<(CacheMeta, Vec<u8>)> {
    let (meta, mut hit) = store.lookup(k).await.expect("lookup")?;
    Some((meta, read_all(&mut hit).await.expect("read")))
}

fn flush(store: &DiskStore) {
    assert!(store.flush(Duration::from_secs(5)), "flushed");
}

/// As the process would at exit: write what is queued and let the directory go.
fn close(store: &DiskStore) {
    assert!(store.close(Duration::from_secs(5)), "closed");
}

#[tokio::test]
async fn an_object_comes_back_whole_after_a_restart_and_ranges_seek() {
    let dir = tempfile::tempdir().expect("dir");
    let s = settings(dir.path(), 64 << 20, 8 << 20);
    let store = open(&s).await;
    let big = body(record::CHUNK * 2 + 1000, 7);
    let k = key("/big");
    put(store, &k, &big);
    flush(store);
    let (m, got) = get(store, &k).await.expect("hit");
    assert_eq!(got, big);
    assert_eq!(
        m.headers().get("x-tag").map(|v| v.as_bytes()),
        Some(&b"/big"[..])
    );
    assert_eq!(
        (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
        (1, 2)
    );
    // a range inside the third chunk, and one across chunks
    let (_, mut hit) = store.lookup(&k).await.expect("lookup").expect("hit");
    for (start, end) in [
        (2 * record::CHUNK + 10, 2 * record::CHUNK + 20),
        (100, record::CHUNK + 5),
    ] {
        hit.seek(start, Some(end)).expect("seek");
        assert_eq!(read_all(&mut hit).await.expect("read"), &big[start..end]);
    }
    // another process on the same directory: the index comes back from the segments
    close(store);
    let again = open(&s).await;
    let (m2, got) = get(again, &k).await.expect("hit after restart");
    assert_eq!(got, big, "byte-identical");
    assert_eq!(
        m2.created(),
        m.created(),
        "the same fetch time: Age carries on"
    );
    assert_eq!(m2.fresh_until(), m.fresh_until());
    assert_eq!(m2.headers(), m.headers());
    assert!(again
        .lookup(&key("/other"))
        .await
        .expect("lookup")
        .is_none());
}

/// Flip one byte of the segment holding the only record, at `at` bytes into its body.
fn corrupt_body(dir: &std::path::Path, at: u64) {
    let seg = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let head = Head::decode(&bytes).expect("head");
    let i = (head.body_offset() + at) as usize;
    bytes[i] ^= 0x20;
    std::fs::write(&seg, bytes).expect("write");
}

#[tokio::test]
async fn a_corrupted_body_is_a_miss_or_an_error_never_garbage_and_is_dropped() {
    let dir = tempfile::tempdir().expect("dir");
    let s = settings(dir.path(), 64 << 20, 8 << 20);
    let store = open(&s).await;
    let k = key("/small");
    put(store, &k, &body(5000, 1));
    flush(store);
    corrupt_body(dir.path(), 4000);
    assert!(store.lookup(&k).await.expect("lookup").is_none(), "a miss");
    assert_eq!(store.objects(), 0, "dropped");

    let dir = tempfile::tempdir().expect("dir");
    let s = settings(dir.path(), 64 << 20, 8 << 20);
    let store = open(&s).await;
    let k = key("/large");
    let large = body(record::CHUNK * 3, 2);
    put(store, &k, &large);
    flush(store);
    corrupt_body(dir.path(), record::CHUNK as u64 * 2 + 5);
    let (_, mut hit) = store
        .lookup(&k)
        .await
        .expect("lookup")
        .expect("the first chunk is fine");
    let mut read = Vec::new();
    let err = loop {
        match hit.read_body().await {
            Ok(Some(b)) => read.extend_from_slice(&b),
            Ok(None) => panic!("a corrupted body must not end like a whole one"),
            Err(e) => break e,
        }
    };
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_eq!(
        read,
        &large[..record::CHUNK * 2],
        "only verified bytes were handed out"
    );
    assert!(store.lookup(&k).await.expect("lookup").is_none(), "dropped");
    // ... and it stays dropped after a restart
    close(store);
    let again = open(&s).await;
    assert!(again.lookup(&k).await.expect("lookup").is_none());
}

#[tokio::test]
async fn removals_persist_and_newer_records_win() {
    let dir = tempfile::tempdir().expect("dir");
    let s = settings(dir.path(), 64 << 20, 8 << 20);
    let store = open(&s).await;
    let a = key("/a");
    let mut fr = key("/u");
    fr.set_variance_key([1; 16]);
    let mut en = key("/u");
    en.set_variance_key([2; 16]);
    let c = key("/c");
    for k in [&a, &fr, &en, &c] {
        put(store, k, b"first");
    }
    put(store, &c, b"second");
    store.remove(&a.combined_bin());
    store.remove_url(&en.primary_bin());
    flush(store);
    for k in [&a, &fr, &en] {
        assert!(store.lookup(k).await.expect("lookup").is_none());
    }
    assert_eq!(get(store, &c).await.expect("hit").1, b"second");
    close(store);
    let again = open(&s).await;
    for k in [&a, &fr, &en] {
        assert!(
            again.lookup(k).await.expect("lookup").is_none(),
            "removed for good"
        );
    }
    assert_eq!(
        get(again, &c).await.expect("hit").1,
        b"second",
        "the newest record"
    );
    assert_eq!(again.objects(), 1);
    // a write queued before a removal is not written after it
    put(again, &a, b"late");
    again.remove(&a.combined_bin());
    flush(again);
    assert!(again.lookup(&a).await.expect("lookup").is_none());
    // a URL without variants goes the same way
    again.remove_url(&c.primary_bin());
    assert!(again.lookup(&c).await.expect("lookup").is_none());
    assert_eq!(again.objects(), 0);
}

fn files_total(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test]
async fn the_budget_holds_by_dropping_the_oldest_segment() {
    let dir = tempfile::tempdir().expect("dir");
    let s = settings(dir.path(), 4 << 20, 1 << 20);
    let store = open(&s).await;
    let keys: Vec<CacheKey> = (0..40).map(|i| key(&format!("/o{i}"))).collect();
    for (i, k) in keys.iter().enumerate() {
        put(store, k, &body(200 << 10, i as u8));
        flush(store);
        assert!(files_total(dir.path()) <= 4 << 20, "over budget after {i}");
        assert!(store.bytes() <= 4 << 20);
    }
    assert!(
        store.lookup(&keys[0]).await.expect("lookup").is_none(),
        "the oldest went"
    );
    let (_, last) = get(store, &keys[39]).await.expect("the newest stays");
    assert_eq!(last, body(200 << 10, 39));
    assert!(
        store.objects() >= 10 && store.objects() <= 20,
        "{}",
        store.objects()
    );
}

#[tokio::test]
async fn a_torn_record_at_the_end_is_not_indexed() {
    let dir = tempfile::tempdir().expect("dir");
    let s = settings(dir.path(), 64 << 20, 8 << 20);
    let store = open(&s).await;
    let (a, b) = (key("/a"), key("/b"));
    put(store, &a, b"whole");
    put(store, &b, &body(10_000, 3));
    close(store);
    // cut the last record short, as a crash in the middle of its write would
    let seg = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("segment");
    let len = std::fs::metadata(&seg).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open")
        .set_len(len - 100)
        .expect("truncate");
    let again = open(&s).await;
    assert_eq!(get(again, &a).await.expect("hit").1, b"whole");
    assert!(
        again.lookup(&b).await.expect("lookup").is_none(),
        "torn: never served"
    );
    // new records go to a new segment, after the torn one
    put(again, &b, b"refetched");
    close(again);
    let third = open(&s).await;
    assert_eq!(get(third, &b).await.expect("hit").1, b"refetched");
}

#[tokio::test]
async fn a_second_process_takes_the_directory_over_when_the_first_lets_it_go() {
    let dir = tempfile::tempdir().expect("dir");
    let s = settings(dir.path(), 64 << 20, 8 << 20);
    let old = open(&s).await;
    let (x, y, z) = (key("/x"), key("/y"), key("/z"));
    put(old, &x, b"from the old process");
    flush(old);
    // the new process of an upgrade: the old one still owns the directory
    let new = DiskStore::open(s.clone()).expect("open");
    put(new, &y, b"queued by the new process");
    put(old, &z, b"written by the old one meanwhile");
    flush(old);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(new.is_loading(), "waits for the old process");
    assert!(
        new.lookup(&x).await.expect("lookup").is_none(),
        "a miss meanwhile"
    );
    assert_eq!(new.bytes(), 0, "nothing written");
    close(old);
    let mut waited = 0;
    while new.is_loading() {
        waited += 1;
        assert!(waited < 500, "the new process took over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    flush(new);
    assert_eq!(get(new, &x).await.expect("x").1, b"from the old process");
    assert_eq!(
        get(new, &z).await.expect("z").1,
        b"written by the old one meanwhile"
    );
    assert_eq!(
        get(new, &y).await.expect("y").1,
        b"queued by the new process"
    );
    // the old process reads on from the files it has open, and writes nothing more
    assert_eq!(get(old, &x).await.expect("x").1, b"from the old process");
    put(old, &key("/late"), b"after close");
    old.flush(Duration::from_secs(1));
    close(new);
    let third = open(&s).await;
    assert!(third.lookup(&key("/late")).await.expect("lookup").is_none());
    assert_eq!(third.objects(), 3);
}

#[tokio::test]
async fn a_304_on_a_disk_object_rewrites_its_headers_and_keeps_its_body() {
    let dir = tempfile::tempdir().expect("dir");
    let s = settings(dir.path(), 64 << 20, 8 << 20);
    let store = open(&s).await;
    let k = key("/revalidated");
    let big = body(record::CHUNK + 77, 9);
    put(store, &k, &big);
    flush(store);
    assert!(store.update_meta(&k.combined_bin(), meta("refreshed")));
    flush(store);
    let (m, got) = get(store, &k).await.expect("hit");
    assert_eq!(got, big, "the same body");
    assert_eq!(
        m.headers().get("x-tag").map(|v| v.as_bytes()),
        Some(&b"refreshed"[..])
    );
    close(store);
    let again = open(&s).await;
    let (m, got) = get(again, &k).await.expect("hit after restart");
    assert_eq!(got, big);
    assert_eq!(
        m.headers().get("x-tag").map(|v| v.as_bytes()),
        Some(&b"refreshed"[..])
    );
    assert!(!again.update_meta(&key("/absent").combined_bin(), meta("x")));
    // a body that went bad is not copied: the object is dropped instead
    // (a compaction may have copied it meanwhile: every copy goes bad)
    flush(again);
    corrupt_body_of(dir.path(), &k, 10);
    assert!(again.update_meta(&k.combined_bin(), meta("again")));
    flush(again);
    assert!(again.lookup(&k).await.expect("lookup").is_none());
}

/// Flip a byte `at` bytes into the body of every record of `k`, in place.
fn corrupt_body_of(dir: &std::path::Path, k: &CacheKey, at: u64) {
    use std::os::unix::fs::FileExt;
    let mut flipped = 0;
    for seg in std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
    {
        if seg.extension().is_none_or(|x| x != "seg") {
            continue;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg)
            .expect("open");
        let len = file.metadata().expect("meta").len();
        let mut offsets = Vec::new();
        segments::scan(&file, len, |f| {
            if f.head.combined == k.combined_bin() {
                offsets.push(f.offset + f.head.body_offset() + at);
            }
        });
        for i in offsets {
            let mut byte = [0u8];
            file.read_exact_at(&mut byte, i).expect("read");
            file.write_all_at(&[byte[0] ^ 1], i).expect("write");
            flipped += 1;
        }
    }
    assert!(flipped > 0, "a record of the key");
}

/// The memory and disk tiers together, as `CacheEngine` builds them.
fn engine(dir: &std::path::Path) -> &'static crate::cache::CacheEngine {
    let settings = crate::config::CacheSettings {
        disk: Some(settings(dir, 64 << 20, 8 << 20)),
        ..crate::config::CacheSettings::default()
    };
    crate::cache::CacheEngine::new(settings).expect("engine")
}

async fn loaded(disk: &DiskStore) {
    for _ in 0..500 {
        if !disk.is_loading() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the rebuild did not finish");
}

#[tokio::test]
async fn a_disk_hit_read_whole_is_promoted_to_memory_unless_purged_or_a_range() {
    use pingora_cache::storage::Storage;
    let dir = tempfile::tempdir().expect("dir");
    let first = engine(dir.path());
    let disk = first.disk.expect("disk");
    loaded(disk).await;
    let span = pingora_cache::trace::Span::inactive().handle();
    let (whole, purged, ranged) = (key("/whole"), key("/purged"), key("/ranged"));
    for k in [&whole, &purged, &ranged] {
        let m = meta("x").to_meta().expect("meta");
        let mut miss = first
            .storage
            .get_miss_handler(k, &m, &span)
            .await
            .expect("miss");
        miss.write_body(Bytes::from(body(300_000, 5)), true)
            .await
            .expect("write");
        miss.finish().await.expect("finish");
    }
    close(disk);
    // a restart: memory is empty, the disk tier has all three
    let next = engine(dir.path());
    let disk = next.disk.expect("disk");
    loaded(disk).await;
    let s = next.storage;
    assert_eq!((s.objects(), disk.objects()), (0, 3));

    let (_, mut hit) = s
        .lookup(&whole, &span)
        .await
        .expect("lookup")
        .expect("disk hit");
    assert!(
        !s.contains(&whole.combined_bin()),
        "not before the body is read"
    );
    assert_eq!(read_all(&mut hit).await.expect("read"), body(300_000, 5));
    assert!(s.contains(&whole.combined_bin()), "promoted");
    assert_eq!(
        next.tracked_bytes() as u64,
        s.bytes(),
        "admitted by eviction"
    );
    let (_, mut again) = s
        .lookup(&whole, &span)
        .await
        .expect("lookup")
        .expect("memory hit");
    assert_eq!(read_all(&mut again).await.expect("read"), body(300_000, 5));

    let (_, mut hit) = s
        .lookup(&purged, &span)
        .await
        .expect("lookup")
        .expect("disk hit");
    assert_eq!(
        next.invalidate(&purged),
        1,
        "on disk only, nothing in memory yet"
    );
    read_all(&mut hit).await.expect("read");
    assert!(
        !s.contains(&purged.combined_bin()),
        "a purge during the read wins"
    );
    assert!(s.lookup(&purged, &span).await.expect("lookup").is_none());

    let (_, mut hit) = s
        .lookup(&ranged, &span)
        .await
        .expect("lookup")
        .expect("disk hit");
    hit.seek(10, Some(20)).expect("seek");
    assert_eq!(
        read_all(&mut hit).await.expect("read"),
        &body(300_000, 5)[10..20]
    );
    assert!(
        !s.contains(&ranged.combined_bin()),
        "a range is not the whole body"
    );
    assert_eq!(next.tracked_bytes() as u64, s.bytes());
}

/// A segment under half live is compacted: its live object is copied forward, the segment file
/// goes, and its tombstone for an object of an older segment still there is written again, so
/// that object does not come back after a restart.
#[tokio::test]
async fn compaction_frees_a_mostly_dead_segment_and_keeps_its_tombstones_working() {
    let dir = tempfile::tempdir().expect("dir");
    let s = settings(dir.path(), 1 << 20, 32_000);
    let store = open(&s).await;
    let keys: Vec<CacheKey> = ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"]
        .iter()
        .map(|n| key(n))
        .collect();
    // segments of three: a*, then b* with the tombstone of a0, then c*
    for (i, k) in keys.iter().enumerate().take(6) {
        put(store, k, &body(10_000, i as u8));
    }
    flush(store);
    store.remove(&keys[0].combined_bin());
    for (i, k) in keys.iter().enumerate().skip(6) {
        put(store, k, &body(10_000, i as u8));
    }
    flush(store);
    assert_eq!(files_total(dir.path()), store.bytes());
    let before = store.bytes();
    // b0 and b1 go: the b segment is a third live and is compacted
    store.remove(&keys[3].combined_bin());
    store.remove(&keys[4].combined_bin());
    flush(store);
    assert!(
        store.bytes() < before - 20_000,
        "{} vs {before}",
        store.bytes()
    );
    assert_eq!(files_total(dir.path()), store.bytes());
    let (_, b2) = get(store, &keys[5]).await.expect("b2 copied forward");
    assert_eq!(b2, body(10_000, 5));
    close(store);

    let store = open(&s).await;
    assert!(get(store, &keys[0]).await.is_none(), "a0 stays removed");
    for i in [3, 4] {
        assert!(get(store, &keys[i]).await.is_none(), "{i} stays removed");
    }
    for i in [1, 2, 5, 6, 7, 8] {
        let (_, got) = get(store, &keys[i]).await.expect("kept");
        assert_eq!(got, body(10_000, i as u8), "{i}");
    }
    assert_eq!(store.objects(), 6);
}

/// As a crash would leave it: what is queued is written, then the directory is let go without
/// a checkpoint.
fn crash(store: &DiskStore) {
    flush(store);
    *store.segments.lock() = None;
    *store.lock.lock() = None;
}

fn report(store: &DiskStore) -> RebuildReport {
    store.rebuild_report().expect("rebuilt")
}

#[tokio::test]
async fn a_checkpoint_and_a_scan_of_what_followed_it_bring_the_index_back() {
    let dir = tempfile::tempdir().expect("dir");
    let s = settings(dir.path(), 64 << 20, 8 << 20);
    let first = open(&s).await;
    let (a, b, d) = (key("/a"), key("/b"), key("/d"));
    let mut fr = key("/u");
    fr.set_variance_key([1; 16]);
    let mut en = key("/u");
    en.set_variance_key([2; 16]);
    for k in [&a, &b, &fr, &en] {
        put(first, k, b"first");
    }
    // (enough that the segment stays mostly live after the purges below: not compacted)
    let filler: Vec<CacheKey> = (0..8).map(|i| key(&format!("/f{i}"))).collect();
    filler.iter().for_each(|k| put(first, k, b"filler"));
    close(first);
    assert!(
        dir.path().join(checkpoint::FILE).exists(),
        "written at close"
    );

    let second = open(&s).await;
    let r = report(second);
    assert_eq!((r.from_checkpoint, r.scanned_bytes), (12, 0), "{r:?}");
    assert!(!r.checkpoint_rejected);
    // after the checkpoint: a new object, a newer record, a purge, a URL purge; then a crash
    put(second, &d, b"after");
    put(second, &b, b"second");
    second.remove(&a.combined_bin());
    second.remove_url(&en.primary_bin());
    crash(second);

    let third = open(&s).await;
    let r = report(third);
    assert_eq!(r.from_checkpoint, 12, "{r:?}");
    assert!(
        r.scanned_bytes > 0,
        "what followed the checkpoint is scanned"
    );
    for k in [&a, &fr, &en] {
        assert!(
            third.lookup(k).await.expect("lookup").is_none(),
            "a purge after the checkpoint wins over it"
        );
    }
    assert_eq!(get(third, &b).await.expect("b").1, b"second");
    assert_eq!(get(third, &d).await.expect("d").1, b"after");
    assert_eq!(third.objects(), 10);
    close(third);

    let fourth = open(&s).await;
    let r = report(fourth);
    assert_eq!((r.from_checkpoint, r.scanned_bytes), (10, 0), "{r:?}");
    assert_eq!(get(fourth, &b).await.expect("b").1, b"second");
    assert!(fourth.lookup(&a).await.expect("lookup").is_none());
}

#[tokio::test]
async fn a_damaged_or_stale_checkpoint_falls_back_to_a_full_scan() {
    let dir = tempfile::tempdir().expect("dir");
    let s = settings(dir.path(), 64 << 20, 8 << 20);
    let ckpt = dir.path().join(checkpoint::FILE);
    let first = open(&s).await;
    let (a, b, c, x) = (key("/a"), key("/b"), key("/c"), key("/x"));
    put(first, &a, b"a");
    put(first, &b, b"b");
    close(first);

    // a flipped bit: not used, counted, everything scanned
    let mut bytes = std::fs::read(&ckpt).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&ckpt, &bytes).expect("write");
    let second = open(&s).await;
    let r = report(second);
    assert!(r.checkpoint_rejected, "{r:?}");
    assert_eq!((r.from_checkpoint, r.objects), (0, 2), "{r:?}");
    assert_eq!(get(second, &a).await.expect("a").1, b"a");
    close(second);

    // an older checkpoint (a crash before the next one was renamed in) is still good
    let older = std::fs::read(&ckpt).expect("read");
    let third = open(&s).await;
    put(third, &c, b"c");
    close(third);
    std::fs::write(&ckpt, &older).expect("write");
    let fourth = open(&s).await;
    let r = report(fourth);
    assert!(!r.checkpoint_rejected && r.from_checkpoint == 2, "{r:?}");
    assert_eq!(get(fourth, &c).await.expect("c").1, b"c");
    crash(fourth);

    // segments that are not the ones it saw (the directory emptied, numbers starting over)
    for entry in std::fs::read_dir(dir.path()).expect("dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "seg") {
            std::fs::remove_file(path).expect("rm");
        }
    }
    let fifth = open(&s).await;
    put(fifth, &x, b"x");
    crash(fifth);
    std::fs::write(&ckpt, &older).expect("write");
    let sixth = open(&s).await;
    let r = report(sixth);
    assert!(r.checkpoint_rejected, "{r:?}");
    assert_eq!(r.objects, 1, "{r:?}");
    assert_eq!(get(sixth, &x).await.expect("x").1, b"x");
    assert!(sixth.lookup(&a).await.expect("lookup").is_none());
}

/// Writes `rounds` × 20 cold objects of 1,000 bytes through a 64 KiB tier (about three times
/// over), reading the warm set back after each round when `reread`.
async fn warm_left_after_a_scan(reread: bool) -> usize {
    let dir = tempfile::tempdir().expect("dir");
    let s = settings(dir.path(), 64 << 10, 16 << 10);
    let store = open(&s).await;
    let warm: Vec<CacheKey> = (0..4).map(|i| key(&format!("/warm{i}"))).collect();
    warm.iter().for_each(|k| put(store, k, &body(1000, 7)));
    flush(store);
    for round in 0..8 {
        for k in &warm {
            if reread || round == 0 {
                assert_eq!(get(store, k).await.expect("warm").1, body(1000, 7));
            }
        }
        for i in 0..20 {
            put(store, &key(&format!("/cold{round}-{i}")), &body(1000, 1));
        }
        flush(store);
        assert!(files_total(dir.path()) <= 64 << 10, "within the budget");
    }
    let mut left = 0;
    for k in &warm {
        if let Some((_, got)) = get(store, k).await {
            assert_eq!(got, body(1000, 7), "whole after its copies");
            left += 1;
        }
    }
    assert!(
        store
            .lookup(&key("/cold0-0"))
            .await
            .expect("lookup")
            .is_none(),
        "the scan's first objects went"
    );
    left
}

#[tokio::test]
async fn objects_hit_on_disk_get_a_second_chance_when_their_segment_goes() {
    assert_eq!(
        warm_left_after_a_scan(true).await,
        4,
        "a warm set read again survives a one-time scan three times the tier"
    );
    assert_eq!(
        warm_left_after_a_scan(false).await,
        0,
        "hit once long ago: its second chance is used up, FIFO takes it"
    );
}

/// The memory tier capped at 64 KiB over a disk tier that takes objects of up to 16 MiB.
fn small_memory_engine(dir: &std::path::Path) -> &'static crate::cache::CacheEngine {
    let settings = crate::config::CacheSettings {
        max_object_size: 64 << 10,
        disk: Some(settings(dir, 64 << 20, 8 << 20)),
        ..crate::config::CacheSettings::default()
    };
    crate::cache::CacheEngine::new(settings).expect("engine")
}

fn meta_of_len(len: Option<usize>) -> CacheMeta {
    let now = SystemTime::now();
    let mut h = ResponseHeader::build(200, None).expect("h");
    if let Some(len) = len {
        h.append_header("content-length", len.to_string())
            .expect("h");
    }
    CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
}

/// Write `body` in 64 KiB pieces, `own` (the fetching request's reader) keeping up.
async fn write_keeping_up(
    miss: &mut pingora_cache::storage::MissHandler,
    own: &mut HitHandler,
    body: &[u8],
) -> Result<()> {
    for piece in body.chunks(64 << 10) {
        miss.write_body(Bytes::copy_from_slice(piece), false)
            .await?;
        let mut got = 0;
        while got < piece.len() {
            got += own.read_body().await?.map_or(0, |b| b.len());
        }
    }
    Ok(())
}

/// A response whose `Content-Length` is over the memory tier's cap streams to disk from its
/// head on: a request between the head and the first body byte attaches to it as well.
#[tokio::test]
async fn a_request_between_the_head_and_the_body_of_a_large_object_attaches() {
    use pingora_cache::storage::Storage;
    let dir = tempfile::tempdir().expect("dir");
    let engine = small_memory_engine(dir.path());
    loaded(engine.disk.expect("disk")).await;
    let s = engine.storage;
    let span = pingora_cache::trace::Span::inactive().handle();
    let k = key("/early");
    let whole = body(2 << 20, 9);
    let m = meta_of_len(Some(whole.len()));
    let mut miss = s.get_miss_handler(&k, &m, &span).await.expect("miss");
    let (_, mut own) = s
        .lookup_streaming_write(&k, miss.streaming_write_tag(), &span)
        .await
        .expect("lookup")
        .expect("own reader");
    let (_, mut early) = s
        .lookup(&k, &span)
        .await
        .expect("lookup")
        .expect("attached before the first body byte");
    write_keeping_up(&mut miss, &mut own, &whole)
        .await
        .expect("write");
    miss.finish().await.expect("finish");
    assert!(read_all(&mut early).await.expect("early") == whole);
    assert!(read_all(&mut own).await.expect("own").is_empty());
}

/// A body without `Content-Length` that outgrows the disk tier's cap while streaming to it:
/// the disk fill is given up, a reader that attached through the disk and is behind memory
/// gets an error (never a body with a hole), later requests do not attach, and the fetching
/// client still gets everything.
#[tokio::test]
async fn a_disk_fill_given_up_fails_the_readers_behind_memory() {
    use pingora_cache::storage::Storage;
    let dir = tempfile::tempdir().expect("dir");
    let engine = small_memory_engine(dir.path());
    loaded(engine.disk.expect("disk")).await;
    let s = engine.storage;
    let span = pingora_cache::trace::Span::inactive().handle();
    let k = key("/chunked");
    let whole = body(18 << 20, 3);
    let mut miss = s
        .get_miss_handler(&k, &meta_of_len(None), &span)
        .await
        .expect("miss");
    let (_, mut own) = s
        .lookup_streaming_write(&k, miss.streaming_write_tag(), &span)
        .await
        .expect("lookup")
        .expect("own reader");
    let (head, rest) = whole.split_at(10 << 20);
    write_keeping_up(&mut miss, &mut own, head)
        .await
        .expect("write");
    // past the lag window: the start is on disk only
    let (_, mut late) = s
        .lookup(&k, &span)
        .await
        .expect("lookup")
        .expect("attached through the disk");
    let first = late.read_body().await.expect("late").expect("bytes");
    assert!(first[..] == whole[..first.len()]);
    write_keeping_up(&mut miss, &mut own, rest)
        .await
        .expect("the fetching client reads on");
    assert!(
        s.lookup(&k, &span).await.expect("lookup").is_none(),
        "nobody attaches once the disk fill is given up"
    );
    let held = s.inflight_bytes();
    assert!(held <= (4 << 20) + (64 << 10), "memory held: {held}");
    miss.finish().await.expect("finish");
    assert!(read_all(&mut own).await.expect("own").is_empty());
    assert!(read_all(&mut late).await.is_err(), "an error, not a hole");
}

/// A hard invalidation's sweep removes in batches: one tombstone append (and one sync) per
/// `SWEEP_BATCH` objects, not one per object, and what it removed stays removed after a
/// crash right after it.
#[tokio::test]
async fn a_sweep_appends_its_tombstones_in_batches_that_hold_after_a_crash() {
    let dir = tempfile::tempdir().expect("dir");
    let s = settings(dir.path(), 64 << 20, 8 << 20);
    let store = open(&s).await;
    let n = reclaim::SWEEP_BATCH * 2 + 10;
    let swept: Vec<CacheKey> = (0..n).map(|i| key(&format!("/s{i}"))).collect();
    let kept = key("/kept");
    for (i, k) in swept.iter().enumerate() {
        put(store, k, &body(100, i as u8));
        if i % 1000 == 999 {
            flush(store); // (the queue holds 4096 jobs)
        }
    }
    put(store, &kept, b"kept");
    flush(store);
    assert_eq!(store.objects(), n + 1);
    let before = store.tombstone_appends.load(Ordering::Relaxed);
    let removed = store.remove_where(|m| {
        m.headers()
            .get("x-tag")
            .is_some_and(|t| t.as_bytes().starts_with(b"/s"))
    });
    assert_eq!(removed, n);
    assert_eq!(
        store.tombstone_appends.load(Ordering::Relaxed) - before,
        3,
        "one append per batch"
    );
    assert_eq!(store.objects(), 1);
    crash(store);

    let store = open(&s).await;
    assert_eq!(store.objects(), 1, "the swept objects stay removed");
    for k in swept.iter().step_by(97) {
        assert!(get(store, k).await.is_none());
    }
    let (_, got) = get(store, &kept).await.expect("kept");
    assert_eq!(got, b"kept");
}

/// Once the disk is full (`min_uses: 2`), an object fetched once, evicted from memory, then
/// fetched again has had two requests: its second fetch writes it to disk, though memory never
/// saw both (the count of its first stay is kept by the tier's admission sketch).
#[tokio::test]
async fn an_object_evicted_from_memory_keeps_its_count_toward_the_disk() {
    use pingora_cache::storage::Storage;
    let dir = tempfile::tempdir().expect("dir");
    let settings = crate::config::CacheSettings {
        memory: 256 << 10,
        disk: Some(DiskSettings {
            min_uses: 2,
            ..settings(dir.path(), 1 << 20, 256 << 10)
        }),
        ..crate::config::CacheSettings::default()
    };
    let engine = crate::cache::CacheEngine::new(settings).expect("engine");
    let disk = engine.disk.expect("disk");
    loaded(disk).await;
    // fill the tier past one segment short of its budget: from now on, `min_uses` applies
    for i in 0..40 {
        put(disk, &key(&format!("/filler{i}")), &body(20_000, 3));
    }
    flush(disk);
    assert!(!disk.has_room(0), "the tier is full");
    let span = &pingora_cache::trace::Span::inactive().handle();
    let fetch = |k: CacheKey| async move {
        let m = meta("x").to_meta().expect("meta");
        let mut miss = engine
            .storage
            .get_miss_handler(&k, &m, span)
            .await
            .expect("miss");
        miss.write_body(Bytes::from(body(10_000, 9)), true)
            .await
            .expect("write");
        miss.finish().await.expect("finish");
    };
    let tail = key("/tail");
    fetch(tail.clone()).await;
    assert!(engine.storage.contains(&tail.combined_bin()), "in memory");
    // other one-time objects push it out of the 256 KiB memory tier
    for i in 0..60 {
        fetch(key(&format!("/other{i}"))).await;
    }
    assert!(!engine.storage.contains(&tail.combined_bin()), "evicted");
    flush(disk);
    assert!(
        !disk.holds(&tail.combined_bin()),
        "one request: not on disk"
    );
    // its second request is a miss again: it reaches `min_uses` and goes to disk
    fetch(tail.clone()).await;
    flush(disk);
    assert!(disk.holds(&tail.combined_bin()), "two requests: on disk");
}
