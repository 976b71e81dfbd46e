//! The node sidecar: long-polls `verge control`, validates what it gets, swaps one new snapshot
//! in, persists it, and reports what it applied (before every poll, so also while idle). Keeps
//! the last good snapshot on any failure.

use crate::cache::early_refresh::unit_random;
use crate::config::{Config, ControlSpec, Policy};
use crate::control::wire::{
    unix_ms, AppliedReport, Position, RejectedSnapshot, SnapshotMessage, CHECKSUM_FIELD,
    FEATURE_WAVES, SIGNATURE_FIELD,
};
use crate::metrics::METRICS;
use crate::node::readiness::Readiness;
use crate::node::state_file::{Received, StateWriter};
use crate::node::writer::SnapshotWriter;
use crate::snapshot::{ControlState, Snapshot};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Unix ms of the last poll that told this node where the control plane stands (0: never).
static LAST_CONTACT_MS: AtomicU64 = AtomicU64::new(0);

/// Refresh `verge_snapshot_age_seconds` (called when metrics are scraped).
pub fn refresh_age_gauge() {
    let last = LAST_CONTACT_MS.load(Ordering::Relaxed);
    if last == 0 {
        return;
    }
    let age = unix_ms(SystemTime::now()).saturating_sub(last) / 1000;
    METRICS.snapshot_age.set(age as f64);
}

/// Why a snapshot from the control plane was refused; the label of `verge_snapshot_rejected_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// It would move the node backwards.
    #[error("older than what this node has ({have} > {got})")]
    Older {
        /// Where the node is.
        have: Position,
        /// Where the message would take it.
        got: Position,
    },
    /// Its policy does not validate against this node's config.
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),
    /// One of its invalidations has a target that does not parse.
    #[error("invalid invalidation seq {seq}: {reason}")]
    InvalidInvalidation {
        /// The invalidation's sequence number.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The policy validated but its pools could not be built.
    #[error("cannot build the snapshot: {0}")]
    Build(String),
    /// A delta from another store epoch than the node's (only a full message starts over).
    #[error("a delta from epoch {got}, but this node is in epoch {have}")]
    Epoch {
        /// The node's epoch.
        have: String,
        /// The message's.
        got: String,
    },
}

impl Rejection {
    /// The `reason` label of `verge_snapshot_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Older { .. } => "older",
            Rejection::InvalidPolicy(_) => "invalid_policy",
            Rejection::InvalidInvalidation { .. } => "invalid_invalidation",
            Rejection::Build(_) => "build",
            Rejection::Epoch { .. } => "epoch",
        }
    }
}

/// The node config with a control-plane policy in place of the file's pools and routes.
pub(crate) fn config_for(
    base: &Config,
    doc: &serde_json::Value,
    version: u64,
) -> Result<Config, Rejection> {
    let policy = Policy::from_json(doc)
        .map_err(|e| Rejection::InvalidPolicy(e.to_string().trim().into()))?;
    let mut config = base.with_policy(&policy);
    config.version = format!("policy-{version}");
    Ok(config)
}

