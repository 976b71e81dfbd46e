//! The control plane's durable store: a trait, and the embedded file store (an fsynced log).
//!
//! A store several control planes share (etcd: `etcd_store.rs`) also delivers what any of them
//! commits to each one (`subscribe`), and lets a writer catch up before a compare-and-set
//! (`sync`).
//!
//! Every accepted write is appended as one JSON line and `fsync`ed before the API answers 2xx.
//! Compaction rewrites the log (policy history + retained invalidations) into a temporary file
//! and renames it over the old one, so a crash at any point leaves one complete log.

use super::wire::Invalidation;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// One version of the policy document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// Its version number (1, 2, …).
    pub version: u64,
    /// The policy document (pools and routes).
    pub document: serde_json::Value,
    /// When it was written (Unix milliseconds).
    pub written_ms: u64,
    /// Name of the token that wrote it.
    pub author: String,
    /// Set when this version restores an older one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// A new policy version.
    Policy(PolicyVersion),
    /// An accepted invalidation.
    Invalidation(Invalidation),
    /// Written first by compaction: invalidations up to `seq` were dropped.
    Floor {
        /// The highest sequence number dropped.
        seq: u64,
    },
    /// A staged purge as it now stands (the last record of an id wins), or gone (`None`).
    Staged {
        /// The staged purge's id.
        id: u64,
        /// Its state, as the staged-purge module writes it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<serde_json::Value>,
    },
}

/// A staged purge as a store holds it: its state and the revision of the write that put it
/// there (what the next write compares).
#[derive(Debug, Clone, PartialEq)]
pub struct StagedStored {
    /// Its state, as the staged-purge module writes it.
    pub state: serde_json::Value,
    /// The write that put it there (etcd: the key's modification revision).
    pub revision: u64,
}

/// One write of a staged purge: compared against what the store holds, committed with the
/// invalidation of a wave when there is one, all or nothing.
#[derive(Debug, Clone)]
pub struct StagedWrite {
    /// The staged purge's id.
    pub id: u64,
    /// Its new state; `None` removes it.
    pub state: Option<serde_json::Value>,
    /// The revision the writer read; `None`: the id must not exist yet.
    pub expected: Option<u64>,
    /// A driver's write: committed only while this replica drives staged purges (on a shared
    /// store: the elected leader, compared by its fencing token).
    pub fenced: bool,
}

/// Everything a store holds, in write order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreState {
    /// Policy versions, oldest first.
    pub policies: Vec<PolicyVersion>,
    /// Invalidations after `floor`, oldest first.
    pub invalidations: Vec<Invalidation>,
    /// Highest sequence number compacted away (0: none).
    pub floor: u64,
    /// The store's identity (a shared store's random id, written once and replaced when the
    /// store was wiped or restored); positions from another epoch mean nothing here.
    pub epoch: Option<String>,
    /// Nodes' receipts a shared store holds (under each node's lease), by node id: what every
    /// replica lists in `/v1/nodes`.
    pub receipts: std::collections::BTreeMap<String, Vec<u8>>,
    /// Staged purges, by id.
    pub staged: std::collections::BTreeMap<u64, StagedStored>,
}

impl StoreState {
    fn push(&mut self, r: Record) {
        match r {
            Record::Policy(p) => self.policies.push(p),
            Record::Invalidation(i) => self.invalidations.push(i),
            Record::Floor { seq } => self.floor = self.floor.max(seq),
            Record::Staged { id, state } => {
                let revision = self.staged.values().map(|s| s.revision).max().unwrap_or(0) + 1;
                match state {
                    Some(state) => self.staged.insert(id, StagedStored { state, revision }),
                    None => self.staged.remove(&id),
                };
            }
        }
    }
}

