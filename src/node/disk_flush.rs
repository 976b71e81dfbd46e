//! The background service that makes the disk tier's queued writes durable when the node stops
//! (SIGTERM, or SIGQUIT at an upgrade), then lets the directory go, so a restart or the new
//! process of an upgrade finds them.

use crate::cache::disk::DiskStore;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::time::Duration;

/// How long the flush at shutdown may take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits for shutdown, then writes and syncs everything queued for the disk tier and releases
/// its directory (requests still being answered read on; nothing more is written).
pub struct DiskFlush {
    disk: &'static DiskStore,
}

impl DiskFlush {
    /// Flushes `disk` at shutdown.
    pub fn new(disk: &'static DiskStore) -> Self {
        DiskFlush { disk }
    }
}

#[async_trait]
impl BackgroundService for DiskFlush {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        let disk = self.disk;
        let flushed = tokio::task::spawn_blocking(move || disk.close(FLUSH_TIMEOUT))
            .await
            .unwrap_or(false);
        if !flushed {
            log::warn!("disk cache: queued writes not flushed at shutdown");
        }
    }
}
