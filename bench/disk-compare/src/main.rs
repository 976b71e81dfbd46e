//! verge's disk tier (append-only segment files) against foyer's HybridCache (block engine) on
//! one workload, for issue #18 "The library". Not part of verge's workspace: see README.md.
//!
//! ```text
//! disk-compare <verge|foyer|foyer-uring> <budget MiB> [objects] [reads] [dir]
//! ```
//! `foyer-uring` is foyer with its io_uring engine instead of its default (psync). With
//! `COLD=1` in the environment, the page cache is dropped between the write and the reopen
//! (`sync`, then `3` into `/proc/sys/vm/drop_caches`; needs root), so recovery and reads come
//! from the device, not from memory.
//! One run: write `objects` bodies of 64 KiB into a fresh directory with a disk budget of
//! `budget` MiB (batches, waiting for each to be written), close cleanly, then a *new process*
//! (this binary with `--reopen`) opens the same directory, times the index recovery, measures
//! its RSS growth, and does `reads` lookups (whole bodies read) with Zipf 0.99 keys from a fixed
//! seed. The directory is deleted at the end. Both systems run without a memory tier in the
//! read path: verge's `DiskStore` directly, foyer's `Store::load` (its disk engine) directly.

use anyhow::{bail, Context};
use bytes::Bytes;
use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy, Load, RecoverMode, UringIoEngineConfig,
};
use pingora_cache::key::CacheHashKey;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_http::ResponseHeader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use verge::cache::disk::DiskStore;
use verge::cache::stored_meta::StoredMeta;
use verge::config::DiskSettings;

const BODY: usize = 64 << 10;
/// Segment (verge) and block (foyer) size: the unit each one writes and evicts.
const UNIT: u64 = 64 << 20;
/// verge: objects queued between two flushes (48 MiB; its write queue holds 64 MiB).
const VERGE_BATCH: u64 = 768;
/// foyer: objects inserted between two waits (16 MiB; its submit queue holds 32 MiB).
const FOYER_BATCH: u64 = 256;
const ZIPF: f64 = 0.99;
const SEED: u64 = 0x5EED_0018;

struct Run {
    system: String,
    budget: u64,
    objects: u64,
    reads: u64,
    dir: PathBuf,
}

fn parse() -> anyhow::Result<(Run, bool)> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let reopen = args.first().is_some_and(|a| a == "--reopen");
    if reopen {
        args.remove(0);
    }
    let system = args
        .first()
        .context("usage: disk-compare <verge|foyer|foyer-uring> <budget MiB> [objects] [reads] [dir]")?
        .clone();
    if !["verge", "foyer", "foyer-uring"].contains(&system.as_str()) {
        bail!("the system is verge, foyer or foyer-uring");
    }
    let budget: u64 = args.get(1).context("budget MiB")?.parse::<u64>()? << 20;
    let objects = args.get(2).map_or(Ok(20_000), |a| a.parse())?;
    let reads = args.get(3).map_or(Ok(100_000), |a| a.parse())?;
    let dir = PathBuf::from(
        args.get(4)
            .map_or("target/disk-compare-data", String::as_str),
    );
    Ok((
        Run {
            system,
            budget,
            objects,
            reads,
            dir,
        },
        reopen,
    ))
}

/// CPU seconds this process used so far (user + system, all threads).
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// Resident memory of this process, in bytes.
fn rss() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    let kb: u64 = line.split_whitespace().nth(1).context("VmRSS")?.parse()?;
    Ok(kb << 10)
}

fn verge_key(i: u64) -> CacheKey {
    CacheKey::new(format!("/bench/object/{i}"), "disk-compare")
}

/// foyer's key: the same 128-bit hash verge indexes by.
fn foyer_key(i: u64) -> u128 {
    u128::from_le_bytes(verge_key(i).combined_bin())
}

/// Object `i`'s body: 64 KiB, its number at the start (so bodies differ).
fn body(i: u64) -> Bytes {
    let mut v = vec![b'x'; BODY];
    v[..8].copy_from_slice(&i.to_le_bytes());
    Bytes::from(v)
}

fn verge_settings(run: &Run) -> DiskSettings {
    DiskSettings {
        path: run.dir.clone(),
        size: run.budget,
        max_object_size: 1 << 20,
        segment_size: UNIT,
        min_uses: 1,
    }
}

