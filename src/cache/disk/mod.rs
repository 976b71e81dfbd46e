//! The disk tier (`cache.disk`): whole objects appended to segment files under a byte budget,
//! an in-memory index of where each is, reads that stream and verify one chunk at a time, and
//! an index rebuilt from the segments when verge starts.
//!
//! - **What goes to disk.** An object the memory tier stores is written behind it (by one
//!   writer thread off the request path) at once while the tier has free room
//!   ([`DiskStore::has_room`]: such a write evicts nothing, so admitting a one-time object
//!   costs a write and no warm object, and an object evicted from memory before its second
//!   request is not lost to the tier), and at its `min_uses`-th request once the tier is full
//!   (the memory storage counts), so one-time requests then never displace the warm set. A
//!   restart or a crash loses what was still queued, and, once full, what was asked for only
//!   once. A refreshed entry (a refetch of
//!   an object on disk, a 304) is written again; the
//!   newest record wins. A 304 for an object only on disk appends it again with the new
//!   headers, its body copied chunk by chunk. An object too large for the memory tier streams
//!   to a file of its own as it arrives, which becomes a segment once whole ([`DiskFill`]).
//! - **Eviction.** FIFO over segments with a second chance: when the budget would be exceeded,
//!   the oldest segment file is deleted (`verge_cache_disk_evictions_total`), after the objects
//!   in it that were hit since they were written are copied forward (up to half of it;
//!   `verge_cache_disk_second_chance_total`, see `reclaim`).
//! - **Removal.** A purge or an invalidating request removes the object from the index and
//!   appends a tombstone at once (not through the queue), so it stays removed after a restart or
//!   a crash; a write queued before the removal is skipped. A hard invalidation's sweep removes
//!   every object it matches, in batches (one index step, one tombstone append, one sync
//!   each), and segments left mostly dead are compacted (`reclaim`).
//! - **Reads.** A memory miss looks the key up here; a hit reads the head and the first chunk
//!   (verified), then each further chunk as the client takes it, and a hit read whole is
//!   promoted to the memory tier ([`Promote`]). A checksum mismatch makes the
//!   lookup a miss (or ends a response already started), drops the object and is counted.
//! - **Restart.** The index is rebuilt in a background thread from the index checkpoint
//!   (`checkpoint`, written periodically and at close) and a scan of the segments written after
//!   it, oldest first (every segment without a usable checkpoint); lookups are misses until it
//!   is done (`verge_cache_disk_rebuild_progress`). Records cut short by a crash end the scan of
//!   their segment; new records go to a new segment.

mod admission;
pub mod checkpoint;
mod hit;
mod index;
mod nowait;
mod read;
mod reclaim;
pub mod record;
pub mod segments;
mod stream;
mod writer;

pub use hit::{Promote, Promoted};
pub use stream::DiskFill;

use crate::cache::stored_meta::StoredMeta;
use crate::config::DiskSettings;
use crate::metrics::DISK_METRICS;
use admission::UseSketch;
use bytes::Bytes;
use hit::{DiskHit, Promotion};
use index::{Index, Location};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nowait::Wait;
use parking_lot::{Mutex, RwLock};
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::storage::HitHandler;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::Result;
use read::{read_entry, read_whole};
use record::Kind;
use segments::Segments;
use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Body bytes the writer's queue may hold; an object that would go over is not written.
const MAX_QUEUED_BYTES: u64 = 64 << 20;
/// Jobs the writer's queue may hold.
const MAX_QUEUED_JOBS: usize = 4096;
/// The file in the tier's directory whose `flock` says which process owns the directory.
const LOCK_FILE: &str = "lock";

enum Job {
    Object {
        seq: u64,
        key: HashBinary,
        primary: HashBinary,
        meta: Arc<StoredMeta>,
        body: Bytes,
    },
    /// A 304 refreshed an object that is only on disk: append it again with the new meta.
    Rewrite {
        seq: u64,
        key: HashBinary,
        meta: Arc<StoredMeta>,
        from: Location,
        file: Arc<File>,
    },
    /// A removal made before this process owned the directory.
    Tombstone {
        kind: Kind,
        key: HashBinary,
    },
    /// Every job queued before each removal (`seq`, `key`) is done: forget the removals.
    Forget {
        kind: Kind,
        removals: Vec<(u64, HashBinary)>,
    },
    Flush(SyncSender<()>),
    /// Write a checkpoint of the index now (at close); says whether it was written.
    Checkpoint(SyncSender<bool>),
    /// Objects were removed: compact the segments that are mostly dead (see `reclaim`).
    Reclaim,
}