/// Decide what a message turns the current state into. Pure apart from parsing: the caller
/// builds and swaps the snapshot.
pub fn next_state(
    current: &Snapshot,
    base: &Config,
    msg: &SnapshotMessage,
    now: SystemTime,
) -> Result<Option<(Config, ControlState)>, Rejection> {
    let got = msg.position();
    // a full message from another epoch (the store was wiped or restored) starts over: its
    // positions say nothing about this node's
    let new_epoch = msg.epoch.as_deref() != current.control.epoch.as_deref();
    if new_epoch && !msg.full {
        return Err(Rejection::Epoch {
            have: current.control.epoch.as_deref().unwrap_or("none").into(),
            got: msg.epoch.clone().unwrap_or_else(|| "none".into()),
        });
    }
    let have = if new_epoch {
        Position::default()
    } else {
        current.control.position
    };
    if !got.is_at_or_after(&have) {
        return Err(Rejection::Older { have, got });
    }
    if got == have && !msg.full {
        return Ok(None);
    }
    let policy_changed = got.policy_version != have.policy_version
        || (msg.full && msg.policy.as_ref() != current.control.policy.as_deref());
    let (config, policy) = match (&msg.policy, policy_changed) {
        (Some(doc), true) => (
            Some(config_for(base, doc, got.policy_version)?),
            Some(Arc::new(doc.clone())),
        ),
        (None, true) if msg.full => (Some(base.clone()), None),
        (None, true) => {
            return Err(Rejection::InvalidPolicy(format!(
                "policy version moved to {} without a document",
                got.policy_version
            )))
        }
        _ => (None, current.control.policy.clone()),
    };
    let retention = Duration::from_secs(msg.retention_secs);
    let mut index = (*current.control.invalidations).clone();
    let node = base.control.as_ref().map(|c| c.node_id.as_str());
    for inv in msg.invalidations.iter().filter(|i| i.seq > have.seq) {
        if inv.seq > got.seq {
            return Err(Rejection::InvalidInvalidation {
                seq: inv.seq,
                reason: format!("beyond the snapshot's own seq {}", got.seq),
            });
        }
        // a wave of a staged purge that does not reach this node: its seq still counts
        if !inv.reaches(node) {
            continue;
        }
        index
            .apply(inv, now)
            .map_err(|reason| Rejection::InvalidInvalidation {
                seq: inv.seq,
                reason,
            })?;
    }
    let index = if retention.is_zero() {
        index
    } else {
        index.pruned(now, retention)
    };
    // Same policy: keep the config the current snapshot was built from.
    let config = config.unwrap_or_else(|| Config::clone(&current.config));
    Ok(Some((
        config,
        ControlState {
            position: got,
            epoch: if new_epoch {
                msg.epoch.as_deref().map(Arc::from)
            } else {
                current.control.epoch.clone()
            },
            policy,
            invalidations: Arc::new(index),
            retention,
            awaiting: false,
        },
    )))
}

/// `verge_invalidation_apply_lag_seconds`: for each invalidation `msg` brought that this node
/// had not applied (after seq `applied_after`), the time from the control plane accepting it to
/// `now`. Seqs only grow, so each is observed once, whether its purge was sent once or
/// redelivered under the same id (the control plane gives a redelivery the first one's seq).
/// The first full snapshot of a node that had applied nothing is not counted: those purges
/// were accepted before it had anything cached.
fn observe_apply_lag(msg: &SnapshotMessage, node: &str, applied_after: u64, now: SystemTime) {
    if msg.full && applied_after == 0 {
        return;
    }
    let now_ms = unix_ms(now);
    for inv in msg
        .invalidations
        .iter()
        .filter(|i| i.seq > applied_after && i.reaches(Some(node)))
    {
        let lag_ms = now_ms.saturating_sub(inv.created_ms);
        METRICS
            .invalidation_apply_lag
            .observe(Duration::from_millis(lag_ms).as_secs_f64());
    }
}

/// The sidecar service.
pub struct ControlPoller {
    spec: ControlSpec,
    /// Keeps the state file in step with what is applied.
    state_file: parking_lot::Mutex<StateWriter>,
    /// Swaps snapshots in, on top of the node's file config, one writer at a time.
    writer: Arc<SnapshotWriter>,
    readiness: Arc<Readiness>,
    /// Unix ms when the snapshot served now was swapped in (start, for a restored one).
    applied_ms: AtomicU64,
    /// Which of `spec.urls` the node polls now (it moves on after a failed or refused poll).
    source: AtomicUsize,
    /// The last snapshot refused since one was applied: sent with every report (the NACK).
    rejected: parking_lot::Mutex<Option<RejectedSnapshot>>,
    /// The admin listener's address, sent in every report (for `verge verify`).
    admin: String,
    /// The report fields each control-plane URL knows, for those older than the report (they
    /// refused a field they did not know, and named the ones they do).
    report_fields: parking_lot::Mutex<std::collections::HashMap<String, Vec<String>>>,
}

