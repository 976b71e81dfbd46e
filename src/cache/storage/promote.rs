//! How the memory storage takes in a disk hit read whole (a promotion from the disk tier):
//! through the eviction manager's admission like a fetched object, never over an entry or a
//! fetch of the key, never after a purge, and never written back to disk. An object the
//! admission turns away is handed back, to be served once by the request that read it.

use super::{entry_size, Entry, MemoryStorage};
use crate::cache::disk::{Promote, Promoted};
use crate::cache::stored_meta::StoredMeta;
use bytes::Bytes;
use pingora_cache::eviction::CacheEntryKey;
use pingora_cache::key::{CacheHashKey, CompactCacheKey};
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
    ) -> Promoted {
        let combined = key.combined_bin();
        let size = entry_size(&meta, body.len());
        let entry = Entry::from_disk(&key, meta, body);
        // nothing newer in memory, and the disk tier still holds what was read
        let current = |maps: &super::ShardMaps| {
            !(maps.entries.contains_key(&combined) || maps.fills.contains_key(&combined))
                && still_on_disk()
        };
        let mut entry = Some(entry);
        // the victims go first (they may share the entry's shard), as on a fill's commit
        let mut store = |victims: &[CacheEntryKey]| {
            if !self.drop_victims(victims, &combined) {
                return false;
            }
            let mut maps = self.shard(&combined).write();
            if !current(&maps) {
                return false;
            }
            let Some(entry) = entry.take() else {
                return false;
            };
            self.insert_locked(&mut maps, entry);
            true
        };
        let held = match self.eviction {
            Some(eviction) => eviction.admit_new_with(
                CacheEntryKey::key_only(super::key_of(combined)),
                size,
                &mut store,
            ),
            None => store(&[]),
        };
        match entry {
            _ if held => Promoted::Held,
            Some(entry) if current(&self.shard(&combined).read()) => {
                Promoted::NotAdmitted(entry.meta, entry.body)
            }
            _ => Promoted::Superseded,
        }
    }
}
