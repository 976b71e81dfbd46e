//! Memory-pressure tests of the storage and its eviction together, driven the way pingora drives
//! them (lookup, hit → `access`, miss → miss handler → write → finish): the stored bytes never
//! exceed the budget while concurrent writers fill far past it, and a one-time scan of cold URLs
//! barely moves the hit ratio of a Zipf workload.

use super::eviction::S3FifoEviction;
use super::fill::MIN_LAG_WINDOW;
use super::storage::MemoryStorage;
use bytes::Bytes;
use futures::FutureExt;
use pingora_cache::eviction::{CacheEntryKey, EvictionManager};
use pingora_cache::key::CacheKey;
use pingora_cache::storage::{HitHandler, Storage};
use pingora_cache::trace::{Span, SpanHandle};
use pingora_cache::CacheMeta;
use pingora_http::ResponseHeader;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

use super::xorshift::Rng;

fn parts(budget: usize, max_object: usize) -> (&'static MemoryStorage, &'static S3FifoEviction) {
    let eviction: &'static S3FifoEviction =
        Box::leak(Box::new(S3FifoEviction::new(budget, max_object)));
    let storage: &'static MemoryStorage = Box::leak(Box::new(
        MemoryStorage::new(max_object).with_eviction(eviction),
    ));
    (storage, eviction)
}

fn meta(body_len: Option<usize>) -> CacheMeta {
    let now = SystemTime::now();
    let mut header = ResponseHeader::build(200, None).expect("header");
    header
        .insert_header("cache-control", "max-age=600")
        .expect("header");
    if let Some(n) = body_len {
        header.insert_header("content-length", n).expect("header");
    }
    CacheMeta::new(now + Duration::from_secs(600), now, 0, 0, header)
}

/// Write one object of `size` body bytes in pieces of up to `piece`; `fail` drops the writer
/// halfway instead, as pingora does when the origin resets.
async fn write_object(
    storage: &'static MemoryStorage,
    key: &CacheKey,
    size: usize,
    piece: usize,
    fail: bool,
) {
    let span = Span::inactive().handle();
    // half the objects announce their length, half stream (chunked)
    let announced = (size % 2 == 0).then_some(size);
    let mut miss = storage
        .get_miss_handler(key, &meta(announced), &span)
        .await
        .expect("miss handler");
    // the fetching request's own reader, which pingora takes right away and serves its client from
    let (_, mut own) = storage
        .lookup_streaming_write(key, miss.streaming_write_tag(), &span)
        .await
        .expect("streaming lookup")
        .expect("own reader");
    let body = Bytes::from(vec![b'b'; size]);
    let mut at = 0;
    while at < size {
        let end = (at + piece).min(size);
        if fail && at >= size / 2 {
            drop(miss);
            return;
        }
        miss.write_body(body.slice(at..end), end == size)
            .await
            .expect("writes do not fail while the client reads");
        // the client keeps up
        while let Some(Ok(Some(_))) = own.read_body().now_or_never() {}
        at = end;
        tokio::task::yield_now().await;
    }
    miss.finish().await.expect("finish");
    assert!(read_all(&mut own).await <= size);
}

async fn read_all(hit: &mut HitHandler) -> usize {
    let mut n = 0;
    while let Ok(Some(b)) = hit.read_body().await {
        n += b.len();
    }
    n
}