impl ControlPoller {
    /// A poller that applies control-plane policy on top of the writer's file config and swaps
    /// the result in; it tells `readiness` once the node serves a control-plane snapshot.
    pub fn new(spec: ControlSpec, writer: Arc<SnapshotWriter>, readiness: Arc<Readiness>) -> Self {
        // Never heard from the control plane: the snapshot is infinitely old, not 0 s old.
        METRICS.snapshot_age.set(f64::INFINITY);
        let state_file = parking_lot::Mutex::new(StateWriter::new(spec.state_file.clone()));
        // the admin listener is not reloaded: it needs a restart or an upgrade to change
        let admin = writer.base().admin.listen.to_string();
        ControlPoller {
            admin,
            spec,
            state_file,
            writer,
            readiness,
            applied_ms: AtomicU64::new(unix_ms(SystemTime::now())),
            source: AtomicUsize::new(0),
            rejected: parking_lot::Mutex::new(None),
            report_fields: parking_lot::Mutex::new(Default::default()),
        }
    }

    /// The control-plane replica polled now.
    fn url(&self) -> &str {
        let urls = &self.spec.urls;
        urls.get(self.source.load(Ordering::Relaxed) % urls.len().max(1))
            .map_or("", String::as_str)
    }

    /// Move on to the next replica, if there is another; the position asked for stays the
    /// one this node serves, so any replica continues where the last one left off.
    fn fail_over(&self, reason: &str) {
        if self.spec.urls.len() < 2 {
            return;
        }
        let failed = self.url().to_string();
        self.source.fetch_add(1, Ordering::Relaxed);
        METRICS.snapshot_failovers.inc();
        log::warn!(
            "control plane {failed} failed ({reason}); polling {} next",
            self.url()
        );
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let r = client.request(method, format!("{}{path}", self.url()));
        match &self.spec.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// One long-poll round: Ok(true) when something was applied.
    async fn poll_once(&self, client: &reqwest::Client) -> Result<bool, &'static str> {
        let position = self.writer.snapshot().load().control.position;
        // A node without a full message behind what it serves (a new process, or many deltas
        // since) asks for everything, so its state file always starts from one.
        let after = if self.state_file.lock().wants_full() {
            String::new()
        } else {
            position.to_string()
        };
        let epoch = self.writer.snapshot().load().control.epoch.clone();
        let epoch = epoch.map(|e| format!("&epoch={e}")).unwrap_or_default();
        let wait_ms = self.spec.wait.as_millis();
        let resp = self
            .request(
                client,
                reqwest::Method::GET,
                &format!(
                    "/v1/snapshot?after={after}{epoch}&wait={wait_ms}ms&features={FEATURE_WAVES}"
                ),
            )
            .timeout(self.spec.wait + Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| {
                log::warn!("control plane {} unreachable: {e}", self.url());
                "unreachable"
            })?;
        match resp.status().as_u16() {
            204 => {
                LAST_CONTACT_MS.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
                self.readiness.mark_received();
                return Ok(false);
            }
            200 => {}
            s => {
                log::warn!("control plane answered {s} to a snapshot poll");
                return Err("http_status");
            }
        }
        let field = |name: &str| resp.headers().get(name).map(|v| v.as_bytes().to_vec());
        let checksum = field(CHECKSUM_FIELD);
        let signature = field(SIGNATURE_FIELD);
        let received = Received {
            body: read_limited(resp, MAX_SNAPSHOT_BYTES).await?,
            checksum,
            signature,
        };
        received.verify(&self.spec.verify_keys).inspect_err(|why| {
            log::warn!("control plane sent a snapshot whose {why} does not verify: refused");
        })?;
        let msg: SnapshotMessage = serde_json::from_slice(&received.body).map_err(|e| {
            log::warn!("control plane sent an undecodable snapshot: {e}");
            "decode"
        })?;
        LAST_CONTACT_MS.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        let now = SystemTime::now();
        let registered = self.writer.filters();
        let mut applied_after = 0;
        let stored = self
            .writer
            .update(|current, base| {
                applied_after = current.control.position.seq;
                let Some((config, state)) = next_state(current, base, &msg, now)? else {
                    return Ok(None);
                };
                if let Some(e) = crate::config::unknown_filters(&config.routes, &registered).first()
                {
                    return Err(Rejection::InvalidPolicy(e.to_string()));
                }
                let snapshot = Snapshot::build_with(&config, Some(current), state)
                    .map_err(|e| Rejection::Build(e.to_string()))?;
                Ok(Some((snapshot, None)))
            })
            .map_err(|r| {
                log::warn!("snapshot {} rejected: {r}", msg.position());
                if !matches!(r, Rejection::Older { .. }) {
                    let nack = RejectedSnapshot::new(msg.position(), r.reason(), &r.to_string());
                    *self.rejected.lock() = Some(nack);
                }
                r.reason()
            })?;
        // Already current, or now current: the node serves what the control plane has.
        *self.rejected.lock() = None;
        self.readiness.mark_received();
        let Some(snapshot) = stored else {
            return Ok(false);
        };
        let position = snapshot.control.position;
        observe_apply_lag(&msg, &self.spec.node_id, applied_after, now);
        METRICS
            .snapshot_applied
            .with_label_values(&[if msg.full { "full" } else { "delta" }])
            .inc();
        publish_position(position);
        log::info!(
            "applied {} snapshot {position} ({} invalidation(s))",
            if msg.full { "full" } else { "delta" },
            msg.invalidations.len()
        );
        if let Err(e) = self.state_file.lock().record(msg.full, &received, now) {
            log::error!(
                "cannot persist snapshot to {}: {e}",
                self.spec.state_file.display()
            );
        }
        self.applied_ms.store(unix_ms(now), Ordering::Relaxed);
        Ok(true)
    }

