//! The disk tier's admission: an object is written at its first store while the tier has free
//! room, and at its `min_uses`-th request once it is full, its earlier requests remembered
//! across memory evictions by a small frequency sketch ([`UseSketch`]).
//!
//! Why a sketch: the memory tier counts an entry's requests while it holds the entry, but once
//! the disk is full, the tail of a Zipf workload is asked for at intervals longer than memory
//! keeps it, so its count started again at every fetch and never reached `min_uses`: the
//! tier kept the head of the distribution and refused the warm tail. The sketch remembers, per
//! key hash, how many requests an object had before memory let it go (and how often a large
//! object, which memory never holds, was fetched), in fixed memory, forgetting slowly: every
//! count is halved after a fixed number of additions, so a count of one lives for at least
//! that many additions (the window, one per 16 KiB of the disk budget).

use super::DiskStore;
use pingora_cache::key::HashBinary;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Counters per addition in the window: with four counters per key, a key never seen reads as
/// seen about 2% of the time (`(1 - e^(-4/8))^4`).
const COUNTERS_PER_WINDOW_KEY: usize = 8;
/// Bounds of the window (additions between two halvings).
const MIN_WINDOW: u64 = 1 << 12;
const MAX_WINDOW: u64 = 1 << 21;

/// Approximate request counts per key hash (a count-min sketch with conservative updates and
/// periodic halving, as TinyLFU keeps): never below a key's true count within the window,
/// sometimes above it for a key that shares its counters with others.
pub struct UseSketch {
    counters: Box<[AtomicU8]>,
    mask: usize,
    added: AtomicU64,
    window: u64,
}

impl UseSketch {
    /// A sketch remembering about `window` additions (rounded to a power of two, within
    /// bounds).
    pub fn new(window: u64) -> UseSketch {
        let window = window.clamp(MIN_WINDOW, MAX_WINDOW).next_power_of_two();
        let len = usize::try_from(window).unwrap_or(1 << 21) * COUNTERS_PER_WINDOW_KEY;
        UseSketch {
            counters: (0..len).map(|_| AtomicU8::new(0)).collect(),
            mask: len - 1,
            added: AtomicU64::new(0),
            window,
        }
    }

    /// The sketch for a tier of `size` bytes: one addition per 16 KiB of budget.
    pub fn for_budget(size: u64) -> UseSketch {
        UseSketch::new(size / (16 << 10))
    }

    /// The key's four counters: the key is a BLAKE2 digest, so its bytes are uniform already.
    fn slots(&self, key: &HashBinary) -> [usize; 4] {
        let word = |i: usize| {
            let b = [key[i], key[i + 1], key[i + 2], key[i + 3]];
            u32::from_le_bytes(b) as usize & self.mask
        };
        [word(0), word(4), word(8), word(12)]
    }

    /// How many requests `key` had (recently), as far as the sketch knows.
    pub fn estimate(&self, key: &HashBinary) -> u32 {
        self.slots(key)
            .iter()
            .map(|&i| u32::from(self.counters[i].load(Ordering::Relaxed)))
            .min()
            .unwrap_or(0)
    }

    /// Count `n` more requests of `key`; returns its new estimate.
    pub fn add(&self, key: &HashBinary, n: u32) -> u32 {
        let now = self.estimate(key).saturating_add(n);
        self.raise(key, now);
        now
    }

    /// `key` has had at least `uses` requests (a count that already includes what the sketch
    /// knew of it): raise its counters to that (conservative update: a counter already
    /// higher, shared with another key, stays).
    pub fn raise(&self, key: &HashBinary, uses: u32) {
        let value = u8::try_from(uses).unwrap_or(u8::MAX);
        for i in self.slots(key) {
            self.counters[i].fetch_max(value, Ordering::Relaxed);
        }
        if (self.added.fetch_add(1, Ordering::Relaxed) + 1) % self.window == 0 {
            self.halve();
        }
    }

    /// Age every count (a count of one is forgotten).
    fn halve(&self) {
        for c in self.counters.iter() {
            let v = c.load(Ordering::Relaxed);
            if v != 0 {
                c.store(v / 2, Ordering::Relaxed);
            }
        }
    }
}

impl DiskStore {
    /// Requests an object must have had before it is written (`cache.disk.min_uses`).
    pub fn min_uses(&self) -> u32 {
        self.settings.min_uses
    }

