//! The background service that frees memory held by entries a hard invalidation made unusable.

use crate::cache::CacheEngine;
use crate::metrics::METRICS;
use crate::snapshot::SharedSnapshot;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::time::Duration;

/// Sweeps the cache after each new batch of invalidations (at most once per `interval`).
pub struct ReclaimService {
    snapshot: SharedSnapshot,
    cache: &'static CacheEngine,
    interval: Duration,
}

impl ReclaimService {
    /// Sweeps `cache` against the invalidations of the current `snapshot`.
    pub fn new(snapshot: SharedSnapshot, cache: &'static CacheEngine) -> Self {
        ReclaimService {
            snapshot,
            cache,
            interval: Duration::from_secs(1),
        }
    }
}

#[async_trait]
impl BackgroundService for ReclaimService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut swept_seq = 0;
        loop {
            let snapshot = self.snapshot.load_full();
            let seq = snapshot.control.position.seq;
            if seq != swept_seq && !snapshot.control.invalidations.is_empty() {
                let cache = self.cache;
                let index = snapshot.control.invalidations.clone();
                // The sweep deserialises stored headers: keep it off the async workers.
                let removed = tokio::task::spawn_blocking(move || cache.reclaim(&index))
                    .await
                    .unwrap_or(0);
                METRICS
                    .cache_reclaimed
                    .with_label_values(&["invalidation"])
                    .inc_by(removed as u64);
                if removed > 0 {
                    log::info!("reclaimed {removed} invalidated cache entr(ies) after seq {seq}");
                }
                swept_seq = seq;
            }
            drop(snapshot);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}
