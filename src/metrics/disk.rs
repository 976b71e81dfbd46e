//! The disk tier's metrics (`cache.disk`): registered on the node's registry the first time a
//! disk tier opens, so a node without one exports none of them.

use super::{plain_counter, plain_gauge, registered, METRICS};
use once_cell::sync::Lazy;
use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntGauge};

/// The disk tier's metrics (`cache.disk`), registered on [`METRICS`]'s registry the first time
/// a disk tier opens: a node without one exports none of them.
pub struct DiskMetrics {
    /// `verge_cache_disk_hits_total`: lookups answered from the disk tier (memory hits are
    /// `verge_cache_lookups_total{result="hit"}` minus these).
    pub hits: IntCounter,
    /// `verge_cache_disk_bytes`: bytes in the disk tier's segment files.
    pub bytes: IntGauge,
    /// `verge_cache_disk_capacity_bytes`: the disk tier's budget (`cache.disk.size`).
    pub capacity: IntGauge,
    /// `verge_cache_disk_objects`: objects in the disk tier's index.
    pub objects: IntGauge,
    /// `verge_cache_disk_evictions_total`: objects dropped with the oldest segment to stay
    /// within `cache.disk.size`.
    pub evictions: IntCounter,
    /// `verge_cache_disk_read_bytes_total`: bytes read from segment files.
    pub read_bytes: IntCounter,
    /// `verge_cache_disk_write_bytes_total`: bytes appended to segment files.
    pub write_bytes: IntCounter,
    /// `verge_cache_disk_read_seconds`: one disk read (a lookup's head and first chunk, one
    /// later chunk of a body, or the hit lane's whole record).
    pub read_seconds: Histogram,
    /// `verge_cache_disk_reads_waited_total`: disk reads the page cache could not answer
    /// whole, run again on the blocking pool (the rest were read on the request's thread).
    pub reads_waited: IntCounter,
    /// `verge_cache_disk_rebuild_progress`: share of the segment bytes found at start that the
    /// index rebuild has scanned (1: done; the disk tier answers misses until then).
    pub rebuild_progress: Gauge,
    /// `verge_cache_disk_corrupt_total`: records whose checksum did not match when read; each
    /// became a miss and was dropped.
    pub corrupt: IntCounter,
    /// `verge_cache_disk_writes_dropped_total`: objects not written to disk because the
    /// writer's queue was full (or the write failed).
    pub writes_dropped: IntCounter,
    /// `verge_cache_disk_rebuild_seconds`: how long the index rebuild at start took.
    pub rebuild_seconds: Gauge,
    /// `verge_cache_disk_checkpoints_total`: index checkpoints written.
    pub checkpoints: IntCounter,
    /// `verge_cache_disk_checkpoint_rejected_total`: index checkpoints found at start that
    /// could not be used (damaged, or not matching the segments): the rebuild scanned
    /// every segment instead.
    pub checkpoint_rejected: IntCounter,
    /// `verge_cache_disk_second_chance_total`: objects hit on disk since they were written,
    /// copied forward when their segment was the oldest and had to go.
    pub second_chance: IntCounter,
}

/// The disk tier's metrics (see [`DiskMetrics`]).
pub static DISK_METRICS: Lazy<DiskMetrics> = Lazy::new(|| {
    // a handle on the same registry (a `Registry` is shared, not copied, by `clone`)
    let registry = METRICS.node_registry.clone();
    DiskMetrics {
        hits: plain_counter(
            &registry,
            "verge_cache_disk_hits_total",
            "Lookups answered from the disk tier",
        ),
        bytes: plain_gauge(
            &registry,
            "verge_cache_disk_bytes",
            "Bytes in the disk tier's segment files",
        ),
        capacity: plain_gauge(
            &registry,
            "verge_cache_disk_capacity_bytes",
            "The disk tier's byte budget",
        ),
        objects: plain_gauge(
            &registry,
            "verge_cache_disk_objects",
            "Objects in the disk tier's index",
        ),
        evictions: plain_counter(
            &registry,
            "verge_cache_disk_evictions_total",
            "Objects dropped with the oldest segment to stay within the disk budget",
        ),
        read_bytes: plain_counter(
            &registry,
            "verge_cache_disk_read_bytes_total",
            "Bytes read from the disk tier",
        ),
        write_bytes: plain_counter(
            &registry,
            "verge_cache_disk_write_bytes_total",
            "Bytes written to the disk tier",
        ),
        read_seconds: registered(
            &registry,
            "verge_cache_disk_read_seconds",
            Histogram::with_opts(
                HistogramOpts::new(
                    "verge_cache_disk_read_seconds",
                    "One read from the disk tier",
                )
                .buckets(vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 1.0,
                ]),
            ),
        ),
        reads_waited: plain_counter(
            &registry,
            "verge_cache_disk_reads_waited_total",
            "Disk-tier reads that waited for the device, on the blocking pool",
        ),
        rebuild_progress: registered(
            &registry,
            "verge_cache_disk_rebuild_progress",
            Gauge::new(
                "verge_cache_disk_rebuild_progress",
                "Share of the disk tier scanned by the index rebuild at start (1: done)",
            ),
        ),
        corrupt: plain_counter(
            &registry,
            "verge_cache_disk_corrupt_total",
            "Disk records that failed their checksum, dropped and answered as misses",
        ),
        writes_dropped: plain_counter(
            &registry,
            "verge_cache_disk_writes_dropped_total",
            "Objects not written to the disk tier (writer queue full, or the write failed)",
        ),
        rebuild_seconds: registered(
            &registry,
            "verge_cache_disk_rebuild_seconds",
            Gauge::new(
                "verge_cache_disk_rebuild_seconds",
                "How long the disk tier's index rebuild at start took",
            ),
        ),
        checkpoints: plain_counter(
            &registry,
            "verge_cache_disk_checkpoints_total",
            "Index checkpoints of the disk tier written",
        ),
        checkpoint_rejected: plain_counter(
            &registry,
            "verge_cache_disk_checkpoint_rejected_total",
            "Index checkpoints not used at start (damaged or stale): every segment was scanned",
        ),
        second_chance: plain_counter(
            &registry,
            "verge_cache_disk_second_chance_total",
            "Objects hit on disk copied forward instead of evicted with the oldest segment",
        ),
    }
});
