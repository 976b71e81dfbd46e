//! How a finished fill becomes a stored entry: the disk tier's admission (written at once
//! while the disk has room, else at `min_uses` counting earlier stays in memory), the eviction
//! manager's admission with its victims dropped first, and the swap of fill for entry in one
//! step under the shard's lock, with the uses that raced it counted.

use super::{entry_size, key_of, Entry, MemoryStorage, ShardMaps, WRITTEN};
use crate::cache::fill::Fill;
use bytes::Bytes;
use pingora_cache::eviction::CacheEntryKey;
use pingora_cache::key::{CacheHashKey, CacheKey, HashBinary};
use pingora_cache::storage::MissFinishType;
use pingora_cache::NoCacheReason;
use std::sync::atomic::{AtomicU32, Ordering};

impl MemoryStorage {
    /// The eviction manager let `entry` go: if it was not written to the disk tier, the tier
    /// remembers its requests, so they count toward `min_uses` at its next fetch.
    fn remember_unwritten_uses(&self, entry: &Entry) {
        if let Some(disk) = self.disk {
            let uses = entry.uses.load(Ordering::Acquire);
            if uses != WRITTEN {
                disk.remember_uses(&entry.combined, uses);
            }
        }
    }

    /// Drop what the eviction manager let go, except `own` (the key being written or updated);
    /// returns whether `own` may stay.
    pub(super) fn drop_victims(&self, victims: &[CacheEntryKey], own: &HashBinary) -> bool {
        let mut keep = true;
        for victim in victims {
            let key = victim.key().combined_bin();
            if key == *own {
                keep = false;
            } else if let Some(gone) = self.remove_entry(&key) {
                self.remember_unwritten_uses(&gone);
            }
        }
        keep
    }

    /// Take `fill` out of the in-flight map and, in the same step (so a lookup finds one or
    /// the other), store `entry` in its place (`Some`), or remove whatever is stored there
    /// (`None`: the eviction manager let the key go). A fill purged meanwhile stores nothing:
    /// a purge marks fills before it takes this lock to remove the entry, so either this sees
    /// the mark or the purge removes what this stored. (The eviction manager may then track the
    /// key until it is evicted: more tracked than stored, never the other way round.)
    fn settle(&self, fill: &Fill, entry: Option<Entry>, counted: u32) {
        let mut maps = self.shard(&fill.key).write();
        remove_fill(&mut maps, fill);
        match entry {
            Some(entry) if !fill.is_revoked() => {
                self.count_late_uses(fill, &entry, counted);
                self.insert_locked(&mut maps, entry);
                drop(maps);
                self.pending.progressed(&fill.key);
            }
            Some(_) => {}
            None => {
                self.remove_locked(&mut maps, &fill.key);
            }
        }
    }

    /// Under the shard's write lock, as `fill` becomes `entry`: requests that found the fill
    /// after `commit` read its uses (`counted`; the fill is findable until now) are uses of the
    /// entry too, and may bring it to the disk tier's `min_uses` (without this, a second
    /// request racing the first one's commit was lost, and the object never went to disk).
    fn count_late_uses(&self, fill: &Fill, entry: &Entry, counted: u32) {
        let Some(disk) = self.disk else {
            return;
        };
        let before = entry.uses.load(Ordering::Acquire);
        let late = fill.uses.load(Ordering::Acquire).saturating_sub(counted);
        if before == WRITTEN || late == 0 {
            return;
        }
        let now = before.saturating_add(late).min(WRITTEN - 1);
        if now >= disk.min_uses() {
            entry.uses.store(WRITTEN, Ordering::Release);
            disk.write(
                fill.key,
                fill.primary,
                fill.meta.clone(),
                entry.body.clone(),
            );
        } else {
            entry.uses.store(now, Ordering::Release);
        }
    }

    /// Take `fill` out of the in-flight map, storing nothing.
    pub(super) fn forget(&self, fill: &Fill) {
        remove_fill(&mut self.shard(&fill.key).write(), fill);
    }

    /// Store a finished fill's body, admitted by the eviction manager (see the module doc).
    pub(super) fn commit(&self, fill: &Fill, body: Bytes) -> MissFinishType {
        // the fetch and the requests that read its fill
        let counted = fill.uses.load(Ordering::Acquire);
        let mut uses = counted;
        if let Some(disk) = self.disk {
            // and those of its earlier stays in memory, once the disk is full
            if uses < disk.min_uses() {
                uses = uses
                    .saturating_add(disk.earlier_uses(&fill.key))
                    .min(WRITTEN - 1);
            }
            // a refetch of an object on disk replaces it there; while the disk has free room,
            // every stored object goes there at once (see `DiskStore::has_room`)
            if uses >= disk.min_uses() || disk.holds(&fill.key) || disk.has_room(body.len() as u64)
            {
                uses = WRITTEN;
                disk.write(fill.key, fill.primary, fill.meta.clone(), body.clone());
                // purged meanwhile: either seen here, or its removal comes after the write
                if fill.is_revoked() {
                    disk.remove(&fill.key);
                }
            }
        }
        let size = entry_size(&fill.meta, body.len());
        let entry = Entry {
            meta: fill.meta.clone(),
            body,
            combined: fill.key,
            primary: fill.primary,
            uses: AtomicU32::new(uses),
        };
        let Some(eviction) = self.eviction else {
            self.settle(fill, Some(entry), counted);
            return MissFinishType::Created(size);
        };
        eviction.admit_with(CacheEntryKey::key_only(key_of(fill.key)), size, |victims| {
            let keep = self.drop_victims(victims, &fill.key);
            if !keep {
                self.remember_unwritten_uses(&entry);
            }
            self.settle(fill, keep.then_some(entry), counted);
        });
        // already admitted: pingora's `increment_weight(key, 0, Some(0))` changes nothing
        MissFinishType::Appended(0, Some(0))
    }

    /// A fill outgrew `max_object_size`: remember the URL as too large, as pingora does when
    /// its own size check trips, so the next requests bypass the cache (and the lock).
    pub(super) fn mark_too_large(&self, primary: HashBinary) {
        if let Some(predictor) = self.predictor {
            let mut key = CacheKey::new(Vec::<u8>::new(), "");
            key.set_primary_bin_override(primary);
            predictor.mark_uncacheable(&key, NoCacheReason::ResponseTooLarge);
        }
    }
}

fn remove_fill(maps: &mut ShardMaps, fill: &Fill) {
    if let Some(list) = maps.fills.get_mut(&fill.key) {
        list.retain(|f| f.id != fill.id);
        if list.is_empty() {
            maps.fills.remove(&fill.key);
        }
    }
}
