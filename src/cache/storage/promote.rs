//! How the memory storage takes in a disk hit read whole (a promotion from the disk tier):
//! through the eviction manager's admission like a fetched object, never over an entry or a
//! fetch of the key, never after a purge, and never written back to disk.

use super::{entry_size, Entry, MemoryStorage};
use crate::cache::disk::Promote;
use crate::cache::stored_meta::StoredMeta;
use bytes::Bytes;
use pingora_cache::eviction::CacheEntryKey;
use pingora_cache::key::{CacheHashKey, CompactCacheKey};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

impl Promote for MemoryStorage {
    fn promote_limit(&self) -> usize {
        self.max_object_size
    }

    /// Admitted like a fetched object (the eviction manager may refuse it), never written back
    /// to disk, and never over an entry or a fill of the key.
    fn promote(
        &self,
        key: CompactCacheKey,
        meta: Arc<StoredMeta>,
        body: Bytes,
        still_on_disk: &dyn Fn() -> bool,
    ) -> bool {
        let combined = key.combined_bin();
        let size = entry_size(&meta, body.len());
        let entry = Entry {
            meta,
            body,
            size,
            combined,
            primary: key.primary_bin(),
            uses: AtomicU32::new(super::WRITTEN),
        };
        let store = |entry: Entry| {
            let mut maps = self.shard(&combined).write();
            let taken = maps.entries.contains_key(&combined) || maps.fills.contains_key(&combined);
            if taken || !still_on_disk() {
                return false;
            }
            self.insert_locked(&mut maps, combined, entry);
            true
        };
        let Some(eviction) = self.eviction else {
            return store(entry);
        };
        eviction.admit_new_with(
            CacheEntryKey::key_only(super::key_of(combined)),
            size,
            |victims| self.drop_victims(victims, &combined) && store(entry),
        )
    }
}
