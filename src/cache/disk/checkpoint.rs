//! The disk tier's index checkpoint (`index.ckpt`): the index and each segment's list of keys
//! as they stood at one moment, with how many bytes of each segment they cover, so a restart
//! loads them and scans only what was written after them.
//!
//! ```text
//! header   magic "VRGI" | version (u32) | body length (u64) | CRC32 of the body
//! body     segments (u64), then per segment: number (u64) | bytes covered (u64) |
//!          CRC32 of its first record's head | keys (u64) | each (combined, primary) (32)
//!          entries (u64), then per entry: key (16) | segment (u64) | offset (u64) |
//!          internal meta length (u32) | header length (u32) | body length (u64) | primary (16)
//! ```
//!
//! - **Written** by the writer thread (so no object is being appended meanwhile), when a
//!   segment's worth of records was written since the last one (at most once a minute) or ten
//!   minutes after a change, and when the tier is closed (SIGTERM, an upgrade). Written to a
//!   temporary file, synced, then renamed over the last one, and the directory synced: a crash
//!   leaves the old checkpoint or the new one, whole.
//! - **Read** by the rebuild at start. A checkpoint whose checksum fails, that cannot be
//!   parsed, or that does not match the segments (one shorter than it covers, a first record
//!   that is not the one it saw, a segment older than its newest one that it does not list) is
//!   not used: the rebuild scans everything, and it is counted
//!   (`verge_cache_disk_checkpoint_rejected_total`). Segments deleted since are skipped.
//! - **Order.** Records are appended only to the newest segment, so everything after a
//!   checkpoint is the tail of the last segment it covers and the segments after it: the scan of
//!   those, applied on top of the checkpoint, ends where a full scan would, tombstones (purges
//!   made after the checkpoint) included.

use super::index::Location;
use super::record::HEAD_LEN;
use super::DiskStore;
use crate::metrics::DISK_METRICS;
use pingora_cache::key::HashBinary;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The checkpoint's file in the tier's directory.
pub const FILE: &str = "index.ckpt";
/// Where the next checkpoint is written before it is renamed over the last one.
const TEMP: &str = "index.ckpt.tmp";
const MAGIC: &[u8; 4] = b"VRGI";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 20;
/// Bytes of one entry in the body.
const ENTRY_LEN: usize = 64;
/// The least time between two checkpoints (but at close).
const MIN_INTERVAL: Duration = Duration::from_secs(60);
/// After a change, a checkpoint is written at the latest after this long.
const MAX_INTERVAL: Duration = Duration::from_secs(600);

/// A segment as the checkpoint saw it.
pub(super) struct Covered {
    pub id: u64,
    /// Bytes of it the checkpoint covers (its length then).
    pub len: u64,
    /// CRC32 of its first record's head (0 when it was shorter than a head).
    pub first: u32,
    pub keys: Vec<(HashBinary, HashBinary)>,
}

/// A checkpoint read back.
pub(super) struct Checkpoint {
    pub segments: Vec<Covered>,
    pub entries: Vec<(HashBinary, Location)>,
}

/// Why a checkpoint was not used.
#[derive(Debug, thiserror::Error)]
pub(super) enum CheckpointError {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("damaged (checksum, length or format)")]
    Damaged,
    #[error("it does not match the segments on disk")]
    Stale,
}

/// When the writer last wrote a checkpoint, and what was appended since.
pub(super) struct CheckpointClock {
    last: Instant,
}

impl Default for CheckpointClock {
    fn default() -> Self {
        CheckpointClock {
            last: Instant::now(),
        }
    }
}

/// CRC32 of the head of the record at the start of `file`, if it has `len` ≥ a head's bytes.
fn first_head_crc(file: &File, len: u64) -> std::io::Result<u32> {
    if len < HEAD_LEN as u64 {
        return Ok(0);
    }
    let mut head = [0u8; HEAD_LEN];
    file.read_exact_at(&mut head, 0)?;
    Ok(crc32fast::hash(&head))
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Reads the body's fields in order.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], CheckpointError> {
        let (head, rest) = self.0.split_at_checked(N).ok_or(CheckpointError::Damaged)?;
        self.0 = rest;
        head.try_into().map_err(|_| CheckpointError::Damaged)
    }
    fn u64(&mut self) -> Result<u64, CheckpointError> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, CheckpointError> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    /// A count of items of `size` bytes each, checked against what is left.
    fn count(&mut self, size: usize) -> Result<usize, CheckpointError> {
        let n = usize::try_from(self.u64()?).map_err(|_| CheckpointError::Damaged)?;
        if n.checked_mul(size).is_none_or(|b| b > self.0.len()) {
            return Err(CheckpointError::Damaged);
        }
        Ok(n)
    }
}

/// Parse a checkpoint file's bytes, checking its header and checksum.
pub(super) fn decode(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let (header, body) = bytes
        .split_at_checked(HEADER_LEN)
        .ok_or(CheckpointError::Damaged)?;
    let mut h = Cursor(header);
    let magic = h.take::<4>()?;
    let version = h.u32()?;
    let len = h.u64()?;
    let crc = h.u32()?;
    if &magic != MAGIC
        || version != VERSION
        || len != body.len() as u64
        || crc != crc32fast::hash(body)
    {
        return Err(CheckpointError::Damaged);
    }
    let mut c = Cursor(body);
    let n = c.count(28)?;
    let mut segments = Vec::with_capacity(n);
    for _ in 0..n {
        let id = c.u64()?;
        let len = c.u64()?;
        let first = c.u32()?;
        let count = c.count(32)?;
        let mut keys = Vec::with_capacity(count);
        for _ in 0..count {
            keys.push((c.take::<16>()?, c.take::<16>()?));
        }
        segments.push(Covered {
            id,
            len,
            first,
            keys,
        });
    }
    let n = c.count(ENTRY_LEN)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let key = c.take::<16>()?;
        let loc = Location {
            segment: c.u64()?,
            offset: c.u64()?,
            internal_len: c.u32()?,
            header_len: c.u32()?,
            body_len: c.u64()?,
            primary: c.take::<16>()?,
        };
        entries.push((key, loc));
    }
    if !c.0.is_empty() {
        return Err(CheckpointError::Damaged);
    }
    Ok(Checkpoint { segments, entries })
}