    /// Memory let go of the object under `key` without writing it here (it had not reached
    /// `min_uses`), after `uses` requests, those of its earlier stays included (see
    /// [`DiskStore::earlier_uses`]): remembered, so its next fetch counts on from them.
    pub fn remember_uses(&self, key: &HashBinary, uses: u32) {
        if uses > 0 && self.settings.min_uses > 1 {
            self.uses.raise(key, uses);
        }
    }

    /// Requests the object under `key` had in earlier stays in memory (see
    /// [`DiskStore::remember_uses`]), as far as the tier remembers.
    pub fn earlier_uses(&self, key: &HashBinary) -> u32 {
        if self.settings.min_uses > 1 {
            self.uses.estimate(key)
        } else {
            0
        }
    }

    /// Count one more fetch of the large object `key` (of `expected` bytes, when known):
    /// whether it has had `min_uses` now, or the tier has room for it (see
    /// [`DiskStore::has_room`]).
    pub(super) fn admit_large(&self, key: &HashBinary, expected: Option<u64>) -> bool {
        if self.settings.min_uses <= 1 || self.has_room(expected.unwrap_or(0)) {
            return true;
        }
        self.uses.add(key, 1) >= self.settings.min_uses
    }

    /// Bytes in the segment files now (`total`, from the segments under their lock): kept for
    /// [`DiskStore::has_room`] and in `verge_cache_disk_bytes`.
    pub(super) fn note_total(&self, total: u64) {
        self.used.store(total, Ordering::Release);
        let size = self.settings.size;
        if total.saturating_add(self.settings.segment_size) > size {
            self.filled.store(true, Ordering::Release);
        } else if total <= size / 2 {
            self.filled.store(false, Ordering::Release);
        }
        crate::metrics::DISK_METRICS
            .bytes
            .set(i64::try_from(total).unwrap_or(i64::MAX));
    }

    /// Whether an object of `len` bytes is written at its first store rather than at its
    /// `min_uses`-th request: while the tier has free room (it has not come within a segment
    /// of its budget since it was last under half of it, and `len` fits with what is written
    /// and queued), a write evicts nothing, so admitting a one-time object costs a write and
    /// no warm object; once full, every write evicts the oldest segment, and `min_uses` keeps
    /// one-time requests from doing so (see the module doc).
    pub fn has_room(&self, len: u64) -> bool {
        !self.filled.load(Ordering::Acquire)
            && self.used.load(Ordering::Acquire) + self.queued_bytes.load(Ordering::Acquire) + len
                <= self.settings.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> HashBinary {
        // spread like a digest
        let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        let mut out = [0u8; 16];
        for chunk in out.chunks_mut(8) {
            x ^= x >> 29;
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x ^= x >> 32;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        out
    }

    #[test]
    fn counts_are_never_below_the_truth_within_the_window() {
        let sketch = UseSketch::new(1 << 12);
        for n in 0..1_000u64 {
            sketch.add(&key(n), 1 + (n % 3) as u32);
        }
        for n in 0..1_000u64 {
            assert!(sketch.estimate(&key(n)) > (n % 3) as u32, "key {n}");
        }
    }

    #[test]
    fn keys_never_added_rarely_read_as_seen() {
        let sketch = UseSketch::new(1 << 12);
        for n in 0..4_000u64 {
            sketch.add(&key(n), 1);
        }
        let seen = (1_000_000..1_010_000u64)
            .filter(|&n| sketch.estimate(&key(n)) > 0)
            .count();
        // about 2% at a full window; 5% leaves room for the hash
        assert!(seen < 500, "{seen} of 10,000 unseen keys read as seen");
    }

    #[test]
    fn counts_age_out_after_windows_of_other_additions() {
        let sketch = UseSketch::new(1 << 12);
        sketch.add(&key(7), 4);
        for n in 100..(100 + 3 * 4_096u64) {
            sketch.add(&key(n), 1);
        }
        // halved three times: 4 → 2 → 1 → 0 (collisions can only add)
        assert!(sketch.estimate(&key(7)) <= 1);
        for n in 200_000..(200_000 + 4_096u64) {
            sketch.add(&key(n), 1);
        }
        assert_eq!(sketch.estimate(&key(7)), 0);
    }
}
