//! In-memory cache storage for pingora-cache: sharded, zero-copy body reads, byte-accounted
//! (headers + body + per-entry overhead), with a per-object size cap. Eviction is driven by
//! `super::eviction::S3FifoEviction`, which is fed the same byte sizes. A second index maps each
//! primary key (the URL) to its stored variants, so one URL can be taken out with all of them.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;
use pingora_cache::key::{CacheHashKey, CacheKey, CompactCacheKey, HashBinary};
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheMeta;

use super::stored_meta::StoredMeta;
use pingora_error::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes charged per entry on top of headers and body (map slot, Arc, meta buffers).
pub const ENTRY_OVERHEAD: usize = 256;
const SHARDS: usize = 64;

/// One stored response: its metadata and the whole body.
struct Entry {
    meta: StoredMeta,
    body: Bytes,
    size: usize,
    /// The key it was written under (primary slot: no variance), as the eviction manager knows it.
    key: CompactCacheKey,
}

type Shard = RwLock<HashMap<HashBinary, Arc<Entry>>>;
/// Primary key → the combined keys of its stored variants (the primary slot included).
type VariantShard = RwLock<HashMap<HashBinary, Vec<HashBinary>>>;

/// The storage. `'static` (leaked once at startup) because pingora-cache requires it.
pub struct MemoryStorage {
    shards: Box<[Shard]>,
    variants: Box<[VariantShard]>,
    max_object_size: usize,
    bytes: AtomicU64,
    objects: AtomicU64,
}

