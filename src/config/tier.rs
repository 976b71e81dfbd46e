//! The validated `tier:` settings: the ring of verge nodes that shield each other (a miss on a
//! node that does not own a key goes to the key's owner once), and this node's place in it.

use super::model::PoolSpec;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The name of the pool the ring's members form (not a name a config can give a pool: pool
/// names have no parentheses), in metrics and logs.
pub const TIER_POOL: &str = "(tier)";

/// A node's `tier:` block.
#[derive(Debug, Clone)]
pub struct TierSpec {
    /// This node's id among the ring's members.
    pub self_id: String,
    /// The key of the hop marker, shared by every member.
    pub secret: TierSecret,
    /// The ring: from the node's file, replaced by the control plane's policy when it has one.
    /// `None`: no ring yet (the node's file leaves it to a policy that has not come).
    pub ring: Option<TierRing>,
}

/// The ring every node of a fleet shares (a policy's `tier:`, or the node file's members).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierRing {
    /// Its members, in the order written.
    pub members: Vec<TierMember>,
    /// How long a hop marker stays valid either side of its timestamp.
    pub hop_window: Duration,
    /// The members as a pool: consistent (ketama) selection over their addresses, with the
    /// ring's timeouts, health check and passive ejection, and no retries.
    pub pool: PoolSpec,
}

impl TierRing {
    /// The member with this id.
    pub fn member(&self, id: &str) -> Option<&TierMember> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The member listening on `addr`.
    pub fn member_at(&self, addr: SocketAddr) -> Option<&TierMember> {
        self.members.iter().find(|m| m.addr == addr)
    }
}

/// One node of the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierMember {
    /// Its id (`tier.self` on that node).
    pub id: String,
    /// Its data-plane listener (plain HTTP), as every member reaches it.
    pub addr: SocketAddr,
}

/// The hop marker's key, read from `tier.secret_file`; never printed.
#[derive(Clone)]
pub struct TierSecret(pub Arc<[u8]>);

impl std::fmt::Debug for TierSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TierSecret(..)")
    }
}

/// The default validity of a hop marker either side of its timestamp.
pub const DEFAULT_HOP_WINDOW: Duration = Duration::from_secs(10);

/// The shortest key `tier.secret_file` may hold, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
