//! In-memory cache storage for pingora-cache: sharded, zero-copy body reads, byte-accounted
//! (headers + body + per-entry overhead), with a per-object size cap. Responses stream to
//! readers while they are fetched (`super::fill`). Eviction is `super::eviction::S3FifoEviction`:
//! the storage admits each finished object itself, under the eviction shard's lock, dropping the
//! victims before the newcomer is stored, so the stored bytes never exceed `cache.memory`. A
//! second index maps each primary key (the URL) to its stored variants, so one URL can be taken
//! out with all of them. With a disk tier (`super::disk`), a stored object is also written there
//! at its `cache.disk.min_uses`-th request, a memory miss looks there, and removals reach it.

mod commit;
mod entry_set;
mod handlers;
mod promote;

use crate::cache::KeyMap;
use entry_set::EntrySet;
pub use handlers::stored_body_len;
use handlers::{MemoryHit, MemoryMiss, ToDisk};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;
use pingora_cache::eviction::CacheEntryKey;
use pingora_cache::key::{CacheHashKey, CacheKey, CompactCacheKey, HashBinary};
use pingora_cache::predictor::CacheablePredictor;
use pingora_cache::storage::streaming_write::U64WriteId;
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheMeta;

use super::disk::{DiskStore, Promoted};
use super::eviction::S3FifoEviction;
use super::fill::{Fill, Sealed};
use super::pending::PendingFetches;
use super::stored_meta::{ClientHead, StoredMeta};
use pingora_error::{Error, ErrorType, Result};
use std::any::Any;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes charged per entry on top of its metadata ([`StoredMeta::size`]: the struct and its
/// stored head) and body: the entry and the two `Arc` headers, its map slot, its eviction
/// record and queue position, its share of the frequency sketch, and allocator slack (the
/// breakdown is in docs/benchmarks.md, "Where an entry's memory goes").
/// Calibrated against memory growth with the `bench_origin` objects (five origin fields, three
/// of verge's: about 450 bytes of metadata), so this plus the metadata, about 1.19 KiB, is at
/// or above it: with glibc's malloc RSS grew by 0.98 KiB per entry beyond the body for 65,536
/// entries of 16 KiB, 1.19 KiB for 16,384 of 64 KiB and 1.15 KiB for 4,096 of 1 KiB; with
/// mimalloc (the binary's allocator) PSS grows by 0.86–0.89 KiB for the 16 KiB objects and
/// 1.01–1.12 KiB for the 64 KiB ones (`scripts/bench --scenario memory,memory64`; 0.95–1.01
/// and 1.14–1.26 before the metadata's struct and head each took a size class less, with the
/// same charge), the latter partly the frequency sketch (sized for 2 KiB objects).
pub const ENTRY_OVERHEAD: usize = 768;
const SHARDS: usize = 64;

/// A stored response found by [`MemoryStorage::servable`].
pub struct Servable {
    entry: Arc<Entry>,
}

impl Servable {
    /// `entry`, if a plain hit may be answered from it: it has a [`ClientHead`] and its body is
    /// as long as that head announces.
    fn whole(entry: Arc<Entry>) -> Option<Self> {
        let head = entry.meta.client_head()?;
        let whole = head.content_length.is_none_or(|n| n == entry.body.len());
        whole.then_some(Servable { entry })
    }

    /// Its metadata.
    pub fn meta(&self) -> &StoredMeta {
        &self.entry.meta
    }

    /// The head a hit sends (present: checked when it was found).
    pub fn head(&self) -> Option<ClientHead<'_>> {
        self.entry.meta.client_head()
    }

    /// The whole body.
    pub fn body(&self) -> &Bytes {
        &self.entry.body
    }

    /// The entry as the eviction manager tracks it, and the weight pingora reports for a hit.
    pub fn eviction_key(&self) -> (CacheEntryKey, usize) {
        (
            CacheEntryKey::key_only(key_of(self.entry.combined)),
            self.entry.body.len() + ENTRY_OVERHEAD,
        )
    }
}

/// One stored response: its metadata and the whole body. `repr(C)` with `combined` first: a
/// lookup compares it ([`entry_set::EntrySet`] keeps no copy), and a hit's clone of the `Arc`
/// then touches the same 32 bytes. What it is charged ([`Entry::size`]) is derived, not kept.
#[repr(C)]
struct Entry {
    /// The key it is stored under (primary + variance).
    combined: HashBinary,
    /// Its URL's key (the same as `combined` for an entry without variance).
    primary: HashBinary,
    meta: Arc<StoredMeta>,
    body: Bytes,
    /// Requests it has had, the fetch included, counted up to the disk tier's `min_uses`; at
    /// [`WRITTEN`] once it is on its way to disk (or came from there).
    uses: AtomicU32,
}

/// The largest body the hit lane reads from the disk tier on the request's thread (from the
/// page cache, never waiting for the device); a larger one is Pingora's path's, which reads it
/// a chunk at a time.
pub const LANE_DISK_READ: usize = 1 << 20;

/// [`Entry::uses`] of an entry written to (or read from) the disk tier.
const WRITTEN: u32 = u32::MAX;

/// The key the eviction manager knows a stored entry by: its combined hash, which stands for
/// the whole key (the eviction manager and the storage ask a key for nothing else), with no
/// copy of the URL's host to allocate.
fn key_of(combined: HashBinary) -> CompactCacheKey {
    CompactCacheKey {
        primary: combined,
        variance: None,
        user_tag: Box::default(),
    }
}

