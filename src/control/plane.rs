//! The control plane's state machine: versioned policy (compare-and-set), the invalidation log,
//! snapshots and deltas for nodes, and what each node reported it applied.

mod compaction;
mod receipts;
mod restore;

use super::settings::ControlSettings;
use super::store::{PolicyVersion, Record, Store, StoreChange, StoreError, StoreState};
use super::wire::{
    check_expected_version, parse_target, unix_ms, AppliedReport, Invalidation, InvalidationKind,
    NodeSelector, Position, SnapshotMessage, Target,
};
use crate::config::{ConfigErrors, Policy};
use crate::metrics::METRICS;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Why a control-plane operation was refused. Each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    /// The write named an older version than the current one (412).
    #[error("version {current} is current, not {given}")]
    Conflict {
        /// The version in force.
        current: u64,
        /// The version the writer expected.
        given: u64,
    },
    /// A policy write without `If-Match` (428).
    #[error("If-Match with the current version is required")]
    PreconditionRequired,
    /// The policy does not validate; every error is listed (422).
    #[error("invalid policy")]
    Invalid(ConfigErrors),
    /// The request itself is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// The token's purge budget is spent (429).
    #[error("purge rate limit exceeded; retry in {retry_after_secs}s")]
    RateLimited {
        /// When the budget allows the next purge.
        retry_after_secs: u64,
    },
    /// No such policy version or node (404).
    #[error("{0}")]
    NotFound(String),
    /// The durable store failed; nothing changed (503).
    #[error("store failed, nothing was written: {0}")]
    Store(#[from] StoreError),
}

/// One invalidation as asked for by a client, before it gets a sequence number.
#[derive(Debug, Clone)]
pub struct InvalidationRequest {
    /// What `target` names.
    pub kind: InvalidationKind,
    /// The URL, prefix, host or tag.
    pub target: String,
    /// Mark stale instead of removing.
    pub soft: bool,
    /// The client's id for this invalidation (idempotent redelivery), if it gave one.
    pub id: Option<String>,
    /// For a URL: the origin object's new version (`ETag`); entries that carry it are kept.
    pub expected_version: Option<String>,
    /// The nodes it reaches, when it is one wave of a staged purge; `None`: every node.
    pub nodes: Option<NodeSelector>,
}

/// What happened to one requested invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Its sequence number in the invalidation log.
    pub seq: u64,
    /// An identical invalidation was accepted within the coalescing window; this is its `seq`.
    pub coalesced: bool,
    /// An invalidation with the same client id was accepted before; this is its `seq`, and
    /// nothing was purged again.
    pub duplicate: bool,
}

/// Longest client id accepted for an invalidation.
pub const MAX_ID_LEN: usize = 256;

/// A node as the control plane sees it.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// What the node last said it applied.
    pub applied: AppliedReport,
    /// When it said so.
    pub reported: SystemTime,
    /// How long its long polls wait, as it said in its report (`None`: it did not say).
    pub poll_interval: Option<Duration>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What makes two purges the same for coalescing: target, softness, expected version and the
/// nodes it reaches.
type PurgeKey = (Target, bool, Option<String>, Option<NodeSelector>);

struct PlaneState {
    policies: VecDeque<PolicyVersion>,
    invalidations: VecDeque<Invalidation>,
    floor: u64,
    head: Position,
    appended_since_compaction: usize,
    recent: HashMap<PurgeKey, (u64, Instant)>,
    /// Highest `seq` any node has been sent. An invalidation already delivered is never
    /// coalesced into: content fetched after a node applied it must be purgeable again.
    delivered: u64,
    buckets: HashMap<String, Bucket>,
    nodes: BTreeMap<String, NodeStatus>,
    /// Client ids of the retained invalidations, with their `seq`.
    ids: HashMap<String, u64>,
    /// The store's epoch: positions from another one mean nothing here.
    epoch: Option<String>,
}

/// Compare-and-set attempts for a batch of invalidations when other replicas append first.
const APPEND_ATTEMPTS: usize = 5;

/// The newest policy version and sequence a stored state holds.
fn head_of(state: &StoreState) -> Position {
    Position {
        policy_version: state.policies.last().map_or(0, |p| p.version),
        seq: state
            .invalidations
            .last()
            .map_or(state.floor, |i| i.seq.max(state.floor)),
    }
}

/// The client ids of `invalidations`, with their `seq`.
fn ids_of<'a>(invalidations: impl Iterator<Item = &'a Invalidation>) -> HashMap<String, u64> {
    invalidations
        .filter_map(|i| Some((i.id.clone()?, i.seq)))
        .collect()
}

/// The control plane: one per `verge control` process.
pub struct ControlPlane {
    /// Listener, tokens, rate limits and retention.
    pub settings: ControlSettings,
    store: Box<dyn Store>,
    /// What readers and long-polls take, never held while the store commits.
    state: Mutex<PlaneState>,
    /// One write (or compaction) at a time on this replica, held while the store commits: it
    /// keeps a file store's log in order, and on etcd the transaction's compare decides
    /// between replicas.
    writes: Mutex<()>,
    head: watch::Sender<Position>,
    /// Full reads of a shared store taken in: a long-poll wakes on one even when the head
    /// looks the same (it may be another epoch's).
    resets: AtomicU64,
}

