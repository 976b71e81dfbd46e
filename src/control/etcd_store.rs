//! The control plane's store on etcd (v3 API, etcd 3.4 and later): every replica with the same
//! key prefix shares one policy and one invalidation log, and each commits with a transaction.
//!
//! Keys under the prefix `P` (see docs/etcd.md):
//!
//! - `P policy`: the current policy version. Its etcd `version` (puts since it was created) is
//!   the policy version, so a write with `If-Match: N` is a transaction that compares that
//!   key's version with `N` and writes `P policy` and the history entry `P history/<N+1>`
//!   together: of two replicas racing on `N`, exactly one commits.
//! - `P seq`: the last invalidation sequence number. An append compares it with the `seq` the
//!   replica started from and writes it with the batch's `P inv/<seq>` keys in the same
//!   transaction, so sequence numbers are dense and global and their order is etcd's revision
//!   order.
//! - `P floor`: the highest `seq` dropped by retention; it only moves up.
//!
//! The plane calls this store from synchronous code, so the store runs its own small runtime
//! and waits for each call there, bounded by `store.etcd.timeout`: a call that cannot commit
//! (no quorum, no member reachable) is an error, and the API answers 503.

use super::etcd_leader::{self, Leadership};
use super::etcd_receipts::{self, ReceiptLeases};
use super::etcd_staged::{self, StagedMap};
use super::etcd_watch::{self, Delivered, Loaded};
use super::store::{
    ChangeSink, PolicyVersion, Record, StagedStored, StagedWrite, Store, StoreError, StoreState,
};
use super::store_settings::{EtcdSettings, EtcdTls};
use super::wire::Invalidation;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions,
    GetResponse, Identity, KeyValue, SortOrder, SortTarget, TlsOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use parking_lot::Mutex;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The keys of one control plane in etcd.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

/// What a key under the prefix holds.
#[derive(Debug, PartialEq)]
pub(super) enum KeyKind {
    /// `P policy`: the compare-and-set anchor (its content is also in the history).
    Policy,
    /// `P history/<version>`
    History,
    /// `P seq`
    Seq,
    /// `P inv/<seq>`
    Invalidation,
    /// `P floor`
    Floor,
    /// `P epoch`: the store's identity
    Epoch,
    /// `P nodes/<id>`: a node's receipt, under its lease
    Receipt,
    /// Anything else (left alone).
    Other,
}

/// Numbers in keys are zero-padded so that key order is numeric order.
pub(super) fn padded(n: u64) -> String {
    format!("{n:020}")
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }
    fn policy(&self) -> String {
        format!("{}policy", self.prefix)
    }
    fn history(&self, version: u64) -> String {
        format!("{}history/{}", self.prefix, padded(version))
    }
    pub(super) fn seq(&self) -> String {
        format!("{}seq", self.prefix)
    }
    pub(super) fn invalidation(&self, seq: u64) -> String {
        format!("{}inv/{}", self.prefix, padded(seq))
    }
    fn floor(&self) -> String {
        format!("{}floor", self.prefix)
    }
    pub(super) fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }
    /// `P restored`: the epoch a restore from a backup replaced (written with the new epoch).
    pub(super) fn restored(&self) -> String {
        format!("{}restored", self.prefix)
    }
    fn receipt(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.prefix)
    }
    /// The node a receipt key is for.
    pub(super) fn receipt_node(&self, key: &[u8]) -> Option<String> {
        let rest = key.strip_prefix(self.prefix.as_bytes())?;
        let node = rest.strip_prefix(b"nodes/")?;
        Some(String::from_utf8_lossy(node).into_owned())
    }
    /// The election of the replica doing retention (etcd puts candidates' keys below it).
    fn election(&self) -> String {
        format!("{}leader", self.prefix)
    }
    pub(super) fn kind(&self, key: &[u8]) -> KeyKind {
        let Some(rest) = key.strip_prefix(self.prefix.as_bytes()) else {
            return KeyKind::Other;
        };
        match rest {
            b"policy" => KeyKind::Policy,
            b"seq" => KeyKind::Seq,
            b"floor" => KeyKind::Floor,
            b"epoch" => KeyKind::Epoch,
            r if r.starts_with(b"history/") => KeyKind::History,
            r if r.starts_with(b"inv/") => KeyKind::Invalidation,
            r if r.starts_with(b"nodes/") => KeyKind::Receipt,
            _ => KeyKind::Other,
        }
    }

    /// The record a stored key-value is, if it is one.
    pub(super) fn record(&self, kv: &KeyValue) -> Result<Option<Record>, StoreError> {
        let bad = |reason: String| StoreError::Undecodable {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            reason,
        };
        Ok(Some(match self.kind(kv.key()) {
            KeyKind::History => Record::Policy(
                serde_json::from_slice::<PolicyVersion>(kv.value())
                    .map_err(|e| bad(e.to_string()))?,
            ),
            KeyKind::Invalidation => Record::Invalidation(
                serde_json::from_slice::<Invalidation>(kv.value())
                    .map_err(|e| bad(e.to_string()))?,
            ),
            KeyKind::Floor => Record::Floor {
                seq: number(kv.value()).map_err(bad)?,
            },
            KeyKind::Policy | KeyKind::Seq | KeyKind::Epoch | KeyKind::Receipt | KeyKind::Other => {
                return Ok(None)
            }
        }))
    }

    /// Every record under the prefix, as one state.
    pub(super) fn state(&self, kvs: &[KeyValue]) -> Result<StoreState, StoreError> {
        let mut state = StoreState::default();
        for kv in kvs {
            if self.kind(kv.key()) == KeyKind::Epoch {
                state.epoch = Some(String::from_utf8_lossy(kv.value()).into_owned());
            }
            if let Some(node) = self.receipt_node(kv.key()) {
                state.receipts.insert(node, kv.value().to_vec());
            }
            if let Some(id) = etcd_staged::id_of(self, kv.key()) {
                match etcd_staged::stored(kv) {
                    Ok(s) => {
                        state.staged.insert(id, s);
                    }
                    Err(e) => log::error!("etcd store: skipping a staged purge: {e}"),
                }
            }
            match self.record(kv)? {
                Some(Record::Policy(p)) => state.policies.push(p),
                Some(Record::Invalidation(i)) => state.invalidations.push(i),
                Some(Record::Floor { seq }) => state.floor = state.floor.max(seq),
                Some(Record::Staged { .. }) | None => {}
            }
        }
        state.policies.sort_by_key(|p| p.version);
        state.invalidations.sort_by_key(|i| i.seq);
        // invalidations the floor covers are dropped, even if their deletion is still to come
        let floor = state.floor;
        state.invalidations.retain(|i| i.seq > floor);
        Ok(state)
    }
}