/// The disk tier. `'static` (leaked once at startup), with a writer thread and, at start, a
/// rebuild thread.
pub struct DiskStore {
    settings: DiskSettings,
    index: RwLock<Index>,
    files: RwLock<HashMap<u64, Arc<File>>>,
    /// `None` until this process holds the directory's lock (see [`DiskStore::open`]).
    segments: Mutex<Option<Segments>>,
    /// The directory's lock, held for the life of the process.
    lock: Mutex<Option<Flock<File>>>,
    jobs: SyncSender<Job>,
    queued_bytes: AtomicU64,
    /// Bytes in the segment files (and reserved by streamed objects), as the writer last saw
    /// them: what [`DiskStore::has_room`] reads without the segments' lock.
    used: AtomicU64,
    /// The files came within a segment of the budget (see [`DiskStore::has_room`]); cleared
    /// when they are back under half of it.
    filled: AtomicBool,
    next_seq: AtomicU64,
    loading: AtomicBool,
    /// A [`Job::Reclaim`] is queued.
    reclaim_queued: AtomicBool,
    /// Invalidation sweeps running (compaction waits for them: see `reclaim`).
    sweeping: std::sync::atomic::AtomicU32,
    /// Requests of objects not written yet, across memory evictions, and fetches of objects
    /// too large for memory: counted toward `min_uses` (see `admission`).
    uses: UseSketch,
    /// Numbers the files objects are streamed to.
    next_part: AtomicU64,
    /// Where disk hits are promoted (the memory tier), once it exists.
    promote: std::sync::OnceLock<&'static dyn Promote>,
    /// Bytes appended since the last index checkpoint.
    changed_since_checkpoint: AtomicU64,
    /// Whether [`DiskStore::close`] is done, and whether it flushed (held while it runs).
    closed: Mutex<Option<bool>>,
    /// Appends of tombstones (a sweep's batch is one): what the tests count.
    tombstone_appends: AtomicU64,
    /// Streamed objects between becoming a segment and entering the index (no checkpoint
    /// is written meanwhile).
    adopting: std::sync::atomic::AtomicU32,
    /// What the index rebuild at start did, once it is done.
    rebuild_report: Mutex<Option<RebuildReport>>,
}

/// What the index rebuild at start did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Objects in the index when it was done.
    pub objects: usize,
    /// Objects taken from the index checkpoint (0: none was used).
    pub from_checkpoint: usize,
    /// A checkpoint was there but could not be used (damaged, or not matching the segments):
    /// every segment was scanned.
    pub checkpoint_rejected: bool,
    /// Bytes of segments scanned (those after the checkpoint, or all of them).
    pub scanned_bytes: u64,
    /// How long it took.
    pub elapsed: Duration,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("settings", &self.settings)
            .finish()
    }
}