/// One shard: the stored entries, and the fills in flight (usually none; more than one for a
/// key only when requests bypassed the miss lock or a refetch was forced). Both under one lock,
/// so a hit takes no lock beyond the one it always took, and a finished fill turns into its
/// entry in one step.
#[derive(Default)]
struct ShardMaps {
    entries: EntrySet,
    fills: KeyMap<HashBinary, Vec<Arc<Fill>>>,
}

type Shard = RwLock<ShardMaps>;
/// Primary key → the combined keys of its stored variants, when it has any (an entry stored
/// without variance sits under its primary key itself and is not listed).
type VariantShard = RwLock<KeyMap<HashBinary, Vec<HashBinary>>>;

/// The storage. `'static` (leaked once at startup) because pingora-cache requires it.
pub struct MemoryStorage {
    shards: Box<[Shard]>,
    variants: Box<[VariantShard]>,
    max_object_size: usize,
    bytes: AtomicU64,
    objects: AtomicU64,
    /// Body bytes held by fills in flight (not counted in `bytes`).
    inflight: AtomicU64,
    next_fill: AtomicU64,
    /// Admits what the storage stores (see the module doc). Without it, pingora's own call to
    /// the eviction manager after `finish` does the admission.
    eviction: Option<&'static S3FifoEviction>,
    /// Told when a response turns out larger than `max_object_size` mid-body, as pingora's
    /// own size check would (hit-for-pass, reason `ResponseTooLarge`).
    predictor: Option<&'static (dyn CacheablePredictor + Sync)>,
    /// Fetches in progress that the hit lane may wait on; told when a fill starts and when a
    /// response is stored.
    pub pending: PendingFetches,
    /// The disk tier under this one, if configured.
    disk: Option<&'static DiskStore>,
}

impl MemoryStorage {
    /// An empty store that refuses bodies over `max_object_size`.
    pub fn new(max_object_size: usize) -> Self {
        MemoryStorage {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            variants: (0..SHARDS).map(|_| RwLock::default()).collect(),
            max_object_size,
            bytes: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            next_fill: AtomicU64::new(0),
            eviction: None,
            predictor: None,
            pending: PendingFetches::default(),
            disk: None,
        }
    }

    /// Write stored objects to `disk` (at their `cache.disk.min_uses`-th request), and look there
    /// on a miss.
    pub fn with_disk(mut self, disk: &'static DiskStore) -> Self {
        self.disk = Some(disk);
        self
    }

    /// Admit every finished object through `eviction` before storing it.
    pub fn with_eviction(mut self, eviction: &'static S3FifoEviction) -> Self {
        self.eviction = Some(eviction);
        self
    }

    /// Remember URLs whose body outgrew `max_object_size` in `predictor`.
    pub fn with_predictor(mut self, predictor: &'static (dyn CacheablePredictor + Sync)) -> Self {
        self.predictor = Some(predictor);
        self
    }

    fn shard(&self, key: &HashBinary) -> &Shard {
        &self.shards[key[0] as usize % SHARDS]
    }

    fn variant_shard(&self, primary: &HashBinary) -> &VariantShard {
        &self.variants[primary[0] as usize % SHARDS]
    }

    /// How many variants of this primary key (URL) are stored, the primary slot included.
    pub fn variant_count(&self, primary: &HashBinary) -> usize {
        let variants = self
            .variant_shard(primary)
            .read()
            .get(primary)
            .map_or(0, Vec::len);
        variants + usize::from(self.contains(primary))
    }

    /// The stored response under `combined`, when a plain hit on it may be answered straight
    /// from the front door (`crate::proxy::hit_lane`): nothing is being fetched for the key (a fill
    /// in flight is newer), the entry has a [`ClientHead`] and its body is as long as that head
    /// announces. Freshness and invalidations are the caller's to check.
    pub fn servable(&self, combined: &HashBinary) -> Option<Servable> {
        let entry = {
            let maps = self.shard(combined).read();
            if !maps.fills.is_empty() && maps.fills.contains_key(combined) {
                return None;
            }
            maps.entries.get(combined)?.clone()
        };
        Servable::whole(entry)
    }

    /// The object under `key` read from the disk tier on the request's thread, for the hit
    /// lane, when the page cache holds its whole record, its body is at most
    /// [`LANE_DISK_READ`] bytes and `worth` accepts its meta (see [`DiskStore::promote_now`]):
    /// moved up to memory and found there ([`servable`](Self::servable)), or, when the memory
    /// tier's admission turns it away, served once from what was read, as Pingora's path
    /// serves such a hit, without reading it a second time.
    pub fn servable_from_disk(
        &self,
        key: &CacheKey,
        worth: impl FnOnce(&StoredMeta) -> bool,
    ) -> Option<Servable> {
        let disk = self.disk?;
        match disk.promote_now(key, LANE_DISK_READ, worth)? {
            Promoted::Held => self.servable(&key.combined_bin()),
            Promoted::NotAdmitted(meta, body) => {
                Servable::whole(Arc::new(Entry::from_disk(key, meta, body)))
            }
            Promoted::Superseded => None,
        }
    }

    /// The entry stored under `combined` in memory, whether or not a plain hit may be answered
    /// from it (what the admin listener's `/cache/` reports, for `verge verify`).
    pub fn stored(&self, combined: &HashBinary) -> Option<Servable> {
        let entry = self.shard(combined).read().entries.get(combined)?.clone();
        Some(Servable { entry })
    }

