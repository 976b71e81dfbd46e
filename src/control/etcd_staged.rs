//! Staged purges in etcd: `P staged/<id>` holds each one's state (JSON), so every replica
//! shows the same staged purges and any of them may pause, resume or abort one, while only the
//! elected leader drives the waves.
//!
//! - Every write is a transaction that compares the key's modification revision with the one
//!   the writer read (a new staged purge: that the key does not exist), so of two replicas
//!   changing one staged purge at once, one commits and the other reads again.
//! - A wave is one transaction: its invalidation (`P inv/<seq>` and `P seq`, compared as any
//!   append) and the staged purge's new state together, so a wave written is always recorded,
//!   and a wave recorded was written.
//! - A driver's write also compares the election key's create revision (the leader's fencing
//!   token): a replica that lost the leadership without knowing it yet writes no wave.
//! - Each replica keeps the staged purges in memory: filled by every full read, kept current by
//!   the watch (`apply`), and after its own writes by reading the key back.

use super::etcd_store::{commit, get, number, padded, txn, Keys};
use super::store::{StagedStored, StagedWrite, StoreError};
use etcd_client::{Client, Compare, CompareOp, KeyValue, Txn, TxnOp, TxnOpResponse};
use parking_lot::Mutex;
use std::collections::BTreeMap;

/// The staged purges as this replica last saw them in etcd.
#[derive(Debug, Default)]
pub(super) struct StagedMap {
    held: Mutex<BTreeMap<u64, StagedStored>>,
}

impl StagedMap {
    /// Everything, after a full read.
    pub(super) fn replace(&self, all: BTreeMap<u64, StagedStored>) {
        *self.held.lock() = all;
    }

    /// What the replica holds now.
    pub(super) fn all(&self) -> BTreeMap<u64, StagedStored> {
        self.held.lock().clone()
    }

    /// A put (`Some`) or a deletion (`None`) of staged purge `id` at `revision`; an older
    /// revision than the one held changes nothing (this replica read its own write back first).
    pub(super) fn apply(&self, id: u64, value: Option<&[u8]>, revision: i64) {
        let revision = u64::try_from(revision).unwrap_or(0);
        let mut held = self.held.lock();
        if held.get(&id).is_some_and(|s| s.revision > revision) {
            return;
        }
        match value.map(serde_json::from_slice::<serde_json::Value>) {
            Some(Ok(state)) => {
                held.insert(id, StagedStored { state, revision });
            }
            Some(Err(e)) => log::error!("etcd store: staged purge {id} does not decode: {e}"),
            None => {
                held.remove(&id);
            }
        }
    }
}

/// `P staged/<id>`
pub(super) fn key(keys: &Keys, id: u64) -> String {
    format!("{}staged/{}", keys.prefix(), padded(id))
}

/// The staged purge a key holds, if it is one.
pub(super) fn id_of(keys: &Keys, key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(keys.prefix().as_bytes())?;
    number(rest.strip_prefix(b"staged/")?).ok()
}

/// A stored staged purge, from a full read.
pub(super) fn stored(kv: &KeyValue) -> Result<StagedStored, StoreError> {
    Ok(StagedStored {
        state: serde_json::from_slice(kv.value()).map_err(|e| StoreError::Undecodable {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: e.to_string(),
        })?,
        revision: u64::try_from(kv.mod_revision()).unwrap_or(0),
    })
}

/// A wave's invalidations as the transaction writes them: `(seq, JSON)`, dense.
pub(super) type Batch = Vec<(u64, Vec<u8>)>;