/// A decimal number stored as text.
pub(super) fn number(value: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("{:?} is not a number", String::from_utf8_lossy(value)))
}

/// Whether a call failed before any member got it (its connection could not be made).
fn never_sent(e: &etcd_client::Error) -> bool {
    // tonic is not a direct dependency: its connect error is recognised by name
    matches!(e, etcd_client::Error::GRpcStatus(s) if format!("{s:?}").contains("ConnectError"))
}

/// Whether a call may work if sent again: the member was down, the leader changed, the
/// connection broke (gRPC `Unavailable`). A certificate refused on either side is not: sending the
/// call again cannot help.
fn retryable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            format!("{:?}", s.code()) == "Unavailable" && !s.message().contains("certificate")
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Pause between two attempts of one call.
pub(super) const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Commit the compare-and-set `t`: `Ok(Ok(()))` when it committed, `Ok(Err(response))` when
/// its compare failed. An attempt that failed where it may still have committed (a leader
/// change, a broken connection) is sent again; if the first did commit, the retry's compare
/// fails, and reading back `mine` (a key `t` writes, with the value it writes) tells that the
/// commit was this one. The caller's timeout bounds the attempts.
pub(super) async fn commit(
    client: &Client,
    t: Txn,
    mine: (String, Vec<u8>),
) -> Result<Result<(), TxnResponse>, StoreError> {
    let mut maybe_committed = false;
    loop {
        let mut c = client.clone();
        match c.txn(t.clone()).await {
            Ok(resp) if resp.succeeded() => return Ok(Ok(())),
            Ok(resp) => {
                if maybe_committed {
                    let got = get(client, mine.0.clone(), None).await?;
                    if got.kvs().first().is_some_and(|kv| kv.value() == mine.1) {
                        return Ok(Ok(()));
                    }
                }
                return Ok(Err(resp));
            }
            Err(e) if retryable(&e) => {
                maybe_committed |= !never_sent(&e);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
}

/// A transaction without a compare that matters (sent again like a read).
pub(super) async fn txn(client: &Client, t: Txn) -> Result<TxnResponse, StoreError> {
    loop {
        let mut c = client.clone();
        match c.txn(t.clone()).await {
            Err(e) if retryable(&e) => tokio::time::sleep(RETRY_PAUSE).await,
            result => return result.map_err(unavailable),
        }
    }
}

/// A read, sent again while it fails with `Unavailable` (the caller's timeout bounds it).
pub(super) async fn get(
    client: &Client,
    key: String,
    options: Option<GetOptions>,
) -> Result<GetResponse, StoreError> {
    loop {
        let mut c = client.clone();
        match c.get(key.clone(), options.clone()).await {
            Err(e) if retryable(&e) => {
                log::debug!("etcd read of {key}: {e:?}; sending it again");
                tokio::time::sleep(RETRY_PAUSE).await
            }
            result => return result.map_err(unavailable),
        }
    }
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn json(value: &impl serde::Serialize) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Unavailable(format!("encoding: {e}")))
}

/// The client TLS settings: trust only `tls.ca` (no system roots), present the replica's
/// certificate when it has one.
fn tls_options(tls: &EtcdTls) -> TlsOptions {
    let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca));
    if let Some((cert, key)) = &tls.identity {
        options = options.identity(Identity::from_pem(cert, key));
    }
    if let Some(name) = &tls.server_name {
        options = options.domain_name(name.clone());
    }
    options
}

