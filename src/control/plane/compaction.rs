//! Retention: invalidations older than `invalidation_retention` leave the log and the store,
//! once `compact_after` were appended (on a shared store, by the elected replica only). The
//! store is rewritten under the writer lock, never under the state's lock that readers take.

use super::{ids_of, ControlPlane};
use crate::control::store::{StoreError, StoreState};
use crate::control::wire::{unix_ms, Invalidation};
use parking_lot::MutexGuard;
use std::time::SystemTime;

impl ControlPlane {
    /// Compact once `compact_after` invalidations were appended since the last time, if this
    /// control plane may (with a shared store: the elected replica). `writing`: no other write.
    pub(super) fn compact_when_due(&self, writing: &MutexGuard<'_, ()>) {
        let due = self.state.lock().appended_since_compaction >= self.settings.compact_after;
        if due && self.store.may_compact() {
            if let Err(e) = self.compact_writing(writing, SystemTime::now()) {
                log::error!("compaction failed (the log keeps growing): {e}");
            }
        }
    }

    /// Drop invalidations older than the retention and old policy versions from the store.
    pub fn compact(&self, now: SystemTime) -> Result<(), StoreError> {
        let writing = self.writes.lock();
        self.compact_writing(&writing, now)
    }

    /// Compact while this replica writes nothing else (`_writing`), without holding the state's
    /// lock while the store rewrites.
    fn compact_writing(
        &self,
        _writing: &MutexGuard<'_, ()>,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let cutoff = unix_ms(
            now.checked_sub(self.settings.invalidation_retention)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let old = |i: &Invalidation| i.created_ms < cutoff;
        let state = {
            let st = self.state.lock();
            let floor = st
                .invalidations
                .iter()
                .filter(|i| old(i))
                .fold(st.floor, |f, i| f.max(i.seq));
            StoreState {
                policies: st.policies.iter().cloned().collect(),
                invalidations: st
                    .invalidations
                    .iter()
                    .filter(|i| !old(i))
                    .cloned()
                    .collect(),
                floor,
                epoch: st.epoch.clone(),
                ..StoreState::default()
            }
        };
        self.store.rewrite(&state)?;
        let mut st = self.state.lock();
        // (what the watch took in meanwhile is newer than the cutoff)
        st.invalidations.retain(|i| !old(i));
        // ids are remembered as long as their invalidations are retained
        st.ids = ids_of(st.invalidations.iter());
        st.floor = st.floor.max(state.floor);
        st.appended_since_compaction = 0;
        Ok(())
    }
}