/// Why the store failed. Writes that fail are not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading, writing or syncing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A line of the log does not decode (a torn last line is not corrupt: it is dropped).
    #[error("{path}: line {line} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Its 1-based line number.
        line: usize,
        /// Why it does not decode.
        reason: String,
    },
    /// A staged purge changed (or was created) since the writer read it: nothing was written.
    #[error("staged purge {id} changed meanwhile")]
    StagedChanged {
        /// The staged purge.
        id: u64,
    },
    /// This replica does not drive staged purges (no longer the elected leader): a driver's
    /// write was not committed.
    #[error("not the replica that drives staged purges")]
    NotDriver,
    /// Another writer committed first: the compare-and-set failed and nothing was written.
    /// `current` is the policy version (a policy write) or the last `seq` (invalidations).
    #[error("another writer committed first (current: {current})")]
    Conflict {
        /// What the store holds now.
        current: u64,
    },
    /// The store cannot be reached or cannot commit (no quorum, timeout); the write may not
    /// have happened and is not acknowledged.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored value does not decode.
    #[error("key {key}: {reason}")]
    Undecodable {
        /// The key.
        key: String,
        /// Why it does not decode.
        reason: String,
    },
}

/// What a shared store saw committed, delivered in commit order.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreChange {
    /// Records committed (by any writer, this one included), oldest first.
    Records(Vec<Record>),
    /// The whole content, read again: after the store's history was compacted past what was
    /// delivered, or after it went back in time or changed identity (a wipe or a restore).
    Reset(StoreState),
    /// As `Reset`, after this replica saw the store restored from a backup (it went back in
    /// time with the data's epoch): what the replica held beyond it was written after the backup.
    Restored(StoreState),
    /// Nodes' receipts written (by any replica) or gone (their lease expired: `None`).
    Receipts(Vec<(String, Option<Vec<u8>>)>),
}

/// Where a shared store delivers its changes.
pub type ChangeSink = Box<dyn Fn(StoreChange) + Send + Sync>;

/// Where the control plane keeps policy versions and the invalidation log. Implementations must
/// make a write durable before `append` returns.
pub trait Store: Send + Sync {
    /// Read everything back (at startup).
    fn load(&self) -> Result<StoreState, StoreError>;
    /// Append records durably, all or nothing from the caller's point of view.
    fn append(&self, records: &[Record]) -> Result<(), StoreError>;
    /// Replace the whole content with `state` (compaction).
    fn rewrite(&self, state: &StoreState) -> Result<(), StoreError>;
    /// Whether this control plane may compact now (with a shared store: only the replica
    /// elected to do retention).
    fn may_compact(&self) -> bool {
        true
    }
    /// Whether other control planes write to this store too.
    fn shared(&self) -> bool {
        false
    }
    /// Deliver every change committed after `load` to `sink`, in commit order (a shared store;
    /// a store only this process writes has nothing to deliver).
    fn subscribe(&self, _sink: ChangeSink) {}
    /// Return once every change committed before the call was delivered to the sink, so a
    /// compare-and-set starts from the newest state.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Keep node `node`'s receipt where every replica sees it, until `ttl` passes without the
    /// node reporting again (a shared store; others keep receipts in memory). A store may
    /// write only every so often unless the receipt is `urgent` (a new node, another policy
    /// version, another refusal). Never waits: a receipt that cannot be written is logged and
    /// the next report tries again.
    fn put_receipt(
        &self,
        _node: &str,
        _receipt: Vec<u8>,
        _ttl: std::time::Duration,
        _urgent: bool,
    ) {
    }
    /// The staged purges this store holds, by id (from memory: a shared store's watch keeps it
    /// current; `sync` first to see every commit made before).
    fn staged(&self) -> std::collections::BTreeMap<u64, StagedStored>;
    /// Commit `write` if its compare holds, with `records` (a wave's invalidations, appended
    /// as `append` does) in the same commit. Once it returns, `staged` shows it.
    fn put_staged(&self, write: &StagedWrite, records: &[Record]) -> Result<(), StoreError>;
    /// Whether this replica drives staged purges now (on a shared store, only the elected
    /// leader).
    fn drives_staged(&self) -> bool {
        true
    }
}

/// The embedded store: `<dir>/control.log`, one JSON record per line.
pub struct FileStore {
    dir: PathBuf,
    log: parking_lot::Mutex<Option<File>>,
    /// The staged purges in the log (what `load` found, then every write): compaction
    /// writes them again.
    staged: parking_lot::Mutex<std::collections::BTreeMap<u64, StagedStored>>,
}