async fn foyer_open(run: &Run) -> anyhow::Result<HybridCache<u128, Bytes>> {
    let device = FsDeviceBuilder::new(&run.dir)
        .with_capacity(usize::try_from(run.budget)?)
        .build()?;
    let storage = HybridCacheBuilder::new()
        .with_policy(HybridCachePolicy::WriteOnInsertion)
        .memory(1 << 20)
        .with_weighter(|_: &u128, v: &Bytes| v.len())
        .storage()
        .with_engine_config(BlockEngineConfig::new(device).with_block_size(UNIT as usize))
        .with_recover_mode(RecoverMode::Quiet);
    let storage = if run.system == "foyer-uring" {
        storage.with_io_engine_config(Box::new(UringIoEngineConfig::new()) as Box<dyn foyer::IoEngineConfig>)
    } else {
        storage
    };
    let cache = storage.build().await?;
    Ok(cache)
}

fn settings_line(run: &Run) -> String {
    match run.system.as_str() {
        "verge" => format!(
            "verge DiskStore: budget {} MiB, segments {} MiB, batches of {VERGE_BATCH} then flush (fsync)",
            run.budget >> 20,
            UNIT >> 20
        ),
        _ => format!(
            "foyer =0.22.6 HybridCache<u128, Bytes>: WriteOnInsertion, memory 1 MiB, FsDevice {} MiB \
             (buffered, {} engine), block {} MiB, other BlockEngineConfig defaults, RecoverMode::Quiet, \
             batches of {FOYER_BATCH} then Store::wait",
            run.budget >> 20,
            if run.system == "foyer-uring" { "io_uring (UringIoEngineConfig defaults)" } else { "psync" },
            UNIT >> 20
        ),
    }
}

