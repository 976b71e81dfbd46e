//! An object larger than the memory tier's `max_object_size` (up to `cache.disk.max_object_size`)
//! streamed to disk as its body arrives, never held whole in memory: into a file of its own
//! (`PID-N.part`), one checksummed chunk at a time, its share of the disk budget reserved as
//! it grows (the oldest segments make room, as for any write). Once the body is whole, the
//! checksum table, the trailer and the head (which needs the body's length) are written, the
//! file is synced and renamed to the newest segment, and the object enters the index. A fetch
//! that fails, or a purge meanwhile, leaves nothing; a crash leaves a `.part`, deleted at the
//! next start. The fetch's readers stream it from the memory tier's fill meanwhile; a request
//! that arrives after the fill's memory window let the start of the body go attaches to the
//! fill too, and reads those bytes back from this file ([`PartChunks`]: whole chunks only,
//! each verified against its checksum, through a file descriptor it holds, so it reads on
//! after the rename, or after a purge deleted the file).
//!
//! Admission: with `min_uses` above 1, such an object is streamed at its `min_uses`-th fetch
//! (the tier counts their fetches in its admission sketch, see `admission`), so a sweep
//! of large files once each does not push the warm set out.

use super::nowait::read_one_at;
use super::record::{self, chunk_crc, Head, CHUNK, HEAD_LEN};
use super::segments::STREAM_SUFFIX;
use super::writer::object_head;
use super::DiskStore;
use crate::cache::fill::Spill;
use crate::cache::stored_meta::StoredMeta;
use crate::metrics::DISK_METRICS;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use pingora_cache::key::HashBinary;
use pingora_error::{Error, ErrorType, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The body chunks of a `.part` file, as late readers of the fill read them back: each one
/// verified against the checksum taken when it was written. Holds the file open, so a reader
/// keeps reading when it is renamed into a segment (or deleted).
pub struct PartChunks {
    store: &'static DiskStore,
    file: Arc<File>,
    /// Where the body starts in the file.
    body_at: u64,
    /// The checksum of each whole chunk handed to the file.
    crcs: Mutex<Vec<u32>>,
}

#[async_trait]
impl Spill for PartChunks {
    fn chunk_len(&self) -> usize {
        CHUNK
    }

    async fn read_chunk(&self, i: usize) -> Result<Bytes> {
        let Some(crc) = self.crcs.lock().get(i).copied() else {
            return Error::e_explain(ErrorType::InternalError, "disk cache: chunk not written");
        };
        let file = self.file.clone();
        let at = self.body_at + (i * CHUNK) as u64;
        let read = self
            .store
            .timed_read(move |wait| {
                let mut buf = vec![0u8; CHUNK];
                read_one_at(&file, &mut buf, at, wait).map(|()| buf)
            })
            .await;
        match read {
            Ok(buf) => {
                DISK_METRICS.read_bytes.inc_by(buf.len() as u64);
                if chunk_crc(&buf) != crc {
                    return Error::e_explain(
                        ErrorType::InternalError,
                        "disk cache: chunk checksum mismatch in an object streaming in",
                    );
                }
                Ok(Bytes::from(buf))
            }
            Err(e) => Error::e_because(ErrorType::InternalError, "disk cache: read failed", e),
        }
    }
}

/// One object being streamed to disk (see the module doc). Dropped before
/// [`DiskFill::finish`], it deletes its file and gives its reservation back.
pub struct DiskFill {
    store: &'static DiskStore,
    /// Taken at the start: a removal of the key after it keeps the object out.
    seq: u64,
    head: Head,
    meta_bytes: Vec<u8>,
    file: Arc<File>,
    path: PathBuf,
    /// Body bytes written to the file.
    written: u64,
    /// The chunk being filled.
    pending: BytesMut,
    /// The file's whole chunks, with their checksums, for late readers.
    part: Arc<PartChunks>,
    /// Budget reserved so far.
    reserved: u64,
    done: bool,
}

impl DiskStore {
    /// Start streaming an object of `expected` bytes (when known) to disk. `None` when the
    /// tier does not take it: too large, not admitted yet, or not writable (another process
    /// still owns the directory, or the file cannot be created).
    pub fn start_fill(
        &'static self,
        key: HashBinary,
        primary: HashBinary,
        meta: &StoredMeta,
        expected: Option<u64>,
    ) -> Option<DiskFill> {
        if expected.is_some_and(|n| n > self.settings.max_object_size)
            || !self.admit_large(&key, expected)
        {
            return None;
        }
        let (head, meta_bytes) = object_head(key, primary, meta, 0)?;
        let dir = self.segments.lock().as_ref()?.dir().to_path_buf();
        let n = self.next_part.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{n}{STREAM_SUFFIX}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| log::warn!("disk cache: cannot stream an object to disk: {e}"))
            .ok()?;
        let file = Arc::new(file);
        let part = Arc::new(PartChunks {
            store: self,
            file: file.clone(),
            body_at: (HEAD_LEN + meta_bytes.len()) as u64,
            crcs: Mutex::new(Vec::new()),
        });
        Some(DiskFill {
            store: self,
            seq: self.seq(),
            head,
            meta_bytes,
            file,
            path,
            written: 0,
            pending: BytesMut::new(),
            part,
            reserved: 0,
            done: false,
        })
    }

    /// Reserve `len` bytes of the budget for a streamed object (blocking).
    fn reserve(&self, len: u64) -> bool {
        let dropped = {
            let mut guard = self.segments.lock();
            let Some(segments) = guard.as_mut() else {
                return false;
            };
            let reserved = segments.reserve(len);
            self.note_total(segments.total());
            match reserved {
                Ok(dropped) => dropped,
                Err(_) => return false,
            }
        };
        let evicted = self.forget_segments(&dropped);
        DISK_METRICS.evictions.inc_by(evicted as u64);
        true
    }

    fn release(&self, len: u64) {
        if let Some(segments) = self.segments.lock().as_mut() {
            segments.release(len);
            self.note_total(segments.total());
        }
    }
}

