//! Scan-resistant eviction for the in-memory cache: a byte budget split over shards, each run as
//! S3-FIFO (small FIFO, main FIFO with frequency bits, ghost queue) behind TinyLFU admission (a
//! 4-bit count-min sketch that is halved periodically), implementing pingora's `EvictionManager`.
//!
//! How it is driven: left to itself, pingora's `HttpCache::finish_miss_handler` stores the
//! object, then calls [`EvictionManager::admit`] with the size the storage reported and
//! `tokio::spawn`s a `Storage::purge(PurgeTarget::Exact, PurgeType::Eviction)` for every key
//! returned (a rejected newcomer is returned as its own "victim"), so the stored bytes run over
//! the budget until those purges land. `MemoryStorage` therefore admits each object itself,
//! through [`S3FifoEviction::admit_with`], and drops the victims before it stores the newcomer,
//! all under the shard's lock; it then reports `MissFinishType::Appended(0, Some(0))`, which
//! pingora turns into an `increment_weight` that changes nothing. A 304 that changes an entry's
//! size goes through [`S3FifoEviction::resize_with`]. Hits call [`EvictionManager::access`];
//! invalidations that removed an entry call [`EvictionManager::remove`].

use crate::cache::KeyMap;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_cache::eviction::{CacheEntryId, CacheEntryKey, CacheEntryKeyRef, EvictionManager};
use pingora_cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora_error::Result;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

/// Most shards a budget is split into.
const MAX_SHARDS: usize = 16;
/// A shard gets at least this many bytes (small budgets use fewer shards rather than tiny ones).
const MIN_SHARD_BYTES: usize = 4 << 20;
/// A shard holds at least this many of the largest allowed objects.
const MIN_OBJECTS_PER_SHARD: usize = 4;
/// Share of a shard's budget the small (probation) FIFO may hold before it is evicted first.
const SMALL_PERCENT: usize = 10;
/// The per-entry frequency saturates here (2 bits, as in S3-FIFO).
const MAX_FREQ: u8 = 3;
/// Typical object size, used only to size the sketch and the ghost queue.
const TYPICAL_OBJECT_BYTES: usize = 2048;
/// Ghost entries kept at least, whatever the shard holds.
const MIN_GHOST: usize = 64;

/// S3-FIFO eviction with TinyLFU admission over a byte budget (see the module doc).
///
/// - Never holds more than its budget once `admit`/`increment_weight` return: each shard keeps
///   to `budget / shards`, and whatever must go is returned for the caller to purge.
/// - New entries start on probation in the small FIFO and leave it in order unless they are used
///   there, so one-time requests (a crawler, a cache sweep) cycle through the small FIFO and
///   never reach the entries in the main FIFO.
/// - When a newcomer would push out a main-FIFO entry, the sketch decides: a newcomer seen less
///   often than that entry is rejected instead.
/// - An object larger than a shard's budget is rejected outright.
/// - The state is not persisted: [`EvictionManager::save`] and [`EvictionManager::load`] do
///   nothing, because the storage it tracks lives in memory and starts empty.
pub struct S3FifoEviction {
    shards: Box<[Mutex<Shard>]>,
    shard_budget: usize,
    totals: Totals,
}

/// Process-wide counters, updated under the owning shard's lock.
#[derive(Default)]
struct Totals {
    bytes: AtomicUsize,
    items: AtomicUsize,
    evicted_bytes: AtomicUsize,
    evicted_items: AtomicUsize,
    rejected_items: AtomicUsize,
}

