//! The node's state file (`control.state_file`): the control-plane messages behind the snapshot
//! it serves (the last full one and the deltas since), each with the checksum and signature it
//! arrived with, under a checksum of the whole file. At start they are verified as a poll's
//! are and replayed; a file that does not verify is refused, whole.

use crate::config::Config;
use crate::control::wire::{
    checksum, checksum_matches, signature_matches, SnapshotMessage, VerifyingKey,
};
use crate::node::poller::next_state;
use crate::snapshot::{ControlState, Snapshot};
use crate::unix_time::{from_unix_ms, unix_ms};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The first line of a state file, before the checksum of the rest.
const MAGIC: &str = "verge-state v1 ";

/// Deltas kept after the full message before the node asks for a full one again, so the file
/// (and the replay at start) stays bounded however long the node runs.
pub const MAX_DELTAS: usize = 64;

/// A snapshot message as it came from the control plane: its exact bytes and fields.
#[derive(Debug, Clone)]
pub struct Received {
    /// The body, as sent.
    pub body: Vec<u8>,
    /// `verge-checksum`, as sent.
    pub checksum: Option<Vec<u8>>,
    /// `verge-signature`, as sent (if any).
    pub signature: Option<Vec<u8>>,
}

impl Received {
    /// Whether the body is the one the checksum names and, when `keys` are configured, one of
    /// them signed it. The error is the `verge_snapshot_rejected_total` reason.
    pub fn verify(&self, keys: &[VerifyingKey]) -> Result<(), &'static str> {
        if !checksum_matches(&self.body, self.checksum.as_deref()) {
            return Err("checksum");
        }
        if !keys.is_empty() && !signature_matches(keys, &self.body, self.signature.as_deref()) {
            return Err("signature");
        }
        Ok(())
    }
}

/// One applied message in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// The message body (JSON text, exactly as received).
    body: String,
    checksum: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
    /// When the node applied it (Unix ms): a replay dates its invalidations the same.
    applied_ms: u64,
}

impl Entry {
    fn of(msg: &Received, applied: SystemTime) -> std::io::Result<Entry> {
        let text = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).into());
        // JSON is UTF-8: a body that parsed as a message always is.
        let body = String::from_utf8(msg.body.clone()).map_err(std::io::Error::other)?;
        Ok(Entry {
            body,
            checksum: text(&msg.checksum).unwrap_or_default(),
            signature: text(&msg.signature),
            applied_ms: unix_ms(applied),
        })
    }

    fn received(&self) -> Received {
        Received {
            body: self.body.as_bytes().to_vec(),
            checksum: Some(self.checksum.as_bytes().to_vec()),
            signature: self.signature.as_ref().map(|s| s.as_bytes().to_vec()),
        }
    }
}

/// Why a state file was not used.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// There is none (a new node, or one whose file was removed).
    #[error("{0}: no state file")]
    Missing(String),
    /// It cannot be read, is not a state file, or is truncated or altered.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The messages behind the snapshot a node serves, in the order it applied them.
#[derive(Debug, Default, Clone)]
pub struct StateJournal {
    entries: Vec<Entry>,
}

/// Keeps the state file in step with what the poller applies. Only the count of deltas is
/// held in memory: a delta is added to the file as it is on disk, so a node never keeps a
/// (possibly large) full message's bytes beyond applying it.
#[derive(Debug)]
pub struct StateWriter {
    path: PathBuf,
    /// Deltas in the file after its full message (`None`: this process wrote no full one yet).
    deltas: Option<usize>,
}

impl StateWriter {
    /// A writer for the state file at `path`; it writes nothing until a full message arrives.
    pub fn new(path: PathBuf) -> Self {
        StateWriter { path, deltas: None }
    }

    /// Whether the node should ask for a full message: it wrote none yet (a new process, or
    /// the file could not be written), or too many deltas since.
    pub fn wants_full(&self) -> bool {
        self.deltas.is_none_or(|n| n >= MAX_DELTAS)
    }