/// Eight concurrent writers store mixed sizes (1 KiB to just over `max_object_size`, some
/// failing halfway, some purged) worth about 8× the budget, while readers stream fills in
/// flight. A poller samples the stored bytes (what `verge_cache_bytes` shows) the whole time:
/// they never exceed the budget, and what is in flight stays within its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stored_bytes_never_exceed_the_budget_while_concurrent_writers_overfill_it() {
    let budget = 32 * MIB;
    let max_object = MIB;
    let piece = 16 * KIB;
    let writers = 8;
    let (storage, eviction) = parts(budget, max_object);

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let peak_inflight = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let poller = {
        let (stop, peak, peak_inflight, samples) = (
            stop.clone(),
            peak.clone(),
            peak_inflight.clone(),
            samples.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(storage.bytes(), Ordering::Relaxed);
                peak_inflight.fetch_max(storage.inflight_bytes(), Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
                std::hint::spin_loop();
            }
        })
    };

    let written = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let written = written.clone();
            tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
                let span = Span::inactive().handle();
                for i in 0..220 {
                    // mostly small, some large, a few over max_object_size
                    let size = match rng.below(100) {
                        0..=59 => KIB + rng.below(31 * KIB),
                        60..=94 => 32 * KIB + rng.below(max_object - 32 * KIB),
                        _ => max_object + 1 + rng.below(max_object / 2),
                    };
                    // writers share part of the key space, so some writes replace others
                    let key = CacheKey::new(format!("k{}", rng.below(4000)), "");
                    let fail = rng.below(20) == 0;
                    if rng.below(10) == 0 {
                        // a reader streaming a fill in flight (or a stored entry)
                        let writer = write_object(storage, &key, size, piece, fail);
                        let reader = async {
                            tokio::task::yield_now().await;
                            if let Ok(Some((_, mut hit))) = storage.lookup(&key, &span).await {
                                read_all(&mut hit).await;
                            }
                        };
                        tokio::join!(writer, reader);
                    } else {
                        write_object(storage, &key, size, piece, fail).await;
                    }
                    if !fail {
                        written.fetch_add(size as u64, Ordering::Relaxed);
                    }
                    if i % 50 == 49 {
                        let compact = key.to_compact();
                        let _ = storage
                            .purge(
                                pingora_cache::storage::PurgeTarget::Active(&compact),
                                pingora_cache::storage::PurgeType::Invalidation,
                                &span,
                            )
                            .await;
                        eviction
                            .remove(pingora_cache::eviction::CacheEntryKeyRef::KeyOnly(&compact));
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    stop.store(true, Ordering::Relaxed);
    poller.join().expect("poller");

    let peak = peak.load(Ordering::Relaxed);
    let written = written.load(Ordering::Relaxed);
    assert!(
        written > 6 * budget as u64,
        "the fill went far past the budget: {written}"
    );
    assert!(samples.load(Ordering::Relaxed) > 1000, "polled throughout");
    assert!(
        peak <= budget as u64,
        "stored bytes peaked at {peak}, over the budget {budget}"
    );
    assert!(peak > budget as u64 / 2, "the store did fill up: {peak}");
    // every fill is capped by max_object_size, or by its lag window once oversize
    let inflight_bound = (writers * (max_object.max(MIN_LAG_WINDOW) + piece)) as u64;
    let peak_inflight = peak_inflight.load(Ordering::Relaxed);
    assert!(
        peak_inflight <= inflight_bound,
        "in flight peaked at {peak_inflight}"
    );
    // nothing left in flight, and eviction accounts for at least what is stored (a purge that
    // races a fill's commit may leave the key tracked, never stored and untracked)
    assert_eq!((storage.fills(), storage.inflight_bytes()), (0, 0));
    assert!(storage.bytes() <= eviction.total_size() as u64);
    assert!(storage.objects() <= eviction.total_items() as u64);
    assert!(eviction.evicted_items() + eviction.rejected_items() > 0);
}

/// An object's body size, fixed per key: 512 B to 8 KiB.
fn size_of(name: &str) -> usize {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    512 + (h % (15 * 512)) as usize
}

/// One GET for `name` as pingora serves it: a hit is read and counted as an access, a miss is
/// fetched and written. Returns whether it was a hit.
async fn request(
    storage: &'static MemoryStorage,
    eviction: &'static S3FifoEviction,
    span: &SpanHandle,
    name: String,
) -> bool {
    let key = CacheKey::new(name.as_str(), "");
    match storage.lookup(&key, span).await.expect("lookup") {
        Some((meta, mut hit)) => {
            // what pingora's cache_found does for a hit
            eviction.access(
                &CacheEntryKey::key_only(key.to_compact()),
                hit.get_eviction_weight(),
                meta.fresh_until(),
            );
            assert!(read_all(&mut hit).await > 0);
            true
        }
        None => {
            write_object(storage, &key, size_of(&name), 4 * KIB, false).await;
            false
        }
    }
}

/// Zipf-distributed requests (mixed object sizes) through storage and eviction as pingora
/// drives them; with `scan`, a one-time request for each of many cold URLs (about 20× what the
/// store holds) is woven in. Returns the hit ratio of the Zipf requests after warm-up.
async fn zipf_hit_ratio(scan: bool) -> f64 {
    let budget = 2 * MIB;
    let (storage, eviction) = parts(budget, 64 * KIB);
    let span = Span::inactive().handle();
    let keys = 4000usize;
    let weights: Vec<f64> = (1..=keys).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(keys);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let (mut hits, mut measured) = (0u32, 0u32);
    let mut scanned = 0usize;
    for i in 0..40_000 {
        let rank = cdf.partition_point(|&c| c < rng.unit());
        let hit = request(storage, eviction, &span, format!("z{rank}")).await;
        if i >= 8_000 {
            measured += 1;
            hits += u32::from(hit);
            // every other measured request, one cold URL, asked for once
            if scan && i % 2 == 0 && i < 28_000 {
                request(storage, eviction, &span, format!("scan{i}")).await;
                scanned += 1;
            }
        }
        assert!(storage.bytes() <= budget as u64);
    }
    if scan {
        assert!(scanned * 4 * KIB > 8 * budget, "scanned {scanned}");
    }
    f64::from(hits) / f64::from(measured)
}

#[tokio::test]
async fn a_one_time_scan_barely_moves_the_zipf_hit_ratio() {
    let calm = zipf_hit_ratio(false).await;
    let scanned = zipf_hit_ratio(true).await;
    println!("zipf hit ratio through storage: {calm:.3} without a scan, {scanned:.3} with one");
    assert!(calm > 0.5, "the hot set is served from cache: {calm}");
    assert!(
        calm - scanned < 0.04,
        "a one-time scan cost more than 4 points: {calm:.3} -> {scanned:.3}"
    );
}
