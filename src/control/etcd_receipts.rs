//! Node receipts in etcd: `P nodes/<id>`, each under a lease of the node's own, so every
//! replica lists every node (the watch delivers each receipt), and a node that stops reporting
//! disappears from all of them when its lease expires (etcd deletes the key; the watch
//! delivers the deletion).
//!
//! The replica a node reports to writes its receipt. It grants the node a lease of `ttl` and
//! writes with it; while that lease has more than two thirds of its time left, later reports
//! are written (with the same lease) only when urgent (another policy version, another
//! refusal), and the first report after that grants a new lease and writes. So the key lives
//! as long as the node keeps reporting and expires between two thirds of `ttl` and `ttl` after
//! its last report, and a purge does not make every node's receipt a write: the `seq` other
//! replicas list for a node may be up to a third of `ttl` old (the replica it polls has it
//! now). A node that moves to another replica is written under that replica's lease; the old
//! one expires with nothing attached.

use super::etcd_store::unavailable;
use super::store::StoreError;
use etcd_client::{Client, PutOptions};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The lease this replica holds for each node it writes receipts for.
#[derive(Debug, Default)]
pub(super) struct ReceiptLeases {
    held: Mutex<HashMap<String, Held>>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    id: i64,
    granted: Instant,
    ttl: Duration,
}

impl Held {
    /// Whether a write may still use this lease for a receipt that should live `ttl`.
    fn fresh(&self, ttl: Duration) -> bool {
        self.ttl == ttl && self.granted.elapsed() < ttl / 3
    }
}

/// Write `receipt` at `key` under node `node`'s lease (a new one when it has none fresh); with
/// a fresh lease, only when `urgent`.
pub(super) async fn put(
    client: &Client,
    leases: &ReceiptLeases,
    node: &str,
    key: String,
    receipt: Vec<u8>,
    ttl: Duration,
    urgent: bool,
) -> Result<(), StoreError> {
    let held = leases.held.lock().get(node).copied();
    if let Some(h) = held.filter(|h| h.fresh(ttl)) {
        if !urgent {
            return Ok(());
        }
        let options = PutOptions::new().with_lease(h.id);
        match client
            .clone()
            .put(key.clone(), receipt.clone(), Some(options))
            .await
        {
            Ok(_) => return Ok(()),
            // the lease may be gone (expired while this replica was paused): grant another
            Err(e) => log::debug!("node {node}: receipt under lease {:x}: {e}", h.id),
        }
    }
    let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    let granted = Instant::now();
    let lease = client
        .clone()
        .lease_grant(secs, None)
        .await
        .map_err(|e| unavailable(format!("lease for node {node}: {e}")))?;
    let options = PutOptions::new().with_lease(lease.id());
    client
        .clone()
        .put(key, receipt, Some(options))
        .await
        .map_err(unavailable)?;
    leases.held.lock().insert(
        node.to_string(),
        Held {
            id: lease.id(),
            granted,
            ttl,
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_reused_for_a_third_of_its_time_and_only_for_the_same_ttl() {
        let ttl = Duration::from_secs(30);
        let h = Held {
            id: 1,
            granted: Instant::now(),
            ttl,
        };
        assert!(h.fresh(ttl));
        assert!(!h.fresh(Duration::from_secs(15)));
        let old = Held {
            granted: Instant::now() - Duration::from_secs(11),
            ..h
        };
        assert!(!old.fresh(ttl));
    }
}