/// Commit `write` (and `batch`, a wave's invalidations, with it); `fence` is the leader's
/// election key and its create revision, for a driver's write. Then read the key back into
/// `map`, so the writer sees its write at once.
pub(super) async fn put(
    client: &Client,
    keys: &Keys,
    map: &StagedMap,
    write: &StagedWrite,
    batch: Batch,
    fence: Option<(Vec<u8>, i64)>,
) -> Result<(), StoreError> {
    let k = key(keys, write.id);
    let mut compares = vec![match write.expected {
        Some(r) => Compare::mod_revision(
            k.clone(),
            CompareOp::Equal,
            i64::try_from(r).unwrap_or(i64::MAX),
        ),
        None => Compare::version(k.clone(), CompareOp::Equal, 0),
    }];
    let before = batch.first().map(|(seq, _)| seq.saturating_sub(1));
    if let Some(before) = before {
        compares.push(if before == 0 {
            Compare::version(keys.seq(), CompareOp::Equal, 0)
        } else {
            Compare::value(keys.seq(), CompareOp::Equal, padded(before))
        });
    }
    if let Some((leader, rev)) = &fence {
        compares.push(Compare::create_revision(
            leader.clone(),
            CompareOp::Equal,
            *rev,
        ));
    }
    let last = batch.last().map(|(seq, _)| *seq);
    let mut ops: Vec<TxnOp> = batch
        .into_iter()
        .map(|(seq, v)| TxnOp::put(keys.invalidation(seq), v, None))
        .collect();
    if let Some(last) = last {
        ops.push(TxnOp::put(keys.seq(), padded(last), None));
    }
    let value = match &write.state {
        Some(state) => Some(
            serde_json::to_vec(state)
                .map_err(|e| StoreError::Unavailable(format!("encoding: {e}")))?,
        ),
        None => None,
    };
    ops.push(match &value {
        Some(v) => TxnOp::put(k.clone(), v.clone(), None),
        None => TxnOp::delete(k.clone(), None),
    });
    let t = Txn::new()
        .when(compares)
        .and_then(ops)
        .or_else([TxnOp::get(k.clone(), None), TxnOp::get(keys.seq(), None)]);
    let refused = match value {
        // a value this write alone puts there tells, after an ambiguous failure, that the
        // commit was this one
        Some(v) => commit(client, t, (k.clone(), v)).await?.err(),
        None => Some(txn(client, t).await?).filter(|r| !r.succeeded()),
    };
    if let Some(resp) = refused {
        let responses = resp.op_responses();
        let now = nth_kv(&responses, 0).map(|kv| u64::try_from(kv.mod_revision()).unwrap_or(0));
        if now != write.expected {
            return Err(StoreError::StagedChanged { id: write.id });
        }
        if let Some(before) = before {
            let seq = nth_kv(&responses, 1).map_or(0, |kv| number(kv.value()).unwrap_or(0));
            if seq != before {
                return Err(StoreError::Conflict { current: seq });
            }
        }
        return Err(StoreError::NotDriver);
    }
    let got = get(client, k, None).await?;
    match got.kvs().first() {
        Some(kv) => map.apply(write.id, Some(kv.value()), kv.mod_revision()),
        None => map.apply(
            write.id,
            None,
            got.header().map_or(i64::MAX, |h| h.revision()),
        ),
    }
    Ok(())
}

/// The first key-value of the `n`th `get` among a transaction's responses.
fn nth_kv(responses: &[TxnOpResponse], n: usize) -> Option<KeyValue> {
    responses
        .iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().cloned()),
            _ => None,
        })
        .nth(n)
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_keys_are_told_apart_and_older_revisions_change_nothing() {
        let k = Keys::new("/verge/");
        assert_eq!(key(&k, 7), "/verge/staged/00000000000000000007");
        assert_eq!(id_of(&k, key(&k, 7).as_bytes()), Some(7));
        assert_eq!(id_of(&k, b"/verge/seq"), None);
        assert_eq!(id_of(&k, b"/other/staged/00000000000000000007"), None);
        let m = StagedMap::default();
        m.apply(1, Some(br#"{"phase":"running"}"#), 10);
        m.apply(1, Some(br#"{"phase":"paused"}"#), 9);
        assert_eq!(m.all()[&1].state["phase"], "running");
        assert_eq!(m.all()[&1].revision, 10);
        m.apply(1, None, 11);
        assert!(m.all().is_empty());
    }
}