impl Totals {
    fn add(&self, bytes: usize) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.items.fetch_add(1, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.items.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many shards a budget gets: a power of two, at most 16 (`MAX_SHARDS`), so that each
/// shard keeps at least 4 MiB and room for 4 of the largest
/// objects. Budgets too small for that get one shard.
pub fn shard_count(budget: usize, max_object_size: usize) -> usize {
    let floor = MIN_SHARD_BYTES.max(max_object_size.saturating_mul(MIN_OBJECTS_PER_SHARD));
    let mut n = MAX_SHARDS;
    while n > 1 && budget / n < floor {
        n /= 2;
    }
    n
}

impl S3FifoEviction {
    /// A manager that keeps tracked bytes at or under `budget`. `max_object_size` only decides
    /// how many shards are used (see [`shard_count`]).
    pub fn new(budget: usize, max_object_size: usize) -> Self {
        Self::with_shards(budget, shard_count(budget, max_object_size))
    }

    fn with_shards(budget: usize, shards: usize) -> Self {
        let shards = shards.max(1);
        let shard_budget = budget / shards;
        S3FifoEviction {
            shards: (0..shards)
                .map(|_| Mutex::new(Shard::new(shard_budget)))
                .collect(),
            shard_budget,
            totals: Totals::default(),
        }
    }

    /// Bytes one shard may hold; an object larger than this is never admitted.
    pub fn shard_budget(&self) -> usize {
        self.shard_budget
    }

    /// Newcomers turned away so far: admission lost to a more popular entry, or too large.
    pub fn rejected_items(&self) -> usize {
        self.totals.rejected_items.load(Ordering::Relaxed)
    }

    fn shard(&self, hashes: &KeyHashes) -> &Mutex<Shard> {
        &self.shards[hashes.shard as usize % self.shards.len()]
    }

    /// Admit `item` with `weight` (or resize it, if tracked) exactly as [`EvictionManager::admit`]
    /// does, and run `apply` with what must leave (possibly `item` itself) while the shard's lock
    /// is still held. Victims always come from `item`'s own shard, so a storage that drops them
    /// and stores the newcomer inside `apply` never holds more than the tracked bytes, and the
    /// tracked bytes never exceed the budget, even with concurrent writers.
    pub fn admit_with<R>(
        &self,
        item: CacheEntryKey,
        weight: usize,
        apply: impl FnOnce(&[CacheEntryKey]) -> R,
    ) -> R {
        let (id, hashes) = identify_owned(&item);
        let mut shard = self.shard(&hashes).lock();
        let gone = shard.admit(item, id, hashes, weight, &self.totals);
        apply(&gone)
    }

    /// Admit `item`, which is not tracked yet, as [`S3FifoEviction::admit_with`] does; `apply`
    /// says whether the storage kept it, and if not it is untracked again under the same lock.
    /// Nothing happens (`false`) when `item` is tracked already. For entries that come from
    /// elsewhere than a fetch (a disk hit promoted to memory).
    pub fn admit_new_with(
        &self,
        item: CacheEntryKey,
        weight: usize,
        apply: impl FnOnce(&[CacheEntryKey]) -> bool,
    ) -> bool {
        let (id, hashes) = identify_owned(&item);
        let mut shard = self.shard(&hashes).lock();
        if shard.entries.contains_key(&id) {
            return false;
        }
        let gone = shard.admit(item, id, hashes, weight, &self.totals);
        let kept = apply(&gone);
        if !kept {
            shard.take(&id, &self.totals);
        }
        kept
    }

    /// Give a tracked entry a new weight (its stored headers changed size, after a 304) and run
    /// `apply` with what must leave (possibly `item` itself, if it no longer fits) under the
    /// shard's lock, as in [`S3FifoEviction::admit_with`]. Frequency is not touched: the request
    /// behind the update was already counted as an access. `None` (and nothing changed) when
    /// `item` is not tracked (it was rejected or evicted and its purge is on the way) or when
    /// `still_current`, asked under the lock, says the update no longer applies.
    pub fn resize_with<R>(
        &self,
        item: &CacheEntryKey,
        still_current: impl FnOnce() -> bool,
        weight: usize,
        apply: impl FnOnce(&[CacheEntryKey]) -> R,
    ) -> Option<R> {
        let (id, hashes) = identify_owned(item);
        let mut shard = self.shard(&hashes).lock();
        if !shard.entries.contains_key(&id) || !still_current() {
            return None;
        }
        let mut gone = Vec::new();
        shard.resize(&id, weight.max(1), &self.totals, &mut gone);
        Some(apply(&gone))
    }

    /// The weight `item` is tracked with, if it is.
    pub fn weight_of(&self, item: &CacheEntryKey) -> Option<usize> {
        let (id, hashes) = identify_owned(item);
        self.shard(&hashes)
            .lock()
            .entries
            .get(&id)
            .map(|e| e.weight)
    }
}

/// Identity of a tracked entry: the logical key's hash plus the storage's entry id, if any, so a
/// key-only identity never matches an identified entry (as the trait requires). Byte arrays
/// only (25 bytes, no padding): it is the key of every record and of every queue position.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct EntryId {
    key: HashBinary,
    /// The storage's entry id (little-endian), when `identified`.
    entry: [u8; 8],
    identified: bool,
}

impl EntryId {
    fn new(key: HashBinary, entry: Option<u64>) -> Self {
        EntryId {
            key,
            entry: entry.unwrap_or(0).to_le_bytes(),
            identified: entry.is_some(),
        }
    }

    fn hashes(&self) -> KeyHashes {
        KeyHashes::of(&self.key)
    }

    /// The entry as a key handed back to the storage (a victim): its combined hash stands for
    /// the whole logical key, which is all the storage and pingora's purge ask of it.
    fn to_key(self) -> CacheEntryKey {
        let key = CompactCacheKey {
            primary: self.key,
            variance: None,
            user_tag: Box::default(),
        };
        let id = self
            .identified
            .then(|| CacheEntryId::new(u64::from_le_bytes(self.entry)));
        CacheEntryKey::from_entry_id(key, id)
    }
}

/// Hashes derived once from a key: two for the sketch rows, one byte for the shard.
#[derive(Clone, Copy, Debug)]
struct KeyHashes {
    h1: u64,
    h2: u64,
    shard: u8,
}

impl KeyHashes {
    fn of(bin: &HashBinary) -> Self {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&bin[..8]);
        hi.copy_from_slice(&bin[8..]);
        KeyHashes {
            h1: u64::from_le_bytes(lo),
            h2: u64::from_le_bytes(hi) | 1,
            // the top byte of h2 plays no part in the (low-bit) sketch indexes
            shard: bin[15],
        }
    }
}

fn identify(key: &CompactCacheKey, entry: Option<u64>) -> (EntryId, KeyHashes) {
    let bin = key.combined_bin();
    (EntryId::new(bin, entry), KeyHashes::of(&bin))
}

