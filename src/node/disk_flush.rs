//! The background service that makes the disk tier's queued writes durable when the node stops
//! (SIGTERM, or SIGQUIT at an upgrade), once the fills in flight have finished (for a moment at
//! most), then lets the directory go, so a restart or the new process of an upgrade finds them.

use crate::cache::disk::DiskStore;
use crate::cache::storage::MemoryStorage;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::time::Duration;

/// How long the flush at shutdown may take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long shutdown waits for the fills in flight to finish (and queue their disk writes)
/// before the tier is flushed and closed: a response whose client already has it whole may not
/// have been committed yet.
const FILLS_WAIT: Duration = Duration::from_secs(2);

/// Waits for shutdown, then writes and syncs everything queued for the disk tier and releases
/// its directory (requests still being answered read on; nothing more is written).
pub struct DiskFlush {
    disk: &'static DiskStore,
    memory: &'static MemoryStorage,
}

impl DiskFlush {
    /// Flushes `disk`, under `memory`, at shutdown.
    pub fn new(disk: &'static DiskStore, memory: &'static MemoryStorage) -> Self {
        DiskFlush { disk, memory }
    }
}

#[async_trait]
impl BackgroundService for DiskFlush {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        let waiting_since = std::time::Instant::now();
        while self.memory.fills() > 0 && waiting_since.elapsed() < FILLS_WAIT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let disk = self.disk;
        let flushed = tokio::task::spawn_blocking(move || disk.close(FLUSH_TIMEOUT))
            .await
            .unwrap_or(false);
        if !flushed {
            log::warn!("disk cache: queued writes not flushed at shutdown");
        }
    }
}
