//! Staged purges: a purge of everything (or of a whole host, or a prefix) sent to the nodes one
//! wave at a time. The first waves are shares or named groups of the live nodes; the last is
//! every other node. The next wave goes out once every node of the current one acknowledged it
//! (in its receipt) and a hold time passed. A staged purge can be paused, resumed or aborted.
//!
//! A staged purge lives in the store (`Store::put_staged`): the file store's log, or etcd,
//! where every replica sees it. Each change is a compare-and-set on what the writer read, and a
//! wave is written in one commit with the staged purge's record of it, so a wave written is
//! recorded and never written twice. Any replica starts, shows, pauses, resumes and aborts
//! one; only the replica that drives staged purges (`Store::drives_staged`: the elected leader
//! on etcd, whose fencing token every one of its writes carries) writes the later waves
//! (`driver.rs`).

mod driver;

pub use driver::{StagedPurgeDriver, StagedPurges};

use super::liveness::Liveness;
use super::plane::{InvalidationRequest, PlaneError};
use super::wire::{InvalidationKind, NodeSelector};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// How a wave picks its nodes, as the API takes it: `"10%"` or a list of node ids.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum WaveSpec {
    /// A share of the live nodes, counted from the first wave (cumulative), rounded up.
    Share(String),
    /// These nodes.
    Nodes(Vec<String>),
}

/// Staged purges a control plane keeps, finished ones included (the newest [`KEPT`]).
const KEPT: usize = 32;

/// Waves when none are given: a tenth of the nodes, then the rest.
pub const DEFAULT_WAVES: &str = "10%";
/// Hold after a wave is acknowledged when none is given.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(60);
/// How long a wave waits for its nodes' acknowledgements when nothing is given.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(300);

/// What a staged purge asks for.
#[derive(Debug, Clone)]
pub struct StagedRequest {
    /// `all`, `host` or `prefix`.
    pub kind: InvalidationKind,
    /// The host or prefix (empty for `all`).
    pub target: String,
    /// Mark stale instead of removing.
    pub soft: bool,
    /// The waves before the last one (which is every other node).
    pub waves: Vec<WaveSpec>,
    /// How long to wait after a wave is acknowledged before the next one.
    pub hold: Duration,
    /// How long a wave waits for acknowledgements before the staged purge stalls.
    pub ack_timeout: Duration,
}

/// Where a staged purge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Sending a wave, or waiting for its nodes to acknowledge it.
    Running,
    /// The current wave is acknowledged; the next goes out after the hold.
    Holding,
    /// Stopped by an operator until resumed.
    Paused,
    /// A wave was not acknowledged within the timeout: waits for an operator (resume sends the
    /// next wave anyway, abort stops).
    Stalled,
    /// Stopped for good: the waves not sent never will be.
    Aborted,
    /// Every wave was sent and acknowledged.
    Done,
}

impl Phase {
    /// The word the API, the CLI and the metrics show.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Holding => "holding",
            Phase::Paused => "paused",
            Phase::Stalled => "stalled",
            Phase::Aborted => "aborted",
            Phase::Done => "done",
        }
    }

    /// Every phase, for the metrics.
    pub const ALL: [Phase; 6] = [
        Phase::Running,
        Phase::Holding,
        Phase::Paused,
        Phase::Stalled,
        Phase::Aborted,
        Phase::Done,
    ];

    pub(crate) fn is_final(self) -> bool {
        matches!(self, Phase::Aborted | Phase::Done)
    }
}

/// One wave: which nodes, and how far it got (times in Unix milliseconds, so that another
/// replica or a restarted one goes on from them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Wave {
    selector: NodeSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sent_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acked_ms: Option<u64>,
    /// Nodes of the wave that have not reported its `seq` yet (at the last look).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending: Vec<String>,
}

/// A node as a staged purge needs it: its id, what it applied, whether it is alive.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// The node id.
    pub id: String,
    /// The last `seq` it reported.
    pub seq: u64,
    /// Alive, late or dead.
    pub liveness: Liveness,
    /// Whether it skips the waves that do not name it (its reports say so); a node older than
    /// staged purges applies every wave, so it is only ever in the last one.
    pub applies_waves: bool,
}

/// One staged purge, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedPurge {
    id: u64,
    kind: InvalidationKind,
    target: String,
    soft: bool,
    hold_ms: u64,
    ack_timeout_ms: u64,
    by: String,
    created_ms: u64,
    waves: Vec<Wave>,
    current: usize,
    phase: Phase,
    /// The last error sending a wave (a spent purge budget, a store failure), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Why a staged purge cannot start, or an operation on one is refused.
