//! The disk tier's index: where each object's record is ([`Location`]), the keys listed under
//! their URL, the live bytes per segment, the keys hit since they were written, and the removals
//! the writer must respect.

use super::record::{self, HEAD_LEN, TRAILER_LEN};
use super::segments::Found;
use pingora_cache::key::HashBinary;
use std::collections::{HashMap, HashSet};

/// Where one object's record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    pub(super) segment: u64,
    pub(super) offset: u64,
    pub(super) internal_len: u32,
    pub(super) header_len: u32,
    pub(super) body_len: u64,
    pub(super) primary: HashBinary,
}

impl Location {
    /// The whole record's length on disk.
    pub(super) fn record_len(&self) -> u64 {
        let meta = u64::from(self.internal_len) + u64::from(self.header_len);
        let table = record::chunk_count(self.body_len) as u64 * 4;
        HEAD_LEN as u64 + meta + self.body_len + table + TRAILER_LEN as u64
    }

    pub(super) fn of(found: &Found, segment: u64) -> Location {
        Location {
            segment,
            offset: found.offset,
            internal_len: found.head.internal_len,
            header_len: found.head.header_len,
            body_len: found.head.body_len,
            primary: found.head.primary,
        }
    }
}

/// The index: key → location, URL → its keys, and the removals the writer must respect.
#[derive(Default)]
pub(super) struct Index {
    pub(super) entries: HashMap<HashBinary, Location>,
    pub(super) variants: HashMap<HashBinary, Vec<HashBinary>>,
    /// Sequence number of the latest removal of a key (or of a whole URL) whose tombstone is
    /// not written yet: an object queued before it is not written.
    pub(super) removed_keys: HashMap<HashBinary, u64>,
    pub(super) removed_urls: HashMap<HashBinary, u64>,
    /// Keys and URLs removed while the rebuild runs: what it found of them is not taken.
    pub(super) removed_while_loading: (HashSet<HashBinary>, HashSet<HashBinary>),
    /// Bytes of the records in the index, per segment (the rest of a segment is dead:
    /// removed, rewritten since, or tombstones).
    pub(super) live: HashMap<u64, u64>,
    /// Keys hit on disk since their record was written: copied forward rather than evicted
    /// when their segment is the oldest and has to go (see `reclaim`).
    pub(super) hit: HashSet<HashBinary>,
}

impl Index {
    /// A key without variance is its URL's own (pingora's combined key is then the primary
    /// key): only keys with variance are listed under their URL.
    pub(super) fn insert(&mut self, key: HashBinary, loc: Location) {
        *self.live.entry(loc.segment).or_default() += loc.record_len();
        self.hit.remove(&key);
        if let Some(old) = self.entries.insert(key, loc) {
            self.unaccount(&old);
            if old.primary == loc.primary {
                return;
            }
            self.unlink(&key, &old.primary);
        }
        if key != loc.primary {
            let list = self.variants.entry(loc.primary).or_default();
            if !list.contains(&key) {
                list.push(key);
            }
        }
    }

    fn unlink(&mut self, key: &HashBinary, primary: &HashBinary) {
        if key == primary {
            return;
        }
        if let Some(list) = self.variants.get_mut(primary) {
            list.retain(|k| k != key);
            if list.is_empty() {
                self.variants.remove(primary);
            }
        }
    }

    /// A record left the index: its bytes are no longer live.
    fn unaccount(&mut self, old: &Location) {
        if let Some(live) = self.live.get_mut(&old.segment) {
            *live = live.saturating_sub(old.record_len());
        }
    }

    pub(super) fn remove(&mut self, key: &HashBinary) -> Option<Location> {
        self.hit.remove(key);
        let old = self.entries.remove(key)?;
        self.unaccount(&old);
        self.unlink(key, &old.primary);
        Some(old)
    }

    /// Live bytes of segment `id` (see [`Index::live`]).
    pub(super) fn live_bytes(&self, id: u64) -> u64 {
        self.live.get(&id).copied().unwrap_or(0)
    }

    pub(super) fn remove_url(&mut self, primary: &HashBinary) -> usize {
        let keys = self.variants.remove(primary).unwrap_or_default();
        let own = self
            .entries
            .get(primary)
            .is_some_and(|loc| loc.primary == *primary)
            .then_some(*primary);
        let mut removed = 0;
        for k in keys.iter().chain(own.iter()) {
            self.hit.remove(k);
            if let Some(old) = self.entries.remove(k) {
                self.unaccount(&old);
                removed += 1;
            }
        }
        removed
    }

    /// Remove the keys of a deleted segment that still point into it.
    pub(super) fn drop_segment(
        &mut self,
        segment: u64,
        keys: &[(HashBinary, HashBinary)],
    ) -> usize {
        let mut removed = 0;
        for (k, _) in keys {
            if self
                .entries
                .get(k)
                .is_some_and(|loc| loc.segment == segment)
            {
                self.remove(k);
                removed += 1;
            }
        }
        self.live.remove(&segment);
        removed
    }
}