impl FileStore {
    /// Open (creating the directory if needed). Nothing is read until `load`.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(FileStore {
            dir: dir.to_path_buf(),
            log: parking_lot::Mutex::new(None),
            staged: parking_lot::Mutex::new(Default::default()),
        })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("control.log")
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> StoreError {
        let path = path.to_path_buf();
        move |source| StoreError::Io {
            path: path.clone(),
            source,
        }
    }

    fn open_append(&self) -> Result<File, StoreError> {
        let path = self.log_path();
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(self.io(&path))
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io(&self.dir))
    }
}

fn encode(records: &[Record]) -> Vec<u8> {
    let mut buf = Vec::new();
    for r in records {
        // Serialising plain data with string keys cannot fail.
        if let Ok(line) = serde_json::to_vec(r) {
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
    }
    buf
}

impl Store for FileStore {
    fn load(&self) -> Result<StoreState, StoreError> {
        let path = self.log_path();
        let mut state = StoreState::default();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
            Err(e) => return Err(self.io(&path)(e)),
        };
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        let mut good_len = 0u64;
        let mut n = 0;
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(self.io(&path))?;
            if read == 0 {
                break;
            }
            n += 1;
            let complete = line.last() == Some(&b'\n');
            match serde_json::from_slice::<Record>(&line) {
                Ok(r) if complete => {
                    state.push(r);
                    good_len += read as u64;
                }
                // A torn last line is a write that crashed before its fsync returned, so it
                // was never acknowledged: drop it. Anywhere else the log is corrupt.
                result => {
                    let mut rest = Vec::new();
                    let more = reader
                        .read_until(b'\n', &mut rest)
                        .map_err(self.io(&path))?;
                    if more > 0 {
                        let reason = match result {
                            Err(e) => e.to_string(),
                            Ok(_) => "missing newline".into(),
                        };
                        return Err(StoreError::Corrupt {
                            path,
                            line: n,
                            reason,
                        });
                    }
                    log::warn!(
                        "{}: dropping an incomplete last record (a write that never finished)",
                        path.display()
                    );
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(self.io(&path))?;
                    f.set_len(good_len).map_err(self.io(&path))?;
                    f.sync_all().map_err(self.io(&path))?;
                    break;
                }
            }
        }
        self.staged.lock().clone_from(&state.staged);
        Ok(state)
    }

    fn append(&self, records: &[Record]) -> Result<(), StoreError> {
        let mut guard = self.log.lock();
        self.append_locked(&mut guard, records)
    }

    fn rewrite(&self, state: &StoreState) -> Result<(), StoreError> {
        let path = self.log_path();
        let tmp = self.dir.join("control.log.tmp");
        let mut records = vec![Record::Floor { seq: state.floor }];
        records.extend(state.policies.iter().cloned().map(Record::Policy));
        records.extend(
            state
                .invalidations
                .iter()
                .cloned()
                .map(Record::Invalidation),
        );
        let mut guard = self.log.lock();
        // the staged purges are this store's own: whatever the plane compacts, they stay
        let staged = self.staged.lock().clone();
        records.extend(staged.into_iter().map(|(id, s)| Record::Staged {
            id,
            state: Some(s.state),
        }));
        let mut f = File::create(&tmp).map_err(self.io(&tmp))?;
        f.write_all(&encode(&records))
            .and_then(|()| f.sync_all())
            .map_err(self.io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(self.io(&path))?;
        self.sync_dir()?;
        *guard = Some(self.open_append()?);
        Ok(())
    }

    fn staged(&self) -> std::collections::BTreeMap<u64, StagedStored> {
        self.staged.lock().clone()
    }

    /// One process writes this store, so the compare is against memory, under the log's lock;
    /// the wave's invalidations and the staged purge's record go out in one write and fsync.
    fn put_staged(&self, write: &StagedWrite, records: &[Record]) -> Result<(), StoreError> {
        let mut guard = self.log.lock();
        let revision = {
            let staged = self.staged.lock();
            if staged.get(&write.id).map(|s| s.revision) != write.expected {
                return Err(StoreError::StagedChanged { id: write.id });
            }
            staged.values().map(|s| s.revision).max().unwrap_or(0) + 1
        };
        let mut all = records.to_vec();
        all.push(Record::Staged {
            id: write.id,
            state: write.state.clone(),
        });
        self.append_locked(&mut guard, &all)?;
        let mut staged = self.staged.lock();
        match &write.state {
            Some(state) => staged.insert(
                write.id,
                StagedStored {
                    state: state.clone(),
                    revision,
                },
            ),
            None => staged.remove(&write.id),
        };
        Ok(())
    }
}