#[derive(Debug, thiserror::Error)]
pub enum StagedError {
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such staged purge (404).
    #[error("no staged purge {0}")]
    NotFound(u64),
    /// The operation does not fit its phase (409).
    #[error("staged purge {id} is {phase}: cannot {op}")]
    Conflict {
        /// The staged purge.
        id: u64,
        /// Its phase.
        phase: &'static str,
        /// What was asked.
        op: &'static str,
    },
    /// The first wave could not be written.
    #[error(transparent)]
    Plane(#[from] PlaneError),
}

/// Split `nodes` (the live ones that skip waves not naming them, in id order) into waves by
/// `specs`; the last wave is every node not in an earlier one. `known` are all node ids that
/// ever reported, `old` those whose reports do not say they skip waves (they apply every wave,
/// so they can only be in the last).
pub fn plan_waves(
    specs: &[WaveSpec],
    nodes: &[String],
    known: &BTreeSet<String>,
    old: &BTreeSet<String>,
) -> Result<Vec<NodeSelector>, String> {
    let mut taken: Vec<String> = Vec::new();
    let mut waves = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let members = match spec {
            WaveSpec::Share(text) => {
                let pct = text
                    .trim()
                    .strip_suffix('%')
                    .and_then(|p| p.trim().parse::<u64>().ok())
                    .filter(|p| (1..=100).contains(p))
                    .ok_or_else(|| format!("waves[{i}]: {text:?} is not a share of 1% to 100%"))?;
                if pct == 100 {
                    if i + 1 != specs.len() {
                        return Err(format!("waves[{i}]: 100% must be the last wave"));
                    }
                    break;
                }
                let upto = (pct as usize * nodes.len()).div_ceil(100).max(1);
                let free: Vec<String> = nodes
                    .iter()
                    .filter(|n| !taken.contains(n))
                    .take(upto.saturating_sub(taken.len()))
                    .cloned()
                    .collect();
                free
            }
            WaveSpec::Nodes(ids) => {
                if ids.is_empty() {
                    return Err(format!("waves[{i}]: a group names at least one node"));
                }
                for id in ids {
                    if !known.contains(id) {
                        return Err(format!("waves[{i}]: no node {id:?} ever reported"));
                    }
                    if taken.contains(id) {
                        return Err(format!("waves[{i}]: node {id:?} is in an earlier wave"));
                    }
                    if old.contains(id) {
                        return Err(format!(
                            "waves[{i}]: node {id:?} runs a version that applies every wave: \
                             it can only be in the last one"
                        ));
                    }
                }
                ids.clone()
            }
        };
        if members.is_empty() {
            continue;
        }
        taken.extend(members.iter().cloned());
        waves.push(NodeSelector::Only(members));
    }
    waves.push(NodeSelector::Except(taken));
    Ok(waves)
}

/// The client id of a staged purge's wave: a wave sent again (after a crash between its write
/// and its record on the file store) is a redelivery, and purges nothing twice.
fn wave_client_id(id: u64, created_ms: u64, wave: usize) -> String {
    format!("staged-{id}-{created_ms}-wave-{}", wave + 1)
}

impl StagedPurge {
    /// A new staged purge `id` of `request` by `who`, over `waves`, none sent yet.
    pub fn new(
        id: u64,
        request: &StagedRequest,
        who: &str,
        waves: Vec<NodeSelector>,
        now_ms: u64,
    ) -> StagedPurge {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        StagedPurge {
            id,
            kind: request.kind,
            target: request.target.clone(),
            soft: request.soft,
            hold_ms: ms(request.hold),
            ack_timeout_ms: ms(request.ack_timeout),
            by: who.to_string(),
            created_ms: now_ms,
            waves: waves
                .into_iter()
                .map(|selector| Wave {
                    selector,
                    seq: None,
                    sent_ms: None,
                    acked_ms: None,
                    pending: Vec::new(),
                })
                .collect(),
            current: 0,
            phase: Phase::Running,
            error: None,
        }
    }

    /// Its id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Who started it (each wave is charged to their purge budget).
    pub fn by(&self) -> &str {
        &self.by
    }

