//! Invalidation positions a node learned from verified hops before applying them itself, and
//! which stored entries are new enough to serve a hop from a member at such a position.
//!
//! A member that sends a hop at position `s` has applied every invalidation up to `s`, so the
//! control plane had issued them all before the hop arrived. An entry whose origin fetch
//! started after that moment reflects them, whatever this node has applied: it may be served to
//! hops at `s` or behind. An older one may not (the owner fetches anew). So the first hop of a
//! burst from members ahead refetches, and the others wait on that fetch (the cache lock) and
//! are served its answer, instead of each going to the origin.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// How many learned positions are kept (the lowest are dropped first: fewer records can only
/// make an entry look older, never newer).
const KEPT: usize = 64;

/// The positions ahead of this node's own that verified hops showed it, each with when it first
/// heard of it (to the millisecond, as entries record when their fetch started).
#[derive(Debug, Default)]
pub struct LearnedPositions {
    first_seen: Mutex<BTreeMap<u64, SystemTime>>,
}

impl LearnedPositions {
    /// A verified hop showed position `seq` at `now`; this node has applied up to `applied`.
    /// Positions at or behind `applied` are forgotten: the node's own index covers them.
    pub fn learn(&self, seq: u64, applied: u64, now: SystemTime) {
        let mut seen = self.first_seen.lock();
        seen.retain(|s, _| *s > applied);
        if seq > applied {
            seen.entry(seq).or_insert_with(|| to_millis(now));
        }
        while seen.len() > KEPT {
            seen.pop_first();
        }
    }

    /// Whether an entry whose fetch started at `fetched` reflects every invalidation up to
    /// `seq`: it started after this node heard of `seq` or of a later position.
    pub fn covers(&self, seq: u64, fetched: SystemTime) -> bool {
        self.first_seen
            .lock()
            .range(seq..)
            .any(|(_, heard)| *heard <= fetched)
    }

    /// The highest position learned (0: none). A node passes it on in its own hops, so an owner
    /// that lags does not serve it what it would refuse to serve the member it learned it from.
    pub fn highest(&self) -> u64 {
        self.first_seen
            .lock()
            .last_key_value()
            .map_or(0, |(seq, _)| *seq)
    }
}

/// `t` cut to whole milliseconds (what an entry's fetch time keeps), so a fetch that started in
/// the same millisecond as a position was heard of still counts as after it.
fn to_millis(t: SystemTime) -> SystemTime {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn an_entry_fetched_after_a_position_was_heard_of_covers_it_and_those_before() {
        let p = LearnedPositions::default();
        p.learn(5, 2, at(1_000));
        p.learn(5, 2, at(2_000)); // the first time counts
        assert!(p.covers(5, at(1_000)));
        assert!(p.covers(3, at(1_500)), "a position behind 5 is covered too");
        assert!(!p.covers(5, at(999)), "fetched before anyone said 5");
        assert!(!p.covers(6, at(5_000)), "6 was never heard of");
        p.learn(7, 2, at(3_000));
        assert!(p.covers(6, at(3_000)));
        assert!(!p.covers(6, at(2_999)));
        assert_eq!(p.highest(), 7);
    }

    #[test]
    fn positions_the_node_applied_are_forgotten_and_the_list_is_bounded() {
        let p = LearnedPositions::default();
        p.learn(3, 0, at(10));
        p.learn(4, 3, at(20)); // the node applied 3 meanwhile
        assert!(
            !p.covers(3, at(15)),
            "3 was forgotten; 4 was heard of at 20"
        );
        p.learn(2, 4, at(30)); // behind the node: nothing to learn
        assert_eq!(p.highest(), 0);
        for seq in 10..10 + 2 * KEPT as u64 {
            p.learn(seq, 4, at(seq));
        }
        assert_eq!(p.first_seen.lock().len(), KEPT);
        assert_eq!(p.highest(), 9 + 2 * KEPT as u64);
        assert!(
            !p.covers(10, at(10)),
            "the lowest were dropped: only later records can vouch now"
        );
        assert!(p.covers(10, at(10 + 2 * KEPT as u64)));
    }

    #[test]
    fn a_fetch_in_the_millisecond_a_position_was_heard_of_counts_as_after_it() {
        let p = LearnedPositions::default();
        let heard = at(5_000) + Duration::from_micros(700);
        p.learn(1, 0, heard);
        assert!(p.covers(1, at(5_000)));
    }
}