fn identify_owned(item: &CacheEntryKey) -> (EntryId, KeyHashes) {
    identify(item.key(), item.entry_id().map(|id| id.get()))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Queue {
    Small,
    Main,
}

/// What a shard keeps per tracked entry, beside its [`EntryId`] (from which its key and hashes
/// are derived when needed): 18 bytes, packed (byte-aligned, as `EntryId` is), so a map slot
/// is 43 bytes where padding to the `u64`s made it 56.
#[repr(C, packed)]
struct Entry {
    weight: usize,
    /// Sequence number of this entry's live position in its queue; older positions are stale.
    seq: u64,
    freq: u8,
    queue: Queue,
}

/// A place in a FIFO: an entry and the sequence number it was given there. Packed: 33 bytes,
/// where the tuple `(EntryId, u64)` took 40.
#[derive(Clone, Copy)]
#[repr(C, packed)]
struct Position {
    id: EntryId,
    seq: u64,
}

/// One shard: S3-FIFO queues over a byte budget, plus its own sketch and ghost queue (a key
/// always maps to the same shard, so per-shard frequency is the key's frequency).
struct Shard {
    budget: usize,
    small_target: usize,
    bytes: usize,
    small_bytes: usize,
    main_bytes: usize,
    entries: KeyMap<EntryId, Entry>,
    /// FIFO positions; a position whose seq no longer matches is skipped.
    small: VecDeque<Position>,
    main: VecDeque<Position>,
    stale_positions: usize,
    next_seq: u64,
    ghost: Ghost,
    sketch: FrequencySketch,
}

impl Shard {
    fn new(budget: usize) -> Self {
        let typical_items = (budget / TYPICAL_OBJECT_BYTES).max(1);
        Shard {
            budget,
            small_target: budget / 100 * SMALL_PERCENT,
            bytes: 0,
            small_bytes: 0,
            main_bytes: 0,
            entries: KeyMap::default(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            stale_positions: 0,
            next_seq: 0,
            ghost: Ghost::default(),
            sketch: FrequencySketch::new(typical_items),
        }
    }

    fn queue_mut(&mut self, queue: Queue) -> &mut VecDeque<Position> {
        match queue {
            Queue::Small => &mut self.small,
            Queue::Main => &mut self.main,
        }
    }

    fn queue_bytes_mut(&mut self, queue: Queue) -> &mut usize {
        match queue {
            Queue::Small => &mut self.small_bytes,
            Queue::Main => &mut self.main_bytes,
        }
    }

    /// Put `id` (already in `entries`) at the tail of `queue`.
    fn enqueue(&mut self, id: EntryId, queue: Queue) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        entry.queue = queue;
        entry.seq = seq;
        self.queue_mut(queue).push_back(Position { id, seq });
    }

    /// The live entry at the head of `queue`, dropping stale positions on the way.
    fn head(&mut self, queue: Queue) -> Option<EntryId> {
        loop {
            let &Position { id, seq } = match queue {
                Queue::Small => self.small.front()?,
                Queue::Main => self.main.front()?,
            };
            if self.entries.get(&id).is_some_and(|e| e.seq == seq) {
                return Some(id);
            }
            self.queue_mut(queue).pop_front();
            self.stale_positions = self.stale_positions.saturating_sub(1);
        }
    }

    /// Find the entry S3-FIFO evicts next, doing the lazy moves on the way: the small FIFO's head
    /// goes to main if it was used while on probation; main's head is reinserted, one frequency
    /// bit poorer, while it has any. The victim is left at the head of its queue.
    fn next_victim(&mut self) -> Option<EntryId> {
        loop {
            let from_small = self.small_bytes > 0
                && (self.small_bytes > self.small_target || self.main_bytes == 0);
            if !from_small && self.main_bytes == 0 {
                return None;
            }
            let queue = if from_small {
                Queue::Small
            } else {
                Queue::Main
            };
            let id = self.head(queue)?;
            let (freq, weight) = self.entries.get(&id).map(|e| (e.freq, e.weight))?;
            if freq == 0 {
                return Some(id);
            }
            self.queue_mut(queue).pop_front();
            if from_small {
                self.small_bytes -= weight;
                self.main_bytes += weight;
                if let Some(e) = self.entries.get_mut(&id) {
                    e.freq = 0;
                }
            } else if let Some(e) = self.entries.get_mut(&id) {
                e.freq -= 1;
            }
            self.enqueue(id, Queue::Main);
        }
    }

    /// Stop tracking `id`; returns its entry.
    fn take(&mut self, id: &EntryId, totals: &Totals) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.bytes -= entry.weight;
        *self.queue_bytes_mut(entry.queue) -= entry.weight;
        totals.sub(entry.weight);
        self.stale_positions += 1;
        self.compact_queues();
        Some(entry)
    }

    /// Evict `id`: an entry leaving the small FIFO unused is remembered in the ghost queue.
    fn evict(&mut self, id: &EntryId, totals: &Totals, out: &mut Vec<CacheEntryKey>) {
        if let Some(entry) = self.take(id, totals) {
            if entry.queue == Queue::Small {
                let cap = self.entries.len().max(MIN_GHOST);
                self.ghost.insert(id.hashes().h1, cap);
            }
            totals
                .evicted_bytes
                .fetch_add(entry.weight, Ordering::Relaxed);
            totals.evicted_items.fetch_add(1, Ordering::Relaxed);
            out.push(id.to_key());
        }
    }

    /// Evict until `extra` more bytes fit in the budget.
    fn make_room(&mut self, extra: usize, totals: &Totals, out: &mut Vec<CacheEntryKey>) {
        while self.bytes + extra > self.budget {
            let Some(victim) = self.next_victim() else {
                return;
            };
            self.evict(&victim, totals, out);
        }
    }

    /// Rebuild the queues when most of their positions are stale (after many removals).
    fn compact_queues(&mut self) {
        let live = self.entries.len();
        if self.stale_positions <= live.max(64) {
            return;
        }
        let entries = &self.entries;
        let live_position =
            |&Position { id, seq }: &Position| entries.get(&id).is_some_and(|e| e.seq == seq);
        self.small.retain(live_position);
        self.main.retain(live_position);
        self.stale_positions = 0;
    }

    /// Track a new entry (or resize a tracked one); returns what must leave, which may include
    /// the newcomer itself.
    fn admit(
        &mut self,
        item: CacheEntryKey,
        id: EntryId,
        hashes: KeyHashes,
        weight: usize,
        totals: &Totals,
    ) -> Vec<CacheEntryKey> {
        let weight = weight.max(1);
        let candidate_freq = self.sketch.increment(&hashes);
        let mut out = Vec::new();
        if let Some(entry) = self.entries.get_mut(&id) {
            // a refetch of a tracked entry (after expiry) counts as a use
            entry.freq = (entry.freq + 1).min(MAX_FREQ);
            self.resize(&id, weight, totals, &mut out);
            return out;
        }
        if weight > self.budget {
            totals.rejected_items.fetch_add(1, Ordering::Relaxed);
            out.push(item);
            return out;
        }
        if self.bytes + weight > self.budget {
            // TinyLFU guards the main FIFO: a newcomer may push out a main entry only if it has
            // been seen at least as often. An unused probation entry leaves whatever its count
            // (S3-FIFO's own decision), so one entry with an inflated count cannot stall the
            // small FIFO and make every newcomer bounce off it.
            let main_victim = self
                .next_victim()
                .filter(|v| self.entries.get(v).is_some_and(|e| e.queue == Queue::Main));
            if let Some(victim) = main_victim {
                let victim_freq = self.sketch.estimate(&victim.hashes());
                if candidate_freq < victim_freq {
                    totals.rejected_items.fetch_add(1, Ordering::Relaxed);
                    out.push(item);
                    return out;
                }
            }
            self.make_room(weight, totals, &mut out);
        }
        let queue = if self.ghost.remove(hashes.h1) {
            Queue::Main
        } else {
            Queue::Small
        };
        self.entries.insert(
            id,
            Entry {
                weight,
                seq: 0,
                freq: 0,
                queue,
            },
        );
        self.bytes += weight;
        *self.queue_bytes_mut(queue) += weight;
        totals.add(weight);
        self.enqueue(id, queue);
        out
    }

    /// Give a tracked entry a new weight and evict whatever no longer fits (possibly itself).
    fn resize(
        &mut self,
        id: &EntryId,
        weight: usize,
        totals: &Totals,
        out: &mut Vec<CacheEntryKey>,
    ) {
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        let old = entry.weight;
        let queue = entry.queue;
        entry.weight = weight;
        self.bytes = self.bytes - old + weight;
        let queue_bytes = self.queue_bytes_mut(queue);
        *queue_bytes = *queue_bytes - old + weight;
        totals.bytes.fetch_sub(old, Ordering::Relaxed);
        totals.bytes.fetch_add(weight, Ordering::Relaxed);
        if weight > self.budget {
            self.evict(id, totals, out);
        }
        self.make_room(0, totals, out);
    }

    fn access(&mut self, id: &EntryId, hashes: &KeyHashes) -> bool {
        self.sketch.increment(hashes);
        match self.entries.get_mut(id) {
            Some(entry) => {
                entry.freq = (entry.freq + 1).min(MAX_FREQ);
                true
            }
            None => false,
        }
    }
}

