//! The disk tier's writer thread and its index rebuild: objects, rewrites (a 304 on an object
//! only on disk) and tombstones are appended in the order they were queued, and at start the
//! segments found are scanned into the index.

use super::checkpoint::CheckpointClock;
use super::index::{Index, Location};
use super::record::{self, Head, Kind};
use super::segments::{self, Segments};
use super::{unix_ms, DiskStore, Job, RebuildReport};
use crate::cache::stored_meta::StoredMeta;
use crate::metrics::DISK_METRICS;
use bytes::Bytes;
use pingora_cache::key::HashBinary;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The head of an object record for `meta` and a body of `body_len` bytes, with the meta's
/// bytes (pingora's encoding).
pub(super) fn object_head(
    key: HashBinary,
    primary: HashBinary,
    meta: &StoredMeta,
    body_len: u64,
) -> Option<(Head, Vec<u8>)> {
    let m = meta.to_meta().ok()?;
    let (internal, header) = m.serialize().ok()?;
    let head = Head {
        kind: Kind::Object,
        combined: key,
        primary,
        variance: m.variance(),
        written_ms: unix_ms(SystemTime::now()),
        internal_len: u32::try_from(internal.len()).ok()?,
        header_len: u32::try_from(header.len()).ok()?,
        body_len,
    };
    let mut bytes = internal;
    bytes.extend_from_slice(&header);
    Some((head, bytes))
}

/// Copy a body of `len` bytes at `at` in `file` to `out`, one chunk at a time, each checked
/// against `crcs`; a mismatch sets `corrupt` and fails the copy.
pub(super) fn copy_body(
    file: &File,
    at: u64,
    len: u64,
    crcs: &[u32],
    mut out: &File,
    corrupt: &std::cell::Cell<bool>,
) -> std::io::Result<()> {
    let mut chunk = vec![0u8; record::CHUNK.min(usize::try_from(len).unwrap_or(usize::MAX))];
    for (i, crc) in crcs.iter().enumerate() {
        let start = i as u64 * record::CHUNK as u64;
        let n = (len - start).min(record::CHUNK as u64) as usize;
        file.read_exact_at(&mut chunk[..n], at + start)?;
        DISK_METRICS.read_bytes.inc_by(n as u64);
        if record::chunk_crc(&chunk[..n]) != *crc {
            corrupt.set(true);
            return Err(std::io::Error::other("chunk checksum mismatch"));
        }
        out.write_all(&chunk[..n])?;
    }
    Ok(())
}

impl DiskStore {
    pub(super) fn write_loop(&'static self, queue: Receiver<Job>) {
        let mut clock = CheckpointClock::default();
        loop {
            let job = match queue.recv_timeout(Duration::from_secs(1)) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    self.checkpoint_if_due(&mut clock);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            match job {
                Job::Object {
                    seq,
                    key,
                    primary,
                    meta,
                    body,
                } => {
                    self.write_object(seq, key, primary, &meta, &body);
                    self.queued_bytes
                        .fetch_sub(body.len() as u64, Ordering::AcqRel);
                }
                Job::Rewrite {
                    seq,
                    key,
                    meta,
                    from,
                    file,
                } => self.rewrite(seq, key, &meta, from, &file),
                Job::Tombstone { kind, key } => {
                    self.write_tombstone(kind, key);
                }
                Job::Forget { kind, removals } => {
                    let mut index = self.index.write();
                    let pending = match kind {
                        Kind::UrlTombstone => &mut index.removed_urls,
                        _ => &mut index.removed_keys,
                    };
                    for (seq, key) in removals {
                        if pending.get(&key) == Some(&seq) {
                            pending.remove(&key);
                        }
                    }
                }
                Job::Reclaim => self.reclaim(),
                Job::Checkpoint(done) => {
                    let written = self.write_checkpoint();
                    if written {
                        clock = CheckpointClock::default();
                    }
                    let _ = done.try_send(written);
                }
                Job::Flush(done) => {
                    let synced = self.segments.lock().as_ref().map(Segments::sync);
                    if let Some(Err(e)) = synced {
                        log::warn!("disk cache: sync failed: {e}");
                    }
                    let _ = done.try_send(());
                }
            }
            self.checkpoint_if_due(&mut clock);
        }
    }

