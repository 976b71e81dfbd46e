//! A measurement of the disk tier's index at scale (issue #18): writes N small objects through
//! the disk store's API, then times the index rebuild at start with the checkpoint written at
//! close, without it (a full scan of the segments), and the hard-invalidation sweep over every
//! stored head, with disk lookups running beside the sweep to show whether it holds them up.
//!
//! ```text
//! cargo run --release --example disk_bench -- [objects] [body bytes] [dir]
//! ```
//! Defaults: 1,000,000 objects of 100 bytes in `target/disk-bench` (on the real disk, emptied
//! first). Prints one line per measurement.

use anyhow::{bail, Context};
use bytes::Bytes;
use pingora_cache::key::CacheHashKey;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_http::ResponseHeader;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use verge::cache::disk::{checkpoint, DiskStore, RebuildReport};
use verge::cache::stored_meta::StoredMeta;
use verge::config::DiskSettings;

fn key(i: u64) -> CacheKey {
    CacheKey::new(format!("/bench/object/{i}"), "disk-bench")
}

fn meta(tag: &str) -> anyhow::Result<Arc<StoredMeta>> {
    let now = SystemTime::now();
    let mut h = ResponseHeader::build(200, None)?;
    h.append_header("X-Tag", tag)?;
    h.append_header("cache-control", "max-age=3600")?;
    let m = CacheMeta::new(now + Duration::from_secs(3600), now, 1, 2, h);
    Ok(Arc::new(StoredMeta::from_meta(&m)?))
}

/// CPU seconds this process used so far (user + system).
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// Open the tier in `settings` and wait for its rebuild; returns it and what the rebuild did.
fn open(settings: &DiskSettings) -> anyhow::Result<(&'static DiskStore, RebuildReport)> {
    let store = DiskStore::open(settings.clone())?;
    let started = Instant::now();
    loop {
        if let Some(report) = store.rebuild_report() {
            return Ok((store, report));
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the rebuild did not finish");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn print_rebuild(what: &str, r: &RebuildReport) {
    println!(
        "rebuild {what}: {} objects in {:.3} s ({} from the checkpoint, {} MB of segments \
         scanned, checkpoint rejected: {})",
        r.objects,
        r.elapsed.as_secs_f64(),
        r.from_checkpoint,
        r.scanned_bytes / 1_000_000,
        r.checkpoint_rejected
    );
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at].as_secs_f64() * 1000.0
}

/// Look random objects up (and read them) until `stop`; returns each lookup's latency.
async fn lookups(store: &'static DiskStore, n: u64, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut seen = Vec::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while !stop.load(Ordering::Acquire) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = key(x % n);
        let started = Instant::now();
        if let Ok(Some((_, mut hit))) = store.lookup(&k).await {
            while let Ok(Some(_)) = hit.read_body().await {}
        }
        seen.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    seen
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).map_or(Ok(1_000_000), |a| a.parse())?;
    let body_len: usize = args.get(2).map_or(Ok(100), |a| a.parse())?;
    let dir = PathBuf::from(args.get(3).map_or("target/disk-bench", String::as_str));
    let _ = std::fs::remove_dir_all(&dir);
    let settings = DiskSettings {
        path: dir.clone(),
        size: 4 << 30,
        max_object_size: 1 << 20,
        segment_size: 64 << 20,
        min_uses: 1,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    let (store, _) = open(&settings)?;
    let body = Bytes::from(vec![b'x'; body_len]);
    let metas = [meta("even")?, meta("odd")?];
    let started = Instant::now();
    for i in 0..n {
        let k = key(i);
        let m = metas[(i % 2) as usize].clone();
        store.write(k.combined_bin(), k.primary_bin(), m, body.clone());
        if i % 2048 == 2047 && !store.flush(Duration::from_secs(60)) {
            bail!("flush timed out");
        }
    }
    store.flush(Duration::from_secs(60));
    println!(
        "wrote {} objects of {body_len} bytes in {:.1} s ({} MB of segments)",
        store.objects(),
        started.elapsed().as_secs_f64(),
        store.bytes() / 1_000_000
    );
    let started = Instant::now();
    store.close(Duration::from_secs(120));
    let ckpt = std::fs::metadata(dir.join(checkpoint::FILE)).map_or(0, |m| m.len());
    println!(
        "close with the checkpoint: {:.3} s ({} MB)",
        started.elapsed().as_secs_f64(),
        ckpt / 1_000_000
    );

    let (store, report) = open(&settings)?;
    print_rebuild("from the checkpoint", &report);
    store.close(Duration::from_secs(120));
    std::fs::remove_file(dir.join(checkpoint::FILE))?;
    let (store, report) = open(&settings)?;
    print_rebuild("without a checkpoint (full scan)", &report);

    // the sweep of a hard invalidation (by tag: the half of the objects tagged "odd")
    let stop = Arc::new(AtomicBool::new(false));
    let before = runtime.block_on(async {
        let probe = tokio::spawn(lookups(store, n, stop.clone()));
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Release);
        probe.await.unwrap_or_default()
    });
    stop.store(false, Ordering::Release);
    let probe = runtime.spawn(lookups(store, n, stop.clone()));
    let cpu = cpu_seconds()?;
    let started = Instant::now();
    let removed = store.remove_where(|m| {
        m.headers()
            .get("x-tag")
            .is_some_and(|v| v.as_bytes() == b"odd")
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu;
    stop.store(true, Ordering::Release);
    let during = runtime.block_on(probe).unwrap_or_default();
    println!("sweep: {removed} of {n} objects removed in {wall:.2} s, {cpu:.2} s of CPU (process)");
    for (what, mut seen) in [("before the sweep", before), ("during the sweep", during)] {
        seen.sort();
        println!(
            "disk lookups {what}: {} lookups, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            seen.len(),
            percentile(&seen, 0.5),
            percentile(&seen, 0.99),
            seen.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        );
    }
    store.close(Duration::from_secs(120));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
