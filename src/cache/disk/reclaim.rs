//! Giving disk space back: the sweep of a hard invalidation (every object whose stored headers
//! it matches is removed, by URL, prefix, host or tag), compaction, which deletes the
//! segments that are mostly dead after copying what is still live in them forward, and the
//! second chance of eviction, which copies forward the objects hit since they were written
//! before the oldest segment goes.
//!
//! - **Live bytes.** The index counts, per segment, the bytes of the records it points to. A
//!   segment (other than the one being written) under half live is compacted after removals,
//!   and after the rebuild at start: its live objects are appended again (verified chunk by
//!   chunk, as they were written), then the file is deleted, so `verge_cache_disk_bytes` falls
//!   and the budget holds more live objects.
//! - **Tombstones.** A tombstone in a compacted segment keeps older records of its key from
//!   coming back after a restart. It is written again only where that can happen: the key is
//!   not in the index and an older segment still holds a record of it (a URL tombstone, as one
//!   tombstone per such key). Everything copied is synced before the segment is deleted, so a
//!   crash never loses a tombstone that a deleted segment held.

use super::index::Location;
use super::nowait::Wait;
use super::read::{read_head, read_meta, read_table};
use super::record::{Head, Kind};
use super::writer::copy_body;
use super::{DiskStore, Job};
use crate::metrics::DISK_METRICS;
use pingora_cache::key::HashBinary;
use pingora_cache::CacheMeta;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a sweep waits for the index rebuild at start (what the rebuild finds is only swept
/// once it is in the index).
const SWEEP_WAITS_FOR_REBUILD: Duration = Duration::from_secs(60);

/// Objects a sweep removes at once: one step under the index's lock, one append of their
/// tombstones and one sync (see [`DiskStore::remove_batch`]).
pub(super) const SWEEP_BATCH: usize = 1024;

/// The most segments one append deletes with a second chance for their hit objects (more are
/// deleted oldest first, as they are).
const SECOND_CHANCES_PER_APPEND: usize = 4;

/// What copying one record forward did.
enum Moved {
    /// Copied (or no longer in the index: nothing to copy).
    Done,
    /// The record failed its checksums: dropped.
    Corrupt,
    /// It could not be written: the segment is kept.
    Failed,
}

impl DiskStore {
    /// Remove every object for which `judge(meta)` says so (a hard invalidation): reads each
    /// object's head and meta, not its body (blocking). Returns how many went.
    pub fn remove_where(&'static self, mut judge: impl FnMut(&CacheMeta) -> bool) -> usize {
        let started = Instant::now();
        while self.is_loading() && started.elapsed() < SWEEP_WAITS_FOR_REBUILD {
            std::thread::sleep(Duration::from_millis(20));
        }
        // no compaction until the sweep is done: it would copy objects the sweep then removes
        self.sweeping.fetch_add(1, Ordering::AcqRel);
        let entries: Vec<(HashBinary, Location)> = {
            let index = self.index.read();
            index.entries.iter().map(|(k, l)| (*k, *l)).collect()
        };
        let files: HashMap<u64, Arc<File>> = self.files.read().clone();
        let mut removed = 0;
        let mut batch = Vec::with_capacity(SWEEP_BATCH);
        for (key, loc) in entries {
            let Some(file) = files.get(&loc.segment) else {
                continue;
            };
            // a record that cannot be read is left to the lookup, which drops it
            let Ok(Some(meta)) = read_meta(file, &loc, &key) else {
                continue;
            };
            if !judge(&meta) {
                continue;
            }
            batch.push((key, loc));
            if batch.len() == SWEEP_BATCH {
                removed += self.remove_batch(&batch);
                batch.clear();
            }
        }
        removed += self.remove_batch(&batch);
        self.sweeping.fetch_sub(1, Ordering::AcqRel);
        self.queue_reclaim();
        removed
    }

    /// Remove the objects of a sweep's batch that are still where the sweep read them (a
    /// newer write of a key is not what the sweep judged): out of the index in one step under
    /// its lock, then their tombstones appended in one write and synced once, before this
    /// returns (a lone removal writes its tombstone before it returns too, unsynced; the
    /// sweep's are synced as well, in one `fdatasync` per batch). Returns how many went.
    pub(super) fn remove_batch(&self, batch: &[(HashBinary, Location)]) -> usize {
        if batch.is_empty() {
            return 0;
        }
        let mut tombstones = Vec::with_capacity(batch.len());
        {
            let mut index = self.index.write();
            let loading = self.is_loading();
            for (key, loc) in batch {
                if index.entries.get(key) != Some(loc) {
                    continue;
                }
                index.remove(key);
                if loading {
                    index.removed_while_loading.0.insert(*key);
                }
                let seq = self.seq();
                index.removed_keys.insert(*key, seq);
                tombstones.push((seq, *key));
            }
            DISK_METRICS.objects.set(index.entries.len() as i64);
        }
        if tombstones.is_empty() {
            return 0;
        }
        let keys: Vec<HashBinary> = tombstones.iter().map(|(_, k)| *k).collect();
        if !self.write_tombstones(Kind::Tombstone, &keys, true) {
            // (another process still owns the directory: written when this one takes over)
            for key in keys {
                let _ = self.jobs.try_send(Job::Tombstone {
                    kind: Kind::Tombstone,
                    key,
                });
            }
        }
        let removed = tombstones.len();
        // (if this cannot be queued, the removals are remembered for good: a few bytes each)
        let _ = self.jobs.try_send(Job::Forget {
            kind: Kind::Tombstone,
            removals: tombstones,
        });
        removed
    }

    /// (The writer, before appending `len` bytes.) While the append would delete the oldest
    /// segment to keep the budget, and it holds objects hit since they were written: delete it
    /// now, copying those objects forward (up to half of its bytes, the others dropped), so a
    /// one-time scan that reaches disk does not push out what is read again.
    pub(super) fn make_room_keeping_hits(&'static self, len: u64) {
        for _ in 0..SECOND_CHANCES_PER_APPEND {
            let Some((id, file, seg_len, keys)) = self
                .segments
                .lock()
                .as_ref()
                .and_then(|s| s.next_to_go(len))
            else {
                return;
            };
            let hit: Vec<(HashBinary, Location)> = {
                let index = self.index.read();
                let mut room = seg_len / 2;
                let mut taken = HashSet::new();
                let mut hit = Vec::new();
                for (key, _) in &keys {
                    let Some(loc) = index.entries.get(key).filter(|l| l.segment == id) else {
                        continue;
                    };
                    if index.hit.contains(key) && loc.record_len() <= room && taken.insert(*key) {
                        room -= loc.record_len();
                        hit.push((*key, *loc));
                    }
                }
                hit
            };
            if hit.is_empty() {
                // the append deletes it as it is
                return;
            }
            let gone = {
                let mut guard = self.segments.lock();
                let Some(segments) = guard.as_mut() else {
                    return;
                };
                let gone = segments.remove(id);
                self.note_total(segments.total());
                gone
            };
            let Some(gone) = gone else {
                return;
            };
            // copied from the file still open (readers keep reading it too)
            for (key, from) in hit {
                match self.relocate(key, from, &file) {
                    Moved::Done => {
                        let moved = self
                            .index
                            .read()
                            .entries
                            .get(&key)
                            .is_some_and(|l| l.segment != id);
                        if moved {
                            DISK_METRICS.second_chance.inc();
                        }
                    }
                    Moved::Corrupt => self.drop_corrupt(key),
                    Moved::Failed => {}
                }
            }
            let evicted = self.forget_segments(&[gone]);
            DISK_METRICS.evictions.inc_by(evicted as u64);
        }
    }

    /// Have the writer compact the segments that are mostly dead (once, however often asked
    /// before it gets to it).
    pub(super) fn queue_reclaim(&self) {
        if self.sweeping.load(Ordering::Acquire) > 0 {
            return;
        }
        if !self.reclaim_queued.swap(true, Ordering::AcqRel)
            && self.jobs.try_send(super::Job::Reclaim).is_err()
        {
            self.reclaim_queued.store(false, Ordering::Release);
        }
    }

    /// (The writer.) Compact every segment but the one being written whose live bytes are
    /// under half its length, oldest first.
    pub(super) fn reclaim(&'static self) {
        self.reclaim_queued.store(false, Ordering::Release);
        // until the rebuild is done, the index does not know what is live; a sweep queues
        // another reclaim when it is done
        if self.is_loading() || self.sweeping.load(Ordering::Acquire) > 0 {
            return;
        }
        let candidates: Vec<u64> = {
            let segments = self.segments.lock();
            let Some(segments) = segments.as_ref() else {
                return;
            };
            let writable = segments.writable_id();
            let index = self.index.read();
            segments
                .lengths()
                .into_iter()
                .filter(|&(id, len)| Some(id) != writable && index.live_bytes(id) * 2 < len)
                .map(|(id, _)| id)
                .collect()
        };
        for id in candidates {
            if !self.compact(id) {
                break;
            }
        }
    }

    /// Copy what is live in segment `id` forward, with the tombstones still needed, then delete
    /// it. `false` if that could not be done (a write failed).
    fn compact(&'static self, id: u64) -> bool {
        let Some(file) = self.files.read().get(&id).cloned() else {
            return true;
        };
        let Some(len) = self.segments.lock().as_ref().and_then(|s| {
            s.lengths()
                .into_iter()
                .find_map(|(i, len)| (i == id).then_some(len))
        }) else {
            return true;
        };
        // copying the live objects must not push older live ones out of the budget
        let live = self.index.read().live_bytes(id);
        let room = self
            .segments
            .lock()
            .as_ref()
            .is_some_and(|s| s.total() + live <= self.settings.size);
        if live > 0 && !room {
            return true;
        }
        let mut records = Vec::new();
        super::segments::scan(&file, len, |found| records.push(found));
        let mut older: Option<Vec<(HashBinary, HashBinary)>> = None;
        let mut forwarded = HashSet::new();
        for found in records {
            let key = found.head.combined;
            let ok = match found.head.kind {
                Kind::Object => match self.relocate(key, Location::of(&found, id), &file) {
                    Moved::Done => true,
                    Moved::Corrupt => {
                        self.drop_corrupt(key);
                        true
                    }
                    Moved::Failed => false,
                },
                kind => {
                    let older = older.get_or_insert_with(|| {
                        self.segments
                            .lock()
                            .as_ref()
                            .map_or_else(Vec::new, |s| s.keys_before(id))
                    });
                    let index = self.index.read();
                    let covered: Vec<HashBinary> = older
                        .iter()
                        .filter(|(c, p)| match kind {
                            Kind::UrlTombstone => *p == found.head.primary,
                            _ => *c == key,
                        })
                        .map(|(c, _)| *c)
                        .filter(|c| !index.entries.contains_key(c) && forwarded.insert(*c))
                        .collect();
                    drop(index);
                    covered
                        .into_iter()
                        .all(|c| self.write_tombstone(Kind::Tombstone, c))
                }
            };
            if !ok {
                return false;
            }
        }
        let mut guard = self.segments.lock();
        let Some(segments) = guard.as_mut() else {
            return false;
        };
        // what was copied is durable before the only other copy goes
        if let Err(e) = segments.sync() {
            log::warn!("disk cache: sync failed: {e}");
            return false;
        }
        let Some(gone) = segments.remove(id) else {
            return true;
        };
        self.note_total(segments.total());
        drop(guard);
        self.forget_segments(&[gone]);
        true
    }

    /// Append the object at `from` in `file` again, as it is, checked chunk by chunk, and point
    /// the index to the copy (unless it moved on meanwhile).
    fn relocate(&'static self, key: HashBinary, from: Location, file: &File) -> Moved {
        // a removal from now on is after this copy (see `index_written`)
        let seq = self.seq();
        if self.index.read().entries.get(&key) != Some(&from) {
            return Moved::Done;
        }
        let head: Head;
        let head_meta: Vec<u8>;
        let (crcs, table) = match read_head(file, &from, &key, Wait::Allowed) {
            Ok(Some((h, bytes))) => {
                head = h;
                head_meta = bytes;
                match read_table(file, &from, &head, Wait::Allowed) {
                    Ok(Some(t)) => t,
                    Ok(None) => return Moved::Corrupt,
                    Err(_) => return Moved::Failed,
                }
            }
            Ok(None) => return Moved::Corrupt,
            Err(_) => return Moved::Failed,
        };
        let corrupt = std::cell::Cell::new(false);
        let body_at = from.offset + head.body_offset();
        let written = self.append_with(Some((key, head.primary)), head.record_len(), |mut out| {
            out.write_all(&head_meta)?;
            copy_body(file, body_at, head.body_len, &crcs, out, &corrupt)?;
            out.write_all(&table)
        });
        match written {
            Some(at) => {
                self.index_written(seq, key, &head, at, Some(from));
                Moved::Done
            }
            None if corrupt.get() => Moved::Corrupt,
            None => Moved::Failed,
        }
    }
}
