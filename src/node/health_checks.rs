//! The background service that runs active health checks for every pool of the current snapshot
//! (the tier ring's members too), and publishes the node's tier role.

use crate::metrics::METRICS;
use crate::snapshot::SharedSnapshot;
use crate::upstream::pool::Pool;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Watches the snapshot for pools with a health check and gives each one a probe loop. A loop
/// holds only a weak reference, so it ends by itself once its pool leaves the snapshot.
pub struct HealthService {
    snapshot: SharedSnapshot,
}

impl HealthService {
    /// A service that runs the active checks of every pool in the current snapshot.
    pub fn new(snapshot: SharedSnapshot) -> Self {
        HealthService { snapshot }
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut known: HashMap<usize, Weak<Pool>> = HashMap::new();
        let mut seen_snapshot = 0usize;
        loop {
            let snapshot = self.snapshot.load_full();
            if Arc::as_ptr(&snapshot) as usize != seen_snapshot {
                seen_snapshot = Arc::as_ptr(&snapshot) as usize;
                publish_tier_role(&snapshot);
            }
            known.retain(|_, w| w.strong_count() > 0);
            for pool in snapshot.all_pools() {
                let Some(interval) = pool.health_interval() else {
                    continue;
                };
                let id = Arc::as_ptr(pool) as usize;
                if known.contains_key(&id) {
                    continue;
                }
                known.insert(id, Arc::downgrade(pool));
                tokio::spawn(probe_loop(Arc::downgrade(pool), interval, shutdown.clone()));
            }
            drop(snapshot);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

/// `verge_tier_member_info{self}`: this node's id while it is a member of a tier ring.
fn publish_tier_role(snapshot: &crate::snapshot::Snapshot) {
    METRICS.tier_member.reset();
    if let Some(ring) = &snapshot.tier {
        METRICS
            .tier_member
            .with_label_values(&[&ring.self_id])
            .set(1);
    }
}

async fn probe_loop(pool: Weak<Pool>, interval: Duration, mut shutdown: ShutdownWatch) {
    loop {
        {
            let Some(pool) = pool.upgrade() else { return };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = pool.run_health_check() => {}
            }
            for slot in pool.slots() {
                METRICS
                    .backend_healthy
                    .with_label_values(&[pool.name(), &slot.label])
                    .set(i64::from(pool.is_healthy(&slot.addr)));
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