impl FileStore {
    fn append_locked(
        &self,
        guard: &mut Option<File>,
        records: &[Record],
    ) -> Result<(), StoreError> {
        let path = self.log_path();
        if guard.is_none() {
            *guard = Some(self.open_append()?);
            // A new file's directory entry must be durable too.
            self.sync_dir()?;
        }
        let Some(file) = guard.as_mut() else {
            return Ok(());
        };
        let result = file
            .write_all(&encode(records))
            .and_then(|()| file.sync_data());
        if result.is_err() {
            // Reopen next time rather than keep writing after a partial line.
            *guard = None;
        }
        result.map_err(self.io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::InvalidationKind;
    use super::*;

    fn inv(seq: u64) -> Invalidation {
        Invalidation {
            seq,
            kind: InvalidationKind::Host,
            target: "a.com".into(),
            soft: false,
            created_ms: seq,
            id: None,
            expected_version: None,
            nodes: None,
        }
    }

    fn policy(version: u64) -> PolicyVersion {
        PolicyVersion {
            version,
            document: serde_json::json!({"routes": []}),
            written_ms: 1,
            author: "test".into(),
            rollback_of: None,
        }
    }

    #[test]
    fn writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        assert_eq!(s.load().unwrap(), StoreState::default());
        s.append(&[Record::Policy(policy(1))]).unwrap();
        s.append(&[Record::Invalidation(inv(1)), Record::Invalidation(inv(2))])
            .unwrap();
        drop(s);
        let s = FileStore::open(dir.path()).unwrap();
        let st = s.load().unwrap();
        assert_eq!(st.policies, vec![policy(1)]);
        assert_eq!(st.invalidations, vec![inv(1), inv(2)]);
    }

    #[test]
    fn torn_last_line_is_dropped_but_corruption_inside_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        s.append(&[Record::Invalidation(inv(1))]).unwrap();
        let log = dir.path().join("control.log");
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"{\"type\":\"invalidation\",\"se").unwrap();
        drop(f);
        let st = FileStore::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(st.invalidations, vec![inv(1)]);
        // the torn tail was cut, so appending continues on a clean line
        let s = FileStore::open(dir.path()).unwrap();
        s.append(&[Record::Invalidation(inv(2))]).unwrap();
        assert_eq!(s.load().unwrap().invalidations.len(), 2);

        let mut text = std::fs::read_to_string(&log).unwrap();
        text.insert_str(0, "garbage\n");
        std::fs::write(&log, text).unwrap();
        let err = FileStore::open(dir.path()).unwrap().load().unwrap_err();
        assert!(err.to_string().contains("line 1 is corrupt"), "{err}");
    }

    #[test]
    fn rewrite_compacts_and_keeps_appending() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        for i in 1..=5 {
            s.append(&[Record::Invalidation(inv(i))]).unwrap();
        }
        let state = StoreState {
            policies: vec![policy(3)],
            invalidations: vec![inv(4), inv(5)],
            floor: 3,
            ..StoreState::default()
        };
        s.rewrite(&state).unwrap();
        s.append(&[Record::Invalidation(inv(6))]).unwrap();
        let st = FileStore::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(st.floor, 3);
        assert_eq!(st.policies, vec![policy(3)]);
        assert_eq!(st.invalidations, vec![inv(4), inv(5), inv(6)]);
    }
}
