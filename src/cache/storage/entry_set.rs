//! A shard's stored entries, found by their combined key without a copy of it: a hash set of
//! the entries themselves (one pointer a slot), each looked up through the key it holds, where
//! a map from key to entry spent 24 bytes a slot (at hashbrown's load of 7/8 at most, so often
//! twice the entries' number of slots).

use super::Entry;
use pingora_cache::key::HashBinary;
use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A stored entry, hashed and compared as its combined key (so the set finds it by that key).
struct Stored(Arc<Entry>);

impl Hash for Stored {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // exactly as `HashBinary` hashes, which `Borrow` requires
        self.0.combined.hash(state);
    }
}

impl PartialEq for Stored {
    fn eq(&self, other: &Self) -> bool {
        self.0.combined == other.0.combined
    }
}

impl Eq for Stored {}

impl Borrow<HashBinary> for Stored {
    fn borrow(&self) -> &HashBinary {
        &self.0.combined
    }
}

/// The entries of one shard, by combined key: what a `KeyMap<HashBinary, Arc<Entry>>` did,
/// where an entry's key is always its own `combined`.
#[derive(Default)]
pub(super) struct EntrySet {
    set: HashSet<Stored, foldhash::quality::RandomState>,
}

impl EntrySet {
    /// The entry stored under `key`.
    pub(super) fn get(&self, key: &HashBinary) -> Option<&Arc<Entry>> {
        self.set.get(key).map(|s| &s.0)
    }

    /// Whether an entry is stored under `key`.
    pub(super) fn contains_key(&self, key: &HashBinary) -> bool {
        self.set.contains(key)
    }

    /// Store `entry` under its combined key; returns the entry it replaces.
    pub(super) fn insert(&mut self, entry: Arc<Entry>) -> Option<Arc<Entry>> {
        self.set.replace(Stored(entry)).map(|s| s.0)
    }

    /// Take the entry under `key` out.
    pub(super) fn remove(&mut self, key: &HashBinary) -> Option<Arc<Entry>> {
        self.set.take(key).map(|s| s.0)
    }

    /// Every entry with its key.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&HashBinary, &Arc<Entry>)> {
        self.set.iter().map(|s| (&s.0.combined, &s.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::stored_meta::StoredMeta;
    use crate::cache::xorshift::Rng;
    use crate::cache::KeyMap;
    use bytes::Bytes;
    use pingora_cache::CacheMeta;
    use pingora_http::ResponseHeader;
    use std::sync::atomic::AtomicU32;
    use std::time::SystemTime;

    fn entry(meta: &Arc<StoredMeta>, combined: HashBinary) -> Arc<Entry> {
        Arc::new(Entry {
            combined,
            primary: combined,
            meta: meta.clone(),
            body: Bytes::new(),
            uses: AtomicU32::new(0),
        })
    }

    /// The set answers every operation as the map it replaced, keyed by each entry's own
    /// combined key, over random inserts (replacing), removals and lookups of 64 keys.
    #[test]
    fn answers_as_the_map_it_replaced() {
        let header = ResponseHeader::build(200, None).expect("header");
        let now = SystemTime::now();
        let meta =
            Arc::new(StoredMeta::from_meta(&CacheMeta::new(now, now, 0, 0, header)).expect("meta"));
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut set = EntrySet::default();
        let mut map: KeyMap<HashBinary, Arc<Entry>> = KeyMap::default();
        let same = |a: Option<&Arc<Entry>>, b: Option<&Arc<Entry>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        for _ in 0..20_000 {
            let mut key = [0u8; 16];
            key[0] = (rng.next() % 64) as u8;
            key[15] = key[0].wrapping_mul(37);
            match rng.next() % 4 {
                0 | 1 => {
                    let e = entry(&meta, key);
                    let old = map.insert(key, e.clone());
                    assert!(same(set.insert(e).as_ref(), old.as_ref()));
                }
                2 => assert!(same(set.remove(&key).as_ref(), map.remove(&key).as_ref())),
                _ => {
                    assert!(same(set.get(&key), map.get(&key)));
                    assert_eq!(set.contains_key(&key), map.contains_key(&key));
                }
            }
        }
        let mut listed: Vec<HashBinary> = set
            .iter()
            .map(|(k, e)| {
                assert!(same(Some(e), map.get(k)));
                *k
            })
            .collect();
        listed.sort_unstable();
        let mut expected: Vec<HashBinary> = map.keys().copied().collect();
        expected.sort_unstable();
        assert_eq!(listed, expected);
    }
}