    pub(super) fn superseded(
        index: &Index,
        seq: u64,
        key: &HashBinary,
        primary: &HashBinary,
    ) -> bool {
        index.removed_keys.get(key).is_some_and(|&r| r > seq)
            || index.removed_urls.get(primary).is_some_and(|&r| r > seq)
    }

    fn write_object(
        &'static self,
        seq: u64,
        key: HashBinary,
        primary: HashBinary,
        meta: &StoredMeta,
        body: &Bytes,
    ) {
        if Self::superseded(&self.index.read(), seq, &key, &primary) {
            return;
        }
        let Some((head, meta_bytes)) = object_head(key, primary, meta, body.len() as u64) else {
            DISK_METRICS.writes_dropped.inc();
            return;
        };
        let table = record::table(body);
        let len = head.record_len();
        self.make_room_keeping_hits(len);
        let trailer = record::trailer(&table, len);
        let head_bytes = head.encode(&meta_bytes);
        let parts: [&[u8]; 5] = [&head_bytes, &meta_bytes, body, &table, &trailer];
        let written = self.append_with(Some((key, primary)), len, |mut out| {
            parts.iter().try_for_each(|p| out.write_all(p))
        });
        let Some(at) = written else {
            DISK_METRICS.writes_dropped.inc();
            return;
        };
        self.index_written(seq, key, &head, at, None);
    }

    /// Take a record just written at `at` into the index, unless its key was removed after it
    /// was queued (or, with `only_over`, the index moved on from that location meanwhile).
    pub(super) fn index_written(
        &self,
        seq: u64,
        key: HashBinary,
        head: &Head,
        at: (u64, u64),
        only_over: Option<Location>,
    ) {
        let mut index = self.index.write();
        // removed while it was being written, perhaps with its tombstone before this record:
        // another tombstone after it keeps it out after a restart
        if Self::superseded(&index, seq, &key, &head.primary) {
            drop(index);
            self.write_tombstone(Kind::Tombstone, key);
            return;
        }
        if only_over.is_some_and(|from| index.entries.get(&key) != Some(&from)) {
            return;
        }
        index.insert(
            key,
            Location {
                segment: at.0,
                offset: at.1,
                internal_len: head.internal_len,
                header_len: head.header_len,
                body_len: head.body_len,
                primary: head.primary,
            },
        );
        DISK_METRICS.objects.set(index.entries.len() as i64);
    }

    /// After a 304 for an object only on disk: append it again with `meta`, its body copied
    /// from `file` one verified chunk at a time.
    pub(super) fn rewrite(
        &'static self,
        seq: u64,
        key: HashBinary,
        meta: &StoredMeta,
        from: Location,
        file: &File,
    ) {
        if Self::superseded(&self.index.read(), seq, &key, &from.primary) {
            return;
        }
        let Some((head, meta_bytes)) = object_head(key, from.primary, meta, from.body_len) else {
            DISK_METRICS.writes_dropped.inc();
            return;
        };
        // the old record's checksum table, checked against its trailer, is the new one's too
        let old = Head {
            internal_len: from.internal_len,
            header_len: from.header_len,
            ..head.clone()
        };
        let mut old_table = vec![0u8; old.table_len() + record::TRAILER_LEN];
        let read = file.read_exact_at(&mut old_table, from.offset + old.table_offset());
        let crcs = match read.map(|()| record::verify_table(&old, &old_table)) {
            Ok(Ok(crcs)) => crcs,
            Ok(Err(_)) => return self.drop_corrupt(key),
            Err(_) => return DISK_METRICS.writes_dropped.inc(),
        };
        let table = &old_table[..old.table_len()];
        let len = head.record_len();
        self.make_room_keeping_hits(len);
        let trailer = record::trailer(table, len);
        let head_bytes = head.encode(&meta_bytes);
        let body_at = from.offset + old.body_offset();
        let corrupt = std::cell::Cell::new(false);
        let written = self.append_with(Some((key, from.primary)), len, |mut out| {
            out.write_all(&head_bytes)?;
            out.write_all(&meta_bytes)?;
            copy_body(file, body_at, from.body_len, &crcs, out, &corrupt)?;
            out.write_all(table)?;
            out.write_all(&trailer)
        });
        match written {
            // (the index moving on meanwhile would take a newer write of the key, which the
            // queue's order puts after this one)
            Some(at) => self.index_written(seq, key, &head, at, Some(from)),
            None if corrupt.get() => self.drop_corrupt(key),
            None => DISK_METRICS.writes_dropped.inc(),
        }
    }