    /// Record an applied message: a full one starts the file anew; a delta is added to it. A
    /// delta before any full one cannot be replayed, and is not written.
    pub fn record(
        &mut self,
        full: bool,
        msg: &Received,
        applied: SystemTime,
    ) -> std::io::Result<()> {
        let entry = Entry::of(msg, applied)?;
        let journal = match (full, self.deltas) {
            (true, _) => StateJournal {
                entries: vec![entry],
            },
            (false, None) => return Ok(()),
            (false, Some(_)) => {
                // verified when it was applied; re-read for its checksum only
                let mut journal = StateJournal::load(&self.path, &[]).map_err(|e| {
                    self.deltas = None;
                    std::io::Error::other(e.to_string())
                })?;
                journal.entries.push(entry);
                journal
            }
        };
        self.deltas = None;
        journal.save(&self.path)?;
        self.deltas = Some(journal.entries.len() - 1);
        Ok(())
    }
}

impl StateJournal {
    /// Write atomically (temporary file, fsync, rename): the magic line with the checksum of
    /// the rest, then one JSON line per message.
    fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut lines = Vec::new();
        for e in &self.entries {
            serde_json::to_writer(&mut lines, e).map_err(std::io::Error::other)?;
            lines.push(b'\n');
        }
        let mut data = format!("{MAGIC}{}\n", checksum(&lines)).into_bytes();
        data.extend_from_slice(&lines);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Read and verify a state file: the file's checksum, then each message's checksum and,
    /// with `keys`, its signature.
    pub fn load(path: &Path, keys: &[VerifyingKey]) -> Result<StateJournal, StateFileError> {
        let name = path.display().to_string();
        let corrupt = |reason: String| StateFileError::Corrupt {
            path: name.clone(),
            reason,
        };
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateFileError::Missing(name))
            }
            Err(e) => return Err(corrupt(e.to_string())),
        };
        let (head, rest) = match data.iter().position(|b| *b == b'\n') {
            Some(i) => (&data[..i], &data[i + 1..]),
            None => (&data[..], &[][..]),
        };
        let Some(sum) = head.strip_prefix(MAGIC.as_bytes()) else {
            return Err(corrupt(
                "not a verge state file (or one from a verge before checksummed state files)"
                    .into(),
            ));
        };
        if !checksum_matches(rest, Some(sum)) {
            return Err(corrupt(
                "its checksum does not match: truncated or altered".into(),
            ));
        }
        let mut entries = Vec::new();
        for (i, line) in rest.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let entry: Entry = serde_json::from_slice(line)
                .map_err(|e| corrupt(format!("message {}: {e}", i + 1)))?;
            entry
                .received()
                .verify(keys)
                .map_err(|why| corrupt(format!("message {}: its {why} does not verify", i + 1)))?;
            entries.push(entry);
        }
        if entries.is_empty() {
            return Err(corrupt("it holds no snapshot".into()));
        }
        Ok(StateJournal { entries })
    }

    /// Apply the messages in order on top of the file config `base`, through the same checks
    /// as a poll (`registered`: the filter names this binary has); the snapshot they come to.
    pub fn replay(&self, base: &Config, registered: &[&str]) -> Result<Snapshot, String> {
        let mut current =
            Snapshot::build_with(base, None, ControlState::default()).map_err(|e| e.to_string())?;
        for (i, e) in self.entries.iter().enumerate() {
            let msg: SnapshotMessage =
                serde_json::from_str(&e.body).map_err(|err| format!("message {}: {err}", i + 1))?;
            if i == 0 && !msg.full {
                return Err("the first message is not a full snapshot".into());
            }
            let applied = from_unix_ms(e.applied_ms);
            let next = next_state(&current, base, &msg, applied)
                .map_err(|r| format!("message {}: {r}", i + 1))?;
            let Some((config, state)) = next else {
                continue;
            };
            if let Some(err) = crate::config::unknown_filters(&config.routes, registered).first() {
                return Err(format!("message {}: {err}", i + 1));
            }
            current = Snapshot::build_with(&config, Some(&current), state)
                .map_err(|err| format!("message {}: {err}", i + 1))?;
        }
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::wire::{signature, SigningKey};

    fn message(full: bool, seq: u64, key: Option<&SigningKey>) -> Received {
        let body = serde_json::to_vec(&serde_json::json!({
            "full": full, "policy_version": 1, "seq": seq, "retention_secs": 3600,
            "policy": {"pools": {"p": {"backends": ["127.0.0.1:9"]}},
                       "routes": [{"hosts": ["*"], "pool": "p"}]},
            "invalidations": [{"seq": seq, "kind": "url", "target": format!("a.test/{seq}"),
                               "soft": false, "created_ms": 1}],
        }))
        .unwrap();
        Received {
            checksum: Some(checksum(&body).into_bytes()),
            signature: key.map(|k| signature(k, &body).into_bytes()),
            body,
        }
    }

    fn base() -> Config {
        Config::from_yaml_str(
            "listeners: [{listen: \"127.0.0.1:1\"}]\ncontrol: {url: \"http://127.0.0.1:2\"}\n",
        )
        .expect("config")
    }

    #[test]
    fn a_saved_journal_replays_to_the_same_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let key = SigningKey::from_bytes(&[9u8; 32]);
        let mut w = StateWriter::new(path.clone());
        assert!(w.wants_full());
        w.record(false, &message(false, 1, Some(&key)), SystemTime::now())
            .unwrap();
        assert!(!path.exists(), "a delta alone is not written");
        w.record(true, &message(true, 1, Some(&key)), SystemTime::now())
            .unwrap();
        w.record(false, &message(false, 2, Some(&key)), SystemTime::now())
            .unwrap();
        assert!(!w.wants_full());
        let loaded = StateJournal::load(&path, &[key.verifying_key()]).unwrap();
        let s = loaded.replay(&base(), &[]).unwrap();
        assert_eq!(s.control.position.to_string(), "1.2");
        assert_eq!(s.control.invalidations.applied().len(), 2);
        assert_eq!(s.routes.len(), 1);
        // another key, or none on the messages: refused
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        let e = StateJournal::load(&path, &[other]).unwrap_err().to_string();
        assert!(e.contains("signature does not verify"), "{e}");
    }

    #[test]
    fn every_kind_of_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(matches!(
            StateJournal::load(&path, &[]),
            Err(StateFileError::Missing(_))
        ));
        let mut w = StateWriter::new(path.clone());
        w.record(true, &message(true, 1, None), SystemTime::now())
            .unwrap();
        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        let at = good.len() - 30;
        flipped[at] ^= 0x01;
        let mut wrong_sum = good.clone();
        wrong_sum[MAGIC.len() + 12] = if good[MAGIC.len() + 12] == b'0' {
            b'1'
        } else {
            b'0'
        };
        for (what, bytes, needle) in [
            (
                "truncated",
                good[..good.len() / 2].to_vec(),
                "truncated or altered",
            ),
            ("bit flipped", flipped, "truncated or altered"),
            ("bad checksum", wrong_sum, "truncated or altered"),
            ("empty", Vec::new(), "not a verge state file"),
            (
                "old format",
                br#"{"policy_version":1}"#.to_vec(),
                "not a verge state file",
            ),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            let e = StateJournal::load(&path, &[]).unwrap_err().to_string();
            assert!(e.contains(needle), "{what}: {e}");
        }
        std::fs::write(&path, &good).unwrap();
        assert!(StateJournal::load(&path, &[]).is_ok());
        // a file damaged while the node runs: the next delta is not added to it, and the
        // node asks for a full message again
        std::fs::write(&path, &good[..10]).unwrap();
        assert!(w
            .record(false, &message(false, 2, None), SystemTime::now())
            .is_err());
        assert!(w.wants_full());
        for seq in 2..=(MAX_DELTAS as u64 + 1) {
            if seq == 2 {
                w.record(true, &message(true, 1, None), SystemTime::now())
                    .unwrap();
            }
            assert!(!w.wants_full(), "{seq}");
            w.record(false, &message(false, seq, None), SystemTime::now())
                .unwrap();
        }
        assert!(
            w.wants_full(),
            "after {MAX_DELTAS} deltas a full message again"
        );
    }
}