    /// Where it stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The state the store keeps.
    pub fn to_state(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// A stored state, read back.
    pub fn from_state(state: &Value) -> Result<StagedPurge, String> {
        StagedPurge::deserialize(state).map_err(|e| e.to_string())
    }

    /// The invalidation request of wave `i`, with its client id.
    pub fn wave_request(&self, i: usize) -> Option<InvalidationRequest> {
        let wave = self.waves.get(i)?;
        Some(InvalidationRequest {
            kind: self.kind,
            target: self.target.clone(),
            soft: self.soft,
            id: Some(wave_client_id(self.id, self.created_ms, i)),
            expected_version: None,
            nodes: Some(wave.selector.clone()),
        })
    }

    /// Wave `i` was written as `seq` at `now_ms`.
    pub fn record_sent(&mut self, i: usize, seq: u64, now_ms: u64) {
        if let Some(w) = self.waves.get_mut(i) {
            w.seq = Some(seq);
            w.sent_ms = Some(now_ms);
        }
        self.error = None;
    }

    /// A wave could not be written (a spent budget, a store failure): shown until one is.
    pub fn record_error(&mut self, error: String) {
        self.error = Some(error);
    }

    /// Move on as far as the nodes allow at `now_ms`: see who acknowledged the current wave,
    /// hold, go to the next. `Some(i)`: wave `i` is to be written now (nothing moves on until
    /// it is recorded as sent).
    pub fn advance(&mut self, now_ms: u64, nodes: &[NodeView]) -> Option<usize> {
        loop {
            if matches!(self.phase, Phase::Paused | Phase::Stalled) || self.phase.is_final() {
                return None;
            }
            let Some(wave) = self.waves.get(self.current) else {
                self.phase = Phase::Done;
                return None;
            };
            let Some(seq) = wave.seq else {
                return Some(self.current);
            };
            if wave.acked_ms.is_none() {
                let pending: Vec<String> = match &wave.selector {
                    NodeSelector::Only(ids) => ids
                        .iter()
                        .filter(|id| !nodes.iter().any(|n| &n.id == *id && n.seq >= seq))
                        .cloned()
                        .collect(),
                    // the rest: every node that still talks to the control plane (a dead one
                    // applies it from the log when it is back)
                    NodeSelector::Except(ids) => nodes
                        .iter()
                        .filter(|n| !ids.contains(&n.id) && n.liveness != Liveness::Dead)
                        .filter(|n| n.seq < seq)
                        .map(|n| n.id.clone())
                        .collect(),
                };
                let sent_ms = wave.sent_ms.unwrap_or(now_ms);
                let wave = &mut self.waves[self.current];
                wave.pending = pending;
                if !wave.pending.is_empty() {
                    if now_ms.saturating_sub(sent_ms) >= self.ack_timeout_ms {
                        log::warn!(
                            "staged purge {}: wave {} not acknowledged by {:?} within {}ms: stalled",
                            self.id,
                            self.current + 1,
                            wave.pending,
                            self.ack_timeout_ms
                        );
                        self.phase = Phase::Stalled;
                    }
                    return None;
                }
                wave.acked_ms = Some(now_ms);
            }
            if self.current + 1 == self.waves.len() {
                self.phase = Phase::Done;
                log::info!("staged purge {}: every wave acknowledged", self.id);
                return None;
            }
            let acked = self.waves[self.current].acked_ms.unwrap_or(now_ms);
            if now_ms.saturating_sub(acked) < self.hold_ms {
                self.phase = Phase::Holding;
                return None;
            }
            self.phase = Phase::Running;
            self.current += 1;
        }
    }

    /// Pause, resume or abort at `now_ms`.
    pub fn operate(&mut self, op: &str, now_ms: u64) -> Result<(), StagedError> {
        let refuse = |s: &StagedPurge, op: &'static str| StagedError::Conflict {
            id: s.id,
            phase: s.phase.as_str(),
            op,
        };
        match op {
            "pause" if !self.phase.is_final() && self.phase != Phase::Stalled => {
                self.phase = Phase::Paused
            }
            "pause" => return Err(refuse(self, "pause")),
            "resume" if self.phase == Phase::Paused => self.phase = Phase::Running,
            "resume" if self.phase == Phase::Stalled => {
                // the operator takes the missing acknowledgements on themselves
                if let Some(w) = self.waves.get_mut(self.current) {
                    w.acked_ms = Some(now_ms);
                }
                self.phase = Phase::Running;
            }
            "resume" => return Err(refuse(self, "resume")),
            "abort" if !self.phase.is_final() => self.phase = Phase::Aborted,
            "abort" => return Err(refuse(self, "abort")),
            other => {
                return Err(StagedError::BadRequest(format!(
                    "{other:?} is not pause, resume or abort"
                )))
            }
        }
        log::info!("staged purge {}: {op} ({})", self.id, self.phase.as_str());
        Ok(())
    }