/// Keys recently evicted from the small FIFO without being used; seeing one again admits it
/// straight into the main FIFO. Bounded by count; older positions of a re-inserted key are stale.
#[derive(Default)]
struct Ghost {
    order: VecDeque<(u64, u64)>,
    live: KeyMap<u64, u64>,
    next_seq: u64,
}

impl Ghost {
    fn insert(&mut self, key: u64, cap: usize) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.live.insert(key, seq);
        self.order.push_back((key, seq));
        while self.live.len() > cap || self.order.len() > cap.saturating_mul(2) {
            let Some((old, old_seq)) = self.order.pop_front() else {
                break;
            };
            if self.live.get(&old) == Some(&old_seq) {
                self.live.remove(&old);
            }
        }
    }

    fn remove(&mut self, key: u64) -> bool {
        self.live.remove(&key).is_some()
    }
}

/// Count-min sketch with 4-bit counters (4 rows, 16 counters per `u64`), conservative update,
/// and aging: after `sample` increments every counter is halved, so old popularity fades.
struct FrequencySketch {
    table: Vec<u64>,
    /// Counters per row; a power of two.
    width: usize,
    additions: usize,
    sample: usize,
}

const SKETCH_ROWS: usize = 4;
const MIN_SKETCH_WIDTH: usize = 1 << 10;
const MAX_SKETCH_WIDTH: usize = 1 << 18;
const MAX_COUNT: u8 = 15;

impl FrequencySketch {
    /// A sketch sized for about `items` distinct hot keys; ages every `10 * items` increments.
    fn new(items: usize) -> Self {
        let width = items
            .checked_next_power_of_two()
            .unwrap_or(MAX_SKETCH_WIDTH)
            .clamp(MIN_SKETCH_WIDTH, MAX_SKETCH_WIDTH);
        FrequencySketch {
            table: vec![0; SKETCH_ROWS * width / 16],
            width,
            additions: 0,
            sample: items.saturating_mul(10).max(MIN_SKETCH_WIDTH),
        }
    }

    /// (word index, shift) of `row`'s counter for a key.
    fn slot(&self, row: usize, h: &KeyHashes) -> (usize, u32) {
        let index =
            (h.h1.wrapping_add((row as u64).wrapping_mul(h.h2)) as usize) & (self.width - 1);
        let word = row * self.width / 16 + index / 16;
        (word, (index % 16) as u32 * 4)
    }

    fn counter(&self, row: usize, h: &KeyHashes) -> u8 {
        let (word, shift) = self.slot(row, h);
        ((self.table[word] >> shift) & 0xF) as u8
    }

    fn estimate(&self, h: &KeyHashes) -> u8 {
        (0..SKETCH_ROWS)
            .map(|row| self.counter(row, h))
            .min()
            .unwrap_or(0)
    }

    /// Count one more occurrence; returns the new estimate.
    fn increment(&mut self, h: &KeyHashes) -> u8 {
        let current = self.estimate(h);
        if current < MAX_COUNT {
            for row in 0..SKETCH_ROWS {
                if self.counter(row, h) == current {
                    let (word, shift) = self.slot(row, h);
                    self.table[word] += 1 << shift;
                }
            }
        }
        self.additions += 1;
        if self.additions >= self.sample {
            self.age();
        }
        self.estimate(h)
    }

    /// Halve every counter.
    fn age(&mut self) {
        for word in &mut self.table {
            *word = (*word >> 1) & 0x7777_7777_7777_7777;
        }
        self.additions /= 2;
    }
}

#[async_trait]
impl EvictionManager for S3FifoEviction {
    fn total_size(&self) -> usize {
        self.totals.bytes.load(Ordering::Relaxed)
    }

    fn total_items(&self) -> usize {
        self.totals.items.load(Ordering::Relaxed)
    }