    /// Append a tombstone; `false` if it could not be written.
    pub(super) fn write_tombstone(&self, kind: Kind, key: HashBinary) -> bool {
        self.write_tombstones(kind, &[key], false)
    }

    /// Append the tombstones of `keys` in one write (one record each, back to back), and with
    /// `sync` make them durable before returning (one `fdatasync`, outside the segments' lock);
    /// `false` if they could not be written.
    pub(super) fn write_tombstones(&self, kind: Kind, keys: &[HashBinary], sync: bool) -> bool {
        let written_ms = unix_ms(SystemTime::now());
        let mut bytes = Vec::new();
        for key in keys {
            let head = Head {
                kind,
                combined: *key,
                primary: *key,
                variance: None,
                written_ms,
                internal_len: 0,
                header_len: 0,
                body_len: 0,
            };
            let len = head.record_len();
            bytes.extend_from_slice(&head.encode(&[]));
            bytes.extend_from_slice(&record::trailer(&[], len));
        }
        self.tombstone_appends.fetch_add(1, Ordering::Relaxed);
        let Some((segment, _)) =
            self.append_with(None, bytes.len() as u64, |mut out| out.write_all(&bytes))
        else {
            return false;
        };
        if !sync {
            return true;
        }
        let file = self.files.read().get(&segment).cloned();
        match file.map(|f| f.sync_data()) {
            Some(Err(e)) => {
                log::warn!("disk cache: sync failed: {e}");
                false
            }
            _ => true,
        }
    }

    /// Append a record of `len` bytes that `write` writes (an object's when `object` says its
    /// keys); apply the segments it deleted to the index. Returns (segment, offset).
    pub(super) fn append_with(
        &self,
        object: Option<(HashBinary, HashBinary)>,
        len: u64,
        write: impl FnOnce(&File) -> std::io::Result<()>,
    ) -> Option<(u64, u64)> {
        let appended = {
            let mut guard = self.segments.lock();
            let segments = guard.as_mut()?;
            let appended = segments.append_with(object, len, write);
            self.note_total(segments.total());
            appended
        };
        let appended = match appended {
            Ok(a) => a,
            Err(e) => {
                log::warn!("disk cache: write failed: {e}");
                return None;
            }
        };
        DISK_METRICS.write_bytes.inc_by(len);
        self.changed_since_checkpoint
            .fetch_add(len, Ordering::AcqRel);
        if let Some((id, file)) = &appended.created {
            self.files.write().insert(*id, file.clone());
        }
        let evicted = self.forget_segments(&appended.dropped);
        DISK_METRICS.evictions.inc_by(evicted as u64);
        Some((appended.segment, appended.offset))
    }

    /// Segments were deleted: drop their files and what the index still had in them. Returns
    /// how many objects went with them.
    pub(super) fn forget_segments(&self, dropped: &[segments::Segment]) -> usize {
        if dropped.is_empty() {
            return 0;
        }
        {
            let mut files = self.files.write();
            for seg in dropped {
                files.remove(&seg.id);
            }
        }
        let mut index = self.index.write();
        let gone: usize = dropped
            .iter()
            .map(|seg| index.drop_segment(seg.id, &seg.keys))
            .sum();
        DISK_METRICS.objects.set(index.entries.len() as i64);
        gone
    }