    /// Tell the control plane where this node stands (`POST /v1/nodes/<id>/applied`), and how
    /// long its long polls wait, so it can judge the node alive, late or dead.
    async fn report(&self, client: &reqwest::Client) {
        let position = self.writer.snapshot().load().control.position;
        let report = AppliedReport {
            policy_version: position.policy_version,
            seq: position.seq,
            applied_at_ms: self.applied_ms.load(Ordering::Relaxed),
            rejected: self.rejected.lock().clone(),
            admin: Some(self.admin.clone()),
            features: vec![FEATURE_WAVES.to_string()],
        };
        let path = format!(
            "/v1/nodes/{}/applied?wait={}ms",
            self.spec.node_id,
            self.spec.wait.as_millis()
        );
        // a control plane older than a field refuses the report, naming the fields it knows:
        // the report goes again with those only, and so do the next ones to it
        for _ in 0..2 {
            let url = self.url().to_string();
            let fields = self.report_fields.lock().get(&url).cloned();
            let sent = self
                .request(client, reqwest::Method::POST, &path)
                .timeout(Duration::from_secs(5))
                .json(&report.to_json_with(fields.as_deref()))
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == reqwest::StatusCode::BAD_REQUEST => {
                    let answer = r.text().await.unwrap_or_default();
                    match AppliedReport::fields_known(&answer) {
                        Some(known) if fields.as_ref() != Some(&known) => {
                            log::info!(
                                "control plane {url} knows the report fields {known:?} only"
                            );
                            self.report_fields.lock().insert(url, known);
                        }
                        _ => {
                            log::warn!("control plane answered 400 to a report: {answer}");
                            return;
                        }
                    }
                }
                Ok(r) if !r.status().is_success() => {
                    log::warn!("control plane answered {} to a report", r.status());
                    return;
                }
                Ok(_) => return,
                Err(e) => {
                    log::debug!("cannot report where this node stands: {e}");
                    return;
                }
            }
        }
    }
}

/// Publish the position gauges.
pub fn publish_position(p: Position) {
    METRICS
        .policy_version
        .set(i64::try_from(p.policy_version).unwrap_or(i64::MAX));
    METRICS
        .invalidation_seq
        .set(i64::try_from(p.seq).unwrap_or(i64::MAX));
}

#[async_trait]
impl BackgroundService for ControlPoller {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = match reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                log::error!("control poller cannot start its HTTP client: {e}");
                return;
            }
        };
        if self.spec.urls.is_empty() {
            log::error!("control poller has no control-plane URL");
            return;
        }
        let mut backoff = Duration::from_millis(100);
        // failed polls since the last good one: the backoff grows once every replica failed
        let mut failed = 0usize;
        loop {
            // A report before every poll: after an applied snapshot it is the receipt, after an
            // idle round it says the node is alive, and after a failure it tells a control plane
            // that restarted (and lost its list of nodes) where this node stands at once.
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.report(&client) => {}
            }
            let outcome = tokio::select! {
                _ = shutdown.changed() => return,
                r = self.poll_once(&client) => r,
            };
            match outcome {
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    failed = 0;
                }
                Err(reason) => {
                    METRICS.snapshot_rejected.with_label_values(&[reason]).inc();
                    self.fail_over(reason);
                    failed += 1;
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(jittered(backoff, unit_random())) => {}
                    }
                    if failed % self.spec.urls.len() == 0 {
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }
}
/// The largest snapshot message a node accepts. A larger one is refused before it is parsed
/// (`verge_snapshot_rejected_total{reason="too_large"}`) and the last good snapshot keeps
/// serving, so what a control plane sends cannot grow a node without bound.
pub const MAX_SNAPSHOT_BYTES: usize = 64 << 20;