    fn evicted_size(&self) -> usize {
        self.totals.evicted_bytes.load(Ordering::Relaxed)
    }

    /// Entries pushed out after being admitted; rejected newcomers are counted apart, in
    /// [`S3FifoEviction::rejected_items`].
    fn evicted_items(&self) -> usize {
        self.totals.evicted_items.load(Ordering::Relaxed)
    }

    fn admit(
        &self,
        item: CacheEntryKey,
        size: usize,
        _fresh_until: SystemTime,
    ) -> Vec<CacheEntryKey> {
        let (id, hashes) = identify_owned(&item);
        self.shard(&hashes)
            .lock()
            .admit(item, id, hashes, size, &self.totals)
    }

    fn increment_weight(
        &self,
        item: &CacheEntryKey,
        delta: usize,
        max_weight: Option<usize>,
    ) -> Vec<CacheEntryKey> {
        let (id, hashes) = identify_owned(item);
        let mut shard = self.shard(&hashes).lock();
        let Some(current) = shard.entries.get(&id).map(|e| e.weight) else {
            let initial = max_weight.map_or(delta, |max| delta.min(max));
            if initial == 0 {
                // Nothing to track. `MemoryStorage` admits its entries itself (see
                // `S3FifoEviction::admit_with`) and reports `Appended(0, Some(0))`, which pingora
                // turns into this call: a rejected or unstored object must not come back here.
                return Vec::new();
            }
            return shard.admit(item.clone(), id, hashes, initial, &self.totals);
        };
        let grown = current.saturating_add(delta);
        let weight = match max_weight {
            Some(max) if current >= max => current,
            Some(max) => grown.min(max),
            None => grown,
        };
        let mut out = Vec::new();
        shard.resize(&id, weight, &self.totals, &mut out);
        out
    }

    fn remove(&self, item: CacheEntryKeyRef<'_>) {
        let (id, hashes) = identify(item.key(), item.entry_id().map(|id| id.get()));
        self.shard(&hashes).lock().take(&id, &self.totals);
    }

    /// Counts the hit and refreshes the entry's frequency. An entry that is not tracked is not
    /// taken on: this storage is never restored from disk, so every stored entry was admitted,
    /// and an untracked one is a rejected or evicted entry whose purge is still in flight.
    fn access(&self, item: &CacheEntryKey, _size: usize, _fresh_until: SystemTime) -> bool {
        let (id, hashes) = identify_owned(item);
        self.shard(&hashes).lock().access(&id, &hashes)
    }

    fn peek(&self, item: &CacheEntryKey) -> bool {
        let (id, hashes) = identify_owned(item);
        self.shard(&hashes).lock().entries.contains_key(&id)
    }

    /// Nothing to save: the in-memory storage this tracks is not persisted either.
    async fn save(&self, _dir_path: &str) -> Result<()> {
        Ok(())
    }

    /// Nothing to load (see [`EvictionManager::save`]).
    async fn load(&self, _dir_path: &str) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::eviction::{lru, CacheEntryId};
    use pingora_cache::CacheKey;
    use std::time::{Duration, UNIX_EPOCH};

    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;

    fn key(name: &str) -> CacheEntryKey {
        CacheEntryKey::key_only(CacheKey::new(name, "").to_compact())
    }