impl ControlPlane {
    /// Load the store (and write the seed policy into an empty one).
    pub fn open(
        settings: ControlSettings,
        store: Box<dyn Store>,
    ) -> Result<Arc<ControlPlane>, PlaneError> {
        let loaded = store.load()?;
        let head = head_of(&loaded);
        let StoreState {
            policies,
            invalidations,
            floor,
            epoch,
            receipts,
            .. // staged purges: the store keeps them (`Store::staged`)
        } = loaded;
        let ids = ids_of(invalidations.iter());
        let plane = Arc::new(ControlPlane {
            state: Mutex::new(PlaneState {
                policies: policies.into(),
                invalidations: invalidations.into(),
                floor,
                head,
                appended_since_compaction: 0,
                recent: HashMap::new(),
                delivered: 0,
                buckets: HashMap::new(),
                nodes: receipts::decode_all(receipts),
                ids,
                epoch,
            }),
            writes: Mutex::new(()),
            head: watch::channel(head).0,
            resets: AtomicU64::new(0),
            settings,
            store,
        });
        // a shared store delivers what every replica commits, from the state just loaded on
        let weak = Arc::downgrade(&plane);
        plane.store.subscribe(Box::new(move |change| {
            if let Some(plane) = weak.upgrade() {
                plane.apply_change(change);
            }
        }));
        if head.policy_version == 0 {
            if let Some(path) = plane.settings.seed_policy.clone() {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| PlaneError::BadRequest(format!("{}: {e}", path.display())))?;
                let doc = Policy::document_from_text(&text).map_err(PlaneError::Invalid)?;
                match plane.put_policy(doc, Some(0), "seed_policy") {
                    // another replica sharing the store seeded it first
                    Ok(_) | Err(PlaneError::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        plane.publish_head(head);
        Ok(plane)
    }

    fn publish_head(&self, head: Position) {
        METRICS
            .control_policy_version
            .set(gauge(head.policy_version));
        METRICS.control_invalidation_seq.set(gauge(head.seq));
        self.head.send_replace(head);
    }

    /// The newest policy version and invalidation sequence.
    pub fn head(&self) -> Position {
        self.state.lock().head
    }

    /// The current policy version, if any policy was ever written.
    pub fn policy(&self) -> Option<PolicyVersion> {
        self.state.lock().policies.back().cloned()
    }

    /// One version from the history.
    pub fn policy_version(&self, version: u64) -> Option<PolicyVersion> {
        let st = self.state.lock();
        st.policies.iter().find(|p| p.version == version).cloned()
    }

    /// Versions kept for history and rollback, oldest first.
    pub fn history(&self) -> Vec<PolicyVersion> {
        self.state.lock().policies.iter().cloned().collect()
    }

    /// Compare-and-set the policy: `if_match` must be the current version (0 before the first).
    /// The document in force written again is a no-op: the current version comes back.
    pub fn put_policy(
        &self,
        document: serde_json::Value,
        if_match: Option<u64>,
        author: &str,
    ) -> Result<PolicyVersion, PlaneError> {
        self.write_policy(document, if_match, author, None)
    }

    /// Write an older version's document again as a new version.
    pub fn rollback(
        &self,
        to: u64,
        if_match: Option<u64>,
        author: &str,
    ) -> Result<PolicyVersion, PlaneError> {
        let old = self
            .policy_version(to)
            .ok_or_else(|| PlaneError::NotFound(format!("policy version {to} is not kept")))?;
        self.write_policy(old.document, if_match, author, Some(to))
    }

    fn write_policy(
        &self,
        document: serde_json::Value,
        if_match: Option<u64>,
        author: &str,
        rollback_of: Option<u64>,
    ) -> Result<PolicyVersion, PlaneError> {
        let kind = if rollback_of.is_some() {
            "rollback"
        } else {
            "policy"
        };
        let result = (|| {
            let given = if_match.ok_or(PlaneError::PreconditionRequired)?;
            // The same validator the nodes use, so nodes never receive a policy they refuse.
            Policy::from_json(&document).map_err(PlaneError::Invalid)?;
            // a shared store: start from everything other replicas committed
            self.store.sync()?;
            let _writing = self.writes.lock();
            let version = {
                let st = self.state.lock();
                if given != st.head.policy_version {
                    return Err(PlaneError::Conflict {
                        current: st.head.policy_version,
                        given,
                    });
                }
                // The document in force again: nothing is written, the version stays.
                if let Some(current) = st.policies.back().filter(|p| p.document == document) {
                    return Ok((current.clone(), false));
                }
                PolicyVersion {
                    version: st.head.policy_version + 1,
                    document,
                    written_ms: unix_ms(SystemTime::now()),
                    author: author.to_string(),
                    rollback_of,
                }
            };
            // the state's lock is free while the store commits: reads and long-polls go on
            self.store
                .append(&[Record::Policy(version.clone())])
                .map_err(|e| match e {
                    StoreError::Conflict { current } => PlaneError::Conflict { current, given },
                    e => PlaneError::Store(e),
                })?;
            let mut st = self.state.lock();
            // (the watch of a shared store may have taken this very commit in already)
            if self.take_policy(&mut st, version.clone()) {
                self.publish_head(st.head);
            }
            Ok((version, true))
        })();
        match &result {
            Ok((_, false)) => METRICS
                .control_writes
                .with_label_values(&[kind, "unchanged"])
                .inc(),
            _ => count_write(kind, &result),
        }
        result.map(|(version, _)| version)
    }

    /// Take `n` purge tokens from `who`'s bucket, or say how long to wait.
    fn take_tokens(&self, st: &mut PlaneState, who: &str, n: usize) -> Result<(), PlaneError> {
        let rate = self.settings.purge_rate;
        let now = Instant::now();
        let b = st.buckets.entry(who.to_string()).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() * rate.per_second).min(rate.burst);
        b.at = now;
        let need = n as f64;
        if need > rate.burst {
            return Err(PlaneError::BadRequest(format!(
                "{n} invalidations in one call exceed the burst of {}",
                rate.burst
            )));
        }
        if b.tokens < need {
            let wait = (need - b.tokens) / rate.per_second;
            return Err(PlaneError::RateLimited {
                retry_after_secs: wait.ceil().max(1.0) as u64,
            });
        }
        b.tokens -= need;
        Ok(())
    }

    /// Accept a batch of invalidations: all targets are checked first, then they are written
    /// durably in one append. Repeats within the coalescing window return the earlier `seq`.
    pub fn invalidate(
        &self,
        requests: &[InvalidationRequest],
        who: &str,
    ) -> Result<Vec<Accepted>, PlaneError> {
        self.invalidate_as(requests, Some(who))
    }

    /// `invalidate`, charged to `who`'s purge budget when there is one.
    fn invalidate_as(
        &self,
        requests: &[InvalidationRequest],
        who: Option<&str>,
    ) -> Result<Vec<Accepted>, PlaneError> {
        self.invalidate_through(requests, who, &mut |records| self.store.append(records))
    }

    /// The store, for what keeps its own records in it (staged purges).
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// `invalidate_as`, with the new invalidations committed by `append` instead of a plain
    /// append (a staged purge's wave commits its own record with them).
    pub fn invalidate_through(
        &self,
        requests: &[InvalidationRequest],
        who: Option<&str>,
        append: &mut dyn FnMut(&[Record]) -> Result<(), StoreError>,
    ) -> Result<Vec<Accepted>, PlaneError> {
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            // A shared store: the append compares `seq` with this replica's, so it commits
            // only if this replica had taken in every invalidation committed before it (ids
            // included). The first attempt goes without the catch-up read (a round to etcd's
            // quorum on a purge's path); after a lost race the replica catches up first.
            let synced = if attempt == 1 {
                Ok(())
            } else {
                self.store.sync()
            };
            let result = synced
                .map_err(PlaneError::Store)
                .and_then(|()| self.invalidate_inner(requests, who, append));
            match result {
                Err(PlaneError::Store(StoreError::Conflict { .. }))
                    if attempt < APPEND_ATTEMPTS =>
                {
                    continue
                }
                result => break result,
            }
        };
        count_write("invalidation", &result);
        result
    }

    fn invalidate_inner(
        &self,
        requests: &[InvalidationRequest],
        who: Option<&str>,
        append: &mut dyn FnMut(&[Record]) -> Result<(), StoreError>,
    ) -> Result<Vec<Accepted>, PlaneError> {
        if requests.is_empty() {
            return Err(PlaneError::BadRequest("no invalidation given".into()));
        }
        let mut targets = Vec::with_capacity(requests.len());
        let mut problems = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            match parse_target(r.kind, &r.target) {
                Ok(t) => targets.push(t),
                Err(e) => problems.push(format!("targets[{i}] ({:?}): {e}", r.target)),
            }
            if let Some(v) = &r.expected_version {
                if let Err(e) = check_expected_version(r.kind, v) {
                    problems.push(format!("targets[{i}]: {e}"));
                }
            }
            if let Some(id) = &r.id {
                if id.is_empty()
                    || id.len() > MAX_ID_LEN
                    || id.bytes().any(|b| b.is_ascii_control())
                {
                    problems.push(format!(
                        "targets[{i}]: id must be 1 to {MAX_ID_LEN} bytes without control characters"
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(PlaneError::BadRequest(problems.join("; ")));
        }
        let writing = self.writes.lock();
        let mut st = self.state.lock();
        // a redelivery costs no purge budget: it purges nothing
        let redelivered = requests
            .iter()
            .filter(|r| r.id.as_ref().is_some_and(|id| st.ids.contains_key(id)))
            .count();
        let charged = requests.len() - redelivered;
        if let (Some(who), true) = (who, charged > 0) {
            self.take_tokens(&mut st, who, charged)?;
        }
        let now = Instant::now();
        let window = self.settings.coalesce_window;
        let delivered = st.delivered;
        st.recent
            .retain(|_, (seq, at)| *seq > delivered && now.duration_since(*at) < window);
        let created_ms = unix_ms(SystemTime::now());
        let mut next = st.head.seq;
        let mut out = Vec::with_capacity(requests.len());
        let mut fresh = Vec::new();
        let mut batch_keys: HashMap<PurgeKey, u64> = HashMap::new();
        let mut batch_ids: HashMap<&str, u64> = HashMap::new();
        for (r, t) in requests.iter().zip(targets) {
            let known =
                r.id.as_deref()
                    .and_then(|id| st.ids.get(id).or_else(|| batch_ids.get(id)).copied());
            if let Some(seq) = known {
                out.push(Accepted {
                    seq,
                    coalesced: false,
                    duplicate: true,
                });
                continue;
            }
            let key = (t, r.soft, r.expected_version.clone(), r.nodes.clone());
            let coalesced = st
                .recent
                .get(&key)
                .map(|&(seq, _)| seq)
                .or_else(|| batch_keys.get(&key).copied());
            // an id is recorded with its own invalidation, so a coalesced one with an id
            // is written (the nodes apply it once more; a redelivery never is)
            if let (Some(seq), None) = (coalesced, &r.id) {
                out.push(Accepted {
                    seq,
                    coalesced: true,
                    duplicate: false,
                });
                continue;
            }
            next += 1;
            batch_keys.insert(key, next);
            if let Some(id) = r.id.as_deref() {
                batch_ids.insert(id, next);
            }
            fresh.push(Invalidation {
                seq: next,
                kind: r.kind,
                target: r.target.trim().to_string(),
                soft: r.soft,
                created_ms,
                id: r.id.clone(),
                expected_version: r.expected_version.clone(),
                nodes: r.nodes.clone(),
            });
            out.push(Accepted {
                seq: next,
                coalesced: false,
                duplicate: false,
            });
        }
        if fresh.is_empty() {
            return Ok(out);
        }
        drop(st);
        // the state's lock is free while the store commits: reads and long-polls go on
        let records: Vec<Record> = fresh.iter().cloned().map(Record::Invalidation).collect();
        let appended = append(&records);
        let mut st = self.state.lock();
        if let Err(e) = appended {
            // the write was refused (a lost race, or a store that could not commit)
            // and answered as such: the budget is not spent
            if let Some(b) = who.and_then(|who| st.buckets.get_mut(who)) {
                b.tokens += charged as f64;
            }
            return Err(e.into());
        }
        // With a shared store another replica may already have sent any earlier
        // invalidation to its nodes, so only this batch's own repeats coalesce.
        if !self.store.shared() {
            for (key, seq) in batch_keys {
                st.recent.insert(key, (seq, now));
            }
        }
        let before = st.head;
        // (the watch of a shared store may have taken this very commit in already)
        for i in fresh {
            take_invalidation(&mut st, i);
        }
        if st.head != before {
            self.publish_head(st.head);
        }
        drop(st);
        self.compact_when_due(&writing);
        Ok(out)
    }

    /// Add a committed policy version unless this plane has it already; whether it was added.
    fn take_policy(&self, st: &mut PlaneState, p: PolicyVersion) -> bool {
        if p.version <= st.head.policy_version {
            return false;
        }
        st.head.policy_version = p.version;
        st.policies.push_back(p);
        while st.policies.len() > self.settings.policy_history {
            st.policies.pop_front();
        }
        true
    }

    /// Take in what a shared store saw committed (by any replica, this one included: what is
    /// already here is skipped by its version or `seq`).
    pub fn apply_change(self: &Arc<Self>, change: StoreChange) {
        let mut st = self.state.lock();
        let before = st.head;
        let mut lost = Vec::new();
        match change {
            StoreChange::Records(records) => {
                for r in records {
                    match r {
                        Record::Policy(p) => {
                            self.take_policy(&mut st, p);
                        }
                        Record::Invalidation(i) => take_invalidation(&mut st, i),
                        Record::Floor { seq } if seq > st.floor => {
                            st.floor = seq;
                            let start = st.invalidations.partition_point(|i| i.seq <= seq);
                            st.invalidations.drain(..start);
                            st.ids = ids_of(st.invalidations.iter());
                            st.head.seq = st.head.seq.max(seq);
                            // the elected replica compacted: count from here
                            st.appended_since_compaction = 0;
                        }
                        _ => {}
                    }
                }
            }
            StoreChange::Receipts(list) => receipts::take(&mut st, list),
            StoreChange::Reset(state) => self.reset(&mut st, state),
            StoreChange::Restored(state) => {
                lost = restore::lost_after(&st, &state);
                self.reset(&mut st, state);
            }
        }
        while st.policies.len() > self.settings.policy_history {
            st.policies.pop_front();
        }
        if st.head != before {
            self.publish_head(st.head);
        }
        let due = st.appended_since_compaction >= self.settings.compact_after;
        drop(st);
        if !lost.is_empty() {
            restore::append_again(self.clone(), lost);
        }
        // the elected replica compacts what every replica appended
        if due && self.store.may_compact() {
            self.compact_when_due(&self.writes.lock());
        }
    }

    /// Replace everything with a full read of the store (`Reset`, `Restored`).
    fn reset(&self, st: &mut PlaneState, state: StoreState) {
        st.head = head_of(&state);
        st.ids = ids_of(state.invalidations.iter());
        st.policies = state.policies.into();
        st.invalidations = state.invalidations.into();
        st.floor = state.floor;
        st.epoch = state.epoch;
        st.nodes = receipts::decode_all(state.receipts);
        // what was delivered before the reset says nothing about the new content
        st.delivered = st.head.seq;
        st.recent.clear();
        self.resets.fetch_add(1, Ordering::SeqCst);
        self.head.send_replace(st.head);
    }

    /// What a node at `after` in this plane's epoch needs, or `None` when it is current.
    pub fn snapshot_for(&self, after: Option<Position>) -> Option<SnapshotMessage> {
        let epoch = self.state.lock().epoch.clone();
        self.snapshot_in(epoch.as_deref(), after)
    }

    /// What a node at `after` in `epoch` needs: from another epoch, everything.
    pub fn snapshot_in(
        &self,
        epoch: Option<&str>,
        after: Option<Position>,
    ) -> Option<SnapshotMessage> {
        let mut st = self.state.lock();
        let after = after.filter(|_| st.epoch.as_deref() == epoch);
        let mut msg = Self::snapshot_locked(&st, after, self.settings.invalidation_retention)?;
        msg.epoch.clone_from(&st.epoch);
        st.delivered = st.delivered.max(msg.seq);
        Some(msg)
    }

    fn snapshot_locked(
        st: &PlaneState,
        after: Option<Position>,
        retention: Duration,
    ) -> Option<SnapshotMessage> {
        let head = st.head;
        let retention_secs = retention.as_secs();
        let full = |st: &PlaneState| SnapshotMessage {
            full: true,
            policy_version: head.policy_version,
            seq: head.seq,
            policy: st.policies.back().map(|p| p.document.clone()),
            invalidations: st.invalidations.iter().cloned().collect(),
            retention_secs,
            epoch: None,
        };
        let Some(after) = after else {
            return Some(full(st));
        };
        if after == head {
            return None;
        }
        // A node ahead of us (another control plane, or lost state) or behind the compacted
        // part of the log gets everything; it decides what to do with it.
        if !head.is_at_or_after(&after) || after.seq < st.floor {
            return Some(full(st));
        }
        let policy = (after.policy_version < head.policy_version)
            .then(|| st.policies.back().map(|p| p.document.clone()))
            .flatten();
        let start = st.invalidations.partition_point(|i| i.seq <= after.seq);
        Some(SnapshotMessage {
            full: false,
            policy_version: head.policy_version,
            seq: head.seq,
            policy,
            invalidations: st.invalidations.iter().skip(start).cloned().collect(),
            retention_secs,
            epoch: None,
        })
    }

    /// Long-poll: answer at once when there is news for a node at `after` in `epoch`, else
    /// wait up to `wait`.
    pub async fn wait_snapshot(
        &self,
        after: Option<Position>,
        epoch: Option<&str>,
        wait: Duration,
    ) -> Option<SnapshotMessage> {
        let mut rx = self.head.subscribe();
        let resets = self.resets.load(Ordering::SeqCst);
        if let Some(msg) = self.snapshot_in(epoch, after) {
            return Some(msg);
        }
        let wait = wait.min(self.settings.max_wait);
        let news = |h: &Position| Some(*h) != after || self.resets.load(Ordering::SeqCst) != resets;
        if tokio::time::timeout(wait, rx.wait_for(news)).await.is_err() {
            return None;
        }
        self.snapshot_in(epoch, after)
    }

    /// Invalidations after `seq` still in the log.
    pub fn invalidations_after(&self, seq: u64) -> Vec<Invalidation> {
        let st = self.state.lock();
        let start = st.invalidations.partition_point(|i| i.seq <= seq);
        st.invalidations.iter().skip(start).cloned().collect()
    }
}

/// Add a committed invalidation unless the plane has it already.
fn take_invalidation(st: &mut PlaneState, i: Invalidation) {
    if i.seq <= st.head.seq {
        return;
    }
    if let Some(id) = &i.id {
        st.ids.insert(id.clone(), i.seq);
    }
    st.head.seq = i.seq;
    st.invalidations.push_back(i);
    st.appended_since_compaction += 1;
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn count_write<T>(kind: &str, result: &Result<T, PlaneError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(PlaneError::Conflict { .. }) | Err(PlaneError::PreconditionRequired) => "conflict",
        Err(PlaneError::Invalid(_)) | Err(PlaneError::BadRequest(_)) => "invalid",
        Err(PlaneError::RateLimited { .. }) => "rate_limited",
        Err(PlaneError::NotFound(_)) => "not_found",
        Err(PlaneError::Store(_)) => "store_error",
    };
    METRICS
        .control_writes
        .with_label_values(&[kind, outcome])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::super::store::{FileStore, StagedStored, StagedWrite};
    use super::*;
    use serde_json::json;

    fn settings(dir: &std::path::Path) -> ControlSettings {
        let mut s = ControlSettings::from_yaml_str("insecure_no_auth: true\n").unwrap();
        s.data_dir = dir.to_path_buf();
        s
    }

    fn open(dir: &std::path::Path) -> Arc<ControlPlane> {
        let s = settings(dir);
        ControlPlane::open(s, Box::new(FileStore::open(dir).unwrap())).unwrap()
    }

    fn policy_doc(backend: &str) -> serde_json::Value {
        json!({"pools": {"web": {"backends": [backend]}},
               "routes": [{"hosts": ["*"], "pool": "web"}]})
    }

    fn purge(kind: InvalidationKind, target: &str) -> InvalidationRequest {
        InvalidationRequest {
            id: None,
            kind,
            target: target.into(),
            soft: false,
            expected_version: None,
            nodes: None,
        }
    }

    #[test]
    fn policy_is_compare_and_set_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let cp = open(dir.path());
        assert!(matches!(
            cp.put_policy(policy_doc("127.0.0.1:1"), None, "t"),
            Err(PlaneError::PreconditionRequired)
        ));
        let v1 = cp
            .put_policy(policy_doc("127.0.0.1:1"), Some(0), "t")
            .unwrap();
        assert_eq!(v1.version, 1);
        assert!(matches!(
            cp.put_policy(policy_doc("127.0.0.1:2"), Some(0), "t"),
            Err(PlaneError::Conflict {
                current: 1,
                given: 0
            })
        ));
        let bad = json!({"pools": {"web": {"backends": []}}, "routes": [{"hosts": ["*"], "pool": "nope"}]});
        match cp.put_policy(bad, Some(1), "t") {
            Err(PlaneError::Invalid(e)) => assert_eq!(e.errors.len(), 2, "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(cp.head().policy_version, 1);
        // the same document again writes nothing
        let same = cp
            .put_policy(policy_doc("127.0.0.1:1"), Some(1), "t")
            .unwrap();
        assert_eq!(same.version, 1);
        assert_eq!(cp.history().len(), 1);
        cp.put_policy(policy_doc("127.0.0.1:2"), Some(1), "t")
            .unwrap();
        let v3 = cp.rollback(1, Some(2), "t").unwrap();
        assert_eq!((v3.version, v3.rollback_of), (3, Some(1)));
        assert_eq!(v3.document, policy_doc("127.0.0.1:1"));
        drop(cp);
        let cp = open(dir.path());
        assert_eq!(cp.head().policy_version, 3);
        assert_eq!(cp.history().len(), 3);
    }

    #[test]
    fn a_redelivered_purge_id_gets_its_first_seq_and_purges_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cp = open(dir.path());
        let with_id = |target: &str, id: &str| InvalidationRequest {
            id: Some(id.into()),
            ..purge(InvalidationKind::Url, target)
        };
        let first = cp.invalidate(&[with_id("a.com/x", "evt-1")], "t").unwrap();
        assert_eq!((first[0].seq, first[0].duplicate), (1, false));
        // the same target again with a new id is a new purge, not coalesced into the first
        let other = cp.invalidate(&[with_id("a.com/x", "evt-2")], "t").unwrap();
        assert_eq!((other[0].seq, other[0].duplicate), (2, false));
        // redeliveries, alone and inside a batch, purge nothing again
        let again = cp
            .invalidate(
                &[with_id("a.com/x", "evt-1"), with_id("a.com/y", "evt-3")],
                "t",
            )
            .unwrap();
        assert_eq!(
            again
                .iter()
                .map(|a| (a.seq, a.duplicate))
                .collect::<Vec<_>>(),
            [(1, true), (3, false)]
        );
        assert_eq!(cp.head().seq, 3);
        drop(cp);
        // after a restart the ids are still known
        let cp = open(dir.path());
        let later = cp.invalidate(&[with_id("a.com/y", "evt-3")], "t").unwrap();
        assert_eq!((later[0].seq, later[0].duplicate), (3, true));
        assert_eq!(cp.head().seq, 3);
        let bad = cp.invalidate(&[with_id("a.com/z", "")], "t");
        assert!(matches!(bad, Err(PlaneError::BadRequest(_))), "{bad:?}");
    }

    #[test]
    fn invalidations_get_sequences_coalesce_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cp = open(dir.path());
        let a = cp
            .invalidate(&[purge(InvalidationKind::Url, "a.com/x")], "t")
            .unwrap();
        assert_eq!(
            a,
            vec![Accepted {
                seq: 1,
                coalesced: false,
                duplicate: false
            }]
        );
        let b = cp
            .invalidate(
                &[
                    purge(InvalidationKind::Url, "A.com/x"),
                    purge(InvalidationKind::Tag, "t1"),
                    purge(InvalidationKind::Tag, "t1"),
                ],
                "t",
            )
            .unwrap();
        assert_eq!(
            b,
            vec![
                Accepted {
                    seq: 1,
                    coalesced: true,
                    duplicate: false
                },
                Accepted {
                    seq: 2,
                    coalesced: false,
                    duplicate: false
                },
                Accepted {
                    seq: 2,
                    coalesced: true,
                    duplicate: false
                }
            ]
        );
        // once delivered to a node, the same purge is a new invalidation
        cp.snapshot_for(None).unwrap();
        let c = cp
            .invalidate(&[purge(InvalidationKind::Url, "a.com/x")], "t")
            .unwrap();
        assert_eq!(
            c,
            vec![Accepted {
                seq: 3,
                coalesced: false,
                duplicate: false
            }]
        );
        assert!(matches!(
            cp.invalidate(&[purge(InvalidationKind::Host, "bad host")], "t"),
            Err(PlaneError::BadRequest(_))
        ));
        drop(cp);
        let cp = open(dir.path());
        assert_eq!(cp.head().seq, 3);
        assert_eq!(cp.invalidations_after(0).len(), 3);
    }

    #[test]
    fn snapshots_and_deltas() {
        let dir = tempfile::tempdir().unwrap();
        let cp = open(dir.path());
        cp.put_policy(policy_doc("127.0.0.1:1"), Some(0), "t")
            .unwrap();
        cp.invalidate(&[purge(InvalidationKind::Host, "a.com")], "t")
            .unwrap();
        let full = cp.snapshot_for(None).unwrap();
        assert!(full.full && full.policy.is_some() && full.invalidations.len() == 1);
        assert!(cp.snapshot_for(Some(full.position())).is_none());
        cp.invalidate(&[purge(InvalidationKind::Host, "b.com")], "t")
            .unwrap();
        let delta = cp.snapshot_for(Some(full.position())).unwrap();
        assert!(!delta.full && delta.policy.is_none());
        assert_eq!(delta.invalidations.len(), 1);
        assert_eq!(delta.invalidations[0].seq, 2);
        // a node from the future gets the full state to judge for itself
        let ahead = Position {
            policy_version: 9,
            seq: 0,
        };
        assert!(cp.snapshot_for(Some(ahead)).unwrap().full);
    }

    #[test]
    fn compaction_moves_the_floor_and_old_nodes_get_full_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let cp = open(dir.path());
        cp.invalidate(&[purge(InvalidationKind::Host, "a.com")], "t")
            .unwrap();
        cp.invalidate(&[purge(InvalidationKind::Host, "b.com")], "t")
            .unwrap();
        // everything is older than the retention seen from far in the future
        let later = SystemTime::now() + Duration::from_secs(30 * 86400);
        cp.compact(later).unwrap();
        let snap = cp
            .snapshot_for(Some(Position {
                policy_version: 0,
                seq: 1,
            }))
            .unwrap();
        assert!(snap.full);
        assert!(snap.invalidations.is_empty());
        assert_eq!(snap.seq, 2);
        drop(cp);
        let cp = open(dir.path());
        assert_eq!(cp.head().seq, 2, "the sequence survives compaction");
        let next = cp
            .invalidate(&[purge(InvalidationKind::Host, "c.com")], "t")
            .unwrap();
        assert_eq!(next[0].seq, 3);
    }

    #[test]
    fn purges_are_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.purge_rate = super::super::settings::Rate {
            per_second: 0.001,
            burst: 2.0,
        };
        let cp = ControlPlane::open(s, Box::new(FileStore::open(dir.path()).unwrap())).unwrap();
        cp.invalidate(&[purge(InvalidationKind::Host, "a.com")], "t")
            .unwrap();
        cp.invalidate(&[purge(InvalidationKind::Host, "b.com")], "t")
            .unwrap();
        assert!(matches!(
            cp.invalidate(&[purge(InvalidationKind::Host, "c.com")], "t"),
            Err(PlaneError::RateLimited { .. })
        ));
        // another token has its own bucket
        cp.invalidate(&[purge(InvalidationKind::Host, "c.com")], "other")
            .unwrap();
    }

    #[test]
    fn changes_from_a_shared_store_are_taken_in_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cp = open(dir.path());
        let p1 = PolicyVersion {
            version: 1,
            document: policy_doc("127.0.0.1:1"),
            written_ms: 1,
            author: "other".into(),
            rollback_of: None,
        };
        let inv = |seq: u64, id: Option<&str>| Invalidation {
            seq,
            kind: InvalidationKind::Host,
            target: format!("h{seq}.com"),
            soft: false,
            created_ms: 1,
            id: id.map(str::to_string),
            expected_version: None,
            nodes: None,
        };
        let at = cp.snapshot_for(None).unwrap().position();
        cp.apply_change(StoreChange::Records(vec![
            Record::Policy(p1.clone()),
            Record::Invalidation(inv(1, Some("evt"))),
            Record::Invalidation(inv(2, None)),
        ]));
        // a second delivery of the same records (this replica's own writes) changes nothing
        cp.apply_change(StoreChange::Records(vec![
            Record::Policy(p1),
            Record::Invalidation(inv(2, None)),
        ]));
        assert_eq!(
            cp.head(),
            Position {
                policy_version: 1,
                seq: 2
            }
        );
        let delta = cp.snapshot_for(Some(at)).unwrap();
        assert_eq!(delta.invalidations.len(), 2);
        assert!(delta.policy.is_some());
        // the client id came with it: a redelivery through this replica purges nothing
        let again = cp
            .invalidate(
                &[InvalidationRequest {
                    id: Some("evt".into()),
                    ..purge(InvalidationKind::Host, "h1.com")
                }],
                "t",
            )
            .unwrap();
        assert_eq!((again[0].seq, again[0].duplicate), (1, true));
        // retention elsewhere moves the floor here too
        cp.apply_change(StoreChange::Records(vec![Record::Floor { seq: 1 }]));
        assert_eq!(cp.invalidations_after(0).len(), 1);
        // a wiped or restored store replaces everything, even backwards
        cp.apply_change(StoreChange::Reset(StoreState::default()));
        assert_eq!(cp.head(), Position::default());
        assert!(cp.policy().is_none());
    }