/// Write `body` as the checkpoint in `dir`: to a temporary file, synced, renamed, and the
/// directory synced.
fn write_file(dir: &Path, body: &[u8]) -> std::io::Result<()> {
    let temp = dir.join(TEMP);
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    put_u64(&mut header, body.len() as u64);
    header.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    let mut file = File::create(&temp)?;
    file.write_all(&header)?;
    file.write_all(body)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, dir.join(FILE))?;
    File::open(dir)?.sync_all()
}

impl DiskStore {
    /// (The writer, between jobs.) Write a checkpoint if one is due: a segment's worth of
    /// records written since the last one (and a minute passed), or ten minutes after a change.
    pub(super) fn checkpoint_if_due(&self, clock: &mut CheckpointClock) {
        let changed = self.changed_since_checkpoint.load(Ordering::Acquire);
        let since = clock.last.elapsed();
        let due = (changed >= self.settings.segment_size && since >= MIN_INTERVAL)
            || (changed > 0 && since >= MAX_INTERVAL);
        if due && self.write_checkpoint() {
            clock.last = Instant::now();
        }
    }

    /// (The writer.) Write a checkpoint of the index now. `false` if it was not written: the
    /// rebuild is still running, the directory is not this process's, a streamed object is
    /// being taken in, or the write failed.
    pub(super) fn write_checkpoint(&self) -> bool {
        if self.is_loading() {
            return false;
        }
        let started = Instant::now();
        let changed = self.changed_since_checkpoint.load(Ordering::Acquire);
        let (dir, segments) = {
            let guard = self.segments.lock();
            let Some(segments) = guard.as_ref() else {
                return false;
            };
            // a streamed object becomes a segment before it enters the index: wait for it
            if self.adopting.load(Ordering::Acquire) > 0 {
                return false;
            }
            (segments.dir().to_path_buf(), segments.covered())
        };
        let mut body = Vec::new();
        put_u64(&mut body, segments.len() as u64);
        for (id, file, len, keys) in &segments {
            let first = match first_head_crc(file, *len) {
                Ok(crc) => crc,
                Err(e) => {
                    log::warn!("disk cache: checkpoint not written: {e}");
                    return false;
                }
            };
            put_u64(&mut body, *id);
            put_u64(&mut body, *len);
            body.extend_from_slice(&first.to_le_bytes());
            put_u64(&mut body, keys.len() as u64);
            for (combined, primary) in keys {
                body.extend_from_slice(combined);
                body.extend_from_slice(primary);
            }
        }
        {
            let index = self.index.read();
            body.reserve(8 + index.entries.len() * ENTRY_LEN);
            put_u64(&mut body, index.entries.len() as u64);
            for (key, loc) in &index.entries {
                body.extend_from_slice(key);
                put_u64(&mut body, loc.segment);
                put_u64(&mut body, loc.offset);
                body.extend_from_slice(&loc.internal_len.to_le_bytes());
                body.extend_from_slice(&loc.header_len.to_le_bytes());
                put_u64(&mut body, loc.body_len);
                body.extend_from_slice(&loc.primary);
            }
        }
        drop(segments);
        if let Err(e) = write_file(&dir, &body) {
            log::warn!("disk cache: checkpoint not written: {e}");
            return false;
        }
        self.changed_since_checkpoint
            .fetch_sub(changed, Ordering::AcqRel);
        DISK_METRICS.checkpoints.inc();
        log::debug!(
            "disk cache: index checkpoint written, {} bytes in {} ms",
            body.len(),
            started.elapsed().as_millis()
        );
        true
    }

    /// The checkpoint in `dir`, if there is one that matches the segments `found` (number,
    /// file, length). `Ok(None)`: there is none. An error: there is one, not to be used.
    pub(super) fn read_checkpoint(
        dir: &Path,
        found: &[(u64, Arc<File>, u64)],
    ) -> Result<Option<Checkpoint>, CheckpointError> {
        let bytes = match std::fs::read(dir.join(FILE)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let checkpoint = decode(&bytes)?;
        let on_disk: HashMap<u64, (&Arc<File>, u64)> = found
            .iter()
            .map(|(id, file, len)| (*id, (file, *len)))
            .collect();
        for seg in &checkpoint.segments {
            if let Some((file, len)) = on_disk.get(&seg.id) {
                if *len < seg.len || first_head_crc(file, seg.len)? != seg.first {
                    return Err(CheckpointError::Stale);
                }
            }
        }
        // every segment older than the newest one covered was there when it was written
        let newest = checkpoint.segments.iter().map(|s| s.id).max().unwrap_or(0);
        let listed = |id: u64| checkpoint.segments.iter().any(|s| s.id == id);
        if found.iter().any(|(id, _, _)| *id < newest && !listed(*id)) {
            return Err(CheckpointError::Stale);
        }
        Ok(Some(checkpoint))
    }
}