    /// Rebuild the index from the segments found at start, oldest first: from the checkpoint
    /// and a scan of what was written after it, or, without a usable checkpoint, from a scan of
    /// every segment; then take what they hold into the index (what was written or removed
    /// since start wins).
    pub(super) fn rebuild(&'static self, found: Vec<(u64, Arc<File>, u64)>) {
        let started = Instant::now();
        let total: u64 = found.iter().map(|(_, _, len)| len).sum::<u64>().max(1);
        let mut done = 0u64;
        let mut rebuilt = Index::default();
        let mut keys_by_segment: Vec<(u64, Vec<(HashBinary, HashBinary)>)> = Vec::new();
        // where the scan of each segment starts: after what the checkpoint covers
        let mut scan_from: HashMap<u64, u64> = HashMap::new();
        let mut report = RebuildReport::default();
        match Self::read_checkpoint(&self.settings.path, &found) {
            Ok(Some(checkpoint)) => {
                let on_disk: HashSet<u64> = found.iter().map(|(id, _, _)| *id).collect();
                for seg in checkpoint.segments {
                    if on_disk.contains(&seg.id) {
                        scan_from.insert(seg.id, seg.len);
                        done += seg.len;
                        keys_by_segment.push((seg.id, seg.keys));
                    }
                }
                for (key, loc) in checkpoint.entries {
                    let within = scan_from
                        .get(&loc.segment)
                        .is_some_and(|&len| loc.offset + loc.record_len() <= len);
                    if within {
                        rebuilt.insert(key, loc);
                    }
                }
                report.from_checkpoint = rebuilt.entries.len();
            }
            Ok(None) => {}
            Err(e) => {
                DISK_METRICS.checkpoint_rejected.inc();
                report.checkpoint_rejected = true;
                log::warn!("disk cache: index checkpoint not used ({e}); scanning every segment");
            }
        }
        DISK_METRICS
            .rebuild_progress
            .set(done as f64 / total as f64);
        for (id, file, len) in &found {
            let start = scan_from.get(id).copied().unwrap_or(0);
            if start >= *len {
                continue;
            }
            let mut keys = Vec::new();
            segments::scan_from(file, start, *len, |f| match f.head.kind {
                Kind::Object => {
                    keys.push((f.head.combined, f.head.primary));
                    rebuilt.insert(f.head.combined, Location::of(&f, *id));
                }
                Kind::Tombstone => {
                    rebuilt.remove(&f.head.combined);
                }
                Kind::UrlTombstone => {
                    rebuilt.remove_url(&f.head.primary);
                }
            });
            DISK_METRICS.read_bytes.inc_by(len - start);
            keys_by_segment.push((*id, keys));
            report.scanned_bytes += len - start;
            done += len - start;
            DISK_METRICS
                .rebuild_progress
                .set(done as f64 / total as f64);
        }
        let mut segments = self.segments.lock();
        let Some(segments) = segments.as_mut() else {
            return;
        };
        let all_there = keys_by_segment.iter().all(|(id, _)| segments.contains(*id));
        let live: std::collections::HashSet<u64> = keys_by_segment
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| segments.contains(*id))
            .collect();
        for (id, keys) in keys_by_segment {
            segments.note_keys(id, keys);
        }
        let mut index = self.index.write();
        let (gone_keys, gone_urls) = std::mem::take(&mut index.removed_while_loading);
        if index.entries.is_empty() && gone_keys.is_empty() && gone_urls.is_empty() && all_there {
            // nothing happened meanwhile: the rebuilt index is the index
            index.entries = rebuilt.entries;
            index.variants = rebuilt.variants;
            index.live = rebuilt.live;
        } else {
            for (key, loc) in rebuilt.entries {
                let keep = live.contains(&loc.segment)
                    && !index.entries.contains_key(&key)
                    && !gone_keys.contains(&key)
                    && !gone_urls.contains(&loc.primary);
                if keep {
                    index.insert(key, loc);
                }
            }
        }
        report.objects = index.entries.len();
        report.elapsed = started.elapsed();
        log::info!(
            "disk cache: index rebuilt, {} objects ({} from the checkpoint, {} bytes scanned) \
             in {} ms",
            report.objects,
            report.from_checkpoint,
            report.scanned_bytes,
            report.elapsed.as_millis()
        );
        DISK_METRICS
            .rebuild_seconds
            .set(report.elapsed.as_secs_f64());
        *self.rebuild_report.lock() = Some(report);
        self.loading.store(false, Ordering::Release);
        // what the last process left dead (or what was removed meanwhile) can go now
        self.queue_reclaim();
        DISK_METRICS.objects.set(index.entries.len() as i64);
        DISK_METRICS.rebuild_progress.set(1.0);
    }
}
