//! The control plane's staged-purge metrics: registered on the control registry when the
//! control plane starts, so a node exports none of them.

use super::{gauge, plain_counter, METRICS};
use once_cell::sync::Lazy;
use prometheus::{IntCounter, IntGaugeVec};

/// The staged-purge metrics of `verge control`.
pub struct StagedPurgeMetrics {
    /// `verge_control_staged_purges{state}`: staged purges kept, by state (`running`,
    /// `holding`, `paused`, `stalled`, `aborted`, `done`).
    pub purges: IntGaugeVec,
    /// `verge_control_staged_purge_waves_total`: waves of staged purges sent to the nodes.
    pub waves_sent: IntCounter,
}

/// The staged-purge metrics (see [`StagedPurgeMetrics`]).
pub static STAGED_PURGE_METRICS: Lazy<StagedPurgeMetrics> = Lazy::new(|| {
    // a handle on the same registry (a `Registry` is shared, not copied, by `clone`)
    let control = METRICS.control_registry.clone();
    StagedPurgeMetrics {
        purges: gauge(
            &control,
            "verge_control_staged_purges",
            "Staged purges kept by the control plane, by state",
            &["state"],
        ),
        waves_sent: plain_counter(
            &control,
            "verge_control_staged_purge_waves_total",
            "Waves of staged purges sent to the nodes",
        ),
    }
});
