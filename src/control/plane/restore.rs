//! A store restored from a backup: the invalidations a replica held beyond the backup were
//! made after it, and are appended again in the new epoch, so that a restore never brings back
//! content a purge removed. Policy versions written after the backup are not: the backup's
//! policy is the one in force (see docs/etcd.md, "Restoring etcd from a backup").

use super::{head_of, ControlPlane, InvalidationRequest, PlaneError, PlaneState};
use crate::control::store::StoreState;
use std::sync::Arc;
use std::time::Duration;

/// Invalidations appended again in one transaction (etcd allows 128 operations in one).
const BATCH: usize = 64;
/// Tries when the store cannot commit (it may have just come back), a second apart.
const ATTEMPTS: u32 = 30;

/// The invalidations `st` holds beyond the restored `state` (its highest `seq`), as requests
/// with a client id each: every replica that saw the restore derives the same ids, so that when
/// several append them again, each is appended once.
pub(super) fn lost_after(st: &PlaneState, state: &StoreState) -> Vec<InvalidationRequest> {
    let restored = head_of(state).seq;
    let epoch = st.epoch.as_deref().unwrap_or("none");
    st.invalidations
        .iter()
        .filter(|i| i.seq > restored)
        .map(|i| InvalidationRequest {
            kind: i.kind,
            target: i.target.clone(),
            soft: i.soft,
            id: Some(
                i.id.clone()
                    .unwrap_or_else(|| format!("restored-{epoch}-{}", i.seq)),
            ),
            expected_version: i.expected_version.clone(),
            nodes: i.nodes.clone(),
        })
        .collect()
}

/// Append `lost` again, on a thread of its own (the caller is the thread that applies the
/// store's changes, which the append waits for), without a purge budget.
pub(super) fn append_again(plane: Arc<ControlPlane>, lost: Vec<InvalidationRequest>) {
    let spawned = std::thread::Builder::new()
        .name("verge-restore".into())
        .spawn(move || {
            for batch in lost.chunks(BATCH) {
                append_batch(&plane, batch);
            }
        });
    if let Err(e) = spawned {
        log::error!("store restored from a backup: cannot append the lost invalidations: {e}");
    }
}

fn append_batch(plane: &ControlPlane, batch: &[InvalidationRequest]) {
    for attempt in 1..=ATTEMPTS {
        match plane.invalidate_as(batch, None) {
            Ok(accepted) => {
                let again = accepted.iter().filter(|a| !a.duplicate).count();
                log::warn!(
                    "store restored from a backup: {again} invalidations made after the backup \
                     appended again ({} already were, by another replica)",
                    batch.len() - again
                );
                return;
            }
            Err(PlaneError::Store(e)) if attempt < ATTEMPTS => {
                log::warn!("store restored from a backup: appending lost invalidations: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => {
                let targets: Vec<&str> = batch.iter().map(|r| r.target.as_str()).collect();
                log::error!(
                    "store restored from a backup: invalidations made after it not appended \
                     again ({e}); purge them again: {targets:?}"
                );
                return;
            }
        }
    }
}
