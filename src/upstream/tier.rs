//! The tier ring as the data plane uses it: the members as a pool (ketama over their addresses,
//! health checks, passive ejection), this node's place in it, and the hop key.

use super::hop_marker::HopKey;
use super::pool::{Pool, PoolBuildError};
use super::tier_positions::LearnedPositions;
use crate::config::{TierMember, TierRing, TierSpec};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A node's ring, built once per snapshot.
#[derive(Debug)]
pub struct Ring {
    /// The validated ring.
    pub spec: TierRing,
    /// This node's id.
    pub self_id: String,
    /// This node's address in the ring.
    pub self_addr: SocketAddr,
    /// The members as a pool, with their health and ejection state.
    pub pool: Arc<Pool>,
    /// The key hop markers are made and checked with.
    pub key: HopKey,
    /// Invalidation positions ahead of this node's that hops showed it (kept across rebuilds).
    pub learned: Arc<LearnedPositions>,
}

/// Who fetches a key this node misses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This node: it goes to the origin itself.
    Local,
    /// Another member, at this address.
    Peer(SocketAddr),
}

impl Ring {
    /// The ring for `spec`, or `None` when there is none or this node is not one of its
    /// members (it then neither forwards nor accepts hops). The pool of `previous` is reused
    /// when its spec did not change, so it keeps its health and ejection state; what it learned
    /// from hops is always kept.
    pub fn build(spec: &TierSpec, previous: Option<&Ring>) -> Result<Option<Ring>, PoolBuildError> {
        let Some(ring) = &spec.ring else {
            return Ok(None);
        };
        let Some(me) = ring.member(&spec.self_id) else {
            log::warn!(
                "tier: this node ({:?}) is not a member of the ring; it neither forwards nor \
                 accepts hops",
                spec.self_id
            );
            return Ok(None);
        };
        let pool = match previous.filter(|p| p.pool.spec == ring.pool) {
            Some(p) => p.pool.clone(),
            None => Arc::new(Pool::build(&ring.pool)?),
        };
        Ok(Some(Ring {
            spec: ring.clone(),
            self_id: spec.self_id.clone(),
            self_addr: me.addr,
            pool,
            key: HopKey::derive(&spec.secret.0),
            learned: previous.map(|p| p.learned.clone()).unwrap_or_default(),
        }))
    }

    /// The owner of a key (its hash, the same on every member): the first member on the ketama
    /// ring that is healthy and not ejected. An owner that is down hands its keys to the next
    /// member, which may be this node.
    pub fn owner(&self, key: &[u8]) -> Owner {
        match self.pool.select(key, &[]) {
            Some(addr) if addr != self.self_addr => Owner::Peer(addr),
            _ => Owner::Local,
        }
    }

    /// Another member with this id (a hop from this node itself is no hop).
    pub fn is_other_member(&self, id: &str) -> bool {
        id != self.self_id && self.spec.member(id).is_some()
    }

    /// The member at `addr`.
    pub fn member_at(&self, addr: SocketAddr) -> Option<&TierMember> {
        self.spec.member_at(addr)
    }

    /// How long a hop marker is valid either side of its timestamp, in whole seconds.
    pub fn window_secs(&self) -> u64 {
        self.spec.hop_window.as_secs().max(1)
    }

    /// The hop window.
    pub fn hop_window(&self) -> Duration {
        self.spec.hop_window
    }

    /// The invalidation position this node's hops carry: what it has `applied`, or a later one
    /// a hop showed it.
    pub fn known_position(&self, applied: u64) -> u64 {
        applied.max(self.learned.highest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn tier_config(self_id: &str, dir: &tempfile::TempDir) -> Config {
        let key = dir.path().join("k");
        std::fs::write(&key, "0123456789abcdef").expect("key");
        Config::from_yaml_str(&format!(
            "listeners: [{{listen: \"127.0.0.1:1\"}}]\npools: {{p: {{backends: [\"127.0.0.1:2\"]}}}}\nroutes: [{{hosts: [a.com], pool: p}}]\ntier:\n  self: {self_id}\n  secret_file: {}\n  members:\n    - {{id: a, addr: \"127.0.0.1:7001\"}}\n    - {{id: b, addr: \"127.0.0.1:7002\"}}\n    - {{id: c, addr: \"127.0.0.1:7003\"}}\n",
            key.display()
        ))
        .expect("config")
    }

    #[test]
    fn every_member_agrees_on_the_owner_and_keys_spread() {
        let dir = tempfile::tempdir().expect("tmp");
        let rings: Vec<Ring> = ["a", "b", "c"]
            .iter()
            .map(|id| {
                let c = tier_config(id, &dir);
                Ring::build(c.tier.as_ref().expect("tier"), None)
                    .expect("build")
                    .expect("member")
            })
            .collect();
        let mut owned = [0usize; 3];
        for i in 0..300 {
            let key = format!("key-{i}");
            let owners: Vec<Owner> = rings.iter().map(|r| r.owner(key.as_bytes())).collect();
            let local: Vec<usize> = (0..3).filter(|&n| owners[n] == Owner::Local).collect();
            assert_eq!(local.len(), 1, "exactly one member owns {key}: {owners:?}");
            let owner_addr = rings[local[0]].self_addr;
            for (n, o) in owners.iter().enumerate() {
                if n != local[0] {
                    assert_eq!(o, &Owner::Peer(owner_addr));
                }
            }
            owned[local[0]] += 1;
        }
        assert!(owned.iter().all(|&n| n > 30), "{owned:?}");
        assert!(rings[0].is_other_member("b"));
        assert!(!rings[0].is_other_member("a"));
        assert!(!rings[0].is_other_member("z"));
    }

    #[test]
    fn what_hops_showed_a_node_outlives_its_snapshot_and_goes_into_its_own_hops() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = tier_config("a", &dir);
        let spec = c.tier.as_ref().expect("tier");
        let first = Ring::build(spec, None).expect("build").expect("member");
        assert_eq!(first.known_position(3), 3);
        first.learned.learn(9, 3, std::time::SystemTime::UNIX_EPOCH);
        assert_eq!(first.known_position(3), 9);
        assert_eq!(
            first.known_position(12),
            12,
            "applied beyond what it heard of"
        );
        let next = Ring::build(spec, Some(&first))
            .expect("build")
            .expect("member");
        assert_eq!(next.known_position(3), 9, "kept across a new snapshot");
    }

    #[test]
    fn a_node_outside_the_ring_has_none() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = tier_config("a", &dir);
        let mut tier = c.tier.take().expect("tier");
        tier.self_id = "z".into();
        assert!(Ring::build(&tier, None).expect("build").is_none());
    }
}
