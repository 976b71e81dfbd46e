//! The one writer of a node's shared snapshot: the control-plane poller and file reloads both
//! swap through it, one at a time, so neither overwrites a snapshot the other just stored.

use crate::config::Config;
use crate::snapshot::{SharedSnapshot, Snapshot};
use parking_lot::Mutex;
use std::sync::Arc;

/// Serialises every swap of the shared snapshot and keeps the node's file config (the base a
/// control-plane policy is applied on, and what a reload replaces).
pub struct SnapshotWriter {
    snapshot: SharedSnapshot,
    base: Mutex<Config>,
    filters: Vec<String>,
}

impl SnapshotWriter {
    /// A writer for `snapshot`, whose file config is `base`; `filters` are the names of the
    /// user filters this binary registered (routes may select only these).
    pub fn new(snapshot: SharedSnapshot, base: Config, filters: Vec<String>) -> Arc<Self> {
        crate::cache::freshness::publish_budgets(&snapshot.load().config.classes);
        Arc::new(SnapshotWriter {
            snapshot,
            base: Mutex::new(base),
            filters,
        })
    }

    /// The shared snapshot readers load.
    pub fn snapshot(&self) -> &SharedSnapshot {
        &self.snapshot
    }

    /// The registered filter names.
    pub fn filters(&self) -> Vec<&str> {
        self.filters.iter().map(String::as_str).collect()
    }

    /// The file config in force (a copy).
    pub fn base(&self) -> Config {
        self.base.lock().clone()
    }

    /// Run `decide` on the current snapshot and file config, with every other writer held off;
    /// when it returns a new snapshot (and maybe a new file config), store both before the next
    /// writer runs. Returns the stored snapshot, if any.
    pub fn update<E>(
        &self,
        decide: impl FnOnce(&Arc<Snapshot>, &Config) -> Result<Option<(Snapshot, Option<Config>)>, E>,
    ) -> Result<Option<Arc<Snapshot>>, E> {
        let mut base = self.base.lock();
        let current = self.snapshot.load_full();
        let Some((next, new_base)) = decide(&current, &base)? else {
            return Ok(None);
        };
        let next = Arc::new(next);
        // The single swap: readers see the old snapshot or the new one, never a mix.
        self.snapshot.store(next.clone());
        crate::cache::freshness::publish_budgets(&next.config.classes);
        if let Some(b) = new_base {
            *base = b;
        }
        Ok(Some(next))
    }
}
