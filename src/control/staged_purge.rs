//! Staged purges: a purge of everything (or of a whole host, or a prefix) sent to the nodes one
//! wave at a time. The first waves are shares or named groups of the live nodes; the last is
//! every other node. The next wave goes out once every node of the current one acknowledged it
//! (in its receipt) and a hold time passed. A staged purge can be paused, resumed or aborted.

use super::liveness::{judge, Liveness};
use super::plane::{ControlPlane, InvalidationRequest, PlaneError};
use super::wire::{unix_ms, InvalidationKind, NodeSelector};
use crate::metrics::STAGED_PURGE_METRICS;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    fn is_final(self) -> bool {
        matches!(self, Phase::Aborted | Phase::Done)
    }
}

/// One wave: which nodes, and how far it got.
#[derive(Debug, Clone)]
struct Wave {
    selector: NodeSelector,
    seq: Option<u64>,
    sent: Option<(Instant, u64)>,
    acked: Option<Instant>,
    /// Nodes of the wave that have not reported its `seq` yet (at the last look).
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
}

/// One staged purge.
#[derive(Debug)]
pub struct StagedPurge {
    id: u64,
    request: StagedRequest,
    who: String,
    created_ms: u64,
    waves: Vec<Wave>,
    current: usize,
    phase: Phase,
    /// The last error sending a wave (a spent purge budget, a store failure), if any.
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

/// Split `nodes` (the live ones, in id order) into waves by `specs`; the last wave is every
/// node not in an earlier one. `known` are all node ids that ever reported.
pub fn plan_waves(
    specs: &[WaveSpec],
    nodes: &[String],
    known: &BTreeSet<String>,
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

impl StagedPurge {
    fn new(id: u64, request: StagedRequest, who: &str, waves: Vec<NodeSelector>) -> StagedPurge {
        StagedPurge {
            id,
            request,
            who: who.to_string(),
            created_ms: unix_ms(SystemTime::now()),
            waves: waves
                .into_iter()
                .map(|selector| Wave {
                    selector,
                    seq: None,
                    sent: None,
                    acked: None,
                    pending: Vec::new(),
                })
                .collect(),
            current: 0,
            phase: Phase::Running,
            error: None,
        }
    }

    /// The invalidation request of wave `i`.
    fn wave_request(&self, i: usize) -> Option<InvalidationRequest> {
        let wave = self.waves.get(i)?;
        Some(InvalidationRequest {
            kind: self.request.kind,
            target: self.request.target.clone(),
            soft: self.request.soft,
            id: None,
            expected_version: None,
            nodes: Some(wave.selector.clone()),
        })
    }

    /// Move on as far as the nodes allow: send the current wave, see who acknowledged it, hold,
    /// go to the next. `send` writes one wave's invalidation and returns its `seq`.
    fn step(
        &mut self,
        now: Instant,
        nodes: &[NodeView],
        send: &mut dyn FnMut(&InvalidationRequest, &str) -> Result<u64, PlaneError>,
    ) {
        loop {
            if matches!(self.phase, Phase::Paused | Phase::Stalled) || self.phase.is_final() {
                return;
            }
            let Some(wave) = self.waves.get(self.current) else {
                self.phase = Phase::Done;
                return;
            };
            let Some(seq) = wave.seq else {
                let Some(request) = self.wave_request(self.current) else {
                    return;
                };
                match send(&request, &self.who) {
                    Ok(seq) => {
                        let wave = &mut self.waves[self.current];
                        wave.seq = Some(seq);
                        wave.sent = Some((now, unix_ms(SystemTime::now())));
                        self.error = None;
                        STAGED_PURGE_METRICS.waves_sent.inc();
                        log::info!(
                            "staged purge {}: wave {} of {} sent as seq {seq}",
                            self.id,
                            self.current + 1,
                            self.waves.len()
                        );
                    }
                    Err(e) => {
                        // a spent budget or a store failure: tried again on the next step
                        self.error = Some(e.to_string());
                        return;
                    }
                }
                continue;
            };
            if wave.acked.is_none() {
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
                let sent_at = wave.sent.map_or(now, |(at, _)| at);
                let wave = &mut self.waves[self.current];
                wave.pending = pending;
                if !wave.pending.is_empty() {
                    if now.duration_since(sent_at) >= self.request.ack_timeout {
                        log::warn!(
                            "staged purge {}: wave {} not acknowledged by {:?} within {:?}: stalled",
                            self.id,
                            self.current + 1,
                            wave.pending,
                            self.request.ack_timeout
                        );
                        self.phase = Phase::Stalled;
                    }
                    return;
                }
                wave.acked = Some(now);
            }
            if self.current + 1 == self.waves.len() {
                self.phase = Phase::Done;
                log::info!("staged purge {}: every wave acknowledged", self.id);
                return;
            }
            let acked = self.waves[self.current].acked.unwrap_or(now);
            if now.duration_since(acked) < self.request.hold {
                self.phase = Phase::Holding;
                return;
            }
            self.phase = Phase::Running;
            self.current += 1;
        }
    }

    /// Pause, resume or abort.
    fn operate(&mut self, op: &str, now: Instant) -> Result<(), StagedError> {
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
                    w.acked = Some(now);
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
        let state = match (w.seq, w.acked) {
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
            "sent_ms": w.sent.map(|(_, ms)| ms),
            "pending": w.pending,
        })
    }

    /// The staged purge as the API shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "kind": self.request.kind.as_str(),
            "target": self.request.target,
            "soft": self.request.soft,
            "state": self.phase.as_str(),
            "wave": (self.current + 1).min(self.waves.len()),
            "waves": self.waves.iter().enumerate().map(|(i, w)| self.wave_json(i, w)).collect::<Vec<_>>(),
            "hold_secs": self.request.hold.as_secs_f64(),
            "ack_timeout_secs": self.request.ack_timeout.as_secs_f64(),
            "created_ms": self.created_ms,
            "by": self.who,
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

/// The staged purges of one control plane, and what drives them.
pub struct StagedPurges {
    plane: Arc<ControlPlane>,
    purges: Mutex<Vec<StagedPurge>>,
}

impl StagedPurges {
    /// No staged purge yet.
    pub fn new(plane: Arc<ControlPlane>) -> Arc<StagedPurges> {
        let purges = Arc::new(StagedPurges {
            plane,
            purges: Mutex::new(Vec::new()),
        });
        purges.publish(&[]);
        purges
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
                }
            })
            .collect()
    }

    /// Plan the waves over the live nodes and send the first; the new staged purge as the API
    /// shows it.
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
        let live: Vec<String> = views
            .iter()
            .filter(|n| n.liveness != Liveness::Dead)
            .map(|n| n.id.clone())
            .collect();
        let waves = plan_waves(&request.waves, &live, &known).map_err(StagedError::BadRequest)?;
        let mut purges = self.purges.lock();
        let id = purges.last().map_or(1, |p| p.id + 1);
        let mut purge = StagedPurge::new(id, request, who, waves);
        // the first wave is written now, so a refused one (a bad target, a spent budget) is
        // answered as such and nothing is staged
        let first = purge
            .wave_request(0)
            .ok_or_else(|| StagedError::BadRequest("no wave".into()))?;
        let seq = self.send(&first, who)?;
        purge.waves[0].seq = Some(seq);
        purge.waves[0].sent = Some((Instant::now(), unix_ms(SystemTime::now())));
        STAGED_PURGE_METRICS.waves_sent.inc();
        log::info!(
            "staged purge {id} by {who}: {} {:?} in {} wave(s); wave 1 sent as seq {seq}",
            purge.request.kind.as_str(),
            purge.request.target,
            purge.waves.len()
        );
        purge.step(Instant::now(), &views, &mut |r, w| self.send(r, w));
        let shown = purge.to_json();
        purges.push(purge);
        while purges.len() > KEPT {
            match purges.iter().position(|p| p.phase.is_final()) {
                Some(i) => {
                    purges.remove(i);
                }
                None => break,
            }
        }
        self.publish(&purges);
        Ok(shown)
    }

    fn send(&self, request: &InvalidationRequest, who: &str) -> Result<u64, PlaneError> {
        let accepted = self.plane.invalidate(std::slice::from_ref(request), who)?;
        Ok(accepted.first().map_or(0, |a| a.seq))
    }

    /// Move every staged purge on as far as its nodes allow (without one under way, nothing
    /// is looked at).
    pub fn tick(&self) {
        if self.purges.lock().iter().all(|p| p.phase.is_final()) {
            return;
        }
        let views = self.node_views();
        let mut purges = self.purges.lock();
        let now = Instant::now();
        for p in purges.iter_mut() {
            p.step(now, &views, &mut |r, w| self.send(r, w));
        }
        self.publish(&purges);
    }

    /// Pause, resume or abort staged purge `id`, for a caller who may `allowed` it; it as the
    /// API shows it afterwards.
    pub fn operate(
        &self,
        id: u64,
        op: &str,
        allowed: impl FnOnce(&InvalidationRequest) -> Result<(), String>,
    ) -> Result<Result<Value, String>, StagedError> {
        let mut purges = self.purges.lock();
        let purge = purges
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or(StagedError::NotFound(id))?;
        if let Some(request) = purge.wave_request(0) {
            if let Err(e) = allowed(&request) {
                return Ok(Err(e));
            }
        }
        purge.operate(op, Instant::now())?;
        let shown = purge.to_json();
        self.publish(&purges);
        Ok(Ok(shown))
    }

    /// Every staged purge kept, oldest first, as the API shows them.
    pub fn list(&self) -> Vec<Value> {
        self.purges
            .lock()
            .iter()
            .map(StagedPurge::to_json)
            .collect()
    }

    /// One staged purge, as the API shows it.
    pub fn get(&self, id: u64) -> Option<Value> {
        self.purges
            .lock()
            .iter()
            .find(|p| p.id == id)
            .map(StagedPurge::to_json)
    }

    /// For `GET /v1/nodes`: the unfinished staged purges that reach `node` (which reported
    /// `seq`), with its wave and whether it applied it.
    pub fn for_node(&self, node: &str, seq: u64) -> Vec<Value> {
        self.purges
            .lock()
            .iter()
            .filter(|p| !p.phase.is_final())
            .filter_map(|p| {
                let (wave, applied) = p.wave_of(node, seq)?;
                Some(json!({"id": p.id, "wave": wave, "applied": applied, "state": p.phase.as_str()}))
            })
            .collect()
    }

    fn publish(&self, purges: &[StagedPurge]) {
        for phase in Phase::ALL {
            let n = purges.iter().filter(|p| p.phase == phase).count();
            STAGED_PURGE_METRICS
                .purges
                .with_label_values(&[phase.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// The background service that moves staged purges on, a few times a second.
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
        let w = plan_waves(&[share("10%")], &nodes, &known).unwrap();
        assert_eq!(
            w,
            vec![
                NodeSelector::Only(ids(&["a"])),
                NodeSelector::Except(ids(&["a"]))
            ]
        );
        let w = plan_waves(&[share("33%"), share("66%"), share("100%")], &nodes, &known).unwrap();
        assert_eq!(
            w,
            vec![
                NodeSelector::Only(ids(&["a"])),
                NodeSelector::Only(ids(&["b"])),
                NodeSelector::Except(ids(&["a", "b"]))
            ]
        );
        // a share that adds no node makes no wave
        let w = plan_waves(&[share("10%"), share("20%")], &nodes, &known).unwrap();
        assert_eq!(w.len(), 2);
        let w = plan_waves(
            &[WaveSpec::Nodes(ids(&["c"])), share("50%")],
            &nodes,
            &known,
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
            plan_waves(&[share("10%")], &[], &known).unwrap(),
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
            assert!(plan_waves(&bad, &nodes, &known).is_err(), "{bad:?}");
        }
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
        }
    }

    #[test]
    fn a_wave_waits_for_its_nodes_then_the_hold_and_abort_stops_the_rest() {
        let waves = vec![
            NodeSelector::Only(ids(&["a"])),
            NodeSelector::Only(ids(&["b"])),
            NodeSelector::Except(ids(&["a", "b"])),
        ];
        let mut p = StagedPurge::new(1, request(5), "ops", waves);
        let mut sent = Vec::new();
        let mut next = 10;
        let mut send = |r: &InvalidationRequest, _: &str| {
            next += 1;
            sent.push((next, r.nodes.clone()));
            Ok(next)
        };
        let t0 = Instant::now();
        p.step(t0, &[view("a", 0), view("b", 0)], &mut send);
        assert_eq!(p.phase, Phase::Running);
        assert_eq!(p.waves[0].seq, Some(11));
        assert_eq!(p.waves[0].pending, ids(&["a"]));
        // a acknowledged: hold
        p.step(t0, &[view("a", 11), view("b", 0)], &mut send);
        assert_eq!(p.phase, Phase::Holding);
        assert_eq!(p.waves[1].seq, None);
        p.step(t0 + Duration::from_secs(5), &[view("a", 11)], &mut send);
        assert_eq!(p.waves[1].seq, Some(12));
        assert_eq!(p.phase, Phase::Running);
        p.operate("abort", t0).unwrap();
        p.step(
            t0 + Duration::from_secs(60),
            &[view("a", 12), view("b", 12)],
            &mut send,
        );
        assert_eq!(p.waves[2].seq, None, "nothing after an abort");
        assert!(p.operate("resume", t0).is_err());
        assert_eq!(sent.len(), 2);
        assert_eq!(p.to_json()["waves"][2]["state"], "skipped");
    }

    #[test]
    fn an_unacknowledged_wave_stalls_until_resumed_and_pause_holds() {
        let waves = vec![
            NodeSelector::Only(ids(&["a"])),
            NodeSelector::Except(ids(&["a"])),
        ];
        let mut p = StagedPurge::new(1, request(0), "ops", waves);
        let mut next = 0;
        let mut send = |_: &InvalidationRequest, _: &str| {
            next += 1;
            Ok(next)
        };
        let t0 = Instant::now();
        p.step(t0, &[view("a", 0)], &mut send);
        p.step(t0 + Duration::from_secs(11), &[view("a", 0)], &mut send);
        assert_eq!(p.phase, Phase::Stalled);
        assert!(p.operate("pause", t0).is_err());
        p.operate("resume", t0).unwrap();
        let b_late = NodeView {
            liveness: Liveness::Late,
            ..view("b", 0)
        };
        let b_dead = NodeView {
            liveness: Liveness::Dead,
            ..view("b", 0)
        };
        p.step(
            t0 + Duration::from_secs(12),
            &[view("a", 0), b_late.clone()],
            &mut send,
        );
        assert_eq!(p.waves[1].seq, Some(2));
        assert_eq!(p.waves[1].pending, ids(&["b"]));
        p.operate("pause", t0).unwrap();
        p.step(
            t0 + Duration::from_secs(13),
            &[view("a", 2), b_dead.clone()],
            &mut send,
        );
        assert_eq!(p.phase, Phase::Paused);
        p.operate("resume", t0).unwrap();
        // a dead node is not waited for: it applies the rest wave from the log when back
        p.step(
            t0 + Duration::from_secs(13),
            &[view("a", 2), b_dead],
            &mut send,
        );
        assert_eq!(p.phase, Phase::Done);
        assert_eq!(p.wave_of("a", 2), Some((1, true)));
        assert_eq!(p.wave_of("b", 0), Some((2, false)));
        assert_eq!(p.wave_of("new", 2), Some((2, true)));
    }
}
