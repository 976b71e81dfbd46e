//! What nodes report: each node's receipt (what it applied, what it refused, how often it
//! polls), kept per node and listed by `/v1/nodes`. On a shared store a receipt is also
//! written under the node's lease, so every replica lists every node and a node that stops
//! reporting disappears from all of them when its lease expires.

use super::{gauge, ControlPlane, NodeStatus, PlaneState};
use crate::control::wire::from_unix_ms;
use crate::control::wire::{unix_ms, AppliedReport, Position, RejectedSnapshot};
use crate::metrics::METRICS;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// A receipt's lease lasts this many of the node's report intervals.
const LEASE_INTERVALS: u32 = 3;
/// The shortest lease (etcd's own minimum is about 1.5 election timeouts).
const MIN_LEASE: Duration = Duration::from_secs(3);

/// A node's receipt as a shared store keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    applied: AppliedReport,
    reported_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    poll_interval_ms: Option<u64>,
}

impl Receipt {
    fn of(status: &NodeStatus) -> Receipt {
        Receipt {
            applied: status.applied.clone(),
            reported_ms: unix_ms(status.reported),
            poll_interval_ms: status
                .poll_interval
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    fn decode(node: &str, bytes: &[u8]) -> Option<NodeStatus> {
        match serde_json::from_slice::<Receipt>(bytes) {
            Ok(r) => Some(NodeStatus {
                applied: r.applied,
                reported: from_unix_ms(r.reported_ms),
                poll_interval: r.poll_interval_ms.map(Duration::from_millis),
            }),
            Err(e) => {
                log::warn!("node {node}: stored receipt does not decode: {e}");
                None
            }
        }
    }
}

/// Every stored receipt, decoded (those that do not decode are skipped).
pub(super) fn decode_all(receipts: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, NodeStatus> {
    receipts
        .into_iter()
        .filter_map(|(node, bytes)| Some((node.clone(), Receipt::decode(&node, &bytes)?)))
        .collect()
}

/// Take in receipts another replica (or this one) wrote, and those whose lease expired.
pub(super) fn take(st: &mut PlaneState, list: Vec<(String, Option<Vec<u8>>)>) {
    for (node, bytes) in list {
        match bytes.and_then(|b| Receipt::decode(&node, &b)) {
            Some(status) => {
                let newer = st
                    .nodes
                    .get(&node)
                    .is_none_or(|have| status.reported >= have.reported);
                if newer {
                    st.nodes.insert(node, status);
                }
            }
            None => {
                if st.nodes.remove(&node).is_some() {
                    log::info!("node {node}: its lease expired; no longer listed");
                }
                forget_gauges(&node);
            }
        }
    }
}

/// Drop a node's per-node gauges.
fn forget_gauges(node: &str) {
    let _ = METRICS.control_node_seq_lag.remove_label_values(&[node]);
    let _ = METRICS.control_node_policy_lag.remove_label_values(&[node]);
    let _ = METRICS.control_node_rejecting.remove_label_values(&[node]);
    let _ = METRICS.control_node_report_age.remove_label_values(&[node]);
}

impl ControlPlane {
    /// Record what a node applied.
    pub fn report(&self, node: &str, applied: AppliedReport) {
        self.report_polling(node, applied, None);
    }

    /// Record what a node applied, and the wait of its long polls (it reports before each).
    pub fn report_polling(
        &self,
        node: &str,
        applied: AppliedReport,
        poll_interval: Option<Duration>,
    ) {
        let mut applied = applied;
        if let Some(r) = &mut applied.rejected {
            // what a node sends is kept per node: bounded whatever it sends
            *r = RejectedSnapshot::new(
                Position {
                    policy_version: r.policy_version,
                    seq: r.seq,
                },
                &r.reason,
                &r.error,
            );
        }
        let mut st = self.state.lock();
        let was_rejecting = st.nodes.get(node).and_then(|n| n.applied.rejected.as_ref());
        if let Some(r) = &applied.rejected {
            if was_rejecting != Some(r) {
                log::warn!(
                    "node {node} refused snapshot {}.{} ({}): {}",
                    r.policy_version,
                    r.seq,
                    r.reason,
                    r.error
                );
            }
        }
        let status = NodeStatus {
            applied,
            reported: SystemTime::now(),
            poll_interval,
        };
        if self.store.shared() {
            // every replica lists it until the node stops reporting for a few intervals; a new
            // `seq` alone can wait for the lease's renewal (purges are many, nodes too)
            let ttl = (self.expected_interval(&status) * LEASE_INTERVALS).max(MIN_LEASE);
            let urgent = st.nodes.get(node).is_none_or(|was| {
                was.applied.policy_version != status.applied.policy_version
                    || was.applied.rejected != status.applied.rejected
            });
            match serde_json::to_vec(&Receipt::of(&status)) {
                Ok(bytes) => self.store.put_receipt(node, bytes, ttl, urgent),
                Err(e) => log::error!("node {node}: receipt not encoded: {e}"),
            }
        }
        st.nodes.insert(node.to_string(), status);
    }

    /// How often a node is expected to report: its long-poll wait, capped by `max_wait` (the
    /// cap itself when it did not say).
    pub fn expected_interval(&self, status: &NodeStatus) -> Duration {
        let cap = self.settings.max_wait;
        status.poll_interval.map_or(cap, |w| w.min(cap))
    }

    /// Every node that reported, with the head to compare against; refreshes the lag gauges.
    pub fn nodes(&self) -> (Position, Vec<(String, NodeStatus)>) {
        let st = self.state.lock();
        let now = SystemTime::now();
        for (id, n) in &st.nodes {
            let seq_lag = st.head.seq.saturating_sub(n.applied.seq);
            let policy_lag = st
                .head
                .policy_version
                .saturating_sub(n.applied.policy_version);
            METRICS
                .control_node_seq_lag
                .with_label_values(&[id])
                .set(gauge(seq_lag));
            METRICS
                .control_node_policy_lag
                .with_label_values(&[id])
                .set(gauge(policy_lag));
            METRICS
                .control_node_rejecting
                .with_label_values(&[id])
                .set(i64::from(n.applied.rejected.is_some()));
            let age = now.duration_since(n.reported).map_or(0, |d| d.as_secs());
            METRICS
                .control_node_report_age
                .with_label_values(&[id])
                .set(gauge(age));
        }
        (
            st.head,
            st.nodes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }
}