async fn write_phase(run: &Run) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&run.dir);
    std::fs::create_dir_all(&run.dir)?;
    let cpu = cpu_seconds()?;
    let started = Instant::now();
    match run.system.as_str() {
        "verge" => {
            let store = DiskStore::open(verge_settings(run))?;
            let meta = verge_meta()?;
            for i in 0..run.objects {
                let k = verge_key(i);
                store.write(k.combined_bin(), k.primary_bin(), meta.clone(), body(i));
                if i % VERGE_BATCH == VERGE_BATCH - 1 && !store.flush(Duration::from_secs(120)) {
                    bail!("flush timed out");
                }
            }
            store.close(Duration::from_secs(120));
        }
        _ => {
            let cache = foyer_open(run).await?;
            for i in 0..run.objects {
                cache.insert(foyer_key(i), body(i));
                if i % FOYER_BATCH == FOYER_BATCH - 1 {
                    cache.storage().wait().await;
                }
            }
            cache.storage().wait().await;
            cache.close().await?;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu;
    let mb = (run.objects * BODY as u64) as f64 / 1e6;
    println!(
        "{} write: {} objects x 64 KiB ({mb:.0} MB) in {wall:.2} s = {:.0} MB/s, {cpu:.2} CPU s, \
         on disk {} MB (incl. close)",
        run.system,
        run.objects,
        mb / wall,
        dir_bytes(&run.dir)? / 1_000_000
    );
    Ok(())
}

fn verge_meta() -> anyhow::Result<Arc<StoredMeta>> {
    let now = SystemTime::now();
    let mut h = ResponseHeader::build(200, None)?;
    h.append_header("cache-control", "max-age=3600")?;
    let m = CacheMeta::new(now + Duration::from_secs(3600), now, 1, 2, h);
    Ok(Arc::new(StoredMeta::from_meta(&m)?))
}

fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            dir_bytes(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}

/// Zipf(`ZIPF`) over `n` ranks: the cumulative distribution, for a binary search.
fn zipf_cdf(n: u64) -> Vec<f64> {
    let mut cdf = Vec::with_capacity(n as usize);
    let mut sum = 0.0;
    for r in 1..=n {
        sum += 1.0 / (r as f64).powf(ZIPF);
        cdf.push(sum);
    }
    cdf.iter_mut().for_each(|c| *c /= sum);
    cdf
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The object numbers to read: Zipf ranks mapped through a fixed shuffle (so popularity does
/// not follow write order, which would make FIFO eviction look better or worse than it is).
fn read_sequence(objects: u64, reads: u64) -> Vec<u64> {
    let mut rng = Rng(SEED);
    let mut perm: Vec<u64> = (0..objects).collect();
    for i in (1..perm.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        perm.swap(i, j);
    }
    let cdf = zipf_cdf(objects);
    (0..reads)
        .map(|_| {
            let u = rng.unit();
            let rank = cdf.partition_point(|c| *c < u).min(perm.len() - 1);
            perm[rank]
        })
        .collect()
}

fn ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

async fn reopen_phase(run: &Run) -> anyhow::Result<()> {
    let sequence = read_sequence(run.objects, run.reads);
    let verge_keys: Vec<CacheKey> = match run.system.as_str() {
        "verge" => (0..run.objects).map(verge_key).collect(),
        _ => Vec::new(),
    };
    let foyer_keys: Vec<u128> = match run.system.as_str() {
        "verge" => Vec::new(),
        _ => (0..run.objects).map(foyer_key).collect(),
    };
    let rss_before = rss()?;
    let rss_recovered: u64;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(run.reads as usize);
    let mut hits = 0u64;
    let mut bytes = 0u64;
    let (recovered, indexed, read_wall) = match run.system.as_str() {
        "verge" => {
            let store = DiskStore::open(verge_settings(run))?;
            let report = loop {
                if let Some(r) = store.rebuild_report() {
                    break r;
                }
                if started.elapsed() > Duration::from_secs(600) {
                    bail!("the rebuild did not finish");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            let recovered = started.elapsed();
            rss_recovered = rss()?;
            let indexed = store.objects() as u64;
            println!(
                "verge rebuild: {} objects ({} from the checkpoint), {} MB scanned",
                report.objects,
                report.from_checkpoint,
                report.scanned_bytes / 1_000_000
            );
            let keys = &verge_keys;
            let reading = Instant::now();
            for &i in &sequence {
                let t = Instant::now();
                if let Some((_, mut hit)) = store.lookup(&keys[i as usize]).await? {
                    hits += 1;
                    while let Some(piece) = hit.read_body().await? {
                        bytes += piece.len() as u64;
                    }
                }
                latencies.push(t.elapsed());
            }
            let read_wall = reading.elapsed();
            store.close(Duration::from_secs(120));
            (recovered, indexed, read_wall)
        }
        _ => {
            let cache = foyer_open(run).await?;
            let recovered = started.elapsed();
            rss_recovered = rss()?;
            let keys = &foyer_keys;
            let indexed = keys
                .iter()
                .filter(|k| cache.storage().may_contains(*k))
                .count() as u64;
            let reading = Instant::now();
            for &i in &sequence {
                let t = Instant::now();
                match cache.storage().load(&keys[i as usize]).await? {
                    Load::Entry { value, .. } => {
                        hits += 1;
                        bytes += value.len() as u64;
                    }
                    Load::Piece { piece, .. } => {
                        hits += 1;
                        bytes += piece.value().len() as u64;
                    }
                    Load::Throttled | Load::Miss => {}
                }
                latencies.push(t.elapsed());
            }
            let read_wall = reading.elapsed();
            cache.close().await?;
            (recovered, indexed, read_wall)
        }
    };
    // RSS when the index is back (before any read): what the recovered index costs
    let rss_after = rss_recovered;
    latencies.sort();
    let mb = bytes as f64 / 1e6;
    println!(
        "{} reopen: index of {indexed} objects recovered in {:.3} s; RSS +{:.1} MiB = {:.0} bytes/object",
        run.system,
        recovered.as_secs_f64(),
        rss_after.saturating_sub(rss_before) as f64 / (1 << 20) as f64,
        rss_after.saturating_sub(rss_before) as f64 / indexed.max(1) as f64
    );
    println!(
        "{} read: {} Zipf {ZIPF} reads, hit ratio {:.3}, {mb:.0} MB in {:.2} s = {:.0} MB/s, \
         p50 {:.3} ms, p99 {:.3} ms",
        run.system,
        run.reads,
        hits as f64 / run.reads as f64,
        read_wall.as_secs_f64(),
        mb / read_wall.as_secs_f64(),
        ms(&latencies, 0.5),
        ms(&latencies, 0.99)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let (run, reopen) = parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if reopen {
        let out = runtime.block_on(reopen_phase(&run));
        let _ = std::fs::remove_dir_all(&run.dir);
        return out;
    }
    println!("{}", settings_line(&run));
    runtime.block_on(write_phase(&run))?;
    drop(runtime);
    if std::env::var_os("COLD").is_some_and(|v| v == "1") {
        // the reopen reads from the device: nothing of the files stays in the page cache
        let synced = std::process::Command::new("sync").status()?;
        if !synced.success() {
            bail!("sync failed: {synced}");
        }
        std::fs::write("/proc/sys/vm/drop_caches", "3\n")
            .context("COLD=1 drops the page cache: needs root")?;
        println!("page cache dropped before the reopen");
    }
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("--reopen")
        .args(std::env::args().skip(1))
        .status()?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&run.dir);
        bail!("the reopen phase failed: {status}");
    }
    Ok(())
}