impl DiskFill {
    /// Where the body starts in the file.
    fn body_at(&self) -> u64 {
        (HEAD_LEN + self.meta_bytes.len()) as u64
    }

    /// The body's chunks as they are written, for readers of the fill that attach late.
    pub fn chunks(&self) -> Arc<dyn Spill> {
        self.part.clone()
    }

    /// Body bytes, from the first, written to the file in whole chunks by the pushes so far
    /// (all of them succeeded: a failed one ends the object).
    pub fn readable(&self) -> u64 {
        self.written
    }

    /// Write each piece at its offset (`extra` more bytes of the budget reserved first), off
    /// the async runtime.
    async fn write_at(&mut self, pieces: Vec<(u64, Bytes)>, extra: u64) -> bool {
        let store = self.store;
        let file = self.file.clone();
        let wrote = tokio::task::spawn_blocking(move || {
            if !store.reserve(extra) {
                return (false, false);
            }
            let wrote = pieces
                .iter()
                .all(|(at, b)| file.write_all_at(b, *at).is_ok());
            (true, wrote)
        })
        .await
        .unwrap_or((false, false));
        if wrote.0 {
            self.reserved += extra;
        }
        if wrote.1 {
            DISK_METRICS.write_bytes.inc_by(extra);
        }
        wrote.1
    }

    /// Write the whole chunks gathered so far.
    async fn write_chunks(&mut self) -> bool {
        let mut chunks = Vec::new();
        while self.pending.len() >= CHUNK {
            chunks.push(self.pending.split_to(CHUNK).freeze());
        }
        if chunks.is_empty() {
            return true;
        }
        self.part
            .crcs
            .lock()
            .extend(chunks.iter().map(|c| chunk_crc(c)));
        let mut at = self.body_at() + self.written;
        let start = at;
        let pieces: Vec<(u64, Bytes)> = chunks
            .into_iter()
            .map(|c| {
                let piece = (at, c);
                at += piece.1.len() as u64;
                piece
            })
            .collect();
        let len = at - start;
        // the head and the meta are counted with the first chunk
        let extra = len
            + if self.reserved == 0 {
                self.body_at()
            } else {
                0
            };
        self.written += len;
        self.write_at(pieces, extra).await
    }

    /// Take the next piece of the body. `false`: the tier gave up on the object (over its
    /// `max_object_size`, out of budget, a write failed); drop it.
    pub async fn push(&mut self, data: Bytes) -> bool {
        let total = self.written + (self.pending.len() + data.len()) as u64;
        if total > self.store.settings.max_object_size {
            return false;
        }
        self.pending.extend_from_slice(&data);
        self.write_chunks().await
    }

    /// The body is whole: write the rest, then make the object a segment of its own and index
    /// it (unless it was removed meanwhile). `false` if that failed (nothing is kept).
    pub async fn finish(mut self) -> bool {
        if !self.write_chunks().await {
            return false;
        }
        let last = self.pending.split().freeze();
        let mut crcs = self.part.crcs.lock().clone();
        if !last.is_empty() {
            crcs.push(chunk_crc(&last));
        }
        let body_len = self.written + last.len() as u64;
        let head = Head {
            body_len,
            ..self.head.clone()
        };
        let table: Vec<u8> = crcs.iter().flat_map(|c| c.to_le_bytes()).collect();
        let len = head.record_len();
        let trailer = record::trailer(&table, len);
        let mut start = head.encode(&self.meta_bytes).to_vec();
        start.extend_from_slice(&self.meta_bytes);
        let mut end = last.to_vec();
        end.extend_from_slice(&table);
        end.extend_from_slice(&trailer);
        let extra = len - self.reserved;
        let at = self.body_at() + self.written;
        if !self
            .write_at(vec![(at, Bytes::from(end)), (0, Bytes::from(start))], extra)
            .await
        {
            return false;
        }
        let store = self.store;
        let file = self.file.clone();
        let path = self.path.clone();
        let object = (head.combined, head.primary);
        // no checkpoint between the segment and its index entry (see `checkpoint`)
        let _adopting = Adopting::start(store);
        let adopted = tokio::task::spawn_blocking(move || {
            file.sync_data()?;
            let mut guard = store.segments.lock();
            let Some(segments) = guard.as_mut() else {
                return Err(std::io::Error::other("the disk tier was handed over"));
            };
            segments.adopt(&path, file, len, object)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let id = match adopted {
            Ok(id) => id,
            Err(e) => {
                log::warn!("disk cache: a streamed object was not kept: {e}");
                return false;
            }
        };
        // the reservation is the segment's now
        self.reserved = 0;
        self.done = true;
        store.files.write().insert(id, self.file.clone());
        store.index_written(self.seq, head.combined, &head, (id, 0), None);
        true
    }
}

/// A streamed object between becoming a segment and entering the index (dropped, even when
/// the fill's future is, once it is in or abandoned).
struct Adopting(&'static DiskStore);

impl Adopting {
    fn start(store: &'static DiskStore) -> Adopting {
        store.adopting.fetch_add(1, Ordering::AcqRel);
        Adopting(store)
    }
}

impl Drop for Adopting {
    fn drop(&mut self) {
        self.0.adopting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for DiskFill {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.store.release(self.reserved);
        let _ = std::fs::remove_file(&self.path);
    }
}
