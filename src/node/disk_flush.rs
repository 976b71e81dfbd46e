//! The background service that makes the disk tier's queued writes durable when the node stops
//! (SIGTERM, or SIGQUIT at an upgrade), once the fills in flight have finished (for a moment at
//! most), then lets the directory go, so a restart or the new process of an upgrade finds them;
//! and the same close at exit, for when Pingora stopped the service before it got to it.

use crate::cache::disk::DiskStore;
use crate::cache::storage::MemoryStorage;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::OnceLock;
use std::time::Duration;

/// How long the close at shutdown may take: the flush of the queued writes, then again the
/// index checkpoint (2.9 s for a million objects on a loaded machine; see
/// docs/operations.md). The process waits for it before exiting, whatever
/// `server.grace_period` and `server.graceful_shutdown_timeout` say.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown waits for the fills in flight to finish (and queue their disk writes)
/// before the tier is flushed and closed: a response whose client already has it whole may not
/// have been committed yet.
const FILLS_WAIT: Duration = Duration::from_secs(2);

/// The disk tier a [`DiskFlush`] was made for: [`close_at_exit`] closes it.
static FLUSHED: OnceLock<&'static DiskStore> = OnceLock::new();

/// Waits for shutdown, then writes and syncs everything queued for the disk tier and releases
/// its directory (requests still being answered read on; nothing more is written).
pub struct DiskFlush {
    disk: &'static DiskStore,
    memory: &'static MemoryStorage,
}

impl DiskFlush {
    /// Flushes `disk`, under `memory`, at shutdown (and [`close_at_exit`] at exit).
    pub fn new(disk: &'static DiskStore, memory: &'static MemoryStorage) -> Self {
        let _ = FLUSHED.set(disk);
        DiskFlush { disk, memory }
    }
}

/// Once the server's runtimes are stopped, before the process exits: close the disk tier
/// (flush, checkpoint, let the directory go). Pingora drops a background service's task when
/// it stops the runtimes, right after the grace period: with `server.grace_period: 0s` (and a
/// short `graceful_shutdown_timeout`) [`DiskFlush`] may not have started its close, or may be
/// in the middle of it. Then this does it, or waits for it to end (up to 30 s
/// for the flush and again for the checkpoint).
pub fn close_at_exit() {
    if let Some(disk) = FLUSHED.get() {
        if !disk.close(CLOSE_TIMEOUT) {
            log::warn!("disk cache: queued writes not flushed at exit");
        }
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
        let flushed = tokio::task::spawn_blocking(move || disk.close(CLOSE_TIMEOUT))
            .await
            .unwrap_or(false);
        if !flushed {
            log::warn!("disk cache: queued writes not flushed at shutdown");
        }
    }
}
