//! The identity of a control plane's data in etcd: `P epoch`, a random id written by the first
//! replica that finds none, and replaced by the first replica that sees etcd wiped or restored
//! (a changed cluster id, a revision gone back). Snapshots carry it; a node whose epoch is not
//! the plane's gets a full snapshot, whatever its position, since positions from another epoch
//! name other writes (after a wipe `seq` 1 is a new purge).

use super::etcd_store::{get, txn, Keys};
use super::store::StoreError;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use std::hash::{BuildHasher, Hasher};

/// A new random epoch: 16 hex digits.
pub(super) fn new_epoch() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Make sure `P epoch` exists, and when `replacing` is the epoch this replica knew from before
/// a restore, that it is replaced: compare-and-set, so of several replicas doing it at once one
/// writes and all read the same; `P restored` says which epoch it replaced. Returns the epoch
/// in force.
pub(super) async fn ensure(
    client: &Client,
    keys: &Keys,
    replacing: Option<&str>,
) -> Result<String, StoreError> {
    let key = keys.epoch();
    let absent = Compare::version(key.clone(), CompareOp::Equal, 0);
    let create = Txn::new()
        .when([absent])
        .and_then([TxnOp::put(key.clone(), new_epoch(), None)]);
    txn(client, create).await?;
    if let Some(old) = replacing {
        let same = Compare::value(key.clone(), CompareOp::Equal, old);
        let replace = Txn::new().when([same]).and_then([
            TxnOp::put(key.clone(), new_epoch(), None),
            TxnOp::put(keys.restored(), old, None),
        ]);
        if txn(client, replace).await?.succeeded() {
            log::warn!("etcd store: epoch {old} replaced (etcd was restored from a backup)");
        }
    }
    let got = get(client, key.clone(), None).await?;
    got.kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .ok_or_else(|| StoreError::Unavailable(format!("{key} vanished after being written")))
}

/// Whether `P restored` names `epoch`: a replica replaced it after a restore from a backup.
pub(super) async fn restored_from(
    client: &Client,
    keys: &Keys,
    epoch: &str,
) -> Result<bool, StoreError> {
    let got = get(client, keys.restored(), None).await?;
    Ok(got
        .kvs()
        .first()
        .is_some_and(|kv| kv.value() == epoch.as_bytes()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn epochs_differ() {
        let (a, b) = (super::new_epoch(), super::new_epoch());
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
    }
}