    /// The nodes wave `i` reaches, as the API shows them.
    fn wave_json(&self, i: usize, w: &Wave) -> Value {
        let (reaches, except) = match &w.selector {
            NodeSelector::Only(ids) => (json!(ids), Value::Null),
            NodeSelector::Except(ids) => (json!("rest"), json!(ids)),
        };
        let state = match (w.seq, w.acked_ms) {
            (None, _) if self.phase == Phase::Aborted || i < self.current => "skipped",
            (None, _) => "waiting",
            (Some(_), None) => "sent",
            (Some(_), Some(_)) => "acknowledged",
        };
        json!({
            "wave": i + 1,
            "nodes": reaches,
            "except": except,
            "state": state,
            "seq": w.seq,
            "sent_ms": w.sent_ms,
            "pending": w.pending,
        })
    }

    /// The staged purge as the API shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "kind": self.kind.as_str(),
            "target": self.target,
            "soft": self.soft,
            "state": self.phase.as_str(),
            "wave": (self.current + 1).min(self.waves.len()),
            "waves": self.waves.iter().enumerate().map(|(i, w)| self.wave_json(i, w)).collect::<Vec<_>>(),
            "hold_secs": self.hold_ms as f64 / 1000.0,
            "ack_timeout_secs": self.ack_timeout_ms as f64 / 1000.0,
            "created_ms": self.created_ms,
            "by": self.by,
            "error": self.error,
        })
    }

    /// The wave that reaches `node`, by number, and whether the node, at `seq`, applied it:
    /// for `verge nodes`.
    pub fn wave_of(&self, node: &str, seq: u64) -> Option<(usize, bool)> {
        let i = self.waves.iter().position(|w| w.selector.reaches(node))?;
        Some((i + 1, self.waves[i].seq.is_some_and(|s| seq >= s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn share(s: &str) -> WaveSpec {
        WaveSpec::Share(s.into())
    }

    #[test]
    fn shares_round_up_and_the_last_wave_is_the_rest() {
        let nodes = ids(&["a", "b", "c"]);
        let known: BTreeSet<String> = nodes.iter().cloned().collect();
        let none = BTreeSet::new();
        let w = plan_waves(&[share("10%")], &nodes, &known, &none).unwrap();
        assert_eq!(
            w,
            vec![
                NodeSelector::Only(ids(&["a"])),
                NodeSelector::Except(ids(&["a"]))
            ]
        );
        let w = plan_waves(
            &[share("33%"), share("66%"), share("100%")],
            &nodes,
            &known,
            &none,
        )
        .unwrap();
        assert_eq!(
            w,
            vec![
                NodeSelector::Only(ids(&["a"])),
                NodeSelector::Only(ids(&["b"])),
                NodeSelector::Except(ids(&["a", "b"]))
            ]
        );
        // a share that adds no node makes no wave
        let w = plan_waves(&[share("10%"), share("20%")], &nodes, &known, &none).unwrap();
        assert_eq!(w.len(), 2);
        let w = plan_waves(
            &[WaveSpec::Nodes(ids(&["c"])), share("50%")],
            &nodes,
            &known,
            &none,
        )
        .unwrap();
        assert_eq!(
            w,
            vec![
                NodeSelector::Only(ids(&["c"])),
                NodeSelector::Only(ids(&["a"])),
                NodeSelector::Except(ids(&["c", "a"]))
            ]
        );
        // no live node: one wave, to everyone
        assert_eq!(
            plan_waves(&[share("10%")], &[], &known, &none).unwrap(),
            vec![NodeSelector::Except(vec![])]
        );
        for bad in [
            vec![share("0%")],
            vec![share("ten")],
            vec![share("100%"), share("10%")],
            vec![WaveSpec::Nodes(ids(&["x"]))],
            vec![WaveSpec::Nodes(ids(&["a"])), WaveSpec::Nodes(ids(&["a"]))],
            vec![WaveSpec::Nodes(vec![])],
        ] {
            assert!(plan_waves(&bad, &nodes, &known, &none).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_node_that_applies_every_wave_is_only_in_the_last() {
        let nodes = ids(&["a", "b"]);
        let known: BTreeSet<String> = ids(&["a", "b", "old"]).into_iter().collect();
        let old: BTreeSet<String> = ids(&["old"]).into_iter().collect();
        // shares are taken from the nodes that skip waves; the old one is in the rest
        let w = plan_waves(&[share("50%")], &nodes, &known, &old).unwrap();
        assert_eq!(
            w,
            vec![
                NodeSelector::Only(ids(&["a"])),
                NodeSelector::Except(ids(&["a"]))
            ]
        );
        let err = plan_waves(&[WaveSpec::Nodes(ids(&["old"]))], &nodes, &known, &old).unwrap_err();
        assert!(err.contains("applies every wave"), "{err}");
    }

    fn request(hold: u64) -> StagedRequest {
        StagedRequest {
            kind: InvalidationKind::All,
            target: String::new(),
            soft: false,
            waves: vec![],
            hold: Duration::from_secs(hold),
            ack_timeout: Duration::from_secs(10),
        }
    }

    fn view(id: &str, seq: u64) -> NodeView {
        NodeView {
            id: id.into(),
            seq,
            liveness: Liveness::Alive,
            applies_waves: true,
        }
    }

    /// Move `p` on at `now` (seconds), writing each wave it asks for as the next `seq`.
    fn run(p: &mut StagedPurge, now: u64, nodes: &[NodeView], next: &mut u64) {
        while let Some(i) = p.advance(now * 1000, nodes) {
            *next += 1;
            p.record_sent(i, *next, now * 1000);
        }
    }

    #[test]
    fn a_wave_waits_for_its_nodes_then_the_hold_and_abort_stops_the_rest() {
        let waves = vec![
            NodeSelector::Only(ids(&["a"])),
            NodeSelector::Only(ids(&["b"])),
            NodeSelector::Except(ids(&["a", "b"])),
        ];
        let mut p = StagedPurge::new(1, &request(5), "ops", waves, 0);
        let mut next = 10;
        run(&mut p, 0, &[view("a", 0), view("b", 0)], &mut next);
        assert_eq!(p.phase, Phase::Running);
        assert_eq!(p.waves[0].seq, Some(11));
        assert_eq!(p.waves[0].pending, ids(&["a"]));
        let r = p.wave_request(0).unwrap();
        assert_eq!(r.nodes, Some(NodeSelector::Only(ids(&["a"]))));
        assert_eq!(r.id.as_deref(), Some("staged-1-0-wave-1"));
        // a acknowledged: hold
        run(&mut p, 0, &[view("a", 11), view("b", 0)], &mut next);
        assert_eq!(p.phase, Phase::Holding);
        assert_eq!(p.waves[1].seq, None);
        run(&mut p, 5, &[view("a", 11)], &mut next);
        assert_eq!(p.waves[1].seq, Some(12));
        assert_eq!(p.phase, Phase::Running);
        // what the store keeps reads back as the same staged purge, and goes on from there
        let mut p = StagedPurge::from_state(&p.to_state()).unwrap();
        p.operate("abort", 6_000).unwrap();
        run(&mut p, 60, &[view("a", 12), view("b", 12)], &mut next);
        assert_eq!(p.waves[2].seq, None, "nothing after an abort");
        assert!(p.operate("resume", 60_000).is_err());
        assert_eq!(next, 12);
        assert_eq!(p.to_json()["waves"][2]["state"], "skipped");
    }

    #[test]
    fn an_unacknowledged_wave_stalls_until_resumed_and_pause_holds() {
        let waves = vec![
            NodeSelector::Only(ids(&["a"])),
            NodeSelector::Except(ids(&["a"])),
        ];
        let mut p = StagedPurge::new(1, &request(0), "ops", waves, 0);
        let mut next = 0;
        run(&mut p, 0, &[view("a", 0)], &mut next);
        run(&mut p, 11, &[view("a", 0)], &mut next);
        assert_eq!(p.phase, Phase::Stalled);
        assert!(p.operate("pause", 11_000).is_err());
        p.operate("resume", 11_000).unwrap();
        let b_late = NodeView {
            liveness: Liveness::Late,
            ..view("b", 0)
        };
        let b_dead = NodeView {
            liveness: Liveness::Dead,
            ..view("b", 0)
        };
        run(&mut p, 12, &[view("a", 0), b_late.clone()], &mut next);
        assert_eq!(p.waves[1].seq, Some(2));
        assert_eq!(p.waves[1].pending, ids(&["b"]));
        p.operate("pause", 12_000).unwrap();
        run(&mut p, 13, &[view("a", 2), b_dead.clone()], &mut next);
        assert_eq!(p.phase, Phase::Paused);
        p.operate("resume", 13_000).unwrap();
        // a dead node is not waited for: it applies the rest wave from the log when back
        run(&mut p, 13, &[view("a", 2), b_dead], &mut next);
        assert_eq!(p.phase, Phase::Done);
        assert_eq!(p.wave_of("a", 2), Some((1, true)));
        assert_eq!(p.wave_of("b", 0), Some((2, false)));
        assert_eq!(p.wave_of("new", 2), Some((2, true)));
    }
}