/// The store on etcd. One per `verge control` process.
pub struct EtcdStore {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    client: Client,
    keys: Keys,
    timeout: Duration,
    /// The members' URLs (for messages).
    endpoints: Vec<String>,
    /// Revision and cluster id of the last `load`, where the watch starts.
    loaded: Mutex<Option<Loaded>>,
    delivered: Arc<Delivered>,
    leadership: Arc<Leadership>,
    receipts: Arc<ReceiptLeases>,
    staged: Arc<StagedMap>,
}

impl EtcdStore {
    /// Connect to the cluster (members are reached lazily; nothing is read until `load`).
    pub fn connect(settings: &EtcdSettings) -> Result<EtcdStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("verge-etcd")
            .enable_all()
            .build()
            .map_err(|e| unavailable(format!("cannot start the etcd client's runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let endpoints = settings.endpoints.clone();
        let mut options = ConnectOptions::new()
            .with_connect_timeout(settings.timeout)
            .with_timeout(settings.timeout)
            .with_keep_alive(Duration::from_secs(5), settings.timeout);
        if let Some(auth) = &settings.auth {
            options = options.with_user(auth.user.clone(), auth.password.clone());
        }
        if let Some(tls) = &settings.tls {
            options = options.with_tls(tls_options(tls));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        handle.spawn(async move {
            let _ = tx.send(Client::connect(endpoints, Some(options)).await);
        });
        let client = rx
            .recv()
            .map_err(unavailable)?
            .map_err(|e| unavailable(format!("etcd {:?}: {e}", settings.endpoints)))?;
        Ok(EtcdStore {
            runtime: Some(runtime),
            handle,
            client,
            keys: Keys::new(&settings.prefix),
            timeout: settings.timeout,
            endpoints: settings.endpoints.clone(),
            loaded: Mutex::new(None),
            delivered: Arc::new(Delivered::default()),
            leadership: Arc::new(Leadership::default()),
            receipts: Arc::default(),
            staged: Arc::default(),
        })
    }

    /// Run `call` on the store's runtime and wait for it, at most `timeout`.
    fn run<T, F>(&self, call: impl FnOnce(Client, Keys) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = call(self.client.clone(), self.keys.clone());
        let timeout = self.timeout;
        self.handle.spawn(async move {
            let result = match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(unavailable(format!(
                    "no answer from etcd within {timeout:?}"
                ))),
            };
            let _ = tx.send(result);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(unavailable("the etcd client's runtime stopped")))
    }

    /// Commit a new policy version if `P policy` is still at the version before it.
    fn append_policy(&self, p: &PolicyVersion) -> Result<(), StoreError> {
        let value = json(p)?;
        let expected = i64::try_from(p.version.saturating_sub(1)).unwrap_or(i64::MAX);
        let version = p.version;
        self.run(move |client, keys| async move {
            let t = Txn::new()
                .when([Compare::version(keys.policy(), CompareOp::Equal, expected)])
                .and_then([
                    TxnOp::put(keys.policy(), value.clone(), None),
                    TxnOp::put(keys.history(version), value.clone(), None),
                ])
                .or_else([TxnOp::get(keys.policy(), None)]);
            let Err(resp) = commit(&client, t, (keys.history(version), value)).await? else {
                return Ok(());
            };
            let current = first_kv(&resp.op_responses()).map_or(0, |kv| kv.version());
            Err(StoreError::Conflict {
                current: u64::try_from(current).unwrap_or(0),
            })
        })
    }

    /// Commit a batch of invalidations if `P seq` is still the `seq` before the first.
    fn append_invalidations(&self, batch: &[&Invalidation]) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let before = first.seq.saturating_sub(1);
        let first_seq = first.seq;
        let last = last.seq;
        let mut puts = Vec::with_capacity(batch.len());
        for i in batch {
            puts.push((i.seq, json(i)?));
        }
        self.run(move |client, keys| async move {
            let compare = if before == 0 {
                Compare::version(keys.seq(), CompareOp::Equal, 0)
            } else {
                Compare::value(keys.seq(), CompareOp::Equal, padded(before))
            };
            let mine = (
                keys.invalidation(first_seq),
                puts.first().map(|(_, v)| v.clone()).unwrap_or_default(),
            );
            let mut ops: Vec<TxnOp> = puts
                .into_iter()
                .map(|(seq, v)| TxnOp::put(keys.invalidation(seq), v, None))
                .collect();
            ops.push(TxnOp::put(keys.seq(), padded(last), None));
            let t = Txn::new()
                .when([compare])
                .and_then(ops)
                .or_else([TxnOp::get(keys.seq(), None)]);
            let Err(resp) = commit(&client, t, mine).await? else {
                return Ok(());
            };
            let current = first_kv(&resp.op_responses())
                .map(|kv| number(kv.value()).unwrap_or(0))
                .unwrap_or(0);
            Err(StoreError::Conflict { current })
        })
    }
}

/// The first key-value of the first `get` among a transaction's responses.
fn first_kv(responses: &[TxnOpResponse]) -> Option<KeyValue> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

impl Store for EtcdStore {
    fn load(&self) -> Result<StoreState, StoreError> {
        let (state, loaded) = self
            .run(|client, keys| async move { etcd_watch::list(&client, &keys).await })
            .map_err(|e| unavailable(format!("etcd {:?}: first read: {e}", self.endpoints)))?;
        self.delivered.advance(loaded.revision);
        *self.loaded.lock() = Some(loaded);
        self.staged.replace(state.staged.clone());
        Ok(state)
    }

    fn append(&self, records: &[Record]) -> Result<(), StoreError> {
        match records {
            [Record::Policy(p)] => self.append_policy(p),
            _ => {
                let mut batch = Vec::with_capacity(records.len());
                for r in records {
                    match r {
                        Record::Invalidation(i) => batch.push(i),
                        _ => {
                            return Err(unavailable(
                                "etcd store: a policy is written alone, a floor only by compaction",
                            ))
                        }
                    }
                }
                self.append_invalidations(&batch)
            }
        }
    }

    /// Drop what `state` no longer holds: invalidations up to its floor and policy versions
    /// older than its oldest. Only the elected replica does it, and each transaction compares
    /// the election key's create revision (the fencing token), so a replica that lost the
    /// leadership meanwhile changes nothing. Deletions of old keys are idempotent and the floor
    /// only moves up (a compare on its current value).
    fn rewrite(&self, state: &StoreState) -> Result<(), StoreError> {
        let Some((leader_key, leader_rev)) = self.leadership.fence() else {
            return Err(unavailable("not the replica elected to do retention"));
        };
        let floor = state.floor;
        let oldest = state.policies.first().map(|p| p.version);
        self.run(move |client, keys| async move {
            for _ in 0..5 {
                let got = get(&client, keys.floor(), None).await?;
                let current = got.kvs().first().map(|kv| number(kv.value()).unwrap_or(0));
                let mut ops = vec![TxnOp::delete(
                    format!("{}inv/", keys.prefix),
                    Some(DeleteOptions::new().with_range(keys.invalidation(floor + 1))),
                )];
                if let Some(oldest) = oldest {
                    ops.push(TxnOp::delete(
                        format!("{}history/", keys.prefix),
                        Some(DeleteOptions::new().with_range(keys.history(oldest))),
                    ));
                }
                let compare = match current {
                    Some(c) if c >= floor => {
                        // the floor is already there or higher: only the deletions
                        Compare::value(keys.floor(), CompareOp::Equal, padded(c))
                    }
                    Some(c) => {
                        ops.push(TxnOp::put(keys.floor(), padded(floor), None));
                        Compare::value(keys.floor(), CompareOp::Equal, padded(c))
                    }
                    None => {
                        ops.push(TxnOp::put(keys.floor(), padded(floor), None));
                        Compare::version(keys.floor(), CompareOp::Equal, 0)
                    }
                };
                let fence =
                    Compare::create_revision(leader_key.clone(), CompareOp::Equal, leader_rev);
                let resp = txn(&client, Txn::new().when([compare, fence]).and_then(ops)).await?;
                if resp.succeeded() {
                    return Ok(());
                }
            }
            Err(StoreError::Conflict { current: floor })
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn put_receipt(&self, node: &str, receipt: Vec<u8>, ttl: Duration, urgent: bool) {
        let (client, keys, leases) = (
            self.client.clone(),
            self.keys.clone(),
            self.receipts.clone(),
        );
        let node = node.to_string();
        let timeout = self.timeout;
        self.handle.spawn(async move {
            let key = keys.receipt(&node);
            let put = etcd_receipts::put(&client, &leases, &node, key, receipt, ttl, urgent);
            match tokio::time::timeout(timeout, put).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::warn!("node {node}: receipt not written to etcd: {e}"),
                Err(_) => log::warn!("node {node}: receipt not written to etcd within {timeout:?}"),
            }
        });
    }

    fn may_compact(&self) -> bool {
        self.leadership.fence().is_some()
    }

    fn staged(&self) -> std::collections::BTreeMap<u64, StagedStored> {
        self.staged.all()
    }

    /// One transaction (`etcd_staged.rs`): the staged purge's compare and put, the wave's
    /// invalidations compared and put as `append` does, and for a driver's write the leader's
    /// fencing token.
    fn put_staged(&self, write: &StagedWrite, records: &[Record]) -> Result<(), StoreError> {
        let fence = match (write.fenced, self.leadership.fence()) {
            (false, _) => None,
            (true, None) => return Err(StoreError::NotDriver),
            (true, Some(f)) => Some(f),
        };
        let mut batch = Vec::with_capacity(records.len());
        for r in records {
            let Record::Invalidation(i) = r else {
                return Err(unavailable("etcd store: a wave carries invalidations only"));
            };
            batch.push((i.seq, json(i)?));
        }
        let (map, write) = (self.staged.clone(), write.clone());
        self.run(move |client, keys| async move {
            etcd_staged::put(&client, &keys, &map, &write, batch, fence).await
        })
    }

    fn drives_staged(&self) -> bool {
        self.leadership.fence().is_some()
    }

    fn subscribe(&self, sink: ChangeSink) {
        let Some(loaded) = self.loaded.lock().clone() else {
            log::error!("etcd store: subscribe before load; no changes will be delivered");
            return;
        };
        etcd_watch::start(
            &self.handle,
            self.client.clone(),
            self.keys.clone(),
            loaded,
            sink,
            etcd_watch::Watched {
                delivered: self.delivered.clone(),
                staged: self.staged.clone(),
            },
            self.timeout,
        );
        // the lease outlives a member's loss and a leader change, but not a dead replica for long
        etcd_leader::start(
            &self.handle,
            self.client.clone(),
            self.keys.election(),
            self.leadership.clone(),
            (self.timeout * 2).max(Duration::from_secs(2)),
        );
    }

    /// Read the newest revision among this prefix's keys (a linearizable read: it needs a
    /// quorum) and wait until the watch has delivered it.
    fn sync(&self) -> Result<(), StoreError> {
        let newest = self.run(|client, keys| async move {
            let options = GetOptions::new()
                .with_prefix()
                .with_keys_only()
                .with_limit(1)
                .with_sort(SortTarget::Mod, SortOrder::Descend);
            let got = get(&client, keys.prefix().to_string(), Some(options)).await?;
            Ok(got.kvs().first().map_or(0, |kv| kv.mod_revision()))
        })?;
        if self.delivered.wait_for(newest, self.timeout) {
            Ok(())
        } else {
            Err(unavailable(format!(
                "the watch has not delivered revision {newest} within {:?}",
                self.timeout
            )))
        }
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // dropping a runtime inside another one's context would panic
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically_and_are_told_apart() {
        let k = Keys::new("/verge/");
        assert!(k.invalidation(9) < k.invalidation(10));
        assert!(k.history(99) < k.history(100));
        assert_eq!(k.kind(b"/verge/policy"), KeyKind::Policy);
        assert_eq!(k.kind(k.history(3).as_bytes()), KeyKind::History);
        assert_eq!(k.kind(k.invalidation(3).as_bytes()), KeyKind::Invalidation);
        assert_eq!(k.kind(b"/verge/seq"), KeyKind::Seq);
        assert_eq!(k.kind(b"/verge/floor"), KeyKind::Floor);
        assert_eq!(k.kind(b"/verge/epoch"), KeyKind::Epoch);
        assert_eq!(k.kind(b"/verge/else"), KeyKind::Other);
        assert_eq!(k.kind(b"/other/policy"), KeyKind::Other);
        assert_eq!(number(b"00000000000000000042"), Ok(42));
        assert!(number(b"x").is_err());
    }
}
