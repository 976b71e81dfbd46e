//! A hit served from the disk tier: the body is read one checksummed chunk at a time (never the
//! whole object), each chunk verified before it is handed out; a range seeks to the chunk that
//! holds its start. A hit read whole is promoted to the memory tier ([`Promote`]).

use super::index::Location;
use super::nowait::{read_one_at, Wait};
use super::record::{chunk_crc, CHUNK};
use super::DiskStore;
use crate::cache::stored_meta::StoredMeta;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::key::HashBinary;
use pingora_cache::storage::{HandleHit, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheKey;
use pingora_error::{Error, ErrorType, Result};
use std::any::Any;
use std::fs::File;
use std::sync::Arc;

/// Where a disk hit read whole is copied, so the next hits come from memory: the memory tier.
pub trait Promote: Sync {
    /// The largest body worth promoting (the memory tier's `max_object_size`).
    fn promote_limit(&self) -> usize;
    /// Store `body` with `meta` under `key`, if the memory tier admits it, nothing newer is
    /// stored or being fetched there, and `still_on_disk()` (asked under the memory tier's lock,
    /// so a purge cannot slip in between) says the disk tier still holds what was read.
    fn promote(
        &self,
        key: CompactCacheKey,
        meta: Arc<StoredMeta>,
        body: Bytes,
        still_on_disk: &dyn Fn() -> bool,
    ) -> Promoted;
}

/// What the memory tier made of a [`Promote::promote`].
pub enum Promoted {
    /// It holds the object now.
    Held,
    /// Its admission turned the object away, and nothing newer is stored or being fetched
    /// under the key, and the disk tier still holds what was read: the object as it was read,
    /// handed back so that the request that read it can be answered from it.
    NotAdmitted(Arc<StoredMeta>, Bytes),
    /// The memory tier holds or is fetching something newer under the key, or the disk tier no
    /// longer holds what was read (a purge, an eviction): the object read is not to be served.
    Superseded,
}

/// A disk hit being collected for promotion (see [`Promote`]).
pub(crate) struct Promotion {
    pub(super) to: &'static dyn Promote,
    pub(super) key: CompactCacheKey,
    pub(super) meta: Arc<StoredMeta>,
    pub(super) from: Location,
    pub(super) chunks: Vec<Bytes>,
}

impl Promotion {
    /// Keep a piece of the body, read in order from its start.
    pub(crate) fn add(&mut self, piece: Bytes) {
        self.chunks.push(piece);
    }

    /// The whole body was read: hand it to the memory tier.
    pub(crate) fn finish(self, store: &DiskStore, combined: HashBinary) {
        let mut body = bytes::BytesMut::with_capacity(self.chunks.iter().map(Bytes::len).sum());
        self.chunks.iter().for_each(|c| body.extend_from_slice(c));
        let from = self.from;
        let still_on_disk = || store.index.read().entries.get(&combined) == Some(&from);
        // refused (the memory tier's admission, or a newer entry): the next hit reads the disk;
        // this hit was served as it streamed
        let _ = self
            .to
            .promote(self.key, self.meta, body.freeze(), &still_on_disk);
    }
}

/// Where a record's body is, and how to check it.
pub struct BodyLocation {
    /// The segment file.
    pub file: Arc<File>,
    /// Offset of the body's first byte in the file.
    pub offset: u64,
    /// Body length.
    pub len: u64,
    /// CRC32 of each chunk.
    pub crcs: Vec<u32>,
}

impl BodyLocation {
    /// Read and verify chunk `i`. `None`: the bytes are not what was written.
    pub(crate) fn read_chunk(&self, i: usize, wait: Wait) -> std::io::Result<Option<Bytes>> {
        let start = i as u64 * CHUNK as u64;
        let len = (self.len - start.min(self.len)).min(CHUNK as u64) as usize;
        let mut buf = vec![0u8; len];
        read_one_at(&self.file, &mut buf, self.offset + start, wait)?;
        crate::metrics::DISK_METRICS.read_bytes.inc_by(len as u64);
        let ok = self.crcs.get(i).is_some_and(|&c| c == chunk_crc(&buf));
        Ok(ok.then(|| Bytes::from(buf)))
    }
}

/// Reads a body from disk. The first chunk was read (and verified) by the lookup.
pub struct DiskHit {
    pub(super) body: Arc<BodyLocation>,
    pub(super) store: &'static DiskStore,
    pub(super) key: HashBinary,
    /// A verified chunk already read, by index.
    pub(super) cached: Option<(usize, Bytes)>,
    pub(super) pos: u64,
    pub(super) end: u64,
    /// Collecting the body for the memory tier, while it is read whole and in order.
    pub(super) promote: Option<Promotion>,
}

impl DiskHit {
    async fn chunk(&mut self, i: usize) -> Result<Bytes> {
        if let Some((at, bytes)) = &self.cached {
            if *at == i {
                return Ok(bytes.clone());
            }
        }
        let body = self.body.clone();
        let read = self
            .store
            .timed_read(move |wait| body.read_chunk(i, wait))
            .await;
        match read {
            Ok(Some(bytes)) => {
                self.cached = Some((i, bytes.clone()));
                Ok(bytes)
            }
            Ok(None) => {
                self.store.drop_corrupt(self.key);
                Error::e_explain(
                    ErrorType::InternalError,
                    "disk cache: chunk checksum mismatch",
                )
            }
            Err(e) => Error::e_because(ErrorType::InternalError, "disk cache: read failed", e),
        }
    }
}

#[async_trait]
impl HandleHit for DiskHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            if self.end == self.body.len {
                if let Some(promotion) = self.promote.take() {
                    promotion.finish(self.store, self.key);
                }
            }
            return Ok(None);
        }
        let i = (self.pos / CHUNK as u64) as usize;
        let chunk = self.chunk(i).await?;
        let start = i as u64 * CHUNK as u64;
        let from = (self.pos - start) as usize;
        let to = ((self.end - start) as usize).min(chunk.len());
        if from >= to {
            return Error::e_explain(ErrorType::InternalError, "disk cache: short chunk");
        }
        self.pos = start + to as u64;
        let piece = chunk.slice(from..to);
        if let Some(promotion) = &mut self.promote {
            promotion.add(piece.clone());
        }
        Ok(Some(piece))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len;
        let end = end.map_or(len, |e| (e as u64).min(len));
        if start as u64 > end {
            return Error::e_explain(ErrorType::InternalError, "seek start past end");
        }
        if start != 0 || end != len || self.pos != 0 {
            // a range, or a second pass: not the whole body in order
            self.promote = None;
        }
        self.pos = start as u64;
        self.end = end;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        usize::try_from(self.body.len).unwrap_or(usize::MAX)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