    /// A file store whose appends wait until the test lets them go: a store stuck committing,
    /// as etcd without a quorum.
    struct StuckStore {
        inner: FileStore,
        entered: std::sync::mpsc::SyncSender<()>,
        go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Store for StuckStore {
        fn load(&self) -> Result<StoreState, StoreError> {
            self.inner.load()
        }
        fn append(&self, records: &[Record]) -> Result<(), StoreError> {
            self.entered.send(()).unwrap();
            self.go.lock().unwrap().recv().unwrap();
            self.inner.append(records)
        }
        fn rewrite(&self, state: &StoreState) -> Result<(), StoreError> {
            self.inner.rewrite(state)
        }
        fn staged(&self) -> std::collections::BTreeMap<u64, StagedStored> {
            self.inner.staged()
        }
        fn put_staged(&self, write: &StagedWrite, records: &[Record]) -> Result<(), StoreError> {
            self.inner.put_staged(write, records)
        }
    }

    #[test]
    fn reads_and_long_polls_are_answered_while_a_write_waits_for_the_store() {
        use std::sync::mpsc;
        let dir = tempfile::tempdir().unwrap();
        let (entered_tx, entered) = mpsc::sync_channel(1);
        let (go, go_rx) = mpsc::channel();
        let store = StuckStore {
            inner: FileStore::open(dir.path()).unwrap(),
            entered: entered_tx,
            go: std::sync::Mutex::new(go_rx),
        };
        let cp = ControlPlane::open(settings(dir.path()), Box::new(store)).unwrap();
        let writer = {
            let cp = cp.clone();
            std::thread::spawn(move || {
                cp.invalidate(&[purge(InvalidationKind::Host, "a.com")], "t")
            })
        };
        entered.recv_timeout(Duration::from_secs(10)).unwrap();
        // the write is in the store: a read, a snapshot and a long-poll are answered meanwhile
        let (answered_tx, answered) = mpsc::channel();
        let reader = {
            let cp = cp.clone();
            std::thread::spawn(move || {
                let at = cp.snapshot_for(None).unwrap().position();
                answered_tx
                    .send((cp.head(), cp.policy().is_none()))
                    .unwrap();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(cp.wait_snapshot(Some(at), None, Duration::from_secs(30)))
            })
        };
        let (head, no_policy) = answered
            .recv_timeout(Duration::from_secs(10))
            .expect("reads answered while the write waits for the store");
        assert_eq!(head, Position::default());
        assert!(no_policy);
        go.send(()).unwrap();
        let accepted = writer.join().unwrap().unwrap();
        assert_eq!(accepted[0].seq, 1);
        // the long-poll that waited through the write wakes with it
        let msg = reader.join().unwrap().unwrap();
        assert_eq!((msg.seq, msg.invalidations.len()), (1, 1));
    }