    fn fresh() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(2_000_000_000)
    }

    use crate::cache::xorshift::Rng;

    /// What each tracked entry costs the shard: a map slot (plus hashbrown's control byte) and
    /// a queue position, packed to their bytes.
    #[test]
    fn a_tracked_entry_takes_43_bytes_a_slot_and_33_a_position() {
        assert_eq!(std::mem::size_of::<(EntryId, Entry)>(), 43);
        assert_eq!(std::mem::size_of::<Position>(), 33);
    }

    #[test]
    fn shard_count_keeps_shards_large_enough() {
        assert_eq!(shard_count(MIB, 64 * KIB), 1);
        assert_eq!(shard_count(16 * MIB, 64 * KIB), 4);
        assert_eq!(shard_count(256 * MIB, 8 * MIB), 8);
        assert_eq!(shard_count(1 << 30, 8 * MIB), 16);
        assert_eq!(shard_count(1 << 30, 1 << 30), 1);
        assert_eq!(shard_count(0, 0), 1);
    }

    #[test]
    fn sketch_counts_saturate_and_age() {
        let mut s = FrequencySketch::new(100);
        let a = KeyHashes::of(&[1; 16]);
        let b = KeyHashes::of(&[2; 16]);
        for expected in 1..=MAX_COUNT {
            assert_eq!(s.increment(&a), expected);
        }
        assert_eq!(s.increment(&a), MAX_COUNT, "4-bit counters saturate");
        assert!(
            s.estimate(&b) <= 1,
            "an unseen key is (almost) never counted"
        );
        s.age();
        assert_eq!(s.estimate(&a), MAX_COUNT / 2);
        // aging also happens by itself after `sample` increments
        let mut s = FrequencySketch::new(100);
        for _ in 0..8 {
            s.increment(&a);
        }
        let sample = s.sample;
        for i in 0..sample {
            let mut bin = [0u8; 16];
            bin[..8].copy_from_slice(&(i as u64 + 1000).to_le_bytes());
            bin[8..].copy_from_slice(&(i as u64 * 7919).to_le_bytes());
            s.increment(&KeyHashes::of(&bin));
        }
        assert!(
            s.estimate(&a) <= 4,
            "halved at least once: {}",
            s.estimate(&a)
        );
    }

    /// Random admits, resizes, increments and removals against a model of what is tracked:
    /// after every call the budget holds and the accounting matches the model exactly.
    #[test]
    fn budget_is_never_exceeded_and_accounting_is_exact() {
        let budget = 256 * KIB;
        let m = S3FifoEviction::with_shards(budget, 4);
        let shard_budget = m.shard_budget();
        let mut model: std::collections::HashMap<CacheEntryKey, usize> = Default::default();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // drop what the manager let go; true when that includes `mine`
        let apply = |model: &mut std::collections::HashMap<CacheEntryKey, usize>,
                     mine: &CacheEntryKey,
                     gone| {
            let gone: Vec<CacheEntryKey> = gone;
            for g in &gone {
                assert!(
                    model.remove(g).is_some(),
                    "{g} was tracked or is the newcomer"
                );
            }
            gone.contains(mine)
        };
        for step in 0..20_000 {
            // a skewed key space, so some keys are hot and others come once
            let k = if rng.below(3) == 0 {
                key(&format!("hot{}", rng.below(20)))
            } else {
                key(&format!("k{}", rng.below(2000)))
            };
            let size = match rng.below(100) {
                0 => shard_budget + 1 + rng.below(KIB),
                1 => shard_budget,
                _ => 1 + rng.below(8 * KIB),
            };
            match rng.below(10) {
                0 => {
                    EvictionManager::remove(&m, CacheEntryKeyRef::from(&k));
                    model.remove(&k);
                }
                1 => {
                    let max = (rng.below(2) == 0).then(|| size + rng.below(4 * KIB));
                    let before = model.get(&k).copied();
                    // a newcomer is not in the model yet: count it in so `apply` can drop it
                    model.entry(k.clone()).or_insert(0);
                    let gone = m.increment_weight(&k, size, max);
                    if !apply(&mut model, &k, gone) {
                        let weight = match (before, max) {
                            (None, Some(max)) => size.min(max).max(1),
                            (None, None) => size.max(1),
                            (Some(cur), Some(max)) if cur >= max => cur,
                            (Some(cur), Some(max)) => (cur + size).min(max),
                            (Some(cur), None) => cur + size,
                        };
                        model.insert(k.clone(), weight);
                    }
                }
                2..=4 => {
                    let tracked = m.access(&k, size, fresh());
                    assert_eq!(
                        tracked,
                        model.contains_key(&k),
                        "step {step}: access of {k}"
                    );
                }
                _ => {
                    model.entry(k.clone()).or_insert(0);
                    let gone = m.admit(k.clone(), size, fresh());
                    if !apply(&mut model, &k, gone) {
                        model.insert(k.clone(), size);
                    }
                }
            }
            let tracked: usize = model.values().sum();
            assert_eq!(m.total_size(), tracked, "step {step}");
            assert_eq!(m.total_items(), model.len(), "step {step}");
            assert!(m.total_size() <= budget, "step {step}: {}", m.total_size());
            if step % 1000 == 0 {
                for k in model.keys() {
                    assert!(m.peek(k), "step {step}: {k} tracked");
                }
            }
        }
        assert!(m.evicted_items() > 0);
        assert!(m.rejected_items() > 0);
    }

    /// Hot keys are requested repeatedly, then 4× the capacity of cold keys is requested once
    /// each; returns the share of the hot set still tracked.
    fn hot_set_retention(m: &dyn EvictionManager) -> f64 {
        let budget_objects = MIB / KIB;
        let hot = 200;
        for i in 0..hot {
            assert!(m.admit(key(&format!("hot{i}")), KIB, fresh()).is_empty());
        }
        for _ in 0..5 {
            for i in 0..hot {
                assert!(m.access(&key(&format!("hot{i}")), KIB, fresh()));
            }
        }
        for i in 0..4 * budget_objects {
            m.admit(key(&format!("cold{i}")), KIB, fresh());
            assert!(m.total_size() <= MIB);
        }
        let kept = (0..hot)
            .filter(|i| m.peek(&key(&format!("hot{i}"))))
            .count();
        kept as f64 / hot as f64
    }

    #[test]
    fn hot_set_survives_a_one_time_scan() {
        let ours = S3FifoEviction::new(MIB, 64 * KIB);
        let kept = hot_set_retention(&ours);
        assert!(kept >= 0.9, "S3-FIFO + TinyLFU kept {kept}");
        assert!(ours.evicted_items() + ours.rejected_items() >= 3 * 1024);
        assert!(ours.total_size() <= MIB);
    }

    /// The same workload flushes plain LRU (pingora's manager, used before): the scan test above
    /// measures something LRU does not have.
    #[test]
    fn plain_lru_loses_the_hot_set_to_the_same_scan() {
        let lru = lru::Manager::<16>::with_capacity(MIB, 1024);
        let kept = hot_set_retention(&lru);
        assert!(kept <= 0.1, "LRU kept {kept}");
    }

    /// Zipf-distributed traffic with a one-time scan of cold keys woven in, replayed the way
    /// pingora drives a manager (hit → `access`, miss → `admit`). Returns the hit ratio of the
    /// Zipf requests.
    fn zipf_hit_ratio(m: &dyn EvictionManager, scan: bool) -> f64 {
        let keys = 2000usize;
        let weights: Vec<f64> = (1..=keys).map(|r| 1.0 / r as f64).collect();
        let total: f64 = weights.iter().sum();
        let mut cdf = Vec::with_capacity(keys);
        let mut acc = 0.0;
        for w in &weights {
            acc += w / total;
            cdf.push(acc);
        }
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let request = |name: String| -> bool {
            let k = key(&name);
            if m.peek(&k) {
                m.access(&k, KIB, fresh())
            } else {
                m.admit(k, KIB, fresh());
                false
            }
        };
        let (mut hits, mut total_reqs) = (0u32, 0u32);
        for i in 0..30_000 {
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
            let rank = cdf.partition_point(|&c| c < u);
            let measured = i >= 5_000;
            if request(format!("z{rank}")) && measured {
                hits += 1;
            }
            if measured {
                total_reqs += 1;
            }
            // after warm-up, every other request is a one-time cold URL (12× the capacity)
            if scan && measured && i % 2 == 0 && i < 17_000 {
                request(format!("scan{i}"));
            }
        }
        f64::from(hits) / f64::from(total_reqs)
    }

    #[test]
    fn zipf_hit_ratio_holds_up_under_a_scan() {
        let budget = 512 * KIB;
        let calm = zipf_hit_ratio(&S3FifoEviction::new(budget, 64 * KIB), false);
        let scanned = zipf_hit_ratio(&S3FifoEviction::new(budget, 64 * KIB), true);
        let lru_calm = zipf_hit_ratio(&lru::Manager::<16>::with_capacity(budget, 1024), false);
        let lru_scanned = zipf_hit_ratio(&lru::Manager::<16>::with_capacity(budget, 1024), true);
        println!(
            "zipf hit ratio: s3fifo {calm:.3} -> {scanned:.3} with scan; lru {lru_calm:.3} -> {lru_scanned:.3}"
        );
        assert!(calm - scanned < 0.05, "s3fifo {calm} -> {scanned}");
        assert!(
            scanned > lru_scanned,
            "s3fifo {scanned} vs lru {lru_scanned}"
        );
    }

    #[test]
    fn removal_keeps_accounting_exact_and_respects_identity() {
        let m = S3FifoEviction::new(MIB, 64 * KIB);
        for (name, size) in [("a", 100), ("b", 200), ("c", 300)] {
            assert!(m.admit(key(name), size, fresh()).is_empty());
        }
        assert_eq!((m.total_size(), m.total_items()), (600, 3));
        EvictionManager::remove(&m, CacheEntryKeyRef::from(&key("b")));
        assert_eq!((m.total_size(), m.total_items()), (400, 2));
        assert!(!m.peek(&key("b")));
        EvictionManager::remove(&m, CacheEntryKeyRef::from(&key("b")));
        assert_eq!((m.total_size(), m.total_items()), (400, 2));
        // re-admitting a tracked key replaces its size
        assert!(m.admit(key("a"), 150, fresh()).is_empty());
        assert_eq!((m.total_size(), m.total_items()), (450, 2));
        // a key-only removal does not touch an identified entry of the same key, and back
        let compact = CacheKey::new("d", "").to_compact();
        let identified = CacheEntryKey::identified(compact.clone(), CacheEntryId::new(7));
        assert!(m.admit(identified.clone(), 50, fresh()).is_empty());
        EvictionManager::remove(&m, CacheEntryKeyRef::KeyOnly(&compact));
        assert!(m.peek(&identified));
        assert!(!m.peek(&CacheEntryKey::key_only(compact.clone())));
        EvictionManager::remove(&m, CacheEntryKeyRef::from(&identified));
        assert!(!m.peek(&identified));
        assert_eq!((m.total_size(), m.total_items()), (450, 2));
        assert_eq!(m.evicted_items(), 0, "removal is not eviction");
    }

    #[test]
    fn oversized_objects_are_rejected_cleanly() {
        let m = S3FifoEviction::with_shards(MIB, 4);
        assert_eq!(m.shard_budget(), 256 * KIB);
        assert!(m.admit(key("small"), KIB, fresh()).is_empty());
        let big = key("big");
        assert_eq!(
            m.admit(big.clone(), 256 * KIB + 1, fresh()),
            vec![big.clone()]
        );
        assert!(!m.peek(&big));
        assert_eq!((m.total_size(), m.total_items()), (KIB, 1));
        assert_eq!(m.rejected_items(), 1);
        assert_eq!(m.evicted_items(), 0);
        // growing past the shard budget through increments evicts the entry itself
        assert!(m.increment_weight(&big, 200 * KIB, None).is_empty());
        assert_eq!(m.increment_weight(&big, 100 * KIB, None), vec![big.clone()]);
        assert!(!m.peek(&big));
        assert_eq!((m.total_size(), m.total_items()), (KIB, 1));
        // an object of exactly one shard's budget fits (after emptying that shard)
        let whole = key("whole");
        let gone = m.admit(whole.clone(), 256 * KIB, fresh());
        assert!(!gone.contains(&whole));
        assert!(m.peek(&whole));
        assert!(m.total_size() <= MIB);
    }

    #[test]
    fn increments_respect_the_max_weight_hint() {
        let m = S3FifoEviction::new(MIB, 64 * KIB);
        let k = key("streamed");
        assert!(m.increment_weight(&k, 0, None).is_empty());
        assert!(m.increment_weight(&k, 10, Some(0)).is_empty());
        assert_eq!(
            (m.total_size(), m.total_items()),
            (0, 0),
            "an untracked key is not taken on with weight 0"
        );
        assert!(m.increment_weight(&k, 1, None).is_empty());
        assert_eq!(m.total_size(), 1);
        assert!(m.increment_weight(&k, 0, Some(0)).is_empty());
        assert_eq!(m.total_size(), 1, "a tracked entry keeps its weight");
        EvictionManager::remove(&m, CacheEntryKeyRef::from(&k));
        assert!(m.increment_weight(&k, 500, Some(300)).is_empty());
        assert_eq!(m.total_size(), 300);
        assert!(m.increment_weight(&k, 500, Some(700)).is_empty());
        assert_eq!(m.total_size(), 700);
        assert!(m.increment_weight(&k, 500, Some(600)).is_empty());
        assert_eq!(m.total_size(), 700, "a lower hint never shrinks an entry");
        assert!(m.increment_weight(&k, 50, None).is_empty());
        assert_eq!((m.total_size(), m.total_items()), (750, 1));
    }

    /// TinyLFU: a newcomer seen less often than the entry it would replace is turned away, until
    /// it has been asked for often enough.
    #[test]
    fn unpopular_newcomers_are_rejected_until_they_earn_a_place() {
        let m = S3FifoEviction::with_shards(10 * 100, 1);
        for i in 0..10 {
            assert!(m.admit(key(&format!("p{i}")), 100, fresh()).is_empty());
            for _ in 0..3 {
                assert!(m.access(&key(&format!("p{i}")), 100, fresh()));
            }
        }
        let newcomer = key("new");
        assert_eq!(
            m.admit(newcomer.clone(), 100, fresh()),
            vec![newcomer.clone()]
        );
        assert_eq!(m.rejected_items(), 1);
        assert_eq!(m.total_items(), 10);
        let mut tries = 1;
        loop {
            let gone = m.admit(newcomer.clone(), 100, fresh());
            tries += 1;
            if !gone.contains(&newcomer) {
                assert_eq!(gone.len(), 1, "one popular entry made room");
                break;
            }
            assert!(tries < 10, "a newcomer as popular as the rest gets in");
        }
        assert!(tries >= 4, "admitted after {tries} requests");
        assert!(m.peek(&newcomer));
        assert_eq!((m.total_size(), m.total_items()), (1000, 10));
        assert_eq!(m.evicted_items(), 1);
    }

    #[test]
    fn an_unused_entry_seen_again_goes_to_the_main_queue() {
        let m = S3FifoEviction::with_shards(10 * 100, 1);
        for i in 0..10 {
            m.admit(key(&format!("a{i}")), 100, fresh());
        }
        // a0 leaves the small queue unused, into the ghost queue
        let gone = m.admit(key("b"), 100, fresh());
        assert_eq!(gone, vec![key("a0")]);
        let gone = m.admit(key("a0"), 100, fresh());
        assert_eq!(gone, vec![key("a1")]);
        let shard = m.shards[0].lock();
        let (id, _) = identify_owned(&key("a0"));
        assert_eq!(shard.entries.get(&id).map(|e| e.queue), Some(Queue::Main));
    }

    /// S3-FIFO: an entry used while on probation moves to the main queue when its turn comes,
    /// and the unused ones around it leave.
    #[test]
    fn an_entry_used_on_probation_moves_to_main() {
        let m = S3FifoEviction::with_shards(10 * 100, 1);
        for i in 0..10 {
            m.admit(key(&format!("a{i}")), 100, fresh());
        }
        assert!(m.access(&key("a3"), 100, fresh()));
        for i in 0..9 {
            m.admit(key(&format!("b{i}")), 100, fresh());
        }
        assert_eq!(
            m.rejected_items(),
            0,
            "newcomers as popular as their victims get in"
        );
        assert!(m.peek(&key("a3")));
        for i in (0..10).filter(|&i| i != 3) {
            assert!(!m.peek(&key(&format!("a{i}"))), "a{i} left unused");
        }
        let shard = m.shards[0].lock();
        let (id, _) = identify_owned(&key("a3"));
        assert_eq!(shard.entries.get(&id).map(|e| e.queue), Some(Queue::Main));
    }

    /// An unused probation entry leaves in FIFO order even when the sketch counts it higher than
    /// the newcomers (a hash collision, or requests before it was stored), so it cannot make
    /// every newcomer bounce.
    #[test]
    fn a_popular_but_unused_probation_entry_does_not_stall_admission() {
        let m = S3FifoEviction::with_shards(10 * 100, 1);
        for _ in 0..4 {
            assert!(!m.access(&key("x"), 100, fresh()), "not tracked yet");
        }
        assert!(m.admit(key("x"), 100, fresh()).is_empty());
        for i in 1..10 {
            assert!(m.admit(key(&format!("a{i}")), 100, fresh()).is_empty());
        }
        assert_eq!(m.admit(key("b0"), 100, fresh()), vec![key("x")]);
        for i in 1..5 {
            assert_eq!(
                m.admit(key(&format!("b{i}")), 100, fresh()),
                vec![key(&format!("a{i}"))]
            );
        }
        assert_eq!(m.rejected_items(), 0);
    }

    #[test]
    fn storage_side_admission_and_resizing() {
        let m = S3FifoEviction::with_shards(1000, 1);
        for i in 0..10 {
            let gone = m.admit_with(key(&format!("a{i}")), 100, <[CacheEntryKey]>::to_vec);
            assert!(gone.is_empty());
        }
        // the victim is handed over while the newcomer is admitted
        let gone = m.admit_with(key("b"), 100, <[CacheEntryKey]>::to_vec);
        assert_eq!(gone, vec![key("a0")]);
        assert_eq!(m.total_size(), 1000);
        // resizing: only tracked entries, and only while the caller says it still applies
        assert_eq!(m.resize_with(&key("a0"), || true, 50, |_| ()), None);
        assert_eq!(m.resize_with(&key("b"), || false, 50, |_| ()), None);
        assert_eq!(m.weight_of(&key("b")), Some(100));
        assert_eq!(
            m.resize_with(&key("b"), || true, 50, <[CacheEntryKey]>::to_vec),
            Some(vec![])
        );
        assert_eq!((m.weight_of(&key("b")), m.total_size()), (Some(50), 950));
        // growing makes room; growing past the shard evicts the entry itself
        let gone = m.resize_with(&key("b"), || true, 250, <[CacheEntryKey]>::to_vec);
        assert_eq!(gone.map(|g| g.len()), Some(2));
        assert!(m.total_size() <= 1000);
        let gone = m.resize_with(&key("b"), || true, 1001, <[CacheEntryKey]>::to_vec);
        assert!(gone.is_some_and(|g| g.contains(&key("b"))));
        assert!(!m.peek(&key("b")));
        assert_eq!(m.total_size(), m.total_items() * 100);
    }

    #[tokio::test]
    async fn save_and_load_are_no_ops() {
        let m = S3FifoEviction::new(MIB, 64 * KIB);
        m.admit(key("x"), 10, fresh());
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().to_str().expect("utf-8");
        m.save(path).await.expect("save");
        m.load(path).await.expect("load");
        assert_eq!(std::fs::read_dir(dir.path()).expect("read").count(), 0);
        assert!(m.peek(&key("x")));
    }
}