    /// The front door answered a request with `servable`, found under `combined`: one more
    /// use: at the disk tier's `min_uses`, the entry is queued for disk (once).
    pub fn served(&self, combined: &HashBinary, servable: &Servable) {
        self.used(combined, &servable.entry);
    }

    /// One more request for `entry`, stored under `combined`: at the disk tier's `min_uses`, it
    /// is queued for disk (once).
    fn used(&self, combined: &HashBinary, entry: &Entry) {
        let Some(disk) = self.disk else {
            return;
        };
        let min_uses = disk.min_uses();
        let reached = entry
            .uses
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n != WRITTEN).then(|| if n + 1 >= min_uses { WRITTEN } else { n + 1 })
            })
            .is_ok_and(|before| before + 1 >= min_uses);
        if reached {
            disk.write(
                *combined,
                entry.primary,
                entry.meta.clone(),
                entry.body.clone(),
            );
        }
    }

    /// After removing `entry` (a purge): a disk write a request queued for it may have raced
    /// the removal of its disk copy, so remove that again.
    fn removed_from_disk_too(&self, combined: &HashBinary, entry: &Entry) {
        if let Some(disk) = self.disk {
            if entry.uses.load(Ordering::Acquire) == WRITTEN {
                disk.remove(combined);
            }
        }
    }

    /// Whether a response for this combined key is being fetched into the store right now.
    pub fn is_filling(&self, combined: &HashBinary) -> bool {
        let maps = self.shard(combined).read();
        !maps.fills.is_empty() && maps.fills.contains_key(combined)
    }

    /// Whether an entry is stored under this combined key (primary + variance).
    pub fn contains(&self, combined: &HashBinary) -> bool {
        self.shard(combined).read().entries.contains_key(combined)
    }

    /// Remove every stored variant of a primary key (a URL), not only the primary slot. Fills of
    /// the URL still in flight are not stored when they finish. Returns the keys removed, for
    /// the eviction manager, and how many objects of it the disk tier held.
    pub fn remove_all_variants(&self, primary: &HashBinary) -> (Vec<CompactCacheKey>, usize) {
        for shard in self.shards.iter() {
            let maps = shard.read();
            for fill in maps.fills.values().flatten() {
                if fill.primary == *primary {
                    fill.revoke();
                }
            }
        }
        // the disk tier first: a disk hit promoted meanwhile is then either refused (it asks the
        // disk index under the shard lock) or already in the variant list taken below
        let on_disk = self.disk.map_or(0, |disk| disk.remove_url(primary));
        let mut combined = self
            .variant_shard(primary)
            .write()
            .remove(primary)
            .unwrap_or_default();
        combined.push(*primary);
        let in_memory = combined
            .iter()
            .filter_map(|c| {
                let entry = self.remove_entry(c)?;
                self.removed_from_disk_too(c, &entry);
                Some(key_of(*c))
            })
            .collect();
        (in_memory, on_disk)
    }

    /// Remove every entry for which `judge(meta)` says so, one shard at a time, without holding
    /// a shard's lock while judging. An entry replaced meanwhile is left alone. Returns the keys
    /// removed, for the eviction manager.
    pub fn remove_where(&self, mut judge: impl FnMut(&StoredMeta) -> bool) -> Vec<CompactCacheKey> {
        let mut removed = Vec::new();
        for shard in self.shards.iter() {
            let entries: Vec<(HashBinary, Arc<Entry>)> = shard
                .read()
                .entries
                .iter()
                .map(|(k, e)| (*k, e.clone()))
                .collect();
            for (key, entry) in entries {
                if !judge(&entry.meta) {
                    continue;
                }
                if self.remove_if_same(&key, &entry) {
                    removed.push(key_of(key));
                }
            }
        }
        removed
    }

    /// Keep every fill of `combined` in flight from being stored, and remove what is stored
    /// there. Returns the removed entry's key, for the eviction manager.
    pub fn discard(&self, combined: &HashBinary) -> Option<CompactCacheKey> {
        self.revoke_fills(combined);
        if let Some(disk) = self.disk {
            disk.remove(combined);
        }
        let entry = self.remove_entry(combined)?;
        self.removed_from_disk_too(combined, &entry);
        Some(key_of(*combined))
    }

    /// Keep every fill of `combined` in flight from being stored.
    fn revoke_fills(&self, combined: &HashBinary) {
        if let Some(list) = self.shard(combined).read().fills.get(combined) {
            list.iter().for_each(|f| f.revoke());
        }
    }

    /// Bytes currently charged to stored entries.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of stored entries.
    pub fn objects(&self) -> u64 {
        self.objects.load(Ordering::Relaxed)
    }

    /// Body bytes held by responses still being fetched (not part of [`MemoryStorage::bytes`]).
    /// Each fill holds at most `max_object_size` (or its lag window, once oversize).
    pub fn inflight_bytes(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Number of fills in flight.
    pub fn fills(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().fills.values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// Store `entry` under its key in the locked shard `maps` (replacing what was there).
    fn insert_locked(&self, maps: &mut ShardMaps, entry: Entry) {
        let size = entry.size() as u64;
        let key = entry.combined;
        let primary = entry.primary;
        match maps.entries.insert(Arc::new(entry)) {
            Some(old) => {
                // one step each way, so a reader of the gauge never sees both sizes at once
                let old = old.size() as u64;
                if size >= old {
                    self.bytes.fetch_add(size - old, Ordering::Relaxed);
                } else {
                    self.bytes.fetch_sub(old - size, Ordering::Relaxed);
                }
            }
            None => {
                self.bytes.fetch_add(size, Ordering::Relaxed);
                self.objects.fetch_add(1, Ordering::Relaxed);
                if key == primary {
                    return;
                }
                // under the entry shard's lock, so a concurrent remove of this key cannot
                // interleave between the two maps (lock order: entry shard, then variant shard)
                let mut index = self.variant_shard(&primary).write();
                let list = index.entry(primary).or_default();
                if !list.contains(&key) {
                    list.push(key);
                }
            }
        }
    }

    /// Remove the entry under `key` from the locked shard `maps`.
    fn remove_locked(&self, maps: &mut ShardMaps, key: &HashBinary) -> Option<Arc<Entry>> {
        let old = maps.entries.remove(key)?;
        self.bytes.fetch_sub(old.size() as u64, Ordering::Relaxed);
        self.objects.fetch_sub(1, Ordering::Relaxed);
        let primary = old.primary;
        if *key == primary {
            return Some(old);
        }
        let mut index = self.variant_shard(&primary).write();
        if let Some(list) = index.get_mut(&primary) {
            list.retain(|c| c != key);
            if list.is_empty() {
                index.remove(&primary);
            }
        }
        Some(old)
    }

    fn remove_entry(&self, key: &HashBinary) -> Option<Arc<Entry>> {
        let mut maps = self.shard(key).write();
        self.remove_locked(&mut maps, key)
    }

    /// Remove the entry under `key` only if it is still `entry`.
    fn remove_if_same(&self, key: &HashBinary, entry: &Arc<Entry>) -> bool {
        let mut maps = self.shard(key).write();
        if !maps.entries.get(key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            return false;
        }
        self.remove_locked(&mut maps, key).is_some()
    }

    fn get(&self, key: &HashBinary) -> Option<Arc<Entry>> {
        self.shard(key).read().entries.get(key).cloned()
    }
}

fn storage_error(context: &'static str, e: Box<Error>) -> Box<Error> {
    Error::because(ErrorType::InternalError, context, e)
}

/// The `Content-Length` a stored response announces.
fn content_length(meta: &CacheMeta) -> Option<usize> {
    let headers = meta.headers();
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[async_trait]
impl Storage for MemoryStorage {
    /// A fill in flight wins over a stored entry (it is newer: a refetch of a stale or purged
    /// one); the stored entry is served without copying.
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let bin = key.combined_bin();
        let (fill, entry) = {
            let maps = self.shard(&bin).read();
            let fill = if maps.fills.is_empty() {
                None
            } else {
                maps.fills
                    .get(&bin)
                    .and_then(|list| list.iter().rev().find(|f| f.is_open()).cloned())
            };
            match fill {
                Some(fill) => {
                    // another request for the object while it is fetched: a use of what it
                    // becomes, counted under the lock so `settle` sees it
                    fill.uses.fetch_add(1, Ordering::AcqRel);
                    (Some(fill), None)
                }
                None => (None, maps.entries.get(&bin).cloned()),
            }
        };
        if let Some(fill) = fill {
            let meta = fill
                .meta
                .to_meta()
                .map_err(|e| storage_error("stored meta is unreadable", e))?;
            return Ok(Some((meta, Box::new(fill.reader()))));
        }
        let Some(entry) = entry else {
            return match self.disk {
                Some(disk) => disk.lookup(key).await,
                None => Ok(None),
            };
        };
        self.used(&bin, &entry);
        let meta = entry
            .meta
            .to_meta()
            .map_err(|e| storage_error("stored meta is unreadable", e))?;
        let hit = MemoryHit {
            end: entry.body.len(),
            body: entry.body.clone(),
            pos: 0,
            done: false,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    /// The fetching request's own reader of its fill. Never `None` (pingora panics on that):
    /// a fill stays findable until its miss handler is finished or dropped, whatever purges
    /// happen meanwhile. The meta beside it carries the entry's fields but not its response
    /// head ([`StoredMeta::to_meta_without_head`]): pingora-cache 0.9.1, the only caller,
    /// throws it away (`HttpCache::set_miss_handler`: `if let Some((_meta, body_reader))`), and
    /// parsing the head back was about 14,000 instructions of every stored miss.
    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let id = streaming_write_tag
            .and_then(|t| U64WriteId::try_from(t).ok())
            .map(u64::from);
        let bin = key.combined_bin();
        let fill = id.and_then(|id| {
            self.shard(&bin)
                .read()
                .fills
                .get(&bin)
                .and_then(|list| list.iter().find(|f| f.id == id).cloned())
        });
        let Some(fill) = fill else {
            return Error::e_explain(ErrorType::InternalError, "no fill for this streaming write");
        };
        let meta = fill
            .meta
            .to_meta_without_head()
            .map_err(|e| storage_error("stored meta is unreadable", e))?;
        Ok(Some((meta, Box::new(fill.reader()))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let stored =
            StoredMeta::from_meta(meta).map_err(|e| storage_error("cannot store meta", e))?;
        let id = self.next_fill.fetch_add(1, Ordering::Relaxed);
        let fill = Fill::new(
            id,
            key,
            Arc::new(stored),
            content_length(meta),
            self.max_object_size,
            &self.inflight,
        );
        let mut miss = Box::new(MemoryMiss {
            tag: U64WriteId::from(id),
            fill: fill.clone(),
            storage: self,
            finished: false,
            to_disk: ToDisk::Undecided,
            seed: Vec::new(),
            marked: false,
        });
        // a `Content-Length` over the memory tier's cap: streaming to disk starts before the
        // fill can be found, so a request between the head and the body attaches to it too
        miss.decide_disk(0);
        self.shard(&fill.key)
            .write()
            .fills
            .entry(fill.key)
            .or_default()
            .push(fill.clone());
        // the head is here: requests held in the hit lane can now read the body as it streams
        self.pending.progressed(&fill.key);
        Ok(miss)
    }

    /// An invalidation also keeps fills of the key in flight from being stored; an eviction
    /// only removes the stored entry.
    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key().combined_bin();
        let mut on_disk = false;
        if matches!(purge_type, PurgeType::Invalidation) {
            self.revoke_fills(&key);
            if let Some(disk) = self.disk {
                on_disk = disk.remove(&key);
            }
        }
        Ok(match self.remove_entry(&key) {
            Some(entry) => {
                if matches!(purge_type, PurgeType::Invalidation) {
                    self.removed_from_disk_too(&key, &entry);
                }
                PurgeOutcome::Purged(None)
            }
            // an object only on disk was stored too: its purge found it
            None if on_disk => PurgeOutcome::Purged(None),
            None => PurgeOutcome::NotFound,
        })
    }

    /// After a 304: the entry keeps its body and takes the new headers, and is charged (in the
    /// byte total and in the eviction manager) for its new size.
    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let bin = key.combined_bin();
        let Some(old) = self.get(&bin) else {
            // an object only on disk is refreshed there
            return Ok(self.disk.is_some_and(|disk| {
                StoredMeta::from_meta(meta)
                    .is_ok_and(|stored| disk.update_meta(&bin, Arc::new(stored)))
            }));
        };
        let meta = Arc::new(
            StoredMeta::from_meta(meta).map_err(|e| storage_error("cannot store meta", e))?,
        );
        let size = entry_size(&meta, old.body.len());
        // a revalidation is a request too: the refreshed entry counts it
        let mut uses = old.uses.load(Ordering::Acquire);
        if let Some(disk) = self.disk {
            if uses == WRITTEN || uses + 1 >= disk.min_uses() {
                uses = WRITTEN;
                disk.write(bin, old.primary, meta.clone(), old.body.clone());
            } else {
                uses += 1;
            }
        }
        let entry = Entry {
            meta,
            body: old.body.clone(),
            combined: old.combined,
            primary: old.primary,
            uses: AtomicU32::new(uses),
        };
        let replace = |victims: &[CacheEntryKey]| {
            let keep = self.drop_victims(victims, &bin);
            let mut maps = self.shard(&bin).write();
            if !maps.entries.get(&bin).is_some_and(|e| Arc::ptr_eq(e, &old)) {
                return false;
            }
            if keep {
                self.insert_locked(&mut maps, entry);
            } else {
                self.remove_locked(&mut maps, &bin);
            }
            keep
        };
        let Some(eviction) = self.eviction else {
            return Ok(replace(&[]));
        };
        // Resized under the eviction shard's lock, which every write of this key takes too, so
        // the entry cannot change between the check and the update.
        let current = || self.get(&bin).is_some_and(|e| Arc::ptr_eq(&e, &old));
        Ok(eviction
            .resize_with(
                &CacheEntryKey::key_only(key_of(bin)),
                current,
                size,
                replace,
            )
            .unwrap_or(false))
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

fn entry_size(meta: &StoredMeta, body: usize) -> usize {
    meta.size() + body + ENTRY_OVERHEAD
}

impl Entry {
    /// An object read from the disk tier under `key`: already written there, never again.
    fn from_disk(key: &impl CacheHashKey, meta: Arc<StoredMeta>, body: Bytes) -> Self {
        Entry {
            meta,
            body,
            combined: key.combined_bin(),
            primary: key.primary_bin(),
            uses: AtomicU32::new(WRITTEN),
        }
    }

    /// What it is charged against the byte budget ([`entry_size`]); the same for its whole
    /// life, as its meta and body never change.
    fn size(&self) -> usize {
        entry_size(&self.meta, self.body.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::eviction::EvictionManager;
    use pingora_cache::predictor::CacheablePredictor;
    use pingora_cache::NoCacheReason;
    use pingora_http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    fn storage() -> &'static MemoryStorage {
        Box::leak(Box::new(MemoryStorage::new(1024)))
    }

    fn meta() -> CacheMeta {
        let now = SystemTime::now();
        let header = ResponseHeader::build(200, None).expect("header");
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
    }

    #[tokio::test]
    async fn write_then_read_and_seek() {
        let s = storage();
        let key = CacheKey::new("k", "tag");
        let span = pingora_cache::trace::Span::inactive().handle();
        let mut miss = s
            .get_miss_handler(&key, &meta(), &span)
            .await
            .expect("miss");
        miss.write_body(Bytes::from_static(b"hello "), false)
            .await
            .expect("w");
        miss.write_body(Bytes::from_static(b"world"), true)
            .await
            .expect("w");
        miss.finish().await.expect("finish");
        assert_eq!(s.objects(), 1);
        assert!(s.bytes() > 11 + ENTRY_OVERHEAD as u64);
        let (_, mut hit) = s.lookup(&key, &span).await.expect("lookup").expect("hit");
        assert_eq!(
            hit.read_body().await.expect("r").as_deref(),
            Some(&b"hello world"[..])
        );
        assert_eq!(hit.read_body().await.expect("r"), None);
        hit.seek(6, Some(8)).expect("seek");
        assert_eq!(
            hit.read_body().await.expect("r").as_deref(),
            Some(&b"wo"[..])
        );
    }

    #[tokio::test]
    async fn unfinished_or_oversized_writes_store_nothing() {
        let s = storage();
        let span = pingora_cache::trace::Span::inactive().handle();
        let key = CacheKey::new("dropped", "");
        let mut miss = s
            .get_miss_handler(&key, &meta(), &span)
            .await
            .expect("miss");
        miss.write_body(Bytes::from_static(b"partial"), false)
            .await
            .expect("w");
        drop(miss);
        assert!(s.lookup(&key, &span).await.expect("lookup").is_none());
        // over max_object_size: writing goes on (the client is served from it), storing not
        let key = CacheKey::new("big", "");
        let mut miss = s
            .get_miss_handler(&key, &meta(), &span)
            .await
            .expect("miss");
        let (_, mut own) = s
            .lookup_streaming_write(&key, miss.streaming_write_tag(), &span)
            .await
            .expect("streaming lookup")
            .expect("own reader");
        miss.write_body(Bytes::from(vec![0u8; 2048]), true)
            .await
            .expect("an oversize write does not fail while its client reads");
        miss.finish().await.expect("finish");
        assert_eq!(
            own.read_body().await.expect("r").map(|b| b.len()),
            Some(2048)
        );
        assert_eq!(own.read_body().await.expect("r"), None);
        drop(own);
        // ... and once nobody can read it, the next write fails, ending the fetch
        let mut miss = s
            .get_miss_handler(&key, &meta(), &span)
            .await
            .expect("miss");
        let (_, own) = s
            .lookup_streaming_write(&key, miss.streaming_write_tag(), &span)
            .await
            .expect("streaming lookup")
            .expect("own reader");
        miss.write_body(Bytes::from(vec![0u8; 2048]), false)
            .await
            .expect("its client may still read");
        drop(own);
        assert!(miss
            .write_body(Bytes::from(vec![0u8; 10]), false)
            .await
            .is_err());
        drop(miss);
        assert!(s.lookup(&key, &span).await.expect("lookup").is_none());
        assert_eq!((s.objects(), s.bytes(), s.inflight_bytes()), (0, 0, 0));
        assert_eq!(s.fills(), 0);
    }

    async fn store(s: &'static MemoryStorage, key: &CacheKey, body: &'static [u8]) {
        let span = pingora_cache::trace::Span::inactive().handle();
        let mut miss = s.get_miss_handler(key, &meta(), &span).await.expect("miss");
        miss.write_body(Bytes::from_static(body), true)
            .await
            .expect("w");
        miss.finish().await.expect("finish");
    }

    #[tokio::test]
    async fn removing_a_url_takes_out_every_variant() {
        let s = storage();
        let span = pingora_cache::trace::Span::inactive().handle();
        let primary_slot = CacheKey::new("url", "host");
        let mut en = CacheKey::new("url", "host");
        en.set_variance_key([1; 16]);
        let mut fr = CacheKey::new("url", "host");
        fr.set_variance_key([2; 16]);
        let other = CacheKey::new("other", "host");
        for k in [&primary_slot, &en, &fr, &other] {
            store(s, k, b"x").await;
        }
        let primary = primary_slot.primary_bin();
        assert_eq!(s.variant_count(&primary), 3);
        assert!(s.contains(&en.combined_bin()));
        // storing a variant again does not count it twice
        store(s, &en, b"y").await;
        assert_eq!(s.variant_count(&primary), 3);
        assert_eq!(s.objects(), 4);
        let (removed, _) = s.remove_all_variants(&primary);
        assert_eq!(removed.len(), 3);
        let removed: Vec<HashBinary> = removed.iter().map(|k| k.combined_bin()).collect();
        assert!(removed.contains(&en.combined_bin()));
        assert!(removed.contains(&primary_slot.combined_bin()));
        for k in [&primary_slot, &en, &fr] {
            assert!(s.lookup(k, &span).await.expect("lookup").is_none());
        }
        assert!(s.lookup(&other, &span).await.expect("lookup").is_some());
        assert_eq!(s.objects(), 1);
        assert_eq!(s.variant_count(&primary), 0);
        assert!(s.remove_all_variants(&primary).0.is_empty());
        // a single purge keeps the index in step
        let compact = other.to_compact();
        s.purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span,
        )
        .await
        .expect("purge");
        assert_eq!(s.variant_count(&other.primary_bin()), 0);
        assert_eq!((s.objects(), s.bytes()), (0, 0));
    }

    #[tokio::test]
    async fn purge_and_update_meta_of_missing_key() {
        let s = storage();
        let span = pingora_cache::trace::Span::inactive().handle();
        let key = CacheKey::new("absent", "");
        assert!(!s.update_meta(&key, &meta(), &span).await.expect("update"));
        let compact = key.to_compact();
        let out = s
            .purge(
                PurgeTarget::Active(&compact),
                PurgeType::Invalidation,
                &span,
            )
            .await
            .expect("purge");
        assert_eq!(out, PurgeOutcome::NotFound);
    }

    fn engine_parts(
        budget: usize,
        max_object: usize,
    ) -> (&'static MemoryStorage, &'static S3FifoEviction) {
        let eviction: &'static S3FifoEviction =
            Box::leak(Box::new(S3FifoEviction::new(budget, max_object)));
        let storage = Box::leak(Box::new(
            MemoryStorage::new(max_object).with_eviction(eviction),
        ));
        (storage, eviction)
    }

    fn meta_with(headers: &[(&str, String)]) -> CacheMeta {
        let now = SystemTime::now();
        let mut header = ResponseHeader::build(200, None).expect("header");
        for (k, v) in headers {
            header.append_header(k.to_string(), v.as_str()).expect("h");
        }
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
    }

    async fn read_to_end(hit: &mut HitHandler) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = hit.read_body().await? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_response_being_fetched_is_readable_as_it_arrives_then_stored() {
        let (s, eviction) = engine_parts(16 << 20, 1 << 20);
        let span = pingora_cache::trace::Span::inactive().handle();
        let key = CacheKey::new("streamed", "");
        assert!(s.lookup(&key, &span).await.expect("lookup").is_none());
        let meta = meta_with(&[("content-length", "11".into())]);
        let mut miss = s.get_miss_handler(&key, &meta, &span).await.expect("miss");
        // the fetching request's own reader, found by its write tag
        let (_, mut own) = s
            .lookup_streaming_write(&key, miss.streaming_write_tag(), &span)
            .await
            .expect("streaming lookup")
            .expect("own reader");
        miss.write_body(Bytes::from_static(b"hello "), false)
            .await
            .expect("w");
        // a collapsed request: the fill, before the body is complete
        let (_, mut collapsed) = s
            .lookup(&key, &span)
            .await
            .expect("lookup")
            .expect("partial");
        assert_eq!(
            collapsed.read_body().await.expect("r").as_deref(),
            Some(&b"hello "[..])
        );
        assert_eq!(s.objects(), 0, "nothing stored yet");
        assert_eq!(s.inflight_bytes(), 6);
        miss.write_body(Bytes::from_static(b"world"), true)
            .await
            .expect("w");
        miss.finish().await.expect("finish");
        assert_eq!(read_to_end(&mut collapsed).await.expect("r"), b"world");
        assert_eq!(read_to_end(&mut own).await.expect("r"), b"hello world");
        assert_eq!((s.objects(), s.fills(), s.inflight_bytes()), (1, 0, 0));
        assert_eq!(
            s.bytes(),
            eviction.total_size() as u64,
            "admitted by the storage"
        );
        let (_, mut hit) = s.lookup(&key, &span).await.expect("lookup").expect("hit");
        assert!(
            hit.as_any().downcast_ref::<MemoryHit>().is_some(),
            "a stored hit"
        );
        assert_eq!(read_to_end(&mut hit).await.expect("r"), b"hello world");
    }

    /// From the moment a fill exists until long after it is stored, a lookup of its key always
    /// finds something: a gap would send a request the miss lock already released to the
    /// origin a second time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_lookup_never_misses_while_a_fill_turns_into_its_entry() {
        let (s, _) = engine_parts(64 << 20, 4 << 20);
        for round in 0..50 {
            let key = CacheKey::new(format!("k{round}"), "");
            let span = pingora_cache::trace::Span::inactive().handle();
            let mut miss = s
                .get_miss_handler(&key, &meta(), &span)
                .await
                .expect("miss");
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let lookers: Vec<_> = (0..3)
                .map(|_| {
                    let (key, done) = (key.clone(), done.clone());
                    tokio::spawn(async move {
                        let span = pingora_cache::trace::Span::inactive().handle();
                        let mut looks = 0u32;
                        while !done.load(std::sync::atomic::Ordering::Relaxed) || looks < 10 {
                            let found = s.lookup(&key, &span).await.expect("lookup");
                            assert!(found.is_some(), "a lookup found neither fill nor entry");
                            looks += 1;
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            // a body big enough that moving it into the entry takes a moment
            for _ in 0..64 {
                miss.write_body(Bytes::from(vec![b'z'; 16 << 10]), false)
                    .await
                    .expect("w");
            }
            miss.finish().await.expect("finish");
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            for l in lookers {
                l.await.expect("looker");
            }
        }
    }

    #[tokio::test]
    async fn a_failed_fetch_fails_its_readers_and_leaves_nothing() {
        let (s, eviction) = engine_parts(16 << 20, 1 << 20);
        let span = pingora_cache::trace::Span::inactive().handle();
        let key = CacheKey::new("reset", "");
        let meta = meta_with(&[("content-length", "1000".into())]);
        let mut miss = s.get_miss_handler(&key, &meta, &span).await.expect("miss");
        miss.write_body(Bytes::from(vec![b'x'; 100]), false)
            .await
            .expect("w");
        let mut readers = Vec::new();
        for _ in 0..3 {
            let (_, mut r) = s
                .lookup(&key, &span)
                .await
                .expect("lookup")
                .expect("partial");
            assert_eq!(r.read_body().await.expect("r").map(|b| b.len()), Some(100));
            readers.push(tokio::spawn(async move { read_to_end(&mut r).await }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(miss); // the origin reset: pingora drops the handler without finish
        for r in readers {
            assert!(r.await.expect("join").is_err(), "an error, never an end");
        }
        assert!(s.lookup(&key, &span).await.expect("lookup").is_none());
        assert_eq!(
            (s.objects(), s.bytes(), s.fills(), s.inflight_bytes()),
            (0, 0, 0, 0)
        );
        assert_eq!(eviction.total_items(), 0);
        // a body short of its Content-Length that pingora did finish is not stored either
        let mut miss = s.get_miss_handler(&key, &meta, &span).await.expect("miss");
        miss.write_body(Bytes::from(vec![b'x'; 999]), true)
            .await
            .expect("w");
        assert!(miss.finish().await.is_err());
        assert!(s.lookup(&key, &span).await.expect("lookup").is_none());
        assert_eq!((s.objects(), s.fills()), (0, 0));
    }

    #[tokio::test]
    async fn a_purge_during_the_fetch_keeps_it_from_being_stored() {
        let (s, _) = engine_parts(16 << 20, 1 << 20);
        let span = pingora_cache::trace::Span::inactive().handle();
        let key = CacheKey::new("purged", "");
        let mut miss = s
            .get_miss_handler(&key, &meta(), &span)
            .await
            .expect("miss");
        miss.write_body(Bytes::from_static(b"old "), false)
            .await
            .expect("w");
        let (_, mut attached) = s
            .lookup(&key, &span)
            .await
            .expect("lookup")
            .expect("partial");
        let compact = key.to_compact();
        s.purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span,
        )
        .await
        .expect("purge");
        assert!(
            s.lookup(&key, &span).await.expect("lookup").is_none(),
            "no new reader attaches"
        );
        // the writer's own reader is still found (pingora panics otherwise)
        assert!(s
            .lookup_streaming_write(&key, miss.streaming_write_tag(), &span)
            .await
            .expect("streaming lookup")
            .is_some());
        miss.write_body(Bytes::from_static(b"body"), true)
            .await
            .expect("w");
        miss.finish().await.expect("finish");
        assert_eq!(read_to_end(&mut attached).await.expect("r"), b"old body");
        assert!(s.lookup(&key, &span).await.expect("lookup").is_none());
        assert_eq!(s.objects(), 0);
    }

    #[tokio::test]
    async fn an_oversize_body_is_remembered_as_too_large() {
        use pingora_cache::predictor::Predictor;
        let predictor: &'static Predictor<1> = Box::leak(Box::new(Predictor::new(16, None)));
        let s: &'static MemoryStorage =
            Box::leak(Box::new(MemoryStorage::new(10).with_predictor(predictor)));
        let span = pingora_cache::trace::Span::inactive().handle();
        let key = CacheKey::new("big", "");
        let mut miss = s
            .get_miss_handler(&key, &meta(), &span)
            .await
            .expect("miss");
        let _own = s
            .lookup_streaming_write(&key, miss.streaming_write_tag(), &span)
            .await
            .expect("streaming lookup");
        miss.write_body(Bytes::from_static(b"0123456789"), false)
            .await
            .expect("w");
        assert!(predictor.cacheable_prediction(&key), "not over yet");
        miss.write_body(Bytes::from_static(b"!"), true)
            .await
            .expect("w");
        assert_eq!(
            predictor.predicted_uncacheable_reason(&key),
            Some(NoCacheReason::ResponseTooLarge)
        );
        miss.finish().await.expect("finish");
        assert_eq!(s.objects(), 0);
    }

    /// A 304 that changes the stored headers' size is charged at the new size, in the byte
    /// total (`verge_cache_bytes`) and in the eviction manager, growing and shrinking.
    #[tokio::test]
    async fn a_304_update_reaccounts_the_entry_at_its_new_size() {
        let (s, eviction) = engine_parts(16 << 20, 1 << 20);
        let span = pingora_cache::trace::Span::inactive().handle();
        let key = CacheKey::new("revalidated", "");
        let entry_key = CacheEntryKey::key_only(key.to_compact());
        let mut miss = s
            .get_miss_handler(&key, &meta(), &span)
            .await
            .expect("miss");
        miss.write_body(Bytes::from(vec![b'b'; 1000]), true)
            .await
            .expect("w");
        miss.finish().await.expect("finish");
        let before = s.bytes();
        assert_eq!(eviction.weight_of(&entry_key), Some(before as usize));
        for extra in [4000usize, 100, 0] {
            let meta = meta_with(&[("x-grown", "v".repeat(extra))]);
            assert!(s.update_meta(&key, &meta, &span).await.expect("update"));
            let now = s.bytes();
            let expected =
                StoredMeta::from_meta(&meta).expect("meta").size() + 1000 + ENTRY_OVERHEAD;
            assert_eq!(now as usize, expected, "the byte total has the new size");
            assert_eq!(
                eviction.weight_of(&entry_key),
                Some(expected),
                "eviction tracks the new size, not the old"
            );
            assert_eq!(eviction.total_size() as u64, now);
        }
        let (_, mut hit) = s.lookup(&key, &span).await.expect("lookup").expect("hit");
        assert_eq!(
            read_to_end(&mut hit).await.expect("r").len(),
            1000,
            "same body"
        );
    }

    /// A 304 whose headers no longer fit the shard's budget takes the entry out of both.
    #[tokio::test]
    async fn a_304_that_outgrows_the_budget_removes_the_entry_everywhere() {
        let (s, eviction) = engine_parts(8 << 10, 4 << 10);
        let span = pingora_cache::trace::Span::inactive().handle();
        let key = CacheKey::new("bloated", "");
        let mut miss = s
            .get_miss_handler(&key, &meta(), &span)
            .await
            .expect("miss");
        miss.write_body(Bytes::from(vec![b'b'; 1000]), true)
            .await
            .expect("w");
        miss.finish().await.expect("finish");
        assert_eq!(s.objects(), 1);
        let meta = meta_with(&[("x-huge", "v".repeat(9000))]);
        assert!(!s.update_meta(&key, &meta, &span).await.expect("update"));
        assert_eq!((s.objects(), s.bytes()), (0, 0));
        assert_eq!((eviction.total_items(), eviction.total_size()), (0, 0));
    }

    /// The entry and its `Arc` header fill a 96-byte size class of the allocator (with the
    /// charge kept in it, 112).
    #[test]
    fn an_entry_with_its_arc_header_is_96_bytes() {
        assert_eq!(std::mem::size_of::<Entry>() + 16, 96);
    }
}