    #[test]
    fn a_restore_appends_the_invalidations_made_after_the_backup_again() {
        let dir = tempfile::tempdir().unwrap();
        let cp = open(dir.path());
        for target in ["a.com", "b.com", "c.com"] {
            cp.invalidate(&[purge(InvalidationKind::Host, target)], "t")
                .unwrap();
        }
        // the backup held the first only
        let backup = StoreState {
            invalidations: cp.invalidations_after(0)[..1].to_vec(),
            epoch: Some("new".into()),
            ..StoreState::default()
        };
        cp.apply_change(StoreChange::Restored(backup.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while cp.head().seq < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = cp.invalidations_after(0);
        let again: Vec<(u64, &str, Option<&str>)> = log
            .iter()
            .map(|i| (i.seq, i.target.as_str(), i.id.as_deref()))
            .collect();
        assert_eq!(
            again,
            [
                (1, "a.com", None),
                (2, "b.com", Some("restored-none-2")),
                (3, "c.com", Some("restored-none-3")),
            ]
        );
        // a reset that is not a restore (a wipe, a compaction) appends nothing again
        cp.apply_change(StoreChange::Reset(backup));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(cp.head().seq, 1);
    }

    #[tokio::test]
    async fn long_poll_returns_when_something_happens() {
        let dir = tempfile::tempdir().unwrap();
        let cp = open(dir.path());
        let at = cp.snapshot_for(None).unwrap().position();
        assert!(cp
            .wait_snapshot(Some(at), None, Duration::from_millis(20))
            .await
            .is_none());
        let cp2 = cp.clone();
        let waiter = tokio::spawn(async move {
            cp2.wait_snapshot(Some(at), None, Duration::from_secs(30))
                .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        cp.invalidate(&[purge(InvalidationKind::Host, "a.com")], "t")
            .unwrap();
        let msg = waiter.await.unwrap().unwrap();
        assert_eq!(msg.seq, 1);
    }
}