/// The body of `resp`, refused as `too_large` as soon as it passes `limit` bytes.
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, &'static str> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        log::warn!("control plane sent a snapshot over {limit} bytes: refused");
        return Err("too_large");
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|_| "unreachable")? {
        if body.len() + chunk.len() > limit {
            log::warn!("control plane sent a snapshot over {limit} bytes: refused");
            return Err("too_large");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The wait before the next attempt: somewhere in the upper half of `backoff`, by `unit` in
/// (0, 1]. Nodes that lost the control plane together then come back spread over time, not
/// as a herd at the same instants.
pub fn jittered(backoff: Duration, unit: f64) -> Duration {
    backoff.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_are_spread_over_the_upper_half_of_the_backoff() {
        let b = Duration::from_millis(800);
        assert_eq!(jittered(b, 1.0), b);
        assert_eq!(jittered(b, 0.0), Duration::from_millis(400));
        let spread: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| jittered(b, unit_random())).collect();
        assert!(
            spread.len() > 10,
            "waits differ from one node to the next: {spread:?}"
        );
        assert!(spread.iter().all(|d| *d >= b / 2 && *d <= b));
    }

    fn msg(full: bool, version: u64, seq: u64, epoch: &str) -> SnapshotMessage {
        serde_json::from_value(serde_json::json!({
            "full": full, "policy_version": version, "seq": seq, "retention_secs": 3600,
            "epoch": epoch,
            "policy": {"pools": {"p": {"backends": ["127.0.0.1:9"]}},
                       "routes": [{"hosts": ["*"], "pool": "p"}]},
            "invalidations": (1..=seq).map(|s| serde_json::json!({"seq": s, "kind": "url",
                "target": format!("a.test/{s}"), "soft": false, "created_ms": 1})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn a_full_message_from_another_epoch_starts_over_and_a_delta_from_one_is_refused() {
        let base = Config::from_yaml_str(
            "listeners: [{listen: \"127.0.0.1:1\"}]\ncontrol: {url: \"http://127.0.0.1:2\"}\n",
        )
        .unwrap();
        let now = SystemTime::now();
        let step = |current: &Snapshot, m: &SnapshotMessage| {
            let (config, state) = next_state(current, &base, m, now).unwrap().unwrap();
            Snapshot::build_with(&config, Some(current), state).unwrap()
        };
        let empty = Snapshot::build_with(&base, None, ControlState::default()).unwrap();
        let at = step(&empty, &msg(true, 5, 3, "e1"));
        assert_eq!(at.control.position.to_string(), "5.3");
        assert_eq!(at.control.epoch.as_deref(), Some("e1"));
        // the same epoch, lower: refused as before
        let older = next_state(&at, &base, &msg(true, 1, 1, "e1"), now).unwrap_err();
        assert_eq!(older.reason(), "older");
        // another epoch, lower: taken, with every invalidation it carries
        let wiped = step(&at, &msg(true, 1, 1, "e2"));
        assert_eq!(wiped.control.position.to_string(), "1.1");
        assert_eq!(wiped.control.epoch.as_deref(), Some("e2"));
        let seqs: Vec<u64> = wiped
            .control
            .invalidations
            .applied()
            .iter()
            .map(|a| a.invalidation.seq)
            .collect();
        assert!(seqs.contains(&1), "{seqs:?}");
        // a delta from yet another epoch cannot be applied
        let delta = next_state(&wiped, &base, &msg(false, 1, 2, "e3"), now).unwrap_err();
        assert_eq!(delta.reason(), "epoch");
    }
}
