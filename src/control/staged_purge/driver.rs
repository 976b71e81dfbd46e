//! The staged purges a control plane keeps in its store, and the service that drives them.
//!
//! Every replica reads them from the store's memory (the file store's, or the one etcd's watch
//! keeps current), so `GET /v1/staged-purges` and `verge nodes` answer the same on each. A
//! change is a compare-and-set on the revision the writer read: an operator's pause, resume or
//! abort on any replica, and the driver's moves, of which the one that writes a wave commits
//! the wave's invalidation and its record together. Only the replica that drives staged purges
//! (`Store::drives_staged`) moves them on, and each of its writes carries its fencing token, so
//! one that lost the leadership writes nothing; the next driver goes on from the record.

use super::{plan_waves, NodeView, Phase, StagedError, StagedPurge, StagedRequest, KEPT};
use crate::control::liveness::{judge, Liveness};
use crate::control::plane::{ControlPlane, InvalidationRequest, PlaneError};
use crate::control::store::{Record, StagedWrite, StoreError};
use crate::control::wire::{unix_ms, InvalidationKind};
use crate::metrics::STAGED_PURGE_METRICS;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Compare-and-set attempts of one operation when another replica changed the staged purge (or
/// took its id) first.
const ATTEMPTS: usize = 5;
/// Moves of one staged purge in one tick of the driver (a wave acknowledged, the next sent).
const MOVES_PER_TICK: usize = 4;

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// The staged purges of one control plane, kept in its store.
pub struct StagedPurges {
    plane: Arc<ControlPlane>,
}

impl StagedPurges {
    /// Over `plane`'s store.
    pub fn new(plane: Arc<ControlPlane>) -> Arc<StagedPurges> {
        let purges = Arc::new(StagedPurges { plane });
        purges.publish(&purges.kept());
        purges
    }

    /// Every staged purge the store holds, oldest first, with the revision it was read at.
    fn kept(&self) -> Vec<(u64, StagedPurge)> {
        self.plane
            .store()
            .staged()
            .into_iter()
            .filter_map(|(id, s)| match StagedPurge::from_state(&s.state) {
                Ok(p) => Some((s.revision, p)),
                Err(e) => {
                    log::error!("staged purge {id}: stored state does not decode: {e}");
                    None
                }
            })
            .collect()
    }

    fn read(&self, id: u64) -> Option<(u64, StagedPurge)> {
        self.kept().into_iter().find(|(_, p)| p.id() == id)
    }

    /// The nodes that reported, as the waves see them.
    fn node_views(&self) -> Vec<NodeView> {
        let (_, nodes) = self.plane.nodes();
        let now = SystemTime::now();
        nodes
            .into_iter()
            .map(|(id, n)| {
                let age = now.duration_since(n.reported).unwrap_or_default();
                NodeView {
                    id,
                    seq: n.applied.seq,
                    liveness: judge(age, self.plane.expected_interval(&n)),
                    applies_waves: n.applied.applies_waves(),
                }
            })
            .collect()
    }

    /// Commit `purge` (`None`: remove staged purge `id`) if the store still holds it at
    /// `expected`.
    fn put(
        &self,
        id: u64,
        purge: Option<&StagedPurge>,
        expected: Option<u64>,
        fenced: bool,
    ) -> Result<(), StoreError> {
        let write = StagedWrite {
            id,
            state: purge.map(StagedPurge::to_state),
            expected,
            fenced,
        };
        self.plane.store().put_staged(&write, &[])
    }

    /// Write wave `i` of `purge` (read at `expected`) and its record in one commit; the staged
    /// purge as recorded. A wave whose client id the log already holds (written, but not
    /// recorded, before a crash) is not written again: its `seq` is recorded.
    fn write_wave(
        &self,
        purge: &StagedPurge,
        i: usize,
        expected: Option<u64>,
        fenced: bool,
    ) -> Result<StagedPurge, PlaneError> {
        let request = purge
            .wave_request(i)
            .ok_or_else(|| PlaneError::BadRequest(format!("no wave {}", i + 1)))?;
        let store = self.plane.store();
        let now = now_ms();
        let mut written = None;
        let accepted = self.plane.invalidate_through(
            std::slice::from_ref(&request),
            Some(purge.by()),
            &mut |records| {
                let seq = records.iter().find_map(|r| match r {
                    Record::Invalidation(inv) => Some(inv.seq),
                    _ => None,
                });
                let mut next = purge.clone();
                next.record_sent(i, seq.unwrap_or(0), now);
                let write = StagedWrite {
                    id: purge.id(),
                    state: Some(next.to_state()),
                    expected,
                    fenced,
                };
                store.put_staged(&write, records)?;
                written = Some(next);
                Ok(())
            },
        )?;
        let seq = accepted.first().map_or(0, |a| a.seq);
        let next = match written {
            Some(next) => {
                STAGED_PURGE_METRICS.waves_sent.inc();
                next
            }
            None => {
                log::warn!(
                    "staged purge {}: wave {} was written before as seq {seq}; recording it",
                    purge.id(),
                    i + 1
                );
                let mut next = purge.clone();
                next.record_sent(i, seq, now);
                self.put(purge.id(), Some(&next), expected, fenced)?;
                next
            }
        };
        log::info!(
            "staged purge {}: wave {} sent as seq {seq}",
            purge.id(),
            i + 1
        );
        Ok(next)
    }

    /// Plan the waves over the live nodes and write the first with the new staged purge (on
    /// any replica); the new staged purge as the API shows it.
    pub fn start(&self, request: StagedRequest, who: &str) -> Result<Value, StagedError> {
        if !matches!(
            request.kind,
            InvalidationKind::All | InvalidationKind::Host | InvalidationKind::Prefix
        ) {
            return Err(StagedError::BadRequest(format!(
                "only all, host and prefix purges are staged, not {}",
                request.kind.as_str()
            )));
        }
        let views = self.node_views();
        let known: BTreeSet<String> = views.iter().map(|n| n.id.clone()).collect();
        let old: BTreeSet<String> = views
            .iter()
            .filter(|n| !n.applies_waves)
            .map(|n| n.id.clone())
            .collect();
        let live: Vec<String> = views
            .iter()
            .filter(|n| n.liveness != Liveness::Dead && n.applies_waves)
            .map(|n| n.id.clone())
            .collect();
        let waves =
            plan_waves(&request.waves, &live, &known, &old).map_err(StagedError::BadRequest)?;
        if !old.is_empty() {
            log::warn!(
                "staged purge: nodes {old:?} apply every wave (an older version): only the last \
                 wave names them, and they skip the others"
            );
        }
        let store = self.plane.store();
        for _ in 0..ATTEMPTS {
            store.sync().map_err(PlaneError::Store)?;
            let id = store.staged().keys().next_back().map_or(1, |last| last + 1);
            let purge = StagedPurge::new(id, &request, who, waves.clone(), now_ms());
            // the first wave is written with it, so a refused one (a bad target, a spent
            // budget) is answered as such and nothing is staged
            match self.write_wave(&purge, 0, None, false) {
                Ok(sent) => {
                    log::info!(
                        "staged purge {id} by {who}: {} {:?} in {} wave(s)",
                        request.kind.as_str(),
                        request.target,
                        waves.len()
                    );
                    self.publish(&self.kept());
                    return Ok(sent.to_json());
                }
                // another replica took this id first
                Err(PlaneError::Store(StoreError::StagedChanged { .. })) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PlaneError::Store(StoreError::Unavailable(
            "other replicas kept taking the next staged purge id".into(),
        ))
        .into())
    }

    /// Move every unfinished staged purge on as far as its nodes allow, when this replica
    /// drives them; publish the metrics on every replica.
    pub fn tick(&self) {
        let kept = self.kept();
        let store = self.plane.store();
        if !store.drives_staged() || kept.iter().all(|(_, p)| p.phase().is_final()) {
            self.publish(&kept);
            return;
        }
        // start from every change committed before (an operator's pause on another replica)
        if let Err(e) = store.sync() {
            log::debug!("staged purges: {e}");
            return;
        }
        let views = self.node_views();
        for (_, p) in kept.iter().filter(|(_, p)| !p.phase().is_final()) {
            self.drive(p.id(), &views);
        }
        self.prune();
        self.publish(&self.kept());
    }

    /// Move staged purge `id` on, committing each move (fenced) on what was read.
    fn drive(&self, id: u64, views: &[NodeView]) {
        for _ in 0..MOVES_PER_TICK {
            let Some((revision, purge)) = self.read(id) else {
                return;
            };
            let mut next = purge.clone();
            let result = match next.advance(now_ms(), views) {
                Some(i) => match self.write_wave(&next, i, Some(revision), true) {
                    Ok(_) => continue,
                    Err(e @ PlaneError::Store(StoreError::StagedChanged { .. }))
                    | Err(e @ PlaneError::Store(StoreError::NotDriver)) => Err(e.to_string()),
                    Err(e) => {
                        // a spent budget or a store failure: shown, and tried again next tick
                        next.record_error(e.to_string());
                        Ok(())
                    }
                },
                None => Ok(()),
            };
            if let Err(e) = result {
                log::debug!("staged purge {id}: {e}");
                return;
            }
            // an error already shown is not written again each tick (its text may change:
            // a spent budget says how long to wait)
            let mut only_error = next.clone();
            only_error.error.clone_from(&purge.error);
            let moved = only_error != purge || purge.error.is_none() != next.error.is_none();
            if moved {
                if let Err(e) = self.put(id, Some(&next), Some(revision), true) {
                    log::debug!("staged purge {id}: not moved on: {e}");
                }
            }
            return;
        }
    }

    /// Forget the oldest finished staged purges beyond [`KEPT`] (never the newest: the next
    /// id follows it).
    fn prune(&self) {
        let kept = self.kept();
        let newest = kept.last().map(|(_, p)| p.id());
        let mut excess = kept.len().saturating_sub(KEPT);
        for (revision, p) in &kept {
            if excess == 0 {
                break;
            }
            if p.phase().is_final() && Some(p.id()) != newest {
                match self.put(p.id(), None, Some(*revision), true) {
                    Ok(()) => excess -= 1,
                    Err(e) => log::debug!("staged purge {}: not forgotten: {e}", p.id()),
                }
            }
        }
    }

    /// The invalidation staged purge `id` sends (for the scope check of an operation on it).
    pub fn request_of(&self, id: u64) -> Option<InvalidationRequest> {
        self.read(id).and_then(|(_, p)| p.wave_request(0))
    }

    /// Pause, resume or abort staged purge `id` (on any replica); it as the API shows it
    /// afterwards. A store write: call it off the API's workers.
    pub fn operate(&self, id: u64, op: &str) -> Result<Value, StagedError> {
        let store = self.plane.store();
        for _ in 0..ATTEMPTS {
            store.sync().map_err(PlaneError::Store)?;
            let (revision, mut purge) = self.read(id).ok_or(StagedError::NotFound(id))?;
            purge.operate(op, now_ms())?;
            match self.put(id, Some(&purge), Some(revision), false) {
                Ok(()) => {
                    self.publish(&self.kept());
                    return Ok(purge.to_json());
                }
                // the driver (or another operator) moved it meanwhile: read it again
                Err(StoreError::StagedChanged { .. }) => continue,
                Err(e) => return Err(PlaneError::Store(e).into()),
            }
        }
        Err(PlaneError::Store(StoreError::StagedChanged { id }).into())
    }

    /// Every staged purge kept, oldest first, as the API shows them.
    pub fn list(&self) -> Vec<Value> {
        self.kept().iter().map(|(_, p)| p.to_json()).collect()
    }

    /// One staged purge, as the API shows it.
    pub fn get(&self, id: u64) -> Option<Value> {
        self.read(id).map(|(_, p)| p.to_json())
    }

    /// For `GET /v1/nodes`: the unfinished staged purges that reach `node` (which reported
    /// `seq`), with its wave and whether it applied it.
    pub fn for_node(&self, node: &str, seq: u64) -> Vec<Value> {
        self.kept()
            .iter()
            .filter(|(_, p)| !p.phase().is_final())
            .filter_map(|(_, p)| {
                let (wave, applied) = p.wave_of(node, seq)?;
                Some(json!({"id": p.id(), "wave": wave, "applied": applied, "state": p.phase().as_str()}))
            })
            .collect()
    }

    fn publish(&self, purges: &[(u64, StagedPurge)]) {
        for phase in Phase::ALL {
            let n = purges.iter().filter(|(_, p)| p.phase() == phase).count();
            STAGED_PURGE_METRICS
                .purges
                .with_label_values(&[phase.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// The background service that moves staged purges on, a few times a second (on every
/// replica; only the one that drives them writes).
pub struct StagedPurgeDriver(pub Arc<StagedPurges>);

#[async_trait]
impl BackgroundService for StagedPurgeDriver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            // a wave is a store write (it may wait on etcd): not on this service's runtime
            let purges = self.0.clone();
            let _ = tokio::task::spawn_blocking(move || purges.tick()).await;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::WaveSpec;
    use super::*;
    use crate::control::settings::ControlSettings;
    use crate::control::store::FileStore;
    use crate::control::wire::{AppliedReport, FEATURE_WAVES};

    fn open(dir: &std::path::Path) -> (Arc<ControlPlane>, Arc<StagedPurges>) {
        let mut s = ControlSettings::from_yaml_str("insecure_no_auth: true\n").unwrap();
        s.data_dir = dir.to_path_buf();
        let plane = ControlPlane::open(s, Box::new(FileStore::open(dir).unwrap())).unwrap();
        let purges = StagedPurges::new(plane.clone());
        (plane, purges)
    }

    fn report(plane: &ControlPlane, node: &str, seq: u64) {
        let applied = AppliedReport {
            policy_version: 0,
            seq,
            applied_at_ms: 0,
            rejected: None,
            admin: None,
            features: vec![FEATURE_WAVES.into()],
        };
        plane.report_polling(node, applied, Some(Duration::from_secs(30)));
    }

    fn request() -> StagedRequest {
        StagedRequest {
            kind: InvalidationKind::All,
            target: String::new(),
            soft: false,
            waves: vec![WaveSpec::Nodes(vec!["a".into()])],
            hold: Duration::ZERO,
            ack_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_staged_purge_survives_a_restart_and_a_wave_written_but_not_recorded_is_not_written_again()
    {
        let dir = tempfile::tempdir().unwrap();
        let (plane, purges) = open(dir.path());
        report(&plane, "a", 0);
        report(&plane, "b", 0);
        let started = purges.start(request(), "ops").unwrap();
        assert_eq!(started["waves"][0]["seq"], 1);
        assert_eq!(plane.head().seq, 1);
        drop((plane, purges));

        // reopened: the staged purge is there, wave 1 recorded
        let (plane, purges) = open(dir.path());
        assert_eq!(purges.get(1).unwrap()["waves"][0]["seq"], 1);
        // the rest wave written but, as after a crash between the two, not recorded
        let (_, p) = purges.read(1).unwrap();
        let rest = p.wave_request(1).unwrap();
        let seq = plane.invalidate(&[rest], "ops").unwrap()[0].seq;
        assert_eq!(seq, 2);
        // a acknowledges wave 1: the driver records the rest as seq 2, writing nothing
        report(&plane, "a", 2);
        purges.tick();
        let shown = purges.get(1).unwrap();
        assert_eq!(shown["waves"][1]["seq"], 2, "{shown}");
        assert_eq!(plane.head().seq, 2, "the wave was not written twice");
        report(&plane, "b", 2);
        purges.tick();
        assert_eq!(purges.get(1).unwrap()["state"], "done");
        drop((plane, purges));
        let (plane, purges) = open(dir.path());
        assert_eq!(purges.get(1).unwrap()["state"], "done");
        assert_eq!(plane.invalidations_after(0).len(), 2);
        // the next staged purge gets the next id, and an operation on a finished one is refused
        assert!(purges.operate(1, "pause").is_err());
        report(&plane, "a", 2);
        let next = purges.start(request(), "ops").unwrap();
        assert_eq!(next["id"], 2);
    }

    #[test]
    fn an_operation_on_a_changed_staged_purge_reads_it_again_and_compaction_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let (plane, purges) = open(dir.path());
        report(&plane, "a", 0);
        purges.start(request(), "ops").unwrap();
        let (revision, p) = purges.read(1).unwrap();
        // a write on a revision that is no longer there is refused
        purges.put(1, Some(&p), Some(revision), false).unwrap();
        let stale = purges.put(1, Some(&p), Some(revision), false);
        assert!(
            matches!(stale, Err(StoreError::StagedChanged { id: 1 })),
            "{stale:?}"
        );
        assert!(matches!(
            purges.put(1, Some(&p), None, false),
            Err(StoreError::StagedChanged { id: 1 })
        ));
        // the operation itself reads the newest revision
        assert_eq!(purges.operate(1, "pause").unwrap()["state"], "paused");
        plane.compact(SystemTime::now()).unwrap();
        drop((plane, purges));
        let (_, purges) = open(dir.path());
        assert_eq!(purges.get(1).unwrap()["state"], "paused");
        assert_eq!(purges.operate(1, "abort").unwrap()["state"], "aborted");
    }
}