impl MemoryStorage {
    pub fn new(max_object_size: usize) -> Self {
        MemoryStorage {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            variants: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            max_object_size,
            bytes: AtomicU64::new(0),
            objects: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &HashBinary) -> &Shard {
        &self.shards[key[0] as usize % SHARDS]
    }

    fn variant_shard(&self, primary: &HashBinary) -> &VariantShard {
        &self.variants[primary[0] as usize % SHARDS]
    }

    /// How many variants of this primary key (URL) are stored.
    pub fn variant_count(&self, primary: &HashBinary) -> usize {
        self.variant_shard(primary)
            .read()
            .get(primary)
            .map_or(0, Vec::len)
    }

    /// Whether an entry is stored under this combined key (primary + variance).
    pub fn contains(&self, combined: &HashBinary) -> bool {
        self.shard(combined).read().contains_key(combined)
    }

    /// Remove every stored variant of a primary key (a URL), not only the primary slot. Returns
    /// the keys removed, for the eviction manager.
    pub fn remove_all_variants(&self, primary: &HashBinary) -> Vec<CompactCacheKey> {
        let combined = self
            .variant_shard(primary)
            .write()
            .remove(primary)
            .unwrap_or_default();
        combined
            .iter()
            .filter_map(|c| self.remove_entry(c))
            .map(|e| e.key.clone())
            .collect()
    }

    /// Remove every entry for which `judge(meta)` says so, one shard at a time, without holding
    /// a shard's lock while judging. An entry replaced meanwhile is left alone. Returns the keys
    /// removed, for the eviction manager.
    pub fn remove_where(&self, mut judge: impl FnMut(&StoredMeta) -> bool) -> Vec<CompactCacheKey> {
        let mut removed = Vec::new();
        for shard in self.shards.iter() {
            let entries: Vec<(HashBinary, Arc<Entry>)> =
                shard.read().iter().map(|(k, e)| (*k, e.clone())).collect();
            for (key, entry) in entries {
                if !judge(&entry.meta) {
                    continue;
                }
                let same = self
                    .shard(&key)
                    .read()
                    .get(&key)
                    .is_some_and(|now| Arc::ptr_eq(now, &entry));
                if same && self.remove_entry(&key).is_some() {
                    removed.push(entry.key.clone());
                }
            }
        }
        removed
    }

    /// Bytes currently charged to stored entries.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of stored entries.
    pub fn objects(&self) -> u64 {
        self.objects.load(Ordering::Relaxed)
    }

    fn insert(&self, key: HashBinary, entry: Entry) {
        let size = entry.size as u64;
        let primary = entry.key.primary_bin();
        let mut shard = self.shard(&key).write();
        let old = shard.insert(key, Arc::new(entry));
        self.bytes.fetch_add(size, Ordering::Relaxed);
        match old {
            Some(old) => {
                self.bytes.fetch_sub(old.size as u64, Ordering::Relaxed);
            }
            None => {
                self.objects.fetch_add(1, Ordering::Relaxed);
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

    fn remove(&self, key: &HashBinary) -> bool {
        self.remove_entry(key).is_some()
    }

    fn remove_entry(&self, key: &HashBinary) -> Option<Arc<Entry>> {
        let mut shard = self.shard(key).write();
        let old = shard.remove(key)?;
        self.bytes.fetch_sub(old.size as u64, Ordering::Relaxed);
        self.objects.fetch_sub(1, Ordering::Relaxed);
        let primary = old.key.primary_bin();
        let mut index = self.variant_shard(&primary).write();
        if let Some(list) = index.get_mut(&primary) {
            list.retain(|c| c != key);
            if list.is_empty() {
                index.remove(&primary);
            }
        }
        drop(index);
        drop(shard);
        Some(old)
    }

    fn get(&self, key: &HashBinary) -> Option<Arc<Entry>> {
        self.shard(key).read().get(key).cloned()
    }
}

fn storage_error(context: &'static str, e: Box<Error>) -> Box<Error> {
    Error::because(ErrorType::InternalError, context, e)
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(entry) = self.get(&key.combined_bin()) else {
            return Ok(None);
        };
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

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let meta =
            StoredMeta::from_meta(meta).map_err(|e| storage_error("cannot store meta", e))?;
        Ok(Box::new(MemoryMiss {
            key: key.combined_bin(),
            compact: key.to_compact(),
            meta: Some(meta),
            body: BytesMut::new(),
            storage: self,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key: &CompactCacheKey = target.key();
        Ok(if self.remove(&key.combined_bin()) {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let bin = key.combined_bin();
        let Some(old) = self.get(&bin) else {
            return Ok(false);
        };
        let meta =
            StoredMeta::from_meta(meta).map_err(|e| storage_error("cannot store meta", e))?;
        let size = entry_size(&meta, old.body.len());
        self.insert(
            bin,
            Entry {
                meta,
                body: old.body.clone(),
                size,
                key: old.key.clone(),
            },
        );
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

fn entry_size(meta: &StoredMeta, body: usize) -> usize {
    meta.size() + body + ENTRY_OVERHEAD
}

/// Reads a stored body without copying; supports ranges through `seek`.
struct MemoryHit {
    body: Bytes,
    pos: usize,
    end: usize,
    done: bool,
}

#[async_trait]
impl HandleHit for MemoryHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done || self.pos >= self.end {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.pos..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        let end = end.map_or(len, |e| e.min(len));
        if start > end {
            return Error::e_explain(ErrorType::InternalError, "seek start past end");
        }
        self.pos = start;
        self.end = end;
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len() + ENTRY_OVERHEAD
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Buffers a response body; the entry appears only when `finish` is called, so a writer that
/// fails midway never leaves a truncated object behind.
struct MemoryMiss {
    key: HashBinary,
    compact: CompactCacheKey,
    meta: Option<StoredMeta>,
    body: BytesMut,
    storage: &'static MemoryStorage,
}

#[async_trait]
impl HandleMiss for MemoryMiss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.body.len() + data.len() > self.storage.max_object_size {
            return Error::e_explain(
                ErrorType::InternalError,
                "object larger than cache.max_object_size",
            );
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let Some(meta) = self.meta.take() else {
            return Error::e_explain(ErrorType::InternalError, "miss finished twice");
        };
        let body = std::mem::take(&mut self.body).freeze();
        let size = entry_size(&meta, body.len());
        let key = self.compact.clone();
        self.storage.insert(
            self.key,
            Entry {
                meta,
                body,
                size,
                key,
            },
        );
        Ok(MissFinishType::Created(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let key = CacheKey::new("big", "");
        let mut miss = s
            .get_miss_handler(&key, &meta(), &span)
            .await
            .expect("miss");
        assert!(miss
            .write_body(Bytes::from(vec![0u8; 2048]), true)
            .await
            .is_err());
        assert_eq!(s.objects(), 0);
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
        let removed = s.remove_all_variants(&primary);
        assert_eq!(removed.len(), 3);
        assert!(removed.contains(&en.to_compact()));
        assert!(removed.contains(&primary_slot.to_compact()));
        for k in [&primary_slot, &en, &fr] {
            assert!(s.lookup(k, &span).await.expect("lookup").is_none());
        }
        assert!(s.lookup(&other, &span).await.expect("lookup").is_some());
        assert_eq!(s.objects(), 1);
        assert_eq!(s.variant_count(&primary), 0);
        assert!(s.remove_all_variants(&primary).is_empty());
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
}
