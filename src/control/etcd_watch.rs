//! What feeds a replica's memory from etcd: one read of everything under the prefix, then one
//! watch from that read's revision + 1, so every commit of every replica reaches every plane in
//! revision order, and the long-polls are answered from memory.
//!
//! - The watch only moves forward on what its own stream says: past an event's revision, or to
//!   a progress notification's revision. A broken stream is watched again from there, never
//!   from "now".
//! - History compacted past that revision (`compact_revision` / `ErrCompacted`): read
//!   everything again and hand the plane the whole state (positions are global, so its nodes
//!   still get deltas from where they are); then watch from the new read. This happens only
//!   when the watch fell behind etcd's compaction, not on every compaction.
//! - A revision lower than one already seen, or another cluster id, means etcd was wiped or
//!   restored: the same full read replaces the plane's state, and when that read confirms it
//!   (a linearizable read at a lower revision, or another cluster) while `P epoch` is still the
//!   old one (a restore), the epoch is replaced, so nodes resync in full (`etcd_epoch.rs`).
//! - `P epoch` changed or deleted by anyone: read everything again.

use super::etcd_epoch;
use super::etcd_staged::{self, StagedMap};
use super::etcd_store::{get, KeyKind, Keys};
use super::store::{ChangeSink, Record, StoreChange, StoreError, StoreState};
use crate::metrics::METRICS;
use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchResponse};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Where a full read left the store: the watch starts after `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Loaded {
    /// The revision the read was served at.
    pub revision: i64,
    /// The etcd cluster that served it.
    pub cluster_id: u64,
    /// `P epoch` as the read found it.
    pub epoch: Option<String>,
}

/// The newest revision whose changes the plane has taken in; `sync` waits on it.
#[derive(Debug, Default)]
pub(super) struct Delivered {
    revision: Mutex<i64>,
    moved: Condvar,
}

impl Delivered {
    /// Everything up to `revision` was delivered.
    pub(super) fn advance(&self, revision: i64) {
        self.set(revision, false);
    }

    fn set(&self, revision: i64, reset: bool) {
        let mut r = self.revision.lock().unwrap_or_else(|p| p.into_inner());
        *r = if reset { revision } else { (*r).max(revision) };
        self.moved.notify_all();
    }

    /// Wait until `revision` was delivered, at most `timeout`; whether it was.
    pub(super) fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        let r = self.revision.lock().unwrap_or_else(|p| p.into_inner());
        let (r, _) = self
            .moved
            .wait_timeout_while(r, timeout, |r| *r < revision)
            .unwrap_or_else(|p| p.into_inner());
        *r >= revision
    }
}

/// Read everything under the prefix at one revision (writing `P epoch` first if there is none).
pub(super) async fn list(client: &Client, keys: &Keys) -> Result<(StoreState, Loaded), StoreError> {
    etcd_epoch::ensure(client, keys, None).await?;
    let got = get(
        client,
        keys.prefix().to_string(),
        Some(GetOptions::new().with_prefix()),
    )
    .await?;
    let state = keys.state(got.kvs())?;
    let loaded = Loaded {
        revision: got.header().map_or(0, |h| h.revision()),
        cluster_id: got.header().map_or(0, |h| h.cluster_id()),
        epoch: state.epoch.clone(),
    };
    Ok((state, loaded))
}

/// Read everything again after the watch at `before` met a compaction, a cancel, a changed
/// cluster or a revision gone back. When the (linearizable) read confirms that etcd is another
/// cluster or went back in time, but still holds `before`'s epoch (a restore from a backup),
/// the epoch is replaced and read again. The change is a `Restored` when this replica replaced
/// its epoch so, or another replica did (`P restored` names it).
async fn list_after(
    client: &Client,
    keys: &Keys,
    before: &Loaded,
) -> Result<(StoreChange, Loaded), StoreError> {
    let (state, loaded) = list(client, keys).await?;
    let moved = loaded.cluster_id != before.cluster_id || loaded.revision < before.revision;
    match &before.epoch {
        Some(old) if moved && loaded.epoch.as_ref() == Some(old) => {
            etcd_epoch::ensure(client, keys, Some(old)).await?;
            let (state, loaded) = list(client, keys).await?;
            Ok((StoreChange::Restored(state), loaded))
        }
        Some(old)
            if loaded.epoch.as_ref() != Some(old)
                && etcd_epoch::restored_from(client, keys, old).await? =>
        {
            Ok((StoreChange::Restored(state), loaded))
        }
        _ => Ok((StoreChange::Reset(state), loaded)),
    }
}

/// One change for the plane, and the revision it brings the plane to.
struct Delivery {
    changes: Vec<StoreChange>,
    revision: i64,
    reset: bool,
}

/// What the watch keeps current besides the plane: how far it delivered (what `sync` waits
/// for), and the staged purges (the store's own).
pub(super) struct Watched {
    /// The revision delivered.
    pub delivered: std::sync::Arc<Delivered>,
    /// The staged purges.
    pub staged: std::sync::Arc<StagedMap>,
}

/// Start the watch on `handle`, delivering to `sink` on a thread of its own (the sink takes
/// the plane's lock, which a writer holds while it waits for etcd on this runtime).
pub(super) fn start(
    handle: &tokio::runtime::Handle,
    client: Client,
    keys: Keys,
    from: Loaded,
    sink: ChangeSink,
    watched: Watched,
    timeout: Duration,
) {
    let Watched { delivered, staged } = watched;
    let (tx, rx) = mpsc::channel::<Delivery>();
    let spawned = std::thread::Builder::new()
        .name("verge-etcd-apply".into())
        .spawn(move || {
            for d in rx {
                for change in d.changes {
                    sink(change);
                }
                delivered.set(d.revision, d.reset);
            }
        });
    if let Err(e) = spawned {
        log::error!("etcd store: cannot start the thread applying changes: {e}");
        return;
    }
    handle.spawn(watch(client, keys, from, tx, staged, timeout));
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Watch from `at.revision + 1` for as long as the plane lives.
async fn watch(
    mut client: Client,
    keys: Keys,
    mut at: Loaded,
    tx: mpsc::Sender<Delivery>,
    staged: std::sync::Arc<StagedMap>,
    timeout: Duration,
) {
    let mut backoff = BACKOFF_MIN;
    let mut first = true;
    loop {
        // A stream that broke may have missed a restore whose revisions caught up with this
        // one's (same cluster id, the epoch replaced by another replica below `at.revision`):
        // the cluster, revision and epoch are read again before watching from where the
        // stream left off.
        if !std::mem::take(&mut first) {
            if let Some(moved) = moved_since(&client, &keys, &at, timeout).await {
                match relist(&client, &keys, &at, &tx, &staged, timeout, moved).await {
                    Some(now) => at = now,
                    None => return,
                }
            }
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(at.revision + 1)
            .with_progress_notify();
        let started = tokio::time::timeout(
            timeout,
            client.watch(keys.prefix().to_string(), Some(options)),
        )
        .await;
        let mut stream = match started {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                log::warn!("etcd watch from revision {}: {e}", at.revision + 1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            Err(_) => {
                log::warn!("etcd watch from revision {}: no answer", at.revision + 1);
                continue;
            }
        };
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => {
                    log::warn!("etcd watch stream ended at revision {}", at.revision);
                    break;
                }
                Err(e) => {
                    log::warn!("etcd watch stream at revision {}: {e}", at.revision);
                    break;
                }
            };
            backoff = BACKOFF_MIN;
            match step(&keys, &mut at, &resp, &staged) {
                Step::Deliver(d) => {
                    if tx.send(d).is_err() {
                        return; // the plane is gone
                    }
                }
                Step::Nothing => {}
                Step::Relist(why, reason) => {
                    match relist(&client, &keys, &at, &tx, &staged, timeout, (why, reason)).await {
                        Some(now) => at = now,
                        None => return,
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum Step {
    Deliver(Delivery),
    Nothing,
    /// Read everything again: why (for the log) and the metric's reason.
    Relist(String, &'static str),
}

/// What one watch response means for a plane at `at`.
fn step(keys: &Keys, at: &mut Loaded, resp: &WatchResponse, staged: &StagedMap) -> Step {
    if resp.compact_revision() > 0 {
        return Step::Relist(
            format!(
                "history compacted up to revision {} (the watch was at {})",
                resp.compact_revision(),
                at.revision
            ),
            "compacted",
        );
    }
    if resp.canceled() {
        return Step::Relist(
            format!("watch canceled: {}", resp.cancel_reason()),
            "canceled",
        );
    }
    let Some(h) = resp.header() else {
        return Step::Nothing;
    };
    if let Some((why, reason)) = history_moved(at, h.cluster_id(), h.revision()) {
        return Step::Relist(why, reason);
    }
    if resp.created() {
        // its header is the store's revision now, not how far this stream has delivered
        return Step::Nothing;
    }
    if resp.events().is_empty() {
        // a progress notification: every event up to its revision was sent
        at.revision = h.revision();
        return Step::Deliver(Delivery {
            changes: Vec::new(),
            revision: at.revision,
            reset: false,
        });
    }
    let mut records = Vec::new();
    let mut receipts = Vec::new();
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        if keys.kind(kv.key()) == KeyKind::Epoch {
            let now = (ev.event_type() == EventType::Put).then(|| kv.value());
            if now != at.epoch.as_ref().map(|e| e.as_bytes()) {
                return Step::Relist(
                    format!(
                        "epoch changed from {:?} to {:?}",
                        at.epoch,
                        now.map(String::from_utf8_lossy)
                    ),
                    "epoch_changed",
                );
            }
        }
        at.revision = at.revision.max(kv.mod_revision());
        if let Some(id) = etcd_staged::id_of(keys, kv.key()) {
            // staged purges are the store's own: taken in here, before the delivery that
            // `sync` waits for
            let put = ev.event_type() == EventType::Put;
            staged.apply(id, put.then(|| kv.value()), kv.mod_revision());
            continue;
        }
        if let Some(node) = keys.receipt_node(kv.key()) {
            // a delete is the node's lease expiring
            let put = ev.event_type() == EventType::Put;
            receipts.push((node, put.then(|| kv.value().to_vec())));
            continue;
        }
        if ev.event_type() != EventType::Put {
            continue; // deletions are retention's: the floor record says what they cover
        }
        match keys.record(kv) {
            Ok(Some(r)) => records.push(r),
            Ok(None) => {}
            Err(e) => log::error!("etcd store: skipping a record: {e}"),
        }
    }
    records.sort_by_key(|r| match r {
        Record::Policy(p) => (0, p.version),
        Record::Invalidation(i) => (1, i.seq),
        Record::Floor { seq } => (2, *seq),
        Record::Staged { id, .. } => (3, *id),
    });
    let mut changes = vec![StoreChange::Records(records)];
    if !receipts.is_empty() {
        changes.push(StoreChange::Receipts(receipts));
    }
    Step::Deliver(Delivery {
        changes,
        revision: at.revision,
        reset: false,
    })
}

/// Why to read everything again before watching from `at` after a broken stream: another
/// cluster, a revision gone back, or another epoch (`None` also when etcd cannot be read: the
/// watch that follows fails the same way and is retried).
async fn moved_since(
    client: &Client,
    keys: &Keys,
    at: &Loaded,
    timeout: Duration,
) -> Option<(String, &'static str)> {
    let got = tokio::time::timeout(timeout, get(client, keys.epoch(), None))
        .await
        .ok()?
        .ok()?;
    let h = got.header()?;
    if let Some(moved) = history_moved(at, h.cluster_id(), h.revision()) {
        return Some(moved);
    }
    let now = got
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
    (now != at.epoch).then(|| {
        (
            format!("epoch changed from {:?} to {now:?}", at.epoch),
            "epoch_changed",
        )
    })
}

/// Whether an answer from etcd (its cluster id and revision) comes from another history than
/// `at`'s: another cluster, or a revision gone back (a wipe or a restore). Why, and the
/// resync's reason label.
fn history_moved(at: &Loaded, cluster_id: u64, revision: i64) -> Option<(String, &'static str)> {
    if cluster_id != at.cluster_id {
        return Some((
            format!(
                "cluster id changed from {:x} to {cluster_id:x}",
                at.cluster_id
            ),
            "cluster_changed",
        ));
    }
    (revision < at.revision).then(|| {
        (
            format!("revision went back from {} to {revision}", at.revision),
            "revision_back",
        )
    })
}

/// Read everything again and hand it to the plane, for the reason given (logged and counted);
/// retried until it works or the plane is gone.
async fn relist(
    client: &Client,
    keys: &Keys,
    before: &Loaded,
    tx: &mpsc::Sender<Delivery>,
    staged: &StagedMap,
    timeout: Duration,
    (why, reason): (String, &'static str),
) -> Option<Loaded> {
    log::warn!("etcd store: {why}; reading everything again");
    METRICS
        .control_store_resyncs
        .with_label_values(&[reason])
        .inc();
    let mut backoff = BACKOFF_MIN;
    loop {
        match tokio::time::timeout(timeout, list_after(client, keys, before)).await {
            Ok(Ok((change, loaded))) => {
                if let StoreChange::Reset(state) | StoreChange::Restored(state) = &change {
                    staged.replace(state.staged.clone());
                }
                let d = Delivery {
                    changes: vec![change],
                    revision: loaded.revision,
                    reset: true,
                };
                return tx.send(d).ok().map(|()| loaded);
            }
            Ok(Err(e)) => log::warn!("etcd store: reading everything again: {e}"),
            Err(_) => log::warn!("etcd store: reading everything again: no answer"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