impl DiskStore {
    /// Open the tier in `settings.path` (created if missing), start its writer, and rebuild
    /// its index from the segments found there in the background.
    ///
    /// One process at a time owns the directory, through an exclusive `flock` on its `lock`
    /// file, held until the process exits or [`DiskStore::close`]s it. During an upgrade
    /// (`--upgrade`) the old process still holds it: the new one answers disk misses and
    /// writes nothing until the old one lets it go (at the start of its shutdown), then scans
    /// everything the old one wrote and takes over.
    pub fn open(settings: DiskSettings) -> std::io::Result<&'static DiskStore> {
        std::fs::create_dir_all(&settings.path)?;
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(settings.path.join(LOCK_FILE))?;
        let (jobs, queue) = sync_channel(MAX_QUEUED_JOBS);
        let uses = UseSketch::for_budget(settings.size);
        DISK_METRICS
            .capacity
            .set(i64::try_from(settings.size).unwrap_or(i64::MAX));
        DISK_METRICS.rebuild_progress.set(0.0);
        let store: &'static DiskStore = Box::leak(Box::new(DiskStore {
            files: RwLock::default(),
            settings,
            index: RwLock::default(),
            segments: Mutex::new(None),
            lock: Mutex::new(None),
            jobs,
            queued_bytes: AtomicU64::new(0),
            used: AtomicU64::new(0),
            filled: AtomicBool::new(false),
            next_seq: AtomicU64::new(1),
            loading: AtomicBool::new(true),
            reclaim_queued: AtomicBool::new(false),
            sweeping: std::sync::atomic::AtomicU32::new(0),
            uses,
            next_part: AtomicU64::new(0),
            promote: std::sync::OnceLock::new(),
            changed_since_checkpoint: AtomicU64::new(0),
            adopting: std::sync::atomic::AtomicU32::new(0),
            closed: Mutex::new(None),
            tombstone_appends: AtomicU64::new(0),
            rebuild_report: Mutex::new(None),
        }));
        let waiting = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => {
                store.take_over(held)?;
                None
            }
            Err((file, Errno::EWOULDBLOCK)) => {
                log::warn!(
                    "disk cache: {} is in use by another process (an upgrade?); \
                     taking it over when that process exits",
                    store.settings.path.display()
                );
                Some(file)
            }
            Err((_, e)) => return Err(e.into()),
        };
        std::thread::Builder::new()
            .name("verge-disk-writer".into())
            .spawn(move || {
                if let Some(file) = waiting {
                    let taken = Flock::lock(file, FlockArg::LockExclusive)
                        .map_err(|(_, e)| std::io::Error::from(e))
                        .and_then(|held| store.take_over(held));
                    if let Err(e) = taken {
                        log::error!("disk cache: cannot take over: {e}");
                        return;
                    }
                }
                store.write_loop(queue)
            })?;
        Ok(store)
    }

    /// With the directory's lock held: open the segments and rebuild the index from them.
    fn take_over(&'static self, held: Flock<File>) -> std::io::Result<()> {
        let s = &self.settings;
        let segments = Segments::open(&s.path, s.size, s.segment_size)?;
        let found = segments.files();
        self.note_total(segments.total());
        self.files
            .write()
            .extend(found.iter().map(|(id, f, _)| (*id, f.clone())));
        *self.segments.lock() = Some(segments);
        *self.lock.lock() = Some(held);
        std::thread::Builder::new()
            .name("verge-disk-rebuild".into())
            .spawn(move || self.rebuild(found))?;
        Ok(())
    }

    /// Copy disk hits read whole into `to` (the memory tier).
    pub fn promote_into(&self, to: &'static dyn Promote) {
        let _ = self.promote.set(to);
    }

    fn promoter(&self) -> Option<&'static dyn Promote> {
        self.promote.get().copied()
    }

    /// Largest body written to disk.
    pub fn max_object_size(&self) -> u64 {
        self.settings.max_object_size
    }

    /// Whether the index holds an object under `key` (a refetch of it is written again at
    /// once, whatever `min_uses` says, so the disk copy follows the fresh one).
    pub fn holds(&self, key: &HashBinary) -> bool {
        self.index.read().entries.contains_key(key)
    }

    /// Objects in the index.
    pub fn objects(&self) -> usize {
        self.index.read().entries.len()
    }

    /// Bytes in the segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.lock().as_ref().map_or(0, Segments::total)
    }

    /// What the index rebuild at start did, once it is done.
    pub fn rebuild_report(&self) -> Option<RebuildReport> {
        self.rebuild_report.lock().clone()
    }

    /// Whether the index rebuild at start is still running.
    pub fn is_loading(&self) -> bool {
        self.loading.load(Ordering::Acquire)
    }

    fn seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Queue `body` with `meta` for writing under `key` (of URL `primary`). Not written when
    /// it is too large or the queue is full.
    pub fn write(&self, key: HashBinary, primary: HashBinary, meta: Arc<StoredMeta>, body: Bytes) {
        let len = body.len() as u64;
        if len > self.settings.max_object_size {
            return;
        }
        if self.queued_bytes.fetch_add(len, Ordering::AcqRel) + len > MAX_QUEUED_BYTES {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            DISK_METRICS.writes_dropped.inc();
            return;
        }
        let job = Job::Object {
            seq: self.seq(),
            key,
            primary,
            meta,
            body,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.jobs.try_send(job)
        {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            DISK_METRICS.writes_dropped.inc();
        }
    }

    /// A 304 refreshed the object under `key`, which only the disk tier holds: queue it to be
    /// written again with `meta` (its body copied on disk). `false` if there is no such object
    /// or the queue is full.
    pub fn update_meta(&self, key: &HashBinary, meta: Arc<StoredMeta>) -> bool {
        let Some(from) = self.index.read().entries.get(key).copied() else {
            return false;
        };
        let Some(file) = self.files.read().get(&from.segment).cloned() else {
            return false;
        };
        let job = Job::Rewrite {
            seq: self.seq(),
            key: *key,
            meta,
            from,
            file,
        };
        self.jobs.try_send(job).is_ok()
    }

    /// Remove the object under `key` (a purge, a fill thrown away): gone from the index now,
    /// and after a restart.
    /// Whether the tier held it.
    pub fn remove(&self, key: &HashBinary) -> bool {
        self.removal(Kind::Tombstone, key) > 0
    }

    /// Remove every variant of the URL `primary`, now and after a restart.
    /// How many objects (variants) of it the tier held.
    pub fn remove_url(&self, primary: &HashBinary) -> usize {
        self.removal(Kind::UrlTombstone, primary)
    }

    /// How many objects of `key` the tier held.
    fn removal(&self, kind: Kind, key: &HashBinary) -> usize {
        let (had, seq) = {
            let mut index = self.index.write();
            let had = match kind {
                Kind::UrlTombstone => index.remove_url(key),
                _ => usize::from(index.remove(key).is_some()),
            };
            let loading = self.is_loading();
            if loading {
                let (keys, urls) = &mut index.removed_while_loading;
                match kind {
                    Kind::UrlTombstone => urls.insert(*key),
                    _ => keys.insert(*key),
                };
            }
            // a tombstone only where something of the key may be on disk or on its way there
            if !(had > 0 || loading || self.queued_bytes.load(Ordering::Acquire) > 0) {
                return 0;
            }
            let seq = self.seq();
            match kind {
                Kind::UrlTombstone => index.removed_urls.insert(*key, seq),
                _ => index.removed_keys.insert(*key, seq),
            };
            (had, seq)
        };
        DISK_METRICS.objects.set(self.objects() as i64);
        // written now, not queued: a purge holds after a crash right after it (queued only
        // while another process still owns the directory)
        if !self.write_tombstone(kind, *key) {
            let _ = self.jobs.try_send(Job::Tombstone { kind, key: *key });
        }
        // (if this cannot be queued, the removal is remembered for good: a few bytes)
        let _ = self.jobs.try_send(Job::Forget {
            kind,
            removals: vec![(seq, *key)],
        });
        self.queue_reclaim();
        had
    }

    /// Wait (up to `timeout`) until everything queued so far is written and synced.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = sync_channel(1);
        if self.jobs.send(Job::Flush(done)).is_err() {
            return false;
        }
        wait.recv_timeout(timeout).is_ok()
    }

    /// Write and sync what is queued (up to `timeout`), then let the directory go: nothing
    /// more is written, and another process (the new one of an upgrade) may take it over.
    /// Reads go on from the files already open.
    ///
    /// A checkpoint of the index is written after the flush, so the next start (or the new
    /// process) loads it and scans only what is written after it.
    ///
    /// Closing again waits for the first close to be done and returns what it did (the node
    /// closes the tier as its shutdown starts, and again at exit in case that was cut short).
    /// A checkpoint cut short (`timeout`, or the process killed) leaves the previous one, which
    /// the next start loads before scanning the segments written after it.
    pub fn close(&self, timeout: Duration) -> bool {
        let mut closed = self.closed.lock();
        if let Some(flushed) = *closed {
            return flushed;
        }
        let flushed = self.flush(timeout);
        let (done, wait) = sync_channel(1);
        if self.jobs.send(Job::Checkpoint(done)).is_ok() {
            let _ = wait.recv_timeout(timeout);
        }
        *self.segments.lock() = None;
        *self.lock.lock() = None;
        *closed = Some(flushed);
        flushed
    }

    /// The object at `loc` was hit: it gets a second chance when its segment goes.
    fn note_hit(&self, key: &HashBinary, loc: &Location) {
        if self.index.read().hit.contains(key) {
            return;
        }
        let mut index = self.index.write();
        if index.entries.get(key) == Some(loc) {
            index.hit.insert(*key);
        }
    }

    /// A record failed its checksum: count it and remove it.
    fn drop_corrupt(&self, key: HashBinary) {
        DISK_METRICS.corrupt.inc();
        log::warn!("disk cache: a record failed its checksum; dropped");
        self.remove(&key);
    }

    /// Run a read, timed: on the request's thread when the page cache holds what it reads
    /// ([`Wait::Never`]), else again off the async runtime, on the blocking pool
    /// (`verge_cache_disk_reads_waited_total`).
    async fn timed_read<T: Send + 'static>(
        &self,
        read: impl Fn(Wait) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let start = Instant::now();
        let out = match read(Wait::Never) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                DISK_METRICS.reads_waited.inc();
                tokio::task::spawn_blocking(move || read(Wait::Allowed))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            }
            done => done,
        };
        DISK_METRICS
            .read_seconds
            .observe(start.elapsed().as_secs_f64());
        out
    }

    /// Move the object under `key` to the memory tier now, if it is on disk, its whole record
    /// is in the page cache (this never waits for the device: it runs on the request's
    /// thread), its body is at most `limit` bytes and within the memory tier's cap, `worth`
    /// says yes to its meta, and the memory tier admits it. The hit lane's disk hit, counted as
    /// one when the memory tier now holds the object ([`Promoted::Held`]) or its admission
    /// turned the object away and handed it back to be served once
    /// ([`Promoted::NotAdmitted`]); `None` when there was nothing to read or nothing to
    /// serve. A record that fails its checksums is dropped and counted, as on every read.
    pub fn promote_now(
        &'static self,
        key: &CacheKey,
        limit: usize,
        worth: impl FnOnce(&StoredMeta) -> bool,
    ) -> Option<Promoted> {
        let to = self.promoter()?;
        let combined = key.combined_bin();
        let loc = self.index.read().entries.get(&combined).copied()?;
        if usize::try_from(loc.body_len).map_or(true, |n| n > limit.min(to.promote_limit())) {
            return None;
        }
        let file = self.files.read().get(&loc.segment).cloned()?;
        let start = Instant::now();
        let (meta, body) = match read_whole(&file, &loc, &combined, Wait::Never) {
            Ok(Some(read)) => read,
            Ok(None) => {
                self.drop_corrupt(combined);
                return None;
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    log::warn!("disk cache: read failed: {e}");
                }
                return None;
            }
        };
        DISK_METRICS
            .read_seconds
            .observe(start.elapsed().as_secs_f64());
        let stored = StoredMeta::from_meta(&meta).ok().filter(|m| worth(m))?;
        let still_on_disk = || self.index.read().entries.get(&combined) == Some(&loc);
        match to.promote(key.to_compact(), Arc::new(stored), body, &still_on_disk) {
            Promoted::Superseded => None,
            served => {
                DISK_METRICS.hits.inc();
                self.note_hit(&combined, &loc);
                Some(served)
            }
        }
    }

    /// The object under `key`, if the disk tier has a whole, verified one.
    pub async fn lookup(&'static self, key: &CacheKey) -> Result<Option<(CacheMeta, HitHandler)>> {
        let combined = key.combined_bin();
        let found = {
            let index = self.index.read();
            index.entries.get(&combined).copied()
        };
        let Some(loc) = found else {
            return Ok(None);
        };
        let Some(file) = self.files.read().get(&loc.segment).cloned() else {
            return Ok(None);
        };
        match self
            .timed_read(move |wait| read_entry(&file, &loc, &combined, wait))
            .await
        {
            Ok(Some((meta, body, first))) => {
                DISK_METRICS.hits.inc();
                self.note_hit(&combined, &loc);
                let end = body.len;
                let promote = self.promoter().and_then(|to| {
                    let fits = usize::try_from(end).is_ok_and(|n| n <= to.promote_limit());
                    let stored = StoredMeta::from_meta(&meta).ok()?;
                    fits.then(|| Promotion {
                        to,
                        key: key.to_compact(),
                        meta: Arc::new(stored),
                        from: loc,
                        chunks: Vec::new(),
                    })
                });
                let hit = DiskHit {
                    body: Arc::new(body),
                    store: self,
                    key: combined,
                    cached: first.map(|b| (0, b)),
                    pos: 0,
                    end,
                    promote,
                };
                Ok(Some((meta, Box::new(hit))))
            }
            Ok(None) => {
                self.drop_corrupt(combined);
                Ok(None)
            }
            Err(e) => {
                log::warn!("disk cache: read failed: {e}");
                Ok(None)
            }
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
